"""The native fused CPU kernel: low-memory state that is also the fastest step on CPU.

An optimizer step on CPU is bound by memory traffic and, for float32 state, by the divider
(two divisions and a square root per element). The state formats move fewer bytes (an fp32
step reads and writes 28 bytes per parameter, bf16 moments 20, 8-bit moments about 16), but
the arena path (:mod:`decoupled.formats.arena`) converts through float32 buffers in several
passes. Here one C++ pass per tensor chunk loads each stored byte once, updates in float32
registers and stores once, vectorized by the compiler for the CPU it runs on and threaded over
torch's intra-op threads.

This package builds the kernel (``build.py``) and calls it (``call.py``); it knows tensors as
addresses, dtypes and storage kinds, nothing of optimizers or formats. Two callers, each a
record in its registry:

* the native executor (:mod:`decoupled.formats.native`, ``backend="native"`` with a state
  format, and ``auto``'s first choice on CPU): parameters in float32, bf16 or
  fp16, moments in the parameter's dtype, fp32, bf16 (stochastic rounding), the dynamic-tree
  8-bit code or the blockwise float8 code (:mod:`decoupled.formats.float8`), bf16/fp16
  parameters written with round-to-nearest, Kahan compensation or stochastic rounding;
  amsgrad, maximize, coupled L2, any decoupled decay factor, cautious decay.
* the native backend (:mod:`decoupled.backends.native`): the backends' signature over state in
  torch's layout (what ``torch.optim.AdamW`` keeps), ``auto``'s choice on CPU for what torch's
  fused kernel cannot run (cautious decay).

The coefficients come from :mod:`decoupled.rule` on the host; the kernel has no convention
logic. Stochastic rounding draws a 64-bit seed from torch's default generator once per call
(``torch.manual_seed`` makes runs repeatable) and hashes (seed, tensor, element index) into
16 bits of noise per element: for a fixed element the hash is a bijection of a uniformly drawn
key, so the noise is exactly uniform on [0, 2^16) and the rounding unbiased,
E[round(x)] = x (tested statistically in ``tests/test_native.py``).

Without a C++ compiler the kernel cannot be built: :func:`unavailable_reason` says why (one
warning is given), the registries' ``why_not`` return it, and ``auto`` runs the arena and
torch's kernels instead (``build.py``).
"""

from __future__ import annotations

from . import build
from .build import kernel, unavailable_reason
from .call import stochastic_noise

__all__ = ["build", "kernel", "unavailable_reason", "stochastic_noise"]
