"""torch's own optimizer table (``optim_db`` of torch/testing/_internal/common_optimizers.py, which
ships in the torch wheel) for Adam and AdamW, and what our tests need from it.

torch's table is imported as it is; its ``common_utils`` imports ``expecttest`` (a torch test
dependency that a plain torch install lacks, in the ``test`` extra here).

Implementations: torch selects one with ``foreach``/``fused``/``differentiable``; the same
flags select ours. Where both sides run the same implementation the numbers are the same to
the bit; elsewhere torch's own tolerances apply (``torch.testing.assert_close`` defaults, or
the table's ``toleranceOverride`` for a test).
"""

from __future__ import annotations

import copy
import unittest
import unittest.mock
from dataclasses import dataclass, field

import torch
from torch.testing._internal import common_optimizers as table

import decoupled

NAMES = ("Adam", "AdamW")
INFOS = {info.name: info for info in table.optim_db if info.name in NAMES}
OURS = {"Adam": decoupled.Adam, "AdamW": decoupled.AdamW}
THEIRS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
OptimizerErrorEnum = table.OptimizerErrorEnum


@dataclass(frozen=True)
class Impl:
    """One implementation choice: the flags passed to both classes, and whether both then run
    the same implementation (so the results are the same bits)."""

    name: str
    flags: dict = field(default_factory=dict)
    same_bits: bool = True
    tol: dict = field(default_factory=dict)  # when not the same bits: torch's defaults unless given


IMPLS = [
    Impl("loop", {"foreach": False}),
    Impl("foreach", {"foreach": True}),
    Impl("fused", {"fused": True}),
    # torch's default on CPU is its for-loop, ours the fused kernel: ulps apart
    Impl("default", {}, same_bits=False),
    # torch's differentiable path computes the bias corrections as tensors of the step's dtype
    # (float32): 2e-7 from its own for-loop in float64 at lr=0.01, so float32's tolerance
    Impl("differentiable", {"differentiable": True}, same_bits=False, tol=dict(rtol=1.3e-6, atol=1e-5)),
    # torch's table's base case: fused=False, torch runs its default (the for-loop on CPU);
    # test_dropin.py::test_fused_false_runs_the_for_loop asks for the same bits
    Impl("fused=False", {"fused": False, "differentiable": False}, same_bits=False),
]


def optim_inputs(name: str, device: str = "cpu", dtype: torch.dtype | None = None) -> list:
    """The table's configurations for ``device`` (fresh objects: tensor lrs are mutable)."""
    return INFOS[name].optim_inputs_func(device, dtype)


def cuda_only_inputs(name: str) -> list:
    """The table's configurations that it lists only for CUDA (capturable ones)."""
    cpu = {inp.desc for inp in optim_inputs(name)}
    return [inp for inp in optim_inputs(name, "cuda") if inp.desc not in cpu]


def error_inputs(name: str, device: str = "cpu") -> list:
    return INFOS[name].optim_error_inputs_func(device, torch.float32)


def cuda_only_error_inputs(name: str) -> list:
    """The error inputs the table lists only for CUDA. Without CUDA their sample tensors are
    made on the meta device (only their descriptions are used then)."""
    cpu = {e.optimizer_error_input.desc for e in error_inputs(name)}
    if torch.cuda.is_available():
        cuda = error_inputs(name, "cuda")
    else:
        empty = torch.empty
        with unittest.mock.patch.object(torch, "empty", lambda *a, device=None, **k: empty(*a, device="meta", **k)):
            cuda = error_inputs(name, "cuda")
    return [e for e in cuda if e.optimizer_error_input.desc not in cpu]


def all_inputs(name: str, impls: list[Impl] | None = None) -> list[tuple[str, dict]]:
    """Every CPU configuration of the table with every implementation: ``(id, kwargs)``. Like
    torch's helper for its tests (``_get_optim_inputs_including_global_cliquey_kwargs``), which
    on CPU adds only fused and differentiable; here the loop and foreach are named too."""
    return [
        (f"{inp.desc} & {impl.name}", kwargs_for(inp, impl)) for inp in optim_inputs(name) for impl in impls or IMPLS
    ]


def decorators(name: str, test: str, dtype: torch.dtype) -> list:
    """The table's decorators for torch's test ``test`` (class TestOptimRenewed) on CPU."""
    return INFOS[name].get_decorators("TestOptimRenewed", test, "cpu", dtype, {"dtype": dtype})


def tolerance(name: str, test: str, dtype: torch.dtype) -> dict:
    """torch's tolerance for ``test`` at ``dtype``: the table's override, else assert_close's default."""
    for d in decorators(name, test, dtype):
        overrides = getattr(d, "d", None)
        if isinstance(overrides, dict) and dtype in overrides:
            return dict(atol=overrides[dtype].atol, rtol=overrides[dtype].rtol)
    return {}


def skip_reason(name: str, test: str, dtype: torch.dtype = torch.float32) -> str | None:
    """Why the table skips ``test`` for this optimizer here, or None: its skip decorators are
    applied to a function and run, as torch's test runner would."""
    fn = lambda: None  # noqa: E731
    for d in decorators(name, test, dtype):
        if getattr(d, "d", None) is None:  # not a toleranceOverride
            fn = d(fn)
    try:
        fn()
    except unittest.SkipTest as skip:
        return str(skip)
    return None


def kwargs_for(inp, impl: Impl) -> dict:
    """An optimizer input's keyword arguments with an implementation's flags (a deep copy)."""
    kwargs = copy.deepcopy(inp.kwargs)
    kwargs.update(impl.flags)
    return kwargs


def assert_close(actual, expected, *, same_bits: bool, what: str = "", **tol) -> None:
    """Equal bits when ``same_bits``, else within torch's tolerance (``tol`` overrides its defaults)."""
    kw = dict(rtol=0, atol=0) if same_bits else tol
    torch.testing.assert_close(actual, expected, equal_nan=True, msg=lambda m: f"{what}: {m}", **kw)
