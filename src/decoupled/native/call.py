"""One call of the native kernel: the pointer lists, the coefficients and the codes it takes.

The kernel (``kernel.cpp``) knows tensors only as addresses and element counts, parameter
dtypes and moment *kinds* (how a moment is stored), and the host-side coefficients of
:mod:`decoupled.rule`; it has no notion of optimizers, formats or conventions. Callers: the
native backend (:mod:`decoupled.backends.native`, torch's state layout) and the native executor
(:mod:`decoupled.formats.native`, every state format).
"""

from __future__ import annotations

import torch

from ..rule import GroupCoefficients, step_coefficients
from .build import kernel, unavailable_reason

PARAM_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""Parameter dtypes the kernel steps (its ``ParamType``)."""

F32, BF16, BF16_STOCHASTIC, F16, TREE, FLOAT8 = range(6)
"""The kernel's ``MomentKind``: float32, bfloat16 (to nearest, or stochastically rounded),
float16, the dynamic-tree 8-bit code, the blockwise 8-bit float code."""

ROUNDING_CODES = {"nearest": 0, "kahan": 1, "stochastic": 2}
"""How a bf16/fp16 parameter is written (its ``Rounding``)."""


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
        self.step_sizes.append(float(step_size))
        self.bc2_sqrts.append(float(bc2_sqrt))

    def run(
        self, module, dtype, kinds, rounding, c: GroupCoefficients, seed: int, noise: bool, table_ptrs: list[int]
    ) -> None:
        """Call the kernel; ``table_ptrs``: three addresses per moment (the tree code's bucket
        tables and values, zeros for the other kinds)."""
        if not self.params:
            return
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
            [c.maximize, c.coupled, c.decays, c.cautious, c.amsgrad],
            seed,
            noise,
            table_ptrs,
        )
        for original, work in self.write_back:
            original.copy_(work)


def stochastic_noise(seed: int, tensor: int, stream: int, first: int, n: int) -> torch.Tensor:
    """The noise (int64 in [0, 2^16)) the kernel adds before truncating to bf16, for elements
    ``first .. first + n`` of the ``tensor``-th parameter of a step with ``seed``; ``stream`` 0 is
    the parameter, 1-3 the moments (1 and 2 are the two halves of one hash). For tests of its
    distribution."""
    module = kernel()
    if module is None:
        raise RuntimeError(unavailable_reason())
    return torch.tensor(module.noise(seed, tensor, stream, first, n), dtype=torch.int64)
