"""The native CPU kernels (:mod:`decoupled.formats.native`) against the formats' float32 arena.

Exactness: the kernel computes the loop backend's float32 arithmetic with a correctly rounded
square root, where torch.sqrt on CPU is MKL's (off by one ulp for about a fifth of inputs).
Given the loop backend an exact sqrt (``exact_sqrt``) and both paths zero rounding noise
(stochastic rounding becomes truncation), every combination of format, rounding, amsgrad,
maximize, convention and dtype stores the same bits as the arena over several steps. Cautious
decay, which the arena's backends do not run, is checked element by element against one step
with and one without decay from the same state. The random parts are tested on their own: the
noise is uniform and independent across streams, and stochastic rounding is unbiased.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from decoupled import backends, conventions, formats
from decoupled.backends import loop
from decoupled.backends import native as native_backend
from decoupled.formats import arena, native
from decoupled.formats.blockwise8 import BLOCKWISE8
from decoupled.formats.rounding import NOISE
from decoupled.native import build, stochastic_noise
from decoupled.rule import GroupCoefficients, TensorOps, group_coefficients

LOOP = backends.get("loop")  # the arena with the loop backend: the reference executor

REASON = build.unavailable_reason()
needs_kernel = pytest.mark.skipif(REASON is not None, reason=f"native kernel unavailable: {REASON}")

FORMATS = {
    "param": formats.PARAM,
    "fp32": formats.MOMENTS["fp32"],
    "bf16": formats.MOMENTS["bf16"],
    "tree8": BLOCKWISE8,
    "float8": formats.MOMENTS["8bit"],
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def coefficients(convention: str, *, amsgrad=False, maximize=False, cautious=False, lr=1e-2) -> GroupCoefficients:
    """The step's coefficients for a convention key of :mod:`decoupled.conventions` (cautious decay
    added with ``cautious``)."""
    conv = conventions.get(convention)
    if cautious:
        conv = conventions.of_group({"decay_scaling": conv.scaling.value, "cautious_decay": True})
    return group_coefficients(
        lr=lr,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        convention=conv,
        lr_max=2e-2,
        amsgrad=amsgrad,
        maximize=maximize,
    )


def params_like(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A matrix, a transposed matrix, a vector long enough for the 8-bit blocks (ragged end), one
    over a kernel chunk, a tensor that keeps fp32 state in the 8-bit formats, a zero-size one."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(33, 17), (12, 9), (5000,), (4097 + 1024,), (300,), (0, 4)]
    ps = [torch.randn(s, generator=g) for s in shapes]
    ps[1] = ps[1].t()
    return [p.to(dtype) for p in ps]


def new_states(params, fmt, rounding: str, amsgrad: bool) -> list[dict]:
    names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
    states = []
    for p in params:
        state = {"step": torch.tensor(0.0)}
        for name in names:
            state.update(formats.allocate(p, fmt, name))
        if rounding == "kahan" and formats.is_low_precision(p):
            state.update(formats.compensation_buffer(p))
        states.append(state)
    return states


def grads_like(params, t: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + t)
    return [torch.empty_like(p).copy_(torch.randn(p.shape, generator=g)) for p in params]


@pytest.fixture
def exact_sqrt(monkeypatch):
    monkeypatch.setattr(TensorOps, "sqrt", lambda self, x: x.double().sqrt().to(x.dtype))


@pytest.fixture
def zero_noise(monkeypatch):
    monkeypatch.setattr(NOISE, "draw", lambda n, device: torch.zeros(n, dtype=torch.int32, device=device))


def equal_runs(a, b) -> None:
    (pa, sa), (pb, sb) = a, b
    for i, (x, y) in enumerate(zip(pa, pb)):
        assert torch.equal(x, y), f"parameter {i}: max diff {(x.float() - y.float()).abs().max()}"
    for i, (x, y) in enumerate(zip(sa, sb)):
        assert set(x) == set(y)
        for key in x:
            same = (
                torch.equal(x[key].view(torch.uint8), y[key].view(torch.uint8))
                if x[key].dim()
                else torch.equal(x[key], y[key])
            )
            assert same, f"state {i} {key!r} differs"


def run(stepper, dtype, fmt, rounding, c, steps=3, states=None):
    params = params_like(dtype)
    states = states if states is not None else new_states(params, fmt, rounding, c.amsgrad)
    for t in range(steps):
        for s in states:
            s["step"] += 1
        stepper(params, grads_like(params, t), states, c)
    return params, states


# ---- every combination against the arena ---------------------------------------------------------

CASES = [
    (f, r, a, m, conv, d)
    for f, r, a, m, conv, d in itertools.product(
        FORMATS,
        ("nearest", "kahan", "stochastic"),
        (False, True),
        (False, True),
        ("adamw", "adamw_indep", "adam_l2"),
        DTYPES,
    )
    if not (r == "stochastic" and d == "f16")
]


@needs_kernel
@pytest.mark.parametrize("fmt, rounding, amsgrad, maximize, convention, dtype", CASES)
def test_kernel_stores_the_arenas_bits(exact_sqrt, zero_noise, fmt, rounding, amsgrad, maximize, convention, dtype):
    c = coefficients(convention, amsgrad=amsgrad, maximize=maximize)
    moments = FORMATS[fmt]
    reference = run(
        lambda p, g, s, c: arena.run(p, g, s, c, moments=moments, rounding=rounding, backend=LOOP),
        DTYPES[dtype],
        moments,
        rounding,
        c,
    )
    kernel = run(
        lambda p, g, s, c: native.step(p, g, s, c, moments=moments, rounding=rounding, random_noise=False),
        DTYPES[dtype],
        moments,
        rounding,
        c,
    )
    equal_runs(reference, kernel)


@needs_kernel
@pytest.mark.parametrize("fmt", ["bf16", "float8"])
def test_tensors_at_different_step_counts_take_their_own_bias_corrections(exact_sqrt, zero_noise, fmt):
    """One call steps tensors whose step counts differ (a parameter that had no gradient for a
    while lags behind): each takes the bias corrections of its own count (the executor computes
    them once per distinct count)."""
    moments, c = FORMATS[fmt], coefficients("adamw")

    def lagging_states():
        states = new_states(params_like(torch.float32), moments, "nearest", amsgrad=False)
        for s, start in zip(states, (0, 7, 0, 250, 7, 0)):
            s["step"] += start
        return states

    def stepper(executor, **options):
        return lambda p, g, s, c: executor(p, g, s, c, moments=moments, rounding="nearest", **options)

    reference = run(
        stepper(arena.run, backend=LOOP),
        torch.float32,
        moments,
        "nearest",
        c,
        states=lagging_states(),
    )
    kernel = run(
        stepper(native.step, random_noise=False), torch.float32, moments, "nearest", c, states=lagging_states()
    )
    equal_runs(reference, kernel)
    assert [float(s["step"]) for s in kernel[1]] == [3, 10, 3, 253, 10, 3]
    together = run(stepper(native.step, random_noise=False), torch.float32, moments, "nearest", c)  # every count at 3
    assert not torch.equal(together[0][1], kernel[0][1]), "the lagging tensor took the shared count's corrections"


@needs_kernel
@pytest.mark.parametrize("fmt", ["bf16", "float8"])
@pytest.mark.parametrize("count", ["float32", "float64", "float16"])
def test_the_executor_counts_each_step_once_and_only_after_its_checks(exact_sqrt, zero_noise, fmt, count):
    """The native executor adds 1 to each step count itself (float32 and float64 counts in the
    kernel call, others through torch), then steps with the new count's bias corrections: the
    same bits as the arena given counts already incremented. A parameter without elements is
    counted too. A bad state entry raises before any count moves."""
    moments, c = FORMATS[fmt], coefficients("adamw")
    dtype = getattr(torch, count)
    params = params_like(torch.float32) + [torch.zeros(0)]

    def states_at(start):
        states = new_states(params, moments, "nearest", amsgrad=False)
        for s, k in zip(states, (0, 7, 0, 250, 7, 0, 3)):
            s["step"] = torch.tensor(float(start + k)).to(dtype)
        return states

    reference, counted = states_at(1), states_at(0)
    ref_params, own_params = [p.clone() for p in params], [p.clone() for p in params]
    grads = grads_like(params, 0)
    arena.run(ref_params[:-1], grads[:-1], reference[:-1], c, moments=moments, rounding="nearest", backend=LOOP)
    native.EXECUTOR.run(own_params, grads, counted, c, moments=moments, rounding="nearest", random_noise=False)
    equal_runs((ref_params[:-1], reference[:-1]), (own_params[:-1], counted[:-1]))
    assert [s["step"].item() for s in counted] == [1, 8, 1, 251, 8, 1, 4]
    assert all(s["step"].dtype == dtype for s in counted)

    broken = states_at(0)
    key = next(k for k, v in broken[3].items() if k != "step" and v.dim() > 0)
    broken[3][key] = broken[3][key][:-1]  # one element short
    with pytest.raises(ValueError, match="elements for this format"):
        native.EXECUTOR.run(own_params, grads, broken, c, moments=moments, rounding="nearest")
    assert [s["step"].item() for s in broken] == [0, 7, 0, 250, 7, 0, 3]


@needs_kernel
@pytest.mark.parametrize("fmt, rounding, dtype", [(f, r, d) for f, r, _, _, _, d in CASES[::12]])
def test_cautious_decay_decays_where_the_update_agrees_with_the_weight(fmt, rounding, dtype):
    """Each step from one state, three ways: cautious, always decaying, never decaying. The
    cautious result equals the decaying one where m_new * theta >= 0 and the other elsewhere."""
    moments, dt = FORMATS[fmt], DTYPES[dtype]
    params = params_like(dt)
    states = new_states(params, moments, rounding, amsgrad=False)
    for t in range(3):
        grads = grads_like(params, t)
        for s in states:
            s["step"] += 1
        runs = {}
        for name, c in (
            ("cautious", coefficients("adamw", cautious=True)),
            ("decay", coefficients("adamw")),
            ("none", dataclasses.replace(coefficients("adamw"), decay_factor=1.0, decays=False)),
        ):
            ps, ss = copy.deepcopy(params), copy.deepcopy(states)
            torch.manual_seed(t)  # the same rounding noise in all three
            native.step(ps, grads, ss, c, moments=moments, rounding=rounding)
            runs[name] = (ps, ss)
        for i, p in enumerate(params):
            # the stored m has the sign of the kernel's float32 m wherever it is not 0
            m_new = moments.for_param(p).decode(runs["decay"][1][i], p, "exp_avg")
            theta = p.float() + (states[i]["kahan_comp"].float() if "kahan_comp" in states[i] else 0)
            mask = m_new * theta >= 0
            decayed, kept, got = runs["decay"][0][i], runs["none"][0][i], runs["cautious"][0][i]
            known = m_new != 0
            assert torch.equal(got[known], torch.where(mask, decayed, kept)[known]), (i, t)
            assert torch.all((got == decayed) | (got == kept))
            assert 0 < mask[known].float().mean() < 1 or p.numel() == 0
        params, states = runs["cautious"]


@needs_kernel
def test_threads_and_chunking_do_not_change_the_result():
    moments, c = formats.MOMENTS["bf16"], coefficients("adamw")
    stepper = lambda p, g, s, c: native.step(p, g, s, c, moments=moments, rounding="stochastic")  # noqa: E731
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        results.append(run(stepper, torch.bfloat16, moments, "stochastic", c))
    torch.set_num_threads(1)
    equal_runs(*results)


# ---- the 8-bit codes, the pipeline, every instruction set ------------------------------------------


@needs_kernel
def test_the_8bit_codes_agree_on_every_float32_input():
    """The codes' scalar arithmetic (codes.h), the vectors of simd.h and the CPU's float16
    instructions give the same bits for all 2^32 float32 inputs and all 256 codes."""
    assert build.kernel().code_mismatches(0, 1) == 0


def float8_runs(params, grads_of, check=lambda ps, states: None) -> list:
    """(parameters, states) of the arena (loop backend) and of the kernel, each stepping copies
    of ``params`` three times with 8-bit moments, amsgrad and Kahan compensation;
    ``grads_of(ps, t)``: step t's gradients; ``check(ps, states)`` after each run."""
    c, moments = coefficients("adamw", amsgrad=True), FORMATS["float8"]
    results = []
    for stepper in (
        lambda p, g, s, c: arena.run(p, g, s, c, moments=moments, rounding="kahan", backend=LOOP),
        lambda p, g, s, c: native.step(p, g, s, c, moments=moments, rounding="kahan", random_noise=False),
    ):
        ps = [p.clone() for p in params]
        states = new_states(ps, moments, "kahan", amsgrad=True)
        for t in range(3):
            for s in states:
                s["step"] += 1
            stepper(ps, grads_of(ps, t), states, c)
        check(ps, states)
        results.append((ps, states))
    return results


