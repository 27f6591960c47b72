"""Dense moment formats: one tensor per moment, under torch's own state key.

=========  ============================================================================
``param``  the parameter's dtype, as ``torch.optim.AdamW`` stores it (the default)
``fp32``   float32 whatever the parameter's dtype (e.g. bf16 weights, fp32 moments)
``bf16``   bfloat16, 2 bytes per element, written with stochastic rounding
=========  ============================================================================

Because the keys are torch's, a dense-format checkpoint loads into ``torch.optim.AdamW``
directly (torch casts the moments to the parameter's dtype on load).

The ``bf16`` format rounds stochastically because round-to-nearest stalls the second
moment: with beta2 = 0.999, ``v`` moves by about 0.1% per step while one bf16 ulp is 0.4-0.8%
of the value, so ``0.999 v + 0.001 g^2`` rounds back to ``v`` whenever g^2 is within a few
times v (see :mod:`decoupled.formats.rounding`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .base import MomentFormat
from .rounding import stochastic_round_


class Dense(MomentFormat):
    """A moment stored as one tensor of the parameter's shape, in ``dtype`` (None: the parameter's)."""

    def __init__(self, name: str, dtype: torch.dtype | None, *, stochastic: bool = False) -> None:
        self.name, self.dtype, self.stochastic = name, dtype, stochastic

    def dtype_for(self, param: torch.Tensor) -> torch.dtype:
        return self.dtype or param.dtype

    def keys(self, moment: str) -> tuple[str, ...]:
        return (moment,)

    def holds(self, entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> bool:
        t = entry.get(moment)
        return isinstance(t, torch.Tensor) and t.dtype == self.dtype_for(param)

    def check(self, entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> str | None:
        t = entry.get(moment)
        if not isinstance(t, torch.Tensor):
            return f"'{moment}' must be a tensor, got {type(t).__name__}"
        if tuple(t.shape) != tuple(param.shape):
            return (
                f"'{moment}' has shape {tuple(t.shape)}; the checkpoint belongs to a model whose "
                f"parameters differ from this one"
            )
        if not (t.is_floating_point() or t.is_complex()):
            return f"'{moment}' has dtype {t.dtype}; moments are floating point"
        return None

    def allocate(self, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        return {moment: torch.zeros(param.shape, dtype=self.dtype_for(param), device=param.device)}

    def empty(self, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        return {moment: torch.empty(param.shape, dtype=self.dtype_for(param), device=param.device)}  # contiguous

    def encode(self, values: torch.Tensor, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        """A cast (copy_ converts element by element, without a temporary); float32 values into
        stochastically rounded bf16 go through :meth:`MomentFormat.encode`'s pieces."""
        if self.stochastic and values.dtype == torch.float32 and self.dtype_for(param) == torch.bfloat16:
            return super().encode(values, param, moment)
        out = self.empty(param, moment)
        out[moment].copy_(values)
        return out

    def decode(self, entry: Mapping[str, Any], param: torch.Tensor, moment: str) -> torch.Tensor:
        """A float32 copy in the parameter's shape (torch's layout may keep the parameter's strides)."""
        return entry[moment].to(torch.float32, copy=True)

    def view(self, entry: Mapping[str, Any], moment: str, start: int, stop: int) -> torch.Tensor | None:
        t = entry[moment]
        return t.view(-1)[start:stop] if t.dtype == torch.float32 else None

    def load(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, out: torch.Tensor) -> None:
        out.copy_(entry[moment].view(-1)[start:stop])

    def store(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, value: torch.Tensor) -> None:
        dst = entry[moment].view(-1)[start:stop]
        if self.stochastic and dst.dtype == torch.bfloat16:
            stochastic_round_(dst, value, scratch=True)  # value: the arena's copy, not needed after
        else:
            dst.copy_(value)


PARAM = Dense("param", None)
FP32 = Dense("fp32", torch.float32)
BF16 = Dense("bf16", torch.bfloat16, stochastic=True)
