"""Every backend and convention against the float64 reference in tests/reference/adam64.py.

The reference shares no code with the package, so these tests check the math itself, including
the lr-independent convention that torch does not have.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import decoupled
from decoupled import functional
from reference.adam64 import RefState, as_real64, reference_step
from scenario import gradient, make_params

BACKENDS = ["loop", "foreach", "fused", "compiled"]
CONVENTIONS = ["decoupled", "lr_independent", "coupled"]


def _optimizer(convention, params, backend, **kw):
    flags = {
        "loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
        "compiled": {"backend": "compiled"},
    }[backend]
    if convention == "coupled":
        return decoupled.Adam(params, **flags, **kw)
    return decoupled.AdamW(params, lr_independent_decay=convention == "lr_independent", **flags, **kw)


@pytest.mark.parametrize(
    "convention, backend, amsgrad, maximize",
    list(itertools.product(CONVENTIONS, BACKENDS, (False, True), (False, True))),
)
def test_against_float64_reference(convention, backend, amsgrad, maximize):
    kind = "edge" if backend in ("fused", "compiled") else "complex"
    params = make_params(kind, torch.float64)
    hyper = dict(lr=3e-2, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.2, amsgrad=amsgrad, maximize=maximize)
    opt = _optimizer(convention, params, backend, **hyper)
    theta = [as_real64(p) for p in params]
    states = [RefState() for _ in params]
    lr_max = hyper["lr"]
    for step in range(50):
        lr = hyper["lr"] * (0.5 if step >= 25 else 1.0)  # a schedule: the lr halves mid-run
        opt.param_groups[0]["lr"] = lr
        for i, p in enumerate(params):
            p.grad = None if (step, i) == (7, 1) else gradient(step, i, p)
            if p.grad is not None:
                ref_hyper = {k: v for k, v in hyper.items() if k != "lr"}
                theta[i] = reference_step(
                    theta[i], as_real64(p.grad), states[i], lr=lr, decay=convention, lr_max=lr_max, **ref_hyper
                )
        opt.step()
        for i, p in enumerate(params):
            torch.testing.assert_close(as_real64(p), theta[i], rtol=1e-12, atol=1e-14)
    for i, p in enumerate(params):
        state = opt.state[p]
        assert state["step"].item() == states[i].t
        torch.testing.assert_close(as_real64(state["exp_avg"]), states[i].m, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(as_real64(state["exp_avg_sq"]), states[i].v, rtol=1e-12, atol=1e-14)


def test_lr_independent_decay_follows_schedule_shape_not_size():
    """With lr_independent_decay the per-step decay is (lr / lr_max) * wd, whatever lr_max is."""
    for lr_max in (1e-3, 1e-1):
        w = torch.ones(4, dtype=torch.float64, requires_grad=True)
        opt = decoupled.AdamW([w], lr=lr_max, weight_decay=0.01, lr_independent_decay=True)
        opt.param_groups[0]["lr"] = lr_max / 2  # the schedule is at half of its peak
        w.grad = torch.zeros_like(w)
        opt.step()
        assert w.detach().tolist() == pytest.approx([1 - 0.5 * 0.01] * 4, rel=1e-15)


def test_explicit_lr_max_and_group_keys():
    w, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = decoupled.AdamW(
        [{"params": [w]}, {"params": [b], "lr": 1e-2}], lr=1e-3, lr_independent_decay=True, lr_max=4e-3
    )
    assert [g["lr_max"] for g in opt.param_groups] == [4e-3, 4e-3]
    opt = decoupled.AdamW([{"params": [w]}, {"params": [b], "lr": 1e-2}], lr=1e-3, lr_independent_decay=True)
    assert [g["lr_max"] for g in opt.param_groups] == [1e-3, 1e-2]  # each group's initial lr
    assert all(g["lr_independent_decay"] for g in opt.param_groups)
    plain = decoupled.AdamW([w], lr=1e-3)
    assert "lr_max" not in plain.param_groups[0] and "lr_independent_decay" not in plain.param_groups[0]


def test_functional_matches_class():
    p1 = torch.randn(5, dtype=torch.float64)
    p2 = p1.clone().requires_grad_()
    m, v, t = torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), torch.zeros(())
    opt = decoupled.AdamW([p2], lr=0.1, weight_decay=0.3, foreach=False)
    for step in range(10):
        g = gradient(step, 0, p1)
        functional.adamw(
            [p1], [g], [m], [v], [], [t], lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.3, backend="loop"
        )
        p2.grad = g
        opt.step()
    assert torch.equal(p1, p2.detach())
    assert torch.equal(m, opt.state[p2]["exp_avg"]) and t.item() == 10


def test_functional_rejects_mismatched_lists():
    p = [torch.zeros(2)]
    with pytest.raises(ValueError, match="exp_avgs has 0 tensors but params has 1"):
        functional.adamw(
            p,
            [torch.zeros(2)],
            [],
            [torch.zeros(2)],
            [],
            [torch.zeros(())],
            lr=0.1,
            beta1=0.9,
            beta2=0.99,
            eps=1e-8,
            weight_decay=0.0,
        )
    with pytest.raises(ValueError, match="unknown backend 'turbo'"):
        functional.adam(
            p,
            [torch.zeros(2)],
            [torch.zeros(2)],
            [torch.zeros(2)],
            [],
            [torch.zeros(())],
            lr=0.1,
            beta1=0.9,
            beta2=0.99,
            eps=1e-8,
            backend="turbo",
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensors_laid_out_unlike_their_parameter(backend):
    """A gradient set by hand in another memory layout than its parameter, a moment loaded in
    another layout, and a parameter with gaps between its elements. Torch's fused kernel reads
    such tensors in memory order as if they matched (0.006 off after 3 steps, torch 2.13 CPU);
    every backend must give the reference's numbers."""
    base = torch.randn(6, 10, dtype=torch.float64)
    params = [
        torch.randn(12, 9, dtype=torch.float64).t().detach().requires_grad_(),  # transposed
        torch.randn(2, 3, 4, 4, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_(),
        base[:, ::2].detach().requires_grad_(),  # gaps: not dense
    ]
    hyper = dict(lr=3e-2, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.2)
    opt = _optimizer("decoupled", params, backend, **hyper)
    theta = [as_real64(p) for p in params]
    states = [RefState() for _ in params]
    for step in range(4):
        for i, p in enumerate(params):
            p.grad = gradient(step, i, p).contiguous()  # row-major, whatever the parameter's layout
            theta[i] = reference_step(theta[i], as_real64(p.grad), states[i], decay="decoupled", **hyper)
        opt.step()
        if step == 1:  # a moment in another layout, as a checkpoint from elsewhere might hold
            opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].contiguous()
        for i, p in enumerate(params):
            torch.testing.assert_close(as_real64(p), theta[i], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(as_real64(opt.state[params[0]]["exp_avg"]), states[0].m, rtol=1e-12, atol=1e-14)


def test_a_checkpoint_in_another_layout_is_loaded_in_the_parameters_layout():
    """A checkpoint whose moments are contiguous while the parameter is channels-last (saved from
    a model built differently) is loaded in the parameter's layout, so the fused kernel reads it right."""
    p = torch.randn(2, 3, 4, 4, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    opt = decoupled.AdamW([p], fused=True)
    p.grad = torch.randn_like(p)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0] = {k: v.contiguous() for k, v in sd["state"][0].items()}
    q = p.detach().clone().requires_grad_()
    again = decoupled.AdamW([q], fused=True)
    again.load_state_dict(copy.deepcopy(sd))  # loading shares the checkpoint's tensors, as torch does
    assert again.state[q]["exp_avg"].stride() == q.stride()
    r = p.detach().clone().requires_grad_()
    ref = decoupled.AdamW([r], foreach=False)
    ref.load_state_dict(copy.deepcopy(sd))
    for _ in range(3):
        q.grad = torch.randn_like(q)
        r.grad = q.grad.clone()
        again.step()
        ref.step()
    torch.testing.assert_close(q, r, rtol=1e-12, atol=1e-14)
