"""What the benchmark times: every ``decoupled`` backend and the implementations users would
otherwise pick.

A :class:`Contender` builds an optimizer over a list of parameters. All of them run AdamW with
the same hyperparameters (lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2; optimi's own eps
and betas defaults are overridden to match), so they do the same work per step.

The peers: ``torch.optim.AdamW`` (for-loop, foreach, fused; always present), the same with its
``step`` called from a ``torch.compile``d function (PyTorch's "Compiling the optimizer with
torch.compile" recipe; needs a C++ compiler on CPU, Triton on CUDA), `optimi
<https://optimi.benjaminwarner.dev>`_ (``torch-optimi``), `bitsandbytes
<https://github.com/bitsandbytes-foundation/bitsandbytes>`_ (``AdamW`` with 32-bit state,
``AdamW8bit``, and their ``Paged`` variants) and `torchao <https://github.com/pytorch/ao>`_
(``torchao.optim.AdamW8bit``, ``AdamW4bit``, ``AdamWFp8`` and, for bf16,
``_AdamW(bf16_stochastic_round=True)``). A peer that is not installed, or cannot step tensors
of the benchmark's device and dtype, is listed with the reason instead of being timed.

DeepSpeed's ``DeepSpeedCPUAdam`` (the C++ kernel of ZeRO-Offload) is timed too when
``deepspeed`` is installed. On CPU with torch 2.13.0 (measured with bitsandbytes 0.50.2,
torchao 0.18.0 and deepspeed 0.19.8) all of them step, except that bitsandbytes' paged
optimizers fall back to the unpaged ones (with a warning), so they are listed rather than
timed twice. The ``peers`` extra installs optimi,
bitsandbytes and torchao; to add them to an environment on their own, keeping its torch::

    PIP_CONSTRAINT=constraints.txt pip install torch-optimi bitsandbytes torchao deepspeed

Contenders that compile on their first step (``compiles=True``: the ``torch.compile`` row, and
torchao, which compiles its update per parameter shape) take seconds to a minute of warm-up
per case (docs/backends.md has the numbers). They get at least two warm-up steps, so no timed
step compiles, and ``decoupled bench --quick`` leaves them out unless ``--only`` names them.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import decoupled
from decoupled import backends
from decoupled.backends.compiled import compile_unavailable

HYPER: dict[str, Any] = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}

# The row every other row is divided by (at the same size, layout and dtype).
REFERENCE = "torch.optim.AdamW(fused=True)"

# torch.optim.AdamW with its step compiled (PyTorch's "Compiling the optimizer" recipe).
COMPILED = "torch.compile(torch.optim.AdamW.step)"

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
    # The first step(s) run torch.compile (seconds to a minute): such a contender gets at least
    # ``warmup`` untimed steps, and ``--quick`` leaves it out unless ``--only`` names it.
    compiles: bool = False
    warmup: int = 1

    @property
    def label(self) -> str:
        return f"{self.name} [{dtype_name(self.dtype)}]"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def decoupled_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    """One row per registered backend (and ``auto``) and parameter dtype."""
    out = []
    for dt in dtypes:
        kinds = frozenset({(device.type, dt)})
        auto = backends.resolve("auto", kinds).name
        out.append(
            Contender(
                "decoupled.AdamW()",
                "decoupled",
                dt,
                lambda ps: decoupled.AdamW(ps, **HYPER),
                note=f"auto -> {auto}",
            )
        )
        for name, backend in backends.REGISTRY.items():
            reason = backend.unsupported_reason(kinds)

            def make_backend(ps: list[torch.nn.Parameter], name: str = name) -> torch.optim.Optimizer:
                return decoupled.AdamW(ps, backend=name, **HYPER)

            compiles = name == "compiled"
            out.append(
                Contender(
                    f"decoupled backend={name}",
                    "decoupled",
                    dt,
                    make_backend,
                    skip=reason or (compile_unavailable(device.type) if compiles else None),
                    compiles=compiles,
                    warmup=3 if compiles else 1,
                )
            )
        rows = [(o, "state format") for o in FORMATS.get(dt, ())] + [(o, "convention") for o in CONVENTIONS.get(dt, ())]
        for options, note in rows:
            text = ", ".join(f"{k}={v!r}" for k, v in options.items())

            def make_format(ps: list[torch.nn.Parameter], options: dict[str, Any] = options) -> torch.optim.Optimizer:
                return decoupled.AdamW(ps, **options, **HYPER)

            compiles = options.get("backend") == "compiled"
            out.append(
                Contender(
                    f"decoupled.AdamW({text})",
                    "decoupled",
                    dt,
                    make_format,
                    note=note,
                    extra={"format": {k: v for k, v in options.items() if k in ("moments", "param_rounding")}},
                    skip=unsupported_reason(options, device, dt),
                    compiles=compiles,
                    warmup=3 if compiles else 1,
                )
            )
    return out


def unsupported_reason(options: dict[str, Any], device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``decoupled.AdamW(**options)`` cannot step parameters of ``dtype`` on ``device``, as the
    step pipeline decides it from the registries (:mod:`decoupled.backends`, :mod:`decoupled.formats`)."""
    from decoupled import backends, formats

    asked = options.get("backend", "auto")
    kinds = frozenset({(device.type, dtype)})
    group = {"moments": options.get("moments", "param"), "param_rounding": options.get("param_rounding", "nearest")}
    cautious = bool(options.get("cautious_decay"))
    try:
        if formats.is_formatted(group, torch.empty(0, dtype=dtype, device="meta")):
            fmt, rounding = formats.options(group)
            formats.choose_executor(asked, fmt, rounding, kinds, cautious=cautious)
        else:
            backends.resolve(asked, kinds, cautious=cautious)
    except backends.Unsupported as err:
        return str(err)
    return None


