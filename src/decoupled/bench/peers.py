"""What the benchmark times: every ``decoupled`` backend and the implementations users would
otherwise pick.

A :class:`Contender` builds an optimizer over a list of parameters. All of them run AdamW with
the same hyperparameters (lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2; optimi's own eps
and betas defaults are overridden to match), so they do the same work per step.

Peers that are not installed are listed with the reason instead of being timed:
``torch.optim.AdamW`` (for-loop, foreach, fused; always present), `optimi
<https://optimi.benjaminwarner.dev>`_ (``torch-optimi``), `bitsandbytes
<https://github.com/bitsandbytes-foundation/bitsandbytes>`_ and `torchao
<https://github.com/pytorch/ao>`_ (``torchao.optim``).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import decoupled
from decoupled import backends

HYPER = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}

# The row every other row is divided by (at the same size, layout and dtype).
REFERENCE = "torch.optim.AdamW(fused=True)"

Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass
class Contender:
    """One optimizer implementation at one parameter dtype."""

    name: str
    family: str  # "decoupled", "torch", "optimi", "bitsandbytes", "torchao"
    dtype: torch.dtype
    make: Factory
    note: str = ""
    skip: str | None = None  # why it is not timed (not installed, wrong device...)
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} [{dtype_name(self.dtype)}]"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def decoupled_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    """One row per registered backend (and ``auto``) and parameter dtype."""
    out = []
    probe = {dt: [torch.empty(1, device=device, dtype=dt)] for dt in dtypes}
    for dt in dtypes:
        auto = backends.resolve("auto", probe[dt])
        out.append(
            Contender(
                "decoupled.AdamW()",
                "decoupled",
                dt,
                lambda ps: decoupled.AdamW(ps, **HYPER),
                note=f"auto -> {auto}",
            )
        )
        for name in backends.BACKENDS:
            reason = backends.unsupported_reason(name, probe[dt], differentiable=False)
            out.append(
                Contender(
                    f"decoupled backend={name}",
                    "decoupled",
                    dt,
                    lambda ps, name=name: decoupled.AdamW(ps, backend=name, **HYPER),
                    skip=reason,
                )
            )
    return out


def torch_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    out = []
    for dt in dtypes:
        for name, flags in (
            ("torch.optim.AdamW(foreach=False)", {"foreach": False}),
            ("torch.optim.AdamW(foreach=True)", {"foreach": True}),
            (REFERENCE, {"fused": True}),
        ):
            out.append(Contender(name, "torch", dt, lambda ps, flags=flags: torch.optim.AdamW(ps, **HYPER, **flags)))
    return out


def _import(module: str) -> tuple[object | None, str | None]:
    try:
        return importlib.import_module(module), None
    except Exception as err:  # ImportError, or a broken install raising something else
        return None, f"not installed ({type(err).__name__}: {err})"


def _quiet(cls, *args, **kwargs):
    """Construct without deprecation chatter (optimi warns that foreach will go away)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cls(*args, **kwargs)


def optimi_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    optimi, reason = _import("optimi")
    out = []
    backends_ = [("foreach", {"foreach": True, "triton": False}), ("for-loop", {"foreach": False, "triton": False})]
    if device.type == "cuda":
        backends_.append(("triton", {"triton": True}))
    for dt in dtypes:
        for label, flags in backends_:
            note = "bf16 with Kahan summation (optimi's default)" if dt != torch.float32 else ""
            out.append(
                Contender(
                    f"optimi.AdamW({label})",
                    "optimi",
                    dt,
                    lambda ps, flags=flags: _quiet(optimi.AdamW, ps, **HYPER, **flags),  # type: ignore[union-attr]
                    note=note,
                    skip=reason,
                )
            )
    return out


def bitsandbytes_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    bnb, reason = _import("bitsandbytes")
    out = []
    for cls_name in ("AdamW", "AdamW8bit"):

        def make(ps, cls_name=cls_name):
            return getattr(bnb.optim, cls_name)(ps, **HYPER)  # type: ignore[union-attr]

        out.append(Contender(f"bitsandbytes.optim.{cls_name}", "bitsandbytes", torch.float32, make, skip=reason))
    return out


def torchao_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    ao, reason = _import("torchao.optim")
    out = []
    for cls_name in ("AdamW8bit", "AdamW4bit", "AdamWFp8"):

        def make(ps, cls_name=cls_name):
            return getattr(ao, cls_name)(ps, **HYPER)  # type: ignore[union-attr]

        out.append(Contender(f"torchao.optim.{cls_name}", "torchao", torch.float32, make, skip=reason))
    return out


def all_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    """Every contender, the ``decoupled`` rows first and the reference last of the torch rows."""
    return [
        *decoupled_contenders(device, dtypes),
        *torch_contenders(device, dtypes),
        *optimi_contenders(device, dtypes),
        *bitsandbytes_contenders(device, dtypes),
        *torchao_contenders(device, dtypes),
    ]
