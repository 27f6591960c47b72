"""The Triton kernel of the formats' Triton executor (imported only when it runs).

Kept apart from :mod:`.executor` because ``triton.jit`` decides at decoration time whether to
compile or to interpret (``TRITON_INTERPRET=1``), and because importing Triton is not free.

One program updates ``ROWS`` quantization blocks of 256 elements of one tensor, held as a tile
``[ROWS, 64, 4]``: a row is one block (its absmax is a reduction over the row), and the last
axis 4 consecutive elements, which a thread holds together: they move as one vector (16 bytes
of fp32, 8 of bf16, 4 of codes) and share one Philox draw (4 x 32 random bits) when a value is
rounded stochastically. (A ``[ROWS, 4, 64]`` tile gives bf16 and codes wider vectors, but in the
sm_90 code Triton 3.9 makes of it, fp32 and bf16 tensors of one kernel then take different
layouts, converted through shared memory, and threads repeat each other's Philox draws.)
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
PARAM, GRAD, EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ, COMP, EXP_AVG_ABSMAX, EXP_AVG_SQ_ABSMAX, MAX_ABSMAX = (
    tl.constexpr(row) for row in range(9)
)
TABLE_ROWS = 9

# MOMENTS: how the moments are stored
DENSE, DENSE_STOCHASTIC, BLOCKWISE8 = 0, 1, 2
# PARAM_ROUNDING: how the parameter is written (fp32 parameters: NEAREST, which is exact)
NEAREST, KAHAN, STOCHASTIC = 0, 1, 2


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
def _load_moment(ptr, absmax_ptr, values, offs, mask, block_ids, block_mask, MOMENTS: tl.constexpr):
    """A moment as fp32: dense, or ``values[code] * absmax`` of its block (8-bit)."""
    if MOMENTS == 2:
        codes = tl.load(ptr + offs, mask=mask, other=0).to(tl.int32)
        scale = tl.load(absmax_ptr + block_ids, mask=block_mask, other=0.0)
        # masked lanes read code 0 (-1 in the signed map): zero them, so they compute nothing odd
        return tl.where(mask, tl.load(values + codes) * scale[:, None, None], 0.0)
    else:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_moment(
    x,
    ptr,
    absmax_ptr,
    base,
    mids,
    noise,
    offs,
    mask,
    block_ids,
    block_mask,
    MOMENTS: tl.constexpr,
    ROUND_BY_HAND: tl.constexpr,
):
    """Store fp32 ``x`` in the moment's format. 8-bit: per block (row) ``absmax = max |x|``,
    ``y = x / absmax`` (1 for an all-zero block), and the code of the nearest codebook value,
    found from the top 16 bits ``b`` of ``y`` as ``base[b] + (y > mids[base[b]])``: the first
    midpoint at or above bucket ``b``'s lowest float is the only one that can lie inside it,
    so this is :meth:`decoupled.formats.blockwise8.Codebook.lookup` (whose ``threshold[b]`` is
    that midpoint, or +inf when it lies beyond the bucket), reading a 1 KiB table instead of a
    256 KiB one (``mids`` ends with +inf)."""
    if MOMENTS == 2:
        absmax = tl.max(tl.max(tl.where(mask, tl.abs(x), 0.0), axis=2), axis=1)  # over the block
        tl.store(absmax_ptr + block_ids, absmax, mask=block_mask)
        y = tl.div_rn(x, tl.where(absmax > 0, absmax, 1.0)[:, None, None])
        bucket = (y.to(tl.uint32, bitcast=True) >> 16).to(tl.int32)
        below = tl.load(base + bucket).to(tl.int32)
        code = below + (y > tl.load(mids + below)).to(tl.int32)
        tl.store(ptr + offs, code.to(tl.uint8), mask=mask)
    elif MOMENTS == 1:
        tl.store(ptr + offs, _stochastic(x, noise), mask=mask)
    else:
        tl.store(ptr + offs, _nearest(ptr, x, ROUND_BY_HAND), mask=mask)


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
    absmax_witness,
    signed_values,  # 8-bit codebooks (blockwise8.Codebook): values, base, midpoints + [inf]
    signed_base,
    signed_mids,
    unsigned_values,
    unsigned_base,
    unsigned_mids,
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
    QBLOCK: tl.constexpr = 256
    GROUP: tl.constexpr = 4
    pid = first_block + tl.program_id(0)  # this block's index in the tables (and its random counter)
    t = tl.load(block_tensor + pid)
    start = tl.load(block_start + pid)
    n = tl.load(numels + t)
    start = tl.multiple_of(start, ROWS * QBLOCK)
    r = tl.arange(0, ROWS)[:, None, None]
    j = tl.arange(0, QBLOCK // GROUP)[None, :, None]
    k = tl.arange(0, GROUP)[None, None, :]
    offs = start + (r * QBLOCK + j * GROUP + k)
    # in a launch of full blocks the bound is the block's end, a multiple of its size: the compiler
    # then sees the mask constant over each thread's consecutive elements and loads them as vectors
    mask = offs < (start + ROWS * QBLOCK if EVEN else n)
    block_ids = start // QBLOCK + tl.arange(0, ROWS)
    block_mask = block_ids * QBLOCK < n

    p_ptr = tl.load(ptr_table + PARAM * num_tensors + t).to(p_witness.dtype)
    g_ptr = tl.load(ptr_table + GRAD * num_tensors + t).to(g_witness.dtype)
    m_ptr = tl.load(ptr_table + EXP_AVG * num_tensors + t).to(m_witness.dtype)
    v_ptr = tl.load(ptr_table + EXP_AVG_SQ * num_tensors + t).to(m_witness.dtype)
    m_abs = tl.load(ptr_table + EXP_AVG_ABSMAX * num_tensors + t).to(absmax_witness.dtype)
    v_abs = tl.load(ptr_table + EXP_AVG_SQ_ABSMAX * num_tensors + t).to(absmax_witness.dtype)
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
    m = _load_moment(m_ptr, m_abs, signed_values, offs, mask, block_ids, block_mask, MOMENTS)
    v = _load_moment(v_ptr, v_abs, unsigned_values, offs, mask, block_ids, block_mask, MOMENTS)

    # random bits: one Philox-4x32 draw per 4 neighbouring elements gives each 32 bits (word a);
    # a second draw (word b) when more than two values are rounded stochastically
    noise_a = tl.zeros([ROWS, QBLOCK // GROUP, GROUP], dtype=tl.uint32)  # where no rounding is random
    noise_b = noise_a
    if RANDOM_WORDS >= 1:
        # a 32-bit counter (Philox-4x32 in every Triton version; unique below 2^33 elements per launch)
        counter = ((pid.to(tl.int64) * ROWS + r) * (QBLOCK // GROUP) + j).to(tl.uint32)
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
        vmax_abs = tl.load(ptr_table + MAX_ABSMAX * num_tensors + t).to(absmax_witness.dtype)
        vmax = _load_moment(vmax_ptr, vmax_abs, unsigned_values, offs, mask, block_ids, block_mask, MOMENTS)
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        vmax_noise = noise_b & 0xFFFF
        _store_moment(
            vmax,
            vmax_ptr,
            vmax_abs,
            unsigned_base,
            unsigned_mids,
            vmax_noise,
            offs,
            mask,
            block_ids,
            block_mask,
            MOMENTS,
            ROUND_BY_HAND,
        )
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
        m, m_ptr, m_abs, signed_base, signed_mids, noise_a & 0xFFFF, offs, mask, block_ids, block_mask,
        MOMENTS, ROUND_BY_HAND,
    )  # fmt: skip
    _store_moment(
        v, v_ptr, v_abs, unsigned_base, unsigned_mids, noise_a >> 16, offs, mask, block_ids, block_mask,
        MOMENTS, ROUND_BY_HAND,
    )  # fmt: skip
