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


def _counted_by_kernel(step: torch.Tensor) -> bool:
    """Whether the kernel can add 1 to ``step`` (a plain 0-d float32 or float64 CPU tensor that
    does not require grad: torch refuses the in-place add to one that does, and so do we)."""
    return (
        type(step) is torch.Tensor
        and step.dtype in (torch.float32, torch.float64)
        and step.is_cpu
        and step.dim() == 0
        and not step.requires_grad
    )


def draw_seed() -> int:
    """A uniformly random 64-bit seed from torch's default generator (one per step call)."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))


class Call:
    """One kernel call (tensors of one group, parameter dtype and moment kind): the tensors are
    gathered by :meth:`add`, one at a time, and turned into the kernel's pointer lists by
    :meth:`run`, one list at a time.

    Tensors that are not contiguous go through contiguous copies, written back after the call.
    With ``count_steps``, the step counts given are the state's tensors, incremented in :meth:`run`."""

    def __init__(self, n_moments: int, *, count_steps: bool = False) -> None:
        self.count_steps = count_steps  # the steps given are the state's tensors, counted in run
        self.ids: list[int] = []
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.comps: list[torch.Tensor | None] = []
        self.moments: list[list[torch.Tensor]] = [[] for _ in range(n_moments)]
        self.scales: list[list[torch.Tensor | None]] = [[] for _ in range(n_moments)]
        self.steps: list[float | torch.Tensor] = []
        self.in_place: list[bool] = []
        self.keep: list[torch.Tensor] = []  # contiguous copies, alive until the kernel returns
        self.write_back: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(
        self, index: int, param, grad, comp, moments: list, step: float | torch.Tensor, *, in_place: bool = False
    ) -> None:
        """Tensor ``index`` of the step: its parameter, gradient, Kahan buffer (or None), moments
        as (stored, block scales or None) and step count: a number already incremented, or with
        ``count_steps`` the state's ``step`` tensor, to which :meth:`run` adds 1 just before the
        update. With ``in_place``, its tensors are taken in memory order as they are (the caller
        checked that they share one dense layout)."""
        self.ids.append(index)
        self.params.append(param)
        self.grads.append(grad)
        self.comps.append(comp)
        for j, (stored, scale) in enumerate(moments):
            self.moments[j].append(stored)
            self.scales[j].append(scale)
        self.steps.append(step)
        self.in_place.append(in_place)

    def _flat(self, t: torch.Tensor | None, written: bool = True, in_place: bool = False) -> int:
        """The address of ``t``'s elements in row-major order (a contiguous copy if needed; 0 for
        None), or with ``in_place`` of its memory as it is."""
        if t is None:
            return 0
        if in_place or t.is_contiguous():
            return t.data_ptr()
        work = t.contiguous()
        self.keep.append(work)
        if written:
            self.write_back.append((t, work))
        return work.data_ptr()

    def _pointers(self, tensors: list, written: bool = True) -> list[int]:
        flat = self._flat
        if True in self.in_place:
            return [flat(t, written, d) for t, d in zip(tensors, self.in_place)]
        # the usual case: each tensor contiguous, its address as it is
        return [t.data_ptr() if t is not None and t.is_contiguous() else flat(t, written) for t in tensors]

    def _count_steps(self, module) -> list[float]:
        """The step counts; with ``count_steps``, the state's tensors incremented first: 0-d
        float32 and float64 CPU tensors by the kernel in one call (torch._foreach_add_ takes
        about 1 us a tensor), any other (a DTensor, another dtype) by torch."""
        if not self.count_steps:
            return self.steps  # type: ignore[return-value]  # (numbers, counted already)
        steps: list[torch.Tensor] = self.steps  # type: ignore[assignment]
        fast = [_counted_by_kernel(t) for t in steps]
        slow = [t for t, f in zip(steps, fast) if not f]
        if slow:
            torch._foreach_add_(slow, 1.0)
        counts = [t for t, f in zip(steps, fast) if f]
        new = iter(module.count_steps([t.data_ptr() for t in counts], [t.dtype == torch.float64 for t in counts]))
        return [next(new) if f else float(t) for t, f in zip(steps, fast)]

    @staticmethod
    def _step_coefficients(c: GroupCoefficients, steps: list[float]) -> tuple[list[float], list[float]]:
        """Per tensor, (-lr / (1 - beta1^t), sqrt(1 - beta2^t)), computed once per step count."""
        by_step = {}
        for step in set(steps):  # the tensors of a group mostly share their step count
            step_size, bc2_sqrt = step_coefficients(c, step)
            by_step[step] = (float(step_size), float(bc2_sqrt))
        return [by_step[s][0] for s in steps], [by_step[s][1] for s in steps]

    def run(
        self, module, dtype, kinds, rounding, c: GroupCoefficients, seed: int, noise: bool, table_ptrs: list[int]
    ) -> None:
        """Call the kernel; ``table_ptrs``: three addresses per moment (the tree code's bucket
        tables and values, zeros for the other kinds)."""
        if not self.params:
            return
        step_sizes, bc2_sqrts = self._step_coefficients(c, self._count_steps(module))
        module.step(
            PARAM_TYPES[dtype],
            ROUNDING_CODES[rounding],
            list(kinds),
            self._pointers(self.params),
            self._pointers(self.grads, written=False),
            self._pointers(self.comps),
            [self._pointers(m) for m in self.moments],
            [self._pointers(s) for s in self.scales],
            [t.numel() for t in self.params],
            self.ids,
            step_sizes,
            bc2_sqrts,
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
