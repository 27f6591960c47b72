r"""The weight-decay conventions, by name: the one vocabulary the optimizer, lab, doctor and
conversions share.

A convention says how the weight decay :math:`\lambda` of a param group acts on a weight
:math:`\theta` at a step with learning rate :math:`\gamma_t` (peak :math:`\gamma_{max}`):

=====================  ====================================================  ==========================
key                    per-step effect on a weight                           optimizer
=====================  ====================================================  ==========================
``adamw``              :math:`\theta \leftarrow (1 - \gamma_t\lambda)\,\theta`   ``AdamW(weight_decay=wd)``
``adamw_indep``        :math:`\theta \leftarrow (1 - (\gamma_t/\gamma_{max})\lambda)\,\theta`
                                                                             ``decay_scaling="independent"``
``adamw_corrected``    :math:`\theta \leftarrow (1 - (\gamma_t^2/\gamma_{max})\lambda)\,\theta`
                                                                             ``decay_scaling="corrected"``
``adamw_cautious``     as ``adamw``, only where the update :math:`u` and :math:`\theta` agree in sign
                                                                             ``cautious_decay=True``
``adam_l2``            :math:`g \leftarrow g + \lambda\theta` before the moments  ``Adam(weight_decay=wd)``
=====================  ====================================================  ==========================

The first four are *decoupled*: the decay is not divided by :math:`\sqrt{\hat v}`. How the
decay follows the learning rate (:class:`Scaling`) and whether it is cautious are independent,
so every scaling combines with ``cautious_decay``; the table lists the combinations the
experiments name. References: Loshchilov & Hutter 2019 (arXiv:1711.05101, decoupled and the
schedule multiplier); Defazio et al. 2025 (arXiv:2506.02285, corrected decay, AdamC); Chen et
al. 2025 (arXiv:2510.12402, cautious weight decay).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Scaling(str, enum.Enum):
    """How the per-step decay of a decoupled convention follows the learning rate."""

    LR = "lr"
    """PyTorch's: decay ``lr * wd`` per step (``torch.optim.AdamW``)."""
    INDEPENDENT = "independent"
    """The paper's schedule multiplier: ``(lr / lr_max) * wd`` per step, lr's shape but not its size."""
    CORRECTED = "corrected"
    """AdamC: ``lr**2 / lr_max * wd`` per step, which holds normalized layers' steady-state norm fixed."""


