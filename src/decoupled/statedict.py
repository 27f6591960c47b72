"""Loading a state dict all or nothing: check everything first, put everything back on failure.

The layout (shared by ``torch.optim.Adam``/``AdamW`` and :class:`decoupled.AdamW`)::

    {"state": {index: {"step": 0-d float tensor, "exp_avg": T, "exp_avg_sq": T,
                       "max_exp_avg_sq": T  (only when the group has amsgrad)}},
     "param_groups": [{"lr": ..., "betas": ..., ..., "params": [index, ...]}]}

where ``T`` has the shape of its parameter (other state formats use their own keys, e.g.
``exp_avg_e4m3`` and ``exp_avg_scale`` for 8-bit moments; :mod:`decoupled.formats`).

:func:`validate` checks everything ``torch.optim.Optimizer.load_state_dict`` would copy, and
raises ``ValueError`` naming the first problem before anything changes: the groups (count,
sizes, the keys the step needs, torch's hyperparameter rules via :func:`decoupled.hyper.check_group`),
the step counts (0-d float32/float64 tensors or numbers, whole and non-negative), and every
state tensor (dense strided layout, shape and dtype of its format, real or complex like its
parameter, finite values, second moments and 8-bit block scales non-negative). Torch would
load some of these and fail or turn the parameters into NaN at the next step; a checkpoint
is refused here instead. :func:`restoring` puts the optimizer's containers back if a load
still fails half way. :func:`convention_note` says when a load changes what ``weight_decay``
means (:mod:`decoupled.conventions`).
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from . import conventions
from .hyper import check_group, normalize_flags

MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
TORCH_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
"""The per-parameter state keys of ``torch.optim.AdamW``; other formats add their own
(:mod:`decoupled.formats`)."""
NONNEGATIVE = ("exp_avg_sq", "max_exp_avg_sq")
"""Moments that are EMAs of squares: a negative value makes sqrt(v) NaN at the next step."""
REQUIRED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")
"""Keys the step reads that a loaded group must carry itself: torch's load replaces each
group with the checkpoint's, so the optimizer's own values do not fill the gaps."""
FLAG_DEFAULTS = {
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
}
"""What ``__setstate__`` fills in for flags an older checkpoint lacks (torch's defaults)."""
CONVENTION_KEYS = ("lr_independent_decay", "lr_max", "decay_scaling", "cautious_decay")
"""Group keys that name a weight-decay convention other than torch's (absent: torch's)."""
STEP_DTYPES = (torch.float32, torch.float64)
_CHUNK = 1 << 20  # elements scanned at a time for NaN/negative values (bounds the temporaries)


class ConventionWarning(UserWarning):
    """A load changed what ``weight_decay`` means per step (:func:`convention_note`)."""


def _fail(msg: str) -> None:
    raise ValueError(f"Cannot load optimizer state dict: {msg}")


def loaded_group(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, decoupled: bool | None = None
) -> dict[str, Any]:
    """The param group as it is after a load: the checkpoint's group (torch's ``update_group``:
    the optimizer's own ``params``, and its ``param_names`` when the checkpoint has none), the
    flags an older checkpoint lacks at torch's defaults (``__setstate__``), ``decoupled_weight_decay``
    forced to ``decoupled`` when given (AdamW: True, as torch's AdamW does), the state-format
    options kept from this optimizer (its choice, not the checkpoint's), and the weight-decay
    convention keys kept from this optimizer when the checkpoint names no convention."""
    from .formats import DEFAULTS

    group = {k: v for k, v in saved.items() if k not in DEFAULTS}
    group["params"] = current["params"]
    if "param_names" in current and "param_names" not in saved:
        group["param_names"] = current["param_names"]
    for key, default in FLAG_DEFAULTS.items():
        group.setdefault(key, default)
    if decoupled is not None:
        group["decoupled_weight_decay"] = decoupled
    else:
        group.setdefault("decoupled_weight_decay", False)
    group.update({k: current[k] for k in DEFAULTS if k in current})
    if not any(k in saved for k in CONVENTION_KEYS):
        group.update({k: current[k] for k in CONVENTION_KEYS if k in current})
    return group


def validate(state_dict: Any, param_groups: Sequence[Mapping[str, Any]], *, decoupled: bool | None = None) -> None:
    """Raise ValueError if ``state_dict`` cannot be loaded into an optimizer with ``param_groups``.

    ``decoupled``: True for AdamW (its groups are always decoupled, as torch's AdamW), None
    for Adam (the checkpoint's flag, default False)."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        found = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
        _fail(
            f"expected a mapping with keys 'state' and 'param_groups' (what optimizer.state_dict() "
            f"returns), got {found}. A model checkpoint or a whole training checkpoint must be "
            f"indexed first, e.g. optimizer.load_state_dict(checkpoint['optimizer'])"
        )
    saved_groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, Sequence) or not isinstance(state, Mapping):
        _fail("'param_groups' must be a list of dicts and 'state' a dict")
    if len(saved_groups) != len(param_groups):
        _fail(
            f"it has {len(saved_groups)} param groups but this optimizer has {len(param_groups)}; "
            f"build the optimizer with the same groups (e.g. the same decoupled.param_groups call)"
        )
    index_to_param: dict[Any, tuple[torch.Tensor, int, Mapping[str, Any]]] = {}
    for g, (saved, group) in enumerate(zip(saved_groups, param_groups)):
        loaded = _check_group(saved, group, g, decoupled)
        for index, p in zip(saved["params"], group["params"]):
            if index in index_to_param:
                _fail(f"parameter index {index!r} appears twice in the checkpoint's param groups")
            index_to_param[index] = (p, g, loaded)
    unknown = [k for k in state if k not in index_to_param]
    if unknown:
        _fail(f"state has entries {unknown[:5]} that belong to no parameter of any group")
    for index, entry in state.items():
        p, g, its_group = index_to_param[index]
        _check_param_state(entry, p, index, g, bool(normalize_flags(its_group, warn=False)["amsgrad"]))


def _check_group(saved: Any, group: Mapping[str, Any], g: int, decoupled: bool | None) -> dict[str, Any]:
    if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), Sequence):
        _fail(f"param group {g} is not a dict with a 'params' list")
    if len(saved["params"]) != len(group["params"]):
        _fail(
            f"param group {g} has {len(saved['params'])} parameters in the checkpoint but "
            f"{len(group['params'])} in this optimizer; was the model or grouping changed?"
        )
    missing = [k for k in REQUIRED_GROUP_KEYS if k not in saved]
    if missing:
        _fail(
            f"param group {g} lacks {missing}; a loaded group replaces this optimizer's, so it must "
            f"carry {list(REQUIRED_GROUP_KEYS)} (save with optimizer.state_dict())"
        )
    loaded = loaded_group(saved, group, decoupled=decoupled)
    try:
        check_group(loaded, where=f"param group {g}", at="load")
    except (ValueError, TypeError, IndexError, RuntimeError, NotImplementedError) as err:
        _fail(str(err))
    return loaded


def _check_param_state(entry: Any, param: torch.Tensor, index: Any, group: int, amsgrad: bool) -> None:
    where = f"parameter {index} (group {group}, shape {tuple(param.shape)})"
    if not isinstance(entry, Mapping):
        _fail(f"state of {where} is a {type(entry).__name__}, expected a dict")
    if not entry:  # torch leaves an empty dict for a param that has not been stepped yet
        return
    from .formats import which

    moments = [*MOMENT_KEYS] + (["max_exp_avg_sq"] if amsgrad else [])
    missing = [k for k in ["step"] if k not in entry] + [m for m in moments if which(entry, m, param) is None]
    if missing:
        hint = " (the group has amsgrad=True)" if "max_exp_avg_sq" in missing else ""
        _fail(f"state of {where} lacks {missing}{hint}; it has {sorted(entry)}")
    _check_step(entry["step"], where)
    for key, value in entry.items():
        if isinstance(value, torch.Tensor) and value.layout != torch.strided:
            _fail(f"'{key}' of {where} is a {value.layout} tensor; optimizer state is dense (strided)")
    present = [m for m in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if which(entry, m, param) is not None]
    for moment in present:
        fmt = which(entry, moment, param)
        problem = fmt.check(entry, moment, param)  # type: ignore[union-attr]
        if problem is not None:  # "'key' has ..." -> "'key' of <where> has ..."
            named = re.match(r"('[^']+') (.*)", problem, re.S)
            _fail(f"{named[1]} of {where} {named[2]}" if named else f"{problem} ({where})")
        dense = entry.get(moment)
        if isinstance(dense, torch.Tensor) and dense.is_complex() != param.is_complex():
            kind = "complex" if param.is_complex() else "real"
            _fail(f"'{moment}' of {where} has dtype {dense.dtype}; the parameter is {kind}, so must its moments be")
    _check_compensation(entry, param, where)
    for key, value in entry.items():
        bad = _value_problem(key, value)
        if bad:
            _fail(f"'{key}' of {where} has {bad}; the checkpoint is corrupt (it would turn the parameter into NaN)")


def _check_compensation(entry: Mapping[str, Any], param: torch.Tensor, where: str) -> None:
    """A Kahan compensation buffer (``param_rounding="kahan"``) has the parameter's shape and a float dtype."""
    from .formats import COMPENSATION_KEY

    comp = entry.get(COMPENSATION_KEY)
    if comp is None:
        return
    if not isinstance(comp, torch.Tensor) or not comp.is_floating_point():
        kind = comp.dtype if isinstance(comp, torch.Tensor) else type(comp).__name__
        _fail(f"'{COMPENSATION_KEY}' of {where} has dtype {kind}; the compensation buffer is floating point")
    if tuple(comp.shape) != tuple(param.shape):
        _fail(f"'{COMPENSATION_KEY}' of {where} has shape {tuple(comp.shape)}, not the parameter's")


def _check_step(step: Any, where: str) -> None:
    if isinstance(step, torch.Tensor):
        if step.layout != torch.strided or step.dim() != 0 or step.is_complex():
            _fail(f"'step' of {where} must be a real scalar (a 0-d tensor), got shape {tuple(step.shape)}")
        if step.dtype not in STEP_DTYPES:
            _fail(
                f"'step' of {where} has dtype {step.dtype}; the step count is a float32 (or float64) 0-d "
                f"tensor, as torch makes it. Convert it with state['step'] = state['step'].float()"
            )
        value = float(step.item())
    elif isinstance(step, (int, float)) and not isinstance(step, bool):  # torch < 1.12 saved a number
        value = float(step)
    else:
        _fail(f"'step' of {where} must be a number or a 0-d tensor, got {type(step).__name__}")
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        _fail(f"'step' of {where} must be a non-negative whole number, got {value}")


def _value_problem(key: Any, value: Any) -> str | None:
    """What is wrong with the values of state tensor ``key`` ('NaN or infinite values',
    'negative values'), or None. Moments must be finite, EMAs of squares and 8-bit block
    scales (``<moment>_absmax``: the largest magnitude of each block, 0 for an all-zero block)
    also non-negative (``<moment>_scale`` of the blockwise float8 code likewise); codes are
    not checked here (their formats' ``check`` looks at shapes and dtypes)."""
    from .formats import COMPENSATION_KEY

    if not isinstance(value, torch.Tensor) or key == "step" or not (value.is_floating_point() or value.is_complex()):
        return None
    name = str(key)
    scale = name.endswith(("_absmax", "_scale"))
    moment = name.removesuffix("_absmax").removesuffix("_scale")
    if moment not in (*TORCH_KEYS, COMPENSATION_KEY):
        return None  # a key of no format known here: copied as torch copies it
    nonnegative = scale or moment in NONNEGATIVE
    x = torch.view_as_real(value) if value.is_complex() else value
    flat = x.reshape(-1) if x.is_contiguous() else x.flatten()
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK]
        if not bool(torch.isfinite(chunk).all()):
            return "NaN or infinite values"
        if nonnegative and bool((chunk < 0).any()):
            return "negative values (it holds magnitudes or squares)"
    return None


