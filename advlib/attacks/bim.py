"""BIM, the basic iterative method (Kurakin, Goodfellow & Bengio 2017): iterated FGSM."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import ATTACKS
from ._checks import check_eps, project_linf
from .base import Attack
from .fgsm import input_gradient, summed_cross_entropy


def sign_ascent(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, x_start: torch.Tensor,
                eps: float, alpha: float, steps: int) -> torch.Tensor:
    """``steps`` signed-gradient ascent steps of size ``alpha`` on the scalar ``objective(x')`` from
    ``x_start``, each projected back onto the L∞ ball of radius ``eps`` around ``x`` and onto
    [0, 1]. Returns the last iterate (as Kurakin et al. and Madry et al. do)."""
    x_adv = x_start
    for _ in range(steps):
        x_adv = project_linf(x_adv + alpha * input_gradient(objective, x_adv).sign(), x, eps)
    return x_adv


def iterate_sign_steps(model: nn.Module, x: torch.Tensor, x_start: torch.Tensor,
                       loss: Callable[[torch.Tensor], torch.Tensor], eps: float, alpha: float,
                       steps: int) -> torch.Tensor:
    """:func:`sign_ascent` on ``loss(model(x'))``, the logits in float32. BIM and PGD ascend the
    cross-entropy; TRADES and DYNAT craft their training examples with other losses; the
    adversarial distillation methods ascend objectives that also involve the teacher."""
    return sign_ascent(lambda x_adv: loss(model(x_adv).float()), x, x_start, eps, alpha, steps)


def check_step_settings(alpha: float, steps: int) -> None:
    # alpha = 0 is allowed: "alpha = eps / 4" must stay valid at eps = 0 (the clean accuracy).
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"the step size alpha must be a number >= 0, got {alpha!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


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
                 seed: int = 0, model_mode: str = "eval") -> None:
        check_eps(eps)
        if steps is None:
            steps = max(1, round(min(255 * eps + 4, 1.25 * 255 * eps)))
        check_step_settings(alpha, steps)
        super().__init__(seed=seed, model_mode=model_mode)
        self.eps, self.alpha, self.steps = eps, alpha, steps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return iterate_sign_steps(model, x, x, summed_cross_entropy(y), self.eps, self.alpha, self.steps)
