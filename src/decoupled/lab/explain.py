r"""``decoupled explain``: what each weight-decay convention really did to each weight.

The same model (same seed, same batches) is trained once per convention (by default Adam + L2
and AdamW). After every step t, for every decayed weight :math:`\theta_i`, the **effective
decay** of that step is recorded: the fraction of the weight that the weight-decay term removed,

.. math::

    d_i(t) = \begin{cases}
      \gamma_t\lambda / (\sqrt{\hat v_i(t)} + \epsilon) & \text{Adam + L2 (divided by } \sqrt{\hat v}) \\
      D(\gamma_t) & \text{decoupled: } \gamma_t\lambda,\ (\gamma_t/\gamma_{max})\lambda,\
          (\gamma_t^2/\gamma_{max})\lambda \\
      D(\gamma_t)\,\mathbb 1[m_i(t)\,\theta_i(t-1) \ge 0] & \text{cautious: only where update and weight agree in sign}
    \end{cases}

(:math:`D` is :meth:`decoupled.conventions.Convention.decay_per_step`; for Adam + L2, momentum
spreads the L2 term over steps but does not change its sum; the Adam update has the sign of
:math:`m`, so the cautious mask is :math:`m\theta \ge 0`). Units: a fraction per step.

The report shows, per tensor, the *mean per-step* decay :math:`\bar d_i = \frac1T\sum_t d_i(t)`
of every weight (histograms); the median decay by decile of the weight's gradient history
:math:`\overline{\sqrt{\hat v_i}}` (time-averaged RMS gradient); the decay per step each
convention applied over the schedule; for cautious decay the share of each tensor's coordinates
it decayed; and the final weight norms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cli.args import UsageError, positive_float, positive_int
from ..conventions import CONVENTIONS
from . import report
from .tasks import Task, load_task, units_of
from .train import train_run

#: What ``explain`` trains unless told otherwise.
DEFAULT_PAIR = ("adam_l2", "adamw")


class Recorder:
    """Per decayed parameter: sums over steps of d_i(t), of sqrt(v_hat_i(t)) and, for cautious decay,
    of the mask; per step: the mean, median, 10th and 90th percentile of d(t) over all decayed weights."""

    def __init__(self, convention: str, progress: Any = None) -> None:
        self.conv = CONVENTIONS[convention]
        self.progress = progress
        self.sum_d: dict[int, torch.Tensor] = {}
        self.sum_rms: dict[int, torch.Tensor] = {}
        self.sum_mask: dict[int, torch.Tensor] = {}
        self.previous: dict[int, torch.Tensor] = {}
        self.schedule: dict[str, list[float]] = {"mean": [], "median": [], "p10": [], "p90": []}
        self.steps = 0

    def __call__(self, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        if step == 0:  # before the first step: the names, and theta_0 for the first cautious mask
            self.model = model
            self._remember(opt)
            return
        self.steps += 1
        step_d = []
        for group in opt.param_groups:
            wd = float(group["weight_decay"])
            if wd <= 0:
                continue
            lr, beta2, eps = float(group["lr"]), group["betas"][1], group["eps"]
            lr_max = float(group.get("lr_max") or lr)
            for p in group["params"]:
                st = opt.state.get(p)
                if not st:
                    continue
                key = id(p)
                rms = (st["exp_avg_sq"].double() / (1 - beta2 ** float(st["step"]))).sqrt()
                if self.conv.coupled:
                    d = lr * wd / (rms + eps)
                else:  # a decoupled convention: one fraction per step for every weight
                    d = torch.full_like(rms, float(self.conv.decay_per_step(wd, lr, lr_max) or 0.0))
                if self.conv.cautious:
                    mask = (st["exp_avg"] * self.previous[key] >= 0).double()
                    d = d * mask
                    self.sum_mask[key] = self.sum_mask.get(key, 0) + mask
                self.sum_d[key] = self.sum_d.get(key, 0) + d
                self.sum_rms[key] = self.sum_rms.get(key, 0) + rms
                step_d.append(d.detach().flatten())
        if step_d:
            d = torch.cat(step_d)
            q = torch.quantile(d[:: max(1, d.numel() // 4096)], torch.tensor([0.1, 0.5, 0.9], dtype=d.dtype))
            for name, v in zip(("mean", "p10", "median", "p90"), (d.mean(), q[0], q[1], q[2])):
                self.schedule[name].append(float(v))
        self._remember(opt)
        if self.progress is not None:
            self.progress()

    def _remember(self, opt: torch.optim.Optimizer) -> None:
        if self.conv.cautious:
            for group in opt.param_groups:
                for p in group["params"]:
                    self.previous[id(p)] = p.detach().clone()


def default_wds(task: Task, lr: float) -> dict[str, float]:
    """The task's ``explain_defaults`` per convention: the L2 coefficient for Adam + L2, and for every
    decoupled convention the weight_decay that removes as much per step at peak lr as AdamW's."""
    d = {"lr": 1e-3, "adam_l2": 1e-2, "adamw": 0.5, **getattr(task, "explain_defaults", {})}
    out = {}
    for key in CONVENTIONS:
        units = units_of(key)
        out[key] = float(d.get(key) or (d[units] if units != "adamw_indep" else d["adamw"] * lr))
    return out


