"""`decoupled compare`'s worker processes: a killed parent takes its workers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

SLOW_TASK = """
import time, torch
from decoupled.lab import Task, Splits

class Slow(Task):
    name = "slow"
    epochs = 1
    batch_size = 8
    def data(self, seed):
        g = torch.Generator().manual_seed(seed)
        return Splits.from_tensors(torch.randn(400, 4, generator=g), torch.randint(0, 2, (400,), generator=g))
    def model(self):
        return torch.nn.Linear(4, 2)
    def augment(self, x, generator):
        time.sleep(0.05)  # a run lasts ~2 s, so the workers are busy when the parent dies
        return x
"""


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_parent_ends_its_workers(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_TASK)
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [sys.executable, "-c", "import sys; from decoupled.cli import main; sys.exit(main())", "compare"]
    argv += ["--task", "slow.py:Slow", "--workers", "2", "--no-progress", "--lrs", "1e-3,1e-2", "--seeds", "2"]
    parent = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and len(workers) < 2:
            workers = {c for c in _children(parent.pid) if b"spawn_main" in _cmdline(c)}
            time.sleep(0.2)
        assert len(workers) == 2, "the workers did not start"
        time.sleep(1.0)  # let them start training
        assert parent.poll() is None, "the grid finished before the parent could be killed"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        if parent.poll() is None:
            parent.kill()
