r"""The compiled backend: load, update and store of one tensor fused into one kernel by ``torch.compile``.

An optimizer step is bound by memory traffic. The formats' arena executor
(:mod:`decoupled.formats.arena`) loads bf16 state to a float32 buffer, runs the update, and
stores it back with stochastic rounding: three passes over the state. Here one function does
all three for one parameter, and inductor compiles it into one loop (C++/OpenMP on CPU,
Triton on GPU) that reads every stored byte once and writes it once:

.. math::

    \theta_{32} = \theta\,[+\,c_{kahan}],\quad m_{32} = m,\quad v_{32} = v
    \;\xrightarrow{\text{rule}}\;
    \theta \leftarrow \mathrm{round}(\theta_{32}),\quad m \leftarrow \mathrm{round}(m_{32}),\quad
    v \leftarrow \mathrm{round}(v_{32})

where the float32 values never reach memory, and ``round`` is a plain cast, stochastic
rounding to bf16 (uniform 16-bit noise added to the float32 bits, read from a pool the caller
passes in) or a Kahan write. The update between is :func:`decoupled.rule.adam_update`, the one
rule every backend runs, over 0-d float64 tensors for the coefficients: as tensors they are
inputs of the compiled graph rather than constants baked into it, so a schedule that changes
lr every step does not recompile it. Sizes are dynamic, so one graph serves every tensor.

As a backend it runs torch's state layout (:func:`step`); the dense state formats run their
storage-fused form through :func:`update` (:mod:`decoupled.formats.compiled`, with
``backend="compiled"``). Not bitwise equal to the loop backend:
inductor may contract multiply-adds, so results differ in the last bits of float32 (tested
within a few ulp per step). The first step compiles (seconds, and a C++ compiler on CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..rule import GroupCoefficients, TensorOps, adam_update, step_coefficients
from . import foreach, fused
from .base import Backend, Kinds

_OPS = TensorOps()  # coefficients are 0-d tensors here: TensorOps forms their products explicitly

NoiseFn = Callable[[torch.device, int], tuple[torch.Tensor, torch.Tensor]]
"""``noise(device, k)``: a pool of uniform int32 in [0, 2^16) (power-of-two length) on ``device``
and ``k`` random int64 offsets into it, for stochastic rounding."""


def scalars(c: GroupCoefficients, step: float, device: torch.device) -> torch.Tensor:
    """The coefficients of one step as a float64 tensor on ``device``, in :func:`_kernel`'s order."""
    neg_step_size, bias_correction2_sqrt = step_coefficients(c, step)
    values = (c.lr, c.beta1, c.beta2, c.eps, c.decay_factor, c.l2, neg_step_size, bias_correction2_sqrt)
    return torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)


