"""decoupled.integrations.hf.get_scheduler against transformers.get_scheduler, step by step.

One table of cases (name x keywords x warmup/training steps); each is run through both and
``get_last_lr()`` compared at every step up to ``num_training_steps`` and 25 steps past it.
The table must name every lr-curve schedule of the installed transformers and every keyword
its function takes (``test_the_table_covers_transformers``), so a name or keyword added to
transformers fails here until it is built and tested.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
from transformers import optimization as hf_optimization  # noqa: E402

from decoupled.integrations import hf, hf_schedules  # noqa: E402

PAST = 25  # steps compared after num_training_steps


@dataclass
class Case:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    warmup: int = 8
    total: int | None = 60
    exact: bool = True  # same bits; otherwise relative 1e-12 (the formulas round differently)

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.name}[w={self.warmup},T={self.total}{',' + args if args else ''}]"


WSD_TYPES = ("linear", "cosine", "1-sqrt")
CASES = [
    Case("constant"),
    Case("constant_with_warmup"),
    Case("constant_with_warmup", warmup=0),
    Case("linear"),
    Case("linear", warmup=0),
    Case("linear", warmup=60),
    Case("linear", {"last_epoch": 9}),
    Case("cosine"),
    Case("cosine", warmup=0),
    Case("cosine", warmup=60),  # the cosine starts at T (transformers divides by max(1, T - w))
    Case("cosine", {"num_cycles": 1.5}),
    Case("cosine", {"num_cycles": 2, "last_epoch": 70}),
    Case("cosine_with_min_lr", {"min_lr_rate": 0.1}),
    Case("cosine_with_min_lr", {"min_lr": 1e-4, "num_cycles": 1.25}),
    Case("cosine_with_min_lr", {"min_lr_rate": 0.2, "last_epoch": 4}, warmup=0),
    Case("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
    Case("cosine_warmup_with_min_lr", {"min_lr": 1e-4, "num_cycles": 0.75}, warmup=0),
    Case("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}, warmup=1),
    Case("cosine_warmup_with_min_lr", {"min_lr_rate": 0.3, "warmup_lr_rate": 0.2}, warmup=0),
    Case("cosine_warmup_with_min_lr", {"min_lr_rate": 0.05, "warmup_lr_rate": 0.2, "num_cycles": 1.0}, exact=False),
    Case("cosine_warmup_with_min_lr", {"min_lr_rate": 0.0, "warmup_lr_rate": 0.5, "last_epoch": 3}, 2, exact=False),
    Case("cosine_with_restarts", exact=False),
    Case("cosine_with_restarts", {"num_cycles": 3}, exact=False),
    Case("cosine_with_restarts", {"num_cycles": 2.5, "last_epoch": 20}, warmup=0, exact=False),
    Case("polynomial", exact=False),
    Case("polynomial", {"lr_end": 1e-5, "power": 2.0}, exact=False),
    Case("polynomial", {"power": 0.5, "last_epoch": 5}, warmup=0, exact=False),
    Case("inverse_sqrt"),
    Case("inverse_sqrt", {"timescale": 20}),
    Case("inverse_sqrt", {"last_epoch": 11}, warmup=0),
    *[
        Case("warmup_stable_decay", {"num_decay_steps": 20, "warmup_type": w, "decay_type": d, "min_lr_ratio": 0.05})
        for w in WSD_TYPES
        for d in WSD_TYPES
    ],
    Case("warmup_stable_decay", {"num_decay_steps": 10, "num_stable_steps": 20}, total=None),
    Case("warmup_stable_decay", {"num_decay_steps": 20, "num_cycles": 1.0, "last_epoch": 30}),
    Case("warmup_stable_decay", {"num_decay_steps": 0}),
]


def _optimizer() -> torch.optim.Optimizer:
    """Two groups whose lrs differ from ``defaults["lr"]`` (transformers converts lr_end and
    min_lr with the defaults); ``initial_lr`` set, as a resumed run has it (for last_epoch)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr, "initial_lr": lr} for lr in (1e-3, 3e-4)]
    return torch.optim.SGD(groups, lr=2e-3)


def _lrs(build, steps: int) -> list[list[float]]:
    opt = _optimizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = build(opt)
    out = [list(sched.get_last_lr())]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(list(sched.get_last_lr()))
    return out


def _both(case: Case, **ours: Any) -> tuple[list[list[float]], list[list[float]], int]:
    phases = ("num_decay_steps", "num_stable_steps")
    end = case.total if case.total is not None else case.warmup + sum(case.kwargs.get(k, 0) for k in phases)
    steps = end + PAST

    def args(opt):
        return (case.name, opt, case.warmup, case.total, dict(case.kwargs))

    expected = _lrs(lambda opt: transformers.get_scheduler(*args(opt)), steps)
    mine = _lrs(lambda opt: hf.get_scheduler(*args(opt), **ours), steps)
    return expected, mine, end


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_lr_as_transformers_at_every_step(case: Case) -> None:
    expected, mine, _ = _both(case)
    if case.exact:
        assert mine == expected
    else:
        flat = [x for row in expected for x in row]
        assert [x for row in mine for x in row] == pytest.approx(flat, rel=1e-12, abs=1e-18)
    assert len({row[0] for row in expected}) > 2 or case.name.startswith("constant")  # the case really moves


