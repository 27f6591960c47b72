"""Weight-decay conversions: known values, round trips, errors, and the command."""

from __future__ import annotations

import math

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
