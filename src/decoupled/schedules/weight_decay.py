"""A weight-decay schedule: each param group's ``weight_decay`` moved along a schedule's curve."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer

from . import curves
from .lr import SCHEDULES, lookup, options_of

__all__ = ["WeightDecaySchedule"]


class WeightDecaySchedule:
    r"""Moves each param group's ``weight_decay`` along a curve: :math:`\lambda_t = \lambda_0\,\mu(t)`.

    ``curve`` is a schedule name (with the same options as the lr schedules, e.g.
    ``WeightDecaySchedule(opt, "cosine", total_steps=1000)``) or any function of the step
    returning the multiplier. :math:`\lambda_0` is each group's ``weight_decay`` when the
    schedule is created, so no-decay groups (``weight_decay=0``) stay at 0. Call :meth:`step`
    once per optimizer step, like an lr scheduler; the multiplier at step 0 is applied at
    construction.

    Note that in ``decoupled.AdamW``/``torch.optim.AdamW`` the per-step decay is
    :math:`\gamma_t\lambda_t`: an lr schedule already moves the decay. Use this to give
    :math:`\lambda` a shape of its own (e.g. decay that grows over training), and
    ``lr_independent_decay=True`` if the lr's size should not enter at all.

    ``state_dict()`` holds the step, the initial values and (for a named curve) its options;
    a curve given as a function is code, not state, and must be passed again when restoring.
    """

    def __init__(
        self, optimizer: Optimizer, curve: str | Callable[[int], float], *, last_step: int = -1, **options: Any
    ) -> None:
        if isinstance(curve, str):
            self.curve: str | None = curve
            self.options = curves.compact(options_of(lookup(curve), options))
            self._fn: Callable[[int], float] | None = None
        elif callable(curve):
            if options:
                raise ValueError(f"options {sorted(options)} only apply to a named curve, not to a function")
            self.curve, self.options, self._fn = None, {}, curve
        else:
            names = sorted(SCHEDULES)
            raise TypeError(f"curve must be a schedule name {names} or a function of the step, got {curve!r}")
        self.optimizer = optimizer
        self.base_weight_decays = [float(g["weight_decay"]) for g in optimizer.param_groups]
        if isinstance(last_step, bool) or not isinstance(last_step, int) or last_step < -1:
            raise ValueError(f"last_step must be -1 (a fresh run) or the step to resume from, got {last_step!r}")
        self.last_step = last_step
        self.step()

    def multiplier(self, step: int) -> float:
        if self._fn is not None:
            value = float(self._fn(step))
        else:
            assert self.curve is not None
            value = curves.evaluate(SCHEDULES[self.curve].phase, step, self.options)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"the weight-decay curve gave {value!r} at step {step}; it must be a finite number >= 0")
        return value

    def step(self) -> None:
        """Advance one step and set every group's ``weight_decay``."""
        self.last_step += 1
        factor = self.multiplier(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_weight_decays):
            group["weight_decay"] = base * factor

    def get_last_weight_decay(self) -> list[float]:
        return [g["weight_decay"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "base_weight_decays": list(self.base_weight_decays),
            "curve": self.curve,
            "options": dict(self.options),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("curve") != self.curve:
            raise ValueError(
                f"this state is for curve {state_dict.get('curve')!r} but the schedule follows {self.curve!r}; "
                f"build the WeightDecaySchedule with the same curve before loading"
            )
        if len(state_dict["base_weight_decays"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"the state has {len(state_dict['base_weight_decays'])} param groups, the optimizer "
                f"{len(self.optimizer.param_groups)}"
            )
        self.last_step = int(state_dict["last_step"])
        self.base_weight_decays = [float(x) for x in state_dict["base_weight_decays"]]
        if self.curve is not None:
            self.options = curves.compact(options_of(SCHEDULES[self.curve], state_dict["options"]))
        factor = self.multiplier(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_weight_decays):
            group["weight_decay"] = base * factor
