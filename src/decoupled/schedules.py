r"""Learning-rate schedules (warmup, then a decay shape) and a weight-decay schedule.

Every schedule is a *multiplier* :math:`\mu(t)` of the step :math:`t` (the number of
``scheduler.step()`` calls so far, 0 before the first optimizer step), applied to each param
group's initial value: :math:`\gamma_t = \gamma_0\,\mu(t)`. All are linear warmup (:math:`w`
steps) followed by a shape; steps are optimizer steps, not epochs; :math:`T` is the total
number of steps *including* warmup:

.. math::

    \mu(t) = \frac{t}{w}\,(1 - \mu_0) + \mu_0 \quad (t < w), \qquad
    \mu(t) = \text{shape}(t) \quad (t \ge w)

with :math:`\mu_0 = 0` except for warmup-stable-decay, whose warmup starts at its floor.

=====================  ========================================================================
name                   shape after warmup (:math:`p = (t - w) / (T - w)`, clamped to [0, 1])
=====================  ========================================================================
constant               :math:`1`
linear                 :math:`f_{end} + (1 - f_{end})(1 - p)`
cosine                 :math:`\tfrac12(1 + \cos \pi p)(1 - f_{min}) + f_{min}` (a floor with
                       :math:`f_{min} > 0`)
cosine_with_restarts   the cosine over cycles of :math:`T_0, T_0 m, T_0 m^2, \dots` steps,
                       restarting at 1 (SGDR; the paper's AdamWR)
polynomial             :math:`(1 - f_{end})(1 - p)^{k} + f_{end}`
inverse_sqrt           :math:`1/\sqrt{(t - w + \tau)/\tau}` (equal to 1 at :math:`t = w`)
warmup_stable_decay    1 until :math:`T - d`, then linear, cosine or 1-sqrt down to
                       :math:`f_{min}` over the last :math:`d` steps
=====================  ========================================================================

After :math:`T` every finite schedule stays at its final value. The classes are
``torch.optim.lr_scheduler.LRScheduler`` subclasses: they work with any optimizer, their
``state_dict()`` holds only numbers and strings (so ``torch.load(weights_only=True)`` reads
it), and for the names that ``transformers.get_scheduler`` also has they give the same values
(``tests/test_schedules.py`` checks it; see :mod:`decoupled.integrations.hf` to build one from
Trainer's names and arguments).

With ``decoupled.AdamW(lr_independent_decay=True)`` the per-step decay is
:math:`(\gamma_t/\gamma_{max})\lambda = \mu(t)\lambda`, so weight decay follows the schedule's
shape, as in Loshchilov & Hutter's :math:`\eta_t`, without a second schedule. To move
:math:`\lambda` itself on a curve of its own, use :class:`WeightDecaySchedule`.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable
from typing import Any, ClassVar

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "ScheduleBase",
    "ConstantSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "CosineRestartsSchedule",
    "PolynomialSchedule",
    "InverseSqrtSchedule",
    "WarmupStableDecaySchedule",
    "WeightDecaySchedule",
    "SCHEDULES",
    "create",
    "multiplier",
]

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


# ---- the math: pure functions of the step -----------------------------------------------------


def _warmup(step: int, warmup_steps: int, start: float = 0.0) -> float:
    return step / warmup_steps * (1.0 - start) + start


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    return min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))


def _half_cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _constant(step: int, *, warmup_steps: int = 0) -> float:
    return _warmup(step, warmup_steps) if step < warmup_steps else 1.0


def _linear(step: int, *, total_steps: int, warmup_steps: int = 0, end_factor: float = 0.0) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    if step >= total_steps:
        return end_factor
    remaining = (total_steps - step) / (total_steps - warmup_steps)
    return remaining * (1.0 - end_factor) + end_factor


def _cosine(step: int, *, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    if step >= total_steps:
        return min_factor
    return _half_cosine(_progress(step, warmup_steps, total_steps)) * (1.0 - min_factor) + min_factor


def _cosine_restarts(
    step: int,
    *,
    cycle_steps: float,
    warmup_steps: int = 0,
    cycle_mult: float = 1.0,
    min_factor: float = 0.0,
    total_steps: int | None = None,
) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    if total_steps is not None and step >= total_steps:
        return min_factor
    elapsed, length = float(step - warmup_steps), float(cycle_steps)
    if cycle_mult == 1.0:
        elapsed = math.fmod(elapsed, length)
    else:
        while elapsed >= length:  # cycles grow geometrically: O(log) iterations
            elapsed -= length
            length *= cycle_mult
    return _half_cosine(elapsed / length) * (1.0 - min_factor) + min_factor


def _polynomial(
    step: int, *, total_steps: int, warmup_steps: int = 0, power: float = 1.0, end_factor: float = 0.0
) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    if step >= total_steps:
        return end_factor
    remaining = 1.0 - _progress(step, warmup_steps, total_steps)
    return (1.0 - end_factor) * remaining**power + end_factor


def _inverse_sqrt(step: int, *, warmup_steps: int = 0, timescale: int | None = None) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    tau = timescale if timescale is not None else (warmup_steps or 10_000)
    return 1.0 / math.sqrt((step + (tau - warmup_steps)) / tau)


def _warmup_stable_decay(
    step: int,
    *,
    total_steps: int,
    decay_steps: int,
    warmup_steps: int = 0,
    decay_shape: str = "linear",
    min_factor: float = 0.0,
) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps, start=min_factor)
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    if step >= total_steps:
        return min_factor
    p = (step - decay_start) / decay_steps
    shape = {"linear": 1.0 - p, "cosine": _half_cosine(p), "1-sqrt": 1.0 - math.sqrt(p)}[decay_shape]
    return shape * (1.0 - min_factor) + min_factor


_CURVES: dict[str, Callable[..., float]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_restarts,
    "polynomial": _polynomial,
    "inverse_sqrt": _inverse_sqrt,
    "warmup_stable_decay": _warmup_stable_decay,
}


# ---- validation --------------------------------------------------------------------------


def _steps(name: str, value: Any, *, positive: bool = False) -> int:
    try:
        n = operator.index(value)
        if isinstance(value, bool):
            raise TypeError
    except TypeError:
        raise ValueError(f"{name} must be a whole number of optimizer steps, got {value!r}") from None
    if n < (1 if positive else 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} (optimizer steps), got {n}")
    return n


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (a fraction of the initial value), got {value!r}")
    return float(value)


def _validate(curve: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``options`` of ``curve`` and return them normalized (ints and floats)."""
    if curve not in _CURVES:
        raise ValueError(_unknown(curve))
    signature = inspect.signature(_CURVES[curve]).parameters
    allowed = [a for a in signature if a != "step"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"the {curve!r} schedule has no option {unknown}; it takes {allowed}")
    missing = [a for a in allowed if signature[a].default is inspect.Parameter.empty and a not in options]
    if missing:
        raise ValueError(f"the {curve!r} schedule needs {missing} (in optimizer steps)")
    out = dict(options)
    for key in ("warmup_steps", "decay_steps"):
        if key in out:
            out[key] = _steps(key, out[key])
    for key in ("total_steps", "timescale"):
        if out.get(key) is not None:
            out[key] = _steps(key, out[key], positive=True)
    for key in ("end_factor", "min_factor"):
        if key in out:
            out[key] = _fraction(key, out[key])
    warmup, total = out.get("warmup_steps", 0), out.get("total_steps")
    if total is not None and warmup > total:
        raise ValueError(
            f"warmup_steps={warmup} is longer than total_steps={total}; warmup is counted inside "
            f"total_steps, so lower warmup_steps or raise total_steps"
        )
    if "cycle_steps" in out:
        c = out["cycle_steps"]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (c > 0 and math.isfinite(c)):
            raise ValueError(f"cycle_steps (length of the first cosine cycle, in steps) must be > 0, got {c!r}")
        out["cycle_steps"] = float(c)
    if "cycle_mult" in out:
        m = out["cycle_mult"]
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (1.0 <= m < math.inf):
            raise ValueError(f"cycle_mult (growth of each cycle's length) must be >= 1, got {m!r}")
        out["cycle_mult"] = float(m)
    if "power" in out:
        k = out["power"]
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0 < k < math.inf):
            raise ValueError(f"power must be a positive number, got {k!r}")
        out["power"] = float(k)
    if curve == "warmup_stable_decay":
        if out.get("decay_shape", "linear") not in DECAY_SHAPES:
            raise ValueError(f"decay_shape must be one of {DECAY_SHAPES}, got {out['decay_shape']!r}")
        if warmup + out["decay_steps"] > total:
            raise ValueError(
                f"warmup_steps + decay_steps = {warmup} + {out['decay_steps']} exceeds total_steps={total}; "
                f"the stable phase (total - warmup - decay) cannot be negative"
            )
    return out


