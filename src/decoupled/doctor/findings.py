"""What ``doctor`` reports: :class:`Finding`, its severities, and the tables it prints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")
"""Most severe first: ``error`` (training is wrong), ``warning`` (very likely a mistake), ``info``."""


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
    fix_args: dict[str, Any] = field(default_factory=dict)
    """The keyword arguments that apply the fix, where it is a change of values: ``TrainingArguments`` keywords
    for a ``TrainingArguments`` finding (valid for the installed transformers; ``None`` means leave the key
    out), the group's new ``weight_decay`` for a timescale finding; empty otherwise."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sort_findings(findings: Sequence[Finding]) -> list[Finding]:
    """The findings, most severe first (stable within a severity)."""
    order = {s: k for k, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: order[f.severity])


def names(items: Sequence[str], limit: int = 4) -> str:
    """``'a, b, c, d and 3 more'``."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def fmt_steps(steps: float, steps_per_epoch: float | None = None) -> str:
    """A number of steps for a reader: ``'10,000 steps (25.6 epochs)'``."""
    if math.isinf(steps):
        return "never"
    text = f"{steps:,.0f} steps" if steps >= 10 else f"{steps:.2g} steps"
    if steps_per_epoch:
        text += f" ({steps / steps_per_epoch:.3g} epochs)"
    return text


def render_table(table: Any) -> str:
    from rich.console import Console

    console = Console(width=130, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def format_findings(findings: Sequence[Finding]) -> str:
    """The findings as a text table (with rich when it is installed); a short line when there are none."""
    if not findings:
        return "decoupled doctor: no findings. The weight-decay setup looks right."
    try:
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is in the lab extra
        return "\n".join(f"[{f.severity}] {f.code} @ {f.where}: {f.what}\n    fix: {f.fix}" for f in findings)
    colors = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    table = Table(
        title=f"decoupled doctor: {len(findings)} finding(s)", show_lines=True, expand=False, title_justify="left"
    )
    for col, width in (("severity", 22), ("what", 46), ("where", 22), ("how to fix", 38)):
        table.add_column(col, max_width=width, overflow="fold", no_wrap=col == "severity")
    for f in findings:
        table.add_row(f"[{colors[f.severity]}]{f.severity}[/]\n{f.code}", f.what, f.where, f.fix)
    return render_table(table)