@contextlib.contextmanager
def restoring(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Put back the optimizer's attributes, param groups and state (the same objects, with the
    same contents) if the body raises, so a load that fails anywhere changes nothing.

    Containers are restored, not tensor contents: a load must not write into tensors the
    optimizer already holds (torch's load replaces them, it never copies into them)."""
    attrs = dict(optimizer.__dict__)
    groups = [(g, dict(g)) for g in optimizer.param_groups]
    entries = [(e, dict(e)) for e in optimizer.state.values() if isinstance(e, dict)]
    state_items = dict(optimizer.state)
    try:
        yield
    except BaseException:
        optimizer.__dict__.clear()
        optimizer.__dict__.update(attrs)
        for group, contents in groups:
            group.clear()
            group.update(contents)
        optimizer.param_groups[:] = [g for g, _ in groups]
        for entry, contents in entries:
            entry.clear()
            entry.update(contents)
        optimizer.state.clear()
        optimizer.state.update(state_items)
        raise


def loaded(
    state_dict: Mapping[str, Any], param_groups: Sequence[Mapping[str, Any]], *, decoupled: bool | None = None
) -> tuple[dict[torch.Tensor, dict[str, Any]], list[dict[str, Any]]]:
    """The state and param groups that loading ``state_dict`` (already :func:`validate`-d) gives
    an optimizer with ``param_groups``, as new objects: nothing of the optimizer is changed.

    Each group is :func:`loaded_group` (a change of what ``weight_decay`` means is warned about,
    :func:`check_convention`). Each entry is converted straight into the format its group stores
    (:func:`decoupled.formats.convert_entry`): tensors are moved to the parameter's device but not
    cast to its dtype first, as torch's load does, so a bf16 or 8-bit checkpoint never passes
    through float32 copies of the whole state. ``step`` follows torch's rule: float32 on the
    parameter's device for fused or capturable groups, else as saved."""
    from . import formats

    groups, by_index = [], {}
    for g, (saved, current) in enumerate(zip(state_dict["param_groups"], param_groups)):
        check_convention(saved, current, where=f"param group {g}", decoupled=decoupled)
        group = loaded_group(saved, current, decoupled=decoupled)
        conventions.normalize_group(group)
        groups.append(group)
        by_index.update({index: (p, group) for index, p in zip(saved["params"], current["params"])})
    state: dict[torch.Tensor, dict[str, Any]] = defaultdict(dict)  # as torch's: new parameters get {}
    for index, entry in state_dict["state"].items():
        param, group = by_index[index]
        entry = dict(entry)
        step = entry.get("step")
        if isinstance(step, torch.Tensor) and (group.get("fused") or group.get("capturable")):
            entry["step"] = step.to(dtype=torch.float32, device=param.device)
        if entry:
            fmt, rounding = formats.options(group)
            if formats.is_formatted(group, param):
                entry = formats.convert_entry(entry, param, fmt, rounding)
            else:  # torch's layout, kept as saved where it already is
                entry = formats.convert_entry(entry, param, formats.PARAM, rounding, contiguous=False)
        state[param] = entry
    return state, groups


def per_step_meaning(conv: conventions.Convention, wd: float, lr: float, lr_max: float | None) -> str:
    """What ``weight_decay=wd`` removes of a weight per step under ``conv``, in words and numbers."""
    if conv.coupled:
        return f"no fixed fraction: {wd:g} * theta is added to the gradient before the moments (Adam + L2)"
    formula = {
        conventions.Scaling.LR: "lr * weight_decay",
        conventions.Scaling.INDEPENDENT: "(lr / lr_max) * weight_decay",
        conventions.Scaling.CORRECTED: "lr**2 / lr_max * weight_decay",
    }[conv.scaling]
    try:
        amount = f" = {conv.decay_per_step(wd, lr, lr_max):.3g}"
    except ValueError:
        amount = ""
    where = ", where update and weight agree in sign" if conv.cautious else ""
    return f"{formula}{amount} of each decayed weight per step{where}"


def convention_note(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, where: str = "", decoupled: bool | None = None
) -> str | None:
    """What changes in the meaning of ``weight_decay`` when ``saved`` (a checkpoint's group) is
    loaded over ``current`` (this optimizer's), or None when nothing does.

    A checkpoint without convention keys was saved with torch's convention (``adamw``, or
    ``adam_l2`` for Adam); :func:`loaded_group` keeps this optimizer's convention then, and the
    note says what the same ``weight_decay`` now removes per step compared with the checkpoint's
    run. A checkpoint that names another convention than the one this optimizer was built with
    is loaded with its convention (as its lr is), and the note says so. The caller warns
    (:class:`ConventionWarning`) or, to refuse, raises ValueError with the note."""
    prefix = f"{where}: " if where else ""
    # the checkpoint's own flag; an old one without it came from the class it is loaded into
    run_flag = saved.get("decoupled_weight_decay", bool(decoupled))
    run = conventions.of_group({**saved, "decoupled_weight_decay": run_flag})
    loaded = loaded_group(saved, current, decoupled=decoupled)
    now, built = conventions.of_group(loaded), conventions.of_group(current)
    if run.key == now.key == built.key:
        return None
    wd, lr = float(_number(loaded["weight_decay"])), float(_number(loaded["lr"]))
    lr_max = loaded.get("lr_max")
    at = f"lr={lr:g}" + (f", lr_max={lr_max:g}" if lr_max else "")
    if run.key != now.key:
        return (
            f"{prefix}the checkpoint's run used {run.key} ({run.label}): {per_step_meaning(run, wd, lr, lr_max)}. "
            f"After this load the group follows {now.key} ({now.label}), so weight_decay={wd:g} now removes "
            f"{per_step_meaning(now, wd, lr, lr_max)} ({at}). To continue that run unchanged, build the optimizer as "
            f"{_constructor(run)}; to keep {now.key}, rescale weight_decay"
        )
    return (
        f"{prefix}this optimizer was built for {built.key} ({built.label}), but the checkpoint's group follows "
        f"{now.key}, which is loaded with its other hyperparameters: weight_decay={wd:g} removes "
        f"{per_step_meaning(now, wd, lr, lr_max)} ({at})"
    )


def _constructor(conv: conventions.Convention) -> str:
    """The optimizer call that follows ``conv`` (its keyword options)."""
    options = {k: v for k, v in conv.optimizer_options().items() if k != "decoupled_weight_decay"}
    args = ", ".join(f"{k}={v!r}" for k, v in options.items())
    if conv.coupled:
        return "decoupled.Adam(...)"
    return f"decoupled.AdamW(..., {args})" if args else "decoupled.AdamW(...) without a convention option (PyTorch's)"


def _number(x: Any) -> Any:
    return x.item() if isinstance(x, torch.Tensor) else x


def check_convention(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    where: str = "",
    decoupled: bool | None = None,
    strict: bool = False,
) -> None:
    """Warn :class:`ConventionWarning` with :func:`convention_note` (or raise ValueError when
    ``strict``) if the load changes what ``weight_decay`` means."""
    note = convention_note(saved, current, where=where, decoupled=decoupled)
    if note is None:
        return
    if strict:
        _fail(note)
    warnings.warn(note, ConventionWarning, stacklevel=3)


__all__ = [
    "validate",
    "loaded",
    "loaded_group",
    "restoring",
    "convention_note",
    "check_convention",
    "per_step_meaning",
    "ConventionWarning",
    "MOMENT_KEYS",
    "TORCH_KEYS",
    "REQUIRED_GROUP_KEYS",
    "CONVENTION_KEYS",
]
