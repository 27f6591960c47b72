"""Writes tests/data/pickled-optimizers-0.1.0.pt: whole optimizers pickled by ``torch.save(opt)``
with decoupled 0.1.0 (the layout before issue 10), for tests/test_dropin.py to unpickle and step.

Run once with the old code on the path, from the repository root::

    PYTHONPATH=<checkout of the old code>/src python tests/data/make_pickled_optimizers.py

The file holds ``{"versions": {...}, "optimizers": {name: optimizer}}``; each optimizer took
three steps with the gradients of :func:`grads` (the test continues from step 3).
"""

from __future__ import annotations

import os
import sys

import torch

import decoupled

PATH = os.path.join(os.path.dirname(__file__), "pickled-optimizers-0.1.0.pt")

# name -> (class name, options, parameter dtype)
CONFIGS = {
    "adamw": ("AdamW", dict(lr=1e-2, weight_decay=0.1), torch.float32),
    "adamw-fused": ("AdamW", dict(lr=1e-2, weight_decay=0.1, fused=True), torch.float32),
    "adamw-foreach-amsgrad": ("AdamW", dict(lr=1e-2, weight_decay=0.1, foreach=True, amsgrad=True), torch.float32),
    "adam-l2-loop": ("Adam", dict(lr=1e-2, weight_decay=0.1, foreach=False), torch.float32),
    "adamw-lr-independent": ("AdamW", dict(lr=1e-2, weight_decay=1e-3, lr_independent_decay=True), torch.float32),
    "adamw-8bit": ("AdamW", dict(lr=1e-2, moments="8bit"), torch.float32),
    "adamw-bf16-kahan": ("AdamW", dict(lr=1e-2, moments="bf16", param_rounding="kahan"), torch.bfloat16),
}


def parameters(dtype: torch.dtype, big: bool) -> list[torch.Tensor]:
    """A matrix (64 x 64 when ``big``: the smallest that 8-bit moments quantize) and a vector."""
    g = torch.Generator().manual_seed(0)
    shape = (64, 64) if big else (5, 3)
    return [
        torch.randn(*shape, generator=g).to(dtype).requires_grad_(),
        torch.randn(7, generator=g).to(dtype).requires_grad_(),
    ]


def grads(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]


def build(name: str) -> torch.optim.Optimizer:
    cls, options, dtype = CONFIGS[name]
    ps = parameters(dtype, big=options.get("moments") == "8bit")
    opt = getattr(decoupled, cls)([{"params": ps[:1]}, {"params": ps[1:], "lr": 3e-3}], **options)
    for step in range(3):
        for p, g in zip(ps, grads(step, ps)):
            p.grad = g
        opt.step()
    return opt


if __name__ == "__main__":
    versions = {"decoupled": decoupled.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    torch.save({"versions": versions, "optimizers": {name: build(name) for name in CONFIGS}}, PATH)
    print(f"wrote {PATH} with {versions}")
