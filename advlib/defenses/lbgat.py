"""LBGAT, learnable boundary guided adversarial training (Cui, Liu, Wang & Jia, ICCV 2021, Sec. 3);
a row of DYNAT's Table 1 and DYNAT's ancestor (chapter 8).

A robust target S and a clean guide G are trained together from scratch by one optimiser. G learns
the ground truth on clean images; S learns to reproduce, on the adversarial image x', the logits
G gives the clean image x. The guide's logits are not detached, so the matching term moves G too:
the decision boundary S is guided by is itself learnt ("learnable boundary"). DYNAT keeps the
guide but gives S only G's argmax, a hard label that carries no gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import DEFENSES
from .adversarial_training import EpochSeeded, kl_clean_adversarial, trades_adversarial
from .dynat import GuideAndTarget, guide_loss


def lbgat_loss(guide_logits: torch.Tensor, target_logits_clean: torch.Tensor, target_logits_adv: torch.Tensor,
               labels: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """LBGAT's loss (Cui et al. 2021, Sec. 3): MSE(S(x'), G(x)) + CE(G(x), y) + β · KL(S(x) ‖ S(x')).
    The MSE is the mean over the batch and the classes (PyTorch's default, as in the authors' code),
    the KL is TRADES's (:func:`~advlib.defenses.adversarial_training.kl_clean_adversarial`, batch mean)
    and nothing is detached: G receives gradient from the MSE as well as from its cross-entropy.
    β = 0 is the paper's LBGAT0, the row of DYNAT's Table 1 (88.22 % clean); β = 6 is LBGAT6."""
    return (F.mse_loss(target_logits_adv.float(), guide_logits.float()) + guide_loss(guide_logits, labels)
            + beta * kl_clean_adversarial(target_logits_clean, target_logits_adv))


@DEFENSES.register("lbgat")
class LBGAT(EpochSeeded):
    """LBGAT (Cui et al. 2021) on a :class:`~advlib.defenses.dynat.GuideAndTarget` pair: x' maximises
    TRADES's KL(S(x) ‖ S(x')) (summed) from x + 0.001·N(0, I) with S in ``bn_mode`` (eval in the
    authors' code; G takes no part in the attack), then :func:`lbgat_loss`. As in the authors' code,
    S runs on x' and then on x even when β = 0 (the clean pass is BatchNorm's last update of S's
    running statistics). Returns S(x') as the training logits."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, beta: float = 0.0,
                 bn_mode: str = "eval", seed: int = 0) -> None:
        if beta < 0:
            raise ValueError(f"LBGAT's beta weights a KL term and must be >= 0, got {beta}")
        super().__init__(seed)
        self.eps, self.alpha, self.steps, self.beta, self.bn_mode = eps, alpha, steps, beta, bn_mode

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(model, GuideAndTarget):
            raise TypeError(f"LBGAT trains a GuideAndTarget(guide, target), got {type(model).__name__}")
        x_adv = trades_adversarial(model.target, x, eps=self.eps, alpha=self.alpha, steps=self.steps,
                                   generator=self.generator(x.device, epoch), bn_mode=self.bn_mode)
        target_logits_adv = model.target(x_adv)
        target_logits_clean = model.target(x)
        guide_logits = model.guide(x)
        return lbgat_loss(guide_logits, target_logits_clean, target_logits_adv, y, self.beta), target_logits_adv
