"""DYNAT, dynamic label adversarial training (seed 002: "Dynamic Label Adversarial Training for Deep
Learning Robustness Against Adversarial Attacks", Sec. 3.2–3.4), and its AWP variants (chapter 8).

A guide G (clean-trained, weak) and a target S (adversarially trained) learn together from scratch
under one optimiser. The target never sees the ground truth: its labels are the guide's current
predictions l = argmax G(x) (Eq. 3), which go from "weak" to "strong" as G learns. Details the paper
leaves open follow the authors' code (``shared/notes/algorithms.md`` §3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.primitives import in_mode
from ..training import Hooks
from . import DEFENSES
from .adversarial_training import EpochSeeded, kl_clean_adversarial, maximize_linf, trades_adversarial, trades_loss
from .awp import AdversarialWeightPerturbation


class GuideAndTarget(nn.Module):
    """The guide G and the target S as one module, so one optimiser (and one checkpoint) covers both.
    Its forward pass is the target's: the defended model is S, and evaluations and attacks see S."""

    def __init__(self, guide: nn.Module, target: nn.Module) -> None:
        super().__init__()
        self.guide, self.target = guide, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x)


def dynamic_labels(guide_logits: torch.Tensor) -> torch.Tensor:
    """l = argmax_k G(x)_k (Eq. 3): hard labels, so no gradient can flow from them into G."""
    return guide_logits.detach().argmax(1)