def explain(
    task: str | Task = "nextchar",
    *,
    out: str | os.PathLike | None = None,
    conventions: list[str] | None = None,
    lr: float | None = None,
    wds: dict[str, float] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    max_train: int | None = None,
    progress: bool = True,
    wd_adam_l2: float | None = None,
    wd_adamw: float | None = None,
) -> dict[str, Any]:
    """Train ``task`` once per convention from the same seed, measure each weight's decay, write a report.

    ``wds`` maps a convention to its weight decay, in its own units (``wd_adam_l2`` and ``wd_adamw``
    are shorthands); the rest default to the task's ``explain_defaults`` (see :func:`default_wds`).
    Returns the ``explain.json`` content (summaries per tensor, per decile and per step, and the
    reading); writes ``report.html``.
    """
    task = load_task(task)
    conventions = list(dict.fromkeys(conventions or DEFAULT_PAIR))
    for c in conventions:
        if c not in CONVENTIONS:
            raise ValueError(f"unknown convention {c!r}; choose from {', '.join(CONVENTIONS)}")
    lr = float(lr or getattr(task, "explain_defaults", {}).get("lr", 1e-3))
    given = {**(wds or {}), **{k: v for k, v in (("adam_l2", wd_adam_l2), ("adamw", wd_adamw)) if v is not None}}
    chosen = {c: float(given.get(c) or default_wds(task, lr)[c]) for c in conventions}
    for name, v in [("lr", lr), *chosen.items()]:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    out = Path(out) if out is not None else Path("runs") / f"explain-{task.name}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the lab's models are small: one thread, as in compare's workers
    data = task.data(seed).limit_train(max_train)
    n = data.train[0].shape[0]
    steps = math.ceil(n / min(task.batch_size, n)) * (epochs or task.epochs)

    per_conv: dict[str, Any] = {}
    with _Bar(conventions, steps, enabled=progress) as bar:
        for conv in conventions:
            rec = Recorder(conv, progress=bar.step(conv))
            result = train_run(
                task, data, convention=conv, lr=lr, weight_decay=chosen[conv], seed=seed, epochs=epochs, callback=rec
            )
            per_conv[conv] = _collect(rec, result, chosen[conv])

    summary = {c: _summarize(info) for c, info in per_conv.items()}
    reading = _reading(summary, task)
    doc = {
        "task": task.name,
        "lr": lr,
        "weight_decay": chosen,
        "conventions": conventions,
        "seed": seed,
        "epochs": per_conv[conventions[0]]["result"]["epochs"],
        "summary": summary,
        "reading": reading,
        "final": {c: per_conv[c]["result"]["final"] for c in conventions},
        "environment": report.environment(),
    }
    (out / "explain.json").write_text(json.dumps(doc, indent=1) + "\n")
    from .explain_report import write

    write(out, task, per_conv, summary, reading, lr, chosen)
    return {**doc, "paths": {"report": str(out / "report.html"), "json": str(out / "explain.json")}}


def _collect(rec: Recorder, result: dict[str, Any], wd: float) -> dict[str, Any]:
    names = {id(p): n for n, p in rec.model.named_parameters()}
    norms = {n: float(p.detach().double().norm()) for n, p in rec.model.named_parameters()}
    tensors = {}
    for key, s in rec.sum_d.items():
        entry: dict[str, Any] = {
            "decay": (s / rec.steps).flatten().numpy(),
            "rms": (rec.sum_rms[key] / rec.steps).flatten().numpy(),
        }
        if key in rec.sum_mask:
            entry["share"] = float(rec.sum_mask[key].mean() / rec.steps)
        tensors[names[key]] = entry
    return {"tensors": tensors, "norms": norms, "schedule": rec.schedule, "result": result, "wd": wd}


