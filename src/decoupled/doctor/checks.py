r"""The checks of a training setup: :func:`check` (``decoupled.check``).

``check(optimizer, model=None, scheduler=None, ...)`` inspects an Adam-family optimizer
(``torch.optim.Adam``, ``torch.optim.AdamW``, :class:`decoupled.Adam`, :class:`decoupled.AdamW`),
optionally with its model and lr scheduler, and returns a list of
:class:`~decoupled.doctor.findings.Finding` (severity, what, where, how to fix). A clean setup
returns ``[]``. Each param group's convention is read with :func:`decoupled.conventions.of_group`
(``decay_scaling``, ``cautious_decay``, ``lr_independent_decay`` keys), so every convention's decay
is measured as it acts.

What it checks (``code``: meaning):

* ``adam-l2``: Adam with ``weight_decay > 0`` and coupled decay (``decoupled_weight_decay=False``):
  L2 added to the gradient, then divided by :math:`\sqrt{\hat v}`, so weights with a large gradient
  history are barely decayed. Almost always AdamW was meant.
* ``adamw-no-decay``: AdamW whose every group has ``weight_decay=0`` (that is plain Adam).
* ``decay-bias``, ``decay-norm``, ``decay-embedding``, ``decay-other``: a parameter that
  :func:`decoupled.groups.no_decay_reasons` says should not decay (biases; normalization
  weights, found by structure including custom norm classes; embedding tables when you pass
  ``decay_embeddings=False``, since by default embeddings decay as in GPT-2, BERT and
  :func:`decoupled.param_groups`) sits in a group with ``weight_decay > 0``.
* ``param-missing``, ``param-twice``: a trainable parameter of the model in no param group, or
  one tensor in two groups (or twice in one).
* ``no-warmup``: the lr starts at its peak (no scheduler, or a scheduler whose first lr is more
  than half its base lr).
* ``decay-timescale``: the EMA timescale :math:`\tau` (:mod:`decoupled.doctor.decay`: :math:`1/(\gamma\lambda)`
  steps at peak lr, :math:`1/\lambda` for lr-independent decay) is more than 10 times the run (decay
  does almost nothing: :math:`e^{-S/\tau} > 0.9`), or under 200 steps or 1/100 of the run (decay
  dominates); or the per-step decay is 10% or more (an error).
* ``decay-below-precision``: for bf16 (or fp16) parameters, the per-step decay fraction is below
  half the format's relative resolution (:math:`2^{-9}` for bf16, :math:`2^{-12}` for fp16), so
  :math:`\theta(1-\gamma\lambda)` rounds back to :math:`\theta` and the decay is lost.
* ``update-below-precision``: for bf16 (or fp16) tensors, an Adam step of about :math:`\gamma` is
  below half an ulp of the tensor's RMS weight (:math:`\gamma/\mathrm{rms}(\theta) < 2^{-9}` in
  bf16), so round-to-nearest writes :math:`\theta` back unchanged and those weights stop learning
  (typically norm gains near 1 with lr ~1e-4). Both precision checks are skipped for groups with
  ``param_rounding='kahan'`` or ``'stochastic'`` (:mod:`decoupled.formats`), which keep such updates.

:func:`timescales` gives each group's timescale next to the run's length (``doctor`` prints it
as a table under the findings, whether or not it is flagged).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .decay import (
    GroupTimescale,
    convention_of,
    decay_precision_findings,
    group_timescale,
    timescale_findings,
    update_precision_findings,
    value,
)
from .findings import Finding, format_findings, names, sort_findings


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """``'adamw'`` or ``'adam'``; TypeError for any other optimizer."""
    from .. import optim as dopt

    if isinstance(optimizer, (torch.optim.AdamW, dopt.AdamW)):
        return "adamw"
    if isinstance(optimizer, (torch.optim.Adam, dopt.Adam)):
        return "adam"
    raise TypeError(
        f"decoupled.check works on torch.optim.Adam/AdamW and decoupled.Adam/AdamW, got {type(optimizer).__name__}"
    )


def total_steps_of(scheduler: Any) -> int | None:
    """The run's length as the scheduler knows it (decoupled's ``total_steps``, torch's ``T_max``/``total_iters``)."""
    if scheduler is None:
        return None
    options = getattr(scheduler, "options", None)
    if isinstance(options, dict) and options.get("total_steps"):
        return int(options["total_steps"])
    for attr in ("total_steps", "T_max", "total_iters"):
        steps = getattr(scheduler, attr, None)
        if isinstance(steps, int) and steps > 1:
            return steps
    return None


def _group_label(i: int, n: int) -> str:
    return f"param group {i}" if n > 1 else "the optimizer's only param group"


