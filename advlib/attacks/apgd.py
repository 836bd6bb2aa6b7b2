"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", Sec. 3 and Algorithm 1), with the cross-entropy loss,
the DLR loss and the targeted DLR loss (Sec. 4), L∞ or L2, and EOT for randomised models.

Every (example, target) pair is one *row* of a batch: the 9 targets of APGD-T run side by side
instead of one after another, and a row leaves the batch as soon as its example is misclassified
(each row's trajectory depends only on itself, so dropping finished rows changes no result and
saves the iterations the reference spends on points it has already fooled).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import ATTACKS
from .base import Attack
from .primitives import check_eps, check_norm, check_positive_ints, margin, project_l2, project_linf

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

MOMENTUM = 0.75  # α of Algorithm 1: weight of the new step against the previous update


def default_max_batch(device: torch.device) -> int:
    """Rows per batch when ``max_batch`` is not given: on a GPU one large batch (all targets of
    many examples) keeps the device busy; on a CPU, forward-backward passes of several hundred
    images ran slower per image than chunks of ~100 (small_cnn, Fashion-MNIST), so the rows are
    split instead."""
    return 2048 if device.type == "cuda" else 128


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Difference of logits ratio (Sec. 4): :math:`-\frac{z_y - \max_{i \neq y} z_i}{z_{\pi_1} - z_{\pi_3}}`
    (π orders the logits decreasingly); invariant to shifting and rescaling the logits."""
    ordered = logits.sort(dim=1, descending=True).values
    return -margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Targeted DLR (Sec. 4): :math:`-\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4})/2}`."""
    ordered = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "dlr": dlr, "dlr-targeted": targeted_dlr}


def checkpoints(n_iter: int) -> list[int]:
    """The iterations w_j at which the step size is reviewed (Sec. 3): p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in whole iterations as the reference counts
    them (0.22, 0.03 and 0.06 of ``n_iter`` rounded down, at least 1)."""
    first, shrink, shortest = (max(int(share * n_iter), 1) for share in (0.22, 0.03, 0.06))
    points, length, at = [0], first, first
    while at <= n_iter:
        points.append(at)
        length = max(length - shrink, shortest)
        at += length
    return points


@dataclass
class APGDOutcome:
    x_adv: torch.Tensor          # per example: an adversarial point if one was found, else the highest-loss one
    fooled: torch.Tensor         # per example: misclassified at some iterate (or already clean)
    zero_gradient: torch.Tensor  # per example: the gradient at a start point was exactly zero
    clean_correct: torch.Tensor  # per example: correctly classified clean (only these are attacked)

    @classmethod
    def start(cls, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor) -> "APGDOutcome":
        correct = clean_logits.argmax(1) == y
        return cls(x.clone(), ~correct, torch.zeros_like(correct), correct)

    def unfooled(self) -> torch.Tensor:
        return (~self.fooled).nonzero().flatten()


