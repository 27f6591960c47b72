r"""The step pipeline: what happens to one param group in ``optimizer.step()``.

For every group, in two passes so that a bad group changes nothing (:func:`plan` checks every
group before :func:`run` touches any state):

1. **plan**: the parameters with a gradient (a sparse one is refused by name), the per-group
   coefficients of :func:`decoupled.rule.group_coefficients` (the group's convention, from
   :func:`decoupled.conventions.of_group`), and who runs them, chosen from the registries by
   the kinds (device type, dtype) of the tensors they will see:

   * torch's state layout (moments dense in the parameter's dtype: the fast path): a backend
     of :mod:`decoupled.backends`;
   * any other state format (:mod:`decoupled.formats`): an executor, with the float32
     backend it leans on.

2. **run**: the state is created where it is missing, every step count goes up by one (one
   ``_foreach_add_``), gradients scaled by ``torch.amp.GradScaler`` are unscaled (or the
   group is skipped when it found infs, as ``torch.optim.AdamW(fused=True)`` does), DTensor
   (FSDP2) parameters, gradients and state are replaced by their local shards, and the backend
   or executor updates everything in place.

The backend ``asked`` for is what the optimizer's flags mean (:func:`asked_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import backends, conventions, formats
from .formats import sharded
from .rule import GroupCoefficients, group_coefficients


def asked_backend(group: dict[str, Any], backend: str | None) -> str:
    """The backend that ``backend=`` or torch's flags ask for: ``fused=True`` the fused kernel,
    ``foreach=True`` foreach, ``foreach=False`` or ``differentiable=True`` the loop,
    ``fused=False`` what torch then runs (:data:`TORCH_DEFAULT`), neither the fastest (``auto``)."""
    if backend is not None:
        return backend
    if group["fused"]:
        return "fused"
    if group["foreach"]:
        return "foreach"
    if group["foreach"] is False or group["differentiable"]:
        return "loop"
    if group["fused"] is False:
        return TORCH_DEFAULT
    return "auto"


TORCH_DEFAULT = "torch-default"
"""torch's own choice when ``fused=False`` and ``foreach`` is unset: foreach when every tensor
is on CUDA, else the for-loop (``torch.optim.optimizer._default_to_fused_or_foreach``)."""


def _resolve(asked: str, kinds: backends.Kinds, *, differentiable: bool, cautious: bool) -> backends.Backend:
    if asked == TORCH_DEFAULT:
        asked = "foreach" if kinds and all(device == "cuda" for device, _ in kinds) else "loop"
    return backends.resolve(asked, kinds, differentiable=differentiable, cautious=cautious)


@dataclass
class Plan:
    """What one param group's step will do."""

    group: dict[str, Any]
    c: GroupCoefficients
    plain: list[torch.Tensor] = field(default_factory=list)  # torch's state layout
    backend: backends.Backend | None = None
    formatted: list[torch.Tensor] = field(default_factory=list)  # another state format
    executor: formats.Executor | None = None
    inner: backends.Backend | None = None  # the float32 backend the executor leans on
    sharded: bool = False  # whether a parameter is a DTensor (its shard is what is stepped)

    def shards(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's shards of ``tensors`` (the tensors themselves when no parameter is sharded)."""
        return [sharded.local(t) for t in tensors] if self.sharded else list(tensors)


def coefficients(group: dict[str, Any]) -> GroupCoefficients:
    """The group's scalars for this step; tensor hyperparameters stay tensors where autograd
    must reach them (``differentiable=True``)."""
    beta1, beta2 = group["betas"]
    hyper = (group["lr"], beta1, beta2, group["weight_decay"])
    keep = bool(group["differentiable"]) and any(isinstance(h, torch.Tensor) and h.requires_grad for h in hyper)
    return group_coefficients(
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        convention=conventions.of_group(group),
        lr_max=group.get("lr_max"),
        amsgrad=group["amsgrad"],
        maximize=group["maximize"],
        keep_tensors=keep,
    )


def plan(group: dict[str, Any], index: int, asked: str, owner: str = "AdamW") -> Plan:
    """Check one group's gradients and choose who runs it; changes nothing."""
    c = coefficients(group)
    out = Plan(group, c)
    names = group.get("param_names")
    has_format = "moments" in group or "param_rounding" in group
    moments, rounding = formats.options(group)
    fmt = moments if has_format else None
    # whether a parameter is formatted, and why its format cannot hold it, depend only on its
    # type, dtype and the format it gets (which may depend on its size): checked once per kind
    verdicts: dict[tuple[type, torch.dtype, int], tuple[bool, str | None]] = {}

    def what(j: int) -> str:
        return f"parameter {names[j]!r}" if names else f"parameter {j} of param group {index}"

    for j, p in enumerate(group["params"]):
        grad = p.grad
        if grad is None:
            continue
        if grad.is_sparse:
            raise RuntimeError(
                f"{owner} does not support sparse gradients ({what(j)}, shape {tuple(p.shape)}). Use "
                f"torch.optim.SparseAdam for that parameter, or build the embedding with sparse=False."
            )
        formatted = False
        if fmt is not None:
            key = (type(p), p.dtype, id(fmt.for_param(p)))
            if key not in verdicts:
                verdicts[key] = (formats.is_formatted(group, p), formats.unsupported_reason(group, p))
            formatted, reason = verdicts[key]
            if reason is not None:
                raise ValueError(f"{what(j)}: {reason}")
        (out.formatted if formatted else out.plain).append(p)
    options = dict(differentiable=bool(group["differentiable"]), cautious=c.cautious)
    out.sharded = sharded.any_dtensor(out.plain + out.formatted)
    if out.plain:
        out.backend = _resolve(asked, backends.kinds_of(out.shards(out.plain)), **options)
    if out.formatted:
        kinds = backends.kinds_of(out.shards(out.formatted))
        executor_asked = "auto" if asked == TORCH_DEFAULT else asked
        out.executor, out.inner = formats.choose_executor(executor_asked, moments, rounding, kinds, cautious=c.cautious)
    return out


def step_dtype(group: dict[str, Any]) -> torch.dtype:
    """torch's dtype for the ``step`` count: float32, or float64 under a float64 default dtype."""
    if group["fused"]:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def init_state(
    state: dict[str, Any], group: dict[str, Any], p: torch.Tensor, options: tuple[formats.MomentFormat, str] | None
) -> dict[str, Any]:
    """``p``'s state, created where it is missing (as torch's ``_init_group``): in the group's
    format and rounding ``options`` (``formats.options(group)``), or in torch's layout (None)."""
    moment_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())
    if options is not None:
        fmt, rounding = options
        if not state:
            state["step"] = torch.zeros((), dtype=step_dtype(group), device=p.device)
            for moment in moment_names:
                state.update(formats.allocate(p, fmt, moment))
        elif group["amsgrad"] and formats.which(state, "max_exp_avg_sq", p) is None:
            state.update(formats.running_max_from_v(state, p, fmt))  # amsgrad switched on mid-run
        if rounding == "kahan" and formats.COMPENSATION_KEY not in state and formats.is_low_precision(p):
            state.update(formats.compensation_buffer(p))
        return state
    if not state:
        on_device = group["capturable"] or group["fused"]
        state["step"] = torch.zeros((), dtype=step_dtype(group), device=p.device if on_device else "cpu")
        for moment in moment_names:
            state[moment] = torch.zeros_like(p, memory_format=torch.preserve_format)
    elif group["amsgrad"] and "max_exp_avg_sq" not in state:
        # amsgrad switched on mid-run: the running maximum starts from the current v
        state["max_exp_avg_sq"] = state["exp_avg_sq"].clone(memory_format=torch.preserve_format)
    return state


