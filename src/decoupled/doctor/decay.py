r"""How strong each param group's decay is: its timescale next to the run, and what low precision loses.

The EMA timescale of a decoupled convention (Wang & Aitchison 2025, arXiv:2405.13698) is
:math:`\tau = 1/d` steps, :math:`d` the fraction of a weight removed per step at peak lr
(:meth:`decoupled.conventions.Convention.decay_per_step`): :math:`1/(\gamma\lambda)` for
``adamw`` and ``adamw_corrected`` (at peak lr, :math:`\gamma^2/\gamma_{max} = \gamma`),
:math:`1/\lambda` for ``adamw_indep``, and a cautious convention as its scaling (on the
coordinates it decays). Over a run of :math:`S` steps, decay alone keeps :math:`e^{-S/\tau}` of a
weight's starting value: the decay does almost nothing when :math:`\tau` is many times the run,
and dominates (the weights forget what they learned within a few hundred steps) when
:math:`\tau` is short.

Every function here takes numbers (lr, weight decay, steps) and returns numbers or findings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..conventions import ADAM_L2, Convention, Scaling, of_group
from .findings import Finding, fmt_steps, names, render_table

SHORT_TAU_STEPS = 200
"""A timescale under this many steps means the decay dominates: weights forget within a few hundred steps."""
LONG_TAU_RUNS = 10
"""A timescale over this many runs means the decay does almost nothing: :math:`e^{-1/10}` = 90% survives."""
TARGET_TAU_FRACTION = 0.3
"""What the fixes aim at: a timescale of ~30% of the run (at least :data:`SHORT_TAU_STEPS`), well inside it."""

HALF_ULP = {torch.bfloat16: 2.0**-9, torch.float16: 2.0**-12}
"""Half the relative spacing of a floating-point format: a multiplicative change smaller than this
rounds back to the same number (round to nearest), in the worst case over the mantissa."""


def value(x: Any) -> float:
    """A hyperparameter (float or 0-d tensor) as a float."""
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def convention_of(group: dict[str, Any], kind: str) -> Convention:
    """The convention of a param group of an optimizer of ``kind`` (``'adam'`` or ``'adamw'``): torch's Adam
    groups of older versions lack ``decoupled_weight_decay`` and mean coupled L2."""
    if kind == "adam" and not group.get("decoupled_weight_decay", False):
        return ADAM_L2
    return of_group(group)


def peak_lr(group: dict[str, Any], scheduler: Any, index: int) -> float:
    """The group's peak lr: the scheduler's base lr, else the lr it was built with."""
    base = getattr(scheduler, "base_lrs", None)
    if base and index < len(base):
        return value(base[index])
    return value(group.get("initial_lr", group["lr"]))


@dataclass(frozen=True)
class GroupTimescale:
    """One param group's decay, in numbers."""

    group: int
    convention: str
    """The :mod:`decoupled.conventions` key (``adamw``, ``adamw_indep``, ...)."""
    lr: float
    """Peak learning rate."""
    weight_decay: float
    decay_per_step: float | None
    """Fraction of a weight removed per step at peak lr; None for coupled L2 (it differs per weight)."""
    tau_steps: float | None
    """:math:`1/d` steps (``inf`` for no decay); None for coupled L2."""
    total_steps: int | None
    """Optimizer steps in the run, when known."""
    lr_independent: bool = False
    """Whether the decay is lr-independent (``weight_decay`` itself is the fraction per step at peak lr)."""

    @property
    def runs(self) -> float | None:
        """:math:`\\tau` in runs (``tau_steps / total_steps``)."""
        if self.tau_steps is None or not self.total_steps:
            return None
        return self.tau_steps / self.total_steps

    def reading(self) -> str:
        """What the timescale means for this run, in a few words."""
        if self.tau_steps is None:
            return "coupled L2: no single timescale (decay divided by sqrt(v) per weight)"
        if math.isinf(self.tau_steps):
            return "no decay"
        if self.tau_steps < SHORT_TAU_STEPS:
            return f"decay dominates: under {SHORT_TAU_STEPS} steps"
        runs = self.runs
        if runs is None:
            return "run length unknown"
        kept = math.exp(-1 / runs)
        if runs < 0.01:
            return "decay dominates: under 1% of the run"
        if runs <= 1:
            return "acts within the run"
        if runs <= LONG_TAU_RUNS:
            return f"longer than the run: decay alone keeps {kept:.0%} of a weight"
        return f"decay does almost nothing: keeps {kept:.0%} of a weight"


