"""The Triton kernel of the formats' Triton executor (imported only when it runs).

Kept apart from :mod:`.executor` because ``triton.jit`` decides at decoration time whether to
compile or to interpret (``TRITON_INTERPRET=1``), and because importing Triton is not free.

One program updates ``ROWS`` blocks of 256 elements of one tensor (the float8 format's blocks,
one scale each), held as a tile ``[2, ROWS, 32, 4]``: element ``256 r + 128 h + 4 j + k`` at
``[h, r, j, k]``. The last axis is 4 consecutive elements, which a thread holds together: they
move as one vector (16 bytes of fp32, 8 of bf16, 4 of codes) and share one Philox draw (4 x 32
random bits) when a value is rounded stochastically. Triton 3.9 lays the tile out for sm_90 with
one warp per row (axis 1 across warps, axis 2 across a warp's lanes, axis 0 in each thread), so a
block's absmax is a reduction within a warp (shuffles, no shared memory) and each thread divides
once per block and moment; the ``[ROWS, 64, 4]`` tile this replaced split every row over two warps
and gave each thread two rows. (A tile with the 4 consecutive elements on a slower axis gives
bf16 and codes wider vectors, but fp32 and bf16 tensors of one kernel then take different layouts,
converted through shared memory, and threads repeat each other's Philox draws.)
Every value is loaded in its stored form, the update runs in fp32 registers in
:func:`decoupled.rule.adam_update`'s order of operations (the fused multiply-adds of torch's
``lerp``/``addcmul``, correctly rounded ``sqrt`` and division, every other product rounded: the
executor compiles with ``enable_fp_fusion=False``), and each result is stored once in its format.
Full blocks and each tensor's partial last block go to two launches (``EVEN``), so that the
compiler can prove the mask of a full block constant and move it as 16-byte vectors.
"""

from __future__ import annotations

import triton
import triton.language as tl

# rows of the address table, in this order (the executor builds it); constexpr, as the kernel reads them
PARAM, GRAD, EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ, COMP, EXP_AVG_SCALE, EXP_AVG_SQ_SCALE, MAX_SCALE = (
    tl.constexpr(row) for row in range(9)
)
TABLE_ROWS = 9

# MOMENTS: how the moments are stored
DENSE, DENSE_STOCHASTIC, FLOAT8 = 0, 1, 2
# PARAM_ROUNDING: how the parameter is written (fp32 parameters: NEAREST, which is exact)
NEAREST, KAHAN, STOCHASTIC = 0, 1, 2

QBLOCK: tl.constexpr = tl.constexpr(256)  # elements per float8 block (decoupled.formats.float8.BLOCK)
GROUP: tl.constexpr = tl.constexpr(4)  # consecutive elements a thread holds: one vector, one Philox draw
# the largest codes' values (decoupled.formats.float8.E4M3_MAX, E5M3_MAX)
E4M3_MAX: tl.constexpr = tl.constexpr(448.0)
E5M3_MAX: tl.constexpr = tl.constexpr(61440.0)
# decoupled.formats.float8.TINY_SCALE, PRESCALE
TINY_SCALE: tl.constexpr = tl.constexpr(2.0**-64)
PRESCALE: tl.constexpr = tl.constexpr(2.0**64)


@triton.jit
def _nearest(ptr, x, ROUND_BY_HAND: tl.constexpr):
    """fp32 ``x`` in ``ptr``'s element type, rounded to nearest even.

    Triton's interpreter truncates fp32 -> bf16 casts (compiled kernels round to nearest even);
    under the interpreter the rounding is done here, on the bits, so the tests check what a GPU
    computes.
    """
    if ROUND_BY_HAND and ptr.dtype.element_ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(ptr.dtype.element_ty)


@triton.jit
def _stochastic(x, noise):
    """fp32 ``x`` rounded stochastically to bf16 (``noise``: uniform integers in [0, 2^16)):
    the carry of ``bits + noise`` into the upper half rounds the magnitude up with probability
    equal to the discarded fraction, as :func:`decoupled.formats.rounding.stochastic_round_`."""
    bits = (x.to(tl.uint32, bitcast=True) + noise) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)  # exact: the low half is zero


