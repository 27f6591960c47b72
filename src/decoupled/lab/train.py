r"""One training run of a :class:`~decoupled.lab.tasks.Task` under one weight-decay convention.

The conventions are those of :mod:`decoupled.conventions` (see :mod:`decoupled.rule` for the full
update); the three that ``compare`` trains by default, with peak learning rate :math:`\gamma`,
schedule multiplier :math:`\eta_t` (warmup then cosine, so the lr at step t is
:math:`\gamma\eta_t`) and weight decay :math:`\lambda`:

* ``adam_l2``: :class:`decoupled.Adam` (= ``torch.optim.Adam``), :math:`g \leftarrow g + \lambda\theta`
  before the moments; the decay is then divided by :math:`\sqrt{\hat v}`.
* ``adamw``: :class:`decoupled.AdamW` (= ``torch.optim.AdamW``),
  :math:`\theta \leftarrow \theta(1 - \gamma\eta_t\lambda)`.
* ``adamw_indep``: ``decoupled.AdamW(decay_scaling="independent")``,
  :math:`\theta \leftarrow \theta(1 - \eta_t\lambda)`: the decay follows the schedule's shape
  but not the size of :math:`\gamma`.

Which parameters decay is decided by :func:`decoupled.param_groups` with its defaults: weight
matrices, convolution kernels and embeddings decay; biases, normalization parameters (by type and
by structure) and other 1-D gains never do.
Runs are deterministic for a given seed on CPU with one thread.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ..conventions import get as get_convention
from .tasks import Splits, Task, lr_multiplier


def make_optimizer(convention: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer of ``convention`` (a key of :data:`decoupled.conventions.CONVENTIONS`) at peak ``lr``.

    Built from :meth:`~decoupled.conventions.Convention.optimizer_options`: :class:`decoupled.Adam`
    for the coupled convention, :class:`decoupled.AdamW` otherwise. ``lr_max`` (the lr at which a
    non-``"lr"`` scaling applies the full ``weight_decay``) is each group's initial lr, the peak.
    """
    from decoupled import Adam, AdamW, param_groups

    conv = get_convention(convention)
    groups = param_groups(model, weight_decay)
    options = dict(conv.optimizer_options())
    if not options.pop("decoupled_weight_decay"):
        return Adam(groups, lr=lr, **options)
    return AdamW(groups, lr=lr, **options)


def train_run(
    task: Task,
    data: Splits,
    *,
    convention: str,
    lr: float,
    weight_decay: float,
    seed: int,
    epochs: int | None = None,
    eval_every: int = 1,
    callback: Any = None,
) -> dict[str, Any]:
    """Train ``task.model()`` from ``seed`` and return its curves and final metrics.

    The seed fixes the initialization, the batch order and the augmentation, so the three
    conventions (and every cell of a grid) start from the same weights and see the same batches.

    Returns a JSON-ready dict: ``final`` = ``{"val": metrics, "test": metrics}`` after the last
    epoch; ``curves`` = per evaluated epoch, ``train_loss`` (mean over the epoch's batches) and
    ``val_<metric>`` / ``test_<metric>``; ``diverged`` (a non-finite loss stopped the run; its
    metrics are then NaN); ``seconds`` of wall time. ``callback(step, model, optimizer)``, if
    given, runs once with step 0 before training and after every optimizer step (used by ``explain``).
    """
    epochs = task.epochs if epochs is None else epochs
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    x_train, y_train = data.train
    n = x_train.shape[0]
    bs = min(task.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * epochs
    warmup = int(round(task.warmup_epochs * steps_per_epoch))

    torch.manual_seed(seed)
    model = task.model()
    opt = make_optimizer(convention, model, lr, weight_decay)
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    if callback is not None:
        callback(0, model, opt)

    curves: dict[str, list[float]] = {"epoch": [], "train_loss": []}
    t0 = time.perf_counter()
    step, diverged = 0, False
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, batches = 0.0, 0
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            if idx.numel() < 2 and n >= 2:  # BatchNorm needs 2 examples; skip a lone last one
                continue
            mult = lr_multiplier(step, total, warmup)
            for group in opt.param_groups:
                group["lr"] = lr * mult
            xb = task.augment(x_train[idx], gen)
            loss = task.loss(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if callback is not None:
                callback(step, model, opt)
            value = float(loss.detach())
            if not math.isfinite(value):
                diverged = True
                break
            loss_sum += value
            batches += 1
        if diverged:
            break
        if epoch % eval_every == 0 or epoch == epochs:
            model.eval()
            curves["epoch"].append(epoch)
            curves["train_loss"].append(loss_sum / max(1, batches))
            for split in ("val", "test"):
                for key, value in task.evaluate(model, *getattr(data, split)).items():
                    curves.setdefault(f"{split}_{key}", []).append(float(value))
    if diverged:
        final = {s: {k[len(s) + 1 :]: math.nan for k in curves if k.startswith(s + "_")} for s in ("val", "test")}
        for s in final:
            final[s].setdefault("loss", math.nan)
            final[s].setdefault("error", math.nan)
    else:
        final = {
            s: {k[len(s) + 1 :]: v[-1] for k, v in curves.items() if k.startswith(s + "_")} for s in ("val", "test")
        }
    return {
        "convention": convention,
        "lr": lr,
        "wd": weight_decay,
        "seed": seed,
        "epochs": epochs,
        "steps": step,
        "diverged": diverged,
        "final": final,
        "curves": curves,
        "seconds": round(time.perf_counter() - t0, 3),
    }
