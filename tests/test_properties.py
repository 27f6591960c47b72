"""Properties of the update that hold for any input (hypothesis), on every backend and convention.

Backends come from the case table (tests/cases.py), so a registered backend is checked here too.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cases import BackendCase, backend_params, convention_params, make_optimizer
from decoupled import conventions

values = st.lists(st.floats(-100, 100, allow_nan=False, width=64), min_size=1, max_size=8)
lrs = st.floats(1e-5, 0.5)
wds = st.floats(1e-4, 1.0)
betas = st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.9999))
common = settings(max_examples=40, deadline=None)
DECOUPLED = [c for c in convention_params() if not c.values[0].coupled]


def one_step(case: BackendCase, convention, theta, grad, steps=1, **kw) -> torch.Tensor:
    p = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    opt = case.make([p], convention, **kw)
    for _ in range(steps):
        p.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
    return p.detach()


def _lr_max(convention, lr: float) -> dict:
    return {} if convention.scaling is conventions.Scaling.LR or convention.coupled else {"lr_max": 2 * lr + 1e-3}


def _skip_unsupported(case: BackendCase, convention) -> None:
    reason = case.skip_reason(torch.float64, cautious=convention.cautious)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("case", backend_params(torch.float64))
@pytest.mark.parametrize("convention", convention_params())
@common
@given(theta=values, wd=wds, b=betas, amsgrad=st.booleans(), maximize=st.booleans(), data=st.data())
def test_zero_lr_leaves_params_unchanged(case, convention, theta, wd, b, amsgrad, maximize, data):
    _skip_unsupported(case, convention)
    grad = data.draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(theta), max_size=len(theta)))
    kw = dict(lr=0.0, weight_decay=wd, betas=b, amsgrad=amsgrad, maximize=maximize)
    if not convention.coupled and convention.scaling is not conventions.Scaling.LR:
        kw["lr_max"] = 1e-3
    after = one_step(case, convention, theta, grad, steps=3, **kw)
    assert torch.equal(after, torch.tensor(theta, dtype=torch.float64))


@pytest.mark.parametrize("case", backend_params(torch.float64))
@pytest.mark.parametrize("convention", DECOUPLED)
@common
@given(theta=values, lr=lrs, wd=wds, data=st.data())
def test_decay_is_exactly_the_decay_term(case, convention, theta, lr, wd, data):
    """step(wd) - step(0) = -d * theta, with d = lr*wd, (lr/lr_max)*wd or lr**2/lr_max*wd; with
    cautious decay only where the first update and theta agree in sign: at t=1 the update has the
    sign of m = (1 - beta1) * g (computed here as the step does, so a gradient small enough for m
    to underflow to 0 counts as agreeing, u * theta = 0 >= 0, as in the paper's mask)."""
    _skip_unsupported(case, convention)
    grad = data.draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(theta), max_size=len(theta)))
    extra = _lr_max(convention, lr)
    with_wd = one_step(case, convention, theta, grad, lr=lr, weight_decay=wd, **extra)
    without = one_step(case, convention, theta, grad, lr=lr, weight_decay=0.0, **extra)
    rate = convention.decay_per_step(wd, lr, extra.get("lr_max"))
    t, g = torch.tensor(theta, dtype=torch.float64), torch.tensor(grad, dtype=torch.float64)
    m = torch.zeros_like(g).lerp_(g, 1 - 0.9)  # the first moment after one step (default betas)
    mask = (m * t >= 0).to(t.dtype) if convention.cautious else torch.ones_like(t)
    torch.testing.assert_close(with_wd - without, -rate * mask * t, rtol=1e-9, atol=1e-12 * (1 + t.abs().max().item()))


@pytest.mark.parametrize("case", backend_params(torch.float64))
@pytest.mark.parametrize("convention", convention_params())
@common
@given(theta=values, lr=lrs, wd=wds, data=st.data())
def test_group_with_zero_weight_decay_ignores_decay(case, convention, theta, lr, wd, data):
    _skip_unsupported(case, convention)
    grad = data.draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(theta), max_size=len(theta)))
    decayed = torch.ones(3, dtype=torch.float64, requires_grad=True)
    free = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    groups = [{"params": [decayed]}, {"params": [free], "weight_decay": 0.0}]
    opt = make_optimizer(groups, convention, backend=case.name, lr=lr, weight_decay=wd)
    for _ in range(3):
        decayed.grad = torch.ones(3, dtype=torch.float64)
        free.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
    alone = one_step(case, convention, theta, grad, steps=3, lr=lr, weight_decay=0.0)
    assert torch.equal(free.detach(), alone)


@pytest.mark.parametrize("case", backend_params(torch.float64))
@common
@given(theta=values, lr=lrs, data=st.data())
def test_first_step_moves_by_lr_against_gradient_sign(case, theta, lr, data):
    """At t = 1, m_hat / sqrt(v_hat) = g / |g|: every weight moves by lr against sign(g)."""
    magnitude = st.floats(1e-3, 1e3)
    grad = [data.draw(magnitude) * data.draw(st.sampled_from([-1.0, 1.0])) for _ in theta]
    after = one_step(case, conventions.ADAMW, theta, grad, lr=lr, weight_decay=0.0)
    t, g = torch.tensor(theta, dtype=torch.float64), torch.tensor(grad, dtype=torch.float64)
    torch.testing.assert_close(after - t, -lr * g.sign(), rtol=1e-4, atol=1e-9 * (1 + t.abs().max().item()))
