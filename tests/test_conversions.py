"""Weight-decay conversions: known values, round trips, errors, and the command."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from decoupled.cli import main
from decoupled.conversions import (
    FORMS,
    convert_wd,
    lr_independent_to_normalized,
    lr_independent_to_torch,
    normalized_to_lr_independent,
    run_steps,
    steps_per_epoch,
    timescale_epochs,
    timescale_steps,
    torch_to_lr_independent,
    weight_decay_for_timescale,
)

CTX = dict(lr=1e-3, batch_size=128, dataset_size=50_000, epochs=100)


def test_known_values():
    assert torch_to_lr_independent(0.1, 1e-3) == pytest.approx(1e-4)
    assert lr_independent_to_torch(1e-4, 1e-3) == pytest.approx(0.1)
    # the paper: lambda = lambda_norm * sqrt(b / (B T)); b=128, B=50000, T=100 -> sqrt(128/5e6)
    assert normalized_to_lr_independent(0.05, batch_size=128, dataset_size=50_000, epochs=100) == pytest.approx(
        0.05 * math.sqrt(128 / 5e6)
    )
    assert lr_independent_to_normalized(
        0.05 * math.sqrt(128 / 5e6), batch_size=128, dataset_size=50_000, epochs=100
    ) == pytest.approx(0.05)
    assert timescale_steps(1e-3, 0.1) == pytest.approx(1e4)
    assert timescale_epochs(1e-3, 0.1, batch_size=100, dataset_size=10_000) == pytest.approx(100.0)  # 100 steps/epoch
    assert weight_decay_for_timescale(1e4, 1e-3) == pytest.approx(0.1)
    assert timescale_steps(1e-3, 0.0) == math.inf
    assert convert_wd(0.1, "torch", "indep", lr=1e-3) == pytest.approx(1e-4)
    assert convert_wd(0.1, "torch", "tau", lr=1e-3) == pytest.approx(1e4)
    assert convert_wd(math.inf, "tau", "torch", lr=1e-3) == 0.0
    assert convert_wd(0.0, "indep", "tau") == math.inf


@given(st.floats(1e-6, 10.0), st.sampled_from(list(FORMS)), st.sampled_from(list(FORMS)))
def test_round_trip(value, a, b):
    there = convert_wd(value, a, b, **CTX)
    back = convert_wd(there, b, a, **CTX)
    assert back == pytest.approx(value, rel=1e-9)


def test_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="needs lr"):
        convert_wd(0.1, "torch", "indep")
    with pytest.raises(ValueError, match="batch_size, dataset_size, epochs"):
        convert_wd(0.1, "indep", "normalized")
    with pytest.raises(ValueError, match="sqrt"):
        convert_wd(0.1, "adam_l2", "torch", lr=1e-3)
    with pytest.raises(ValueError, match="positive"):
        convert_wd(0.1, "torch", "indep", lr=-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        convert_wd(-0.1, "torch", "indep", lr=1e-3)


def test_command(capsys):
    assert main(["convert-wd", "0.1", "--lr", "1e-3", "--to", "indep"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(1e-4)
    assert (
        main(["convert-wd", "0.1", "--lr", "1e-3", "--batch-size", "128", "--dataset-size", "50000", "--epochs", "100"])
        == 0
    )
    out = capsys.readouterr().out
    assert "tau_epochs" in out and "10000" in out and "of the run" in out
    assert main(["convert-wd", "0.1", "--to", "indep"]) == 2
    assert "needs --lr" in capsys.readouterr().err


# (convert-wd arguments, what the one line on stderr must say)
BAD_COMMANDS = [
    (["-0.1"], "argument value: must be >= 0 (a weight decay) or > 0 (a timescale"),
    (["nan"], "argument value: must be >= 0"),
    (["x"], "argument value: 'x' is not a number"),
    (["inf"], "VALUE as adamw: a weight decay must be a finite number >= 0, got inf"),
    (["0", "--from", "tau"], "VALUE as tau: a timescale must be > 0 (inf for no decay)"),
    (["0", "--from", "tau_fraction", "--total-steps", "100"], "VALUE as tau_fraction: a timescale must be > 0"),
    (["0.1", "--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["0.1", "--lr=-1e-3"], "argument --lr: must be a finite number > 0"),
    (["0.1", "--lr", "-1e-3"], "argument --lr: expected one argument"),  # argparse reads -1e-3 as a flag
    (["0.1", "--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (["0.1", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["0.1", "--batch-size", "12.5"], "argument --batch-size: '12.5' is not a whole number"),
    (["0.1", "--dataset-size", "-3"], "argument --dataset-size: must be at least 1"),
    (["0.1", "--epochs", "0"], "argument --epochs: must be a finite number > 0"),
    (["0.1", "--total-steps", "0"], "argument --total-steps: must be at least 1"),
    (["0.1", "--from", "adam_l2"], "Adam + L2 has no fixed translation"),
    (["0.1", "--to", "adamw_fast"], "unknown weight-decay form 'adamw_fast'"),
    (["0.1", "--to", "indep"], "converting adamw -> adamw_indep needs --lr"),
    (["0.1", "--to", "tau_fraction", "--lr", "1e-3"], "converting adamw -> tau_fraction needs --total-steps"),
    (["0.1", "--to", "normalized"], "needs --lr, --batch-size, --dataset-size, --epochs"),
    (
        ["1e-4", "--from", "indep", "--to", "normalized"],
        "adamw_indep -> normalized needs --batch-size, --dataset-size, --epochs",
    ),
    ([], "the following arguments are required: value"),
]


@pytest.mark.parametrize("argv, says", BAD_COMMANDS, ids=[" ".join(a) or "nothing" for a, _ in BAD_COMMANDS])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, says):
    assert main(["convert-wd", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("decoupled convert-wd: error: "), captured.err
    assert says in lines[0], lines[0]
    assert captured.out == "" and "Traceback" not in captured.err


def test_the_run_is_whole_steps_and_says_how_they_were_counted(capsys):
    """50,000 examples in batches of 128 are 391 steps an epoch (the last one partial), not 390.625."""
    argv = ["convert-wd", "0.1", "--lr", "1e-3", "--batch-size", "128", "--dataset-size", "50000", "--epochs", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "39062.5" not in out and "39,062.5" not in out
    assert "an epoch is 391 steps (50,000/128 = 390.625, rounded up" in out
    assert "the run is 100 epochs = 39,100 steps" in out
    assert "the timescale is 0.256 of the run" in out  # 10,000 / 39,100
    assert main(["convert-wd", "0.1", "--lr", "1e-3", "--batch-size", "100", "--dataset-size", "10000"]) == 0
    assert "an epoch is 100 steps\n" in capsys.readouterr().out  # exact: nothing to say


@pytest.mark.parametrize(
    "batch, examples, epochs, per_epoch, run",
    [
        (128, 50_000, 100, 391, 39_100),
        (100, 10_000, 3, 100, 300),
        (7, 10, 2.5, 2, 5),
        (64, 64, 1, 1, 1),
        (32, 1, 4, 1, 4),
    ],
)
def test_steps_are_counted_as_trainer_counts_them(batch, examples, epochs, per_epoch, run):
    assert steps_per_epoch(batch, examples) == per_epoch == math.ceil(examples / batch)
    assert run_steps(epochs, batch, examples) == run


LR = 1e-3
# (value, from, to, context, expected): each convention's weight_decay decays the same fraction per step at peak lr
KNOWN = [
    (0.1, "adamw", "adamw_indep", {}, LR * 0.1),
    (0.1, "torch", "indep", {}, LR * 0.1),  # the aliases
    (0.1, "adamw", "adamw_corrected", {}, 0.1),  # lr**2 / lr_max * wd = lr * wd at peak
    (0.1, "adamw", "adamw_cautious", {}, 0.1),
    (1e-4, "adamw_indep", "adamw_corrected", {}, 1e-4 / LR),
    (0.1, "adamw_corrected", "tau", {}, 1 / (LR * 0.1)),
    (1e-4, "adamw_indep", "tau", {"lr": None}, 1e4),  # no lr needed
    (0.1, "adamw", "tau_fraction", {"total_steps": 40_000}, 0.25),
    (0.25, "tau_fraction", "adamw", {"total_steps": 40_000}, 0.1),
    (0.1, "adamw", "tau_epochs", {"batch_size": 128, "dataset_size": 50_000}, 1e4 / 391),
    (0.1, "adamw", "tau_fraction", {"batch_size": 128, "dataset_size": 50_000, "epochs": 100}, 1e4 / 39_100),
    (math.inf, "tau_fraction", "adamw_indep", {"total_steps": 10}, 0.0),
]


@pytest.mark.parametrize("value, src, dst, context, expected", KNOWN, ids=[f"{s}->{d}" for _, s, d, _, _ in KNOWN])
def test_known_conversions(value, src, dst, context, expected):
    kw = {"lr": LR, **context}
    assert convert_wd(value, src, dst, **kw) == pytest.approx(expected, rel=1e-12)


# (tau keywords, convention, weight_decay): tau = 1 / (fraction decayed per step at peak lr)
TIMESCALES = [
    ({"tau_steps": 1e4, "lr": LR}, "adamw", 1 / (LR * 1e4)),
    ({"tau_steps": 1e4, "lr": LR}, "adamw_cautious", 1 / (LR * 1e4)),
    ({"tau_steps": 1e4, "lr": LR}, "adamw_corrected", 1 / (LR * 1e4)),
    ({"tau_steps": 1e4, "lr": LR, "lr_max": 2 * LR}, "adamw_corrected", 2 * LR / (LR**2 * 1e4)),
    ({"tau_steps": 1e4}, "adamw_indep", 1e-4),
    ({"tau_steps": 1e4, "lr": LR, "lr_max": 2 * LR}, "adamw_indep", 2e-4),
    ({"tau_fraction": 0.1, "total_steps": 50_000, "lr": LR}, "adamw", 1 / (LR * 5000)),
    ({"tau_fraction": 0.1, "total_steps": 50_000}, "indep", 1 / 5000),
]


@pytest.mark.parametrize(
    "kwargs, convention, expected", TIMESCALES, ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(TIMESCALES)]
)
def test_weight_decay_for_timescale_per_convention(kwargs, convention, expected):
    from decoupled import conventions

    wd = weight_decay_for_timescale(convention=convention, **kwargs)
    assert wd == pytest.approx(expected, rel=1e-12)
    # and back: the convention decays 1/tau per step at peak lr
    c = conventions.get({"indep": "adamw_indep"}.get(convention, convention))
    lr = kwargs.get("lr", 1.0)
    per_step = c.decay_per_step(wd, lr, kwargs.get("lr_max", lr))
    tau = kwargs.get("tau_steps") or kwargs["tau_fraction"] * kwargs["total_steps"]
    assert per_step == pytest.approx(1 / tau, rel=1e-12)
    assert timescale_steps(kwargs.get("lr"), wd, convention, lr_max=kwargs.get("lr_max")) == pytest.approx(tau)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"tau_steps": 1e4, "lr": LR, "convention": "adam_l2"}, "adam_l2 convention has no timescale"),
        ({"tau_steps": 1e4, "convention": "adamw"}, "lr is required"),
        ({"tau_fraction": 0.5, "lr": LR}, "tau_fraction needs total_steps"),
        ({"tau_fraction": 0.5, "total_steps": 0, "lr": LR}, "total_steps must be a whole number >= 1"),
        ({"tau_steps": 0.0, "lr": LR}, "tau must be a positive finite number"),
        ({"lr": LR}, "not both or neither"),
    ],
)
def test_weight_decay_for_timescale_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        weight_decay_for_timescale(**kwargs)


@pytest.mark.parametrize("module", ["decoupled.conversions", "decoupled.groups"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, module
