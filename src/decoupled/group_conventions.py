r"""The weight-decay convention that :func:`decoupled.param_groups` writes into its groups, and AdamC's
default split of the decayed weights.

**Keys.** With ``convention=`` (a :mod:`decoupled.conventions` key), every *decayed* group carries the
keys of :class:`decoupled.AdamW`/:class:`decoupled.Adam` that select it (:func:`group_keys`); the
no-decay group carries none (its ``weight_decay`` is 0, so no convention changes it):

===================  ===========================================================================
convention           keys of the decayed group(s)
===================  ===========================================================================
``adamw``            ``decoupled_weight_decay=True, decay_scaling="lr", cautious_decay=False``
``adamw_indep``      ``decoupled_weight_decay=True, decay_scaling="independent", cautious_decay=False``
``adamw_corrected``  ``decay_scaling="corrected"`` on the weights of :func:`corrected_weights`, ``"lr"``
                     on the other decayed parameters (both with ``decoupled_weight_decay=True``)
``adamw_cautious``   ``decoupled_weight_decay=True, decay_scaling="lr", cautious_decay=True``
``adam_l2``          ``decoupled_weight_decay=False``
===================  ===========================================================================

torch fills a group's missing keys from the optimizer's defaults and never overwrites the keys a group
has, so a group's own convention wins over the optimizer's keywords. The keys are spelled out in full
(``decay_scaling="lr"`` too) so that ``decoupled.AdamW(groups, decay_scaling="corrected")`` cannot
change the convention of a group that names its own. ``torch.optim.AdamW``/``Adam`` keep the keys but
act only on ``decoupled_weight_decay``: the scaled and cautious conventions need :class:`decoupled.AdamW`.

**AdamC's grouping** (``adamw_corrected``). Defazio et al. 2025 ("Why Gradients Rapidly Increase Near
the End of Training", arXiv:2506.02285) derive corrected decay for a layer *followed by a
normalization*: the layer's output then does not depend on the scale of its weight :math:`W`, so the
gradient is orthogonal to :math:`W`, and :math:`\|W\|` settles where the growth from the updates
balances the decay. At that steady state the ratio of gradient norm to weight norm is set by the decay
and the lr (:math:`\sqrt{2\lambda/\gamma_t}` for SGD, after Van Laarhoven 2017), so with torch's
per-step decay :math:`\gamma_t\lambda` it grows as the schedule lowers :math:`\gamma_t`: the rise of
the gradient norm at the end of training. Decaying by :math:`\gamma_t^2\lambda/\gamma_{max}` per step
(a weight decay proportional to the lr) holds the ratio fixed. In their LLM experiments they consider
every linear layer as normalized, excluding the output layer of the network (as summarized by Chou,
"Correction of Decoupled Weight Decay"). The default here follows that: the decayed ``weight`` of
every linear layer (``nn.Linear`` and its subclasses, and transformers' ``Conv1D``, GPT-2's linear
layer) gets corrected decay, except

* the **output layer**: its scale sets the scale of the logits, no normalization follows it, and
  the derivation does not apply. It is, in order: the modules named in ``output_layer=``
  (``output_layer=()`` names none); else the module a Hugging Face model's
  ``get_output_embeddings()`` returns (``lm_head``, BERT's ``cls.predictions.decoder``); else the
  last linear layer registered in the model (``model.named_modules()`` order: nanoGPT's
  ``lm_head``, a classifier's head);
* a weight **tied** to an embedding (GPT-2's ``lm_head.weight`` is ``wte.weight``): an embedding is
  not a linear layer, and a tied output layer is the output layer.

Embeddings, convolutions, attention's packed ``in_proj_weight`` and every other decayed parameter keep
torch's ``lr`` scaling. A convolution followed by a BatchNorm is normalized in the paper's sense too;
to correct it, build its group yourself with ``decay_scaling="corrected"``.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from . import conventions, conversions
from .conventions import Convention, Scaling

__all__ = [
    "group_keys",
    "is_linear",
    "output_layers",
    "corrected_weights",
    "convention_of",
    "check_options",
    "decayed_parts",
    "weight_decays",
    "describe_corrected",
]


def convention_of(key: str | None) -> Convention | None:
    """The convention called ``key`` (or an alias of :data:`decoupled.conversions.ALIASES`), None for None."""
    return None if key is None else conventions.get(conversions.ALIASES.get(key, key))


_KEYS = ("decay_scaling", "cautious_decay", "decoupled_weight_decay", "lr_independent_decay")


def group_keys(convention: Convention, scaling: Scaling | None = None) -> dict[str, Any]:
    """The param-group keys that select ``convention`` (with ``scaling`` instead of its own, for AdamC's
    uncorrected weights): the table in the module docstring."""
    if convention.coupled:
        return {"decoupled_weight_decay": False}
    return {
        "decoupled_weight_decay": True,
        "decay_scaling": (scaling or convention.scaling).value,
        "cautious_decay": convention.cautious,
    }


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` (or a subclass), or transformers' ``Conv1D`` (a linear layer with a transposed weight)."""
    if isinstance(module, nn.Linear):
        return True
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def _label(name: str) -> str:
    return repr(name) if name else "'' (the model itself)"


