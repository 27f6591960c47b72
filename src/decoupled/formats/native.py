"""The native executor: formatted state stepped by one fused C++ pass (:mod:`decoupled.native`).

The executor contract of :mod:`.executor` (the ``backend`` it is handed is not needed): each
parameter's elements are loaded from their stored formats, updated by the float32 rule of
:mod:`decoupled.rule` and stored back, but in one pass over memory, 256 elements at a time in
L1, on every core. Bytes moved per parameter and step (read + write) are then only the
formats' own: parameter 2 x its size, gradient 1 x, each moment 2 x its stored size (1 byte
per element plus 4 per 256 for ``8bit``), a Kahan buffer 2 x the parameter's size.

Results are bitwise those of the arena path with the loop backend wherever no rounding is
random (see ``kernel.cpp`` for the exact arithmetic). Stochastic rounding draws its noise
from a counter-based hash instead of the arena's noise pool (:func:`stochastic_noise`), so
those stores land on the same one of the two bf16 neighbours only by chance.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..backends import Backend, Kinds
from ..native import call as native
from ..native.call import BF16, BF16_STOCHASTIC, F16, F32, FLOAT8, PARAM_TYPES, ROUNDING_CODES, TREE
from ..rule import GroupCoefficients
from .base import SIGNED_MOMENTS, MomentFormat
from .blockwise8 import Blockwise8, codebook
from .dense import Dense
from .executor import Executor
from .float8 import BlockFloat8
from .rounding import COMPENSATION_KEY, is_low_precision

MOMENT_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def moment_kind(fmt: MomentFormat, param: torch.Tensor) -> int | None:
    """How the kernel reads and writes a moment of ``param`` stored in ``fmt``, or None if it cannot."""
    if isinstance(fmt, Blockwise8):
        return TREE
    if isinstance(fmt, BlockFloat8):
        return FLOAT8
    if isinstance(fmt, Dense):
        dtype = fmt.dtype_for(param)
        if dtype == torch.float32:
            return F32
        if dtype == torch.bfloat16:
            return BF16_STOCHASTIC if fmt.stochastic else BF16
        if dtype == torch.float16:
            return F16
    return None


def params_reason(moments: MomentFormat, rounding: str, params: Sequence[torch.Tensor]) -> str | None:
    """Why the kernel cannot step ``params`` with this state format (without building it), or None."""
    reason = why_not(moments, rounding, frozenset((p.device.type, p.dtype) for p in params), build=False)
    if reason is None:
        for p in params:
            if moment_kind(moments.for_param(p), p) is None:
                return f"the native kernels cannot store moments in {moments.for_param(p)!r} for {p.dtype} parameters"
    return reason


def why_not(moments: MomentFormat, rounding: str, kinds: Kinds, *, build: bool = True) -> str | None:
    """Why the native executor cannot run this format and rounding on tensors of ``kinds``
    (with ``build``, building the kernel if it was not yet: the first use takes 15-30 s), or None."""
    if rounding not in ROUNDING_CODES:
        return f"the native kernels know the roundings {list(ROUNDING_CODES)}, got {rounding!r}"
    for device, dtype in kinds:
        if device != "cpu":
            return f"the native kernels run on CPU, got a parameter on {device}"
        if dtype not in PARAM_TYPES:
            return f"the native kernels step float32, bfloat16 and float16 parameters, got {dtype}"
        if rounding == "stochastic" and dtype == torch.float16:
            return "param_rounding='stochastic' is implemented for bfloat16 parameters; use 'kahan' for float16"
    return native.unavailable_reason() if build else None


def unsupported_reason(moments: MomentFormat, rounding: str, params: Sequence[torch.Tensor]) -> str | None:
    """Why :func:`step` cannot run these parameters (building the kernel if it was not yet), or None."""
    return params_reason(moments, rounding, params) or native.unavailable_reason()


@functools.cache
def tables(signed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8-bit codebook's (bucket base codes as int32, thresholds, values) on CPU, kept alive here."""
    book = codebook(signed, "cpu")
    return book.base.to(torch.int32), book.threshold.contiguous(), book.values.contiguous()


