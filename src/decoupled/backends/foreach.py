"""The foreach backend: the same rule over lists, with ``torch._foreach_*`` multi-tensor ops.

Tensors are grouped by (device, dtype) so each ``_foreach`` call gets a homogeneous list.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..rule import ForeachOps, GroupCoefficients, adam_update, step_coefficients
from .base import Backend

_OPS = ForeachOps()


def group_by_device_and_dtype(params: list[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``params`` keyed by (device, dtype), in first-seen order."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        groups[(p.device, p.dtype)].append(i)
    return groups


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
    """Apply :func:`decoupled.rule.adam_update` to each (device, dtype) list of tensors."""
    if differentiable:
        raise RuntimeError("the foreach backend cannot record autograd history; use the loop backend")

    for indices in group_by_device_and_dtype(params).values():
        coefficients = [step_coefficients(c, state_steps[i].item()) for i in indices]
        adam_update(
            _OPS,
            _pick(params, indices),
            _pick(grads, indices),
            _pick(exp_avgs, indices),
            _pick(exp_avg_sqs, indices),
            _pick(max_exp_avg_sqs, indices) if c.amsgrad else None,
            c,
            [neg for neg, _ in coefficients],
            [bc2 for _, bc2 in coefficients],
        )


def _pick(tensors: list[torch.Tensor], indices: list[int]) -> list[torch.Tensor]:
    """``tensors[i]`` for ``i`` in ``indices``, complex ones viewed as real pairs."""
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in (tensors[i] for i in indices)]


BACKEND = Backend(
    "foreach",
    step,
    "multi-tensor torch._foreach_* ops per (device, dtype) list",
    auto_rank={"*": 50},
)
