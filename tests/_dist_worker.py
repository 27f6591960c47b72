"""Worker processes for tests/test_distributed.py: DDP and FSDP2 on CPU with gloo.

Each worker trains the same small model on its half of every batch, checks what can be
checked locally (decoupled.AdamW against torch.optim.AdamW under the same wrapper, a
``torch.distributed.checkpoint`` round trip), and rank 0 writes the full parameters to
``out_dir`` for the parent to compare with a single-process run on whole batches.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import decoupled
from decoupled.formats.rounding import NOISE
from decoupled.schedules import CosineSchedule

STEPS = 6
RESUME_AT = 3
BACKENDS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}, "auto": {}}
FORMATS = {"moments": "bf16"}  # the low-memory state checked under FSDP2


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, 8, 8, generator=g)
    return [(xi, torch.sin(xi[:, :4] * 3) + xi[:, 4:]) for xi in x]


def build_optimizer(
    model: nn.Module, cls: type = decoupled.AdamW, **backend
) -> tuple[torch.optim.Optimizer, CosineSchedule]:
    opt = cls(decoupled.param_groups(model, weight_decay=0.1), lr=1e-2, **backend)
    return opt, CosineSchedule(opt, total_steps=STEPS, warmup_steps=1, min_factor=0.1)


def seed_rounding(step: int) -> None:
    """Make the stochastic rounding of the next step a function of ``step`` alone."""
    torch.manual_seed(1000 + step)
    NOISE.reset()


def train(model, opt, sched, data, rank: int | None = None, world: int = 1) -> None:
    """Steps over ``data``; with ``rank`` each process takes its contiguous share of every batch.
    Stochastic rounding is seeded by the schedule's step, so a resumed run repeats it."""
    for x, y in data:
        if rank is not None:
            share = x.shape[0] // world
            x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        seed_rounding(sched.last_epoch)
        opt.step()
        sched.step()


def reference(backend: str = "auto") -> dict[str, torch.Tensor]:
    """The single-process run on whole batches."""
    model = make_model()
    train(model, *build_optimizer(model, **BACKENDS[backend]), batches())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- inside the workers ------------------------------------------------------------------


def _wrap(kind: str, model: nn.Module, mesh) -> nn.Module:
    if kind == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _full_params(kind: str, model: nn.Module) -> dict[str, torch.Tensor]:
    inner = model.module if kind == "ddp" else model
    out = {}
    for name, value in inner.state_dict().items():
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        out[name] = value.detach().clone()
    return out


