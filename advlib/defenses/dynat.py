"""DYNAT, dynamic label adversarial training (seed 002: "Dynamic Label Adversarial Training for Deep
Learning Robustness Against Adversarial Attacks", Sec. 3.2–3.4), and its AWP variants.

A guide G (clean-trained, weak) and a target S (adversarially trained) learn together from scratch
under one optimiser. The target never sees the ground truth: its labels are the guide's current
predictions l = argmax G(x) (Eq. 3), which go from "weak" to "strong" as G learns. Details the paper
leaves open follow the authors' code (``shared/notes/algorithms.md`` §3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import model_mode
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


class LabelAgreement:
    """Counts how often the dynamic labels equal the ground truth, for the "weak to strong" curve."""

    def __init__(self) -> None:
        self._agreed: torch.Tensor | int = 0
        self._seen = 0

    def _count(self, labels: torch.Tensor, ground_truth: torch.Tensor) -> None:
        # a device tensor, read once per epoch: no host synchronisation per training step
        self._agreed = self._agreed + (labels == ground_truth).sum()
        self._seen += len(labels)

    def pop_label_agreement(self) -> float:
        """The fraction of dynamic labels equal to y since the last call (nan if none), then reset."""
        agreement = int(self._agreed) / self._seen if self._seen else float("nan")
        self._agreed, self._seen = 0, 0
        return agreement


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
        with model_mode(target, self.bn_mode):
            return maximize_linf(target, x, lambda logits: F.cross_entropy(logits, labels), eps=self.eps,
                                 alpha=self.alpha, steps=self.steps, generator=self.generator(x.device, epoch))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        pair = _check_pair(model)
        guide_logits = pair.guide(x)
        labels = dynamic_labels(guide_logits)
        self._count(labels, y)
        x_adv = self.craft_on_labels(pair.target, x, labels if self.inner == "dynamic" else y, epoch)
        target_logits_adv = pair.target(x_adv)
        if self.target_clean_pass:
            _run_for_batchnorm(pair.target, x)
        return dynat_loss(guide_logits, target_logits_adv, y, self.label_weight), target_logits_adv


@DEFENSES.register("dynat_awp")
class DYNATAWP(DYNAT, AdversarialWeightPerturbation):
    """DYNAT-AWP (Table 1; the authors' ``AWP_dynat.py``): x' maximises TRADES's KL(S(x) ‖ S(x'))
    (summed, S in eval mode) — the released script's dynamic-label inner step is commented out;
    from epoch ``awp_from_epoch`` on (counted from 1) the target's weights are perturbed by AWP
    (γ = 0.005) against TRADES-AWP's loss CE(S(x), y) + 6 · KL(S(x) ‖ S(x')); then
    :func:`dynat_awp_loss` (λ = ``label_weight``, β = ``beta``) at the perturbed weights.
    ``inner="dynamic"`` is DYNAT-Inner-AWP (:class:`DYNATInnerAWP`). Pass the trainer to ``fit``
    as a callback too, so the perturbation is removed after the optimiser's step."""

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


PAPER_COLUMNS = ("clean", "PGD-10", "PGD-20", "PGD-50", "CW", "AA")

# Seed 002, Table 1 (CIFAR-10, WRN-34-10 target, ResNet-18 guide), accuracy in %, as published.
PAPER_TABLE1: dict[str, dict[str, float]] = {name: dict(zip(PAPER_COLUMNS, row)) for name, row in {
    "PGD-AT": (85.17, 56.07, 55.08, 54.88, 53.91, 51.69),
    "TRADES": (85.72, 56.75, 56.1, 55.9, 53.87, 53.40),
    "MART": (84.17, 58.98, 58.56, 58.06, 54.58, 51.10),
    "FAT": (87.97, 50.31, 49.86, 48.79, 48.65, 47.48),
    "GAIRAT": (86.30, 60.64, 59.54, 58.74, 45.57, 40.30),
    "AWP": (85.57, 58.92, 58.13, 57.92, 56.03, 53.90),
    "LBGAT": (88.22, 56.25, 54.66, 54.3, 54.29, 52.20),
    "DYNAT": (89.16, 52.88, 51.78, 51.49, 50.88, 49.20),
    "DYNAT-AWP (β = 0)": (90.27, 55.49, 54.49, 54.30, 53.28, 52.10),
    "DYNAT-AWP (β = 1)": (88.41, 58.39, 57.71, 57.53, 55.48, 54.10),
    "DYNAT-Inner-AWP (β = 1)": (86.21, 59.08, 58.22, 58.02, 56.24, 55.30),
}.items()}

# Seed 002, Table 2 (CIFAR-100, same architectures), accuracy in %, as published.
PAPER_TABLE2: dict[str, dict[str, float]] = {name: dict(zip(PAPER_COLUMNS, row)) for name, row in {
    "PGD-AT": (60.89, 32.19, 31.69, 31.45, 30.1, 27.86),
    "TRADES": (58.61, 29.20, 28.66, 28.56, 27.05, 25.94),
    "SAT": (62.82, 28.1, 27.17, 26.76, 27.32, 24.57),
    "AWP": (60.38, 34.13, 33.86, 33.65, 31.12, 28.86),
    "LBGAT": (60.64, 35.13, 34.75, 34.62, 30.65, 29.33),
    "DYNAT": (67.25, 28.03, 26.97, 26.81, 26.62, 24.10),
    "DYNAT-AWP (β = 1)": (62.29, 35.45, 35.09, 34.92, 31.50, 30.20),
    "DYNAT-Inner-AWP (β = 1)": (58.87, 35.61, 35.09, 35.05, 32.10, 29.70),
}.items()}

# The paper's table for each dataset it reports on.
PAPER_TABLES = {"cifar10": ("Table 1", PAPER_TABLE1), "cifar100": ("Table 2", PAPER_TABLE2)}
