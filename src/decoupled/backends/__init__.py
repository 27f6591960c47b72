"""Backends: how the update rule of :mod:`decoupled.rule` is executed.

Every backend is a function with one signature,
``step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, c, *, differentiable)``,
that updates the tensors in place for one step whose ``state_steps`` were already incremented.
``c`` is a :class:`~decoupled.rule.GroupCoefficients`. A backend raises
:class:`Unsupported` (with the reason) for inputs it cannot run, before touching anything.

=========  ===============================================================================
name       what it is
=========  ===============================================================================
loop       one tensor at a time: the readable reference (:mod:`.loop`)
foreach    multi-tensor ``torch._foreach_*`` over tensors grouped by device and dtype
fused      one fused kernel per device and dtype (:mod:`.fused`)
triton     one Triton kernel launch per list, fp32/bf16/fp16 (:mod:`.triton`; CUDA, or CPU
           under ``TRITON_INTERPRET=1`` for tests)
compiled   one ``torch.compile``'d kernel per tensor that fuses loads, update and stores
           (:mod:`.compiled`); its point is low-memory state formats, opt-in only
=========  ===============================================================================

``auto`` picks the fastest backend that supports the inputs (see :func:`resolve`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import compiled, foreach, fused, loop
from . import triton as triton_backend


class Unsupported(RuntimeError):
    """A backend cannot run these inputs; the message says why and what to use instead."""


StepFn = Callable[..., None]

BACKENDS: dict[str, StepFn] = {
    "loop": loop.step,
    "foreach": foreach.step,
    "fused": fused.step,
    "triton": triton_backend.step,
    "compiled": compiled.step,
}

# What `auto` tries, fastest first (measured by `decoupled bench`; see benchmarks/).
# triton is not in it yet: on CUDA, torch's own fused kernel stays the default until the
# triton backend is measured faster on a GPU (benchmarks/ has no GPU numbers so far); on CPU
# the fused backend (torch's fused CPU kernel) is the fastest measured.
AUTO_ORDER: tuple[str, ...] = ("fused", "foreach", "loop")


def unsupported_reason(name: str, params: Sequence[torch.Tensor], *, differentiable: bool) -> str | None:
    """Why backend ``name`` cannot run on ``params``, or None when it can."""
    if name == "loop":
        return None
    if differentiable:
        return f"the {name} backend does not record autograd history; differentiable=True needs the loop backend"
    if name == "fused":
        return fused.unsupported_reason(params)
    if name == "triton":
        return triton_backend.unsupported_reason(params)
    if name == "compiled":
        return compiled.unsupported_reason(params)
    return None


def resolve(name: str, params: Sequence[torch.Tensor], *, differentiable: bool = False) -> str:
    """The backend to run: ``name`` itself, or for ``auto`` the first of :data:`AUTO_ORDER` that fits."""
    if name == "auto":
        return next(b for b in AUTO_ORDER if unsupported_reason(b, params, differentiable=differentiable) is None)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *BACKENDS]}")
    reason = unsupported_reason(name, params, differentiable=differentiable)
    if reason is not None:
        raise Unsupported(reason)
    return name


__all__ = ["BACKENDS", "AUTO_ORDER", "Unsupported", "resolve", "unsupported_reason"]
