"""Confidence intervals and the paired test, worked by hand."""
from __future__ import annotations

import math

import pytest
import torch

from advlib.evaluation.statistics import mcnemar_exact, wilson_interval


def test_wilson_interval_by_hand():
    # p = 0.5, n = 100, z = 1.96: centre 0.5, half width 1.96·sqrt(0.0025 + 0.000096)/(1.0384) ≈ 0.0962
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    # at the edges it stays inside [0, 1] and is not a point: 0 of 20 gives (0, 0.161)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_wilson_interval_width_shrinks_like_one_over_root_n():
    widths = [high - low for low, high in (wilson_interval(n // 2, n) for n in (100, 400))]
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.02)


def test_mcnemar_exact_by_hand():
    # 8 discordant images, 7 where only the first is right: p = 2·(C(8,0)+C(8,1))/2^8 = 18/256
    first = torch.tensor([1] * 7 + [0] + [1] * 5 + [0] * 5).bool()
    second = torch.tensor([0] * 7 + [1] + [1] * 5 + [0] * 5).bool()
    assert mcnemar_exact(first, second) == pytest.approx(18 / 256)
    assert mcnemar_exact(second, first) == pytest.approx(18 / 256), "symmetric"
    assert mcnemar_exact(first, first) == 1.0
    balanced = torch.tensor([1, 0, 1, 0]).bool(), torch.tensor([0, 1, 0, 1]).bool()
    assert mcnemar_exact(*balanced) == 1.0
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact(first, second[:3])


def test_wilson_interval_stays_in_0_1_when_every_image_is_correct_or_none_is():
    """At k = n the upper end is 1 in exact arithmetic; in floating point it lands above 1 for some n
    (364 of n = 1..1999), which the clamp removes; the same for the lower end at k = 0."""
    for n in range(1, 2000):
        assert wilson_interval(n, n)[1] <= 1.0 and wilson_interval(0, n)[0] >= 0.0
