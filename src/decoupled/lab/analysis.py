r"""The two findings of ``decoupled compare``, computed from the runs of a grid.

1. **Best score per convention.** For each convention the cell (lr, wd) with the lowest
   validation metric (mean over seeds; ties, common with error rates on small validation sets,
   are broken by the validation loss) is selected, and its *test* metric is reported (mean and
   standard deviation over seeds). Selection never looks at the test split.

2. **How the best weight decay moves with the learning rate.** For each lr, the best wd is
   chosen on the validation metric by the *one-standard-error rule* (Breiman et al.'s rule for
   choosing a regularization strength): starting from the row's lowest validation metric, the
   largest wd whose validation metric stays within one standard error of it, walking up the wd
   axis without a gap. It is the strongest decay that is statistically as good as the best, and
   it is far less noisy than the raw argmin when many cells tie (as they do with error rates
   on a few hundred validation examples). Then the slope :math:`s` of the least-squares line through
   :math:`(\log_{10}\gamma, \log_{10}\lambda^*(\gamma))` is reported. :math:`s \approx 0`: the
   best wd does not depend on lr (the hyperparameters are decoupled, so they can be tuned one
   at a time). :math:`s \approx -1` or steeper: the best wd shrinks as lr grows (coupled; tuning
   lr alone leaves the decay wrong).

   Each slope is computed in the convention's own units, and also for the *decay strength*
   (the fraction of a weight removed per step at peak lr, ignoring Adam + L2's division by
   :math:`\sqrt{v}`): :math:`\lambda` for ``adam_l2`` and ``adamw_indep``, :math:`\gamma\lambda`
   for ``adamw``. PyTorch's ``weight_decay`` is per lr unit, so if the right decay strength were
   independent of lr its best value would fall as :math:`1/\gamma` (slope -1 by construction);
   the strength slope (= wd slope + 1) is the comparable number. A best wd on the edge of its
   axis makes the slope a bound, and is flagged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from .tasks import CONVENTIONS


def _nan_to_inf(x: float) -> float:
    return math.inf if x is None or not math.isfinite(x) else x


def cell_table(runs: list[dict[str, Any]], metric: str) -> dict[str, dict[tuple[float, float], dict[str, Any]]]:
    """Per convention, per (lr, wd): mean/std over seeds of val/test ``metric`` and val loss."""
    grouped: dict[str, dict[tuple[float, float], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run["convention"]][(run["lr"], run["wd"])].append(run)
    table: dict[str, dict[tuple[float, float], dict[str, Any]]] = {}
    for conv, cells in grouped.items():
        table[conv] = {}
        for key, rs in cells.items():

            def stat(split: str, name: str, rs: list = rs) -> tuple[float, float]:
                vals = [_nan_to_inf(r["final"][split].get(name, math.nan)) for r in rs]
                if any(math.isinf(v) for v in vals):
                    return math.inf, 0.0
                return float(np.mean(vals)), float(np.std(vals))

            val_m, val_s = stat("val", metric)
            test_m, test_s = stat("test", metric)
            val_loss, _ = stat("val", "loss")
            table[conv][key] = {
                "lr": key[0],
                "wd": key[1],
                "seeds": sorted(r["seed"] for r in rs),
                "val": val_m,
                "val_std": val_s,
                "test": test_m,
                "test_std": test_s,
                "val_loss": val_loss,
                "diverged": sum(bool(r["diverged"]) for r in rs),
                "n_val": rs[0].get("n_val"),
            }
    return table


def _rank(cell: dict[str, Any]) -> tuple[float, float]:
    return (cell["val"], cell["val_loss"])


def findings(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The findings per convention (JSON-ready; infinities become None)."""
    table = cell_table(runs, metric)
    out: dict[str, Any] = {}
    for conv in [c for c in CONVENTIONS if c in table] + [c for c in table if c not in CONVENTIONS]:
        cells = table[conv]
        lrs = sorted({k[0] for k in cells})
        wds = sorted({k[1] for k in cells})
        best = min(cells.values(), key=_rank)
        per_lr = []
        for lr in lrs:
            row = [cells[(lr, wd)] for wd in wds if (lr, wd) in cells]
            j = _one_se_choice(row, metric)
            if j is None:
                continue  # every run at this lr diverged
            b = row[j]
            per_lr.append({"lr": lr, "wd": b["wd"], "val": b["val"], "edge": b["wd"] in (wds[0], wds[-1])})
        slope = None
        if len(per_lr) >= 2:
            x = np.log10([p["lr"] for p in per_lr])
            y = np.log10([p["wd"] for p in per_lr])
            slope = float(np.polyfit(x, y, 1)[0])
        strength_offset = 1.0 if conv == "adamw" else 0.0
        out[conv] = {
            "label": CONVENTIONS.get(conv, conv),
            "best": {k: _finite(v) for k, v in best.items()},
            "best_wd_per_lr": per_lr,
            "slope_wd": slope,
            "slope_strength": None if slope is None else slope + strength_offset,
            "edge_hits": sum(p["edge"] for p in per_lr),
        }
    return out


def standard_error(cell: dict[str, Any], metric: str) -> float:
    """The standard error of a cell's mean validation metric.

    From the spread over seeds when there are several (std / sqrt(seeds - 1)); for an error rate
    also at least the binomial one, sqrt(p (1 - p) / n) with n validation targets.
    """
    k = len(cell["seeds"])
    se = cell["val_std"] / math.sqrt(k - 1) if k > 1 else 0.0
    n = cell.get("n_val")
    if metric == "error" and n and math.isfinite(cell["val"]):
        p = min(max(cell["val"], 1.0 / n), 1.0)
        se = max(se, math.sqrt(p * (1 - p) / (n * k)))
    return se


def _one_se_choice(row: list[dict[str, Any]], metric: str) -> int | None:
    """Index of the best wd of one lr row (sorted by wd) by the one-standard-error rule."""
    if all(math.isinf(c["val"]) for c in row):
        return None
    best = min(range(len(row)), key=lambda i: _rank(row[i]))
    limit = row[best]["val"] + standard_error(row[best], metric)
    j = best
    while j + 1 < len(row) and row[j + 1]["val"] <= limit:
        j += 1
    return j


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def interpret_slope(s: float | None) -> str:
    """Plain words for a best-wd-vs-lr slope."""
    if s is None:
        return "not enough learning rates to tell"
    if s <= -0.6:
        return "strongly coupled: the best decay shrinks about as fast as lr grows"
    if s <= -0.3:
        return "partly coupled"
    if s < 0.3:
        return "decoupled: the best decay barely moves with lr"
    return "the best decay grows with lr"
