"""The native kernel over state in torch's own layout, with the backends' signature.

``step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, c)`` updates plain
lists of tensors in place, as every backend of :mod:`decoupled.backends` does, for moments
stored as ``torch.optim.AdamW`` stores them (the parameter's dtype and layout). Compared with
torch's fused CPU kernel (``backends.fused``), it also runs what that kernel cannot express,
such as cautious decay (``c.cautious``), at the same memory speed.

The update is computed in float32 and rounded once when stored (for bf16/fp16 parameters,
as torch's fused kernel does; the loop backend rounds after every operation instead). For
float32 it is the loop backend's arithmetic with a correctly rounded square root (see
``kernel.cpp``). Tensors of one parameter that share a dense layout (a transposed or
channels-last parameter, its gradient and moments) are stepped in place in memory order;
others go through contiguous copies, written back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from ..native.call import BF16, F16, F32, PARAM_TYPES, Call, kernel, unavailable_reason
from ..rule import GroupCoefficients
from .base import Backend, Kinds

KINDS = {torch.float32: F32, torch.bfloat16: BF16, torch.float16: F16}


def why_not(kinds: Kinds) -> str | None:
    """Why :func:`step` cannot run tensors of ``kinds`` (building the kernel if it was not yet:
    the first use takes 15-30 s), or None."""
    for device, dtype in kinds:
        if device != "cpu":
            return f"the native backend runs on CPU, got a parameter on {device}"
        real = dtype.to_real() if dtype.is_complex else dtype
        if real not in PARAM_TYPES:
            return f"the native backend steps float32, bfloat16 and float16 parameters (and complex64), got {dtype}"
    return unavailable_reason()


def _dense_alike(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the tensors share one non-overlapping, dense layout (so that element i of each
    is at the same offset from its data pointer, whatever the order of dimensions)."""
    p = tensors[0]
    if any(t.stride() != p.stride() or t.shape != p.shape for t in tensors[1:]):
        return False
    return p.is_contiguous() or torch.empty_like(p, device="meta").stride() == p.stride()


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
    """One native kernel call per parameter dtype; ``state_steps`` were already incremented."""
    if differentiable:
        raise RuntimeError("the native backend does not record autograd history; use the loop backend")
    module = kernel()
    if module is None:
        raise RuntimeError(unavailable_reason())
    n_moments = 3 if c.amsgrad else 2
    calls: dict[torch.dtype, Call] = defaultdict(lambda: Call(n_moments))
    for i, param in enumerate(params):
        if param.numel() == 0:
            continue
        tensors = [param, grads[i], exp_avgs[i], exp_avg_sqs[i]] + ([max_exp_avg_sqs[i]] if c.amsgrad else [])
        if param.is_complex():  # as the loop backend: real and imaginary parts are separate elements
            tensors = [torch.view_as_real(t) for t in tensors]
        if any(t.dtype != tensors[0].dtype for t in tensors):
            raise ValueError(
                f"the native backend needs the gradient and moments in the parameter's dtype {param.dtype} "
                f"(torch's layout), got {[t.dtype for t in tensors]}"
            )
        dense = _dense_alike(tensors)
        call = calls[tensors[0].dtype]
        moments = [(t, None) for t in tensors[2:]]
        call.add(i, tensors[0], tensors[1], None, moments, float(state_steps[i]), in_place=dense)
    for dtype, call in calls.items():
        call.run(module, dtype, (KINDS[dtype],) * n_moments, "nearest", c, 0, False, [0, 0, 0] * n_moments)


BACKEND = Backend(
    "native",
    step,
    "one fused C++ pass per tensor on CPU (built at first use): torch's state layout, every convention",
    why_not=why_not,
    auto_rank={"cpu": 20},
)