def _checked(state: dict, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
    t = state.get(key)
    if isinstance(t, torch.Tensor) and t.dtype == dtype and t.is_cpu and t.numel() == numel:
        return t
    got = f"{t.dtype} with {t.numel()} elements on {t.device}" if isinstance(t, torch.Tensor) else repr(t)
    raise ValueError(f"state[{key!r}] must be a CPU {dtype} tensor of {numel} elements for this format, got {got}")


class Layout(NamedTuple):
    """How the state of one kind of parameter (its dtype, and the format it gets) is stored, as
    the kernel takes it: the moment kind, per moment the state key of its stored values, their
    dtype and the key of its block scales (None for dense moments), whether a Kahan buffer is
    kept, and whether a store rounds stochastically."""

    kind: int
    moments: tuple[tuple[str, torch.dtype, str | None], ...]
    kahan: bool
    stochastic: bool


def layout(fmt: MomentFormat, param: torch.Tensor, names: Sequence[str], rounding: str) -> Layout:
    """The :class:`Layout` of parameters like ``param`` whose moments ``names`` are stored in ``fmt``."""
    kind = moment_kind(fmt, param)
    if kind is None or param.dtype not in PARAM_TYPES:
        raise ValueError(params_reason(fmt, rounding, [param]))
    stored: list[tuple[str, torch.dtype, str | None]] = []
    for name in names:
        if kind in (TREE, FLOAT8):
            codes, scale = fmt.keys(name)
            stored.append((codes, fmt.code_dtype(name) if kind == FLOAT8 else torch.uint8, scale))  # type: ignore[attr-defined]
        else:
            stored.append((name, fmt.dtype_for(param), None))  # type: ignore[attr-defined]
    low = is_low_precision(param)
    stochastic = kind == BF16_STOCHASTIC or (rounding == "stochastic" and param.dtype == torch.bfloat16)
    return Layout(kind, tuple(stored), rounding == "kahan" and low, stochastic)


def step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict],
    c: GroupCoefficients,
    *,
    moments: MomentFormat,
    rounding: str,
    backend: Backend | None = None,
    random_noise: bool = True,
    count_steps: bool = False,
) -> None:
    """One step of ``params`` with formatted state, in place. ``count_steps``: add 1 to each
    ``state["step"]`` first (in the kernel call, after every check: a bad state entry leaves every
    count as it was; the executor's way), else the counts were incremented already (the contract
    of :mod:`~decoupled.formats.executor`). ``backend`` is not used (the kernel runs the update
    itself). ``random_noise=False`` makes stochastic rounding truncate (tests compare against the
    arena with zero noise)."""
    module = native.kernel()
    if module is None:
        raise RuntimeError(native.unavailable_reason())
    names = MOMENT_NAMES[: 3 if c.amsgrad else 2]
    calls: dict[tuple[torch.dtype, int], native.Call] = {}  # per (dtype, moment kind)
    layouts: dict[tuple[torch.dtype, int], Layout] = {}  # per (dtype, id of the format): checked once
    stochastic = False
    empty = []  # the step counts of parameters without elements
    for i, p in enumerate(params):
        n = p.numel()
        if n == 0:
            empty.append(states[i]["step"])  # (counted below, with count_steps)
            continue
        fmt = moments.for_param(p)
        how = layouts.get((p.dtype, id(fmt)))
        if how is None:
            how = layouts[(p.dtype, id(fmt))] = layout(fmt, p, names, rounding)
        state = states[i]
        stored = [
            (_checked(state, key, dtype, n), _checked(state, scale, torch.float32, -(-n // 256)) if scale else None)
            for key, dtype, scale in how.moments
        ]
        comp = _checked(state, COMPENSATION_KEY, p.dtype, n) if how.kahan and COMPENSATION_KEY in state else None
        call = calls.get((p.dtype, how.kind))
        if call is None:
            call = calls[(p.dtype, how.kind)] = native.Call(len(names), count_steps=count_steps)
        call.add(i, p, grads[i], comp, stored, state["step"] if count_steps else float(state["step"]))
        stochastic |= how.stochastic
    if empty and count_steps:
        torch._foreach_add_(empty, 1.0)
    seed = native.draw_seed() if stochastic else 0
    for (dtype, kind), call in calls.items():
        table_ptrs: list[int] = []
        for name in names:
            book = tables(name in SIGNED_MOMENTS) if kind == TREE else None
            table_ptrs += [t.data_ptr() for t in book] if book else [0, 0, 0]
        call.run(module, dtype, (kind,) * len(names), rounding, c, seed, random_noise, table_ptrs)


EXECUTOR = Executor(
    "native",
    functools.partial(step, count_steps=True),
    "one fused C++ pass per tensor on CPU: load, update and store of every format (built at first use)",
    why_not=why_not,
    answers="native",
    auto_rank={"cpu": 10},
    counts_steps=True,
)