@triton.jit
def _max_nan(a, b):
    """The larger of ``a`` and ``b``, NaN if either is (as torch's ``amax``)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _top_byte(half):
    """The top byte of non-negative float16 values' bits, rounded to nearest even (uint32):
    :func:`decoupled.formats.float8._top_byte`."""
    h = half.to(tl.uint16, bitcast=True).to(tl.uint32)
    return (h + (((h >> 7) & 1) + 0x3F)) >> 7


@triton.jit
def _load_moment(ptr, scale_ptr, offs, mask, block_ids, block_mask, MOMENTS: tl.constexpr, SIGNED: tl.constexpr):
    """A moment as fp32: dense, or float8 (:meth:`decoupled.formats.float8.BlockFloat8.load`):
    ``code * scale`` of its block. An e5m3 code ``c`` is the float16 with bits ``c << 7``; e4m3fn
    codes are Triton's ``float8e4nv``, converted by the GPU (``cvt.rn.f16x2.e4m3x2`` on sm_90, two
    per instruction; exact, NaN codes included; Triton's interpreter reads the NaN codes 0x7F/0xFF,
    which no store writes, as +-480)."""
    if MOMENTS == 2:
        codes = tl.load(ptr + offs, mask=mask, other=0)  # masked lanes: code 0 is +0
        scale = tl.load(scale_ptr + block_ids, mask=block_mask, other=0.0)
        if SIGNED:
            value = codes.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        else:
            value = (codes.to(tl.uint16) << 7).to(tl.float16, bitcast=True).to(tl.float32)
        return value * scale[None, :, None, None]
    else:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_moment(
    x,
    ptr,
    scale_ptr,
    noise,
    offs,
    mask,
    block_ids,
    block_mask,
    MOMENTS: tl.constexpr,
    SIGNED: tl.constexpr,
    EVEN: tl.constexpr,
    ROUND_BY_HAND: tl.constexpr,
):
    """Store fp32 ``x`` in the moment's format. Float8
    (:meth:`decoupled.formats.float8.BlockFloat8.store`, the same operations): per block (row)
    ``scale = max |x| / MAX`` (NaN if any element is), ``y = x * (1 / scale)`` (``1 / 1`` for an
    all-zero block; ``(x * 2^64) * (1 / (scale * 2^64))`` below ``TINY_SCALE``), and each ``y``
    through float16 (round to nearest even), then to the code's 3 mantissa bits (nearest even on
    the bits). e4m3fn (``SIGNED``): the magnitude ``min(|y|, 448) * 2^-8`` (a NaN takes 448, as
    the format's clamp of its code does) and the sign of ``y``; e5m3: ``min(|y|, MAX)``, a NaN
    staying NaN (its code, as the format's, depends on the NaN's bits; its block's scale is NaN)."""
    if MOMENTS == 2:
        top: tl.constexpr = E4M3_MAX if SIGNED else E5M3_MAX
        magnitude = tl.abs(x)
        if not EVEN:
            magnitude = tl.where(mask, magnitude, 0.0)
        absmax = tl.reduce(tl.reduce(tl.reduce(magnitude, 3, _max_nan), 2, _max_nan), 0, _max_nan)  # over the row
        scale = tl.div_rn(absmax, top)
        tl.store(scale_ptr + block_ids, scale, mask=block_mask)
        pre = tl.where(scale < TINY_SCALE, PRESCALE, 1.0)  # a tiny block: no overflow of 1 / scale
        inv = tl.div_rn(tl.full(scale.shape, 1.0, tl.float32), tl.where(scale > 0, scale, 1.0) * pre)
        y = (x * pre[None, :, None, None]) * inv[None, :, None, None]
        if SIGNED:
            code = _top_byte((tl.minimum(tl.abs(y), top) * 0.00390625).to(tl.float16))
            code = code | ((y.to(tl.uint32, bitcast=True) >> 24) & 0x80)
        else:
            code = _top_byte(tl.minimum(tl.abs(y), top, propagate_nan=tl.PropagateNan.ALL).to(tl.float16))
            # at most 0x100 (a NaN's carry, stored as 0 as by the format): this minimum changes nothing,
            # but keeps LLVM from narrowing the arithmetic to pairs of 16-bit lanes, whose packing and
            # unpacking cost 2 instructions per element more on sm_90 (Triton 3.9)
            code = tl.minimum(code, 0x1FF)
        tl.store(ptr + offs, code.to(tl.uint8), mask=mask)
    elif MOMENTS == 1:
        tl.store(ptr + offs, _stochastic(x, noise), mask=mask)
    else:
        tl.store(ptr + offs, _nearest(ptr, x, ROUND_BY_HAND), mask=mask)


@triton.jit
def _tile(start, n, ROWS: tl.constexpr, EVEN: tl.constexpr):
    """The ``[2, ROWS, 32, 4]`` tile of elements from ``start`` (a multiple of ``ROWS * 256``) of a
    tensor of ``n``: offsets, mask, the ``ROWS`` blocks' indices and mask, and the indices ``r``
    (block), ``group`` (group of 4 in the block) and ``k`` (element in the group) of each."""
    h = tl.arange(0, 2)[:, None, None, None]
    r = tl.arange(0, ROWS)[None, :, None, None]
    j = tl.arange(0, QBLOCK // GROUP // 2)[None, None, :, None]
    k = tl.arange(0, GROUP)[None, None, None, :]
    group = h * (QBLOCK // GROUP // 2) + j
    offs = start + (r * QBLOCK + group * GROUP + k)
    # in a launch of full blocks the bound is the block's end, a multiple of its size: the compiler
    # then sees the mask constant over each thread's consecutive elements and loads them as vectors
    mask = offs < (start + ROWS * QBLOCK if EVEN else n)
    block_ids = start // QBLOCK + tl.arange(0, ROWS)
    block_mask = block_ids * QBLOCK < n
    return offs, mask, block_ids, block_mask, r, group, k


@triton.jit
def float8_kernel(
    values,  # float32[n]
    codes,  # uint8[n]
    scales,  # float32[ceil(n / 256)]
    n,
    first_program,
    STORE: tl.constexpr,  # store values as codes and scales, or load them into values
    SIGNED: tl.constexpr,  # e4m3fn (exp_avg) or e5m3
    EVEN: tl.constexpr,
    ROWS: tl.constexpr,
):
    """The float8 store or load of :func:`format_kernel` on its own, over ``ROWS`` blocks per
    program: what a moment goes through between two steps, for comparing with
    :class:`decoupled.formats.float8.BlockFloat8` on any float32 values."""
    start = (first_program + tl.program_id(0)) * (ROWS * QBLOCK)
    offs, mask, block_ids, block_mask, r, group, k = _tile(start, n, ROWS, EVEN)
    if STORE:
        x = tl.load(values + offs, mask=mask, other=0.0)
        _store_moment(x, codes, scales, 0, offs, mask, block_ids, block_mask, 2, SIGNED, EVEN, False)  # 2: FLOAT8
    else:
        x = _load_moment(codes, scales, offs, mask, block_ids, block_mask, 2, SIGNED)
        tl.store(values + offs, x, mask=mask)


@triton.jit(do_not_specialize=["first_block", "num_tensors", "seed"])  # one kernel for any counts and key
def format_kernel(
    ptr_table,  # int64[TABLE_ROWS * T]: addresses, one row per kind of tensor (see the constants)
    numels,  # int64[T]
    block_tensor,  # int32[B]: the tensor each block belongs to (full blocks first, then the tensors' tails)
    block_start,  # int64[B]: its first element (a multiple of ROWS * 256)
    first_block,  # the block of program 0 (the launch of tails starts after the full blocks)
    num_tensors,
    p_witness,  # the first tensor of each kind, for the element types (never read)
    g_witness,
    m_witness,
    seed,  # Philox key of this launch (stochastic rounding)
    decay_factor,  # the scalars of rule.group_coefficients / rule.step_coefficients
    l2,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    neg_step_size,
    bias_correction2_sqrt,
    HAS_DECAY: tl.constexpr,
    HAS_L2: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    MOMENTS: tl.constexpr,
    PARAM_ROUNDING: tl.constexpr,
    RANDOM_WORDS: tl.constexpr,  # Philox draws per 4 elements: 0, 1 (m, v or param) or 2
    ALIGNED: tl.constexpr,
    EVEN: tl.constexpr,  # every program's block lies inside its tensor (the launch of full blocks)
    ROUND_BY_HAND: tl.constexpr,
    ROWS: tl.constexpr,
):
    pid = first_block + tl.program_id(0)  # this block's index in the tables (and its random counter)
    t = tl.load(block_tensor + pid)
    n = tl.load(numels + t)
    start = tl.multiple_of(tl.load(block_start + pid), ROWS * QBLOCK)
    offs, mask, block_ids, block_mask, r, group, k = _tile(start, n, ROWS, EVEN)

    p_ptr = tl.load(ptr_table + PARAM * num_tensors + t).to(p_witness.dtype)
    g_ptr = tl.load(ptr_table + GRAD * num_tensors + t).to(g_witness.dtype)
    m_ptr = tl.load(ptr_table + EXP_AVG * num_tensors + t).to(m_witness.dtype)
    v_ptr = tl.load(ptr_table + EXP_AVG_SQ * num_tensors + t).to(m_witness.dtype)
    m_scale = tl.load(ptr_table + EXP_AVG_SCALE * num_tensors + t).to(tl.pointer_type(tl.float32))
    v_scale = tl.load(ptr_table + EXP_AVG_SQ_SCALE * num_tensors + t).to(tl.pointer_type(tl.float32))
    if ALIGNED:
        p_ptr = tl.multiple_of(p_ptr, 16)
        g_ptr = tl.multiple_of(g_ptr, 16)
        m_ptr = tl.multiple_of(m_ptr, 16)
        v_ptr = tl.multiple_of(v_ptr, 16)

    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if PARAM_ROUNDING == 1:  # Kahan: the parameter is the sum of the stored value and its compensation
        comp_ptr = tl.load(ptr_table + COMP * num_tensors + t).to(p_witness.dtype)
        if ALIGNED:
            comp_ptr = tl.multiple_of(comp_ptr, 16)
        p = p + tl.load(comp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = _load_moment(m_ptr, m_scale, offs, mask, block_ids, block_mask, MOMENTS, True)
    v = _load_moment(v_ptr, v_scale, offs, mask, block_ids, block_mask, MOMENTS, False)

    # random bits: one Philox-4x32 draw per 4 neighbouring elements gives each 32 bits (word a);
    # a second draw (word b) when more than two values are rounded stochastically
    noise_a = tl.zeros([2, ROWS, QBLOCK // GROUP // 2, GROUP], dtype=tl.uint32)  # where no rounding is random
    noise_b = noise_a
    if RANDOM_WORDS >= 1:
        # a 32-bit counter (Philox-4x32 in every Triton version; unique below 2^33 elements per launch)
        counter = ((pid.to(tl.int64) * ROWS + r) * (QBLOCK // GROUP) + group).to(tl.uint32)
        a0, a1, a2, a3 = tl.randint4x(seed, counter * RANDOM_WORDS)
        noise_a = tl.where(k == 0, a0, tl.where(k == 1, a1, tl.where(k == 2, a2, a3)))
        if RANDOM_WORDS == 2:
            b0, b1, b2, b3 = tl.randint4x(seed, counter * 2 + 1)
            noise_b = tl.where(k == 0, b0, tl.where(k == 1, b1, tl.where(k == 2, b2, b3)))

    # rule.adam_update, one element per lane, in fp32 registers, in its order of operations
    if MAXIMIZE:
        g = -g
    if HAS_L2:  # g.add(p, alpha=l2): torch computes fma(p, l2, g)
        g = tl.fma(p, l2, g)
    # m.lerp_(g, w) as torch computes it: m + w (g - m) for |w| < 0.5, else g - (1 - w)(g - m)
    w = one_minus_beta1
    diff = g - m
    m = tl.where(w < 0.5, tl.fma(diff, w, m), tl.fma(diff, w - 1.0, g))
    # v.mul_(beta2).addcmul_(g, g, value=1 - beta2): torch computes fma(value * g, g, v)
    v = tl.fma(one_minus_beta2 * g, g, v * beta2)
    if HAS_DECAY:
        if CAUTIOUS:  # decay only where the update (sign of the new m) and the weight agree
            p = tl.where(m * p >= 0, p * decay_factor, p)
        else:
            p = p * decay_factor
    second = v
    if AMSGRAD:
        vmax_ptr = tl.load(ptr_table + MAX_EXP_AVG_SQ * num_tensors + t).to(m_witness.dtype)
        if ALIGNED:
            vmax_ptr = tl.multiple_of(vmax_ptr, 16)
        vmax_scale = tl.load(ptr_table + MAX_SCALE * num_tensors + t).to(tl.pointer_type(tl.float32))
        vmax = _load_moment(vmax_ptr, vmax_scale, offs, mask, block_ids, block_mask, MOMENTS, False)
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        _store_moment(
            vmax, vmax_ptr, vmax_scale, noise_b & 0xFFFF, offs, mask, block_ids, block_mask,
            MOMENTS, False, EVEN, ROUND_BY_HAND,
        )  # fmt: skip
        second = vmax
    # denom = sqrt(second) / sqrt(1 - beta2^t) + eps; p.addcdiv_(m, denom, value=-lr / (1 - beta1^t))
    denom = tl.div_rn(tl.sqrt_rn(second), bias_correction2_sqrt) + eps
    p = p + tl.div_rn(neg_step_size * m, denom)

    if PARAM_ROUNDING == 1:  # Kahan: store the nearest value, keep what rounding lost
        hi = _nearest(p_ptr, p, ROUND_BY_HAND)
        tl.store(p_ptr + offs, hi, mask=mask)
        lost = _nearest(comp_ptr, p - hi.to(tl.float32), ROUND_BY_HAND)
        tl.store(comp_ptr + offs, lost, mask=mask)
    elif PARAM_ROUNDING == 2:  # moments take word a when they round stochastically
        if MOMENTS == 1:
            tl.store(p_ptr + offs, _stochastic(p, noise_b >> 16), mask=mask)
        else:
            tl.store(p_ptr + offs, _stochastic(p, noise_a & 0xFFFF), mask=mask)
    else:
        tl.store(p_ptr + offs, _nearest(p_ptr, p, ROUND_BY_HAND), mask=mask)
    _store_moment(
        m, m_ptr, m_scale, noise_a & 0xFFFF, offs, mask, block_ids, block_mask, MOMENTS, True, EVEN, ROUND_BY_HAND
    )  # fmt: skip
    _store_moment(
        v, v_ptr, v_scale, noise_a >> 16, offs, mask, block_ids, block_mask, MOMENTS, False, EVEN, ROUND_BY_HAND
    )  # fmt: skip
