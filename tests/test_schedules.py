"""decoupled.schedules: values, checkpointing, errors, parity with transformers, weight-decay schedule."""

from __future__ import annotations

import io
import math

import pytest
import torch

import decoupled
from decoupled import schedules as S


def _optimizer(lrs: tuple[float, ...] = (1e-3, 3e-4), cls: type = torch.optim.SGD) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return cls(groups, lr=lrs[0])


def _run(sched_factory, steps: int, lrs: tuple[float, ...] = (1e-3, 3e-4)) -> list[list[float]]:
    """The lr of every group before each of ``steps`` optimizer steps."""
    opt = _optimizer(lrs)
    sched = sched_factory(opt)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_shapes_by_formula() -> None:
    mu = S.multiplier
    # warmup is linear from 0 and reaches 1 at warmup_steps
    assert [mu("constant", t, warmup_steps=4) for t in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert mu("linear", 10, total_steps=20, warmup_steps=10) == 1.0
    assert mu("linear", 15, total_steps=20, warmup_steps=10) == 0.5
    assert mu("linear", 15, total_steps=20, warmup_steps=10, end_factor=0.2) == pytest.approx(0.6)
    assert mu("linear", 99, total_steps=20) == 0.0  # stays at the end value
    assert mu("cosine", 5, total_steps=10) == pytest.approx(0.5)
    assert mu("cosine", 10, total_steps=10, min_factor=0.1) == pytest.approx(0.1)
    assert mu("cosine", 50, total_steps=10, min_factor=0.1) == pytest.approx(0.1)
    assert mu("polynomial", 5, total_steps=10, power=2.0) == pytest.approx(0.25)
    assert mu("inverse_sqrt", 30, warmup_steps=10) == pytest.approx(1 / math.sqrt(3))
    assert mu("inverse_sqrt", 10, warmup_steps=10) == 1.0
    wsd = [mu("warmup_stable_decay", t, total_steps=10, decay_steps=4, warmup_steps=2) for t in range(11)]
    assert wsd == pytest.approx([0, 0.5, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0])
    sqrt_decay = mu("warmup_stable_decay", 8, total_steps=10, decay_steps=4, decay_shape="1-sqrt")
    assert sqrt_decay == pytest.approx(1 - math.sqrt(0.5))
    # warmup == total: warmup, then the end value
    assert [mu("cosine", t, total_steps=2, warmup_steps=2) for t in range(4)] == [0, 0.5, 0, 0]


def test_restarts_match_torch_sgdr() -> None:
    """AdamWR: cycles of T0, 2*T0, 4*T0 ... like torch's CosineAnnealingWarmRestarts."""
    ours = _run(lambda o: S.CosineRestartsSchedule(o, cycle_steps=5, cycle_mult=2, min_factor=0.1), 40)
    opt = _optimizer()
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2)
    expected = []
    for _ in range(40):
        expected.append([g["lr"] for g in opt.param_groups])
        opt.step()
        ref.step()
    # torch's floor is absolute (eta_min); ours a fraction: compare the shape with min_factor=0.1
    for ours_row, ref_row, base in zip(ours, expected, [(1e-3, 3e-4)] * 40):
        for o, r, b in zip(ours_row, ref_row, base):
            assert o == pytest.approx(0.1 * b + 0.9 * r, rel=1e-12)
    restarts = [t for t in range(1, 40) if ours[t][0] > ours[t - 1][0]]
    assert restarts == [5, 15, 35]


def test_any_optimizer_and_repr() -> None:
    for cls in (torch.optim.SGD, torch.optim.AdamW, decoupled.AdamW):
        opt = _optimizer(cls=cls)
        sched = S.CosineSchedule(opt, total_steps=10, warmup_steps=2)
        assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
        for _ in range(2):
            opt.step()
            sched.step()
        assert sched.get_last_lr() == [1e-3, 3e-4]
    assert repr(sched) == "CosineSchedule(total_steps=10, warmup_steps=2, min_factor=0.0; step 2)"


