r"""The ``8bit`` moment format: blockwise 8-bit quantization with a dynamic (tree) codebook.

The approach of Dettmers, Lewis, Shleifer and Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization" (ICLR 2022, arXiv:2110.02861), as also implemented by bitsandbytes and by
torchao's ``torchao.optim`` (``AdamW8bit``); this is an independent implementation in plain
torch ops (CPU and CUDA alike).

Storage
    The moment's elements, in row-major order, are cut into blocks of 256 (the last may be
    shorter). Each block keeps one float32 scale, its largest magnitude (*absmax*), and each
    element one uint8 *code*, an index into a 256-entry codebook of values in [-1, 1]
    (``exp_avg``) or [0, 1] (``exp_avg_sq``, ``max_exp_avg_sq``). An element's value is
    ``codebook[code] * absmax``. State keys for moment ``M``: ``M_q8`` (uint8, flat, one per
    element) and ``M_absmax`` (float32, one per block): 1 + 4/256 bytes per element, about
    2.03 bytes per parameter for the two moments instead of 8 in float32.

Codebook (the paper's "dynamic tree" map)
    A code's bits are read as: a sign bit (signed map only), then a run of ``e`` zero bits
    giving the decade, then a 1 bit that ends the run, then the ``f`` remaining bits ``j``
    as a linear fraction. With ``k`` magnitude bits (7 signed, 8 unsigned), ``f = k - 1 - e``
    and the magnitude is

        ``10**-e * (1 + 9 * (j + 1) / 2**f) / 10``   for ``e = 0 .. k-1``, ``j = 0 .. 2**f - 1``

    i.e. decade ``e`` holds ``2**f`` evenly spaced points of ``(10**-(e+1), 10**-e]``, its
    top point ``10**-e`` exactly; the all-zero magnitude is exactly 0. Decades closer to zero
    get fewer points, so a block keeps a few significant bits for elements many orders of
    magnitude below its absmax (what a moment of small gradients needs) where a linear map
    would round them to 0. Precisely:

    * unsigned (8 magnitude bits): the decades (0.1, 1], (0.01, 0.1], ..., (1e-8, 1e-7] with
      128, 64, ..., 1 points: 255 nonzero values and 0. Smallest nonzero: ``1e-7``. Largest
      gap: ``0.9/128`` (in the top decade).
    * signed (sign + 7 magnitude bits): ``±`` the decades (0.1, 1] .. (1e-7, 1e-6] with 64,
      ..., 1 points: 254 nonzero values and 0; the 256th code (the bit pattern "minus zero")
      is never written and decodes to +1. Smallest nonzero magnitude: ``1e-6``. Largest gap:
      ``0.9/64``.

    0, 1 (and -1) are codebook values, so zeros, all-zero blocks and each block's absmax
    element round-trip exactly. The unsigned map has no negative values: a (rounding-)
    negative input stores 0.

    Codes are stored in the order of their values (code ``i`` is the ``i``-th smallest
    value), so comparing codes compares values.

Accuracy
    One round trip of ``x`` in a block with absmax ``a`` errs by at most half the gap
    between the two codebook values around ``x / a``, times ``a`` (plus float32 rounding,
    below ``2**-22 * a``): at most ``0.0070 a`` signed and ``0.0035 a`` unsigned. Relative
    to ``x``, an element in decade ``e`` below its absmax is within ``4.5 / 2**f``: for the
    unsigned map 3.5% in (0.1a, a], 7% in (0.01a, 0.1a], 14%, 28%, ...; twice that signed.
    Rounding is to nearest, so, as with bf16 (:mod:`.dense`), a moment that changes by less
    than half a gap per step can stay on its code: a second moment far below its block's
    absmax lags behind its growth, and those elements take somewhat larger steps than in
    float32 (in ``tests/test_formats_8bit.py`` a small MLP ends at a 5% lower loss).

Quantization
    ``y = x / absmax`` is rounded to the nearest codebook value. Instead of a binary search
    over the 255 midpoints (``torch.bucketize``, about 9x slower on CPU), the top 16 bits of
    ``y``'s float32 bit pattern (sign, exponent, 7 mantissa bits) index two 65536-entry
    tables: the code of the codebook interval the bucket starts in, and the one midpoint
    that may fall inside the bucket (+inf if none); ``code = base[b] + (y > midpoint[b])``.
    A bucket (2**-7 of its magnitude wide) is narrower than the distance between neighbouring
    midpoints everywhere, so no bucket contains two (checked when the tables are built). The
    result equals ``torch.bucketize(y, midpoints)`` exactly. Ties go to the smaller value.
    Codebooks and tables are built once per device and cached. Measured on a 2-core CPU
    (torch 2.13), 16M elements: encode 45 ms, decode 47 ms (most of it allocating the
    result); streamed in the executor's 2**18-element chunks, store 44 ms and load 15 ms.

Small tensors
    Parameters with fewer than 4096 elements keep float32 moments (:data:`.dense.FP32`), as
    bitsandbytes and torchao do: their state is a negligible share of the memory, and
    quantizing biases and norms gains nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .base import SIGNED_MOMENTS, MomentFormat, check_tensors
from .dense import FP32

BLOCK = 256
"""Elements per quantization block (one float32 absmax each)."""

MIN_NUMEL = 4096
"""Parameters with fewer elements keep float32 moments (see :meth:`Blockwise8.for_param`)."""


def dynamic_codebook(signed: bool) -> torch.Tensor:
    """The 256 codebook values, ascending, in float32 (see the module docstring)."""
    bits = 7 if signed else 8
    magnitudes = [0.0]
    for e in range(bits):
        f = bits - 1 - e
        magnitudes += [10.0**-e * (1 + 9 * (j + 1) / 2**f) / 10 for j in range(2**f)]
    magnitudes.sort()
    if signed:  # -m for every nonzero m, then 0 and the m; the 256th ("minus zero") code decodes to 1
        values = [-m for m in reversed(magnitudes[1:])] + magnitudes + [1.0]
    else:
        values = magnitudes
    assert len(values) == 256
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


@dataclass(frozen=True)
class Codebook:
    """One codebook on one device, with the tables that quantize to it."""

    values: torch.Tensor  # (256,) float32, ascending
    midpoints: torch.Tensor  # (255,) float32: between neighbouring values
    base: torch.Tensor  # (65536,) uint8: code of the values below bucket b's lowest float
    threshold: torch.Tensor  # (65536,) float32: the midpoint inside bucket b, or +inf
    zero_code: int  # the code of 0.0

    def quantize_(self, x: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor) -> None:
        """Quantize ``x`` (float32, ``(blocks, n)``) into ``codes`` (uint8, ``blocks * n``
        contiguous elements) and ``absmax`` (float32, ``(blocks,)``), each row one block."""
        amax = x.abs().amax(dim=1)
        absmax.copy_(amax)
        y = x / torch.where(amax > 0, amax, 1).unsqueeze(1)  # an all-zero block divides by 1
        self.lookup(y.view(-1), out=codes)

    def lookup(self, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The code of the value nearest each element of ``y`` (float32, contiguous, 1-D):
        ``torch.bucketize(y, midpoints)`` as uint8, by table lookup."""
        b = y.view(torch.int32).bitwise_right_shift(16).bitwise_and_(0xFFFF)
        out = torch.index_select(self.base, 0, b, out=out) if out is not None else self.base[b]
        return out.add_(y > torch.index_select(self.threshold, 0, b))

    def dequantize_(self, codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``values[codes] * absmax`` into ``out`` (float32, ``blocks * n`` elements)."""
        torch.index_select(self.values, 0, codes.to(torch.int32), out=out)
        out.view(absmax.numel(), -1).mul_(absmax.unsqueeze(1))


def _build(signed: bool) -> Codebook:
    values = dynamic_codebook(signed)
    mids = ((values[1:].double() + values[:-1].double()) / 2).float()
    # the lowest and highest float32 whose bit pattern starts with the 16 bits b
    patterns = torch.arange(1 << 16, dtype=torch.int64) << 16
    ends = torch.stack([patterns, patterns | 0xFFFF]).to(torch.int64)
    ends = torch.where(ends >= 1 << 31, ends - (1 << 32), ends).to(torch.int32).view(torch.float32)
    low, high = ends.amin(0), ends.amax(0)
    low = torch.nan_to_num(low, nan=0.0, posinf=1.0, neginf=-1.0)  # NaN/inf buckets: any code will do
    high = torch.where(torch.isfinite(high), high, low)
    below = torch.searchsorted(mids, low, right=False)  # midpoints < low
    upto = torch.searchsorted(mids, high, right=True)  # midpoints <= high
    if int((upto - below).max()) > 1:
        raise AssertionError("a 16-bit bucket holds two codebook midpoints")
    inside = upto > below
    threshold = torch.where(inside, mids[below.clamp(max=mids.numel() - 1)], torch.inf)
    zero_code = int((values == 0).nonzero()[0])
    return Codebook(values, mids, below.to(torch.uint8), threshold.float(), zero_code)


def codebook(signed: bool, device: torch.device | str = "cpu") -> Codebook:
    """The codebook and its tables on ``device``, built once per device."""
    return _codebook(signed, torch.device(device))


@functools.cache
def _codebook(signed: bool, device: torch.device) -> Codebook:
    if device.type == "cpu":
        return _build(signed)
    cpu = _codebook(signed, torch.device("cpu"))
    return Codebook(
        cpu.values.to(device),
        cpu.midpoints.to(device),
        cpu.base.to(device),
        cpu.threshold.to(device),
        cpu.zero_code,
    )


class Blockwise8(MomentFormat):
    """A moment stored as uint8 codes into a dynamic codebook, scaled per block of 256 elements."""

    name = "8bit"
    block = BLOCK

    def for_param(self, param: torch.Tensor) -> MomentFormat:
        return self if param.numel() >= MIN_NUMEL else FP32

    def keys(self, moment: str) -> tuple[str, ...]:
        return (f"{moment}_q8", f"{moment}_absmax")

    @staticmethod
    def codebook(moment: str, device: torch.device) -> Codebook:
        """The codebook used for ``moment`` (signed for ``exp_avg``) on ``device``."""
        return codebook(moment in SIGNED_MOMENTS, device)

    def holds(self, entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> bool:
        q, absmax = (entry.get(k) for k in self.keys(moment))
        return isinstance(q, torch.Tensor) and isinstance(absmax, torch.Tensor) and q.dtype == torch.uint8

    def check(self, entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> str | None:
        numel = param.numel()
        expected = {
            f"{moment}_q8": ((numel,), torch.uint8, "one code per element of the parameter"),
            f"{moment}_absmax": ((-(-numel // BLOCK),), torch.float32, f"one scale per {BLOCK} elements"),
        }
        return check_tensors(entry, expected)

    def allocate(self, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        q8, absmax = self.keys(moment)
        numel, device = param.numel(), param.device
        return {
            q8: torch.full((numel,), self.codebook(moment, device).zero_code, dtype=torch.uint8, device=device),
            absmax: torch.zeros(-(-numel // BLOCK), dtype=torch.float32, device=device),
        }

    def empty(self, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        q8, absmax = self.keys(moment)
        numel, device = param.numel(), param.device
        return {
            q8: torch.empty(numel, dtype=torch.uint8, device=device),
            absmax: torch.empty(-(-numel // BLOCK), dtype=torch.float32, device=device),
        }

    def load(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, out: torch.Tensor) -> None:
        q8, absmax = (entry[k] for k in self.keys(moment))
        book = self.codebook(moment, q8.device)
        for lo, hi in block_ranges(start, stop, BLOCK):
            book.dequantize_(q8[lo:hi], absmax[lo // BLOCK : -(-hi // BLOCK)], out[lo - start : hi - start])

    def store(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, value: torch.Tensor) -> None:
        q8, absmax = (entry[k] for k in self.keys(moment))
        book = self.codebook(moment, q8.device)
        for lo, hi in block_ranges(start, stop, BLOCK):
            n = min(hi - lo, BLOCK)
            x = value[lo - start : hi - start].to(torch.float32).reshape(-1, n)
            book.quantize_(x, q8[lo:hi], absmax[lo // BLOCK : -(-hi // BLOCK)])


def block_ranges(start: int, stop: int, block: int) -> list[tuple[int, int]]:
    """``start:stop`` as at most two ranges of whole blocks: the full ones, then a shorter last one."""
    if start % block:
        raise ValueError(f"8bit moments are loaded and stored from a multiple of {block} elements, got {start}")
    full = start + (stop - start) // block * block
    return [r for r in ((start, full), (full, stop)) if r[1] > r[0]]


BLOCKWISE8 = Blockwise8()
"""The ``8bit`` moment format."""
