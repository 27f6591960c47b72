r"""Learning-rate schedules (a warmup, then a decay shape) and a weight-decay schedule.

Every schedule is a *multiplier* :math:`\mu(t)` of the step :math:`t` (the number of
``scheduler.step()`` calls so far, 0 before the first optimizer step), applied to each param
group's initial value: :math:`\gamma_t = \gamma_0\,\mu(t)`. Each is built from two parts
(:mod:`decoupled.schedules.curves` has the math): a warmup over :math:`w` steps, the same for
every schedule,

.. math::

    \mu(t) = s + (1 - s)\,\frac{t}{w} \quad (t < w)

from :math:`s` = ``warmup_start`` (0, or the floor for warmup-stable-decay) to 1 (the ramp may
also be ``warmup_shape="cosine"`` or ``"1-sqrt"``), then a shape. Steps are optimizer steps,
not epochs; :math:`T` is the total number of steps *including* warmup:

=====================  ========================================================================
name                   shape after warmup (:math:`p = (t - w) / (T - w)`)
=====================  ========================================================================
constant               :math:`1`
linear                 :math:`f_{end} + (1 - f_{end})(1 - p)`
cosine                 :math:`f_{min} + (1 - f_{min})\,\tfrac12(1 + \cos 2\pi c p)`, :math:`c` =
                       ``cycles`` = 0.5 (half a cosine) by default
cosine_with_restarts   the cosine over cycles of :math:`T_0, T_0 m, T_0 m^2, \dots` steps,
                       restarting at 1 (SGDR; the paper's AdamWR)
polynomial             :math:`(1 - f_{end})(1 - p)^{k} + f_{end}`
inverse_sqrt           :math:`1/\sqrt{(t - w + \tau)/\tau}` (equal to 1 at :math:`t = w`)
warmup_stable_decay    1 until :math:`T - d`, then linear, cosine or 1-sqrt down to
                       :math:`f_{min}` over the last :math:`d` steps
=====================  ========================================================================

After :math:`T` every finite schedule stays at its floor (``CosineSchedule(past_end="continue")``
follows the cosine on, as ``transformers``' does). The classes are
``torch.optim.lr_scheduler.LRScheduler`` subclasses: they work with any optimizer, their
``state_dict()`` holds only numbers and strings (so ``torch.load(weights_only=True)`` reads
it), and for the names that ``transformers.get_scheduler`` also has they give the same values
(``tests/test_schedules.py`` checks it; :func:`decoupled.integrations.hf.get_scheduler` builds
one from Trainer's names and arguments, for every name it has).

With ``decoupled.AdamW(lr_independent_decay=True)`` the per-step decay is
:math:`(\gamma_t/\gamma_{max})\lambda = \mu(t)\lambda`, so weight decay follows the schedule's
shape, as in Loshchilov & Hutter's :math:`\eta_t`, without a second schedule. To move
:math:`\lambda` itself on a curve of its own, use :class:`WeightDecaySchedule`.

Files: :mod:`~decoupled.schedules.curves` (the math and the one validation),
:mod:`~decoupled.schedules.lr` (the ``LRScheduler`` classes and :data:`SCHEDULES`),
:mod:`~decoupled.schedules.weight_decay` (:class:`WeightDecaySchedule`).
"""

from __future__ import annotations

from .curves import DECAY_SHAPES, WARMUP_SHAPES, WSD_SHAPES
from .lr import (
    SCHEDULES,
    ConstantSchedule,
    CosineRestartsSchedule,
    CosineSchedule,
    InverseSqrtSchedule,
    LinearSchedule,
    PolynomialSchedule,
    ScheduleBase,
    WarmupOptions,
    WarmupStableDecaySchedule,
    create,
    multiplier,
)
from .weight_decay import WeightDecaySchedule

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
    "WarmupOptions",
    "SCHEDULES",
    "DECAY_SHAPES",
    "WARMUP_SHAPES",
    "WSD_SHAPES",
    "create",
    "multiplier",
]
