"""``TrainingArguments`` as data (a dict from a JSON file): which keys the installed transformers has, their
defaults, the param groups ``Trainer`` builds from them, and the run's length. Used by ``doctor``'s checks
of a ``TrainingArguments`` file (:func:`decoupled.integrations.hf.check_training_args`)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import transformers
from torch import nn

__all__ = [
    "HF_ADAMW",
    "training_args_fields",
    "training_arg",
    "validate_training_args",
    "training_args_total_steps",
    "trainer_param_groups",
    "enum_value",
    "nearest",
]


def enum_value(value: Any) -> str:
    """The name in a transformers enum (``SchedulerType``, ``OptimizerNames``) or a str."""
    return str(getattr(value, "value", value))


def nearest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


HF_ADAMW = frozenset(
    "adamw_torch adamw_torch_fused adamw_hf adamw_apex_fused adamw_torch_xla adamw_torch_npu_fused "
    "adamw_bnb_8bit adamw_8bit paged_adamw_32bit paged_adamw_8bit".split()
)
"""``TrainingArguments.optim`` values that are AdamW with PyTorch's decay (lr * weight_decay per step)."""


def training_args_fields() -> dict[str, dataclasses.Field]:
    """The installed ``TrainingArguments``' fields that its constructor takes, by name."""
    return {f.name: f for f in dataclasses.fields(transformers.TrainingArguments) if f.init}


def training_arg(args: Mapping[str, Any], name: str) -> Any:
    """``args[name]``, or the installed ``TrainingArguments``' default."""
    if name in args:
        return args[name]
    f = training_args_fields().get(name)
    return None if f is None or f.default is dataclasses.MISSING else f.default


def validate_training_args(args: Mapping[str, Any]) -> None:
    """ValueError for a key that the installed ``transformers.TrainingArguments`` does not have (naming the
    nearest valid one), an ``optim`` or ``lr_scheduler_type`` it does not know, or a number out of range."""
    if not isinstance(args, Mapping):
        raise ValueError(f"expected TrainingArguments as a mapping of names to values, got {type(args).__name__}")
    fields = training_args_fields()
    for key in set(args) - set(fields) - {"warmup_ratio"}:  # transformers 4.x's warmup_ratio: reported as a finding
        raise ValueError(
            f"unknown TrainingArguments key {key!r} for transformers {transformers.__version__}{nearest(key, fields)}"
        )
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, enum in (("optim", OptimizerNames), ("lr_scheduler_type", SchedulerType)):
        if key in args:
            names = [e.value for e in enum]
            if enum_value(args[key]) not in names:
                raise ValueError(f"unknown {key} {args[key]!r}{nearest(str(args[key]), names)}")
    for key in ("learning_rate", "weight_decay", "warmup_steps", "num_train_epochs", "warmup_ratio"):
        x = args.get(key, 0.0)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {x!r}")
    steps = args.get("max_steps", -1)
    if isinstance(steps, bool) or not isinstance(steps, int) or (steps < 1 and steps != -1):
        raise ValueError(f"max_steps must be a whole number >= 1 (or -1 to train by epochs), got {steps!r}")


def training_args_total_steps(
    args: Mapping[str, Any], steps_per_epoch: float | None = None, total_steps: int | None = None
) -> int | None:
    """Optimizer steps in the run: ``total_steps`` if given, else ``max_steps``, else
    ``ceil(num_train_epochs * steps_per_epoch)`` as Trainer counts it; None when unknown."""
    if total_steps:
        return total_steps
    max_steps = int(training_arg(args, "max_steps") or -1)
    if max_steps > 0:
        return max_steps
    return math.ceil(float(training_arg(args, "num_train_epochs")) * steps_per_epoch) if steps_per_epoch else None


def trainer_param_groups(args: Mapping[str, Any], model: nn.Module | None = None) -> list[dict[str, Any]]:
    """The param groups ``Trainer`` builds from ``args`` (its name-based decay/no-decay split, with ``lr``);
    without a model, one group with no parameters that stands for the decayed weights."""
    lr, wd = float(training_arg(args, "learning_rate")), float(training_arg(args, "weight_decay"))
    if model is None:
        return [{"params": [], "lr": lr, "weight_decay": wd}]
    decay_names = set(transformers.Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay_names], "lr": lr, "weight_decay": wd},
        {"params": [p for n, p in named if n not in decay_names], "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
