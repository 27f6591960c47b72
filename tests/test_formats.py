"""State formats (:mod:`decoupled.formats`): bf16 moments, Kahan and stochastic rounding of
bf16 parameters, the chunked executor, and checkpoints across formats.

The 8-bit format has its own file (``test_formats_8bit.py``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoupled
from cases import BACKEND_CASES
from decoupled import formats
from decoupled.formats import arena
from decoupled.formats.dense import BF16, Dense
from decoupled.formats.rounding import NOISE, stochastic_round_
from scenario import DEVICE

HYPER = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
# every backend that steps float32 here (the arena runs any of them) and every executor's name
FLOAT32_BACKENDS = [c.name for c in BACKEND_CASES if c.skip_reason(torch.float32) is None]
EXECUTOR_BACKENDS = [None] + [e.answers for e in formats.EXECUTORS.values() if e.answers]
# the executors asked for by name, skipped (with the registry's reason) where they cannot run here
HERE = frozenset({(DEVICE.type, torch.bfloat16), (DEVICE.type, torch.float32)})
EXECUTOR_PARAMS = [None] + [
    pytest.param(e.answers, marks=[pytest.mark.skip(reason=r)] if (r := e.why_not(BF16, "kahan", HERE)) else [])
    for e in formats.EXECUTORS.values()
    if e.answers
]


def params_like(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A matrix, a vector, a transposed (non-contiguous) matrix, a channels-last 4-D tensor and
    a zero-size tensor, as leaves of ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    ps = [
        rand(33, 17),
        rand(300),
        rand(12, 9).t(),
        rand(2, 3, 5, 5).to(memory_format=torch.channels_last),
        rand(0, 4),
    ]
    return [p.to(dtype).detach().requires_grad_() for p in ps]


def set_grads(params: list[torch.Tensor], step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        # in the parameter's memory layout, as autograd makes them
        p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))


def run(params, opt, steps: int, first: int = 0) -> None:
    for t in range(first, first + steps):
        set_grads(params, t)
        opt.step()


# ---- defaults and options ------------------------------------------------------------------


def test_defaults_keep_torchs_layout_and_options_add_their_keys():
    p = params_like(torch.float32)
    plain = decoupled.AdamW(p)
    assert set(plain.param_groups[0]) == set(torch.optim.AdamW(params_like(torch.float32)).param_groups[0])
    opt = decoupled.AdamW(p, moments="bf16", param_rounding="kahan")
    assert opt.param_groups[0]["moments"] == "bf16" and opt.param_groups[0]["param_rounding"] == "kahan"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(moments="int4"), r"unknown moments='int4'.*\['param', 'fp32', 'bf16'"),
        (dict(param_rounding="up"), r"unknown param_rounding='up'.*nearest"),
    ],
)
def test_unknown_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        decoupled.AdamW(params_like(torch.float32), **kwargs)
    with pytest.raises(ValueError, match=match):
        decoupled.AdamW([{"params": params_like(torch.float32), **kwargs}])


@pytest.mark.parametrize(
    "dtype, kwargs, match",
    [
        (torch.float16, dict(param_rounding="stochastic"), "float16.*Use param_rounding='kahan'"),
        (torch.complex64, dict(moments="bf16"), "need real parameters"),
        (torch.float32, dict(moments="bf16", differentiable=True), "differentiable=True keeps torch's state"),
    ],
)
def test_unsupported_combinations_fail_before_anything_changes(dtype, kwargs, match):
    good = params_like(torch.float32)
    bad = [torch.randn(4, 3, dtype=dtype, requires_grad=True)]
    opt = decoupled.AdamW([{"params": good}, {"params": bad}], **kwargs)
    set_grads(good + bad, 0)
    before = [p.detach().clone() for p in good + bad]
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, good + bad))
    assert not opt.state  # no state was created for the good group either


def test_one_group_of_several_kinds_gets_each_parameters_format_and_names_the_bad_one():
    """The step checks a group's parameters once per kind (type, dtype, the format a parameter
    gets): a large and a small tensor of one dtype still get 8-bit and fp32 state, and a bad
    parameter after good ones of the same group is the one named."""
    from decoupled import step
    from decoupled.formats.blockwise8 import MIN_NUMEL

    big, small, also_big = (torch.randn(n, requires_grad=True) for n in (MIN_NUMEL, 10, MIN_NUMEL + 300))
    opt = decoupled.AdamW([big, small, also_big], moments="8bit")
    set_grads([big, small, also_big], 0)
    plan = step.plan(opt.param_groups[0], 0, "auto")
    ids = lambda ps: [id(p) for p in ps]  # noqa: E731
    assert ids(plan.formatted) == ids([big, also_big]) and ids(plan.plain) == ids([small])  # small: torch's state
    opt.step()
    assert ["exp_avg_e4m3" in opt.state[p] for p in (big, small, also_big)] == [True, False, True]
    bad = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    opt = decoupled.AdamW([big, small, bad], moments="bf16")
    set_grads([big, small, bad], 1)
    with pytest.raises(ValueError, match=r"parameter 2 of param group 0: .*need real parameters"):
        opt.step()


# ---- the executor --------------------------------------------------------------------------


def _bf16_weights_by_hand(steps: int, backend: str, **hyper):
    """bf16 weights with fp32 moments and round-to-nearest writes, by hand: the default (torch's
    layout) optimizer on an fp32 copy of the weights, rounded to bf16 after every step."""
    params = [p.detach().float().requires_grad_() for p in params_like(torch.bfloat16)]
    opt = decoupled.AdamW(params, backend=backend, **hyper)
    for t in range(steps):
        set_grads(params, t)
        with torch.no_grad():
            for p in params:
                p.grad.copy_(p.grad.bfloat16())  # the bf16 run's gradients
        opt.step()
        with torch.no_grad():
            for p in params:
                p.copy_(p.bfloat16())
    return params, opt


@pytest.mark.parametrize("chunk", [256, 1024, arena.CHUNK])
@pytest.mark.parametrize("backend", [b for b in FLOAT32_BACKENDS if b not in EXECUTOR_BACKENDS])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_executor_is_exactly_the_fp32_rule_at_any_chunk_size(monkeypatch, chunk, backend, amsgrad):
    """Streaming through the arena changes nothing: bf16 weights with fp32 moments equal the fp32
    rule applied by hand, however the tensors are chunked and packed. To the bit on the loop and
    foreach backends; a fused kernel (torch's on CPU computes the tail of a tensor in scalar
    code, which can differ from its vector code by one float32 ulp) within 2 ulps."""
    monkeypatch.setattr(arena, "CHUNK", chunk)
    ref, ref_opt = _bf16_weights_by_hand(6, backend, amsgrad=amsgrad, **HYPER)
    params = params_like(torch.bfloat16)
    opt = decoupled.AdamW(params, moments="fp32", backend=backend, amsgrad=amsgrad, **HYPER)
    run(params, opt, 6)
    exact = backend in ("loop", "foreach")
    for p, r in zip(params, ref):
        if exact:
            assert torch.equal(p.float(), r.detach())
        else:
            torch.testing.assert_close(p.float(), r.detach(), rtol=2**-8, atol=0)
        s, rs = opt.state[p], ref_opt.state[r]
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            assert s[key].dtype == torch.float32 and s[key].is_contiguous()
            if exact:
                assert torch.equal(s[key], rs[key]), key
            else:
                torch.testing.assert_close(s[key], rs[key], rtol=2.5e-7, atol=0)


# ---- stochastic rounding -------------------------------------------------------------------


@pytest.mark.parametrize("scratch", [False, True])
def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour(scratch):
    ulp = 2.0**-7  # bf16 spacing in [1, 2)
    for x in (1 + 0.25 * ulp, -(1 + 0.7 * ulp), 3.0 + 0.5 * 2 * ulp):
        src = torch.full((200_000,), x, dtype=torch.float32)
        out = stochastic_round_(torch.empty(src.shape, dtype=torch.bfloat16), src.clone(), scratch=scratch).float()
        values = set(out.unique().tolist())
        assert len(values) == 2, values  # the two neighbours, nothing else
        lo, hi = min(values), max(values)
        assert lo < x < hi
        p_up = (x - lo) / (hi - lo)
        observed = (out == hi).double().mean().item()
        assert abs(observed - p_up) < 5 * (p_up * (1 - p_up) / src.numel()) ** 0.5
        assert abs(out.double().mean().item() - x) < 5 * (hi - lo) * (0.25 / src.numel()) ** 0.5


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=64))
def test_stochastic_rounding_keeps_bf16_values_exact(xs):
    exact = torch.tensor(xs, dtype=torch.float32).bfloat16()
    out = stochastic_round_(torch.empty_like(exact), exact.float())
    assert torch.equal(out, exact)


def test_bf16_second_moment_does_not_stall_with_stochastic_rounding():
    """v = 1, then g^2 = 0.25 for 2000 steps with beta2 = 0.999: exactly, v = 0.25 + 0.75 * 0.999^t.
    Round-to-nearest stores 0.999 + 0.00025 = 0.99925 as 1.0 (half a bf16 ulp below 1 is 0.00195)
    and never moves; stochastic rounding follows the true value."""
    n, steps, beta2 = 4096, 2000, 0.999
    param = torch.empty(n)
    nearest, stochastic = Dense("bf16-nearest", torch.bfloat16), BF16
    states = {f: f.encode(torch.ones(n), param, "exp_avg_sq") for f in (nearest, stochastic)}
    v = torch.empty(n)
    for _ in range(steps):
        for f, state in states.items():
            f.load(state, "exp_avg_sq", 0, n, v)
            v.mul_(beta2).add_(0.25 * (1 - beta2))
            f.store(state, "exp_avg_sq", 0, n, v)
    exact = 0.25 + 0.75 * beta2**steps
    assert torch.all(states[nearest]["exp_avg_sq"] == 1.0)
    mean = states[stochastic]["exp_avg_sq"].float().mean().item()
    assert abs(mean - exact) / exact < 0.01, (mean, exact)


# ---- bf16 parameters: nearest loses small updates, kahan and stochastic keep them ----------


def _small_updates(rounding: str, dtype=torch.bfloat16, steps=100, backend=None):
    """Weights at 1.0 with a constant gradient and lr=1e-4: each step moves a weight by 1e-4,
    a fortieth of a bf16 ulp at 1.0 (2^-7 = 0.0078)."""
    p = torch.ones(4096, dtype=dtype, requires_grad=True)
    opt = decoupled.AdamW([p], lr=1e-4, weight_decay=0.0, param_rounding=rounding, backend=backend)
    for _ in range(steps):
        p.grad = torch.full_like(p, 0.1)
        opt.step()
    return p, opt


@pytest.mark.parametrize("backend", EXECUTOR_PARAMS)
def test_bf16_weights_lose_small_updates_with_nearest_and_keep_them_otherwise(backend):
    exact = 1 - 100 * 1e-4  # a constant gradient moves the weight by lr per step
    nearest, _ = _small_updates("nearest", backend=backend)
    assert torch.all(nearest == 1.0)  # torch's behaviour: every update rounded away
    kahan, opt = _small_updates("kahan", backend=backend)
    comp = opt.state[kahan]["kahan_comp"]
    assert comp.dtype == torch.bfloat16
    held = kahan.float() + comp.float()  # the value the optimizer holds: hi + lo
    # the buffer is bf16 too, so a little of each step is still lost: measured 2.8e-5 after 100
    # steps, 0.3% of the movement (nearest loses 100%)
    assert torch.allclose(held, torch.full_like(held, exact), atol=1e-4)
    assert torch.allclose(kahan.float(), torch.full_like(held, exact), atol=2**-8)  # hi is its nearest bf16
    stochastic, opt = _small_updates("stochastic", backend=backend)
    assert formats.COMPENSATION_KEY not in opt.state[stochastic]  # no memory
    # unbiased: each of the 100 roundings adds an error of mean 0 and variance at most ulp^2/4
    # (ulp = 2^-8 just below 1), so the mean of 4096 weights is within 5 standard deviations,
    # 5 * sqrt(100) * 2^-8 / 2 / 64 = 1.5e-3, of the exact 0.99 (round to nearest: 1e-2 off)
    assert abs(stochastic.float().mean().item() - exact) < 5 * 100**0.5 * 2**-8 / 2 / 4096**0.5


def test_kahan_in_fp16_and_no_buffer_for_fp32_weights():
    p16, _ = _small_updates("kahan", torch.float16)
    assert abs(p16.float().mean().item() - (1 - 100 * 1e-4)) < 1e-3
    p32 = torch.ones(10, requires_grad=True)
    opt = decoupled.AdamW([p32], param_rounding="kahan")
    p32.grad = torch.ones(10)
    opt.step()
    assert set(opt.state[p32]) == {"step", "exp_avg", "exp_avg_sq"}  # fp32 weights need none


@pytest.mark.parametrize("backend", EXECUTOR_PARAMS)
def test_bf16_training_with_kahan_tracks_fp32_training(backend):
    """A small regression net in bf16: with nearest rounding the loss stalls well above the fp32
    run's; with Kahan or stochastic rounding it lands within a few percent of it."""

    def final_loss(dtype, **kw):
        torch.manual_seed(0)
        x = torch.randn(256, 16)
        y = x @ torch.randn(16, 1) + 0.1 * torch.randn(256, 1)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).to(dtype)
        opt = decoupled.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, backend=backend, **kw)
        for _ in range(200):
            loss = (model(x.to(dtype)).float() - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    fp32 = final_loss(torch.float32)
    assert final_loss(torch.bfloat16) > 1.1 * fp32
    for kw in (
        dict(param_rounding="kahan"),
        dict(param_rounding="stochastic"),
        dict(moments="bf16", param_rounding="kahan"),
    ):
        assert final_loss(torch.bfloat16, **kw) < 1.05 * fp32, kw


# ---- bf16 moments --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", EXECUTOR_PARAMS)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_bf16_moments_stay_close_to_fp32(amsgrad, backend):
    ref = params_like(torch.float32)
    ref_opt = decoupled.AdamW(ref, amsgrad=amsgrad, **HYPER)
    params = params_like(torch.float32)
    opt = decoupled.AdamW(params, moments="bf16", amsgrad=amsgrad, backend=backend, **HYPER)
    run(ref, ref_opt, 30)
    run(params, opt, 30)
    for p, r in zip(params, ref):
        state = opt.state[p]
        keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        assert all(state[k].dtype == torch.bfloat16 and state[k].is_contiguous() for k in keys)
        # each step moves a weight by at most ~lr; 30 steps of bf16-rounded moments change a
        # step's size by a few tenths of a percent
        torch.testing.assert_close(p, r, rtol=0, atol=30 * HYPER["lr"] * 0.02)
        # stochastic rounding adds noise of up to one bf16 ulp (2^-8 relative) per step, which the
        # EMA averages; allow 4 ulps at the tensor's scale
        m = ref_opt.state[r]["exp_avg"]
        scale = m.abs().max().item() if m.numel() else 0.0
        torch.testing.assert_close(state["exp_avg"].float(), m, rtol=0, atol=2**-6 * scale)


def test_state_bytes():
    def nbytes(opt):
        return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim())

    n = sum(p.numel() for p in params_like(torch.float32))
    for kwargs, per_param in ((dict(), 8), (dict(moments="bf16"), 4), (dict(moments="fp32"), 8)):
        params = params_like(torch.float32)
        opt = decoupled.AdamW(params, **kwargs)
        run(params, opt, 1)
        assert nbytes(opt) == per_param * n, kwargs
    params = params_like(torch.bfloat16)
    opt = decoupled.AdamW(params, moments="bf16", param_rounding="kahan")
    run(params, opt, 1)
    assert nbytes(opt) == 6 * n  # two bf16 moments and the bf16 compensation


