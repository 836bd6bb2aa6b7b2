"""ResNets for 32x32 images.

* ``resnet20`` / ``resnet56``: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
  Sec. 4.2 — 3 stages of n basic blocks with 16/32/64 channels (depth 6n+2), identity shortcuts
  with zero-padded channels ("option A"), 0.27M / 0.85M parameters.
* ``resnet18``: the ImageNet ResNet-18 with a 3x3 stem and no max-pool (the CIFAR variant of
  kuangliu's pytorch-cifar, used by SAAD and most adversarial-robustness code).
* ``resnet18_cifar``: LBGAT's variant with strides 1/1/2/2, DYNAT's guide.
* ``preact_resnet18``: He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS, global_average_pool


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: a 1x1 conv + BN where the shape changes
    (``projection=True``, ResNet-18), or He et al.'s parameter-free "option A" for the CIFAR
    ResNets: subsample and zero-pad the extra channels."""

    def __init__(self, cin: int, cout: int, stride: int, projection: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra_channels = stride, cout - cin
        self.shortcut = nn.Sequential()
        if projection and (stride != 1 or cin != cout):
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.pad_shortcut = not projection and (stride != 1 or cin != cout)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad_shortcut:
            return self.shortcut(x)
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.residual(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth ``6 * blocks_per_stage + 2``."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                stages.append(_BasicBlock(cin, cout, stride if i == 0 else 1, projection=False))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(3, num_classes, in_channels)


@MODELS.register("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(9, num_classes, in_channels)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b): BN-ReLU before each conv, 1x1 conv shortcut
    from the activated input where the shape changes; also the block of the Wide ResNets."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


class ResNet18(nn.Module):
    """ResNet-18 (4 stages x 2 blocks, 64-512 channels) with a 3x3 stem for 32x32 inputs; ``strides``
    are the first stride of each stage."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, preact: bool = False,
                 strides: tuple[int, int, int, int] = (1, 2, 2, 2)) -> None:
        super().__init__()
        block = PreActBlock if preact else _BasicBlock
        self.preact = preact
        self.conv = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(512 if preact else 64)
        layers, cin = [], 64
        for cout, stride in zip((64, 128, 256, 512), strides):
            layers += [block(cin, cout, stride), block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            out = F.relu(self.bn(self.layers(self.conv(x))))
        else:
            out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(global_average_pool(out))


@MODELS.register("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet18(num_classes, in_channels)


@MODELS.register("resnet18_cifar")
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """LBGAT's ``ResNet18_cifar`` (``models/resnetcifar.py`` of dvlab-research/LBGAT, copied unchanged
    into DYNAT's code), DYNAT's guide. It is :func:`resnet18` with two changes: the second stage
    keeps stride 1 (strides 1/1/2/2), so the last stage runs on 8x8 maps instead of 4x4 (about 2-4x
    the FLOPs of the later stages), and the final average pool covers those 8x8. Module names and
    parameter shapes are those of :func:`resnet18` (11.2M parameters): the same weights load into
    both, but the two compute different functions."""
    return ResNet18(num_classes, in_channels, strides=(1, 1, 2, 2))


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet18(num_classes, in_channels, preact=True)
