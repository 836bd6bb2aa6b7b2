"""The evaluation checklist as code: every check with a case that passes and one that fails, and a
gradient-masking model that the checklist catches end to end."""
from __future__ import annotations

import math

import torch
from torch import nn

from advlib import attacks
from advlib.evaluation import robust_accuracy, sanity

ROBUST = torch.tensor([True, True, False, False])


def test_reaches_zero():
    assert sanity.reaches_zero(torch.tensor([False] * 20), eps=0.5)["passed"]
    failed = sanity.reaches_zero(torch.tensor([True] * 5 + [False] * 15), eps=0.5)
    assert not failed["passed"] and failed["accuracy"] == 0.25


def test_iterative_beats_single_step():
    assert sanity.iterative_beats_single_step(robust_single=ROBUST, robust_iterative=ROBUST & False)["passed"]
    failed = sanity.iterative_beats_single_step(robust_single=torch.tensor([False, True, False, False]),
                                                robust_iterative=torch.tensor([True, False, False, False]))
    assert not failed["passed"] and failed["fooled only by the single step"] == 1


def test_white_box_beats_black_box():
    assert sanity.white_box_beats_black_box(robust_white=torch.tensor([False, True]), robust_black=torch.tensor([True, True]))["passed"]
    failed = sanity.white_box_beats_black_box(robust_white=torch.tensor([True, True]), robust_black=torch.tensor([False, True]))
    assert not failed["passed"] and failed["fooled only by the black-box attack"] == 1


def test_transfer_weaker_than_white_box():
    assert sanity.transfer_weaker_than_white_box(torch.tensor([False, True]), torch.tensor([True, True]))["passed"]
    assert not sanity.transfer_weaker_than_white_box(torch.tensor([True, True]), torch.tensor([True, False]))["passed"]


def test_converged():
    assert sanity.converged(ROBUST, ROBUST)["passed"]
    failed = sanity.converged(ROBUST, torch.tensor([False, False, False, False]))
    assert not failed["passed"] and failed["accuracy"] == 0.5


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(16, 2)

    def forward(self, x):
        return self.layer(x.flatten(1))


class Quantised(Linear):
    """A 'defence' that rounds its input to 4 levels: its gradient is zero almost everywhere, so
    gradient-based attacks are blind, but the model is not robust."""

    def forward(self, x):
        return super().forward(torch.round(x * 3) / 3)


def _batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=generator)
    return x, (x.flatten(1).mean(1) > 0.5).long()


def test_gradient_masking_check():
    torch.manual_seed(0)
    x, y = _batch()
    honest, masked = Linear(), Quantised()
    masked.load_state_dict(honest.state_dict())
    pgd = attacks.build("pgd", eps=0.1, alpha=0.02, steps=10)
    assert sanity.gradient_masking(honest, x, y, pgd(honest, x, y))["passed"]
    failed = sanity.gradient_masking(masked, x, y, pgd(masked, x, y))
    assert not failed["passed"] and failed["zero-gradient fraction"] > 0.9


def test_the_checklist_catches_a_gradient_masking_model_end_to_end():
    """PGD is blind on the quantised model, the black-box Square attack is not: the white-box ≥
    black-box check fails, and so does convergence, since only a stronger search finds anything."""
    torch.manual_seed(0)
    x, y = _batch()
    model = Quantised()
    with torch.no_grad():
        # class 1 exactly when the mean of the rounded pixels exceeds 0.5, the labels' rule
        model.layer.weight.copy_(torch.cat([-torch.ones(1, 16), torch.ones(1, 16)]))
        model.layer.bias.copy_(torch.tensor([8.0, -8.0]))
    eps = 0.3
    report = robust_accuracy(model, x, y, {"PGD": attacks.build("pgd", eps=eps, alpha=eps / 4, steps=10),
                                           "Square": attacks.build("square", eps=eps, n_queries=300)},
                             cascade=False)
    white, black = report.per_attack["PGD"], report.per_attack["Square"]
    assert not sanity.white_box_beats_black_box(white, black)["passed"]
    assert not sanity.converged(white, white & black)["passed"]


