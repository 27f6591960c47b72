"""Shared machinery for parity tests: parameter sets, deterministic gradients, side-by-side runs.

A *scenario* runs two optimizers over identical copies of the same parameters for ``steps``
steps with the same gradients, and checks parameters and every state tensor after each step.
Events make the run less friendly than a toy: a step where some gradients are None, an lr
change between steps, and several param groups with different hyperparameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# Where the scenarios' parameters live: the CPU, or a GPU with DECOUPLED_TEST_DEVICE=cuda
# (benchmarks/gpu_check.sh runs the parity tests that way on a lent GPU machine).
DEVICE = torch.device(os.environ.get("DECOUPLED_TEST_DEVICE", "cpu"))
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-7), torch.float64: dict(rtol=1e-12, atol=1e-14)}
STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def make_params(kind: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """Leaf parameters of a given kind, created from a fixed seed, on :data:`DEVICE`.

    ``basic``: a matrix and a vector. ``edge``: adds a zero-size tensor, a non-contiguous
    (transposed) matrix and a channels-last 4-D tensor. ``complex``: adds a complex matrix.
    """
    g = torch.Generator().manual_seed(1234)

    def leaf(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=dt).to(DEVICE).requires_grad_()

    params = [leaf(5, 3), leaf(7)]
    if kind in ("edge", "complex"):
        params += [
            leaf(0, 3),
            torch.randn(6, 4, generator=g, dtype=dtype).to(DEVICE).t().detach().requires_grad_(),
            torch.randn(2, 3, 4, 4, generator=g, dtype=dtype)
            .to(DEVICE, memory_format=torch.channels_last)
            .requires_grad_(),
        ]
    if kind == "complex":
        cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
        params.append(leaf(4, 3, dt=cdt))
    return params


def gradient(step: int, index: int, p: torch.Tensor) -> torch.Tensor:
    """A deterministic gradient with p's shape, dtype and strides."""
    gen = torch.Generator().manual_seed(10_000 * step + index)
    values = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    return torch.empty_like(p).copy_(values)


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.empty_like(p).copy_(p).detach().requires_grad_() for p in params]


def two_groups(params: list[torch.Tensor], weight_decay: float, lr: float | torch.Tensor = 1e-2) -> list[dict]:
    """Two groups with different lr, betas, eps and weight decay."""
    k = max(1, len(params) // 2)
    second_lr = lr * 0.3 if not isinstance(lr, torch.Tensor) else lr.clone() * 0.3
    return [
        {"params": params[:k], "lr": lr},
        {"params": params[k:], "lr": second_lr, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 2 * weight_decay},
    ]


@dataclass
class Events:
    none_grads: set[tuple[int, int]] = field(default_factory=lambda: {(3, 0), (10, 1), (11, 0)})
    lr_change_step: int | None = 20
    lr_factor: float = 0.25


def scale_lr(group: dict, factor: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].mul_(factor)
    else:
        group["lr"] *= factor


def assert_same(
    pa, pb, oa, ob, step: int, exact: Callable[[torch.Tensor], bool] = lambda p: False, tol: dict | None = None
) -> None:
    """Parameters and every state tensor agree: bit for bit where ``exact(param)``, else within
    ``tol`` (default :data:`TOL` for the dtype)."""
    for i, (a, b) in enumerate(zip(pa, pb)):
        tol_i = dict(rtol=0, atol=0) if exact(a) else (tol or TOL[real_dtype(a.dtype)])
        sa, sb = oa.state.get(a, {}), ob.state.get(b, {})
        assert set(sa) == set(sb), f"state keys of param {i} differ: {sorted(sa)} vs {sorted(sb)}"
        for what, x, y in [("param", a, b), *((key, sa[key], sb[key]) for key in sa)]:
            where = f"{what} of param {i} after step {step}"
            torch.testing.assert_close(x, y, **tol_i, msg=lambda m, where=where: f"{where}: {m}")


def run_side_by_side(
    make_a: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    make_b: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    params: list[torch.Tensor],
    steps: int = 50,
    events: Events | None = None,
    check: Callable = assert_same,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    events = events or Events()
    pa, pb = clone_params(params), clone_params(params)
    oa, ob = make_a(pa), make_b(pb)
    for step in range(steps):
        for i, (a, b) in enumerate(zip(pa, pb)):
            if (step, i) in events.none_grads:
                a.grad = b.grad = None
            else:
                g = gradient(step, i, a)
                a.grad, b.grad = g.clone(), g.clone()
        if step == events.lr_change_step:
            for group in [*oa.param_groups, *ob.param_groups]:
                scale_lr(group, events.lr_factor)
        oa.step()
        ob.step()
        check(pa, pb, oa, ob, step)
    return oa, ob
