"""Native fused CPU kernels for the state formats (placeholder docstring, filled in below)."""

from __future__ import annotations

from .build import unavailable_reason
from .executor import step, stochastic_noise, unsupported_reason

__all__ = ["step", "unsupported_reason", "unavailable_reason", "stochastic_noise"]
