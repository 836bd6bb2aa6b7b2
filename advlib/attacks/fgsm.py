"""FGSM, the fast gradient sign method (Goodfellow, Shlens & Szegedy 2015)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import ATTACKS
from ._checks import check_eps
from .base import Attack


def input_gradient(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """∇ₓ of the scalar ``objective(x)``. ``torch.autograd.grad`` leaves every model's ``.grad``
    fields untouched."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(objective(x), x)
    return gradient


def loss_gradient(model: nn.Module, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """∇ₓ of ``loss(model(x))``, the logits in float32."""
    return input_gradient(lambda inputs: loss(model(inputs).float()), x)


def summed_cross_entropy(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The cross-entropy summed over the batch, not averaged, so that each example's gradient is the
    same whatever the batch size (a mean would shrink it by 1/N, and tiny gradients lose their sign
    to underflow)."""
    return lambda logits: F.cross_entropy(logits, y, reduction="sum")


@ATTACKS.register("fgsm")
class FGSM(Attack):
    r"""One step of size ε along the sign of the loss gradient (Goodfellow et al. 2015, Sec. 4):

    .. math:: x' = \operatorname{clip}_{[0,1]}\big(x + \varepsilon \,\operatorname{sign}(\nabla_x L(f(x), y))\big)

    ``L`` is the cross-entropy. The step is the maximiser of the loss's linear approximation over
    the L∞ ball of radius ε, so FGSM is exact for a linear model and a lower bound otherwise.
    """

    def __init__(self, eps: float = 8 / 255, *, seed: int = 0, model_mode: str = "eval") -> None:
        check_eps(eps)
        super().__init__(seed=seed, model_mode=model_mode)
        self.eps = eps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return (x + self.eps * loss_gradient(model, x, summed_cross_entropy(y)).sign()).clamp_(0, 1)
