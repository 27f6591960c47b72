r"""``decoupled explain``: what Adam + L2 and AdamW really did to each weight.

The same model (same seed, same batches) is trained twice: with Adam + L2 (coupled) and with
AdamW (decoupled). After every step, for every decayed weight :math:`\theta_i`, the **effective
decay** of that step is recorded: the fraction of the weight that the weight-decay term removed,

.. math::

    d_i^{AdamW}(t) = \gamma_t\lambda, \qquad
    d_i^{Adam+L2}(t) = \frac{\gamma_t\,\lambda_{L2}}{\sqrt{\hat v_i(t)} + \epsilon}

(for Adam + L2 the L2 term :math:`\lambda_{L2}\theta` enters the gradient and is divided by
:math:`\sqrt{\hat v}` like the rest of it; momentum spreads it over steps but does not change its
sum). The report shows the *mean per-step* effective decay :math:`\bar d_i = \frac1T\sum_t d_i(t)`
(unitless, per step) of every weight, as histograms per parameter tensor; the same by decile of
the weight's gradient history :math:`\overline{\sqrt{\hat v_i}}` (the time-averaged RMS gradient,
gradient units); and the resulting weight norms. In AdamW every weight gets the same decay; in
Adam + L2, weights with a large gradient history are barely decayed and weights that rarely
get gradient are decayed hard.
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

from . import plots, report
from .tasks import CONVENTIONS, Task, load_task
from .train import train_run

PAIR = ("adam_l2", "adamw")


class _Recorder:
    """Accumulates, per decayed parameter, the sum over steps of d_i(t) and of sqrt(v_hat_i(t))."""

    def __init__(self, coupled: bool) -> None:
        self.coupled = coupled
        self.sum_d: dict[int, torch.Tensor] = {}
        self.sum_rms: dict[int, torch.Tensor] = {}
        self.steps = 0

    def __call__(self, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        self.steps += 1
        for group in opt.param_groups:
            wd = float(group["weight_decay"])
            if wd <= 0:
                continue
            lr = float(group["lr"])
            beta2, eps = group["betas"][1], group["eps"]
            for p in group["params"]:
                st = opt.state.get(p)
                if not st:
                    continue
                t = float(st["step"])
                rms = (st["exp_avg_sq"] / (1 - beta2**t)).sqrt()
                d = lr * wd / (rms + eps) if self.coupled else torch.full_like(p, lr * wd)
                key = id(p)
                if key not in self.sum_d:
                    self.sum_d[key] = torch.zeros_like(p, dtype=torch.float64)
                    self.sum_rms[key] = torch.zeros_like(p, dtype=torch.float64)
                self.sum_d[key] += d.double()
                self.sum_rms[key] += rms.double()
        self.model = model


def explain(
    task: str | Task = "digits",
    *,
    out: str | os.PathLike | None = None,
    lr: float | None = None,
    wd_adam_l2: float | None = None,
    wd_adamw: float | None = None,
    epochs: int | None = None,
    seed: int = 0,
    max_train: int | None = None,
) -> dict[str, Any]:
    """Train ``task`` with Adam + L2 and with AdamW, measure each weight's decay, write a report.

    Defaults come from the task's ``explain_defaults`` (``lr``, ``adam_l2``, ``adamw``) when it
    has them, else lr 1e-3, L2 1e-2 and AdamW weight_decay 0.5. Returns the ``explain.json``
    content (summaries per tensor and per decile, and the reading); writes ``report.html``.
    """
    task = load_task(task)
    defaults = {"lr": 1e-3, "adam_l2": 1e-2, "adamw": 0.5, **getattr(task, "explain_defaults", {})}
    lr = float(lr or defaults["lr"])
    wds = {"adam_l2": float(wd_adam_l2 or defaults["adam_l2"]), "adamw": float(wd_adamw or defaults["adamw"])}
    for name, v in [("lr", lr), *wds.items()]:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v}")
    out = Path(out or f"explain-{task.name}")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    data = task.data(seed).limit_train(max_train)

    per_conv: dict[str, Any] = {}
    for conv in PAIR:
        rec = _Recorder(coupled=conv == "adam_l2")
        result = train_run(
            task, data, convention=conv, lr=lr, weight_decay=wds[conv], seed=seed, epochs=epochs, callback=rec
        )
        names = {id(p): n for n, p in rec.model.named_parameters()}
        tensors = {}
        for key, s in rec.sum_d.items():
            p = dict((id(q), q) for q in rec.model.parameters())[key]
            tensors[names[key]] = {
                "decay": (s / rec.steps).flatten().numpy(),
                "rms": (rec.sum_rms[key] / rec.steps).flatten().numpy(),
                "norm": float(p.detach().double().norm()),
            }
        all_norms = {n: float(p.detach().double().norm()) for n, p in rec.model.named_parameters()}
        per_conv[conv] = {"tensors": tensors, "norms": all_norms, "result": result, "wd": wds[conv]}

    summary = _summarize(per_conv)
    reading = _reading(summary, wds, task)
    (out / "explain.json").write_text(
        json.dumps(
            {
                "task": task.name,
                "lr": lr,
                "weight_decay": wds,
                "seed": seed,
                "epochs": per_conv["adamw"]["result"]["epochs"],
                "summary": summary,
                "reading": reading,
                "final": {c: per_conv[c]["result"]["final"] for c in PAIR},
                "environment": report.environment(),
            },
            indent=1,
        )
        + "\n"
    )
    _write_report(out, task, per_conv, summary, reading, lr, wds)
    return {
        "summary": summary,
        "reading": reading,
        "paths": {"report": str(out / "report.html"), "json": str(out / "explain.json")},
    }


def _summarize(per_conv: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for conv, info in per_conv.items():
        d = np.concatenate([t["decay"] for t in info["tensors"].values()])
        rms = np.concatenate([t["rms"] for t in info["tensors"].values()])
        edges = np.quantile(rms, np.linspace(0, 1, 11))
        idx = np.clip(np.searchsorted(edges, rms, side="right") - 1, 0, 9)
        deciles = [float(np.median(d[idx == k])) if (idx == k).any() else None for k in range(10)]
        s[conv] = {
            "decay_p10": float(np.quantile(d, 0.1)),
            "decay_median": float(np.median(d)),
            "decay_p90": float(np.quantile(d, 0.9)),
            "decay_by_rms_decile": deciles,
            "per_tensor": {
                n: {"decay_median": float(np.median(t["decay"])), "norm": t["norm"]} for n, t in info["tensors"].items()
            },
            "norms": info["norms"],
            "test": info["result"]["final"]["test"],
        }
    return s


def _reading(summary: dict[str, Any], wds: dict[str, float], task: Task) -> list[str]:
    a, w = summary["adam_l2"], summary["adamw"]
    spread = a["decay_p90"] / max(a["decay_p10"], 1e-300)
    dec = a["decay_by_rms_decile"]
    ratio = (dec[0] / dec[-1]) if dec[0] and dec[-1] else float("nan")
    lines = [
        f"AdamW removed the same fraction of every decayed weight: {w['decay_median']:.2e} per step on average "
        f"(lr·wd, following the schedule).",
        f"Adam + L2 (wd {wds['adam_l2']:g}) did not: the middle 80% of weights got between {a['decay_p10']:.2e} "
        f"and {a['decay_p90']:.2e} per step, a {spread:.0f}x spread, because its decay is divided by each "
        f"weight's sqrt(v).",
        f"Weights with the smallest gradient history (bottom decile) were decayed {ratio:.0f}x more than those with "
        f"the largest (top decile): Adam + L2 regularizes most the weights the data uses least.",
    ]
    na = sum(v**2 for v in a["norms"].values()) ** 0.5
    nw = sum(v**2 for v in w["norms"].values()) ** 0.5
    metric = task.metric
    shown = [r["test"].get(metric, float("nan")) for r in (a, w)]
    fmt = "{:.2%}" if metric == "error" else "{:.4g}"
    lines.append(
        f"Total weight norm at the end: {na:.3g} with Adam + L2, {nw:.3g} with AdamW. "
        f"Test {task.metric_label(metric)}: {fmt.format(shown[0])} vs {fmt.format(shown[1])}."
    )
    return lines


def _write_report(
    out: Path,
    task: Task,
    per_conv: dict[str, Any],
    summary: dict[str, Any],
    reading: list[str],
    lr: float,
    wds: dict[str, float],
) -> None:
    from .report import esc, img, page, table

    plt = plots._plt()
    names = list(per_conv["adam_l2"]["tensors"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        da = per_conv["adam_l2"]["tensors"][name]["decay"]
        dw = per_conv["adamw"]["tensors"][name]["decay"]
        lo = np.log10(max(min(da.min(), dw.min()), 1e-300))
        hi = np.log10(max(da.max(), dw.max()))
        bins = np.linspace(lo - 0.1, hi + 0.1, 40)
        ax.hist(np.log10(da), bins=bins, color=plots.color("adam_l2"), alpha=0.85, label="Adam + L2")
        ax.axvline(np.log10(np.median(dw)), color=plots.color("adamw"), lw=2.5, label="AdamW (every weight)")
        ax.set_title(f"{name}  ({da.size:,} weights)", fontsize=9)
        ax.set_xlabel("log10 mean decay per step")
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, frameon=False)
    hist_png = plots.to_png(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3.6))
    x = np.arange(1, 11)
    for conv in PAIR:
        y = [v if v else np.nan for v in summary[conv]["decay_by_rms_decile"]]
        a1.plot(x, y, "o-", color=plots.color(conv), lw=2, label=CONVENTIONS[conv])
    a1.set_yscale("log")
    a1.set_xticks(x)
    a1.set_xlabel("gradient-history decile (1 = smallest RMS gradient, 10 = largest)")
    a1.set_ylabel("median decay per step")
    a1.set_title("Who gets decayed?")
    a1.legend(fontsize=8, frameon=False)
    all_names = [n for n in per_conv["adam_l2"]["norms"] if n in per_conv["adam_l2"]["tensors"]]
    pos = np.arange(len(all_names))
    for k, conv in enumerate(PAIR):
        a2.barh(
            pos + (k - 0.5) * 0.38,
            [per_conv[conv]["norms"][n] for n in all_names],
            height=0.38,
            color=plots.color(conv),
            label=CONVENTIONS[conv],
        )
    a2.set_yticks(pos, all_names, fontsize=8)
    a2.invert_yaxis()
    a2.set_xlabel("final Frobenius norm")
    a2.set_title("Resulting weight norms (decayed tensors)")
    a2.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    dec_png = plots.to_png(fig)

    rows_ = []
    for n in names:
        rows_.append(
            [
                n,
                f"{summary['adam_l2']['per_tensor'][n]['decay_median']:.2e}",
                f"{summary['adamw']['per_tensor'][n]['decay_median']:.2e}",
                f"{summary['adam_l2']['per_tensor'][n]['norm']:.3g}",
                f"{summary['adamw']['per_tensor'][n]['norm']:.3g}",
            ]
        )
    body = [
        '<div class="findings"><b>Reading</b><ul>' + "".join(f"<li>{esc(x)}</li>" for x in reading) + "</ul></div>",
        "<h2>Effective decay of every weight, per tensor</h2>",
        img(
            hist_png,
            "histograms",
            "Mean fraction of each weight removed per step by the weight-decay term "
            "(log scale). AdamW applies one value to every weight (line); Adam + L2 divides it by each weight's "
            "sqrt(v), spreading it over orders of magnitude.",
        ),
        "<h2>By gradient history, and the resulting norms</h2>",
        img(
            dec_png,
            "deciles and norms",
            "Left: weights binned by their time-averaged RMS gradient sqrt(v̂). "
            "Right: the norm of each decayed tensor after training.",
        ),
        table(["tensor", "median decay/step, Adam + L2", "AdamW", "final norm, Adam + L2", "AdamW"], rows_),
        f"<h2>Setup</h2><p>{esc(task.description)} Peak lr {lr:g}; Adam + L2 wd {wds['adam_l2']:g}; AdamW "
        f"weight_decay {wds['adamw']:g}. Same seed, initial weights and batches for both runs; biases and "
        f"normalization parameters are not decayed.</p>",
    ]
    (out / "report.html").write_text(
        page("decoupled explain", f"{esc(task.name)}: what each convention did to each weight", "".join(body))
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="digits", help="built-in task (digits, charlm), 'module:Attr' or 'file.py:Attr'")
    p.add_argument("--out", help="output folder (default: explain-<task>)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the task's, else 1e-3)")
    p.add_argument("--wd-adam-l2", type=float, help="L2 coefficient for Adam + L2")
    p.add_argument("--wd-adamw", type=float, help="AdamW weight_decay (PyTorch form)")
    p.add_argument("--epochs", type=int, help="override the task's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, help="use only this many training examples")


def run(args: argparse.Namespace) -> int:
    try:
        res = explain(
            args.task,
            out=args.out,
            lr=args.lr,
            wd_adam_l2=args.wd_adam_l2,
            wd_adamw=args.wd_adamw,
            epochs=args.epochs,
            seed=args.seed,
            max_train=args.max_train,
        )
    except (ValueError, TypeError) as err:
        print(f"decoupled explain: error: {err}")
        return 2
    for line in res["reading"]:
        print("- " + line)
    print(f"\nReport: {res['paths']['report']}")
    return 0
