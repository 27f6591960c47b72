"""Hyperparameters and flags: torch's rules and torch's words, then the form the step uses.

The rule (issue 10) for what a user passes to :class:`decoupled.AdamW` / :class:`decoupled.Adam`:
never reject what ``torch.optim.AdamW`` / ``torch.optim.Adam`` accept, never accept what they
reject (same exception type, a message that starts with torch's wording, a hint after it), and
warn (:class:`HyperparameterWarning`) where torch accepts something harmful. The checks follow
``torch.optim.Adam.__init__`` of torch 2.13, in its order, so the first problem reported is
torch's first. When they run:

==================  ========================================================================
``at=``             what happens to a problem
==================  ========================================================================
``"construction"``  torch's constructor errors raise; harmful values torch accepts (an
                    infinite lr, eps or weight_decay, a bool lr) warn
``"step"``          only what torch's ``step()`` refuses raises (a tensor lr or betas with
                    ``foreach=True`` and ``capturable=False``: RuntimeError; betas that are
                    not a pair); what torch refuses only at construction but runs at step
                    (a schedule that drove lr negative) warns, as a harmful value
``"load"``          a checkpoint's group: every problem raises ValueError (a checkpoint is
                    data, and corrupt data is refused even where torch would load it)
==================  ========================================================================

Flags (``amsgrad``, ``maximize``, ...) are used by torch for their truth value; here they
become ``bool`` before any state is touched (:func:`normalize_group`), silently for ``0``/``1``
and numpy bools, with a warning for anything else (``amsgrad="no"`` is True, as in torch).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

FLAGS = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")
"""Flags that are True or False (torch's defaults: all False, but AdamW's decoupling)."""
OPTIONAL_FLAGS = ("foreach", "fused")
"""Flags where None means "let the optimizer choose"."""
EXTRA_FLAGS = ("lr_independent_decay", "cautious_decay")
"""decoupled's own flags, normalized the same way when a group has them."""

AT = ("construction", "step", "load")


class HyperparameterWarning(UserWarning):
    """A value torch accepts that will harm training (or a flag that is not a bool)."""


@dataclass(frozen=True)
class Problem:
    """One failed check: ``error(f"{torch_text}{hint}")`` is what is raised or warned."""

    error: type[Exception]
    torch_text: str
    hint: str = ""
    harmful_only: bool = False  # torch accepts it: a warning, never an error
    step_error: type[Exception] | None = None  # what torch's step() raises for it (None: it runs)


def _value(x: Any) -> Any:
    """``x`` as torch prints it in its messages (a 1-element tensor as its number)."""
    return x.item() if isinstance(x, torch.Tensor) and x.numel() == 1 else x


def _compare(name: str, x: Any, test: Callable[[Any], Any]) -> bool:
    """``test(x)`` evaluated as torch evaluates it; if the comparison itself fails (a string, a
    complex tensor), torch's own error is raised, with the type kept and what was wrong added."""
    try:
        return bool(test(x))
    except Exception as err:
        raise type(err)(f"{err} ({name}={x!r}: it must be a real number or a 1-element tensor)") from None


def _item(name: str, seq: Any, i: int) -> Any:
    """``seq[i]`` as torch reads ``betas[i]``; torch's own error (IndexError, TypeError) if it cannot."""
    try:
        return seq[i]
    except Exception as err:
        raise type(err)(f"{err} ({name}={seq!r}: it must be a pair (beta1, beta2), e.g. (0.9, 0.999))") from None


