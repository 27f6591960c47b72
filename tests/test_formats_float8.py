"""The blockwise float8 moment format (:mod:`decoupled.formats.float8`): its codes, the round-trip
error bound, chunked load/store, conversion from the dynamic-tree format, and AdamW with it
against float32 AdamW (stepped through the formats' arena and through the native kernel).

Error bound of one round trip of ``x`` in a block with absmax ``a`` (MAX = 448 for exp_avg,
1.875 * 2**15 for the second moments; the float16 step of the encoding adds half a float16
step, ``2**-11 |x|`` or its subnormal floor; float32 rounding of the scaling ``2**-21 |x|``;
the scale's own rounding where it is a float32 subnormal, absmax below about 5e-36, ``2**-150 MAX``
absolute, which is 1e-40 at most):

    exp_avg:         |x' - x| <= max(2**-4 |x|, 2**-10 a / 448) + 2**-11 |x| + 2**-17 a / 448 + 2**-150 448
    second moments:  |x' - x| <= max(2**-4 |x|, 2**-18 a / MAX) + 2**-11 |x| + 2**-25 a / MAX + 2**-150 MAX
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decoupled import backends
from decoupled.formats import arena, native
from decoupled.formats.base import transcode
from decoupled.formats.blockwise8 import BLOCKWISE8
from decoupled.formats.dense import FP32
from decoupled.formats.float8 import BLOCK, BLOCKFLOAT8, E5M3_MAX, from_e4m3, from_e5m3, to_e4m3, to_e5m3
from decoupled.native import build
from decoupled.rule import group_coefficients

LOOP = backends.get("loop")  # the arena with the loop backend: the reference executor

MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
NATIVE = build.unavailable_reason()


def signed(moment: str) -> bool:
    return moment == "exp_avg"


def round_trip(x: torch.Tensor, moment: str) -> torch.Tensor:
    return BLOCKFLOAT8.decode(BLOCKFLOAT8.encode(x, x, moment), x, moment)


def block_absmax(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1).float().abs()
    padded = torch.zeros(-(-flat.numel() // BLOCK) * BLOCK)
    padded[: flat.numel()] = flat
    return padded.view(-1, BLOCK).amax(1).repeat_interleave(BLOCK)[: flat.numel()]


# ---- the codes ---------------------------------------------------------------------------------


E5M3_CODES = torch.arange(248, dtype=torch.uint8)  # exponent 30 at most: float16's finite range


def test_e5m3_values():
    values = from_e5m3(E5M3_CODES).double()
    assert torch.all(values[1:] > values[:-1]) and values[0] == 0
    assert values[-1] == E5M3_MAX and values[1] == 2.0**-17 and values[8] == 2.0**-14
    # normal codes: 8 per binade, step 2^-3 of the binade's start
    steps = (values[9:] - values[8:-1]) / values[8:-1].log2().floor().exp2()
    assert torch.all((steps - 1 / 8).abs() < 1e-12)
    assert torch.equal(to_e5m3(values.float()), E5M3_CODES)  # every value is its code


def test_e4m3_codes_are_torchs_float8():
    """Every e4m3fn value but NaN is its own code, and a code means what torch's float8 says."""
    values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    finite = ~torch.isnan(values)
    assert torch.equal(to_e4m3(values[finite]).view(torch.uint8), torch.arange(256, dtype=torch.uint8)[finite])


@pytest.mark.parametrize(
    "encode, decode, top, tiny", [(to_e5m3, from_e5m3, E5M3_MAX, 2.0**-24), (to_e4m3, from_e4m3, 448.0, 2.0**-16)]
)
def test_codes_round_to_a_nearest_value_and_saturate(encode, decode, top, tiny):
    """Nearest, except within half a float16 step of a midpoint (2^-11 relative, or ``tiny``
    absolute where the float16 is subnormal), where the float16 rounding may already have moved
    the value across it: the other neighbour is then at most a float16 step farther."""
    g = torch.Generator().manual_seed(0)
    y = torch.cat(
        [
            torch.rand(100_000, generator=g) * 2.0 ** torch.randint(-20, 18, (100_000,), generator=g),
            torch.tensor([0.0, -0.0, 2e5, float("inf")]),
        ]
    )
    y = y if encode is to_e5m3 else torch.cat([y, -y])
    want = y.double().clamp(-top, top)
    values = decode(encode(y)).double()
    codes = decode(E5M3_CODES if encode is to_e5m3 else torch.arange(256, dtype=torch.uint8)).double()
    codes = codes[~torch.isnan(codes)]
    best = (codes[None, :] - want[:, None]).abs().min(1).values
    assert torch.all((values - want).abs() <= best + torch.clamp(2.0**-10 * want.abs(), min=tiny))
    assert (values - want).abs().eq(best).double().mean() > 0.99  # measured 0.996-0.998: the band is 1/128 of a step


