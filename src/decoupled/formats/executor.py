"""What an executor is: how one param group's step runs on state stored in a format.

An executor takes plain tensors (the step pipeline hands it DTensors' local shards) and the
group's state entries, whose ``step`` was already incremented (unless the executor
``counts_steps``: then it adds 1 to each itself, after its checks and before the update), and
runs the float32 update rule
on them, loading and storing every moment (and a low-precision parameter) in its format:

    run(params, grads, states, c, *, moments, rounding, backend)

``backend`` is the :class:`~decoupled.backends.Backend` for float32 tensors on the group's
devices that the pipeline resolved from the optimizer's flags; an executor that computes
elementwise by itself (a fused kernel) may ignore it or use it for what it leaves to the arena.

Executors are records in the registry of :mod:`decoupled.formats` (``EXECUTOR_MODULES``), like
backends: ``why_not(moments, rounding, kinds)`` says what it cannot run, ``answers`` is the
``backend=`` name that asks for it explicitly, and ``auto_rank`` places it among ``auto``'s
candidates per device type (lower first; absent: only when asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

RunFn = Callable[..., None]


def _runs_anything(*_: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Executor:
    """One executor: its name, run function and what it can run."""

    name: str
    run: RunFn
    summary: str
    why_not: Callable[..., str | None] = _runs_anything
    answers: str | None = None
    auto_rank: Mapping[str, int] = field(default_factory=dict)
    counts_steps: bool = False

    def rank(self, device_types: set[str]) -> int | None:
        """Its place among ``auto``'s candidates on these device types (the worst), or None."""
        ranks = [self.auto_rank.get(d, self.auto_rank.get("*")) for d in device_types]
        return None if not ranks or any(r is None for r in ranks) else max(r for r in ranks if r is not None)
