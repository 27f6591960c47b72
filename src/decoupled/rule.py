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

The three weight-decay conventions differ only in :math:`\rho` (the multiplier applied to
the parameter, unitless) and :math:`\lambda_{L2}` (added to the gradient, in gradient units
per parameter unit):

=================  ================================  =========================
convention          :math:`\rho`                      :math:`\lambda_{L2}`
=================  ================================  =========================
``decoupled``       :math:`1 - \gamma\lambda`         0   (``torch.optim.AdamW``)
``lr_independent``  :math:`1 - (\gamma/\gamma_{max})\lambda`  0   (Loshchilov & Hutter's
                                                      schedule multiplier :math:`\eta_t`)
``coupled``         1                                 :math:`\lambda`  (``torch.optim.Adam``)
=================  ================================  =========================

Everything a backend needs is split in two:

* :func:`group_coefficients` and :func:`step_coefficients` turn hyperparameters into the
  Python floats above (host side, float64, in the same order of operations as PyTorch so that
  results agree to the last bit).
* :func:`adam_update` applies them to tensors through an ``ops`` vocabulary. The loop backend
  passes single tensors and :class:`TensorOps`; the foreach backend passes lists and
  ``torch._foreach_*`` ops. The arithmetic is the same lines of code for both.

References: Kingma & Ba, "Adam" (arXiv:1412.6980); Loshchilov & Hutter, "Decoupled Weight
Decay Regularization" (arXiv:1711.05101); Reddi et al., "On the Convergence of Adam and
Beyond" (AMSGrad, ICLR 2018).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

T = TypeVar("T")


class Decay(str, enum.Enum):
    """How weight decay enters the update (see the module docstring for the math)."""

    DECOUPLED = "decoupled"
    """AdamW as PyTorch parametrizes it: theta *= 1 - lr * wd."""
    LR_INDEPENDENT = "lr_independent"
    """AdamW as the paper parametrizes it: theta *= 1 - (lr / lr_max) * wd."""
    COUPLED = "coupled"
    """Adam + L2: g += wd * theta before the moments (divided by sqrt(v) later)."""


@dataclass(frozen=True)
class GroupCoefficients:
    """Per-group scalars of one step (all Python floats, unitless unless stated).

    Attributes:
        lr: learning rate gamma (parameter units per normalized-gradient unit).
        beta1, beta2: EMA coefficients of the first and second moments.
        eps: added to sqrt(v_hat) (gradient units).
        decay_factor: rho, multiplies the parameter before the step; 1.0 means no decay.
        decay_per_lr: the lambda with rho = 1 - lr * lambda (per lr unit), for kernels that
            take lr and weight decay separately; 0.0 when the convention is coupled.
        l2: lambda_L2, added to the gradient as l2 * theta; 0.0 means none.
        amsgrad: use the running maximum of v.
        maximize: ascend instead of descend.
    """

    lr: float
    beta1: float
    beta2: float
    eps: float
    decay_factor: float
    decay_per_lr: float
    l2: float
    amsgrad: bool
    maximize: bool

    @property
    def decays(self) -> bool:
        """Whether the parameter is multiplied by ``decay_factor`` (a decoupled convention, wd != 0)."""
        return self.decay_factor != 1

    @property
    def coupled(self) -> bool:
        """Whether ``l2 * theta`` is added to the gradient (the coupled convention, wd != 0)."""
        return self.l2 != 0


