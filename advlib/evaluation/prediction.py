"""Predictions, accuracy and confusion matrices, batched, in eval mode, without gradients (chapter 1)."""
from __future__ import annotations

import torch
from torch import nn

from ..attacks.primitives import check_labels, in_mode


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` on ``x``, batched, in eval mode (restored afterwards), on the model's device.

    Always float32, without autocast: attacks are crafted in float32, so they are judged in float32
    too (a bf16 forward pass can flip examples that sit on the decision boundary). An empty ``x``
    gives an empty (0, classes) tensor: the model runs on the empty batch."""
    device = next(model.parameters()).device
    if x.is_floating_point() and x.numel() and not torch.isfinite(x).all():
        raise ValueError("x holds NaN or infinite pixels; check what produced them (a diverged purifier or attack)")
    starts = range(0, len(x), batch_size) if len(x) else [0]
    with in_mode(model, "eval"):
        return torch.cat([model(x[start:start + batch_size].to(device)).float() for start in starts])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (nan for no images: there is nothing to
    measure)."""
    logits = predict(model, x, batch_size)
    check_labels(y, logits.shape[1])
    return (logits.argmax(1).cpu() == y.cpu()).float().mean().item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[i, j]`` = number of examples of class ``i`` predicted as ``j``."""
    index = labels.cpu() * num_classes + predictions.cpu()
    return torch.bincount(index, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    return confusion.diag().float() / confusion.sum(1).clamp_min(1).float()