def _mask(robust: int, n: int = 4) -> torch.Tensor:
    return torch.arange(n) < robust


def test_every_check_row_has_its_name_its_numbers_and_passes_at_exactly_the_tolerance():
    """The rows of sanity.json, field by field (chapter 11 prints them), and the verdict at the
    boundary: a difference of exactly the tolerance (1 image of 4, tolerance 0.25, exact in floating
    point) is noise, one more image fails."""
    from advlib.evaluation import sanity

    n, tol = 4, 0.25
    everyone = torch.ones(n, dtype=torch.bool)
    rows = {
        "reaches ~0 % at a large ε": (sanity.reaches_zero(_mask(1), 0.5, tolerance=tol),
                                      sanity.reaches_zero(_mask(2), 0.5, tolerance=tol),
                                      {"eps": 0.5, "accuracy": 0.25}),
        "iterative ≥ single-step": (sanity.iterative_beats_single_step(~_mask(1), everyone, tolerance=tol),
                                    sanity.iterative_beats_single_step(~_mask(2), everyone, tolerance=tol),
                                    {"images": n, "fooled only by the single step": 1}),
        "white-box ≥ black-box": (sanity.white_box_beats_black_box(everyone, ~_mask(1), tolerance=tol),
                                  sanity.white_box_beats_black_box(everyone, ~_mask(2), tolerance=tol),
                                  {"images": n, "fooled only by the black-box attack": 1}),
        "transfer ≤ white-box": (sanity.transfer_weaker_than_white_box(everyone, ~_mask(1), tolerance=tol),
                                 sanity.transfer_weaker_than_white_box(everyone, ~_mask(2), tolerance=tol),
                                 {"images": n, "fooled only by the transferred examples": 1}),
        "converged (more steps and restarts change little)": (
            sanity.converged(_mask(2), _mask(1), tolerance=tol), sanity.converged(_mask(3), _mask(1), tolerance=tol),
            {"accuracy": 0.5, "accuracy with twice the budget and restarts": 0.25}),
    }
    for name, (at_tolerance, beyond, numbers) in rows.items():
        assert at_tolerance == {"check": name, "passed": True, **numbers}
        assert beyond["check"] == name and beyond["passed"] is False


class DeadZone(nn.Module):
    """Logits (z, −z) with z = relu(first pixel − 0.5): no gradient at all where the first pixel is
    below 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(x.flatten(1)[:, :1] - 0.5)
        return torch.cat([z, -z], 1)


def test_gradient_masking_row_by_hand():
    """Image 0 sits in the dead zone (zero gradient, and its loss cannot rise); the others do not.
    1 image of 4 is exactly the tolerance 0.25; an attack that moves nothing fails the check."""
    from advlib.evaluation import sanity

    x = torch.full((4, 1, 2, 2), 0.3)
    x[:, 0, 0, 0] = torch.tensor([0.2, 0.9, 0.8, 0.7])
    y = torch.ones(4, dtype=torch.long)
    x_adv = x.clone()
    x_adv[:, 0, 0, 0] += 0.05  # raises z, so the loss of class 1, except in the dead zone
    row = sanity.gradient_masking(DeadZone(), x, y, x_adv, tolerance=0.25)
    assert row == {"check": "no sign of masked gradients", "passed": True, "zero-gradient fraction": 0.25,
                   "loss did not rise": 0.25}
    unmoved = sanity.gradient_masking(DeadZone(), x, y, x, tolerance=0.25)
    assert unmoved["passed"] is False and unmoved["loss did not rise"] == 1.0


def test_checks_on_no_images_report_nan():
    from advlib.evaluation import sanity

    assert math.isnan(sanity.reaches_zero(torch.zeros(0, dtype=torch.bool), 0.5)["accuracy"])
