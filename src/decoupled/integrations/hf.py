"""Hugging Face ``Trainer`` integration: ``decoupled.AdamW`` with :func:`decoupled.param_groups` and
:mod:`decoupled.schedules`, built from a model and its ``TrainingArguments``.

Two ways in (``docs/integrations.md`` has both in full)::

    # 1. one call, our grouping and schedules
    optimizer, scheduler = create_optimizer_and_scheduler(model, args)
    trainer = Trainer(model=model, args=args, optimizers=(optimizer, scheduler), ...)

    # 2. Trainer's own grouping and scheduler, our optimizer
    trainer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args), ...)

With the same parameter groups, both give the same numbers as Trainer's default
``adamw_torch_fused`` (``tests/test_hf_trainer.py`` trains a small model both ways and
compares the loss curves).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "decoupled.integrations.hf needs transformers; install the extra: pip install 'decoupled[hf]'"
    ) from err

from .. import schedules
from ..groups import Rule, param_groups
from ..optim import AdamW
from .hf_schedules import get_scheduler

__all__ = [
    "create_optimizer_and_scheduler",
    "optimizer_cls_and_kwargs",
    "get_scheduler",
    "optimizer_kwargs",
    "WeightDecayScheduleCallback",
]

_ADAMW_NAMES = ("adamw_torch", "adamw_torch_fused")


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))  # SchedulerType / OptimizerNames enums or str


def optimizer_kwargs(args: Any) -> dict[str, Any]:
    """``lr``, ``betas`` and ``eps`` from ``TrainingArguments`` (what Trainer passes to AdamW)."""
    return {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}


def optimizer_cls_and_kwargs(args: Any, **options: Any) -> tuple[type[AdamW], dict[str, Any]]:
    """``(decoupled.AdamW, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``.

    Trainer then groups the parameters itself (``weight_decay=args.weight_decay`` for all but
    biases and LayerNorm/RMSNorm-named parameters, which get 0) and builds its own lr
    scheduler from ``args``; only the optimizer is ours. ``options`` are extra AdamW keywords
    (``lr_independent_decay=True``, ``foreach=False``, ...).
    """
    _warn_if_not_adamw(args)
    return AdamW, {**optimizer_kwargs(args), **options}


def create_optimizer_and_scheduler(
    model: nn.Module,
    args: Any,
    num_training_steps: int | None = None,
    *,
    decay_embeddings: bool = True,
    no_decay: Iterable[Rule] = (),
    decay: Iterable[Rule] = (),
    verbose: bool = False,
    **options: Any,
) -> tuple[AdamW, schedules.ScheduleBase]:
    """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``, from ``model`` and its ``TrainingArguments``.

    The optimizer is :class:`decoupled.AdamW` over :func:`decoupled.param_groups` (decay
    ``args.weight_decay`` on weight matrices; none on biases, norms, and embeddings if
    ``decay_embeddings=False``), with ``args.learning_rate``, ``(args.adam_beta1,
    args.adam_beta2)`` and ``args.adam_epsilon``. The scheduler is the
    :mod:`decoupled.schedules` equivalent of ``args.lr_scheduler_type`` with
    ``args.lr_scheduler_kwargs`` and ``args.get_warmup_steps(num_training_steps)`` warmup steps
    (``warmup_steps`` < 1 is a fraction of the run, as in Trainer).

    Args:
        model: the model Trainer will train (build the optimizer before ``Trainer(...)``).
        args: its ``transformers.TrainingArguments``.
        num_training_steps: optimizer steps in the run; by default ``args.max_steps``. With
            epochs instead, pass ``ceil(len(train_dataloader) / gradient_accumulation_steps)
            * num_train_epochs``.
        decay_embeddings, no_decay, decay, verbose: as in :func:`decoupled.param_groups`.
        **options: extra :class:`decoupled.AdamW` keywords (``lr_independent_decay=True``,
            ``foreach=False``, ...). The backend is otherwise chosen automatically (the fused
            kernel on CPU and CUDA, as Trainer's default ``adamw_torch_fused``).

    Raises:
        ValueError: the number of steps is unknown, or the scheduler type has no equivalent.
    """
    _warn_if_not_adamw(args)
    if num_training_steps is None:
        if getattr(args, "max_steps", -1) is None or args.max_steps <= 0:
            raise ValueError(
                "num_training_steps is needed: set TrainingArguments(max_steps=...) or pass "
                "num_training_steps=ceil(len(train_dataloader) / gradient_accumulation_steps) * num_train_epochs"
            )
        num_training_steps = args.max_steps
    groups = param_groups(
        model, args.weight_decay, decay_embeddings=decay_embeddings, no_decay=no_decay, decay=decay, verbose=verbose
    )
    optimizer = AdamW(groups, **{**optimizer_kwargs(args), "weight_decay": args.weight_decay, **options})
    scheduler = get_scheduler(
        _name(args.lr_scheduler_type),
        optimizer,
        num_warmup_steps=args.get_warmup_steps(num_training_steps),
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    return optimizer, scheduler


def _warn_if_not_adamw(args: Any) -> None:
    optim = _name(getattr(args, "optim", "adamw_torch"))
    if optim not in _ADAMW_NAMES:
        warnings.warn(f"TrainingArguments(optim={optim!r}) is ignored: this builds decoupled.AdamW", stacklevel=3)


class WeightDecayScheduleCallback(TrainerCallback):
    """Steps a :class:`decoupled.schedules.WeightDecaySchedule` once per optimizer step of a Trainer.

    ``Trainer(..., callbacks=[WeightDecayScheduleCallback(schedule)])``. When training resumes
    from a checkpoint the schedule is moved to the checkpoint's step, so the weight decay
    continues on its curve.
    """

    def __init__(self, schedule: schedules.WeightDecaySchedule) -> None:
        self.schedule = schedule

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step != self.schedule.last_step:
            self.schedule.last_step = state.global_step - 1
            self.schedule.step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.schedule.step()
