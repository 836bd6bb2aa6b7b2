"""MobileNetV2 (Sandler et al., CVPR 2018), CIFAR variant: stride 1 in the stem and in the second
stage, so 32x32 inputs end at 4x4 instead of 1x1 (as in the SAAD and RSLAD student code)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS

# (expansion, output channels, blocks, first stride), Table 2 of the paper with the CIFAR strides.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.use_residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        blocks, cin = [], 32
        for expansion, cout, count, stride in _STAGES:
            for i in range(count):
                blocks.append(_InvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6())
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.blocks(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return MobileNetV2(num_classes, in_channels)
