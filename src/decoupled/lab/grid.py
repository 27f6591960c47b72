"""Running a grid of training runs: in parallel, with progress, resumable, reproducible.

Each finished run is appended as one JSON line to ``runs.jsonl`` in the output folder the
moment it ends, so an interrupted grid (Ctrl-C, a crash, a closed laptop) resumes by running
the same command again: runs whose key is already in the file are not redone. The settings
that define a run (task, epochs, batch size, training-set limit) are stored in
``settings.json``; resuming into a folder made with different settings is refused rather
than mixing incomparable runs.

Workers are separate processes (``spawn``) with one torch thread each; a run's result
depends only on its seed and hyperparameters, not on which worker ran it or in what order.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tasks import Task


@dataclass(frozen=True)
class Cell:
    """One run of the grid: convention, peak lr, weight decay (in that convention's units), seed."""

    convention: str
    lr: float
    wd: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.convention}|lr={self.lr:.6g}|wd={self.wd:.6g}|seed={self.seed}"


def make_cells(
    conventions: Iterable[str], lrs: Iterable[float], wds: dict[str, list[float]], seeds: Iterable[int]
) -> list[Cell]:
    """Every (convention, lr, wd, seed), seeds outermost so early results cover the whole grid."""
    cells = []
    for seed in seeds:
        for conv in conventions:
            for lr in lrs:
                for wd in wds[conv]:
                    cells.append(Cell(conv, float(lr), float(wd), int(seed)))
    return cells


class RunStore:
    """The ``runs.jsonl`` (+ ``settings.json``) of one output folder."""

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any], *, fresh: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "runs.jsonl"
        settings_path = self.folder / "settings.json"
        if fresh:
            for p in (self.path, settings_path):
                if p.exists():
                    p.unlink()
        if settings_path.exists() and self.path.exists():
            old = json.loads(settings_path.read_text())
            if old != settings:
                diff = {
                    k: (old.get(k), settings.get(k)) for k in set(old) | set(settings) if old.get(k) != settings.get(k)
                }
                raise ValueError(
                    f"{self.folder} holds runs made with other settings ({diff}, as (old, new)); "
                    f"use another --out folder, or --fresh to discard them"
                )
        settings_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        self.runs: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with self.path.open() as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        run = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by an interruption
                        continue
                    self.runs[run["key"]] = run

    def add(self, run: dict[str, Any]) -> None:
        self.runs[run["key"]] = run
        with self.path.open("a") as f:
            f.write(json.dumps(run, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ---- worker side ---------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_init(task_blob: bytes, data_seed: int, max_train: int | None, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    task = pickle.loads(task_blob)
    _WORKER["task"] = task
    _WORKER["data"] = task.data(data_seed).limit_train(max_train)


def _worker_run(cell: Cell, epochs: int) -> dict[str, Any]:
    from .train import train_run

    result = train_run(
        _WORKER["task"],
        _WORKER["data"],
        convention=cell.convention,
        lr=cell.lr,
        weight_decay=cell.wd,
        seed=cell.seed,
        epochs=epochs,
    )
    result["key"] = cell.key
    result["n_val"] = int(_WORKER["data"].val[1].numel())
    return result


def run_cells(
    task: Task,
    cells: list[Cell],
    store: RunStore,
    *,
    epochs: int,
    data_seed: int,
    max_train: int | None,
    workers: int,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Run the cells not yet in ``store`` and yield each result as it lands (after storing it)."""
    todo = [c for c in cells if c.key not in store.runs]
    if not todo:
        return
    try:
        blob = pickle.dumps(task)
    except Exception as err:  # a task defined in __main__ or holding a lambda
        raise ValueError(
            f"the task {task.name!r} cannot be sent to worker processes ({err}); define it in an "
            f"importable module or file (--task path/to/file.py:MyTask), or use workers=1"
        ) from err
    bar = _Progress(len(cells), len(cells) - len(todo), enabled=progress)
    if workers <= 1:
        _worker_init(blob, data_seed, max_train, threads=1)
        try:
            with bar:
                for cell in todo:
                    result = _worker_run(cell, epochs)
                    store.add(result)
                    bar.advance(result)
                    yield result
        finally:
            _WORKER.clear()
        return
    ctx = mp.get_context("spawn")
    pool = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(blob, data_seed, max_train, 1)
    )
    futures = [pool.submit(_worker_run, cell, epochs) for cell in todo]
    try:
        with bar:
            for fut in cf.as_completed(futures):
                result = fut.result()
                store.add(result)
                bar.advance(result)
                yield result
    except BaseException:
        for fut in futures:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


class _Progress:
    """A rich progress bar (runs done / total, elapsed, remaining), or nothing."""

    def __init__(self, total: int, done: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.total, self.done = total, done
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]training runs"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[last]}"),
                transient=False,
            )
            self._bar.__enter__()
            self._id = self._bar.add_task("runs", total=self.total, completed=self.done, last="")
        return self

    def advance(self, result: dict[str, Any]) -> None:
        if self._bar is not None:
            last = f"last: {result['convention']} lr={result['lr']:.3g} wd={result['wd']:.3g}"
            self._bar.update(self._id, advance=1, last=last)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