# one set of options per schedule (every one registered in S.SCHEDULES must be here)
EXAMPLES = {
    "constant": {"warmup_steps": 5},
    "linear": {"total_steps": 40, "warmup_steps": 5, "end_factor": 0.1},
    "cosine": {"total_steps": 40, "warmup_steps": 5, "min_factor": 0.1},
    "cosine_with_restarts": {"cycle_steps": 7, "warmup_steps": 5, "cycle_mult": 1.5},
    "polynomial": {"total_steps": 40, "warmup_steps": 5, "power": 2.0},
    "inverse_sqrt": {"warmup_steps": 5},
    "warmup_stable_decay": {"total_steps": 40, "decay_steps": 10, "warmup_steps": 5, "decay_shape": "cosine"},
}


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_checkpoint_resumes_identically(name: str) -> None:
    options = EXAMPLES[name]
    full = _run(lambda o: S.create(name, o, **options), 40)
    opt = _optimizer()
    sched = S.create(name, opt, **options)
    for _ in range(17):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # only numbers and strings inside
    opt2 = _optimizer()
    sched2 = S.create(name, opt2, **options)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    resumed = []
    for _ in range(17, 40):
        resumed.append([g["lr"] for g in opt2.param_groups])
        opt2.step()
        sched2.step()
    assert resumed == full[17:]
    assert len({tuple(r) for r in full}) > 2  # the schedule really moves


def test_errors_say_what_and_how() -> None:
    opt = _optimizer()
    with pytest.raises(ValueError, match="warmup_steps=20 is longer than total_steps=10.*lower warmup_steps"):
        S.CosineSchedule(opt, total_steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        S.LinearSchedule(opt, total_steps=10, warmup_steps=-1)
    with pytest.raises(ValueError, match="total_steps must be > 0"):
        S.LinearSchedule(opt, total_steps=0)
    with pytest.raises(ValueError, match="whole number of optimizer steps, got 10.5"):
        S.LinearSchedule(opt, total_steps=10.5)
    with pytest.raises(ValueError, match="unknown schedule 'cosin'.*choose one of"):
        S.create("cosin", opt)
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        S.create("reduce_lr_on_plateau", opt)
    with pytest.raises(ValueError, match="min_factor must be a number in \\[0, 1\\]"):
        S.CosineSchedule(opt, total_steps=10, min_factor=1.5)
    with pytest.raises(ValueError, match="decay_shape must be one of"):
        S.WarmupStableDecaySchedule(opt, total_steps=10, decay_steps=2, decay_shape="exp")
    with pytest.raises(ValueError, match="stable phase"):
        S.WarmupStableDecaySchedule(opt, total_steps=10, decay_steps=8, warmup_steps=5)
    with pytest.raises(ValueError, match="cycle_mult"):
        S.CosineRestartsSchedule(opt, cycle_steps=5, cycle_mult=0.5)
    with pytest.raises(ValueError, match="has no option \\['num_cycles'\\]"):
        S.create("cosine", opt, total_steps=10, num_cycles=0.5)
    with pytest.raises(ValueError, match="needs \\['total_steps'\\]"):
        S.WeightDecaySchedule(opt, "cosine")
    with pytest.raises(ValueError, match="non-negative"):
        S.multiplier("constant", -1)
    with pytest.raises(ValueError, match="warmup_shape must be one of \\('linear', 'cosine', '1-sqrt'\\)"):
        S.ConstantSchedule(opt, 4, warmup_shape="exp")
    with pytest.raises(ValueError, match="past_end must be one of \\('floor', 'continue'\\)"):
        S.CosineSchedule(opt, total_steps=10, past_end="hold")
    with pytest.raises(ValueError, match="offset must be >= 0"):
        S.LinearSchedule(opt, total_steps=10, offset=-1)
    with pytest.raises(ValueError, match="warmup_start must be a number in \\[0, 1\\]"):
        S.create("inverse_sqrt", opt, warmup_steps=4, warmup_start=2.0)
    with pytest.raises(ValueError, match="cycles must be a finite number >= 0"):
        S.WarmupStableDecaySchedule(opt, total_steps=10, decay_steps=2, cycles=math.inf)
    with pytest.raises(ValueError, match="has no option \\['decay_steps'\\]"):
        S.create("cosine", opt, total_steps=10, decay_steps=2)


# ---- composition: every schedule is a warmup followed by a shape -------------------------------


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_every_schedule_takes_the_same_warmup(name: str) -> None:
    """One warmup for all: from warmup_start to 1 over warmup_steps, shaped by warmup_shape, read
    offset steps ahead; after the warmup the schedule's own shape, unchanged by those options."""
    options = {**EXAMPLES[name], "warmup_steps": 4}
    plain = [S.multiplier(name, t, **options) for t in range(30)]
    ramps = {
        "linear": lambda p: p,
        "cosine": lambda p: (1 - math.cos(math.pi * p)) / 2,
        "1-sqrt": lambda p: 1 - math.sqrt(1 - p),
    }
    for shape, ramp in ramps.items():
        warm = [S.multiplier(name, t, **options, warmup_start=0.2, warmup_shape=shape) for t in range(30)]
        assert warm[:4] == pytest.approx([0.2 + 0.8 * ramp(t / 4) for t in range(4)], rel=1e-12)
        assert warm[4:] == plain[4:]
    ahead = [S.multiplier(name, t, **options, offset=3) for t in range(27)]
    assert ahead == plain[3:]
    assert plain[:4] == pytest.approx([t / 4 for t in range(4)]) or name == "warmup_stable_decay"


def _cos(p: float, cycles: float = 0.5) -> float:
    return (1 + math.cos(2 * math.pi * cycles * p)) / 2


# (name, options, the multiplier at steps 0, 1, ... by formula)
SHAPES = [
    ("cosine", {"total_steps": 10, "cycles": 1.0}, [_cos(t / 10, 1.0) for t in range(10)] + [0.0] * 5),
    ("cosine", {"total_steps": 10, "past_end": "continue"}, [_cos(t / 10) for t in range(20)]),
    (
        "cosine",
        {"total_steps": 10, "min_factor": 0.2, "past_end": "continue"},
        [0.2 + 0.8 * _cos(t / 10) for t in range(20)],
    ),
    (
        "cosine",
        {"total_steps": 12, "warmup_steps": 2, "cycles": 1.5, "past_end": "continue"},
        [0, 0.5] + [_cos(t / 10, 1.5) for t in range(15)],
    ),
    (
        "warmup_stable_decay",
        {"total_steps": 10, "decay_steps": 4, "warmup_steps": 2, "min_factor": 0.5},
        [0.5, 0.75, 1, 1, 1, 1, 1, 0.875, 0.75, 0.625, 0.5, 0.5],
    ),
    (
        "warmup_stable_decay",
        {"total_steps": 10, "decay_steps": 4, "warmup_steps": 2, "min_factor": 0.5, "warmup_start": 0.0},
        [0, 0.5, 1, 1, 1, 1, 1, 0.875, 0.75, 0.625, 0.5, 0.5],
    ),
    (
        "warmup_stable_decay",
        {"total_steps": 8, "decay_steps": 4, "decay_shape": "cosine", "cycles": 1.0},
        [1, 1, 1, 1, 1, 0.5, 0, 0.5, 0, 0],
    ),
    (
        "linear",
        {"total_steps": 10, "warmup_steps": 2, "offset": 2},
        [1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0, 0],
    ),
]


@pytest.mark.parametrize(("name", "options", "expected"), SHAPES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SHAPES)])
def test_composition_options_by_formula(name: str, options: dict, expected: list[float]) -> None:
    assert [S.multiplier(name, t, **options) for t in range(len(expected))] == pytest.approx(expected, abs=1e-15)
    sched = S.create(name, _optimizer(), **options)  # the class gives the same curve
    assert [sched.multiplier(t) for t in range(len(expected))] == pytest.approx(expected, abs=1e-15)


