r"""The learning-rate schedulers: one ``LRScheduler`` class per schedule, and :data:`SCHEDULES`.

Each class names its schedule (``curve``), says what follows the warmup (``phase``, a
:class:`~decoupled.schedules.curves.Phase`) and lists its options in its signature, with
their defaults; :func:`options_of` reads the signature, so :func:`create`, :func:`multiplier`
and :class:`~decoupled.schedules.WeightDecaySchedule` accept exactly the same options. Every
class also takes the warmup's own options (:class:`WarmupOptions`). A new schedule is one
class here; defining it registers it.
"""

from __future__ import annotations

import inspect
import operator
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from . import curves
from .curves import NEUTRAL, Phase

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "WarmupOptions",
    "ScheduleBase",
    "ConstantSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "CosineRestartsSchedule",
    "PolynomialSchedule",
    "InverseSqrtSchedule",
    "WarmupStableDecaySchedule",
    "SCHEDULES",
    "options_of",
    "lookup",
    "create",
    "multiplier",
]


class WarmupOptions(TypedDict, total=False):
    r"""The warmup's options besides ``warmup_steps``, taken by every schedule.

    ``warmup_start``: the multiplier at step 0, rising to 1 at ``warmup_steps`` (default 0;
    warmup-stable-decay starts at its ``min_factor``). ``warmup_shape``: ``"linear"`` (default),
    ``"cosine"`` or ``"1-sqrt"``. ``offset``: whole steps the curve is ahead of the scheduler
    (:math:`\mu(t)` is read at :math:`t + \text{offset}`; default 0).
    """

    warmup_start: float | None
    warmup_shape: str
    offset: int


_WARMUP_OPTIONS = tuple(WarmupOptions.__annotations__)

SCHEDULES: dict[str, type[ScheduleBase]] = {}
"""Schedule classes by name; a subclass of :class:`ScheduleBase` with a ``curve`` adds itself."""


_PARAMETERS: dict[type, tuple[inspect.Parameter, ...]] = {}


def _parameters(schedule: type[ScheduleBase]) -> tuple[inspect.Parameter, ...]:
    """The options in ``schedule``'s signature (read once per class)."""
    if schedule not in _PARAMETERS:
        _PARAMETERS[schedule] = tuple(
            p
            for p in inspect.signature(schedule.__init__).parameters.values()
            if p.name not in ("self", "optimizer", "last_epoch") and p.kind is not inspect.Parameter.VAR_KEYWORD
        )
    return _PARAMETERS[schedule]


