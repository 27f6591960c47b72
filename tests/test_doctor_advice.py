"""doctor's advice works, and each group's timescale is read in its own convention.

Every fix doctor suggests is applied here as its text says, and the finding it answers goes away;
the TrainingArguments fixes are constructed against the installed transformers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import decoupled
from decoupled.doctor import check, timescales
from decoupled.doctor.decay import GroupTimescale


class MyRMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)
        self.gain = MyRMSNorm(16)  # a norm that Trainer's name-based split does not recognize
        self.out = nn.Linear(16, 4, bias=False)

    def forward(self, x):
        return self.out(self.gain(self.fc(self.emb(x))))


def codes(findings):
    return {f.code for f in findings}


def clean(model, wd=0.1, lr=1e-3, **kw):
    return decoupled.AdamW(decoupled.param_groups(model, weight_decay=wd), lr=lr, **kw)


def with_wd(opt, wd):
    for g in opt.param_groups:
        if g["weight_decay"] > 0:
            g["weight_decay"] = wd
    return opt


def twice(opt, p):
    opt.param_groups[-1]["params"].append(p)  # sneaked in after construction
    return opt


# (name, bad setup -> (optimizer, model, scheduler, check kwargs), code, what the fix says, the fix applied)
CHECK_FIXES = [
    (
        "adam-l2",
        lambda m: (torch.optim.Adam(decoupled.param_groups(m, 1e-4), lr=1e-3), m, None, {"warmup_steps": 10}),
        "adam-l2",
        "decoupled.AdamW",
        lambda opt, m: decoupled.AdamW(decoupled.param_groups(m, 0.1), lr=1e-3),
    ),
    (
        "adamw-no-decay",
        lambda m: (torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0), m, None, {"warmup_steps": 10}),
        "adamw-no-decay",
        "Set weight_decay (commonly 0.01-0.1)",
        lambda opt, m: torch.optim.AdamW(decoupled.param_groups(m, 0.1), lr=1e-3),
    ),
    (
        "decay-bias",
        lambda m: (torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1), m, None, {"warmup_steps": 10}),
        "decay-bias",
        "decoupled.param_groups(model, weight_decay=...)",
        lambda opt, m: torch.optim.AdamW(decoupled.param_groups(m, weight_decay=0.1), lr=1e-3),
    ),
    (
        "decay-norm",
        lambda m: (torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1), m, None, {"warmup_steps": 10}),
        "decay-norm",
        "decoupled.param_groups(model, weight_decay=...)",
        lambda opt, m: torch.optim.AdamW(decoupled.param_groups(m, weight_decay=0.1), lr=1e-3),
    ),
    (
        "decay-embedding",
        lambda m: (clean(m), m, None, {"warmup_steps": 10, "decay_embeddings": False}),
        "decay-embedding",
        "with decay_embeddings=False, embeddings",
        lambda opt, m: decoupled.AdamW(decoupled.param_groups(m, 0.1, decay_embeddings=False), lr=1e-3),
    ),
    (
        "param-missing",
        lambda m: (torch.optim.AdamW([m.fc.weight], lr=1e-3), m, None, {"warmup_steps": 10}),
        "param-missing",
        "decoupled.param_groups(model)",
        lambda opt, m: torch.optim.AdamW(decoupled.param_groups(m), lr=1e-3),
    ),
    (
        "param-twice",
        lambda m: (
            twice(torch.optim.AdamW(decoupled.param_groups(m), lr=1e-3), m.fc.weight),
            m,
            None,
            {"warmup_steps": 10},
        ),
        "param-twice",
        "exactly one param group",
        lambda opt, m: torch.optim.AdamW(decoupled.param_groups(m), lr=1e-3),
    ),
    (
        "no-warmup",
        lambda m: (clean(m), m, None, {}),
        "no-warmup",
        "decoupled.schedules.create('cosine', optimizer, warmup_steps=..., total_steps=...)",
        lambda opt, m: opt,
    ),
    (
        "timescale-long",
        lambda m: (clean(m, wd=0.01, lr=2e-5), m, None, {"warmup_steps": 10, "total_steps": 3000}),
        "decay-timescale",
        "raise weight_decay towards",
        None,  # fix_args
    ),
    (
        "timescale-short",
        lambda m: (clean(m, wd=5.0, lr=1e-3), m, None, {"warmup_steps": 10, "total_steps": 100_000}),
        "decay-timescale",
        "Lower weight_decay towards",
        None,
    ),
    (
        "timescale-wipes-out",
        lambda m: (
            clean(m, wd=0.1, lr=1e-3, lr_independent_decay=True),
            m,
            None,
            {"warmup_steps": 10, "total_steps": 5000},
        ),
        "decay-timescale",
        "Lower weight_decay towards",
        None,
    ),
    (
        "decay-below-precision",
        lambda m: (clean(m.to(torch.bfloat16), lr=1e-4), m, None, {"warmup_steps": 10}),
        "decay-below-precision",
        "param_rounding='kahan'",
        lambda opt, m: clean(m, lr=1e-4, param_rounding="kahan"),
    ),
    (
        "update-below-precision",
        lambda m: (clean(m.to(torch.bfloat16), lr=1e-4), m, None, {"warmup_steps": 10}),
        "update-below-precision",
        "param_rounding='stochastic'",
        lambda opt, m: clean(m, lr=1e-4, param_rounding="stochastic"),
    ),
]


@pytest.mark.parametrize("name, bad, code, says, fix", CHECK_FIXES, ids=[c[0] for c in CHECK_FIXES])
def test_every_fix_of_check_works_as_written(name, bad, code, says, fix):
    torch.manual_seed(0)
    model = Net()
    opt, model, sched, kw = bad(model)
    finding = next(f for f in check(opt, model, sched, **kw) if f.code == code)
    assert says in finding.fix
    if name == "no-warmup":  # the call the fix names, as written
        sched = decoupled.schedules.create("cosine", opt, warmup_steps=50, total_steps=1000)
        kw = {}
    elif fix is None:  # a new weight decay, as a number
        assert set(finding.fix_args) == {"weight_decay"}
        assert f"{finding.fix_args['weight_decay']:.3g}" in finding.fix
        opt = with_wd(opt, finding.fix_args["weight_decay"])
    else:
        opt = fix(opt, model)
    after = check(opt, model, sched, **kw)
    assert code not in codes(after), [f.what for f in after if f.code == code]


# (TrainingArguments as in a JSON file, the code of the finding whose fix_args are applied)
TRAINING_ARGS_FIXES = [
    ({"weight_decay": 0.0, "max_steps": 1000, "warmup_steps": 10}, "adamw-no-decay"),
    ({"weight_decay": 0.0, "warmup_steps": 10}, "adamw-no-decay"),  # run length unknown
    ({"weight_decay": 0.1, "learning_rate": 1e-3, "max_steps": 1000}, "no-warmup"),
    ({"learning_rate": 2e-5, "weight_decay": 0.01, "warmup_steps": 10, "max_steps": 1000}, "decay-timescale"),
    ({"learning_rate": 1e-3, "weight_decay": 10.0, "warmup_steps": 10, "max_steps": 100_000}, "decay-timescale"),
    ({"learning_rate": 1e-3, "weight_decay": 200.0, "warmup_steps": 10, "max_steps": 1000}, "decay-timescale"),
    ({"weight_decay": 0.1, "learning_rate": 1e-3, "warmup_ratio": 0.1, "max_steps": 1000}, "warmup-ratio"),
]


@pytest.mark.parametrize(
    "args, code", TRAINING_ARGS_FIXES, ids=[f"{c}-{i}" for i, (_, c) in enumerate(TRAINING_ARGS_FIXES)]
)
def test_every_training_args_fix_constructs_with_the_installed_transformers(tmp_path, args, code):
    transformers = pytest.importorskip("transformers")
    from decoupled.integrations.hf import check_training_args

    finding = next(f for f in check_training_args(args) if f.code == code)
    assert finding.fix_args, finding
    for key, value in finding.fix_args.items():
        assert key in finding.fix and (value is None or f"{value:.3g}" in finding.fix), finding.fix
    fixed = {k: v for k, v in {**args, **finding.fix_args}.items() if v is not None}
    transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", **fixed)  # no TypeError
    assert code not in codes(check_training_args(fixed))


def test_the_trainer_split_fix_builds_and_clears_the_finding(tmp_path):
    transformers = pytest.importorskip("transformers")
    from decoupled.integrations import hf

    args = {"learning_rate": 1e-3, "weight_decay": 0.1, "warmup_steps": 10, "max_steps": 1000}
    found = {f.code: f for f in hf.check_training_args(args, Net())}
    assert "gain.weight" in found["decay-norm"].where  # Trainer decays a norm it does not know by name
    assert "create_optimizer_and_scheduler(model, args)" in found["decay-norm"].fix
    model = Net()
    opt, sched = hf.create_optimizer_and_scheduler(
        model, transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", **args)
    )
    assert check(opt, model, sched) == []


LR, RUN = 1e-3, 2000
# (extra param-group keys, weight_decay, convention doctor reads, tau in steps from the convention's formula)
CONVENTION_GROUPS = [
    ({}, 0.1, "adamw", 1 / (LR * 0.1)),
    ({"decay_scaling": "lr"}, 0.1, "adamw", 1 / (LR * 0.1)),
    ({"decay_scaling": "independent"}, 1e-4, "adamw_indep", 1 / 1e-4),
    ({"lr_independent_decay": True, "lr_max": LR}, 1e-4, "adamw_indep", 1 / 1e-4),
    ({"lr_independent_decay": True, "lr_max": 2 * LR}, 1e-4, "adamw_indep", 2 / 1e-4),  # peak lr is half lr_max
    ({"decay_scaling": "corrected"}, 0.1, "adamw_corrected", 1 / (LR * 0.1)),
    ({"decay_scaling": "corrected", "lr_max": 2 * LR}, 0.1, "adamw_corrected", 2 * LR / (LR**2 * 0.1)),
    ({"cautious_decay": True}, 0.1, "adamw_cautious", 1 / (LR * 0.1)),
    ({"decay_scaling": "independent", "cautious_decay": True}, 1e-4, "adamw_indep+cautious", 1 / 1e-4),
    ({"decay_scaling": "corrected", "cautious_decay": True}, 0.1, "adamw_corrected+cautious", 1 / (LR * 0.1)),
    ({}, 0.0, "adamw", math.inf),
]


@pytest.mark.parametrize(
    "keys, wd, convention, tau", CONVENTION_GROUPS, ids=[f"{c[2]}-{i}" for i, c in enumerate(CONVENTION_GROUPS)]
)
def test_each_group_is_read_in_its_convention(keys, wd, convention, tau):
    """Plain param-group dicts in torch.optim.AdamW, which keeps keys it does not know (decay_scaling,
    cautious_decay) as decoupled.AdamW will read them."""
    p = nn.Parameter(torch.ones(4, 4))
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": wd, **keys}], lr=LR)
    (row,) = timescales(opt, total_steps=RUN)
    assert row.convention == convention
    assert row.tau_steps == pytest.approx(tau, rel=1e-12)
    assert row.total_steps == RUN


# (tau in steps, run in steps, reading, findings' code and severity or None)
READINGS = [
    (10_000, 2000, "longer than the run: decay alone keeps 82% of a weight", None),
    (10_000, 1000, "longer than the run: decay alone keeps 90% of a weight", None),
    (50_000, 2000, "decay does almost nothing: keeps 96% of a weight", ("decay-timescale", "info")),
    (1_000_000, 2000, "decay does almost nothing: keeps 100% of a weight", ("decay-timescale", "warning")),
    (1000, 2000, "acts within the run", None),
    (150, None, "decay dominates: under 200 steps", ("decay-timescale", "warning")),
    (150, 10_000, "decay dominates: under 200 steps", ("decay-timescale", "warning")),
    (5_000, 1_000_000, "decay dominates: under 1% of the run", ("decay-timescale", "warning")),
    (5, 1000, "decay dominates: under 200 steps", ("decay-timescale", "error")),
    (5_000, None, "run length unknown", None),
]


@pytest.mark.parametrize("tau, run, reading, flagged", READINGS, ids=[f"tau{t}-run{r}" for t, r, _, _ in READINGS])
def test_timescale_next_to_the_run(tau, run, reading, flagged):
    p = nn.Parameter(torch.ones(4, 4))
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": 1 / (tau * LR)}], lr=LR)
    (row,) = timescales(opt, total_steps=run)
    assert isinstance(row, GroupTimescale) and row.tau_steps == pytest.approx(tau)
    assert row.reading() == reading
    found = [(f.code, f.severity) for f in check(opt, total_steps=run, warmup_steps=10)]
    assert found == ([flagged] if flagged else [])


def test_coupled_adam_has_no_timescale():
    p = nn.Parameter(torch.ones(4, 4))
    (row,) = timescales(torch.optim.Adam([p], lr=LR, weight_decay=1e-4), total_steps=RUN)
    assert row.convention == "adam_l2" and row.tau_steps is None and "coupled" in row.reading()


def test_timescale_table_is_printed_by_the_callback(capsys):
    pytest.importorskip("transformers")
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from decoupled.integrations.hf import DoctorCallback

    model = Net()
    opt = clean(model)
    state = TrainerState()
    state.max_steps = 2000
    args = TrainingArguments(output_dir="/tmp/unused-doctor", report_to=[])
    DoctorCallback().on_train_begin(args, state, TrainerControl(), model=model, optimizer=opt, lr_scheduler=None)
    out = capsys.readouterr().out
    assert "decay timescale per param group" in out and "10,000 steps" in out and "longer than the run" in out