def _torch_checks(group: Mapping[str, Any], flags: Mapping[str, Any]) -> Iterator[Problem]:
    """torch's checks of ``Adam.__init__`` (torch 2.13) in its order, then the harmful values."""
    lr, eps, wd, betas = group["lr"], group["eps"], group["weight_decay"], group["betas"]
    foreach_tensor_ok = not flags["foreach"] or flags["capturable"]
    if isinstance(lr, torch.Tensor):
        if not foreach_tensor_ok:
            yield Problem(
                ValueError,
                "lr as a Tensor is not supported for capturable=False and foreach=True",
                "; pass lr as a float, or use foreach=False or fused=True",
                step_error=RuntimeError,  # torch's _init_group
            )
        if lr.numel() != 1:
            yield Problem(
                ValueError, "Tensor lr must be 1-element", f" (got shape {tuple(lr.shape)})", step_error=RuntimeError
            )
            return  # torch stops here too: nothing below can compare it
    if not _compare("lr", lr, lambda v: 0.0 <= v):
        yield Problem(ValueError, f"Invalid learning rate: {_value(lr)}", " (must be >= 0; AdamW's are 1e-4 to 3e-3)")
    if not _compare("eps", eps, lambda v: 0.0 <= v):
        yield Problem(ValueError, f"Invalid epsilon value: {_value(eps)}", " (must be >= 0, e.g. 1e-8)")
    beta1, beta2 = _item("betas", betas, 0), _item("betas", betas, 1)
    for i, beta in enumerate((beta1, beta2)):
        if not _compare(f"betas[{i}]", beta, lambda v: 0.0 <= v < 1.0):
            yield Problem(
                ValueError, f"Invalid beta parameter at index {i}: {_value(beta)}", " (must be in [0, 1), e.g. 0.9)"
            )
    if not _compare("weight_decay", wd, lambda v: 0.0 <= v):
        yield Problem(ValueError, f"Invalid weight_decay value: {_value(wd)}", " (must be >= 0, e.g. 0.01)")
    both_float = isinstance(beta1, float) and isinstance(beta2, float)
    if not both_float and not (isinstance(beta1, torch.Tensor) and isinstance(beta2, torch.Tensor)):
        yield Problem(
            ValueError,
            "betas must be either both floats or both Tensors",
            f" (got {type(beta1).__name__} and {type(beta2).__name__}); e.g. betas=(0.9, 0.999)",
        )
    for i, beta in enumerate((beta1, beta2)):
        if isinstance(beta, torch.Tensor):
            if not foreach_tensor_ok:
                yield Problem(
                    ValueError,
                    f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True",
                    "; pass betas as floats, or use foreach=False or fused=True",
                    step_error=RuntimeError,
                )
            if beta.numel() != 1:
                yield Problem(
                    ValueError,
                    f"Tensor betas[{i}] must be 1-element",
                    f" (got shape {tuple(beta.shape)})",
                    step_error=RuntimeError,  # torch's step fails on the shapes
                )
    if len(betas) > 2:  # torch: at step(), from `beta1, beta2 = group["betas"]`
        yield Problem(
            ValueError, "too many values to unpack (expected 2)", f" (betas={betas!r}: a pair)", step_error=ValueError
        )
    if flags["fused"] and flags["differentiable"]:
        yield Problem(
            RuntimeError,
            "`fused` does not support `differentiable`",
            "; use fused=None with differentiable",
            step_error=RuntimeError,  # torch's _fused_adam refuses it too
        )
    if flags["fused"] and flags["foreach"]:
        yield Problem(RuntimeError, "`fused` and `foreach` cannot be `True` together.", " Choose one, or neither.")
    # accepted by torch, and harmful
    for name, x, effect in (
        ("lr", lr, "every updated parameter becomes NaN at the first step"),
        ("eps", eps, "every update is zero: nothing trains"),
        ("weight_decay", wd, "every decayed weight becomes infinite or NaN at the first step"),
    ):
        if _compare(name, x, lambda v: v == math.inf):
            yield Problem(HyperparameterWarning, f"{name}=inf is accepted by torch, but {effect}", "", True)
    if isinstance(lr, bool):
        yield Problem(HyperparameterWarning, f"lr={lr} is a bool; it is used as {float(lr)}", "", True)


def check_group(group: Mapping[str, Any], *, where: str = "", at: str = "construction") -> None:
    """Check one param group's hyperparameters and flags as torch does (see the module table).

    Raises the first problem torch would raise (its exception type, its wording, then a hint
    and ``where``); warns :class:`HyperparameterWarning` for harmful values torch accepts.
    Also checks decoupled's own keys (``lr_independent_decay``/``lr_max``, state formats).
    """
    if at not in AT:
        raise ValueError(f"at={at!r}; choose one of {AT}")
    suffix = f" in {where}" if where else ""
    flags = normalize_flags(group, warn=at != "step")
    for problem in _torch_checks(group, flags):
        text = f"{problem.torch_text}{problem.hint}{suffix}"
        if at == "load":
            raise ValueError(text)
        if problem.harmful_only or (at == "step" and problem.step_error is None):
            warnings.warn(text, HyperparameterWarning, stacklevel=3)
        else:
            raise (problem.error if at == "construction" else problem.step_error)(text)  # type: ignore[misc]
    _check_own_keys(group, suffix)