def _bf16_stochastic(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded stochastically to bf16 (``noise``: int32 in [0, 2^16), as in rounding.py)."""
    return ((x.view(torch.int32) + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _noise(pool: torch.Tensor, offset: torch.Tensor, n: int) -> torch.Tensor:
    """``pool[(offset + i) % len(pool)]`` for i < n: the pool's power-of-two size makes % a mask."""
    return pool[(torch.arange(n, device=pool.device) + offset) & (pool.numel() - 1)]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the precision the update runs in: float32 for bf16/fp16/fp32, float64 for float64."""
    return t if t.dtype == torch.float64 else t.float()


def _store(dst: torch.Tensor, value: torch.Tensor, noise: torch.Tensor | None) -> None:
    dst.copy_(_bf16_stochastic(value, noise) if noise is not None else value)


def _kernel(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    comp: torch.Tensor | None,
    stochastic: list[bool],
    pool: torch.Tensor | None,
    offsets: torch.Tensor | None,
    k: torch.Tensor,
    decays: bool,
    coupled: bool,
    cautious: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """One step of one parameter (1-D views of equal length). ``stochastic[j]``: tensor j of
    (param, exp_avg, exp_avg_sq, max_exp_avg_sq) is stored with stochastic rounding, with noise
    read from ``pool`` at ``offsets[j]``."""
    n = param.numel()
    noise = [_noise(pool, offsets[j], n) if s else None for j, s in enumerate(stochastic)]  # type: ignore[index,arg-type]
    c = GroupCoefficients(
        lr=k[0],
        beta1=k[1],
        beta2=k[2],
        eps=k[3],
        decay_factor=k[4],
        decay_per_lr=0.0,  # unused by the rule
        l2=k[5],
        amsgrad=amsgrad,
        maximize=maximize,
        decays=decays,
        coupled=coupled,
        cautious=cautious,
    )
    p32 = _wide(param) if comp is None else param.float() + comp.float()
    max32 = _wide(max_exp_avg_sq) if max_exp_avg_sq is not None else None
    p32, m32, v32, max32 = adam_update(
        _OPS,
        p32,
        _wide(grad),
        _wide(exp_avg),
        _wide(exp_avg_sq),
        max32,
        c,
        k[6],
        k[7],
    )
    if comp is not None:  # Kahan: keep what rounding into the parameter lost
        param.copy_(p32)
        comp.copy_(p32 - param.float())
    else:
        _store(param, p32, noise[0])
    _store(exp_avg, m32, noise[1])
    _store(exp_avg_sq, v32, noise[2])
    if max_exp_avg_sq is not None and max32 is not None:
        _store(max_exp_avg_sq, max32, noise[3])


RECOMPILE_LIMIT = 1024
"""Graphs kept for :func:`_kernel`: one per combination of its flags (5 convention and option
flags, 4 stochastic-store flags, Kahan) and dtypes. Dynamo's default of 8 is for one function
seeing one kind of input; a training run uses a few combinations, the test suite several hundred
in one process (it exceeded 128)."""


@functools.cache
def _compiled():
    # emulate_precision_casts: round where the code casts to bf16 (inductor would otherwise keep
    # float32 through a cast and back, and the Kahan buffer would always be zero)
    return torch.compile(_kernel, dynamic=True, fullgraph=True, options={"emulate_precision_casts": True})


MIN_NUMEL = 1 << 18
"""Tensors with fewer elements go to the fastest other backend (the formats' arena batches many
small tensors into one call). A compiled call costs about 0.2 ms of Python, guard checks and
launch; measured on the 2-core CPU with bf16 moments, one tensor of 2^18 elements steps in
0.69 ms compiled against 0.67 ms through the arena, and smaller ones step faster there."""


def update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    moments: list[list[torch.Tensor | None]],
    steps: list[float],
    c: GroupCoefficients,
    *,
    stochastic_moments: bool = False,
    rounding: str = "nearest",
    comps: list[torch.Tensor | None] | None = None,
    noise: NoiseFn | None = None,
) -> None:
    """One compiled step of each parameter, in place.

    ``moments[i]``: ``[exp_avg, exp_avg_sq, max_exp_avg_sq or None]`` of ``params[i]`` in their
    stored dtype. ``steps[i]``: its step count, already incremented. ``stochastic_moments``:
    bf16 moments are written with stochastic rounding. ``rounding``: how bf16/fp16 parameters
    are written (``"nearest"``, ``"stochastic"`` or ``"kahan"`` with ``comps[i]``, their
    compensation buffers). ``noise`` supplies the random bits of stochastic rounding (needed
    when any is asked for). Non-contiguous tensors are updated through contiguous copies.
    """
    coefficients: dict[tuple[float, torch.device], torch.Tensor] = {}
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        for i, param in enumerate(params):
            key = (steps[i], param.device)
            if key not in coefficients:
                coefficients[key] = scalars(c, steps[i], param.device)
            comp = comps[i] if comps is not None else None
            _update_one(param, grads[i], moments[i], coefficients[key], c, stochastic_moments, rounding, comp, noise)


def _update_one(param, grad, moments, k, c, stochastic_moments: bool, rounding: str, comp, noise=None) -> None:
    tensors = [param, grad, *moments, comp]
    work = [t if t is None or t.is_contiguous() else t.contiguous() for t in tensors]

    def rounds_stochastically(t: torch.Tensor | None, asked: bool) -> bool:
        return asked and t is not None and t.dtype == torch.bfloat16

    stochastic = [rounds_stochastically(param, rounding == "stochastic")]
    stochastic += [rounds_stochastically(m, stochastic_moments) for m in moments]
    pool, offsets = (None, None)
    if any(stochastic):
        if noise is None:
            raise ValueError("stochastic rounding needs a noise source (noise=)")
        pool, offsets = noise(param.device, len(stochastic))
    flat = [t.detach().view(-1) if t is not None else None for t in work]  # views, written in place
    param_flat, grad_flat, m_flat, v_flat, max_flat, comp_flat = flat
    _compiled()(
        param_flat,
        grad_flat,
        m_flat,
        v_flat,
        max_flat,
        comp_flat if rounding == "kahan" else None,
        stochastic,
        pool,
        offsets,
        k,
        c.decays,
        c.coupled,
        c.cautious,
        c.amsgrad,
        c.maximize,
    )
    for original, copy in zip(tensors, work):
        if original is not None and copy is not None and copy is not original:
            original.copy_(copy)


@functools.cache
def compile_unavailable(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device_type`` here (None when it can).

    Inductor compiles C++ on CPU and Triton on CUDA; both are looked up the way Inductor does,
    without compiling anything.
    """
    try:
        if device_type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        elif device_type == "cuda":
            from torch.utils._triton import has_triton

            if not has_triton():
                return "torch.compile needs Triton for CUDA kernels (pip install triton)"
        else:
            return f"torch.compile is not tried on {device_type} here"
    except Exception as err:  # no C++ compiler, or an Inductor that fails to load
        return f"torch.compile cannot build {device_type} kernels ({type(err).__name__}: {err})"
    return None


def unsupported_reason(kinds: Kinds) -> str | None:
    for device_type in sorted({device for device, _ in kinds}):
        reason = compile_unavailable(device_type)
        if reason is not None:
            return f"the compiled backend needs torch.compile: {reason}; use the default backend"
    for _, dtype in kinds:
        if not dtype.is_floating_point:
            return f"the compiled backend needs real floating-point parameters, got {dtype} (use foreach)"
    return None


def step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    c: GroupCoefficients,
    *,
    differentiable: bool = False,
) -> None:
    """One compiled kernel call per tensor of at least :data:`MIN_NUMEL` elements; the smaller
    ones in one call of torch's fused kernel (or foreach, which can mask cautious decay)."""
    if differentiable:
        raise RuntimeError("the compiled backend cannot record autograd history; use the loop backend")
    big = [i for i, p in enumerate(params) if p.numel() >= MIN_NUMEL]
    small = [i for i, p in enumerate(params) if p.numel() < MIN_NUMEL]
    if big:
        update(
            [params[i] for i in big],
            [grads[i] for i in big],
            [[exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if c.amsgrad else None] for i in big],
            [float(state_steps[i].item()) for i in big],
            c,
        )
    if small:

        def pick(ts: list[torch.Tensor]) -> list[torch.Tensor]:
            return [ts[i] for i in small]

        rest = foreach.step if c.cautious else fused.step
        rest(
            pick(params),
            pick(grads),
            pick(exp_avgs),
            pick(exp_avg_sqs),
            pick(max_exp_avg_sqs) if c.amsgrad else [],
            pick(state_steps),
            c,
        )


BACKEND = Backend(
    "compiled",
    step,
    "one torch.compile'd kernel per large tensor; with the state formats, load, update and store fused",
    why_not=unsupported_reason,
)
