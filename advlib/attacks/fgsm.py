"""FGSM, the fast gradient sign method (Goodfellow, Shlens & Szegedy 2015)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ATTACKS
from ._checks import check_eps
from .base import Attack


def cross_entropy_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ of the cross-entropy loss of ``model`` at ``x``.

    The loss is summed over the batch, not averaged, so that each example's gradient is the same
    whatever the batch size (a mean would shrink it by 1/N, and tiny gradients lose their sign to
    underflow). ``torch.autograd.grad`` leaves the model's ``.grad`` fields untouched.
    """
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, x)
    return gradient


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
        return (x + self.eps * cross_entropy_gradient(model, x, y).sign()).clamp_(0, 1)
