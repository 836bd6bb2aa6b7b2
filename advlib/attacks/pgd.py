"""PGD, projected gradient descent on the negative loss (Madry et al. 2018), L∞, with restarts."""
from __future__ import annotations

import torch
from torch import nn

from . import ATTACKS
from .base import Attack
from .primitives import (check_eps, check_positive_ints, check_step_settings, iterate_sign_steps,
                         summed_cross_entropy, uniform_start, worst_case_over_restarts)


@ATTACKS.register("pgd")
class PGD(Attack):
    r"""L∞ projected gradient descent (Madry et al. 2018, Sec. 2.1; the saddle-point problem it
    solves is their Sec. 2):

    .. math:: x'_0 = x + \mathcal{U}(-\varepsilon, \varepsilon)^d, \qquad
              x'_{t+1} = \Pi_{x+\mathcal{S}}\big(x'_t + \alpha\,
              \operatorname{sign}(\nabla_x L(f(x'_t), y))\big)

    with :math:`\mathcal{S}` the L∞ ball of radius ε and Π the projection onto it and onto [0, 1].
    Each run returns its last iterate. With ``restarts > 1`` the runs differ in their random start
    and are combined per example by :func:`~advlib.attacks.primitives.worst_case_over_restarts`. ``random_start=False`` with
    one restart is BIM.
    """

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, restarts: int = 1,
                 random_start: bool = True, *, seed: int = 0, bn_mode: str = "eval") -> None:
        check_eps(eps)
        check_step_settings(alpha, steps)
        check_positive_ints(restarts=restarts)
        super().__init__(seed=seed, bn_mode=bn_mode)
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.restarts, self.random_start = restarts, random_start

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        start = uniform_start(x, self.eps, generator) if self.random_start else x
        return iterate_sign_steps(model, x, start, summed_cross_entropy(y), self.eps, self.alpha, self.steps)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return worst_case_over_restarts(lambda xs, ys: self._run(model, xs, ys, generator), model, x, y,
                                        self.restarts)
