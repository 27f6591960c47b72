"""Hyperparameters and flags as torch takes them (issue 10), with torch as the judge.

For every case the same keyword arguments go to ``torch.optim.AdamW``/``Adam`` and to ours:
what torch refuses we refuse (same exception type, torch's wording first), what torch accepts
we accept, and a harmful value torch accepts warns. Then the functions of ``decoupled.hyper``
one by one: flags to bools, numbers to the form the step uses, the step-time rules.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

import decoupled
from decoupled import hyper

PAIRS = {"AdamW": (decoupled.AdamW, torch.optim.AdamW), "Adam": (decoupled.Adam, torch.optim.Adam)}
T = torch.tensor

# (id, kwargs, harmful: our construction warns HyperparameterWarning)
CASES = [
    ("amsgrad=1", dict(amsgrad=1), False),
    ("amsgrad=0", dict(amsgrad=0), False),
    ("maximize=0", dict(maximize=0), False),
    ("maximize=np.True_", dict(maximize=np.bool_(True)), False),
    ("amsgrad=np.True_ fused", dict(amsgrad=np.bool_(True), fused=True), False),
    ("foreach=0", dict(foreach=0), False),
    ("fused=np.True_", dict(fused=np.bool_(True)), False),
    ("amsgrad='no'", dict(amsgrad="no"), True),
    ("amsgrad=None", dict(amsgrad=None), True),
    ("lr=np.float32", dict(lr=np.float32(1e-3)), False),
    ("lr=np.float64", dict(lr=np.float64(1e-3)), False),
    ("lr=int", dict(lr=1), False),
    ("lr=True", dict(lr=True), True),
    ("lr=0", dict(lr=0.0), False),
    ("lr=tensor", dict(lr=T(1e-3)), False),
    ("lr=tensor[[.]]", dict(lr=T([[1e-3]])), False),
    ("lr=tensor f64", dict(lr=T(1e-3, dtype=torch.float64)), False),
    ("lr=tensor foreach capturable", dict(lr=T(1e-3), foreach=True, capturable=True), False),
    ("weight_decay=np.float32", dict(weight_decay=np.float32(0.1)), False),
    ("weight_decay=tensor", dict(weight_decay=T(0.1)), False),
    ("eps=tensor", dict(eps=T(1e-8)), False),
    ("eps=0", dict(eps=0), False),
    ("betas=list", dict(betas=[0.9, 0.99]), False),
    ("betas=np.float64", dict(betas=(np.float64(0.9), 0.99)), False),
    ("betas=tensors", dict(betas=(T(0.9), T(0.99))), False),
    ("betas=tensors of any shape", dict(betas=(T([[0.9]]), T([0.99]))), False),
    ("lr=inf", dict(lr=math.inf), True),
    ("eps=inf", dict(eps=math.inf), True),
    ("weight_decay=inf", dict(weight_decay=math.inf), True),
    # refused by torch
    ("lr<0", dict(lr=-1e-3), False),
    ("lr=nan", dict(lr=math.nan), False),
    ("lr=str", dict(lr="0.1"), False),
    ("lr=None", dict(lr=None), False),
    ("lr=tensor<0", dict(lr=T(-1.0)), False),
    ("lr=tensor nan", dict(lr=T(math.nan)), False),
    ("lr=complex tensor", dict(lr=T(1e-3 + 0j)), False),
    ("lr=2-element tensor", dict(lr=T([1e-3, 1e-3])), False),
    ("lr=tensor foreach", dict(lr=T(1e-3), foreach=True), False),
    ("lr=2-element tensor foreach", dict(lr=T([1e-3, 1e-3]), foreach=True), False),
    ("eps<0", dict(eps=-1.0), False),
    ("eps=nan", dict(eps=math.nan), False),
    ("weight_decay<0", dict(weight_decay=-1), False),
    ("weight_decay=nan", dict(weight_decay=math.nan), False),
    ("beta1=1", dict(betas=(1.0, 0.0)), False),
    ("beta2<0", dict(betas=(0.9, -0.1)), False),
    ("beta=nan", dict(betas=(0.9, math.nan)), False),
    ("betas=int", dict(betas=(0, 0.9)), False),
    ("betas=np.float32", dict(betas=(np.float32(0.9), 0.99)), False),
    ("betas=bool", dict(betas=(False, 0.9)), False),
    ("betas=float,tensor", dict(betas=(0.9, T(0.99))), False),
    ("betas=tensor,float", dict(betas=(T(0.9), 0.99)), False),
    ("betas=tensors foreach", dict(betas=(T(0.9), T(0.99)), foreach=True), False),
    ("betas=2-element tensor", dict(betas=(T(0.9), T([0.99, 0.9]))), False),
    ("betas=1-tuple", dict(betas=(0.9,)), False),
    ("betas=float", dict(betas=0.9), False),
    ("betas=3-tuple", dict(betas=(0.9, 0.99, 0.999)), False),
    ("fused+differentiable", dict(fused=True, differentiable=True), False),
    ("fused+foreach", dict(fused=True, foreach=True), False),
]


def outcome(fn):
    """(exception type, message) of ``fn()``, or None when it returns. Warnings pass through."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the judge's outcome, whatever it is
        return type(err), str(err)
    return None


