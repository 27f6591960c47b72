"""decoupled.AdamW / decoupled.Adam against torch.optim.AdamW / torch.optim.Adam, step for step.

Every registered backend (the case table, tests/cases.py), every option and their combinations,
over 50 steps with None gradients, an lr change, two param groups with different
hyperparameters, zero-size, non-contiguous, channels-last and complex parameters, in float32
and float64: the same bits against the torch implementation a backend mirrors, within its
tolerance (1e-5 relative in float32, 1e-12 in float64 by default) otherwise.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import decoupled
from cases import BACKEND_CASES, BackendCase
from scenario import assert_same, make_params, run_side_by_side, two_groups

PAIRS = {"AdamW": (decoupled.AdamW, torch.optim.AdamW), "Adam": (decoupled.Adam, torch.optim.Adam)}
# decoupled backend -> the torch.optim flags that run torch's matching implementation
BACKEND_FLAGS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _case_params():
    """Every registered backend (the case table) x class x amsgrad x maximize x wd x dtype."""
    out = []
    for case, cls, amsgrad, maximize, wd, dtype in itertools.product(
        BACKEND_CASES, PAIRS, (False, True), (False, True), (0.0, 0.1), (torch.float32, torch.float64)
    ):
        reason = case.skip_reason(dtype)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        name = f"{cls}-{case.name}-ams{int(amsgrad)}-max{int(maximize)}-wd{wd}-{str(dtype)[6:]}"
        out.append(pytest.param(case, cls, amsgrad, maximize, wd, dtype, id=name, marks=marks))
    return out


@pytest.mark.parametrize("case, cls, amsgrad, maximize, wd, dtype", _case_params())
def test_matches_torch(case: BackendCase, cls, amsgrad, maximize, wd, dtype):
    """Each backend against torch: the same bits against the torch implementation it mirrors
    (its twin flags), else within the case's tolerance of torch's for-loop."""
    ours, theirs = PAIRS[cls]
    kw = dict(amsgrad=amsgrad, maximize=maximize, weight_decay=wd)
    twin = case.twin

    def exact(p: torch.Tensor) -> bool:
        # Same implementation on both sides: the same bits. The one exception: torch's loop adds
        # the L2 term to a complex gradient in complex arithmetic, before viewing it as real
        # (its foreach path, like ours, adds on the real view): 1 ulp apart.
        return twin is not None and not (p.is_complex() and cls == "Adam" and case.name == "loop")

    def check(pa, pb, oa, ob, step):
        assert_same(pa, pb, oa, ob, step, exact=exact, tol=case.tol(dtype))

    run_side_by_side(
        lambda ps: ours(two_groups(ps, wd), backend=case.name, **kw),
        lambda ps: theirs(two_groups(ps, wd), **(twin or {"foreach": False}), **kw),
        make_params(case.kind(), dtype),
        check=check,
    )


@pytest.mark.parametrize("backend", BACKEND_FLAGS)
@pytest.mark.parametrize("cls", PAIRS)
def test_torch_flags_choose_the_twin_backend(cls, backend):
    """The drop-in path: torch's own flags on both sides give the same bits."""
    ours, theirs = PAIRS[cls]
    flags = BACKEND_FLAGS[backend]

    def exact(p: torch.Tensor) -> bool:
        return not (p.is_complex() and cls == "Adam" and backend == "loop")

    run_side_by_side(
        lambda ps: ours(two_groups(ps, 0.1), weight_decay=0.1, amsgrad=True, **flags),
        lambda ps: theirs(two_groups(ps, 0.1), weight_decay=0.1, amsgrad=True, **flags),
        make_params("edge" if backend == "fused" else "complex", torch.float32),
        check=lambda *a: assert_same(*a, exact=exact),
    )


@pytest.mark.parametrize("cls", PAIRS)
@pytest.mark.parametrize("backend", ["loop", "fused"])
def test_lr_as_tensor(cls, backend):
    ours, theirs = PAIRS[cls]
    flags = BACKEND_FLAGS[backend]
    run_side_by_side(
        lambda ps: ours(two_groups(ps, 0.1, lr=torch.tensor(1e-2)), weight_decay=0.1, **flags),
        lambda ps: theirs(two_groups(ps, 0.1, lr=torch.tensor(1e-2)), weight_decay=0.1, **flags),
        make_params("edge", torch.float32),
    )


