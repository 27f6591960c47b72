r"""The default task of ``decoupled compare``: the next character of English text, from the 8 before it.

Data: the English help texts bundled with CPython (``pydoc_data.topics``, the text of the
``charlm`` task, see :func:`decoupled.lab.charlm.load_text`), cut into 1024-character chunks that
a permutation drawn from the data seed deals 80 / 10 / 10 to train / validation / test. An
example is one position of a split: its 8 preceding characters (input) and the character there
(target). Each split keeps a seeded sample of its positions: 10,000 for training, 5,000 each
for validation and test.

Model: an MLP language model in the manner of Bengio et al. (2003): each of the 8 characters is
embedded in 16 dimensions, the 128 numbers go through two hidden layers of width 128
(linear, BatchNorm, ReLU) and a linear output layer over the 96 characters, followed by a
BatchNorm of the 96 logits (a learned gain and shift per character). Batch 64, 6 epochs
(942 steps), half an epoch of linear warmup, then a cosine to 0. Metric: bits per character.

Why this is the default (and not ``digits``): with 10,000 examples the model overfits within
6 epochs, so weight decay matters: too little decay costs up to 0.2 bits per character and too
much up to 0.9, and the best decay is a clear valley. Every measurement is on 5,000 characters,
so the seeds of one cell agree to about 0.013 bits/char (standard deviation), and the seeds'
optima of a row lie within 0.03-0.25 decade. On ``digits`` (359 validation images) they differ by
up to half a decade and the slopes' intervals straddle -0.5.

Why the output layer has a BatchNorm: every decayed matrix is then followed by a normalization,
as nearly every layer of the BatchNorm ResNets in Loshchilov & Hutter's experiments is. Such a
weight's scale does not change the function, so its decay only sets how fast its direction
moves, which is where decoupled decay frees wd from lr. An ordinary output layer is a true L2
penalty on the logits, whose balance point moves with lr in any convention; on this task, with
one, the lr-independent form's slope came out at +0.28 instead of -0.14 (``docs/compare.md``).

Default grid: peak lr 3e-3, 1e-2, 3e-2, 1e-1 (half-decade steps over the useful range); wd in
half-decade steps over each convention's valley, found by a scan on this task: L2 coefficient
1e-4 ... 1e-1; PyTorch's weight_decay 1e-2 ... 10 (the per-step decay lr·wd of the valley,
about 6e-3, needs wd from 0.06 to 2 across the lrs); lr-independent 3e-4 ... 1e-1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .charlm import VOCAB, TextTask, encode, load_text, split_chunks
from .tasks import Splits


def contexts(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position of ``ids`` that has ``context`` characters before it: ``(inputs (N, context), targets (N,))``."""
    if ids.numel() <= context:
        return ids.new_empty((0, context)), ids.new_empty((0,))
    return ids.unfold(0, context, 1)[:-1].contiguous(), ids[context:].contiguous()


class NextCharTask(TextTask):
    """Next character from the previous 8, MLP with BatchNorm on ``pydoc_data.topics``; bits per character."""

    name = "nextchar"
    description = (
        "next character of Python's English help texts (pydoc_data.topics) from the 8 before it: 10,000 training "
        "positions, 5,000 validation, 5,000 test (from separate 1024-character chunks); MLP with 16-dim character "
        "embeddings, 2 hidden layers of 128 (BatchNorm, ReLU), BatchNorm on the 96 logits; batch 64, 6 epochs, "
        "half an epoch of warmup + cosine; metric: bits per character"
    )
    epochs = 6
    batch_size = 64
    warmup_epochs = 0.5
    context = 8
    embed = 16
    width = 128
    n_train = 10_000
    n_eval = 5_000
    lrs = (3e-3, 1e-2, 3e-2, 1e-1)
    wds = {
        "adam_l2": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        "adamw": (1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0),
        "adamw_indep": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    }
    explain_defaults = {"lr": 3e-2, "adam_l2": 1e-3, "adamw": 0.2}

    _SIZE = ("context", "embed", "width", "n_train", "n_eval", "epochs", "batch_size", "warmup_epochs")

    def __init__(self, **overrides: Any) -> None:
        unknown = set(overrides) - set(self._SIZE)
        if unknown:
            raise TypeError(f"NextCharTask got unknown settings {sorted(unknown)}; it takes {', '.join(self._SIZE)}")
        for key, value in overrides.items():
            setattr(self, key, value)

    def data(self, seed: int) -> Splits:
        ids = encode(load_text())
        ranges = split_chunks(ids.numel(), seed=seed, fractions=(0.1, 0.1))
        pick = torch.Generator().manual_seed(seed)
        out = {}
        for split, spans in ranges.items():
            pairs = [contexts(ids[a:b], self.context) for a, b in spans]
            x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
            keep = torch.randperm(len(y), generator=pick)[: self.n_train if split == "train" else self.n_eval]
            out[split] = (x[keep], y[keep])
        return Splits(**out)

    def model(self) -> nn.Module:
        v, w = len(VOCAB), self.width
        return nn.Sequential(
            nn.Embedding(v, self.embed),
            nn.Flatten(),
            nn.Linear(self.context * self.embed, w, bias=False),
            nn.BatchNorm1d(w),
            nn.ReLU(),
            nn.Linear(w, w, bias=False),
            nn.BatchNorm1d(w),
            nn.ReLU(),
            nn.Linear(w, v, bias=False),
            nn.BatchNorm1d(v),
        )

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), **{k: getattr(self, k) for k in self._SIZE[:5]}}
