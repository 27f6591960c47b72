r"""The formats' Triton executor: load, update and store of every format in one GPU kernel.

:mod:`decoupled.formats.arena` runs a formatted step as three passes over memory (load the
stored state to a float32 arena, run the rule, store it back), each a handful of torch ops per
chunk. Here one Triton kernel does all three for a whole list of tensors in one launch, so each
stored byte is read once and written once:

.. math::

    \theta_{32} = \theta\,[+\,c_{kahan}],\quad m_{32} = \mathrm{load}(m),\quad v_{32} = \mathrm{load}(v)
    \;\xrightarrow{\text{rule}}\;
    \theta \leftarrow \mathrm{round}(\theta_{32}),\quad m \leftarrow \mathrm{store}(m_{32}),\quad
    v \leftarrow \mathrm{store}(v_{32})

Bytes per parameter of one step (parameter read and written, gradient read, state read and
written): fp32 AdamW 28; fp32 weights with bf16 moments 20, with 8-bit moments about 16.1;
bf16 weights with bf16 moments 14, with Kahan compensation 18, with 8-bit moments about 10.1.
A memory-bound step takes time in proportion, which is how the formats can be faster than
torch's fused fp32 step and not only smaller.

What it covers (the same numbers as the arena, :func:`decoupled.formats.arena.run`):

* parameters fp32, bf16 or fp16, written to nearest, with Kahan compensation
  (``state["kahan_comp"]``) or stochastically (bf16);
* moments in any dense dtype (``param``, ``fp32``), ``bf16`` with stochastic rounding, or
  ``8bit``, the blockwise float8 code (:mod:`decoupled.formats.float8`: the same codes and
  scales, bit for bit, for the same float32 values; small tensors keep fp32 moments as that
  format says). The dynamic-tree code (:mod:`decoupled.formats.blockwise8`) is not run here: no
  option names it any more, and its checkpoints are converted to the float8 code on loading;
* every convention through :class:`decoupled.rule.GroupCoefficients` (``decay_factor``,
  coupled ``l2``, cautious decay where ``c.cautious``), amsgrad and maximize.

The update is :func:`decoupled.rule.adam_update` written out elementwise, in its order of
operations (as the triton backend, :mod:`decoupled.backends.triton`). Random bits for stochastic
rounding come from Philox-4x32-10 (``tl.randint4x``; Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", SC 2011) keyed by a fresh 62-bit seed per launch drawn from torch's default
generator (so ``torch.manual_seed`` repeats a run) and counted by element: one draw serves four
neighbouring elements (32 bits each, 16 per rounded value).

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (slow; the tests).
Block size and warps per program: :func:`launch_config`.
"""

from __future__ import annotations

from ..executor import Executor
from .executor import DEFAULT_BLOCK, DEFAULT_NUM_WARPS, launch_config, step, unsupported_reason, why_not

EXECUTOR = Executor(
    "triton",
    step,
    "one Triton kernel per list of CUDA tensors: load, update and store of every format fused",
    why_not=why_not,
    answers="triton",
)

__all__ = ["EXECUTOR", "step", "unsupported_reason", "why_not", "launch_config", "DEFAULT_BLOCK", "DEFAULT_NUM_WARPS"]
