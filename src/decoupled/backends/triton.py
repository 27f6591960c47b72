"""The triton backend: one Triton kernel launch per (dtypes, step) group of tensors.

The kernel (:mod:`._triton_kernel`) is :func:`decoupled.rule.adam_update` written out
elementwise: it loads the parameter, gradient and moments (fp32, bf16 or fp16), computes in
fp32 registers in the rule's order of operations, and stores each back in its own dtype, so
bf16 parameters keep bf16 moments (as ``torch.optim.AdamW`` does) but every intermediate is
fp32. The kernel knows no conventions: it takes the host-side scalars of
:func:`decoupled.rule.group_coefficients` and :func:`decoupled.rule.step_coefficients`
(``decay_factor``, ``l2``, ``neg_step_size``, ``bias_correction2_sqrt``, betas, eps) and
compile-time flags (amsgrad, maximize, and whether ``decay_factor != 1`` / ``l2 != 0``,
exactly the rule's branches).

Multi-tensor launch: instead of one launch per tensor (148 launches for GPT-2), every launch
covers a whole list. The host builds a table of the tensors' addresses and a table of blocks
(tensor index, first element), both cached while the tensors stay the same, and each program
updates ``BLOCK`` elements of one tensor with ``NUM_WARPS`` warps (both settable through the
environment for tuning, :func:`launch_config`). Tensors that differ in step count (and so in bias
correction) go to separate launches.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter,
slow, used by the tests to check the kernel against the loop backend without a GPU).
"""

from __future__ import annotations

import os
from collections import OrderedDict, defaultdict
from typing import Any, cast

import torch

from ..rule import GroupCoefficients, step_coefficients
from .base import Backend, Kinds

BLOCK = 1024
"""Elements per program by default; ``DECOUPLED_TRITON_BLOCK`` overrides it (:func:`launch_config`)."""
NUM_WARPS = 4
"""Warps per program by default; ``DECOUPLED_TRITON_NUM_WARPS`` overrides it."""
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CACHE: OrderedDict[tuple, tuple[Any, ...]] = OrderedDict()
_CACHE_SIZE = 16


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_REAL = {torch.complex64: torch.float32, torch.complex32: torch.float16}


def unsupported_reason(kinds: Kinds) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton backend needs Triton (pip install triton); use the fused backend"
    for device, dtype in kinds:
        if _REAL.get(dtype, dtype) not in SUPPORTED_DTYPES:
            return f"the triton backend runs fp32, bf16 and fp16 tensors, got {dtype}; use the fused or foreach backend"
        if device == "cuda" or (device == "cpu" and interpreting()):
            continue
        return (
            f"the triton backend runs on CUDA GPUs (or on CPU tensors under TRITON_INTERPRET=1, for "
            f"testing), got a parameter on {device}; use the fused backend"
        )
    return None


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


def _env_int(name: str, default: int, ok, what: str) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    value = int(text) if text.strip().isdigit() else -1
    if not ok(value):
        raise ValueError(f"{name}={text!r}: expected {what}")
    return value


def launch_config(
    prefix: str = "DECOUPLED_TRITON", block: int = BLOCK, num_warps: int = NUM_WARPS, min_block: int = 128
) -> tuple[int, int]:
    """``(elements per program, warps per program)`` of the next launch: the defaults, unless the
    environment sets ``{prefix}_BLOCK`` (a power of two >= ``min_block``) or ``{prefix}_NUM_WARPS``
    (1 to 32, a power of two). Read at every launch, so a tuning run can try several in one process."""

    def power(x: int) -> bool:
        return x > 0 and x & (x - 1) == 0

    return (
        _env_int(f"{prefix}_BLOCK", block, lambda x: power(x) and x >= min_block, f"a power of two >= {min_block}"),
        _env_int(f"{prefix}_NUM_WARPS", num_warps, lambda x: power(x) and x <= 32, "1, 2, 4, 8, 16 or 32"),
    )


