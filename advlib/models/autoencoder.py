"""The convolutional autoencoder of the purification paper (Koo, Chae & Lee 2023, Sec. 3.1, Fig. 1;
chapter 3).

Encoder: ``blocks`` blocks of Conv → BatchNorm → ReLU; decoder: ``blocks`` blocks of
ConvTranspose → BatchNorm → ReLU, then tanh. The paper gives 15 + 15 blocks, symmetric skip
connections "similar to U-Net", and says the design follows REDNet30 (Mao et al. 2016, via
Kalaria et al. 2022); widths and strides are not in the paper, so they are parameters whose
defaults are REDNet30's: 64 channels, stride 2 in the first convolution and the last transposed
convolution, an additive skip every second block, and the input itself as the outermost skip.

Skips are added before the ReLU of the receiving decoder block. Because the last block ends in
ReLU and then tanh, the output ``tanh(relu(·))`` lies in [0, 1) and needs no rescaling: the
purifier maps images in [0, 1] to images in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn

from . import MODELS


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())


class ConvAutoencoder(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 64, blocks: int = 15, skip_every: int = 2,
                 stride: int = 2, skips: bool = True) -> None:
        super().__init__()
        if blocks < 2:
            raise ValueError(f"the autoencoder needs at least 2 blocks per side, not {blocks}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, not {stride}")
        self.blocks, self.skip_every, self.skips = blocks, skip_every, skips
        self.encoder = nn.ModuleList(
            _block(nn.Conv2d(in_channels if i == 0 else width, width, 3, stride if i == 0 else 1, 1, bias=False),
                   width)
            for i in range(blocks))
        decoder = []
        for i in range(blocks):
            last = i == blocks - 1
            out_channels = in_channels if last else width
            conv = nn.ConvTranspose2d(width, out_channels, 3, stride if last else 1, 1,
                                      output_padding=stride - 1 if last else 0, bias=False)
            decoder.append(_block(conv, out_channels))
        self.decoder = nn.ModuleList(decoder)

    def skip_source(self, decoder_index: int) -> int | None:
        """Which encoder feature (0 = the input, k = after encoder block k) the decoder block
        ``decoder_index`` (1-based) receives, if any: mirror positions, every ``skip_every`` blocks."""
        source = self.blocks - decoder_index
        return source if self.skips and source % self.skip_every == 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for block in self.encoder:
            features.append(block(features[-1]))
        h = features[-1]
        for index, block in enumerate(self.decoder, start=1):
            conv, norm, relu = block
            pre_activation = norm(conv(h))
            source = self.skip_source(index)
            if source is not None:
                pre_activation = pre_activation + features[source]
            h = relu(pre_activation)
        return torch.tanh(h)


@MODELS.register("cae")
def cae(num_classes: int | None = None, in_channels: int = 3, width: int = 64, blocks: int = 15,
        skip_every: int = 2, stride: int = 2, skips: bool = True) -> nn.Module:
    """The purifier/teacher autoencoder; ``num_classes`` is accepted for the registry and ignored."""
    return ConvAutoencoder(in_channels, width, blocks, skip_every, stride, skips)