def _checkpoint_round_trip(kind: str, mesh, rank: int, world: int, path: Path, **options) -> None:
    """Train, save model + optimizer + schedule with DCP, resume in fresh objects: identical."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    data = batches()
    model = _wrap(kind, make_model(), mesh)
    opt, sched = build_optimizer(model, **options)
    train(model, opt, sched, data[:RESUME_AT], rank, world)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd, "sched": sched.state_dict()}, checkpoint_id=str(path))
    full_state = {  # what was saved, gathered whole: the parent reloads the checkpoint unsharded
        name: {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in entry.items()}
        for name, entry in optim_sd["state"].items()
    }
    if rank == 0:
        torch.save(full_state, path.with_suffix(".full.pt"))
    saved_lrs = [g["lr"] for g in opt.param_groups]
    train(model, opt, sched, data[RESUME_AT:], rank, world)
    expected = [_local(p).detach().clone() for p in model.parameters()]
    expected_state = {k: _local(v).clone() for k, v in opt.state[next(iter(model.parameters()))].items()}

    model2 = _wrap(kind, make_model(seed=123), mesh)  # different weights: the load must set them
    opt2, sched2 = build_optimizer(model2, **options)
    model_sd2, optim_sd2 = get_state_dict(model2, opt2)
    state = {"model": model_sd2, "optim": optim_sd2, "sched": sched2.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    sched2.load_state_dict(state["sched"])
    assert sched2.last_epoch == RESUME_AT, sched2.last_epoch
    assert [g["lr"] for g in opt2.param_groups] == saved_lrs
    assert opt2.param_groups[0]["param_names"] == opt.param_groups[0]["param_names"]
    step = opt2.state[next(iter(model2.parameters()))]["step"]
    assert step.item() == RESUME_AT, step
    train(model2, opt2, sched2, data[RESUME_AT:], rank, world)
    for i, (p, q) in enumerate(zip(model2.parameters(), expected)):
        assert torch.equal(_local(p), q), f"rank {rank}: parameter {i} differs after resuming"
    for key, value in opt2.state[next(iter(model2.parameters()))].items():
        assert torch.equal(_local(value), expected_state[key]), f"rank {rank}: optimizer state {key!r} differs"


def done_marker(out_dir: str | Path, kind: str, rank: int) -> Path:
    """Written by a worker once every check of its run has passed, before the process group is torn down."""
    return Path(out_dir) / f"{kind}_rank{rank}.done"


def _formats_on_shards(mesh, rank: int, world: int, **options) -> None:
    """``FORMATS`` under FSDP2: the state is DTensors placed like the parameters, and every
    shard's parameters and state equal, bitwise, the same optimizer run on plain copies of the
    shards with the same gradients and the same rounding noise."""
    model = _wrap("fsdp", make_model(), mesh)
    opt, sched = build_optimizer(model, **FORMATS, **options)
    params = list(model.parameters())
    shadows = [_local(p).detach().clone() for p in params]
    shadow_of = {id(p): q for p, q in zip(params, shadows)}
    shadow_groups = [{**g, "params": [shadow_of[id(p)] for p in g["params"]]} for g in opt.param_groups]
    shadow_opt = decoupled.AdamW(shadow_groups, lr=1e-2, **options)
    shadow_sched = CosineSchedule(shadow_opt, total_steps=STEPS, warmup_steps=1, min_factor=0.1)
    for step, (x, y) in enumerate(batches()):
        share = x.shape[0] // world
        opt.zero_grad()
        nn.functional.mse_loss(
            model(x[rank * share : (rank + 1) * share]), y[rank * share : (rank + 1) * share]
        ).backward()
        for p, q in zip(params, shadows):
            q.grad = _local(p.grad).clone()
        for o in (opt, shadow_opt):
            seed_rounding(step)
            o.step()
        sched.step()
        shadow_sched.step()
        for i, (p, q) in enumerate(zip(params, shadows)):
            assert torch.equal(_local(p), q), f"rank {rank} step {step}: shard of parameter {i} differs"
            state, shadow_state = opt.state[p], shadow_opt.state[q]
            assert state.keys() == shadow_state.keys(), (state.keys(), shadow_state.keys())
            for key in ("exp_avg", "exp_avg_sq"):
                value = state[key]
                assert type(value).__name__ == "DTensor" and value.placements == p.placements, (key, type(value))
                assert value.dtype == torch.bfloat16 and value.shape == p.shape, (key, value.dtype, value.shape)
                assert torch.equal(_local(value), shadow_state[key]), f"rank {rank} step {step}: {key} of {i} differs"


def _compiled_on_shards(mesh, rank: int, world: int) -> None:
    """backend='compiled' fuses the formats' kernel on the local shards; with torch's state
    layout the step pipeline hands it the local shards too (backends never see a DTensor), and
    every shard equals, bitwise, the same optimizer on plain copies of the shards."""
    from decoupled.backends import compiled

    compiled.MIN_NUMEL = 0  # this model's tensors are small: run the kernel on all of them
    _formats_on_shards(mesh, rank, world, backend="compiled")
    model = _wrap("fsdp", make_model(), mesh)
    opt = decoupled.AdamW(model.parameters(), lr=1e-2, backend="compiled")
    params = list(model.parameters())
    shadows = [_local(p).detach().clone().requires_grad_() for p in params]
    shadow_opt = decoupled.AdamW(shadows, lr=1e-2, backend="compiled")
    for step, (x, _) in enumerate(batches()):
        opt.zero_grad()
        model(x).sum().backward()
        for p, q in zip(params, shadows):
            q.grad = _local(p.grad).clone()
        opt.step()
        shadow_opt.step()
        for i, (p, q) in enumerate(zip(params, shadows)):
            assert torch.equal(_local(p), q), f"rank {rank} step {step}: shard of parameter {i} differs"
            value = opt.state[p]["exp_avg"]
            assert type(value).__name__ == "DTensor" and value.placements == p.placements, type(value)
            assert torch.equal(_local(value), shadow_opt.state[q]["exp_avg"])


def _blockwise_refused(mesh) -> None:
    """moments='8bit' cannot shard its blocks: a clear error, raised before anything changes."""
    torch.manual_seed(0)
    model = _wrap("fsdp", nn.Sequential(nn.Linear(64, 64)), mesh)  # 4096 weights: blockwise, not fp32
    opt = decoupled.AdamW(model.parameters(), moments="8bit")
    model(torch.randn(2, 64)).sum().backward()
    before = [_local(p).clone() for p in model.parameters()]
    try:
        opt.step()
    except ValueError as error:
        assert "moments='8bit' is blockwise" in str(error) and "moments='bf16'" in str(error), error
    else:
        raise AssertionError("moments='8bit' of a DTensor parameter was accepted")
    assert all(torch.equal(_local(p), b) for p, b in zip(model.parameters(), before)), "parameters changed"
    assert not opt.state, "state was created"


def run(rank: int, world: int, port: int, kind: str, out_dir: str) -> None:
    faulthandler.enable(all_threads=True)  # a C++ abort (SIGABRT) prints every thread's Python stack
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,)) if kind == "fsdp" else None
        data = batches()
        backends = BACKENDS if kind == "fsdp" else {"auto": {}}
        for backend, flags in backends.items():
            ours = _wrap(kind, make_model(), mesh)
            theirs = _wrap(kind, make_model(), mesh)
            train(ours, *build_optimizer(ours, **flags), data, rank, world)
            # `auto` runs torch's fused kernel on CPU: compare it with torch.optim.AdamW(fused=True)
            theirs_flags = flags or {"fused": True}
            train(theirs, *build_optimizer(theirs, torch.optim.AdamW, **theirs_flags), data, rank, world)
            if kind == "fsdp":
                assert type(next(ours.parameters())).__name__ == "DTensor"
            for i, (p, q) in enumerate(zip(ours.parameters(), theirs.parameters())):
                assert torch.equal(_local(p), _local(q)), (
                    f"{kind}/{backend} rank {rank}: param {i} != torch.optim.AdamW"
                )
            full = _full_params(kind, ours)
            if rank == 0:
                torch.save(full, Path(out_dir) / f"{kind}_{backend}.pt")
        _checkpoint_round_trip(kind, mesh, rank, world, Path(out_dir) / f"{kind}_dcp")
        if kind == "fsdp":
            _formats_on_shards(mesh, rank, world)
            _blockwise_refused(mesh)
            _compiled_on_shards(mesh, rank, world)
            _checkpoint_round_trip(kind, mesh, rank, world, Path(out_dir) / f"{kind}_dcp_formats", **FORMATS)
        # Release the wrapped models, their hooks and the mesh's groups while every rank is still
        # connected, so that no process-group object outlives destroy_process_group.
        del ours, theirs, mesh
        gc.collect()
        done_marker(out_dir, kind, rank).touch()
        dist.barrier()  # past it, every rank's marker exists
    finally:
        dist.destroy_process_group()


def abort(rank: int, world: int, port: int, kind: str, out_dir: str) -> None:
    """A worker that dies of SIGABRT, after its done marker when ``kind`` ends in "-after-checks"."""
    if kind.endswith("-after-checks"):
        done_marker(out_dir, kind, rank).touch()
        while not all(done_marker(out_dir, kind, r).exists() for r in range(world)):  # the barrier
            time.sleep(0.01)
    os.abort()
