r"""Which parameters decay: optimizer param groups that keep biases, norms (and optionally
embeddings) out of weight decay.

Decoupled weight decay multiplies every decayed weight by :math:`1 - \gamma\lambda` per step,
pulling it towards zero. That is the right prior for weight matrices, whose scale the next
layer's input statistics depend on, and the wrong one for

* **biases and offsets**: pulling them to zero has no regularizing effect on capacity, it
  only biases the function;
* **normalization gains and shifts** (LayerNorm, RMSNorm, BatchNorm, ...): a norm's weight
  sets the scale of a normalized signal; decaying it towards 0 shrinks every activation
  downstream, which the following layers must then undo;
* **embedding tables**, optionally: each row only gets a gradient when its token appears, but
  decay shrinks every row every step, so rare tokens are driven to zero. Many recipes (GPT-2,
  BERT, Trainer's default) decay them anyway; ``decay_embeddings=False`` keeps them out.

:func:`no_decay_reasons` decides, per parameter, with the first rule that applies:

=====  ==========================================  ======================================
order  rule                                        reason it reports
=====  ==========================================  ======================================
1      a ``decay=`` rule matches                   ``None`` (decays)
1      a ``no_decay=`` rule matches                ``"rule '<rule>'"``
2      a module's ``no_weight_decay()`` names it,   ``"no_weight_decay()"``
       or the tensor has ``_no_weight_decay=True``  ``"_no_weight_decay attribute"``
3      its module is a normalization layer         ``"normalization (LayerNorm)"``,
                                                   ``"normalization (custom LlamaRMSNorm)"``
4      its module is an embedding table (only      ``"embedding"``
       with ``decay_embeddings=False``)
5      it is a bias: named ``bias`` or ``*_bias``  ``"bias"``
6      it has at most one dimension                ``"1-D parameter (gain or scale)"``
-      anything else (weight matrices, conv        ``None`` (decays)
       kernels, embeddings by default)
=====  ==========================================  ======================================

**Normalization layers** are found by structure, not only by name. A module is a norm when

* it is an instance of one of torch's norm classes (``LayerNorm``, ``RMSNorm``,
  ``GroupNorm``, every ``BatchNorm*``/``InstanceNorm*``/``SyncBatchNorm``,
  ``LocalResponseNorm``), whatever the shape of its parameters; or
* it is any other module whose class name contains "norm" (``LlamaRMSNorm``,
  ``T5LayerNorm``, apex's ``FusedLayerNorm``, ``MyRMSNorm``) and whose own parameters are all
  *vector-shaped* (at most one dimension of size > 1, e.g. ``(d,)`` or ``(1, d, 1, 1)``): a
  per-feature gain or shift, never a weight matrix. A ``PreNormBlock`` that owns a 2-D matrix
  is therefore not a norm.

A module that normalizes but is named otherwise (``class ScaleOnly`` holding
``self.scale = nn.Parameter(torch.ones(d))``) cannot be told from its structure alone; its
1-D gain is still kept out of decay by rule 6, the convention of timm and nanoGPT (every
parameter with fewer than two dimensions is a gain, a scale or an offset). To decay such a
parameter anyway, pass it in ``decay=``.

**Embeddings** are the parameters of ``nn.Embedding``/``nn.EmbeddingBag`` (and subclasses)
and raw parameters whose own name contains "embed" (``pos_embed``). A tied parameter (a
GPT-2 ``lm_head.weight`` that *is* ``wte.weight``) is one tensor with two names; it is
classified once, under its first name in ``model.named_parameters()``, from *all* the modules
that hold it, so a tied output projection follows its embedding.

**Rules** (``no_decay=`` and ``decay=``) are

* a ``str``: a glob matched against every full name of the parameter
  (``fnmatch``-style, case-sensitive: ``"*.bias"``, ``"lm_head.*"``, ``"encoder.layer.[01].*"``);
* a compiled regular expression (``re.compile(r"\.(q|k)_proj\.")``): ``search`` on each name;
* a module type (``nn.Embedding``, ``MyAdapter``): every parameter held by a module of that
  type *or by any of its submodules*.

A parameter matched by both a ``decay`` and a ``no_decay`` rule is an error. A rule that
matches nothing emits a warning (it is usually a typo).
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from . import group_conventions
from .conventions import of_group
from .hyper import check_number

__all__ = ["param_groups", "no_decay_reasons", "describe", "is_norm", "TORCH_NORMS", "EMBEDDINGS"]

Rule = Union[str, "re.Pattern[str]", type]

TORCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""torch's normalization layers: their parameters never decay, whatever their shape."""

