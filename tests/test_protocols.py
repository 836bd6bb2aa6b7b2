"""Who the attacker may see: a purifier's threat models (gray-box, BPDA, transfer, white-box through
f∘P) on a small purifier, BPDA's gradient worked by hand, and the randomised purifier of chapter 10."""
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


# --- batching, subsets and options that reach the attacks -------------------------------------------------

def _random_start_pgd(seed: int = 3):
    """A PGD whose random start is drawn from a generator seeded afresh at every call: its examples
    depend on how the images are split into calls, so the tests below see the batch size."""
    return attacks.build("pgd", eps=0.2, alpha=0.05, steps=2, seed=seed)


def _in_batches(attack, model, x, y, size):
    return torch.cat([attack(model, x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)])


def test_craft_calls_the_attack_once_per_batch_of_256_by_default():
    from advlib.evaluation.protocols import craft

    model, pgd = _classifier(0), _random_start_pgd()
    x = torch.rand(300, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    assert torch.equal(craft(pgd, model, x, y), _in_batches(pgd, model, x, y, 256))
    assert torch.equal(craft(pgd, model, x, y, batch_size=7), _in_batches(pgd, model, x, y, 7))
    assert not torch.equal(_in_batches(pgd, model, x, y, 7), _in_batches(pgd, model, x, y, 256))


def test_crafted_on_scores_the_target_on_examples_crafted_on_the_source_in_batches():
    from advlib.evaluation.prediction import predict

    source, target, pgd = _classifier(0), _classifier(5), _random_start_pgd()
    x = torch.rand(300, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = target(x).argmax(1)
    y[:20] = (y[:20] + 1) % 3
    for options, size in (({}, 256), ({"batch_size": 9}, 9)):
        outcome = crafted_on(source, target, x, y, pgd, **options)
        clean = predict(target, x).argmax(1) == y
        robust = clean & (predict(target, _in_batches(pgd, source, x, y, size)).argmax(1) == y)
        assert set(outcome) == {"clean", "robust"}
        assert torch.equal(outcome["clean"], clean) and torch.equal(outcome["robust"], robust), options


def test_gray_box_crafts_each_row_on_its_subset_in_batches_of_500_by_default():
    """Koo et al.'s gray-box table: a row limited by ``subsets`` to its first n images, the attack
    run on the classifier in batches (by default 500, so 600 images are two calls of the attack)."""
    from advlib.evaluation import gray_box
    from advlib.evaluation.prediction import accuracy

    classifier, pgd = _classifier(0), _random_start_pgd()
    x = torch.rand(600, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    y = classifier(Squash()(x)).argmax(1)
    purified = Purified(Squash(), classifier)
    for options, size in (({}, 500), ({"batch_size": 64}, 64)):
        table = gray_box(classifier, {"Squash": Squash()}, {"PGD": pgd, "PGD (first 50)": pgd}, x, y,
                         subsets={"PGD (first 50)": 50}, **options)
        x_adv = _in_batches(pgd, classifier, x, y, size)
        assert table["PGD"] == {"no defence": accuracy(classifier, x_adv, y), "Squash": accuracy(purified, x_adv, y),
                                "images": 600}, options
        assert table["PGD (first 50)"]["images"] == 50
        assert table["PGD (first 50)"]["Squash"] == accuracy(purified, _in_batches(pgd, classifier, x[:50], y[:50], 50),
                                                             y[:50])


def test_white_box_passes_its_options_to_the_evaluation():
    x, y = _data()
    pgd = attacks.build("pgd", eps=0.15, alpha=0.03, steps=5, seed=0)
    fgsm = attacks.build("fgsm", eps=0.15)
    report = white_box(Squash(), _classifier(0), x, y, {"FGSM": fgsm, "PGD": pgd}, cascade=False,
                       keep_adversarial=("PGD",))
    alone = robust_accuracy(Purified(Squash(), _classifier(0)).eval(), x, y, {"PGD": pgd})
    assert not report.cascade and torch.equal(report.per_attack["PGD"], alone.per_attack["PGD"])
    assert set(report.adversarial) == {"PGD"}


def test_robustness_outcomes_run_each_attack_on_its_own_and_score_autoattack_per_image():
    """Each attack on every image correct clean (not only on those an earlier attack left), and the
    AA outcome of image i from the i-th AutoAttack example, which must also be correct clean: the
    examples below are chosen so that some images wrong clean have an AA example the model gets right."""
    from advlib.evaluation import robustness_outcomes
    from advlib.evaluation.prediction import predict

    model = _classifier(0)  # it puts these images in all three classes
    pool = torch.rand(400, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    x, pool_classes = pool[:30], predict(model, pool).argmax(1)
    y, examples = predict(model, x).argmax(1), pool[100:130].clone()
    for i in range(6):  # wrong clean, with an AutoAttack "example" the model puts in class y_i
        other = (pool_classes[200:] != y[i]).nonzero()[i].item()
        y[i], examples[i] = pool_classes[200 + other], pool[200 + other]
    strong = attacks.build("pgd", eps=0.3, alpha=0.1, steps=10)
    weak = attacks.build("fgsm", eps=0.05)
    outcomes = robustness_outcomes(model, x, y, {"PGD-20": strong, "FGSM": weak}, examples)
    clean = predict(model, x).argmax(1) == y
    alone = robust_accuracy(model, x, y, {"FGSM": weak}).per_attack["FGSM"]
    assert torch.equal(outcomes["FGSM"], alone)
    assert (alone & ~outcomes["PGD-20"]).any(), "the comparison needs an image only PGD fools"
    assert torch.equal(outcomes["AA"], clean & (predict(model, examples).argmax(1) == y))
    assert (~clean & (predict(model, examples).argmax(1) == y)).any()
    assert torch.equal(outcomes["PGD-20 (AA images)"], outcomes["PGD-20"])
    assert "transfer" not in outcomes


def test_autoattack_standard_carries_the_budget_and_the_seed():
    from advlib.evaluation.protocols import autoattack_standard

    evaluation = {"autoattack_iterations": 7, "autoattack_targets": 2, "square_queries": 30}
    attack = autoattack_standard(0.1, evaluation, seed=5)
    assert type(attack).__name__ == "AutoAttack"
    assert (attack.eps, attack.version, attack.seed) == (0.1, "standard", 5)
    assert autoattack_standard(0.1, evaluation).seed == 0
    assert (attack.iterations, attack.n_target_classes, attack.square_queries) == (7, 2, 30)
    assert list(attack.attacks()) == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_purifier_threats_craft_in_batches_of_256_by_default():
    from advlib.evaluation.protocols import threat_outcomes, threat_sources

    purified, pgd = Purified(Squash(), _classifier(0)).eval(), _random_start_pgd()
    x = torch.rand(300, 1, 4, 4, generator=torch.Generator().manual_seed(8))
    y = purified(x).argmax(1)
    surrogate = _classifier(7)
    for options, size in (({}, 256), ({"batch_size": 50}, 50)):
        examples = {threat: _in_batches(pgd, source, x, y, size)
                    for threat, source in threat_sources(purified, surrogate).items()}
        expected = threat_outcomes(purified, x, y, examples)
        outcomes = purifier_threats(purified, x, y, pgd, surrogate, **options)
        assert {threat: {k: v.tolist() for k, v in o.items()} for threat, o in outcomes.items()} == {
            threat: {k: v.tolist() for k, v in o.items()} for threat, o in expected.items()}, options


def test_folding_leaves_the_model_it_was_given_as_it_was():
    """The folded copy is a copy: the model being trained keeps its layers in training mode."""
    from advlib.evaluation import folded

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3)).train()
    assert not folded(model).training
    assert all(module.training for module in model.modules())