@needs_kernel
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_the_8bit_pipeline_across_work_grabs_stores_the_arenas_bits(exact_sqrt, zero_noise, dtype):
    """One tensor over four of the kernel's work grabs (64K elements each, a pipeline of
    256-element blocks per grab, each block's codes written in the next block's loop), ragged at
    the end, with amsgrad and Kahan compensation: the arena's bits."""
    g = torch.Generator().manual_seed(7)
    params = [torch.randn(3 * 65536 + 1000 + 37, generator=g).to(DTYPES[dtype])]
    equal_runs(*float8_runs(params, grads_like))


@needs_kernel
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_8bit_blocks_of_tiny_moments_stay_finite_and_store_the_arenas_bits(exact_sqrt, zero_noise, dtype):
    """Gradients of 1e-17 and zeros (a weight that barely gets a gradient): the second moments'
    blocks have an absmax near 1e-37, a float32-subnormal scale whose reciprocal overflows; their
    nonzero values were stored as the block's maximum and their zeros as NaN (the format path).
    Now every state and parameter is finite, and the kernel stores the arena's bits."""
    moments = FORMATS["float8"]
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(17 * 256 + 77, generator=g).to(DTYPES[dtype])]
    tiny = torch.where(torch.rand(params[0].shape, generator=g) < 0.5, 1e-17, 0.0)
    tiny[256:512] *= 1e-3  # a block whose scale underflows to zero
    tiny[-77:] = torch.randn(77, generator=g)  # a ragged block of the usual range
    grads = [tiny.to(DTYPES[dtype])]

    def finite(ps, states):
        assert ps[0].isfinite().all()
        assert moments.for_param(ps[0]) is moments
        for moment in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            value = torch.empty(ps[0].numel())
            moments.load(states[0], moment, 0, value.numel(), value)
            assert value.isfinite().all(), moment

    equal_runs(*float8_runs(params, lambda ps, t: grads, finite))


