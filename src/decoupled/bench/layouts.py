"""Parameter layouts the benchmark times: one flat tensor, or a GPT-2-shaped list of tensors.

A layout is a list of shapes. :func:`gpt2` scales GPT-2's architecture (token and position
embeddings, 12 transformer blocks of attention and MLP matrices with their biases and layer
norms, a final layer norm: 148 tensors) to a target parameter count, keeping GPT-2 small's
proportions (vocabulary = 65.4 x width, context = 4/3 x width), so the list has the same mix
of a few huge matrices and many small vectors that a real model hands the optimizer.
"""

from __future__ import annotations

import math

import torch

Shape = tuple[int, ...]

LAYOUTS = ("single", "gpt2")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# GPT-2 small: vocab 50257, context 1024, width 768, 12 layers (124.4M parameters).
_VOCAB_PER_WIDTH = 50257 / 768
_CONTEXT_PER_WIDTH = 1024 / 768
_LAYERS = 12


def single(n: int) -> list[Shape]:
    """One flat tensor of ``n`` elements."""
    return [(n,)]


def gpt2_shapes(width: int, vocab: int, context: int, layers: int = _LAYERS) -> list[Shape]:
    """The parameter shapes of a GPT-2 model (as in nanoGPT / Hugging Face's GPT2LMHeadModel)."""
    d = width
    shapes: list[Shape] = [(vocab, d), (context, d)]  # wte (tied with lm_head), wpe
    for _ in range(layers):
        shapes += [
            (d,), (d,),                # ln_1 weight, bias
            (d, 3 * d), (3 * d,),      # attn.c_attn weight, bias
            (d, d), (d,),              # attn.c_proj weight, bias
            (d,), (d,),                # ln_2 weight, bias
            (d, 4 * d), (4 * d,),      # mlp.c_fc weight, bias
            (4 * d, d), (d,),          # mlp.c_proj weight, bias
        ]  # fmt: skip
    shapes += [(d,), (d,)]  # ln_f weight, bias
    return shapes


def gpt2(n: int) -> list[Shape]:
    """GPT-2's 148 tensors at about ``n`` parameters in total (width rounded to a multiple of 16)."""
    # total ~= (vocab + context) * d + layers * 12 * d^2 (the biases and norms are O(d))
    per_d2 = _VOCAB_PER_WIDTH + _CONTEXT_PER_WIDTH + 12 * _LAYERS
    width = max(16, 16 * round(math.sqrt(n / per_d2) / 16))
    return gpt2_shapes(width, round(_VOCAB_PER_WIDTH * width), round(_CONTEXT_PER_WIDTH * width))


def shapes_for(layout: str, n: int) -> list[Shape]:
    """The shapes of ``layout`` (one of :data:`LAYOUTS`) at about ``n`` parameters."""
    if layout == "single":
        return single(n)
    if layout == "gpt2":
        return gpt2(n)
    raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")


def numel(shapes: list[Shape]) -> int:
    """Total number of elements of ``shapes``."""
    return sum(math.prod(s) for s in shapes)


def parse_size(text: str) -> int:
    """``"16M"`` -> 16 * 2**20, ``"1k"`` -> 1024, ``"1000"`` -> 1000."""
    text = text.strip()
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    if text and text[-1].lower() in units:
        return int(float(text[:-1]) * units[text[-1].lower()])
    return int(text)


def format_size(n: int) -> str:
    """A parameter count as ``"16.0M"`` (powers of 2**10)."""
    for unit, scale in (("G", 2**30), ("M", 2**20), ("k", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def element_bytes(dtype: str) -> int:
    """Bytes of one parameter (or gradient) element of ``dtype``, a key of :data:`DTYPES`."""
    return DTYPES[dtype].itemsize


def working_set_bytes(numel: int, dtype: str, state_bytes_per_param: float) -> float:
    """Bytes one step touches, each counted once: parameters, gradients and optimizer state.

    When this fits in the last-level cache, repeated steps can run from the cache, and their
    effective GB/s are not a measure of memory bandwidth."""
    return numel * (2 * element_bytes(dtype) + state_bytes_per_param)
