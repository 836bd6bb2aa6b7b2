"""FGSM, the fast gradient sign method (Goodfellow, Shlens & Szegedy 2015)."""
from __future__ import annotations

import torch
from torch import nn

from . import ATTACKS
from .base import Attack
from .primitives import check_eps, loss_gradient, summed_cross_entropy


@ATTACKS.register("fgsm")
class FGSM(Attack):
    r"""One step of size ε along the sign of the loss gradient (Goodfellow et al. 2015, Sec. 4):

    .. math:: x' = \operatorname{clip}_{[0,1]}\big(x + \varepsilon \,\operatorname{sign}(\nabla_x L(f(x), y))\big)

    ``L`` is the cross-entropy. The step is the maximiser of the loss's linear approximation over
    the L∞ ball of radius ε, so FGSM is exact for a linear model and a lower bound otherwise.
    """

    def __init__(self, eps: float = 8 / 255, *, seed: int = 0, bn_mode: str = "eval") -> None:
        check_eps(eps)
        super().__init__(seed=seed, bn_mode=bn_mode)
        self.eps = eps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return (x + self.eps * loss_gradient(model, x, summed_cross_entropy(y)).sign()).clamp_(0, 1)
