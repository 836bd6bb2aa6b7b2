"""MART, misclassification-aware adversarial training (Wang, Zou, Yi, Bailey, Ma & Gu, ICLR 2020,
"Improving adversarial robustness requires revisiting misclassified examples", Sec. 3);
a row of DYNAT's Table 1.

MART keeps PGD-AT's adversarial examples but changes the outer loss in two ways: the cross-entropy
on x' is *boosted* by a term that pushes down the most probable wrong class, and TRADES's
KL(p(x) ‖ p(x')) is weighted per example by 1 − p_y(x), so that the examples the model misclassifies
when clean count most.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import DEFENSES
from .adversarial_training import EpochSeeded, ce_adversarial


def boosted_cross_entropy(logits_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE(p(x'), y) = −log p_y(x') − log(1 − max_{k≠y} p_k(x')) per example, MART's boosted
    cross-entropy (Wang et al. 2020, Sec. 3). The second logarithm is taken as logsumexp over the
    classes other than the most probable wrong one minus logsumexp over all classes, which is exact
    and finite when that class takes all the probability (the authors' code adds 1e-4 inside the
    logarithm instead)."""
    logits_adv = logits_adv.float()
    log_probs = F.log_softmax(logits_adv, dim=1)
    wrong = log_probs.scatter(1, labels[:, None], -float("inf")).argmax(1)
    without_wrong = logits_adv.scatter(1, wrong[:, None], -float("inf"))
    log_rest = torch.logsumexp(without_wrong, dim=1) - torch.logsumexp(logits_adv, dim=1)
    return -log_probs.gather(1, labels[:, None]).squeeze(1) - log_rest


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor,
              beta: float = 6.0) -> torch.Tensor:
    """MART's outer loss (Wang et al. 2020, Sec. 3, the MART objective), averaged over the batch:
    BCE(p(x'), y) + β · KL(p(x) ‖ p(x')) · (1 − p_y(x)). Nothing is detached, as in the authors'
    code: the clean logits receive gradient through the KL and through the weight. β = 6 for
    WRN-34-10 on CIFAR-10 (the authors' ResNet-18 script uses 5)."""
    log_clean = F.log_softmax(logits_clean.float(), dim=1)
    log_adv = F.log_softmax(logits_adv.float(), dim=1)
    kl = (log_clean.exp() * (log_clean - log_adv)).sum(1)
    misclassified_weight = 1 - log_clean.gather(1, labels[:, None]).squeeze(1).exp()
    return (boosted_cross_entropy(logits_adv, labels) + beta * kl * misclassified_weight).mean()


@DEFENSES.register("mart")
class MART(EpochSeeded):
    """MART (Wang et al. 2020, Sec. 3): x' maximises CE(f(x'), y) by ``steps`` signed-gradient
    steps from x + 0.001·N(0, I) with the model in ``bn_mode`` (eval in the authors' code), then
    the model minimises :func:`mart_loss` on f(x) and f(x'). Returns f(x') as the training logits."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, beta: float = 6.0,
                 bn_mode: str = "eval", seed: int = 0) -> None:
        if beta < 0:
            raise ValueError(f"MART's beta weights a KL term and must be >= 0, got {beta}")
        super().__init__(seed)
        self.eps, self.alpha, self.steps, self.beta, self.bn_mode = eps, alpha, steps, beta, bn_mode

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = ce_adversarial(model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                               generator=self.generator(x.device, epoch), bn_mode=self.bn_mode)
        logits_clean, logits_adv = model(x), model(x_adv)
        return mart_loss(logits_clean, logits_adv, y, self.beta), logits_adv
