"""Host side of the formats' Triton executor: group tensors, build address tables, launch.

Tensors of one call are grouped by everything the kernel specializes on (device, parameter,
gradient and moment dtypes, moment format, parameter rounding) and by step count (the bias
corrections); each group is one launch of :func:`.kernel.format_kernel`. Its programs each take
``BLOCK`` elements (a multiple of the float8 format's 256-element blocks) of one tensor, from a
table of (tensor, first element) built on the host and cached while the tensors stay the same.
Non-contiguous tensors go through contiguous copies.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...backends import triton as triton_backend
from ...rule import GroupCoefficients, step_coefficients
from ..base import MomentFormat
from ..dense import Dense
from ..float8 import BLOCK as QBLOCK
from ..float8 import BlockFloat8
from ..rounding import COMPENSATION_KEY, is_low_precision
from ..rounding import unsupported_reason as rounding_reason

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEFAULT_BLOCK = 1024
"""Elements per program (4 blocks of 256); ``DECOUPLED_TRITON_FORMAT_BLOCK`` overrides it."""
DEFAULT_NUM_WARPS = 4
"""Warps per program; ``DECOUPLED_TRITON_FORMAT_NUM_WARPS`` overrides it."""

_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def launch_config() -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of the next launch, read from the environment at launch time
    (``DECOUPLED_TRITON_FORMAT_BLOCK``: a power of two >= 256; ``..._NUM_WARPS``: 1 to 32, a
    power of two), so a tuning run can try several in one process."""
    return triton_backend.launch_config("DECOUPLED_TRITON_FORMAT", DEFAULT_BLOCK, DEFAULT_NUM_WARPS, QBLOCK)


def why_not(moments: MomentFormat, rounding: str, kinds) -> str | None:
    """Why the Triton executor cannot run parameters of ``kinds`` (their ``(device type, dtype)``
    pairs) with these formats, or None when it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the Triton executor needs Triton (pip install triton); use the default executor"
    if not isinstance(moments, (Dense, BlockFloat8)):
        return (
            f"the Triton executor runs dense moments and the blockwise float8 code (moments='8bit'), not {moments!r}; "
            f"use the default executor"
        )
    for device, dtype in kinds:
        if dtype not in SUPPORTED_DTYPES:
            return f"the Triton executor runs fp32, bf16 and fp16 parameters, got {dtype}; use the default executor"
        if isinstance(moments, Dense) and (moments.dtype or dtype) not in SUPPORTED_DTYPES:
            return f"the Triton executor stores moments in fp32, bf16 or fp16, got {moments.dtype}"
        reason = rounding_reason(rounding, torch.empty(0, dtype=dtype))
        if reason is not None:
            return reason
        if not (device == "cuda" or (device == "cpu" and triton_backend.interpreting())):
            return (
                f"the Triton executor runs on CUDA GPUs (or on CPU tensors under TRITON_INTERPRET=1, for "
                f"testing), got a parameter on {device}; use the default executor"
            )
    return None


def unsupported_reason(moments: MomentFormat, rounding: str, params) -> str | None:
    """:func:`why_not` for a list of parameters."""
    return why_not(moments, rounding, frozenset((p.device.type, p.dtype) for p in params))


def _moment_code(fmt: MomentFormat, param: torch.Tensor) -> int:
    from .kernel import DENSE, DENSE_STOCHASTIC, FLOAT8

    if isinstance(fmt, BlockFloat8):
        return FLOAT8
    assert isinstance(fmt, Dense)
    return DENSE_STOCHASTIC if fmt.stochastic and fmt.dtype_for(param) == torch.bfloat16 else DENSE


def _rounding_code(rounding: str, param: torch.Tensor) -> int:
    from .kernel import KAHAN, NEAREST, STOCHASTIC

    if rounding == "kahan" and is_low_precision(param):
        return KAHAN
    if rounding == "stochastic" and param.dtype == torch.bfloat16:
        return STOCHASTIC
    return NEAREST


def _steps(states: Sequence[Mapping[str, Any]]) -> list[float]:
    steps = [s["step"] for s in states]
    if all(s.device.type == "cpu" for s in steps):
        return [float(s) for s in steps]
    return torch.stack([s.to(torch.float64, copy=False).reshape(()) for s in steps]).tolist()  # one sync


def step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict],
    c: GroupCoefficients,
    *,
    moments: MomentFormat,
    rounding: str,
    backend: object = None,
) -> None:
    """One step of ``params`` (whose ``state["step"]`` was already incremented) with formatted
    state: the same results as :func:`decoupled.formats.arena.run`, one launch per group.
    ``backend`` is not used (the kernel runs the update itself); it is accepted so that the
    formats' registry can call every executor alike."""
    names = _NAMES if c.amsgrad else _NAMES[:2]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (p, s) in enumerate(zip(params, _steps(states))):
        if p.numel() == 0:
            continue
        fmt = moments.for_param(p)
        first = states[i][fmt.keys("exp_avg")[0]]
        key = (p.device, p.dtype, grads[i].dtype, first.dtype, _moment_code(fmt, p), _rounding_code(rounding, p), s)
        groups[key].append(i)
    for key, indices in groups.items():
        fmt = moments.for_param(params[indices[0]])
        _launch(params, grads, states, indices, fmt, names, key[4], key[5], c, key[6])


