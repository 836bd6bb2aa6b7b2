"""Accuracy, predictions and confusion matrices, batched, in eval mode, without gradients."""
from __future__ import annotations

import torch
from torch import nn



@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` on ``x``, batched, in eval mode (restored afterwards), on the model's device.

    Always float32, without autocast: attacks are crafted in float32, so they are judged in float32
    too (a bf16 forward pass can flip examples that sit on the decision boundary). An empty ``x``
    gives an empty (0, classes) tensor: the model runs on the empty batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(x), batch_size) if len(x) else [0]
        return torch.cat([model(x[start:start + batch_size].to(device)).float() for start in starts])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (nan for no images: there is nothing to
    measure)."""
    return (predict(model, x, batch_size).argmax(1).cpu() == y.cpu()).float().mean().item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[i, j]`` = number of examples of class ``i`` predicted as ``j``."""
    index = labels.cpu() * num_classes + predictions.cpu()
    return torch.bincount(index, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    return confusion.diag().float() / confusion.sum(1).clamp_min(1).float()
