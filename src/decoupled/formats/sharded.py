"""Formatted state of DTensor parameters (FSDP2, tensor parallel).

Every dense format, and both parameter roundings, act element by element: element ``i`` of
the parameter is updated from element ``i`` of its gradient and moments only. A sharded
parameter's state is therefore the format applied to each shard, and the state tensors are
DTensors with the parameter's mesh and placements, as ``torch.optim.AdamW`` keeps its own
moments. ``torch.distributed.checkpoint`` then saves and reshards them like any other state.

The blockwise ``8bit`` format is not elementwise (one scale per 256 elements), so its blocks
would depend on where the shards split and its scales could not be resharded; it is refused
for DTensor parameters (:func:`decoupled.formats.unsupported_reason`).

The update itself runs on the local shards (:func:`local`), which alias the DTensors' memory,
so in-place writes reach the DTensor state.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import torch


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (the class is looked up once, on
    first use: the step asks for every tensor)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


@functools.cache
def _dtensor_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def any_dtensor(tensors: Iterable[Any]) -> bool:
    """Whether any of ``tensors`` is a DTensor (one isinstance each: the step asks every step)."""
    cls = _dtensor_class()
    return cls is not None and any(isinstance(t, cls) for t in tensors)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``t`` (sharing its memory), or ``t`` when it is a plain tensor."""
    return t.to_local() if is_dtensor(t) else t  # type: ignore[attr-defined]


def local_entry(entry: Mapping[str, Any], param: torch.Tensor) -> dict[str, Any]:
    """One DTensor parameter's state with every tensor as this rank's shard, laid out as ``param``.

    A DTensor with other placements is redistributed to ``param``'s; a plain tensor of the
    parameter's global shape (a full, unsharded checkpoint) is cut to this rank's shard
    locally, without communication. ``step`` is kept as it is. For a plain ``param``, a copy of
    ``entry`` holding the same tensors."""
    if not is_dtensor(param):
        return dict(entry)
    from torch.distributed.tensor import distribute_tensor

    out: dict[str, Any] = {}
    for key, value in entry.items():
        if is_dtensor(value):
            if value.placements != param.placements or value.device_mesh != param.device_mesh:  # type: ignore[attr-defined]
                value = value.redistribute(param.device_mesh, param.placements)  # type: ignore[attr-defined]
            value = value.to_local()
        elif key != "step" and isinstance(value, torch.Tensor) and value.shape == param.shape:
            value = distribute_tensor(
                value.to(local(param).device),
                param.device_mesh,  # type: ignore[attr-defined]
                param.placements,  # type: ignore[attr-defined]
                src_data_rank=None,
            ).to_local()
        out[key] = value
    return out


def shard_like(param: torch.Tensor, shard: torch.Tensor) -> torch.Tensor:
    """``shard`` (this rank's part of a tensor shaped like ``param``) as a DTensor placed like ``param``."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        shard,
        param.device_mesh,  # type: ignore[attr-defined]
        param.placements,  # type: ignore[attr-defined]
        run_check=False,
        shape=param.shape,
        stride=param.stride(),
    )


def global_entry(entry: Mapping[str, Any], param: torch.Tensor) -> dict[str, Any]:
    """The inverse of :func:`local_entry`: shard-shaped tensors become DTensors placed like ``param``."""
    shard_shape = local(param).shape
    return {
        key: shard_like(param, v) if key != "step" and isinstance(v, torch.Tensor) and v.shape == shard_shape else v
        for key, v in entry.items()
    }