def test_per_group_formats():
    a, b = params_like(torch.float32), params_like(torch.float32, seed=1)
    opt = decoupled.AdamW([{"params": a}, {"params": b, "moments": "bf16"}])
    run(a + b, opt, 2)
    assert opt.state[a[0]]["exp_avg"].dtype == torch.float32
    assert opt.state[b[0]]["exp_avg"].dtype == torch.bfloat16
    assert "moments" not in opt.state_dict()["param_groups"][0]


@settings(max_examples=25, deadline=None)
@given(
    moments=st.sampled_from(["param", "fp32", "bf16"]),
    rounding=st.sampled_from(["nearest", "kahan", "stochastic"]),
    wd=st.floats(0, 1),
)
def test_lr_zero_leaves_bf16_weights_unchanged(moments, rounding, wd):
    params = params_like(torch.bfloat16)
    before = [p.detach().clone() for p in params]
    opt = decoupled.AdamW(params, lr=0.0, weight_decay=wd, moments=moments, param_rounding=rounding)
    run(params, opt, 3)
    assert all(torch.equal(a, p) for a, p in zip(before, params))


# ---- checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", EXECUTOR_PARAMS)
def test_format_checkpoint_round_trip_continues_identically(backend):
    params = params_like(torch.bfloat16)
    opt = decoupled.AdamW(params, moments="fp32", param_rounding="kahan", backend=backend, **HYPER)
    run(params, opt, 3)
    saved_params = copy.deepcopy([p.detach() for p in params])
    saved = copy.deepcopy(opt.state_dict())
    run(params, opt, 3, first=3)

    fresh = [p.clone().requires_grad_() for p in saved_params]
    again = decoupled.AdamW(fresh, moments="fp32", param_rounding="kahan", backend=backend, **HYPER)
    again.load_state_dict(saved)
    assert again.state[fresh[0]]["kahan_comp"].dtype == torch.bfloat16
    assert again.state[fresh[0]]["exp_avg"].dtype == torch.float32  # not cast to the weights' bf16
    run(fresh, again, 3, first=3)
    assert all(torch.equal(a, b) for a, b in zip(params, fresh))


