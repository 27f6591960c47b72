"""Validation of optimizer hyperparameters, with errors that say what was wrong and how to fix it.

Used at construction, when a param group is added, when a state dict is loaded, and (cheaply)
at every step, so a schedule that drives lr negative is caught before it corrupts a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def _value(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def check_number(name: str, x: Any, *, low: float = 0.0, high: float | None = None, hint: str = "") -> None:
    """Raise ValueError unless ``low <= x`` (and ``x < high`` when given), and x is a real number."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} as a Tensor must have exactly 1 element, got shape {tuple(x.shape)}")
        if x.is_complex():
            raise ValueError(f"{name} must be real, got a complex tensor")
    elif isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(x).__name__} {x!r}")
    v = _value(x)
    bad = math.isnan(v) or v < low or (high is not None and not v < high) or (high is None and math.isinf(v))
    if bad:
        accepted = f"[{low:g}, {high:g})" if high is not None else f">= {low:g} and finite"
        raise ValueError(f"Invalid {name}: {v!r} (must be {accepted}){hint}")


def check_group(group: Mapping[str, Any], *, where: str = "") -> None:
    """Validate the hyperparameters of one param group (construction, load, or every step)."""
    suffix = f" in {where}" if where else ""
    check_number("lr", group["lr"], hint=f"{suffix}; typical AdamW learning rates are 1e-4 to 3e-3")
    check_number("eps", group["eps"], hint=suffix)
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas{suffix}: {betas!r} (must be a pair (beta1, beta2), e.g. (0.9, 0.999))")
    for i, beta in enumerate(betas):
        check_number(f"beta parameter at index {i}", beta, high=1.0, hint=f"{suffix}; e.g. betas=(0.9, 0.999)")
    check_number("weight_decay", group["weight_decay"], hint=suffix)
    if group.get("lr_independent_decay"):
        lr_max = group.get("lr_max")
        if lr_max is None or isinstance(lr_max, bool) or not isinstance(lr_max, (int, float)) or not lr_max > 0:
            raise ValueError(
                f"Invalid lr_max{suffix}: {lr_max!r}. lr-independent decay removes "
                f"(lr / lr_max) * weight_decay of each weight per step, so lr_max must be a positive "
                f"number (by default the group's initial lr)"
            )
        if not group.get("decoupled_weight_decay", True):
            raise ValueError(
                f"lr_independent_decay=True{suffix} needs decoupled weight decay; it has no meaning "
                f"for Adam + L2 (decoupled_weight_decay=False)"
            )
    if "moments" in group or "param_rounding" in group:
        from .formats import DEFAULTS, check_options

        check_options(
            group.get("moments", DEFAULTS["moments"]), group.get("param_rounding", DEFAULTS["param_rounding"]), where
        )
    if group.get("fused") and group.get("foreach"):
        raise RuntimeError("`fused` and `foreach` cannot be `True` together; choose one (or neither for auto)")
    if group.get("fused") and group.get("differentiable"):
        raise RuntimeError("`fused` does not support `differentiable`; use fused=None with differentiable=True")
