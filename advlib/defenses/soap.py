"""SOAP, online adversarial purification based on self-supervision (Shi, Holtz & Mishne, ICLR 2021),
rotation-prediction variant (SOAP-RP), as a purifier in front of a fixed classifier (chapter 5's
Table 1 baseline, chapters 10-11's adaptive evaluation).

A network g is trained on its main task jointly with an auxiliary self-supervised one, predicting
which of four rotations an image was given (Eq. 2, 7). An adversarial perturbation raises the
auxiliary loss as well; at test time SOAP lowers it again by projected sign-gradient descent on the
input (Alg. 2, Eq. 4), so the purified image is ``x + δ`` with ``‖δ‖∞ ≤ ε_pfy``. ε_pfy is chosen per
image as the smallest budget that minimises the auxiliary loss (``ε_min-aux``, Sec. 3.3).

Koo et al. compare their purifier with SOAP in front of the same fixed classifier as every other
purifier (their Sec. 4.1), so here g serves only to purify: the classifier that scores the purified
image is the book's chapter-1 classifier, and g's own classification head is the joint training's
main task. The authors' code differs from the paper's text in three places, and we follow the text:
it classifies all four rotated copies in training (Eq. 2 has L_cls(x) only), it picks one budget per
batch (its auxiliary loss is averaged over the batch before the argmin), and its "ResNet-18" is a
three-stage 16/32/64-channel CIFAR ResNet.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.primitives import input_gradient, project_linf
from . import DEFENSES
from .adversarial_training import EpochSeeded

ROTATIONS = 4
# the most images g sees in one backward pass of the purification (budgets × rotations × images):
# all five budgets of the paper profile on a batch of 500 would be 10 000 ResNet-18 passes at once
PASS_IMAGES = 2048


class SOAPNetwork(nn.Module):
    """g: a classifier's feature extractor with two linear heads on its penultimate features (pooled
    in the ResNets, flattened in the small CNN), the main task's (``classify``) and rotation
    prediction's (``rotation``, the "simple linear classifier" h of Sec. 3.4). ``forward`` returns
    the class logits."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.features, head = _without_last_linear(classifier)
        self.classify = head
        self.rotation = nn.Linear(head.in_features, ROTATIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotation(self.features(x))


def _without_last_linear(classifier: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``classifier`` with its last ``nn.Linear`` (the class head) replaced by the identity, and that head."""
    named = [(name, module) for name, module in classifier.named_modules() if isinstance(module, nn.Linear)]
    if not named:
        raise ValueError(f"{type(classifier).__name__} has no nn.Linear head for SOAP's rotation head to sit beside")
    name, head = named[-1]
    parent_name, _, attribute = name.rpartition(".")
    parent = classifier.get_submodule(parent_name) if parent_name else classifier
    setattr(parent, attribute, nn.Identity())
    return classifier, head


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The four rotations x_ω, ω ∈ {0°, 90°, 180°, 270°}, of every image of the batch (Sec. 3.4):
    ``(4N, C, H, W)`` images, rotation by rotation (the first N unrotated), and their targets 0-3."""
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"rotation prediction needs square images (N, C, H, H), got shape {tuple(x.shape)}")
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    targets = torch.arange(ROTATIONS, device=x.device).repeat_interleave(len(x))
    return rotated, targets


def rotation_training_loss(rotation_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_aux = −Σ_ω log h(g(x_ω))_ω (Eq. 7): the cross-entropy of the rotation head, summed over the
    four rotations of an image and averaged over the images."""
    return ROTATIONS * F.cross_entropy(rotation_logits, targets)


def rotation_purification_loss(rotation_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The auxiliary loss SOAP-RP minimises at test time, per image: the squared error between the
    rotation head's softmax and the one-hot rotation, averaged over the four rotations and classes
    (Sec. 3.4: the cross-entropy under-estimated the budget ε_pfy, so the test-time loss is the
    ℓ2 one). ``rotation_logits`` are ordered as :func:`rotations` returns them; one value per image."""
    one_hot = F.one_hot(targets, ROTATIONS).to(rotation_logits.dtype)
    per_rotation = (rotation_logits.softmax(1) - one_hot).pow(2).mean(1)
    return per_rotation.view(ROTATIONS, -1).mean(0)


@DEFENSES.register("soap-rp")
class SOAPTrainingLoss(EpochSeeded):
    """Trainer of SOAP-RP's network g: L = L_cls(x̃) + α·L_aux(x̃) (Eq. 2 with Eq. 7) on
    x̃ = clip(x + σ·N(0, I), 0, 1), the Gaussian-noised training images of Sec. 4 (σ = 0.1), L_aux
    over the four rotations of each. α is not in the paper's text; the authors' code defaults to 1
    and their CIFAR-10 rotation example trains with 0.5. Returns the class logits on x̃."""

    def __init__(self, alpha: float = 0.5, noise_sigma: float = 0.1, seed: int = 0) -> None:
        if alpha < 0 or noise_sigma < 0:
            raise ValueError(f"alpha and noise_sigma must be ≥ 0, got {alpha} and {noise_sigma}")
        super().__init__(seed)
        self.alpha, self.noise_sigma = alpha, noise_sigma

    def __call__(self, model: SOAPNetwork, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(x.shape, generator=self.generator(x.device, epoch), device=x.device, dtype=x.dtype)
        noisy = (x + self.noise_sigma * noise).clamp(0, 1)
        rotated, targets = rotations(noisy)
        features = model.features(rotated)
        class_logits = model.classify(features[:len(x)])
        loss = F.cross_entropy(class_logits, y) + self.alpha * rotation_training_loss(model.rotation(features), targets)
        return loss, class_logits.detach()


class SOAPPurifier(nn.Module):
    """P(x) = clip(x + δ, 0, 1), δ found by ``steps`` projected sign-gradient steps of size
    ``step_size`` that lower the rotation loss (:func:`rotation_purification_loss`) of ``network``
    from δ = 0 (Alg. 2): δ ← Π_{‖δ‖∞ ≤ ε_pfy, x+δ ∈ [0,1]}(δ − γ·sign(∇_δ L_aux(x + δ))). It is run
    for every budget of ``budgets`` (strictly ascending, 0 allowed) and each image keeps the smallest
    budget whose purified image has the least auxiliary loss (``ε_min-aux``, Sec. 3.3).

    The steps see ``x`` detached, and the output carries the identity's gradient with respect to
    ``x``, everywhere: that is BPDA (Athalye et al. 2018), the standard attack on SOAP. δ(x), made of
    sign(·) steps and an argmin over budgets, is piecewise constant, so its derivative is zero
    almost everywhere, and the exact derivative of P differs from the identity only where the [0, 1]
    clip binds (there it is zero). ``network`` is kept in eval mode."""

    def __init__(self, network: SOAPNetwork, budgets: Sequence[float], step_size: float, steps: int) -> None:
        super().__init__()
        budgets = [float(b) for b in budgets]
        if not budgets or budgets[0] < 0 or any(a >= b for a, b in zip(budgets, budgets[1:])):
            raise ValueError(f"budgets must be strictly ascending and ≥ 0, got {budgets}")
        if step_size <= 0 or steps < 0:
            raise ValueError(f"step_size must be > 0 and steps ≥ 0, got {step_size} and {steps}")
        self.network = network.eval().requires_grad_(False)
        self.budgets, self.step_size, self.steps = budgets, step_size, steps

    def train(self, mode: bool = True) -> "SOAPPurifier":
        super().train(mode)
        self.network.eval()
        return self

    def auxiliary_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The test-time rotation loss of each image of ``x``."""
        rotated, targets = rotations(x)
        return rotation_purification_loss(self.network.rotation_logits(rotated), targets)

    def purify_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For every budget, the purified images and their auxiliary losses: ``(B, N, C, H, W)`` and
        ``(B, N)``. The positive budgets are purified together, a chunk of images at a time, so that
        g never sees more than :data:`PASS_IMAGES` images in one backward pass."""
        x = x.detach()
        per_image = ROTATIONS * max(1, sum(b > 0 for b in self.budgets))
        chunk = max(1, PASS_IMAGES // per_image)
        parts = [self._purify_chunk(x[start:start + chunk]) for start in range(0, len(x), chunk)] or [
            self._purify_chunk(x)]
        return torch.cat([images for images, _ in parts], 1), torch.cat([losses for _, losses in parts], 1)

    def _purify_chunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positive = [b for b in self.budgets if b > 0]
        shape = [1] * (x.dim() - 1)
        start = x.repeat(len(positive), *shape)
        budget = torch.tensor(positive, device=x.device, dtype=x.dtype).repeat_interleave(len(x)).view(-1, *shape)
        current = start
        for _ in range(self.steps if positive else 0):
            gradient = input_gradient(lambda images: self.auxiliary_loss(images).sum(), current)
            current = project_linf(current - self.step_size * gradient.sign(), start, budget)
        purified = torch.cat([x] * (len(self.budgets) - len(positive)) + [current])
        with torch.no_grad():
            losses = self.auxiliary_loss(purified)
        return purified.view(len(self.budgets), *x.shape), losses.view(len(self.budgets), len(x))

    def choose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image of ``x`` purified with its ε_min-aux, the index of that budget in ``budgets``
        and the auxiliary loss it reached (all detached)."""
        purified, losses = self.purify_all(x)
        chosen = losses.argmin(0)  # the first minimum: the smallest budget among equals
        images = torch.arange(len(x), device=x.device)
        return purified[chosen, images], chosen, losses[chosen, images]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        purified, _, _ = self.choose(x)
        # the purified values, with the identity's gradient with respect to x (x − x.detach() is 0)
        return purified + (x - x.detach())
