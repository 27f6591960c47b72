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
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli.args import SetupError, UsageError, call_user, load_attr
from .tasks import Task, source_file


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
    conventions: Iterable[str], lrs: Iterable[float], wds: dict[str, Any], seeds: Iterable[int]
) -> list[Cell]:
    """Every (convention, lr, wd, seed) once, seeds outermost so early results cover the whole grid.

    ``wds[conv]`` is one axis for every lr, or a dict lr -> that lr's row (after an extension).
    """
    cells: dict[str, Cell] = {}
    for seed in seeds:
        for conv in conventions:
            for lr in lrs:
                row = wds[conv][lr] if isinstance(wds[conv], dict) else wds[conv]
                for wd in row:
                    cell = Cell(conv, float(lr), float(wd), int(seed))
                    cells.setdefault(cell.key, cell)
    return list(cells.values())


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
        self.skipped = 0  # unreadable lines before the last one (none unless the file was edited)
        if self.path.exists():
            self._repair_tail()
            with self.path.open() as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        run = json.loads(line)
                    except json.JSONDecodeError:
                        self.skipped += 1
                        continue
                    self.runs[run["key"]] = run

    def _repair_tail(self) -> None:
        """Make the file end with a complete line, so the next append starts a line of its own.

        A write cut off by a kill or a full disk leaves a fragment after the last newline: it is
        removed (that run is redone). A complete record missing only its newline is kept.
        """
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except ValueError:
            with self.path.open("r+b") as f:
                f.truncate(cut)
            return
        with self.path.open("ab") as f:
            f.write(b"\n")

    def add(self, run: dict[str, Any]) -> None:
        self.runs[run["key"]] = run
        with self.path.open("a") as f:
            f.write(json.dumps(run, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ---- worker side ---------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _watch_parent(parent: int) -> None:
    """End this worker when the process that started it is gone (killed, crashed): a daemon thread
    polls the parent's id twice a second, so no orphaned worker keeps training."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="decoupled-parent-watch", daemon=True).start()


def _worker_init(
    task_blob: bytes, task_class: str | None, data_seed: int, max_train: int | None, threads: int, parent: int | None
) -> None:
    """Load the task and its data once per worker process (errors are kept for the first run to raise)."""
    import torch

    torch.set_num_threads(threads)
    if parent is not None:
        _watch_parent(parent)
    try:
        if task_class is not None:  # 'path/to/file.py:Class': import the file under the parent's module name
            load_attr(task_class, what="task")
        task = pickle.loads(task_blob)
        data = call_user(task.data, data_seed, what="task's data()")
        _WORKER["task"] = task
        _WORKER["data"] = data.limit_train(max_train)
    except (SetupError, UsageError) as err:
        _WORKER["error"] = err
    except Exception as err:  # noqa: BLE001 - reported when the first run asks for the data
        _WORKER["error"] = SetupError(f"loading the task in a worker process raised {type(err).__name__}: {err}")


def _worker_run(cell: Cell, epochs: int) -> dict[str, Any]:
    from .train import train_run

    if "error" in _WORKER:
        raise _WORKER["error"]
    t0 = time.process_time()
    try:
        result = train_run(
            _WORKER["task"],
            _WORKER["data"],
            convention=cell.convention,
            lr=cell.lr,
            weight_decay=cell.wd,
            seed=cell.seed,
            epochs=epochs,
        )
    except (KeyboardInterrupt, SystemExit, SetupError, UsageError):
        raise
    except ValueError as err:  # an argument the optimizer refused
        raise UsageError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - the task's model, loss or evaluation failed
        raise SetupError(f"training {cell.key} raised {type(err).__name__}: {err}".split("\n")[0]) from None
    result["key"] = cell.key
    result["n_val"] = int(_WORKER["data"].val[1].numel())
    result["cpu_seconds"] = round(time.process_time() - t0, 3)
    return result


class Runner:
    """Runs cells of one grid, keeping finished ones in ``store``; one pool of workers for all calls.

    Use as a context manager; :meth:`run` may be called several times (``compare`` extends the
    grid in rounds), and the worker processes (spawned, one torch thread each) are started once,
    on the first call that has a run to do. A progress bar (rich) covers every call.
    """

    def __init__(
        self,
        task: Task,
        store: RunStore,
        *,
        epochs: int,
        data_seed: int,
        max_train: int | None,
        workers: int,
        progress: bool = True,
        label: str = "training runs",
    ) -> None:
        self.task, self.store, self.epochs = task, store, epochs
        self.data_seed, self.max_train, self.workers = data_seed, max_train, workers
        self._bar = _Progress(label, enabled=progress)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._local = False
        self._counted: set[str] = set()  # cells already counted by the progress bar

    def __enter__(self) -> Runner:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)
        finally:
            _WORKER.clear()
            self._bar.__exit__(*exc)

    def run(self, cells: list[Cell]) -> Iterator[dict[str, Any]]:
        """Run the cells not yet in the store; yield each result as it lands (after storing it)."""
        todo = [c for c in cells if c.key not in self.store.runs]
        new = [c for c in cells if c.key not in self._counted]
        self._counted.update(c.key for c in new)
        self._bar.add(sum(c.key in self.store.runs for c in new), len(todo))
        if not todo:
            return
        if self.workers <= 1:
            self._start_local()
            for cell in todo:
                yield self._land(_worker_run(cell, self.epochs))
            return
        pool = self._start_pool(len(todo))
        futures = [pool.submit(_worker_run, cell, self.epochs) for cell in todo]
        try:
            for fut in cf.as_completed(futures):
                try:
                    result = fut.result()
                except cf.process.BrokenProcessPool:
                    raise SetupError(
                        "a worker process died (killed, or out of memory?); the finished runs are saved in "
                        f"{self.store.path}, run the same command again to resume"
                    ) from None
                yield self._land(result)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def _land(self, result: dict[str, Any]) -> dict[str, Any]:
        self.store.add(result)
        self._bar.advance(result)
        return result

    def _blob(self) -> bytes:
        try:
            return pickle.dumps(self.task)
        except Exception as err:  # a task defined in __main__ or holding a lambda
            raise ValueError(
                f"the task {self.task.name!r} cannot be sent to worker processes ({err}); define it in an "
                f"importable module or file (--task path/to/file.py:MyTask), or use workers=1"
            ) from err

    def _start_local(self) -> None:
        if not self._local:
            _worker_init(self._blob(), None, self.data_seed, self.max_train, 1, None)
            self._local = True

    def _start_pool(self, todo: int) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            src = source_file(self.task)
            task_class = None if src is None else f"{src}:{type(self.task).__name__}"
            self._pool = cf.ProcessPoolExecutor(
                max_workers=min(self.workers, todo),
                mp_context=mp.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self._blob(), task_class, self.data_seed, self.max_train, 1, os.getpid()),
            )
        return self._pool


class _Progress:
    """A rich progress bar (runs done / total, elapsed, remaining), or nothing."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self.label, self.enabled = label, enabled
        self._bar: Any = None
        self._id: Any = None
        self._seen = 0

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
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[last]}"),
                transient=False,
            )
            self._bar.__enter__()
            self._id = self._bar.add_task("runs", total=0, completed=0, last="")
        return self

    def add(self, done: int, todo: int) -> None:
        """Count a call's cells: ``done`` already finished (reused), ``todo`` to run."""
        if self._bar is not None:
            task = self._bar.tasks[0]
            self._bar.update(self._id, total=(task.total or 0) + todo + done, advance=done)

    def advance(self, result: dict[str, Any]) -> None:
        if self._bar is not None:
            last = f"last: {result['convention']} lr={result['lr']:.3g} wd={result['wd']:.3g}"
            self._bar.update(self._id, advance=1, last=last)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