EMBEDDINGS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
"""Embedding tables (kept out of decay with ``decay_embeddings=False``)."""

BIAS = "bias"
EMBEDDING = "embedding"
ONE_D = "1-D parameter (gain or scale)"
NO_WEIGHT_DECAY = "no_weight_decay()"
NO_WEIGHT_DECAY_ATTR = "_no_weight_decay attribute"

_NORM_NAME = re.compile("norm", re.IGNORECASE)


def _vector_shaped(p: torch.Tensor) -> bool:
    """At most one dimension of size > 1: ``(d,)``, ``(1, d)``, ``(1, d, 1, 1)``, scalars."""
    return sum(1 for size in p.shape if size > 1) <= 1


def is_norm(module: nn.Module) -> str | None:
    """The normalization reason for ``module`` (see the module docstring), or None if it is not a norm.

    >>> is_norm(nn.LayerNorm(8))
    'normalization (LayerNorm)'
    >>> is_norm(nn.Linear(8, 8)) is None
    True
    """
    name = type(module).__name__
    if isinstance(module, TORCH_NORMS):
        return f"normalization ({name})"
    own = [p for p in module.parameters(recurse=False)]
    if own and _NORM_NAME.search(name) and all(_vector_shaped(p) for p in own):
        return f"normalization (custom {name})"
    return None


@dataclass
class _Param:
    """One unique parameter tensor and everywhere it is held."""

    tensor: torch.Tensor
    names: list[str]  # full names, first = its name in model.named_parameters()
    owners: list[tuple[nn.Module, str]]  # (module that holds it directly, attribute name)


def _unique_params(model: nn.Module) -> dict[int, _Param]:
    """Every unique parameter of ``model`` keyed by id, in ``named_parameters()`` order."""
    params: dict[int, _Param] = {}
    for name, p in model.named_parameters():  # first names, duplicates removed
        params[id(p)] = _Param(p, [name], [])
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, p in module.named_parameters(recurse=False, remove_duplicate=False):
            if id(p) not in params:
                continue
            entry = params[id(p)]
            full = f"{module_name}.{local}" if module_name else local
            if full not in entry.names:
                entry.names.append(full)
            if not any(m is module and n == local for m, n in entry.owners):
                entry.owners.append((module, local))
    return params


def _check_rules(kind: str, rules: Any) -> tuple[Rule, ...]:
    if isinstance(rules, (str, type, re.Pattern)):
        rules = (rules,)
    if not isinstance(rules, Iterable):
        raise TypeError(f"{kind} must be a sequence of rules, got {type(rules).__name__}")
    out = tuple(rules)
    for rule in out:
        ok = isinstance(rule, (str, re.Pattern)) or (isinstance(rule, type) and issubclass(rule, nn.Module))
        if not ok:
            raise TypeError(
                f"{kind} rule {rule!r} is a {type(rule).__name__}; a rule is a name glob (str, e.g. "
                f"'*.bias'), a compiled regex (re.compile(...)) or an nn.Module subclass (e.g. nn.Embedding)"
            )
    return out


def _rule_label(rule: Rule) -> str:
    if isinstance(rule, type):
        return rule.__name__
    if isinstance(rule, re.Pattern):
        return f"re:{rule.pattern}"
    return rule


def _match_rules(model: nn.Module, params: dict[int, _Param], rules: tuple[Rule, ...], kind: str) -> dict[int, str]:
    """id(param) -> label of the first rule that matches it; warns about rules that match nothing."""
    matched: dict[int, str] = {}
    for rule in rules:
        label = _rule_label(rule)
        hits: set[int] = set()
        if isinstance(rule, type):
            for module in model.modules():
                if isinstance(module, rule):
                    hits.update(id(p) for p in module.parameters() if id(p) in params)
        else:
            test = rule.search if isinstance(rule, re.Pattern) else (lambda n, r=rule: fnmatch.fnmatchcase(n, r))
            hits = {key for key, entry in params.items() if any(test(n) for n in entry.names)}
        if not hits:
            example = next(iter(params.values())).names[0] if params else "(no parameters)"
            warnings.warn(
                f"{kind} rule {label!r} matched no parameter of {type(model).__name__}; names look like "
                f"{example!r} (globs match the whole name, so use e.g. '*.bias')",
                stacklevel=4,
            )
        for key in hits:
            matched.setdefault(key, label)
    return matched


