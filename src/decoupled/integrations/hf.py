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

import dataclasses
import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

try:
    import transformers
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "decoupled.integrations.hf needs transformers; install the extra: pip install 'decoupled[hf]'"
    ) from err

from .. import conventions, conversions, group_conventions, schedules
from ..conventions import Convention, Scaling
from ..doctor import SEVERITIES, Finding, check, format_findings, format_timescales, timescales
from ..doctor.decay import TARGET_TAU_FRACTION, group_timescale, timescale_findings
from ..doctor.findings import sort_findings
from ..groups import Rule, param_groups
from ..optim import AdamW
from .hf_args import (
    HF_ADAMW,
    enum_value,
    trainer_param_groups,
    training_arg,
    training_args_fields,
    training_args_total_steps,
    validate_training_args,
)
from .hf_schedules import get_scheduler

__all__ = [
    "create_optimizer_and_scheduler", "optimizer_cls_and_kwargs", "get_scheduler", "optimizer_kwargs",
    "WeightDecayScheduleCallback", "DoctorCallback", "check_training_args", "validate_training_args",
    "trainer_param_groups", "training_args_total_steps",
]  # fmt: skip

logger = logging.getLogger(__name__)

_ADAMW_NAMES = ("adamw_torch", "adamw_torch_fused")


_name = enum_value


def optimizer_kwargs(args: Any) -> dict[str, Any]:
    """``lr``, ``betas`` and ``eps`` from ``TrainingArguments`` (what Trainer passes to AdamW)."""
    return {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}


