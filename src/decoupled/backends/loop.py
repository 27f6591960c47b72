"""The loop backend: one tensor at a time, the readable reference every other backend is tested against."""

from __future__ import annotations

import dataclasses

import torch

from ..rule import DifferentiableTensorOps, GroupCoefficients, TensorOps, adam_update, step_coefficients
from .base import Backend

_OPS = TensorOps()
_DIFF_OPS = DifferentiableTensorOps()


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
    """Apply :func:`decoupled.rule.adam_update` to each parameter in turn.

    Complex tensors are updated as real tensors of shape ``(..., 2)``, so the second moment is
    kept per real and imaginary part, as in PyTorch; Adam's L2 term is added to the complex
    gradient first, as torch's for-loop does (its foreach path, and ours, add on the real view:
    one ulp apart).
    """
    ops = _DIFF_OPS if differentiable else _OPS
    real_gradient = dataclasses.replace(c, maximize=False, coupled=False)  # for a complex one, formed below
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = grads[i], exp_avgs[i], exp_avg_sqs[i]
        max_exp_avg_sq = max_exp_avg_sqs[i] if c.amsgrad else None
        ci = c
        if torch.is_complex(param):
            if c.coupled:  # as torch's for-loop: the L2 term added in complex arithmetic, then viewed as real
                grad = ops.add(ops.neg(grad) if c.maximize else grad, param, alpha=c.l2)
                ci = real_gradient
            param, grad, exp_avg, exp_avg_sq = (torch.view_as_real(t) for t in (param, grad, exp_avg, exp_avg_sq))
            if max_exp_avg_sq is not None:
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
        neg_step_size, bias_correction2_sqrt = step_coefficients(ci, state_steps[i].item())
        adam_update(ops, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, ci, neg_step_size, bias_correction2_sqrt)


BACKEND = Backend(
    "loop",
    step,
    "one tensor at a time: the readable reference (complex, differentiable)",
    differentiable=True,
    auto_rank={"*": 100},
)
