"""Corrected decay (AdamC) against timm's own ``AdamWLegacy(corrected_weight_decay=True)``, step for step.

timm (https://github.com/huggingface/pytorch-image-models) implements Defazio et al.'s corrected
weight decay (arXiv:2506.02285) as a per-step factor ``1 - lr**2 / max_lr * weight_decay`` with
``max_lr`` the lr given to the constructor (``max_lr_snapshot``, shared by every group that does not
set its own). ``decoupled.AdamW(decay_scaling="corrected")`` computes ``1 - lr * lr / lr_max * wd``
with ``lr_max`` each group's initial lr, or the constructor's ``lr_max=`` for all groups.

timm's package import (``import timm``) loads its models, which need torchvision; torchvision has no
CPU build on this project's index and would pull a CUDA torch. Its optimizer files do not use it:
``timm/optim/adamw.py`` imports only torch and its sibling ``_helpers``/``_types`` modules. So the
installed timm (``pip install --no-deps timm``, as ``make setup`` does) is located without being
imported, and those files are loaded as a package of their own: timm's arithmetic, unchanged.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

import decoupled
from cases import BackendCase, backend_params
from scenario import TOL, assert_same, clone_params, gradient, make_params, two_groups

_PACKAGE = "_timm_optim_files"
"""The name under which timm's optim directory is loaded (not ``timm.optim``: its __init__ imports the models)."""


def _timm_adamw_legacy() -> type[torch.optim.Optimizer] | None:
    """timm's ``AdamWLegacy`` from the installed timm's ``optim/adamw.py``, or None without timm."""
    if _PACKAGE in sys.modules:
        return sys.modules[f"{_PACKAGE}.adamw"].AdamWLegacy
    spec = importlib.util.find_spec("timm")  # finds the package without running timm/__init__.py
    if spec is None or not spec.submodule_search_locations:
        return None
    optim_dir = Path(next(iter(spec.submodule_search_locations))) / "optim"
    if not (optim_dir / "adamw.py").is_file():
        return None
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(optim_dir)]  # relative imports (from ._helpers import ...) resolve in timm/optim
    sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.adamw").AdamWLegacy


AdamWLegacy = _timm_adamw_legacy()
if AdamWLegacy is None:
    pytest.skip(
        "timm is not installed; install it without its dependencies (its package import needs torchvision, this "
        "test loads only timm/optim/adamw.py): pip install --no-deps timm",
        allow_module_level=True,
    )
if "corrected_weight_decay" not in AdamWLegacy.__init__.__code__.co_varnames:
    pytest.skip("the installed timm's AdamWLegacy has no corrected_weight_decay; pip install -U --no-deps timm",
                allow_module_level=True)  # fmt: skip

STEPS = 50
LR = 2e-2
WD = 0.3
TIMM_LOOP = {"foreach": False}
EXACT_TWIN: dict[str, dict[str, bool]] = {"loop": {"foreach": False}, "foreach": {"foreach": True}}
"""Backends whose arithmetic is the same sequence of torch ops as one of timm's paths: bitwise equal."""


def factor(step: int) -> float:
    """The lr schedule's multiplier: 10 steps of linear warmup from 0.1, then cosine to 0 at step 50."""
    warm = min(1.0, (step + 1) / 10)
    return warm * 0.5 * (1 + math.cos(math.pi * step / STEPS))


# (name, options shared by both optimizers, how the parameters are grouped)
OPTION_CASES = [
    ("plain", {}, "one"),
    ("amsgrad-maximize", {"amsgrad": True, "maximize": True}, "one"),
    ("betas-eps", {"betas": (0.8, 0.99), "eps": 1e-6}, "one"),
    # timm's max_lr is the constructor's lr for every group; ours is each group's initial lr, or lr_max=
    ("two-groups-ctor-lr-max", {}, "ctor"),
    ("two-groups-own-lr-max", {}, "own"),
]


