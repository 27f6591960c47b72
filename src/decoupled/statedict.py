"""Checks a state dict in ``torch.optim.AdamW``'s layout before anything is loaded.

The layout (shared by ``torch.optim.Adam``/``AdamW`` and :class:`decoupled.AdamW`)::

    {"state": {index: {"step": 0-d tensor, "exp_avg": T, "exp_avg_sq": T,
                       "max_exp_avg_sq": T  (only when the group has amsgrad)}},
     "param_groups": [{"lr": ..., "betas": ..., ..., "params": [index, ...]}]}

where ``T`` has the shape of its parameter. :func:`validate` raises ``ValueError`` naming the
first problem found, so the optimizer is never left half-loaded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .hyper import check_group

MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
TORCH_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
"""The per-parameter state keys of ``torch.optim.AdamW``; other formats add their own
(:mod:`decoupled.formats`)."""


def _fail(msg: str) -> None:
    raise ValueError(f"Cannot load optimizer state dict: {msg}")


def validate(state_dict: Any, param_groups: Sequence[Mapping[str, Any]]) -> None:
    """Raise ValueError if ``state_dict`` cannot be loaded into an optimizer with ``param_groups``."""
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
    index_to_param: dict[Any, torch.Tensor] = {}
    for g, (saved, group) in enumerate(zip(saved_groups, param_groups)):
        if not isinstance(saved, Mapping) or "params" not in saved:
            _fail(f"param group {g} is not a dict with a 'params' list")
        if len(saved["params"]) != len(group["params"]):
            _fail(
                f"param group {g} has {len(saved['params'])} parameters in the checkpoint but "
                f"{len(group['params'])} in this optimizer; was the model or grouping changed?"
            )
        try:
            check_group({**group, **{k: v for k, v in saved.items() if k != "params"}}, where=f"param group {g}")
        except (KeyError, TypeError) as err:
            _fail(f"param group {g} lacks or garbles a hyperparameter ({err!r})")
        for index, p in zip(saved["params"], group["params"]):
            index_to_param[index] = p
        amsgrad = saved.get("amsgrad", False)
        for index in saved["params"]:
            if index in state:
                _check_param_state(state[index], index_to_param[index], index, g, amsgrad)
    unknown = [k for k in state if k not in index_to_param]
    if unknown:
        _fail(f"state has entries {unknown[:5]} that belong to no parameter of any group")


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
    step = entry["step"]
    if isinstance(step, torch.Tensor):
        if step.numel() != 1 or step.is_complex():
            _fail(f"'step' of {where} must be a real scalar, got shape {tuple(step.shape)}")
        value = float(step.item())
    elif isinstance(step, (int, float)) and not isinstance(step, bool):
        value = float(step)
    else:
        _fail(f"'step' of {where} must be a number or a 0-d tensor, got {type(step).__name__}")
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        _fail(f"'step' of {where} must be a non-negative whole number, got {value}")
    for moment in moments:
        problem = which(entry, moment, param).check(entry, moment, param)  # type: ignore[union-attr]
        if problem is not None:  # "'key' has ..." -> "'key' of <where> has ..."
            named = re.match(r"('[^']+') (.*)", problem, re.S)
            _fail(f"{named[1]} of {where} {named[2]}" if named else f"{problem} ({where})")