def test_lr_as_tensor_on_foreach_matches_loop():
    """torch refuses a tensor lr with foreach=True, and so does decoupled (issue 10; tests/test_hyper.py);
    the foreach backend named with backend= reads it once and runs."""
    run_side_by_side(
        lambda ps: decoupled.AdamW(two_groups(ps, 0.1, lr=torch.tensor(1e-2)), backend="foreach"),
        lambda ps: torch.optim.AdamW(two_groups(ps, 0.1, lr=torch.tensor(1e-2)), foreach=False),
        make_params("complex", torch.float32),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["edge", "complex"])
def test_default_backend_matches_torch_default(kind, dtype):
    """foreach=None, fused=None: decoupled picks its fastest backend; the numbers stay torch's."""
    run_side_by_side(
        lambda ps: decoupled.AdamW(two_groups(ps, 0.05), amsgrad=True),
        lambda ps: torch.optim.AdamW(two_groups(ps, 0.05), amsgrad=True),
        make_params(kind, dtype),
    )


def test_adam_with_decoupled_weight_decay_is_adamw():
    run_side_by_side(
        lambda ps: decoupled.Adam(ps, weight_decay=0.1, decoupled_weight_decay=True),
        lambda ps: torch.optim.AdamW(ps, weight_decay=0.1),
        make_params("complex", torch.float64),
    )


def test_named_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    twin.load_state_dict(model.state_dict())
    ours = decoupled.AdamW(model.named_parameters(), lr=1e-2, foreach=False)
    theirs = torch.optim.AdamW(twin.named_parameters(), lr=1e-2, foreach=False)
    x = torch.randn(8, 4)
    for _ in range(5):
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]
    assert ours.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]


def _unrolled(cls, w0: torch.Tensor, amsgrad: bool) -> torch.Tensor:
    """theta after 3 differentiable steps from w0, with a gradient that depends on theta."""
    w = w0.clone()  # a non-leaf that the optimizer updates in place
    opt = cls([w], lr=0.1, weight_decay=0.1, amsgrad=amsgrad, differentiable=True)
    for _ in range(3):
        w.grad = 2.5 * w - 0.3  # has autograd history through w
        opt.step()
    return w


@pytest.mark.parametrize("amsgrad", [False, True])
def test_differentiable(amsgrad):
    """differentiable=True gives torch's (non-differentiable) numbers, and correct gradients.

    torch's own differentiable path computes the bias corrections as float32 tensors, which
    moves its result by ~1e-5 relative; and it cannot backpropagate through amsgrad steps.
    """
    w0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    ours = _unrolled(decoupled.AdamW, w0, amsgrad)
    w = w0.detach().clone()
    plain = torch.optim.AdamW([w], lr=0.1, weight_decay=0.1, amsgrad=amsgrad)
    for _ in range(3):
        w.grad = 2.5 * w - 0.3
        plain.step()
    torch.testing.assert_close(ours.detach(), w, rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(lambda w: _unrolled(decoupled.AdamW, w, amsgrad), (w0,))


def test_closure_is_called_and_loss_returned():
    w = torch.ones(3, requires_grad=True)
    opt = decoupled.AdamW([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w * torch.arange(3.0)).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(3.0)
    assert w[0].item() == pytest.approx(1 - 0.1 * 0.01)  # zero gradient: only decayed
    assert w[2].item() == pytest.approx((1 - 0.1 * 0.01) - 0.1, rel=1e-6)


@pytest.mark.parametrize(
    "backend, flags", [("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]
)
def test_backend_option_runs_that_backend(backend, flags):
    """backend= names a backend directly; it is an execution choice, not saved in the state dict."""
    a, b = run_side_by_side(
        lambda ps: decoupled.AdamW(two_groups(ps, 0.1), backend=backend),
        lambda ps: torch.optim.AdamW(two_groups(ps, 0.1), **flags),
        make_params("edge", torch.float32),
        steps=10,
    )
    ga, gb = a.state_dict()["param_groups"], b.state_dict()["param_groups"]
    assert [list(g) for g in ga] == [list(g) for g in gb]  # same keys: no "backend" saved


def test_backend_option_errors():
    with pytest.raises(ValueError, match=r"unknown backend 'turbo'; choose one of \['auto', 'loop'"):
        decoupled.AdamW([torch.ones(2, requires_grad=True)], backend="turbo")
    with pytest.raises(ValueError, match="both choose the backend; pass one of them"):
        decoupled.Adam([torch.ones(2, requires_grad=True)], backend="loop", fused=True)


def test_docstring_examples_run():
    import doctest

    from decoupled import functional, optim

    for module in (functional, optim):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__