def _summarize(info: dict[str, Any]) -> dict[str, Any]:
    d = np.concatenate([t["decay"] for t in info["tensors"].values()])
    rms = np.concatenate([t["rms"] for t in info["tensors"].values()])
    edges = np.quantile(rms, np.linspace(0, 1, 11))
    idx = np.clip(np.searchsorted(edges, rms, side="right") - 1, 0, 9)
    per_tensor = {}
    for n, t in info["tensors"].items():
        per_tensor[n] = {"decay_median": float(np.median(t["decay"])), "norm": info["norms"][n]}
        if "share" in t:
            per_tensor[n]["cautious_share"] = t["share"]
    return {
        "decay_p10": float(np.quantile(d, 0.1)),
        "decay_median": float(np.median(d)),
        "decay_mean": float(np.mean(d)),
        "decay_p90": float(np.quantile(d, 0.9)),
        "decay_by_rms_decile": [float(np.median(d[idx == k])) if (idx == k).any() else None for k in range(10)],
        "per_tensor": per_tensor,
        "schedule": info["schedule"],
        "norms": info["norms"],
        "test": info["result"]["final"]["test"],
    }


def _reading(summary: dict[str, Any], task: Task) -> list[str]:
    lines = []
    name = {c: CONVENTIONS[c].label.split(" (")[0] for c in summary}
    for c, s in summary.items():
        conv = CONVENTIONS[c]
        if conv.coupled:
            spread = s["decay_p90"] / max(s["decay_p10"], 1e-300)
            dec = s["decay_by_rms_decile"]
            ratio = dec[0] / dec[-1] if dec[0] and dec[-1] else float("nan")
            lines.append(
                f"{name[c]}: the middle 80% of weights lost between {s['decay_p10']:.2e} and {s['decay_p90']:.2e} "
                f"per step, a {spread:.0f}x spread: its decay is divided by each weight's sqrt(v). The bottom "
                f"gradient decile was decayed {ratio:.0f}x more than the top."
            )
        elif conv.cautious:
            shares = [t["cautious_share"] for t in s["per_tensor"].values()]
            lines.append(
                f"{name[c]}: decayed {np.mean(shares):.0%} of the coordinates per step on average "
                f"({min(shares):.0%} to {max(shares):.0%} by tensor), {s['decay_mean']:.2e} per step per weight."
            )
        else:
            lines.append(f"{name[c]}: every decayed weight lost the same {s['decay_mean']:.2e} per step on average.")
    metric = task.metric
    fmt = "{:.2%}" if metric == "error" else "{:.4g}"
    lines.append(
        f"Test {task.metric_label(metric)}: "
        + "; ".join(f"{name[c]} {fmt.format(s['test'].get(metric, float('nan')))}" for c, s in summary.items())
        + ". Total weight norm at the end: "
        + "; ".join(f"{name[c]} {math.sqrt(sum(v**2 for v in s['norms'].values())):.3g}" for c, s in summary.items())
        + "."
    )
    return lines


class _Bar:
    """One rich progress bar per convention (steps done / total), or nothing."""

    def __init__(self, conventions: list[str], steps: int, *, enabled: bool) -> None:
        self.conventions, self.steps, self.enabled = conventions, steps, enabled
        self._progress: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            )
            self._progress.__enter__()
            self._ids = {c: self._progress.add_task(f"training {c}", total=self.steps) for c in self.conventions}
        return self

    def step(self, conv: str) -> Any:
        if self._progress is None:
            return None
        return lambda: self._progress.update(self._ids[conv], advance=1)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default="nextchar",
        help="built-in task (nextchar, digits, charlm), 'module:Attr' or 'file.py:Attr' (default: nextchar)",
    )
    p.add_argument("--out", help="output folder (default: runs/explain-<task>)")
    p.add_argument(
        "--conventions",
        default=",".join(DEFAULT_PAIR),
        help=f"comma-separated, any of {','.join(CONVENTIONS)} (default: {','.join(DEFAULT_PAIR)})",
    )
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the task's)")
    for key, conv in CONVENTIONS.items():
        p.add_argument(
            f"--wd-{key.replace('_', '-')}",
            type=positive_float,
            dest=f"wd_{key}",
            metavar="WD",
            help=f"weight decay of {conv.label}",
        )
    p.add_argument("--epochs", type=positive_int, help="override the task's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=positive_int, help="use only this many training examples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    conventions = [c.strip() for c in args.conventions.split(",") if c.strip()]
    unknown = [c for c in conventions if c not in CONVENTIONS]
    if unknown or not conventions:
        raise UsageError(f"--conventions: unknown {unknown or conventions}; choose from {', '.join(CONVENTIONS)}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")
    try:
        res = explain(
            args.task,
            out=args.out,
            conventions=conventions,
            lr=args.lr,
            wds={c: getattr(args, f"wd_{c}") for c in CONVENTIONS if getattr(args, f"wd_{c}") is not None},
            epochs=args.epochs,
            seed=args.seed,
            max_train=args.max_train,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    for line in res["reading"]:
        print("- " + line)
    print(f"\nReport: {res['paths']['report']}")
    return 0
