"""Accuracy, predictions and confusion matrices, batched, in eval mode, without gradients."""
from __future__ import annotations

import torch
from torch import nn

from .config import autocast


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` on ``x`` (float32), computed in batches in eval mode; the mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outputs = []
        for start in range(0, len(x), batch_size):
            with autocast(device):
                outputs.append(model(x[start:start + batch_size].to(device)).float())
        return torch.cat(outputs)
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    return (predict(model, x, batch_size).argmax(1).cpu() == y.cpu()).float().mean().item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[i, j]`` = number of examples of class ``i`` predicted as ``j``."""
    index = labels.cpu() * num_classes + predictions.cpu()
    return torch.bincount(index, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    return confusion.diag().float() / confusion.sum(1).clamp_min(1).float()