def _no_weight_decay_ids(model: nn.Module, params: dict[int, _Param]) -> set[int]:
    """Parameters named by any module's ``no_weight_decay()`` (names relative to that module)."""
    out: set[int] = set()
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if not callable(hook):
            continue
        listed = {f"{prefix}.{n}" if prefix else n for n in hook()}
        for key, entry in params.items():
            for name in entry.names:
                if name in listed or any(name.startswith(f"{item}.") for item in listed):
                    out.add(key)
    return out


def _automatic_reason(entry: _Param, decay_embeddings: bool) -> str | None:
    """Rules 3-6 of the module docstring."""
    for module, _ in entry.owners:
        reason = is_norm(module)
        if reason:
            return reason
    if not decay_embeddings:
        for module, local in entry.owners:
            if isinstance(module, EMBEDDINGS) or "embed" in local.lower():
                return EMBEDDING
    if any(local == "bias" or local.endswith("_bias") for _, local in entry.owners):
        return BIAS
    if entry.tensor.dim() <= 1:
        return ONE_D
    return None


def no_decay_reasons(
    model: nn.Module,
    *,
    decay_embeddings: bool = True,
    no_decay: Iterable[Rule] = (),
    decay: Iterable[Rule] = (),
) -> dict[str, str | None]:
    """Why each parameter of ``model`` is kept out of weight decay, or None when it decays.

    Keys are the unique parameters' first names in ``model.named_parameters()`` (a tied
    parameter appears once), in that order; values are short texts such as ``"bias"``,
    ``"normalization (LayerNorm)"``, ``"embedding"``, ``"no_weight_decay()"`` or
    ``"rule '*.gate'"``. The rules and their order are in the module docstring.

    Args:
        model: any ``nn.Module`` (a DDP/FSDP-wrapped model works; names carry its prefixes).
        decay_embeddings: decay embedding tables (default True, as GPT-2, BERT and
            Hugging Face's Trainer do); False keeps them out.
        no_decay: extra rules whose parameters never decay.
        decay: extra rules whose parameters always decay (overriding every automatic rule).

    Raises:
        ValueError: a parameter is matched by both a ``decay`` and a ``no_decay`` rule.
        TypeError: a rule is not a str, a compiled regex or an ``nn.Module`` subclass.
    """
    no_decay_rules = _check_rules("no_decay", no_decay)
    decay_rules = _check_rules("decay", decay)
    params = _unique_params(model)
    forced_off = _match_rules(model, params, no_decay_rules, "no_decay")
    forced_on = _match_rules(model, params, decay_rules, "decay")
    both = [params[k].names[0] for k in forced_off if k in forced_on]
    if both:
        key = next(k for k in forced_off if k in forced_on)
        raise ValueError(
            f"{len(both)} parameter(s) match both a decay and a no_decay rule, e.g. {both[0]!r} "
            f"(no_decay {forced_off[key]!r}, decay {forced_on[key]!r}); make the rules disjoint"
        )
    listed = _no_weight_decay_ids(model, params)
    reasons: dict[str, str | None] = {}
    for key, entry in params.items():
        if key in forced_on:
            reason = None
        elif key in forced_off:
            reason = f"rule {forced_off[key]!r}"
        elif key in listed:
            reason = NO_WEIGHT_DECAY
        elif getattr(entry.tensor, "_no_weight_decay", False):
            reason = NO_WEIGHT_DECAY_ATTR
        else:
            reason = _automatic_reason(entry, decay_embeddings)
        reasons[entry.names[0]] = reason
    return reasons


