"""Handwritten digits with a BatchNorm MLP (``--task digits``; the default task is ``nextchar``, whose
measurements are far less noisy: see :mod:`decoupled.lab.nextchar`).

Data: the 1797 8x8 grey-level digit images bundled with scikit-learn
(:func:`sklearn.datasets.load_digits`), pixel values scaled to [0, 1], split 60 / 20 / 20 into
train (1078), validation (359) and test (360) with the run's base seed. Training batches are
shifted by a random whole pixel in each direction (-1, 0 or +1, zero fill), one shift per image.

Model: a 4-layer MLP, 64 -> 256 -> 256 -> 256 -> 10, with BatchNorm and ReLU after each of the
three hidden linear layers (those have no bias: BatchNorm's shift replaces it). Batch 64,
50 epochs (850 steps), one epoch of linear warmup then a cosine to zero.

Default grid (5 lrs x 6 wds per convention = 90 runs of 50 epochs, about 2 s each on one core):
each weight-decay axis spans the range from "no visible effect" to "too strong" in its
convention's units (found by a scan on this task). Over a run, decay alone would shrink a weight
by ``exp(-wd * S)`` for ``adamw_indep``, with ``S = sum_t eta_t ~ 430`` steps, and by
``exp(-lr * wd * S)`` for ``adamw``:

* ``adamw_indep``: 1e-5 ... 1e-2 in factors of 4 (total shrink exp(-0.004) ... exp(-4.3)).
* ``adamw``: 1e-2 ... 10 in factors of 4: the same strengths need ``wd ~ strength / lr``, so
  the axis is shifted by 1/lr and widened by the 2 decades of lr.
* ``adam_l2``: 1e-4 ... 10 in factors of 10; the decay is divided by ``sqrt(v)``, whose scale
  depends on the gradients, so the useful range is wide and unknown in advance.
"""

from __future__ import annotations

import torch
from torch import nn

from .tasks import Splits, Task


def shift_images(x: torch.Tensor, side: int, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each flattened ``side x side`` image in ``x`` by a random whole number of pixels.

    Each image moves by ``(dy, dx)`` drawn uniformly from ``{-max_shift..max_shift}^2``; pixels
    shifted in are zero (no wrap-around).
    """
    n = x.shape[0]
    s = max_shift
    imgs = x.reshape(n, side, side)
    padded = torch.nn.functional.pad(imgs, (s, s, s, s))
    offsets = torch.randint(0, 2 * s + 1, (2, n), generator=generator)
    rows = offsets[0][:, None] + torch.arange(side)[None, :]  # (n, side)
    cols = offsets[1][:, None] + torch.arange(side)[None, :]
    batch = torch.arange(n)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]
    return out.reshape(n, side * side)


class DigitsTask(Task):
    """scikit-learn digits, 4-layer BatchNorm MLP of width 256, random 1-pixel shifts."""

    name = "digits"
    description = (
        "scikit-learn handwritten digits (8x8, 1797 images, 60/20/20 split), 4-layer MLP of width 256 "
        "with BatchNorm, random 1-pixel shifts, batch 64, 50 epochs, 1 epoch warmup + cosine"
    )
    epochs = 50
    batch_size = 64
    warmup_epochs = 1.0
    width = 256
    depth = 4
    lrs = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    wds = {
        "adam_l2": (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0),
        "adamw": (1e-2, 4e-2, 0.16, 0.63, 2.5, 10.0),
        "adamw_indep": (1e-5, 4e-5, 1.6e-4, 6.3e-4, 2.5e-3, 1e-2),
    }
    metric = "error"

    def data(self, seed: int) -> Splits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        return Splits.from_tensors(x, y, seed=seed)

    def model(self) -> nn.Module:
        layers: list[nn.Module] = []
        width_in = 64
        for _ in range(self.depth - 1):
            layers += [nn.Linear(width_in, self.width, bias=False), nn.BatchNorm1d(self.width), nn.ReLU()]
            width_in = self.width
        layers.append(nn.Linear(width_in, 10))
        return nn.Sequential(*layers)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return shift_images(x, 8, generator)

    def settings(self) -> dict:
        return {**super().settings(), "width": self.width, "depth": self.depth}
