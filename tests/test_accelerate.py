"""decoupled.AdamW and decoupled.schedules under Hugging Face Accelerate (CPU, one process)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate", reason="the hf extra (accelerate) is not installed")

import decoupled  # noqa: E402
from decoupled import schedules  # noqa: E402

ACCUM = 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 1))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 4, 6, generator=g)
    return [(xi, xi.sum(-1, keepdim=True).sin()) for xi in x]


def _build(model: nn.Module) -> tuple[decoupled.AdamW, schedules.ScheduleBase]:
    opt = decoupled.AdamW(decoupled.param_groups(model, weight_decay=0.1), lr=1e-2)
    return opt, schedules.CosineSchedule(opt, total_steps=10, warmup_steps=2, min_factor=0.1)


def _accelerated_steps(accelerator, model, opt, sched, batches) -> list[float]:
    losses = []
    for x, y in batches:
        with accelerator.accumulate(model):
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
        losses.append(loss.item())
    return losses


def _accelerator(**kwargs) -> accelerate.Accelerator:
    accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)
    return accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUM, **kwargs)


def test_prepare_with_gradient_accumulation_matches_plain_loop() -> None:
    batches = _batches(16)  # 8 optimizer steps of 2 micro-batches

    reference = _model()
    opt, sched = _build(reference)
    for i in range(0, len(batches), ACCUM):
        for x, y in batches[i : i + ACCUM]:
            (nn.functional.mse_loss(reference(x), y) / ACCUM).backward()
        opt.step()
        sched.step()
        opt.zero_grad()

    accelerator = _accelerator()
    model = _model()
    model, a_opt, a_sched = accelerator.prepare(model, *_build(model))
    assert isinstance(a_opt, accelerate.optimizer.AcceleratedOptimizer)
    assert isinstance(a_opt.optimizer, decoupled.AdamW)
    _accelerated_steps(accelerator, model, a_opt, a_sched, batches)

    assert a_opt.optimizer.state_dict()["state"][0]["step"].item() == len(batches) // ACCUM
    assert a_sched.scheduler.last_epoch == len(batches) // ACCUM  # stepped once per optimizer step
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert a_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_save_state_and_load_state_resume_identically(tmp_path) -> None:
    batches = _batches(16)

    accelerator = _accelerator()
    model = _model()
    model, opt, sched = accelerator.prepare(model, *_build(model))
    _accelerated_steps(accelerator, model, opt, sched, batches[:8])
    accelerator.save_state(str(tmp_path / "ckpt"))
    saved_lrs = [g["lr"] for g in opt.param_groups]
    straight = _accelerated_steps(accelerator, model, opt, sched, batches[8:])
    expected = [p.detach().clone() for p in model.parameters()]

    accelerator2 = _accelerator()
    model2 = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 1))  # fresh weights
    model2, opt2, sched2 = accelerator2.prepare(model2, *_build(model2))
    accelerator2.load_state(str(tmp_path / "ckpt"))
    assert sched2.scheduler.last_epoch == 4
    assert [g["lr"] for g in opt2.param_groups] == saved_lrs
    resumed = _accelerated_steps(accelerator2, model2, opt2, sched2, batches[8:])

    assert resumed == straight
    for p, q in zip(model2.parameters(), expected):
        assert torch.equal(p, q)
    assert opt2.optimizer.state_dict()["state"][0]["step"].item() == 8
