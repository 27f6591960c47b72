"""decoupled with the real Hugging Face Trainer on CPU: a tiny GPT-2 built from a config."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

import decoupled  # noqa: E402
from decoupled import schedules  # noqa: E402
from decoupled.integrations import hf  # noqa: E402

STEPS = 20


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=97,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _data(n: int = 64, length: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    # a learnable pattern: each sequence counts up from a random start, modulo the vocabulary
    starts = torch.randint(0, 97, (n, 1), generator=g)
    ids = (starts + torch.arange(length)) % 97
    return [{"input_ids": row, "labels": row} for row in ids]


def _args(tmp_path, **overrides) -> transformers.TrainingArguments:
    options = dict(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        weight_decay=0.1,
        warmup_steps=4,
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    options.update(overrides)
    return transformers.TrainingArguments(**options)


def _train(args, **trainer_kwargs) -> tuple[list[float], transformers.Trainer]:
    model = trainer_kwargs.pop("model", None) or _model()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_data(), **trainer_kwargs)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS
    return losses, trainer


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_torch"])
def test_same_loss_curve_as_trainer_default(tmp_path, optim: str) -> None:
    """Trainer's own AdamW and ours, same groups and schedule: the same loss curve, to the bit."""
    args = _args(tmp_path, optim=optim)
    expected, reference = _train(args)
    assert expected[-1] < 0.9 * expected[0]  # it learns

    model = _model()
    # adamw_torch is torch's per-tensor loop on CPU; the fused default is the same kernel as ours
    backend = {"foreach": False} if optim == "adamw_torch" else {}
    optimizer, scheduler = hf.create_optimizer_and_scheduler(model, args, **backend)
    assert isinstance(scheduler, schedules.CosineSchedule) and scheduler.options["warmup_steps"] == 4
    # Trainer's default decides decay by name; on GPT-2 it is the same split as ours
    trainer_decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    assert set(optimizer.param_groups[0]["param_names"]) == trainer_decay & set(dict(model.named_parameters()))

    losses, trainer = _train(args, model=model, optimizers=(optimizer, scheduler))
    assert trainer.optimizer.optimizer is optimizer or trainer.optimizer is optimizer
    assert losses == expected
    for p, q in zip(model.parameters(), reference.model.parameters()):
        assert torch.equal(p, q)


def test_optimizer_cls_and_kwargs_recipe(tmp_path) -> None:
    """Trainer groups and schedules; decoupled.AdamW steps. Same curve as the default."""
    args = _args(tmp_path)
    expected, _ = _train(args)
    losses, trainer = _train(args, optimizer_cls_and_kwargs=hf.optimizer_cls_and_kwargs(args))
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(inner) is decoupled.AdamW
    assert [g["weight_decay"] for g in inner.param_groups] == [0.1, 0.0]
    assert losses == expected


def test_weight_decay_schedule_callback(tmp_path) -> None:
    args = _args(tmp_path, max_steps=6, logging_steps=3)
    model = _model()
    optimizer, scheduler = hf.create_optimizer_and_scheduler(model, args)
    wd = schedules.WeightDecaySchedule(optimizer, "linear", total_steps=10)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=_data(),
        optimizers=(optimizer, scheduler),
        callbacks=[hf.WeightDecayScheduleCallback(wd)],
    )
    trainer.train()
    assert wd.last_step == 6
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.1 * 4 / 10)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_create_errors_and_warnings(tmp_path) -> None:
    model = _model()
    with pytest.raises(ValueError, match="num_training_steps is needed"):
        hf.create_optimizer_and_scheduler(model, _args(tmp_path, max_steps=-1, num_train_epochs=1))
    with pytest.warns(UserWarning, match="optim='sgd'.* is ignored"):
        hf.create_optimizer_and_scheduler(model, _args(tmp_path, optim="sgd"))
    # warmup as a fraction of the run, as in Trainer
    _, sched = hf.create_optimizer_and_scheduler(model, _args(tmp_path, warmup_steps=0.25), num_training_steps=40)
    assert sched.options == {"total_steps": 40, "warmup_steps": 10, "min_factor": 0.0, "past_end": "continue"}
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="'reduce_lr_on_plateau' reacts to metrics"):
        hf.get_scheduler("reduce_lr_on_plateau", opt, 2, 10)
    with pytest.raises(ValueError, match="'cosine_with_min_lr' schedule needs num_training_steps"):
        hf.get_scheduler("cosine_with_min_lr", opt, 2, None, {"min_lr": 0.0})
    with pytest.raises(ValueError, match="unknown scheduler type 'cosin'"):
        hf.get_scheduler("cosin", opt, 2, 10)
    with pytest.raises(ValueError, match="not used by the 'linear' schedule"):
        hf.get_scheduler("linear", opt, 2, 10, {"power": 2})
    with pytest.raises(ValueError, match="exactly one of min_lr or min_lr_rate"):
        hf.get_scheduler("cosine_with_min_lr", opt, 2, 10, {})