def _launch(params, grads, states, indices, fmt, names, moment_code, rounding_code, c, step_count) -> None:
    from .kernel import DENSE_STOCHASTIC, FLOAT8, KAHAN, STOCHASTIC, TABLE_ROWS, format_kernel

    device = params[indices[0]].device
    quantized = moment_code == FLOAT8
    rows: list[list[torch.Tensor]] = [[] for _ in range(TABLE_ROWS)]
    write_back: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flat(t: torch.Tensor, keep: bool = True) -> torch.Tensor:
        if t.is_contiguous():
            return t.view(-1)
        work = t.contiguous()
        if keep:
            write_back.append((t, work))
        return work.view(-1)

    for i in indices:
        p, state = flat(params[i]), states[i]
        stored = [[flat(state[k]) for k in fmt.keys(name)] for name in names]
        comp = flat(state[COMPENSATION_KEY]) if rounding_code == KAHAN else p
        vmax = stored[2] if c.amsgrad else [p, p]
        tensors = [p, flat(grads[i], keep=False), stored[0][0], stored[1][0], vmax[0], comp]
        tensors += [stored[0][-1], stored[1][-1], vmax[-1]] if quantized else [p, p, p]
        for row, t in zip(rows, tensors):
            row.append(t)
    block, num_warps = launch_config()
    ptrs, numels, block_tensor, block_start, num_full = triton_backend.block_tables(rows, device, block)
    aligned = all(t.data_ptr() % 16 == 0 for row in rows for t in row)
    stochastic_moments = moment_code == DENSE_STOCHASTIC
    stochastic_param = rounding_code == STOCHASTIC
    if stochastic_moments:
        random_words = 2 if (stochastic_param or c.amsgrad) else 1
    else:
        random_words = 1 if stochastic_param else 0
    # a fresh Philox key per group, from torch's generator (torch.manual_seed repeats runs); the
    # counter is the block's index in the group; >= 2^32 so Triton always passes a 64-bit integer
    seed = int(torch.randint(1 << 32, 1 << 62, (), dtype=torch.int64)) if random_words else 1 << 32
    neg_step_size, bias_correction2_sqrt = step_coefficients(c, step_count)
    args = [ptrs, numels, block_tensor, block_start, 0, len(indices), rows[0][0], rows[1][0], rows[2][0], seed]
    args += [float(c.decay_factor), float(c.l2), 1 - float(c.beta1), float(c.beta2), 1 - float(c.beta2)]
    args += [float(c.eps), float(neg_step_size), float(bias_correction2_sqrt)]
    flags = dict(
        HAS_DECAY=bool(c.decays),
        HAS_L2=bool(c.coupled),
        CAUTIOUS=bool(getattr(c, "cautious", False)),
        AMSGRAD=bool(c.amsgrad),
        MAXIMIZE=bool(c.maximize),
        MOMENTS=moment_code,
        PARAM_ROUNDING=rounding_code,
        RANDOM_WORDS=random_words,
        ALIGNED=aligned,
        ROUND_BY_HAND=triton_backend.interpreting(),
        ROWS=block // QBLOCK,
        num_warps=num_warps,
        enable_fp_fusion=False,  # round every product as torch does; only the rule's explicit FMAs fuse
    )
    # the full blocks (whose masks the compiler sees are all true: vector loads), then the tails
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for first, count, even in ((0, num_full, True), (num_full, block_tensor.numel() - num_full, False)):
            if count:
                args[4] = first
                format_kernel[(count,)](*args, EVEN=even, **flags)
    for original, work in write_back:
        original.copy_(work.view(original.shape))
