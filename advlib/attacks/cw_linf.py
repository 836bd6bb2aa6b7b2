"""CW-∞: PGD on the Carlini–Wagner margin loss under an L∞ budget, the "C&W" column of the
adversarial-training literature (TRADES, AWP, LBGAT, DYNAT evaluate with it)."""
from __future__ import annotations

import torch
from torch import nn

from . import ATTACKS
from ._checks import check_eps, project_linf
from .base import Attack
from .bim import check_step_settings
from .pgd import check_restarts, uniform_start, worst_case_over_restarts

# The reference codes subtract this from the true logit before taking the max over wrong classes
# (a one-hot mask times the logits would make the max 0 whenever every wrong logit is negative).
TRUE_CLASS_MASK = 1e4


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{i≠y} Z_i − Z_y per example (Carlini & Wagner 2017, Sec. V.A, f_6 with κ = ∞): positive
    once the model is fooled. The true class is masked with −10⁴ before the max."""
    one_hot = torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
    true_logit = (logits * one_hot).sum(1)
    best_other = (logits - TRUE_CLASS_MASK * one_hot).amax(1)
    return best_other - true_logit


@ATTACKS.register("cw-linf")
class CWLinf(Attack):
    r"""L∞ PGD ascending the CW margin (Madry et al.'s PGD with Carlini–Wagner's loss):

    .. math:: x'_{t+1} = \Pi_{x+\mathcal{S}}\big(x'_t + \alpha\,\operatorname{sign}
              \nabla_x [\max_{i\neq y} Z_i(x'_t) - Z_y(x'_t)]\big)

    from a uniform random start in the ball (``random_start``). Per example the result is the
    first iterate that fools the model, else the last iterate; ``restarts`` runs are combined per
    example by :func:`~advlib.attacks.pgd.worst_case_over_restarts` (SAAD's evaluation restarts it
    10 times and keeps, per example, the restart with the highest cross-entropy, which for a fooled
    example can be a run that did not fool it; ours keeps any run that fools).
    """

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 20, restarts: int = 1,
                 random_start: bool = True, *, seed: int = 0, model_mode: str = "eval") -> None:
        check_eps(eps)
        check_step_settings(alpha, steps)
        check_restarts(restarts)
        super().__init__(seed=seed, model_mode=model_mode)
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
            margin = cw_margin(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(margin.sum(), x_adv)
            newly = (margin.detach() > 0) & ~fooled
            best[newly] = x_adv.detach()[newly]
            fooled |= newly
            x_adv = project_linf(x_adv.detach() + self.alpha * grad.sign(), x, self.eps)
        best[~fooled] = x_adv[~fooled]
        return best
