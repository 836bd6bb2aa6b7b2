"""Adversarial distillation (chapter 7): a robust teacher T trains a small student S inside the min–max of
adversarial training. ARD, RSLAD, AdaAD, IGDM and SAAD (seed 001: Lee & Chung, "Sample-wise
Adaptive Weighting for Transfer Consistency in Adversarial Distillation", TMLR 2026).

Each trainer is a loss function for :func:`advlib.training.fit` (``trainer(student, x, y, epoch)``),
holding a frozen teacher. The methods differ in two places only: what the inner maximisation
ascends and what the outer loss matches. Details the abstract leaves open follow the authors' code
(``shared/notes/algorithms.md`` §2), with one exception: every method here uses the same ε and
step size (the authors' scripts pass them swapped to the RSLAD, AdaAD and IGDM baselines).

Notation: KL(T ‖ S) = Σ_k softmax(T)_k · (log softmax(T)_k − log softmax(S)_k), no temperature
unless stated; δ = x' − x.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import attacks
from ..attacks.primitives import check_eps, in_mode, sign_ascent
from ..evaluation import predict
from . import DEFENSES, frozen
from .adversarial_training import EpochSeeded, gaussian_start

# SAAD's weights are w_i = 5 · max(0, H_i − min_j H_j) in the released code.
SAAD_WEIGHT_SCALE = 5.0


def kl_per_sample(target_logits: torch.Tensor, input_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) ‖ softmax(input)) for each row, shape (N,). Differentiable in both
    arguments: SAAD's inner maximisation moves the (linearised) target too. ``.mean()`` is the
    "batchmean" KL of the reference codes; ``.sum()`` the summed KL of their inner loops."""
    return F.kl_div(F.log_softmax(input_logits.float(), dim=1), F.log_softmax(target_logits.float(), dim=1),
                    reduction="none", log_target=True).sum(1)


def check_renyi_order(order: float) -> None:
    if not order > 0:
        raise ValueError(f"the Rényi order must be > 0, got {order}; 1 is Shannon's entropy")


def renyi_entropy(logits: torch.Tensor, order: float = 1.0) -> torch.Tensor:
    """Rényi entropy of softmax(logits) per row: H_γ(p) = log(Σ_k p_k^γ) / (1 − γ); order 1 is its
    limit, Shannon's H(p) = −Σ_k p_k log p_k (SAAD's default, γ = 1)."""
    check_renyi_order(order)
    log_p = F.log_softmax(logits.float(), dim=1)
    if order == 1:
        return -(log_p.exp() * log_p).sum(1)
    return torch.logsumexp(order * log_p, dim=1) / (1 - order)


def transferability_weights(entropy: torch.Tensor, scale: float = SAAD_WEIGHT_SCALE) -> torch.Tensor:
    """SAAD's per-sample weights w_i = scale · max(0, H_i − min_j H_j), H_i the teacher's entropy on
    the student's adversarial example x'_i. A confident teacher (low H) means x'_i did not transfer:
    it carries no information about the teacher's own boundary, so it gets the least weight."""
    return scale * (entropy - entropy.min()).clamp_min(0)


def normalised_weights(weights: torch.Tensor) -> torch.Tensor:
    """ŵ_i = (w_i − min w) / (max w − min w + 1e-8), in [0, 1]: the weights rescaled for the clean term."""
    return (weights - weights.min()) / (weights.max() - weights.min() + 1e-8)


