r"""Translate a weight decay between conventions, scales and timescales (``decoupled convert-wd``).

Every decoupled form describes one quantity: :math:`d`, the **fraction of a weight removed per
step at peak learning rate** (unitless, per step). With peak lr :math:`\gamma` (also the
:math:`\gamma_{max}` of the scaled conventions), batch size :math:`b`, training-set size
:math:`B` (examples), :math:`T` epochs and a run of :math:`S` optimizer steps:

* ``adamw`` (alias ``torch``), PyTorch's ``AdamW(weight_decay=wd)``, decay :math:`\gamma_t\lambda` per
  step: :math:`d = \gamma\lambda`;
* ``adamw_indep`` (alias ``indep``), lr-independent, decay :math:`(\gamma_t/\gamma_{max})\lambda`:
  :math:`d = \lambda`;
* ``adamw_corrected`` (AdamC), decay :math:`(\gamma_t^2/\gamma_{max})\lambda`:
  :math:`d = \gamma^2/\gamma_{max}\,\lambda = \gamma\lambda`;
* ``adamw_cautious``, as ``adamw`` on the coordinates it decays: :math:`d = \gamma\lambda`;
* ``normalized``, Loshchilov & Hutter's normalized weight decay: :math:`d = \lambda_{norm}\sqrt{b/(BT)}`;
* ``tau``, the EMA timescale in steps: :math:`d = 1/\tau`;
* ``tau_epochs``, in epochs of :math:`\lceil B/b\rceil` steps: :math:`d = 1/(\tau_{epochs}\lceil B/b\rceil)`;
* ``tau_fraction``, as a fraction of the run's :math:`S` steps: :math:`d = 1/(\tau_{fraction} S)`.

The convention forms are the decoupled conventions of :mod:`decoupled.conventions`, by the same
names: each one's ``weight_decay`` is converted so that its decay per step at peak lr is the same
:math:`d` (:meth:`decoupled.conventions.Convention.decay_per_step`). So
:math:`\lambda_{indep} = \gamma\,\lambda_{adamw}`, and corrected decay takes PyTorch's value
unchanged (its decay equals PyTorch's at peak lr and falls as :math:`\gamma_t^2` after).

**Steps.** An epoch is :math:`\lceil B/b\rceil` optimizer steps (the last batch is partial, as
with ``DataLoader(drop_last=False)`` and Hugging Face's ``Trainer``), and a run of :math:`T`
epochs is :math:`S = \lceil T\lceil B/b\rceil\rceil` steps unless ``total_steps`` is given. The
normalized form keeps the paper's continuous :math:`\sqrt{b/(BT)}`.

**The timescale view** (Wang & Aitchison 2025, "How to set AdamW's weight decay as you scale
model and dataset size", arXiv:2405.13698): AdamW's weights are an exponential moving average
of its updates over the last :math:`\tau = 1/d = 1/(\gamma\lambda)` steps: a weight forgets its
value from :math:`\tau` steps ago by a factor :math:`e^{-1}`. They find the best :math:`\tau`,
counted in epochs, roughly constant as the model and data change, so a user may fix
:math:`\tau` and derive ``weight_decay`` (:func:`weight_decay_for_timescale`). The normalized form
is Loshchilov & Hutter's (ICLR 2019, Appendix B.1), whose :math:`\lambda` multiplies the
schedule multiplier, i.e. the lr-independent form.

Adam + L2 (``adam_l2``) has no such translation: its decay is divided by each weight's
:math:`\sqrt{\hat v}`, so the fraction removed per step differs per weight (``decoupled explain``
measures it).

Example::

    >>> from decoupled.conversions import convert_wd, weight_decay_for_timescale
    >>> convert_wd(0.1, "adamw", "adamw_indep", lr=1e-3)          # 0.1 * 1e-3
    0.0001
    >>> convert_wd(0.1, "adamw", "tau", lr=1e-3)                  # 1 / (1e-3 * 0.1) steps
    10000.0
    >>> weight_decay_for_timescale(tau_fraction=0.25, total_steps=40_000, lr=1e-3)  # 1 / (1e-3 * 10_000)
    0.1
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from . import conventions
from .conventions import Convention, Scaling

_DECOUPLED = {key: c for key, c in conventions.CONVENTIONS.items() if not c.coupled}

FORMS: dict[str, str] = {
    **{key: c.label for key, c in _DECOUPLED.items()},
    "normalized": "normalized weight decay of Loshchilov & Hutter (wd = wd_norm * sqrt(b / (B*T)), lr-independent)",
    "tau": "EMA timescale 1/(per-step decay at peak lr), in steps",
    "tau_epochs": "EMA timescale, in epochs",
    "tau_fraction": "EMA timescale, as a fraction of the run",
}
"""Every form :func:`convert_wd` knows, by name (the conventions' keys, then the scales)."""

ALIASES: dict[str, str] = {"torch": "adamw", "indep": "adamw_indep"}
"""Older names still accepted: ``torch`` is ``adamw``, ``indep`` is ``adamw_indep``."""

_SCALES = {
    "normalized": ("batch_size", "dataset_size", "epochs"),
    "tau": (),
    "tau_epochs": ("batch_size", "dataset_size"),
}
_SCALES["tau_fraction"] = ("total_steps",)
_FLAGS = {name: "--" + name.replace("_", "-") for name in ("lr", "batch_size", "dataset_size", "epochs", "total_steps")}


def form_name(form: str) -> str:
    """The canonical name of ``form`` (an alias is translated); ValueError listing the choices otherwise."""
    name = ALIASES.get(form, form)
    if name in FORMS:
        return name
    hint = ""
    if form == "adam_l2" or "l2" in form.lower():
        hint = " (Adam + L2 has no fixed translation: its decay is divided by sqrt(v) per weight)"
    raise ValueError(
        f"unknown weight-decay form {form!r}; choose from {', '.join(FORMS)} (or the aliases "
        f"{', '.join(f'{a}={n}' for a, n in ALIASES.items())}){hint}"
    )


def _needs(form: str) -> tuple[str, ...]:
    if form in _SCALES:
        return _SCALES[form]
    return () if _DECOUPLED[form].scaling is Scaling.INDEPENDENT else ("lr",)


def _positive(name: str, x: float | None) -> float:
    if x is None:
        raise ValueError(f"{name} is required for this conversion")
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {x!r}")
    return float(x)


def _positive_or_zero(name: str, x: float) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return float(x)


def _whole(name: str, x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {x!r}")
    return x


def _convention(convention: str | Convention) -> Convention:
    c = convention if isinstance(convention, Convention) else conventions.get(ALIASES.get(convention, convention))
    if c.coupled:
        raise ValueError(
            f"the {c.key} convention has no timescale: its decay is divided by sqrt(v) per weight; "
            f"use a decoupled convention ({', '.join(_DECOUPLED)})"
        )
    return c


# ---- steps, epochs and runs ------------------------------------------------------------------


def steps_per_epoch(batch_size: int, dataset_size: int) -> int:
    r"""Optimizer steps in one epoch: :math:`\lceil B/b\rceil` (the last batch is partial, as with
    ``DataLoader(drop_last=False)`` and ``Trainer``; divide by gradient accumulation yourself)."""
    return math.ceil(_whole("dataset_size", dataset_size) / _whole("batch_size", batch_size))


def run_steps(epochs: float, batch_size: int, dataset_size: int) -> int:
    r"""Optimizer steps in a run of ``epochs`` epochs: :math:`\lceil T\lceil B/b\rceil\rceil`, as ``Trainer``
    counts ``max_steps`` from ``num_train_epochs``."""
    return math.ceil(_positive("epochs", epochs) * steps_per_epoch(batch_size, dataset_size))


# ---- the timescale -------------------------------------------------------------------------


def _decay_at_peak(c: Convention, lr: float | None, lr_max: float | None) -> float:
    """Fraction removed per step at peak lr by a weight decay of 1 under convention ``c``."""
    if c.scaling is Scaling.INDEPENDENT and lr is None:
        return 1.0  # (lr / lr_max) * wd with lr = lr_max, whatever its size
    peak = _positive("lr", lr)
    per_step = c.decay_per_step(1.0, peak, _positive("lr_max", lr_max) if lr_max is not None else peak)
    assert per_step is not None  # decoupled
    return per_step


def timescale_steps(
    lr: float | None, weight_decay: float, convention: str | Convention = "adamw", *, lr_max: float | None = None
) -> float:
    r"""The EMA timescale of ``weight_decay`` under ``convention``: :math:`\tau = 1/d` steps, :math:`d` the
    fraction removed per step at peak lr ``lr`` (``adamw``: :math:`1/(\gamma\lambda)`; ``adamw_indep``:
    :math:`1/\lambda`, no lr needed; ``adamw_corrected``: :math:`\gamma_{max}/(\gamma^2\lambda)`;
    cautious: as its scaling, on the coordinates it decays). ``inf`` for no decay. ``lr_max`` is the
    scaled conventions' :math:`\gamma_{max}` (by default ``lr``)."""
    d = _positive_or_zero("weight_decay", weight_decay) * _decay_at_peak(_convention(convention), lr, lr_max)
    return math.inf if d == 0 else 1.0 / d


def timescale_epochs(lr: float, weight_decay: float, *, batch_size: int, dataset_size: int) -> float:
    r""":math:`\tau` of PyTorch's form in epochs: :math:`\tau_{steps}/\lceil B/b\rceil`."""
    return timescale_steps(lr, weight_decay) / steps_per_epoch(batch_size, dataset_size)


def weight_decay_for_timescale(
    tau_steps: float | None = None,
    lr: float | None = None,
    convention: str | Convention = "adamw",
    *,
    tau_fraction: float | None = None,
    total_steps: int | None = None,
    lr_max: float | None = None,
) -> float:
    r"""The ``weight_decay`` that gives an EMA timescale of :math:`\tau` steps under ``convention``.

    Give :math:`\tau` either in steps (``tau_steps``) or as a fraction of a run of ``total_steps``
    optimizer steps (``tau_fraction``: :math:`\tau = \tau_{fraction} S`). The result removes
    :math:`1/\tau` of each weight per step at peak lr ``lr``:

    * ``adamw`` (and ``adamw_cautious``): :math:`\lambda = 1/(\gamma\tau)`;
    * ``adamw_indep``: :math:`\lambda = 1/\tau` (``lr`` is not needed);
    * ``adamw_corrected``: :math:`\lambda = \gamma_{max}/(\gamma^2\tau) = 1/(\gamma\tau)` with
      :math:`\gamma_{max} = \gamma` (``lr_max``, by default ``lr``).

    A cautious convention decays only where the update and the weight agree in sign, so its
    timescale holds for those coordinates. Wang & Aitchison (arXiv:2405.13698) find the best
    :math:`\tau` roughly constant in epochs as model and data change. Raises ValueError for a
    coupled convention (``adam_l2``), a missing lr, or both or neither of ``tau_steps`` and
    ``tau_fraction``.
    """
    tau = resolve_timescale(tau_steps, tau_fraction=tau_fraction, total_steps=total_steps)
    return 1.0 / (tau * _decay_at_peak(_convention(convention), lr, lr_max))


def resolve_timescale(
    tau_steps: float | None = None, *, tau_fraction: float | None = None, total_steps: int | None = None
) -> float:
    r""":math:`\tau` in steps from exactly one of ``tau_steps`` and ``tau_fraction`` (times ``total_steps``)."""
    if (tau_steps is None) == (tau_fraction is None):
        raise ValueError(
            "give the timescale once: tau (in steps) or tau_fraction (of total_steps), not both or neither"
        )
    if tau_steps is not None:
        return _positive("tau", tau_steps)
    if total_steps is None:
        raise ValueError("tau_fraction needs total_steps (the optimizer steps in the run)")
    return _positive("tau_fraction", tau_fraction) * _whole("total_steps", total_steps)


# ---- the named scales --------------------------------------------------------------------------


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


def convert_wd(
    value: float,
    from_: str,
    to: str,
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    dataset_size: int | None = None,
    epochs: float | None = None,
    total_steps: int | None = None,
) -> float:
    """Convert ``value`` from form ``from_`` to form ``to`` (forms: :data:`FORMS`, or an alias in :data:`ALIASES`).

    ``lr`` is the peak learning rate; ``batch_size``, ``dataset_size`` (training examples),
    ``epochs`` and ``total_steps`` (optimizer steps in the run; by default counted from the
    epochs, :func:`run_steps`) are needed only by the forms that mention them. Raises ValueError
    naming what is missing or wrong. Timescales of a zero decay are ``inf`` and convert back to 0.
    """
    src, dst = form_name(from_), form_name(to)
    known = _context(lr, batch_size, dataset_size, epochs, total_steps)
    missing = missing_inputs(src, dst, known)
    if missing:
        raise ValueError(f"converting {src} -> {dst} needs {', '.join(missing)}")
    return _from_fraction(_to_fraction(value, src, known), dst, known)


def _context(
    lr: float | None, batch_size: int | None, dataset_size: int | None, epochs: float | None, total_steps: int | None
) -> dict[str, Any]:
    """The validated inputs of a conversion by name, with the run's steps counted from the epochs if not given."""
    for name, value in (("batch_size", batch_size), ("dataset_size", dataset_size), ("total_steps", total_steps)):
        if value is not None:
            _whole(name, value)
    for name, x in (("lr", lr), ("epochs", epochs)):
        if x is not None:
            _positive(name, x)
    if total_steps is None and batch_size is not None and dataset_size is not None and epochs is not None:
        total_steps = run_steps(epochs, batch_size, dataset_size)
    return dict(lr=lr, batch_size=batch_size, dataset_size=dataset_size, epochs=epochs, total_steps=total_steps)


def missing_inputs(from_: str, to: str, known: dict[str, Any]) -> list[str]:
    """The inputs (``lr``, ``batch_size``, ...) a conversion between two forms needs and ``known`` lacks."""
    src, dst = form_name(from_), form_name(to)
    return list(dict.fromkeys(k for f in (src, dst) for k in _needs(f) if known.get(k) is None))


def check_value(value: float, form: str) -> float:
    """``value`` if it is valid for ``form`` (a weight decay >= 0 and finite; a timescale > 0, inf for
    no decay); ValueError otherwise."""
    if form_name(form).startswith("tau"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
            raise ValueError(f"a timescale must be > 0 (inf for no decay), got {value!r}")
        return float(value)
    return _positive_or_zero("a weight decay", value)


def _steps_of(form: str, k: dict[str, Any]) -> int:
    """Steps in the unit of a timescale form: 1, an epoch, or the run."""
    if form == "tau_epochs":
        return steps_per_epoch(k["batch_size"], k["dataset_size"])
    return k["total_steps"] if form == "tau_fraction" else 1


def _to_fraction(value: float, form: str, k: dict[str, Any]) -> float:
    value = check_value(value, form)
    if form.startswith("tau"):
        return 0.0 if math.isinf(value) else 1.0 / (value * _steps_of(form, k))
    if form == "normalized":
        return value * math.sqrt(k["batch_size"] / (k["dataset_size"] * k["epochs"]))
    return value * _decay_at_peak(_DECOUPLED[form], k["lr"], None)


def _from_fraction(d: float, form: str, k: dict[str, Any]) -> float:
    if form.startswith("tau"):
        return math.inf if d == 0 else 1.0 / d / _steps_of(form, k)
    if form == "normalized":
        return d / math.sqrt(k["batch_size"] / (k["dataset_size"] * k["epochs"]))
    return d / _decay_at_peak(_DECOUPLED[form], k["lr"], None)


# ---- the command ---------------------------------------------------------------------------------


def _form_arg(text: str) -> str:
    try:
        return form_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _value_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be >= 0 (a weight decay) or > 0 (a timescale; inf for no decay), got {text}"
        )
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli.args import positive_float, positive_int

    p.description = (
        "Translate a weight decay between the decoupled conventions (adamw, adamw_indep, adamw_corrected, "
        "adamw_cautious), the paper's normalized weight decay and the EMA timescale (in steps, epochs, or as a "
        "fraction of the run). Prints every form it can compute from what you give."
    )
    p.add_argument("value", type=_value_arg, help="the weight decay (or timescale) to convert")
    p.add_argument("--from", dest="from_", default="adamw", type=_form_arg, help="form of VALUE (default: adamw)")
    p.add_argument("--to", type=_form_arg, help=f"print only this form: {', '.join(FORMS)}")
    p.add_argument("--lr", type=positive_float, help="peak learning rate")
    p.add_argument("--batch-size", type=positive_int, help="batch size b (examples per optimizer step)")
    p.add_argument("--dataset-size", type=positive_int, help="training examples B")
    p.add_argument("--epochs", type=positive_float, help="training epochs T")
    p.add_argument("--total-steps", type=positive_int, help="optimizer steps in the run (default: from the epochs)")


def run(args: argparse.Namespace) -> int:
    from .cli.args import UsageError

    try:
        check_value(args.value, args.from_)
    except ValueError as err:
        raise UsageError(f"VALUE as {args.from_}: {err}") from None
    known = _context(args.lr, args.batch_size, args.dataset_size, args.epochs, args.total_steps)
    if args.to:
        missing = missing_inputs(args.from_, args.to, known)
        if missing:
            raise UsageError(f"converting {args.from_} -> {args.to} needs {_flags(missing)}")
        print(f"{_convert(args.value, args.from_, args.to, known):.6g}")
        return 0
    rows = []
    for form in FORMS:
        missing = missing_inputs(args.from_, form, known)
        if missing:
            rows.append((form, "-", f"needs {_flags(missing)}"))
        else:
            rows.append((form, f"{_convert(args.value, args.from_, form, known):.6g}", FORMS[form]))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{args.value:g} as {args.from_} ({FORMS[args.from_]}):")
    for form, value, text in rows:
        print(f"  {form:<{width}}  {value:>{vwidth}}  {text}")
    print(_run_line(args, known))
    return 0


def _convert(value: float, src: str, dst: str, known: dict[str, Any]) -> float:
    return _from_fraction(_to_fraction(value, src, known), dst, known)


def _flags(names: list[str]) -> str:
    return ", ".join(_FLAGS[n] for n in names)


def _run_line(args: argparse.Namespace, known: dict[str, Any]) -> str:
    """How many steps an epoch and the run are, how they were counted, and the timescale's share of the run."""
    parts = []
    if args.batch_size and args.dataset_size:
        spe = steps_per_epoch(args.batch_size, args.dataset_size)
        exact = args.dataset_size / args.batch_size
        rounded = (
            f" ({args.dataset_size:,}/{args.batch_size:,} = {exact:.6g}, rounded up: the last batch of an epoch "
            f"is partial, as with DataLoader(drop_last=False) and Trainer)"
        )
        parts.append(f"  an epoch is {spe:,} steps" + (rounded if spe != exact else ""))
    total = known["total_steps"]
    if args.total_steps is not None:
        parts.append(f"  the run is {total:,} steps (--total-steps)")
    elif total is not None:
        parts.append(f"  the run is {args.epochs:g} epochs = {total:,} steps")
    if total is not None and not missing_inputs(args.from_, "tau_fraction", known):
        parts.append(f"  the timescale is {_convert(args.value, args.from_, 'tau_fraction', known):.3g} of the run")
    return (
        "\n".join(parts)
        if parts
        else "  (give --batch-size and --dataset-size, and --epochs or --total-steps, for the run)"
    )