LR = 3e-3
# (AdamW options, tau keywords, the decayed group's weight_decay, the warning it gives or None)
WEIGHT_DECAY_CASES = [
    ({}, {}, 0.1, None),
    ({"foreach": False}, {}, 0.1, None),
    (
        {"lr_independent_decay": True},
        {},
        LR * 0.1,
        r"weight_decay=0.1 is PyTorch's form .* converted to weight_decay=0.0003 for adamw_indep decay, which removes the same 0.0003 per step at peak lr \(timescale 3,333 steps\)",
    ),
    (
        {"lr_independent_decay": True, "lr_max": 2 * LR},
        {},
        2 * LR * 0.1,
        r"converted to weight_decay=0.0006 for adamw_indep",
    ),
    ({}, {"tau": 1000}, 1 / (LR * 1000), None),
    ({}, {"tau_fraction": 0.5}, 1 / (LR * 0.5 * STEPS), None),
    ({"lr_independent_decay": True}, {"tau": 1000}, 1 / 1000, None),
]


@pytest.mark.parametrize(
    "options, tau, expected, warns",
    WEIGHT_DECAY_CASES,
    ids=[f"{sorted(o)}-{sorted(t)}" for o, t, _, _ in WEIGHT_DECAY_CASES],
)
def test_weight_decay_follows_the_convention(tmp_path, caplog, options, tau, expected, warns) -> None:
    args = _args(tmp_path, learning_rate=LR, weight_decay=0.0 if tau else 0.1)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO", logger="decoupled.integrations.hf"):
        warnings.simplefilter("always")
        optimizer, _ = hf.create_optimizer_and_scheduler(_model(), args, **options, **tau)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if warns:
        assert any(re.search(warns, m) for m in said), said
    else:
        assert not any("weight_decay" in m for m in said), said
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(expected, rel=1e-12)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    assert "timescale" in caplog.text and "of each decayed weight per step at peak lr" in caplog.text


def test_lr_independent_conversion_decays_as_torch_does(tmp_path) -> None:
    """With zero gradients a step is decay alone: the converted lr-independent group loses what torch's
    AdamW loses with TrainingArguments' weight_decay, at every lr of the schedule."""
    args = _args(tmp_path, learning_rate=LR, weight_decay=0.1, warmup_steps=2, lr_scheduler_type="linear")
    model, reference = _model(), _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, our_schedule = hf.create_optimizer_and_scheduler(model, args, lr_independent_decay=True)
        theirs, their_schedule = hf.create_optimizer_and_scheduler(reference, args)
    assert ours.param_groups[0]["weight_decay"] != theirs.param_groups[0]["weight_decay"]
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(6):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
        ours.step(), theirs.step(), our_schedule.step(), their_schedule.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=0)
    assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start))  # the decay did act


def test_tau_and_a_weight_decay_are_refused_together(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"TrainingArguments\(weight_decay=0.1\) would be ignored"):
        hf.create_optimizer_and_scheduler(_model(), _args(tmp_path), tau=1000)
    with pytest.raises(ValueError, match="not both or neither"):
        hf.create_optimizer_and_scheduler(_model(), _args(tmp_path, weight_decay=0.0), tau=1000, tau_fraction=0.5)


def test_trainer_groups_with_lr_independent_decay_warn_with_the_per_step_decay(tmp_path) -> None:
    args = _args(tmp_path, learning_rate=LR, weight_decay=0.1)
    with pytest.warns(
        UserWarning, match=r"removes 0.1 of every decayed weight per step at peak lr .*weight_decay=0.0003"
    ):
        hf.optimizer_cls_and_kwargs(args, lr_independent_decay=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf.optimizer_cls_and_kwargs(args)  # PyTorch's form: nothing to say