def _unknown(name: Any) -> str:
    hint = ""
    if name == "reduce_lr_on_plateau":
        hint = " (use torch.optim.lr_scheduler.ReduceLROnPlateau, which reacts to a metric)"
    elif name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        hint = " (use 'cosine' with min_factor=...)"
    return f"unknown schedule {name!r}{hint}; choose one of {sorted(_CURVES)}"


def multiplier(curve: str, step: int, **options: Any) -> float:
    """The multiplier :math:`\\mu(t)` of schedule ``curve`` at ``step`` (see the module docstring).

    >>> multiplier("cosine", 5, total_steps=10)
    0.5
    """
    if isinstance(step, bool) or operator.index(step) < 0:
        raise ValueError(f"step must be a non-negative whole number, got {step!r}")
    return _CURVES[curve](step, **_validate(curve, options))


# ---- lr schedulers -----------------------------------------------------------------------


class ScheduleBase(LRScheduler):
    """An lr scheduler whose lr is ``initial_lr * multiplier(step)`` for every param group.

    Subclasses set ``curve`` (a key of :data:`SCHEDULES`) and pass their options here;
    ``state_dict()`` stores the options, so a restored scheduler continues the same curve.
    """

    curve: ClassVar[str]

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1, **options: Any) -> None:
        self.options = _validate(self.curve, options)
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"last_epoch must be -1 (a fresh run) or the step to resume from, got {last_epoch!r}")
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        """:math:`\\mu(t)`: the fraction of each group's initial lr used at ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return _CURVES[self.curve](step, **self.options)

    def get_lr(self) -> list[Any]:
        factor = self.multiplier(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    _get_closed_form_lr = get_lr

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options}; step {self.last_epoch})"


class ConstantSchedule(ScheduleBase):
    """Linear warmup over ``warmup_steps`` from 0, then the initial lr (``constant_with_warmup``)."""

    curve = "constant"

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, *, last_epoch: int = -1) -> None:
        super().__init__(optimizer, last_epoch, warmup_steps=warmup_steps)


class LinearSchedule(ScheduleBase):
    r"""Warmup, then a straight line from the initial lr to ``end_factor`` times it at ``total_steps``.

    :math:`\mu(t) = f_{end} + (1 - f_{end})\,(T - t)/(T - w)` for :math:`w \le t \le T`.
    """

    curve = "linear"

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        *,
        end_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer, last_epoch, total_steps=total_steps, warmup_steps=warmup_steps, end_factor=end_factor
        )


class CosineSchedule(ScheduleBase):
    r"""Warmup, then half a cosine from the initial lr down to a floor ``min_factor`` times it.

    :math:`\mu(t) = f_{min} + (1 - f_{min})\,\tfrac12\,(1 + \cos(\pi (t - w)/(T - w)))`; the
    ``cosine`` and ``cosine_with_min_lr`` schedules of ``transformers``.
    """

    curve = "cosine"

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        *,
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer, last_epoch, total_steps=total_steps, warmup_steps=warmup_steps, min_factor=min_factor
        )


class CosineRestartsSchedule(ScheduleBase):
    r"""Cosine annealing with warm restarts (SGDR; with AdamW, the paper's AdamWR).

    After warmup, cycle :math:`i` lasts :math:`T_i = T_0\,m^i` steps (``cycle_steps``
    :math:`T_0`, ``cycle_mult`` :math:`m \ge 1`); within it, at :math:`t_{cur}` steps from its
    start, :math:`\mu = f_{min} + (1 - f_{min})\,\tfrac12(1 + \cos(\pi\,t_{cur}/T_i))`, so the lr
    jumps back to its initial value at every restart. With ``total_steps`` the multiplier is
    ``min_factor`` from then on. ``transformers``' ``cosine_with_restarts`` with ``n`` cycles
    is ``cycle_steps=(T - w) / n, total_steps=T``.

    Reference: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017; AdamWR in "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    curve = "cosine_with_restarts"

    def __init__(
        self,
        optimizer: Optimizer,
        cycle_steps: float,
        warmup_steps: int = 0,
        *,
        cycle_mult: float = 1.0,
        min_factor: float = 0.0,
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer,
            last_epoch,
            cycle_steps=cycle_steps,
            warmup_steps=warmup_steps,
            cycle_mult=cycle_mult,
            min_factor=min_factor,
            total_steps=total_steps,
        )


class PolynomialSchedule(ScheduleBase):
    r"""Warmup, then :math:`\mu(t) = (1 - f_{end})\,(1 - p)^k + f_{end}`, :math:`p = (t-w)/(T-w)`.

    ``power`` :math:`k = 1` is linear decay; ``transformers``' ``polynomial`` schedule with
    ``lr_end`` is ``end_factor = lr_end / initial lr`` (its default lr_end is 1e-7).
    """

    curve = "polynomial"

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        *,
        power: float = 1.0,
        end_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer,
            last_epoch,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            power=power,
            end_factor=end_factor,
        )


