"""Who the attacker may see: a purifier's threat models (gray-box, BPDA, transfer, white-box through
f∘P) on a small purifier, BPDA's gradient worked by hand, and the randomised purifier of chapter 9."""
import torch
from torch import nn

from advlib import attacks
from advlib.evaluation import BPDAPurified, NoisyPurifier, Purified, crafted_on, purifier_threats, robust_accuracy
from advlib.evaluation.protocols import white_box


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



def test_white_box_report_is_the_plain_evaluation_of_the_composed_model():
    x, y = _data()
    pgd = attacks.build("pgd", eps=0.15, alpha=0.03, steps=5, seed=0)
    report = white_box(Squash(), _classifier(0), x, y, {"pgd": pgd}, batch_size=32)
    composed = robust_accuracy(Purified(Squash(), _classifier(0)).eval(), x, y, {"pgd": pgd}, batch_size=32)
    assert torch.equal(report.per_attack["pgd"], composed.per_attack["pgd"]) and report.clean.all()
    assert 0 < report.accuracies["pgd"] < 1
    alone = robust_accuracy(_classifier(0), x, y, {"pgd": pgd})
    assert not torch.equal(alone.clean, report.clean)  # the purifier is part of what was evaluated

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


def test_noisy_purifier_by_hand():
    """P(clip(x + σ·n)) with P the identity: the noise drawn from the global generator, added (not
    subtracted or divided), scaled by σ and clipped to [0, 1] on both sides."""
    x = torch.tensor([[[[0.0, 0.5, 1.0, 0.98]]]])
    torch.manual_seed(5)
    noise = torch.randn_like(x)
    torch.manual_seed(5)
    purified = NoisyPurifier(nn.Identity(), sigma=0.5)(x)
    assert torch.allclose(purified, (x + 0.5 * noise).clamp(0, 1))
    assert purified.min() >= 0 and purified.max() <= 1 and 0 < purified[0, 0, 0, 1] < 1


def _with_batchnorm_statistics(model: nn.Module) -> nn.Module:
    """``model`` with non-trivial BatchNorm statistics and affine parameters, in eval mode."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def test_folding_batchnorm_keeps_the_function_and_its_input_gradients():
    from advlib import models
    from advlib.evaluation import folded

    torch.manual_seed(0)
    classifier = _with_batchnorm_statistics(models.for_dataset("resnet20", "fashion-mnist"))
    purifier = _with_batchnorm_statistics(models.build("cae", in_channels=1, width=8, blocks=3, skip_every=2,
                                                       stride=2))
    purified = Purified(purifier, classifier).eval()
    fast = folded(purified)
    assert isinstance(fast, Purified)
    def batchnorms(model):
        return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    # folded after every Conv2d (those after the decoder's transposed convolutions stay), the
    # original untouched
    assert batchnorms(fast.classifier) == 0 and 0 < batchnorms(fast.purifier) < batchnorms(purifier)
    assert batchnorms(purified) == batchnorms(purifier) + batchnorms(classifier) > 0
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.arange(6) % 10
    for original, copy in ((purified, fast), (BPDAPurified(purifier, classifier).eval(),
                                              BPDAPurified(fast.purifier, fast.classifier).eval())):
        gradients = []
        for model in (original, copy):
            z = x.clone().requires_grad_(True)
            logits = model(z)
            gradients.append((logits, torch.autograd.grad(nn.functional.cross_entropy(logits, y), z)[0]))
        assert torch.allclose(gradients[0][0], gradients[1][0], atol=1e-4)
        assert torch.allclose(gradients[0][1], gradients[1][1], atol=1e-5, rtol=1e-3)


def test_robustness_outcomes_per_image():
    from advlib.evaluation import robustness_outcomes
    from advlib.evaluation.prediction import predict
    torch.manual_seed(0)
    model = _classifier(3)
    x = torch.rand(40, 1, 4, 4)
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # five images wrong clean
    pgd = attacks.build("pgd", eps=0.3, alpha=0.1, steps=10)
    grey = torch.full_like(x[:8], 0.5)  # "AutoAttack's examples" of the first 8 images: one grey image
    outcomes = robustness_outcomes(model, x, y, {"PGD-20": pgd}, grey, transfer_to=model)
    correct = predict(model, x).argmax(1) == y
    assert torch.equal(outcomes["clean"], correct)
    assert torch.equal(outcomes["AA"], correct[:8] & (predict(model, grey).argmax(1) == y[:8]))
    assert torch.equal(outcomes["PGD-20 (AA images)"], outcomes["PGD-20"][:8])
    assert not (outcomes["PGD-20"] & ~outcomes["clean"]).any(), "robust implies correct clean"
    fooled = int((outcomes["clean"] & ~outcomes["PGD-20"]).sum())
    assert len(outcomes["transfer"]) == fooled > 0, "one entry per x' that fools the model"
    assert outcomes["transfer"].all(), "an example that fools the model fools the model"
