r"""Functional AdamW and Adam over lists of tensors (what the optimizer classes call).

:func:`adamw` performs, for every tensor ``i`` (math in :mod:`decoupled.rule`)::

    t_i     <- t_i + 1
    theta_i <- theta_i * rho                      rho = 1 - lr * wd                (decay_scaling="lr")
                                                  rho = 1 - (lr / lr_max) * wd     (decay_scaling="independent")
                                                  rho = 1 - (lr**2 / lr_max) * wd  (decay_scaling="corrected")
    m_i     <- beta1 * m_i + (1 - beta1) * g_i
    v_i     <- beta2 * v_i + (1 - beta2) * g_i^2
    theta_i <- theta_i - lr / (1 - beta1^t_i) * m_i / (sqrt(v_i / (1 - beta2^t_i)) + eps)

and :func:`adam` is the same with ``g_i <- g_i + wd * theta_i`` in place of the decay
(Adam + L2). Units: ``lr`` is in parameter units per step (the step of a parameter whose
gradient has a steady sign is about ``lr``); ``weight_decay`` is per lr unit in torch's form
(the fraction of theta removed per step is ``lr * wd``), and a fraction per step at peak lr in
the ``independent`` form. With ``cautious_decay`` the decay applies only where ``m * theta >= 0``
(:mod:`decoupled.rule`).

All lists are updated in place; ``state_steps`` holds 0-d tensors (incremented here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import backends, conventions
from .rule import GroupCoefficients, group_coefficients
from .step import update_lists

__all__ = ["adamw", "adam"]


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
    decay_scaling: str = "lr",
    cautious_decay: bool = False,
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
        weight_decay: lambda of the convention.
        decay_scaling: ``"lr"`` (PyTorch's AdamW), ``"independent"`` or ``"corrected"`` (both
            need ``lr_max``); see :mod:`decoupled.conventions`.
        cautious_decay: decay only where the update and the weight agree in sign.
        lr_max: the peak lr, for ``independent`` and ``corrected``.
        backend: a name of :mod:`decoupled.backends` or ``"auto"``.
        differentiable: keep autograd history through the step (loop backend only).

    Example:
        >>> p, g = torch.ones(3), torch.full((3,), 0.5)
        >>> m, v, t = torch.zeros(3), torch.zeros(3), torch.zeros(())
        >>> adamw([p], [g], [m], [v], [], [t], lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
        ...       weight_decay=0.0)
        >>> p  # the first step moves each element by lr against the gradient's sign
        tensor([0.9000, 0.9000, 0.9000])
    """
    group = {"decay_scaling": decay_scaling, "cautious_decay": cautious_decay, "lr_max": lr_max}
    conventions.normalize_group(group)
    conventions.check_group(group)
    c = group_coefficients(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        convention=conventions.of_group(group),
        lr_max=lr_max,
        amsgrad=amsgrad,
        maximize=maximize,
    )
    _run(c, (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs), state_steps, backend, differentiable)


def _run(
    c: GroupCoefficients,
    lists: tuple[Sequence[torch.Tensor], ...],
    state_steps: Sequence[torch.Tensor],
    backend: str,
    differentiable: bool,
) -> None:
    """Check the lists' lengths, choose the backend and run the step (for :func:`adamw` and :func:`adam`)."""
    params = list(lists[0])
    if not params:
        return
    names = ("grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
    for name, values in [*zip(names, lists[1:]), ("state_steps", state_steps)]:
        if (name != "max_exp_avg_sqs" or c.amsgrad) and len(values) != len(params):
            raise ValueError(f"{name} has {len(values)} tensors but params has {len(params)}; pass one per parameter")
    chosen = backends.resolve(backend, backends.kinds_of(params), differentiable=differentiable, cautious=c.cautious)
    update_lists(chosen, tuple(list(ts) for ts in lists), list(state_steps), c, differentiable=differentiable)


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
    c = group_coefficients(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        convention=conventions.ADAM_L2,
        amsgrad=amsgrad,
        maximize=maximize,
    )
    _run(c, (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs), state_steps, backend, differentiable)