def params():
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.full((3,), 0.5)
    return [p]


def stepped(cls, kwargs):
    def run():
        opt = cls(params(), **kwargs)
        opt.step()
        opt.step()

    return run


@pytest.mark.parametrize("cls", PAIRS)
@pytest.mark.parametrize("name, kwargs, harmful", CASES, ids=[c[0] for c in CASES])
def test_construction_matches_torch(cls, name, kwargs, harmful):
    ours, theirs = PAIRS[cls]
    judge = outcome(lambda: theirs(params(), **kwargs))
    at_step = outcome(stepped(theirs, kwargs)) if judge is None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mine = outcome(lambda: ours(params(), **kwargs))
    if judge is not None:  # refused by torch's constructor: the same type, torch's words first
        assert mine is not None, f"torch refuses {kwargs} with {judge}; we accept it"
        assert mine[0] is judge[0] and mine[1].startswith(judge[1]), f"torch: {judge}, ours: {mine}"
    elif at_step is not None and at_step[0] in (ValueError, RuntimeError) and "unpack" in at_step[1]:
        # torch constructs, then every step() fails: we refuse at once, with its type and words
        assert mine is not None and mine[0] is at_step[0] and mine[1].startswith(at_step[1]), (at_step, mine)
    else:
        assert mine is None, f"torch accepts {kwargs}; we refuse it with {mine}"
    ours_warned = [w for w in caught if issubclass(w.category, hyper.HyperparameterWarning)]
    assert bool(ours_warned) == (harmful and mine is None), [str(w.message) for w in caught]


def step_cases():
    for name, kwargs, harmful in CASES:
        yield pytest.param(name, kwargs, harmful, id=name)


@pytest.mark.filterwarnings("ignore::decoupled.hyper.HyperparameterWarning")
@pytest.mark.parametrize("cls", PAIRS)
@pytest.mark.parametrize("name, kwargs, harmful", list(step_cases()))
def test_two_steps_match_torch(cls, name, kwargs, harmful):
    """Construct and step twice: we run wherever torch runs (and where only torch's fused kernel
    trips over an unnormalized flag), to torch's parameters (1e-6); we fail where torch fails."""
    ours, theirs = PAIRS[cls]
    judge = outcome(stepped(theirs, kwargs))
    mine = outcome(stepped(ours, kwargs))
    flag_kernel_error = judge is not None and judge[0] is TypeError and "_fused_adam" in judge[1]
    if judge is None or flag_kernel_error:
        assert mine is None, f"torch runs {kwargs} (or trips only on an unnormalized flag); we fail: {mine}"
        truthy = {
            k: (bool(v) if k in hyper.FLAGS + hyper.OPTIONAL_FLAGS and v is not None else v) for k, v in kwargs.items()
        }
        pa, pb = params(), params()
        for p, cls_ in ((pa, ours), (pb, theirs)):
            opt = cls_(p, **truthy)
            opt.step()
            opt.step()
        torch.testing.assert_close(pa[0], pb[0], rtol=1e-6, atol=1e-7, equal_nan=True)
    else:
        assert mine is not None and mine[0] is judge[0], f"torch: {judge}; ours: {mine}"


# ---- the functions ---------------------------------------------------------------------------

FLAG_CASES = [
    (True, True, False),
    (False, False, False),
    (1, True, False),
    (0, False, False),
    (np.bool_(True), True, False),
    (np.int64(0), False, False),
    ("no", True, True),
    ("", False, True),
    (2, True, True),
    (None, False, True),
]


