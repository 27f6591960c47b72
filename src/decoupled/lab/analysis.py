r"""The findings of ``decoupled compare``, computed from the runs of a grid.

1. **Best cell per convention.** The cell (lr, wd) with the lowest validation metric (mean over
   seeds; ties, common with error rates on small validation sets, are broken by the validation
   loss). Its *test* metric is reported as mean and standard deviation over seeds. Selection never
   looks at the test split.

2. **How the best weight decay moves with the learning rate.** For each lr (a row of the grid)
   the best wd is the minimum of the validation metric (mean over seeds) along the row, refined
   between grid points by the parabola through the lowest cell and its two neighbours (in
   :math:`\log_{10}` wd); each seed's optimum is the minimum of its own parabola through the same
   three cells (a seed's noise then cannot carry it to another dip of a flat valley). A row
   whose lowest cell is its first or last wd has its optimum *on the edge*: the true one may lie
   beyond it, so that row is a bound, not a measurement (``compare`` extends such rows, and leaves
   the ones still on an edge out of the fit, by name).

   The slope :math:`s` is the least-squares slope of :math:`\log_{10} D^*` against
   :math:`\log_{10}\gamma` over every (seed, lr) optimum of the interior rows, where :math:`D`
   is the decay the convention applies per step at peak lr :math:`\gamma`
   (:meth:`decoupled.conventions.Convention.decay_per_step`): :math:`\gamma\lambda` for
   ``adamw`` (PyTorch's weight_decay is per unit of lr; so also for the corrected and cautious
   conventions), :math:`\lambda` for ``adamw_indep``, and the L2 coefficient :math:`\lambda`
   itself for ``adam_l2`` (whose decay per step, :math:`\gamma\lambda/\sqrt{\hat v}`, differs from
   weight to weight). Its 95% interval is the t-interval of that fit (n - 2 degrees of freedom),
   so it holds both the spread between seeds and the scatter of the rows about the line.
   ``slope_wd`` is the same fit of the weight decay as passed to the optimizer.

   **Reading**, from the interval, never from the point: *decoupled* when it lies within
   (-0.5, +0.5) (the best decay does not move with lr), *coupled* when it lies below -0.5 (the
   best decay shrinks as lr grows, as :math:`1/\gamma` at a slope of -1), *grows with lr* when it
   lies above +0.5, *inconclusive* otherwise. -0.5 is halfway between the two hypotheses.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ..conventions import CONVENTIONS
from ..conventions import get as get_convention

#: Confidence of the slope intervals.
CONFIDENCE = 0.95


def _finite_or_inf(x: float | None) -> float:
    return math.inf if x is None or not math.isfinite(x) else float(x)


def cell_table(runs: list[dict[str, Any]], metric: str) -> dict[str, dict[tuple[float, float], dict[str, Any]]]:
    """Per convention, per (lr, wd): mean/std over seeds of val/test ``metric``, val loss, per-seed val."""
    grouped: dict[str, dict[tuple[float, float], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run["convention"]][(run["lr"], run["wd"])].append(run)
    table: dict[str, dict[tuple[float, float], dict[str, Any]]] = {}
    for conv, cells in grouped.items():
        table[conv] = {}
        for key, rs in cells.items():

            def stat(split: str, name: str, rs: list = rs) -> tuple[float, float]:
                vals = [_finite_or_inf(r["final"][split].get(name)) for r in rs]
                if any(math.isinf(v) for v in vals):
                    return math.inf, 0.0
                return float(np.mean(vals)), float(np.std(vals))

            val_m, val_s = stat("val", metric)
            test_m, test_s = stat("test", metric)
            table[conv][key] = {
                "lr": key[0],
                "wd": key[1],
                "seeds": sorted(r["seed"] for r in rs),
                "val": val_m,
                "val_std": val_s,
                "test": test_m,
                "test_std": test_s,
                "val_loss": stat("val", "loss")[0],
                "val_by_seed": {r["seed"]: _finite_or_inf(r["final"]["val"].get(metric)) for r in rs},
                "diverged": sum(bool(r["diverged"]) for r in rs),
                "n_val": rs[0].get("n_val"),
            }
    return table


def row_optimum(wds: list[float], values: list[float], at: int | None = None) -> tuple[float, str | None]:
    """The best wd of one row (``wds`` ascending) and where it is: ``(wd*, None)`` inside the row,
    ``(wd, "low")`` / ``(wd, "high")`` on its first / last wd.

    Inside, wd* is the minimum of the parabola through the lowest cell and its two neighbours, in
    log10(wd), within those neighbours (the middle cell itself if the three points do not curve up).
    ``at`` gives that bracket's middle instead of the row's lowest cell: each seed's optimum is
    taken within the bracket of the mean over seeds, so that one seed's noise cannot move it to
    another dip of the row.
    """
    j = min(range(len(values)), key=lambda i: values[i]) if at is None else at
    if j == 0 or j == len(values) - 1:
        return wds[j], ("low" if j == 0 else "high") if len(values) > 1 else "low"
    x = np.log10(wds[j - 1 : j + 2])
    y = np.asarray(values[j - 1 : j + 2], dtype=float)
    if not np.isfinite(y).all():
        return wds[j - 1 + int(np.argmin(y))], None
    # the parabola through three points (x ascending): its curvature and vertex
    d1, d2 = (y[0] - y[1]) / (x[0] - x[1]), (y[2] - y[1]) / (x[2] - x[1])
    curvature = (d2 - d1) / (x[2] - x[0])
    if curvature <= 0:  # no minimum inside (a seed's three cells, see ``at``): the middle cell
        return wds[j], None
    vertex = 0.5 * (x[1] + x[2]) - d2 / (2 * curvature)
    return float(10 ** np.clip(vertex, x[0], x[2])), None


def fit_slope(x: list[float], y: list[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Least-squares slope of ``y`` on ``x`` with its t-interval (n - 2 degrees of freedom).

    ``interval`` is None when the fit cannot give one: fewer than 3 points, or all at one x.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xa)
    if n < 2 or np.ptp(xa) == 0:
        return {"slope": None, "interval": None, "n": n}
    sxx = float(((xa - xa.mean()) ** 2).sum())
    slope = float(((xa - xa.mean()) * (ya - ya.mean())).sum() / sxx)
    if n < 3:
        return {"slope": slope, "interval": None, "n": n}
    from scipy.stats import t

    resid = ya - (ya.mean() + slope * (xa - xa.mean()))
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
    half = float(t.ppf(0.5 + confidence / 2, n - 2)) * se
    return {"slope": slope, "interval": [slope - half, slope + half], "n": n}


def reading(interval: list[float] | None) -> str:
    """``coupled`` / ``decoupled`` / ``grows with lr`` / ``inconclusive``, from a slope interval."""
    if interval is None:
        return "inconclusive"
    lo, hi = interval
    if hi < -0.5:
        return "coupled"
    if lo > -0.5 and hi < 0.5:
        return "decoupled"
    if lo > 0.5:
        return "grows with lr"
    return "inconclusive"


#: What each reading means, in words (reports and the console legend).
READINGS = {
    "coupled": "the best decay shrinks as lr grows: change lr and you must retune wd",
    "decoupled": "the best decay stays put when lr changes: tune them one at a time",
    "grows with lr": "the best decay grows with lr",
    "inconclusive": "the interval does not decide between -1 and 0",
}


def fitted_quantity(convention: str) -> str:
    """What the slope of a convention is fitted to: ``"wd"`` or ``"lr·wd"`` (its decay per step at peak lr)."""
    conv = get_convention(convention) if convention in CONVENTIONS else None
    if conv is None or conv.coupled:
        return "wd"
    return "lr·wd" if conv.decay_per_step(1.0, 2.0, lr_max=2.0) == 2.0 else "wd"


def rows(cells: dict[tuple[float, float], dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    """The cells of one convention by lr, each row sorted by wd."""
    out: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for (lr, _), cell in sorted(cells.items()):
        out[lr].append(cell)
    return dict(out)


def findings(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The findings per convention (JSON-ready; infinities become None)."""
    table = cell_table(runs, metric)
    out: dict[str, Any] = {}
    for conv in [c for c in CONVENTIONS if c in table] + [c for c in table if c not in CONVENTIONS]:
        cells = table[conv]
        best = min(cells.values(), key=lambda c: (c["val"], c["val_loss"]))
        per_lr, xs, ys = [], [], []
        lr_power = 1.0 if fitted_quantity(conv) == "lr·wd" else 0.0
        for lr, row in rows(cells).items():
            wds = [c["wd"] for c in row]
            values = [c["val"] for c in row]
            if all(math.isinf(v) for v in values):
                continue  # every run at this lr diverged
            wd, edge = row_optimum(wds, values)
            j = int(np.argmin(values))
            seeds = sorted(set.intersection(*(set(c["val_by_seed"]) for c in row)))
            per_seed = [] if edge else [row_optimum(wds, [c["val_by_seed"][s] for c in row], at=j)[0] for s in seeds]
            per_lr.append(
                {"lr": lr, "wd": wd, "wd_cell": wds[j], "val": _finite(values[j]), "edge": edge, "per_seed": per_seed}
            )
            if edge is None:
                for w in per_seed:
                    xs.append(math.log10(lr))
                    ys.append(math.log10(w) + lr_power * math.log10(lr))
        fit = fit_slope(xs, ys)

        def shift(v: float | None, lr_power: float = lr_power) -> float | None:  # the slope of wd as passed
            return None if v is None else v - lr_power

        out[conv] = {
            "label": CONVENTIONS[conv].label if conv in CONVENTIONS else conv,
            "best": {k: _finite(v) for k, v in best.items() if k != "val_by_seed"},
            "best_wd_per_lr": per_lr,
            "fitted": fitted_quantity(conv),
            "slope": fit["slope"],
            "slope_interval": fit["interval"],
            "slope_wd": shift(fit["slope"]),
            "slope_wd_interval": None if fit["interval"] is None else [v - lr_power for v in fit["interval"]],
            "fit_points": fit["n"],
            "reading": reading(fit["interval"]),
            "excluded_lrs": [p["lr"] for p in per_lr if p["edge"]],
            "edge_hits": sum(bool(p["edge"]) for p in per_lr),
        }
    return out


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v
