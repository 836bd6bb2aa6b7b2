"""Distillation-based purification (Koo, Chae & Lee, Applied Sciences 2023, Sec. 3; chapters 3-5).

A convolutional autoencoder P cleans an adversarial image x' before a fixed classifier f sees it.
Two teachers with P's architecture are trained first — NT on clean images, AT on PGD examples
crafted on f — and a student purifier learns from both (ensemble knowledge distillation).
Equation numbers refer to the paper's Sec. 3.2–3.3; where the paper is ambiguous we follow
``shared/notes/algorithms.md`` §1 and say so in the docstring.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import DEFENSES, frozen


def reconstruction_loss(purified: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """L_NT = L_s = MSE(P(x), x) = (1/n) Σ_i (P(x)_i − x_i)², averaged over pixels and batch (Sec. 3.2–3.3)."""
    return F.mse_loss(purified, clean)


def relativistic_loss(purified_logits: torch.Tensor, adversarial_logits: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
    """L_adv = −log σ(p_out − adv_out) of the AT teacher (Sec. 3.2, L_AT).

    The paper defines p_out and adv_out only as "the output of the classification model" on the
    purified and on the adversarial image; we read them as the true-class logits (the relativistic
    form of NRP), so the term rewards purified images that f classifies more confidently as y than
    the adversarial ones. −log σ(z) = softplus(−z), computed stably.
    """
    p_out = purified_logits.gather(1, labels[:, None]).squeeze(1)
    adv_out = adversarial_logits.gather(1, labels[:, None]).squeeze(1)
    return F.softplus(adv_out - p_out).mean()


def kd_distribution_logits(images: torch.Tensor, space: str, classifier: nn.Module | None = None) -> torch.Tensor:
    """The inputs of g = softmax in L_kd: each image's flattened pixels (``space="pixels"``, the
    literal reading of the paper) or the classifier's logits on it (``space="logits"``)."""
    if space == "pixels":
        return images.flatten(1)
    if space == "logits":
        if classifier is None:
            raise ValueError("kd_space='logits' needs the classifier")
        return classifier(images)
    raise ValueError(f"kd_space must be 'pixels' or 'logits', not {space!r}")