def output_layers(model: nn.Module, output_layer: str | Iterable[str] | None = None) -> list[str]:
    """Module names of the network's output layer(s), found as the module docstring says.

    Raises:
        ValueError: a name in ``output_layer`` is not a module of ``model`` (the nearest one is named).
    """
    modules = dict(model.named_modules())
    if output_layer is not None:
        names = [output_layer] if isinstance(output_layer, str) else list(output_layer)
        for name in names:
            if not isinstance(name, str) or name not in modules:
                close = difflib.get_close_matches(str(name), list(modules), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else " (names as in model.named_modules())"
                raise ValueError(f"output_layer {name!r} is not a module of {type(model).__name__}{hint}")
        return names
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if isinstance(head, nn.Module):
        found = [name for name, m in modules.items() if m is head]
        if found:
            return found[:1]
    linear = [name for name, m in modules.items() if is_linear(m)]
    return linear[-1:]


def corrected_weights(model: nn.Module, decayed: Iterable[str], outputs: Iterable[str]) -> list[str]:
    """The names among ``decayed`` (first names in ``model.named_parameters()``) that AdamC's grouping
    corrects: a linear layer's ``weight``, held by no other kind of module and by no output layer."""
    outputs = set(outputs)
    candidates: set[int] = set()
    excluded: set[int] = set()
    for module_name, module in model.named_modules(remove_duplicate=False):
        normalized = is_linear(module) and module_name not in outputs
        for local, p in module.named_parameters(recurse=False, remove_duplicate=False):
            (candidates if normalized and local == "weight" else excluded).add(id(p))
    named = dict(model.named_parameters())
    return [n for n in decayed if id(named[n]) in candidates and id(named[n]) not in excluded]


def check_options(convention: Convention | None, group_options: Mapping[str, Any]) -> None:
    """ValueError when ``param_groups`` is given a convention and convention keys among its group options."""
    if convention is None:
        return
    clash = sorted(set(_KEYS) & set(group_options))
    if clash:
        raise ValueError(
            f"convention={convention.key!r} sets {clash} itself; pass the convention alone (or these keys without "
            f"convention=)"
        )


def decayed_parts(
    model: nn.Module,
    decayed: list[str],
    convention: Convention | None,
    output_layer: str | Iterable[str] | None,
    lr_max: float | None = None,
) -> tuple[list[tuple[list[str], dict[str, Any]]], str | None]:
    """The decayed groups of ``param_groups`` as ``(names, convention keys)``, and for AdamC's grouping the report
    :func:`describe_corrected` (else None). One group without a convention or with one of torch's scaling;
    AdamC's corrected weights, then the other decayed parameters, with ``"adamw_corrected"``. ``lr_max`` goes
    to the groups whose decay follows it (not torch's ``lr`` scaling)."""
    if convention is None or convention.scaling is not Scaling.CORRECTED:
        if output_layer is not None:
            raise ValueError("output_layer= only applies with convention='adamw_corrected' (AdamC's grouping)")
        parts = [(decayed, {} if convention is None else group_keys(convention))]
        report = None
    else:
        outputs = output_layers(model, output_layer)
        corrected = corrected_weights(model, decayed, outputs)
        plain = [n for n in decayed if n not in set(corrected)]
        parts = [(corrected, group_keys(convention)), (plain, group_keys(convention, Scaling.LR))]
        report = describe_corrected(corrected, outputs)
    if lr_max is not None:
        if convention is None or convention.scaling is Scaling.LR:
            raise ValueError(
                f"lr_max= applies to decay that follows lr / lr_max (adamw_indep, adamw_corrected); the "
                f"{convention.key if convention else 'adamw'} convention has none"
            )
        for _, keys in parts:
            if keys.get("decay_scaling") != Scaling.LR.value:
                keys["lr_max"] = lr_max
    return parts, report


def weight_decays(
    weight_decay: float | None,
    parts: list[tuple[list[str], dict[str, Any]]],
    *,
    tau: float | None,
    tau_fraction: float | None,
    total_steps: int | None,
    lr: float | None,
) -> list[float]:
    r"""The ``weight_decay`` of each decayed part of :func:`decayed_parts`: ``weight_decay`` (0.01 when None) for
    all, or the one that gives the timescale ``tau`` / ``tau_fraction`` at peak ``lr`` under the part's own
    convention (its keys; PyTorch's ``adamw`` without keys) and ``lr_max``
    (:func:`decoupled.conversions.weight_decay_for_timescale`). With the default ``lr_max`` AdamC's two parts
    get the same value; with another, the corrected part gets :math:`\gamma_{max}/(\gamma^2\tau)`."""
    if tau is None and tau_fraction is None:
        if total_steps is not None:
            raise ValueError(
                "total_steps= goes with tau_fraction= (the run the timescale is a fraction of): pass tau_fraction=..., "
                "or leave total_steps out"
            )
        return [0.01 if weight_decay is None else weight_decay] * len(parts)
    if weight_decay is not None:
        raise ValueError(
            "give weight_decay or a timescale (tau= / tau_fraction=), not both: the timescale sets weight_decay"
        )
    out = []
    for _, keys in parts:
        convention = conventions.of_group(keys)
        try:
            out.append(
                conversions.weight_decay_for_timescale(
                    tau, lr, convention, tau_fraction=tau_fraction, total_steps=total_steps, lr_max=keys.get("lr_max")
                )
            )
        except ValueError as err:
            if "lr is required" not in str(err):
                raise
            raise ValueError(
                f"a timescale with the {convention.key} convention needs the peak lr: pass lr=... (copied into every "
                f"group); only adamw_indep's decay does not depend on lr"
            ) from None
    return out


def _pattern(name: str) -> str:
    """A layer's name with its block indices replaced by ``*`` (``h.3.mlp.c_fc`` -> ``h.*.mlp.c_fc``)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", name)


def describe_corrected(corrected: list[str], outputs: list[str]) -> str:
    """What AdamC's grouping decided, for ``param_groups(verbose=True)``: the corrected layers (repeated
    blocks folded into ``*`` with a count) and the output layer that keeps torch's lr scaling."""
    layers = Counter(_pattern(name.rsplit(".", 1)[0] if "." in name else name) for name in corrected)
    lines = [f"  corrected decay (lr**2/lr_max * wd, AdamC) on {len(corrected)} linear weight(s):"]
    lines += [f"    {layer}" + (f"  (x{count})" if count > 1 else "") for layer, count in layers.items()]
    where = ", ".join(_label(o) for o in outputs) if outputs else "none"
    lines.append(f"  output layer (torch's lr * wd, not normalized): {where}")
    return "\n".join(lines)
