r"""Writing float32 values into bfloat16 storage without losing small updates.

Round-to-nearest loses any change smaller than half a unit in the last place (ulp): a bf16
number has 8 significant bits, so a weight of 1.0 cannot move by less than 2^-8 = 0.4% in
one step, and AdamW's per-step change is often 1e-4 of the weight. The update is then
rounded away, every step, and training silently stalls. The same happens to a bf16 second
moment: with beta2 = 0.999, ``v`` changes by about 0.1% per step, below bf16's resolution.

Two remedies, both used here:

* **Stochastic rounding** rounds ``x`` up with probability equal to its distance from the
  lower bf16 neighbour, in ulps, and down otherwise. The stored value is then unbiased,
  E[round(x)] = x, so small updates survive on average (Gupta et al., "Deep Learning with
  Limited Numerical Precision", ICML 2015). It costs random bits, and no memory.
* **Kahan-style compensation** keeps the rounding error of each step in a second bf16 buffer
  ``c`` and adds it back before the next step: the parameter is held as the unevaluated sum
  ``hi + lo`` of two bf16 numbers (``x = hi + c``; ``hi' = round(x')``, ``c' = round(x' - hi')``),
  about 16 significant bits, at 2 more bytes per parameter (Kahan, 1965; Zamirai et al.,
  "Revisiting BFloat16 Training", arXiv:2010.06192, which evaluates both on bf16 training).

Stochastic rounding is implemented on the float32 bit pattern: adding a uniform random
integer in [0, 2^16) to the 32-bit pattern and clearing its low 16 bits rounds the magnitude
up exactly when the discarded fraction plus the noise carries, i.e. with probability equal
to the discarded fraction; the result is exactly representable in bf16.

Random bits are the cost: torch's CPU generator makes about 250 M integers/s (measured: 1.0 ms
for 2^18 on this project's 2-core machine); with fresh bits for every store, a bf16-moment step
at 16M parameters took 164 ms against 40 ms with the pool below (one run each, on a shared
machine). The noise therefore comes from a :class:`NoisePool`: 2^20 uniform integers
drawn once (from torch's default generator, so ``torch.manual_seed`` makes runs repeatable)
and redrawn every 256 uses, together with 4096 uniformly random offsets that successive calls
read it at in turn (a per-call random draw cost ~5 us each). Each element's noise is then an
entry of an i.i.d. uniform pool, chosen independently of the pool's values, so rounding stays
unbiased; successive calls see different offsets.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

ROUNDINGS = ("nearest", "kahan", "stochastic")
"""How an updated value is written into a low-precision (bf16/fp16) parameter."""

COMPENSATION_KEY = "kahan_comp"
"""The state key of the Kahan compensation buffer (parameter dtype and shape)."""


@dataclass
class _Slot:
    pool: torch.Tensor
    offsets: list[int]  # uniform in [0, SIZE), drawn with the pool, used in turn
    uses: int = 0
    next: int = 0

    def offset(self) -> int:
        value = self.offsets[self.next % len(self.offsets)]
        self.next += 1
        return value


class NoisePool:
    """Uniform integers in [0, 2^16) for stochastic rounding, cheap to read (see the module notes)."""

    SIZE = 1 << 20
    USES = 256
    OFFSETS = 4096

    def __init__(self) -> None:
        self._pools: dict[torch.device, _Slot] = {}

    def reset(self) -> None:
        """Draw a fresh pool on next use: after ``torch.manual_seed(s)`` and ``reset()``, the
        rounding noise of the steps that follow depends on ``s`` only (a bitwise-repeatable resume)."""
        self._pools.clear()

    def _slot(self, device: torch.device) -> _Slot:
        """The pool on ``device``, counted as one use; redrawn (with its offsets) every USES uses."""
        slot = self._pools.get(device)
        if slot is None or slot.uses >= self.USES:
            pool = torch.randint(0, 1 << 16, (self.SIZE,), dtype=torch.int32, device=device)
            slot = _Slot(pool, torch.randint(0, self.SIZE, (self.OFFSETS,)).tolist())
            self._pools[device] = slot
        slot.uses += 1
        return slot

    def pool(self, device: torch.device, offsets: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool on ``device`` and ``offsets`` random starting points in it (int64 on
        ``device``), for a kernel that reads ``pool[(offset + i) % SIZE]``."""
        slot = self._slot(device)
        return slot.pool, torch.tensor([slot.offset() for _ in range(offsets)], device=device)

    def draw(self, n: int, device: torch.device) -> torch.Tensor:
        """``n`` uniform integers in [0, 2^16) (int32, 1-D): a slice of the pool at a random
        offset, or fresh ones for more than a quarter of the pool. Read it, do not write it."""
        if n > self.SIZE // 4:  # a whole large tensor: draw fresh bits
            return torch.randint(0, 1 << 16, (n,), dtype=torch.int32, device=device)
        slot = self._slot(device)
        start = slot.offset() % (self.SIZE - n + 1)
        return slot.pool[start : start + n]

    def add_to(self, bits: torch.Tensor) -> torch.Tensor:
        """``bits`` (int32, 1-D) plus uniform integers in [0, 2^16), as a new tensor."""
        return torch.add(self.draw(bits.numel(), bits.device), bits)


NOISE = NoisePool()


def stochastic_round_(dst: torch.Tensor, src: torch.Tensor, *, scratch: bool = False) -> torch.Tensor:
    """``dst.copy_(src)`` with stochastic rounding; ``dst`` is bfloat16, ``src`` float32 of its size.

    Unbiased: each element is rounded to one of its two bf16 neighbours, the upper one with
    probability equal to the fraction of an ulp it lies above the lower one. Values exactly
    representable in bf16 are copied unchanged. ``scratch=True``: ``src`` (contiguous) is
    not needed afterwards, and the noise is added to it in place instead of to a new tensor.
    """
    if dst.dtype != torch.bfloat16 or src.dtype != torch.float32:
        raise TypeError(f"stochastic rounding writes float32 into bfloat16, got {src.dtype} -> {dst.dtype}")
    bits = src.reshape(-1).view(torch.int32)
    if scratch and src.is_contiguous():  # the carry rounds the magnitude up
        rounded = bits.add_(NOISE.draw(bits.numel(), bits.device))
    else:
        rounded = NOISE.add_to(bits)
    if sys.byteorder == "little":  # bf16 is the high half of each 32-bit pattern: copy those halves
        dst.view(torch.int16).copy_(rounded.view(torch.int16)[1::2].view(dst.shape))
    else:
        dst.copy_(rounded.bitwise_and_(-65536).view(torch.float32).view(dst.shape))  # exact: low bits are 0
    return dst


def is_low_precision(param: torch.Tensor) -> bool:
    """Whether writes into ``param`` round to fewer than float32's 24 significant bits."""
    return param.dtype in (torch.bfloat16, torch.float16)


def unsupported_reason(rounding: str, param: torch.Tensor) -> str | None:
    """Why ``rounding`` cannot be used for ``param``, or None."""
    if rounding == "stochastic" and param.dtype == torch.float16:
        return (
            "param_rounding='stochastic' is implemented for bfloat16 parameters; float16 has a "
            "different bit layout. Use param_rounding='kahan' for float16 parameters"
        )
    return None