COSINES = ("cosine", "cosine_with_min_lr", "cosine_warmup_with_min_lr")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_keep_floor_holds_the_floor_after_the_run(case: Case) -> None:
    """``keep_floor=True``: the same curve until the run ends, then its floor; transformers'
    cosines rise again after num_training_steps, the other names already hold."""
    _, default, end = _both(case)
    _, floor, _ = _both(case, keep_floor=True)
    if case.name not in COSINES:
        assert floor == default
        return
    first = case.kwargs.get("last_epoch", -1) + 1  # the step of the first value recorded
    if case.name == "cosine_warmup_with_min_lr":
        end -= 1  # its curve is one step ahead: it ends a step earlier
    rate = case.kwargs.get("min_lr_rate", case.kwargs.get("min_lr", 0.0) / 2e-3)
    for step, (held, followed) in enumerate(zip(floor, default), start=first):
        if step < end:
            assert held == followed, step
        else:
            assert held == pytest.approx([rate * 1e-3, rate * 3e-4], rel=1e-12, abs=1e-20), step


def test_the_table_covers_transformers() -> None:
    """Every lr-curve name of the installed transformers, and every keyword its function takes
    (besides the optimizer and the step counts), appears in the table; the names that are not
    curves are refused."""
    names = {str(n.value) for n in hf_optimization.TYPE_TO_SCHEDULER_FUNCTION}
    curves = names - {"reduce_lr_on_plateau", "greedy"}
    assert curves == set(hf_schedules.NAMES)
    assert {c.name for c in CASES} == curves
    passed_apart = {"optimizer", "num_warmup_steps", "num_training_steps"}
    for name in curves - {"constant", "constant_with_warmup"}:  # get_scheduler passes them no kwargs
        fn = hf_optimization.TYPE_TO_SCHEDULER_FUNCTION[transformers.SchedulerType(name)]
        keywords = set(inspect.signature(fn).parameters) - passed_apart
        assert set(hf_schedules.NAMES[name][0]) == keywords, name
        tested = set().union(*(c.kwargs for c in CASES if c.name == name))
        assert tested == keywords, f"{name}: no case for {sorted(keywords - tested)}"


def test_enum_names_and_the_re_export() -> None:
    assert hf.get_scheduler is hf_schedules.get_scheduler
    opt = _optimizer()
    sched = hf.get_scheduler(transformers.SchedulerType.COSINE, opt, 2, 10)
    assert sched.options["total_steps"] == 10


def test_ignored_kwargs_warn_as_transformers_ignores_them() -> None:
    for name in ("constant", "constant_with_warmup"):
        with pytest.warns(UserWarning, match=f"\\['power'\\] are ignored by the '{name}' schedule"):
            hf.get_scheduler(name, _optimizer(), 2, 10, {"power": 2.0})
    with pytest.warns(UserWarning, match="num_stable_steps is used"):
        hf.get_scheduler("warmup_stable_decay", _optimizer(), 2, 50, {"num_decay_steps": 5, "num_stable_steps": 5})


# (name, num_warmup_steps, num_training_steps, kwargs, message)
ERRORS = [
    ("reduce_lr_on_plateau", 2, 10, {}, "reacts to metrics and is not a curve.*ReduceLROnPlateau"),
    ("greedy", 2, 10, {}, "reacts to metrics and is not a curve.*GreedyLR"),
    ("cosin", 2, 10, {}, "unknown scheduler type 'cosin'; transformers' names are"),
    ("linear", 2, 10, {"power": 2}, "\\['power'\\] are not used by the 'linear' schedule; it takes"),
    ("cosine", 2, None, {}, "'cosine' schedule needs num_training_steps"),
    ("cosine", 20, 10, {}, "warmup_steps=20 is longer than total_steps=10"),
    ("cosine", 2, 10, {"num_cycles": -1}, "cycles must be a finite number >= 0"),
    ("cosine_with_min_lr", 2, 10, {}, "exactly one of min_lr or min_lr_rate"),
    ("cosine_with_min_lr", 2, 10, {"min_lr": 1e-4, "min_lr_rate": 0.1}, "exactly one of min_lr or min_lr_rate"),
    ("cosine_with_min_lr", 2, 10, {"min_lr_rate": 1.5}, "min_factor must be a number in \\[0, 1\\]"),
    ("cosine_warmup_with_min_lr", 1, 10, {"min_lr_rate": 0.1, "warmup_lr_rate": 0.1}, "never reaches the peak"),
    ("cosine_with_restarts", 10, 10, {}, "needs num_training_steps > num_warmup_steps"),
    ("cosine_with_restarts", 2, 10, {"num_cycles": 0}, "num_cycles for cosine_with_restarts must be a number > 0"),
    ("polynomial", 2, 10, {"lr_end": 0.5}, "lr_end \\(0.5\\) must be >= 0 and smaller than the initial lr"),
    ("warmup_stable_decay", 2, 10, {}, "needs num_decay_steps"),
    ("warmup_stable_decay", 2, None, {"num_decay_steps": 5}, "needs num_training_steps or num_stable_steps"),
    ("warmup_stable_decay", 2, 10, {"num_decay_steps": 5, "decay_type": "exp"}, "decay_shape must be one of"),
    ("warmup_stable_decay", 2, 10, {"num_decay_steps": 9}, "the stable phase .* cannot be negative"),
]


@pytest.mark.parametrize(("name", "warmup", "total", "kwargs", "message"), ERRORS, ids=[e[-1][:40] for e in ERRORS])
def test_errors_say_what_and_how(name, warmup, total, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        hf.get_scheduler(name, _optimizer(), warmup, total, kwargs)
    assert "\n" not in str(info.value)