# The state formats timed (decoupled.formats), by parameter dtype: lower-memory moments for fp32
# weights; for bf16 weights, the roundings that keep small updates, alone and with 8-bit moments.
# Each as the default runs it (auto: the native C++ kernel on CPU where it builds), on the
# float32 arena with torch's fused kernel (backend="fused"), and where they apply with the
# storage-fused compiled kernel and the formats' Triton executor (CUDA only).
FORMATS: dict[torch.dtype, list[dict[str, str]]] = {
    torch.float32: [
        {"moments": "bf16"},
        {"moments": "bf16", "backend": "fused"},
        {"moments": "bf16", "backend": "compiled"},
        {"moments": "bf16", "backend": "triton"},
        {"moments": "8bit"},
        {"moments": "8bit", "backend": "fused"},
        {"moments": "8bit", "backend": "triton"},
    ],
    torch.bfloat16: [
        {"param_rounding": "kahan"},
        {"param_rounding": "kahan", "backend": "fused"},
        {"param_rounding": "kahan", "backend": "compiled"},
        {"param_rounding": "kahan", "backend": "triton"},
        {"param_rounding": "stochastic"},
        {"param_rounding": "stochastic", "backend": "fused"},
        {"param_rounding": "stochastic", "backend": "compiled"},
        {"param_rounding": "stochastic", "backend": "triton"},
        {"moments": "8bit", "param_rounding": "stochastic"},
        {"moments": "8bit", "param_rounding": "stochastic", "backend": "fused"},
        {"moments": "8bit", "param_rounding": "stochastic", "backend": "triton"},
    ],
}


# The weight-decay conventions timed against the plain step (issue 12): corrected decay changes
# only a scalar; cautious decay masks the decay, which torch's fused kernel cannot, so by default
# it runs on another backend (the fastest that can mask: the registry's auto order).
CONVENTIONS: dict[torch.dtype, list[dict[str, Any]]] = {
    torch.float32: [
        {"decay_scaling": "corrected"},
        {"cautious_decay": True},
        {"cautious_decay": True, "backend": "foreach"},
        {"cautious_decay": True, "backend": "triton"},
        {"cautious_decay": True, "moments": "bf16", "backend": "triton"},
    ],
}


