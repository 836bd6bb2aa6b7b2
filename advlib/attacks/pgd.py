"""PGD, projected gradient descent on the negative loss (Madry et al. 2018), L∞, with restarts."""
from __future__ import annotations

from typing import Iterator, Sequence

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

    def shares_trajectory_with(self, other: Attack) -> bool:
        """Whether ``other`` is this attack with only its number of steps changed, both single runs:
        from the same start, the shorter one returns an iterate of the longer one's trajectory."""
        return (type(self) is type(other) is PGD and self.restarts == other.restarts == 1
                and (self.eps, self.alpha, self.random_start, self.seed, self.bn_mode)
                == (other.eps, other.alpha, other.random_start, other.seed, other.bn_mode))

    def iterates(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: Sequence[int], *,
                 generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """One run's iterates :math:`x'_s` for each ``s`` of ``steps`` (non-decreasing), yielded as
        they are reached: what PGD with ``s`` steps returns from the same random start. One
        trajectory of 50 steps thus gives DYNAT's PGD-10, PGD-20 and PGD-50 columns (Table 1) for the
        cost of PGD-50. Single runs only (``restarts=1``); ``self.steps`` is not used."""
        if self.restarts != 1:
            raise ValueError(f"iterates follow one run; this PGD has restarts={self.restarts}")
        steps = list(steps)
        check_positive_ints(**{f"steps[{i}]": s for i, s in enumerate(steps)})
        if steps != sorted(steps):
            raise ValueError(f"steps must be non-decreasing, got {steps}")
        return self._follow(model, x.detach(), y, steps, generator)

    def _follow(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: list[int],
                generator: torch.Generator | None) -> Iterator[torch.Tensor]:
        current, done = None, 0
        for s in steps:
            # entered per segment, so that the caller's code between two iterates runs in its own modes
            with self.prepared(model, x, y, generator) as generator:
                if current is None:
                    current = uniform_start(x, self.eps, generator) if self.random_start else x
                current = iterate_sign_steps(model, x, current, summed_cross_entropy(y), self.eps, self.alpha,
                                             s - done)
            done = s
            yield current.detach()