def timescales(
    optimizer: torch.optim.Optimizer, scheduler: Any = None, *, total_steps: int | None = None
) -> list[GroupTimescale]:
    """Each param group's decay timescale (:class:`~decoupled.doctor.decay.GroupTimescale`) next to the run's
    length (``total_steps``, else the scheduler's)."""
    kind = optimizer_kind(optimizer)
    total = total_steps or total_steps_of(scheduler)
    return [group_timescale(i, g, kind, scheduler, total) for i, g in enumerate(optimizer.param_groups)]


def check(
    optimizer: torch.optim.Optimizer,
    model: nn.Module | None = None,
    scheduler: Any = None,
    *,
    total_steps: int | None = None,
    steps_per_epoch: float | None = None,
    warmup_steps: int | None = None,
    decay_embeddings: bool = True,
    no_decay: Iterable[Any] = (),
    decay: Iterable[Any] = (),
    print_findings: bool = False,
) -> list[Finding]:
    r"""Check an Adam-family optimizer (and optionally its model and lr scheduler).

    Args:
        optimizer: ``torch.optim.Adam``/``AdamW`` or ``decoupled.Adam``/``AdamW``.
        model: the model being trained; enables the checks of which parameters decay and
            whether every trainable parameter is in exactly one group.
        scheduler: the lr scheduler, in its state before training (for the warmup check; its
            ``base_lrs`` give the peak lr, and its length the run length when it knows it).
        total_steps: optimizer steps in the whole run (for the decay-timescale check).
        steps_per_epoch: to state timescales in epochs too.
        warmup_steps: the warmup length when the lr is not driven by ``scheduler`` (0 = none).
        decay_embeddings, no_decay, decay: your intent, passed to
            :func:`decoupled.groups.no_decay_reasons`. Decayed embedding tables are reported only
            with ``decay_embeddings=False``.
        print_findings: also print the table.

    Returns:
        The findings, most severe first; ``[]`` for a clean setup.
    """
    kind = optimizer_kind(optimizer)
    groups = optimizer.param_groups
    n = len(groups)
    found = _convention_findings(groups, kind)
    found += _membership_findings(optimizer, model)
    if model is not None:
        found += _decay_membership(optimizer, model, decay_embeddings, tuple(no_decay), tuple(decay))
    found += _warmup(optimizer, scheduler, warmup_steps)
    for t, g in zip(timescales(optimizer, scheduler, total_steps=total_steps), groups):
        where = _group_label(t.group, n)
        found += timescale_findings(t, where, steps_per_epoch)
        found += decay_precision_findings(g, t, where)
        found += update_precision_findings(g, t.lr, where)
    found = sort_findings(found)
    if print_findings:
        print(format_findings(found))
    return found


def _convention_findings(groups: list[dict[str, Any]], kind: str) -> list[Finding]:
    n = len(groups)
    found = []
    conventions = [convention_of(g, kind) for g in groups]
    coupled = [i for i, g in enumerate(groups) if conventions[i].coupled and value(g["weight_decay"]) > 0]
    if coupled:
        wd = value(groups[coupled[0]]["weight_decay"])
        found.append(
            Finding(
                "warning",
                "adam-l2",
                f"Adam with weight_decay={wd:g} adds wd·θ to the gradient (L2, coupled): the decay is then divided "
                f"by sqrt(v), so weights with a large gradient history are barely decayed and the best wd moves "
                f"with lr. AdamW (decoupled decay) was probably meant.",
                ", ".join(_group_label(i, n) for i in coupled),
                "Use decoupled.AdamW or torch.optim.AdamW (or Adam(..., decoupled_weight_decay=True)). The value "
                "does not carry over: re-tune wd (AdamW commonly 0.01-0.1).",
            )
        )
    if any(not c.coupled for c in conventions) and all(value(g["weight_decay"]) == 0 for g in groups):
        found.append(
            Finding(
                "warning",
                "adamw-no-decay",
                "AdamW with weight_decay=0 in every param group is plain Adam: no decay is applied.",
                "all param groups",
                "Set weight_decay (commonly 0.01-0.1) on the group of weight matrices, or use Adam if no "
                "decay is intended.",
            )
        )
    return found


