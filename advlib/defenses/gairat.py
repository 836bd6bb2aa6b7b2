"""GAIRAT, geometry-aware instance-reweighted adversarial training (Zhang, Zhu, Niu, Han, Sugiyama &
Kankanhalli, ICLR 2021, Sec. 3 and Algorithm 1); a row of DYNAT's Table 1.

Not every adversarial example deserves the same weight: an example that PGD pushes across the
decision boundary in one step lies close to it (it is *attackable*), one that withstands every step
lies far from it. GAIRAT measures that geometric distance by κ, the least number of PGD steps that
misclassify the example, and weights the adversarial cross-entropy by a decreasing function of κ,
so that the model's limited capacity goes to the examples near the boundary.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.primitives import check_eps, check_step_settings, in_mode, project_linf, uniform_start
from . import DEFENSES
from .adversarial_training import EpochSeeded, adversarial_ce_loss


def pgd_with_least_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_start: torch.Tensor, *,
                         eps: float, alpha: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD-K on CE(f(x'), y) from ``x_start`` (K = ``steps`` signed steps of ``alpha``, each projected
    onto the L∞ ball and [0, 1]) and, per example, κ: the least number of steps after which the
    iterate is misclassified (0 if the start already is), or K if none of the iterates before the
    last is (Zhang et al. 2021, Sec. 3, the "least PGD steps"). Returns (x'_K, κ). The authors'
    code counts instead the correctly classified iterates among the first K, which differs from κ
    only for an example that becomes correct again after it was misclassified."""
    check_eps(eps)
    check_step_settings(alpha, steps)
    x_adv = x_start.detach()
    least_steps = torch.full((len(x),), steps, dtype=torch.long, device=x.device)
    for step in range(steps):
        current = x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model(current).float()
            (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), current)
        first_misclassified = (logits.argmax(1) != y) & (least_steps == steps)
        least_steps = torch.where(first_misclassified, torch.full_like(least_steps, step), least_steps)
        x_adv = project_linf(current.detach() + alpha * gradient.sign(), x, eps)
    return x_adv, least_steps


def gairat_weights(least_steps: torch.Tensor, steps: int, lam: float = -1.0) -> torch.Tensor:
    """ω = (1 + tanh(λ + 5 · (1 − 2κ/K))) / 2 per example (Zhang et al. 2021, Sec. 3, the tanh
    weight), normalised to mean 1 over the batch, so that the weighted loss Σ ω·ℓ / Σ ω stays an
    average. λ = +∞ gives every example the weight 1 (PGD-AT); the smaller λ, the more the weight
    goes to the examples with small κ. Computed as σ(2z), which equals (1 + tanh z) / 2 and keeps its
    precision where tanh z is close to −1."""
    raw = torch.sigmoid(2 * (lam + 5 * (1 - 2 * least_steps.float() / steps)))
    return raw * (len(raw) / raw.sum())


def gairat_loss(logits_adv: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """GAIRAT's outer loss (Zhang et al. 2021, Sec. 3): the batch mean of ω̃_i · CE(f(x'_i), y_i) with the
    weights of :func:`gairat_weights` (mean 1); the weights carry no gradient."""
    return (weights.detach() * F.cross_entropy(logits_adv.float(), labels, reduction="none")).mean()


def check_gairat_lambda(lam: float) -> None:
    """λ shifts the sigmoid of :func:`gairat_weights`; NaN would make every weight NaN."""
    if math.isnan(lam):
        raise ValueError("GAIRAT's lambda must be a number (math.inf weighs every example alike)")


@DEFENSES.register("gairat")
class GAIRAT(EpochSeeded):
    """GAIRAT (Zhang et al. 2021, Algorithm 1): x' and κ by :func:`pgd_with_least_steps` from a uniform
    random start with the model in ``bn_mode`` (eval in the authors' code); plain CE(f(x'), y) (PGD-AT)
    during the burn-in, then :func:`gairat_loss` from epoch ``reweight_from_epoch`` (counted from 1;
    60 of 120 in the authors' CIFAR-10 script, whose λ = −1 stays fixed). Returns f(x')."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, lam: float = -1.0,
                 reweight_from_epoch: int = 60, bn_mode: str = "eval", seed: int = 0) -> None:
        check_gairat_lambda(lam)
        super().__init__(seed)
        self.eps, self.alpha, self.steps, self.lam, self.bn_mode = eps, alpha, steps, lam, bn_mode
        self.reweight_from_epoch = reweight_from_epoch

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        start = uniform_start(x, self.eps, self.generator(x.device, epoch))
        with in_mode(model, self.bn_mode):
            x_adv, least_steps = pgd_with_least_steps(model, x, y, start, eps=self.eps, alpha=self.alpha,
                                                      steps=self.steps)
        logits_adv = model(x_adv)
        if epoch + 1 < self.reweight_from_epoch:
            return adversarial_ce_loss(logits_adv, y), logits_adv
        return gairat_loss(logits_adv, y, gairat_weights(least_steps, self.steps, self.lam)), logits_adv