def _check_own_keys(group: Mapping[str, Any], suffix: str) -> None:
    """decoupled's options: the weight-decay convention (:func:`decoupled.conventions.check_group`,
    on the group spelled one way: a checkpoint may say ``lr_independent_decay``) and the state formats."""
    from . import conventions

    if any(k in group for k in ("lr_independent_decay", "decay_scaling", "lr_max", "cautious_decay")):
        spelled = dict(group)
        conventions.normalize_group(spelled)
        if spelled.get("decay_scaling") and spelled.get("lr_max") is None:
            spelled["lr_max"] = 1.0  # not given: the optimizer defaults it to the group's lr and checks it then
        conventions.check_group(spelled, where=suffix.removeprefix(" in "))
    if "moments" in group or "param_rounding" in group:
        from .formats import DEFAULTS, check_options

        check_options(
            group.get("moments", DEFAULTS["moments"]), group.get("param_rounding", DEFAULTS["param_rounding"]), suffix
        )


def check_number(name: str, x: Any, *, low: float = 0.0, high: float | None = None, hint: str = "") -> None:
    """Raise ValueError unless x is a real number (or 1-element real tensor) with ``low <= x``
    (and ``x < high`` when given, else finite). For decoupled's own arguments (``lr_max``,
    :func:`decoupled.param_groups`' weight_decay), not torch's: those go through :func:`check_group`."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} as a Tensor must have exactly 1 element, got shape {tuple(x.shape)}")
        if x.is_complex():
            raise ValueError(f"{name} must be real, got a complex tensor")
    elif isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(x).__name__} {x!r}")
    v = float(_value(x))
    bad = math.isnan(v) or v < low or (high is not None and not v < high) or (high is None and math.isinf(v))
    if bad:
        accepted = f"[{low:g}, {high:g})" if high is not None else f">= {low:g} and finite"
        raise ValueError(f"Invalid {name}: {v!r} (must be {accepted}){hint}")


# ---- normalization ---------------------------------------------------------------------------


def as_flag(name: str, value: Any, *, optional: bool = False, warn: bool = True) -> bool | None:
    """``value`` as torch uses it (its truth value) as a bool; None stays None when ``optional``.

    ``True``/``False``, ``0``/``1`` and numpy bools convert silently; anything else (a string,
    None for a True/False flag, 2) converts to its truth value with a warning, since torch
    accepts it but it is most likely a mistake (``amsgrad="no"`` turns AMSGrad on)."""
    if value is None and optional:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):  # ints and numpy ints
        return bool(value)
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # numpy.True_
        return bool(value)
    try:
        truth = bool(value)
    except Exception as err:  # e.g. a tensor of several elements: torch's `if flag:` fails the same way
        raise type(err)(f"{err} ({name}={value!r}: pass True or False)") from None
    if warn:
        warnings.warn(
            f"{name}={value!r} is not a bool; it is used as {truth} (its truth value, as torch does). "
            f"Pass True or False",
            HyperparameterWarning,
            stacklevel=4,
        )
    return truth


def normalize_flags(group: Mapping[str, Any], *, warn: bool = True) -> dict[str, bool | None]:
    """Every flag of ``group`` as a bool (``foreach``/``fused``: bool or None); absent flags get
    torch's defaults (AdamW's ``decoupled_weight_decay`` is the caller's to set)."""
    out: dict[str, bool | None] = {}
    for name in FLAGS:
        out[name] = as_flag(name, group.get(name, False), warn=warn)
    for name in OPTIONAL_FLAGS:
        out[name] = as_flag(name, group.get(name), optional=True, warn=warn)
    for name in EXTRA_FLAGS:
        if name in group:
            out[name] = as_flag(name, group[name], warn=warn)
    return out


def _number(x: Any) -> float | torch.Tensor:
    """A Python float for any real scalar (numpy's included); a tensor unchanged."""
    if isinstance(x, torch.Tensor):
        return x
    return float(x)


