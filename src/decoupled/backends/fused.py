"""The fused backend: one kernel per (device, dtype) list that reads each tensor once.

On CPU and CUDA this runs PyTorch's own fused Adam kernels (``torch._fused_adamw_`` for the
decoupled conventions, ``torch._fused_adam_`` for coupled L2), the fastest exact-fp32 AdamW
available for those devices. Both conventions of decoupled decay map onto the one kernel:
the kernel applies ``theta *= 1 - lr * wd``, and the coefficients give ``wd = decay_per_lr``
(``weight_decay`` for PyTorch's form, ``weight_decay / lr_max`` for the lr-independent form).
"""

from __future__ import annotations

import functools

import torch

from ..rule import GroupCoefficients
from .foreach import group_by_device_and_dtype


@functools.cache
def _supported_devices() -> tuple[str, ...]:
    from torch.optim import optimizer as torch_optimizer

    return tuple(torch_optimizer._get_fused_kernels_supported_devices())


def unsupported_reason(params) -> str | None:
    kinds = {(p.device.type, p.dtype) for p in params}  # a few kinds, however many tensors
    devices = _supported_devices()
    for device, dtype in kinds:
        if not dtype.is_floating_point:
            return f"the fused backend needs floating-point parameters, got {dtype} (use foreach for complex ones)"
        if device not in devices:
            return f"the fused backend runs on {list(devices)}, got a parameter on {device}"
    return None


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
    """One fused kernel call per (device, dtype) list."""
    if differentiable:
        raise RuntimeError("the fused backend cannot record autograd history; use the loop backend")
    coupled = c.l2 != 0
    kernel = torch._fused_adam_ if coupled else torch._fused_adamw_
    for indices in group_by_device_and_dtype(params).values():
        kernel(
            [params[i] for i in indices],
            [grads[i] for i in indices],
            [exp_avgs[i] for i in indices],
            [exp_avg_sqs[i] for i in indices],
            [max_exp_avg_sqs[i] for i in indices] if c.amsgrad else [],
            [state_steps[i] for i in indices],
            amsgrad=c.amsgrad,
            lr=c.lr,
            beta1=c.beta1,
            beta2=c.beta2,
            weight_decay=c.l2 if coupled else c.decay_per_lr,
            eps=c.eps,
            maximize=c.maximize,
            grad_scale=None,
            found_inf=None,
        )
