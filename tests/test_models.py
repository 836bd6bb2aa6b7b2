"""advlib.models: every registered architecture, both channel counts, normalisation inside the model."""
from __future__ import annotations

import importlib.util
from pathlib import Path

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


# --- the papers' architectures, checked against facts read from the authors' code ---------------------

def test_mobilenetv2_is_the_saad_students_network():
    """SAAD's MobileNetV2 (kuangliu's CIFAR model): 2,296,922 parameters for 10 classes, plain ReLU,
    and a 1x1 conv + BN shortcut on the stride-1 blocks that change width (blocks 0, 1, 10, 16)."""
    net = models.build("mobilenetv2", 10, 3).net
    assert models.count_parameters(net) == 2_296_922
    assert not any(isinstance(m, torch.nn.ReLU6) for m in net.modules())
    assert [i for i, block in enumerate(net.blocks) if len(block.shortcut)] == [0, 1, 10, 16]
    # ReLU does not saturate at 6: a large stem activation reaches the first block unclipped
    seen = []
    net.blocks[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].max().item()))
    with torch.no_grad():
        net.conv.weight.mul_(1000)
        net.eval()(torch.ones(1, 3, 32, 32))
    assert seen[0] > 6


def test_resnet18_cifar_is_lbgats_guide():
    """LBGAT's ResNet18_cifar: strides 1/1/2/2, so the last stage sees 8x8 maps (4x4 in resnet18),
    with resnet18's parameter shapes."""
    shapes = {}
    for name in ("resnet18", "resnet18_cifar"):
        net = models.build(name, 10, 3).net.eval()
        net.layers[-1].register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        net(torch.rand(1, 3, 32, 32))
    assert shapes == {"resnet18": (1, 512, 4, 4), "resnet18_cifar": (1, 512, 8, 8)}
    a, b = models.build("resnet18", 10, 3).state_dict(), models.build("resnet18_cifar", 10, 3).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def _pyautoattack_example():
    """AutoAttack's example ResNet-18 (kuangliu's layout) and the checkpoint shipped with it."""
    spec = importlib.util.find_spec("pyautoattack")
    folder = Path(spec.origin).parent / "examples"
    module_spec = importlib.util.spec_from_file_location("pyautoattack_example_resnet", folder / "resnet.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    reference = module.ResNet18()
    state = torch.load(folder / "model_test.pt", map_location="cpu", weights_only=True)
    reference.load_state_dict(state)
    return reference.eval(), state, folder / "model_test.pt"


def test_reference_resnet18_checkpoint_gives_identical_logits():
    reference, state, path = _pyautoattack_example()
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        for checkpoint in (path, state, {"state_dict": {f"module.{k}": v for k, v in state.items()}}):
            assert torch.equal(models.load_reference("resnet18", checkpoint)(x), expected)


def test_reference_checkpoint_errors_name_the_key():
    _, state, _ = _pyautoattack_example()
    with pytest.raises(ValueError, match="missing, the first 'layers.4.bn1.weight'"):
        models.load_reference("resnet18", {k: v for k, v in state.items() if k != "layer3.0.bn1.weight"})
    with pytest.raises(ValueError, match="unexpected, the first 'extra.weight'"):
        models.load_reference("resnet18", {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="'linear.weight' has shape \\(10, 512\\).*num_classes \\(100\\)"):
        models.load_reference("resnet18", state, num_classes=100)
    with pytest.raises(ValueError, match="no reference layout is known for 'resnet56'"):
        models.load_reference("resnet56", state)


def _reference_keys_from_description(name: str) -> list[str]:
    """The state_dict keys of the authors' networks as their code names them (kuangliu's MobileNetV2;
    TRADES's WideResNet with its unused ``sub_block1``), written out from the layout."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    if name == "mobilenetv2":
        keys = ["conv1.weight", *(f"bn1.{b}" for b in bn)]
        for i in range(17):
            for layer in (1, 2, 3):
                keys += [f"layers.{i}.conv{layer}.weight", *(f"layers.{i}.bn{layer}.{b}" for b in bn)]
            if i in (0, 1, 10, 16):
                keys += [f"layers.{i}.shortcut.0.weight", *(f"layers.{i}.shortcut.1.{b}" for b in bn)]
        return keys + ["conv2.weight", *(f"bn2.{b}" for b in bn), "linear.weight", "linear.bias"]
    keys = ["conv1.weight"]
    for group in ("block1", "sub_block1", "block2", "block3"):
        for i in range(5):
            prefix = f"{group}.layer.{i}"
            keys += [*(f"{prefix}.bn1.{b}" for b in bn), f"{prefix}.conv1.weight",
                     *(f"{prefix}.bn2.{b}" for b in bn), f"{prefix}.conv2.weight"]
            if i == 0:
                keys.append(f"{prefix}.convShortcut.weight")
    return keys + [*(f"bn1.{b}" for b in bn), "fc.weight", "fc.bias"]


@pytest.mark.parametrize("name", ["mobilenetv2", "wrn34_10"])
def test_reference_layouts_cover_every_tensor(name):
    """Every key of the authors' layout maps onto one advlib tensor of the same shape (TRADES's unused
    ``sub_block1`` is dropped), and the loaded model holds exactly those tensors."""
    torch.manual_seed(0)
    donor = models.build(name, 10, 3).net.state_dict()
    reference_keys = _reference_keys_from_description(name)
    renamed = {key: models.reference_weights._renamer(name, 34)(key) for key in reference_keys}
    kept = {key: target for key, target in renamed.items() if target is not None}
    assert sorted(kept.values()) == sorted(donor), "a bijection onto advlib's keys"
    assert all(key.startswith("sub_block1.") for key, target in renamed.items() if target is None)
    checkpoint = {key: donor[target].clone() if target else torch.zeros(1) for key, target in renamed.items()}
    loaded = models.load_reference(name, checkpoint).net.state_dict()
    assert all(torch.equal(loaded[target], donor[target]) for target in donor)
