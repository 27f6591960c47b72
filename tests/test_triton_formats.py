"""The formats' Triton executor (:mod:`decoupled.formats.triton`) against the arena
(:func:`decoupled.formats.arena.run` with the loop backend): on the CPU under Triton's
interpreter, and compiled on a CUDA GPU when one is present.

``TRITON_INTERPRET=1`` must be set before Triton decorates the kernel and must not leak into
other tests, so the checks run in one subprocess per device (this file run as a script), which
prints one JSON line per case; the tests below read those lines.

Each case steps six tensors (a 4396-element one whose last float8 block is short and whose first
block has zero gradients, so its scale is 0; 21, 1, 0 and 300 elements, which keep fp32
moments under ``8bit``; a transposed 70x64 one) with two step counts (two launches) for three
steps, in lockstep: before every step the arena gets a copy of the executor's state, both step,
and every stored tensor is compared. The update's arithmetic is the same; the one difference is
torch's vectorized CPU ``sqrt``, one ulp off on some inputs where the kernel's is correctly
rounded, which moves the parameter by an ulp but no moment. So, on the CPU:

* moments (dense, float8 codes and scales): bitwise equal where they are rounded to nearest;
  within one bf16 step (adjacent values) where they are rounded stochastically;
* parameters: fp32 within 1e-6 of the tensor's largest; bf16/fp16 within one step (two for
  stochastic rounding, whose interval can move with the ulp); Kahan's sum ``param + comp``
  within 2^-14 of the largest.

On CUDA torch's own kernels round some operations differently from its CPU kernels, so moments
there may also move by one step (two for stochastic rounding) on a few elements.

The float8 code is also checked alone (:func:`decoupled.formats.triton.kernel.float8_kernel`: the
kernel's store and load of a moment) against :class:`decoupled.formats.float8.BlockFloat8`, bitwise
(NaN equals NaN; exceptions in :func:`_float8_case`), on values that reach every rounding case
(:func:`_float8_values`) and on all 256 codes decoded at several scales.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# (parameter dtype, moments, param_rounding, convention, amsgrad, maximize)
CASES = [
    ("float32", "param", "nearest", "adamw", False, False),
    ("float32", "fp32", "stochastic", "adamw_corrected", True, False),
    ("float32", "bf16", "nearest", "adamw", False, False),
    ("float32", "bf16", "nearest", "adamw_indep", True, True),
    ("float32", "8bit", "nearest", "adamw", False, False),
    ("float32", "8bit", "nearest", "adam_l2", True, False),
    ("float32", "8bit", "nearest", "adamw_indep", False, True),
    ("float32", "bf16", "nearest", "adamw_cautious", False, False),
    ("float32", "8bit", "nearest", "adamw_cautious", True, False),
    ("bfloat16", "param", "nearest", "adamw", False, False),
    ("bfloat16", "param", "kahan", "adamw", False, False),
    ("bfloat16", "param", "kahan", "adam_l2", True, True),
    ("bfloat16", "param", "stochastic", "adamw", False, False),
    ("bfloat16", "bf16", "stochastic", "adamw", True, False),
    ("bfloat16", "bf16", "kahan", "adamw_corrected", False, False),
    ("bfloat16", "fp32", "kahan", "adamw_indep", False, False),
    ("bfloat16", "8bit", "stochastic", "adamw", False, False),
    ("bfloat16", "8bit", "kahan", "adamw_cautious", True, True),
    ("float16", "param", "kahan", "adamw", False, False),
    ("float16", "8bit", "nearest", "adam_l2", False, True),
    ("float16", "8bit", "kahan", "adamw_corrected", True, False),
    ("float16", "fp32", "nearest", "adamw", True, False),
]
STEPS = 3
SHAPES = [(4396,), (3, 7), (1,), (0,), (300,), (70, 64)]  # the last one is transposed
# one case also runs with 2048-element programs of 8 warps (the tuning run's settings)
BIG_BLOCK = {"DECOUPLED_TRITON_FORMAT_BLOCK": "2048", "DECOUPLED_TRITON_FORMAT_NUM_WARPS": "8"}
BIG_BLOCK_CASE = ("float32", "8bit", "nearest", "adamw", False, False)
# the float8 code alone: (values, moment); see _float8_values and _float8_case
FLOAT8_VALUES = ("float16 grid", "midpoints", "scaled midpoints", "random blocks", "special blocks", "every code")
FLOAT8_CASES = [(values, moment) for values in FLOAT8_VALUES for moment in ("exp_avg", "exp_avg_sq")]


def coefficients(convention: str, lr: float, amsgrad: bool, maximize: bool):
    """The step's GroupCoefficients for ``convention`` (weight decay 0.1, peak lr 3e-2)."""
    from decoupled.conventions import get
    from decoupled.rule import group_coefficients

    return group_coefficients(
        lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, convention=get(convention), lr_max=3e-2,
        amsgrad=amsgrad, maximize=maximize,
    )  # fmt: skip