@pytest.mark.parametrize("value, expected, warns", FLAG_CASES, ids=[repr(c[0]) for c in FLAG_CASES])
def test_as_flag(value, expected, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = hyper.as_flag("amsgrad", value)
    assert got is expected
    assert bool(caught) == warns
    if warns:
        assert re.search(
            rf"amsgrad={re.escape(repr(value))} is not a bool; it is used as {expected}", str(caught[0].message)
        )


def test_optional_flags_keep_none_and_a_tensor_flag_fails_as_in_torch():
    assert hyper.as_flag("foreach", None, optional=True) is None
    with pytest.raises(RuntimeError, match=r"Boolean value of Tensor with more than one value is ambiguous.*pass True"):
        hyper.as_flag("amsgrad", torch.ones(2))


def test_normalize_group():
    lr = torch.tensor([[1e-3]])
    group = {
        "lr": lr,
        "betas": (torch.tensor([0.9]), torch.tensor([[0.99]])),
        "eps": np.float32(1e-8),
        "weight_decay": 1,
        "amsgrad": 1,
        "maximize": np.bool_(False),
        "foreach": None,
        "fused": 0,
        "capturable": 0,
        "differentiable": False,
        "decoupled_weight_decay": 1,
        "params": [],
    }
    out = hyper.normalize_group(group)
    assert out["lr"] is lr  # the user's tensor: schedules fill it in place, autograd reaches it
    assert [b.shape for b in out["betas"]] == [(), ()] and out["betas"][1].item() == pytest.approx(0.99)
    assert type(out["eps"]) is float and out["eps"] == float(np.float32(1e-8))
    assert type(out["weight_decay"]) is float
    flags = {k: out[k] for k in (*hyper.FLAGS, *hyper.OPTIONAL_FLAGS)}
    assert flags == dict(
        amsgrad=True,
        maximize=False,
        capturable=False,
        differentiable=False,
        decoupled_weight_decay=True,
        foreach=None,
        fused=False,
    )
    assert all(type(v) is bool for v in flags.values() if v is not None)
    assert "params" not in out and group["amsgrad"] == 1  # a new dict; the group is unchanged


def test_step_values_are_views_that_keep_autograd():
    lr = torch.tensor([1e-3], requires_grad=True)
    wd = torch.tensor(0.1, requires_grad=True)
    group = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": wd, "amsgrad": 1}
    v = hyper.step_values(group)
    assert v.lr.shape == () and v.lr.data_ptr() == lr.data_ptr() and v.amsgrad is True
    (v.lr * 2 + v.weight_decay).backward()
    assert lr.grad.item() == 2 and wd.grad.item() == 1
    assert (v.beta1, v.beta2, v.foreach, v.fused) == (0.9, 0.999, None, None)


def base_group(**kw):
    group = dict(
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.01,
        amsgrad=False,
        maximize=False,
        foreach=None,
        capturable=False,
        differentiable=False,
        fused=None,
        decoupled_weight_decay=True,
    )
    group.update(kw)
    return group


def torch_step_outcome(**changes):
    """What torch's step() does after a group is changed past its constructor's checks."""
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = torch.optim.AdamW([p])
    opt.param_groups[0].update(changes)
    return outcome(opt.step)


# (change made to a group after construction, e.g. by a schedule; torch's step raises it?)
STEP_CHANGES = [
    ("lr<0 (a schedule)", dict(lr=-0.5)),
    ("lr nan", dict(lr=math.nan)),
    ("beta out of range", dict(betas=(1.5, 0.999))),
    ("tensor lr + foreach", dict(lr=torch.tensor(1e-3), foreach=True)),
    ("3 betas", dict(betas=(0.9, 0.99, 0.9))),
    ("fused + differentiable", dict(fused=True, differentiable=True)),
]


@pytest.mark.parametrize("name, change", STEP_CHANGES, ids=[c[0] for c in STEP_CHANGES])
def test_check_at_step_raises_only_what_torchs_step_raises(name, change):
    judge = torch_step_outcome(**change)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mine = outcome(lambda: hyper.check_group(base_group(**change), where="param group 0", at="step"))
    if judge is None:
        assert mine is None and any(issubclass(w.category, hyper.HyperparameterWarning) for w in caught)
    else:
        assert mine is not None and mine[0] is judge[0], (judge, mine)
        if "fused" not in name:  # torch's fused kernel words it differently; the type is what counts
            assert mine[1].startswith(judge[1]), (judge, mine)


@pytest.mark.parametrize(
    "name, change", STEP_CHANGES + [("lr inf", dict(lr=math.inf))], ids=[c[0] for c in STEP_CHANGES] + ["lr inf"]
)
def test_check_at_load_refuses_every_problem(name, change):
    with pytest.raises(ValueError, match="in param group 3"):
        hyper.check_group(base_group(**change), where="param group 3", at="load")


def test_fused_problem_is_torchs_message():
    with torch.device("meta"):
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
    judge = outcome(torch.optim.AdamW([p], fused=True).step)
    assert judge is not None and judge[0] is RuntimeError
    assert hyper.fused_problem(p) == judge[1]
    assert hyper.fused_problem(torch.ones(2)) is None


@pytest.mark.parametrize("foreach", [False, True])
def test_capturable_problem_is_torchs_message(foreach):
    p = torch.ones(2, requires_grad=True)
    p.grad = torch.ones(2)
    judge = outcome(torch.optim.AdamW([p], capturable=True, foreach=foreach).step)
    assert judge is not None and judge[0] is AssertionError
    assert hyper.capturable_problem([p], foreach=foreach) == judge[1]


def test_check_group_names_the_moment():
    with pytest.raises(ValueError, match="at='later'; choose one of"):
        hyper.check_group(base_group(), at="later")
