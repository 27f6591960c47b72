r"""Translate a weight decay between conventions and scales (``decoupled convert-wd``).

Every decoupled form describes one quantity: the **fraction of a weight removed per step at
peak learning rate**, :math:`d` (unitless, per step). With peak lr :math:`\gamma`, batch size
:math:`b`, training-set size :math:`B` (examples) and :math:`T` epochs:

==================  =============================================  =====================================
form (name)         meaning                                        relation to :math:`d`
==================  =============================================  =====================================
``torch``           PyTorch's ``AdamW(weight_decay=...)``           :math:`d = \gamma\,\lambda_{torch}`
``indep``           lr-independent form (``lr_independent_decay``)  :math:`d = \lambda`
``normalized``      the paper's normalized weight decay             :math:`d = \lambda_{norm}\sqrt{b/(B T)}`
``tau``             EMA timescale, in steps                         :math:`d = 1/\tau`
``tau_epochs``      EMA timescale, in epochs                        :math:`d = b / (B\,\tau_{epochs})`
==================  =============================================  =====================================

So :math:`\lambda_{torch} = \lambda / \gamma` (lr-independent to PyTorch), and the timescale
view reads AdamW as an exponential moving average of the updates over the last
:math:`\tau = 1/(\gamma\lambda_{torch})` steps: a weight forgets its value from :math:`\tau`
steps ago by a factor :math:`e^{-1}`. An epoch is :math:`B/b` steps (fractional, no rounding).

The normalized form is Loshchilov & Hutter's (ICLR 2019, Appendix B.1): the paper's
:math:`\lambda` multiplies the schedule multiplier :math:`\eta_t`, so it is the ``indep`` form.
The timescale view is Wang & Aitchison, "How to set AdamW's weight decay as you scale model
and dataset size" (arXiv:2405.13698).

Adam + L2 has no such translation: its decay is divided by each weight's :math:`\sqrt{\hat v}`,
so the fraction removed per step differs per weight (``decoupled explain`` measures it).

Example::

    >>> from decoupled.conversions import convert_wd
    >>> convert_wd(0.1, "torch", "indep", lr=1e-3)          # 0.1 * 1e-3
    0.0001
    >>> convert_wd(0.1, "torch", "tau", lr=1e-3)            # 1 / (1e-3 * 0.1) steps
    10000.0
"""

from __future__ import annotations

import argparse
import math

FORMS: dict[str, str] = {
    "torch": "PyTorch AdamW weight_decay (decay lr*wd per step)",
    "indep": "lr-independent weight decay (fraction per step at peak lr)",
    "normalized": "normalized weight decay of Loshchilov & Hutter (wd = wd_norm * sqrt(b / (B*T)))",
    "tau": "EMA timescale 1/(lr*wd), in steps",
    "tau_epochs": "EMA timescale, in epochs",
}
_NEEDS = {
    "torch": ("lr",),
    "indep": (),
    "normalized": ("batch_size", "dataset_size", "epochs"),
    "tau": (),
    "tau_epochs": ("batch_size", "dataset_size"),
}
_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "dataset_size": "--dataset-size", "epochs": "--epochs"}


def _positive(name: str, x: float | None) -> float:
    if x is None:
        raise ValueError(f"{name} is required for this conversion")
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {x!r}")
    return float(x)


def torch_to_lr_independent(weight_decay: float, lr: float) -> float:
    r"""PyTorch ``weight_decay`` -> lr-independent :math:`\lambda = \gamma\,\lambda_{torch}` (per step at peak lr)."""
    return _positive_or_zero("weight_decay", weight_decay) * _positive("lr", lr)


def lr_independent_to_torch(weight_decay: float, lr: float) -> float:
    r"""lr-independent :math:`\lambda` -> PyTorch ``weight_decay`` :math:`= \lambda / \gamma`."""
    return _positive_or_zero("weight_decay", weight_decay) / _positive("lr", lr)


def normalized_to_lr_independent(wd_norm: float, *, batch_size: int, dataset_size: int, epochs: float) -> float:
    r"""Normalized :math:`\lambda_{norm}` -> :math:`\lambda = \lambda_{norm}\sqrt{b / (B\,T)}` (per step)."""
    b = _positive("batch_size", batch_size)
    n = _positive("dataset_size", dataset_size)
    t = _positive("epochs", epochs)
    return _positive_or_zero("wd_norm", wd_norm) * math.sqrt(b / (n * t))


def lr_independent_to_normalized(weight_decay: float, *, batch_size: int, dataset_size: int, epochs: float) -> float:
    r"""lr-independent :math:`\lambda` -> :math:`\lambda_{norm} = \lambda\sqrt{B\,T / b}`."""
    return _positive_or_zero("weight_decay", weight_decay) / normalized_to_lr_independent(
        1.0, batch_size=batch_size, dataset_size=dataset_size, epochs=epochs
    )


def timescale_steps(lr: float, weight_decay: float) -> float:
    r"""AdamW's EMA timescale :math:`\tau = 1 / (\gamma\,\lambda_{torch})` in steps (``inf`` for no decay)."""
    d = _positive_or_zero("weight_decay", weight_decay) * _positive("lr", lr)
    return math.inf if d == 0 else 1.0 / d


