"""Adversarial training (chapter 6): the min–max of Madry et al. (ICLR 2018) and TRADES (Zhang et
al., ICML 2019).

Each trainer is a loss function for :func:`advlib.training.fit`:
``trainer(model, x, y, epoch) -> (loss, logits)``. It crafts the inner maximiser x' on the current
model (the BatchNorm mode while crafting is an explicit setting), then returns the outer loss.
The loss terms themselves are small functions below, tested by hand on tiny tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import attacks, distributed
from ..attacks.primitives import in_mode, iterate_sign_steps, project_linf
from ..training import Hooks, cross_entropy_loss
from . import DEFENSES

# TRADES's and DYNAT's inner maximisation starts at x + 0.001·N(0, I) (the reference codes).
GAUSSIAN_START_STD = 0.001


def adversarial_ce_loss(logits_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Madry et al. 2018, Eq. 2.1 (outer minimisation): CE(f(x'), y), averaged over the batch."""
    return F.cross_entropy(logits_adv, labels)


def kl_clean_adversarial(logits_clean: torch.Tensor, logits_adv: torch.Tensor,
                         reduction: str = "batchmean") -> torch.Tensor:
    """KL(f(x) ‖ f(x')) = Σ_k p_k(x) · log(p_k(x) / p_k(x')), the robustness term of TRADES
    (Zhang et al. 2019, Eq. 5, with the KL surrogate of Sec. 4); ``"batchmean"`` averages over the
    batch (the outer loss), ``"sum"`` sums (the inner maximisation of the reference code). Written
    ``KL(f(x') ‖ f(x))`` in some texts after the argument order of ``F.kl_div(log p(x'), p(x))``;
    the clean distribution is the target either way."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.log_softmax(logits_clean.float(), dim=1),
                    reduction=reduction, log_target=True)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor,
                beta: float = 6.0) -> torch.Tensor:
    """TRADES outer loss (Zhang et al. 2019, Eq. 5): CE(f(x), y) + β · KL(f(x) ‖ f(x')), β = 6 in
    the paper's CIFAR-10 experiments (1/λ in their notation)."""
    return F.cross_entropy(logits_clean, labels) + beta * kl_clean_adversarial(logits_clean, logits_adv)


def maximize_linf(model: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
                  eps: float, alpha: float, steps: int, generator: torch.Generator) -> torch.Tensor:
    """The inner maximisation of TRADES and DYNAT: ``steps`` signed-gradient ascent steps of size
    ``alpha`` on ``loss_fn(model(x'))`` from x + 0.001·N(0, I), each projected onto the L∞ ball of
    radius ``eps`` and [0, 1]. Gradients are taken with respect to x' only; run it in the mode the
    trainer chose (the reference codes use eval mode)."""
    return iterate_sign_steps(model, x, gaussian_start(x, eps, generator), loss_fn, eps, alpha, steps)


def gaussian_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """x + 0.001·N(0, I), projected onto the L∞ ball and [0, 1]: the start of TRADES's, DYNAT's and the
    adversarial distillation methods' inner maximisation."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return project_linf(x + GAUSSIAN_START_STD * noise, x, eps).detach()


# Keeps the attacks' random starts off the stream that TensorLoader seeds from (seed, epoch) for
# shuffling and augmentation.
ATTACK_STREAM = 500_009
# Each rank of a distributed run (advlib.distributed) draws its random starts from a stream of its
# own; rank 0's is the single process's.
RANK_STREAM = 100_003


class EpochSeeded(Hooks):
    """A private generator reseeded at the start of every epoch from ``(seed, epoch)`` (and the rank,
    in a distributed run): a run resumed after epoch k draws the same random starts as an
    uninterrupted one."""

    def __init__(self, seed: int) -> None:
        self.seed, self._epoch, self._generator = seed, None, None

    def generator(self, device: torch.device, epoch: int) -> torch.Generator:
        if self._epoch != epoch or self._generator is None or self._generator.device != device:
            stream = self.seed * 1_000_003 + epoch + ATTACK_STREAM + RANK_STREAM * distributed.rank()
            self._generator = torch.Generator(device=device).manual_seed(stream)
            self._epoch = epoch
        return self._generator


@DEFENSES.register("standard")
class StandardTraining:
    """Standard training, :func:`advlib.training.cross_entropy_loss` as a registered trainer. It
    draws no random numbers; ``seed`` is accepted so every trainer is built the same way."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return cross_entropy_loss(model, x, y, epoch)


@DEFENSES.register("pgd_at")
class PGDAdversarialTraining(EpochSeeded):
    """PGD-AT (Madry et al. 2018, Eq. 2.1): min_θ E max_{‖δ‖∞≤ε} CE(f_θ(x + δ), y), the inner max
    approximated by PGD with a uniform random start. ``bn_mode`` is BatchNorm's mode while crafting:
    ``"train"`` as in Rice et al.'s (2020) PGD-AT code (the batch statistics of the attack steps
    also update the running averages), or ``"eval"``. Returns f(x') as the training logits."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, bn_mode: str = "train",
                 seed: int = 0) -> None:
        super().__init__(seed)
        self.attack = attacks.build("pgd", eps=eps, alpha=alpha, steps=steps, bn_mode=bn_mode)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.attack(model, x, y, generator=self.generator(x.device, epoch))
        logits_adv = model(x_adv)
        return adversarial_ce_loss(logits_adv, y), logits_adv


@DEFENSES.register("trades")
class TRADES(EpochSeeded):
    """TRADES (Zhang et al. 2019, Eq. 5 and Algorithm 1): x' maximises KL(f(x) ‖ f(x')) (summed) by
    signed gradient ascent from x + 0.001·N(0, I) with the model in ``bn_mode`` (eval in the
    reference code), then the model minimises :func:`trades_loss`. Returns f(x) as training logits."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, beta: float = 6.0,
                 bn_mode: str = "eval", seed: int = 0) -> None:
        super().__init__(seed)
        self.eps, self.alpha, self.steps, self.beta, self.bn_mode = eps, alpha, steps, beta, bn_mode

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = trades_adversarial(model, x, eps=self.eps, alpha=self.alpha, steps=self.steps,
                                   generator=self.generator(x.device, epoch), bn_mode=self.bn_mode)
        logits_clean, logits_adv = model(x), model(x_adv)
        return trades_loss(logits_clean, logits_adv, y, self.beta), logits_clean


def ce_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                   generator: torch.Generator, bn_mode: str) -> torch.Tensor:
    """argmax_{x'} CE(f(x'), y) (summed) over the L∞ ball by :func:`maximize_linf` with the model in
    ``bn_mode``: the inner maximisation of MART's and MAIL's authors' code."""
    with in_mode(model, bn_mode):
        return maximize_linf(model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum"), eps=eps,
                             alpha=alpha, steps=steps, generator=generator)


def trades_adversarial(model: nn.Module, x: torch.Tensor, *, eps: float, alpha: float, steps: int,
                       generator: torch.Generator, bn_mode: str = "eval") -> torch.Tensor:
    """TRADES's inner maximiser: argmax_{x'} KL(f(x) ‖ f(x')) over the L∞ ball (Zhang et al. 2019,
    Algorithm 1, line 6)."""
    with in_mode(model, bn_mode):
        with torch.no_grad():
            logits_clean = model(x)
        return maximize_linf(model, x, lambda logits: kl_clean_adversarial(logits_clean, logits, "sum"),
                             eps=eps, alpha=alpha, steps=steps, generator=generator)
