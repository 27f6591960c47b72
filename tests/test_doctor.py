"""decoupled.check / decoupled doctor on known-bad and clean setups."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import decoupled
from decoupled.cli import main
from decoupled.doctor import check, format_findings


class MyRMSNorm(nn.Module):  # a custom norm class, found by structure
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
        self.norm = MyRMSNorm(16)
        self.ln = nn.LayerNorm(16)
        self.out = nn.Linear(16, 4, bias=False)

    def forward(self, x):
        return self.out(self.ln(self.norm(self.fc(self.emb(x)))))


def clean_groups(model, wd=0.1):
    decay = [model.fc.weight, model.out.weight, model.emb.weight]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def warmup_cosine(opt, total=1000, warmup=50):
    return decoupled.schedules.create("cosine", opt, warmup_steps=warmup, total_steps=total)


def codes(findings):
    return {f.code for f in findings}


@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.optim.AdamW(g, lr=1e-3),
        lambda g: decoupled.AdamW(g, lr=1e-3),
        lambda g: torch.optim.Adam(g, lr=1e-3, decoupled_weight_decay=True),
    ],
)
def test_clean_setup_has_no_findings(make):
    model = Net()
    opt = make(clean_groups(model))
    sched = warmup_cosine(opt, total=1000)  # timescale 1/(1e-3*0.1) = 1e4 = 10x the run: just inside
    assert check(opt, model, sched) == []
    assert "no findings" in format_findings([])


def test_clean_with_param_groups_helper():
    model = Net()
    opt = decoupled.AdamW(decoupled.param_groups(model, weight_decay=0.1), lr=1e-3)
    assert check(opt, model, warmup_cosine(opt)) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.optim.Adam(g, lr=1e-3, weight_decay=1e-4),
        lambda g: decoupled.Adam(g, lr=1e-3, weight_decay=1e-4),
    ],
)
def test_adam_with_l2(make):
    model = Net()
    opt = make(model.parameters())
    found = check(opt, model, warmup_cosine(opt))
    assert "adam-l2" in codes(found)
    f = next(f for f in found if f.code == "adam-l2")
    assert f.severity == "warning" and "AdamW" in f.fix


def test_adamw_without_decay():
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    assert "adamw-no-decay" in codes(check(opt, model, warmup_cosine(opt)))


def test_decay_on_bias_norms_and_embeddings():
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    found = {f.code: f for f in check(opt, model, warmup_cosine(opt))}
    assert "fc.bias" in found["decay-bias"].where
    assert "norm.weight" in found["decay-norm"].where and "ln.weight" in found["decay-norm"].where
    assert "MyRMSNorm" in found["decay-norm"].what  # the custom class, by structure
    assert "decay-embedding" not in found  # embeddings decay by default, as in GPT-2 and param_groups
    strict = check(opt, model, warmup_cosine(opt), decay_embeddings=False)
    f = next(f for f in strict if f.code == "decay-embedding")
    assert f.severity == "warning" and "emb.weight" in f.where


def test_warmup():
    model = Net()
    opt = torch.optim.AdamW(clean_groups(model), lr=1e-3)
    assert "no-warmup" in codes(check(opt, model))  # no scheduler
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    f = next(f for f in check(opt, model, sched) if f.code == "no-warmup")
    assert f.severity == "warning"
    assert check(opt, model, warmup_steps=100, total_steps=1000) == []


def test_decay_timescale():
    model = Net()
    opt = torch.optim.AdamW(clean_groups(model, wd=0.01), lr=2e-5)  # tau = 5e6 steps
    found = check(opt, model, warmup_steps=10, total_steps=3000, steps_per_epoch=1000)
    f = next(f for f in found if f.code == "decay-timescale")
    assert "5,000,000 steps" in f.what and "epochs" in f.what and f.severity == "warning"
    opt = torch.optim.AdamW(clean_groups(model, wd=0.5), lr=1e-3)  # tau = 2000 steps of 1e6
    assert "decay-timescale" in codes(check(opt, model, warmup_steps=10, total_steps=1_000_000))
    opt = decoupled.AdamW(clean_groups(model, wd=0.1), lr=1e-3, lr_independent_decay=True)  # 10% per step
    f = next(f for f in check(opt, model, warmup_steps=10) if f.code == "decay-timescale")
    assert f.severity == "error" and "lr-independent" in f.what


def test_bf16_resolution():
    model = Net().to(torch.bfloat16)
    opt = torch.optim.AdamW(clean_groups(model, wd=0.1), lr=1e-4)  # 1e-5 per step < 2**-9
    found = check(opt, model, warmup_steps=10)
    assert "decay-below-precision" in codes(found)
    opt = torch.optim.AdamW(clean_groups(Net(), wd=0.1), lr=1e-4)  # fp32: fine
    assert "decay-below-precision" not in codes(check(opt, Net(), warmup_steps=10))
    opt = decoupled.AdamW(clean_groups(model, wd=0.1), lr=1e-4, param_rounding="kahan")  # kept by Kahan
    assert "decay-below-precision" not in codes(check(opt, model, warmup_steps=10))


def test_bf16_updates_below_precision():
    """LayerNorm-like weights at 1.0 in bf16: a step of lr=1e-4 is 1/20 of half an ulp (2^-9)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    f = next(f for f in check(opt, model, warmup_steps=10) if f.code == "update-below-precision")
    assert "(8,)" in f.what and "param_rounding='kahan'" in f.fix
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # a step of 1% is visible
    assert "update-below-precision" not in codes(check(opt, model, warmup_steps=10))
    for rounding in ("kahan", "stochastic"):
        opt = decoupled.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, param_rounding=rounding)
        assert "update-below-precision" not in codes(check(opt, model, warmup_steps=10))


