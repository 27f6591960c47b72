"""Bench contenders for the native CPU kernels.

* ``decoupled native(...)``: the state formats stepped by :mod:`decoupled.formats.native`,
  through :class:`NativeFormats`, a minimal optimizer (state allocated in the format, step
  counts, coefficients from :mod:`decoupled.rule`) that calls the native executor the way the
  step pipeline will once it is wired into ``decoupled.AdamW``; and the native kernel over
  torch's state layout (``backend_step``), plain and with cautious decay.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from decoupled import formats
from decoupled.formats import native
from decoupled.formats.float8 import BLOCKFLOAT8
from decoupled.rule import Decay, GroupCoefficients, group_coefficients

from .peers import HYPER, Contender

MOMENTS = {**formats.MOMENTS, "float8": BLOCKFLOAT8}


@dataclasses.dataclass(frozen=True)
class _Cautious(GroupCoefficients):
    cautious: bool = True


def cautious(c: GroupCoefficients) -> GroupCoefficients:
    """``c`` with cautious decay (the field the lead adds to GroupCoefficients, or a subclass with it)."""
    if any(f.name == "cautious" for f in dataclasses.fields(c)):
        return dataclasses.replace(c, cautious=True)
    return _Cautious(**dataclasses.asdict(c))


class NativeFormats(torch.optim.Optimizer):
    """AdamW (``HYPER``) with state in ``moments`` / ``param_rounding``, stepped by the native
    executor; or, with ``layout="torch"``, torch's state stepped by the native backend."""

    def __init__(self, params, *, moments="param", param_rounding="nearest", layout="formats", cautious_decay=False):
        super().__init__(params, dict(lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"],
                                      weight_decay=HYPER["weight_decay"]))
        self.fmt, self.rounding, self.layout, self.cautious = MOMENTS[moments], param_rounding, layout, cautious_decay

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            for moment in ("exp_avg", "exp_avg_sq"):
                if self.layout == "torch":
                    state[moment] = torch.zeros_like(p, memory_format=torch.preserve_format)
                else:
                    state.update(formats.allocate(p, self.fmt, moment))
            if self.layout != "torch" and self.rounding == "kahan" and formats.is_low_precision(p):
                state.update(formats.compensation_buffer(p))
        return state

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            states = [self._state(p) for p in params]
            for s in states:
                s["step"] += 1
            beta1, beta2 = group["betas"]
            c = group_coefficients(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                   weight_decay=group["weight_decay"], decay=Decay.DECOUPLED)
            c = cautious(c) if self.cautious else c
            grads = [p.grad for p in params]
            if self.layout == "torch":
                native.backend_step(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                    [], [s["step"] for s in states], c)
            else:
                native.step(params, grads, states, c, moments=self.fmt, rounding=self.rounding)


# The formats timed on the native kernel, by parameter dtype (as peers.FORMATS for the arena).
FORMATS: dict[torch.dtype, list[dict[str, Any]]] = {
    torch.float32: [dict(layout="torch"), dict(layout="torch", cautious_decay=True), dict(moments="bf16"),
                    dict(moments="8bit"), dict(moments="float8")],
    torch.bfloat16: [dict(param_rounding="kahan"), dict(param_rounding="stochastic"),
                     dict(moments="8bit", param_rounding="stochastic"),
                     dict(moments="float8", param_rounding="stochastic")],
}


def native_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    out = []
    for dt in dtypes:
        probe = [torch.empty(1, device=device, dtype=dt)]
        for options in FORMATS.get(dt, ()):
            text = ", ".join(f"{k}={v!r}" for k, v in options.items())
            skip = native.backend_unsupported_reason(probe) if device.type == "cpu" else "native kernels run on CPU"

            def make(ps, options=options):
                return NativeFormats(ps, **options)

            fmt = {"moments": options.get("moments", "param"),
                   "param_rounding": options.get("param_rounding", "nearest")}
            note = "torch's state layout" if options.get("layout") == "torch" else "state format"
            out.append(Contender(f"decoupled native({text})", "decoupled", dt, make, note=note, skip=skip,
                                 extra={"format": fmt}))
    return out