def even_chunks(n: int, largest: int) -> list[slice]:
    """Split ``n`` rows into the fewest chunks of at most ``largest``, of near-equal sizes (a tiny
    last chunk would cost as many iterations as a full one)."""
    count = -(-n // largest)
    size = -(-n // count) if count else 0
    return [slice(start, start + size) for start in range(0, n, size)] if n else []


@ATTACKS.register("apgd-ce")
class APGD(Attack):
    r"""APGD (Croce & Hein 2020, Algorithm 1) on one loss, untargeted (``loss="ce"`` or ``"dlr"``).

    * Start: x^{(0)} = x + ε·u/‖u‖∞ with u uniform in [-1, 1]^d (L2: Gaussian u and ‖·‖2);
      first step size η^{(0)} = 2ε.
    * Step (Algorithm 1): z^{(k+1)} = P_S(x^{(k)} + η^{(k)} sign ∇f(x^{(k)})) (L2: the normalised
      gradient), x^{(k+1)} = P_S(x^{(k)} + α(z^{(k+1)} - x^{(k)}) + (1 - α)(x^{(k)} - x^{(k-1)})),
      α = 0.75 (α = 1 on the first step).
    * At each checkpoint w_j (:func:`checkpoints`) the step size is halved and the iterate moved
      back to the best point so far, x_max (with its gradient), when Condition 1 (the loss rose
      in fewer than ρ·(w_j - w_{j-1}) of the steps since w_{j-1}, ρ = 0.75) or Condition 2 (the
      step size was not halved at w_{j-1} and the best loss has not improved since) holds.
    * ``n_restarts`` runs from fresh random starts, each on the examples no earlier run fooled;
      ``eot_iter`` > 1 averages loss, gradient and logits over that many forward passes (EOT,
      for randomised models). Only correctly classified examples are attacked; an example stops
      being attacked at its first misclassified iterate, which is what it gets back.

    Where the reference code departs from the paper's text this follows the paper: Condition 1
    counts the rise from f(x^{(0)}) at the first checkpoint (the reference compares with an
    unfilled entry), is a strict inequality (the reference uses ≤), and Condition 2 can already
    hold at the first checkpoint (η^{(0)} = η^{(w_1)} trivially).
    """

    def __init__(self, eps: float = 8 / 255, *, norm: str = "Linf", loss: str = "ce", n_iter: int = 100,
                 n_restarts: int = 1, rho: float = 0.75, eot_iter: int = 1, max_batch: int | None = None,
                 seed: int = 0, bn_mode: str = "eval") -> None:
        check_eps(eps)
        check_norm(norm)
        if loss not in ("ce", "dlr"):
            raise ValueError(f"loss must be 'ce' or 'dlr', not {loss!r}; apgd-t has the targeted DLR loss")
        check_positive_ints(n_iter=n_iter, n_restarts=n_restarts, eot_iter=eot_iter)
        if max_batch is not None:
            check_positive_ints(max_batch=max_batch)
        super().__init__(seed=seed, bn_mode=bn_mode)
        self.eps, self.norm, self.loss, self.n_iter = eps, norm, loss, n_iter
        self.n_restarts, self.rho, self.eot_iter, self.max_batch = n_restarts, rho, eot_iter, max_batch

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return self.attack(model, x, y, generator).x_adv

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator) -> APGDOutcome:
        """``perturb`` that also says which examples were fooled and which had zero gradients."""
        with torch.no_grad():
            outcome = APGDOutcome.start(x, y, model(x))
        for _ in range(self.n_restarts):
            todo = outcome.unfooled()
            if len(todo) == 0:
                break
            self.run_rows(model, x, y, todo, torch.zeros_like(todo), LOSSES[self.loss], generator, outcome)
        return outcome

    def run_rows(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor,
                 target: torch.Tensor, loss_fn: LossFn, generator: torch.Generator, outcome: APGDOutcome) -> None:
        """One APGD trajectory per row r (example ``owner[r]``, target class ``target[r]``), in
        chunks of at most ``max_batch`` rows; rows of examples fooled meanwhile are skipped."""
        for rows in even_chunks(len(owner), self.max_batch or default_max_batch(x.device)):
            alive = ~outcome.fooled[owner[rows]]
            _run_trajectories(self, model, x, y, owner[rows][alive], target[rows][alive], loss_fn, generator, outcome)


@ATTACKS.register("apgd-dlr")
def apgd_dlr(eps: float = 8 / 255, **params) -> APGD:
    """APGD on the (untargeted) DLR loss (Sec. 4); with ``eot_iter=20`` the second attack of
    AutoAttack's "rand" version."""
    return APGD(eps, loss="dlr", **params)


@ATTACKS.register("apgd-t")
class APGDTargeted(APGD):
    r"""APGD-T: APGD on the targeted DLR loss (Sec. 4) towards each of the ``n_target_classes``
    classes with the highest clean logits after the top one (Croce & Hein 2020, Sec. 5), one run
    of ``n_iter`` iterations per target and restart. All targets of an example run side by side in
    one batch (up to ``max_batch`` rows); an example is fooled when any of its runs fools it."""

    def __init__(self, eps: float = 8 / 255, *, n_target_classes: int = 9, **params) -> None:
        check_positive_ints(n_target_classes=n_target_classes)
        super().__init__(eps, **params)
        self.loss, self.n_target_classes = "dlr-targeted", n_target_classes

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator) -> APGDOutcome:
        with torch.no_grad():
            clean_logits = model(x)
        outcome = APGDOutcome.start(x, y, clean_logits)
        ranked = clean_logits.argsort(dim=1, descending=True)
        n_targets = min(self.n_target_classes, ranked.shape[1] - 1)
        for _ in range(self.n_restarts):
            todo = outcome.unfooled()
            if len(todo) == 0:
                break
            # target-major order: with chunking, every example first meets its most likely wrong class
            owner = todo.repeat(n_targets)
            target = ranked[todo, 1:n_targets + 1].T.flatten()
            self.run_rows(model, x, y, owner, target, targeted_dlr, generator, outcome)
        return outcome


