"""A small CNN (about 0.3M parameters) for tests and CPU demonstrations: three conv stages and a
linear head. Not used for any of the papers' results."""
from __future__ import annotations

from torch import nn

from . import MODELS


@MODELS.register("small_cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> nn.Module:
    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*stage(in_channels, width), *stage(width, 2 * width), *stage(2 * width, 4 * width),
                         nn.Flatten(), nn.Linear(4 * width * 16, num_classes))
