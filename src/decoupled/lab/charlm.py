r"""A character-level language model: a small decoder-only transformer on Python's help texts.

Data: the English text of the help topics bundled with CPython (``pydoc_data.topics.topics``,
what ``help("assert")`` prints), the topics joined in sorted name order, keeping newlines and
printable ASCII (codes 32-126; the few non-ASCII characters, such as curly quotes, are
dropped). That is about 464k characters on Python 3.11 (the text, and therefore the numbers,
change a little between Python versions; :meth:`CharLMTask.settings` records the length and a
hash). The vocabulary is fixed: newline plus the 95 printable characters, 96 symbols, so an
untrained model scores about :math:`\log_2 96 = 6.58` bits per character.

Split: the text is cut into contiguous chunks of 1024 characters; a permutation drawn from the
run's data seed gives 5% of the chunks to validation, 5% to test and the rest (90%) to
training. Each split keeps its chunks in text order, concatenated, and is cut into
non-overlapping windows of ``context`` characters (inputs) with the next character of each
position as the target. Chunks rather than one 90/5/5 cut of the text, because the topics are
sorted by name: a single cut would test on a few topics only (``while``, ``with``, ``yield``).

Model: a decoder-only transformer in plain torch: token and learned position embeddings
(``d_model`` wide), ``n_layer`` pre-LayerNorm blocks (causal multi-head self-attention through
:func:`torch.nn.functional.scaled_dot_product_attention`, then a GELU MLP of width
``4 * d_model``, each added to the residual stream), a final LayerNorm, and an output layer tied
to the token embedding (the logits are ``h @ E^T``, as in GPT-2 and nanoGPT: fewer parameters,
and the embedding is then also the output projection). No dropout: weight decay is the only
regularizer, which is what ``compare`` varies. Initialization as GPT-2: weights
:math:`\mathcal N(0, 0.02^2)`, residual output projections scaled by :math:`1/\sqrt{2 n_{layer}}`,
biases zero. Defaults: context 64, ``d_model`` 64, 2 layers of 4 heads, about 110k parameters.

Weight decay follows the lab's rule (:func:`decoupled.param_groups` with its defaults): every
matrix decays, i.e. the attention and MLP matrices *and* the token and
position embeddings (as in nanoGPT's ``configure_optimizers``; the tied token embedding is the
output layer too); biases and LayerNorm gains and shifts do not.

Metric: ``bpc``, the mean cross-entropy of the next character in bits (lower is better), reported
as "bits/char"; :meth:`CharLMTask.evaluate` also returns ``loss`` (the same in nats) and
``error`` (the fraction of characters whose most likely prediction is wrong).

Default grid (3 lrs x 4 wds per convention = 36 runs of 2 epochs: 408 steps of 32 windows of
64 characters, 82 steps of linear warmup, then a cosine to 0; about 12 s per run with two runs
side by side on an idle 2-core machine). The peak lrs 3e-3, 1e-2, 3e-2 bracket the best one
(1e-2; 3e-2 is past it: the loss stalls). Over a run the schedule multipliers sum to
:math:`S = \sum_t \eta_t = 205` steps, so decay alone would shrink a weight by ``exp(-wd * S)``
for ``adamw_indep`` and by ``exp(-lr * wd * S)`` for ``adamw``. Each axis spans "no visible
effect" to "too strong" in its convention's units (found by a scan at lr 1e-2 on this task, with
d_model 48):

* ``adamw_indep``: 1e-4 ... 1e-1 in factors of 10 (total shrink exp(-0.02) ... exp(-20)); at
  lr 1e-2 the scan was flat up to 1e-3, 0.08 bits/char worse at 1e-2, 0.8 worse at 1e-1.
* ``adamw``: 1e-2 ... 10 in factors of 10, the same strengths at lr 1e-2 (``wd ~ strength / lr``).
* ``adam_l2``: 1e-5 ... 1e-2 in factors of 10; its decay is divided by ``sqrt(v)``, so the
  range had to be found by the scan: flat at 1e-5, 0.08 bits/char worse at 1e-3, 0.8 worse at 1e-2.

The runs are short (about 2 passes over the text) and the model is far from fitting it, so
weight decay has little to regularize here: expect it to matter mainly where it becomes too
strong, and that edge is what moves, or not, with the learning rate.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .tasks import Splits, Task

#: The fixed vocabulary: newline, then the printable ASCII characters (space to ``~``).
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
_INDEX = {c: i for i, c in enumerate(VOCAB)}


def load_text() -> str:
    """The help topics bundled with CPython, joined in sorted name order, printable ASCII only."""
    from pydoc_data.topics import topics

    text = "".join(topics[name] for name in sorted(topics))
    return "".join(c for c in text if c in _INDEX)


def encode(text: str) -> torch.Tensor:
    """Character indices into :data:`VOCAB` (int64); characters outside it are an error."""
    return torch.tensor([_INDEX[c] for c in text], dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    return "".join(VOCAB[i] for i in ids.tolist())


def split_chunks(
    n_chars: int, *, seed: int, chunk: int = 1024, fractions: tuple[float, float] = (0.05, 0.05)
) -> dict[str, list[tuple[int, int]]]:
    """Character ranges ``[start, stop)`` of each split: contiguous chunks assigned by a seeded permutation.

    ``fractions`` are the validation and test shares of the chunks (at least one chunk each); the
    rest is training. Each split's ranges are returned in text order. The last chunk may be short.
    """
    starts = list(range(0, n_chars, chunk))
    n = len(starts)
    n_val = max(1, round(n * fractions[0]))
    n_test = max(1, round(n * fractions[1]))
    if n_val + n_test >= n:
        raise ValueError(f"{n_chars} characters in chunks of {chunk} are too few to split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    owner = {}
    for rank, i in enumerate(perm):
        owner[i] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return {
        split: [(starts[i], min(starts[i] + chunk, n_chars)) for i in range(n) if owner[i] == split]
        for split in ("train", "val", "test")
    }


def windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping ``(inputs, targets)`` windows of ``context`` characters; targets are shifted by one."""
    n = (ids.numel() - 1) // context
    if n < 1:
        raise ValueError(f"{ids.numel()} characters are too few for a window of {context}")
    x = ids[: n * context].reshape(n, context)
    y = ids[1 : n * context + 1].reshape(n, context)
    return x.contiguous(), y.contiguous()


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharTransformer(nn.Module):
    """Decoder-only transformer over characters; ``forward(ids (B, T)) -> logits (B, T, vocab)``."""

    def __init__(self, vocab: int, context: int, d_model: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} is longer than the context {self.context}")
        h = self.tok(ids) + self.pos.weight[:t]
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h) @ self.tok.weight.T  # output layer tied to the token embedding


