"""The foreach backend: the same rule over lists, with ``torch._foreach_*`` multi-tensor ops.

Tensors are grouped by (device, dtype) so each ``_foreach`` call gets a homogeneous list.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..rule import ForeachOps, GroupCoefficients, adam_update, step_coefficients

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

    def real(t: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(t) if torch.is_complex(t) else t

    for indices in group_by_device_and_dtype(params).values():
        pick = lambda ts: [real(ts[i]) for i in indices]  # noqa: E731
        coefficients = [step_coefficients(c, state_steps[i].item()) for i in indices]
        adam_update(
            _OPS,
            pick(params),
            pick(grads),
            pick(exp_avgs),
            pick(exp_avg_sqs),
            pick(max_exp_avg_sqs) if c.amsgrad else None,
            c,
            [neg for neg, _ in coefficients],
            [bc2 for _, bc2 in coefficients],
        )