def group_coefficients(
    *,
    lr: float | torch.Tensor,
    beta1: float | torch.Tensor,
    beta2: float | torch.Tensor,
    eps: float,
    weight_decay: float,
    decay: Decay | str,
    lr_max: float | None = None,
    amsgrad: bool = False,
    maximize: bool = False,
) -> GroupCoefficients:
    """The per-group scalars for one step, for any of the three conventions (a tensor lr or beta
    is read once, as a Python float)."""
    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    decay = Decay(decay)
    decay_factor, decay_per_lr, l2 = 1.0, 0.0, 0.0
    if weight_decay != 0:
        if decay is Decay.DECOUPLED:
            decay_factor, decay_per_lr = 1 - lr * weight_decay, weight_decay
        elif decay is Decay.LR_INDEPENDENT:
            if lr_max is None or not lr_max > 0:
                raise ValueError(
                    f"lr-independent decay needs lr_max > 0 (the lr at which the full "
                    f"weight_decay applies), got lr_max={lr_max!r}"
                )
            decay_factor, decay_per_lr = 1 - (lr / lr_max) * weight_decay, weight_decay / lr_max
        else:
            l2 = weight_decay
    return GroupCoefficients(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        decay_factor=decay_factor,
        decay_per_lr=decay_per_lr,
        l2=l2,
        amsgrad=amsgrad,
        maximize=maximize,
    )


def step_coefficients(c: GroupCoefficients, step: float) -> tuple[float, float]:
    """Bias corrections at step ``step`` (>= 1) as ``(neg_step_size, bias_correction2_sqrt)``.

    ``neg_step_size = -lr / (1 - beta1**step)`` and
    ``bias_correction2_sqrt = sqrt(1 - beta2**step)``.
    """
    bias_correction1 = 1 - c.beta1**step
    bias_correction2 = 1 - c.beta2**step
    return -(c.lr / bias_correction1), bias_correction2**0.5


class Ops(Protocol[T]):
    """The tensor vocabulary :func:`adam_update` is written in.

    ``T`` is a tensor (loop backend) or a list of tensors (foreach backend). Methods whose
    names end in ``_`` update their first argument in place *and return it*; a backend
    that cannot update in place may return a new value instead, which is why the rule always
    uses the return value. Scalars ``s`` are a float, or one float per tensor.
    """

    def neg(self, x: T) -> T: ...
    def add(self, x: T, y: T, alpha: float) -> T: ...
    def mul_(self, x: T, s: Any) -> T: ...
    def lerp_(self, x: T, end: T, weight: float) -> T: ...
    def addcmul_(self, x: T, a: T, b: T, value: float) -> T: ...
    def maximum_(self, x: T, y: T) -> T: ...
    def sqrt(self, x: T) -> T: ...
    def div_(self, x: T, s: Any) -> T: ...
    def add_scalar_(self, x: T, s: float) -> T: ...
    def addcdiv_(self, x: T, a: T, b: T, value: Any) -> T: ...


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
    if c.decays:
        param = ops.mul_(param, c.decay_factor)
    exp_avg = ops.lerp_(exp_avg, grad, 1 - c.beta1)
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
    """:class:`Ops` over single tensors, in place (the loop backend)."""

    def neg(self, x: torch.Tensor) -> torch.Tensor:
        return x.neg()

    def add(self, x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
        return x.add(y, alpha=alpha)

    def mul_(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return x.mul_(s)

    def lerp_(self, x: torch.Tensor, end: torch.Tensor, weight: float) -> torch.Tensor:
        return x.lerp_(end, weight)

    def addcmul_(self, x, a, b, value: float) -> torch.Tensor:
        return x.addcmul_(a, b, value=value)

    def maximum_(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, y, out=x)

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return x.sqrt()

    def div_(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return x.div_(s)

    def add_scalar_(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return x.add_(s)

    def addcdiv_(self, x, a, b, value: float) -> torch.Tensor:
        return x.addcdiv_(a, b, value=value)


class DifferentiableTensorOps(TensorOps):
    """:class:`TensorOps` that keep autograd history intact (``differentiable=True``).

    Values that autograd saves for the backward pass are never overwritten afterwards: the
    division of sqrt(v) is out of place, and the moments are cloned where they are read.
    """

    def div_(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return x / s

    def maximum_(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.copy_(torch.maximum(x.clone(), y.clone()))

    def addcdiv_(self, x, a, b, value: float) -> torch.Tensor:
        return x.addcdiv_(a.clone(), b, value=value)


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