def _bits(t):
    """Stored values as integers whose difference counts representable steps (same sign)."""
    import torch

    wide = {torch.uint8: (None, torch.int32), torch.float32: (torch.int32, torch.int64)}
    view, up = wide.get(t.dtype, (torch.int16, torch.int32))
    return (t.view(view) if view else t).to(up)


def _ulps(a, b) -> int:
    return int((_bits(a) - _bits(b)).abs().max()) if a.numel() else 0


def _rel(a, b) -> float:
    if not a.numel():
        return 0.0
    return float((a.double() - b.double()).abs().max() / (a.double().abs().max() or 1.0))


def _arena_step(params, grads, states, c, fmt, rounding) -> None:
    """One step of the arena executor with the loop backend: the reference executor."""
    from decoupled import backends
    from decoupled.formats import arena

    arena.run(params, grads, states, c, moments=fmt, rounding=rounding, backend=backends.get("loop"))


def _run_case(dtype_name, moments, rounding, convention, amsgrad, maximize, device="cpu") -> dict:
    import torch

    from decoupled import formats
    from decoupled.formats import triton as triton_formats

    dtype, fmt = getattr(torch, dtype_name), formats.get(moments)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device, dtype) for s in SHAPES]
    params[-1] = params[-1].t()
    states = []
    for i, p in enumerate(params):
        state = {"step": torch.tensor(float(i % 2))}
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq"):
            state.update(formats.allocate(p, fmt, name))
        if rounding == "kahan" and formats.is_low_precision(p):
            state.update(formats.compensation_buffer(p))
        states.append(state)
    out = {"moment_ulps": 0, "moment_unequal": 0.0, "param_ulps": 0, "param_rel": 0.0, "comp_rel": 0.0}
    start = [p.clone() for p in params]
    for k in range(STEPS):
        c = coefficients(convention, 1e-2 * (1 + k % 3), amsgrad, maximize)
        grads = [(torch.randn(s, generator=gen) * (2.0 if k % 2 else 0.5)).to(device, dtype) for s in SHAPES]
        grads[0][:256] = 0  # an all-zero 8-bit block: absmax 0
        grads[-1] = grads[-1].t()
        for s in states:
            s["step"] += 1
        ref_params = [p.clone() for p in params]
        ref_states = [{key: v.clone() for key, v in s.items()} for s in states]
        triton_formats.step(params, grads, states, c, moments=fmt, rounding=rounding)
        _arena_step(ref_params, grads, ref_states, c, fmt, rounding)
        for p, q, s, r in zip(params, ref_params, states, ref_states):
            if not p.numel():
                continue
            for key in s:
                if key in ("step", formats.COMPENSATION_KEY):
                    continue
                out["moment_ulps"] = max(out["moment_ulps"], _ulps(s[key], r[key]))
                out["moment_unequal"] = max(out["moment_unequal"], float((s[key] != r[key]).float().mean()))
            if p.dtype == torch.float32:
                out["param_rel"] = max(out["param_rel"], _rel(p, q))
            else:
                out["param_ulps"] = max(out["param_ulps"], _ulps(p, q))
            if formats.COMPENSATION_KEY in s:
                mine, theirs = (x.float() + st[formats.COMPENSATION_KEY].float() for x, st in ((p, s), (q, r)))
                out["comp_rel"] = max(out["comp_rel"], _rel(mine, theirs))
    out["finite"] = all(bool(p.float().isfinite().all()) for p in params)
    out["moved"] = all(not torch.equal(p, q) for p, q in zip(params, start) if p.numel())
    return out


