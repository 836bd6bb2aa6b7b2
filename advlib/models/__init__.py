"""Model registry: ``advlib.models.build("resnet56", num_classes=10, in_channels=3)`` (chapter 1
introduces it; each architecture says which chapter uses it).

Every classifier takes images in [0, 1]; the dataset's normalisation is the first layer of the
model (``normalize``), so attacks and ε-balls always live in pixel space and nothing normalises twice.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ..registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics kept as buffers (saved with the weights)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean, std = ([round(v, 4) for v in t.flatten().tolist()] for t in (self.mean, self.std))
        return f"mean={mean}, std={std}"


def build(name: str, num_classes: int = 10, in_channels: int = 3, *, mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None, **params) -> nn.Module:
    """Build a registered model; ``mean``/``std`` (one value per channel) add a normalisation layer.

    Classifiers come back as ``Sequential(normalize, net)``; ``params`` go to the architecture
    (e.g. ``depth``, ``widen_factor`` of ``wrn34_10``).
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    net = MODELS.build(name, num_classes=num_classes, in_channels=in_channels, **params)
    if mean is None:
        normalize: nn.Module = nn.Identity()
    else:
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values (one per input channel), "
                             f"got {len(mean)} and {len(std)}")
        normalize = Normalize(mean, std)
    return nn.Sequential(OrderedDict(normalize=normalize, net=net))


def for_dataset(name: str, dataset: str, **params) -> nn.Module:
    """``build`` with the class count, channel count and normalisation of ``dataset``."""
    from ..data import info

    meta = info(dataset)
    return build(name, meta.num_classes, meta.in_channels, mean=meta.mean, std=meta.std, **params)


def global_average_pool(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C), the mean over each map, computed as the reference implementations do
    (``avg_pool2d`` over the whole map), so that their weights give bit-identical logits here."""
    return torch.nn.functional.avg_pool2d(features, features.shape[2:]).flatten(1)


def names() -> list[str]:
    return MODELS.names()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from . import autoencoder, mobilenetv2, resnet, small_cnn, wide_resnet  # noqa: E402,F401  (registers the architectures)
from .reference_weights import load_reference  # noqa: E402,F401
