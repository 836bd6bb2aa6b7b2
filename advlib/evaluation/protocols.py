"""Who the attacker is allowed to see: the evaluation protocols of the book's chapters.

* :func:`gray_box` — the purification paper's protocol (chapter 5): x' crafted on the classifier f
  alone, then scored through each purifier, f(P(x')).
* :func:`white_box` — the adaptive one (chapters 5 and 10): x' crafted on f∘P itself;
  :class:`BPDAPurified` and :class:`NoisyPurifier` with EOT for purifiers whose gradients cannot
  be used as they are (chapter 10).
* :func:`crafted_on` — x' crafted on one model, scored on another (gray-box, transfer).
* :func:`transfer_rate` — SAAD's adversarial transferability (chapter 7).
* :func:`robustness_outcomes` — the per-image outcomes behind one row of the adversarial-training
  and distillation tables (chapters 6-8): each attack on its own, AutoAttack on a subset, PGD-20
  on that same subset.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from .. import attacks
from ..attacks.primitives import check_inputs
from ..config import prepare_model
from .prediction import accuracy, predict
from .robustness import RobustnessReport, robust_accuracy


class Purified(nn.Module):
    """``classifier(purifier(x))``: a purified classifier is just another model, so every attack
    and evaluation can take it (and attack it end to end, which the gray-box protocol does not)."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.purifier, self.classifier = purifier, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x))


