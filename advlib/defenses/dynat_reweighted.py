"""DYNAT combined with instance reweighting (seed 002, Sec. 4.3–4.4, Tables 3 and 4):
DYNAT-Inner-GAIRAT, DYNAT-AT-MAIL and DYNAT-MAIL-Inner.

The target still learns only from the guide's dynamic labels l = argmax G(x), but its per-example
cross-entropy is weighted as GAIRAT (by the least number of PGD steps that cross the boundary) or
MAIL (by the probabilistic margin of S(x')) weights it. The paper states which methods are combined
and their settings (GAIRAT's with weight decay 5e-4, label smoothing 0.2 and a 70-epoch burn-in;
MAIL's), not the combined loss, and the authors' repository has no code for these rows. We weight
the target's term and measure the boundary against the label the target is trained on, l, since
that is the boundary the target learns; "Inner" crafts x' on l (Eq. 7), "AT" on the ground truth y.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.primitives import in_mode, uniform_start
from . import DEFENSES
from .dynat import DYNAT, dynamic_labels, guide_loss
from .gairat import check_gairat_lambda, gairat_weights, pgd_with_least_steps
from .mail import check_mail_settings, mail_weights, probabilistic_margin


def reweighted_dynat_loss(guide_logits: torch.Tensor, target_logits_adv: torch.Tensor, labels: torch.Tensor,
                          weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE(G(x), y) + (1/B) Σ_i ω_i · CE_s(S(x'_i), l_i) with l = argmax G(x): DYNAT's outer loss
    (Eq. 4–6) whose target term carries per-example weights ω (mean 1, no gradient; None for all 1)
    and, for DYNAT-Inner-GAIRAT, label smoothing s (Sec. 4.3: 0.2)."""
    per_example = F.cross_entropy(target_logits_adv.float(), dynamic_labels(guide_logits), reduction="none",
                                  label_smoothing=label_smoothing)
    if weights is not None:
        per_example = weights.detach() * per_example
    return guide_loss(guide_logits, labels) + per_example.mean()


@DEFENSES.register("dynat_inner_gairat")
class DYNATInnerGAIRAT(DYNAT):
    """DYNAT-Inner-GAIRAT (Sec. 4.3, Table 3): per batch l = argmax G(x); x' and κ by GAIRAT's PGD on
    CE(S(x'), l) from a uniform random start (:func:`~advlib.defenses.gairat.pgd_with_least_steps`,
    S in ``bn_mode``); then :func:`reweighted_dynat_loss` with label smoothing ``label_smoothing``,
    unweighted during the burn-in and with GAIRAT's weights of κ (λ = ``lam``) from epoch
    ``reweight_from_epoch`` (counted from 1: after the paper's 70-epoch burn-in). Returns S(x')."""

    def __init__(self, eps: float = 0.031, alpha: float = 0.007, steps: int = 10, lam: float = -1.0,
                 reweight_from_epoch: int = 71, label_smoothing: float = 0.2, bn_mode: str = "eval",
                 target_clean_pass: bool = True, seed: int = 0) -> None:
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        check_gairat_lambda(lam)
        super().__init__(eps, alpha, steps, bn_mode=bn_mode, target_clean_pass=target_clean_pass, seed=seed)
        self.lam, self.reweight_from_epoch, self.label_smoothing = lam, reweight_from_epoch, label_smoothing

    def craft(self, target: nn.Module, x: torch.Tensor, labels: torch.Tensor, epoch: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        start = uniform_start(x, self.eps, self.generator(x.device, epoch))
        with in_mode(target, self.bn_mode):
            return pgd_with_least_steps(target, x, labels, start, eps=self.eps, alpha=self.alpha, steps=self.steps)

    def outer_loss(self, guide_logits: torch.Tensor, target_logits_adv: torch.Tensor, y: torch.Tensor,
                   attack_record: torch.Tensor | None, epoch: int) -> torch.Tensor:
        weights = (gairat_weights(attack_record, self.steps, self.lam)
                   if epoch + 1 >= self.reweight_from_epoch else None)
        return reweighted_dynat_loss(guide_logits, target_logits_adv, y, weights, self.label_smoothing)


@DEFENSES.register("dynat_mail")
class DYNATMAIL(DYNAT):
    """DYNAT-AT-MAIL (``inner="ground_truth"``) and DYNAT-MAIL-Inner (``inner="dynamic"``) (Sec. 4.4,
    Table 4): DYNAT's step (x' on CE(S(x'), y) or on CE(S(x'), l), from x + 0.001·N(0, I), as MAIL-AT's
    attack), then :func:`reweighted_dynat_loss`, unweighted during the burn-in and with MAIL's weights
    of the margins of S(x') with respect to l from epoch ``reweight_from_epoch`` (counted from 1; MAIL's
    77 of 120). Returns S(x')."""

    def __init__(self, eps: float = 0.031, alpha: float = 0.007, steps: int = 10, gamma: float = 10.0,
                 bias: float = -0.5, reweight_from_epoch: int = 77, inner: str = "dynamic",
                 bn_mode: str = "eval", target_clean_pass: bool = True, seed: int = 0) -> None:
        check_mail_settings(gamma, bias)
        super().__init__(eps, alpha, steps, inner=inner, bn_mode=bn_mode, target_clean_pass=target_clean_pass,
                         seed=seed)
        self.gamma, self.bias, self.reweight_from_epoch = gamma, bias, reweight_from_epoch

    def outer_loss(self, guide_logits: torch.Tensor, target_logits_adv: torch.Tensor, y: torch.Tensor,
                   attack_record: torch.Tensor | None, epoch: int) -> torch.Tensor:
        weights = None
        if epoch + 1 >= self.reweight_from_epoch:
            margins = probabilistic_margin(target_logits_adv, dynamic_labels(guide_logits))
            weights = mail_weights(margins, self.gamma, self.bias)
        return reweighted_dynat_loss(guide_logits, target_logits_adv, y, weights)