def test_options_leave_out_what_changes_nothing() -> None:
    """A scheduler's options (its repr and state_dict) hold the composition options only where
    they change the curve, so checkpoints of the plain schedules keep their old form."""
    opt = _optimizer()
    plain = S.CosineSchedule(opt, 10, cycles=0.5, past_end="floor", warmup_shape="linear", offset=0)
    assert plain.options == {"total_steps": 10, "warmup_steps": 0, "min_factor": 0.0}
    waves = S.CosineSchedule(_optimizer(), 10, cycles=1.0, past_end="continue", warmup_start=0.1)
    assert waves.options == {**plain.options, "cycles": 1.0, "past_end": "continue", "warmup_start": 0.1}
    assert repr(waves).startswith("CosineSchedule(total_steps=10, warmup_steps=0, min_factor=0.0, cycles=1.0")


# ---- parity with transformers -------------------------------------------------------------

# (transformers name, its scheduler_specific_kwargs, our name, our options), T = 60, w = 8
T, W = 60, 8
PARITY = [
    ("constant_with_warmup", {}, "constant", {"warmup_steps": W}),
    ("linear", {}, "linear", {"total_steps": T, "warmup_steps": W}),
    ("cosine", {}, "cosine", {"total_steps": T, "warmup_steps": W}),
    ("cosine_with_min_lr", {"min_lr_rate": 0.1}, "cosine", {"total_steps": T, "warmup_steps": W, "min_factor": 0.1}),
    (
        "cosine_with_restarts",
        {"num_cycles": 1},
        "cosine_with_restarts",
        {"cycle_steps": T - W, "warmup_steps": W, "total_steps": T},
    ),
    (
        "cosine_with_restarts",
        {"num_cycles": 3},
        "cosine_with_restarts",
        {"cycle_steps": (T - W) / 3, "warmup_steps": W, "total_steps": T},
    ),
    (
        "polynomial",
        {"power": 2.0, "lr_end": 1e-5},
        "polynomial",
        {"total_steps": T, "warmup_steps": W, "power": 2.0, "end_factor": 1e-5 / 1e-3},
    ),
    ("inverse_sqrt", {}, "inverse_sqrt", {"warmup_steps": W}),
    ("inverse_sqrt", {"timescale": 20}, "inverse_sqrt", {"warmup_steps": W, "timescale": 20}),
    *[
        (
            "warmup_stable_decay",
            {"num_decay_steps": 20, "decay_type": shape, "min_lr_ratio": 0.05},
            "warmup_stable_decay",
            {"total_steps": T, "warmup_steps": W, "decay_steps": 20, "decay_shape": shape, "min_factor": 0.05},
        )
        for shape in ("linear", "cosine", "1-sqrt")
    ],
]


