"""State formats: how the moments (and a low-precision parameter) are stored between steps.

Two independent options of :class:`decoupled.AdamW` choose them, per param group:

``moments`` (how ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` are stored)

    ========  ============================  ===================================================
    name      bytes per parameter (both)    what
    ========  ============================  ===================================================
    param     2 x the parameter's size      torch's: the parameter's dtype (default)
    fp32      8                             float32, whatever the parameter's dtype
    bf16      4                             bfloat16, stochastically rounded
    8bit      about 2.03                    blockwise 8-bit floats (256-element blocks, fp32 scale;
                                            :mod:`.float8`; the older tree code still loads)
    ========  ============================  ===================================================

``param_rounding`` (how the update is written into a bf16/fp16 parameter; fp32 parameters
are unaffected): ``nearest`` (torch's), ``kahan`` (+1 parameter-sized buffer,
``state["kahan_comp"]``), ``stochastic`` (bf16 only, no memory).

The update itself is always the float32 rule of :mod:`decoupled.rule`; formats only change
what is loaded before it and stored after it. *Executors* run it (:mod:`.executor`): the
float32 arena with any backend (:mod:`.arena`, the default), and kernels that fuse loading,
updating and storing (:mod:`.compiled`, with ``backend="compiled"``); they are records in a
registry (:data:`EXECUTOR_MODULES`), so a new one is one file plus one name. With the defaults
(``moments="param"``, ``param_rounding="nearest"``) nothing here runs and the optimizer is
bit-for-bit ``torch.optim.AdamW``.

Checkpoints: every format stores its own keys, and :func:`convert_entry` turns any format's
entry into any other's, so :meth:`decoupled.AdamW.load_state_dict` accepts a checkpoint in
any format (torch's included) and :func:`torch_state_dict` gives one that
``torch.optim.AdamW`` loads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import backends
from . import sharded
from .base import SIGNED_MOMENTS, MomentFormat, transcode
from .blockwise8 import BLOCKWISE8
from .dense import BF16, FP32, PARAM, Dense
from .executor import Executor
from .float8 import BLOCKFLOAT8
from .rounding import COMPENSATION_KEY, ROUNDINGS, is_low_precision

MOMENTS: dict[str, MomentFormat] = {"param": PARAM, "fp32": FP32, "bf16": BF16, "8bit": BLOCKFLOAT8}
"""The moment formats by name."""

LEGACY: tuple[MomentFormat, ...] = (BLOCKWISE8,)
"""Formats no option names any more whose checkpoints still load (converted to the group's):
the dynamic-tree 8-bit code that ``"8bit"`` meant before the blockwise float8 code."""

DEFAULTS = {"moments": "param", "param_rounding": "nearest"}
"""The option values that make the optimizer exactly ``torch.optim.AdamW``."""

MOMENT_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

EXECUTOR_MODULES = ("arena", "native", "compiled", "triton")
"""The registry of executors: one module each, defining ``EXECUTOR``."""

EXECUTORS: dict[str, Executor] = {
    e.name: e for e in (importlib.import_module(f"{__name__}.{m}").EXECUTOR for m in EXECUTOR_MODULES)
}


def choose_executor(
    asked: str, moments: MomentFormat, rounding: str, kinds: backends.Kinds, *, cautious: bool = False
) -> tuple[Executor, backends.Backend]:
    """The executor for a group's formatted parameters (of ``kinds``), and the float32 backend
    that the arena (or an executor's fallback) runs.

    ``asked`` is the backend the optimizer's flags name: an executor that answers to it
    (``"compiled"``) runs; another name (``"fused"``, ``"loop"``, ...) runs the arena with that
    backend; ``"auto"`` runs the best-ranked executor that supports the format here.
    """
    device_types = {device for device, _ in kinds}
    float32 = frozenset((device, torch.float32) for device in device_types)
    named = next((e for e in EXECUTORS.values() if e.answers == asked), None)
    if named is not None:
        reason = named.why_not(moments, rounding, kinds)
        if reason is not None:
            raise backends.Unsupported(reason)
        return named, backends.resolve("auto", float32, cautious=cautious)
    inner = backends.resolve(asked, float32, cautious=cautious)
    if asked != "auto":
        return EXECUTORS["arena"], inner
    ranked = sorted((r, i, e) for i, e in enumerate(EXECUTORS.values()) if (r := e.rank(device_types)) is not None)
    for _, _, executor in ranked:
        if executor.why_not(moments, rounding, kinds) is None:
            return executor, inner
    return EXECUTORS["arena"], inner


def get(name: str) -> MomentFormat:
    """The moment format called ``name``; ValueError listing the choices otherwise."""
    try:
        return MOMENTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown moments format {name!r}; choose one of {list(MOMENTS)}") from None


def check_options(moments: Any, param_rounding: Any, where: str = "") -> None:
    """Raise ValueError unless both options name a known choice."""
    suffix = f" in {where}" if where else ""
    if moments not in MOMENTS:
        raise ValueError(
            f"unknown moments={moments!r}{suffix}; choose one of {list(MOMENTS)} "
            f"('param' keeps torch's layout, '8bit' uses the least memory)"
        )
    if param_rounding not in ROUNDINGS:
        raise ValueError(
            f"unknown param_rounding={param_rounding!r}{suffix}; choose one of {list(ROUNDINGS)} "
            f"('kahan' or 'stochastic' keep small updates of bf16 weights from being rounded away)"
        )


def options(group: Mapping[str, Any]) -> tuple[MomentFormat, str]:
    """The (moment format, param rounding) of a param group."""
    return get(group.get("moments", "param")), group.get("param_rounding", "nearest")


def is_formatted(group: Mapping[str, Any], param: torch.Tensor) -> bool:
    """Whether ``param`` of ``group`` needs the formatted path (anything but torch's own state)."""
    fmt, rounding = options(group)
    fmt = fmt.for_param(param)
    plain_moments = isinstance(fmt, Dense) and fmt.dtype_for(param) == param.dtype
    return not plain_moments or (rounding != "nearest" and is_low_precision(param))


def unsupported_reason(group: Mapping[str, Any], param: torch.Tensor) -> str | None:
    """Why the group's formats cannot hold ``param``'s state, or None."""
    from torch.distributed.tensor import DTensor

    from .rounding import unsupported_reason as rounding_reason

    if not is_formatted(group, param):
        return None
    if param.is_complex():
        return (
            "moments/param_rounding other than the defaults need real parameters; "
            "put complex ones in a group with the defaults"
        )
    if group.get("differentiable"):
        return "differentiable=True keeps torch's state format; use moments='param', param_rounding='nearest'"
    if isinstance(param, DTensor) and not isinstance(options(group)[0].for_param(param), Dense):
        return (
            f"moments={group.get('moments')!r} is blockwise, and its blocks cannot follow DTensor (FSDP2) "
            f"shards; use moments='bf16' (4 bytes per parameter, elementwise) with FSDP2"
        )
    return rounding_reason(group.get("param_rounding", "nearest"), param)


def which(entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> MomentFormat | None:
    """The format ``entry`` holds ``moment`` in (checked most specific first), or None."""
    for fmt in (*[f for f in MOMENTS.values() if not isinstance(f, Dense)], *LEGACY, BF16, FP32, PARAM):
        if fmt.holds(entry, moment, param):
            return fmt
    if isinstance(entry.get(moment), torch.Tensor):  # a dense moment of another dtype (e.g. fp16)
        return Dense("dense", entry[moment].dtype)
    return None


def _on_shards(fn: Callable[..., dict[str, Any]], entry: Mapping[str, Any], param: torch.Tensor) -> dict[str, Any]:
    """``fn(entry, param)``; for a DTensor ``param``, applied to this rank's shards (:mod:`.sharded`)."""
    if sharded.is_dtensor(param):
        return sharded.global_entry(fn(sharded.local_entry(entry, param), sharded.local(param)), param)
    return fn(entry, param)


def allocate(param: torch.Tensor, fmt: MomentFormat, moment: str) -> dict[str, torch.Tensor]:
    """Zero state for ``moment`` of ``param`` in ``fmt``."""
    return _on_shards(lambda _, p: fmt.for_param(p).allocate(p, moment), {}, param)


def running_max_from_v(entry: Mapping[str, Any], param: torch.Tensor, fmt: MomentFormat) -> dict[str, torch.Tensor]:
    """``max_exp_avg_sq`` started from the current ``exp_avg_sq`` (amsgrad switched on mid-run)."""
    fmt = fmt.for_param(param)

    def copy_v(e: Mapping[str, Any], p: torch.Tensor) -> dict[str, torch.Tensor]:
        # the stored form of v under the running maximum's keys: the same values, no float32 copy
        return {m: e[v].clone() for v, m in zip(fmt.keys("exp_avg_sq"), fmt.keys("max_exp_avg_sq"))}

    return _on_shards(copy_v, entry, param)


def compensation_buffer(param: torch.Tensor) -> dict[str, torch.Tensor]:
    """A zero Kahan compensation buffer for ``param`` (its dtype and shape)."""
    return _on_shards(lambda _, p: {COMPENSATION_KEY: torch.zeros(p.shape, dtype=p.dtype, device=p.device)}, {}, param)


def convert_entry(
    entry: dict[str, Any], param: torch.Tensor, fmt: MomentFormat, rounding: str, *, contiguous: bool = True
) -> dict[str, Any]:
    """``entry`` (one parameter's state, in any format) with its moments in ``fmt`` and the
    Kahan buffer present exactly when ``rounding`` needs one. A new dict; ``entry`` is unchanged.
    Dense moments already in ``fmt`` are kept as they are where their layout fits: contiguous
    (what the formatted path streams) when ``contiguous``, else the parameter's own memory
    layout (what torch allocates, and what its fused kernels assume)."""
    if not entry:
        return entry
    return _on_shards(lambda e, p: _convert(e, p, fmt, rounding, contiguous=contiguous), entry, param)


def _convert(
    entry: dict[str, Any], param: torch.Tensor, fmt: MomentFormat, rounding: str, *, contiguous: bool
) -> dict[str, Any]:
    fmt = fmt.for_param(param)
    out = {k: v for k, v in entry.items() if k == "step"}
    for moment in MOMENT_NAMES:
        source = which(entry, moment, param)
        if source is None:
            continue
        same_dtype = (
            isinstance(source, Dense) and isinstance(fmt, Dense) and source.dtype_for(param) == fmt.dtype_for(param)
        )
        if source is fmt or same_dtype:
            kept = {k: entry[k].to(param.device) for k in fmt.keys(moment)}
            kept = {k: v.contiguous() if contiguous else _like(param, v) for k, v in kept.items()}
            out.update(kept)
        else:  # a dense source is encoded as it is; a coded one piece by piece (no float32 copy)
            if isinstance(source, Dense):
                encoded = fmt.encode(entry[moment].to(param.device), param, moment)
            else:
                encoded = transcode(entry, source, fmt, param, moment)
            if not contiguous:
                encoded = {k: _like(param, v) for k, v in encoded.items()}
            out.update(encoded)
    if rounding == "kahan" and is_low_precision(param):
        comp = entry.get(COMPENSATION_KEY)
        if isinstance(comp, torch.Tensor) and comp.shape == param.shape:
            out[COMPENSATION_KEY] = comp.to(param.device, param.dtype).contiguous()
        else:
            out[COMPENSATION_KEY] = torch.zeros(param.shape, dtype=param.dtype, device=param.device)
    return out


def _like(param: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` in ``param``'s memory layout (itself when it already is)."""
    if t.stride() == param.stride() or t.shape != param.shape:
        return t
    return torch.empty_like(param, dtype=t.dtype).copy_(t)


def torch_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` in ``torch.optim.AdamW``'s exact layout: moments dense in the
    parameter's dtype, no Kahan buffers, no format keys in the param groups."""
    sd = optimizer.state_dict()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    indices = [i for g in sd["param_groups"] for i in g["params"]]
    by_index = dict(zip(indices, params))
    sd["state"] = {
        i: convert_entry(dict(e), by_index[i], PARAM, "nearest", contiguous=False) for i, e in sd["state"].items()
    }
    sd["param_groups"] = [{k: v for k, v in g.items() if k not in DEFAULTS} for g in sd["param_groups"]]
    return sd


__all__ = [
    "EXECUTORS",
    "EXECUTOR_MODULES",
    "Executor",
    "choose_executor",
    "MOMENTS",
    "PARAM",
    "COMPENSATION_KEY",
    "is_low_precision",
    "ROUNDINGS",
    "DEFAULTS",
    "SIGNED_MOMENTS",
    "MomentFormat",
    "get",
    "check_options",
    "options",
    "is_formatted",
    "unsupported_reason",
    "which",
    "allocate",
    "running_max_from_v",
    "compensation_buffer",
    "convert_entry",
    "torch_state_dict",
]
