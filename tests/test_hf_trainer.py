"""decoupled with the real Hugging Face Trainer on CPU: a tiny GPT-2 built from a config."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

import decoupled  # noqa: E402
from decoupled import conventions, schedules  # noqa: E402
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
PER_STEP = LR * 0.1  # what TrainingArguments(weight_decay=0.1) removes per step at peak lr in PyTorch's form
# (AdamW options or convention=, tau keywords, each decayed group's weight_decay, the warning it gives or None)
WEIGHT_DECAY_CASES = [
    ({}, {}, [0.1], None),
    ({"foreach": False}, {}, [0.1], None),
    (
        {"lr_independent_decay": True},
        {},
        [LR * 0.1],
        r"weight_decay=0.1 is PyTorch's form .* converted to weight_decay=0.0003 for adamw_indep decay, which removes the same 0.0003 per step at peak lr \(timescale 3,333 steps\)",
    ),
    ({"lr_independent_decay": True, "lr_max": 2 * LR}, {}, [2 * LR * 0.1], r"converted to weight_decay=0.0006 for adamw_indep"),
    ({"decay_scaling": "independent"}, {}, [LR * 0.1], r"converted to weight_decay=0.0003 for adamw_indep decay"),
    ({"decay_scaling": "independent", "cautious_decay": True}, {}, [LR * 0.1], r"weight_decay=0.0003 for adamw_indep\+cautious"),
    # corrected decay removes lr**2/lr_max*wd: PyTorch's value when lr_max is the peak lr, else scaled by lr_max/lr
    ({"decay_scaling": "corrected"}, {}, [0.1], None),
    ({"decay_scaling": "corrected", "lr_max": 2 * LR}, {}, [0.2], r"converted to weight_decay=0.2 for adamw_corrected decay"),
    ({"cautious_decay": True}, {}, [0.1], None),
    ({"decay_scaling": "corrected", "cautious_decay": True}, {}, [0.1], None),
    # convention=: the groups carry it; AdamC's grouping has two decayed groups, each converted for its own scaling
    ({"convention": "adamw_indep"}, {}, [LR * 0.1], r"converted to weight_decay=0.0003 for adamw_indep decay"),
    ({"convention": "adamw_corrected", "lr_max": 2 * LR}, {}, [0.2, 0.1], r"weight_decay=0.2 for adamw_corrected .* in param group 0"),
    ({"convention": "adam_l2"}, {}, [0.1], None),
    # the timescale, per convention
    ({}, {"tau": 1000}, [1 / (LR * 1000)], None),
    ({}, {"tau_fraction": 0.5}, [1 / (LR * 0.5 * STEPS)], None),
    ({"lr_independent_decay": True}, {"tau": 1000}, [1 / 1000], None),
    ({"decay_scaling": "corrected"}, {"tau": 1000}, [1 / (LR * 1000)], None),
    ({"decay_scaling": "corrected", "lr_max": 2 * LR}, {"tau": 1000}, [2 / (LR * 1000)], None),
    ({"cautious_decay": True}, {"tau_fraction": 0.5}, [1 / (LR * 0.5 * STEPS)], None),
    ({"convention": "adamw_corrected", "lr_max": 2 * LR}, {"tau": 1000}, [2 / (LR * 1000), 1 / (LR * 1000)], None),
]  # fmt: skip


@pytest.mark.parametrize(
    "options, tau, expected, warns",
    WEIGHT_DECAY_CASES,
    ids=[f"{sorted(o.items())}-{sorted(t)}" for o, t, _, _ in WEIGHT_DECAY_CASES],
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
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups[:-1]] == pytest.approx(expected, rel=1e-12)
    assert groups[-1]["weight_decay"] == 0.0
    assert "timescale" in caplog.text and "of each decayed weight per step at peak lr" in caplog.text
    # each decayed group removes 1/tau (or PyTorch's lr * 0.1) per step at peak lr under its convention
    for g in groups[:-1]:
        per_step = conventions.of_group(g).decay_per_step(g["weight_decay"], LR, g.get("lr_max"))
        if per_step is not None:
            assert per_step == pytest.approx(
                1 / tau.get("tau", tau.get("tau_fraction", 0) * STEPS) if tau else PER_STEP
            )


@pytest.mark.parametrize(
    "options, keys",
    [
        ({"decay_scaling": "corrected", "cautious_decay": True}, ["adamw_corrected+cautious"] * 2),
        ({"convention": "adamw_corrected"}, ["adamw_corrected", "adamw", "adamw"]),
        ({"convention": "adamw_cautious"}, ["adamw_cautious", "adamw"]),
    ],
    ids=["keywords", "adamc-grouping", "cautious-groups"],
)
def test_trainer_trains_with_the_convention(tmp_path, options, keys) -> None:
    """The real Trainer runs the optimizer of each convention to the end; it learns, and each group keeps
    its convention (cautious decay runs off torch's fused kernel, which cannot mask)."""
    args = _args(tmp_path, learning_rate=LR)
    model = _model()
    optimizer, scheduler = hf.create_optimizer_and_scheduler(model, args, **options)
    assert [conventions.of_group(g).key for g in optimizer.param_groups] == keys
    losses, _ = _train(args, model=model, optimizers=(optimizer, scheduler))
    assert losses[-1] < 0.9 * losses[0]
    assert all(optimizer.state[p]["step"].item() == STEPS for g in optimizer.param_groups for p in g["params"])


def test_convention_and_its_keywords_are_refused_together(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"convention='adamw_corrected' and \['decay_scaling'\] both choose"):
        hf.create_optimizer_and_scheduler(_model(), _args(tmp_path), convention="adamw_corrected", decay_scaling="lr")
    with pytest.raises(ValueError, match="output_layer= only applies with convention='adamw_corrected'"):
        hf.create_optimizer_and_scheduler(_model(), _args(tmp_path), output_layer="lm_head")
    with pytest.raises(ValueError, match="adam_l2 convention has no timescale"):
        hf.create_optimizer_and_scheduler(_model(), _args(tmp_path, weight_decay=0.0), convention="adam_l2", tau=100)


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


def test_adamc_conversion_matches_torch_at_peak_lr_and_falls_as_lr_squared(tmp_path) -> None:
    """AdamC's grouping from TrainingArguments(weight_decay=0.1): with zero gradients the corrected group loses
    (lr_t / LR)**2 * LR * 0.1 per step (PyTorch's LR * 0.1 at peak lr), the output layer's group lr_t * 0.1."""
    args = _args(tmp_path, learning_rate=LR, weight_decay=0.1, warmup_steps=2, lr_scheduler_type="linear")
    model = _model()
    with pytest.warns(UserWarning, match="converted to weight_decay=0.2 for adamw_corrected"):
        opt, schedule = hf.create_optimizer_and_scheduler(model, args, convention="adamw_corrected", lr_max=2 * LR)
    corrected, plain = opt.param_groups[0]["params"][0], opt.param_groups[1]["params"][0]
    start = {p: p.detach().clone() for p in (corrected, plain)}
    factor = {corrected: 1.0, plain: 1.0}
    for _ in range(6):
        lr = opt.param_groups[0]["lr"]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step(), schedule.step()
        factor[corrected] *= 1 - (lr / LR) ** 2 * LR * 0.1
        factor[plain] *= 1 - lr * 0.1
    assert factor[corrected] != factor[plain]
    for p in (corrected, plain):
        torch.testing.assert_close(p.detach(), start[p] * factor[p], rtol=1e-6, atol=0)


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


# (AdamW options for Trainer's own groups, the warning or None)
TRAINER_GROUP_CASES = [
    ({}, None),
    ({"cautious_decay": True}, None),
    ({"decay_scaling": "corrected"}, None),  # lr**2/lr_max*wd with lr_max = lr: PyTorch's decay at peak lr
    (
        {"decay_scaling": "independent"},
        r"removes 0.1 of every decayed weight per step at peak lr .*weight_decay=0.0003",
    ),
    ({"decay_scaling": "corrected", "lr_max": 2 * LR}, r"removes 0.00015 of every decayed weight .*weight_decay=0.2\)"),
]


@pytest.mark.parametrize(
    "options, warns", TRAINER_GROUP_CASES, ids=[str(sorted(o.items())) for o, _ in TRAINER_GROUP_CASES]
)
def test_trainer_groups_warn_where_the_convention_changes_the_decay(tmp_path, options, warns) -> None:
    args = _args(tmp_path, learning_rate=LR, weight_decay=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls, kwargs = hf.optimizer_cls_and_kwargs(args, **options)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any(re.search(warns, m) for m in said) if warns else not said, said
    assert cls is decoupled.AdamW and {k: kwargs[k] for k in options} == options