def block_tables(lists: list[list[torch.Tensor]], device: torch.device, block: int) -> tuple[Any, ...]:
    """Address table (row by row), element counts, the (tensor, first element) of every block of
    ``block`` elements, full blocks first, and how many blocks are full: what a multi-tensor
    launch reads (also the formats' Triton executor); cached while the tensors stay the same."""
    key = (device, block, *(t.data_ptr() for ts in lists for t in ts), *(t.numel() for t in lists[0]))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    numels = [t.numel() for t in lists[0]]
    full = [(i, start) for i, n in enumerate(numels) for start in range(0, n - block + 1, block)]
    tails = [(i, n // block * block) for i, n in enumerate(numels) if n % block]
    block_tensor = [i for i, _ in full + tails]
    block_start = [start for _, start in full + tails]
    tables = (
        torch.tensor([t.data_ptr() for ts in lists for t in ts], dtype=torch.int64, device=device),
        torch.tensor(numels, dtype=torch.int64, device=device),
        torch.tensor(block_tensor, dtype=torch.int32, device=device),
        torch.tensor(block_start, dtype=torch.int64, device=device),
        len(full),
    )
    _CACHE[key] = tables
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return tables


def _launch(
    lists: list[list[torch.Tensor]], c: GroupCoefficients, neg_step_size: Any, bias_correction2_sqrt: Any
) -> None:
    from ._triton_kernel import adam_kernel

    params, grads, exp_avgs, exp_avg_sqs = lists[:4]
    if not c.amsgrad:
        lists = [*lists[:4], exp_avg_sqs]  # the kernel never reads the 5th row then
    device = params[0].device
    block, num_warps = launch_config()
    ptrs, numels, block_tensor, block_start, num_full = block_tables(lists, device, block)
    if block_tensor.numel() == 0:
        return
    aligned = all(t.data_ptr() % 16 == 0 for ts in lists for t in ts)
    with torch.cuda.device(device) if device.type == "cuda" else _nothing():
        # the full blocks (whose masks the compiler sees are all true: vector loads), then the tails
        for first, count, even in ((0, num_full, True), (num_full, block_tensor.numel() - num_full, False)):
            if count:
                _kernel_call(
                    adam_kernel,
                    ptrs,
                    numels,
                    block_tensor,
                    block_start,
                    lists,
                    c,
                    neg_step_size,
                    bias_correction2_sqrt,
                    aligned,
                    (first, count, even, block, num_warps),
                )


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _kernel_call(
    adam_kernel, ptrs, numels, block_tensor, block_start, lists, c, neg_step_size, bias_correction2_sqrt, aligned, how
):
    first, count, even, block, num_warps = how  # the launch: its first block, block count, settings
    params, grads, exp_avgs, exp_avg_sqs = lists[:4]
    adam_kernel[(count,)](
        ptrs,
        numels,
        block_tensor,
        block_start,
        first,
        len(params),
        params[0],
        grads[0],
        exp_avgs[0],
        exp_avg_sqs[0],
        c.decay_factor,
        c.l2,
        1 - c.beta1,
        c.beta2,
        1 - c.beta2,
        c.eps,
        neg_step_size,
        bias_correction2_sqrt,
        HAS_DECAY=c.decays,
        CAUTIOUS=c.cautious,
        HAS_L2=c.coupled,
        AMSGRAD=c.amsgrad,
        MAXIMIZE=c.maximize,
        ALIGNED=aligned,
        ROUND_BY_HAND=interpreting(),
        BLOCK=block,
        EVEN=even,
        num_warps=num_warps,
        enable_fp_fusion=False,  # round every product as torch does; only the rule's FMAs fuse
    )


def _steps(state_steps: list[torch.Tensor]) -> list[float]:
    if all(s.device.type == "cpu" for s in state_steps):
        return [s.item() for s in state_steps]
    return torch.stack([s.to(torch.float64) for s in state_steps]).tolist()  # one sync


def step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    c: GroupCoefficients,
    *,
    differentiable: bool = False,
) -> None:
    """One kernel launch per group of tensors with the same dtypes and step count."""
    if differentiable:
        raise RuntimeError("the triton backend cannot record autograd history; use the loop backend")
    names = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if c.amsgrad else [])
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (p, s) in enumerate(zip(params, _steps(state_steps))):
        if p.numel() == 0:
            continue
        key = (p.device, *(ts[i].dtype for ts in lists), s)
        groups[key].append(i)
    for key, indices in groups.items():
        neg_step_size, bias_correction2_sqrt = step_coefficients(c, cast(float, key[-1]))
        chosen = [[_real(ts[i]) for i in indices] for ts in lists]
        # the kernel walks memory linearly: non-contiguous tensors go through contiguous copies
        copies = []
        for row, ts in enumerate(chosen):
            for j, t in enumerate(ts):
                if not t.is_contiguous():
                    contiguous = t.contiguous()
                    if names[row] != "grads":
                        copies.append((t, contiguous))
                    ts[j] = contiguous
        _launch(chosen, c, neg_step_size, bias_correction2_sqrt)
        for original, contiguous in copies:
            original.copy_(contiguous)


BACKEND = Backend(
    "triton",
    step,
    "one Triton kernel launch per list of CUDA tensors (fp32/bf16/fp16, math in fp32)",
    why_not=unsupported_reason,
)
