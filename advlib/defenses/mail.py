"""MAIL, margin-aware instance reweighting learning (Wang, Liu, Han, Liu, Gong, Niu, Zhou & Sugiyama,
NeurIPS 2021, "Probabilistic margins for instance reweighting in adversarial training"), on PGD-AT
(MAIL-AT); the MAIL row of DYNAT's Table 4 and the reweighting of its DYNAT-AT-MAIL and
DYNAT-MAIL-Inner rows.

GAIRAT weights an example by how many PGD steps misclassify it, a count with K + 1 values that
depends on the path of the attack. MAIL measures the same closeness to the decision boundary by the
*probabilistic margin* of the adversarial example, PM = p_y(x') − max_{k≠y} p_k(x'): negative when
x' is misclassified, close to 1 when x' lies deep inside its class. The smaller the margin, the
larger the weight.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import DEFENSES
from .adversarial_training import EpochSeeded, adversarial_ce_loss, ce_adversarial
from .gairat import gairat_loss


def probabilistic_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PM = p_y − max_{k≠y} p_k per example (Wang et al. 2021, Sec. 3, the probabilistic margin; MAIL
    uses it on the adversarial example, PM_adv), in [−1, 1]. Carries no gradient."""
    probs = F.softmax(logits.detach().float(), dim=1)
    true = probs.gather(1, labels[:, None]).squeeze(1)
    other = probs.scatter(1, labels[:, None], -1.0).amax(1)
    return true - other


def mail_weights(margins: torch.Tensor, gamma: float = 10.0, bias: float = -0.5) -> torch.Tensor:
    """ω_i = sigmoid(−γ(PM_i − β)) (Wang et al. 2021, Sec. 4), normalised to mean 1 over the batch so
    that the weighted loss stays an average, as GAIRAT's weights are. γ = 10 and β = −0.5 are the
    authors' MAIL-AT settings. The authors' code multiplies the sigmoid by a constant 3 instead of
    normalising it."""
    raw = torch.sigmoid(-gamma * (margins.float() - bias))
    return raw * (len(raw) / raw.sum())


def mail_loss(logits_adv: torch.Tensor, labels: torch.Tensor, gamma: float = 10.0,
              bias: float = -0.5) -> torch.Tensor:
    """MAIL-AT's outer loss (Wang et al. 2021, Sec. 4): the batch mean of ω_i · CE(f(x'_i), y_i), with
    :func:`mail_weights` of the margins of f(x') (the weights carry no gradient)."""
    weights = mail_weights(probabilistic_margin(logits_adv, labels), gamma, bias)
    return gairat_loss(logits_adv, labels, weights)


@DEFENSES.register("mail")
class MAIL(EpochSeeded):
    """MAIL-AT (Wang et al. 2021): x' maximises CE(f(x'), y) by ``steps`` signed-gradient steps from
    x + 0.001·N(0, I) with the model in ``bn_mode`` (eval in the authors' code); plain CE(f(x'), y)
    (PGD-AT) during the burn-in, then :func:`mail_loss` from epoch ``reweight_from_epoch`` (counted
    from 1; 77 of 120 in the authors' script). Returns f(x') as the training logits."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, gamma: float = 10.0,
                 bias: float = -0.5, reweight_from_epoch: int = 77, bn_mode: str = "eval",
                 seed: int = 0) -> None:
        check_mail_settings(gamma, bias)
        super().__init__(seed)
        self.eps, self.alpha, self.steps, self.bn_mode = eps, alpha, steps, bn_mode
        self.gamma, self.bias, self.reweight_from_epoch = gamma, bias, reweight_from_epoch

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = ce_adversarial(model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                               generator=self.generator(x.device, epoch), bn_mode=self.bn_mode)
        logits_adv = model(x_adv)
        if epoch + 1 < self.reweight_from_epoch:
            return adversarial_ce_loss(logits_adv, y), logits_adv
        return mail_loss(logits_adv, y, self.gamma, self.bias), logits_adv


def check_mail_settings(gamma: float, bias: float) -> None:
    """γ ≥ 0 (a negative slope would weight the safest examples most) and a finite β."""
    if not gamma >= 0:
        raise ValueError(f"MAIL's gamma (the slope of the weights) must be >= 0, got {gamma}")
    if not math.isfinite(bias):
        raise ValueError(f"MAIL's bias must be a finite number, got {bias}")
