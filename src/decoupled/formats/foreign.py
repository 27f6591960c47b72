"""Switch libraries mid-run: other optimizers' state as a ``decoupled.AdamW`` state dict.

:func:`state_dict_from` reads the ``state_dict()`` (or the optimizer itself) of

* ``bitsandbytes.optim.AdamW8bit`` (and ``AdamW``, ``PagedAdamW8bit``...): per parameter
  ``step`` and ``__bnb_optimizer_quant_state__`` = ``state1``/``state2`` (uint8 codes into
  ``qmap1``/``qmap2``, scaled per block by ``absmax1``/``absmax2``; float32 for small
  tensors),
* ``torchao.optim.AdamW8bit`` (and the 4-bit and fp8 variants): ``step`` and ``exp_avg`` /
  ``exp_avg_sq`` as torchao's quantized tensor subclasses (codes into ``qmap`` times a scale
  per ``block_size`` elements; read with ``dequantize``) or plain tensors,
* ``optimi.AdamW`` / ``optimi.Adam``: ``exp_avg``, ``exp_avg_sq`` and ``kahan_comp`` (its
  Kahan buffer, the part of each weight not yet added to it, which is exactly what
  ``decoupled``'s ``param_rounding="kahan"`` keeps), with the step count in the param group.
  optimi folds the bias correction into its betas, so its moments are already debiased,
  ``m / (1 - beta1^t)`` and ``v / (1 - beta2^t)``; they are multiplied back by those factors,

and returns a state dict that ``decoupled.AdamW.load_state_dict`` takes: each moment in the
format of its param group (``moments=``), converted piece by piece (no float32 copy of a
whole moment, :func:`decoupled.formats.base.transcode`), the Kahan buffer where the group
rounds with ``kahan``, and the foreign hyperparameters (lr, betas, eps, weight_decay,
amsgrad, optimi's ``decouple_lr``/``max_lr`` as lr-independent decay) in the groups.

bitsandbytes and torchao store biased moments, as torch does, so their values carry over
unchanged (8-bit ones decoded exactly, then rounded once into the target format).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import options
from .base import MomentFormat, transcode
from .blockwise8 import block_ranges
from .dense import Dense
from .rounding import COMPENSATION_KEY, is_low_precision

MOMENT_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_BNB = "__bnb_optimizer_quant_state__"


class QuantMap(MomentFormat):
    """Read-only: uint8 codes into a 256-entry map, times a float32 scale per ``block`` elements
    (bitsandbytes' and torchao's 8-bit layout). Entry keys ``M.codes``, ``M.absmax``, ``M.qmap``."""

    name = "foreign 8-bit"

    def __init__(self, block: int) -> None:
        self.block = block

    def keys(self, moment: str) -> tuple[str, ...]:
        return (f"{moment}.codes", f"{moment}.absmax", f"{moment}.qmap")

    def load(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, out: torch.Tensor) -> None:
        codes, absmax, qmap = (entry[k] for k in self.keys(moment))
        for lo, hi in block_ranges(start, stop, self.block):
            n = min(hi - lo, self.block)
            dst = out[lo - start : hi - start]
            torch.index_select(qmap, 0, codes[lo:hi].long(), out=dst)
            dst.view(-1, n).mul_(absmax[lo // self.block : -(-hi // self.block)].unsqueeze(1))


class Scaled(MomentFormat):
    """Read-only: another format's values times ``factor`` (optimi's debiased moments)."""

    def __init__(self, inner: MomentFormat, factor: float) -> None:
        self.inner, self.factor, self.block, self.name = inner, factor, inner.block, inner.name

    def keys(self, moment: str) -> tuple[str, ...]:
        return self.inner.keys(moment)

    def load(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, out: torch.Tensor) -> None:
        self.inner.load(entry, moment, start, stop, out)
        out.mul_(self.factor)


def _block(numel: int, scales: int) -> int:
    for block in (256, 2048, 4096, 128, 64, 32, 512, 1024):
        if -(-numel // block) == scales:
            return block
    raise ValueError(f"cannot tell the block size of 8-bit state with {numel} elements and {scales} scales")


def _quantized(codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor, moment: str) -> tuple[MomentFormat, dict]:
    fmt = QuantMap(_block(codes.numel(), absmax.numel()))
    return fmt, dict(zip(fmt.keys(moment), (codes.reshape(-1), absmax.reshape(-1).float(), qmap.float())))


def _dense(t: torch.Tensor, moment: str) -> tuple[MomentFormat, dict]:
    return Dense("foreign", t.dtype), {moment: t.detach().reshape(-1)}


def _moments(entry: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, tuple[MomentFormat, dict]]:
    """Each moment of one foreign state entry as (a readable format, its entry), biased as torch's."""
    if _BNB in entry or "state1" in entry:  # bitsandbytes
        q = entry.get(_BNB, entry)
        out = {}
        for moment, i in (("exp_avg", 1), ("exp_avg_sq", 2)):
            state = q[f"state{i}"]
            if state.dtype == torch.uint8:
                out[moment] = _quantized(state, q[f"absmax{i}"], q[f"qmap{i}"], moment)
            else:
                out[moment] = _dense(state, moment)
        return out
    out = {}
    for moment in MOMENT_NAMES:
        t = entry.get(moment)
        if t is None:
            continue
        if all(hasattr(t, a) for a in ("codes", "scale", "qmap")) and t.codes.dtype == torch.uint8:  # torchao 8-bit
            out[moment] = _quantized(t.codes, t.scale, t.qmap, moment)
        elif hasattr(t, "dequantize") and type(t) is not torch.Tensor:  # torchao 4-bit, fp8: whole-tensor decode
            out[moment] = _dense(t.dequantize().float(), moment)
        else:
            out[moment] = _dense(t, moment)
    if "beta1" in group and "beta2" in group:  # optimi: debiased moments
        step = _step(entry, group)
        for moment, beta in (("exp_avg", group["beta1"]), ("exp_avg_sq", group["beta2"])):
            if moment in out:
                source, source_entry = out[moment]
                out[moment] = (Scaled(source, 1 - float(beta) ** step), source_entry)
    return out


