"""Every state format with every parameter rounding, on every executor: one table (tests/cases.py).

What holds for all of them: an executor computes what the arena computes (the float32 rule
with the format's loads and stores), within the format's rounding; a checkpoint taken mid-run
resumes bit for bit; lr = 0 leaves the weights alone; the state is stored in the format. A
format or executor registered in the package is picked up here without editing this file.
"""

from __future__ import annotations

import pytest
import torch

from cases import FormatCase, format_params
from decoupled import formats
from decoupled.formats.rounding import NOISE
from scenario import DEVICE

HYPER = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A large matrix (kernels that take only big tensors take it), a vector that the blockwise
    format leaves in fp32, a transposed matrix and a zero-size tensor."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(96, 80), (300,), (40, 24), (0, 3)]
    ps = [torch.randn(*s, generator=g) for s in shapes]
    ps[2] = ps[2].t()
    return [p.to(dtype).to(DEVICE).detach().requires_grad_() for p in ps]


def _steps(params, opt, first: int, n: int, *, reseed: bool = True) -> None:
    for t in range(first, first + n):
        g = torch.Generator().manual_seed(1000 + t)
        for p in params:
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))
        if reseed:  # the random bits of stochastic rounding depend on the seed only
            torch.manual_seed(t)
            NOISE.reset()
        opt.step()


def _ulps(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> float:
    """The largest difference of ``a`` and ``b`` in units of the last place of ``dtype`` at each
    element, with a floor of 1% of the tensor's largest value (so elements that cancel to near
    zero are not measured against their own tiny ulp)."""
    if not a.numel():
        return 0.0
    scale = b.abs() + 0.01 * b.abs().max()
    return ((a - b).abs() / (scale * torch.finfo(dtype).eps)).max().item()


@pytest.mark.parametrize("case", [p for p in format_params() if p.values[0].executor != "arena"])
def test_executor_matches_the_arena(case: FormatCase):
    """Each executor against the arena with the loop backend (the reference executor), 4 steps:
    float32 weights within a few dozen float32 ulps (kernels may contract multiply-adds, over 4
    steps); bf16 weights, or any run with stochastic rounding (whose random bits differ between
    executors), within a few bf16 ulps; the moments within a few percent of their largest value."""
    reference = FormatCase(case.moments, case.rounding, case.dtype, "arena")
    a, b = _params(case.dtype), _params(case.dtype)
    oa, ob = case.make(a, **HYPER), reference.make(b, **HYPER)
    _steps(a, oa, 0, 4)
    _steps(b, ob, 0, 4)
    stored = torch.bfloat16 if case.stochastic or case.dtype != torch.float32 else torch.float32
    for i, (p, q) in enumerate(zip(a, b)):
        if not p.numel():
            continue
        ulps = _ulps(p.detach().float(), q.detach().float(), stored)
        assert ulps <= (8 if stored == torch.bfloat16 else 64), f"param {i}: {ulps:.1f} ulps of {stored} from the arena"
        sa, sb = oa.state[p], ob.state[q]
        assert set(sa) == set(sb), f"param {i}: state keys {sorted(sa)} vs the arena's {sorted(sb)}"
        for moment in ("exp_avg", "exp_avg_sq"):
            fmt = formats.which(sa, moment, p)
            ma, mb = fmt.decode(sa, p, moment), fmt.decode(sb, q, moment)  # type: ignore[union-attr]
            scale = mb.abs().max().item()
            assert (ma - mb).abs().max().item() <= 2**-5 * scale + 1e-30, f"param {i} {moment}"


@pytest.mark.parametrize("case", format_params())
def test_checkpoint_mid_run_resumes_bit_for_bit(case: FormatCase):
    """6 steps uninterrupted = 3 steps, state_dict through torch.save, a fresh optimizer, 3 steps
    (with the seed and the noise pool reset before each step, stochastic rounding repeats too)."""
    import io

    params = _params(case.dtype)
    opt = case.make(params, **HYPER)
    _steps(params, opt, 0, 3)
    saved_params = [p.detach().clone() for p in params]
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    _steps(params, opt, 3, 3)

    buffer.seek(0)
    resumed = [p.clone().requires_grad_() for p in saved_params]
    again = case.make(resumed, **HYPER)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    _steps(resumed, again, 3, 3)
    for i, (p, q) in enumerate(zip(params, resumed)):
        assert torch.equal(p, q), f"param {i} differs after the resume"
        for key, value in opt.state[p].items():
            assert torch.equal(value, again.state[q][key]), f"param {i} state {key!r} differs after the resume"


@pytest.mark.parametrize("case", format_params())
def test_zero_lr_leaves_weights_unchanged(case: FormatCase):
    params = _params(case.dtype)
    before = [p.detach().clone() for p in params]
    opt = case.make(params, **{**HYPER, "lr": 0.0})
    _steps(params, opt, 0, 3)
    assert all(torch.equal(a, p) for a, p in zip(before, params))


@pytest.mark.parametrize("case", format_params())
def test_state_is_stored_in_the_format(case: FormatCase):
    """Every moment of every parameter is held in the format it asked for (the format's
    ``for_param`` may leave small tensors to another), and nothing else is kept but ``step``
    and Kahan's buffer where the rounding needs one."""
    params = _params(case.dtype)
    opt = case.make(params, **HYPER)
    _steps(params, opt, 0, 1)
    fmt = formats.get(case.moments)
    for p in params:
        state = opt.state[p]
        expected = {"step"}
        for moment in ("exp_avg", "exp_avg_sq"):
            chosen = fmt.for_param(p)
            assert chosen.holds(state, moment, p), f"{moment} of a {tuple(p.shape)} parameter is not {chosen.name}"
            expected |= set(chosen.keys(moment))
        if case.rounding == "kahan" and formats.is_low_precision(p):
            expected.add(formats.COMPENSATION_KEY)
        assert set(state) == expected


def test_every_executor_and_format_is_in_the_table():
    """The table really is built from the registries (a guard against a hand-written list)."""
    ids = {p.id for p in format_params(formatted_only=False)}
    for executor in formats.EXECUTORS:
        for moments in formats.MOMENTS:
            assert f"{moments}-nearest-float32-{executor}" in ids
