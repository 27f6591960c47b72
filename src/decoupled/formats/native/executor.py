"""The native executor: formatted state stepped by one fused C++ pass (``kernel.cpp``).

Same contract as :func:`decoupled.formats.execute.step` (without its backend argument): each
parameter's elements are loaded from their stored formats, updated by the float32 rule of
:mod:`decoupled.rule` and stored back, but in one pass over memory, 256 elements at a time in
L1, on every core. Bytes moved per parameter and step (read + write) are then only the
formats' own: parameter 2 x its size, gradient 1 x, each moment 2 x its stored size (1 byte
per element plus 4 per 256 for ``8bit``), a Kahan buffer 2 x the parameter's size.

Results are bitwise those of the arena path with the loop backend wherever no rounding is
random (see ``kernel.cpp`` for the exact arithmetic). Stochastic rounding draws its noise
from a counter-based hash instead of the arena's noise pool (:func:`stochastic_noise`), so
those stores land on the same one of the two bf16 neighbours only by chance.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence

import torch

from ...rule import GroupCoefficients, step_coefficients
from ..base import SIGNED_MOMENTS, MomentFormat
from ..blockwise8 import Blockwise8, codebook
from ..dense import Dense
from ..float8 import BlockFloat8
from ..rounding import COMPENSATION_KEY, ROUNDINGS, is_low_precision
from . import build

PARAM_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""Parameter dtypes the kernel steps (its ``ParamType``)."""

F32, BF16, BF16_STOCHASTIC, F16, TREE, FLOAT8 = range(6)  # the kernel's MomentKind
ROUNDING_CODES = {name: i for i, name in enumerate(ROUNDINGS)}  # nearest, kahan, stochastic
MOMENT_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def moment_kind(fmt: MomentFormat, param: torch.Tensor) -> int | None:
    """How the kernel reads and writes a moment of ``param`` stored in ``fmt``, or None if it cannot."""
    if isinstance(fmt, Blockwise8):
        return TREE
    if isinstance(fmt, BlockFloat8):
        return FLOAT8
    if isinstance(fmt, Dense):
        dtype = fmt.dtype_for(param)
        if dtype == torch.float32:
            return F32
        if dtype == torch.bfloat16:
            return BF16_STOCHASTIC if fmt.stochastic else BF16
        if dtype == torch.float16:
            return F16
    return None


def params_reason(moments: MomentFormat, rounding: str, params: Sequence[torch.Tensor]) -> str | None:
    """Why the kernel cannot step ``params`` with this state format (without building it), or None."""
    if rounding not in ROUNDING_CODES:
        return f"the native kernels know the roundings {list(ROUNDING_CODES)}, got {rounding!r}"
    for p in params:
        if p.device.type != "cpu":
            return f"the native kernels run on CPU, got a parameter on {p.device}"
        if p.dtype not in PARAM_TYPES:
            return f"the native kernels step float32, bfloat16 and float16 parameters, got {p.dtype}"
        if moment_kind(moments.for_param(p), p) is None:
            return f"the native kernels cannot store moments in {moments.for_param(p)!r} for {p.dtype} parameters"
        if rounding == "stochastic" and p.dtype == torch.float16:
            return "param_rounding='stochastic' is implemented for bfloat16 parameters; use 'kahan' for float16"
    return None


def unsupported_reason(moments: MomentFormat, rounding: str, params: Sequence[torch.Tensor]) -> str | None:
    """Why :func:`step` cannot run these parameters (building the kernel if it was not yet), or None."""
    return params_reason(moments, rounding, params) or build.unavailable_reason()