class BPDAPurified(Purified):
    """f(P(x)) whose backward pass treats P as the identity: BPDA, the backward-pass differentiable
    approximation of Athalye et al. (2018, Sec. 4.1) for purifiers. The forward value is f∘P's, so
    an attack scored on it is scored on the defended model; only its gradients are approximated,
    which is what an attacker does when P's own gradients are useless (a non-differentiable or
    gradient-masking purifier)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # P's backward pass is the identity: no graph through P is needed
            residual = self.purifier(x) - x
        return self.classifier(x + residual)


class NoisyPurifier(nn.Module):
    """P(x + σ·N(0, I)): a randomised purifier, whose every forward pass draws new noise (chapter 10
    uses it to show why randomised defences need EOT: Athalye et al. 2018, Sec. 4.3)."""

    def __init__(self, purifier: nn.Module, sigma: float) -> None:
        super().__init__()
        self.purifier, self.sigma = purifier, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


def folded(model: nn.Module) -> nn.Module:
    """The function of ``model`` in eval mode with every BatchNorm that follows a convolution folded
    into it (torch.fx's fusion; those after a transposed convolution stay): the same logits up to
    float rounding and the same input gradients, for attacking a fixed model faster (the purifier of
    chapters 10-11 behind its ResNet20: forward-backward 289 → 230 ms per 128 Fashion-MNIST images on two
    CPU cores). A purified model is folded part by part, so that its BPDA version can still be built
    from it; a model that torch.fx cannot trace is returned unchanged. Only for evaluation: the copy
    has no BatchNorm statistics to train."""
    if isinstance(model, Purified):
        return type(model)(folded(model.purifier), folded(model.classifier)).eval()
    try:
        fused = fuse(copy.deepcopy(model).eval())
    # data-dependent control flow, or len() of a traced tensor (SOAP's purification)
    except (torch.fx.proxy.TraceError, TypeError, NotImplementedError, RuntimeError):
        return model
    return prepare_model(fused, next(model.parameters()).device).eval()


def craft(attack: Any, source: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``attack``'s adversarial examples of ``(x, y)`` crafted on ``source``, batch by batch on
    ``source``'s device, returned on the CPU."""
    check_inputs(x, y)
    device = next(source.parameters()).device
    if not len(x):
        return x.cpu()
    return torch.cat([attack(source, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(x), batch_size)])


def crafted_on(source: nn.Module, target: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Any,
               batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Per image, whether ``target`` classifies it correctly clean (``clean``) and after ``attack``
    crafted on ``source`` (``robust``, which also requires ``clean``): gray-box evaluation when
    ``source`` is the classifier behind a purifier, a transfer attack when it is another model."""
    x_adv = craft(attack, source, x, y, batch_size)
    clean = (predict(target, x).argmax(1).cpu() == y.cpu())
    return {"clean": clean, "robust": clean & (predict(target, x_adv).argmax(1).cpu() == y.cpu())}


def gray_box(classifier: nn.Module, purifiers: dict[str, nn.Module], named_attacks: dict[str, Any],
             x: torch.Tensor, y: torch.Tensor, subsets: dict[str, int] | None = None,
             batch_size: int = 500) -> dict[str, dict[str, float]]:
    """Koo et al. 2023, Sec. 4.1: x' is crafted on the classifier f alone, then each column reports
    the accuracy of f(P(x')) ("no defence": f(x')). Row "Original" uses the clean images.

    ``named_attacks`` maps a row name to an attack; ``subsets`` optionally limits a row to its first
    n images (AutoAttack on a CPU). Returns ``{row: {column: accuracy in [0, 1], "images": n}}``;
    with no images every accuracy is nan.
    """
    check_inputs(x, y)

    def row(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        result = {"no defence": accuracy(classifier, images, labels, batch_size)}
        for name, purifier in purifiers.items():
            result[name] = accuracy(Purified(purifier, classifier), images, labels, batch_size)
        return result

    table = {"Original": {**row(x, y), "images": len(x)}}
    for name, attack in named_attacks.items():
        n = (subsets or {}).get(name) or len(x)
        xs, ys = x[:n], y[:n]
        table[name] = {**row(craft(attack, classifier, xs, ys, batch_size), ys), "images": n}
    return table


def white_box(purifier: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
              named_attacks: dict[str, Any], **options: Any) -> RobustnessReport:
    """Robust accuracy of f∘P when every attack is crafted through the purifier (Athalye et al. 2018;
    Carlini et al. 2019): P is differentiable, so this is plain white-box evaluation of the composed
    model. ``options`` go to :func:`~advlib.evaluation.robustness.robust_accuracy`."""
    return robust_accuracy(Purified(purifier, classifier).eval(), x, y, named_attacks, **options)


PURIFIER_THREATS = ("white-box", "gray-box", "BPDA", "transfer")


def threat_sources(purified: Purified, surrogate: nn.Module) -> dict[str, nn.Module]:
    """The model an attacker differentiates under each threat model of :data:`PURIFIER_THREATS`
    for f∘P (``purified``): f∘P itself (white-box); f alone (gray-box, Koo et al. 2023, Sec. 4.1);
    f∘P with P's backward pass replaced by the identity (BPDA, Athalye et al. 2018, Sec. 4.1);
    ``surrogate``, another model (transfer)."""
    return {"white-box": purified, "gray-box": purified.classifier,
            "BPDA": BPDAPurified(purified.purifier, purified.classifier).eval(), "transfer": surrogate}


def threat_outcomes(purified: Purified, x: torch.Tensor, y: torch.Tensor,
                    examples: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Per image, ``clean`` and ``robust`` for f∘P under each threat model, from the adversarial
    ``examples`` crafted on each of :func:`threat_sources`. A white-box attacker also holds every
    other attacker's examples, so the white-box ``robust`` is the per-image worst case over all of
    them; ``robust_direct`` is the attack through f∘P alone."""
    y = y.cpu()
    clean = predict(purified, x).argmax(1).cpu() == y
    robust = {threat: clean & (predict(purified, x_adv).argmax(1).cpu() == y) for threat, x_adv in examples.items()}
    worst = clean.clone()
    for outcome in robust.values():
        worst &= outcome
    return {threat: {"clean": clean, "robust": worst, "robust_direct": outcome} if threat == "white-box"
            else {"clean": clean, "robust": outcome} for threat, outcome in robust.items()}


def purifier_threats(purified: Purified, x: torch.Tensor, y: torch.Tensor, attack: Any,
                     surrogate: nn.Module, batch_size: int = 256) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`threat_outcomes` of f∘P with ``attack`` crafted on each of :func:`threat_sources`."""
    examples = {threat: craft(attack, source, x, y, batch_size)
                for threat, source in threat_sources(purified, surrogate).items()}
    return threat_outcomes(purified, x, y, examples)


def transfer_outcomes(student: nn.Module, teacher: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per student-crafted x' that fools the student, whether it also fools the teacher (a bool
    tensor on the CPU, one entry per such x'): the outcomes behind :func:`transfer_rate`."""
    fools_student = predict(student, x_adv).argmax(1) != y.to(x_adv.device)
    fools_teacher = predict(teacher, x_adv).argmax(1) != y.to(x_adv.device)
    return fools_teacher[fools_student].cpu()


def transfer_rate(student: nn.Module, teacher: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    """Adversarial transferability as SAAD defines it (Lee & Chung 2026): of the student-crafted x'
    that fool the student, the fraction that also fool the teacher (nan when none fools the student,
    e.g. no images at all). Pass only examples crafted on images the student classifies correctly:
    the others fool it without any attack."""
    transferred = transfer_outcomes(student, teacher, x_adv, y)
    return transferred.float().mean().item() if len(transferred) else float("nan")


def robustness_outcomes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, named_attacks: dict[str, Any],
                        autoattack_examples: torch.Tensor, transfer_to: nn.Module | None = None,
                        transfer_attack: str = "PGD-20") -> dict[str, torch.Tensor]:
    """Per image, as bool tensors on the CPU: correct clean (``"clean"``) and after each of
    ``named_attacks`` on its own, on all of ``x``; after AutoAttack (``"AA"``, from its
    ``autoattack_examples`` of the first ``len(autoattack_examples)`` images) and after
    ``transfer_attack`` (PGD-20) on those same images (``"PGD-20 (AA images)"``, for the check
    AA ≤ PGD-20). With ``transfer_to``, also ``"transfer"``: for each PGD-20 example (of an image
    ``model`` classifies correctly) that fools ``model``, whether it fools that model too
    (:func:`transfer_outcomes`). Per-image outcomes give confidence intervals and paired tests
    (:mod:`advlib.evaluation.reporting`)."""
    if transfer_attack not in named_attacks:
        raise ValueError(f"named_attacks must hold {transfer_attack!r}, the attack AutoAttack is checked against")
    n_aa = len(autoattack_examples)
    if n_aa > len(x):
        raise ValueError(f"{n_aa} AutoAttack examples for {len(x)} images; pass those of the first images only")
    keep: Sequence[str] = (transfer_attack,) if transfer_to is not None else ()
    report = robust_accuracy(model, x, y, named_attacks, cascade=False, keep_adversarial=keep)
    # without cascading, the per-image outcomes on the first n_aa images are already known
    aa_robust = report.clean[:n_aa] & (predict(model, autoattack_examples).argmax(1).cpu() == y[:n_aa].cpu())
    outcomes = {"clean": report.clean, **report.per_attack, "AA": aa_robust,
                f"{transfer_attack} (AA images)": report.per_attack[transfer_attack][:n_aa]}
    if transfer_to is not None:
        attacked = report.clean
        outcomes["transfer"] = transfer_outcomes(model, transfer_to, report.adversarial[transfer_attack][attacked],
                                                 y.cpu()[attacked])
    return outcomes


def autoattack_standard(eps: float, evaluation: dict[str, Any], seed: int = 0) -> Any:
    """AutoAttack's standard version with an ``evaluation`` section's budgets (``autoattack_iterations``,
    ``square_queries`` and ``autoattack_targets``, the target classes of APGD-T and FAB-T: the
    reference's 100, 5000 and 9 in the paper profile; cut on CPUs and in the paper smoke run, see
    the profiles)."""
    return attacks.build("autoattack", eps=eps, version="standard", iterations=evaluation["autoattack_iterations"],
                         n_target_classes=evaluation["autoattack_targets"],
                         square_queries=evaluation["square_queries"], seed=seed)