def _step(entry: Mapping[str, Any], group: Mapping[str, Any]) -> float:
    step = entry.get("step", group.get("step"))
    if step is None:
        raise ValueError("the foreign state has no step count (per parameter or in its param group)")
    return float(step)


def _hyperparameters(group: Mapping[str, Any]) -> dict[str, Any]:
    """The foreign group's AdamW hyperparameters under torch's (and decoupled's) names."""
    out: dict[str, Any] = {}
    for key in ("lr", "eps", "weight_decay", "amsgrad"):
        if key in group:
            value = group[key]
            out[key] = float(value) if isinstance(value, torch.Tensor) else value
    if "betas" in group:
        out["betas"] = tuple(float(b) for b in group["betas"])
    elif "beta1" in group and "beta2" in group:  # optimi
        out["betas"] = (float(group["beta1"]), float(group["beta2"]))
    if group.get("decouple_lr"):  # optimi: weight decay scaled by lr / max_lr
        out["lr_independent_decay"] = True
        out["lr_max"] = float(group.get("max_lr") or out["lr"])
    return out


def state_dict_from(foreign: torch.optim.Optimizer | Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict:
    """A state dict for ``optimizer`` (a ``decoupled.AdamW``) that holds the moments, step counts,
    Kahan buffers and hyperparameters of ``foreign`` (an optimizer of bitsandbytes, torchao or
    optimi over the same parameters in the same order, or its ``state_dict()``)."""
    sd = foreign.state_dict() if isinstance(foreign, torch.optim.Optimizer) else foreign
    target = optimizer.state_dict()
    if len(sd["param_groups"]) != len(target["param_groups"]) or any(
        len(a["params"]) != len(b["params"]) for a, b in zip(sd["param_groups"], target["param_groups"])
    ):
        raise ValueError(
            "the foreign optimizer's param groups do not match this optimizer's (same parameters, same groups "
            "and order are needed); build both from the same list of param groups"
        )
    state: dict[int, dict] = {}
    for fgroup, group, ours in zip(sd["param_groups"], target["param_groups"], optimizer.param_groups):
        group.update(_hyperparameters(fgroup))
        fmt_all, rounding = options(ours)
        for findex, index, param in zip(fgroup["params"], group["params"], ours["params"]):
            entry = sd["state"].get(findex)
            if not entry:
                continue
            fmt = fmt_all.for_param(param)
            out: dict[str, Any] = {"step": torch.tensor(_step(entry, fgroup), dtype=torch.float32)}
            for moment, (source, source_entry) in _moments(entry, fgroup).items():
                if source.block == 1 and source_entry[moment].numel() != param.numel():
                    count = source_entry[moment].numel()
                    raise ValueError(f"foreign {moment} has {count} elements, the parameter {param.numel()}")
                out.update(transcode(source_entry, source, fmt, param, moment))
            comp = entry.get(COMPENSATION_KEY)
            if rounding == "kahan" and is_low_precision(param):
                if isinstance(comp, torch.Tensor):
                    comp = comp.detach().to(param.device, param.dtype)
                    out[COMPENSATION_KEY] = comp.reshape(param.shape).contiguous()
                else:
                    out[COMPENSATION_KEY] = torch.zeros_like(param, memory_format=torch.contiguous_format)
            state[index] = out
    return {"state": state, "param_groups": target["param_groups"]}


__all__ = ["state_dict_from", "QuantMap", "Scaled"]
