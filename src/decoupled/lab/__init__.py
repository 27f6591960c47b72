"""Experiments that make decoupled weight decay visible (``decoupled compare``, ``decoupled explain``).

Needs the ``lab`` extra (numpy, scikit-learn, matplotlib, rich). Public pieces:

* :func:`compare`: one model under several weight-decay conventions over an lr x wd grid, the
  findings (does the best wd move with lr? with an interval) and an HTML report.
* :func:`explain`: what each convention (Adam + L2, AdamW, ...) really did to each parameter.
* :class:`Task`, :class:`Splits`, :func:`register_task`, :func:`load_task`: plug in your own
  model and data (see :mod:`decoupled.lab.tasks`).
"""

from __future__ import annotations

from typing import Any

from ..conventions import CONVENTIONS
from .tasks import Splits, Task, load_task, register_task

__all__ = ["compare", "explain", "Task", "Splits", "CONVENTIONS", "load_task", "register_task"]


def compare(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`decoupled.lab.compare.compare`."""
    from .compare import compare as _compare

    return _compare(*args, **kwargs)


def explain(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`decoupled.lab.explain.explain`."""
    from .explain import explain as _explain

    return _explain(*args, **kwargs)
