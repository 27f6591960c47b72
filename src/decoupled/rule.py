r"""The Adam update, written once.

For one parameter tensor :math:`\theta` with gradient :math:`g`, first moment :math:`m`,
second moment :math:`v` (and :math:`\hat v_{max}` with AMSGrad), at step :math:`t` (counted
from 1), with learning rate :math:`\gamma`, betas :math:`\beta_1, \beta_2`, epsilon
:math:`\epsilon` and weight decay :math:`\lambda`:

.. math::

    g &\leftarrow -g \quad \text{if maximize} \\
    g &\leftarrow g + \lambda_{L2}\,\theta  \quad \text{(coupled convention only)} \\
    \theta &\leftarrow \rho\,\theta \quad \text{(decoupled conventions, } \rho < 1\text{)} \\
    m &\leftarrow \beta_1 m + (1-\beta_1)\,g \\
    v &\leftarrow \beta_2 v + (1-\beta_2)\,g^2 \\
    v_{max} &\leftarrow \max(v_{max}, v) \quad \text{(AMSGrad; then } v_{max} \text{ replaces } v\text{)} \\
    \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
        \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

The weight-decay conventions (:mod:`decoupled.conventions`) differ only in :math:`\rho`
(the multiplier applied to the parameter, unitless), :math:`\lambda_{L2}` (added to the
gradient, in gradient units per parameter unit) and whether the decay is *cautious*:

=====================  ================================================  =========================
convention             :math:`\rho`                                      :math:`\lambda_{L2}`
=====================  ================================================  =========================
``adamw``              :math:`1 - \gamma\lambda`                          0   (``torch.optim.AdamW``)
``adamw_indep``        :math:`1 - (\gamma/\gamma_{max})\lambda`           0   (Loshchilov & Hutter's
                                                                          schedule multiplier)
``adamw_corrected``    :math:`1 - (\gamma^2/\gamma_{max})\lambda`         0   (AdamC, Defazio et al.)
``adam_l2``            1                                                 :math:`\lambda`  (``torch.optim.Adam``)
=====================  ================================================  =========================

Cautious decay (Chen et al. 2025, arXiv:2510.12402) applies :math:`\rho` only where the Adam
update :math:`u = \hat m / (\sqrt{\hat v} + \epsilon)` and :math:`\theta` agree in sign,
:math:`\theta \leftarrow \theta - \gamma(u + \lambda\,\mathbb 1[u\theta \ge 0]\,\theta)`. As
:math:`\sqrt{\hat v} + \epsilon > 0` and the bias correction is positive, :math:`u` has the sign
of the new first moment :math:`m`, so the mask is :math:`\mathbb 1[m\,\theta \ge 0]`, with
:math:`\theta` the weight before the step: cheap, and the same in every backend.

Everything a backend needs is split in two:

* :func:`group_coefficients` and :func:`step_coefficients` turn hyperparameters into the
  Python floats above (host side, float64, in the same order of operations as PyTorch so that
  results agree to the last bit), or into 0-d tensors where autograd must see them
  (``differentiable=True`` with tensor hyperparameters: hypergradients) or where a compiled
  kernel takes them as inputs.
* :func:`adam_update` applies them to tensors through an ``ops`` vocabulary. The loop backend
  passes single tensors and :class:`TensorOps`; the foreach backend passes lists and
  ``torch._foreach_*`` ops. The arithmetic is the same lines of code for both.

References: Kingma & Ba, "Adam" (arXiv:1412.6980); Loshchilov & Hutter, "Decoupled Weight
Decay Regularization" (arXiv:1711.05101); Reddi et al., "On the Convergence of Adam and
Beyond" (AMSGrad, ICLR 2018); Defazio et al., "Why Gradients Rapidly Increase Near the End of
Training" (arXiv:2506.02285); Chen et al., "Cautious Weight Decay" (arXiv:2510.12402).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from .conventions import ADAMW, Convention, Scaling

T = TypeVar("T")
Scalar = float | torch.Tensor
"""A coefficient: a Python float, or a 0-d tensor (autograd input or compiled-graph input)."""


@dataclass(frozen=True)
class GroupCoefficients:
    """Per-group scalars of one step (unitless unless stated).

    Attributes:
        lr: learning rate gamma (parameter units per normalized-gradient unit).
        beta1, beta2: EMA coefficients of the first and second moments.
        eps: added to sqrt(v_hat) (gradient units).
        decay_factor: rho, multiplies the parameter (where the decay applies); 1.0 means no decay.
        decay_per_lr: the lambda' with rho = 1 - lr * lambda' (per lr unit), for kernels that
            take lr and weight decay separately; 0.0 when the convention is coupled.
        l2: lambda_L2, added to the gradient as l2 * theta; 0.0 means none.
        amsgrad: use the running maximum of v.
        maximize: ascend instead of descend.
        decays: the parameter is multiplied by ``decay_factor`` (a decoupled convention, wd != 0).
        coupled: ``l2 * theta`` is added to the gradient (the coupled convention, wd != 0).
        cautious: the decay applies only where ``exp_avg * theta >= 0`` (see the module notes).

    The values are Python floats, except under ``differentiable=True`` with tensor
    hyperparameters, where they are 0-d tensors that carry autograd history. The flags are
    always Python bools, so kernels branch on them without reading a tensor.
    """

    lr: Scalar
    beta1: Scalar
    beta2: Scalar
    eps: Scalar
    decay_factor: Scalar
    decay_per_lr: Scalar
    l2: Scalar
    amsgrad: bool
    maximize: bool
    decays: bool = False
    coupled: bool = False
    cautious: bool = False


def _number(x: Scalar, keep_tensor: bool) -> Scalar:
    """``x`` as a Python float, or kept as a 0-d tensor (1-element tensors squeezed) when asked."""
    if isinstance(x, torch.Tensor):
        return x.reshape(()) if keep_tensor else float(x.item())
    return float(x)


def group_coefficients(
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    convention: Convention = ADAMW,
    lr_max: float | None = None,
    amsgrad: bool = False,
    maximize: bool = False,
    keep_tensors: bool = False,
) -> GroupCoefficients:
    """The per-group scalars for one step, for any convention.

    A tensor hyperparameter is read once as a Python float, or with ``keep_tensors`` kept as a
    0-d tensor so that gradients reach it (hypergradients); the arithmetic is the same either way.
    """
    lr, beta1, beta2, eps = (_number(x, keep_tensors) for x in (lr, beta1, beta2, eps))
    wd = _number(weight_decay, keep_tensors)
    zero = float(wd) == 0.0
    decay_factor: Scalar = 1.0
    decay_per_lr: Scalar = 0.0
    l2: Scalar = 0.0
    if convention.coupled:
        l2 = wd
    elif not zero:
        if convention.scaling is Scaling.LR:
            decay_factor, decay_per_lr = 1 - lr * wd, wd
        else:
            if lr_max is None or not lr_max > 0:
                raise ValueError(
                    f"{convention.key} decay needs lr_max > 0 (the lr at which the full weight_decay "
                    f"applies), got lr_max={lr_max!r}"
                )
            if convention.scaling is Scaling.INDEPENDENT:
                decay_factor, decay_per_lr = 1 - (lr / lr_max) * wd, wd / lr_max
            else:  # corrected: lr**2 / lr_max, as timm's AdamWLegacy(corrected_weight_decay=True)
                decay_factor, decay_per_lr = 1 - (lr * lr / lr_max) * wd, wd * lr / lr_max
    return GroupCoefficients(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        decay_factor=decay_factor,
        decay_per_lr=decay_per_lr,
        l2=l2,
        amsgrad=bool(amsgrad),
        maximize=bool(maximize),
        decays=not convention.coupled and not zero,
        coupled=convention.coupled and not zero,
        cautious=convention.cautious and not convention.coupled,
    )


def step_coefficients(c: GroupCoefficients, step: float) -> tuple[Scalar, Scalar]:
    """Bias corrections at step ``step`` (>= 1) as ``(neg_step_size, bias_correction2_sqrt)``.

    ``neg_step_size = -lr / (1 - beta1**step)`` and
    ``bias_correction2_sqrt = sqrt(1 - beta2**step)`` (floats, or 0-d tensors when the
    coefficients are tensors).
    """
    bias_correction1 = 1 - c.beta1**step
    bias_correction2 = 1 - c.beta2**step
    return -(c.lr / bias_correction1), bias_correction2**0.5


class Ops(Protocol[T]):
    """The tensor vocabulary :func:`adam_update` is written in.

    ``T`` is a tensor (loop backend) or a list of tensors (foreach backend). Methods whose
    names end in ``_`` update their first argument in place *and return it*; a backend
    that cannot update in place may return a new value instead, which is why the rule always
    uses the return value. Scalars ``s`` are a float or a 0-d tensor, or one per tensor.
    """

    def neg(self, x: T) -> T: ...
    def add(self, x: T, y: T, alpha: Any) -> T: ...
    def mul_(self, x: T, s: Any) -> T: ...
    def lerp_(self, x: T, end: T, weight: Any) -> T: ...
    def addcmul_(self, x: T, a: T, b: T, value: Any) -> T: ...
    def maximum_(self, x: T, y: T) -> T: ...
    def sqrt(self, x: T) -> T: ...
    def div_(self, x: T, s: Any) -> T: ...
    def add_scalar_(self, x: T, s: Any) -> T: ...
    def addcdiv_(self, x: T, a: T, b: T, value: Any) -> T: ...
    def mul_where_agree_(self, x: T, m: T, s: Any) -> T: ...


def adam_update(
    ops: Ops[T],
    param: T,
    grad: T,
    exp_avg: T,
    exp_avg_sq: T,
    max_exp_avg_sq: T | None,
    c: GroupCoefficients,
    neg_step_size: Any,
    bias_correction2_sqrt: Any,
) -> tuple[T, T, T, T | None]:
    """Apply one Adam step (any convention) and return ``(param, exp_avg, exp_avg_sq, max)``.

    The moments are stored biased (not divided by 1 - beta**t), exactly as PyTorch stores them.
    ``neg_step_size`` and ``bias_correction2_sqrt`` come from :func:`step_coefficients` (one
    value, or one per tensor).
    """
    if c.maximize:
        grad = ops.neg(grad)
    if c.coupled:
        grad = ops.add(grad, param, alpha=c.l2)
    if c.decays and not c.cautious:
        param = ops.mul_(param, c.decay_factor)
    exp_avg = ops.lerp_(exp_avg, grad, 1 - c.beta1)
    if c.decays and c.cautious:  # theta (still theta_{t-1}) decays where sign(u) = sign(m) agrees with it
        param = ops.mul_where_agree_(param, exp_avg, c.decay_factor)
    exp_avg_sq = ops.addcmul_(ops.mul_(exp_avg_sq, c.beta2), grad, grad, value=1 - c.beta2)
    second = exp_avg_sq
    if c.amsgrad:
        assert max_exp_avg_sq is not None, "amsgrad needs max_exp_avg_sq"
        max_exp_avg_sq = ops.maximum_(max_exp_avg_sq, exp_avg_sq)
        second = max_exp_avg_sq
    denom = ops.add_scalar_(ops.div_(ops.sqrt(second), bias_correction2_sqrt), c.eps)
    param = ops.addcdiv_(param, exp_avg, denom, value=neg_step_size)
    return param, exp_avg, exp_avg_sq, max_exp_avg_sq


class TensorOps:
    """:class:`Ops` over single tensors, in place (the loop backend).

    A scalar may be a 0-d tensor (hypergradients, compiled kernels): where torch's op takes only
    a Python number (``alpha``, ``value``), the product is then formed explicitly.
    """

    def neg(self, x: torch.Tensor) -> torch.Tensor:
        return x.neg()

    def add(self, x: torch.Tensor, y: torch.Tensor, alpha: Any) -> torch.Tensor:
        if isinstance(alpha, torch.Tensor):
            return x + y * alpha
        return x.add(y, alpha=alpha)

    def mul_(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return x.mul_(s)

    def lerp_(self, x: torch.Tensor, end: torch.Tensor, weight: float) -> torch.Tensor:
        return x.lerp_(end, weight)

    def addcmul_(self, x, a, b, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return x.add_(a * b * value)
        return x.addcmul_(a, b, value=value)

    def maximum_(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, y, out=x)

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return x.sqrt()

    def div_(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return x.div_(s)

    def add_scalar_(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return x.add_(s)

    def addcdiv_(self, x, a, b, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return x.add_(a / b * value)
        return x.addcdiv_(a, b, value=value)

    def mul_where_agree_(self, x: torch.Tensor, m: torch.Tensor, s: Any) -> torch.Tensor:
        """``x *= s`` where ``m * x >= 0`` (the cautious mask), ``x`` unchanged elsewhere."""
        return x.copy_(torch.where(m * x >= 0, x * s, x))


class DifferentiableTensorOps(TensorOps):
    """:class:`TensorOps` that keep autograd history intact (``differentiable=True``).

    Values that autograd saves for the backward pass are never overwritten afterwards: the
    division of sqrt(v) is out of place, and the moments are cloned where they are read.
    """

    def add(self, x: torch.Tensor, y: torch.Tensor, alpha: Any) -> torch.Tensor:
        if isinstance(alpha, torch.Tensor):  # y (the parameter) is updated in place later
            return x + y.clone() * alpha
        return x.add(y, alpha=alpha)

    def div_(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return x / s

    def maximum_(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.copy_(torch.maximum(x.clone(), y.clone()))

    def addcdiv_(self, x, a, b, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return x.add_(a.clone() / b * value)
        return x.addcdiv_(a.clone(), b, value=value)

    def mul_where_agree_(self, x: torch.Tensor, m: torch.Tensor, s: Any) -> torch.Tensor:
        factor = torch.where(m * x >= 0, torch.as_tensor(s, dtype=x.dtype, device=x.device), 1.0)
        return x.mul_(factor)  # in place, as autograd can differentiate it (x*s then copy_ cannot)


class ForeachOps:
    """:class:`Ops` over lists of tensors with ``torch._foreach_*`` (the foreach backend)."""

    def neg(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch._foreach_neg(x))

    def add(self, x, y, alpha: float) -> list[torch.Tensor]:
        return list(torch._foreach_add(x, y, alpha=alpha))

    def mul_(self, x, s) -> list[torch.Tensor]:
        torch._foreach_mul_(x, s)
        return x

    def lerp_(self, x, end, weight: float) -> list[torch.Tensor]:
        torch._foreach_lerp_(x, end, weight)
        return x

    def addcmul_(self, x, a, b, value: float) -> list[torch.Tensor]:
        torch._foreach_addcmul_(x, a, b, value)
        return x

    def maximum_(self, x, y) -> list[torch.Tensor]:
        torch._foreach_maximum_(x, y)
        return x

    def sqrt(self, x) -> list[torch.Tensor]:
        return list(torch._foreach_sqrt(x))

    def div_(self, x, s) -> list[torch.Tensor]:
        torch._foreach_div_(x, s)
        return x

    def add_scalar_(self, x, s: float) -> list[torch.Tensor]:
        torch._foreach_add_(x, s)
        return x

    def addcdiv_(self, x, a, b, value) -> list[torch.Tensor]:
        torch._foreach_addcdiv_(x, a, b, value)
        return x

    def mul_where_agree_(self, x, m, s) -> list[torch.Tensor]:
        # no _foreach form of a masked multiply: one fused where per tensor
        factors = s if isinstance(s, list) else [s] * len(x)
        for xi, mi, si in zip(x, m, factors):
            xi.copy_(torch.where(mi * xi >= 0, xi * si, xi))
        return x
