"""What ``decoupled compare`` shows: one findings table (console, ``report.html``, ``results.json``),
its legend, and the HTML report with the figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..conventions import CONVENTIONS
from . import analysis, plots
from .report import Markup, esc, img, page, table


def wd_units(conv: str) -> str:
    """What a convention's weight decay means, for axis labels."""
    c = CONVENTIONS.get(conv)
    if c is None:
        return "weight decay"
    if c.coupled:
        return "L2 coefficient λ (adds λ·θ to the gradient)"
    if c.scaling.value == "independent":
        return "weight_decay (decay per step at peak lr)"
    if c.scaling.value == "corrected":
        return "weight_decay (decay lr_t²/lr_max·wd per step)"
    return "weight_decay (decay lr·wd per step" + (", where u·θ ≥ 0)" if c.cautious else ")")


def fitted_label(conv: str) -> str:
    """The quantity a convention's slope is fitted to, in words."""
    if analysis.fitted_quantity(conv) == "lr·wd":
        return "lr·wd, the decay per step at peak lr"
    if CONVENTIONS.get(conv) is not None and CONVENTIONS[conv].coupled:
        return "λ, the L2 coefficient"
    return "wd, the decay per step at peak lr"


def short_label(conv: str) -> str:
    """A convention's label without its parenthesis: "Adam + L2", "AdamW, PyTorch form", ..."""
    return (CONVENTIONS[conv].label if conv in CONVENTIONS else conv).split(" (")[0]


def _metric(x: float | None, percent: bool, std: float | None = None) -> str:
    if x is None:
        return "diverged"
    text = f"{x * 100:.2f}%" if percent else f"{x:.3f}"
    if std is not None:
        text += f" ± {std * 100:.2f}" if percent else f" ± {std:.3f}"
    return text


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings table: one row per convention (JSON-ready)."""
    out = []
    for conv, f in results["findings"].items():
        b = f["best"]
        out.append(
            {
                "convention": conv,
                "label": f["label"],
                "best_lr": b["lr"],
                "best_wd": b["wd"],
                "test": b["test"],
                "test_std": b["test_std"],
                "fitted": f["fitted"],
                "slope": f["slope"],
                "slope_interval": f["slope_interval"],
                "reading": f["reading"],
                "excluded_lrs": f["excluded_lrs"],
            }
        )
    return out


def _slope(row: dict[str, Any]) -> str:
    if row["slope"] is None:
        return "n/a"
    coupled = row["convention"] in CONVENTIONS and CONVENTIONS[row["convention"]].coupled
    text = f"{'λ' if coupled else row['fitted']}: {row['slope']:+.2f}"
    if row["slope_interval"] is not None:
        lo, hi = row["slope_interval"]
        text += f" [{lo:+.2f}, {hi:+.2f}]"
    return text


def cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the findings table (what the console and the HTML show)."""
    label = results.get("metric_label", results["metric"])
    percent = results["metric"] == "error"
    seeds = len(results["grid"]["seeds"])
    header = [
        "convention",
        "best cell (lr, wd)",
        f"test {label}" + (f" (mean ± sd, {seeds} seeds)" if seeds > 1 else ""),
        "slope of best decay vs lr [95%]",
        "reading",
    ]
    body = []
    for row in results["findings_table"]:
        reading = row["reading"] + ("*" if row["excluded_lrs"] else "")
        body.append(
            [
                short_label(row["convention"]),
                f"{row['best_lr']:g}, {row['best_wd']:g}",
                _metric(row["test"], percent, row["test_std"] if seeds > 1 else None),
                _slope(row),
                reading,
            ]
        )
    return header, body