def group_timescale(
    index: int, group: dict[str, Any], kind: str, scheduler: Any = None, total_steps: int | None = None
) -> GroupTimescale:
    """The :class:`GroupTimescale` of one param group."""
    convention = convention_of(group, kind)
    lr, wd = peak_lr(group, scheduler, index), value(group["weight_decay"])
    lr_max = value(group.get("lr_max") or lr)
    per_step = convention.decay_per_step(wd, lr, lr_max) if lr_max > 0 else (None if convention.coupled else 0.0)
    tau = None if per_step is None else (math.inf if per_step == 0 else 1.0 / per_step)
    indep = convention.scaling is Scaling.INDEPENDENT
    return GroupTimescale(index, convention.key, lr, wd, per_step, tau, total_steps, lr_independent=indep)


def timescale_findings(t: GroupTimescale, where: str, steps_per_epoch: float | None) -> list[Finding]:
    """Decay that wipes weights out, dominates, or does almost nothing over the run."""
    if t.decay_per_step is None or t.tau_steps is None or t.decay_per_step <= 0:
        return []
    indep = t.lr_independent
    formula = "1/wd" if indep else "1/(lr·wd)"
    form = (
        f"weight_decay={t.weight_decay:g} (lr-independent, {t.convention})"
        if indep
        else f"lr={t.lr:g} x weight_decay={t.weight_decay:g} ({t.convention})"
    )
    tau, total = t.tau_steps, t.total_steps
    target_tau = None if not total else max(TARGET_TAU_FRACTION * total, SHORT_TAU_STEPS)
    target = None if target_tau is None else _weight_decay_for(t, target_tau)
    fix_args = {} if target is None else {"weight_decay": target}
    aim = (
        "" if target_tau is None else f"towards {target:.3g} (a timescale of {fmt_steps(target_tau, steps_per_epoch)})"
    )
    if t.decay_per_step >= 0.1:
        typical = "1e-5 to 1e-3" if indep else "0.01-0.1 with lr 1e-4 to 1e-3"
        return [
            Finding(
                "error",
                "decay-timescale",
                f"{form} removes {t.decay_per_step:.0%} of every decayed weight per step (timescale "
                f"{fmt_steps(tau, steps_per_epoch)}): weights are wiped out almost at once.",
                where,
                f"Lower weight_decay{' ' + aim if aim else ''}: with {t.convention} decay, typical values are "
                f"{typical}.",
                fix_args,
            )
        ]
    if total and tau > LONG_TAU_RUNS * total:
        return [
            Finding(
                "info" if tau < 100 * total else "warning",
                "decay-timescale",
                f"The decay timescale ({t.convention}: {formula}) is "
                f"{fmt_steps(tau, steps_per_epoch)}, {tau / total:.3g}x the run's {fmt_steps(total, steps_per_epoch)}: "
                f"decay alone would shrink a weight only to {math.exp(-total / tau):.1%} by the end, so it has "
                f"almost no effect.",
                where,
                f"For a decay that acts within the run, raise weight_decay {aim}; `decoupled convert-wd` "
                f"translates between forms.",
                fix_args,
            )
        ]
    if tau < SHORT_TAU_STEPS or (total is not None and tau < total / 100):
        share = f", under 1% of the run's {fmt_steps(total, steps_per_epoch)}" if total and tau < total / 100 else ""
        return [
            Finding(
                "warning",
                "decay-timescale",
                f"The decay timescale ({t.convention}: {formula}) is "
                f"{fmt_steps(tau, steps_per_epoch)}{share}: decay dominates, and weights forget everything they "
                f"learned more than {tau:,.0f} steps ago.",
                where,
                f"Lower weight_decay {aim or '(typical AdamW values are 0.01-0.1)'}, or check it is in the form "
                f"the optimizer expects (`decoupled convert-wd`).",
                fix_args,
            )
        ]
    return []