def _membership_findings(optimizer: torch.optim.Optimizer, model: nn.Module | None) -> list[Finding]:
    """A tensor in two groups; a trainable parameter of the model in none."""
    found = []
    seen: dict[int, list[int]] = {}
    for i, g in enumerate(optimizer.param_groups):
        for p in g["params"]:
            seen.setdefault(id(p), []).append(i)
    labels: dict[int, str] = {}
    if model is not None:
        for name, p in model.named_parameters(remove_duplicate=False):
            labels.setdefault(id(p), name)
    twice = [k for k, where in seen.items() if len(where) > 1]
    if twice:
        found.append(
            Finding(
                "error",
                "param-twice",
                f"{len(twice)} parameter(s) appear more than once in the optimizer: each occurrence is updated "
                f"(and decayed) separately, so they move twice per step.",
                names([labels.get(k, f"a tensor in groups {seen[k]}") for k in twice]),
                "List each parameter in exactly one param group.",
            )
        )
    if model is not None:
        missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            found.append(
                Finding(
                    "error",
                    "param-missing",
                    f"{len(missing)} trainable parameter(s) of the model are in no param group and are never updated.",
                    names(missing),
                    "Build the groups from model.named_parameters() (decoupled.param_groups(model) does), or set "
                    "requires_grad=False on parameters meant to stay frozen.",
                )
            )
    return found


def _decay_membership(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    decay_embeddings: bool,
    no_decay: tuple[Any, ...],
    decay: tuple[Any, ...],
) -> list[Finding]:
    from ..groups import no_decay_reasons

    reasons = no_decay_reasons(model, decay_embeddings=False, no_decay=no_decay, decay=decay)
    by_id = {id(p): name for name, p in model.named_parameters()}
    decayed: set[str] = set()
    for g in optimizer.param_groups:
        if value(g["weight_decay"]) > 0:
            decayed.update(by_id[id(p)] for p in g["params"] if id(p) in by_id)
    buckets: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        if reason is None or name not in decayed or (reason == "embedding" and decay_embeddings):
            continue
        if reason == "bias":
            code = "decay-bias"
        elif reason.startswith("normalization"):
            code = "decay-norm"
        elif reason == "embedding":
            code = "decay-embedding"
        else:
            code = "decay-other"
        buckets.setdefault(code, []).append(f"{name} ({reason})" if code == "decay-other" else name)
    norms = sorted({r for r in reasons.values() if r and r.startswith("normalization")})
    texts = {
        "decay-bias": (
            "warning",
            "biases are decayed: pulling offsets to zero biases the function without regularizing it",
        ),
        "decay-norm": (
            "warning",
            "normalization weights are decayed ("
            + ", ".join(n.split("(", 1)[-1].rstrip(")") for n in norms)
            + "): shrinking a norm's gain shrinks every activation after it",
        ),
        "decay-embedding": (
            "warning",
            "embedding tables are decayed: every row shrinks every step but only rows of tokens "
            "in the batch get gradient, so rare tokens drift to zero (many recipes accept this)",
        ),
        "decay-other": ("warning", "parameters that should not decay are decayed"),
    }
    out = []
    for code, items in buckets.items():
        severity, text = texts[code]
        out.append(
            Finding(
                severity,
                code,
                f"{text[0].upper()}{text[1:]} ({len(items)} parameter{'s' * (len(items) > 1)}).",
                names(items),
                "Build the param groups with decoupled.param_groups(model, weight_decay=...), which puts biases and "
                "norms"
                + (" (and, with decay_embeddings=False, embeddings)" if code == "decay-embedding" else "")
                + " in a weight_decay=0 group, or move these parameters to a group with weight_decay=0.",
            )
        )
    return out


def _warmup(optimizer: torch.optim.Optimizer, scheduler: Any, warmup_steps: int | None) -> list[Finding]:
    fix = (
        "Warm the lr up linearly over the first ~1-5% of steps, e.g. "
        "decoupled.schedules.create('cosine', optimizer, warmup_steps=..., total_steps=...)."
    )
    if warmup_steps is not None:
        if warmup_steps > 0:
            return []
        return [
            Finding(
                "warning",
                "no-warmup",
                "No warmup: the first Adam steps use the full lr while the "
                "second-moment estimate v is still built from a handful of gradients.",
                "schedule",
                fix,
            )
        ]
    if scheduler is None:
        return [
            Finding(
                "info",
                "no-warmup",
                "No lr scheduler was given, so the lr is constant from step 1 (no "
                "warmup) unless you change it by hand.",
                "schedule",
                fix + " If you warm up by hand, pass warmup_steps=.",
            )
        ]
    last = getattr(scheduler, "last_epoch", 0)
    base = getattr(scheduler, "base_lrs", None)
    if last not in (0, -1) or not base:
        return []  # a resumed run, or a scheduler we cannot read
    now = [value(g["lr"]) for g in optimizer.param_groups]
    ratios = [c / value(b) for c, b in zip(now, base) if value(b) > 0]
    if ratios and max(ratios) > 0.5:
        return [
            Finding(
                "warning",
                "no-warmup",
                f"The scheduler starts at {max(ratios):.0%} of its peak lr: no warmup, so the first Adam "
                f"steps use (nearly) the full lr while v is still built from a handful of gradients.",
                f"scheduler {type(scheduler).__name__}",
                fix,
            )
        ]
    return []
