"""Timing one optimizer step: median of many after a warm-up, contenders interleaved.

All contenders of one case (size, layout, dtype) step the *same* parameters and gradients,
each with its own optimizer state, and are timed in rounds (A B C ... A B C ...), so a
slow-down of the machine in the middle of a case hits every contender alike and the ratios
stay fair. When the states of all contenders would not fit in memory, they are timed one
after the other instead (``interleaved: false`` in the results).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass

import torch

from .peers import Contender


@dataclass
class Timing:
    """Step times of one contender, in milliseconds."""

    samples: list[float]
    state_bytes: int  # bytes of optimizer state tensors (not the 0-d step counters)
    state_dtypes: list[str]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        xs = sorted(self.samples)
        if len(xs) == 1:
            return xs[0]
        pos = q * (len(xs) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def make_params(shapes, dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[torch.nn.Parameter]:
    """Parameters ~ N(0, 0.02^2) with gradients ~ N(0, 1e-3^2), set once and reused every step."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device=device, dtype=dtype))
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device=device, dtype=dtype)
        params.append(p)
    return params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(opt: torch.optim.Optimizer, device: torch.device) -> float:
    """Milliseconds of one ``opt.step()`` (synchronized on CUDA)."""
    _sync(device)
    start = time.perf_counter()
    opt.step()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _stored(value: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold ``value``'s data: itself, or for a wrapper subclass (torchao's
    quantized optimizer states: uint8 codes, a float32 scale per block, a lookup table) its
    inner tensors, whose bytes are not ``numel() * element_size()`` of the wrapper."""
    if type(value) is not torch.Tensor and hasattr(value, "__tensor_flatten__"):
        names, _ = value.__tensor_flatten__()
        return [t for name in names for t in _stored(getattr(value, name))]
    return [value]


def state_bytes(opt: torch.optim.Optimizer) -> tuple[int, list[str]]:
    """Bytes of the per-element state tensors of ``opt`` (scalars such as ``step`` excluded)."""
    total, dtypes = 0, set()
    for per_param in opt.state.values():
        for value in per_param.values() if isinstance(per_param, dict) else ():
            if torch.is_tensor(value) and value.dim() > 0:
                for t in _stored(value):
                    total += t.numel() * t.element_size()
                    dtypes.add(str(t.dtype).replace("torch.", ""))
    return total, sorted(dtypes)


def time_case(
    contenders: list[Contender],
    params: list[torch.nn.Parameter],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    min_repeats: int,
    budget_s: float,
    rounds: int,
    interleave: bool,
    on_sample=lambda contender: None,
) -> dict[str, Timing | str]:
    """Time every contender on ``params``; a contender that raises gets its error message instead.

    Each contender gets ``min_repeats <= samples <= repeats`` timed steps, as many as fit in
    ``budget_s`` seconds (estimated from its warm-up), spread over ``rounds`` rounds.
    """
    results: dict[str, Timing | str] = {}

    def prepare(c: Contender):
        try:
            opt = c.make(params)
            warm = [time_step(opt, device) for _ in range(max(1, warmup))]
        except Exception as err:  # a peer that cannot run this case: report, don't crash
            results[c.label] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            return None
        estimate_ms = min(warm[-1], statistics.median(warm))
        n = int(min(repeats, max(min_repeats, budget_s * 1e3 / max(estimate_ms, 1e-3))))
        return opt, n

    def finish(c: Contender, opt, samples):
        nbytes, dtypes = state_bytes(opt)
        results[c.label] = Timing(samples, nbytes, dtypes)

    if interleave:
        prepared = {c.label: prepare(c) for c in contenders}
        samples: dict[str, list[float]] = {c.label: [] for c in contenders}
        for r in range(rounds):
            for c in contenders:
                if prepared[c.label] is None:
                    continue
                opt, n = prepared[c.label]
                todo = n * (r + 1) // rounds - n * r // rounds
                for _ in range(todo):
                    samples[c.label].append(time_step(opt, device))
                    on_sample(c)
        for c in contenders:
            if prepared[c.label] is not None:
                finish(c, prepared[c.label][0], samples[c.label])
        prepared.clear()
    else:
        for c in contenders:
            got = prepare(c)
            if got is None:
                continue
            opt, n = got
            xs = []
            for _ in range(n):
                xs.append(time_step(opt, device))
                on_sample(c)
            finish(c, opt, xs)
            del opt, got
            gc.collect()
    gc.collect()
    return results
