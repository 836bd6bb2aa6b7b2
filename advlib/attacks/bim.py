"""BIM, the basic iterative method (Kurakin, Goodfellow & Bengio 2017): iterated FGSM."""
from __future__ import annotations

import torch
from torch import nn

from . import ATTACKS
from .base import Attack
from .primitives import check_eps, check_step_settings, iterate_sign_steps, summed_cross_entropy


@ATTACKS.register("bim")
class BIM(Attack):
    r"""The basic iterative method (Kurakin et al. 2017, Sec. 2.2):

    .. math:: x'_0 = x, \qquad
              x'_{t+1} = \operatorname{Clip}_{x,\varepsilon}\big\{x'_t + \alpha\,
              \operatorname{sign}(\nabla_x L(f(x'_t), y))\big\}

    where :math:`\operatorname{Clip}_{x,\varepsilon}` projects onto the L∞ ball of radius ε around
    ``x`` and onto [0, 1]. No random start: BIM is deterministic. ``steps=None`` uses the paper's
    rule :math:`\min(255\varepsilon + 4,\ 1.25 \cdot 255\varepsilon)` with ``alpha = 1/255``.
    """

    def __init__(self, eps: float = 8 / 255, alpha: float = 1 / 255, steps: int | None = None, *,
                 seed: int = 0, bn_mode: str = "eval") -> None:
        check_eps(eps)
        if steps is None:
            steps = max(1, round(min(255 * eps + 4, 1.25 * 255 * eps)))
        check_step_settings(alpha, steps)
        super().__init__(seed=seed, bn_mode=bn_mode)
        self.eps, self.alpha, self.steps = eps, alpha, steps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return iterate_sign_steps(model, x, x, summed_cross_entropy(y), self.eps, self.alpha, self.steps)