@needs_kernel
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 prefetch instructions")
def test_the_kernel_keeps_its_software_prefetch():
    """GCC 12 drops the calls of a function it finds free of side effects, and counts
    __builtin_prefetch as one: it silently removed the first version of the 8-bit loop's prefetch
    and then of the dense loops' (kernel.cpp, `prefetch_lines`). The built kernel holds prefetch
    instructions for reading (the gradient) and for writing (the parameter and the moments); on
    every CPU, since the 8-bit loop over bf16 parameters prefetches on AMD CPUs too (build.PREFETCH)."""
    code = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", build.kernel().__file__], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"\tprefetcht0\s", code), "no prefetch for reading in the built kernel"
    assert re.search(r"\tprefetchw\s", code), "no prefetch for writing in the built kernel"


def test_amd_cpus_build_without_the_dense_loops_prefetch():
    """On AMD CPUs the page prefetch of the dense loops and the 8-bit loop's over float32
    parameters made every such loop slower (benchmarks/RESULTS.md): the build switches them off
    there, and only there, and the flags are what the kernel is compiled with."""
    vendor = build._vendor()
    assert vendor == _cpuinfo_field("vendor_id")
    off = ("-DDECOUPLED_PREFETCH_F32=0", "-DDECOUPLED_PAGE_AHEAD=0")
    assert build.PREFETCH == (off if vendor == "AuthenticAMD" else ())
    assert all(flag in build._flags() for flag in build.PREFETCH)


