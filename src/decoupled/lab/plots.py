"""Figures of the lab reports, rendered with matplotlib (Agg) to PNG bytes."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from .tasks import CONVENTIONS

#: One colour per convention, used in every figure.
COLORS = {"adam_l2": "#d1495b", "adamw": "#00798c", "adamw_indep": "#edae49"}
_FALLBACK = ["#66a182", "#2e4057", "#8d96a3"]


def color(conv: str, i: int = 0) -> str:
    return COLORS.get(conv, _FALLBACK[i % len(_FALLBACK)])


def _plt():
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


def heatmaps(table: dict, found: dict, metric: str, *, percent: bool) -> bytes:
    """One panel per convention: test ``metric`` (its label, for the colour bar) over (lr rows, wd columns).

    The validation-selected best cell has a black frame; each lr's best wd a white dot.
    Diverged cells are grey with a cross. All panels share one colour scale.
    """
    plt = _plt()
    convs = [c for c in found]
    scale = 100.0 if percent else 1.0
    finite = [c["test"] * scale for conv in convs for c in table[conv].values() if math.isfinite(c["test"])]
    vmin = min(finite) if finite else 0.0
    vmax = float(np.percentile(finite, 90)) if finite else 1.0
    vmax = max(vmax, vmin * 1.5 + 1e-9, vmin + 1e-9)
    fig, axes = plt.subplots(1, len(convs), figsize=(4.3 * len(convs), 3.9), squeeze=False)
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="#cfcfcf")
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
        for i, lr in enumerate(lrs):
            for j, wd in enumerate(wds):
                c = cells.get((lr, wd))
                if c is None:
                    continue
                if not math.isfinite(c["test"]):
                    ax.text(j, i, "×", ha="center", va="center", color="#555", fontsize=12)
                    continue
                v = c["test"] * scale
                light = (v - vmin) / (vmax - vmin + 1e-12) > 0.55
                ax.text(
                    j,
                    i - 0.18,
                    f"{v:.1f}" if percent else f"{v:.3g}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if light else "black",
                )
        best = found[conv]["best"]
        bi, bj = lrs.index(best["lr"]), wds.index(best["wd"])
        ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, lw=2.6, ec="black"))
        for p in found[conv]["best_wd_per_lr"]:
            ax.plot(wds.index(p["wd"]), lrs.index(p["lr"]) + 0.22, "o", ms=5, mfc="white", mec="black", mew=0.8)
        ax.set_xticks(range(len(wds)), [_fmt(w) for w in wds], rotation=35)
        ax.set_yticks(range(len(lrs)), [_fmt(lr) for lr in lrs])
        ax.set_xlabel("weight decay (this convention's units)")
        if ax is axes[0][0]:
            ax.set_ylabel("peak learning rate")
        title = CONVENTIONS.get(conv, conv).replace(" (", "\n(")
        ax.set_title(title, color=color(conv), fontweight="bold")
        for s in ax.spines.values():
            s.set_visible(False)
    unit = f"test {metric} (%)" if percent else f"test {metric}"
    cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, pad=0.02)
    cb.set_label(unit)
    return to_png(fig)


def best_wd_vs_lr(found: dict) -> bytes:
    """Best decay strength at each lr, relative to its geometric mean, on log-log axes, with fits.

    Slope 0 (flat) = decoupled; slope -1 = the best decay shrinks as fast as lr grows. For
    PyTorch's AdamW the strength is lr * wd (the fraction removed per step).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    all_lr = [p["lr"] for f in found.values() for p in f["best_wd_per_lr"]]
    if all_lr:
        lo, hi = min(all_lr), max(all_lr)
        mid = math.sqrt(lo * hi)
        xs = np.geomspace(lo, hi, 20)
        ax.plot(xs, np.ones_like(xs), ls=":", color="#888", lw=1.2, label="slope 0 (decoupled)")
        ax.plot(xs, (xs / mid) ** -1.0, ls="--", color="#888", lw=1.2, label="slope −1 (coupled)")
    for i, (conv, f) in enumerate(found.items()):
        pts = f["best_wd_per_lr"]
        if not pts:
            continue
        x = np.array([p["lr"] for p in pts])
        y = np.array([p["wd"] for p in pts]) * (x if conv == "adamw" else 1.0)
        y = y / np.exp(np.mean(np.log(y)))
        off = 1.0 + 0.05 * (i - 1)  # small vertical offsets so equal points stay visible
        s = f["slope_strength"]
        label = CONVENTIONS.get(conv, conv) + (f": slope {s:+.2f}" if s is not None else "")
        ax.plot(x, y * off, "o", color=color(conv, i), ms=7, label=label, zorder=3)
        if s is not None and len(x) >= 2:
            fit = np.exp(np.polyval(np.polyfit(np.log(x), np.log(y), 1), np.log(xs)))
            ax.plot(xs, fit * off, "-", color=color(conv, i), lw=2, alpha=0.8)
        edge = np.array([p["edge"] for p in pts])
        if edge.any():
            ax.plot(x[edge], (y * off)[edge], "o", mfc="none", mec="black", ms=11, mew=1, zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("best decay strength (relative)")
    ax.set_title("Does the best weight decay move with the learning rate?")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="major", alpha=0.25)
    return to_png(fig)


def learning_curves(
    curves: dict[str, dict[str, Any]], metric: str, *, percent: bool, label: str | None = None
) -> bytes:
    """Training loss and validation/test ``metric`` per epoch for each convention's best cell.

    ``label`` names the metric on the axes (default: the key ``metric``).
    """
    plt = _plt()
    name = label or metric
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3.7))
    scale = 100.0 if percent else 1.0
    for i, (conv, c) in enumerate(curves.items()):
        col = color(conv, i)
        legend = f"{CONVENTIONS.get(conv, conv)} (lr {c['lr']:g}, wd {c['wd']:g})"
        a1.plot(c["epoch"], c["train_loss"], color=col, lw=1.8, label=legend)
        if f"val_{metric}" in c:
            a2.plot(c["epoch"], np.array(c[f"val_{metric}"]) * scale, color=col, lw=1.8, label=legend)
        if f"test_{metric}" in c:
            a2.plot(c["epoch"], np.array(c[f"test_{metric}"]) * scale, color=col, lw=1.2, ls="--", alpha=0.7)
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