class InverseSqrtSchedule(ScheduleBase):
    r"""Warmup, then :math:`\mu(t) = 1/\sqrt{(t - w + \tau)/\tau}`: 1 at the end of warmup, then
    :math:`\propto 1/\sqrt t`. ``timescale`` :math:`\tau` (steps) defaults to ``warmup_steps``, or
    10 000 without warmup (as in ``transformers``). It never ends: no ``total_steps``.
    """

    curve = "inverse_sqrt"

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 0, *, timescale: int | None = None, last_epoch: int = -1
    ) -> None:
        super().__init__(optimizer, last_epoch, warmup_steps=warmup_steps, timescale=timescale)


class WarmupStableDecaySchedule(ScheduleBase):
    r"""Warmup-stable-decay ("trapezoidal"): warm up from ``min_factor`` to 1, hold 1, then decay to
    ``min_factor`` over the last ``decay_steps`` steps of ``total_steps``.

    In the decay phase, with :math:`p = (t - (T - d))/d`, the shape is :math:`1 - p`
    (``"linear"``), :math:`\tfrac12(1 + \cos\pi p)` (``"cosine"``) or :math:`1 - \sqrt p`
    (``"1-sqrt"``), scaled to :math:`[f_{min}, 1]`. Because the lr is flat until the decay,
    a run can be extended, or branched to a shorter decay, from any stable-phase checkpoint.

    Reference: Hägele et al., "Scaling Laws and Compute-Optimal Training beyond Fixed Training
    Durations", 2024 (arXiv:2405.18392).
    """

    curve = "warmup_stable_decay"

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        decay_steps: int,
        warmup_steps: int = 0,
        *,
        decay_shape: str = "linear",
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer,
            last_epoch,
            total_steps=total_steps,
            decay_steps=decay_steps,
            warmup_steps=warmup_steps,
            decay_shape=decay_shape,
            min_factor=min_factor,
        )


