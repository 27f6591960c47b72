r"""Blockwise 8-bit float moments: one byte per element, a float32 scale per 256 elements.

The successor of the dynamic-tree code (:mod:`.blockwise8`): the same storage cost (about
2.03 bytes per parameter for both moments), at least the same accuracy of the Adam update,
and a code that a float16 conversion and a few integer operations produce, where the tree
needs table lookups (a 16-wide gather costs about 20 cycles on the project's AMD EPYC). The
native kernel (:mod:`decoupled.formats.native`) decodes, updates and encodes a block in one
pass, 0.68 ns per element on one core of that machine (``benchmarks/kernel_micro.py``); at 64M
parameters on two cores a step ran at 0.88-1.01x torch's fused fp32 step there and, with the
next blocks' cache lines prefetched, 1.17-1.19x on a 2-core Intel Xeon (results/cpu-2core-intel-64M-v3
and ``benchmarks/RESULTS.md``), bitsandbytes' and torchao's 8-bit AdamW at 0.02-0.03x.

Codes
    Elements in row-major order are cut into blocks of 256 (the last may be shorter). Each
    block keeps ``scale = absmax / MAX`` (float32) and each element ``code(x * (1 / scale))``
    (below :data:`TINY_SCALE`, ``code((x * 2^64) * (1 / (scale * 2^64)))``, the same value
    without the reciprocal's overflow):

    * ``exp_avg``: ``torch.float8_e4m3fn`` (sign, 4 exponent bits, 3 mantissa bits,
      subnormals; MAX = 448), its bits stored as uint8 (a float8 tensor does not survive
      ``pickle`` in torch 2.13, and uint8 loads everywhere). Range: 2^-9 / 448, about 4.4e-6
      of the block's absmax, then 0.
    * ``exp_avg_sq`` and ``max_exp_avg_sq`` (>= 0): ``e5m3``, an unsigned 8-bit float stored
      as uint8: 5 exponent bits (bias 15), 3 mantissa bits, subnormals, no sign, inf or NaN;
      ``value = 2**(e - 15) * (1 + f / 8)`` for ``e >= 1``, ``f * 2**-17`` for ``e = 0``;
      MAX = 1.875 * 2**15 (``e <= 30``). Range: 2^-17 / MAX, about 1.2e-10 of the block's
      absmax, so ``sqrt(v)`` keeps 1.1e-5 of its block's largest, about the first moment's
      range: a ``v`` that rounds to 0 comes with an ``m`` that rounds to 0 or nearly, and no
      step is ``m / eps`` from a lost ``v``.

    Both are the top byte of a float16: an e5m3 code ``c`` is the float16 with bits ``c << 7``,
    and an e4m3 magnitude ``m`` is 2^8 times the float16 with bits ``m << 7``. Encoding rounds
    to float16 (torch's cast: to nearest even, subnormals included), then to 3 mantissa bits
    (nearest even on the bits), so a fused kernel converts 16 values with one float16
    instruction and a few integer operations (:mod:`decoupled.formats.native`). The two
    roundings make a value within half a float16 step (2^-11, relative) of a midpoint
    between two codes take either of them.

    State keys for moment ``M``: ``M_e4m3`` / ``M_e5m3`` (the codes, flat) and ``M_scale``
    (float32, one per block). A value is ``code.float() * scale`` (``e5m3``: decoded as above).

Accuracy (one round trip of ``x`` in a block with absmax ``a``; float32 rounding of the
scaling adds at most ``2**-22 * |x|``)
    * ``exp_avg``: ``|x' - x| <= max(2**-4 |x|, 2**-10 a / 448) + 2**-11 |x| + 2**-17 a / 448``
      (half a code step: relative in the normal range, above ``2**-6 a / 448``, absolute below;
      plus half a float16 step). The absmax element is exact up to the float32 rounding.
    * second moments: ``|v' - v| <= max(2**-4 v, 2**-18 a / MAX) + 2**-11 v + 2**-25 a / MAX``.

    The relative error is the same for every element, where the tree's grows by 2x per decade
    below the absmax (3.5% in (0.1a, a], 7%, 14%, ... for its second moment). What the step
    needs is ``m / sqrt(v)``: its relative error is at most about ``2**-4 + 2**-5``, 9% at worst
    and 2.2% in the median, measured on an MLP's moments after 10, 50 and 200 steps (the tree:
    1.5-2% median but 13-17% at the 99th percentile, against 6-7% here; mean absolute error of
    the step 0.005 lr for both). Trained for 200 steps, the MLP of
    ``tests/test_formats_8bit.py`` ends at 0.964-0.992x the fp32 loss (the tree: 0.918-0.978x;
    three model seeds, ``tests/test_formats_float8.py``). Rounding is to nearest, so, as with
    the tree, a second moment whose per-step change is below half a code step (3%) stays on its
    code until it moves further.

Small tensors
    Parameters with fewer than 4096 elements keep float32 moments (:data:`.dense.FP32`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .base import SIGNED_MOMENTS, MomentFormat, check_tensors
from .blockwise8 import MIN_NUMEL, block_ranges
from .dense import FP32

BLOCK = 256
"""Elements per block (one float32 scale each)."""

E4M3_MAX = 448.0
"""The largest ``float8_e4m3fn`` value."""

E5M3_MAX = 1.875 * 2.0**15
"""The largest ``e5m3`` value (exponent 30, float16's largest)."""

TINY_SCALE = 2.0**-64
"""Blocks with a scale below this are multiplied by :data:`PRESCALE` before ``1 / (scale *
PRESCALE)``: the plain reciprocal overflows below about 2^-128 (an absmax below about 1.3e-36,
as the second moment of a weight without gradients for long reaches): ``x * inf`` stored every
nonzero value as the block's maximum and every zero as NaN. Both are exact scalings: other blocks
get the bits of ``x * (1 / scale)``."""

PRESCALE = 2.0**64


def _top_byte(half: torch.Tensor) -> torch.Tensor:
    """The top byte of non-negative float16 values' bits, rounded to nearest even (int32)."""
    h = half.view(torch.int16).to(torch.int32)
    return (h + 0x3F + ((h >> 7) & 1)) >> 7


def to_e5m3(y: torch.Tensor) -> torch.Tensor:
    """``|y|`` (float32) as ``e5m3`` codes (uint8), through float16, saturating at MAX."""
    return _top_byte(y.abs().clamp(max=E5M3_MAX).to(torch.float16)).to(torch.uint8)


def from_e5m3(codes: torch.Tensor) -> torch.Tensor:
    """The float32 values of ``e5m3`` codes (uint8): the float16 with bits ``code << 7``."""
    return (codes.to(torch.int16) << 7).view(torch.float16).to(torch.float32)


def to_e4m3(y: torch.Tensor) -> torch.Tensor:
    """``y`` (float32) as ``float8_e4m3fn`` codes, their bits as uint8: the magnitude through
    float16 of ``|y| * 2**-8``, saturating at 448 (an e4m3fn NaN is never written)."""
    magnitude = _top_byte((y.abs().clamp(max=E4M3_MAX) * 2.0**-8).to(torch.float16)).clamp_(max=0x7E)
    sign = (y.view(torch.int32) >> 24) & 0x80
    return (magnitude | sign).to(torch.uint8)


def from_e4m3(codes: torch.Tensor) -> torch.Tensor:
    """The float32 values of ``float8_e4m3fn`` codes stored as uint8."""
    return codes.view(torch.float8_e4m3fn).to(torch.float32)


class BlockFloat8(MomentFormat):
    """A moment stored as 8-bit floats (e4m3fn signed, e5m3 unsigned) scaled per block of 256."""

    name = "8bit"
    block = BLOCK

    def for_param(self, param: torch.Tensor) -> MomentFormat:
        return self if param.numel() >= MIN_NUMEL else FP32

    @staticmethod
    def signed(moment: str) -> bool:
        return moment in SIGNED_MOMENTS

    def code_dtype(self, moment: str) -> torch.dtype:
        """The stored codes' dtype: uint8 for both codes (the e4m3fn bits, and e5m3)."""
        return torch.uint8

    def keys(self, moment: str) -> tuple[str, ...]:
        return (f"{moment}_{'e4m3' if self.signed(moment) else 'e5m3'}", f"{moment}_scale")

    def holds(self, entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> bool:
        codes, scale = (entry.get(k) for k in self.keys(moment))
        return (
            isinstance(codes, torch.Tensor)
            and isinstance(scale, torch.Tensor)
            and codes.dtype == self.code_dtype(moment)
        )

    def check(self, entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> str | None:
        numel = param.numel()
        codes, scale = self.keys(moment)
        expected = {
            codes: ((numel,), self.code_dtype(moment), "one code per element of the parameter"),
            scale: ((-(-numel // BLOCK),), torch.float32, f"one scale per {BLOCK} elements"),
        }
        return check_tensors(entry, expected)

    def empty(self, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        codes, scale = self.keys(moment)
        numel, device = param.numel(), param.device
        return {
            codes: torch.empty(numel, dtype=self.code_dtype(moment), device=device),
            scale: torch.empty(-(-numel // BLOCK), dtype=torch.float32, device=device),
        }

    def allocate(self, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        return {k: v.zero_() for k, v in self.empty(param, moment).items()}  # code 0 is +0 in both codes

    def load(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, out: torch.Tensor) -> None:
        codes, scale = (entry[k] for k in self.keys(moment))
        for lo, hi in block_ranges(start, stop, BLOCK):
            n = min(hi - lo, BLOCK)
            c = codes[lo:hi]
            values = from_e4m3(c) if self.signed(moment) else from_e5m3(c)
            dst = out[lo - start : hi - start].view(-1, n)
            torch.mul(values.view(-1, n), scale[lo // BLOCK : -(-hi // BLOCK)].unsqueeze(1), out=dst)

    def store(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, value: torch.Tensor) -> None:
        codes, scale = (entry[k] for k in self.keys(moment))
        top = E4M3_MAX if self.signed(moment) else E5M3_MAX
        for lo, hi in block_ranges(start, stop, BLOCK):
            n = min(hi - lo, BLOCK)
            x = value[lo - start : hi - start].to(torch.float32).reshape(-1, n)
            s = scale[lo // BLOCK : -(-hi // BLOCK)]
            torch.div(x.abs().amax(dim=1), top, out=s)
            # the kernel's order: 1 / scale, then a product; an all-zero block takes scale 1, and a
            # tiny one (whose reciprocal would overflow) is scaled by PRESCALE first (TINY_SCALE)
            pre = torch.where(s < TINY_SCALE, PRESCALE, 1.0)
            d = torch.where(s > 0, s, 1) * pre
            y = (x * pre.unsqueeze(1)) * torch.div(torch.ones_like(d), d).unsqueeze(1)
            codes[lo:hi] = to_e4m3(y.view(-1)) if self.signed(moment) else to_e5m3(y.view(-1))


BLOCKFLOAT8 = BlockFloat8()
"""The blockwise float8 moment format."""
