"""A float64 reference of Adam with the three weight-decay conventions, readable as the math.

    t      <- t + 1
    g      <- -g                                   if maximize
    g      <- g + wd * theta                       if decay == "coupled"   (Adam + L2)
    theta  <- theta * (1 - lr * wd)                if decay == "decoupled" (PyTorch's AdamW)
    theta  <- theta * (1 - lr / lr_max * wd)       if decay == "lr_independent"
    m      <- beta1 * m + (1 - beta1) * g
    v      <- beta2 * v + (1 - beta2) * g * g
    vmax   <- max(vmax, v)                         if amsgrad; then vmax is used below
    theta  <- theta - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

It shares no code with the package. Complex numbers are treated as pairs of reals, as PyTorch does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RefState:
    t: int = 0
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None
    vmax: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def as_real64(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    return (torch.view_as_real(x) if x.is_complex() else x).to(torch.float64)


def reference_step(
    theta: torch.Tensor,
    g: torch.Tensor,
    s: RefState,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay: str = "decoupled",
    lr_max: float | None = None,
    amsgrad: bool = False,
    maximize: bool = False,
) -> torch.Tensor:
    """One step in float64 on real tensors; returns the new theta and updates ``s``."""
    beta1, beta2 = betas
    theta, g = theta.clone(), g.clone()
    if s.m is None:
        s.m, s.v, s.vmax = torch.zeros_like(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    s.t += 1
    if maximize:
        g = -g
    if decay == "coupled":
        g = g + weight_decay * theta
    elif decay == "decoupled":
        theta = theta * (1 - lr * weight_decay)
    elif decay == "lr_independent":
        theta = theta * (1 - lr / lr_max * weight_decay)
    else:
        raise ValueError(decay)
    s.m = beta1 * s.m + (1 - beta1) * g
    s.v = beta2 * s.v + (1 - beta2) * g * g
    v = s.v
    if amsgrad:
        s.vmax = torch.maximum(s.vmax, s.v)
        v = s.vmax
    m_hat = s.m / (1 - beta1**s.t)
    v_hat = v / (1 - beta2**s.t)
    return theta - lr * m_hat / (v_hat.sqrt() + eps)
