"""PGD, projected gradient descent on the negative loss (Madry et al. 2018), L∞, with restarts."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import ATTACKS
from ._checks import check_eps, project_linf
from .base import Attack
from .bim import check_step_settings, iterate_sign_steps
from .fgsm import summed_cross_entropy


@ATTACKS.register("pgd")
class PGD(Attack):
    r"""L∞ projected gradient descent (Madry et al. 2018, Sec. 2.1; the saddle-point problem it
    solves is their Sec. 2):

    .. math:: x'_0 = x + \mathcal{U}(-\varepsilon, \varepsilon)^d, \qquad
              x'_{t+1} = \Pi_{x+\mathcal{S}}\big(x'_t + \alpha\,
              \operatorname{sign}(\nabla_x L(f(x'_t), y))\big)

    with :math:`\mathcal{S}` the L∞ ball of radius ε and Π the projection onto it and onto [0, 1].
    Each run returns its last iterate. With ``restarts > 1`` the runs differ in their random start
    and are combined per example by :func:`worst_case_over_restarts`. ``random_start=False`` with
    one restart is BIM.
    """

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, restarts: int = 1,
                 random_start: bool = True, *, seed: int = 0, model_mode: str = "eval") -> None:
        check_eps(eps)
        check_step_settings(alpha, steps)
        check_restarts(restarts)
        super().__init__(seed=seed, model_mode=model_mode)
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.restarts, self.random_start = restarts, random_start

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        start = uniform_start(x, self.eps, generator) if self.random_start else x
        return iterate_sign_steps(model, x, start, summed_cross_entropy(y), self.eps, self.alpha, self.steps)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return worst_case_over_restarts(lambda xs, ys: self._run(model, xs, ys, generator), model, x, y,
                                        self.restarts)


def check_restarts(restarts: int) -> None:
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise ValueError(f"restarts must be a positive integer, got {restarts!r}")


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """x + U(−ε, ε)^d, projected onto [0, 1]: the random start of PGD and CW-∞."""
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    return project_linf(x + noise, x, eps)


def worst_case_over_restarts(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: nn.Module,
                             x: torch.Tensor, y: torch.Tensor, restarts: int) -> torch.Tensor:
    """``run(x, y) -> x_adv`` repeated ``restarts`` times (each call draws its own random start), per
    example keeping the **first run that misclassifies** it and, for an example that no run fools,
    the run with the highest final cross-entropy. Later runs attack only the examples no earlier run
    has fooled, so robust accuracy is the per-example worst case over restarts."""
    if restarts == 1:
        return run(x, y)
    best = x.clone()
    best_loss = torch.full((len(x),), -float("inf"), device=x.device)
    unfooled = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        index = unfooled.nonzero().flatten()
        if len(index) == 0:
            break
        x_run = run(x[index], y[index])
        with torch.no_grad():
            logits = model(x_run).float()
        loss = F.cross_entropy(logits, y[index], reduction="none")
        fooled = logits.argmax(1) != y[index]
        better = fooled | (loss > best_loss[index])
        best[index[better]] = x_run[better]
        best_loss[index[better]] = loss[better]
        unfooled[index[fooled]] = False
    return best
