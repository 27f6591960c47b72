"""The one table of cases the optimizer tests parametrize from, built from the registries.

Every backend of ``decoupled.backends.REGISTRY``, every moment format of
``decoupled.formats.MOMENTS`` with every ``param_rounding``, every executor of
``decoupled.formats.EXECUTORS`` and every weight-decay convention of
``decoupled.conventions.CONVENTIONS`` becomes a case here, so a new one registered in the
package is tested by the parity, reference, property, state-dict and format tests without
editing them (in the spirit of torch's ``OptimizerInfo`` table, ``optim_db``, and optax's one
table of optimizers under test).

A case knows how to build its optimizer, what it can run (read from the registry records, on
the test device), and how exact it is. What the registries cannot say is test knowledge, kept
in the small tables below: which torch.optim flags run the *same* implementation (then the
tests demand the same bits), and per-name tolerances where a case is looser than the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

import decoupled
from decoupled import backends, conventions, formats
from scenario import DEVICE

# ---- backends -------------------------------------------------------------------------------

TORCH_TWIN: dict[str, dict[str, Any]] = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
"""Backends that run torch's own implementation for the same flags: parity is bitwise."""

LOOSE: dict[str, dict[torch.dtype, dict[str, float]]] = {
    # inductor may contract multiply-adds: a few float32 ulps per step
    "compiled": {torch.float32: dict(rtol=1e-5, atol=1e-6)},
}
"""Tolerances against torch's for-loop where a backend is not bitwise equal to it (default below)."""

DEFAULT_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-14)}


@dataclass(frozen=True)
class BackendCase:
    """One backend, asked for by name (``backend=``)."""

    name: str
    record: backends.Backend

    @property
    def twin(self) -> dict[str, Any] | None:
        return TORCH_TWIN.get(self.name)

    def tol(self, dtype: torch.dtype) -> dict[str, float]:
        real = {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)
        return LOOSE.get(self.name, {}).get(real, DEFAULT_TOL[real])

    def skip_reason(self, dtype: torch.dtype = torch.float32, *, cautious: bool = False) -> str | None:
        return self.record.unsupported_reason(frozenset({(DEVICE.type, dtype)}), cautious=cautious)

    def runs_complex(self) -> bool:
        return self.skip_reason(torch.complex64) is None

    def kind(self) -> str:
        """The scenario parameter set it runs: with a complex tensor where it can."""
        return "complex" if self.runs_complex() else "edge"

    def make(self, params, convention: conventions.Convention = conventions.ADAMW, **kw) -> torch.optim.Optimizer:
        return make_optimizer(params, convention, backend=self.name, **kw)


BACKEND_CASES = [BackendCase(name, record) for name, record in backends.REGISTRY.items()]


