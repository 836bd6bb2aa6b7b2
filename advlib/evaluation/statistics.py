"""How sure a number is (chapters 6-11): a binomial confidence interval for an accuracy measured on n
images, and an exact paired test for two models evaluated on the same images."""
from __future__ import annotations

import math

import torch


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (Wilson 1927) for an accuracy of ``correct``/``n``; 95 % by default.
    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or 1.
    ``(nan, nan)`` for no images."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(first: torch.Tensor, second: torch.Tensor) -> float:
    """The exact McNemar test (McNemar 1947) of two models' per-image outcomes on the same images:
    only the images where exactly one is right count, and under "equally good" each of those is a
    fair coin. Returns the two-sided p-value (1 when they never disagree)."""
    first, second = first.bool().cpu(), second.bool().cpu()
    if first.shape != second.shape:
        raise ValueError(f"the outcomes must be on the same images, got shapes {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    only_first = int((first & ~second).sum())
    only_second = int((~first & second).sum())
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    smaller = min(only_first, only_second)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2 ** discordant
    return min(1.0, 2 * tail)
