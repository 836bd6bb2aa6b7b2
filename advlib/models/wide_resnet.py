"""Wide ResNet (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016), pre-activation blocks.

``wrn34_10`` is the WRN-34-10 of Madry-style adversarial training, TRADES and DYNAT; ``depth`` and
``widen_factor`` select other members of the family (depth = 6n + 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS, global_average_pool
from .resnet import PreActBlock


class WideResNet(nn.Module):
    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 16, 28, 34), not {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(PreActBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(global_average_pool(out))


@MODELS.register("wrn34_10")
def wrn34_10(num_classes: int = 10, in_channels: int = 3, depth: int = 34, widen_factor: int = 10) -> nn.Module:
    return WideResNet(depth, widen_factor, num_classes, in_channels)