def _stochastic_statistics(device: str) -> dict:
    """One step from zero state of 8192 equal elements: bf16 moments and bf16 parameters
    rounded stochastically, against the float32 value (the loop backend in fp32). Per lane of a
    4-element Philox group (neighbouring elements): the mean of the stored values and the share
    rounded up."""
    import torch

    from decoupled import backends, formats
    from decoupled.formats import triton as triton_formats

    n, g0, p0 = 8192, 1.2345e-3, 0.3717
    p = torch.full((n,), p0, dtype=torch.bfloat16, device=device)
    state = {"step": torch.tensor(1.0), **formats.allocate(p, formats.get("bf16"), "exp_avg")}
    state.update(formats.allocate(p, formats.get("bf16"), "exp_avg_sq"))
    c = coefficients("adamw", 1e-2, False, False)
    grad = torch.full((n,), g0, dtype=torch.bfloat16, device=device)
    exact = [t[:1].float().clone() for t in (p, grad)]
    m32, v32 = torch.zeros(1, device=device), torch.zeros(1, device=device)
    backends.BACKENDS["loop"]([exact[0]], [exact[1]], [m32], [v32], [], [torch.tensor(1.0)], c)
    triton_formats.step([p], [grad], [state], c, moments=formats.get("bf16"), rounding="stochastic")
    out = {}
    stored = (("param", p, exact[0]), ("exp_avg", state["exp_avg"], m32), ("exp_avg_sq", state["exp_avg_sq"], v32))
    for name, values, x in stored:
        x = float(x)
        lo = torch.tensor([x]).view(torch.int32).bitwise_and(-65536).view(torch.float32).item()
        hi = torch.tensor([lo]).to(torch.bfloat16).view(torch.int16).add(1).view(torch.bfloat16).float().item()
        values = values.float().cpu()
        lanes = values.view(-1, 4)  # the 4 neighbouring elements that share a Philox draw
        out[name] = {
            "exact": x,
            "lo": lo,
            "hi": hi,
            "only_neighbours": bool(((values == lo) | (values == hi)).all()),
            "lane_up": [float((lanes[:, k] == hi).float().mean()) for k in range(4)],
            "lane_mean": [float(lanes[:, k].double().mean()) for k in range(4)],
            "lanes_agree": float(((lanes == hi).sum(1) % 4 == 0).float().mean()),
        }
    return out