def legend(results: dict[str, Any]) -> list[str]:
    """Short lines under the table: what the slope is and how the reading follows from it."""
    lines = [
        "slope: least-squares slope of log10(best decay) against log10(peak lr), over every seed and lr, "
        "with its 95% interval.",
        "best decay: the L2 coefficient λ for Adam + L2; for the decoupled forms the decay per step at peak lr "
        "(lr·wd for PyTorch's weight_decay, wd for the lr-independent form).",
        "reading, from the interval: coupled = below -0.5 (best decay falls as lr grows, -1: as 1/lr); "
        "decoupled = within ±0.5 (it stays put); otherwise inconclusive.",
    ]
    for f in results["findings"].values():
        if f["fitted"] == "lr·wd" and f["slope_wd"] is not None and f["slope_wd_interval"] is not None:
            lo, hi = f["slope_wd_interval"]
            lines.append(
                f"{f['label']}: its weight_decay as passed has slope {f['slope_wd']:+.2f} [{lo:+.2f}, {hi:+.2f}]: "
                f"it is per unit of lr, so keep lr·wd fixed when you change lr."
            )
    for conv, f in results["findings"].items():
        if f["excluded_lrs"]:
            where = "; ".join(
                f"lr {p['lr']:g} at wd {p['wd']:g} ({p['edge']} end)" for p in f["best_wd_per_lr"] if p["edge"]
            )
            lines.append(f"* {short_label(conv)}: left out of the fit, best wd still on an edge of its row: {where}.")
    ext = results.get("extension", {})
    if ext.get("added"):
        lines.append(
            f"{len(ext['added'])} row(s) were extended past an edge of the wd axis ({ext['runs']} of "
            f"{ext['budget_runs']} extra runs allowed)."
        )
    return lines


def print_findings(results: dict[str, Any]) -> None:
    """The findings table and its legend on the console (rich)."""
    from rich.console import Console
    from rich.table import Table

    header, body = cells(results)
    seeds = len(results["grid"]["seeds"])
    title = f"{results['task']['name']}: best cells chosen on validation, scored on test "
    title += f"({seeds} seed{'s' * (seeds > 1)})"
    t = Table(title=title, title_justify="left", show_lines=False)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i in (0, 4) else "right", overflow="fold")
    styles = {"coupled": "bold red", "decoupled": "bold green"}
    for row, text in zip(results["findings_table"], body):
        t.add_row(*text[:4], f"[{styles.get(row['reading'], 'yellow')}]{esc_rich(text[4])}[/]")
    console = Console()
    if not console.is_terminal:  # a file or a pipe: wide enough that the table does not wrap
        console = Console(width=132)
    console.print(t)
    for line in legend(results):
        console.print("  " + esc_rich(line), style="dim", highlight=False)


