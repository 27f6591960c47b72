"""decoupled: AdamW done right for PyTorch.

The optimizer (`AdamW`, a drop-in `torch.optim.AdamW`; `Adam`, the coupled Adam + L2
convention), its functional form, parameter grouping, schedules, and tools that show what
decoupled weight decay does. Submodules are imported on first use, so `import decoupled`
costs no more than importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "AdamW": "optim",
    "Adam": "optim",
    "param_groups": "groups",
    "check": "doctor",
}
_SUBMODULES = (
    "backends",
    "bench",
    "cli",
    "conversions",
    "doctor",
    "functional",
    "groups",
    "integrations",
    "lab",
    "optim",
    "rule",
    "schedules",
)

__all__ = ["AdamW", "Adam", "param_groups", "check", "__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'decoupled' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .doctor import check
    from .groups import param_groups
    from .optim import Adam, AdamW
