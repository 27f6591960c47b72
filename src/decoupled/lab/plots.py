"""Figures of the lab reports, rendered with matplotlib (Agg) to PNG bytes."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from ..conventions import CONVENTIONS

#: One colour per convention, used in every figure.
COLORS = {
    "adam_l2": "#d1495b",
    "adamw": "#00798c",
    "adamw_indep": "#edae49",
    "adamw_corrected": "#66a182",
    "adamw_cautious": "#2e4057",
}
_FALLBACK = ["#8d96a3", "#9b5de5", "#f15bb5"]


def conv_label(conv: str) -> str:
    """A convention's label (its key if it has none)."""
    return CONVENTIONS[conv].label if conv in CONVENTIONS else conv


def color(conv: str, i: int = 0) -> str:
    return COLORS.get(conv, _FALLBACK[i % len(_FALLBACK)])


def pyplot():
    """matplotlib.pyplot on the Agg backend, with the lab's style."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 110,
            "savefig.bbox": "tight",
        }
    )
    return plt


def to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _fmt(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e") if x < 1e-2 or x >= 100 else f"{x:g}"


def _column(wds: list[float], wd: float) -> float:
    """The (fractional) column of ``wd`` on an axis of ascending ``wds``, linear in log10(wd)."""
    lw = np.log10(wds)
    return float(np.interp(math.log10(wd), lw, np.arange(len(wds))))


def heatmaps(table: dict, found: dict, metric: str, *, percent: bool, units: dict[str, str]) -> bytes:
    """One panel per convention: test ``metric`` (its label) over (lr rows, wd columns in ``units[conv]``).

    Columns are every wd trained at any lr (rows extended past an edge have more); a cell not
    trained is blank. The validation-selected best cell has a black frame; each lr's best wd (between
    grid points) a white dot, or an open square when it is still on the edge of its row. Diverged
    cells are grey with a cross. All panels share one colour scale.
    """
    plt = pyplot()
    convs = list(found)
    scale = 100.0 if percent else 1.0
    finite = [c["test"] * scale for conv in convs for c in table[conv].values() if math.isfinite(c["test"])]
    vmin = min(finite) if finite else 0.0
    vmax = float(np.percentile(finite, 90)) if finite else 1.0
    vmax = max(vmax, vmin + 1e-9)
    widths = [max(4.0, 0.62 * len({k[1] for k in table[c]}) + 1.2) for c in convs]
    fig, axes = plt.subplots(1, len(convs), figsize=(sum(widths), 4.1), squeeze=False, width_ratios=widths)
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="white")
    im = None
    for ax, conv in zip(axes[0], convs):
        cells = table[conv]
        lrs = sorted({k[0] for k in cells})
        wds = sorted({k[1] for k in cells})
        grid = np.full((len(lrs), len(wds)), np.nan)
        for (lr, wd), c in cells.items():
            if math.isfinite(c["test"]):
                grid[lrs.index(lr), wds.index(wd)] = c["test"] * scale
        im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for (lr, wd), c in cells.items():
            i, j = lrs.index(lr), wds.index(wd)
            if not math.isfinite(c["test"]):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="#cfcfcf"))
                ax.text(j, i, "×", ha="center", va="center", color="#555", fontsize=12)
                continue
            v = c["test"] * scale
            light = (v - vmin) / (vmax - vmin) > 0.55
            text = f"{v:.1f}" if percent else f"{v:.3g}"
            ax.text(j, i - 0.2, text, ha="center", va="center", fontsize=7, color="white" if light else "black")
        best = found[conv]["best"]
        bi, bj = lrs.index(best["lr"]), wds.index(best["wd"])
        ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, lw=2.6, ec="black"))
        for p in found[conv]["best_wd_per_lr"]:
            x, y = _column(wds, p["wd"]), lrs.index(p["lr"]) + 0.18
            if p["edge"]:
                ax.plot(x, y, "s", ms=6, mfc="none", mec="white", mew=1.5)
            else:
                ax.plot(x, y, "o", ms=5, mfc="white", mec="black", mew=0.8)
        ax.set_xticks(range(len(wds)), [_fmt(w) for w in wds], rotation=45)
        ax.set_yticks(range(len(lrs)), [_fmt(lr) for lr in lrs])
        ax.set_xlabel(units.get(conv, "weight decay"), fontsize=8)
        if ax is axes[0][0]:
            ax.set_ylabel("peak learning rate")
        ax.set_title(conv_label(conv).replace(" (", "\n("), color=color(conv), fontweight="bold", fontsize=10)
        for sp in ax.spines.values():
            sp.set_visible(False)
    cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, pad=0.015)
    cb.set_label(f"test {metric} (%)" if percent else f"test {metric}")
    return to_png(fig)


def best_wd_vs_lr(found: dict, ylabels: dict[str, str]) -> bytes:
    """One panel per convention: the best decay at each lr (``ylabels[conv]`` names it), log-log, with the fit.

    Large dots: the optimum of the seed-mean row; small dots: each seed's; open squares: rows on an
    edge (left out of the fit). Solid: the least-squares fit; grey dashed and dotted: slopes 0 and -1
    through the centre of the fit, for reference.
    """
    plt = pyplot()
    convs = [c for c in found if found[c]["best_wd_per_lr"]]
    fig, axes = plt.subplots(1, max(1, len(convs)), figsize=(3.9 * max(1, len(convs)), 3.8), squeeze=False)
    for i, (ax, conv) in enumerate(zip(axes[0], convs)):
        f = found[conv]
        power = 1.0 if f["fitted"] == "lr·wd" else 0.0
        pts = f["best_wd_per_lr"]
        col = color(conv, i)
        for p in pts:
            y = p["wd"] * p["lr"] ** power
            if p["edge"]:
                ax.plot(p["lr"], y, "s", ms=9, mfc="none", mec=col, mew=1.5, zorder=4)
                continue
            ax.plot(p["lr"], y, "o", ms=8, color=col, zorder=4)
            ax.plot(
                [p["lr"]] * len(p["per_seed"]),
                [w * p["lr"] ** power for w in p["per_seed"]],
                ".",
                ms=5,
                color="black",
                alpha=0.55,
                zorder=5,
            )
        inner = [p for p in pts if not p["edge"]]
        if f["slope"] is not None and inner:
            lx = np.log10([p["lr"] for p in inner])
            ly = np.log10([p["wd"] * p["lr"] ** power for p in inner])
            cx, cy = lx.mean(), ly.mean()
            xs = np.linspace(lx.min() - 0.15, lx.max() + 0.15, 20)
            for s, style, c in [(f["slope"], "-", col), (0.0, "--", "#888"), (-1.0, ":", "#888")]:
                ax.plot(10**xs, 10 ** (cy + s * (xs - cx)), style, color=c, lw=2 if c == col else 1.2, zorder=3)
        interval = f["slope_interval"]
        title = f"slope {f['slope']:+.2f}" if f["slope"] is not None else "slope n/a"
        if interval is not None:
            title += f" [{interval[0]:+.2f}, {interval[1]:+.2f}]"
        ax.set_title(f"{conv_label(conv)}\n{title}: {f['reading']}", fontsize=9, color=col)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("best " + ylabels.get(conv, "weight decay"), fontsize=8)
        ax.grid(True, which="major", alpha=0.25)
    return to_png(fig)


def learning_curves(
    curves: dict[str, dict[str, Any]], metric: str, *, percent: bool, label: str | None = None
) -> bytes:
    """Training loss and validation/test ``metric`` per epoch for each convention's best cell.

    ``label`` names the metric on the axes (default: the key ``metric``). Lines go from thick to
    thin in drawing order, so curves that coincide (identical runs) stay visible.
    """
    plt = pyplot()
    name = label or metric
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3.7))
    scale = 100.0 if percent else 1.0
    n = max(1, len(curves))
    for i, (conv, c) in enumerate(curves.items()):
        col = color(conv, i)
        lw = 1.4 + 3.2 * (n - 1 - i) / max(1, n - 1)
        legend = f"{conv_label(conv)} (lr {c['lr']:g}, wd {c['wd']:g})"
        a1.plot(c["epoch"], c["train_loss"], color=col, lw=lw, label=legend, solid_capstyle="butt")
        if f"val_{metric}" in c:
            a2.plot(c["epoch"], np.array(c[f"val_{metric}"]) * scale, color=col, lw=lw, label=legend)
        if f"test_{metric}" in c:
            a2.plot(c["epoch"], np.array(c[f"test_{metric}"]) * scale, color=col, lw=max(1.0, lw / 2), ls="--")
    a1.set_yscale("log")
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss (mean over epoch)")
    a1.set_title("Training loss of each convention's best cell")
    fig.legend(
        *a1.get_legend_handles_labels(),
        loc="lower center",
        ncol=len(curves),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, -0.08),
    )
    a2.set_xlabel("epoch")
    a2.set_ylabel(f"{name} (%)" if percent else name)
    a2.set_title(f"Validation {name} (solid) and test (dashed)")
    vals = [v * scale for c in curves.values() for k in (f"val_{metric}", f"test_{metric}") for v in c.get(k, [])]
    if vals:
        lo = min(vals)
        hi = float(np.percentile(vals, 85))
        a2.set_ylim(max(0.0, lo - 0.1 * (hi - lo + 1e-9)), hi + 0.3 * (hi - lo + 1e-9))
    for a in (a1, a2):
        a.grid(True, alpha=0.25)
    return to_png(fig)