def esc_rich(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _best_curves(runs: list[dict[str, Any]], found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per convention, the per-epoch curves of its best cell, averaged over seeds."""
    import numpy as np

    curves = {}
    for conv, f in found.items():
        b = f["best"]
        rs = [
            r
            for r in runs
            if r["convention"] == conv and r["lr"] == b["lr"] and r["wd"] == b["wd"] and not r["diverged"]
        ]
        if not rs:
            continue
        n = min(len(r["curves"]["epoch"]) for r in rs)
        avg = {k: list(np.mean([r["curves"][k][:n] for r in rs], axis=0)) for k in rs[0]["curves"] if k != "epoch"}
        curves[conv] = {"epoch": rs[0]["curves"]["epoch"][:n], "lr": b["lr"], "wd": b["wd"], **avg}
    return curves


def write(out: Path, results: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """The figures (PNG) and ``report.html`` of a compare run."""
    found, metric = results["findings"], results["metric"]
    label = results.get("metric_label", metric)
    percent = metric == "error"
    units = {c: wd_units(c) for c in found}
    heat = plots.heatmaps(analysis.cell_table(runs, metric), found, label, percent=percent, units=units)
    slope_png = plots.best_wd_vs_lr(found, {c: fitted_label(c) for c in found})
    curves_png = plots.learning_curves(_best_curves(runs, found), metric, percent=percent, label=label)
    for name, png in [("heatmaps.png", heat), ("best_wd.png", slope_png), ("curves.png", curves_png)]:
        (out / name).write_bytes(png)

    header, body_rows = cells(results)
    rows = [
        [Markup(f'<span class="swatch" style="background:{plots.color(r["convention"])}"></span>{esc(text[0])}')]
        + text[1:]
        for r, text in zip(results["findings_table"], body_rows)
    ]
    body = [
        "<h2>Findings</h2>",
        table(header, rows),
        '<div class="findings"><ul>' + "".join(f"<li>{esc(x)}</li>" for x in legend(results)) + "</ul></div>",
        f"<h2>Validation-selected test {esc(label)} over the grid</h2>",
        img(
            heat,
            "heatmaps",
            "One panel per convention. Rows: peak learning rate. Columns: the weight decay in that convention's own "
            "units (named under each panel). Colour and number: test "
            + esc(label)
            + (" in %" if percent else "")
            + ", mean over seeds; blank: not trained (only rows whose optimum reached the edge were extended). "
            "<b>Black frame</b>: the best cell on validation. <b>White dot</b>: each lr's best wd on validation, "
            "between grid points where the parabola through the lowest cell puts it; <b>open square</b>: that "
            "optimum is still on the edge of its row (a bound). Grey ×: diverged.",
        ),
        "<h2>Does the best weight decay move with the learning rate?</h2>",
        img(
            slope_png,
            "best decay vs lr",
            "One panel per convention. x: peak learning rate. y: the best decay at that lr, chosen on validation, in "
            "the quantity the slope is fitted to (named on the axis; its absolute value, log scale). Large dots: "
            "the optimum of the mean over seeds; small dots: each seed's; open squares: rows still on an edge "
            "after extension, left out of the fit. Solid line: the least-squares fit; grey dashed: slope 0 "
            "(decoupled) and grey dotted: slope −1 (coupled), both through the fit's centre.",
        ),
        "<h2>Learning curves of the best cells</h2>",
        img(
            curves_png,
            "learning curves",
            "x: epoch. Left: training loss (mean over the epoch's batches, log scale). Right: validation (solid) "
            "and test (dashed) " + esc(label) + ". Curves average the seeds of each convention's best cell. Lines "
            "are drawn thick to thin, so where two conventions' best cells are the same run (AdamW with lr·wd "
            "equal to the lr-independent wd applies the same decay at every step) both stay visible.",
        ),
        _setup(results, runs),
    ]
    subtitle = f"{esc(results['task']['name'])}: weight-decay conventions over a learning-rate × weight-decay grid"
    (out / "report.html").write_text(page("decoupled compare", subtitle, "".join(body), results["environment"]))


def _setup(results: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    g, s = results["grid"], results["settings"]
    rows = [
        ["task", s["task"]],
        ["epochs", s["epochs"]],
        ["batch size", s["batch_size"]],
        ["warmup (epochs), then cosine to 0", s["warmup_epochs"]],
        ["training examples used", "all" if s.get("max_train") is None else s["max_train"]],
        ["learning rates", ", ".join(f"{x:g}" for x in g["lrs"])],
        *[
            [f"wd axis, {CONVENTIONS[c].label if c in CONVENTIONS else c}", ", ".join(f"{x:g}" for x in g["wds"][c])]
            for c in g["conventions"]
        ],
        [
            "rows extended",
            ", ".join(f"{e['convention']} lr {e['lr']:g}: +{e['wd']:g}" for e in results["extension"]["added"])
            or "none",
        ],
        ["seeds", ", ".join(map(str, g["seeds"]))],
        ["runs", f"{len(runs)} ({results['runs_reused']} reused from an earlier invocation)"],
        ["wall time of this invocation", f"{results['wall_seconds']:.1f} s with {results['workers']} workers"],
        ["CPU time of its runs", f"{results['run_cpu_seconds']:.1f} s"],
    ]
    return (
        "<h2>Setup</h2>"
        + f"<p>{esc(results['task']['description'])}</p>"
        + table(
            ["setting", "value"],
            [[k, "" if v is None or (isinstance(v, float) and math.isnan(v)) else v] for k, v in rows],
        )
        + "<p>Weight decay applies to weight matrices and embeddings; biases and normalization parameters are "
        "not decayed. Adam + L2 adds λ·θ to the gradient, so its decay is divided by √v like the gradient; AdamW "
        "multiplies θ by 1 − lr<sub>t</sub>·wd each step (PyTorch's form); the lr-independent form by "
        "1 − (lr<sub>t</sub>/lr<sub>peak</sub>)·wd. Every run's numbers are in <code>results.json</code>.</p>"
    )
