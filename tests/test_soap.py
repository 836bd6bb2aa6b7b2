"""SOAP-RP (Shi, Holtz & Mishne 2021): the rotations, both auxiliary losses and the training loss
worked by hand, and the purifier's invariants (budget, range, ε_min-aux choice, BPDA gradient)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlib import models
from advlib.defenses import build, soap
from advlib.defenses.soap import (SOAPNetwork, SOAPPurifier, rotation_purification_loss, rotation_training_loss,
                                  rotations)


def tiny_network(seed: int = 0) -> SOAPNetwork:
    torch.manual_seed(seed)
    return SOAPNetwork(models.build("small_cnn", 10, 1, width=4)).eval()


def test_rotations_turn_each_image_a_quarter_at_a_time():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    rotated, targets = rotations(image)
    # torch.rot90 turns counter-clockwise: the top-right pixel moves to the top-left
    expected = [[[1, 2], [3, 4]], [[2, 4], [1, 3]], [[4, 3], [2, 1]], [[3, 1], [4, 2]]]
    assert rotated[:, 0].tolist() == expected
    assert targets.tolist() == [0, 1, 2, 3]


def test_rotations_keep_each_rotation_of_the_batch_together():
    x = torch.rand(3, 1, 4, 4)
    rotated, targets = rotations(x)
    assert targets.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert torch.equal(rotated[:3], x)
    assert torch.equal(rotated[3:6], torch.rot90(x, 1, dims=(2, 3)))


def test_rotations_refuse_non_square_images():
    with pytest.raises(ValueError, match="square"):
        rotations(torch.rand(2, 1, 4, 6))


def test_training_loss_sums_the_cross_entropy_over_the_four_rotations():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 3.0]])
    targets = torch.tensor([0, 1, 2, 3])  # one image, its four rotations
    by_hand = -(math.log(math.e ** 2 / (math.e ** 2 + 3)) + math.log(math.e / (math.e + 3)) + math.log(1 / 4)
                + math.log(math.e ** 3 / (math.e + 2 + math.e ** 3)))
    assert rotation_training_loss(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)


def test_purification_loss_is_the_squared_error_of_the_softmax_per_image():
    # two images: rotations of image 0 are rows 0, 2, 4, 6 and of image 1 rows 1, 3, 5, 7
    logits = torch.zeros(8, 4)
    logits[1, 0] = 100.0  # image 1, rotation 0: all its mass on the right class
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = rotation_purification_loss(logits, targets)
    uniform = (0.75 ** 2 + 3 * 0.25 ** 2) / 4  # softmax (1/4, …) against a one-hot, averaged over 4 classes
    assert loss.tolist() == pytest.approx([uniform, (0 + 3 * uniform) / 4], rel=1e-6)


def test_soap_training_loss_is_the_class_loss_plus_alpha_times_the_rotation_loss():
    net = tiny_network().train()
    x, y = torch.rand(5, 1, 32, 32), torch.randint(0, 10, (5,))
    trainer = build("soap-rp", alpha=0.3, noise_sigma=0.0)
    loss, logits = trainer(net, x, y, 0)
    rotated = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    features = net.features(torch.cat(rotated))
    rotation_log_p = F.log_softmax(net.rotation(features), 1).view(4, 5, 4)
    rotation_nll = -sum(rotation_log_p[k, :, k] for k in range(4)).mean()
    expected = F.cross_entropy(net.classify(features[:5]), y) + 0.3 * rotation_nll
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logits.shape == (5, 10)


def test_soap_training_noise_is_seeded_by_epoch_and_clipped(monkeypatch):
    net = tiny_network().eval()
    x, y = torch.ones(4, 1, 32, 32), torch.zeros(4, dtype=torch.long)
    first = build("soap-rp", noise_sigma=0.5, seed=1)(net, x, y, 2)[0]
    again = build("soap-rp", noise_sigma=0.5, seed=1)(net, x, y, 2)[0]
    other_epoch = build("soap-rp", noise_sigma=0.5, seed=1)(net, x, y, 3)[0]
    assert first.item() == again.item() and first.item() != other_epoch.item()
    seen = []
    monkeypatch.setattr(soap, "rotations", lambda images: (seen.append(images) or rotations(images)))
    build("soap-rp", noise_sigma=0.5, seed=1)(net, x, y, 2)
    noisy = seen[0]
    assert noisy.max() == 1.0 and noisy.min() >= 0.0 and (noisy < 1.0).any()  # noise added, then clipped


@pytest.mark.parametrize("bad", [{"alpha": -1.0}, {"noise_sigma": -0.1}])
def test_soap_training_refuses_negative_settings(bad):
    with pytest.raises(ValueError, match="≥ 0"):
        build("soap-rp", **bad)


def test_the_rotation_head_sits_beside_the_class_head():
    classifier = models.build("resnet20", 10, 3)
    net = SOAPNetwork(classifier)
    assert net.classify.out_features == 10 and net.rotation.in_features == net.classify.in_features == 64
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert net.rotation_logits(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="no nn.Linear"):
        SOAPNetwork(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_purified_images_stay_in_their_own_budget_and_in_range():
    purifier = SOAPPurifier(tiny_network(), [0, 2 / 255, 6 / 255], step_size=4 / 255, steps=3)
    x = torch.rand(6, 1, 32, 32)
    x[0] = 0.0  # at the edge of the range, where the clip matters
    purified = purifier(x)
    budgets = torch.tensor(purifier.budgets)[purifier.choose(x)[1]]
    assert ((purified - x).abs().flatten(1).amax(1) <= budgets + 1e-6).all()
    assert purified.min() >= 0 and purified.max() <= 1


def test_purifying_in_chunks_changes_nothing(monkeypatch):
    purifier = SOAPPurifier(tiny_network(2), [0, 2 / 255, 6 / 255], step_size=2 / 255, steps=2)
    x = torch.rand(7, 1, 32, 32)
    whole_images, whole_losses = purifier.purify_all(x)
    monkeypatch.setattr(soap, "PASS_IMAGES", 2 * 4 * 3)  # three images per backward pass
    images, losses = purifier.purify_all(x)
    assert torch.allclose(images, whole_images, atol=1e-6) and torch.allclose(losses, whole_losses, atol=1e-6)
    assert purifier.purify_all(x[:0])[0].shape == (3, 0, 1, 32, 32)


def test_each_image_keeps_the_smallest_budget_that_minimises_its_auxiliary_loss():
    net = tiny_network(3)
    budgets = [0, 2 / 255, 4 / 255, 8 / 255]
    x = torch.rand(8, 1, 32, 32)
    purifier = SOAPPurifier(net, budgets, step_size=2 / 255, steps=4)
    # each budget on its own, as a separate purifier: the loss its purified images reach
    alone = torch.stack([SOAPPurifier(net, [b], step_size=2 / 255, steps=4).purify_all(x)[1][0] for b in budgets])
    _, chosen, reached = purifier.choose(x)
    best = alone.min(0).values
    assert torch.allclose(reached, best, atol=1e-6)
    for i, k in enumerate(chosen.tolist()):
        assert alone[k, i] == pytest.approx(best[i].item(), abs=1e-6)
        assert all(alone[j, i] > best[i] + 1e-7 for j in range(k))
    # the budget 0 is among the candidates, so purification never raises the auxiliary loss
    assert (purifier.auxiliary_loss(purifier(x)) <= purifier.auxiliary_loss(x) + 1e-6).all()


def test_one_step_is_a_signed_gradient_step_against_the_auxiliary_loss():
    net = tiny_network(5)
    x = torch.rand(3, 1, 32, 32) * 0.5 + 0.25  # away from the range's edges
    step = 1 / 255
    purifier = SOAPPurifier(net, [4 / 255], step_size=step, steps=1)
    x_grad = x.clone().requires_grad_(True)
    gradient, = torch.autograd.grad(purifier.auxiliary_loss(x_grad).sum(), x_grad)
    assert torch.allclose(purifier.purify_all(x)[0][0], x - step * gradient.sign())


def test_a_zero_budget_leaves_the_images_unchanged():
    x = torch.rand(4, 1, 32, 32)
    assert torch.equal(SOAPPurifier(tiny_network(), [0.0], step_size=4 / 255, steps=5)(x), x)


def test_autograd_through_the_purifier_is_bpda():
    """The sign steps and the argmin have zero derivative: P(x) carries the identity's gradient,
    also on pixels at the ends of the range, where BPDA passes it too."""
    purifier = SOAPPurifier(tiny_network(), [0, 4 / 255], step_size=4 / 255, steps=2)
    x = torch.rand(3, 1, 32, 32)
    x[:, :, :8] = 0.0
    x[:, :, -8:] = 1.0
    x.requires_grad_(True)
    weights = torch.randn(3, 1, 32, 32)
    gradient, = torch.autograd.grad((purifier(x) * weights).sum(), x)
    assert torch.equal(gradient, weights)
    assert torch.equal(purifier(x).detach(), purifier.choose(x)[0])  # and the values are the purified images


@pytest.mark.parametrize("budgets, step, steps", [([], 1.0, 1), ([2 / 255, 1 / 255], 1.0, 1), ([1 / 255, 1 / 255], 1.0, 1), ([-1.0], 1.0, 1),
                                                  ([0.0], 0.0, 1), ([0.0], 1.0, -1)])
def test_the_purifier_refuses_bad_settings(budgets, step, steps):
    with pytest.raises(ValueError):
        SOAPPurifier(tiny_network(), budgets, step, steps)


def test_the_network_stays_in_eval_mode_inside_the_purifier():
    purifier = SOAPPurifier(tiny_network(), [0.0], 1 / 255, 1).train()
    assert not purifier.network.training


def test_an_evaluation_attacks_the_purifier_unfolded():
    """torch.fx cannot trace the purification, so ``folded`` (chapters 10-11) returns it as it is."""
    from advlib.evaluation import Purified
    from advlib.evaluation.protocols import folded
    purifier = SOAPPurifier(tiny_network(), [0, 4 / 255], 4 / 255, 2)
    classifier = models.build("small_cnn", 10, 1, width=4).eval()
    model = folded(Purified(purifier, classifier).eval())
    assert model.purifier is purifier
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(model(x), classifier(purifier(x)), atol=1e-5)