def test_parameter_membership():
    model = Net()
    groups = clean_groups(model)
    groups[1]["params"] = [p for p in groups[1]["params"] if p is not model.ln.bias]
    opt = torch.optim.AdamW(groups, lr=1e-3)
    f = next(f for f in check(opt, model, warmup_steps=10) if f.code == "param-missing")
    assert f.severity == "error" and "ln.bias" in f.where
    opt.param_groups[1]["params"].append(model.fc.weight)  # sneaked in after construction
    assert "param-twice" in codes(check(opt, model, warmup_steps=10))


def test_unsupported_optimizer():
    with pytest.raises(TypeError, match="Adam"):
        check(torch.optim.SGD(Net().parameters(), lr=0.1))


def test_exported_lazily():
    assert decoupled.check is check


def test_training_args_file(tmp_path, capsys):
    pytest.importorskip("transformers")
    from decoupled.integrations.hf import check_training_args

    path = tmp_path / "args.json"
    path.write_text(
        json.dumps(
            {"learning_rate": 2e-5, "weight_decay": 0.0, "warmup_ratio": 0.0, "optim": "adamw_torch", "max_steps": 1000}
        )
    )
    assert main(["doctor", "--training-args", str(path)]) == 0
    out = capsys.readouterr().out
    assert "adamw-no-decay" in out and "no-warmup" in out
    found = check_training_args(
        {"learning_rate": 2e-5, "weight_decay": 0.01, "warmup_ratio": 0.1, "max_steps": 1000}, Net()
    )
    assert "decay-timescale" in codes(found)
    assert "decay-bias" not in codes(found)  # Trainer's own split keeps biases out
    clean = check_training_args({"learning_rate": 1e-3, "weight_decay": 0.1, "warmup_steps": 10, "max_steps": 1000})
    assert clean == []


def test_entry_point_command(tmp_path, capsys):
    src = tmp_path / "setup.py"
    src.write_text(
        "import torch\n"
        "def bad():\n"
        "    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))\n"
        "    return torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-2), m\n"
    )
    assert main(["doctor", f"{src}:bad", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"adam-l2", "decay-bias", "decay-norm", "no-warmup"} <= {d["code"] for d in data}
    assert main(["doctor", f"{src}:nope"]) == 2


def test_entry_point_module_in_the_current_directory_in_any_order(tmp_path, monkeypatch, capsys):
    """`decoupled doctor mysetup:make` run where mysetup.py lies (a console script's sys.path does
    not hold the current directory); the setup's parts are told apart by type, not position."""
    (tmp_path / "mysetup_here.py").write_text(
        "import torch\n"
        "def make():\n"
        "    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))\n"
        "    opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-2)\n"
        "    return m, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10)), opt\n"
        "def no_scheduler():\n"
        "    m = torch.nn.Linear(2, 2)\n"
        "    return torch.optim.AdamW(m.parameters(), lr=1e-3), m, None\n"
        "def twice():\n"
        "    m = torch.nn.Linear(2, 2)\n"
        "    return m, m\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["doctor", "mysetup_here:make", "--json"]) == 0
    codes_found = {d["code"] for d in json.loads(capsys.readouterr().out)}
    assert {"adam-l2", "decay-bias", "decay-norm"} <= codes_found and "no-warmup" not in codes_found
    assert main(["doctor", "mysetup_here:no_scheduler", "--json"]) in (0, 1)
    assert "no-warmup" in {d["code"] for d in json.loads(capsys.readouterr().out)}
    assert main(["doctor", "mysetup_here:twice"]) == 2
    assert "returned (Linear, Linear); return an optimizer" in capsys.readouterr().err
    assert main(["doctor", "no_such_module_here:make"]) == 2
    err = capsys.readouterr().err
    assert "no module 'no_such_module_here'" in err and str(tmp_path) in err
    assert "'path/to/no_such_module_here.py:make'" in err


def test_trainer_callback():
    pytest.importorskip("transformers")
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from decoupled.integrations.hf import DoctorCallback

    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    cb = DoctorCallback()
    state = TrainerState()
    state.max_steps = 1000
    state.num_train_epochs = 2
    args = TrainingArguments(output_dir="/tmp/unused-doctor", report_to=[])
    cb.on_train_begin(args, state, TrainerControl(), model=model, optimizer=opt, lr_scheduler=warmup_cosine(opt))
    assert "decay-bias" in codes(cb.findings)
    with pytest.raises(RuntimeError, match="warning"):
        DoctorCallback(raise_on="warning").on_train_begin(args, state, TrainerControl(), model=model, optimizer=opt)
