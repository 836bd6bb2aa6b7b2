"""CW-∞: PGD on the Carlini–Wagner margin loss under an L∞ budget, the "C&W" column of the
adversarial-training literature (TRADES, AWP, LBGAT, DYNAT evaluate with it)."""
from __future__ import annotations

import torch
from torch import nn

from . import ATTACKS
from .base import Attack
from .primitives import (check_eps, check_positive_ints, check_step_settings, margin, project_linf, uniform_start,
                         worst_case_over_restarts)

@ATTACKS.register("cw-linf")
class CWLinf(Attack):
    r"""L∞ PGD ascending the CW margin (Madry et al.'s PGD with Carlini–Wagner's loss):

    .. math:: x'_{t+1} = \Pi_{x+\mathcal{S}}\big(x'_t + \alpha\,\operatorname{sign}
              \nabla_x [\max_{i\neq y} Z_i(x'_t) - Z_y(x'_t)]\big)

    from a uniform random start in the ball (``random_start``). Per example the result is the
    first iterate that fools the model, else the last iterate; ``restarts`` runs are combined per
    example by :func:`~advlib.attacks.primitives.worst_case_over_restarts` (SAAD's evaluation restarts it
    10 times and keeps, per example, the restart with the highest cross-entropy, which for a fooled
    example can be a run that did not fool it; ours keeps any run that fools).
    """

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 20, restarts: int = 1,
                 random_start: bool = True, *, seed: int = 0, bn_mode: str = "eval") -> None:
        check_eps(eps)
        check_step_settings(alpha, steps)
        check_positive_ints(restarts=restarts)
        super().__init__(seed=seed, bn_mode=bn_mode)
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.restarts, self.random_start = restarts, random_start

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return worst_case_over_restarts(lambda xs, ys: self._run(model, xs, ys, generator), model, x, y,
                                        self.restarts)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x_adv = uniform_start(x, self.eps, generator) if self.random_start else x
        best = x_adv.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            wrong_minus_true = -margin(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(wrong_minus_true.sum(), x_adv)
            newly = (wrong_minus_true.detach() > 0) & ~fooled
            best[newly] = x_adv.detach()[newly]
            fooled |= newly
            x_adv = project_linf(x_adv.detach() + self.alpha * grad.sign(), x, self.eps)
        best[~fooled] = x_adv[~fooled]
        return best
