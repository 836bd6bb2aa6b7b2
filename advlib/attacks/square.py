"""Square Attack in L∞ (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search", Algorithms 1 and 2), as in
AutoAttack's standard version: margin loss, p_init = 0.8, 5000 queries, the paper's schedule of p
over 10,000 iterations without rescaling it to the query budget.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import ATTACKS
from .base import Attack
from .primitives import check_eps, check_positive_ints, margin

# Iterations after which the square's area p is halved (the schedule the paper's code uses for
# 10,000 queries, not rescaled to 5000 in AutoAttack): p = p_init / 2^j after the j-th of these.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(iteration: int, p_init: float) -> float:
    """p at a given iteration: the fraction of the image a new square covers."""
    return p_init / 2 ** sum(iteration > boundary for boundary in P_HALVINGS)


@ATTACKS.register("square")
class Square(Attack):
    r"""Random search on the vertices of the L∞ ball (Andriushchenko et al. 2020, Alg. 1 and 2).

    * Start (Alg. 2, init): vertical stripes, x̂ = clip(x + ε·s) with one random sign per
      column and channel.
    * Each iteration draws, per example, a square of side h = max(round(√(p·H·W)), 1) at a random
      position and a random sign per channel, sets the square of the perturbation to ±ε there
      (Alg. 2: δ_new = x̂ - x + 2ε·sign on the window, projected back on the ball) and keeps the
      new point if the margin loss drops, or if it misclassifies. p follows
      :func:`square_fraction`.
    * ``n_queries`` bounds the queries per example, the start included (the reference code's
      loop makes ``n_queries`` iterations after the start: one query more); an example stops at
      its first misclassified point. Only correctly classified examples are attacked.
    * A square that would change no pixel is not sent to the model: the reference code queries it
      and rejects it (its loss is the current one), so results are the same for a deterministic
      model, which Square in AutoAttack's standard version assumes. On Fashion-MNIST about a fifth
      of the iterations are such no-ops (background pixels clipped at 0). ``queries_used`` counts
      the forward passes actually made.

    Unlike the reference code, which draws one window and sign for the whole batch per iteration,
    every example gets its own, as in the paper's per-image algorithm.
    """

    def __init__(self, eps: float = 8 / 255, *, n_queries: int = 5000, p_init: float = 0.8,
                 seed: int = 0, bn_mode: str = "eval") -> None:
        check_eps(eps)
        check_positive_ints(n_queries=n_queries)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        super().__init__(seed=seed, bn_mode=bn_mode)
        self.eps, self.n_queries, self.p_init = eps, n_queries, p_init
        self._queries_used: torch.Tensor | None = None

    @property
    def queries_used(self) -> torch.Tensor | None:
        """Forward passes spent on each example by the last call."""
        return self._queries_used

    def _random_signs(self, shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return (bits * 2 - 1).to(like.dtype)

    def _square_corners(self, m: int, side: int, size: tuple[int, int], generator: torch.Generator,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Top and left edge of each example's new square, uniform over the h - side + 1 rows and
        w - side + 1 columns where it fits (Alg. 2). The reference code never draws the last of
        them: its ``random_int`` truncates a uniform number from [0, h - side)."""
        h, w = size
        top = torch.randint(0, h - side + 1, (m, 1), generator=generator, device=device)
        left = torch.randint(0, w - side + 1, (m, 1), generator=generator, device=device)
        return top, left

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        eps = self.eps
        self._queries_used = torch.zeros(n, dtype=torch.long, device=x.device)
        x_adv = x.clone()
        # the examples still attacked, compacted; an example leaves when it is fooled
        index = (model(x).argmax(1) == y).nonzero().flatten()
        x_clean, y_left = x[index], y[index]
        stripes = self._random_signs((len(index), c, 1, w), generator, x)
        x_best = (x_clean + eps * stripes).clamp(0, 1)
        best_loss = margin(model(x_best).float(), y_left)
        queries = torch.ones_like(y_left)
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        for iteration in range(self.n_queries):
            fooled = best_loss <= 0
            if bool(fooled.any()) or iteration == self.n_queries - 1:
                x_adv[index] = x_best
                self._queries_used[index] = queries
                left = ~fooled
                index, x_clean, y_left, x_best, best_loss, queries = (
                    t[left] for t in (index, x_clean, y_left, x_best, best_loss, queries))
            if len(index) == 0 or iteration == self.n_queries - 1:
                break
            side = min(max(round(math.sqrt(square_fraction(iteration, self.p_init) * h * w)), 1), h, w)
            m = len(index)
            top, left_edge = self._square_corners(m, side, (h, w), generator, x.device)
            inside = (((rows >= top) & (rows < top + side))[:, None, :, None]
                      & ((cols >= left_edge) & (cols < left_edge + side))[:, None, None, :])
            signs = self._random_signs((m, c, 1, 1), generator, x)
            candidate = torch.where(inside, x_best + 2 * eps * signs, x_best)
            candidate = torch.min(torch.max(candidate, x_clean - eps), x_clean + eps).clamp_(0, 1)
            # a square that changes no pixel (its sign already there, or clipped away) would be
            # answered with the current loss and rejected: skip the model for it
            changed = (candidate != x_best).flatten(1).any(1)
            asked = changed.nonzero().flatten()
            loss = best_loss.index_put((asked,), margin(model(candidate[asked]).float(), y_left[asked]))
            queries += changed
            # Alg. 1 also keeps a misclassified point; with the margin loss it is already lower,
            # since the current loss is positive while the image is attacked
            accept = changed & (loss < best_loss)
            x_best = torch.where(accept.view(-1, 1, 1, 1), candidate, x_best)
            best_loss = torch.where(accept, loss, best_loss)
        return x_adv
