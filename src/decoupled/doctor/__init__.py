"""Checks of a training setup for weight-decay mistakes: :func:`decoupled.check` and ``decoupled doctor``.

* :mod:`~decoupled.doctor.findings`: :class:`Finding`, its severities, the printed tables;
* :mod:`~decoupled.doctor.checks`: :func:`check` (which convention, which parameters decay,
  warmup) and :func:`timescales`;
* :mod:`~decoupled.doctor.decay`: how strong each group's decay is (its timescale next to the
  run, and what bf16 rounding loses), in numbers;
* :mod:`~decoupled.doctor.cli`: the ``decoupled doctor`` command.

The Hugging Face half, ``DoctorCallback`` and ``check_training_args``, lives in
:mod:`decoupled.integrations.hf` (it needs transformers, and uses this package: it is not
re-exported here, so the two never import each other).
"""

from __future__ import annotations

from .checks import check, timescales
from .decay import GroupTimescale, format_timescales
from .findings import SEVERITIES, Finding, format_findings

__all__ = [
    "check",
    "timescales",
    "Finding",
    "GroupTimescale",
    "SEVERITIES",
    "format_findings",
    "format_timescales",
]
