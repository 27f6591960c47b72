"""What a moment format is: how one moment tensor of one parameter is stored.

A moment (``exp_avg``, ``exp_avg_sq`` or ``max_exp_avg_sq``) always enters the update rule as
float32 values; a format decides how those values live between steps. It knows how to
allocate zeros, how to load a flat range of elements to float32 and store it back, how to
convert a whole tensor to and from its stored form, and which ``state`` keys it occupies, so
a checkpoint can say which format it holds.

Flat ranges are in the parameter's row-major (contiguous) element order; ``start`` and
``stop`` fall on multiples of :attr:`MomentFormat.block` (except ``stop`` at the end).

Memory: allocating zeros, encoding, decoding and converting between formats (:func:`transcode`)
work :data:`PIECE` elements at a time, so none of them holds a float32 copy of a whole
moment beyond what it returns (the first step and a checkpoint load then need the formats'
own state plus one piece of scratch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

SIGNED_MOMENTS = ("exp_avg",)
"""Moments that can be negative; the others (``exp_avg_sq``, ``max_exp_avg_sq``) are >= 0."""

PIECE = 1 << 18
"""Elements converted at a time by encode, decode and :func:`transcode` (1 MiB of float32 scratch)."""


class MomentFormat:
    """Base class of the moment formats (see :mod:`decoupled.formats`)."""

    name: str = ""
    block: int = 1
    """Chunk boundaries for :meth:`load`/:meth:`store` must be multiples of this (elements)."""

    def for_param(self, param: torch.Tensor) -> MomentFormat:
        """The format actually used for ``param`` (a format may leave small tensors to another)."""
        return self

    def keys(self, moment: str) -> tuple[str, ...]:
        """The ``state`` keys this format stores ``moment`` under."""
        raise NotImplementedError

    def holds(self, entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> bool:
        """Whether ``entry`` (one parameter's state) holds ``moment`` in this format."""
        raise NotImplementedError

    def check(self, entry: Mapping[str, Any], moment: str, param: torch.Tensor) -> str | None:
        """What is wrong with ``moment`` in ``entry`` for ``param``, or None when it is well formed.

        The message starts with the quoted state key (``"'exp_avg_q8' has shape ..."``); the
        caller inserts which parameter it belongs to after the key."""
        raise NotImplementedError

    def allocate(self, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        """Zero state for ``moment`` of ``param`` (contiguous, on the parameter's device), built
        without a float32 temporary."""
        raise NotImplementedError

    def empty(self, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        """Uninitialized state for ``moment`` of ``param``, for :meth:`store` to fill."""
        raise NotImplementedError

    def encode(self, values: torch.Tensor, param: torch.Tensor, moment: str) -> dict[str, torch.Tensor]:
        """The stored form of ``values`` (a tensor of the parameter's shape, any real dtype, any
        device), stored :data:`PIECE` elements at a time."""
        if values.numel() != param.numel():
            raise ValueError(f"{moment} has {values.numel()} elements; the parameter has {param.numel()}")
        entry = self.empty(param, moment)
        flat = values.reshape(-1)
        for start in range(0, param.numel(), PIECE):
            stop = min(start + PIECE, param.numel())
            piece = flat[start:stop].to(device=param.device, dtype=torch.float32, copy=True)
            self.store(entry, moment, start, stop, piece)
        return entry

    def decode(self, entry: Mapping[str, Any], param: torch.Tensor, moment: str) -> torch.Tensor:
        """``moment`` as a float32 tensor of the parameter's shape."""
        out = torch.empty(param.numel(), dtype=torch.float32, device=param.device)
        for start in range(0, param.numel(), PIECE):
            stop = min(start + PIECE, param.numel())
            self.load(entry, moment, start, stop, out[start:stop])
        return out.view(param.shape)

    def view(self, entry: Mapping[str, Any], moment: str, start: int, stop: int) -> torch.Tensor | None:
        """Elements ``start:stop`` of ``moment`` as a float32 view the update may write directly, or
        None when the stored form is not float32 (then :meth:`load` and :meth:`store` copy)."""
        return None

    def load(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, out: torch.Tensor) -> None:
        """Write elements ``start:stop`` of ``moment`` into ``out`` (float32, 1-D, length stop - start)."""
        raise NotImplementedError

    def store(self, entry: Mapping[str, Any], moment: str, start: int, stop: int, value: torch.Tensor) -> None:
        """Store ``value`` (float32, 1-D) as elements ``start:stop`` of ``moment``. ``value`` is
        the arena's scratch copy: a format may overwrite it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<moment format {self.name!r}>"


def check_tensors(
    entry: Mapping[str, Any], expected: Mapping[str, tuple[tuple[int, ...], torch.dtype, str]]
) -> str | None:
    """What is wrong with the tensors of ``entry`` under the keys of ``expected`` (key -> shape,
    dtype, what it holds), or None: the check of a blockwise format's stored tensors (the message
    starts with the quoted key, as :meth:`MomentFormat.check` says)."""
    for key, (shape, dtype, what) in expected.items():
        t = entry.get(key)
        if not isinstance(t, torch.Tensor):
            return f"'{key}' must be a tensor, got {type(t).__name__}"
        if tuple(t.shape) != shape:
            return (
                f"'{key}' has shape {tuple(t.shape)}, expected {shape} ({what}); the checkpoint "
                f"belongs to a model whose parameters differ from this one"
            )
        if t.dtype != dtype:
            return f"'{key}' has dtype {t.dtype}, expected {dtype} ({what})"
    return None


def transcode(
    entry: Mapping[str, Any], source: MomentFormat, target: MomentFormat, param: torch.Tensor, moment: str
) -> dict[str, torch.Tensor]:
    """``moment`` of ``entry`` (held in ``source``) in ``target``'s stored form, converted
    :data:`PIECE` elements at a time: peak memory is the target state plus one float32 piece
    (and the source's stored tensors, moved to the parameter's device if they are elsewhere),
    never a float32 copy of the whole moment."""
    out = target.empty(param, moment)
    local = {k: entry[k].to(param.device) for k in source.keys(moment)}
    numel = param.numel()
    scratch = torch.empty(min(PIECE, numel), dtype=torch.float32, device=param.device)
    for start in range(0, numel, PIECE):  # PIECE is a multiple of every format's block
        stop = min(start + PIECE, numel)
        source.load(local, moment, start, stop, scratch[: stop - start])
        target.store(out, moment, start, stop, scratch[: stop - start])
    return out
