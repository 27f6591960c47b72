"""The compiled backend (:mod:`decoupled.backends.compiled`): one torch.compile'd kernel per
tensor that fuses loading the state, the update rule and storing it in its format.

It is not bitwise equal to the loop backend (inductor may contract multiply-adds); these tests
hold it to a few float32 ulps per step, to the float64 reference in test_reference.py, and to
the formats' semantics (Kahan, stochastic rounding) in test_formats.py.
"""

from __future__ import annotations

import pytest
import torch

import decoupled
from decoupled.backends import Unsupported
from scenario import gradient, make_params

HYPER = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)


def _train(params, opt, steps: int = 12) -> None:
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))  # a new lr every step
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = gradient(t, i, p)
        opt.step()
        schedule.step()


@pytest.mark.parametrize(
    "cls, options",
    [
        (decoupled.AdamW, {}),
        (decoupled.AdamW, {"amsgrad": True, "maximize": True}),
        (decoupled.AdamW, {"lr_independent_decay": True}),
        (decoupled.Adam, {"weight_decay": 0.1}),  # coupled L2
    ],
)
def test_matches_the_loop_backend_in_torchs_state_layout(cls, options):
    ref, params = make_params("edge", torch.float32), make_params("edge", torch.float32)
    ref_opt = cls(ref, **{**HYPER, **options, "foreach": False})
    opt = cls(params, **{**HYPER, **options, "backend": "compiled"})
    _train(ref, ref_opt)
    _train(params, opt)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
        assert opt.state[p].keys() == ref_opt.state[r].keys()
        for key, value in ref_opt.state[r].items():
            assert opt.state[p][key].dtype == value.dtype and opt.state[p][key].stride() == value.stride(), key
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-5, atol=1e-7)


def test_a_new_lr_every_step_does_not_recompile():
    from torch._dynamo.utils import counters

    params = make_params("basic", torch.float32)
    opt = decoupled.AdamW(params, backend="compiled", **HYPER)
    _train(params, opt, steps=3)  # compiles (a static graph, then a dynamic-size one)
    graphs = counters["stats"]["unique_graphs"]
    _train(params, opt, steps=5)
    assert counters["stats"]["unique_graphs"] == graphs


def test_kahan_and_fp32_moments_match_the_arena_executor():
    """Deterministic formats: bf16 weights with a Kahan buffer and fp32 moments hold the same
    value hi + lo as the executor's, to float32 rounding."""
    options = dict(moments="fp32", param_rounding="kahan", **HYPER)
    ref = [p.detach().bfloat16().requires_grad_() for p in make_params("edge", torch.float32)]
    params = [p.detach().clone().requires_grad_() for p in ref]
    ref_opt = decoupled.AdamW(ref, foreach=False, **options)
    opt = decoupled.AdamW(params, backend="compiled", **options)
    _train(ref, ref_opt)
    _train(params, opt)
    for p, r in zip(params, ref):
        held = p.float() + opt.state[p]["kahan_comp"].float()
        ref_held = r.float() + ref_opt.state[r]["kahan_comp"].float()
        torch.testing.assert_close(held, ref_held, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref_opt.state[r]["exp_avg"], rtol=1e-5, atol=1e-7)


def test_blockwise_8bit_groups_go_through_the_arena():
    """moments='8bit' is not elementwise: backend='compiled' leaves it to the executor (on the
    fastest backend), which gives the default optimizer's numbers exactly."""
    make = lambda: [torch.randn(64, 80, generator=torch.Generator().manual_seed(0)).requires_grad_()]  # noqa: E731
    ref, params = make(), make()
    ref_opt = decoupled.AdamW(ref, moments="8bit", **HYPER)
    opt = decoupled.AdamW(params, moments="8bit", backend="compiled", **HYPER)
    _train(ref, ref_opt, steps=4)
    _train(params, opt, steps=4)
    assert torch.equal(params[0], ref[0])
    assert opt.state[params[0]].keys() == ref_opt.state[ref[0]].keys()


def test_checkpoints_are_torchs():
    params = make_params("basic", torch.float32)
    opt = decoupled.AdamW(params, backend="compiled", **HYPER)
    _train(params, opt, steps=2)
    theirs = torch.optim.AdamW([p.detach().clone().requires_grad_() for p in params], **HYPER)
    theirs.load_state_dict(opt.state_dict())
    for p, q in zip(params, theirs.param_groups[0]["params"]):
        assert torch.equal(theirs.state[q]["exp_avg"], opt.state[p]["exp_avg"])


def test_unsupported_inputs_say_what_to_use():
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.randn_like(z)
    with pytest.raises(Unsupported, match="compiled backend needs real floating-point parameters.*foreach"):
        decoupled.AdamW([z], backend="compiled").step()
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable=True needs the loop backend"):
        opt = decoupled.AdamW([p], backend="compiled", differentiable=True)
        p.grad = torch.randn(3)
        opt.step()
    assert not opt.state  # refused before any state was made


@pytest.mark.parametrize("options", [{}, {"moments": "bf16"}])
def test_small_tensors_go_to_the_fused_backend_at_the_real_threshold(monkeypatch, options):
    from decoupled.backends import compiled

    monkeypatch.setattr(compiled, "MIN_NUMEL", 1 << 18)  # conftest lowers it to 0 for the other tests
    kernel_sizes = []
    one = compiled._update_one
    monkeypatch.setattr(compiled, "_update_one", lambda p, *a: kernel_sizes.append(p.numel()) or one(p, *a))
    g = torch.Generator().manual_seed(0)
    shapes = [(600, 512), (256,), (128, 128)]  # 307200 elements: the kernel; the others: fused
    ref = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    params = [p.detach().clone().requires_grad_() for p in ref]
    ref_opt = decoupled.AdamW(ref, foreach=False, **options, **HYPER)
    opt = decoupled.AdamW(params, backend="compiled", **options, **HYPER)
    _train(ref, ref_opt, steps=3)
    _train(params, opt, steps=3)
    assert kernel_sizes == [600 * 512] * 3
    # bf16 moments round stochastically, with different noise on the two paths: compare loosely
    tol = dict(rtol=1e-5, atol=1e-6) if not options else dict(rtol=0, atol=3 * HYPER["lr"] * 0.02)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r, **tol)


def test_without_a_working_torch_compile_it_says_so_before_anything_changes(monkeypatch):
    from decoupled.backends import compiled

    monkeypatch.setattr(compiled, "compile_unavailable", lambda device_type: "no C++ compiler (test)")
    p = torch.randn(3, requires_grad=True)
    p.grad = torch.randn(3)
    opt = decoupled.AdamW([p], backend="compiled", moments="bf16")
    before = p.detach().clone()
    with pytest.raises(Unsupported, match=r"needs torch.compile: no C\+\+ compiler \(test\); use the default backend"):
        opt.step()
    assert torch.equal(p, before) and not opt.state