@functools.cache
def tables(signed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8-bit codebook's (bucket base codes as int32, thresholds, values) on CPU, kept alive here."""
    book = codebook(signed, "cpu")
    return book.base.to(torch.int32), book.threshold.contiguous(), book.values.contiguous()


def draw_seed() -> int:
    """A uniformly random 64-bit seed from torch's default generator (one per step call)."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))


class Call:
    """The pointer lists of one kernel call (tensors of one parameter dtype and moment kind).

    Tensors that are not contiguous go through contiguous copies, written back by :meth:`finish`."""

    def __init__(self, n_moments: int) -> None:
        self.params: list[int] = []
        self.grads: list[int] = []
        self.comps: list[int] = []
        self.moments: list[list[int]] = [[] for _ in range(n_moments)]
        self.scales: list[list[int]] = [[] for _ in range(n_moments)]
        self.numels: list[int] = []
        self.ids: list[int] = []
        self.step_sizes: list[float] = []
        self.bc2_sqrts: list[float] = []
        self.keep: list[torch.Tensor] = []  # contiguous copies, alive until the kernel returns
        self.write_back: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flat(self, t: torch.Tensor, written: bool = True, in_place: bool = False) -> int:
        """The address of ``t``'s elements in row-major order (a contiguous copy if needed), or
        with ``in_place`` of its memory as it is (the caller checked that the tensors of one
        parameter share a dense layout)."""
        if not (in_place or t.is_contiguous()):
            work = t.contiguous()
            self.keep.append(work)
            if written:
                self.write_back.append((t, work))
            t = work
        return t.data_ptr()

    def add(self, index: int, param, grad, comp, moments: list, step: float, c, *, in_place: bool = False) -> None:
        """Tensor ``index`` of the step: its parameter, gradient, Kahan buffer (or None), moments
        as (stored, block scales or None), step count and the group's coefficients."""
        self.params.append(self.flat(param, in_place=in_place))
        self.grads.append(self.flat(grad, written=False, in_place=in_place))
        self.comps.append(self.flat(comp) if comp is not None else 0)
        for j, (stored, scale) in enumerate(moments):
            self.moments[j].append(self.flat(stored, in_place=in_place))
            self.scales[j].append(self.flat(scale) if scale is not None else 0)
        self.numels.append(param.numel())
        self.ids.append(index)
        step_size, bc2_sqrt = step_coefficients(c, step)
        self.step_sizes.append(step_size)
        self.bc2_sqrts.append(bc2_sqrt)

    def run(self, module, dtype, kinds, rounding, c: GroupCoefficients, seed: int, noise: bool) -> None:
        if not self.params:
            return
        table_ptrs = []
        for j, kind in enumerate(kinds):
            if kind == TREE:
                table_ptrs += [t.data_ptr() for t in tables(MOMENT_NAMES[j] in SIGNED_MOMENTS)]
            else:
                table_ptrs += [0, 0, 0]
        module.step(
            PARAM_TYPES[dtype],
            ROUNDING_CODES[rounding],
            list(kinds),
            self.params,
            self.grads,
            self.comps,
            self.moments,
            self.scales,
            self.numels,
            self.ids,
            self.step_sizes,
            self.bc2_sqrts,
            [c.beta1, c.beta2, c.eps, c.decay_factor, c.l2],
            [c.maximize, c.coupled, c.decays, bool(getattr(c, "cautious", False)), c.amsgrad],
            seed,
            noise,
            table_ptrs,
        )
        for original, work in self.write_back:
            original.copy_(work)


def _checked(state: dict, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
    t = state.get(key)
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.numel() != numel or t.device.type != "cpu":
        got = f"{t.dtype} with {t.numel()} elements on {t.device}" if isinstance(t, torch.Tensor) else repr(t)
        raise ValueError(f"state[{key!r}] must be a CPU {dtype} tensor of {numel} elements for this format, got {got}")
    return t


def step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict],
    c: GroupCoefficients,
    *,
    moments: MomentFormat,
    rounding: str,
    random_noise: bool = True,
) -> None:
    """One step of ``params`` (whose ``state["step"]`` was already incremented) with formatted state,
    in place. ``random_noise=False`` makes stochastic rounding truncate (tests compare against
    the arena with zero noise)."""
    module = build.kernel()
    if module is None:
        raise RuntimeError(build.unavailable_reason())
    names = MOMENT_NAMES[: 3 if c.amsgrad else 2]
    calls: dict[tuple[torch.dtype, tuple[int, ...]], Call] = defaultdict(lambda: Call(len(names)))
    stochastic = False
    for i, p in enumerate(params):
        n = p.numel()
        if n == 0:
            continue
        fmt = moments.for_param(p)
        kind = moment_kind(fmt, p)
        if kind is None or p.dtype not in PARAM_TYPES:
            raise ValueError(params_reason(moments, rounding, [p]))
        state = states[i]
        stored: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for name in names:
            if kind in (TREE, FLOAT8):
                codes, scale = fmt.keys(name)
                dtype = fmt.code_dtype(name) if kind == FLOAT8 else torch.uint8  # type: ignore[attr-defined]
                stored.append((_checked(state, codes, dtype, n), _checked(state, scale, torch.float32, -(-n // 256))))
            else:
                stored.append((_checked(state, name, fmt.dtype_for(p), n), None))  # type: ignore[attr-defined]
        comp = None
        if rounding == "kahan" and is_low_precision(p) and COMPENSATION_KEY in state:
            comp = _checked(state, COMPENSATION_KEY, p.dtype, n)
        stochastic |= kind == BF16_STOCHASTIC or (rounding == "stochastic" and p.dtype == torch.bfloat16)
        kinds = (kind,) * len(names)
        calls[(p.dtype, kinds)].add(i, p, grads[i], comp, stored, float(state["step"]), c)
    seed = draw_seed() if stochastic else 0
    for (dtype, kinds), call in calls.items():
        call.run(module, dtype, kinds, rounding, c, seed, random_noise)


def stochastic_noise(seed: int, tensor: int, stream: int, first: int, n: int) -> torch.Tensor:
    """The noise (int64 in [0, 2^16)) the kernel adds before truncating to bf16, for elements
    ``first .. first + n`` of the ``tensor``-th parameter of a step with ``seed``; ``stream`` 0 is
    the parameter, 1-3 the moments. For tests of its distribution."""
    module = build.kernel()
    if module is None:
        raise RuntimeError(build.unavailable_reason())
    return torch.tensor(module.noise(seed, tensor, stream, first, n), dtype=torch.int64)