@pytest.mark.parametrize(
    "executor, pooled",
    [
        ("fused", True),
        pytest.param(
            "native",
            False,
            marks=pytest.mark.skipif(
                formats.EXECUTORS["native"].why_not(BF16, "stochastic", frozenset({("cpu", torch.bfloat16)}))
                is not None,
                reason="the native kernel cannot be built here",
            ),
        ),
    ],
)
def test_stochastic_rounding_resumes_bitwise_after_seed_and_noise_reset(executor, pooled):
    """With torch.manual_seed and NOISE.reset before each step, a stochastically rounded run
    resumed from a checkpoint repeats the uninterrupted run bit for bit. On the arena (asked for
    with backend="fused"), without the reset the cached noise pool differs and so do the
    results; the native kernel draws its noise from the seed alone, so the seed is enough."""

    def steps(params, opt, first, reset):
        for t in range(first, first + 3):
            set_grads(params, t)
            torch.manual_seed(t)
            if reset:
                NOISE.reset()
            opt.step()

    options = dict(moments="bf16", param_rounding="stochastic", backend=executor, **HYPER)
    params = params_like(torch.bfloat16)
    opt = decoupled.AdamW(params, **options)
    steps(params, opt, 0, reset=True)
    saved_params, saved = copy.deepcopy([p.detach() for p in params]), copy.deepcopy(opt.state_dict())
    steps(params, opt, 3, reset=True)

    for reset, same in ((True, True), (False, not pooled)):
        fresh = [p.clone().requires_grad_() for p in saved_params]
        again = decoupled.AdamW(fresh, **options)
        again.load_state_dict(copy.deepcopy(saved))
        NOISE.reset()  # the pool cached by the first run would otherwise make both cases equal
        torch.randint(0, 2, (1,))  # the pool drawn now, at a different point of the generator
        NOISE.add_to(torch.zeros(1, dtype=torch.int32))
        steps(fresh, again, 3, reset=reset)
        assert all(torch.equal(a, b) for a, b in zip(params, fresh)) is same
        assert torch.equal(again.state[fresh[0]]["exp_avg"], opt.state[params[0]]["exp_avg"]) is same


