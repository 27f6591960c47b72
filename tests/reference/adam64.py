"""A float64 reference of Adam with every weight-decay convention, written from the papers' equations.

    t      <- t + 1
    g      <- -g                                   if maximize
    g      <- g + wd * theta                       if coupled                (Adam + L2)
    d      <- lr * wd                              scaling "lr"              (PyTorch's AdamW)
              lr / lr_max * wd                     scaling "independent"     (Loshchilov & Hutter)
              lr^2 / lr_max * wd                   scaling "corrected"       (AdamC, Defazio et al. 2025)
    m      <- beta1 * m + (1 - beta1) * g
    v      <- beta2 * v + (1 - beta2) * g * g
    vmax   <- max(vmax, v)                         if amsgrad; then vmax is used below
    u      <- (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    theta  <- theta - lr * u - d * theta           decoupled
    theta  <- theta - lr * u - d * 1[u * theta >= 0] * theta
                                                   cautious (Chen et al. 2025, Algorithm 1)

The decoupled decay uses theta before the step, as theta * (1 - d) then the Adam step does.
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
    coupled: bool = False,
    scaling: str = "lr",
    cautious: bool = False,
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
    d = 0.0
    if coupled:
        g = g + weight_decay * theta
    elif scaling == "lr":
        d = lr * weight_decay
    elif scaling == "independent":
        d = lr / lr_max * weight_decay
    elif scaling == "corrected":
        d = lr**2 / lr_max * weight_decay
    else:
        raise ValueError(scaling)
    s.m = beta1 * s.m + (1 - beta1) * g
    s.v = beta2 * s.v + (1 - beta2) * g * g
    v = s.v
    if amsgrad:
        s.vmax = torch.maximum(s.vmax, s.v)
        v = s.vmax
    u = (s.m / (1 - beta1**s.t)) / ((v / (1 - beta2**s.t)).sqrt() + eps)
    mask = (u * theta >= 0).to(theta.dtype) if cautious else 1.0
    return theta - lr * u - d * mask * theta


def reference_options(convention) -> dict:
    """``reference_step``'s keywords for a ``decoupled.conventions.Convention``."""
    return dict(coupled=convention.coupled, scaling=convention.scaling.value, cautious=convention.cautious)
