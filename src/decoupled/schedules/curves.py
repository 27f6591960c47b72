r"""The math of every schedule: a warmup, then what follows it, as pure functions of the step.

A schedule's multiplier at step :math:`t` (``scheduler.step()`` calls so far) is

.. math::

    \mu(t) = \begin{cases}
        s + (1 - s)\,r(u / w) & u < w \quad\text{(warmup)}\\
        \text{after}(u)        & u \ge w
    \end{cases}
    \qquad u = t + \text{offset}

with :math:`w` = ``warmup_steps``, :math:`s` = ``warmup_start`` (the multiplier at the first
step; 0 by default, the floor for warmup-stable-decay) and the ramp :math:`r(p)` one of
:data:`WARMUP_SHAPES`: :math:`p` (``linear``), :math:`\tfrac12(1 - \cos\pi p)` (``cosine``),
:math:`1 - \sqrt{1 - p}` (``1-sqrt``). What follows the warmup is a :class:`Phase`:

* ``hold``: :math:`1`;
* ``decay``: 1 until :math:`T - d`, then :math:`f + (1 - f)\,g(e, d)` with :math:`e = u - (T - d)`
  steps into the decay, :math:`g` one of :data:`DECAY_SHAPES`, :math:`f` the floor
  (``min_factor``/``end_factor``), :math:`T` = ``total_steps`` and :math:`d` = ``decay_steps``
  (by default :math:`T - w`: the decay starts right after the warmup). From :math:`T` on,
  ``past_end="floor"`` gives :math:`f`; ``"continue"`` keeps evaluating :math:`g` past
  :math:`e = d` (clipped at 0), as ``transformers``' cosines do;
* ``restarts``: the cosine over cycles of :math:`T_0, T_0 m, T_0 m^2, \dots` steps (SGDR), then
  the floor from ``total_steps`` on, if given;
* ``inverse_sqrt``: :math:`1/\sqrt{(u - w + \tau)/\tau}` (1 at the end of warmup).

The decay shapes :math:`g(e, n)` over :math:`n` steps, with :math:`p = e/n`: ``linear``
:math:`(n - e)/n`, ``cosine`` :math:`\tfrac12(1 + \cos(2\pi c\,p))` with :math:`c` = ``cycles``
(0.5: half a cosine, from 1 down to 0), ``1-sqrt`` :math:`1 - \sqrt p`, ``polynomial``
:math:`((n - e)/n)^k`. Each is written in the same floating-point operations as
``transformers``' own function, so the values agree bit for bit where the formulas agree
(warmup-stable-decay's ``linear`` is therefore rounded as :math:`1 - e/n`, as there).

:func:`check` is the one place that validates options; :func:`evaluate` computes
:math:`\mu(t)` from a :class:`Phase` and checked options.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "WARMUP_SHAPES",
    "DECAY_SHAPES",
    "WSD_SHAPES",
    "PAST_END",
    "NEUTRAL",
    "Phase",
    "check",
    "compact",
    "evaluate",
]

Options = Mapping[str, Any]

#: The warmup's ramp :math:`r(p)` from 0 to 1 over :math:`p \in [0, 1)`.
WARMUP_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda p: p,
    "cosine": lambda p: 0.5 * (1.0 - math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1.0 - math.sqrt(1.0 - p),
}


def _linear(e: float, n: float, o: Options) -> float:
    return (n - e) / n


def _cosine(e: float, n: float, o: Options) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * o["cycles"] * 2.0 * (e / n)))


def _one_minus_sqrt(e: float, n: float, o: Options) -> float:
    return 1.0 - math.sqrt(e / n)


def _polynomial(e: float, n: float, o: Options) -> float:
    return _linear(e, n, o) ** o["power"]


def _one_minus_progress(e: float, n: float, o: Options) -> float:
    return 1.0 - e / n


#: Decay shapes :math:`g(e, n)`: from 1 at :math:`e = 0` down to 0 at :math:`e = n` (``cosine``
#: with ``cycles`` other than 0.5 ends elsewhere).
DECAY_SHAPES: dict[str, Callable[[float, float, Options], float]] = {
    "linear": _linear,
    "cosine": _cosine,
    "1-sqrt": _one_minus_sqrt,
    "polynomial": _polynomial,
}

#: The decay shapes warmup-stable-decay offers (``decay_shape=``). Its ``linear`` is the same
#: line as :data:`DECAY_SHAPES`' rounded as ``1 - e/n``, which is how ``transformers``' WSD
#: computes it (its ``linear`` schedule computes ``(n - e)/n``; the two differ in the last bit).
WSD_SHAPES: dict[str, Callable[[float, float, Options], float]] = {
    "linear": _one_minus_progress,
    "cosine": _cosine,
    "1-sqrt": _one_minus_sqrt,
}

#: What a decay does after ``total_steps``: hold its floor, or keep following its formula.
PAST_END = ("floor", "continue")

#: Composition options and the values at which they change nothing; a scheduler's ``options``
#: leave them out at these values (so its repr and ``state_dict`` stay those of the shape).
NEUTRAL: dict[str, Any] = {
    "warmup_start": None,
    "warmup_shape": "linear",
    "offset": 0,
    "cycles": 0.5,
    "past_end": "floor",
}


def compact(options: Options) -> dict[str, Any]:
    """``options`` without the composition options that are at their :data:`NEUTRAL` values."""
    return {k: v for k, v in options.items() if not (k in NEUTRAL and v == NEUTRAL[k])}


@dataclass(frozen=True)
class Phase:
    """What follows the warmup: ``kind`` is ``hold``, ``decay``, ``restarts`` or ``inverse_sqrt``.

    For ``decay``, ``shape`` names a :data:`DECAY_SHAPES` entry, or is None when the
    ``decay_shape`` option chooses one of :data:`WSD_SHAPES`. ``warmup_from_floor``: the warmup
    starts at the floor rather than at 0 when ``warmup_start`` is not given (warmup-stable-decay,
    as in ``transformers``).
    """

    kind: str
    shape: str | None = None
    warmup_from_floor: bool = False


def _floor(o: Options) -> float:
    return float(o.get("min_factor", o.get("end_factor", 0.0)))


def evaluate(phase: Phase, step: int, o: Options) -> float:
    r""":math:`\mu(t)` at ``step`` for options ``o`` checked by :func:`check` (absent ones :data:`NEUTRAL`)."""
    o = {**NEUTRAL, **o}
    u = step + o["offset"]
    w = o.get("warmup_steps", 0)
    if u < w:
        start = o["warmup_start"]
        if start is None:
            start = _floor(o) if phase.warmup_from_floor else 0.0
        return WARMUP_SHAPES[o["warmup_shape"]](u / w) * (1.0 - start) + start
    if phase.kind == "hold":
        return 1.0
    if phase.kind == "inverse_sqrt":
        tau = o["timescale"] if o.get("timescale") is not None else (w or 10_000)
        return 1.0 / math.sqrt((u + (tau - w)) / tau)
    if phase.kind == "restarts":
        return _restarts(u, w, o)
    return _decay(DECAY_SHAPES[phase.shape] if phase.shape else WSD_SHAPES[o["decay_shape"]], u, o)


def _decay(g: Callable[[float, float, Options], float], u: int, o: Options) -> float:
    total, floor = o["total_steps"], _floor(o)
    span = o.get("decay_steps")
    if span is None:
        span = total - o.get("warmup_steps", 0)
    elapsed = u - (total - span)
    if elapsed < 0:
        return 1.0  # the stable phase
    if o["past_end"] == "floor":
        return floor if elapsed >= span else g(elapsed, span, o) * (1.0 - floor) + floor
    return max(0.0, g(elapsed, max(1, span), o) * (1.0 - floor) + floor)


def _restarts(u: int, w: int, o: Options) -> float:
    floor, total = _floor(o), o.get("total_steps")
    if total is not None and u >= total:
        return floor
    elapsed, length, mult = float(u - w), o["cycle_steps"], o.get("cycle_mult", 1.0)
    if mult == 1.0:
        elapsed = math.fmod(elapsed, length)
    else:
        while elapsed >= length:  # cycles grow geometrically: O(log) iterations
            elapsed -= length
            length *= mult
    return _cosine(elapsed, length, {"cycles": 0.5}) * (1.0 - floor) + floor


# ---- validation: the one place -----------------------------------------------------------------


def _steps(name: str, value: Any, *, positive: bool = False) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number of optimizer steps, got {value!r}") from None
    if n < (1 if positive else 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} (optimizer steps), got {n}")
    return n


def _number(name: str, value: Any, ok: Callable[[float], bool], what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def _fraction(name: str, value: Any) -> float:
    return _number(name, value, lambda x: 0.0 <= x <= 1.0, "a number in [0, 1] (a fraction of the initial value)")


def _choice(name: str, value: Any, choices: tuple[str, ...] | Mapping[str, Any]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return str(value)


# option -> how to check and normalize it (None is allowed where the option's default is None)
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "warmup_steps": _steps,
    "decay_steps": _steps,
    "offset": _steps,
    "total_steps": lambda k, v: None if v is None else _steps(k, v, positive=True),
    "timescale": lambda k, v: None if v is None else _steps(k, v, positive=True),
    "end_factor": _fraction,
    "min_factor": _fraction,
    "warmup_start": lambda k, v: None if v is None else _fraction(k, v),
    "warmup_shape": lambda k, v: _choice(k, v, WARMUP_SHAPES),
    "decay_shape": lambda k, v: _choice(k, v, WSD_SHAPES),
    "past_end": lambda k, v: _choice(k, v, PAST_END),
    "cycles": lambda k, v: _number(
        k, v, lambda x: 0 <= x < math.inf, "a finite number >= 0 (cosine waves over the decay; 0.5 = half a cosine)"
    ),
    "cycle_steps": lambda k, v: _number(
        k, v, lambda x: 0 < x < math.inf, "> 0 (the length of the first cosine cycle, in steps)"
    ),
    "cycle_mult": lambda k, v: _number(k, v, lambda x: 1 <= x < math.inf, ">= 1 (the growth of each cycle's length)"),
    "power": lambda k, v: _number(k, v, lambda x: 0 < x < math.inf, "a positive number"),
}


def check(options: Options) -> dict[str, Any]:
    """Each option checked and normalized (ints and floats), then the checks across options.

    Raises ``ValueError`` saying what is wrong and how to fix it.
    """
    out = {k: _CHECKS[k](k, v) if k in _CHECKS else v for k, v in options.items()}
    warmup, total, decay = out.get("warmup_steps", 0), out.get("total_steps"), out.get("decay_steps")
    if total is not None and warmup > total:
        raise ValueError(
            f"warmup_steps={warmup} is longer than total_steps={total}; warmup is counted inside "
            f"total_steps, so lower warmup_steps or raise total_steps"
        )
    if total is not None and decay is not None and warmup + decay > total:
        raise ValueError(
            f"warmup_steps + decay_steps = {warmup} + {decay} exceeds total_steps={total}; "
            f"the stable phase (total - warmup - decay) cannot be negative"
        )
    return out
