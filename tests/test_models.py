"""advlib.models: every registered architecture, both channel counts, normalisation inside the model."""
from __future__ import annotations

import pytest
import torch

from advlib import models
from advlib.registry import UnknownNameError

CLASSIFIERS = ["resnet20", "resnet56", "resnet18", "preact_resnet18", "wrn34_10", "mobilenetv2", "small_cnn"]


def test_registry_holds_the_issue_models():
    assert set(CLASSIFIERS) <= set(models.names())


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_and_backward(name, channels):
    torch.manual_seed(0)
    model = models.build(name, num_classes=7, in_channels=channels, mean=[0.5] * channels, std=[0.25] * channels)
    x = torch.rand(2, channels, 32, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 7)
    (grad,) = torch.autograd.grad(logits.sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


@pytest.mark.parametrize("name, expected_millions", [
    ("resnet20", 0.27), ("resnet56", 0.85),  # He et al. 2016, Table 6
    ("wrn34_10", 46.2),                      # as reported by Madry-style and TRADES code bases
    ("resnet18", 11.2),
])
def test_parameter_counts_match_the_literature(name, expected_millions):
    count = models.count_parameters(models.build(name, 10, 3)) / 1e6
    assert count == pytest.approx(expected_millions, abs=0.01 * expected_millions + 0.005)


def test_resnet56_depth():
    net = models.build("resnet56", 10, 3).net
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == 56


def test_normalisation_is_inside_the_model():
    model = models.for_dataset("small_cnn", "cifar10")
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    x = mean.expand(1, 3, 32, 32)
    assert torch.allclose(model.normalize(x), torch.zeros_like(x), atol=1e-6)
    assert "normalize.mean" in model.state_dict()


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownNameError, match="known models: .*resnet56"):
        models.build("resnet57")


def test_bad_normalisation_arguments():
    with pytest.raises(ValueError, match="one per input channel"):
        models.build("resnet20", 10, 3, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="both mean and std"):
        models.build("resnet20", 10, 3, mean=[0.5, 0.5, 0.5])


def test_names_are_forgiving_about_case_and_dashes():
    assert isinstance(models.build("PreAct-ResNet18", 10, 3).net, torch.nn.Module)


def test_wide_resnet_depth_is_checked():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.build("wrn34_10", depth=33)