def param_groups(
    model: nn.Module,
    weight_decay: float | None = None,
    *,
    tau: float | None = None,
    tau_fraction: float | None = None,
    total_steps: int | None = None,
    convention: str | None = None,
    output_layer: str | Iterable[str] | None = None,
    decay_embeddings: bool = True,
    no_decay: Iterable[Rule] = (),
    decay: Iterable[Rule] = (),
    verbose: bool = False,
    **group_options: Any,
) -> list[dict[str, Any]]:
    r"""Optimizer param groups in which biases, norms (and optionally embeddings) do not decay.

    Returns the decayed group(s), then the no-decay group, empty ones dropped::

        {"params": [...], "param_names": [...], "weight_decay": weight_decay, **group_options}
        {"params": [...], "param_names": [...], "weight_decay": 0.0,          **group_options}

    usable as the first argument of :class:`decoupled.AdamW`, ``torch.optim.AdamW`` or any
    torch optimizer. Which parameters go where is :func:`no_decay_reasons` (same keyword
    arguments). Frozen parameters (``requires_grad=False``) are left out, as Hugging Face's
    Trainer does; a tied parameter appears once. ``param_names`` makes the optimizer's
    ``state_dict`` and error messages name each parameter (torch wants names in all groups of
    one optimizer or in none: give a group you add yourself a ``"param_names"`` list too).

    **The convention** (a :mod:`decoupled.conventions` key): without ``convention`` the groups
    carry none and the optimizer's keywords decide (``decoupled.AdamW(groups, decay_scaling=...)``).
    With it, the decayed groups carry its keys (``decay_scaling``, ``cautious_decay``,
    ``decoupled_weight_decay``; :mod:`decoupled.group_conventions`), which win over the optimizer's
    keywords, so ``decoupled.AdamW(param_groups(model, convention=...), lr=...)`` follows it.
    ``"adamw_corrected"`` follows AdamC (Defazio et al. 2025, arXiv:2506.02285): corrected decay,
    :math:`\gamma_t^2\lambda/\gamma_{max}` per step, on the weights of the linear layers (taken as
    followed by a normalization) in a first group, torch's :math:`\gamma_t\lambda` on the other
    decayed parameters (embeddings, convolutions, and the **output layer**, whose scale sets the
    logits') in a second. The output layer is ``output_layer`` (module names; ``()`` for none), else
    a Hugging Face model's ``get_output_embeddings()``, else the last linear layer registered.

    **Setting the timescale instead** (Wang & Aitchison 2025, arXiv:2405.13698): give ``tau``, the
    EMA timescale of the decay in optimizer steps, or ``tau_fraction`` of a run of ``total_steps``
    steps, instead of ``weight_decay``, with the peak ``lr`` (a group option, copied into every
    group). Each decayed group then gets the ``weight_decay`` that removes :math:`1/\tau` of each
    weight per step at peak lr :math:`\gamma` under the convention it carries (``adamw`` without one;
    :func:`decoupled.conversions.weight_decay_for_timescale`): :math:`1/(\gamma\tau)` for ``adamw``,
    ``adamw_corrected`` and ``adamw_cautious``, :math:`1/\tau` for ``adamw_indep`` (no lr needed), and
    :math:`\gamma_{max}/(\gamma^2\tau)` for corrected decay with an ``lr_max`` other than ``lr``.
    ``decoupled.check`` reports each group's timescale.

    Args:
        model: the model whose parameters to group.
        weight_decay: :math:`\lambda` of the decayed groups, in ``convention``'s units (for AdamW:
            the fraction of each weight removed per step is ``lr * weight_decay``); 0.01 when neither
            it nor a timescale is given.
        tau, tau_fraction, total_steps: the timescale instead of ``weight_decay`` (above).
        convention: the weight-decay convention the groups carry (above); None for none.
        output_layer: with ``"adamw_corrected"``, the module name(s) of the output layer, which keeps
            torch's lr scaling; by default found as above.
        lr_max: with a ``convention``, goes only to the decayed groups whose decay follows
            ``lr / lr_max`` (by default the optimizer uses each group's initial lr).
        decay_embeddings, no_decay, decay: see :func:`no_decay_reasons`.
        verbose: print the decision (groups, their convention, tensor and element counts, why
            parameters were kept out of decay, and which layers got corrected decay).
        **group_options: other per-group hyperparameters copied into every group (``lr``,
            ``betas``, ...).

    Example:
        >>> import torch, decoupled
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        >>> groups = decoupled.param_groups(model, weight_decay=0.1)
        >>> [(g["weight_decay"], g["param_names"]) for g in groups]
        [(0.1, ['0.weight', '2.weight']), (0.0, ['0.bias', '1.weight', '1.bias', '2.bias'])]
        >>> optimizer = decoupled.AdamW(groups, lr=1e-3)
        >>> [g["weight_decay"] for g in decoupled.param_groups(model, tau=10_000, lr=1e-3)]  # 1 / (1e-3 * 1e4)
        [0.1, 0.0]
        >>> groups = decoupled.param_groups(model, 0.1, convention="adamw_corrected")  # 2 is the output layer
        >>> [(g["param_names"], g.get("decay_scaling")) for g in groups]
        [(['0.weight'], 'corrected'), (['2.weight'], 'lr'), (['0.bias', '1.weight', '1.bias', '2.bias'], None)]
    """
    conv = group_conventions.convention_of(convention)
    if weight_decay is not None:
        check_number("weight_decay", weight_decay, hint="; typical AdamW values are 0.01 to 0.1")
    reserved = {"params", "param_names", "weight_decay"} & set(group_options)
    if reserved:
        raise ValueError(
            f"param_groups sets {sorted(reserved)} itself; pass the decay strength as "
            f"weight_decay= and choose parameters with no_decay=/decay= rules"
        )
    group_conventions.check_options(conv, group_options)
    lr_max = group_options.pop("lr_max", None) if conv is not None else None  # only where the decay follows it
    reasons = no_decay_reasons(model, decay_embeddings=decay_embeddings, no_decay=no_decay, decay=decay)
    named = dict(model.named_parameters())
    decayed = [n for n, r in reasons.items() if r is None and named[n].requires_grad]
    kept = [n for n, r in reasons.items() if r is not None and named[n].requires_grad]
    parts, report = group_conventions.decayed_parts(model, decayed, conv, output_layer, lr_max)
    decays = group_conventions.weight_decays(
        weight_decay, parts, tau=tau, tau_fraction=tau_fraction, total_steps=total_steps, lr=group_options.get("lr")
    )
    groups = [
        {"params": [named[n] for n in names], "param_names": names, "weight_decay": wd, **keys, **group_options}
        for (names, keys), wd in [*zip(parts, map(float, decays)), ((kept, {}), 0.0)]
        if names
    ]
    if verbose:
        print(describe(model, groups, reasons) + (f"\n{report}" if report else ""))
    return groups


