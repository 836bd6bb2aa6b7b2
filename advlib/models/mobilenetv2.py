"""MobileNetV2 (Sandler et al., CVPR 2018), the CIFAR variant that SAAD's authors train as a student
(``cifar10_models/mobilenet_v2.py`` of HongsinLee/saad, the widely copied kuangliu CIFAR model).

It differs from the paper's ImageNet network in four ways, all kept here because the authors'
students have them: stride 1 in the stem and in the second stage, so 32x32 inputs end at 4x4
instead of 1x1; plain ReLU instead of ReLU6; a 1x1 expansion convolution even where the expansion
factor is 1; and a shortcut on *every* stride-1 block — the identity where the width is unchanged,
a 1x1 convolution + BatchNorm where it changes (blocks 0, 1, 10 and 16) — where the paper has none.
Stride-2 blocks have no shortcut.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS, global_average_pool

# (expansion, output channels, blocks, first stride): Table 2 of the paper with the CIFAR strides.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise (stride ``stride``), 1x1 linear projection; BatchNorm after each."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        blocks, cin = [], 32
        for expansion, cout, count, stride in _STAGES:
            for i in range(count):
                blocks.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = nn.Conv2d(cin, 1280, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(1280)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        out = F.relu(self.head_bn(self.head_conv(out)))
        return self.fc(global_average_pool(out))


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return MobileNetV2(num_classes, in_channels)
