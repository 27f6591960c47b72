r"""The optimizer classes: :class:`AdamW` (drop-in ``torch.optim.AdamW``) and :class:`Adam` (Adam + L2).

Both validate their arguments, own the per-parameter state (in ``torch.optim.AdamW``'s layout,
so checkpoints move between the two in both directions), and hand every param group to the
step pipeline (:mod:`decoupled.step`). The math lives in :mod:`decoupled.rule`, the
conventions in :mod:`decoupled.conventions`, how it runs in :mod:`decoupled.backends` and
:mod:`decoupled.formats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from . import conventions, formats, statedict
from . import step as pipeline
from .backends import REGISTRY
from .hyper import capturable_problem, check_group, fused_problem, normalize_group

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, torch.Tensor]]


def _scalar(x: float | torch.Tensor) -> float | torch.Tensor:
    """A 1-element tensor as a 0-d tensor (as torch stores betas); a number unchanged."""
    return x.squeeze() if isinstance(x, torch.Tensor) and x.dim() != 0 else x


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
        decay_scaling: str = "lr",
        cautious_decay: bool = False,
        lr_independent_decay: bool = False,
        lr_max: float | None = None,
        backend: str | None = None,
        moments: str = "param",
        param_rounding: str = "nearest",
    ) -> None:
        if backend is not None:
            if backend not in ("auto", *REGISTRY):
                raise ValueError(f"unknown backend {backend!r}; choose one of {['auto', *REGISTRY]}")
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
            "decay_scaling": decay_scaling,
            "cautious_decay": cautious_decay,
        }
        if lr_independent_decay:  # the older spelling of decay_scaling="independent"
            if decay_scaling not in ("lr", "independent"):
                raise ValueError(
                    f"lr_independent_decay=True and decay_scaling={decay_scaling!r} contradict each other; "
                    f"pass decay_scaling alone"
                )
            defaults["decay_scaling"] = "independent"
        if lr_max is not None:
            defaults["lr_max"] = lr_max
        # like the convention keys: present only when not torch's, so the layout stays torch's
        defaults.update(moments=moments, param_rounding=param_rounding)
        self._normalize(defaults)
        conventions.check_group(
            {**defaults, "lr_max": defaults.get("lr_max", 1.0)} if "decay_scaling" in defaults else defaults
        )
        check_group(defaults)
        defaults.update(normalize_group(defaults))  # flags as bools, numbers as floats: before any state
        self._checked: dict[int, tuple] = {}  # group index -> hyperparameters last checked at step()
        super().__init__(params, defaults)
        if fused:  # torch.amp.GradScaler then hands step() grad_scale/found_inf, as for torch's fused AdamW
            self._step_supports_amp_scaling = True

    @staticmethod
    def _normalize(group: dict[str, Any]) -> None:
        """One spelling for the convention and format keys: the default ones are absent."""
        conventions.normalize_group(group)
        for key, default in formats.DEFAULTS.items():
            if group.get(key, default) == default:
                group.pop(key, None)
        formats.check_options(group.get("moments", "param"), group.get("param_rounding", "nearest"))

    # ---- groups and state ------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict) and "lr_independent_decay" in param_group:
            # the older spelling, translated before torch fills in the defaults so that a group's
            # own lr_independent_decay=False is not overridden by the optimizer's decay_scaling
            param_group = dict(param_group)
            independent = param_group.pop("lr_independent_decay")
            param_group.setdefault("decay_scaling", "independent" if independent else "lr")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._normalize(group)
        if "decay_scaling" not in group and group.get("lr_max") is not None and "lr_max" not in param_group:
            del group["lr_max"]  # inherited from the defaults by a group of PyTorch's convention
        if group.get("decay_scaling") and group.get("lr_max") is None:
            group["lr_max"] = float(group["lr"])  # the group's initial lr
        try:
            conventions.check_group(group, where=f"param group {len(self.param_groups) - 1}")
            check_group(group, where=f"param group {len(self.param_groups) - 1}")
        except (ValueError, RuntimeError, TypeError):
            self.param_groups.pop()  # leave the optimizer as it was
            raise
        group.update(normalize_group(group))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["backend"] = self.backend  # an execution choice, kept by copies and pickles
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickling (a copy, torch.load of the whole optimizer) brings "backend"; torch's
        # load_state_dict also passes through here, without it, and keeps the optimizer's own
        backend = state.pop("backend", getattr(self, "backend", None))
        super().__setstate__(state)
        self.backend = backend
        self._checked = {}
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", self._default_decoupled)
            conventions.normalize_group(group)
            fmt, rounding = formats.options(group)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if (
                    p_state
                    and formats.is_formatted(group, p)
                    and formats.which(p_state, "exp_avg", p) is not fmt.for_param(p)
                ):
                    # unpickled from a release whose format of this name stored other codes (the tree
                    # 8-bit code before the float8 one): converted as a load converts it
                    self.state[p] = p_state = formats.convert_entry(p_state, p, fmt, rounding)
                if p_state and not torch.is_tensor(p_state["step"]):  # checkpoints before torch 1.12
                    on_device = group["capturable"] or group["fused"]
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]),
                        dtype=pipeline.step_dtype(group),
                        device=p.device if on_device else "cpu",
                    )
        if any(g["fused"] for g in self.param_groups):
            self._step_supports_amp_scaling = True

    _default_decoupled = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this class, by ``torch.optim.AdamW`` or by ``torch.optim.Adam``.

        All or nothing: the whole state dict is checked first (:func:`decoupled.statedict.validate`),
        and a malformed or mismatched one raises ValueError with the optimizer exactly as it was.
        Moments saved in any state format (torch's included) are converted, entry by entry, to the
        format this optimizer's groups use. A checkpoint of another weight-decay convention (or of
        torch's, into a group of another) is loaded with a warning that says what ``weight_decay``
        now removes per step. torch's load-state-dict hooks run as in ``torch.optim.Optimizer``.
        """
        state_dict = state_dict.copy()  # shallow, as torch does
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            state_dict = result if result is not None else state_dict
        decoupled = True if self._default_decoupled else None  # AdamW's groups are always decoupled
        statedict.validate(state_dict, self.param_groups, decoupled=decoupled)
        state, groups = statedict.loaded(state_dict, self.param_groups, decoupled=decoupled)
        with statedict.restoring(self):  # a post-hook that raises leaves the optimizer as it was, too
            self.__setstate__({"state": state, "param_groups": groups})
            self._checked = {}
            for post_hook in self._optimizer_load_state_dict_post_hooks.values():
                post_hook(self)

    # ---- the step --------------------------------------------------------------------------

    def _check(self, index: int, group: dict[str, Any]) -> None:
        """Validate a group when its hyperparameters changed since the last step (a schedule), as
        torch's step does (what torch refuses only at construction, a negative lr, warns), and the
        parameters a step with torch's ``capturable``/``fused`` flags cannot run."""
        hyper = (group["lr"], group["betas"], group["eps"], group["weight_decay"], group.get("lr_max"))
        if any(isinstance(h, torch.Tensor) for h in (hyper[0], *hyper[1])) or self._checked.get(index) != hyper:
            where = f"param group {index}"
            conventions.check_group(group, where=where)
            check_group(group, where=where, at="step")
            self._checked[index] = hyper
        if group["fused"]:
            for p in group["params"]:
                if p.grad is not None and not self.state.get(p) and (problem := fused_problem(p)):
                    raise RuntimeError(problem)
        elif group["capturable"]:
            with_grad = [p for p in group["params"] if p.grad is not None]
            if problem := capturable_problem(with_grad, foreach=bool(group["foreach"])):
                raise AssertionError(problem)

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
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            plans = []
            for index, group in enumerate(self.param_groups):
                self._check(index, group)
                asked = pipeline.asked_backend(group, self.backend)
                plans.append(pipeline.plan(group, index, asked, owner=type(self).__name__))
            for p in plans:
                pipeline.run(p, self.state, grad_scale=grad_scale, found_inf=found_inf)
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
        decay_scaling: how the decay follows the learning rate (:mod:`decoupled.conventions`):
            ``"lr"`` (torch's, the default) removes :math:`\gamma_t\lambda` of each weight per
            step; ``"independent"`` removes :math:`(\gamma_t/\gamma_{max})\lambda`, the *shape*
            of the schedule but not the size of lr (Loshchilov & Hutter's parametrization;
            typical ``weight_decay`` values ~1e-4 to 1e-5, not ~1e-2); ``"corrected"`` removes
            :math:`(\gamma_t^2/\gamma_{max})\lambda` (AdamC, Defazio et al. 2025, which keeps the
            steady-state norm of normalized layers independent of the schedule). Per group; adds
            the keys ``decay_scaling`` and ``lr_max`` to the param groups that use it.
        cautious_decay: decay only the coordinates where the Adam update and the weight agree in
            sign (Chen et al. 2025): :math:`\theta \leftarrow \theta - \gamma(u + \lambda\,
            \mathbb 1[u\theta \ge 0]\,\theta)`. Combines with every ``decay_scaling``; torch's fused
            kernel cannot mask, so ``auto`` runs it elsewhere. Adds ``cautious_decay`` to the groups.
        lr_independent_decay: the older spelling of ``decay_scaling="independent"`` (accepted).
        lr_max: :math:`\gamma_{max}` for ``decay_scaling`` ``"independent"`` or ``"corrected"``; by
            default each group's lr at construction.
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
        decay_scaling: str = "lr",
        cautious_decay: bool = False,
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
            decay_scaling=decay_scaling,
            cautious_decay=cautious_decay,
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
    ``decoupled_weight_decay=True`` it is :class:`AdamW` (with torch's ``decay_scaling="lr"``).
    ``backend``, ``moments`` and ``param_rounding`` are as in :class:`AdamW`.
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