@pytest.mark.parametrize(
    ("hf_name", "hf_kwargs", "name", "options"), PARITY, ids=[f"{p[0]}-{i}" for i, p in enumerate(PARITY)]
)
def test_same_values_as_transformers(hf_name, hf_kwargs, name, options) -> None:
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

    def hf(opt):
        return transformers.get_scheduler(
            hf_name, opt, num_warmup_steps=W, num_training_steps=T, scheduler_specific_kwargs=dict(hf_kwargs)
        )

    expected = _run(hf, T + 1)
    ours = _run(lambda o: S.create(name, o, **options), T + 1)
    if hf_name in ("cosine_with_restarts", "polynomial"):  # float rounding of (n * progress) % 1 etc.
        flat = [x for row in expected for x in row]
        assert [x for row in ours for x in row] == pytest.approx(flat, rel=1e-12, abs=1e-18)
    else:
        assert ours == expected  # bitwise


# ---- lr-independent decay follows the schedule ---------------------------------------------


def test_lr_independent_decay_follows_schedule_shape() -> None:
    """With zero gradients AdamW only decays: theta_T = theta_0 * prod_t (1 - mu(t) * wd)."""
    lr, wd, steps = 0.5, 0.01, 30
    p = torch.nn.Parameter(torch.ones(4))
    opt = decoupled.AdamW([p], lr=lr, weight_decay=wd, lr_independent_decay=True)
    sched = S.CosineSchedule(opt, total_steps=steps, warmup_steps=5, min_factor=0.2)
    expected = torch.ones(4)
    for t in range(steps):
        rho = 1 - (opt.param_groups[0]["lr"] / lr) * wd  # what decoupled.AdamW applies
        assert rho == pytest.approx(1 - sched.multiplier(t) * wd, rel=1e-14)
        expected.mul_(rho)
        p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0)
    # the size of lr does not enter: lr=0.5 decays the same total as lr=5e-4 would
    total = math.prod(
        1 - S.multiplier("cosine", t, total_steps=steps, warmup_steps=5, min_factor=0.2) * wd for t in range(steps)
    )
    assert p[0].item() == pytest.approx(total, rel=1e-5)


# ---- weight-decay schedule ------------------------------------------------------------------


def test_weight_decay_schedule_named_and_callable() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = decoupled.AdamW(decoupled.param_groups(model, weight_decay=0.1), lr=1e-3)
    wds = S.WeightDecaySchedule(opt, "linear", total_steps=10)
    seen = []
    for _ in range(11):
        seen.append(wds.get_last_weight_decay())
        opt.step()
        wds.step()
    assert [d for d, _ in seen] == pytest.approx([0.1 * (10 - t) / 10 for t in range(11)])
    assert all(nd == 0.0 for _, nd in seen)  # the no-decay group stays at 0

    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], weight_decay=0.2)
    grow = S.WeightDecaySchedule(opt2, lambda t: 1 + t)
    grow.step()
    grow.step()
    assert opt2.param_groups[0]["weight_decay"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="finite number >= 0"):
        S.WeightDecaySchedule(opt2, lambda t: -1.0)


def test_weight_decay_schedule_checkpoint() -> None:
    def build():
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], weight_decay=0.1)
        return opt, S.WeightDecaySchedule(opt, "cosine", total_steps=20, warmup_steps=4)

    opt, wds = build()
    for _ in range(9):
        wds.step()
    buffer = io.BytesIO()
    torch.save(wds.state_dict(), buffer)
    buffer.seek(0)
    opt2, wds2 = build()
    wds2.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt2.param_groups[0]["weight_decay"] == opt.param_groups[0]["weight_decay"]
    for _ in range(5):
        wds.step()
        wds2.step()
        assert opt2.param_groups[0]["weight_decay"] == opt.param_groups[0]["weight_decay"]
    other = S.WeightDecaySchedule(opt2, "linear", total_steps=20)
    with pytest.raises(ValueError, match="same curve"):
        other.load_state_dict(wds.state_dict())