def kd_components(teacher_out: torch.Tensor, student_out: torch.Tensor, space: str = "pixels",
                  classifier: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of one teacher's term of L_kd (Sec. 3.3): KL(g(T_j) ‖ g(S)), summed over the
    distribution and averaged over the batch with the teacher as target, and MSE(T_j, S).

    In pixel space the KL is not negligible: for a softmax over n pixels whose logits differ by
    d = T_j − S, KL ≈ ½ · (1/n) Σ_i (d_i − d̄)², half the *centred* MSE; it ignores only the
    mean brightness difference d̄, which the MSE term still sees. Chapter 5 measures the ratio."""
    teacher_log_p = F.log_softmax(kd_distribution_logits(teacher_out, space, classifier).float(), dim=1)
    student_log_p = F.log_softmax(kd_distribution_logits(student_out, space, classifier).float(), dim=1)
    kl = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)
    return kl, F.mse_loss(student_out, teacher_out)


def kd_term(teacher_out: torch.Tensor, student_out: torch.Tensor, space: str = "pixels",
            classifier: nn.Module | None = None) -> torch.Tensor:
    """KL(g(T_j(x_j)) ‖ g(S(x'))) + MSE(T_j(x_j), S(x')), one teacher's term of L_kd (Sec. 3.3),
    x_j the input teacher j is given (:class:`StudentLoss`)."""
    kl, mse = kd_components(teacher_out, student_out, space, classifier)
    return kl + mse


def student_loss(student_out: torch.Tensor, clean: torch.Tensor, teacher_outs: Sequence[torch.Tensor],
                 beta: float = 0.5, gamma: float = 0.5, space: str = "pixels",
                 classifier: nn.Module | None = None) -> torch.Tensor:
    """L = β·L_s + γ·L_kd with L_kd = (1/M) Σ_j kd_term(T_j, S) (Sec. 3.3; the paper sets β = γ = 0.5)."""
    if not teacher_outs:
        raise ValueError("the student needs at least one teacher")
    kd = torch.stack([kd_term(t, student_out, space, classifier) for t in teacher_outs]).mean()
    return beta * reconstruction_loss(student_out, clean) + gamma * kd


@DEFENSES.register("purifier-nt")
class NTTeacherLoss:
    """Trainer of the NT teacher: L_NT = MSE(P(x), x) on clean images (Sec. 3.2)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int,
                 x_adv: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        return reconstruction_loss(model(x), x), None


@DEFENSES.register("purifier-at")
class ATTeacherLoss:
    """Trainer of the AT teacher: L_AT = MSE(P(x'), x) − log σ(p_out − adv_out) (Sec. 3.2), with x'
    PGD examples crafted on the frozen classifier. Returns f's logits on P(x') as training accuracy."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = frozen(classifier)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int,
                 x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        purified = model(x_adv)
        logits = self.classifier(purified)
        with torch.no_grad():
            adversarial_logits = self.classifier(x_adv)
        loss = reconstruction_loss(purified, x) + relativistic_loss(logits, adversarial_logits, y)
        return loss, logits.detach()


@DEFENSES.register("purifier-kd")
class StudentLoss:
    """Trainer of the student purifier: β·MSE(S(x'), x) + γ·(1/M) Σ_j [KL + MSE](T_j(x_j), S(x')) (Sec. 3.3).

    The AT teacher is given the adversarial image (x_AT = x') and the NT teacher the clean one
    (x_NT = x): "the AT teacher model is given AEs generated by the PGD attack to purify them, and
    the NT teacher model is given pure images to restore them" (Sec. 3.3, Fig. 3). The printed
    formula lost its primes; ``nt_sees_clean=False`` gives the NT teacher x' instead, the other
    reading, for comparison. ``teachers`` maps a name ("at", "nt") to a frozen teacher.
    """

    def __init__(self, teachers: dict[str, nn.Module], classifier: nn.Module | None = None, beta: float = 0.5,
                 gamma: float = 0.5, kd_space: str = "pixels", nt_sees_clean: bool = True) -> None:
        if kd_space not in ("pixels", "logits"):
            raise ValueError(f"kd_space must be 'pixels' or 'logits', not {kd_space!r}")
        unknown = set(teachers) - {"at", "nt"}
        if unknown:
            raise ValueError(f"teachers are named 'at' and 'nt', got {sorted(unknown)}")
        self.teachers = {name: frozen(t) for name, t in teachers.items()}
        self.classifier = frozen(classifier) if classifier is not None else None
        self.beta, self.gamma, self.kd_space, self.nt_sees_clean = beta, gamma, kd_space, nt_sees_clean

    def teacher_input(self, name: str, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """x_j: the clean image for the NT teacher (unless ``nt_sees_clean=False``), x' for the AT teacher."""
        return x if name == "nt" and self.nt_sees_clean else x_adv

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int,
                 x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            teacher_outs = [teacher(self.teacher_input(name, x, x_adv)) for name, teacher in self.teachers.items()]
        purified = model(x_adv)
        loss = student_loss(purified, x, teacher_outs, self.beta, self.gamma, self.kd_space, self.classifier)
        logits = None
        if self.classifier is not None:
            with torch.no_grad():
                logits = self.classifier(purified)
        return loss, logits

    @torch.no_grad()
    def kd_breakdown(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, dict[str, float]]:
        """Per teacher, the two parts of its L_kd term for the student ``model`` on ``(x, x')``
        (:func:`kd_components`), and the centred MSE (T_j − S with each image's mean difference
        removed) that the pixel-space KL approximates by half."""
        student_out = model(x_adv)
        parts = {}
        for name, teacher in self.teachers.items():
            teacher_out = teacher(self.teacher_input(name, x, x_adv))
            kl, mse = kd_components(teacher_out, student_out, self.kd_space, self.classifier)
            difference = (teacher_out - student_out).flatten(1).float()
            centred = (difference - difference.mean(1, keepdim=True)).pow(2).mean()
            parts[name] = {"kl": kl.item(), "mse": mse.item(), "centred_mse": centred.item()}
        return parts