def _weight_decay_for(t: GroupTimescale, tau_steps: float) -> float:
    """The weight decay that gives ``tau_steps`` with this group's convention and lr (numbers in, a number out)."""
    assert t.decay_per_step is not None and t.weight_decay > 0
    return t.weight_decay * (1.0 / tau_steps) / t.decay_per_step  # d is proportional to wd


ROUNDING_FIX = (
    "Use decoupled.AdamW(..., param_rounding='kahan') (a bf16 compensation buffer, +2 B per weight) or "
    "param_rounding='stochastic' (bf16, no memory), or keep fp32 master weights (mixed precision)."
)


def _rounds_to_nearest(group: dict[str, Any]) -> bool:
    return group.get("param_rounding", "nearest") == "nearest"


def decay_precision_findings(group: dict[str, Any], t: GroupTimescale, where: str) -> list[Finding]:
    """bf16/fp16 weights whose per-step decay fraction is below half the format's resolution."""
    if not _rounds_to_nearest(group) or not t.decay_per_step:
        return []
    per_step = t.decay_per_step
    out = []
    for dt in sorted({p.dtype for p in group["params"] if p.dtype in HALF_ULP}, key=str):
        limit = HALF_ULP[dt]
        if per_step < limit:
            name = str(dt).replace("torch.", "")
            out.append(
                Finding(
                    "warning",
                    "decay-below-precision",
                    f"weight_decay={t.weight_decay:g} ({t.convention}, peak lr {t.lr:g}) removes {per_step:.2e} of a "
                    f"weight per step, below {name}'s resolution ({limit:.2e}): θ·(1 - {per_step:.1e}) rounds back "
                    f"to θ in {name}, so the decay is silently lost.",
                    f"{where} ({name} parameters)",
                    ROUNDING_FIX,
                )
            )
    return out


def update_precision_findings(group: dict[str, Any], lr: float, where: str) -> list[Finding]:
    """bf16/fp16 weights whose typical Adam step (about lr) is under half an ulp of the weight."""
    if not _rounds_to_nearest(group) or lr <= 0:
        return []
    lost, total = [], 0
    for p in group["params"]:
        if p.dtype not in HALF_ULP or p.numel() == 0:
            continue
        total += p.numel()
        rms = p.detach().float().square().mean().sqrt().item()
        if rms > 0 and lr / rms < HALF_ULP[p.dtype]:
            lost.append(p)
    if not lost:
        return []
    share = sum(p.numel() for p in lost) / total
    shapes = names([str(tuple(p.shape)) for p in lost])
    name = str(lost[0].dtype).replace("torch.", "")
    return [
        Finding(
            "warning",
            "update-below-precision",
            f"{len(lost)} {name} tensor(s) ({share:.0%} of the group's {name} weights; shapes {shapes}) have "
            f"weights so large that an Adam step of about lr={lr:g} is under half a {name} ulp: rounded to "
            f"nearest, θ - step == θ, and these weights stop learning.",
            f"{where} ({name} parameters)",
            ROUNDING_FIX,
        )
    ]


def format_timescales(rows: Sequence[GroupTimescale], steps_per_epoch: float | None = None) -> str:
    """Each param group's decay timescale next to the run's length, as a text table ('' without groups)."""
    if not rows:
        return ""
    title = "decay timescale per param group: tau = 1 / (fraction of a weight decayed per step at peak lr)"
    header = ("group", "convention", "peak lr", "weight_decay", "decay/step", "tau", "run", "reading")
    body = [
        (
            str(r.group),
            r.convention,
            f"{r.lr:g}",
            f"{r.weight_decay:g}",
            "-" if r.decay_per_step is None else f"{r.decay_per_step:.3g}",
            "-" if r.tau_steps is None else fmt_steps(r.tau_steps, steps_per_epoch),
            "unknown" if r.total_steps is None else fmt_steps(r.total_steps, steps_per_epoch),
            r.reading(),
        )
        for r in rows
    ]
    try:
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is in the lab extra
        return "\n".join([title, *("  " + " | ".join(line) for line in (header, *body))])
    table = Table(title=title, expand=False, title_justify="left")
    for col in header:
        table.add_column(col, overflow="fold", max_width=44 if col == "reading" else 24)
    for line in body:
        table.add_row(*line)
    return render_table(table)
