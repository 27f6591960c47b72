"""What a backend is: a record in the registry of :mod:`decoupled.backends`.

A backend runs :func:`decoupled.rule.adam_update` over lists of plain tensors (no DTensors, no
state formats: the step pipeline hands it local shards, and formats stream their state through
float32 buffers before calling it). Its step function has one signature::

    step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, c, *,
         differentiable=False, grad_scale=None, found_inf=None)

and updates the tensors in place for one step whose ``state_steps`` were already incremented;
``c`` is a :class:`~decoupled.rule.GroupCoefficients`. ``grad_scale``/``found_inf`` reach only
a backend with ``amp_scaling`` (torch's fused kernels); for the others the pipeline unscales the
gradients itself.

What a backend can run is said by its record, not by an if-chain: ``differentiable`` and
``cautious`` (can it mask the decay) are flags, and ``why_not(kinds)`` names anything else it
cannot run (devices, dtypes, a missing compiler) from the ``(device type, dtype)`` kinds of the
tensors it would get. ``auto_rank`` places it among ``auto``'s candidates per device type
(lower runs first; absent: never picked by ``auto``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

Kinds = frozenset[tuple[str, torch.dtype]]
"""The (device type, dtype) pairs of a list of tensors: all a backend's checks need to know."""

StepFn = Callable[..., None]


def kinds_of(tensors: Iterable[torch.Tensor]) -> Kinds:
    """The (device type, dtype) pairs of ``tensors`` (a few, however many tensors)."""
    return frozenset((t.device.type, t.dtype) for t in tensors)


def _runs_anything(kinds: Kinds) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One backend: its name, step function and what it can run."""

    name: str
    step: StepFn
    summary: str
    why_not: Callable[[Kinds], str | None] = _runs_anything
    differentiable: bool = False
    cautious: bool = True
    amp_scaling: bool = False
    auto_rank: Mapping[str, int] = field(default_factory=dict)

    def unsupported_reason(self, kinds: Kinds, *, differentiable: bool = False, cautious: bool = False) -> str | None:
        """Why this backend cannot run tensors of ``kinds`` with these options, or None."""
        if differentiable and not self.differentiable:
            return (
                f"the {self.name} backend does not record autograd history; differentiable=True needs the loop backend"
            )
        if cautious and not self.cautious:
            return (
                f"the {self.name} backend cannot mask the decay per coordinate, which cautious_decay=True needs; "
                f"use the default backend (it picks one that can)"
            )
        return self.why_not(kinds)

    def rank(self, kinds: Kinds) -> int | None:
        """Its place among ``auto``'s candidates for ``kinds`` (the worst over their devices), or None."""
        ranks = [self.auto_rank.get(device, self.auto_rank.get("*")) for device, _ in kinds] or [
            self.auto_rank.get("*")
        ]
        return None if any(r is None for r in ranks) else max(r for r in ranks if r is not None)
