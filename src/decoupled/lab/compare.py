r"""``decoupled compare``: the same model under three weight-decay conventions, over an lr x wd grid.

For each convention (Adam + L2; AdamW as PyTorch parametrizes it, decay :math:`\gamma\eta_t\lambda`
per step; AdamW with lr-independent decay, :math:`\eta_t\lambda` per step) every (lr, wd) cell of
the grid is trained for every seed. Cells are selected on the validation split and reported on
the test split. The output folder gets:

* ``report.html``: self-contained (figures inlined): the findings in words, heatmaps of the test
  metric per convention (best cells marked), the best wd against lr, learning curves of each
  convention's best cell, the table of best cells and the settings.
* ``results.json``: settings, grid, findings and every run (final metrics and per-epoch curves).
* ``runs.jsonl``: one line per finished run, written as it finishes (what ``--resume`` reads).
* ``heatmaps.png``, ``best_wd.png``, ``curves.png``: the figures on their own.

Python::

    from decoupled.lab import compare
    result = compare("digits", out="compare-digits", seeds=3)
    result["findings"]["adamw_indep"]["slope_wd"]

See :mod:`decoupled.lab.analysis` for how the findings are computed and
:mod:`decoupled.lab.tasks` for plugging in your own model and data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from . import analysis, plots, report
from .grid import RunStore, make_cells, run_cells
from .tasks import CONVENTIONS, REGISTRY, Task, load_task


def compare(
    task: str | Task = "digits",
    *,
    out: str | os.PathLike | None = None,
    lrs: list[float] | None = None,
    wds: dict[str, list[float]] | None = None,
    conventions: list[str] | None = None,
    seeds: int = 1,
    seed: int = 0,
    epochs: int | None = None,
    metric: str | None = None,
    workers: int | None = None,
    max_train: int | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the grid and write the report; return the ``results.json`` content.

    Args:
        task: a registered name (``"digits"``), ``"module:attr"``,
            ``"file.py:attr"``, or a :class:`~decoupled.lab.tasks.Task`.
        out: output folder (default ``compare-<task name>``); finished runs found there are reused.
        lrs: peak learning rates (default: the task's).
        wds: weight-decay axis per convention, in that convention's units (default: the task's).
        conventions: subset of ``adam_l2``, ``adamw``, ``adamw_indep`` (default: all three).
        seeds: runs per cell; their seeds are ``seed, seed + 1, ...``. ``seed`` also fixes the
            data split, which is the same for every run.
        epochs: override the task's epoch count.
        metric: the metric cells are selected and reported by (default: the task's, e.g. ``error``).
        workers: parallel processes, one torch thread each (default: the number of CPUs).
        max_train: use only the first ``max_train`` training examples (quick runs, tests).
        fresh: discard finished runs in ``out`` instead of resuming.
        progress: show a progress bar.
    """
    task = load_task(task)
    conventions = list(conventions or CONVENTIONS)
    for c in conventions:
        if c not in CONVENTIONS:
            raise ValueError(f"unknown convention {c!r}; choose from {', '.join(CONVENTIONS)}")
    lrs = [float(x) for x in (lrs or task.lrs)]
    grid_wds = {c: [float(x) for x in (wds or {}).get(c) or task.grid_wds(c)] for c in conventions}
    for name, values in [("lr", lrs)] + [(f"wd ({c})", v) for c, v in grid_wds.items()]:
        if not values:
            raise ValueError(f"the {name} axis is empty")
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"every {name} must be a positive number (they are on a log axis), got {bad}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    epochs = int(epochs or task.epochs)
    metric = metric or task.metric
    workers = int(workers or os.cpu_count() or 1)
    out = Path(out or f"compare-{task.name}")

    settings = {**task.settings(), "epochs": epochs, "max_train": max_train, "data_seed": seed}
    store = RunStore(out, settings, fresh=fresh)
    cells = make_cells(conventions, lrs, grid_wds, range(seed, seed + seeds))
    reused = sum(c.key in store.runs for c in cells)
    t0 = time.perf_counter()
    for _ in run_cells(
        task,
        cells,
        store,
        epochs=epochs,
        data_seed=seed,
        max_train=max_train,
        workers=min(workers, max(1, len(cells) - reused)),
        progress=progress,
    ):
        pass
    wall = time.perf_counter() - t0
    runs = [store.runs[c.key] for c in cells]
    if metric not in runs[0]["final"]["val"]:
        raise ValueError(
            f"metric {metric!r} is not measured by task {task.name!r}; it has {sorted(runs[0]['final']['val'])}"
        )

    found = analysis.findings(runs, metric)
    results = {
        "task": {"name": task.name, "description": task.description},
        "settings": settings,
        "metric": metric,
        "metric_label": task.metric_label(metric),
        "grid": {"lrs": lrs, "wds": grid_wds, "conventions": conventions, "seeds": list(range(seed, seed + seeds))},
        "findings": found,
        "wall_seconds": round(wall, 2),
        "runs_reused": reused,
        "environment": report.environment(),
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    _write_report(out, results, runs)
    results["paths"] = {"report": str(out / "report.html"), "results": str(out / "results.json")}
    return results


# ---- the report ----------------------------------------------------------------------------------


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


def _pct(x: float | None, percent: bool, std: float | None = None) -> str:
    if x is None:
        return "diverged"
    s = f"{x * 100:.2f}%" if percent else f"{x:.4g}"
    if std:
        s += f" ± {std * 100:.2f}" if percent else f" ± {std:.2g}"
    return s


def headline(results: dict[str, Any]) -> list[str]:
    """The two findings as plain sentences (also printed by the CLI)."""
    found, metric = results["findings"], results["metric"]
    label = results.get("metric_label", metric)
    percent = metric == "error"
    seeds = len(results["grid"]["seeds"])
    lines = []
    ranked = sorted(found.items(), key=lambda kv: math.inf if kv[1]["best"]["test"] is None else kv[1]["best"]["test"])
    parts = []
    for _, f in ranked:
        b = f["best"]
        parts.append(
            f"{f['label']}: {_pct(b['test'], percent, b['test_std'] if seeds > 1 else None)} "
            f"(lr {b['lr']:g}, wd {b['wd']:g})"
        )
    lines.append(
        f"Best test {label} per convention (cell chosen on validation, {seeds} seed{'s' * (seeds > 1)}): "
        + "; ".join(parts)
        + "."
    )
    parts = []
    for conv, f in found.items():
        s = f["slope_wd"]
        if s is None:
            parts.append(f"{f['label']}: n/a")
            continue
        text = f"{f['label']}: slope {s:+.2f}"
        if conv == "adamw":
            text += f" (of lr·wd, the decay per step: {f['slope_strength']:+.2f})"
        text += f", {analysis.interpret_slope(f['slope_strength'])}"
        if f["edge_hits"]:
            text += f" [best wd on the grid's edge at {f['edge_hits']} lr{'s' * (f['edge_hits'] > 1)}: a bound]"
        parts.append(text)
    lines.append(
        "How the best weight decay moves with lr (slope of log best-wd against log lr; "
        "0 = decoupled, -1 or steeper = coupled): " + "; ".join(parts) + "."
    )
    return lines


def _write_report(out: Path, results: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    from .report import Markup, esc, img, page, table

    found, metric = results["findings"], results["metric"]
    label = results.get("metric_label", metric)
    percent = metric == "error"
    table_ = analysis.cell_table(runs, metric)
    heat = plots.heatmaps(table_, found, label, percent=percent)
    slope_png = plots.best_wd_vs_lr(found)
    curves_png = plots.learning_curves(_best_curves(runs, found), metric, percent=percent, label=label)
    for name, png in [("heatmaps.png", heat), ("best_wd.png", slope_png), ("curves.png", curves_png)]:
        (out / name).write_bytes(png)

    lines = headline(results)
    body = ['<div class="findings"><b>Findings</b><ul>' + "".join(f"<li>{esc(x)}</li>" for x in lines) + "</ul></div>"]
    edge = [f["label"] for f in found.values() if f["edge_hits"]]
    if edge:
        body.append(
            f'<p class="warn">The best weight decay lies on the edge of the grid for {esc(", ".join(edge))}: '
            f"widen that axis (<code>--wd-...</code>) to locate it, or read its slope as a bound.</p>"
        )
    body.append("<h2>Test " + esc(label) + " over the grid</h2>")
    body.append(
        img(
            heat,
            "heatmaps",
            (
                "Each panel trains the same model from the same initial weights and batches; only the weight-decay "
                "convention and the (lr, wd) cell change. Colour and number: test "
                + esc(label)
                + (" in %" if percent else "")
                + " (mean over seeds). <b>Black frame</b>: the cell chosen on the "
                "validation split. <b>White dots</b>: the best wd at each lr "
                "(on validation, by the one-standard-error rule: "
                "the strongest decay within one standard error of that lr's best). Grey ×: diverged. "
                "Each convention's weight decay is in its own units, so compare the <i>shape</i> of the valleys: "
                "a valley that runs diagonally means the best wd depends on lr."
            ),
        )
    )
    body.append("<h2>Does the best weight decay move with the learning rate?</h2>")
    body.append(
        img(
            slope_png,
            "best wd vs lr",
            (
                "Best decay strength at each lr relative to its value at the smallest lr (for PyTorch's AdamW the "
                "strength is lr·wd, the fraction removed per step). Flat = you can tune lr and wd separately; "
                "falling = changing lr silently changes the best decay. Circled points sit on the grid's edge."
            ),
        )
    )
    rows = []
    for conv, f in found.items():
        b = f["best"]
        rows.append(
            [
                Markup(f'<span class="swatch" style="background:{plots.color(conv)}"></span>{esc(f["label"])}'),
                f"{b['lr']:g}",
                f"{b['wd']:g}",
                _pct(b["val"], percent, b["val_std"]),
                _pct(b["test"], percent, b["test_std"]),
                "n/a" if f["slope_wd"] is None else f"{f['slope_wd']:+.2f}",
                ", ".join(f"{p['wd']:g}" for p in f["best_wd_per_lr"]),
            ]
        )
    body.append("<h2>Best cells</h2>")
    body.append(
        table(
            ["convention", "lr", "wd", f"val {label}", f"test {label}", "slope", "best wd per lr (low→high lr)"], rows
        )
    )
    body.append("<h2>Learning curves of the best cells</h2>")
    body.append(img(curves_png, "learning curves"))
    g = results["grid"]
    s = results["settings"]
    body.append("<h2>Setup</h2>")
    body.append(f"<p>{esc(results['task']['description'])}</p>")
    body.append(
        table(
            ["setting", "value"],
            [
                ["task", s["task"]],
                ["epochs", s["epochs"]],
                ["batch size", s["batch_size"]],
                ["warmup (epochs), then cosine to 0", s["warmup_epochs"]],
                ["training examples used", "all" if s.get("max_train") is None else s["max_train"]],
                ["learning rates", ", ".join(f"{x:g}" for x in g["lrs"])],
                *[[f"wd axis, {CONVENTIONS[c]}", ", ".join(f"{x:g}" for x in g["wds"][c])] for c in g["conventions"]],
                ["seeds", ", ".join(map(str, g["seeds"]))],
                ["runs", f"{len(runs)} ({results['runs_reused']} reused from an earlier invocation)"],
                ["wall time of this invocation", f"{results['wall_seconds']:.1f} s"],
            ],
        )
    )
    body.append(
        "<p>Weight decay applies to weight matrices (tensors with 2+ dimensions); biases and "
        "normalization parameters are not decayed. Adam + L2 adds wd·θ to the gradient, so its decay is "
        "divided by √v like the gradient; AdamW multiplies θ by 1 − lr·wd each step (PyTorch's form); "
        "the lr-independent form multiplies θ by 1 − η<sub>t</sub>·wd, "
        "where η<sub>t</sub> = lr<sub>t</sub>/lr<sub>peak</sub> "
        "is the schedule multiplier. Every run's numbers are in <code>results.json</code>.</p>"
    )
    subtitle = (
        f"{esc(results['task']['name'])}: three weight-decay conventions over a learning-rate × weight-decay grid"
    )
    (out / "report.html").write_text(page("decoupled compare", subtitle, "".join(body), results["environment"]))


# ---- the command ---------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1e-3,3e-3, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default="digits",
        help=f"built-in task ({', '.join(REGISTRY)}), 'package.module:Attr' or 'path/to/file.py:Attr' "
        "(default: digits)",
    )
    p.add_argument("--out", default=None, help="output folder (default: compare-<task>); rerun to resume")
    p.add_argument("--lrs", type=_floats, help="peak learning rates, comma-separated (default: the task's)")
    p.add_argument("--wd-adam-l2", type=_floats, help="wd axis of Adam + L2 (the L2 coefficient)")
    p.add_argument(
        "--wd-adamw", type=_floats, help="wd axis of AdamW, PyTorch form (weight_decay, decay lr*wd per step)"
    )
    p.add_argument("--wd-adamw-indep", type=_floats, help="wd axis of lr-independent AdamW (decay per step at peak lr)")
    p.add_argument("--conventions", default=",".join(CONVENTIONS), help=f"subset of {','.join(CONVENTIONS)}")
    p.add_argument("--seeds", type=int, default=1, help="runs per cell (default 1)")
    p.add_argument("--seed", type=int, default=0, help="first seed; also fixes the data split (default 0)")
    p.add_argument("--epochs", type=int, help="override the task's epochs")
    p.add_argument("--metric", help="metric to select and report (default: the task's, e.g. error)")
    p.add_argument("--workers", type=int, help="parallel worker processes (default: number of CPUs)")
    p.add_argument("--max-train", type=int, help="use only this many training examples (quick looks)")
    p.add_argument("--fresh", action="store_true", help="discard finished runs in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    wds = {"adam_l2": args.wd_adam_l2, "adamw": args.wd_adamw, "adamw_indep": args.wd_adamw_indep}
    conventions = [c.strip() for c in args.conventions.split(",") if c.strip()]
    try:
        results = compare(
            args.task,
            out=args.out,
            lrs=args.lrs,
            wds={k: v for k, v in wds.items() if v},
            conventions=conventions,
            seeds=args.seeds,
            seed=args.seed,
            epochs=args.epochs,
            metric=args.metric,
            workers=args.workers,
            max_train=args.max_train,
            fresh=args.fresh,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        out = args.out or "compare-<task>"
        print(f"\nInterrupted. Finished runs are saved in {out}/runs.jsonl; run the same command again to resume.")
        return 130
    except (ValueError, TypeError) as err:
        print(f"decoupled compare: error: {err}")
        return 2
    for line in headline(results):
        print("\n" + line)
    print(f"\nReport: {results['paths']['report']}\nAll runs: {results['paths']['results']}")
    return 0