def options_of(schedule: type[ScheduleBase], options: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``schedule``: the given ``options``, defaults for the rest, all checked.

    Raises ``ValueError`` for an unknown or missing option, or a bad value.
    """
    params = _parameters(schedule)
    allowed = [p.name for p in params] + list(_WARMUP_OPTIONS)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"the {schedule.curve!r} schedule has no option {unknown}; it takes {allowed}")
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise ValueError(f"the {schedule.curve!r} schedule needs {missing} (in optimizer steps)")
    full = {p.name: options.get(p.name, p.default) for p in params}
    full.update({k: options.get(k, NEUTRAL[k]) for k in _WARMUP_OPTIONS})
    return curves.check(full)


def lookup(name: Any) -> type[ScheduleBase]:
    """The class of schedule ``name``; a ``ValueError`` that lists the names otherwise."""
    if name in SCHEDULES:
        return SCHEDULES[name]
    hint = ""
    if name == "reduce_lr_on_plateau":
        hint = " (use torch.optim.lr_scheduler.ReduceLROnPlateau, which reacts to a metric)"
    elif name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr", "constant_with_warmup"):
        hint = " (a transformers name: decoupled.integrations.hf.get_scheduler takes those)"
    raise ValueError(f"unknown schedule {name!r}{hint}; choose one of {sorted(SCHEDULES)}")


def multiplier(curve: str, step: int, **options: Any) -> float:
    """The multiplier :math:`\\mu(t)` of schedule ``curve`` at ``step`` (see :mod:`decoupled.schedules`).

    >>> multiplier("cosine", 5, total_steps=10)
    0.5
    """
    if isinstance(step, bool) or operator.index(step) < 0:
        raise ValueError(f"step must be a non-negative whole number, got {step!r}")
    schedule = lookup(curve)
    return curves.evaluate(schedule.phase, step, options_of(schedule, options))


class ScheduleBase(LRScheduler):
    """An lr scheduler whose lr is ``initial_lr * multiplier(step)`` for every param group.

    ``options`` holds the schedule's options, leaving out composition options at values that
    change nothing (:data:`~decoupled.schedules.curves.NEUTRAL`); ``state_dict()`` stores
    them, so a restored scheduler continues the same curve.
    """

    curve: ClassVar[str]
    phase: ClassVar[Phase]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "curve" in cls.__dict__:
            SCHEDULES[cls.curve] = cls

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1, **options: Any) -> None:
        self.options = curves.compact(options_of(type(self), options))
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"last_epoch must be -1 (a fresh run) or the step to resume from, got {last_epoch!r}")
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        """:math:`\\mu(t)`: the fraction of each group's initial lr used at ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return curves.evaluate(self.phase, step, self.options)

    def get_lr(self) -> list[Any]:
        factor = self.multiplier(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    _get_closed_form_lr = get_lr

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options}; step {self.last_epoch})"


class ConstantSchedule(ScheduleBase):
    """Warmup over ``warmup_steps``, then the initial lr (``transformers``' ``constant_with_warmup``)."""

    curve = "constant"
    phase = Phase("hold")

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 0, *, last_epoch: int = -1, **warmup: Unpack[WarmupOptions]
    ) -> None:
        super().__init__(optimizer, last_epoch, warmup_steps=warmup_steps, **warmup)


class LinearSchedule(ScheduleBase):
    r"""Warmup, then a straight line from the initial lr to ``end_factor`` times it at ``total_steps``.

    :math:`\mu(t) = f_{end} + (1 - f_{end})\,(T - t)/(T - w)` for :math:`w \le t \le T`, then
    :math:`f_{end}`.
    """

    curve = "linear"
    phase = Phase("decay", "linear")

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        *,
        end_factor: float = 0.0,
        last_epoch: int = -1,
        **warmup: Unpack[WarmupOptions],
    ) -> None:
        super().__init__(
            optimizer, last_epoch, total_steps=total_steps, warmup_steps=warmup_steps, end_factor=end_factor, **warmup
        )


class CosineSchedule(ScheduleBase):
    r"""Warmup, then half a cosine from the initial lr down to a floor ``min_factor`` times it.

    :math:`\mu(t) = f_{min} + (1 - f_{min})\,\tfrac12\,(1 + \cos(2\pi c\,(t - w)/(T - w)))`,
    :math:`c` = ``cycles`` (0.5: half a wave, from 1 down to the floor). From ``total_steps``
    on the multiplier is ``min_factor`` (``past_end="floor"``), or follows the cosine on
    (``past_end="continue"``: it rises again, as ``transformers``' ``cosine`` does). These are
    ``transformers``' ``cosine`` and ``cosine_with_min_lr``.
    """

    curve = "cosine"
    phase = Phase("decay", "cosine")

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        *,
        min_factor: float = 0.0,
        cycles: float = 0.5,
        past_end: str = "floor",
        last_epoch: int = -1,
        **warmup: Unpack[WarmupOptions],
    ) -> None:
        super().__init__(
            optimizer,
            last_epoch,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            min_factor=min_factor,
            cycles=cycles,
            past_end=past_end,
            **warmup,
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
    phase = Phase("restarts")

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
        **warmup: Unpack[WarmupOptions],
    ) -> None:
        super().__init__(
            optimizer,
            last_epoch,
            cycle_steps=cycle_steps,
            warmup_steps=warmup_steps,
            cycle_mult=cycle_mult,
            min_factor=min_factor,
            total_steps=total_steps,
            **warmup,
        )