def test_torch_checkpoint_loads_into_a_format_and_back():
    ref = params_like(torch.float32)
    torch_opt = torch.optim.AdamW(ref, **HYPER)
    run(ref, torch_opt, 3)

    params = [p.detach().clone().requires_grad_() for p in ref]
    opt = decoupled.AdamW(params, moments="bf16", **HYPER)
    opt.load_state_dict(torch_opt.state_dict())
    for p, r in zip(params, ref):
        assert opt.state[p]["exp_avg"].dtype == torch.bfloat16
        torch.testing.assert_close(opt.state[p]["exp_avg"].float(), torch_opt.state[r]["exp_avg"], rtol=8e-3, atol=0)

    # and back: formats.torch_state_dict is what torch.optim.AdamW loads
    sd = formats.torch_state_dict(opt)
    assert "moments" not in sd["param_groups"][0]
    back = [p.detach().clone().requires_grad_() for p in ref]
    torch_again = torch.optim.AdamW(back, **HYPER)
    torch_again.load_state_dict(sd)
    for p, b in zip(params, back):
        assert torch_again.state[b]["exp_avg"].dtype == torch.float32
        assert set(torch_again.state[b]) == {"step", "exp_avg", "exp_avg_sq"}
        assert torch.equal(torch_again.state[b]["exp_avg"], opt.state[p]["exp_avg"].float())
    run(back, torch_again, 1, first=3)  # torch steps it


def test_a_formatted_checkpoint_loads_into_the_default_optimizer():
    params = params_like(torch.float32)
    opt = decoupled.AdamW(params, moments="bf16", **HYPER)
    run(params, opt, 2)
    plain_params = [p.detach().clone().requires_grad_() for p in params]
    plain = decoupled.AdamW(plain_params, **HYPER)
    plain.load_state_dict(opt.state_dict())
    for p, q in zip(plain_params, params):
        assert plain.state[p]["exp_avg"].dtype == torch.float32
        assert torch.equal(plain.state[p]["exp_avg"], opt.state[q]["exp_avg"].float())
    run(plain_params, plain, 1, first=2)


def test_a_malformed_format_checkpoint_is_refused_whole():
    params = params_like(torch.bfloat16)
    opt = decoupled.AdamW(params, moments="fp32", param_rounding="kahan")
    run(params, opt, 1)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["exp_avg"] = torch.zeros(7)
    target = decoupled.AdamW(params_like(torch.bfloat16), moments="fp32", param_rounding="kahan")
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 1 .* has shape \(7,\)"):
        target.load_state_dict(sd)
    assert not target.state
