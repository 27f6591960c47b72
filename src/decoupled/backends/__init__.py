"""Backends: how the update rule of :mod:`decoupled.rule` is executed, as records in a registry.

=========  ===============================================================================
name       what it is
=========  ===============================================================================
loop       one tensor at a time: the readable reference (:mod:`.loop`)
foreach    multi-tensor ``torch._foreach_*`` over tensors grouped by device and dtype
fused      torch's own fused kernel, one call per device and dtype (:mod:`.fused`)
native     one fused C++ pass per tensor on CPU, built at first use (:mod:`.native`): every
           convention, cautious decay included, at the fused kernel's speed
triton     one Triton kernel launch per list, fp32/bf16/fp16 (:mod:`.triton`; CUDA, or CPU
           under ``TRITON_INTERPRET=1`` for tests)
compiled   one ``torch.compile``'d kernel per large tensor (:mod:`.compiled`); the state
           formats use its storage-fused form
=========  ===============================================================================

Each module defines ``BACKEND``, a :class:`~.base.Backend` record (step function, what it
supports, its rank for ``auto``); :data:`MODULES` lists the modules, so adding a backend is one
file plus one name there, and the case table of the tests picks it up. ``auto`` runs the
best-ranked backend that supports the tensors (:func:`resolve`).
"""

from __future__ import annotations

import importlib

from .base import Backend, Kinds, StepFn, kinds_of


class Unsupported(RuntimeError):
    """A backend cannot run these inputs; the message says why and what to use instead."""


MODULES = ("loop", "foreach", "fused", "native", "triton", "compiled")
"""The registry: one module per backend, each defining ``BACKEND``."""

REGISTRY: dict[str, Backend] = {
    b.name: b for b in (importlib.import_module(f"{__name__}.{m}").BACKEND for m in MODULES)
}

BACKENDS: dict[str, StepFn] = {name: b.step for name, b in REGISTRY.items()}
"""Step function by backend name."""


def get(name: str) -> Backend:
    """The backend called ``name``; ValueError listing the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *REGISTRY]}") from None


def candidates(kinds: Kinds) -> list[Backend]:
    """``auto``'s candidates for tensors of ``kinds``, best first."""
    ranked = [(b.rank(kinds), i, b) for i, b in enumerate(REGISTRY.values())]
    return [b for rank, _, b in sorted((r, i, b) for r, i, b in ranked if r is not None)]


def resolve(name: str, kinds: Kinds, *, differentiable: bool = False, cautious: bool = False) -> Backend:
    """The backend to run: ``name`` itself (Unsupported with the reason if it cannot run these
    tensors), or for ``auto`` the best-ranked candidate that can. Answers are remembered (the
    step asks once per group and step; a few distinct questions per run)."""
    key = (name, kinds, differentiable, cautious)
    backend = _RESOLVED.get(key)
    if backend is None:
        backend = _RESOLVED[key] = _resolve(name, kinds, differentiable=differentiable, cautious=cautious)
    return backend


_RESOLVED: dict[tuple, Backend] = {}


def _resolve(name: str, kinds: Kinds, *, differentiable: bool, cautious: bool) -> Backend:
    options = dict(differentiable=differentiable, cautious=cautious)
    if name == "auto":
        for backend in candidates(kinds):
            if backend.unsupported_reason(kinds, **options) is None:
                return backend
        raise Unsupported(f"no backend runs tensors of {sorted(kinds, key=str)} with {options}")
    backend = get(name)
    reason = backend.unsupported_reason(kinds, **options)
    if reason is not None:
        raise Unsupported(reason)
    return backend


__all__ = [
    "Backend",
    "Kinds",
    "REGISTRY",
    "BACKENDS",
    "MODULES",
    "Unsupported",
    "get",
    "candidates",
    "resolve",
    "kinds_of",
]
