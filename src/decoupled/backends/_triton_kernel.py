"""The Triton kernel of the triton backend (imported only when that backend runs).

Kept apart from :mod:`.triton` because ``triton.jit`` decides at decoration time whether to
compile or to interpret (``TRITON_INTERPRET=1``), and because importing Triton is not free.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _store(ptr, x, mask, ROUND_BY_HAND: tl.constexpr):
    """Store fp32 ``x`` in ``ptr``'s dtype, rounding to nearest even.

    Triton 3.9's interpreter truncates fp32 -> bf16 casts (compiled kernels round to nearest
    even); under the interpreter the rounding is done here, on the bits, so that the tests
    check the arithmetic a GPU runs.
    """
    if ROUND_BY_HAND and ptr.dtype.element_ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["first_block", "num_tensors"])
def adam_kernel(
    ptr_table,  # int64[5 * T]: addresses of param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq
    numels,  # int64[T]
    block_tensor,  # int32[B]: the tensor each block belongs to (full blocks first, then the tails)
    block_start,  # int64[B]: its first element
    first_block,  # the block of program 0 (the launch of tails starts after the full blocks)
    num_tensors,
    p_witness,  # the first tensor of each list, for the element types (never read)
    g_witness,
    m_witness,
    v_witness,
    decay_factor,  # the scalars of rule.group_coefficients / rule.step_coefficients
    l2,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    neg_step_size,
    bias_correction2_sqrt,
    HAS_DECAY: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    HAS_L2: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    ALIGNED: tl.constexpr,
    EVEN: tl.constexpr,  # every program's block lies inside its tensor (the launch of full blocks)
    ROUND_BY_HAND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # rule.adam_update, one element per lane, in fp32 registers; same order of operations
    pid = first_block + tl.program_id(0)
    t = tl.load(block_tensor + pid)
    start = tl.load(block_start + pid)
    n = tl.load(numels + t)
    p_ptr = tl.load(ptr_table + t).to(p_witness.dtype)
    g_ptr = tl.load(ptr_table + num_tensors + t).to(g_witness.dtype)
    m_ptr = tl.load(ptr_table + 2 * num_tensors + t).to(m_witness.dtype)
    v_ptr = tl.load(ptr_table + 3 * num_tensors + t).to(v_witness.dtype)
    if ALIGNED:
        p_ptr = tl.multiple_of(p_ptr, 16)
        g_ptr = tl.multiple_of(g_ptr, 16)
        m_ptr = tl.multiple_of(m_ptr, 16)
        v_ptr = tl.multiple_of(v_ptr, 16)
    start = tl.multiple_of(start, BLOCK)
    offs = start + tl.arange(0, BLOCK)
    # full blocks: the bound is the block's end, so the compiler sees the mask constant over each
    # thread's consecutive elements and loads them as vectors
    mask = offs < (start + BLOCK if EVEN else n)

    p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)

    if MAXIMIZE:
        g = -g
    if HAS_L2:  # g.add(p, alpha=l2): torch computes fma(p, l2, g)
        g = tl.fma(p, l2, g)
    if HAS_DECAY and not CAUTIOUS:
        p = p * decay_factor
    # m.lerp_(g, w) as torch computes it: m + w (g - m) for |w| < 0.5, else g - (1 - w)(g - m),
    # each as one fused multiply-add (torch's vectorized CPU kernel does the same)
    w = one_minus_beta1
    diff = g - m
    m = tl.where(w < 0.5, tl.fma(diff, w, m), tl.fma(diff, w - 1.0, g))
    if HAS_DECAY and CAUTIOUS:  # decay where the update (sign of m) and the weight agree
        p = tl.where(m * p >= 0, p * decay_factor, p)
    # v.mul_(beta2).addcmul_(g, g, value=1 - beta2): torch computes fma(value * g, g, v)
    v = tl.fma(one_minus_beta2 * g, g, v * beta2)
    second = v
    if AMSGRAD:
        vmax_ptr = tl.load(ptr_table + 4 * num_tensors + t).to(v_witness.dtype)
        if ALIGNED:
            vmax_ptr = tl.multiple_of(vmax_ptr, 16)
        vmax = tl.load(vmax_ptr + offs, mask=mask).to(tl.float32)
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        _store(vmax_ptr + offs, vmax, mask, ROUND_BY_HAND)
        second = vmax
    # sqrt is correctly rounded here; torch's vectorized CPU sqrt (Sleef, 0.5001 ulp) is 1 ulp
    # off on a fraction of a percent of inputs, the one known difference from the loop backend
    # denom = sqrt(second) / sqrt(1 - beta2^t) + eps; p.addcdiv_(m, denom, value=-lr / (1 - beta1^t))
    denom = tl.div_rn(tl.sqrt_rn(second), bias_correction2_sqrt) + eps
    p = p + tl.div_rn(neg_step_size * m, denom)

    _store(p_ptr + offs, p, mask, ROUND_BY_HAND)
    _store(m_ptr + offs, m, mask, ROUND_BY_HAND)
    _store(v_ptr + offs, v, mask, ROUND_BY_HAND)
