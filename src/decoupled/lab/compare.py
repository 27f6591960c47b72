r"""``decoupled compare``: one model under several weight-decay conventions, over an lr x wd grid.

For each convention (by default Adam + L2; AdamW as PyTorch parametrizes it, decay
:math:`\gamma\eta_t\lambda` per step; AdamW with lr-independent decay, :math:`\eta_t\lambda` per
step; any key of :data:`decoupled.conventions.CONVENTIONS`) every (lr, wd) cell of the grid is
trained for every seed. Cells are selected on the validation split and reported on the test
split (:mod:`decoupled.lab.analysis` says how the findings are computed).

**Interior optima or a named bound.** When the best wd of an lr (a row) is the first or last
value of its row, the true optimum may lie beyond it. ``compare`` then extends that row by one
step of its axis (the ratio between its last two values) and trains the new cells, round after
round, until every row's optimum is inside it or the extension budget (``extend`` runs, by
default a quarter of the grid) is spent. A row still on an edge is left out of the slope fit and
named in the findings. Extensions stop where a decoupled convention would remove the whole
weight in one step (decay per step at peak lr >= 1).

The output folder gets ``report.html`` (self-contained), ``results.json`` (settings, grid,
findings table, findings and every run), ``runs.jsonl`` (one line per finished run, appended as
it finishes: what a rerun resumes from) and the figures as PNG.

Python::

    from decoupled.lab import compare
    result = compare("nextchar", out="runs/compare-nextchar", seeds=3)
    result["findings"]["adamw_indep"]["slope_interval"]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..cli.args import UsageError, positive_float, positive_int
from ..conventions import CONVENTIONS
from . import analysis, report
from .grid import Runner, RunStore, make_cells
from .tasks import DEFAULT_CONVENTIONS, REGISTRY, Task, load_task

#: Where outputs go unless ``out`` is given (ignored by git).
RUNS_FOLDER = Path("runs")


def compare(
    task: str | Task = "nextchar",
    *,
    out: str | os.PathLike | None = None,
    lrs: list[float] | None = None,
    wds: dict[str, list[float]] | None = None,
    conventions: list[str] | None = None,
    seeds: int = 3,
    seed: int = 0,
    epochs: int | None = None,
    metric: str | None = None,
    workers: int | None = None,
    max_train: int | None = None,
    extend: int | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the grid, extend rows whose best wd is on an edge, write the report.

    Args:
        task: a registered name (``"nextchar"``, ``"digits"``, ``"charlm"``), ``"module:attr"``,
            ``"file.py:attr"``, or a :class:`~decoupled.lab.tasks.Task`.
        out: output folder (default ``runs/compare-<task name>``); finished runs found there are reused.
        lrs: peak learning rates (default: the task's).
        wds: weight-decay axis per convention, in that convention's units (default: the task's).
        conventions: keys of :data:`decoupled.conventions.CONVENTIONS` (default: adam_l2, adamw, adamw_indep).
        seeds: runs per cell; their seeds are ``seed, seed + 1, ...``. ``seed`` also fixes the
            data split, which is the same for every run.
        epochs: override the task's epoch count.
        metric: the metric cells are selected and reported by (default: the task's).
        workers: parallel processes, one torch thread each (default: the number of CPUs).
        max_train: use only the first ``max_train`` training examples (quick runs, tests).
        extend: at most this many extra runs to move best wds off the edges of their rows
            (default: a quarter of the grid's runs; 0: never extend).
        fresh: discard finished runs in ``out`` instead of resuming.
        progress: show a progress bar.
    """
    task = load_task(task)
    conventions = list(dict.fromkeys(conventions or DEFAULT_CONVENTIONS))
    for c in conventions:
        if c not in CONVENTIONS:
            raise ValueError(f"unknown convention {c!r}; choose from {', '.join(CONVENTIONS)}")
    lrs = sorted({float(x) for x in (lrs or task.lrs)})
    axes = {c: sorted({float(x) for x in (wds or {}).get(c) or task.grid_wds(c)}) for c in conventions}
    for name, values in [("lr", lrs)] + [(f"wd ({c})", v) for c, v in axes.items()]:
        if not values:
            raise ValueError(f"the {name} axis is empty")
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"every {name} must be a positive number (they are on a log axis), got {bad}")
    for name, value in [("seeds", seeds), ("epochs", epochs), ("workers", workers), ("max_train", max_train)]:
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if extend is not None and extend < 0:
        raise ValueError(f"extend must be >= 0 runs, got {extend}")
    epochs = int(epochs or task.epochs)
    metric = metric or task.metric
    workers = int(workers or os.cpu_count() or 1)
    out = Path(out) if out is not None else RUNS_FOLDER / f"compare-{task.name}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a folder (it is created if missing)")

    seed_list = list(range(seed, seed + seeds))
    rows = {c: {lr: list(axes[c]) for lr in lrs} for c in conventions}
    budget = math.ceil(len(make_cells(conventions, lrs, rows, seed_list)) / 4) if extend is None else extend
    settings = {**task.settings(), "epochs": epochs, "max_train": max_train, "data_seed": seed}
    store = RunStore(out, settings, fresh=fresh)
    before = set(store.runs)
    extensions: list[dict[str, Any]] = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    runner = Runner(task, store, epochs=epochs, data_seed=seed, max_train=max_train, workers=workers, progress=progress)
    with runner:
        for round_ in range(1, 1000):
            cells = make_cells(conventions, lrs, rows, seed_list)
            for result in runner.run(cells):
                if metric not in result["final"]["val"]:
                    raise ValueError(
                        f"metric {metric!r} is not measured by task {task.name!r}; "
                        f"it has {sorted(result['final']['val'])}"
                    )
            found = analysis.findings([store.runs[c.key] for c in cells], metric)
            spent = sum(len(seed_list) for _ in extensions)
            new = _extensions(found, rows, budget - spent, len(seed_list))
            if not new:
                break
            for conv, lr, wd in new:
                rows[conv][lr] = sorted(rows[conv][lr] + [wd])
                extensions.append({"convention": conv, "lr": lr, "wd": wd, "round": round_})
    wall, parent_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    runs = [store.runs[c.key] for c in cells]
    timing = {  # CPU seconds: the runs trained by this invocation (in the workers) and this process
        "wall_seconds": round(wall, 2),
        "run_cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in runs if r["key"] not in before), 1),
        "parent_cpu_seconds": round(parent_cpu, 1),
        "workers": workers,
    }
    results = {
        "task": {"name": task.name, "description": task.description},
        "settings": settings,
        "metric": metric,
        "metric_label": task.metric_label(metric),
        "grid": {
            "lrs": lrs,
            "wds": axes,
            "rows": {c: {f"{lr:g}": r for lr, r in rows[c].items()} for c in conventions},
            "conventions": conventions,
            "seeds": seed_list,
        },
        "extension": {"budget_runs": budget, "runs": len(extensions) * len(seed_list), "added": extensions},
        "findings": found,
        "runs_reused": sum(r["key"] in before for r in runs),
        **timing,
        "environment": report.environment(),
    }
    from . import compare_report

    results["findings_table"] = compare_report.table_rows(results)
    (out / "results.json").write_text(json.dumps({**results, "runs": runs}, indent=1, allow_nan=True) + "\n")
    compare_report.write(out, results, runs)
    results["runs"] = runs
    results["paths"] = {"report": str(out / "report.html"), "results": str(out / "results.json")}
    return results


