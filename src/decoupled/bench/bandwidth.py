"""The machine's memory bandwidth, measured in the same run as the optimizer steps.

Two STREAM-style kernels on arrays much larger than the caches, each timed as the median of
several repeats after a warm-up:

* **copy**: ``dst.copy_(src)``, moving ``2 * N * 4`` bytes (one read, one write per float);
* **triad**: ``a = b + s * c`` (``torch.add(b, c, alpha=s, out=a)``), moving ``3 * N * 4`` bytes;
* **update**: ``a += b`` (``a.add_(b)``), moving ``3 * N * 4`` bytes, in place.

An AdamW step is a many-stream, in-place version of the same access pattern (4 reads, 3
writes per fp32 parameter, every written array also read), so the fastest of the three is the
speed limit its effective GB/s is compared to. On many machines the in-place kernel is the
fastest: writing into an array that was just read costs no extra read-for-ownership of the
destination, which copy and triad pay (and do not count).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Bandwidth:
    """Measured bandwidth in GB/s (1e9 bytes read + written per second)."""

    copy_gbs: float
    triad_gbs: float
    update_gbs: float
    elements: int
    device: str

    @property
    def bound_gbs(self) -> float:
        """The bound a streaming kernel is compared to: the fastest of copy, triad and update."""
        return max(self.copy_gbs, self.triad_gbs, self.update_gbs)

    def to_json(self) -> dict:
        return {**asdict(self), "bound_gbs": self.bound_gbs}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(device: str | torch.device = "cpu", elements: int = 64 * 2**20, repeats: int = 10) -> Bandwidth:
    """Copy, triad and in-place update bandwidth on ``device``.

    Over float32 arrays of ``elements`` (default 64M: 256 MB each, beyond the caches)."""
    device = torch.device(device)
    a = torch.empty(elements, dtype=torch.float32, device=device)
    b = torch.rand(elements, dtype=torch.float32, device=device)
    c = torch.rand(elements, dtype=torch.float32, device=device)
    a.zero_()  # touch every page before timing
    copy_s = _median_seconds(lambda: a.copy_(b), device, repeats)
    triad_s = _median_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), device, repeats)
    update_s = _median_seconds(lambda: a.add_(b), device, repeats)
    nbytes = elements * 4
    return Bandwidth(
        copy_gbs=2 * nbytes / copy_s / 1e9,
        triad_gbs=3 * nbytes / triad_s / 1e9,
        update_gbs=3 * nbytes / update_s / 1e9,
        elements=elements,
        device=str(device),
    )