@pytest.mark.skipif(NATIVE is not None, reason=f"native kernel unavailable: {NATIVE}")
def test_kernel_codes_equal_the_formats():
    """The kernel's scalar encoders equal the format's (its vector ones are compared through whole
    steps in test_native.py)."""
    module = build.kernel()
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2**31 - 1, (200_000,), generator=g).to(torch.int32)
    x = torch.cat([bits.view(torch.float32), torch.linspace(-500, 500, 100_001), torch.tensor([float("inf")])])
    x = torch.cat([x, -x])
    assert torch.equal(torch.tensor(module.to_e4m3(x.tolist()), dtype=torch.uint8), to_e4m3(x).view(torch.uint8))
    assert torch.equal(torch.tensor(module.to_e5m3(x.tolist()), dtype=torch.uint8), to_e5m3(x))


# ---- round trips -------------------------------------------------------------------------------


@st.composite
def blocks(draw):
    """Whole blocks and maybe a ragged last one, each with its own scale (1e-44 .. 1e30: down to
    float32's subnormals, where 1 / scale overflows) and kind: normal, all zeros, sparse, or many
    decades wide."""
    n_blocks, tail = draw(st.integers(1, 6)), draw(st.integers(0, BLOCK - 1))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    parts = []
    for i in range(n_blocks + (tail > 0)):
        n = BLOCK if i < n_blocks else tail
        x = torch.randn(n, generator=gen, dtype=torch.float64)
        kind = draw(st.sampled_from(["normal", "zeros", "sparse", "wide"]))
        if kind == "zeros":
            x.zero_()
        elif kind == "sparse":
            x[torch.rand(n, generator=gen) < 0.7] = 0
        elif kind == "wide":
            x *= 10.0 ** (-8 * torch.rand(n, generator=gen, dtype=torch.float64))
        parts.append((x * 10.0 ** draw(st.floats(-44, 30))).float())
    return torch.cat(parts)


@settings(max_examples=60, deadline=None)
@given(x=blocks(), moment=st.sampled_from(MOMENTS))
def test_round_trip_error_bound(x, moment):
    if not signed(moment):
        x = x.abs()
    y, a = round_trip(x, moment), block_absmax(x)
    top = 448 if signed(moment) else E5M3_MAX
    floor, half_floor = (2.0**-10, 2.0**-17) if signed(moment) else (2.0**-18, 2.0**-25)
    err = (y - x).abs()
    bound = torch.maximum(2.0**-4 * x.abs(), floor * a / top) + (2.0**-11 + 2.0**-21) * x.abs() + half_floor * a / top
    bound += 2.0**-150 * top  # the scale's rounding as a float32 subnormal
    assert not y.isnan().any()  # a tiny block's zeros were 0 * inf
    assert torch.all(err <= bound)
    assert torch.equal(y[x == 0], x[x == 0])
    assert torch.all(torch.sign(y) * torch.sign(x) >= 0)  # a sign is never flipped
    if not signed(moment):
        assert torch.all(y >= 0)


@settings(max_examples=30, deadline=None)
@given(
    n_blocks=st.integers(1, 12),
    tail=st.integers(0, BLOCK - 1),
    cut=st.integers(1, 11),
    moment=st.sampled_from(MOMENTS),
    seed=st.integers(0, 1000),
)
def test_chunked_store_and_load_equal_whole_tensor(n_blocks, tail, cut, moment, seed):
    numel = n_blocks * BLOCK + tail
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=gen) * torch.rand(numel, generator=gen).mul(8).exp()
    x = x if signed(moment) else x.square()
    whole = BLOCKFLOAT8.encode(x, x, moment)
    entry = BLOCKFLOAT8.allocate(x, moment)
    mid = min(cut, n_blocks) * BLOCK
    for start, stop in ((mid, numel), (0, mid)):
        BLOCKFLOAT8.store(entry, moment, start, stop, x[start:stop].clone())
    assert all(torch.equal(entry[k].view(torch.uint8), whole[k].view(torch.uint8)) for k in whole)
    assert torch.equal(BLOCKFLOAT8.decode(entry, x, moment), BLOCKFLOAT8.decode(whole, x, moment))