def linearised_teacher_logits(teacher_logits: torch.Tensor, gradient_true_logit: torch.Tensor,
                              delta: torch.Tensor, labels: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """SAAD's first-order teacher at x + δ: z̃ = T(x) except z̃_y = T(x)_y + λ · ⟨∇ₓ T(x)_y, δ⟩, so the inner
    maximisation needs one teacher forward and backward per batch instead of one per step.
    Differentiable in ``delta``."""
    correction = lam * (gradient_true_logit * delta).flatten(1).sum(1)
    return teacher_logits.scatter_add(1, labels[:, None], correction[:, None].to(teacher_logits.dtype))


def igdm_term(teacher_plus: torch.Tensor, teacher_minus: torch.Tensor, student_plus: torch.Tensor,
              student_minus: torch.Tensor) -> torch.Tensor:
    """IGDM's indirect gradient matching (Lee, Cho & Kim, ICLR 2025) per sample:
    KL(softmax(T(x+δ) − T(x−δ)) ‖ softmax(S(x+δ) − S(x−δ))). The logit differences are central
    differences along δ, so matching them (up to a per-sample shift, which softmax ignores) matches
    how the two models' logits change in the direction δ — their input gradients projected on δ —
    without second derivatives."""
    return kl_per_sample(teacher_plus - teacher_minus, student_plus - student_minus)


def igdm_ramp(epoch: int, epochs: int, weight: float = 1.0) -> float:
    """IGDM's weight in epoch ``epoch`` (counted from 1) of ``epochs``: α_IGDM · epoch / epochs, growing
    linearly to α_IGDM (1 on CIFAR-10, 10 on CIFAR-100 in the authors' scripts)."""
    return weight * epoch / epochs


def ard_loss(student_adv: torch.Tensor, teacher_clean: torch.Tensor, temperature: float = 1.0,
             ce_weight: float = 0.0, student_clean: torch.Tensor | None = None,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """ARD's outer loss (Goldblum et al. 2020, Eq. 3): (1 − c) · τ² · KL(T(x)/τ ‖ S(x')/τ) + c · CE(S(x), y).
    The SAAD code uses τ = 1 and c = 0; the original ARD also uses a temperature and the CE term."""
    loss = (1 - ce_weight) * temperature ** 2 * kl_per_sample(teacher_clean / temperature,
                                                              student_adv / temperature).mean()
    if ce_weight:
        if student_clean is None or labels is None:
            raise ValueError("ard_loss with ce_weight > 0 needs student_clean and labels")
        loss = loss + ce_weight * F.cross_entropy(student_clean, labels)
    return loss


def rslad_loss(student_adv: torch.Tensor, student_clean: torch.Tensor, teacher_clean: torch.Tensor,
               adversarial_weight: float = 5 / 6) -> torch.Tensor:
    """RSLAD's outer loss (Zi et al. 2021, Eq. 7): the teacher's clean soft labels as targets for
    both inputs, 5/6 · KL(T(x) ‖ S(x')) + 1/6 · KL(T(x) ‖ S(x))."""
    return (adversarial_weight * kl_per_sample(teacher_clean, student_adv).mean()
            + (1 - adversarial_weight) * kl_per_sample(teacher_clean, student_clean).mean())


def adaad_loss(student_adv: torch.Tensor, teacher_adv: torch.Tensor) -> torch.Tensor:
    """AdaAD's outer loss (Huang et al. 2023): KL(T(x') ‖ S(x')), the teacher queried at the same x'."""
    return kl_per_sample(teacher_adv, student_adv).mean()


def saad_loss(teacher_plus: torch.Tensor, teacher_minus: torch.Tensor, teacher_clean: torch.Tensor,
              student_plus: torch.Tensor, student_minus: torch.Tensor, student_clean: torch.Tensor,
              igdm_weight: float, clean_weight: float = 0.0, renyi_order: float = 1.0,
              weight_scale: float = SAAD_WEIGHT_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """SAAD's outer loss and its per-sample weights w (notes §2):

    L = mean_i [ w_i · (KL(T(x+δ) ‖ S(x+δ)) + r · IGDM_i) + β · (1 − ŵ_i) · KL(T(x) ‖ S(x)) ],

    w from the teacher's entropy on x + δ (:func:`transferability_weights`), r = ``igdm_weight``
    (the epoch's :func:`igdm_ramp`) and β = ``clean_weight`` (0 in the released script)."""
    weights = transferability_weights(renyi_entropy(teacher_plus, renyi_order), weight_scale).detach()
    adversarial = kl_per_sample(teacher_plus, student_plus)
    matching = igdm_term(teacher_plus, teacher_minus, student_plus, student_minus)
    per_sample = weights * (adversarial + igdm_weight * matching)
    if clean_weight:
        per_sample = per_sample + clean_weight * (1 - normalised_weights(weights)) * kl_per_sample(
            teacher_clean, student_clean)
    return per_sample.mean(), weights


class AdversarialDistillation(EpochSeeded):
    """Shared by the distillation trainers: the frozen teacher, ε, step size, steps and the
    student's BatchNorm mode while crafting (eval in every reference code)."""

    def __init__(self, teacher: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 bn_mode: str = "eval", seed: int = 0) -> None:
        super().__init__(seed)
        check_eps(eps)
        self.teacher = frozen(teacher)
        self.eps, self.alpha, self.steps, self.bn_mode = eps, alpha, steps, bn_mode

    def ascend(self, student: nn.Module, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
               epoch: int) -> torch.Tensor:
        """x' maximising the scalar ``objective(x')`` by signed steps from x + 0.001·N(0, I)."""
        with in_mode(student, self.bn_mode):
            start = gaussian_start(x, self.eps, self.generator(x.device, epoch))
            return sign_ascent(objective, x, start, self.eps, self.alpha, self.steps)

    def mirrored_outputs(self, student: nn.Module, x: torch.Tensor, x_adv: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """T(x+δ), T(x−δ) (no gradients), S(x+δ), S(x−δ) for δ = x' − x: the inputs of IGDM's term.
        x − δ is not clipped to [0, 1]: it is the mirror point of a central difference, not an input
        anyone is shown."""
        x_minus = 2 * x - x_adv
        with torch.no_grad():
            teacher_plus, teacher_minus = self.teacher(x_adv), self.teacher(x_minus)
        return teacher_plus, teacher_minus, student(x_adv), student(x_minus)

    def ascend_adaptive(self, student: nn.Module, x: torch.Tensor, epoch: int) -> torch.Tensor:
        """AdaAD's inner maximisation: argmax KL(T(x') ‖ S(x')), the teacher run at every step."""
        return self.ascend(student, x, lambda x_adv: kl_per_sample(self.teacher(x_adv),
                                                                   student(x_adv)).sum(), epoch)


@DEFENSES.register("ard")
class ARD(AdversarialDistillation):
    """ARD (Goldblum et al., AAAI 2020): x' is PGD on the student's own cross-entropy (uniform start),
    the student matches the teacher's clean prediction there (:func:`ard_loss`)."""

    def __init__(self, teacher: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 temperature: float = 1.0, ce_weight: float = 0.0, bn_mode: str = "eval", seed: int = 0) -> None:
        super().__init__(teacher, eps, alpha, steps, bn_mode, seed)
        self.temperature, self.ce_weight = temperature, ce_weight
        self.attack = attacks.build("pgd", eps=eps, alpha=alpha, steps=steps, bn_mode=bn_mode)

    def __call__(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.attack(student, x, y, generator=self.generator(x.device, epoch))
        with torch.no_grad():
            teacher_clean = self.teacher(x)
        student_adv = student(x_adv)
        student_clean = student(x) if self.ce_weight else None
        return ard_loss(student_adv, teacher_clean, self.temperature, self.ce_weight, student_clean, y), student_adv


@DEFENSES.register("rslad")
class RSLAD(AdversarialDistillation):
    """RSLAD (Zi et al., ICCV 2021): x' maximises KL(T(x) ‖ S(x')), the teacher's clean soft label
    replacing the hard label everywhere; outer loss :func:`rslad_loss`."""

    def __init__(self, teacher: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 adversarial_weight: float = 5 / 6, bn_mode: str = "eval", seed: int = 0) -> None:
        super().__init__(teacher, eps, alpha, steps, bn_mode, seed)
        self.adversarial_weight = adversarial_weight

    def __call__(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            teacher_clean = self.teacher(x)
        x_adv = self.ascend(student, x, lambda x_adv: kl_per_sample(teacher_clean, student(x_adv)).sum(), epoch)
        student_adv = student(x_adv)
        return rslad_loss(student_adv, student(x), teacher_clean, self.adversarial_weight), student_adv


@DEFENSES.register("adaad")
class AdaAD(AdversarialDistillation):
    """AdaAD (Huang et al., CVPR 2023): x' maximises the teacher–student disagreement
    KL(T(x') ‖ S(x')) itself, querying the teacher at every step; outer :func:`adaad_loss`."""

    def __call__(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.ascend_adaptive(student, x, epoch)
        with torch.no_grad():
            teacher_adv = self.teacher(x_adv)
        student_adv = student(x_adv)
        return adaad_loss(student_adv, teacher_adv), student_adv


@DEFENSES.register("igdm")
class IGDM(AdversarialDistillation):
    """IGDM (Lee, Cho & Kim, ICLR 2025) on AdaAD: AdaAD's x' and loss plus :func:`igdm_term` weighted by
    :func:`igdm_ramp` (``epochs`` is the length of training, for the ramp)."""

    def __init__(self, teacher: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, *,
                 epochs: int, igdm_weight: float = 1.0, bn_mode: str = "eval", seed: int = 0) -> None:
        super().__init__(teacher, eps, alpha, steps, bn_mode, seed)
        self.epochs, self.igdm_weight = epochs, igdm_weight

    def __call__(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.ascend_adaptive(student, x, epoch)
        teacher_plus, teacher_minus, student_plus, student_minus = self.mirrored_outputs(student, x, x_adv)
        ramp = igdm_ramp(epoch + 1, self.epochs, self.igdm_weight)
        loss = (adaad_loss(student_plus, teacher_plus)
                + ramp * igdm_term(teacher_plus, teacher_minus, student_plus, student_minus).mean())
        return loss, student_plus


@DEFENSES.register("saad")
class SAAD(AdversarialDistillation):
    """SAAD (Lee & Chung 2026; notes §2). Inner: x' maximises KL(z̃(x') ‖ S(x')) with z̃ the
    :func:`linearised_teacher_logits` (λ = ``lam``), one teacher forward+backward per batch. Outer:
    :func:`saad_loss` with the IGDM ramp, Rényi order γ = ``renyi_order`` and β = ``clean_weight``.
    Train it with SWA from epoch 95 of 200 (the profile's ``averaging``); the averaged student is
    the reported one.

    It also counts, per epoch, how many training x' fool the student and the teacher and the mean
    weight of those that transfer and those that do not (:meth:`epoch_statistics`)."""

    def __init__(self, teacher: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, *,
                 epochs: int, lam: float = 1.0, renyi_order: float = 1.0, igdm_weight: float = 1.0,
                 clean_weight: float = 0.0, weight_scale: float = SAAD_WEIGHT_SCALE, bn_mode: str = "eval",
                 seed: int = 0) -> None:
        super().__init__(teacher, eps, alpha, steps, bn_mode, seed)
        check_renyi_order(renyi_order)
        self.epochs, self.lam, self.renyi_order = epochs, lam, renyi_order
        self.igdm_weight, self.clean_weight, self.weight_scale = igdm_weight, clean_weight, weight_scale
        self._statistics: torch.Tensor | None = None
        self._seen = 0

    def teacher_linearisation(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """T(x) and ∇ₓ T(x)_y from one teacher forward and backward pass (no parameter gradients)."""
        with torch.enable_grad():
            x_grad = x.detach().requires_grad_(True)
            teacher_clean = self.teacher(x_grad).float()
            (gradient,) = torch.autograd.grad(teacher_clean.gather(1, y[:, None]).sum(), x_grad)
        return teacher_clean.detach(), gradient

    def inner_maximisation(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x', the teacher's clean logits T(x) and ∇ₓ T(x)_y, from one teacher forward and backward pass."""
        teacher_clean, gradient = self.teacher_linearisation(x, y)

        def objective(x_adv: torch.Tensor) -> torch.Tensor:
            target = linearised_teacher_logits(teacher_clean, gradient, x_adv - x, y, self.lam)
            return kl_per_sample(target, student(x_adv)).sum()

        return self.ascend(student, x, objective, epoch), teacher_clean, gradient

    @torch.no_grad()
    def sample_weights(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int = 0
                       ) -> dict[str, torch.Tensor]:
        """A look inside one batch, without training: SAAD's x' for ``student``, and per sample the
        teacher's entropy on x', the weight w and ŵ, whether x' fools the student and the teacher,
        and the teacher's true-class logit at x' exactly and as linearised by the inner step."""
        x_adv, teacher_clean, gradient = self.inner_maximisation(student, x, y, epoch)
        teacher_plus = predict(self.teacher, x_adv)
        entropy = renyi_entropy(teacher_plus, self.renyi_order)
        weights = transferability_weights(entropy, self.weight_scale)
        true_class = torch.arange(len(y), device=y.device), y
        linearised = linearised_teacher_logits(teacher_clean, gradient, x_adv - x, y, self.lam)
        return {"x_adv": x_adv, "entropy": entropy, "weight": weights,
                "normalised_weight": normalised_weights(weights),
                "fools_student": predict(student, x_adv).argmax(1) != y, "fools_teacher": teacher_plus.argmax(1) != y,
                "teacher_true_logit": teacher_plus[true_class], "linearised_true_logit": linearised[true_class],
                "teacher_clean_true_logit": teacher_clean[true_class]}

    def __call__(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv, teacher_clean, _ = self.inner_maximisation(student, x, y, epoch)
        teacher_plus, teacher_minus, student_plus, student_minus = self.mirrored_outputs(student, x, x_adv)
        # S(x) runs even when β = 0: as in the released code, the clean batch also updates the
        # student's BatchNorm statistics.
        student_clean = student(x)
        loss, weights = saad_loss(teacher_plus, teacher_minus, teacher_clean, student_plus, student_minus,
                                  student_clean, igdm_ramp(epoch + 1, self.epochs, self.igdm_weight),
                                  self.clean_weight, self.renyi_order, self.weight_scale)
        self._count(student_plus.detach(), teacher_plus, y, weights)
        return loss, student_plus

    def _count(self, student_plus: torch.Tensor, teacher_plus: torch.Tensor, y: torch.Tensor,
               weights: torch.Tensor) -> None:
        fools_student, fools_teacher = student_plus.argmax(1) != y, teacher_plus.argmax(1) != y
        counts = torch.stack([fools_student.sum(), (fools_student & fools_teacher).sum(), fools_teacher.sum(),
                              weights[fools_teacher].sum(), weights[~fools_teacher].sum()]).float()
        # summed on the device and read once per epoch: no host synchronisation per step
        self._statistics = counts if self._statistics is None else self._statistics + counts
        self._seen += len(y)

    def epoch_statistics(self) -> dict[str, float]:
        """Since the last call: ``train_transfer`` (of the training x' that fool the student, the
        fraction that fool the teacher) and the mean weight w of the x' that fool the teacher
        (``weight_fooling_teacher``) and of those the teacher still classifies correctly
        (``weight_teacher_correct``), whether or not they fool the student; then reset."""
        totals = self._statistics.tolist() if self._statistics is not None else [0.0] * 5
        fool_student, fool_both, fool_teacher, weight_fooled, weight_correct = totals
        seen, nan = self._seen, float("nan")
        record = {"train_transfer": fool_both / fool_student if fool_student else nan,
                  "weight_fooling_teacher": weight_fooled / fool_teacher if fool_teacher else nan,
                  "weight_teacher_correct": weight_correct / (seen - fool_teacher) if seen > fool_teacher else nan}
        self._statistics, self._seen = None, 0
        return record

