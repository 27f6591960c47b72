r"""``transformers.get_scheduler``'s names and keywords, built from :mod:`decoupled.schedules`.

:func:`get_scheduler` takes the arguments of ``transformers.get_scheduler`` (5.x) and returns
the :mod:`decoupled.schedules` scheduler with the same lr at every step, past
``num_training_steps`` included (``tests/test_hf_schedules.py`` compares them step by step
for every name and keyword). How each name is composed (:math:`w` = ``num_warmup_steps``,
:math:`T` = ``num_training_steps``, :math:`\gamma_0` = ``optimizer.defaults["lr"]``):

===========================  ==========================================================================
transformers name            decoupled.schedules
===========================  ==========================================================================
constant                     ``ConstantSchedule(warmup_steps=0)`` (transformers ignores the warmup)
constant_with_warmup         ``ConstantSchedule(w)``
linear                       ``LinearSchedule(T, w)``
cosine                       ``CosineSchedule(T, w, cycles=num_cycles, past_end="continue")``
cosine_with_min_lr           the same with ``min_factor = min_lr_rate`` or ``min_lr / γ0``
cosine_warmup_with_min_lr    the same read one step ahead (``offset=1``: the first step is not at
                             lr 0); with ``warmup_lr_rate`` :math:`r` a warmup from :math:`r` at step
                             0 to 1 at step :math:`w - 1`: ``CosineSchedule(T - 1, w - 1,
                             warmup_start=r)``
cosine_with_restarts         ``CosineRestartsSchedule(cycle_steps=(T - w) / num_cycles, w, total_steps=T)``
polynomial                   ``PolynomialSchedule(T, w, power=power, end_factor=lr_end / γ0)``
inverse_sqrt                 ``InverseSqrtSchedule(w, timescale=timescale)``
warmup_stable_decay          ``WarmupStableDecaySchedule(T, num_decay_steps, w, decay_shape=decay_type,
                             warmup_shape=warmup_type, min_factor=min_lr_ratio, cycles=num_cycles)``;
                             :math:`T = w` + ``num_stable_steps`` + ``num_decay_steps`` when given
===========================  ==========================================================================

Values agree bit for bit, except ``cosine_with_restarts``, ``polynomial`` and
``cosine_warmup_with_min_lr`` with ``warmup_lr_rate``, which round differently (relative
differences below 1e-15). transformers' cosines rise again after :math:`T` (the cosine goes
on); ``keep_floor=True`` holds their floor instead. The other names already end on their floor.

Not built: ``reduce_lr_on_plateau`` and ``greedy`` react to a metric and are not curves (an
error says what to use instead), and ``cosine_warmup_with_min_lr`` with ``warmup_lr_rate`` and
``num_warmup_steps=1``, where transformers starts at ``warmup_lr_rate`` and never reaches the
peak (its warmup divides by ``max(1, w - 1)``). ``num_warmup_steps=None`` counts as 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer

from .. import schedules

__all__ = ["get_scheduler", "NAMES"]


@dataclass
class Call:
    """One ``get_scheduler`` call as a builder sees it: ``kw`` holds the scheduler kwargs not yet
    used (a builder pops what it takes; what is left is passed on as our option names)."""

    name: str
    optimizer: Optimizer
    warmup: int
    total: int | None
    kw: dict[str, Any]
    past_end: str

    @property
    def steps(self) -> int:
        """``num_training_steps``, which this schedule needs."""
        if self.total is None:
            raise ValueError(f"the {self.name!r} schedule needs num_training_steps")
        return self.total

    def min_factor(self) -> float:
        """``min_lr_rate``, or ``min_lr`` over ``optimizer.defaults["lr"]`` (exactly one is given)."""
        min_lr, rate = self.kw.pop("min_lr", None), self.kw.pop("min_lr_rate", None)
        if (min_lr is None) == (rate is None):
            raise ValueError(f"{self.name} needs exactly one of min_lr or min_lr_rate in scheduler kwargs")
        return rate if min_lr is None else min_lr / self.optimizer.defaults["lr"]


Builder = Callable[[Call], schedules.ScheduleBase]


def _constant(c: Call) -> schedules.ScheduleBase:
    return schedules.ConstantSchedule(c.optimizer, c.warmup)


def _linear(c: Call) -> schedules.ScheduleBase:
    return schedules.LinearSchedule(c.optimizer, c.steps, c.warmup, **c.kw)


def _cosine(c: Call) -> schedules.ScheduleBase:
    """``cosine``, ``cosine_with_min_lr`` and ``cosine_warmup_with_min_lr``."""
    if c.name != "cosine":
        c.kw["min_factor"] = c.min_factor()
    c.kw["cycles"] = c.kw.pop("num_cycles", 0.5)
    start = c.kw.pop("warmup_lr_rate", None)
    if c.name != "cosine_warmup_with_min_lr":
        return schedules.CosineSchedule(c.optimizer, c.steps, c.warmup, past_end=c.past_end, **c.kw)
    if start is None or c.warmup == 0:  # cosine_with_min_lr, one step ahead
        return schedules.CosineSchedule(c.optimizer, c.steps, c.warmup, past_end=c.past_end, offset=1, **c.kw)
    if c.warmup == 1:
        raise ValueError(
            f"{c.name} with warmup_lr_rate and num_warmup_steps=1 starts at warmup_lr_rate and never reaches the "
            f"peak lr (transformers' warmup divides by max(1, num_warmup_steps - 1)); use num_warmup_steps=0 or >= 2"
        )
    # a warmup from `start` at step 0 to 1 at step w - 1, then the cosine over T - w steps
    return schedules.CosineSchedule(
        c.optimizer, c.steps - 1, c.warmup - 1, past_end=c.past_end, warmup_start=start, **c.kw
    )


def _restarts(c: Call) -> schedules.ScheduleBase:
    cycles = c.kw.pop("num_cycles", 1)
    if isinstance(cycles, bool) or not isinstance(cycles, (int, float)) or not cycles > 0:
        raise ValueError(f"num_cycles for cosine_with_restarts must be a number > 0, got {cycles!r}")
    if c.steps == c.warmup:
        raise ValueError("cosine_with_restarts needs num_training_steps > num_warmup_steps")
    cycle = (c.steps - c.warmup) / cycles
    return schedules.CosineRestartsSchedule(c.optimizer, cycle, c.warmup, total_steps=c.steps, **c.kw)


def _polynomial(c: Call) -> schedules.ScheduleBase:
    lr0, lr_end = c.optimizer.defaults["lr"], c.kw.pop("lr_end", 1e-7)
    if not lr0 > lr_end >= 0:
        raise ValueError(f"lr_end ({lr_end}) must be >= 0 and smaller than the initial lr ({lr0})")
    return schedules.PolynomialSchedule(c.optimizer, c.steps, c.warmup, end_factor=lr_end / lr0, **c.kw)


def _inverse_sqrt(c: Call) -> schedules.ScheduleBase:
    return schedules.InverseSqrtSchedule(c.optimizer, c.warmup, **c.kw)


def _wsd(c: Call) -> schedules.ScheduleBase:
    decay, stable = c.kw.pop("num_decay_steps", None), c.kw.pop("num_stable_steps", None)
    if decay is None:
        raise ValueError("warmup_stable_decay needs num_decay_steps in scheduler kwargs")
    total = c.total
    if stable is not None:
        if total is not None:
            warnings.warn(
                "warmup_stable_decay: both num_training_steps and num_stable_steps are given; "
                "num_stable_steps is used (as transformers does)",
                stacklevel=3,
            )
        total = c.warmup + stable + decay
    if total is None:
        raise ValueError("warmup_stable_decay needs num_training_steps or num_stable_steps")
    options = {
        "decay_shape": c.kw.pop("decay_type", "cosine"),
        "warmup_shape": c.kw.pop("warmup_type", "linear"),
        "min_factor": c.kw.pop("min_lr_ratio", 0.0),
        "cycles": c.kw.pop("num_cycles", 0.5),
    }
    return schedules.WarmupStableDecaySchedule(c.optimizer, total, decay, c.warmup, **options, **c.kw)


# name -> (the scheduler_specific_kwargs transformers' function takes, how to build ours)
NAMES: dict[str, tuple[tuple[str, ...], Builder]] = {
    "constant": ((), _constant),
    "constant_with_warmup": ((), _constant),
    "linear": (("last_epoch",), _linear),
    "cosine": (("num_cycles", "last_epoch"), _cosine),
    "cosine_with_min_lr": (("num_cycles", "min_lr", "min_lr_rate", "last_epoch"), _cosine),
    "cosine_warmup_with_min_lr": (("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate", "last_epoch"), _cosine),
    "cosine_with_restarts": (("num_cycles", "last_epoch"), _restarts),
    "polynomial": (("lr_end", "power", "last_epoch"), _polynomial),
    "inverse_sqrt": (("timescale", "last_epoch"), _inverse_sqrt),
    "warmup_stable_decay": (
        (
            "num_decay_steps",
            "num_stable_steps",
            "warmup_type",
            "decay_type",
            "min_lr_ratio",
            "num_cycles",
            "last_epoch",
        ),
        _wsd,
    ),
}
"""transformers' schedule names that are lr curves: keywords taken, and the builder."""