ISA_TARGETS = {"x86-64-v2": (), "haswell": ("avx2", "fma", "f16c")}
"""``-march`` targets whose code paths differ from an AVX-512 build's, and the CPU flags they need:
no F16C (the scalar codes, vectorized by the compiler over SSE), AVX2 (8-lane vectors)."""

ISA_CASES = [
    *itertools.product(("float8",), ("nearest", "kahan", "stochastic"), (False, True), ("adamw", "adam_l2"), DTYPES),
    *itertools.product(("bf16", "fp32"), ("nearest", "stochastic"), (False,), ("adamw",), ("f32", "bf16")),
]


def isa_runs() -> list:
    """Three steps of every case of ISA_CASES (stochastic rounding with the same seeds)."""
    runs = []
    for fmt, rounding, amsgrad, convention, dtype in ISA_CASES:
        if rounding == "stochastic" and dtype == "f16":
            continue
        moments = FORMATS[fmt]
        c = coefficients(convention, amsgrad=amsgrad, maximize=amsgrad, cautious=not amsgrad and convention == "adamw")
        torch.manual_seed(0)
        stepper = functools.partial(native.step, moments=moments, rounding=rounding)
        runs.append(run(stepper, DTYPES[dtype], moments, rounding, c))
    return runs


def _cpuinfo_field(name: str) -> str:
    """The first value of `name` in /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(name)), "")
    except OSError:
        return ""


def _cpu_flags() -> set[str]:
    return set(_cpuinfo_field("flags").split())


@needs_kernel
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
@pytest.mark.parametrize("march", ISA_TARGETS)
def test_every_instruction_set_stores_the_same_bits(march, tmp_path):
    """The kernel built for another instruction set (DECOUPLED_NATIVE_MARCH) stores the bits of
    this CPU's build in every 8-bit case and the dense formats: a fresh clone on an AVX2-only
    CPU runs other code than an AVX-512 one, and must compute the same."""
    missing = [flag for flag in ISA_TARGETS[march] if flag not in _cpu_flags()]
    if missing:
        pytest.skip(f"this CPU lacks {missing}")
    out = tmp_path / "runs.pt"
    script = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import torch, test_native as t; "
    script += (
        f"from decoupled.native import build; assert build.kernel() is not None; torch.save(t.isa_runs(), {str(out)!r})"
    )
    env = {**os.environ, "DECOUPLED_NATIVE_MARCH": march}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = torch.load(out)
    ours = isa_runs()
    assert len(ours) == len(theirs)
    for case, a, b in zip((c for c in ISA_CASES if not (c[1] == "stochastic" and c[4] == "f16")), ours, theirs):
        try:
            equal_runs(a, b)
        except AssertionError as err:
            raise AssertionError(f"{march}, case {case}: {err}") from None


# ---- stochastic rounding -----------------------------------------------------------------------------


@needs_kernel
def test_noise_is_uniform_and_independent_across_streams():
    """Streams of the parameter, exp_avg and exp_avg_sq (the two halves of one hash), another
    tensor and another seed: each uniform, no two correlated."""
    n = 1 << 18
    streams = [
        stochastic_noise(seed, tensor, stream, 0, n)
        for seed, tensor, stream in ((1, 0, 0), (1, 0, 1), (1, 0, 2), (1, 1, 0), (2, 0, 0))
    ]
    for noise in streams:
        assert 0 <= noise.min() and noise.max() < 1 << 16
        counts = torch.bincount(noise >> 8, minlength=256).double()  # 256 bins of 256 values
        chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum().item()
        assert chi2 < 255 + 5 * (2 * 255) ** 0.5, chi2  # 5 sigma of chi-square(255)
        assert abs(noise.double().mean().item() - 32767.5) < 5 * 18918 / n**0.5
    for a, b in itertools.combinations(streams, 2):
        corr = torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()
        assert abs(corr) < 5 / n**0.5, corr
    # the moments' halves of one hash: jointly uniform (16 x 16 bins of their top 4 bits)
    joint = torch.bincount((streams[1] >> 12) * 16 + (streams[2] >> 12), minlength=256).double()
    chi2 = ((joint - n / 256) ** 2 / (n / 256)).sum().item()
    assert chi2 < 255 + 5 * (2 * 255) ** 0.5, chi2
    # the element index, not the call's chunking, picks the noise
    assert torch.equal(stochastic_noise(1, 0, 0, 1000, 500), streams[0][1000:1500])


@needs_kernel
@pytest.mark.parametrize("rounding, fmt", [("stochastic", "param"), ("nearest", "bf16")])
def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour(rounding, fmt):
    """bf16 weights at 1 and a constant gradient, lr 1e-4: each step moves a weight by 1e-4, a
    fortieth of a bf16 ulp at 1 (round to nearest never moves it). With stochastic rounding
    every store lands on the truncated value or one ulp above it, and the mean follows the
    exact trajectory (per element at most half an ulp of variance per step: 5 sigma of the
    mean of n is 5 * sqrt(steps) * 2^-9 / sqrt(n)); bf16 moments track their exact value."""
    n, steps, g = 1 << 16, 50, 0.125
    p = torch.ones(n, dtype=torch.bfloat16)
    moments = FORMATS[fmt]
    states = new_states([p], moments, rounding, amsgrad=False)
    c = group_coefficients(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    key = "exp_avg_sq" if fmt == "bf16" else None
    exact_v = 0.0
    for _ in range(steps):
        states[0]["step"] += 1
        grad = torch.full((n,), g, dtype=torch.bfloat16)
        truncated = (copy.deepcopy(p), copy.deepcopy(states))
        native.step([truncated[0]], [grad], truncated[1], c, moments=moments, rounding=rounding, random_noise=False)
        native.step([p], [grad], states, c, moments=moments, rounding=rounding)
        got, low = (p, truncated[0]) if key is None else (states[0][key], truncated[1][0][key])
        ulps = got.view(torch.int16).int() - low.view(torch.int16).int()  # positive values: bits are ordered
        assert set(ulps.unique().tolist()) <= {0, 1}
        exact_v = 0.999 * exact_v + 0.001 * g * g
    if key is None:
        assert abs(p.double().mean().item() - (1 - steps * 1e-4)) < 5 * steps**0.5 * 2**-9 / n**0.5
    else:
        v = states[0][key].double().mean().item()
        assert abs(v - exact_v) < 5 * 2**-9 * exact_v / n**0.5 + 1e-6 * exact_v


# ---- torch's layout: the backends' signature --------------------------------------------------------

LAYOUT_CASES = list(
    itertools.product(
        (torch.float32, torch.complex64), (False, True), (False, True), ("adamw", "adam_l2"), (False, True)
    )
)


@needs_kernel
@pytest.mark.parametrize("dtype, amsgrad, maximize, convention, exact", LAYOUT_CASES)
def test_torch_layout_matches_the_loop_backend(monkeypatch, dtype, amsgrad, maximize, convention, exact):
    """To the bit given an exact sqrt; to float32 rounding with torch's MKL sqrt. Transposed and
    channels-last parameters are stepped in place, in their own memory order."""
    if exact:
        monkeypatch.setattr(TensorOps, "sqrt", lambda self, x: x.double().sqrt().to(x.dtype))
    c = coefficients(convention, amsgrad=amsgrad, maximize=maximize)
    base = [
        torch.randn(33, 17),
        torch.randn(12, 9).t(),
        torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last),
        torch.randn(5000),
        torch.randn(0),
    ]
    runs = []
    # a complex parameter's L2 term: our loop adds it in complex arithmetic, as torch's for-loop;
    # the native kernel on the real view, as torch's foreach and fused kernels: the reference is
    # then the loop on the real views

    def loop_on_real_views(*lists_and_c):
        *lists, steps, c_ = lists_and_c
        real = [[torch.view_as_real(t) if t.is_complex() else t for t in ts] for ts in lists]
        loop.step(*real, steps, c_)

    reference = loop_on_real_views if dtype.is_complex and convention == "adam_l2" else loop.step
    for stepper in (reference, native_backend.step):
        ps = [p.to(dtype, copy=True) for p in base]
        moments = [[torch.zeros_like(p) for p in ps] for _ in range(3)]
        steps = [torch.tensor(0.0) for _ in ps]
        for t in range(4):
            for s in steps:
                s += 1
            stepper(ps, grads_like(ps, t), moments[0], moments[1], moments[2] if amsgrad else [], steps, c)
        runs.append((ps, moments))
    for x, y in zip(runs[0][0] + sum(runs[0][1], []), runs[1][0] + sum(runs[1][1], [])):
        assert x.stride() == y.stride()
        if exact:
            assert torch.equal(x, y)
        else:
            # a few float32 ulps of the tensor's scale (values are O(1); an element that cancels to
            # near zero carries the ulps of the operands it came from)
            torch.testing.assert_close(x, y, rtol=4e-7 * 4, atol=1e-7)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_layout_in_low_precision_rounds_once_like_the_arena(exact_sqrt, dtype):
    c = coefficients("adamw", amsgrad=True)
    reference = run(
        lambda p, g, s, c: arena.run(p, g, s, c, moments=formats.PARAM, rounding="nearest", backend=LOOP),
        dtype,
        formats.PARAM,
        "nearest",
        c,
    )
    params = params_like(dtype)
    states = new_states(params, formats.PARAM, "nearest", True)
    for t in range(3):
        for s in states:
            s["step"] += 1
        names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        native_backend.step(
            params, grads_like(params, t), *([s[k] for s in states] for k in names), [s["step"] for s in states], c
        )
    equal_runs(reference, (params, states))


# ---- without a compiler ------------------------------------------------------------------------------


def test_a_failed_build_warns_once_and_the_arena_path_runs(tmp_path):
    """A compiler that fails (here a wrong one) gives one warning that says why and how to get
    the kernel; unsupported_reason returns the reason; decoupled.AdamW keeps stepping formats."""
    script = textwrap.dedent(
        """
        import warnings, torch, decoupled
        from decoupled.formats import native, MOMENTS
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = native.unsupported_reason(MOMENTS["bf16"], "nearest", [torch.zeros(3)])
            again = native.unsupported_reason(MOMENTS["bf16"], "nearest", [torch.zeros(3)])
        print(first == again, len(caught), str(caught[0].message))
        p = torch.nn.Parameter(torch.ones(8))
        p.grad = torch.ones(8)
        decoupled.AdamW([p], moments="bf16").step()
        print("stepped", p.detach().tolist()[0] < 1)
        """
    )
    env = {**os.environ, "DECOUPLED_NATIVE_DIR": str(tmp_path), "CXX": "false"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    same, count, message = out.stdout.splitlines()[0].split(" ", 2)
    assert same == "True" and count == "1"
    assert "could not be built" in message and "install a C++ compiler" in message and "DECOUPLED_NATIVE=0" in message
    assert "stepped True" in out.stdout


def test_switching_the_kernel_off_gives_a_reason_and_no_warning(monkeypatch):
    monkeypatch.setenv("DECOUPLED_NATIVE", "0")
    build.reset()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert "DECOUPLED_NATIVE=0" in native.unsupported_reason(formats.PARAM, "nearest", [torch.zeros(2)])
    finally:
        build.reset()


# ---- the loops without Python (benchmarks/kernel_micro.py) ------------------------------------------


@needs_kernel
def test_the_kernel_builds_without_python_and_times_every_case(capsys):
    """kernel.cpp with DECOUPLED_KERNEL_STANDALONE (no torch, no pybind11) builds, runs every case
    of the harness and reports a time per element for each, and for the three memory floors (the
    step's traffic without its arithmetic): here two builds (the dense loops' page prefetch off,
    and the default) in turn over two rounds, which store the same bits."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    try:
        import kernel_micro
    finally:
        sys.path.pop(0)
    argv = ["--elements", "5000", "--steps", "2", "--rounds", "2", "--flags=-DDECOUPLED_PAGE_AHEAD=0", "--flags="]
    assert kernel_micro.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("ns per element"))
    assert "-DDECOUPLED_PAGE_AHEAD=0" in header and "(none)" in header
    rows = lines[lines.index(header) + 1 : lines.index("same bits in every build")]
    assert len(rows) == 13 and all(float(x) > 0 for row in rows for x in row.split()[-2:]), rows
    assert [row.split(" (")[0] for row in rows[-3:]] == ["floor: 28 B", "floor: 20 B", "floor: 16 B"], rows