@dataclass(frozen=True)
class Convention:
    """One weight-decay convention: how ``weight_decay`` acts on a weight (see the module table)."""

    key: str
    label: str
    coupled: bool = False
    scaling: Scaling = Scaling.LR
    cautious: bool = False

    def decay_per_step(self, weight_decay: float, lr: float, lr_max: float | None = None) -> float | None:
        """The fraction of a weight removed at a step with learning rate ``lr`` (unitless, per step),
        for a cautious convention where it applies; None for coupled L2, whose decay depends on each
        weight's gradient history."""
        if self.coupled:
            return None
        if self.scaling is Scaling.LR:
            return lr * weight_decay
        if lr_max is None or not lr_max > 0:
            raise ValueError(f"the {self.key} convention needs lr_max > 0 (the peak lr), got {lr_max!r}")
        if self.scaling is Scaling.INDEPENDENT:
            return lr / lr_max * weight_decay
        return lr * lr / lr_max * weight_decay

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`decoupled.AdamW` / :class:`decoupled.Adam` for this convention
        (``decoupled_weight_decay=False`` means :class:`decoupled.Adam`)."""
        if self.coupled:
            return {"decoupled_weight_decay": False}
        options: dict[str, Any] = {"decoupled_weight_decay": True}
        if self.scaling is not Scaling.LR:
            options["decay_scaling"] = self.scaling.value
        if self.cautious:
            options["cautious_decay"] = True
        return options


ADAM_L2 = Convention("adam_l2", "Adam + L2 (coupled)", coupled=True)
ADAMW = Convention("adamw", "AdamW, PyTorch form (decay lr·wd)")
ADAMW_INDEP = Convention("adamw_indep", "AdamW, lr-independent (decay (lr/lr_max)·wd)", scaling=Scaling.INDEPENDENT)
ADAMW_CORRECTED = Convention("adamw_corrected", "AdamW, corrected (decay lr²/lr_max·wd)", scaling=Scaling.CORRECTED)
ADAMW_CAUTIOUS = Convention("adamw_cautious", "AdamW, cautious (decay where update and weight agree)", cautious=True)

CONVENTIONS: dict[str, Convention] = {c.key: c for c in (ADAM_L2, ADAMW, ADAMW_INDEP, ADAMW_CORRECTED, ADAMW_CAUTIOUS)}
"""Every named convention, by key, in report order."""


def get(key: str) -> Convention:
    """The convention called ``key``; ValueError listing the choices otherwise."""
    try:
        return CONVENTIONS[key]
    except KeyError:
        raise ValueError(f"unknown weight-decay convention {key!r}; choose one of {list(CONVENTIONS)}") from None


def of_group(group: Mapping[str, Any]) -> Convention:
    """The convention a param group of :class:`decoupled.AdamW`/:class:`decoupled.Adam` (or of
    ``torch.optim.AdamW``/``Adam``) follows. A combination without a name of its own (cautious
    with another scaling) gets a descriptive key such as ``"adamw_indep+cautious"``."""
    if not group.get("decoupled_weight_decay", True):
        return ADAM_L2
    scaling = Scaling(group.get("decay_scaling", Scaling.LR.value))
    if group.get("lr_independent_decay"):
        scaling = Scaling.INDEPENDENT
    cautious = bool(group.get("cautious_decay", False))
    base = next(c for c in CONVENTIONS.values() if not c.coupled and not c.cautious and c.scaling is scaling)
    if not cautious:
        return base
    if scaling is Scaling.LR:
        return ADAMW_CAUTIOUS
    return Convention(f"{base.key}+cautious", f"{base.label}, cautious", scaling=scaling, cautious=True)


__all__ = [
    "Scaling",
    "Convention",
    "CONVENTIONS",
    "ADAM_L2",
    "ADAMW",
    "ADAMW_INDEP",
    "ADAMW_CORRECTED",
    "ADAMW_CAUTIOUS",
    "get",
    "of_group",
]


def normalize_group(group: dict[str, Any]) -> None:
    """Spell a param group's convention one way, in place: ``lr_independent_decay=True`` (the
    older spelling, and what checkpoints before ``decay_scaling`` hold) becomes
    ``decay_scaling="independent"``; ``decay_scaling="lr"`` and ``cautious_decay=False`` are
    dropped, so a group of PyTorch's convention has exactly ``torch.optim.AdamW``'s keys."""
    if "lr_independent_decay" in group:
        if group.pop("lr_independent_decay"):
            scaling = group.get("decay_scaling", Scaling.INDEPENDENT.value)
            if scaling != Scaling.INDEPENDENT.value:
                raise ValueError(
                    f"lr_independent_decay=True and decay_scaling={scaling!r} contradict each other; "
                    f"pass decay_scaling alone"
                )
            group["decay_scaling"] = Scaling.INDEPENDENT.value
    if group.get("decay_scaling", Scaling.LR.value) == Scaling.LR.value:
        group.pop("decay_scaling", None)
    if "cautious_decay" in group and not group["cautious_decay"]:
        group.pop("cautious_decay")


def check_group(group: Mapping[str, Any], where: str = "") -> None:
    """Raise ValueError unless the group's convention keys (``decay_scaling``, ``lr_max``,
    ``cautious_decay``) name a valid convention (after :func:`normalize_group`)."""
    suffix = f" in {where}" if where else ""
    scaling = group.get("decay_scaling", Scaling.LR.value)
    if scaling not in [s.value for s in Scaling]:
        raise ValueError(
            f"unknown decay_scaling={scaling!r}{suffix}; choose one of {[s.value for s in Scaling]} "
            f"('lr': torch's lr*wd per step; 'independent': (lr/lr_max)*wd; 'corrected': lr**2/lr_max*wd)"
        )
    lr_max = group.get("lr_max")
    if scaling == Scaling.LR.value:
        if lr_max is not None:
            raise ValueError(
                f"lr_max{suffix} only applies with decay_scaling='independent' or 'corrected'; pass "
                f"both, or neither for PyTorch's AdamW (decay lr * weight_decay per step)"
            )
    elif isinstance(lr_max, bool) or not isinstance(lr_max, (int, float)) or not lr_max > 0 or lr_max == float("inf"):
        raise ValueError(
            f"Invalid lr_max{suffix}: {lr_max!r}. decay_scaling={scaling!r} scales the decay by lr / lr_max, "
            f"so lr_max must be a positive finite number (by default the group's initial lr)"
        )
    coupled = not group.get("decoupled_weight_decay", True)
    if coupled and (scaling != Scaling.LR.value or group.get("cautious_decay")):
        raise ValueError(
            f"decay_scaling and cautious_decay{suffix} need decoupled weight decay; they have no meaning "
            f"for Adam + L2 (decoupled_weight_decay=False)"
        )
    if not isinstance(group.get("cautious_decay", False), bool):
        raise ValueError(f"cautious_decay{suffix} must be True or False, got {group['cautious_decay']!r}")