class PolynomialSchedule(ScheduleBase):
    r"""Warmup, then :math:`\mu(t) = (1 - f_{end})\,(1 - p)^k + f_{end}`, :math:`p = (t-w)/(T-w)`.

    ``power`` :math:`k = 1` is linear decay; ``transformers``' ``polynomial`` schedule with
    ``lr_end`` is ``end_factor = lr_end / initial lr`` (its default lr_end is 1e-7).
    """

    curve = "polynomial"
    phase = Phase("decay", "polynomial")

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        *,
        power: float = 1.0,
        end_factor: float = 0.0,
        last_epoch: int = -1,
        **warmup: Unpack[WarmupOptions],
    ) -> None:
        super().__init__(
            optimizer,
            last_epoch,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            power=power,
            end_factor=end_factor,
            **warmup,
        )


class InverseSqrtSchedule(ScheduleBase):
    r"""Warmup, then :math:`\mu(t) = 1/\sqrt{(t - w + \tau)/\tau}`: 1 at the end of warmup, then
    :math:`\propto 1/\sqrt t`. ``timescale`` :math:`\tau` (steps) defaults to ``warmup_steps``, or
    10 000 without warmup (as in ``transformers``). It never ends: no ``total_steps``.
    """

    curve = "inverse_sqrt"
    phase = Phase("inverse_sqrt")

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        *,
        timescale: int | None = None,
        last_epoch: int = -1,
        **warmup: Unpack[WarmupOptions],
    ) -> None:
        super().__init__(optimizer, last_epoch, warmup_steps=warmup_steps, timescale=timescale, **warmup)


class WarmupStableDecaySchedule(ScheduleBase):
    r"""Warmup-stable-decay ("trapezoidal"): warm up from ``min_factor`` to 1, hold 1, then decay to
    ``min_factor`` over the last ``decay_steps`` steps of ``total_steps``.

    In the decay phase, :math:`e = t - (T - d)` steps in and :math:`p = e/d`, the shape is
    :math:`(d - e)/d` (``"linear"``), :math:`\tfrac12(1 + \cos(2\pi c\,p))` (``"cosine"``, ``cycles`` :math:`c`)
    or :math:`1 - \sqrt p` (``"1-sqrt"``), scaled to :math:`[f_{min}, 1]`. Because the lr is
    flat until the decay, a run can be extended, or branched to a shorter decay, from any
    stable-phase checkpoint.

    Reference: Hägele et al., "Scaling Laws and Compute-Optimal Training beyond Fixed Training
    Durations", 2024 (arXiv:2405.18392).
    """

    curve = "warmup_stable_decay"
    phase = Phase("decay", warmup_from_floor=True)

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        decay_steps: int,
        warmup_steps: int = 0,
        *,
        decay_shape: str = "linear",
        min_factor: float = 0.0,
        cycles: float = 0.5,
        last_epoch: int = -1,
        **warmup: Unpack[WarmupOptions],
    ) -> None:
        super().__init__(
            optimizer,
            last_epoch,
            total_steps=total_steps,
            decay_steps=decay_steps,
            warmup_steps=warmup_steps,
            decay_shape=decay_shape,
            min_factor=min_factor,
            cycles=cycles,
            **warmup,
        )


def create(name: str, optimizer: Optimizer, **options: Any) -> ScheduleBase:
    """The schedule called ``name`` (a key of :data:`SCHEDULES`) for ``optimizer``.

    >>> import torch
    >>> opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    >>> sched = create("cosine", opt, total_steps=100, warmup_steps=10, min_factor=0.1)
    """
    schedule = lookup(name)
    options_of(schedule, {k: v for k, v in options.items() if k != "last_epoch"})  # a clear error first
    return schedule(optimizer, **options)
