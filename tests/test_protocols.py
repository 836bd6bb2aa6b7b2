"""Who the attacker may see: a purifier's threat models (gray-box, BPDA, transfer, white-box through
f∘P) on a small purifier, BPDA's gradient worked by hand, and the randomised purifier of chapter 9."""
import torch
from torch import nn

from advlib import attacks
from advlib.evaluation import BPDAPurified, NoisyPurifier, Purified, crafted_on, purifier_threats


class Squash(nn.Module):
    """A smooth purifier that moves pixels: x ↦ mirror image of x + 0.5·(sigmoid(6(x − 0.5)) − x). An
    attacker who ignores it perturbs the wrong pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.5 * (torch.sigmoid(6 * (x - 0.5)) - x)).flip(-1)


def _classifier(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(96, 1, 4, 4, generator=generator)
    return x, _classifier(0)(Squash()(x)).argmax(1)  # every image correct clean through f∘P


def test_white_box_through_the_purifier_is_at_least_as_strong_as_every_other_threat_per_image():
    x, y = _data()
    purified = Purified(Squash(), _classifier(0)).eval()
    pgd = attacks.build("pgd", eps=0.15, alpha=0.03, steps=20, seed=0)
    threats = purifier_threats(purified, x, y, pgd, surrogate=_classifier(7))
    assert set(threats) == {"white-box", "gray-box", "BPDA", "transfer"}
    white = threats["white-box"]["robust"]
    assert threats["white-box"]["clean"].all()
    for threat in ("gray-box", "BPDA", "transfer"):
        assert not (white & ~threats[threat]["robust"]).any(), threat
    # the attack through f∘P on its own: exact gradients beat the gray-box attacker's wrong model
    direct, gray = threats["white-box"]["robust_direct"], threats["gray-box"]["robust"]
    assert direct.sum() < gray.sum()
    assert (white == direct & gray & threats["BPDA"]["robust"] & threats["transfer"]["robust"]).all()


def test_gray_box_examples_are_crafted_on_the_classifier_alone():
    x, y = _data()
    f = _classifier(0)
    purified = Purified(Squash(), f).eval()
    pgd = attacks.build("pgd", eps=0.15, alpha=0.03, steps=20, seed=0)
    expected = (f(Squash()(pgd(f, x, y))).argmax(1) == y)
    gray = purifier_threats(purified, x, y, pgd, surrogate=f)["gray-box"]
    assert gray["clean"].all() and (gray["robust"] == expected).all()
    assert (crafted_on(f, purified, x, y, pgd)["robust"] == expected).all()


def test_bpda_has_f_of_p_forward_and_the_classifiers_gradient_at_p_x():
    x, y = _data()
    f, purifier = _classifier(0), Squash()
    bpda = BPDAPurified(purifier, f)
    assert torch.allclose(bpda(x), f(purifier(x)), atol=1e-6)  # x + (P(x) − x) rounds
    x_leaf = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(bpda(x_leaf), y, reduction="sum").backward()
    # by hand: ∂L/∂x with P's Jacobian replaced by the identity = ∂L/∂z at z = P(x)
    z = purifier(x).detach().requires_grad_(True)
    nn.functional.cross_entropy(f(z), y, reduction="sum").backward()
    assert torch.allclose(x_leaf.grad, z.grad, atol=1e-6)
    x_exact = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(f(purifier(x_exact)), y, reduction="sum").backward()
    assert not torch.allclose(x_exact.grad, z.grad, atol=1e-4)  # the exact gradient has P's Jacobian


def test_noisy_purifier_draws_new_noise_on_every_call_and_stays_an_image():
    x, _ = _data()
    noisy = NoisyPurifier(Squash(), sigma=0.1)
    first, second = noisy(x), noisy(x)
    assert not torch.equal(first, second)
    assert torch.allclose(NoisyPurifier(Squash(), sigma=0.0)(x), Squash()(x))