def _cautious(device: str) -> dict:
    """One step of cautious decay (fp32 parameters and moments, nonzero state) against the loop
    backend without decay plus the decay where ``m_new * theta >= 0``: the largest difference
    relative to the largest parameter, and how many elements the mask decayed and kept."""
    import torch

    from decoupled import backends, formats
    from decoupled.formats import triton as triton_formats

    gen = torch.Generator().manual_seed(5)
    p, g, m, v = (torch.randn(5000, generator=gen).to(device) for _ in range(4))
    v = v.abs()
    state = {"step": torch.tensor(3.0), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    c = coefficients("adamw_cautious", 0.05, False, False)
    plain = coefficients("adamw", 0.05, False, False)  # the same step without decay
    plain = dataclasses.replace(plain, decay_factor=1.0, decays=False)
    p_nd, m_new = p.clone(), m.clone()
    backends.BACKENDS["loop"]([p_nd], [g], [m_new], [v.clone()], [], [torch.tensor(3.0)], plain)
    mask = m_new * p >= 0
    expected = p_nd + torch.where(mask, p * (c.decay_factor - 1), 0)
    mine = p.clone()
    triton_formats.step([mine], [g], [state], c, moments=formats.get("fp32"), rounding="nearest")
    rel = float((mine - expected).abs().max() / expected.abs().max())
    return {"rel": rel, "decayed": int(mask.sum()), "kept": int((~mask).sum())}


def _float8_values(kind: str, signed: bool):
    """float32 values for :func:`_float8_case` (``"every code"``: codes, uint8): every float16 the
    codes round from, and every midpoint of two (with its float32 neighbours), in blocks whose scale
    is 1, so that the kernel rounds exactly those; midpoints at random scales; blocks at scales from
    1e-38 to 1e37; zero, NaN, infinite, subnormal and near-overflow blocks."""
    import torch

    from decoupled.formats.float8 import BLOCK, E4M3_MAX, E5M3_MAX

    top = E4M3_MAX if signed else E5M3_MAX
    gen = torch.Generator().manual_seed(7)
    if kind == "every code":  # all 256 codes in each block, blocks at several scales
        return torch.arange(BLOCK, dtype=torch.uint8).repeat(6)
    if kind in ("float16 grid", "midpoints", "scaled midpoints"):
        # the float16 values the code rounds from: [0, 1.75] (e4m3fn's range, times 2^-8), [0, MAX] (e5m3)
        half = torch.arange(0x3F01 if signed else 0x7B81, dtype=torch.int32).to(torch.int16).view(torch.float16)
        y = half.float()
        mid = (y[1:] + y[:-1]) / 2  # midpoints between float16s (exact in float32)
        if kind == "midpoints":  # and their float32 neighbours
            y = torch.cat([mid, torch.nextafter(mid, torch.tensor(0.0)), torch.nextafter(mid, torch.tensor(1e9))])
        if kind == "scaled midpoints":  # x = midpoint * scale, at random scales: y lands within ulps of it
            pick = mid[torch.randint(0, mid.numel(), (64, BLOCK - 1), generator=gen)] * (256 if signed else 1)
            absmax = 10.0 ** (6 * torch.rand(64, 1, generator=gen) - 3)
            x = (pick * (absmax / top)).float().clamp(max=absmax)
            x = torch.cat([absmax, x], 1) * torch.where(torch.rand(64, BLOCK, generator=gen) < 0.5, -1, 1)
            return x.flatten().float()
        y = torch.cat([y * 256, -y * 256]) if signed else y
        # each block holds MAX (its absmax), so its scale is 1 and the kernel rounds y itself
        chunks = y.split(BLOCK - 1)
        return torch.cat([torch.cat([torch.tensor([top]), c]) for c in chunks])
    if kind == "random blocks":
        blocks = [torch.randn(BLOCK, generator=gen) * 10.0 ** float(torch.randint(-38, 38, ())) for _ in range(40)]
        wide = torch.randn(BLOCK, generator=gen) * 10.0 ** (-8 * torch.rand(BLOCK, generator=gen))
        return torch.cat([*blocks, wide, torch.randn(100, generator=gen)])  # a short last block
    assert kind == "special blocks"
    blocks = [torch.zeros(BLOCK), -torch.zeros(BLOCK)]
    single = torch.zeros(BLOCK)
    single[17] = 3.0
    with_nan, with_inf = torch.randn(BLOCK, generator=gen), torch.randn(BLOCK, generator=gen)
    with_nan[7] = float("nan")
    with_nan[8:10] = torch.tensor([0x7FFFFFFF, -0x400000], dtype=torch.int32).view(torch.float32)  # other NaNs
    with_inf[3], with_inf[4] = float("inf"), -float("inf")
    near_max = torch.randn(BLOCK, generator=gen)
    near_max = near_max / near_max.abs().max() * 3.4e38
    far_below = torch.randn(BLOCK, generator=gen) * 1e-30
    far_below[0] = 1.0
    blocks += [single, with_nan, with_inf, near_max, far_below]
    # absmax so small that 1 / scale would overflow (subnormal scale), about where it starts to, and
    # about TINY_SCALE, where the prescale begins
    blocks += [torch.randn(BLOCK, generator=gen) * s for s in (1e-40, 1e-38, 1e-36, 5e-36, 2.0**-56, 2.0**-55)]
    blocks[-6][:3] = torch.tensor([0.0, -0.0, 0.0])  # zeros in a tiny block (0 * inf was NaN)
    return torch.cat([*blocks, torch.randn(37, generator=gen) * 1e-3])


def _float8_launch(values, codes, scales, *, store: bool, signed: bool) -> None:
    """:func:`~decoupled.formats.triton.kernel.float8_kernel` over all of ``codes``, launched as the
    executor launches (programs of whole blocks with ``EVEN``, then the rest)."""
    from decoupled.formats.triton import kernel, launch_config

    block, num_warps = launch_config()
    n = codes.numel()
    for first, count, even in ((0, n // block, True), (n // block, 1 if n % block else 0, False)):
        if count:
            kernel.float8_kernel[(count,)](
                values, codes, scales, n, first, STORE=store, SIGNED=signed, EVEN=even, ROWS=block // 256,
                num_warps=num_warps,
            )  # fmt: skip


def _float8_case(kind: str, moment: str, device: str) -> dict:
    """The kernel's float8 store and load against :class:`BlockFloat8` (on the CPU): how many
    codes, scales and loaded values differ. Counted apart: codes of values that the scaling makes
    NaN (``y = x * (1 / scale)``: x NaN, or infinite in an infinite block), whose codes depend on
    the NaN's bits, which a GPU sets otherwise (their block's scale is NaN either way); and
    the loads of e4m3fn's NaN codes (0x7F, 0xFF; never stored), which Triton's interpreter decodes
    as +-480."""
    import torch

    from decoupled.formats.float8 import BLOCK, BLOCKFLOAT8, PRESCALE, TINY_SCALE

    signed = moment == "exp_avg"
    codes_key, scale_key = BLOCKFLOAT8.keys(moment)

    def same(a, b):
        return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())

    out = {"n": 0, "codes": 0, "nan_codes": 0, "scales": 0, "loaded": 0, "nan_loads": 0}
    x = _float8_values(kind, signed)
    ref = BLOCKFLOAT8.allocate(x, moment)
    if kind == "every code":
        ref[codes_key].copy_(x)
        ref[scale_key].copy_(torch.tensor([1.0, 0.0, 2.0**-140, 3e33, 1e-20, float("nan")]))
    else:
        BLOCKFLOAT8.store(ref, moment, 0, x.numel(), x)
        codes = torch.zeros(x.numel(), dtype=torch.uint8, device=device)
        scales = torch.zeros_like(ref[scale_key], device=device)
        _float8_launch(x.to(device), codes, scales, store=True, signed=signed)
        scale = ref[scale_key]
        pre = torch.where(scale < TINY_SCALE, PRESCALE, 1.0)
        inv = 1 / (torch.where(scale > 0, scale, 1) * pre)
        nan = ((x * pre.repeat_interleave(BLOCK)[: x.numel()]) * inv.repeat_interleave(BLOCK)[: x.numel()]).isnan()
        differ = codes.cpu() != ref[codes_key]
        out.update(codes=int((differ & ~nan).sum()), nan_codes=int((differ & nan).sum()))
        out["scales"] = int((~same(scales.cpu(), scale)).sum())
    loaded, expected = torch.empty(x.numel(), device=device), torch.empty(x.numel())
    _float8_launch(loaded, ref[codes_key].to(device), ref[scale_key].to(device), store=False, signed=signed)
    BLOCKFLOAT8.load(ref, moment, 0, x.numel(), expected)
    nan = ((ref[codes_key] & 0x7F) == 0x7F) if signed else torch.zeros(x.numel(), dtype=torch.bool)
    differ = ~same(loaded.cpu(), expected)
    out.update(n=x.numel(), loaded=int((differ & ~nan).sum()), nan_loads=int((differ & nan).sum()))
    assert x.numel() > 2 * BLOCK
    return out


def _main(device: str) -> None:
    assert (os.environ.get("TRITON_INTERPRET") == "1") == (device == "cpu")
    for case in CASES:
        print(json.dumps({"case": list(case), **_run_case(*case, device=device)}), flush=True)
    os.environ.update(BIG_BLOCK)
    print(json.dumps({"case": "big block", **_run_case(*BIG_BLOCK_CASE, device=device)}), flush=True)
    for key in BIG_BLOCK:
        del os.environ[key]
    print(json.dumps({"case": "statistics", **_stochastic_statistics(device)}), flush=True)
    print(json.dumps({"case": "cautious", **_cautious(device)}), flush=True)
    for kind, moment in FLOAT8_CASES:
        print(json.dumps({"case": ["float8", kind, moment], **_float8_case(kind, moment, device)}), flush=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(
    scope="module",
    params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not _cuda(), reason="no CUDA GPU here"))],
)
def results(request) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and k not in BIG_BLOCK}
    if request.param == "cpu":
        env["TRITON_INTERPRET"] = "1"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, __file__, request.param], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {"device": request.param, **{json.dumps(r["case"]): r for r in lines}}


