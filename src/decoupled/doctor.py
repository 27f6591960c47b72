r"""Checks of a training setup for weight-decay mistakes: :func:`check` and ``decoupled doctor``.

``decoupled.check(optimizer, model=None, scheduler=None, ...)`` inspects an Adam-family
optimizer (``torch.optim.Adam``, ``torch.optim.AdamW``, :class:`decoupled.Adam`,
:class:`decoupled.AdamW`), optionally with its model and lr scheduler, and returns a list of
:class:`Finding` (severity, what, where, how to fix). A clean setup returns ``[]``.

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
* ``decay-timescale``: the EMA timescale of decoupled decay, :math:`\tau = 1/(\gamma\lambda)`
  steps at peak lr (:math:`1/\lambda` for lr-independent decay), is more than 10 times the run
  (decay does almost nothing: :math:`e^{-T/\tau} > 0.9`) or under 1/100 of it; or, with any run
  length, the per-step decay :math:`\gamma\lambda` is 10% or more.
* ``decay-below-precision``: for bf16 (or fp16) parameters, the per-step decay fraction is below
  half the format's relative resolution (:math:`2^{-9}` for bf16, :math:`2^{-12}` for fp16), so
  :math:`\theta(1-\gamma\lambda)` rounds back to :math:`\theta` and the decay is lost.
* ``update-below-precision``: for bf16 (or fp16) tensors, an Adam step of about :math:`\gamma` is
  below half an ulp of the tensor's RMS weight (:math:`\gamma/\mathrm{rms}(\theta) < 2^{-9}` in
  bf16), so round-to-nearest writes :math:`\theta` back unchanged and those weights stop learning
  (typically norm gains near 1 with lr ~1e-4). Both precision checks are skipped for groups with
  ``param_rounding='kahan'`` or ``'stochastic'`` (:mod:`decoupled.formats`), which keep such updates.

The findings print as a table (:func:`format_findings`). :class:`DoctorCallback` runs the check
when a Hugging Face ``Trainer`` starts training. The command checks a setup built by a Python
entry point (``decoupled doctor mymodule:make_setup``) or described by a ``TrainingArguments``
JSON file (``decoupled doctor --training-args args.json [--model mymodule:make_model]``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

SEVERITIES = ("error", "warning", "info")

#: Half the relative spacing of a floating-point format: a multiplicative change smaller than
#: this rounds back to the same number (round to nearest), in the worst case over the mantissa.
_HALF_ULP = {torch.bfloat16: 2.0**-9, torch.float16: 2.0**-12}


@dataclass(frozen=True)
class Finding:
    """One problem found in a training setup."""

    severity: str
    """``error`` (training is wrong), ``warning`` (very likely a mistake) or ``info`` (worth knowing)."""
    code: str
    """A short stable identifier, e.g. ``adam-l2``."""
    what: str
    """What is wrong, in plain words, with the numbers."""
    where: str
    """Which param group(s) or parameter(s)."""
    fix: str
    """How to fix it."""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# ---- the check -----------------------------------------------------------------------------------


def _kind(optimizer: torch.optim.Optimizer) -> str:
    from . import optim as dopt

    if isinstance(optimizer, (torch.optim.AdamW, dopt.AdamW)):
        return "adamw"
    if isinstance(optimizer, (torch.optim.Adam, dopt.Adam)):
        return "adam"
    raise TypeError(
        f"decoupled.check works on torch.optim.Adam/AdamW and decoupled.Adam/AdamW, got {type(optimizer).__name__}"
    )


def _decoupled(group: dict[str, Any], kind: str) -> bool:
    return kind == "adamw" or bool(group.get("decoupled_weight_decay", False))


def _val(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _peak_lr(group: dict[str, Any], scheduler: Any, index: int) -> float:
    base = getattr(scheduler, "base_lrs", None)
    if base and index < len(base):
        return _val(base[index])
    return _val(group.get("initial_lr", group["lr"]))


def _total_steps_of(scheduler: Any) -> int | None:
    if scheduler is None:
        return None
    options = getattr(scheduler, "options", None)
    if isinstance(options, dict) and options.get("total_steps"):
        return int(options["total_steps"])
    for attr in ("total_steps", "T_max", "total_iters"):
        value = getattr(scheduler, attr, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def _names(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _group_label(i: int, n: int) -> str:
    return f"param group {i}" if n > 1 else "the optimizer's only param group"


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
    kind = _kind(optimizer)
    groups = optimizer.param_groups
    n = len(groups)
    found: list[Finding] = []
    total_steps = total_steps or _total_steps_of(scheduler)

    # -- the convention ------------------------------------------------------------------------
    coupled = [i for i, g in enumerate(groups) if not _decoupled(g, kind) and _val(g["weight_decay"]) > 0]
    if coupled:
        wd = _val(groups[coupled[0]]["weight_decay"])
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
    if kind == "adamw" or any(_decoupled(g, kind) for g in groups):
        if all(_val(g["weight_decay"]) == 0 for g in groups):
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

    # -- membership of parameters ---------------------------------------------------------------
    seen: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        for p in g["params"]:
            seen.setdefault(id(p), []).append(i)
    names: dict[int, str] = {}
    if model is not None:
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), name)
    twice = [k for k, where in seen.items() if len(where) > 1]
    if twice:
        label = [names.get(k, f"a tensor in groups {seen[k]}") for k in twice]
        found.append(
            Finding(
                "error",
                "param-twice",
                f"{len(twice)} parameter(s) appear more than once in the optimizer: each occurrence is updated "
                f"(and decayed) separately, so they move twice per step.",
                _names(label),
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
                    _names(missing),
                    "Build the groups from model.named_parameters() (decoupled.param_groups(model) does), or set "
                    "requires_grad=False on parameters meant to stay frozen.",
                )
            )
        found += _decay_membership(optimizer, model, kind, decay_embeddings, tuple(no_decay), tuple(decay))

    # -- schedule ---------------------------------------------------------------------------------
    found += _warmup(optimizer, scheduler, warmup_steps)

    # -- how strong the decay is ------------------------------------------------------------------
    for i, g in enumerate(groups):
        wd = _val(g["weight_decay"])
        if wd <= 0 or not _decoupled(g, kind):
            continue
        lr = _peak_lr(g, scheduler, i)
        indep = bool(g.get("lr_independent_decay"))
        per_step = wd if indep else lr * wd  # fraction removed per step at peak lr
        where = _group_label(i, n)
        form = f"weight_decay={wd:g} (lr-independent)" if indep else f"lr={lr:g} x weight_decay={wd:g}"
        found += _timescale(per_step, form, where, total_steps, steps_per_epoch, indep)
        found += _precision(g, per_step, form, where)
    for i, g in enumerate(groups):
        found += _update_precision(g, _peak_lr(g, scheduler, i), _group_label(i, n))

    order = {s: k for k, s in enumerate(SEVERITIES)}
    found.sort(key=lambda f: order[f.severity])
    if print_findings:
        print(format_findings(found))
    return found


def _decay_membership(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    kind: str,
    decay_embeddings: bool,
    no_decay: tuple[Any, ...],
    decay: tuple[Any, ...],
) -> list[Finding]:
    from .groups import no_decay_reasons

    reasons = no_decay_reasons(model, decay_embeddings=False, no_decay=no_decay, decay=decay)
    by_id = {id(p): name for name, p in model.named_parameters()}
    decayed: set[str] = set()
    for g in optimizer.param_groups:
        if _val(g["weight_decay"]) > 0:
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
                _names(items),
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
    now = [_val(g["lr"]) for g in optimizer.param_groups]
    ratios = [c / _val(b) for c, b in zip(now, base) if _val(b) > 0]
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


def _fmt_steps(steps: float, steps_per_epoch: float | None) -> str:
    text = f"{steps:,.0f} steps" if steps >= 10 else f"{steps:.2g} steps"
    if steps_per_epoch:
        text += f" ({steps / steps_per_epoch:.3g} epochs)"
    return text


def _timescale(
    per_step: float, form: str, where: str, total: int | None, spe: float | None, indep: bool
) -> list[Finding]:
    tau = 1.0 / per_step
    if per_step >= 0.1:
        return [
            Finding(
                "error",
                "decay-timescale",
                f"{form} removes {per_step:.0%} of every decayed weight per step (timescale {_fmt_steps(tau, spe)}): "
                f"weights are wiped out almost at once.",
                where,
                "Lower weight_decay: "
                + (
                    "with lr_independent_decay, typical values are 1e-5 to 1e-3."
                    if indep
                    else "typical AdamW values are 0.01-0.1 with lr 1e-4 to 1e-3."
                ),
            )
        ]
    if not total:
        return []
    if tau > 10 * total:
        kept = math.exp(-total / tau)
        return [
            Finding(
                "info" if tau < 100 * total else "warning",
                "decay-timescale",
                f"The decay timescale 1/(lr·wd) is {_fmt_steps(tau, spe)}, {tau / total:.3g}x the run's "
                f"{_fmt_steps(total, spe)}: decay alone would shrink a weight only to {kept:.1%} by the end, so it "
                f"has almost no effect.",
                where,
                f"For a decay that acts within the run, raise weight_decay towards "
                f"{_wd_of(form) * tau / (0.3 * total):.3g} (timescale ~30% of the run); `decoupled convert-wd` "
                f"translates between forms.",
            )
        ]
    if tau < total / 100:
        return [
            Finding(
                "warning",
                "decay-timescale",
                f"The decay timescale 1/(lr·wd) is {_fmt_steps(tau, spe)}, under 1% of the run's "
                f"{_fmt_steps(total, spe)}: weights forget everything they learned more than {tau:,.0f} steps ago.",
                where,
                "Lower weight_decay, or check it is in the form the optimizer expects (`decoupled convert-wd`).",
            )
        ]
    return []


def _wd_of(form: str) -> float:
    return float(form.split("weight_decay=")[1].split()[0])


_ROUNDING_FIX = (
    "Use decoupled.AdamW(..., param_rounding='kahan') (a bf16 compensation buffer, +2 B per weight) or "
    "param_rounding='stochastic' (bf16, no memory), or keep fp32 master weights (mixed precision)."
)


def _rounds_to_nearest(group: dict[str, Any]) -> bool:
    return group.get("param_rounding", "nearest") == "nearest"


def _update_precision(group: dict[str, Any], lr: float, where: str) -> list[Finding]:
    """bf16/fp16 weights whose typical Adam step (about lr) is under half an ulp of the weight."""
    if not _rounds_to_nearest(group) or lr <= 0:
        return []
    lost, total = [], 0
    for p in group["params"]:
        if p.dtype not in _HALF_ULP or p.numel() == 0:
            continue
        total += p.numel()
        rms = p.detach().float().square().mean().sqrt().item()
        if rms > 0 and lr / rms < _HALF_ULP[p.dtype]:
            lost.append(p)
    if not lost:
        return []
    share = sum(p.numel() for p in lost) / total
    shapes = _names([str(tuple(p.shape)) for p in lost])
    name = str(lost[0].dtype).replace("torch.", "")
    return [
        Finding(
            "warning",
            "update-below-precision",
            f"{len(lost)} {name} tensor(s) ({share:.0%} of the group's {name} weights; shapes {shapes}) have "
            f"weights so large that an Adam step of about lr={lr:g} is under half a {name} ulp: rounded to "
            f"nearest, θ - step == θ, and these weights stop learning.",
            f"{where} ({name} parameters)",
            _ROUNDING_FIX,
        )
    ]


def _precision(group: dict[str, Any], per_step: float, form: str, where: str) -> list[Finding]:
    if not _rounds_to_nearest(group):
        return []
    dtypes = {p.dtype for p in group["params"] if p.dtype in _HALF_ULP}
    out = []
    for dt in sorted(dtypes, key=str):
        limit = _HALF_ULP[dt]
        if per_step < limit:
            name = str(dt).replace("torch.", "")
            out.append(
                Finding(
                    "warning",
                    "decay-below-precision",
                    f"{form} removes {per_step:.2e} of a weight per step, below {name}'s resolution ({limit:.2e}): "
                    f"θ·(1 - {per_step:.1e}) rounds back to θ in {name}, so the decay is silently lost.",
                    f"{where} ({name} parameters)",
                    _ROUNDING_FIX,
                )
            )
    return out


# ---- output --------------------------------------------------------------------------------------


def format_findings(findings: Sequence[Finding]) -> str:
    """The findings as a text table (with rich when it is installed); a short line when there are none."""
    if not findings:
        return "decoupled doctor: no findings. The weight-decay setup looks right."
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is in the lab extra
        lines = [f"[{f.severity}] {f.code} @ {f.where}: {f.what}\n    fix: {f.fix}" for f in findings]
        return "\n".join(lines)
    colors = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    table = Table(
        title=f"decoupled doctor: {len(findings)} finding(s)", show_lines=True, expand=False, title_justify="left"
    )
    for col, width in (("severity", 22), ("what", 46), ("where", 22), ("how to fix", 38)):
        table.add_column(col, max_width=width, overflow="fold", no_wrap=col == "severity")
    for f in findings:
        table.add_row(f"[{colors[f.severity]}]{f.severity}[/]\n{f.code}", f.what, f.where, f.fix)
    console = Console(width=130, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


# ---- Hugging Face ------------------------------------------------------------------------------


def _make_callback() -> type:
    from transformers import TrainerCallback

    class DoctorCallback(TrainerCallback):
        """Runs :func:`decoupled.check` when a ``Trainer`` starts training and prints the findings.

        ``trainer = Trainer(..., callbacks=[DoctorCallback()])``. The findings are kept in
        ``self.findings``; ``raise_on="error"`` stops training on findings of that severity.
        """

        def __init__(self, raise_on: str | None = None, **check_options: Any) -> None:
            if raise_on is not None and raise_on not in SEVERITIES:
                raise ValueError(f"raise_on must be one of {SEVERITIES} or None, got {raise_on!r}")
            self.raise_on = raise_on
            self.check_options = check_options
            self.findings: list[Finding] = []

        def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
            if optimizer is None:
                return
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
            total = state.max_steps if getattr(state, "max_steps", 0) else None
            epochs = getattr(state, "num_train_epochs", 0) or getattr(args, "num_train_epochs", 0)
            spe = total / epochs if total and epochs else None
            self.findings = check(
                inner, model, lr_scheduler, total_steps=total, steps_per_epoch=spe, **self.check_options
            )
            if state.is_world_process_zero if hasattr(state, "is_world_process_zero") else True:
                print(format_findings(self.findings))
            if self.raise_on is not None:
                cut = SEVERITIES.index(self.raise_on)
                bad = [f for f in self.findings if SEVERITIES.index(f.severity) <= cut]
                if bad:
                    raise RuntimeError(
                        f"decoupled doctor: {len(bad)} finding(s) of severity {self.raise_on} or worse; "
                        f"first: {bad[0].code}: {bad[0].what}"
                    )

    return DoctorCallback


_CALLBACK: type | None = None


def __getattr__(name: str) -> Any:
    global _CALLBACK
    if name == "DoctorCallback":
        if _CALLBACK is None:
            _CALLBACK = _make_callback()
        return _CALLBACK
    raise AttributeError(f"module 'decoupled.doctor' has no attribute {name!r}")


# ---- TrainingArguments files ---------------------------------------------------------------------

_HF_ADAM = {
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_hf",
    "adamw_apex_fused",
    "adamw_torch_xla",
    "adamw_torch_npu_fused",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
}


def check_training_args(
    args: dict[str, Any], model: nn.Module | None = None, *, steps_per_epoch: float | None = None
) -> list[Finding]:
    """Check a ``TrainingArguments`` (as a dict, e.g. loaded from its JSON) and optionally the model.

    With a model, builds the optimizer exactly as ``Trainer`` would (its decay/no-decay split,
    its optimizer choice) and runs :func:`check`; without one, checks what the arguments alone
    say (optimizer name, weight decay, warmup, decay timescale when the run length is known).
    """
    found: list[Finding] = []
    optim = str(args.get("optim", "adamw_torch")).split(".")[-1].lower()
    wd = float(args.get("weight_decay", 0.0))
    lr = float(args.get("learning_rate", 5e-5))
    max_steps = int(args.get("max_steps", -1) or -1)
    epochs = float(args.get("num_train_epochs", 3.0))
    total = max_steps if max_steps > 0 else (round(epochs * steps_per_epoch) if steps_per_epoch else None)
    if optim not in _HF_ADAM:
        found.append(
            Finding(
                "info",
                "not-adamw",
                f"optim={optim!r} is not an AdamW variant; only the generic checks apply.",
                "TrainingArguments.optim",
                "Nothing to do if this is intended.",
            )
        )
    elif wd == 0:
        found.append(
            Finding(
                "warning",
                "adamw-no-decay",
                "weight_decay=0 (the TrainingArguments default): AdamW without decay is plain Adam.",
                "TrainingArguments.weight_decay",
                "Set weight_decay (commonly 0.01-0.1).",
            )
        )
    warm = int(args.get("warmup_steps", 0) or 0)
    ratio = float(args.get("warmup_ratio", 0.0) or 0.0)
    if (
        warm == 0
        and ratio == 0
        and str(args.get("lr_scheduler_type", "linear")).split(".")[-1] not in ("constant", "reduce_lr_on_plateau")
    ):
        found.append(
            Finding(
                "warning",
                "no-warmup",
                "No warmup (warmup_steps=0 and warmup_ratio=0): the first Adam "
                "steps use the full lr while v is still built from a handful of gradients.",
                "TrainingArguments.warmup_steps / warmup_ratio",
                "Set warmup_ratio=0.03 or so.",
            )
        )
    if model is not None and optim in _HF_ADAM:
        from transformers import Trainer

        decay_names = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay_names], "weight_decay": wd},
            {"params": [p for n, p in named if n not in decay_names], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
        found += [
            f
            for f in check(opt, model, total_steps=total, steps_per_epoch=steps_per_epoch, warmup_steps=1)
            if f.code not in ("adamw-no-decay", "no-warmup")
        ]
    elif wd > 0 and optim in _HF_ADAM:
        found += _timescale(
            lr * wd, f"lr={lr:g} x weight_decay={wd:g}", "TrainingArguments", total, steps_per_epoch, False
        )
    order = {s: k for k, s in enumerate(SEVERITIES)}
    found.sort(key=lambda f: order[f.severity])
    return found


# ---- the command ---------------------------------------------------------------------------------


def _load_entry(spec: str) -> Callable[[], Any]:
    from .lab.tasks import _resolve_attr

    obj = _resolve_attr(spec)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj


def _unpack(setup: Any) -> dict[str, Any]:
    if isinstance(setup, torch.optim.Optimizer):
        return {"optimizer": setup}
    if isinstance(setup, dict):
        unknown = set(setup) - {
            "optimizer",
            "model",
            "scheduler",
            "total_steps",
            "steps_per_epoch",
            "warmup_steps",
            "decay_embeddings",
        }
        if unknown or "optimizer" not in setup:
            raise ValueError(
                "the entry point's dict needs 'optimizer' and may have 'model', 'scheduler', "
                f"'total_steps', 'steps_per_epoch', 'warmup_steps'; got {sorted(setup)}"
            )
        return setup
    if isinstance(setup, (tuple, list)):  # told apart by type, so any order works
        found: dict[str, Any] = {}
        for item in setup:
            if item is None:  # (optimizer, model, None): no scheduler
                continue
            key = _role(item)
            if key is None or key in found:
                kinds = ", ".join(type(x).__name__ for x in setup)
                raise ValueError(
                    f"the entry point returned ({kinds}); return an optimizer, with at most one model "
                    "(torch.nn.Module) and one lr scheduler, in any order, or a dict"
                )
            found[key] = item
        if "optimizer" not in found:
            raise ValueError("the entry point returned no optimizer; return (optimizer, model[, scheduler])")
        return found
    raise ValueError(
        f"the entry point returned {type(setup).__name__}; return an optimizer, a tuple "
        "(optimizer, model[, scheduler]) or a dict"
    )


def _role(item: Any) -> str | None:
    """Which part of a training setup ``item`` is: optimizer, model or (lr) scheduler."""
    if isinstance(item, torch.optim.Optimizer):
        return "optimizer"
    if isinstance(item, torch.nn.Module):
        return "model"
    if hasattr(item, "get_last_lr"):  # torch's LRScheduler and schedulers shaped like it
        return "scheduler"
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "entry",
        nargs="?",
        help="'module:function' or 'file.py:function' returning an optimizer, "
        "(optimizer, model[, scheduler]) or a dict with those keys and total_steps/steps_per_epoch",
    )
    p.add_argument("--training-args", help="a Hugging Face TrainingArguments JSON file to check")
    p.add_argument("--model", help="with --training-args: 'module:function' returning the model")
    p.add_argument("--total-steps", type=int, help="optimizer steps in the run")
    p.add_argument("--steps-per-epoch", type=float, help="optimizer steps per epoch")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        if args.training_args:
            with open(args.training_args) as f:
                targs = json.load(f)
            model = _load_entry(args.model)() if args.model else None
            findings = check_training_args(targs, model, steps_per_epoch=args.steps_per_epoch)
        elif args.entry:
            setup = _unpack(_load_entry(args.entry)())
            if args.total_steps:
                setup["total_steps"] = args.total_steps
            if args.steps_per_epoch:
                setup["steps_per_epoch"] = args.steps_per_epoch
            findings = check(setup.pop("optimizer"), setup.pop("model", None), setup.pop("scheduler", None), **setup)
        else:
            print("decoupled doctor: give an entry point (module:function) or --training-args FILE.json")
            return 2
    except (ValueError, TypeError, OSError, json.JSONDecodeError) as err:
        print(f"decoupled doctor: error: {err}")
        return 2
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        print(format_findings(findings))
    return 1 if any(f.severity == "error" for f in findings) else 0