def describe(model: nn.Module, groups: list[dict[str, Any]], reasons: dict[str, str | None]) -> str:
    """A short text report of ``groups`` (what ``param_groups(verbose=True)`` prints)."""
    named = dict(model.named_parameters())
    frozen = [n for n, p in named.items() if not p.requires_grad]
    total = sum(p.numel() for g in groups for p in g["params"])
    lines = [
        f"decoupled.param_groups: {len(groups)} group(s), {sum(len(g['params']) for g in groups)} tensors, "
        f"{total:,} parameters" + (f" ({len(frozen)} frozen tensors left out)" if frozen else "")
    ]
    keys = ("decay_scaling", "cautious_decay", "decoupled_weight_decay")  # a convention the group carries
    labels = [of_group(g).key if any(k in g for k in keys) else "" for g in groups]
    width = max(map(len, labels), default=0)
    for i, g in enumerate(groups):
        count = sum(p.numel() for p in g["params"])
        label = f" {labels[i]:<{width}}" if width else ""
        lines.append(
            f"  group {i}: weight_decay={g['weight_decay']:<8g}{label} {len(g['params']):>5} tensors "
            f"{count:>14,} parameters"
        )
        why: dict[str, list[int]] = defaultdict(list)
        for name, p in zip(g["param_names"], g["params"]):
            reason = reasons.get(name)
            if reason is not None:
                why[reason].append(p.numel())
        for reason, sizes in sorted(why.items(), key=lambda kv: -sum(kv[1])):
            lines.append(f"    {reason:<40} {len(sizes):>5} tensors {sum(sizes):>14,} parameters")
    return "\n".join(lines)