def normalize_group(group: Mapping[str, Any]) -> dict[str, Any]:
    """The values to store in an already checked group before any state is touched: flags as
    bools (:func:`normalize_flags`), lr, eps and weight_decay as Python floats (numpy scalars
    and ints included; a tensor is kept, the user's own object), betas as a tuple of two floats
    or two 0-d tensors (torch stores 1-element tensor betas squeezed). A new dict of exactly
    the keys the group has among these; the group itself is not changed."""
    out: dict[str, Any] = {k: v for k, v in normalize_flags(group, warn=False).items() if k in group}
    for name in ("lr", "eps", "weight_decay"):
        if name in group:
            out[name] = _number(group[name])
    if "betas" in group:
        out["betas"] = tuple(b.squeeze() if isinstance(b, torch.Tensor) else float(b) for b in group["betas"])
    return out


@dataclass(frozen=True)
class StepValues:
    """A group's hyperparameters in the form the step uses. Numbers are Python floats; a tensor
    hyperparameter stays a tensor (a 0-d view of the group's own, so autograd and in-place
    schedules reach it) for the step to read as a float or, with ``differentiable``, to
    differentiate through."""

    lr: float | torch.Tensor
    beta1: float | torch.Tensor
    beta2: float | torch.Tensor
    eps: float | torch.Tensor
    weight_decay: float | torch.Tensor
    amsgrad: bool
    maximize: bool
    capturable: bool
    differentiable: bool
    decoupled_weight_decay: bool
    foreach: bool | None
    fused: bool | None


def _scalar_view(x: float | torch.Tensor) -> float | torch.Tensor:
    return x.reshape(()) if isinstance(x, torch.Tensor) else x


def step_values(group: Mapping[str, Any]) -> StepValues:
    """:class:`StepValues` of a checked group (numbers already normalized or not)."""
    flags = normalize_flags(group, warn=False)
    values = normalize_group(group)
    beta1, beta2 = values["betas"]
    return StepValues(
        lr=_scalar_view(values["lr"]),
        beta1=_scalar_view(beta1),
        beta2=_scalar_view(beta2),
        eps=_scalar_view(values["eps"]),
        weight_decay=_scalar_view(values["weight_decay"]),
        **{k: flags[k] for k in (*FLAGS, *OPTIONAL_FLAGS)},  # type: ignore[arg-type]
    )


# ---- what torch's step() refuses for the parameters ------------------------------------------

CAPTURABLE_DEVICES = ("cuda", "xpu", "hpu", "privateuseone")
"""Where torch's capturable step runs (torch.optim.optimizer, torch 2.13; 'privateuseone' is the
default name of an out-of-tree backend). Its for-loop also lists 'xla'."""
FUSED_DEVICES = ("mps", "cuda", "xpu", "hpu", "cpu", "mtia", "privateuseone")
"""Where torch's fused Adam kernels run (torch 2.13)."""


def capturable_problem(params: list[torch.Tensor], *, foreach: bool) -> str | None:
    """torch's message when ``capturable=True`` and not fused meets parameters it cannot capture
    (any CPU parameter: torch's step raises AssertionError with it), or None."""
    devices = [*CAPTURABLE_DEVICES, *([] if foreach else ["xla"])]
    if all(p.device.type in devices for p in params):
        return None
    return f"If capturable=True, params and state_steps must be on supported devices: {devices}."


def fused_problem(param: torch.Tensor) -> str | None:
    """torch's message (RuntimeError at the step that first initializes ``param``'s state) when
    ``fused=True`` cannot run ``param`` (not floating point, or on a device such as meta), or None."""
    if param.device.type in FUSED_DEVICES and torch.is_floating_point(param):
        return None
    return (
        f"`fused=True` requires all the params to be floating point Tensors of supported devices: "
        f"{list(FUSED_DEVICES)} but {param.dtype} and {param.device.type}"
    )


__all__ = [
    "HyperparameterWarning",
    "Problem",
    "StepValues",
    "check_group",
    "check_number",
    "as_flag",
    "normalize_flags",
    "normalize_group",
    "step_values",
    "capturable_problem",
    "fused_problem",
    "FLAGS",
    "OPTIONAL_FLAGS",
]
