r"""Functional AdamW and Adam over lists of tensors (what the optimizer classes call).

:func:`adamw` performs, for every tensor ``i`` (math in :mod:`decoupled.rule`)::

    t_i     <- t_i + 1
    theta_i <- theta_i * rho                      rho = 1 - lr * wd            (decay="decoupled")
                                                  rho = 1 - (lr / lr_max) * wd (decay="lr_independent")
    m_i     <- beta1 * m_i + (1 - beta1) * g_i
    v_i     <- beta2 * v_i + (1 - beta2) * g_i^2
    theta_i <- theta_i - lr / (1 - beta1^t_i) * m_i / (sqrt(v_i / (1 - beta2^t_i)) + eps)

and :func:`adam` is the same with ``g_i <- g_i + wd * theta_i`` in place of the decay
(Adam + L2). Units: ``lr`` is in parameter units per step (the step of a parameter whose
gradient has a steady sign is about ``lr``); ``weight_decay`` is per lr unit in the
``decoupled`` form (the fraction of theta removed per step is ``lr * wd``), and a fraction per
step at peak lr in the ``lr_independent`` form.

All lists are updated in place; ``state_steps`` holds 0-d tensors (incremented here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import backends
from .rule import Decay, group_coefficients

__all__ = ["adamw", "adam", "run"]


def adamw(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool = False,
    maximize: bool = False,
    decay: Decay | str = Decay.DECOUPLED,
    lr_max: float | None = None,
    backend: str = "auto",
    differentiable: bool = False,
) -> None:
    """One AdamW step over lists of tensors.

    Args:
        params, grads, exp_avgs, exp_avg_sqs: same-length lists, updated in place (not grads).
        max_exp_avg_sqs: running maxima of ``exp_avg_sqs`` when ``amsgrad``; else ignored.
        state_steps: one 0-d tensor per parameter, the number of steps taken so far.
        lr: learning rate (a float, or a 1-element tensor read once per step).
        beta1, beta2: EMA coefficients in [0, 1).
        eps: added to the bias-corrected sqrt(v).
        weight_decay: lambda of the chosen ``decay`` convention.
        decay: ``"decoupled"`` (PyTorch's AdamW), ``"lr_independent"`` (needs ``lr_max``)
            or ``"coupled"`` (Adam + L2).
        lr_max: the lr at which the full ``weight_decay`` applies, for ``lr_independent``.
        backend: ``"auto"``, ``"loop"``, ``"foreach"`` or ``"fused"``.
        differentiable: keep autograd history through the step (loop backend only).

    Example:
        >>> p, g = torch.ones(3), torch.full((3,), 0.5)
        >>> m, v, t = torch.zeros(3), torch.zeros(3), torch.zeros(())
        >>> adamw([p], [g], [m], [v], [], [t], lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
        ...       weight_decay=0.0)
        >>> p  # the first step moves each element by lr against the gradient's sign
        tensor([0.9000, 0.9000, 0.9000])
    """
    params = list(params)
    if not params:
        return
    n = len(params)
    lists = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "state_steps": state_steps}
    if amsgrad:
        lists["max_exp_avg_sqs"] = max_exp_avg_sqs
    for name, values in lists.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} tensors but params has {n}; pass one per parameter")
    run(
        backends.resolve(backend, params, differentiable=differentiable),
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decay=decay,
        lr_max=lr_max,
        differentiable=differentiable,
    )


def run(
    backend: str,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decay: Decay | str,
    lr_max: float | None,
    differentiable: bool,
) -> None:
    """:func:`adamw` on a backend the caller already resolved, without re-checking the lists.

    The optimizer classes call this once per group after checking everything up front.
    """
    c = group_coefficients(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decay=decay,
        lr_max=lr_max,
        amsgrad=amsgrad,
        maximize=maximize,
    )
    torch._foreach_add_(list(state_steps), 1.0)  # one call, not one op per tensor
    backends.BACKENDS[backend](
        list(params),
        list(grads),
        list(exp_avgs),
        list(exp_avg_sqs),
        list(max_exp_avg_sqs),
        list(state_steps),
        c,
        differentiable=differentiable,
    )


def adam(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    backend: str = "auto",
    differentiable: bool = False,
) -> None:
    """One Adam + L2 step (``g <- g + weight_decay * theta``); see :func:`adamw` for the arguments."""
    adamw(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decay=Decay.COUPLED,
        backend=backend,
        differentiable=differentiable,
    )