class TextTask(Task):
    """A task on the text of :func:`load_text`: metric bits per character ("bits/char"), and the
    text's length and hash recorded in :meth:`settings` (the text changes between Python versions)."""

    metric = "bpc"
    metric_labels = {"bpc": "bits/char"}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
        """``bpc`` (bits per character), ``loss`` (nats per character) and ``error`` (wrong argmax fraction)."""
        result = super().evaluate(model, x, y, batch_size=batch_size)
        return {"bpc": result["loss"] / math.log(2), **result}

    def settings(self) -> dict[str, Any]:
        text = load_text()
        return {
            **super().settings(),
            "text_chars": len(text),
            "text_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
        }


class CharLMTask(TextTask):
    """Character-level transformer LM on ``pydoc_data.topics``; metric: bits per character.

    The model's size and the context can be changed per instance (``CharLMTask(d_model=32,
    n_layer=1, context=32)``), e.g. for quick runs.
    """

    name = "charlm"
    description = (
        "character-level language model on the English help texts bundled with Python (pydoc_data.topics, "
        "~464k printable-ASCII characters, 1024-character chunks split 90/5/5), decoder-only transformer "
        "(context 64, d_model 64, 2 pre-LayerNorm layers of 4 heads, tied output layer, ~110k parameters), "
        "batch 32 windows, 2 epochs (408 steps), 0.4 epoch warmup + cosine; metric: test bits per character"
    )
    epochs = 2
    batch_size = 32
    warmup_epochs = 0.4
    context = 64
    d_model = 64
    n_layer = 2
    n_head = 4
    chunk = 1024
    lrs = (3e-3, 1e-2, 3e-2)
    wds = {
        "adam_l2": (1e-5, 1e-4, 1e-3, 1e-2),
        "adamw": (1e-2, 0.1, 1.0, 10.0),
        "adamw_indep": (1e-4, 1e-3, 1e-2, 1e-1),
    }
    explain_defaults = {"lr": 1e-2, "adam_l2": 1e-4, "adamw": 0.1}

    _SIZE = ("context", "d_model", "n_layer", "n_head", "chunk", "epochs", "batch_size", "warmup_epochs")

    def __init__(self, **overrides: Any) -> None:
        unknown = set(overrides) - set(self._SIZE)
        if unknown:
            raise TypeError(f"CharLMTask got unknown settings {sorted(unknown)}; it takes {', '.join(self._SIZE)}")
        for key, value in overrides.items():
            setattr(self, key, value)

    def data(self, seed: int) -> Splits:
        text = load_text()
        ids = encode(text)
        ranges = split_chunks(ids.numel(), seed=seed, chunk=self.chunk)
        pairs = {
            split: windows(torch.cat([ids[a:b] for a, b in spans]), self.context) for split, spans in ranges.items()
        }
        return Splits(train=pairs["train"], val=pairs["val"], test=pairs["test"])

    def model(self) -> nn.Module:
        return CharTransformer(len(VOCAB), self.context, self.d_model, self.n_layer, self.n_head)

    def settings(self) -> dict[str, Any]:
        sizes = ("context", "d_model", "n_layer", "n_head", "chunk")
        return {**super().settings(), **{k: getattr(self, k) for k in sizes}}