def run(
    p: Plan,
    state: dict[torch.Tensor, dict[str, Any]],
    *,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """Carry out one group's plan: state, step counts, unscaling, shards, and the update."""
    group, c = p.group, p.c
    moments, rounding = options = formats.options(group)
    plain = [init_state(state[q], group, q, None) for q in p.plain]
    formatted = [init_state(state[q], group, q, options) for q in p.formatted]
    if found_inf is not None and float(found_inf) != 0:
        return  # GradScaler found infs: no update, and the step counts stay (torch's fused step)
    counted = p.executor is not None and p.executor.counts_steps  # (then the executor adds them)
    steps = [s["step"] for s in (plain if counted else plain + formatted)]
    if steps:
        torch._foreach_add_(steps, 1.0)
    if p.plain:
        assert p.backend is not None
        amp = {}
        if grad_scale is not None:
            if p.backend.amp_scaling:
                amp = {"grad_scale": grad_scale, "found_inf": found_inf}
            else:
                torch._foreach_div_([q.grad for q in p.plain], grad_scale.to(p.plain[0].device))  # type: ignore[misc]
        p.backend.step(
            p.shards(p.plain),
            p.shards([q.grad for q in p.plain]),  # type: ignore[misc]  # all not None
            p.shards([s["exp_avg"] for s in plain]),
            p.shards([s["exp_avg_sq"] for s in plain]),
            p.shards([s["max_exp_avg_sq"] for s in plain]) if c.amsgrad else [],
            [s["step"] for s in plain],
            c,
            differentiable=bool(group["differentiable"]),
            **amp,
        )
    if p.formatted:
        assert p.executor is not None and p.inner is not None
        if grad_scale is not None:
            torch._foreach_div_([q.grad for q in p.formatted], grad_scale.to(p.formatted[0].device))  # type: ignore[misc]
        p.executor.run(
            p.shards(p.formatted),
            p.shards([q.grad for q in p.formatted]),  # type: ignore[misc]
            [sharded.local_entry(s, q) for s, q in zip(formatted, p.formatted)] if p.sharded else formatted,
            c,
            moments=moments,
            rounding=rounding,
            backend=p.inner,
        )


def update_lists(
    backend: backends.Backend,
    lists: tuple[list[torch.Tensor], ...],
    state_steps: list[torch.Tensor],
    c: GroupCoefficients,
    *,
    differentiable: bool = False,
) -> None:
    """Increment ``state_steps`` and run ``backend`` on ``lists`` (params, grads, exp_avgs,
    exp_avg_sqs, max_exp_avg_sqs): the functional API's whole step."""
    if state_steps:
        torch._foreach_add_(state_steps, 1.0)
    backend.step(*lists, state_steps, c, differentiable=differentiable)
