"""Predictions, accuracy and confusion matrices (chapter 1), worked by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advlib.evaluation import accuracy, confusion_matrix, per_class_accuracy


def test_confusion_matrix_and_per_class_accuracy_by_hand():
    predictions, labels = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 2, 1])
    # rows: the true class; columns: the predicted one; class 3 never occurs
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    confusion = confusion_matrix(predictions, labels, 4)
    assert torch.equal(confusion, expected)
    assert torch.allclose(per_class_accuracy(confusion), torch.tensor([1.0, 0.5, 0.5, 0.0]))


def test_accuracy_by_hand_in_batches():
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 2))  # logits (a, b, 0): class 0 when a wins, 1 when b wins
    x = torch.tensor([[2.0, 1.0], [1.0, 2.0], [-1.0, -2.0], [3.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 2, 1, 1])  # the fourth is wrong: four of five
    assert accuracy(model, x, y, batch_size=2) == pytest.approx(0.8)
    assert math.isnan(accuracy(model, x[:0], y[:0]))