def _check(r: dict, case: tuple, device: str) -> None:
    dtype, moments, rounding = case[:3]
    assert r["finite"] and r["moved"], r
    stochastic_moments = moments == "bf16"
    moment_steps = (1 if stochastic_moments else 0) if device == "cpu" else 2
    assert r["moment_ulps"] <= moment_steps, r
    if not stochastic_moments:
        assert r["moment_unequal"] <= (0.0 if device == "cpu" else 0.02), r
    if dtype == "float32":
        assert r["param_rel"] <= 1e-6, r
    else:
        assert r["param_ulps"] <= (2 if rounding == "stochastic" and dtype == "bfloat16" else 1), r
    if rounding == "kahan" and dtype != "float32":
        assert r["comp_rel"] <= 2**-14, r


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_triton_formats_match_arena(results, case):
    _check(results[json.dumps(list(case))], case, results["device"])


def test_larger_programs_and_more_warps(results):
    _check(results[json.dumps("big block")], BIG_BLOCK_CASE, results["device"])


def test_stochastic_rounding_is_unbiased_in_every_lane(results):
    """Each stored value is one of the two bf16 neighbours of the float32 value; in each of the
    four lanes that share a Philox draw the mean is the float32 value within 5 standard errors
    of rounding noise (and both neighbours occur where neither is rarer than 5%); and the lanes
    round independently of each other."""
    for name, r in results[json.dumps("statistics")].items():
        if name == "case":
            continue
        assert r["only_neighbours"], (name, r)
        share = (r["exact"] - r["lo"]) / (r["hi"] - r["lo"])
        n = 8192 // 4
        se = abs(r["hi"] - r["lo"]) * (share * (1 - share) / n) ** 0.5
        for up, mean in zip(r["lane_up"], r["lane_mean"]):
            assert abs(mean - r["exact"]) <= 5 * se + 1e-12 * abs(r["exact"]), (name, r)
            if 0.05 < share < 0.95:
                assert 0 < up < 1, (name, r)
        # the four lanes round independently: all four go the same way as often as chance says
        agree = share**4 + (1 - share) ** 4
        assert abs(r["lanes_agree"] - agree) <= 5 * (agree * (1 - agree) / (8192 // 4)) ** 0.5 + 1e-9, (name, r)


def test_cautious_decay_applies_where_update_and_weight_agree(results):
    r = results[json.dumps("cautious")]
    assert r["rel"] <= 1e-6 and r["decayed"] > 1000 and r["kept"] > 1000, r


@pytest.mark.parametrize("case", FLOAT8_CASES, ids=lambda c: "-".join(c))
def test_float8_codes_scales_and_loads_equal_the_format(results, case):
    r = results[json.dumps(["float8", *case])]
    assert r["codes"] == 0 and r["scales"] == 0 and r["loaded"] == 0, r
    if results["device"] == "cpu":
        assert r["nan_codes"] == 0, r  # the interpreter's NaNs are x86's, as torch's on the CPU
    else:
        assert r["nan_loads"] == 0, r  # a GPU decodes e4m3fn's NaN codes as NaN


if __name__ == "__main__":
    _main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