def torch_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    out = []
    for dt in dtypes:
        for name, flags in (
            ("torch.optim.AdamW(foreach=False)", {"foreach": False}),
            ("torch.optim.AdamW(foreach=True)", {"foreach": True}),
            (REFERENCE, {"fused": True}),
        ):

            def make(ps: list[torch.nn.Parameter], flags: dict[str, Any] = flags) -> torch.optim.Optimizer:
                return torch.optim.AdamW(ps, **HYPER, **flags)

            out.append(Contender(name, "torch", dt, make))
    return out


def _compiled_adamw(ps: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` whose ``step`` runs a ``torch.compile``d function calling the eager step.

    The graph is built on the first step and serves every later one: lr stays a Python float,
    and the step count is a tensor, so nothing the guards check changes from step to step.
    foreach=True is what ``torch.optim.AdamW`` picks on CUDA, and what PyTorch's compiled
    optimizer fuses horizontally (it also compiles faster than the for-loop here: 42 s against
    55 s for GPT-2's 148 tensors on 2 cores).
    """
    opt = torch.optim.AdamW(ps, **HYPER, foreach=True)
    eager_step = opt.step

    @torch.compile(fullgraph=False)
    def compiled_step(closure: None = None) -> None:
        eager_step()

    opt.step = compiled_step  # type: ignore[method-assign]
    return opt


def compile_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    reason = compile_unavailable(device.type)
    note = "foreach=True, compiled in the warm-up"
    return [
        Contender(COMPILED, "torch", dt, _compiled_adamw, note=note, skip=reason, compiles=True, warmup=2)
        for dt in dtypes
    ]


def _import(module: str) -> tuple[object | None, str | None]:
    """The module, or why it cannot be imported. Its import-time log chatter (optional native
    libraries it could not load, torch's deprecation notes about how it registers types) is
    kept off the benchmark's output."""
    loggers = [logging.getLogger(name) for name in {module.split(".")[0], "torch"}]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module), None
    except Exception as err:  # ImportError, or a broken install raising something else
        return None, f"not installed ({type(err).__name__}: {err})"
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _version(module) -> str:
    return str(getattr(module, "__version__", "?"))


def _probe(make: Factory, device: torch.device, dtype: torch.dtype) -> tuple[str | None, list[str]]:
    """One step on a 4096-element parameter (as large as bitsandbytes' smallest 8-bit state):
    the error it raises, if any, and the warnings it gives."""
    p = torch.nn.Parameter(torch.full((4096,), 0.02, device=device, dtype=dtype))
    p.grad = torch.full_like(p, 1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            make([p]).step()
        except Exception as err:
            return f"{type(err).__name__}: {err}".splitlines()[0][:200], []
    return None, [str(w.message).splitlines()[0] for w in caught]


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

            def make(ps: list[torch.nn.Parameter], flags: dict[str, Any] = flags) -> torch.optim.Optimizer:
                return _quiet(optimi.AdamW, ps, **HYPER, **flags)  # type: ignore[union-attr]

            out.append(
                Contender(
                    f"optimi.AdamW({label})",
                    "optimi",
                    dt,
                    make,
                    note=note,
                    skip=reason,
                )
            )
    return out


def bitsandbytes_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    """``AdamW`` (32-bit state), ``AdamW8bit`` (8-bit blockwise state, 256 per block) and their
    ``Paged`` variants (state in CUDA unified memory). Each is first probed with one small step
    on the device: a class that cannot step there is listed with bitsandbytes' error, and a
    paged class that falls back to the unpaged one (bitsandbytes warns so on CPU) with that
    warning."""
    bnb, reason = _import("bitsandbytes")
    out = []
    for dt in dtypes:
        for cls_name in ("AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit"):

            def make(ps, cls_name=cls_name):
                return getattr(bnb.optim, cls_name)(ps, **HYPER)  # type: ignore[union-attr]

            skip = reason
            if skip is None:
                version = f"bitsandbytes {_version(bnb)}"
                error, said = _probe(make, device, dt)
                fallback = [w for w in said if "not supported" in w.lower()]
                if error:
                    skip = f"{version}: {cls_name} cannot step {device.type} {dtype_name(dt)} tensors ({error})"
                elif cls_name.startswith("Paged") and fallback:
                    skip = f"{version}: the same as {cls_name[5:]} on {device.type} ({fallback[0]})"
            note = "8-bit blockwise state" if "8bit" in cls_name else "fp32 state"
            out.append(Contender(f"bitsandbytes.optim.{cls_name}", "bitsandbytes", dt, make, note=note, skip=skip))
    return out


def torchao_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    """``AdamW8bit``, ``AdamW4bit`` and ``AdamWFp8`` (quantized blockwise state), and for bf16
    parameters ``_AdamW(bf16_stochastic_round=True)``. torchao compiles its update for each
    parameter shape on the first step, so these need what ``torch.compile`` needs."""
    ao, reason = _import("torchao.optim")
    if reason is None:
        reason = compile_unavailable(device.type)
        if reason is not None:
            reason = f"torchao {_version(_import('torchao')[0])} compiles its step: {reason}"
    out = []
    for dt in dtypes:
        variants: list[tuple[str, dict[str, bool], str]] = [
            ("AdamW8bit", {}, "8-bit blockwise state"),
            ("AdamW4bit", {}, "4-bit blockwise state"),
            ("AdamWFp8", {}, "fp8 blockwise state"),
        ]
        if dt == torch.bfloat16:
            variants.append(("_AdamW", {"bf16_stochastic_round": True}, "bf16 state, stochastic rounding"))
        for cls_name, kwargs, note in variants:

            def make(ps, cls_name=cls_name, kwargs=kwargs):
                return getattr(ao, cls_name)(ps, **HYPER, **kwargs)  # type: ignore[union-attr]

            args = "".join(f"{k}={v}" for k, v in kwargs.items())
            out.append(
                Contender(
                    f"torchao.optim.{cls_name}" + (f"({args})" if args else ""),
                    "torchao",
                    dt,
                    make,
                    note=note,
                    skip=reason,
                    compiles=True,
                    warmup=2,
                )
            )
    return out


def deepspeed_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    """``deepspeed.ops.adam.DeepSpeedCPUAdam(adamw_mode=True)``: DeepSpeed's C++ AVX2/AVX-512 Adam
    for ZeRO-Offload. Its op is built with the C++ compiler on the first construction (54-99 s
    measured on the 2-core machine) and cached by torch in ``~/.cache/torch_extensions``, so it
    is not probed here: it counts as compiling (``--quick`` leaves it out unless ``--only``
    names it), and a dtype it cannot step is reported by the run."""
    ds, reason = _import("deepspeed.ops.adam")
    if reason is None:
        reason = "DeepSpeedCPUAdam steps CPU tensors" if device.type != "cpu" else compile_unavailable("cpu")

    def make(ps):
        return ds.DeepSpeedCPUAdam(ps, **HYPER, adamw_mode=True)  # type: ignore[union-attr]

    return [
        Contender(
            "deepspeed.ops.adam.DeepSpeedCPUAdam",
            "deepspeed",
            dt,
            make,
            note="C++ AVX kernel",
            skip=reason,
            compiles=True,
        )
        for dt in dtypes
    ]


def all_contenders(device: torch.device, dtypes: list[torch.dtype]) -> list[Contender]:
    """Every contender: the ``decoupled`` rows first, then ``torch.optim.AdamW`` (the reference
    last of its three), its compiled step, and the other libraries."""
    return [
        *decoupled_contenders(device, dtypes),
        *torch_contenders(device, dtypes),
        *compile_contenders(device, dtypes),
        *optimi_contenders(device, dtypes),
        *bitsandbytes_contenders(device, dtypes),
        *torchao_contenders(device, dtypes),
        *deepspeed_contenders(device, dtypes),
    ]
