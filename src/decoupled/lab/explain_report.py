"""The figures and ``report.html`` of ``decoupled explain`` (see :mod:`decoupled.lab.explain`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..conventions import CONVENTIONS
from . import plots
from .report import esc, img, page, table
from .tasks import Task

#: Line styles that keep coinciding lines of different conventions apart.
_STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1))]


def _name(conv: str) -> str:
    return CONVENTIONS[conv].label.split(" (")[0]


def _spread(conv: str) -> bool:
    """Whether a convention's per-weight decay differs between weights (coupled, cautious)."""
    return CONVENTIONS[conv].coupled or CONVENTIONS[conv].cautious


def histograms(per_conv: dict[str, Any]) -> bytes:
    """Per decayed tensor: each weight's mean decay per step (log10), histogram or one line per convention."""
    plt = plots.pyplot()
    names = list(next(iter(per_conv.values()))["tensors"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.7 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        logs = {c: np.log10(np.maximum(info["tensors"][name]["decay"], 1e-30)) for c, info in per_conv.items()}
        finite = np.concatenate([v[v > -30] for v in logs.values()])
        bins = np.linspace(finite.min() - 0.1, finite.max() + 0.1, 40) if finite.size else 40
        for i, (conv, v) in enumerate(logs.items()):
            style = dict(color=plots.color(conv, i), label=_name(conv))
            if _spread(conv):
                ax.hist(v[v > -30], bins=bins, histtype="stepfilled", alpha=0.45, **style)
            else:
                ax.axvline(np.median(v), lw=3.2 - 0.6 * i, ls=_STYLES[i % len(_STYLES)], **style)
        ax.set_title(f"{name}  ({logs[next(iter(logs))].size:,} weights)", fontsize=9)
        ax.set_xlabel("log10 mean decay per step")
        ax.set_ylabel("weights")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, frameon=False)
    return plots.to_png(fig)


def deciles_and_norms(per_conv: dict[str, Any], summary: dict[str, Any]) -> bytes:
    """Left: median decay per step by gradient-history decile. Right: final norm of each decayed tensor."""
    plt = plots.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(1, 11)
    for i, conv in enumerate(summary):
        y = [v if v else np.nan for v in summary[conv]["decay_by_rms_decile"]]
        a1.plot(
            x,
            y,
            marker="o",
            ls=_STYLES[i % len(_STYLES)],
            lw=3 - 0.5 * i,
            color=plots.color(conv, i),
            label=_name(conv),
        )
    a1.set_yscale("log")
    a1.set_xticks(x)
    a1.set_xlabel("gradient-history decile (1 = smallest time-averaged sqrt(v̂), 10 = largest)")
    a1.set_ylabel("median mean decay per step")
    a1.set_title("Who gets decayed?")
    a1.legend(fontsize=8, frameon=False)
    names = list(next(iter(per_conv.values()))["tensors"])
    pos = np.arange(len(names))
    h = 0.8 / len(per_conv)
    for k, conv in enumerate(per_conv):
        a2.barh(
            pos + (k - (len(per_conv) - 1) / 2) * h,
            [per_conv[conv]["norms"][n] for n in names],
            height=h,
            color=plots.color(conv, k),
            label=_name(conv),
        )
    a2.set_yticks(pos, names, fontsize=8)
    a2.invert_yaxis()
    a2.set_xlabel("Frobenius norm after training")
    a2.set_title("Resulting weight norms (decayed tensors)")
    a2.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return plots.to_png(fig)


def schedule(summary: dict[str, Any]) -> bytes:
    """The decay per step each convention applied at each step, over all decayed weights."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (conv, s) in enumerate(summary.items()):
        # a step with lr 0 (the first of a warmup) removes nothing: not drawn on the log axis
        sched = {k: np.where(np.asarray(v) > 0, v, np.nan) for k, v in s["schedule"].items()}
        steps = np.arange(1, len(sched["mean"]) + 1)
        col = plots.color(conv, i)
        if CONVENTIONS[conv].coupled:
            ax.fill_between(steps, sched["p10"], sched["p90"], color=col, alpha=0.2, lw=0)
            ax.plot(steps, sched["median"], color=col, lw=2, label=f"{_name(conv)}: median (band: 10-90% of weights)")
        else:
            what = "mean over weights" if CONVENTIONS[conv].cautious else "every weight"
            ax.plot(
                steps,
                sched["mean"],
                color=col,
                lw=3.4 - 0.6 * i,
                ls=_STYLES[i % len(_STYLES)],
                label=f"{_name(conv)}: {what}",
            )
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("decay per step (fraction of the weight)")
    ax.set_title("Effective decay per step over the schedule")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, alpha=0.25)
    return plots.to_png(fig)


def write(
    out: Path,
    task: Task,
    per_conv: dict[str, Any],
    summary: dict[str, Any],
    reading: list[str],
    lr: float,
    wds: dict[str, float],
) -> None:
    """``report.html`` with the figures inlined."""
    convs = list(summary)
    cautious = [c for c in convs if CONVENTIONS[c].cautious]
    header = ["tensor"] + [f"median decay/step, {_name(c)}" for c in convs]
    header += [f"share decayed, {_name(c)}" for c in cautious] + [f"final norm, {_name(c)}" for c in convs]
    rows = []
    for n in summary[convs[0]]["per_tensor"]:
        pt = {c: summary[c]["per_tensor"][n] for c in convs}
        rows.append(
            [n]
            + [f"{pt[c]['decay_median']:.2e}" for c in convs]
            + [f"{pt[c]['cautious_share']:.0%}" for c in cautious]
            + [f"{pt[c]['norm']:.3g}" for c in convs]
        )
    setup = "; ".join(f"{CONVENTIONS[c].label} wd {wds[c]:g}" for c in convs)
    body = [
        '<div class="findings"><b>Reading</b><ul>' + "".join(f"<li>{esc(x)}</li>" for x in reading) + "</ul></div>",
        "<h2>Effective decay of every weight, per tensor</h2>",
        img(
            histograms(per_conv),
            "histograms",
            "One panel per decayed tensor. x: log10 of each weight's mean fraction removed per step by the "
            "weight-decay term, over the whole run. y: number of weights. A convention that treats every weight "
            "alike is one vertical line (line styles differ, so coinciding lines stay visible); Adam + L2 divides "
            "the decay by each weight's sqrt(v̂) and cautious decay skips the steps where the update and the "
            "weight disagree in sign, so theirs are histograms.",
        ),
        "<h2>Over the schedule</h2>",
        img(
            schedule(summary),
            "decay per step",
            "x: optimizer step. y: the fraction of a weight removed by the decay term at that step (log). Decoupled "
            "conventions follow their scaling of the lr schedule (lr·wd, (lr/lr_max)·wd or (lr²/lr_max)·wd); "
            "cautious decay is shown as the mean over all decayed weights (decayed share × decay); Adam + L2 as "
            "the median over weights with the 10-90% band.",
        ),
        "<h2>By gradient history, and the resulting norms</h2>",
        img(
            deciles_and_norms(per_conv, summary),
            "deciles and norms",
            "Left: x: the weights binned by their time-averaged RMS gradient sqrt(v̂) (deciles); y: the median of "
            "their mean decay per step (log). Right: the norm of each decayed tensor after training.",
        ),
        table(header, rows),
        f"<h2>Setup</h2><p>{esc(task.description)} Peak lr {lr:g}; {esc(setup)}. Same seed, initial weights and "
        "batches for every run; biases and normalization parameters are not decayed.</p>",
    ]
    (out / "report.html").write_text(
        page("decoupled explain", f"{esc(task.name)}: what each convention did to each weight", "".join(body))
    )
