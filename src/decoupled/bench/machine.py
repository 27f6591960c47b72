"""What the benchmark ran on: machine, load, versions and command, recorded with every result."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib() -> dict[str, float]:
    """MemTotal and MemAvailable from /proc/meminfo, in GiB (empty where unreadable)."""
    out = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            out[key] = int(rest.split()[0]) / 2**20
    return out


def available_bytes() -> int | None:
    mem = memory_gib()
    return int(mem["MemAvailable"] * 2**30) if "MemAvailable" in mem else None


def cache_sizes() -> dict[str, str]:
    out = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")) if base.exists() else []:
        level, kind, size = (_read(str(index / f)) for f in ("level", "type", "size"))
        if level and size and kind and kind.strip() != "Instruction":
            out[f"L{level.strip()}{'d' if kind.strip() == 'Data' else ''}"] = size.strip()
    return out


def _size_bytes(text: str) -> int:
    """A size as sysfs writes it (``"48K"``, ``"2048K"``, ``"260M"``) in bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip()
    return int(text[:-1]) * units[text[-1].upper()] if text[-1:].upper() in units else int(text)


def largest_cache_bytes(info: dict) -> int | None:
    """The last cache the step's tensors pass through before memory, from a :func:`describe` record:
    the GPU's L2 on a GPU run, else the largest CPU cache (None where unknown)."""
    if "gpu" in info:
        return info["gpu"].get("l2_bytes")
    sizes = [_size_bytes(size) for size in (info.get("caches") or {}).values()]
    return max(sizes, default=None)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    line = (_read("/proc/stat") or "").split("\n", 1)[0]
    if not line.startswith("cpu "):
        return None
    values = [int(x) for x in line.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class OtherLoad:
    """How busy *other* processes kept the CPUs between :meth:`start` and :meth:`stop`.

    All CPUs' busy time from /proc/stat minus this process's own CPU time, as a fraction of
    the CPUs' total time: 0 on a quiet machine, 1 when other work filled every core.
    """

    def start(self) -> OtherLoad:
        self._jiffies, self._own = _cpu_jiffies(), _own_cpu_seconds()
        return self

    def stop(self) -> float | None:
        end, own = _cpu_jiffies(), _own_cpu_seconds()
        if self._jiffies is None or end is None:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (end[0] - self._jiffies[0]) / hz
        total = (end[1] - self._jiffies[1]) / hz
        return round(max(0.0, busy - (own - self._own)) / total, 3) if total > 0 else None


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def other_load(seconds: float = 1.0) -> float | None:
    """:class:`OtherLoad` over ``seconds`` of this process sleeping."""
    import time

    probe = OtherLoad().start()
    time.sleep(seconds)
    return probe.stop()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def huge_pages() -> dict[str, Any]:
    """Whether the step's memory can sit on 2 MiB pages: the kernel's transparent-huge-page mode
    (``always``, ``madvise`` or ``never``; None off Linux), and whether torch's CPU allocator asks
    for them (``THP_MEM_ALLOC_ENABLE=1``). They change the speed of every CPU step (2-core Intel
    Xeon, torch's fused fp32 step on one 64M tensor: 44.4 ms with 4 KiB pages, 40.6 with 2 MiB;
    benchmarks/results/cpu-2core-intel-64M-v2 and -v2-thp), so a run's ratios hold for its own
    setting."""
    text = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = text[text.index("[") + 1 : text.index("]")] if text and "[" in text and "]" in text else None
    return {"system": mode, "torch_allocator": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"}


def describe(device: torch.device) -> dict:
    """A JSON-able record of the machine and software."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "caches": cache_sizes(),
        "memory_gib": {k: round(v, 1) for k, v in memory_gib().items()},
        "huge_pages": huge_pages(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "device": str(device),
        "python": sys.version.split()[0],
        "versions": {
            name: _version(dist)
            for name, dist in (
                ("torch", "torch"),
                ("decoupled", "decoupled"),
                ("triton", "triton"),
                ("optimi", "torch-optimi"),
                ("bitsandbytes", "bitsandbytes"),
                ("torchao", "torchao"),
            )
        },
        "torch": torch.__version__,
        "decoupled_commit": git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "l2_bytes": props.L2_cache_size,
        }
    return info
