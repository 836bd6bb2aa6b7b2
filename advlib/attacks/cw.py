"""The Carlini–Wagner L2 attack (Carlini & Wagner 2017), with a fixed trade-off constant c."""
from __future__ import annotations

import torch
from torch import nn

from . import ATTACKS
from .base import Attack
from .primitives import margin

# atanh(±1) is infinite and tanh is flat far out: pixels at exactly 0 or 1 would never move. Carlini
# and Wagner's reference code multiplies by 0.999999 before atanh; we do the same.
TANH_SHRINK = 1 - 1e-6


@ATTACKS.register("cw")
class CW(Attack):
    r"""Carlini–Wagner L2 (Carlini & Wagner 2017, Sec. V.A), untargeted, for a fixed ``c``:

    .. math:: \min_w \ \big\|x'(w) - x\big\|_2^2 + c \cdot f(x'(w)), \qquad
              x'(w) = \tfrac12\big(\tanh(w) + 1\big),

    .. math:: f(x') = \max\big(Z(x')_y - \max_{i \neq y} Z(x')_i,\ -\kappa\big)

    (the L2 attack of their Sec. V.A: the tanh change of variables of Sec. IV.C and the loss
    :math:`f_6` of Sec. IV.A, rewritten for the untargeted case), where ``Z`` are the logits.
    Adam with learning rate ``lr`` runs ``steps`` steps from
    :math:`w_0 = \operatorname{atanh}((2x - 1) \cdot 0.999999)`.
    No binary search over ``c`` and no early abort.

    An example counts as fooled when :math:`\max_{i\neq y} Z_i - Z_y > \kappa`. The result is, per
    example, the fooling iterate with the smallest L2 distance to ``x`` (the final iterate is
    checked too); for an example never fooled it is ``x`` itself, so its perturbation is zero.
    CW is not bounded in L∞: its ε is an outcome, not a budget.
    """

    def __init__(self, c: float = 1.0, kappa: float = 0.0, steps: int = 40, lr: float = 0.01, *,
                 seed: int = 0, bn_mode: str = "eval") -> None:
        for name, value in (("c", c), ("kappa", kappa)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"the learning rate lr must be a number > 0, got {lr!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        super().__init__(seed=seed, bn_mode=bn_mode)
        self.c, self.kappa, self.steps, self.lr = c, kappa, steps, lr

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        w = torch.atanh((2 * x - 1) * TANH_SHRINK).requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=self.lr)
        best = x.clone()
        best_l2 = torch.full((len(x),), float("inf"), device=x.device)

        def keep_best(x_adv: torch.Tensor, squared_l2: torch.Tensor, logits: torch.Tensor) -> None:
            improved = (-margin(logits, y) > self.kappa) & (squared_l2 < best_l2)
            best[improved] = x_adv[improved]
            best_l2[improved] = squared_l2[improved]

        for _ in range(self.steps):
            x_adv = (torch.tanh(w) + 1) / 2
            logits = model(x_adv).float()
            squared_l2 = (x_adv - x).flatten(1).pow(2).sum(1)
            # Summed, not averaged: Adam rescales every coordinate anyway, and each example's
            # update then does not depend on the rest of the batch.
            loss = squared_l2.sum() + self.c * margin(logits, y).clamp_min(-self.kappa).sum()
            (w.grad,) = torch.autograd.grad(loss, w)
            keep_best(x_adv.detach(), squared_l2.detach(), logits.detach())
            optimizer.step()
        with torch.no_grad():
            x_adv = (torch.tanh(w) + 1) / 2
            keep_best(x_adv, (x_adv - x).flatten(1).pow(2).sum(1), model(x_adv).float())
        return best