def _loss_gradient_logits(model: nn.Module, loss_fn: LossFn, x_adv: torch.Tensor, y: torch.Tensor,
                          target: torch.Tensor, eot_iter: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, gradient and logits at ``x_adv``, averaged over ``eot_iter`` forward passes."""
    x_adv = x_adv.detach().requires_grad_(True)
    loss_sum = grad_sum = logit_sum = 0
    for _ in range(eot_iter):
        logits = model(x_adv).float()
        loss = loss_fn(logits, y, target)
        grad_sum = grad_sum + torch.autograd.grad(loss.sum(), x_adv)[0]
        loss_sum = loss_sum + loss.detach()
        logit_sum = logit_sum + logits.detach()
    return loss_sum / eot_iter, grad_sum / eot_iter, logit_sum / eot_iter


def _start_points(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    if norm == "Linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        size = u.flatten(1).abs().amax(1)
    else:
        u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        size = u.flatten(1).norm(dim=1)
    return (x + eps * u / (size.view(-1, 1, 1, 1) + 1e-12)).clamp(0, 1)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return grad.sign()
    return grad / (grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)


def _run_trajectories(attack: APGD, model: nn.Module, x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor,
                      target: torch.Tensor, loss_fn: LossFn, generator: torch.Generator,
                      outcome: APGDOutcome) -> None:
    """Algorithm 1 on a batch of rows; a row leaves the batch when its example is fooled."""
    if len(owner) == 0:
        return
    eps, norm, n_iter = attack.eps, attack.norm, attack.n_iter
    project = project_linf if norm == "Linf" else project_l2
    x_rows, y_rows = x[owner], y[owner]
    x_adv = _start_points(x_rows, eps, norm, generator)
    loss, grad, logits = _loss_gradient_logits(model, loss_fn, x_adv, y_rows, target, attack.eot_iter)
    outcome.zero_gradient[owner[grad.flatten(1).abs().amax(1) == 0]] = True
    n = len(owner)
    s = {
        "x": x_rows, "y": y_rows, "target": target, "owner": owner,
        "x_adv": x_adv, "x_prev": x_adv, "grad": grad, "loss": loss,
        "x_best": x_adv, "grad_best": grad, "loss_best": loss,
        "step": torch.full((n, 1, 1, 1), 2.0 * eps, device=x.device, dtype=x.dtype),
        "rises": torch.zeros(n, device=x.device),
        "best_at_checkpoint": loss,
        "halved_at_checkpoint": torch.zeros(n, dtype=torch.bool, device=x.device),
    }
    s = _drop_fooled(s, x_adv, logits, outcome)
    marks = checkpoints(n_iter)
    interval = {mark: mark - previous for previous, mark in zip(marks, marks[1:])}
    for k in range(n_iter):
        if len(s["owner"]) == 0:
            return
        alpha = 1.0 if k == 0 else MOMENTUM
        x_k = s["x_adv"]
        z = project(x_k + s["step"] * _direction(s["grad"], norm), s["x"], eps)
        x_next = project(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - s["x_prev"]), s["x"], eps)
        loss, grad, logits = _loss_gradient_logits(model, loss_fn, x_next, s["y"], s["target"], attack.eot_iter)
        s["rises"] = s["rises"] + (loss > s["loss"]).float()
        improved = loss > s["loss_best"]
        s["x_best"] = torch.where(improved.view(-1, 1, 1, 1), x_next, s["x_best"])
        s["grad_best"] = torch.where(improved.view(-1, 1, 1, 1), grad, s["grad_best"])
        s["loss_best"] = torch.where(improved, loss, s["loss_best"])
        s.update(x_prev=x_k, x_adv=x_next, grad=grad, loss=loss)
        if k + 1 in interval:
            _review_step_size(s, attack.rho * interval[k + 1])
        s = _drop_fooled(s, x_next, logits, outcome)
    if len(s["owner"]):
        rows, examples = _first_row_per_example(s["owner"], torch.ones_like(s["owner"], dtype=torch.bool))
        outcome.x_adv[examples] = s["x_best"][rows]


def _review_step_size(s: dict[str, torch.Tensor], min_rises: float) -> None:
    """Sec. 3 at a checkpoint: halve η and go back to x_max under Condition 1 or 2."""
    oscillating = s["rises"] < min_rises
    stalled = ~s["halved_at_checkpoint"] & (s["loss_best"] <= s["best_at_checkpoint"])
    halve = oscillating | stalled
    back = halve.view(-1, 1, 1, 1)
    s["step"] = torch.where(back, s["step"] / 2, s["step"])
    s["x_adv"] = torch.where(back, s["x_best"], s["x_adv"])
    s["grad"] = torch.where(back, s["grad_best"], s["grad"])
    s["loss"] = torch.where(halve, s["loss_best"], s["loss"])
    s["halved_at_checkpoint"] = halve
    s["best_at_checkpoint"] = s["loss_best"]
    s["rises"] = torch.zeros_like(s["rises"])


def _drop_fooled(s: dict[str, torch.Tensor], x_adv: torch.Tensor, logits: torch.Tensor,
                 outcome: APGDOutcome) -> dict[str, torch.Tensor]:
    """Record the first adversarial iterate of each newly fooled example; keep the other rows."""
    fooled = logits.argmax(1) != s["y"]
    if not bool(fooled.any()):
        return s
    rows, examples = _first_row_per_example(s["owner"], fooled)
    outcome.x_adv[examples] = x_adv[rows]
    outcome.fooled[examples] = True
    keep = ~outcome.fooled[s["owner"]]
    return {name: value[keep] for name, value in s.items()}


def _first_row_per_example(owner: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each example owning a masked row, its first such row (deterministic, unlike an
    assignment through duplicate indices)."""
    rows = mask.nonzero().flatten()
    examples, which = torch.unique(owner[rows], return_inverse=True)
    first = torch.full((len(examples),), len(owner), device=owner.device, dtype=torch.long)
    first.scatter_reduce_(0, which, rows, reduce="amin")
    return first, examples
