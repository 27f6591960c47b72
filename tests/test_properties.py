"""Properties of the update that hold for any input (hypothesis), on every backend."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoupled

BACKENDS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
CONVENTIONS = ["decoupled", "lr_independent", "coupled"]

values = st.lists(st.floats(-100, 100, allow_nan=False, width=64), min_size=1, max_size=8)
lrs = st.floats(1e-5, 0.5)
wds = st.floats(1e-4, 1.0)
betas = st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.9999))
common = settings(max_examples=40, deadline=None)


def make(convention: str, params, backend: str, **kw):
    if convention == "coupled":
        return decoupled.Adam(params, **BACKENDS[backend], **kw)
    return decoupled.AdamW(params, lr_independent_decay=convention == "lr_independent", **BACKENDS[backend], **kw)


def one_step(convention, backend, theta, grad, steps=1, **kw) -> torch.Tensor:
    p = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    opt = make(convention, [p], backend, **kw)
    for _ in range(steps):
        p.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
    return p.detach()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("convention", CONVENTIONS)
@common
@given(theta=values, wd=wds, b=betas, amsgrad=st.booleans(), maximize=st.booleans(), data=st.data())
def test_zero_lr_leaves_params_unchanged(convention, backend, theta, wd, b, amsgrad, maximize, data):
    grad = data.draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(theta), max_size=len(theta)))
    kw = dict(lr=0.0, weight_decay=wd, betas=b, amsgrad=amsgrad, maximize=maximize)
    if convention == "lr_independent":
        kw["lr_max"] = 1e-3
    after = one_step(convention, backend, theta, grad, steps=3, **kw)
    assert torch.equal(after, torch.tensor(theta, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("convention", ["decoupled", "lr_independent"])
@common
@given(theta=values, lr=lrs, wd=wds, data=st.data())
def test_decay_is_exactly_the_decay_term(convention, backend, theta, lr, wd, data):
    """step(wd) - step(0) = -(lr * wd) * theta  (PyTorch form), -(lr / lr_max * wd) * theta (lr-independent)."""
    grad = data.draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(theta), max_size=len(theta)))
    lr_max = 2 * lr
    extra = {"lr_max": lr_max} if convention == "lr_independent" else {}
    with_wd = one_step(convention, backend, theta, grad, lr=lr, weight_decay=wd, **extra)
    without = one_step(convention, backend, theta, grad, lr=lr, weight_decay=0.0, **extra)
    rate = lr * wd if convention == "decoupled" else lr / lr_max * wd
    t = torch.tensor(theta, dtype=torch.float64)
    torch.testing.assert_close(with_wd - without, -rate * t, rtol=1e-9, atol=1e-12 * (1 + t.abs().max().item()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("convention", CONVENTIONS)
@common
@given(theta=values, lr=lrs, wd=wds, data=st.data())
def test_group_with_zero_weight_decay_ignores_decay(convention, backend, theta, lr, wd, data):
    grad = data.draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(theta), max_size=len(theta)))
    decayed = torch.ones(3, dtype=torch.float64, requires_grad=True)
    free = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    opt = make(convention, [{"params": [decayed]}, {"params": [free], "weight_decay": 0.0}], backend, lr=lr, weight_decay=wd)
    for _ in range(3):
        decayed.grad = torch.ones(3, dtype=torch.float64)
        free.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
    alone = one_step(convention, backend, theta, grad, steps=3, lr=lr, weight_decay=0.0)
    assert torch.equal(free.detach(), alone)


@pytest.mark.parametrize("backend", BACKENDS)
@common
@given(
    theta=values,
    lr=lrs,
    data=st.data(),
)
def test_first_step_moves_by_lr_against_gradient_sign(backend, theta, lr, data):
    """At t = 1, m_hat / sqrt(v_hat) = g / |g|: every weight moves by lr against sign(g)."""
    magnitude = st.floats(1e-3, 1e3)
    grad = [
        data.draw(magnitude) * data.draw(st.sampled_from([-1.0, 1.0])) for _ in theta
    ]
    after = one_step("decoupled", backend, theta, grad, lr=lr, weight_decay=0.0)
    t, g = torch.tensor(theta, dtype=torch.float64), torch.tensor(grad, dtype=torch.float64)
    torch.testing.assert_close(after - t, -lr * g.sign(), rtol=1e-4, atol=1e-9 * (1 + t.abs().max().item()))
