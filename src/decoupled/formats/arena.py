"""The arena executor: the fp32 update rule of any backend on state stored in any format.

The update rule and every backend work on float32 tensors. For a group with a non-default
moment format or parameter rounding, this executor streams each parameter through a small
float32 *arena* (``CHUNK`` elements per buffer, sized to stay in the CPU's caches): it loads
a range of elements of the parameter, gradient and moments to float32, runs the group's
backend once over all ranges gathered in the arena (one call for many small tensors), then
stores the results back in their formats. Memory traffic to DRAM is then the formats' own
bytes; the float32 copies live in cache.

Ranges already held in float32 (an fp32 parameter, its gradient, an ``fp32`` moment) are
passed to the backend as views and updated in place, without a copy.

Parameter writes follow ``rounding`` (:mod:`decoupled.formats.rounding`): ``nearest`` as
torch does, ``stochastic`` (bf16), or ``kahan``, which keeps the rounding error in
``state["kahan_comp"]`` and adds it back on the next load.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from ..backends import Backend
from ..rule import GroupCoefficients
from .base import MomentFormat
from .executor import Executor
from .rounding import COMPENSATION_KEY, is_low_precision, stochastic_round_

CHUNK = 1 << 18
"""Elements per arena buffer (1 MiB of float32). A multiple of every format's block."""


@dataclass
class _Segment:
    index: int  # which parameter
    start: int
    stop: int
    flat: torch.Tensor  # the parameter's (contiguous) storage, flattened
    fmt: MomentFormat  # the moment format used for this parameter
    param: torch.Tensor  # float32 values the backend updates (arena slice or direct view)
    moments: dict[str, tuple[torch.Tensor, bool]]  # moment -> (float32 values, stored through the format?)


class _Arena:
    def __init__(self, device: torch.device, size: int, moment_names: tuple[str, ...]) -> None:
        empty = lambda: torch.empty(size, dtype=torch.float32, device=device)  # noqa: E731
        self.size, self.used = size, 0
        self.param, self.grad = empty(), empty()
        self.moments = {name: empty() for name in moment_names}

    def take(self, n: int) -> int:
        offset, self.used = self.used, self.used + n
        return offset


def run(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict],
    c: GroupCoefficients,
    *,
    moments: MomentFormat,
    rounding: str,
    backend: Backend,
    chunk: int | None = None,
) -> None:
    """One step of ``params`` (plain tensors, whose ``state["step"]`` was already incremented)
    with formatted state, the float32 update run by ``backend`` over the arena's buffers.

    ``chunk``: elements per arena buffer (default :data:`CHUNK`, read at call time)."""
    chunk = chunk or CHUNK
    names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if c.amsgrad else ("exp_avg", "exp_avg_sq")
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        by_device[p.device].append(i)
    for device, indices in by_device.items():
        _Runner(backend, params, grads, states, c, moments, rounding, names, device, chunk).run(indices)


class _Runner:
    def __init__(self, backend, params, grads, states, c, moments, rounding, names, device, chunk) -> None:
        self.backend, self.c, self.moments, self.rounding, self.names = backend, c, moments, rounding, names
        self.params, self.grads, self.states = params, grads, states
        self.arena = _Arena(device, chunk, names)
        self.pending: list[_Segment] = []
        self.grad_views: list[torch.Tensor] = []

    def run(self, indices: list[int]) -> None:
        write_back = []
        for i in indices:
            param = self.params[i]
            work = param if param.is_contiguous() else param.contiguous()
            if work is not param:
                write_back.append((param, work))
            flat, grad = work.view(-1), self.grads[i].contiguous().view(-1)
            fmt = self.moments.for_param(param)
            step = max(self.arena.size // fmt.block * fmt.block, fmt.block)
            for start in range(0, flat.numel(), step):
                stop = min(start + step, flat.numel())
                if self.arena.used + (stop - start) > self.arena.size:
                    self.flush()
                self._load(i, flat, grad, fmt, start, stop)
        self.flush()
        for param, work in write_back:
            param.copy_(work)

    def _direct_param(self, param: torch.Tensor) -> bool:
        return param.dtype == torch.float32

    def _load(self, i: int, flat: torch.Tensor, grad: torch.Tensor, fmt: MomentFormat, start: int, stop: int) -> None:
        n, state, arena = stop - start, self.states[i], self.arena
        offset = arena.take(n)
        if self._direct_param(flat):
            p = flat[start:stop]
        else:
            p = arena.param[offset : offset + n].copy_(flat[start:stop])
            if self.rounding == "kahan" and COMPENSATION_KEY in state:
                p.add_(state[COMPENSATION_KEY].view(-1)[start:stop])
        g = grad[start:stop]
        if g.dtype != torch.float32:
            g = arena.grad[offset : offset + n].copy_(g)
        moments = {}
        for name in self.names:
            direct = fmt.view(state, name, start, stop)
            if direct is None:
                buf = arena.moments[name][offset : offset + n]
                fmt.load(state, name, start, stop, buf)
                moments[name] = (buf, True)
            else:
                moments[name] = (direct, False)
        self.pending.append(_Segment(i, start, stop, flat, fmt, p, moments))
        self.grad_views.append(g)

    def flush(self) -> None:
        if not self.pending:
            return
        segs = self.pending
        m = lambda name: [s.moments[name][0] for s in segs]  # noqa: E731
        self.backend.step(
            [s.param for s in segs],
            self.grad_views,
            m("exp_avg"),
            m("exp_avg_sq"),
            m("max_exp_avg_sq") if self.c.amsgrad else [],
            [self.states[s.index]["step"] for s in segs],
            self.c,
        )
        for s in segs:
            state = self.states[s.index]
            if not self._direct_param(s.flat):
                self._write_param(s.flat[s.start : s.stop], s.param, state, s.start, s.stop)
            for name, (values, stored) in s.moments.items():
                if stored:
                    s.fmt.store(state, name, s.start, s.stop, values)
        self.pending, self.grad_views, self.arena.used = [], [], 0

    def _write_param(self, dst: torch.Tensor, value: torch.Tensor, state: dict, start: int, stop: int) -> None:
        if self.rounding == "stochastic" and dst.dtype == torch.bfloat16:
            stochastic_round_(dst, value, scratch=True)  # value: the arena's copy
        elif self.rounding == "kahan" and is_low_precision(dst):
            dst.copy_(value)
            state[COMPENSATION_KEY].view(-1)[start:stop].copy_(value.sub_(dst))
        else:
            dst.copy_(value)


EXECUTOR = Executor(
    "arena",
    run,
    "float32 buffers in cache: load, the backend's update, store (any format, any backend)",
    auto_rank={"*": 100},
)
