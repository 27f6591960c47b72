"""``decoupled doctor``: check a training setup built by your code, or a ``TrainingArguments`` JSON file.

::

    decoupled doctor mymodule:make_setup [--total-steps N] [--steps-per-epoch N] [--json]
    decoupled doctor path/to/setup.py:make_setup
    decoupled doctor --training-args args.json [--model mymodule:make_model] [--steps-per-epoch N]

A setup is a function that returns an optimizer, a tuple of an optimizer with at most one model
and one lr scheduler (in any order; ``None`` for an absent part), or a dict with the keys of
:data:`SETUP_KEYS`. Exit codes (:mod:`decoupled.cli.args`): 0 no error findings, 1 error
findings, 2 a mistake in the arguments or input files, 3 the setup's own code failed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..cli.args import UsageError, call_user, load_attr, positive_float, positive_int
from .checks import check, optimizer_kind, timescales
from .decay import GroupTimescale, format_timescales, group_timescale
from .findings import Finding, format_findings

SETUP_KEYS = ("optimizer", "model", "scheduler", "total_steps", "steps_per_epoch", "warmup_steps", "decay_embeddings")
"""What a setup's dict may hold (``optimizer`` is required)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "setup",
        nargs="?",
        help="'module:function' or 'file.py:function' returning an optimizer, "
        "(optimizer, model[, scheduler]) in any order, or a dict with those keys and total_steps/steps_per_epoch",
    )
    p.add_argument("--training-args", metavar="FILE.json", help="a Hugging Face TrainingArguments JSON file to check")
    p.add_argument("--model", metavar="SPEC", help="with --training-args: 'module:function' returning the model")
    p.add_argument("--total-steps", type=positive_int, help="optimizer steps in the run")
    p.add_argument("--steps-per-epoch", type=positive_float, help="optimizer steps per epoch")
    p.add_argument("--json", action="store_true", help="print the findings as JSON (a list of objects)")


def run(args: argparse.Namespace) -> int:
    if args.setup and args.training_args:
        raise UsageError("give a setup (module:function) or --training-args FILE.json, not both")
    if args.model and not args.training_args:
        raise UsageError("--model goes with --training-args; a setup returns its model itself")
    if args.training_args:
        findings, rows = _training_args(args)
    elif args.setup:
        findings, rows = _setup(args)
    else:
        raise UsageError("give a setup ('module:function' or 'path/to/setup.py:function') or --training-args FILE.json")
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        print(format_findings(findings))
        table = format_timescales(rows, args.steps_per_epoch)
        if table:
            print(table)
    return 1 if any(f.severity == "error" for f in findings) else 0


# ---- a setup built by the user's code ---------------------------------------------------------------


def _setup(args: argparse.Namespace) -> tuple[list[Finding], list[GroupTimescale]]:
    fn = load_attr(args.setup, what="setup")
    if not callable(fn):
        raise UsageError(f"the setup {args.setup!r} is a {type(fn).__name__}, not a function; name a function")
    setup = unpack(call_user(fn, what="setup"))
    if args.total_steps:
        setup["total_steps"] = args.total_steps
    if args.steps_per_epoch:
        setup["steps_per_epoch"] = args.steps_per_epoch
    optimizer = setup.pop("optimizer")
    try:
        optimizer_kind(optimizer)
    except TypeError as err:
        raise UsageError(f"the setup returned an optimizer doctor cannot check: {err}") from None
    model, scheduler = setup.pop("model", None), setup.pop("scheduler", None)
    findings = check(optimizer, model, scheduler, **setup)
    return findings, timescales(optimizer, scheduler, total_steps=setup.get("total_steps"))


def unpack(setup: Any) -> dict[str, Any]:
    """The parts of what a setup function returned, by name; UsageError saying what to return otherwise."""
    if isinstance(setup, torch.optim.Optimizer):
        return {"optimizer": setup}
    if isinstance(setup, dict):
        unknown = set(setup) - set(SETUP_KEYS)
        if unknown or "optimizer" not in setup:
            raise UsageError(
                f"the setup's dict needs 'optimizer' and may have {', '.join(repr(k) for k in SETUP_KEYS[1:])}; "
                f"got {sorted(setup)}"
            )
        _check_numbers(setup)
        return dict(setup)
    if isinstance(setup, (tuple, list)):  # told apart by type, so any order works
        found: dict[str, Any] = {}
        for item in setup:
            if item is None:  # (optimizer, model, None): no scheduler
                continue
            key = _role(item)
            if key is None or key in found:
                kinds = ", ".join(type(x).__name__ for x in setup)
                raise UsageError(
                    f"the setup returned ({kinds}); return an optimizer, with at most one model "
                    "(torch.nn.Module) and one lr scheduler, in any order, or a dict"
                )
            found[key] = item
        if "optimizer" not in found:
            raise UsageError("the setup returned no optimizer; return (optimizer, model[, scheduler])")
        return found
    raise UsageError(
        f"the setup returned {type(setup).__name__}; return an optimizer, a tuple "
        "(optimizer, model[, scheduler]) or a dict"
    )


_NUMBERS = {
    "total_steps": (lambda x: isinstance(x, int) and x >= 1, "a whole number >= 1"),
    "steps_per_epoch": (lambda x: isinstance(x, (int, float)) and math.isfinite(x) and x > 0, "a number > 0"),
    "warmup_steps": (lambda x: isinstance(x, int) and x >= 0, "a whole number >= 0"),
}


def _check_numbers(setup: dict[str, Any]) -> None:
    for key, (ok, need) in _NUMBERS.items():
        x = setup.get(key)
        if x is not None and (isinstance(x, bool) or not ok(x)):
            raise UsageError(f"the setup's {key} must be {need}, got {x!r}")


def _role(item: Any) -> str | None:
    """Which part of a training setup ``item`` is: optimizer, model or (lr) scheduler."""
    if isinstance(item, torch.optim.Optimizer):
        return "optimizer"
    if isinstance(item, torch.nn.Module):
        return "model"
    if hasattr(item, "get_last_lr"):  # torch's LRScheduler and schedulers shaped like it
        return "scheduler"
    return None


# ---- a TrainingArguments file --------------------------------------------------------------------


def _training_args(args: argparse.Namespace) -> tuple[list[Finding], list[GroupTimescale]]:
    try:
        from ..integrations import hf
    except ImportError as err:
        raise UsageError(str(err)) from None
    path = Path(args.training_args)
    targs = read_json(path)
    model = None
    if args.model:
        make = load_attr(args.model, what="model")
        if not callable(make):
            raise UsageError(f"the model {args.model!r} is a {type(make).__name__}, not a function; name a function")
        model = call_user(make, what="model")
        if not isinstance(model, torch.nn.Module):
            raise UsageError(
                f"the model function {args.model!r} returned {type(model).__name__}, not a torch.nn.Module"
            )
    try:
        findings = hf.check_training_args(
            targs, model, steps_per_epoch=args.steps_per_epoch, total_steps=args.total_steps
        )
        total = hf.training_args_total_steps(targs, args.steps_per_epoch, args.total_steps)
        groups = hf.trainer_param_groups(targs, model)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None
    return findings, [group_timescale(i, g, "adamw", None, total) for i, g in enumerate(groups)]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; UsageError naming the file (and line) otherwise."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object of TrainingArguments, got a JSON {type(data).__name__}")
    return data


__all__ = ["add_arguments", "run", "unpack", "read_json", "SETUP_KEYS"]
