"""NRP (Naseer et al. 2020): the released network's structure, SSP, the relativistic losses and the
purifier's training loss worked by hand, and the VGG-16 feature extractor's loading."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlib import models
from advlib.attacks.primitives import project_linf, uniform_start
from advlib.defenses import build, nrp
from advlib.defenses.nrp import (RRDB, Critic, NRPNetwork, NRPTraining, ResidualDenseBlock, feature_distortion,
                                 relativistic_critic_loss, relativistic_generator_loss, self_supervised_perturbation)


def test_the_released_network_has_the_released_parameter_count():
    # NRP(3, 3, 64, 23) of the authors' networks.py: conv_first, 23 RRDBs (growth 32), trunk_conv
    with torch.device("meta"):
        network = NRPNetwork(3, channels=64, blocks=23, growth=32)
    assert models.count_parameters(network) == 16_550_275


def zero_last_convolution(block: ResidualDenseBlock, bias: float = 0.0) -> None:
    nn.init.zeros_(block.convs[-1].weight)
    nn.init.constant_(block.convs[-1].bias, bias)


def test_a_dense_block_adds_a_fifth_of_its_last_convolution_to_its_input():
    block = ResidualDenseBlock(channels=4, growth=2)
    zero_last_convolution(block, bias=1.0)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(block(x), x + 0.2)


def test_a_dense_block_sees_every_earlier_output():
    block = ResidualDenseBlock(channels=4, growth=2)
    assert [conv.in_channels for conv in block.convs] == [4, 6, 8, 10, 12]
    assert [conv.out_channels for conv in block.convs] == [2, 2, 2, 2, 4]


def test_an_rrdb_of_identity_blocks_scales_its_input_by_1_2():
    rrdb = RRDB(channels=4, growth=2)
    for block in rrdb.blocks:
        zero_last_convolution(block)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(rrdb(x), 1.2 * x)  # x + 0.2 · RDB(RDB(RDB(x))) with every RDB the identity


def test_the_purifier_is_clamped_for_the_classifier_but_not_in_training():
    network = NRPNetwork(1, channels=4, blocks=1, growth=2)
    nn.init.zeros_(network.last.weight)
    nn.init.constant_(network.last.bias, 2.0)
    x = torch.rand(3, 1, 6, 6)
    assert torch.equal(network.restore(x), torch.full_like(x, 2.0))
    assert torch.equal(network(x), torch.ones_like(x))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="≥ 1"):
        NRPNetwork(3, channels=0)


def test_the_critic_gives_one_logit_per_image_of_any_size():
    critic = Critic(in_channels=1, width=4, stages=2)
    assert critic(torch.rand(3, 1, 28, 28)).shape == (3,)
    assert critic(torch.rand(2, 1, 32, 32)).shape == (2,)


def test_feature_distortion_is_the_mean_squared_difference_per_image():
    features = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])
    assert feature_distortion(features, torch.zeros_like(features)).tolist() == [2.5, 12.5]


def test_one_ssp_step_with_identity_features_moves_each_pixel_away_from_the_image():
    # with F the identity, Δ = mean((x' − x)²) and sign ∇Δ = sign(x' − x)
    x = torch.rand(4, 1, 5, 5)
    eps, step = 0.1, 0.03
    start = uniform_start(x, eps, torch.Generator().manual_seed(7))
    expected = project_linf(start + step * (start - x).sign(), x, eps)
    perturbed = self_supervised_perturbation(nn.Identity(), x, eps, step, 1, torch.Generator().manual_seed(7))
    assert torch.allclose(perturbed, expected)


def test_ssp_stays_in_the_ball_and_in_range_and_reaches_its_corners():
    x = torch.rand(4, 1, 5, 5)
    eps = 16 / 255
    perturbed = self_supervised_perturbation(nn.Identity(), x, eps, 0.01, 20, torch.Generator().manual_seed(0))
    assert (perturbed - x).abs().max() <= eps + 1e-6
    assert perturbed.min() >= 0 and perturbed.max() <= 1
    corner = torch.isclose((perturbed - x).abs(), torch.tensor(eps), atol=1e-6)
    clipped = (perturbed == 0) | (perturbed == 1)
    assert bool((corner | clipped).all())  # the maximiser of ‖x' − x‖² in the box


def test_ssp_refuses_a_negative_budget():
    with pytest.raises(ValueError, match="eps"):
        self_supervised_perturbation(nn.Identity(), torch.rand(1, 1, 2, 2), -0.1, 0.01, 1)


def test_the_relativistic_losses_by_hand():
    purified, clean = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    # −log σ(C(P(x')) − C(x)) = log(1 + e^{−(C(P) − C(x))})
    assert relativistic_generator_loss(purified, clean).item() == pytest.approx(
        (math.log(1 + math.exp(-1)) + math.log(2)) / 2)
    assert relativistic_critic_loss(clean, purified).item() == pytest.approx((math.log(1 + math.e) + math.log(2)) / 2)


def tiny_nrp(seed: int = 0) -> NRPTraining:
    torch.manual_seed(seed)
    return NRPTraining(NRPNetwork(1, channels=4, blocks=1, growth=2), Critic(1, width=4, stages=2))


def test_the_training_loss_is_the_weighted_purifier_loss_plus_the_critics():
    extractor = nn.Conv2d(1, 3, 3, padding=1)
    model, x = tiny_nrp(), torch.rand(4, 1, 8, 8)
    trainer = build("nrp", extractor=extractor, eps=0.1, step_size=0.02, steps=2, adversarial_weight=0.3,
                    pixel_weight=0.7, feature_weight=1.1, seed=5)
    loss, logits = trainer(model, x, torch.zeros(4, dtype=torch.long), 0)
    assert logits is None

    perturbed = self_supervised_perturbation(extractor, x, 0.1, 0.02, 2, build("nrp", extractor=extractor,
                                                                              seed=5).generator(x.device, 0))
    purified = model.purifier.restore(perturbed)
    real, fake = model.critic(x), model.critic(purified)
    by_hand = (0.3 * F.softplus(real - fake).mean() + 0.7 * ((purified - x) ** 2).mean()
               + 1.1 * ((extractor(purified) - extractor(x)) ** 2).mean() + F.softplus(fake - real).mean())
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_each_network_gets_the_gradient_of_its_own_loss_only():
    """The sum's gradient is the two alternating updates': the purifier's from L_P (L_adv through a
    critic held fixed), the critic's from its relativistic loss on P(x') detached."""
    extractor = nn.Conv2d(1, 3, 3, padding=1).requires_grad_(False)
    x = torch.rand(4, 1, 8, 8)
    model = tiny_nrp()
    trainer = build("nrp", extractor=extractor, eps=0.1, step_size=0.02, steps=1, seed=5)
    loss, _ = trainer(model, x, torch.zeros(4, dtype=torch.long), 0)
    loss.backward()
    joint = {name: p.grad.clone() for name, p in model.named_parameters()}

    reference = tiny_nrp()
    perturbed = self_supervised_perturbation(extractor, x, 0.1, 0.02, 1,
                                             build("nrp", extractor=extractor, seed=5).generator(x.device, 0))
    purified = reference.purifier.restore(perturbed)
    critic_copy = Critic(1, width=4, stages=2)
    critic_copy.load_state_dict(reference.critic.state_dict())
    critic_copy.requires_grad_(False)
    purifier_loss = (5e-3 * F.softplus(critic_copy(x) - critic_copy(purified)).mean() + 1e-2 * F.mse_loss(purified, x)
                     + ((extractor(purified) - extractor(x)) ** 2).mean())
    purifier_grads = torch.autograd.grad(purifier_loss, list(reference.purifier.parameters()))
    critic_loss = F.softplus(reference.critic(purified.detach()) - reference.critic(x)).mean()
    critic_grads = torch.autograd.grad(critic_loss, list(reference.critic.parameters()))
    for (name, _), grad in zip(reference.purifier.named_parameters(), purifier_grads):
        assert torch.allclose(joint[f"purifier.{name}"], grad, atol=1e-7), name
    for (name, _), grad in zip(reference.critic.named_parameters(), critic_grads):
        assert torch.allclose(joint[f"critic.{name}"], grad, atol=1e-7), name


def test_the_training_loss_refuses_negative_weights():
    with pytest.raises(ValueError, match="weights"):
        build("nrp", extractor=nn.Identity(), pixel_weight=-1.0)


def test_the_epoch_statistics_are_the_mean_terms_and_restart():
    extractor = nn.Identity()
    trainer = build("nrp", extractor=extractor, eps=0.1, step_size=0.02, steps=1)
    model = tiny_nrp()
    for _ in range(2):
        trainer(model, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), 0)
    statistics = trainer.epoch_statistics()
    assert set(statistics) == {"loss_adversarial", "loss_pixel", "loss_feature", "loss_critic"}
    assert trainer.epoch_statistics() == {}


def test_vgg16_features_load_the_first_sixteen_layers_of_a_weights_file(tmp_path):
    path = nrp.write_stand_in_vgg16_weights(tmp_path / "vgg16.pth", seed=3)
    state = torch.load(path, weights_only=True)
    assert set(state) == {f"features.{i}.{kind}" for i in (0, 2, 5, 7, 10, 12, 14) for kind in ("weight", "bias")}
    extractor = nrp.vgg16_relu3_3(path)
    x = torch.rand(2, 3, 32, 32)
    features = extractor(x)
    assert features.shape == (2, 256, 8, 8)  # relu3_3, after two max-pools
    assert features.min() >= 0  # it ends with a ReLU
    mean = torch.tensor(nrp.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(nrp.IMAGENET_STD).view(1, 3, 1, 1)
    first = F.relu(F.conv2d((x - mean) / std, state["features.0.weight"], state["features.0.bias"], padding=1))
    assert torch.allclose(extractor[1][:2](extractor[0](x)), first, atol=1e-5)
    assert not any(p.requires_grad for p in extractor.parameters())


def test_missing_vgg16_weights_offline_name_the_file_and_leave_nothing_behind(tmp_path, monkeypatch):
    def offline(url, destination, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth") as error:
        nrp.vgg16_relu3_3()
    assert "TORCH_HOME" in str(error.value)
    assert not any(path.is_file() for path in tmp_path.rglob("*"))


def test_the_quick_profile_features_are_a_small_cnns_first_stages():
    classifier = models.build("small_cnn", 10, 1, width=4, mean=[0.5], std=[0.25])
    features = nrp.features_up_to(classifier, 2)
    assert features(torch.rand(3, 1, 28, 28)).shape == (3, 8, 7, 7)
    assert not any(p.requires_grad for p in features.parameters())
    with pytest.raises(ValueError, match="conv stages"):
        nrp.features_up_to(classifier, 4)


def test_nrp_is_differentiable_end_to_end():
    """NRP is one forward pass: the white-box attacker gets its exact gradients, not BPDA's."""
    network = NRPNetwork(1, channels=4, blocks=1, growth=2).eval()
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    (gradient,) = torch.autograd.grad(network(x).square().sum(), x)
    assert gradient.abs().sum() > 0 and not torch.allclose(gradient, 2 * network(x).detach())