def test_keys_allocate_and_small_tensors():
    p = torch.empty(5000)
    assert BLOCKFLOAT8.keys("exp_avg") == ("exp_avg_e4m3", "exp_avg_scale")
    assert BLOCKFLOAT8.keys("exp_avg_sq") == ("exp_avg_sq_e5m3", "exp_avg_sq_scale")
    for moment in MOMENTS:
        entry = BLOCKFLOAT8.allocate(p, moment)
        assert BLOCKFLOAT8.holds(entry, moment, p) and BLOCKFLOAT8.check(entry, moment, p) is None
        assert torch.equal(BLOCKFLOAT8.decode(entry, p, moment), torch.zeros(5000))
        assert entry[BLOCKFLOAT8.keys(moment)[1]].shape == (20,)
    bad = {**BLOCKFLOAT8.allocate(p, "exp_avg"), "exp_avg_e4m3": torch.zeros(5000, dtype=torch.float8_e4m3fn)}
    assert "expected torch.uint8" in BLOCKFLOAT8.check(bad, "exp_avg", p)
    assert BLOCKFLOAT8.for_param(torch.empty(4095)) is FP32 and BLOCKFLOAT8.for_param(p) is BLOCKFLOAT8


@pytest.mark.parametrize("moment", MOMENTS)
def test_dynamic_tree_checkpoints_convert(moment):
    """A moment saved in the dynamic-tree code converts piece by piece to the same codes as
    encoding its decoded values, within the bound above of them."""
    x = torch.randn(70_000) * torch.rand(70_000).mul(6).exp()
    x = x if signed(moment) else x.square()
    tree = BLOCKWISE8.encode(x, x, moment)
    converted = transcode(tree, BLOCKWISE8, BLOCKFLOAT8, x, moment)
    direct = BLOCKFLOAT8.encode(BLOCKWISE8.decode(tree, x, moment), x, moment)
    assert all(torch.equal(converted[k].view(torch.uint8), direct[k].view(torch.uint8)) for k in direct)


# ---- AdamW with float8 moments against float32 ---------------------------------------------------


def adamw(model, stepper, fmt=None, steps=200, **kw):
    """Full-batch AdamW on ``model`` with state in ``fmt`` (None: torch.optim.AdamW's fp32)."""
    torch.manual_seed(0)
    x = torch.randn(2048, 16)
    teacher_in, teacher_out = torch.randn(16, 64) * 0.75, torch.randn(64, 1) / 8
    y = torch.tanh(x @ teacher_in) @ teacher_out + 0.1 * torch.randn(2048, 1)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01) if fmt is None else None
    states = [
        {
            "step": torch.tensor(0.0),
            **fmt.for_param(p).allocate(p, "exp_avg"),
            **fmt.for_param(p).allocate(p, "exp_avg_sq"),
        }
        for p in (params if fmt else [])
    ]
    c = group_coefficients(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    for _ in range(steps):
        loss = (model(x) - y).square().mean()
        model.zero_grad()
        loss.backward()
        if opt is not None:
            opt.step()
            continue
        for s in states:
            s["step"] += 1
        with torch.no_grad():
            stepper([p.data for p in params], [p.grad for p in params], states, c, moments=fmt, rounding="nearest")
    return loss.item()


def mlp():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1))


STEPPERS = [
    pytest.param(lambda *a, **k: arena.run(*a, **k, backend=LOOP), id="arena"),
    pytest.param(native.step, id="native", marks=pytest.mark.skipif(NATIVE is not None, reason=str(NATIVE))),
]


@pytest.mark.parametrize("stepper", STEPPERS)
def test_float8_trains_like_fp32(stepper):
    """The MLP of test_formats_8bit.py, 200 full-batch steps: the final loss is within
    [0.93, 1.03] x fp32's (measured 0.964-0.992 over three model seeds, the same on both paths;
    the dynamic tree, stepped the same way: 0.918-0.978)."""
    fp32 = adamw(mlp(), None)
    q8 = adamw(mlp(), stepper, BLOCKFLOAT8)
    assert 0.93 * fp32 <= q8 <= 1.03 * fp32, q8 / fp32
