"""The compiled executor: load, update and store of a dense format fused into one kernel per tensor.

With ``backend="compiled"``, each parameter of at least
:data:`decoupled.backends.compiled.MIN_NUMEL` elements whose moments are dense (``param``,
``fp32`` or ``bf16``) is stepped by one ``torch.compile``'d kernel that reads every stored byte
once and writes it once (:func:`decoupled.backends.compiled.update`): bf16 moments rounded
stochastically with this package's noise pool (:data:`~decoupled.formats.rounding.NOISE`), bf16
parameters written with the group's ``param_rounding`` (Kahan's compensation buffer is the
state's ``kahan_comp``). The rest (small tensors, the blockwise ``8bit`` moments) goes through
the arena (:mod:`.arena`) with the fastest backend.
"""

from __future__ import annotations

import torch

from .. import backends
from ..backends import Backend, compiled
from ..rule import GroupCoefficients
from . import arena
from .base import MomentFormat
from .dense import Dense
from .executor import Executor
from .rounding import COMPENSATION_KEY, NOISE


def run(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict],
    c: GroupCoefficients,
    *,
    moments: MomentFormat,
    rounding: str,
    backend: Backend,
) -> None:
    """One step: big dense-state tensors through the compiled kernel, the others through the arena."""
    names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if c.amsgrad else ("exp_avg", "exp_avg_sq")
    fused = [
        i for i, p in enumerate(params) if isinstance(moments.for_param(p), Dense) and p.numel() >= compiled.MIN_NUMEL
    ]
    if fused:
        fmt = moments.for_param(params[fused[0]])
        compiled.update(
            [params[i] for i in fused],
            [grads[i] for i in fused],
            [[states[i][name] for name in names] + ([] if c.amsgrad else [None]) for i in fused],
            [float(states[i]["step"].item()) for i in fused],
            c,
            stochastic_moments=getattr(fmt, "stochastic", False),
            rounding=rounding,
            comps=[states[i].get(COMPENSATION_KEY) for i in fused],
            noise=NOISE.pool,
        )
    done = set(fused)
    rest = [i for i in range(len(params)) if i not in done]
    if rest:
        params, grads, states = [params[i] for i in rest], [grads[i] for i in rest], [states[i] for i in rest]
        inner = backends.resolve("auto", frozenset((p.device.type, torch.float32) for p in params), cautious=c.cautious)
        arena.run(params, grads, states, c, moments=moments, rounding=rounding, backend=inner)


def unsupported_reason(moments: MomentFormat, rounding: str, kinds: backends.Kinds) -> str | None:
    """Why the compiled executor cannot run here (no compiler for the device), or None."""
    return compiled.unsupported_reason(frozenset((device, torch.float32) for device, _ in kinds))


EXECUTOR = Executor(
    "compiled",
    run,
    "one torch.compile'd kernel per large dense tensor: load, update and store fused (opt-in)",
    why_not=unsupported_reason,
    answers="compiled",
)
