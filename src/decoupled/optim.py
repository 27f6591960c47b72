r"""The optimizer classes: :class:`AdamW` (drop-in ``torch.optim.AdamW``) and :class:`Adam` (Adam + L2).

Both validate their arguments, own the per-parameter state (in ``torch.optim.AdamW``'s layout,
so checkpoints move between the two in both directions), and call
:func:`decoupled.functional.adamw` once per param group. The math lives in
:mod:`decoupled.rule`; how it runs lives in :mod:`decoupled.backends`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from . import backends, formats, functional, statedict
from .formats import execute as formats_execute
from .hyper import check_group, check_number
from .rule import Decay, group_coefficients

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, torch.Tensor]]

# Keys that only an lr-independent group carries; without the option the param_groups keys
# are exactly torch.optim.AdamW's.
LR_INDEPENDENT_KEYS = ("lr_independent_decay", "lr_max")


def _scalar(x: float | torch.Tensor) -> float | torch.Tensor:
    """A 1-element tensor as a 0-d tensor (as torch stores betas); a number unchanged."""
    return x.squeeze() if isinstance(x, torch.Tensor) and x.dim() != 0 else x


def _step_dtype(fused: bool | None) -> torch.dtype:
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


@dataclass
class _Plan:
    """What one param group's step will do: which parameters, and which backends."""

    plain: list[torch.Tensor]  # torch's state layout: run by functional.run
    formatted: list[torch.Tensor]  # another state format: run by formats.execute
    backend: str
    formatted_backend: str


