"""FAT, friendly adversarial training (Zhang, Xu, Han, Niu, Cui, Sugiyama & Kankanhalli, ICML 2020,
"Attacks which do not kill training make adversarial learning stronger", Sec. 3 and Algorithm 1);
a row of DYNAT's Table 1.

PGD-AT trains on the most adversarial point of the ε-ball. FAT trains on *friendly* adversarial
examples instead: PGD stops for each example soon after it first crosses the decision boundary —
τ steps after, where τ grows during training (PGD-K-τ) — so the examples are adversarial but
not far past the boundary, which keeps clean accuracy higher.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.primitives import check_eps, check_step_settings, in_mode, project_linf, uniform_start
from . import DEFENSES
from .adversarial_training import EpochSeeded, adversarial_ce_loss


def early_stopped_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_start: torch.Tensor, *,
                      eps: float, alpha: float, steps: int, tau: int) -> torch.Tensor:
    """PGD-K-τ (Zhang et al. 2020, Algorithm 1). Each example keeps a budget, τ at the start. Before
    each of the K = ``steps`` steps its current iterate is checked: if it is misclassified with no
    budget left, the example stops there; if it is misclassified with budget left, the budget drops
    by one and the example steps on; if it is classified correctly it steps on. A step ascends
    CE(f(x'), y) by ``alpha``·sign of the gradient and projects onto the L∞ ball and [0, 1]. The
    last iterate is returned unchecked. So τ = 0 returns the first misclassified iterate, the budget
    is never refilled when an example becomes correct again, and τ ≥ K is plain PGD-K. Run it in
    the BatchNorm mode the trainer chose (the per-example gradients then do not depend on which
    examples are still running)."""
    check_eps(eps)
    check_step_settings(alpha, steps)
    if tau < 0:
        raise ValueError(f"tau counts misclassified steps and must be >= 0, got {tau}")
    x_adv = x_start.detach().clone()
    budget = torch.full((len(x),), tau, dtype=torch.long, device=x.device)
    running = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        current = x_adv[running].requires_grad_(True)
        with torch.enable_grad():
            logits = model(current).float()
            (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y[running], reduction="sum"), current)
        misclassified = logits.argmax(1) != y[running]
        stops = misclassified & (budget[running] == 0)
        budget[running[misclassified & ~stops]] -= 1
        going = ~stops
        moved = running[going]
        x_adv[moved] = project_linf(current[going].detach() + alpha * gradient[going].sign(), x[moved], eps)
        running = moved
        if len(running) == 0:
            break
    return x_adv


def tau_at(epoch: int, tau: int, tau_from_epoch: Sequence[int]) -> int:
    """τ in (0-based) ``epoch``: ``tau`` plus one for every epoch (counted from 1) in
    ``tau_from_epoch`` that has been reached: FAT's dynamic τ, which the authors raise as training
    goes on."""
    return tau + sum(epoch + 1 >= start for start in tau_from_epoch)


@DEFENSES.register("fat")
class FAT(EpochSeeded):
    """FAT for PGD-AT (Zhang et al. 2020, Algorithm 2): x' by :func:`early_stopped_pgd`
    from a uniform random start with the model in ``bn_mode`` (eval in the authors' code), then
    CE(f(x'), y). τ starts at ``tau`` and grows by one at each epoch of ``tau_from_epoch``
    (counted from 1): the authors' CIFAR-10 script raises it from 0 to 1 at epoch 51 and to 2 at
    epoch 91 of 120. Their script also adds 0.001·N(0, I) to every PGD step, which the paper's
    algorithm does not have; we follow the paper. Returns f(x') as the training logits."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, tau: int = 0,
                 tau_from_epoch: Sequence[int] = (51, 91), bn_mode: str = "eval", seed: int = 0) -> None:
        if tau < 0:
            raise ValueError(f"tau counts misclassified steps and must be >= 0, got {tau}")
        super().__init__(seed)
        self.eps, self.alpha, self.steps, self.bn_mode = eps, alpha, steps, bn_mode
        self.tau, self.tau_from_epoch = tau, tuple(tau_from_epoch)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        start = uniform_start(x, self.eps, self.generator(x.device, epoch))
        with in_mode(model, self.bn_mode):
            x_adv = early_stopped_pgd(model, x, y, start, eps=self.eps, alpha=self.alpha, steps=self.steps,
                                      tau=tau_at(epoch, self.tau, self.tau_from_epoch))
        logits_adv = model(x_adv)
        return adversarial_ce_loss(logits_adv, y), logits_adv
