"""Experiments that make decoupled weight decay visible (``decoupled compare``, ``decoupled explain``).

Needs the ``lab`` extra (numpy, scikit-learn, matplotlib, rich). Public pieces:

* :func:`compare`: one model, three weight-decay conventions, an lr x wd grid, an HTML report.
* :func:`explain`: what Adam + L2 and AdamW really did to each parameter.
* :class:`Task`, :class:`Splits`, :func:`register_task`, :func:`load_task`: plug in your own
  model and data (see :mod:`decoupled.lab.tasks`).
"""

from __future__ import annotations

from typing import Any

from .tasks import CONVENTIONS, Splits, Task, load_task, register_task

__all__ = ["compare", "explain", "Task", "Splits", "CONVENTIONS", "load_task", "register_task"]


def compare(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`decoupled.lab.compare.compare`."""
    from .compare import compare as _compare

    return _compare(*args, **kwargs)


def explain(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`decoupled.lab.explain.explain`."""
    from .explain import explain as _explain

    return _explain(*args, **kwargs)
