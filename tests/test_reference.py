"""Every backend, convention and state format against the float64 reference in tests/reference/adam64.py.

The reference shares no code with the package and is written from the papers' equations, so
these tests check the math itself, including the conventions torch does not have
(lr-independent, corrected and cautious decay). Cases come from the table in tests/cases.py.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import decoupled
from cases import BACKEND_CASES, CONVENTION_CASES, FORMAT_CASES, BackendCase, FormatCase, make_optimizer
from decoupled import conventions, functional
from reference.adam64 import RefState, as_real64, reference_options, reference_step
from scenario import DEVICE, gradient, make_params

HYPER = dict(lr=3e-2, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.2)


def _backend_cases():
    out = []
    for case, convention, amsgrad, maximize in itertools.product(
        BACKEND_CASES, CONVENTION_CASES, (False, True), (False, True)
    ):
        reason = case.skip_reason(torch.float64, cautious=convention.cautious)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        name = f"{case.name}-{convention.key}-ams{int(amsgrad)}-max{int(maximize)}"
        out.append(pytest.param(case, convention, amsgrad, maximize, id=name, marks=marks))
    return out


def _run_against_reference(opt, params, convention, hyper, steps=50, check_every=None):
    """Step ``opt`` and the reference side by side with a schedule that halves lr mid-run and a
    None gradient; return the reference's parameters and states."""
    theta = [as_real64(p) for p in params]
    states = [RefState() for _ in params]
    lr_max = hyper["lr"]
    for step in range(steps):
        lr = hyper["lr"] * (0.5 if step >= steps // 2 else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        for i, p in enumerate(params):
            p.grad = None if (step, i) == (7, 1) else gradient(step, i, p)
            if p.grad is not None:
                ref_hyper = {k: v for k, v in hyper.items() if k != "lr"}
                theta[i] = reference_step(
                    theta[i],
                    as_real64(p.grad),
                    states[i],
                    lr=lr,
                    lr_max=lr_max,
                    **reference_options(convention),
                    **ref_hyper,
                )
        opt.step()
        if check_every is not None:
            check_every(step, theta)
    return theta, states


@pytest.mark.parametrize("case, convention, amsgrad, maximize", _backend_cases())
def test_backend_against_float64_reference(case: BackendCase, convention, amsgrad, maximize):
    """50 steps with a changing lr, float64: every backend within 1e-12 of the reference."""
    params = make_params(case.kind(), torch.float64)
    hyper = dict(HYPER, amsgrad=amsgrad, maximize=maximize)
    opt = make_optimizer(params, convention, backend=case.name, **hyper)

    def check(step, theta):
        for i, p in enumerate(params):
            torch.testing.assert_close(
                as_real64(p), theta[i], rtol=1e-12, atol=1e-14, msg=lambda m, s=step: f"step {s}: {m}"
            )

    theta, states = _run_against_reference(opt, params, convention, hyper, check_every=check)
    for i, p in enumerate(params):
        state = opt.state[p]
        assert state["step"].item() == states[i].t
        torch.testing.assert_close(as_real64(state["exp_avg"]), states[i].m, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(as_real64(state["exp_avg_sq"]), states[i].v, rtol=1e-12, atol=1e-14)


def _format_cases():
    out = []
    for case in FORMAT_CASES:
        for convention in (conventions.ADAMW, conventions.ADAMW_CAUTIOUS, conventions.ADAM_L2):
            reason = case.skip_reason()
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            out.append(pytest.param(case, convention, id=f"{case.id}-{convention.key}", marks=marks))
    return out


@pytest.mark.parametrize("case, convention", _format_cases())
def test_format_against_float64_reference(case: FormatCase, convention):
    """30 steps of every format (and executor) with a changing lr: within the format's drift of
    the float64 reference, measured in units of the distance a weight can travel (lr per step)."""
    torch.manual_seed(0)
    params = [
        torch.randn(shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        .to(case.dtype)
        .to(DEVICE)
        .requires_grad_()
        for i, shape in enumerate([(64, 80), (300,), (7, 9)])
    ]
    options = convention.optimizer_options()
    cls = decoupled.AdamW if options.pop("decoupled_weight_decay") else decoupled.Adam
    opt = cls(params, **options, **case.options, **HYPER)
    theta, _ = _run_against_reference(opt, params, convention, HYPER, steps=30)
    travel = HYPER["lr"] * 30
    for i, p in enumerate(params):
        err = (as_real64(p) - theta[i]).abs().max().item()
        allowed = case.drift * travel + case.param_error(theta[i].abs().max().item(), 30)
        assert err <= allowed, f"param {i}: {err:.3g} from the reference, allowed {allowed:.3g}"


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
    assert all(g["decay_scaling"] == "independent" for g in opt.param_groups)  # one spelling
    plain = decoupled.AdamW([w], lr=1e-3)
    assert not {"lr_max", "lr_independent_decay", "decay_scaling", "cautious_decay"} & set(plain.param_groups[0])


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


@pytest.mark.parametrize("backend", [c.name for c in BACKEND_CASES if c.skip_reason(torch.float64) is None])
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
    opt = decoupled.AdamW(params, backend=backend, **hyper)
    theta = [as_real64(p) for p in params]
    states = [RefState() for _ in params]
    for step in range(4):
        for i, p in enumerate(params):
            p.grad = gradient(step, i, p).contiguous()  # row-major, whatever the parameter's layout
            theta[i] = reference_step(theta[i], as_real64(p.grad), states[i], **hyper)
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