class _AdamFamily(Optimizer):
    """Shared machinery of :class:`AdamW` and :class:`Adam` (not public: use those)."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor,
        betas: tuple[float | torch.Tensor, float | torch.Tensor],
        eps: float,
        weight_decay: float,
        amsgrad: bool,
        *,
        maximize: bool,
        foreach: bool | None,
        capturable: bool,
        differentiable: bool,
        fused: bool | None,
        decoupled_weight_decay: bool,
        lr_independent_decay: bool = False,
        lr_max: float | None = None,
        backend: str | None = None,
        moments: str = "param",
        param_rounding: str = "nearest",
    ) -> None:
        if backend is not None:
            if backend not in ("auto", *backends.BACKENDS):
                raise ValueError(f"unknown backend {backend!r}; choose one of {['auto', *backends.BACKENDS]}")
            if foreach or fused:
                raise ValueError(
                    f"backend={backend!r} and torch's foreach/fused flags both choose the backend; pass one of them"
                )
        self.backend = backend
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            betas = (_scalar(betas[0]), _scalar(betas[1]))
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        if lr_independent_decay:
            if lr_max is not None:
                check_number("lr_max", lr_max, hint=" (the lr at which the full weight_decay applies)")
            defaults.update(lr_independent_decay=True, lr_max=lr_max)
        elif lr_max is not None:
            raise ValueError(
                "lr_max only applies with lr_independent_decay=True; pass both, or neither for "
                "PyTorch's AdamW (decay lr * weight_decay per step)"
            )
        formats.check_options(moments, param_rounding)
        # like the lr-independent keys: present only when not torch's, so the layout stays torch's
        defaults.update(
            {k: v for k, v in (("moments", moments), ("param_rounding", param_rounding)) if v != formats.DEFAULTS[k]}
        )
        check_group({**defaults, "lr_max": lr_max or 1.0})
        self._checked: dict[int, tuple] = {}  # group index -> hyperparameters last checked at step()
        super().__init__(params, defaults)

    # ---- groups and state ------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("lr_independent_decay") and group.get("lr_max") is None:
            group["lr_max"] = float(group["lr"])  # the group's initial lr
        try:
            check_group(group, where=f"param group {len(self.param_groups) - 1}")
        except (ValueError, RuntimeError):
            self.param_groups.pop()  # leave the optimizer as it was
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", self._default_decoupled)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):  # checkpoints before torch 1.12
                    on_device = group["capturable"] or group["fused"]
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]),
                        dtype=_step_dtype(group["fused"]),
                        device=p.device if on_device else "cpu",
                    )

    _default_decoupled = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this class, by ``torch.optim.AdamW`` or by ``torch.optim.Adam``.

        The whole state dict is checked first; a malformed or mismatched one raises ValueError
        and leaves the optimizer exactly as it was. Moments saved in any state format (torch's
        included) are converted to the format this optimizer's groups use.
        """
        statedict.validate(state_dict, self.param_groups)
        # the state format is this optimizer's choice, not the checkpoint's: keep it
        chosen = [{k: g[k] for k in formats.DEFAULTS if k in g} for g in self.param_groups]
        super().load_state_dict(state_dict)
        self._restore_saved_dtypes(state_dict)
        for group, keep in zip(self.param_groups, chosen):
            for key in formats.DEFAULTS:
                group.pop(key, None)
            group.update(keep)
            fmt, rounding = formats.options(group)
            for p in group["params"]:
                if self.state.get(p):
                    if formats.is_formatted(group, p):
                        self.state[p] = formats.convert_entry(self.state[p], p, fmt, rounding)
                    else:  # torch's layout, kept as saved where it already is
                        self.state[p] = formats.convert_entry(
                            self.state[p], p, formats.PARAM, rounding, contiguous=False
                        )

    def _restore_saved_dtypes(self, state_dict: dict[str, Any]) -> None:
        """Undo torch's cast of loaded state to the parameter's dtype: a format's tensors keep
        their own dtype (fp32 moments of bf16 weights, fp32 block scales), and the conversion
        to this optimizer's format that follows decides what to cast."""
        saved_groups = state_dict["param_groups"]
        by_index = {i: p for sg, g in zip(saved_groups, self.param_groups) for i, p in zip(sg["params"], g["params"])}
        for index, entry in state_dict["state"].items():
            loaded = self.state[by_index[index]]
            for key, value in entry.items():
                if key != "step" and isinstance(value, torch.Tensor) and loaded[key].dtype != value.dtype:
                    loaded[key] = value.to(by_index[index].device)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, formatted: bool = False) -> dict[str, Any]:
        state = self.state[p]
        if formatted:
            fmt, rounding = formats.options(group)
            if not state:
                state["step"] = torch.zeros((), dtype=_step_dtype(group["fused"]), device=p.device)
                for moment in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ()):
                    state.update(formats.allocate(p, fmt, moment))
            elif group["amsgrad"] and formats.which(state, "max_exp_avg_sq", p) is None:
                state.update(formats.running_max_from_v(state, p, fmt))  # amsgrad switched on mid-run
            if rounding == "kahan" and formats.COMPENSATION_KEY not in state and formats.is_low_precision(p):
                state.update(formats.compensation_buffer(p))
            return state
        if not state:
            on_device = group["capturable"] or group["fused"]
            state["step"] = torch.zeros((), dtype=_step_dtype(group["fused"]), device=p.device if on_device else "cpu")
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif group["amsgrad"] and "max_exp_avg_sq" not in state:
            # amsgrad switched on mid-run: the running maximum starts from the current v
            state["max_exp_avg_sq"] = state["exp_avg_sq"].clone(memory_format=torch.preserve_format)
        return state

    # ---- the step --------------------------------------------------------------------------

    def _params_with_grad(self, index: int, group: dict[str, Any]) -> _Plan:
        """The group's parameters that have a gradient, checked, split into those with torch's
        state layout and those with another format, and the backends that will run them."""
        hyper = (group["lr"], group["betas"], group["eps"], group["weight_decay"], group.get("lr_max"))
        if any(isinstance(h, torch.Tensor) for h in (hyper[0], *hyper[1])) or self._checked.get(index) != hyper:
            check_group(group, where=f"param group {index}")  # only when a value changed (a schedule)
            self._checked[index] = hyper
        names = group.get("param_names")
        plain, formatted = [], []
        for j, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            what = f"parameter {names[j]!r}" if names else f"parameter {j} of param group {index}"
            if grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients ({what}, shape "
                    f"{tuple(p.shape)}). Use torch.optim.SparseAdam for that parameter, or build the "
                    f"embedding with sparse=False."
                )
            if ("moments" in group or "param_rounding" in group) and formats.is_formatted(group, p):
                reason = formats.unsupported_reason(group, p)
                if reason is not None:
                    raise ValueError(f"{what}: {reason}")
                formatted.append(p)
            else:
                plain.append(p)
        name = self._backend(group)
        differentiable = group["differentiable"]
        return _Plan(
            plain,
            formatted,
            backends.resolve(name, plain, differentiable=differentiable),
            # formatted state is updated through float32 copies on the parameters' devices
            backends.resolve(
                name,
                [torch.empty(0, device=d) for d in {p.device for p in formatted}],
                differentiable=differentiable,
            ),
        )

    def _backend(self, group: dict[str, Any]) -> str:
        """The backend asked for: ``backend=`` if given, else what torch's flags mean."""
        if self.backend is not None:
            return self.backend
        if group["fused"]:
            return "fused"
        if group["foreach"]:
            return "foreach"
        if group["foreach"] is False or group["differentiable"]:
            return "loop"
        return "auto"

    @staticmethod
    def _decay(group: dict[str, Any]) -> Decay:
        if not group["decoupled_weight_decay"]:
            return Decay.COUPLED
        return Decay.LR_INDEPENDENT if group.get("lr_independent_decay") else Decay.DECOUPLED

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step (optionally re-evaluating the loss with ``closure``).

        Every group is checked before any parameter or state is changed: a bad hyperparameter
        or gradient raises with nothing updated.
        """
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{type(self).__name__}.step() cannot be captured in a CUDA graph yet: it reads the step "
                f"counts on the host. Step outside the graph, or use torch.optim.AdamW(capturable=True) there."
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            plans = [self._params_with_grad(i, g) for i, g in enumerate(self.param_groups)]
            for group, plan in zip(self.param_groups, plans):
                beta1, beta2 = group["betas"]
                hyper = dict(
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    amsgrad=group["amsgrad"],
                    maximize=group["maximize"],
                    decay=self._decay(group),
                    lr_max=group.get("lr_max"),
                )
                if plan.plain:
                    states = [self._init_state(group, p) for p in plan.plain]
                    functional.run(
                        plan.backend,
                        plan.plain,
                        [p.grad for p in plan.plain],  # type: ignore[misc]  # all not None
                        [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states],
                        [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
                        [s["step"] for s in states],
                        differentiable=group["differentiable"],
                        **hyper,
                    )
                if plan.formatted:
                    moments, rounding = formats.options(group)
                    states = [self._init_state(group, p, formatted=True) for p in plan.formatted]
                    torch._foreach_add_([s["step"] for s in states], 1.0)
                    local = formats.sharded.local  # DTensor parameters: their shards, in place
                    formats_execute.step(
                        plan.formatted_backend,
                        [local(p) for p in plan.formatted],
                        [local(p.grad) for p in plan.formatted],  # type: ignore[arg-type]
                        [formats.sharded.local_entry(s, p) for s, p in zip(states, plan.formatted)],
                        group_coefficients(**hyper),
                        moments=moments,
                        rounding=rounding,
                    )
        return loss


class AdamW(_AdamFamily):
    r"""AdamW: Adam with decoupled weight decay, a drop-in ``torch.optim.AdamW``.

    Same signature, defaults, numbers and ``state_dict`` as ``torch.optim.AdamW`` (torch 2.13).
    Per parameter :math:`\theta` with gradient :math:`g`, at step :math:`t`:

    .. math::

        \theta &\leftarrow \theta\,(1 - \gamma\lambda) \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m}{\sqrt{v / (1-\beta_2^t)} + \epsilon}

    The decay :math:`\gamma\lambda\theta` is applied to the weights directly and is *not*
    divided by :math:`\sqrt{v}`, unlike Adam + L2 (:class:`Adam`), so every weight shrinks by
    the same fraction :math:`\gamma\lambda` per step whatever its gradient history.

    Args:
        params: tensors, dicts defining param groups (see :func:`decoupled.param_groups`,
            which keeps biases and norms out of decay), or ``(name, tensor)`` pairs.
        lr: learning rate :math:`\gamma` (float or 1-element tensor; default 1e-3).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1) (default (0.9, 0.999)).
        eps: added to :math:`\sqrt{\hat v}` (default 1e-8).
        weight_decay: :math:`\lambda` (default 1e-2). Each step removes the fraction
            :math:`\gamma\lambda` of every decayed weight; its timescale is
            :math:`1/(\gamma\lambda)` steps.
        amsgrad: use the running maximum of :math:`v` (Reddi et al., 2018).
        maximize: ascend the objective instead of descending.
        foreach: ``True`` for the multi-tensor backend, ``False`` for the per-tensor loop,
            ``None`` (with ``fused=None``) for the fastest backend that fits.
        capturable: keep ``step`` on the parameter's device, as torch does (accepted for
            compatibility; the step counts are read on the host, so CUDA-graph capture of
            ``step()`` is not supported yet).
        differentiable: keep autograd history through the step (runs the loop backend).
        fused: ``True`` for one fused kernel per device and dtype.
        lr_independent_decay: decay by :math:`(\gamma/\gamma_{max})\lambda` per step instead of
            :math:`\gamma\lambda`: the decay follows the *shape* of the lr schedule but not the
            size of lr, so changing lr does not change how strongly weights are pulled to zero
            (the parametrization of Loshchilov & Hutter; Composer's ``DecoupledAdamW``).
            With it, typical ``weight_decay`` values are ~1e-4 to 1e-5, not ~1e-2. Adds the
            keys ``lr_independent_decay`` and ``lr_max`` to the param groups.
        lr_max: :math:`\gamma_{max}` for ``lr_independent_decay``; by default each group's lr
            at construction.
        backend: run a named backend of :mod:`decoupled.backends` (``"loop"``, ``"foreach"``,
            ``"fused"``, ``"triton"``, ``"compiled"``, or ``"auto"``) instead of choosing by
            ``foreach``/``fused``. ``"compiled"`` fuses the low-memory formats' loads and stores
            with the update (``torch.compile``; the first step compiles). An execution choice,
            not state: it is not saved in ``state_dict()``.
        moments: how the moments are stored (:mod:`decoupled.formats`): ``"param"`` (the
            parameter's dtype, as torch; 8 B per fp32 parameter), ``"fp32"``, ``"bf16"`` (4 B,
            stochastically rounded) or ``"8bit"`` (blockwise-quantized, about 2 B). The update
            is computed in float32 whatever the format.
        param_rounding: how the update is written into a bf16/fp16 parameter: ``"nearest"``
            (torch's; updates below half a bf16 ulp, ~0.2% of the weight, are lost),
            ``"kahan"`` (keeps the rounding error in a parameter-sized buffer) or
            ``"stochastic"`` (bf16; unbiased rounding, no memory). No effect on fp32 parameters.

    Example:
        >>> import torch, decoupled
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = decoupled.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
        https://arxiv.org/abs/1711.05101. Kingma & Ba, "Adam", https://arxiv.org/abs/1412.6980.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        lr_independent_decay: bool = False,
        lr_max: float | None = None,
        backend: str | None = None,
        moments: str = "param",
        param_rounding: str = "nearest",
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            lr_independent_decay=lr_independent_decay,
            lr_max=lr_max,
            backend=backend,
            moments=moments,
            param_rounding=param_rounding,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.AdamW: always decoupled
            group["decoupled_weight_decay"] = True


class Adam(_AdamFamily):
    r"""Adam with coupled L2 regularization, numerically identical to ``torch.optim.Adam``.

    Weight decay enters the gradient, :math:`g \leftarrow g + \lambda\theta`, *before* the
    moments, so it is then divided by :math:`\sqrt{\hat v} + \epsilon` like the rest of the
    gradient. A weight with a large gradient history (large :math:`v`) is therefore barely
    decayed, and one with a tiny history is decayed hard: the effective per-step decay is
    :math:`\gamma\lambda / (\sqrt{\hat v} + \epsilon)`, different for every weight, and the
    best :math:`\lambda` moves with the learning rate. That is what Loshchilov & Hutter found
    and what :class:`AdamW` fixes; use AdamW unless you are reproducing an Adam + L2 run or
    comparing the two (``decoupled compare``, ``decoupled explain``).

    Same signature and defaults as ``torch.optim.Adam`` (``weight_decay=0``); with
    ``decoupled_weight_decay=True`` it is :class:`AdamW`. ``backend``, ``moments`` and
    ``param_rounding`` are as in :class:`AdamW`.
    """

    _default_decoupled = False

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str | None = None,
        moments: str = "param",
        param_rounding: str = "nearest",
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
            backend=backend,
            moments=moments,
            param_rounding=param_rounding,
        )


__all__ = ["AdamW", "Adam"]
