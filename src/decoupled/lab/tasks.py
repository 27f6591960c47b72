r"""What ``decoupled compare`` and ``decoupled explain`` train: the :class:`Task` interface.

A task is a model, its data split three ways (train / validation / test), and a default grid.
The built-in tasks are registered by name (``digits``, ``charlm``); your own task is a
:class:`Task` subclass (or instance, or a function returning one) that ``compare`` loads from
``module:attr`` or ``path/to/file.py:attr``::

    # mytask.py
    import torch
    from decoupled.lab import Task, Splits

    class MyTask(Task):
        name = "mytask"
        epochs = 20
        batch_size = 128
        lrs = (1e-3, 3e-3, 1e-2)

        def data(self, seed):
            x, y = torch.randn(3000, 32), torch.randint(0, 4, (3000,))
            return Splits.from_tensors(x, y, seed=seed)   # 60 / 20 / 20 split

        def model(self):
            return torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(),
                                       torch.nn.Linear(128, 4))

    # $ decoupled compare --task mytask.py:MyTask

The training loop (:mod:`decoupled.lab.train`) calls ``model()`` under
``torch.manual_seed(seed)``, draws shuffled mini-batches of ``batch_size`` from the train split,
passes them through :meth:`Task.augment`, minimizes :meth:`Task.loss` (cross-entropy by default,
for outputs ``(N, C)`` or ``(N, T, C)`` against integer targets ``(N,)`` or ``(N, T)``), and
measures every split with :meth:`Task.evaluate` (``loss`` and ``error`` by default: mean
cross-entropy in nats and the fraction of wrong argmax predictions). Every metric is lower-is-better.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import schedules
from ..cli.args import call_user, load_attr, module_name_for
from ..conventions import Scaling
from ..conventions import get as get_convention

#: The conventions ``compare`` trains unless told otherwise (keys of :data:`CONVENTIONS`).
DEFAULT_CONVENTIONS: tuple[str, ...] = ("adam_l2", "adamw", "adamw_indep")


def units_of(convention: str) -> str:
    """The convention whose wd axis is in the same units as ``convention``'s.

    ``adam_l2``: the L2 coefficient. ``adamw`` (and the corrected and cautious conventions, whose
    decay at peak lr is also ``lr * wd``): PyTorch's weight_decay, per unit of lr.
    ``adamw_indep``: the fraction removed per step at peak lr.
    """
    conv = get_convention(convention)
    if conv.coupled:
        return "adam_l2"
    return "adamw_indep" if conv.scaling is Scaling.INDEPENDENT else "adamw"


@dataclass(frozen=True)
class Splits:
    """Inputs and targets of the three splits, as tensors (first dimension = examples)."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            pair = getattr(self, name)
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(torch.is_tensor(t) for t in pair)):
                raise TypeError(f"Splits.{name} must be a pair of tensors (inputs, targets)")
            x, y = pair
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(
                    f"Splits.{name}: inputs have {x.shape[0]} examples and targets {y.shape[0]}; "
                    f"they must match and be non-empty"
                )

    @classmethod
    def from_tensors(
        cls, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.2)
    ) -> Splits:
        """Shuffle ``(x, y)`` with ``seed`` and cut it into train / val / test.

        ``fractions`` are the train and validation shares; the test split gets the rest.
        """
        n = x.shape[0]
        f_train, f_val = fractions
        if not (0 < f_train and 0 < f_val and f_train + f_val < 1):
            raise ValueError(f"fractions must be two positive shares summing below 1, got {fractions}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        a, b = int(round(n * f_train)), int(round(n * (f_train + f_val)))
        take = lambda idx: (x[idx].contiguous(), y[idx].contiguous())  # noqa: E731
        return cls(train=take(perm[:a]), val=take(perm[a:b]), test=take(perm[b:]))

    def limit_train(self, n: int | None) -> Splits:
        """The same splits with only the first ``n`` training examples (for quick runs)."""
        if n is None or n >= self.train[0].shape[0]:
            return self
        if n < 1:
            raise ValueError(f"max_train must be >= 1, got {n}")
        return Splits(train=(self.train[0][:n], self.train[1][:n]), val=self.val, test=self.test)


class Task:
    r"""A model, its data and its default grid. Subclass it and override :meth:`data` and :meth:`model`.

    Class attributes (override as needed):
        name: short name used in reports and file names.
        description: one sentence for the report.
        epochs: passes over the training split.
        batch_size: examples per optimizer step.
        warmup_epochs: linear warmup length (epochs, may be fractional); the lr then follows a
            cosine from its peak to 0 at the last step (the schedule multiplier :math:`\eta_t`).
        lrs: the default learning-rate axis (peak lr).
        wds: default weight-decay axis per convention (keys of :data:`CONVENTIONS`), each in
            that convention's own units: the L2 coefficient for ``adam_l2``; PyTorch's
            ``weight_decay`` (fraction lr·wd removed per step) for ``adamw``; the fraction
            removed per step at peak lr for ``adamw_indep``.
        metric: the default metric to select cells with (a key of :meth:`evaluate`'s result).
            Every metric is lower-is-better.
        metric_labels: how reports name a metric, for keys that are not their own label
            (``{"bpc": "bits/char"}``); see :meth:`metric_label`.
    """

    name: str = "task"
    description: str = ""
    epochs: int = 10
    batch_size: int = 64
    warmup_epochs: float = 0.0
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
    wds: Mapping[str, tuple[float, ...]] = {
        "adam_l2": (1e-5, 1e-4, 1e-3, 1e-2),
        "adamw": (1e-3, 1e-2, 1e-1, 1.0),
        "adamw_indep": (1e-5, 1e-4, 1e-3, 1e-2),
    }
    metric: str = "error"
    metric_labels: Mapping[str, str] = {}

    # ---- what a task must provide ------------------------------------------------------------

    def data(self, seed: int) -> Splits:
        """The three splits. Called once per worker process; ``seed`` fixes the split."""
        raise NotImplementedError(f"{type(self).__name__} must define data(seed) -> Splits")

    def model(self) -> nn.Module:
        """A freshly initialized model (called under ``torch.manual_seed``)."""
        raise NotImplementedError(f"{type(self).__name__} must define model() -> torch.nn.Module")

    # ---- what a task may change --------------------------------------------------------------

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Transform a training batch (default: unchanged). Draw randomness from ``generator``."""
        return x

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a batch (default: cross-entropy over the last dimension)."""
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
        """Metrics of ``model`` on one split, all lower-is-better.

        Default: ``loss``, the mean cross-entropy per target (nats), and ``error``, the fraction
        of targets whose argmax prediction is wrong.
        """
        total_loss, wrong, count = 0.0, 0, 0
        for i in range(0, x.shape[0], batch_size):
            out = model(x[i : i + batch_size])
            logits = out.reshape(-1, out.shape[-1])
            target = y[i : i + batch_size].reshape(-1)
            total_loss += float(F.cross_entropy(logits.float(), target, reduction="sum"))
            wrong += int((logits.argmax(-1) != target).sum())
            count += target.numel()
        return {"loss": total_loss / count, "error": wrong / count}

    # ---- helpers -----------------------------------------------------------------------------

    def grid_wds(self, convention: str) -> tuple[float, ...]:
        """The default weight-decay axis of one convention: its entry in :attr:`wds`, else the axis of
        the convention with the same units (:func:`units_of`)."""
        for key in (convention, units_of(convention)):
            if key in self.wds:
                return tuple(self.wds[key])
        raise ValueError(f"task {self.name!r} has no default wd grid for convention {convention!r}")

    def metric_label(self, metric: str) -> str:
        """The name reports give ``metric`` (``"test " + label``): its entry in ``metric_labels``, else the key."""
        return self.metric_labels.get(metric, metric)

    def settings(self) -> dict[str, Any]:
        """The settings that define a run of this task (recorded with every result)."""
        return {
            "task": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "warmup_epochs": self.warmup_epochs,
        }


def lr_multiplier(step: int, total_steps: int, warmup_steps: int) -> float:
    r"""The schedule multiplier :math:`\eta_t \in [0, 1]` before optimizer step ``step`` (0-based).

    :class:`decoupled.schedules.CosineSchedule`'s: linear warmup over ``warmup_steps``
    (:math:`\eta = t/w`, so the first step has :math:`\eta = 0`, as in ``transformers``), then a
    cosine from 1 to 0 over the remaining steps: :math:`\eta = \tfrac12(1 + \cos(\pi\,(t-w)/(T-w)))`,
    and 0 from ``total_steps`` on. A warmup longer than the run (``--epochs`` below the task's
    ``warmup_epochs``) is cut at ``total_steps``.
    """
    warmup = min(warmup_steps, total_steps)
    return schedules.multiplier("cosine", step, total_steps=total_steps, warmup_steps=warmup)


# ---- the registry --------------------------------------------------------------------------------

#: Built-in tasks: name -> "module:attribute".
REGISTRY: dict[str, str] = {
    "digits": "decoupled.lab.digits:DigitsTask",
    "charlm": "decoupled.lab.charlm:CharLMTask",
    "nextchar": "decoupled.lab.nextchar:NextCharTask",
}


def register_task(name: str, target: str | type[Task] | Callable[[], Task]) -> None:
    """Make a task available by ``name`` (``target``: ``"module:attr"``, a Task class or a factory)."""
    if isinstance(target, str):
        REGISTRY[name] = target
    else:
        _EXTRA[name] = target


_EXTRA: dict[str, Any] = {}


def source_file(task: Task) -> Path | None:
    """The file a task's class was loaded from by ``'path/to/file.py:Attr'`` (None for an importable
    module): worker processes import it under the same module name before unpickling the task."""
    module = sys.modules.get(type(task).__module__)
    path = getattr(module, "__file__", None)
    if path is None or module_name_for(Path(path)) != type(task).__module__:
        return None
    return Path(path)


def load_task(spec: str | Task | type[Task] | Callable[[], Task]) -> Task:
    """A :class:`Task` from a registered name, ``module:attr``, ``file.py:attr``, a class or an instance."""
    obj: Any = spec
    if isinstance(spec, str):
        if spec in _EXTRA:
            obj = _EXTRA[spec]
        elif spec in REGISTRY or ":" in spec:
            obj = load_attr(REGISTRY.get(spec, spec), what="task")
        else:
            raise ValueError(
                f"unknown task {spec!r}: use a built-in name ({', '.join(sorted(REGISTRY))}), "
                f"'package.module:Attr' or 'path/to/file.py:Attr'"
            )
    if (isinstance(obj, type) and issubclass(obj, Task)) or (not isinstance(obj, Task) and callable(obj)):
        obj = call_user(obj, what="task")
    if not isinstance(obj, Task):
        raise TypeError(
            f"task {spec!r} resolved to {type(obj).__name__}, not a decoupled.lab.Task "
            f"(subclass Task and define data(seed) and model())"
        )
    return obj