_NOT_CURVES = {
    "reduce_lr_on_plateau": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "greedy": "transformers.optimization.GreedyLR",
}


def get_scheduler(
    name: Any,
    optimizer: Optimizer,
    num_warmup_steps: int | None = None,
    num_training_steps: int | None = None,
    scheduler_specific_kwargs: dict[str, Any] | None = None,
    *,
    keep_floor: bool = False,
) -> schedules.ScheduleBase:
    """The :mod:`decoupled.schedules` scheduler for a ``transformers.get_scheduler`` call.

    Same arguments, and the same lr at every step, as ``transformers.get_scheduler`` for every
    name it has that is an lr curve (the module docstring lists how each is built). As there,
    ``lr_end``/``min_lr`` are absolute and converted with ``optimizer.defaults["lr"]``, and
    ``constant``/``constant_with_warmup`` ignore ``scheduler_specific_kwargs`` (with a warning
    here). ``keep_floor=True``: from ``num_training_steps`` on, the cosines hold their floor
    instead of rising again as transformers' do.

    ``reduce_lr_on_plateau`` and ``greedy`` react to metrics and are not curves: pass
    ``Trainer(optimizers=(optimizer, None))`` and Trainer builds them around the optimizer.

    Raises:
        ValueError: an unknown name, a keyword the name does not take, or a missing or bad value.
    """
    name = str(getattr(name, "value", name))  # transformers.SchedulerType or str
    if name in _NOT_CURVES:
        raise ValueError(
            f"{name!r} reacts to metrics and is not a curve; pass Trainer(optimizers=(optimizer, None)) and "
            f"Trainer builds it around decoupled.AdamW, or use {_NOT_CURVES[name]} yourself"
        )
    if name not in NAMES:
        raise ValueError(f"unknown scheduler type {name!r}; transformers' names are {sorted([*NAMES, *_NOT_CURVES])}")
    accepted, build = NAMES[name]
    kw = dict(scheduler_specific_kwargs or {})
    kw_given = dict(kw)
    if not accepted and kw:
        warnings.warn(
            f"scheduler kwargs {sorted(kw)} are ignored by the {name!r} schedule (as transformers ignores them)",
            stacklevel=2,
        )
        kw = {}
    unused = sorted(set(kw) - set(accepted))
    if unused:
        raise ValueError(f"scheduler kwargs {unused} are not used by the {name!r} schedule; it takes {list(accepted)}")
    warmup = 0 if num_warmup_steps is None or name == "constant" else num_warmup_steps
    call = Call(name, optimizer, warmup, num_training_steps, kw, "floor" if keep_floor else "continue")
    try:
        return build(call)
    except ValueError as err:
        given = f"num_warmup_steps={num_warmup_steps}, num_training_steps={num_training_steps}"
        raise ValueError(f"{err} (transformers' {name!r} with {given}, scheduler kwargs {kw_given})") from None