def guide_loss(guide_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_G = CE(G(x), y), the guide's clean training on the ground truth (Eq. 4)."""
    return F.cross_entropy(guide_logits, labels)


def dynat_loss(guide_logits: torch.Tensor, target_logits_adv: torch.Tensor, labels: torch.Tensor,
               label_weight: float = 1.0) -> torch.Tensor:
    """DYNAT's outer loss (Eq. 4–6): CE(G(x), y) + w · CE(S(x'), argmax G(x)), w = 1 on CIFAR-10.

    G learns only from the first term and S only from the second: the argmax label carries no
    gradient, and S(x') does not depend on G."""
    return guide_loss(guide_logits, labels) + label_weight * F.cross_entropy(target_logits_adv,
                                                                            dynamic_labels(guide_logits))


def dynat_awp_loss(guide_logits: torch.Tensor, target_logits_clean: torch.Tensor,
                   target_logits_adv: torch.Tensor, labels: torch.Tensor, label_weight: float = 1.0,
                   beta: float = 1.0) -> torch.Tensor:
    """The outer loss of DYNAT's AWP variants (Sec. 3.4, Table 1): CE(G(x), y) + λ · CE(S(x'), argmax G(x))
    + β · KL(S(x) ‖ S(x')), the KL as in TRADES
    (:func:`~advlib.defenses.adversarial_training.kl_clean_adversarial`, batch mean, S(x) not
    detached). λ = 1 on CIFAR-10 (Sec. 4.1); the authors' CIFAR-100 script uses 0.2."""
    return (dynat_loss(guide_logits, target_logits_adv, labels, label_weight)
            + beta * kl_clean_adversarial(target_logits_clean, target_logits_adv))


class LabelAgreement(Hooks):
    """Counts how often the dynamic labels equal the ground truth, for the "weak to strong" curve."""

    def __init__(self) -> None:
        self._agreed: torch.Tensor | int = 0
        self._seen = 0

    def _count(self, labels: torch.Tensor, ground_truth: torch.Tensor) -> None:
        # a device tensor, read once per epoch: no host synchronisation per training step
        self._agreed = self._agreed + (labels == ground_truth).sum()
        self._seen += len(labels)

    def epoch_statistics(self) -> dict[str, float]:
        """``label_agreement``: the fraction of dynamic labels equal to y since the last call (nan if
        none), then reset; :func:`~advlib.training.fit` records it once per epoch."""
        agreement = int(self._agreed) / self._seen if self._seen else float("nan")
        self._agreed, self._seen = 0, 0
        return {"label_agreement": agreement}


def _check_pair(model: nn.Module) -> GuideAndTarget:
    if not isinstance(model, GuideAndTarget):
        raise TypeError(f"DYNAT trains a GuideAndTarget(guide, target), got {type(model).__name__}")
    return model


def _run_for_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """A forward pass whose only effect is on BatchNorm's running statistics (train mode)."""
    with torch.no_grad():
        model(x)


@DEFENSES.register("dynat")
class DYNAT(EpochSeeded, LabelAgreement):
    """DYNAT (Sec. 3.2–3.4, Algorithm 1). Per batch: l = argmax G(x) from G's training forward pass;
    x' by ``steps`` signed-gradient steps on CE(S(x'), l) from x + 0.001·N(0, I) with S in
    ``bn_mode`` (eval in the authors' code) — the paper's inner optimisation (Eq. 7); then
    :func:`dynat_loss`. ``inner="ground_truth"`` crafts x' on CE(S(x'), y) instead (the ablation
    without the inner optimisation). Returns S(x') as the training logits.

    As in the authors' training step, S also runs on the clean batch in train mode after S(x')
    (``target_clean_pass``): the loss does not use S(x), but the pass leaves the clean batch's
    statistics as the last update of S's BatchNorm running averages, which evaluation uses. The
    authors' guide also runs in train mode at every inner step, which moves only G's running
    statistics (nothing in training reads them); we run G once per batch."""

    def __init__(self, eps: float = 0.031, alpha: float = 0.007, steps: int = 10, label_weight: float = 1.0,
                 inner: str = "dynamic", bn_mode: str = "eval", target_clean_pass: bool = True,
                 seed: int = 0) -> None:
        if inner not in ("dynamic", "ground_truth"):
            raise ValueError(f"inner must be 'dynamic' or 'ground_truth', not {inner!r}")
        EpochSeeded.__init__(self, seed)
        LabelAgreement.__init__(self)
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.label_weight, self.inner, self.bn_mode = label_weight, inner, bn_mode
        self.target_clean_pass = target_clean_pass

    def craft_on_labels(self, target: nn.Module, x: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """x' = argmax_{‖x' − x‖∞ ≤ ε} CE(S(x'), labels) by signed steps, S in ``bn_mode`` (Eq. 7)."""
        with in_mode(target, self.bn_mode):
            return maximize_linf(target, x, lambda logits: F.cross_entropy(logits, labels), eps=self.eps,
                                 alpha=self.alpha, steps=self.steps, generator=self.generator(x.device, epoch))

    def craft(self, target: nn.Module, x: torch.Tensor, labels: torch.Tensor, epoch: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x' for the inner step's ``labels``, and what the outer loss needs of the attack besides
        (nothing for DYNAT; GAIRAT's step counts for DYNAT-Inner-GAIRAT)."""
        return self.craft_on_labels(target, x, labels, epoch), None

    def outer_loss(self, guide_logits: torch.Tensor, target_logits_adv: torch.Tensor, y: torch.Tensor,
                   attack_record: torch.Tensor | None, epoch: int) -> torch.Tensor:
        return dynat_loss(guide_logits, target_logits_adv, y, self.label_weight)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        pair = _check_pair(model)
        guide_logits = pair.guide(x)
        labels = dynamic_labels(guide_logits)
        self._count(labels, y)
        x_adv, attack_record = self.craft(pair.target, x, labels if self.inner == "dynamic" else y, epoch)
        target_logits_adv = pair.target(x_adv)
        if self.target_clean_pass:
            _run_for_batchnorm(pair.target, x)
        return self.outer_loss(guide_logits, target_logits_adv, y, attack_record, epoch), target_logits_adv


@DEFENSES.register("dynat_awp")
class DYNATAWP(DYNAT, AdversarialWeightPerturbation):
    """DYNAT-AWP (Table 1; the authors' ``AWP_dynat.py``): x' maximises TRADES's KL(S(x) ‖ S(x'))
    (summed, S in eval mode) — the released script's dynamic-label inner step is commented out;
    from epoch ``awp_from_epoch`` on (counted from 1) the target's weights are perturbed by AWP
    (γ = 0.005) against TRADES-AWP's loss CE(S(x), y) + 6 · KL(S(x) ‖ S(x')); then
    :func:`dynat_awp_loss` (λ = ``label_weight``, β = ``beta``) at the perturbed weights.
    ``inner="dynamic"`` is DYNAT-Inner-AWP (:class:`DYNATInnerAWP`). Pass the trainer to ``fit``
    as the loss function: its ``after_step`` removes the perturbation after the optimiser's step."""

    def __init__(self, eps: float = 0.031, alpha: float = 0.007, steps: int = 10, label_weight: float = 1.0,
                 beta: float = 1.0, awp_gamma: float = 0.005, awp_from_epoch: int = 10, awp_beta: float = 6.0,
                 inner: str = "trades", bn_mode: str = "eval", seed: int = 0) -> None:
        if inner not in ("trades", "dynamic"):
            raise ValueError(f"DYNAT-AWP's inner step is 'trades' (DYNAT-AWP) or 'dynamic' "
                             f"(DYNAT-Inner-AWP), not {inner!r}")
        DYNAT.__init__(self, eps, alpha, steps, label_weight, "dynamic", bn_mode, False, seed)
        AdversarialWeightPerturbation.__init__(self, awp_gamma)
        self.awp_inner, self.beta, self.awp_from_epoch, self.awp_beta = inner, beta, awp_from_epoch, awp_beta

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        pair = _check_pair(model)
        guide_logits = pair.guide(x)
        labels = dynamic_labels(guide_logits)
        self._count(labels, y)
        if self.awp_inner == "dynamic":
            x_adv = self.craft_on_labels(pair.target, x, labels, epoch)
        else:
            x_adv = trades_adversarial(pair.target, x, eps=self.eps, alpha=self.alpha, steps=self.steps,
                                       generator=self.generator(x.device, epoch), bn_mode=self.bn_mode)
        if epoch + 1 >= self.awp_from_epoch:
            self.perturb(pair.target, lambda: trades_loss(pair.target(x), pair.target(x_adv), y, self.awp_beta))
        # the authors' order: S(x') before S(x), so the clean batch is BatchNorm's last update
        target_logits_adv = pair.target(x_adv)
        target_logits_clean = pair.target(x)
        loss = dynat_awp_loss(guide_logits, target_logits_clean, target_logits_adv, y, self.label_weight, self.beta)
        return loss, target_logits_adv


@DEFENSES.register("dynat_inner_awp")
class DYNATInnerAWP(DYNATAWP):
    """DYNAT-Inner-AWP (Table 1's last row): :class:`DYNATAWP` whose inner step ascends
    CE(S(x'), argmax G(x)) (Eq. 7) instead of TRADES's KL. The authors released no script for it
    (their AWP script keeps this line commented out); it is the paper's description."""

    def __init__(self, **options) -> None:
        if options.pop("inner", "dynamic") != "dynamic":
            raise ValueError("DYNAT-Inner-AWP's inner step is the dynamic-label one; use 'dynat_awp' for TRADES's")
        super().__init__(**options, inner="dynamic")