def optimizer_cls_and_kwargs(args: Any, **options: Any) -> tuple[type[AdamW], dict[str, Any]]:
    """``(decoupled.AdamW, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``.

    Trainer then groups the parameters itself (``weight_decay=args.weight_decay`` for all but
    biases and LayerNorm/RMSNorm-named parameters, which get 0) and builds its own lr
    scheduler from ``args``; only the optimizer is ours. ``options`` are extra AdamW keywords
    (``lr_independent_decay=True``, ``foreach=False``, ...).

    Trainer's groups carry ``args.weight_decay`` unchanged, so with lr-independent decay it is
    read as the fraction removed per step at peak lr (0.1 = 10% of every weight per step), not in
    PyTorch's form: a warning states that decay (and so for corrected decay with an ``lr_max`` other
    than the peak lr). :func:`create_optimizer_and_scheduler` converts it.
    """
    _warn_if_not_adamw(args)
    convention = conventions.of_group(options)
    wd, lr = float(args.weight_decay), float(args.learning_rate)
    per_step = convention.decay_per_step(wd, lr, options.get("lr_max") or lr)
    if per_step and not math.isclose(per_step, lr * wd, rel_tol=1e-12):
        torch_form = conversions.weight_decay_for_timescale(1 / (lr * wd), lr, convention, lr_max=options.get("lr_max"))
        warnings.warn(
            f"Trainer puts TrainingArguments.weight_decay={wd:g} in its groups as it is: with {convention.key} decay "
            f"that removes {per_step:.3g} of every decayed weight per step at peak lr (timescale "
            f"{1 / per_step:,.0f} steps). If {wd:g} is PyTorch's form, set TrainingArguments(weight_decay="
            f"{torch_form:.3g}), or use create_optimizer_and_scheduler, which converts it",
            stacklevel=2,
        )
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
    tau: float | None = None,
    tau_fraction: float | None = None,
    convention: str | None = None,
    output_layer: str | Iterable[str] | None = None,
    **options: Any,
) -> tuple[AdamW, schedules.ScheduleBase]:
    r"""``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``, from ``model`` and its ``TrainingArguments``.

    The optimizer is :class:`decoupled.AdamW` over :func:`decoupled.param_groups` (decay on weight
    matrices; none on biases, norms, and embeddings if ``decay_embeddings=False``), with
    ``args.learning_rate``, ``(args.adam_beta1, args.adam_beta2)`` and ``args.adam_epsilon``. The
    scheduler is the :mod:`decoupled.schedules` equivalent of ``args.lr_scheduler_type`` with
    ``args.lr_scheduler_kwargs`` and ``args.get_warmup_steps(num_training_steps)`` warmup steps
    (``warmup_steps`` < 1 is a fraction of the run, as in Trainer).

    **The convention.** AdamW keywords in ``options`` (``decay_scaling="independent"`` or
    ``"corrected"``, ``cautious_decay=True``, ``lr_max=``) apply to every group, as in
    :class:`decoupled.AdamW`. ``convention=`` (a :mod:`decoupled.conventions` key) is passed to
    :func:`decoupled.param_groups` instead, whose groups then carry it (with ``lr_max``, if given, where
    the decay follows it); ``"adamw_corrected"`` is AdamC's grouping, corrected decay on the linear
    layers but the output layer (``output_layer=``).

    **The weight decay.** ``args.weight_decay`` is in PyTorch's form, as Trainer reads it: the
    decayed group loses :math:`\gamma\lambda` of each weight per step at peak lr :math:`\gamma`. Each
    decayed group gets the weight decay that removes the same per step at peak lr under its own
    convention (the same timescale :math:`\tau = 1/(\gamma\lambda)`): lr-independent decay
    :math:`\gamma_{max}\lambda`; corrected decay :math:`\lambda\gamma_{max}/\gamma`, i.e. unchanged
    with the default ``lr_max`` (its decay then equals PyTorch's at peak lr and falls as
    :math:`\gamma_t^2` after); cautious decay unchanged. A changed value comes with a warning that
    says so. Or give the timescale, ``tau`` steps or ``tau_fraction`` of the run, with
    ``args.weight_decay=0``, and each group gets its convention's value for it
    (:func:`decoupled.conversions.weight_decay_for_timescale`; Wang & Aitchison 2025,
    arXiv:2405.13698). Each group's decision is logged at INFO on this module's logger.

    Args:
        model: the model Trainer will train (build the optimizer before ``Trainer(...)``).
        args: its ``transformers.TrainingArguments``.
        num_training_steps: optimizer steps in the run; by default ``args.max_steps``. With
            epochs instead, pass ``ceil(len(train_dataloader) / gradient_accumulation_steps)
            * num_train_epochs``.
        decay_embeddings, no_decay, decay, verbose, convention, output_layer: as in
            :func:`decoupled.param_groups`.
        tau, tau_fraction: the decay timescale, in steps or as a fraction of the run, instead of
            ``args.weight_decay``.
        **options: extra :class:`decoupled.AdamW` keywords (``decay_scaling="corrected"``,
            ``cautious_decay=True``, ``foreach=False``, ...). The backend is otherwise chosen
            automatically (the fused kernel on CPU and CUDA, as Trainer's default
            ``adamw_torch_fused``, where the convention allows).

    Raises:
        ValueError: the number of steps is unknown, the scheduler type has no equivalent, both
            ``tau`` and a nonzero ``args.weight_decay`` are given, or both ``convention`` and
            convention keywords in ``options``.
    """
    _warn_if_not_adamw(args)
    if num_training_steps is None:
        if getattr(args, "max_steps", -1) is None or args.max_steps <= 0:
            raise ValueError(
                "num_training_steps is needed: set TrainingArguments(max_steps=...) or pass "
                "num_training_steps=ceil(len(train_dataloader) / gradient_accumulation_steps) * num_train_epochs"
            )
        num_training_steps = args.max_steps
    clash = sorted({"decay_scaling", "cautious_decay", "lr_independent_decay"} & set(options))
    if convention is not None and clash:
        raise ValueError(
            f"convention={convention!r} and {clash} both choose the weight-decay convention: pass convention= (the "
            f"groups carry it) or the AdamW keywords (every group follows them), not both"
        )
    lr, wd = float(args.learning_rate), float(args.weight_decay)
    chosen = group_conventions.convention_of(convention) or conventions.of_group(options)
    from_torch_form = tau is None and tau_fraction is None and wd != 0 and not chosen.coupled
    timescale: dict[str, Any] = {}
    if tau is not None or tau_fraction is not None:
        if wd != 0:
            raise ValueError(
                f"tau/tau_fraction set the weight decay, and TrainingArguments(weight_decay={wd:g}) would be ignored: "
                f"set weight_decay=0.0, or leave out tau"
            )
        total = num_training_steps if tau_fraction is not None else None
        timescale = {"tau": tau, "tau_fraction": tau_fraction, "total_steps": total}
    elif from_torch_form:
        timescale = {"tau": conversions.timescale_steps(lr, wd)}  # PyTorch's form, as the timescale it stands for
    common: dict[str, Any] = dict(
        output_layer=output_layer, decay_embeddings=decay_embeddings, no_decay=no_decay, decay=decay, verbose=verbose
    )
    if convention is not None:  # the groups carry it; each gets its own convention's value for the timescale
        with_groups: dict[str, Any] = {"lr": lr, **timescale} if timescale else {}
        if "lr_max" in options:
            with_groups["lr_max"] = options.pop("lr_max")
        groups = param_groups(model, None if timescale else wd, convention=convention, **with_groups, **common)
    else:  # the optimizer's keywords decide: one decayed group, with their convention's value
        weight_decay = wd
        if timescale:
            weight_decay = conversions.weight_decay_for_timescale(
                timescale["tau"], lr, chosen, tau_fraction=timescale.get("tau_fraction"),
                total_steps=timescale.get("total_steps"), lr_max=options.get("lr_max"),
            )  # fmt: skip
        groups = param_groups(model, weight_decay, **common)
    decayed = [(i, g) for i, g in enumerate(groups) if g["weight_decay"] > 0]
    for i, g in decayed:
        if from_torch_form and math.isclose(g["weight_decay"], wd, rel_tol=1e-12):
            g["weight_decay"] = wd  # the same number, not its round trip through the timescale
        _explain(args, i, g, options, num_training_steps, converted=from_torch_form and g["weight_decay"] != wd)
    if not decayed:
        logger.info("decoupled.AdamW: no weight decay (weight_decay=0 in every param group)")
    wd = decayed[0][1]["weight_decay"] if decayed else 0.0
    optimizer = AdamW(groups, **{**optimizer_kwargs(args), "weight_decay": wd, **options})
    scheduler = get_scheduler(
        _name(args.lr_scheduler_type),
        optimizer,
        num_warmup_steps=args.get_warmup_steps(num_training_steps),
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    return optimizer, scheduler


def _explain(
    args: Any, index: int, group: dict[str, Any], options: dict[str, Any], total_steps: int, converted: bool
) -> None:
    """Log a decayed group's decision at INFO; warn when ``args.weight_decay`` was ``converted`` to another number."""
    convention: Convention = conventions.of_group({**options, **group})
    lr, wd, out = float(args.learning_rate), float(args.weight_decay), group["weight_decay"]
    lr_max = None if convention.scaling is Scaling.LR else group.get("lr_max", options.get("lr_max"))
    if converted:
        warnings.warn(
            f"TrainingArguments.weight_decay={wd:g} is PyTorch's form (lr * weight_decay = {lr * wd:.3g} of each "
            f"weight per step at peak lr {lr:g}); converted to weight_decay={out:.6g} for {convention.key} decay, "
            f"which removes the same {lr * wd:.3g} per step at peak lr (timescale {1 / (lr * wd):,.0f} steps) in "
            f"param group {index}",
            stacklevel=3,
        )
    per_step = convention.decay_per_step(out, lr, lr_max or lr) or 0.0
    logger.info(
        "decoupled.AdamW, param group %d (%d tensors), %s convention: weight_decay=%.6g removes %.3g of each decayed "
        "weight per step at peak lr %g%s (timescale %s steps, run %d steps)",
        *(index, len(group["params"]), convention.key, out, per_step, lr),
        *(" on the coordinates it decays" if convention.cautious else "",
          f"{1 / per_step:,.0f}" if per_step else "inf", total_steps),
    )  # fmt: skip


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


# ---- doctor: the Trainer callback and TrainingArguments checks ----------------------------------------


class DoctorCallback(TrainerCallback):
    """Runs :func:`decoupled.check` when a ``Trainer`` starts training and prints the findings and each
    param group's decay timescale next to the run.

    ``trainer = Trainer(..., callbacks=[DoctorCallback()])``. The findings are kept in
    ``self.findings``; ``raise_on="error"`` stops training on findings of that severity or worse.
    Other keywords go to :func:`decoupled.check`.
    """

    def __init__(self, raise_on: str | None = None, **check_options: Any) -> None:
        if raise_on is not None and raise_on not in SEVERITIES:
            raise ValueError(f"raise_on must be one of {SEVERITIES} or None, got {raise_on!r}")
        self.raise_on = raise_on
        self.check_options = check_options
        self.findings: list[Finding] = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if optimizer is None:
            return
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        total = state.max_steps if getattr(state, "max_steps", 0) else None
        epochs = getattr(state, "num_train_epochs", 0) or getattr(args, "num_train_epochs", 0)
        spe = total / epochs if total and epochs else None
        self.findings = check(inner, model, lr_scheduler, total_steps=total, steps_per_epoch=spe, **self.check_options)
        if getattr(state, "is_world_process_zero", True):
            print(format_findings(self.findings))
            print(format_timescales(timescales(inner, lr_scheduler, total_steps=total), spe))
        if self.raise_on is not None:
            cut = SEVERITIES.index(self.raise_on)
            bad = [f for f in self.findings if SEVERITIES.index(f.severity) <= cut]
            if bad:
                raise RuntimeError(
                    f"decoupled doctor: {len(bad)} finding(s) of severity {self.raise_on} or worse; "
                    f"first: {bad[0].code}: {bad[0].what}"
                )


_TRAINER_SPLIT_FIX = (
    "Build the optimizer with decoupled.integrations.hf.create_optimizer_and_scheduler(model, args) and pass "
    "Trainer(optimizers=(optimizer, scheduler)): its decoupled.param_groups split keeps biases and norms (found by "
    "structure, not by name) out of decay."
)


def check_training_args(
    args: Mapping[str, Any],
    model: nn.Module | None = None,
    *,
    steps_per_epoch: float | None = None,
    total_steps: int | None = None,
) -> list[Finding]:
    """Check a ``TrainingArguments`` (as a dict, e.g. loaded from its JSON) and optionally the model.

    The keys are checked first (:func:`validate_training_args`: a misspelled key is refused with
    the nearest valid name). With a model, builds the optimizer as ``Trainer`` would (its decay/no-decay
    split) and runs :func:`decoupled.check`; without one, checks what the arguments alone say
    (optimizer name, weight decay, warmup, decay timescale when the run length is known). Each
    finding's ``fix_args`` are ``TrainingArguments`` keywords that apply its fix on the installed
    transformers.
    """
    validate_training_args(args)
    optim = _name(training_arg(args, "optim")).lower()
    lr, wd = float(training_arg(args, "learning_rate")), float(training_arg(args, "weight_decay"))
    total = training_args_total_steps(args, steps_per_epoch, total_steps)
    found: list[Finding] = []
    if optim not in HF_ADAMW:
        found.append(
            Finding(
                "info",
                "not-adamw",
                f"optim={optim!r} is not an AdamW variant; only the generic checks apply.",
                "TrainingArguments.optim",
                "Nothing to do if this is intended.",
            )
        )
    elif wd == 0:
        target = (
            conversions.weight_decay_for_timescale(tau_fraction=TARGET_TAU_FRACTION, total_steps=total, lr=lr)
            if total
            else 0.1
        )
        found.append(
            Finding(
                "warning",
                "adamw-no-decay",
                "weight_decay=0 (the TrainingArguments default): AdamW without decay is plain Adam.",
                "TrainingArguments.weight_decay",
                f"Set weight_decay={target:.3g}"
                + (
                    f" (a decay timescale of {TARGET_TAU_FRACTION:.0%} of the run)."
                    if total
                    else " (commonly 0.01-0.1)."
                ),
                {"weight_decay": float(f"{target:.3g}")},
            )
        )
    warm = float(training_arg(args, "warmup_steps") or 0)
    ratio = float(args.get("warmup_ratio", 0.0) or 0.0)  # transformers 4.x's warmup fraction
    if "warmup_ratio" in args and "warmup_ratio" not in training_args_fields():
        found.append(
            Finding(
                "warning",
                "warmup-ratio",
                f"warmup_ratio={args['warmup_ratio']!r} is transformers 4.x's: TrainingArguments of the installed "
                f"transformers {transformers.__version__} has no warmup_ratio and raises TypeError for it.",
                "TrainingArguments.warmup_ratio",
                "Drop warmup_ratio"
                + (f" and set warmup_steps={ratio!r} (a float below 1 is a fraction of the run)." if ratio else "."),
                {"warmup_ratio": None, **({"warmup_steps": ratio} if ratio and not warm else {})},
            )
        )
    scheduler = _name(training_arg(args, "lr_scheduler_type"))
    if warm == 0 and ratio == 0 and scheduler not in ("constant", "reduce_lr_on_plateau"):
        fix = {"warmup_ratio": 0.03} if "warmup_ratio" in training_args_fields() else {"warmup_steps": 0.03}
        found.append(
            Finding(
                "warning",
                "no-warmup",
                "No warmup (warmup_steps=0): the first Adam steps use the full lr while v is still built from a "
                "handful of gradients.",
                "TrainingArguments.warmup_steps",
                f"Set {', '.join(f'{k}={v}' for k, v in fix.items())} (warm up over the first 3% of the run).",
                fix,
            )
        )
    if model is not None and optim in HF_ADAMW:
        opt = torch.optim.AdamW(trainer_param_groups(args, model), lr=lr)
        for f in check(opt, model, total_steps=total, steps_per_epoch=steps_per_epoch, warmup_steps=1):
            if f.code in ("adamw-no-decay", "no-warmup"):
                continue
            if f.code.startswith("decay-") and f.code != "decay-timescale" and "precision" not in f.code:
                f = dataclasses.replace(f, fix=_TRAINER_SPLIT_FIX)
            found.append(_training_args_fix(f))
    elif wd > 0 and optim in HF_ADAMW:
        t = group_timescale(0, trainer_param_groups(args)[0], "adamw", None, total)
        found += [_training_args_fix(f) for f in timescale_findings(t, "TrainingArguments", steps_per_epoch)]
    return sort_findings(found)


def _training_args_fix(f: Finding) -> Finding:
    """A finding whose fix is a new weight decay, with it as ``TrainingArguments`` keywords."""
    if f.code == "decay-timescale" and "weight_decay" in f.fix_args:
        return dataclasses.replace(
            f,
            fix_args={"weight_decay": float(f"{f.fix_args['weight_decay']:.3g}")},
            where="TrainingArguments.weight_decay",
        )
    return f