def _extensions(
    found: dict[str, Any], rows: dict[str, dict[float, list[float]]], budget: int, per_cell: int
) -> list[tuple[str, float, float]]:
    """The next wd of each row whose optimum is on an edge, as many as ``budget`` runs allow."""
    new = []
    for conv, f in found.items():
        for p in f["best_wd_per_lr"]:
            row = rows[conv][p["lr"]]
            if not p["edge"] or len(row) < 2 or budget < per_cell:
                continue
            if p["edge"] == "low":
                wd = row[0] * row[0] / row[1]
            else:
                wd = row[-1] * row[-1] / row[-2]
                decay = CONVENTIONS[conv].decay_per_step(wd, p["lr"], lr_max=p["lr"])
                if decay is not None and decay >= 1:
                    continue  # would remove the whole weight in one step: the edge is a real bound
            new.append((conv, p["lr"], float(f"{wd:.2g}")))
            budget -= per_cell
    return new


# ---- the command ---------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    """Comma-separated positive numbers (an lr or wd axis): sorted, each once."""
    values = []
    for part in text.replace(" ", "").split(","):
        if part:
            try:
                values.append(positive_float(part))
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentTypeError(f"{part!r} in {text!r}: {err}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated numbers like 1e-3,3e-3")
    return sorted(set(values))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default="nextchar",
        help=f"built-in task ({', '.join(REGISTRY)}), 'package.module:Attr' or 'path/to/file.py:Attr' "
        "(default: nextchar)",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/compare-<task>); rerun to resume")
    p.add_argument("--lrs", type=_floats, help="peak learning rates, comma-separated (default: the task's)")
    for key, conv in CONVENTIONS.items():
        p.add_argument(
            f"--wd-{key.replace('_', '-')}",
            type=_floats,
            dest=f"wd_{key}",
            metavar="WDS",
            help=f"wd axis of {conv.label}",
        )
    p.add_argument(
        "--conventions",
        default=",".join(DEFAULT_CONVENTIONS),
        help=f"comma-separated, any of {','.join(CONVENTIONS)} (default: {','.join(DEFAULT_CONVENTIONS)})",
    )
    p.add_argument("--seeds", type=positive_int, default=3, help="runs per cell (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed; also fixes the data split (default 0)")
    p.add_argument("--epochs", type=positive_int, help="override the task's epochs")
    p.add_argument("--metric", help="metric to select and report (default: the task's)")
    p.add_argument("--workers", type=positive_int, help="parallel worker processes (default: number of CPUs)")
    p.add_argument("--max-train", type=positive_int, help="use only this many training examples (quick looks)")
    p.add_argument(
        "--extend",
        type=int,
        help="at most this many extra runs to move best wds off the edges of their rows "
        "(default: a quarter of the grid; 0: never)",
    )
    p.add_argument("--fresh", action="store_true", help="discard finished runs in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    conventions = [c.strip() for c in args.conventions.split(",") if c.strip()]
    unknown = [c for c in conventions if c not in CONVENTIONS]
    if unknown or not conventions:
        raise UsageError(f"--conventions: unknown {unknown or conventions}; choose from {', '.join(CONVENTIONS)}")
    if args.extend is not None and args.extend < 0:
        raise UsageError(f"--extend must be 0 or more runs, got {args.extend}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")
    wds = {c: getattr(args, f"wd_{c}") for c in CONVENTIONS if getattr(args, f"wd_{c}") is not None}
    try:
        task = load_task(args.task)
        results = compare(
            task,
            out=args.out,
            lrs=args.lrs,
            wds=wds,
            conventions=conventions,
            seeds=args.seeds,
            seed=args.seed,
            epochs=args.epochs,
            metric=args.metric,
            workers=args.workers,
            max_train=args.max_train,
            extend=args.extend,
            fresh=args.fresh,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        out = args.out or RUNS_FOLDER / "compare-<task>"
        print(f"\nInterrupted. Finished runs are saved in {out}/runs.jsonl; run the same command again to resume.")
        return 130
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    from .compare_report import print_findings

    print_findings(results)
    print(f"\nReport: {results['paths']['report']}\nAll runs: {results['paths']['results']}")
    return 0