def backend_params(dtype: torch.dtype = torch.float32, *, cautious: bool = False) -> list[Any]:
    """``pytest.param`` per backend, skipped (with the registry's reason) where it cannot run."""
    out = []
    for case in BACKEND_CASES:
        reason = case.skip_reason(dtype, cautious=cautious)
        out.append(pytest.param(case, id=case.name, marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return out


# ---- conventions ----------------------------------------------------------------------------

CONVENTION_CASES = list(conventions.CONVENTIONS.values()) + [
    conventions.of_group({"decay_scaling": s, "cautious_decay": True}) for s in ("independent", "corrected")
]
"""Every named convention, and cautious decay with the other scalings."""


def convention_params() -> list[Any]:
    return [pytest.param(c, id=c.key) for c in CONVENTION_CASES]


def make_optimizer(params, convention: conventions.Convention, **kw) -> torch.optim.Optimizer:
    """``decoupled.Adam`` for coupled L2, else ``decoupled.AdamW`` with the convention's options."""
    options = convention.optimizer_options()
    if options.pop("decoupled_weight_decay"):
        return decoupled.AdamW(params, **options, **kw)
    return decoupled.Adam(params, **kw)


# ---- state formats and executors ------------------------------------------------------------

FORMAT_TOL: dict[str, float] = {"param": 1e-5, "fp32": 1e-5, "bf16": 0.03, "8bit": 0.06}
"""How far a format's run may drift from the float32 run, as a fraction of the distance a
weight can travel (lr per step): float32 storage only rounds the arithmetic; bf16 rounds each
store to 2**-8 relative; 8-bit to 0.7% of a block's absmax. A new format gets the loosest."""


@dataclass(frozen=True)
class FormatCase:
    """A moment format with a parameter rounding, for parameters of ``dtype``, run by ``executor``."""

    moments: str
    rounding: str
    dtype: torch.dtype
    executor: str = "arena"

    @property
    def id(self) -> str:
        return f"{self.moments}-{self.rounding}-{str(self.dtype)[6:]}-{self.executor}"

    @property
    def options(self) -> dict[str, Any]:
        """The executor is asked for by the backend name it answers to; the arena (which answers
        to none: it runs whichever backend is named) with the loop backend, the reference."""
        asked = formats.EXECUTORS[self.executor].answers or "loop"
        return {"moments": self.moments, "param_rounding": self.rounding, "backend": asked}

    @property
    def stochastic(self) -> bool:
        """Whether it draws random bits (results depend on the noise, not only on the inputs)."""
        low = self.dtype in (torch.bfloat16, torch.float16)
        return self.moments == "bf16" or (self.rounding == "stochastic" and low)

    @property
    def drift(self) -> float:
        """Its FORMAT_TOL, and bf16's when the parameter itself is stored in bf16/fp16."""
        tol = FORMAT_TOL.get(self.moments, max(FORMAT_TOL.values()))
        return max(tol, FORMAT_TOL["bf16"]) if self.dtype != torch.float32 else tol

    def param_error(self, theta_max: float, steps: int) -> float:
        """The most that storing the parameter in its dtype can move it from exact arithmetic
        over ``steps`` steps: half a bf16 ulp (2**-8 relative) per step rounding to nearest, one
        ulp per step stochastically (unbiased, but bounded only so), and about one ulp in all
        with Kahan's compensation (the stored pair holds ~16 significant bits)."""
        if self.dtype == torch.float32:
            return 0.0
        per_step = {"nearest": 2.0**-8, "stochastic": 2.0**-7}.get(self.rounding)
        return (per_step * steps if per_step else 2 * 2.0**-8) * theta_max

    def skip_reason(self) -> str | None:
        p = torch.zeros(4096, dtype=self.dtype, device=DEVICE)
        group = {"moments": self.moments, "param_rounding": self.rounding}
        reason = formats.unsupported_reason(group, p)
        if reason is None:
            fmt, _ = formats.options(group)
            executor = formats.EXECUTORS[self.executor]
            reason = executor.why_not(fmt, self.rounding, frozenset({(DEVICE.type, self.dtype)}))
        return reason

    def make(self, params, **kw) -> torch.optim.Optimizer:
        return decoupled.AdamW(params, **{**self.options, **kw})


def _format_cases() -> list[FormatCase]:
    out = []
    for executor in formats.EXECUTORS:
        for moments in formats.MOMENTS:
            out.append(FormatCase(moments, "nearest", torch.float32, executor))
            for rounding in formats.ROUNDINGS:
                out.append(FormatCase(moments, rounding, torch.bfloat16, executor))
    return out


FORMAT_CASES = _format_cases()


def format_params(*, formatted_only: bool = True) -> list[Any]:
    """``pytest.param`` per format case (torch's own layout left out when ``formatted_only``)."""
    out = []
    for case in FORMAT_CASES:
        plain = case.moments == "param" and (case.rounding == "nearest" or case.dtype == torch.float32)
        if formatted_only and plain:
            continue
        reason = case.skip_reason()
        out.append(pytest.param(case, id=case.id, marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return out