SCHEDULES: dict[str, type[ScheduleBase]] = {
    "constant": ConstantSchedule,
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "cosine_with_restarts": CosineRestartsSchedule,
    "polynomial": PolynomialSchedule,
    "inverse_sqrt": InverseSqrtSchedule,
    "warmup_stable_decay": WarmupStableDecaySchedule,
}
"""Schedule classes by name."""


def create(name: str, optimizer: Optimizer, **options: Any) -> ScheduleBase:
    """The schedule called ``name`` (a key of :data:`SCHEDULES`) for ``optimizer``.

    >>> import torch
    >>> opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    >>> sched = create("cosine", opt, total_steps=100, warmup_steps=10, min_factor=0.1)
    """
    if name not in SCHEDULES:
        raise ValueError(_unknown(name))
    _validate(name, {k: v for k, v in options.items() if k != "last_epoch"})  # a clear error first
    return SCHEDULES[name](optimizer, **options)


# ---- weight decay ------------------------------------------------------------------------


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
            self.options = _validate(curve, options)
            self._fn: Callable[[int], float] | None = None
        elif callable(curve):
            if options:
                raise ValueError(f"options {sorted(options)} only apply to a named curve, not to a function")
            self.curve, self.options, self._fn = None, {}, curve
        else:
            raise TypeError(f"curve must be a schedule name {sorted(_CURVES)} or a function of the step, got {curve!r}")
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
            value = _CURVES[self.curve](step, **self.options)
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
            self.options = _validate(self.curve, state_dict["options"])
        factor = self.multiplier(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_weight_decays):
            group["weight_decay"] = base * factor