def timescale_epochs(lr: float, weight_decay: float, *, batch_size: int, dataset_size: int) -> float:
    r""":math:`\tau` in epochs: :math:`\tau_{steps}\,b / B` (an epoch is :math:`B/b` steps)."""
    return (
        timescale_steps(lr, weight_decay)
        * _positive("batch_size", batch_size)
        / _positive("dataset_size", dataset_size)
    )


def weight_decay_for_timescale(tau_steps: float, lr: float) -> float:
    r"""The PyTorch ``weight_decay`` that gives a timescale of ``tau_steps``: :math:`1 / (\gamma\tau)`."""
    return 1.0 / (_positive("tau_steps", tau_steps) * _positive("lr", lr))


def _positive_or_zero(name: str, x: float) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return float(x)


def convert_wd(
    value: float,
    from_: str,
    to: str,
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    dataset_size: int | None = None,
    epochs: float | None = None,
) -> float:
    """Convert ``value`` from form ``from_`` to form ``to`` (forms: see :data:`FORMS`).

    ``lr`` is the peak learning rate; ``batch_size``, ``dataset_size`` (training examples) and
    ``epochs`` are needed only by the forms that mention them. Raises ValueError naming what is
    missing. Timescales of a zero decay are ``inf`` and convert back to 0.
    """
    for form in (from_, to):
        if form not in FORMS:
            hint = (
                " (Adam + L2 has no fixed translation: its decay is divided by sqrt(v) per weight)"
                if "l2" in form.lower()
                else ""
            )
            raise ValueError(f"unknown weight-decay form {form!r}; choose from {', '.join(FORMS)}{hint}")
    known = {"lr": lr, "batch_size": batch_size, "dataset_size": dataset_size, "epochs": epochs}
    missing = [k for f in (from_, to) for k in _NEEDS[f] if known[k] is None]
    if missing:
        names = ", ".join(dict.fromkeys(_FLAGS[k].lstrip("-").replace("-", "_") for k in missing))
        raise ValueError(f"converting {from_} -> {to} needs {names}")
    for k, v in known.items():
        if v is not None:
            _positive(k, v)
    d = _to_fraction(value, from_, known)
    return _from_fraction(d, to, known)


def _to_fraction(value: float, form: str, k: dict[str, float | None]) -> float:
    if form in ("tau", "tau_epochs"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
            raise ValueError(f"a timescale must be > 0 (inf for no decay), got {value!r}")
        if math.isinf(value):
            return 0.0
        steps = value if form == "tau" else value * k["dataset_size"] / k["batch_size"]  # type: ignore[operator]
        return 1.0 / steps
    value = _positive_or_zero("weight decay", value)
    if form == "torch":
        return value * k["lr"]  # type: ignore[operator]
    if form == "normalized":
        return value * math.sqrt(k["batch_size"] / (k["dataset_size"] * k["epochs"]))  # type: ignore[operator]
    return value


def _from_fraction(d: float, form: str, k: dict[str, float | None]) -> float:
    if form == "torch":
        return d / k["lr"]  # type: ignore[operator]
    if form == "normalized":
        return d / math.sqrt(k["batch_size"] / (k["dataset_size"] * k["epochs"]))  # type: ignore[operator]
    if form in ("tau", "tau_epochs"):
        if d == 0:
            return math.inf
        return 1.0 / d if form == "tau" else (1.0 / d) * k["batch_size"] / k["dataset_size"]  # type: ignore[operator]
    return d


# ---- the command ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Translate a weight decay between PyTorch's AdamW form, the lr-independent form, the paper's "
        "normalized weight decay and the EMA timescale. Prints every form it can compute from what you give."
    )
    p.add_argument("value", type=float, help="the weight decay (or timescale) to convert")
    p.add_argument("--from", dest="from_", default="torch", choices=list(FORMS), help="form of VALUE (default: torch)")
    p.add_argument("--to", choices=list(FORMS), help="print only this form")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--batch-size", type=int, help="batch size b (examples per step)")
    p.add_argument("--dataset-size", type=int, help="training examples B")
    p.add_argument("--epochs", type=float, help="training epochs T")


def run(args: argparse.Namespace) -> int:
    kw = {"lr": args.lr, "batch_size": args.batch_size, "dataset_size": args.dataset_size, "epochs": args.epochs}
    targets = [args.to] if args.to else list(FORMS)
    rows = []
    for form in targets:
        try:
            rows.append((form, f"{convert_wd(args.value, args.from_, form, **kw):.6g}", FORMS[form]))
        except ValueError as err:
            if args.to:
                print(f"decoupled convert-wd: error: {err}")
                return 2
            rows.append((form, "-", f"needs {str(err).split('needs ', 1)[-1]}" if "needs" in str(err) else str(err)))
    if args.to:
        print(rows[0][1])
        return 0
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{args.value:g} as {args.from_} ({FORMS[args.from_]}):")
    for form, value, text in rows:
        print(f"  {form:<{width}}  {value:>{vwidth}}  {text}")
    if args.epochs and args.batch_size and args.dataset_size and args.lr:
        steps = args.epochs * args.dataset_size / args.batch_size
        try:
            tau = convert_wd(args.value, args.from_, "tau", **kw)
            print(f"  the run is {steps:.6g} steps; the timescale is {tau / steps:.3g} of the run")
        except ValueError:
            pass
    return 0
