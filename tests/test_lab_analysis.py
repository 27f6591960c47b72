"""The findings of `decoupled compare` on tables whose answer is known: optimum, slope, interval, reading."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoupled.lab import analysis


@pytest.mark.parametrize(
    "wds, values, expected, edge",
    [
        ([1e-3, 1e-2, 1e-1], [2.0, 1.0, 2.0], 1e-2, None),  # symmetric: the middle
        ([1e-3, 1e-2, 1e-1, 1.0], [(k - 1.3) ** 2 for k in range(4)], 10**-1.7, None),  # the vertex, off the grid
        ([1e-4, 1e-3, 1e-1], [(k + 2.25) ** 2 for k in (-4, -3, -1)], 10**-2.25, None),  # uneven spacing
        ([1e-3, 1e-2, 1e-1], [1.0, 2.0, 3.0], 1e-3, "low"),
        ([1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.0], 1e-1, "high"),
        ([1e-3, 1e-2, 1e-1], [2.0, 1.0, math.inf], 1e-2, None),  # a diverged neighbour: the grid point
    ],
)
def test_row_optimum(wds, values, expected, edge):
    wd, where = analysis.row_optimum(wds, values)
    assert wd == pytest.approx(expected, rel=1e-9) and where == edge


@pytest.mark.parametrize(
    "interval, expected",
    [
        ([-1.3, -0.7], "coupled"),
        ([-0.3, 0.2], "decoupled"),
        ([0.6, 1.1], "grows with lr"),
        ([-0.8, -0.2], "inconclusive"),  # straddles -0.5: neither hypothesis is excluded
        ([-0.2, 0.7], "inconclusive"),
        (None, "inconclusive"),
    ],
)
def test_reading_follows_the_interval(interval, expected):
    assert analysis.reading(interval) == expected


def test_fit_interval_is_the_t_interval():
    rng = np.random.default_rng(0)
    x = np.repeat(np.log10([1e-3, 3e-3, 1e-2, 3e-2]), 2)
    y = -1.0 * x + rng.normal(0, 0.05, x.size)
    fit = analysis.fit_slope(list(x), list(y))
    slope, se = np.polyfit(x, y, 1, cov=True)[0][0], None
    assert fit["slope"] == pytest.approx(slope) and fit["n"] == 8
    resid = y - np.polyval(np.polyfit(x, y, 1), x)
    se = math.sqrt((resid**2).sum() / 6 / ((x - x.mean()) ** 2).sum())
    lo, hi = fit["interval"]
    assert (hi - lo) / 2 == pytest.approx(2.446912 * se, rel=1e-5)  # t(0.975, 6 dof)
    assert analysis.fit_slope([0.0, 1.0], [0.0, 1.0])["interval"] is None  # two points: no interval


def _runs(conv, best_log_wd, lrs, wds, seeds=(0, 1), noise=0.0):
    """Fake runs whose val loss is a parabola in log10(wd) around best_log_wd(lr)."""
    rng = np.random.default_rng(1)
    runs = []
    for seed in seeds:
        for lr in lrs:
            for wd in wds:
                v = 1.0 + (math.log10(wd) - best_log_wd(lr)) ** 2 + noise * rng.normal()
                final = {"val": {"loss": v}, "test": {"loss": v + 0.01}}
                runs.append({"convention": conv, "lr": lr, "wd": wd, "seed": seed, "diverged": False, "final": final})
    return runs


LRS = [1e-3, 3e-3, 1e-2, 3e-2]
WDS = [10.0**k for k in np.arange(-6, 1.01, 0.5)]


@pytest.mark.parametrize(
    "conv, best, slope, reading",
    [
        ("adam_l2", lambda lr: -5.0 - math.log10(lr), -1.0, "coupled"),  # best L2 coefficient ∝ 1/lr
        ("adamw_indep", lambda lr: -2.3, 0.0, "decoupled"),
        ("adamw", lambda lr: -2.3 - math.log10(lr), 0.0, "decoupled"),  # wd ∝ 1/lr: lr·wd fixed
        ("adamw", lambda lr: -2.3, 1.0, "grows with lr"),  # wd fixed: lr·wd grows with lr
    ],
)
def test_findings_on_known_valleys(conv, best, slope, reading):
    found = analysis.findings(_runs(conv, best, LRS, WDS, noise=0.002), "loss")[conv]
    assert found["slope"] == pytest.approx(slope, abs=0.05) and found["reading"] == reading
    lo, hi = found["slope_interval"]
    assert lo < found["slope"] < hi and hi - lo < 0.2
    assert found["fit_points"] == 8 and not found["excluded_lrs"]
    if conv == "adamw":
        assert found["slope_wd"] == pytest.approx(found["slope"] - 1)


def test_rows_on_an_edge_are_left_out_and_named():
    runs = _runs("adam_l2", lambda lr: -5.5 - math.log10(lr), LRS, [10.0**k for k in np.arange(-4, 0.01, 0.5)])
    found = analysis.findings(runs, "loss")["adam_l2"]
    assert found["excluded_lrs"] == [3e-2]  # its optimum, 10**-3.98, is nearest the axis
    assert [p["edge"] for p in found["best_wd_per_lr"]] == [None, None, None, "low"]
    assert found["fit_points"] == 6 and found["slope"] == pytest.approx(-1.0, abs=1e-6)


def test_diverged_runs_are_worst():
    runs = _runs("adamw", lambda lr: -1.0, [1e-3, 1e-2], [0.01, 0.1, 1.0], seeds=(0,))
    runs[1]["final"] = {"val": {"loss": math.nan}, "test": {"loss": math.nan}}
    runs[1]["diverged"] = True
    found = analysis.findings(runs, "loss")["adamw"]
    assert found["best"]["wd"] != 0.1 or found["best"]["lr"] != 1e-3