def _optimizers(case: BackendCase, pa, pb, options: dict, grouping: str):
    ours: dict = {"backend": case.name, "decay_scaling": "corrected"}
    theirs: dict = {"corrected_weight_decay": True, **EXACT_TWIN.get(case.name, TIMM_LOOP)}
    if grouping == "one":
        a, b = pa, pb
    else:
        a, b = two_groups(pa, WD, LR), two_groups(pb, WD, LR)
        if grouping == "ctor":
            ours["lr_max"] = LR
        else:
            for group in b:
                group["max_lr_snapshot"] = group["lr"]
    opt_a = decoupled.AdamW(a, lr=LR, weight_decay=WD, **options, **ours)
    opt_b = AdamWLegacy(b, lr=LR, weight_decay=WD, **options, **theirs)
    return opt_a, opt_b


def _run(opt_a, opt_b, pa, pb, exact: bool, dtype: torch.dtype) -> None:
    """50 steps under the schedule (a None gradient on the way), params and state checked after each."""
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (opt_a, opt_b)]
    tol = dict(rtol=0, atol=0) if exact else TOL[dtype]
    for step in range(STEPS):
        for i, (a, b) in enumerate(zip(pa, pb)):
            g = None if (step, i) == (4, 1) else gradient(step, i, a)
            a.grad, b.grad = (None, None) if g is None else (g.clone(), g.clone())
        opt_a.step()
        opt_b.step()
        assert_same(pa, pb, opt_a, opt_b, step, tol=tol)
        for s in schedules:
            s.step()


def _cases():
    out = []
    for dtype in (torch.float32, torch.float64):
        for backend in backend_params(dtype):
            for name, options, grouping in OPTION_CASES:
                out.append(pytest.param(backend.values[0], dtype, options, grouping,
                                        id=f"{backend.id}-{str(dtype)[6:]}-{name}", marks=backend.marks))  # fmt: skip
    return out


@pytest.mark.parametrize("case, dtype, options, grouping", _cases())
def test_corrected_decay_matches_timm(case: BackendCase, dtype: torch.dtype, options: dict, grouping: str) -> None:
    """Params and state equal timm's over 50 steps of a warmup-cosine schedule: bitwise for the loop and
    foreach backends (timm's for-loop and foreach paths), else within 1e-6 (float32) / 1e-12 (float64)."""
    params = make_params(case.kind(), dtype)
    pa, pb = clone_params(params), clone_params(params)
    opt_a, opt_b = _optimizers(case, pa, pb, options, grouping)
    _run(opt_a, opt_b, pa, pb, exact=case.name in EXACT_TWIN, dtype=dtype)
    for group in opt_a.param_groups:  # the schedule moved lr; lr_max stayed the peak
        assert group["decay_scaling"] == "corrected" and group["lr"] < group["lr_max"]


@pytest.mark.parametrize("scaling", ["lr", "independent"])
def test_the_comparison_tells_the_scalings_apart(scaling: str) -> None:
    """The same run with another decay_scaling differs from timm's corrected decay (the test can fail)."""
    params = make_params("basic", torch.float64)
    pa, pb = clone_params(params), clone_params(params)
    opt_a = decoupled.AdamW(pa, lr=LR, weight_decay=WD, decay_scaling=scaling, backend="loop")
    opt_b = AdamWLegacy(pb, lr=LR, weight_decay=WD, corrected_weight_decay=True, foreach=False)
    with pytest.raises(AssertionError, match="param of param 0"):
        _run(opt_a, opt_b, pa, pb, exact=False, dtype=torch.float64)


def test_timm_state_dict_loads_into_corrected_adamw() -> None:
    """timm's state is torch's layout: a checkpoint of timm's run continues in decoupled.AdamW bit for bit."""
    params = make_params("basic", torch.float32)
    pa, pb = clone_params(params), clone_params(params)
    opt_b = AdamWLegacy(pb, lr=LR, weight_decay=WD, corrected_weight_decay=True, foreach=False)
    for step in range(5):
        for i, b in enumerate(pb):
            b.grad = gradient(step, i, b)
        opt_b.step()
    with torch.no_grad():
        for a, b in zip(pa, pb):
            a.copy_(b)
    opt_a = decoupled.AdamW(pa, lr=LR, weight_decay=WD, decay_scaling="corrected", backend="loop")
    saved = copy.deepcopy(opt_b.state_dict())  # as torch.save/torch.load would hand it over
    opt_a.load_state_dict({"state": saved["state"], "param_groups": opt_a.state_dict()["param_groups"]})
    _run(opt_a, opt_b, pa, pb, exact=True, dtype=torch.float32)
