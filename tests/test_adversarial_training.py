"""Adversarial training, DYNAT and AWP: every loss worked by hand on tiny tensors, the gradient
flow of DYNAT's guide/target pair, AWP's perturb-and-restore, weight averaging in the training loop
(with exact resume), CW-∞, and one step of each trainer at the paper's size on CIFAR-shaped data."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlib import attacks, config, data, defenses, models, papers, recipes
from advlib.attacks.primitives import margin
from advlib.defenses.adversarial_training import (adversarial_ce_loss, kl_clean_adversarial, maximize_linf,
                                                  trades_adversarial, trades_loss)
from advlib.defenses.awp import AdversarialWeightPerturbation, weight_perturbation
from advlib.defenses.dynat import GuideAndTarget, dynamic_labels, dynat_awp_loss, dynat_loss, guide_loss
from advlib.training import Hooks, fit

LN3 = math.log(3.0)
# softmax([0, ln 3]) = (1/4, 3/4), softmax([0, 0]) = (1/2, 1/2)
KL_QUARTER_HALF = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)


class SumOfPixels(nn.Module):
    """Two logits: 0 and ``scale`` · (sum of pixels); easy to differentiate by hand."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale * x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], dim=1)


# --- losses by hand -----------------------------------------------------------------------------------

def test_adversarial_ce_by_hand():
    assert adversarial_ce_loss(torch.tensor([[0.0, LN3]]), torch.tensor([0])).item() == pytest.approx(math.log(4))


def test_kl_clean_adversarial_by_hand_and_its_direction():
    clean, adversarial = torch.tensor([[0.0, LN3]]), torch.zeros(1, 2)
    assert kl_clean_adversarial(clean, adversarial).item() == pytest.approx(KL_QUARTER_HALF)
    reverse = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_clean_adversarial(adversarial, clean).item() == pytest.approx(reverse)
    two = kl_clean_adversarial(clean.repeat(2, 1), torch.cat([adversarial, clean]))
    assert two.item() == pytest.approx(KL_QUARTER_HALF / 2), "batch mean"
    assert kl_clean_adversarial(clean.repeat(2, 1), adversarial.repeat(2, 1), "sum").item() == pytest.approx(
        2 * KL_QUARTER_HALF)


def test_trades_loss_by_hand():
    clean, adversarial, y = torch.tensor([[0.0, LN3]]), torch.zeros(1, 2), torch.tensor([1])
    expected = -math.log(0.75) + 6 * KL_QUARTER_HALF
    assert trades_loss(clean, adversarial, y).item() == pytest.approx(expected)
    assert trades_loss(clean, adversarial, y, beta=1.0).item() == pytest.approx(-math.log(0.75) + KL_QUARTER_HALF)


def test_dynat_loss_by_hand():
    guide = torch.tensor([[2.0, 0.0], [0.0, 1.0]])   # dynamic labels (0, 1)
    target_adv = torch.tensor([[0.0, LN3], [0.0, 0.0]])
    y = torch.tensor([1, 1])
    assert dynamic_labels(guide).tolist() == [0, 1]
    guide_ce = (math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))) / 2
    target_ce = (math.log(4) + math.log(2)) / 2  # CE([0, ln 3], 0) and CE([0, 0], 1)
    assert guide_loss(guide, y).item() == pytest.approx(guide_ce)
    assert dynat_loss(guide, target_adv, y).item() == pytest.approx(guide_ce + target_ce)
    assert dynat_loss(guide, target_adv, y, label_weight=0.2).item() == pytest.approx(guide_ce + 0.2 * target_ce)


def test_dynat_awp_loss_by_hand():
    guide = torch.tensor([[0.0, 5.0]])  # dynamic label 1, while y = 0
    target_clean, target_adv, y = torch.tensor([[0.0, LN3]]), torch.zeros(1, 2), torch.tensor([0])
    guide_ce = math.log(1 + math.exp(5))
    expected = guide_ce + math.log(2) + KL_QUARTER_HALF  # λ = 1, β = 1
    assert dynat_awp_loss(guide, target_clean, target_adv, y).item() == pytest.approx(expected)
    assert dynat_awp_loss(guide, target_clean, target_adv, y, label_weight=0.2, beta=2.0).item() == pytest.approx(
        guide_ce + 0.2 * math.log(2) + 2 * KL_QUARTER_HALF)
    assert dynat_awp_loss(guide, target_clean, target_adv, y, beta=0.0).item() == pytest.approx(
        guide_ce + math.log(2))


def test_argmax_label_blocks_gradients_into_the_guide():
    torch.manual_seed(0)
    guide, target = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    guide_logits, target_logits = guide(x), target(x)
    target_term = F.cross_entropy(target_logits, dynamic_labels(guide_logits))
    assert all(g is None for g in torch.autograd.grad(target_term, list(guide.parameters()), allow_unused=True))

    total = dynat_loss(guide_logits, target_logits, y)
    from_total = torch.autograd.grad(total, list(guide.parameters()), retain_graph=True)
    from_guide_ce = torch.autograd.grad(guide_loss(guide_logits, y), list(guide.parameters()))
    for a, b in zip(from_total, from_guide_ce):
        assert torch.allclose(a, b), "G learns from CE(G(x), y) alone"
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(total, list(target.parameters())))


# --- inner maximisation -------------------------------------------------------------------------------

def test_maximize_linf_one_step_by_hand():
    # CE(·, 0) of logits (0, s·Σx) grows with every pixel when s > 0, whatever x: two ascent steps
    # of size ε from x + 0.001·N(0, I) end on the ball's face x + ε (projection), then [0, 1] clips.
    x = torch.tensor([[[[0.2, 0.5], [0.99, 0.0]]]])
    eps = 0.03
    x_adv = maximize_linf(SumOfPixels(1.0), x, lambda z: F.cross_entropy(z, torch.tensor([0])), eps=eps,
                          alpha=eps, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x_adv, (x + eps).clamp(0, 1))
    x_down = maximize_linf(SumOfPixels(-1.0), x, lambda z: F.cross_entropy(z, torch.tensor([0])), eps=eps,
                           alpha=eps, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x_down, (x - eps).clamp(0, 1))


def test_gaussian_start_is_the_reference_codes_start_given_the_same_draws():
    """TRADES's code starts its inner maximisation at x + 0.001·N(0, I) (then projects onto the
    ε-ball and [0, 1]): with the same generator state the start is exactly that sum."""
    from advlib.defenses.adversarial_training import gaussian_start

    x = torch.tensor([[0.0, 0.5, 1.0, 0.2]]).view(1, 1, 2, 2)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    start = gaussian_start(x, 0.0015, torch.Generator().manual_seed(3))
    assert torch.equal(start, (x + 0.001 * noise).clamp(x - 0.0015, x + 0.0015).clamp(0, 1))
    assert not torch.equal(start, (x - 0.001 * noise).clamp(x - 0.0015, x + 0.0015).clamp(0, 1))


def test_trainers_craft_inside_the_ball_and_are_reproducible(small_pair):
    x, y = torch.rand(6, 1, 32, 32), torch.arange(6) % 10
    for name in ("pgd_at", "trades", "dynat", "dynat_awp", "dynat_inner_awp"):
        model = small_pair if name.startswith("dynat") else small_pair.target
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        losses = []
        for _ in range(2):
            model.load_state_dict(initial)  # a training forward pass moves BatchNorm's statistics
            trainer = defenses.build(name, eps=8 / 255, alpha=2 / 255, steps=2, seed=3)
            loss, logits = trainer(model, x, y, 0)
            assert torch.isfinite(loss) and logits.shape == (6, 10), name
            losses.append(loss.item())
            if hasattr(trainer, "after_step"):
                trainer.after_step(model, 0)
        assert losses[0] == losses[1], f"{name}: the same seed and epoch give the same random start"
    generator = torch.Generator().manual_seed(0)
    crafted = {"PGD-AT": defenses.build("pgd_at", eps=8 / 255, alpha=2 / 255, steps=2).attack(
                   small_pair.target, x, y, generator=generator),
               "TRADES and DYNAT": trades_adversarial(small_pair.target, x, eps=8 / 255, alpha=2 / 255, steps=2,
                                                      generator=generator)}
    for name, x_adv in crafted.items():
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1, name
        assert not torch.equal(x_adv, x), name


@pytest.fixture()
def small_pair() -> GuideAndTarget:
    torch.manual_seed(0)
    return GuideAndTarget(models.build("small_cnn", 10, 1, width=4), models.build("small_cnn", 10, 1, width=4)).train()



def test_pgd_at_trainer_feeds_its_loss_the_right_tensors():
    """x' from PGD with the trainer's ε, step, steps and BatchNorm mode, on the epoch's generator;
    the loss is CE(f(x'), y) and the training logits are f(x')."""
    torch.manual_seed(0)
    model = models.build("small_cnn", 10, 1, width=2).eval()
    x, y = torch.rand(6, 1, 32, 32), torch.arange(6)
    trainer = defenses.build("pgd_at", eps=0.1, alpha=0.04, steps=2, bn_mode="eval", seed=4)
    pgd = trainer.attack
    assert type(pgd).__name__ == "PGD" and (pgd.eps, pgd.alpha, pgd.steps, pgd.bn_mode) == (0.1, 0.04, 2, "eval")
    assert trainer.seed == 4
    x_adv, calls = (x - 0.05).clamp(0, 1), []

    def attack(model, inputs, labels, generator):
        calls.append((model, inputs, labels, generator))
        return x_adv

    trainer.attack = attack
    loss, logits = trainer(model, x, y, epoch=2)
    [(attacked, inputs, labels, generator)] = calls
    assert attacked is model and torch.equal(inputs, x) and torch.equal(labels, y)
    assert generator is trainer.generator(x.device, 2)
    with torch.no_grad():
        assert torch.allclose(logits, model(x_adv))
        assert loss.item() == pytest.approx(F.cross_entropy(model(x_adv), y).item(), rel=1e-6)


def test_optimizers_by_name():
    from advlib.training import make_optimizer

    parameters = [nn.Parameter(torch.zeros(2))]
    default = make_optimizer(parameters)
    assert type(default) is torch.optim.SGD and default.defaults["lr"] == 0.1
    sgd = make_optimizer(parameters, "sgd", lr=0.02, momentum=0.9, weight_decay=2e-4)
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.02, 0.9, 2e-4)
    adam = make_optimizer(parameters, "adam", lr=0.01, betas=(0.5, 0.9))
    assert type(adam) is torch.optim.Adam and (adam.defaults["lr"], adam.defaults["betas"]) == (0.01, (0.5, 0.9))
    assert adam.param_groups[0]["params"][0] is parameters[0]
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(parameters, "rmsprop")

def test_guide_and_target_both_receive_gradients(small_pair):
    x, y = torch.rand(8, 1, 32, 32), torch.arange(8) % 10
    for name in ("dynat", "dynat_awp", "dynat_inner_awp"):
        small_pair.zero_grad(set_to_none=True)
        awp = {"awp_from_epoch": 1} if name != "dynat" else {}
        trainer = defenses.build(name, eps=8 / 255, alpha=2 / 255, steps=2, **awp)
        loss, _ = trainer(small_pair, x, y, 0)
        loss.backward()
        for part in ("guide", "target"):
            grads = [p.grad for p in getattr(small_pair, part).parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads), (name, part)
            assert sum(g.abs().sum() for g in grads) > 0, (name, part)
        if hasattr(trainer, "after_step"):
            trainer.after_step(small_pair, 0)
    assert 0.0 <= trainer.epoch_statistics()["label_agreement"] <= 1.0
    assert math.isnan(trainer.epoch_statistics()["label_agreement"]), "the counter resets"


class ConstantGuide(nn.Module):
    """A 'guide' that predicts class 1 for every image."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 1.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 2)


@pytest.mark.parametrize("name, inner, expected_sum", [
    ("dynat", "dynamic", 4 * 0.47), ("dynat", "ground_truth", 4 * 0.53), ("dynat_inner_awp", None, 4 * 0.47)])
def test_dynat_inner_step_crafts_on_the_dynamic_label(name, inner, expected_sum):
    """The guide's label is 1 everywhere, y is 0: the dynamic inner step (DYNAT, DYNAT-Inner-AWP)
    ascends CE(S(x'), 1), so with logits (0, Σx') every pixel goes down by ε; the ablation ascends
    CE(S(x'), 0) and pixels go up."""
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])
    options = {"inner": inner} if inner else {"awp_from_epoch": 99}
    trainer = defenses.build(name, eps=0.03, alpha=0.03, steps=2, **options)
    _, logits_adv = trainer(pair, x, y, 0)
    assert logits_adv[0, 1].item() == pytest.approx(expected_sum, abs=1e-5)  # = Σ x'


def test_dynat_awp_inner_step_is_tradess_kl_not_the_dynamic_label(monkeypatch):
    """DYNAT-AWP (the authors' released script) crafts x' with TRADES's inner maximiser; DYNAT-Inner-AWP
    never calls it."""
    from advlib.defenses import dynat
    calls = []
    monkeypatch.setattr(dynat, "trades_adversarial", lambda target, x, **kw: calls.append(kw) or x.clone())
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])
    defenses.build("dynat_awp", eps=0.03, alpha=0.01, steps=3, awp_from_epoch=99)(pair, x, y, 0)
    assert len(calls) == 1 and calls[0]["steps"] == 3 and calls[0]["bn_mode"] == "eval"
    defenses.build("dynat_inner_awp", eps=0.03, alpha=0.01, steps=3, awp_from_epoch=99)(pair, x, y, 0)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="dynamic-label"):
        defenses.build("dynat_inner_awp", inner="trades")


class RecordsTrainModeInputs(nn.Module):
    """A target whose BatchNorm sees each train-mode batch; it records which inputs those were."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        self.train_inputs: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:
            self.train_inputs.append(x.detach().clone())
        return self.net(x)


@pytest.mark.parametrize("name", ["dynat", "dynat_awp", "dynat_inner_awp"])
def test_dynat_target_sees_the_clean_batch_last_in_train_mode(name):
    """The authors' training step runs S(x') and then S(x) in train mode, so the clean batch is the
    last update of S's BatchNorm statistics (plain DYNAT's loss does not even use S(x))."""
    torch.manual_seed(0)
    target = RecordsTrainModeInputs()
    pair = GuideAndTarget(ConstantGuide(), target).train()
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    options = {} if name == "dynat" else {"awp_from_epoch": 99}
    defenses.build(name, eps=0.03, alpha=0.01, steps=2, **options)(pair, x, y, 0)
    assert len(target.train_inputs) == 2, "crafting runs in eval mode; training runs S(x') and S(x)"
    assert not torch.equal(target.train_inputs[0], x) and torch.equal(target.train_inputs[1], x)
    if name == "dynat":
        target.train_inputs.clear()
        defenses.build(name, eps=0.03, alpha=0.01, steps=2, target_clean_pass=False)(pair, x, y, 0)
        assert len(target.train_inputs) == 1


# --- AWP ----------------------------------------------------------------------------------------------

def test_weight_perturbation_by_hand():
    v = weight_perturbation({"w": torch.tensor([[3.0, 4.0]])}, {"w": torch.tensor([[0.0, 2.0]])}, gamma=0.01)
    assert torch.allclose(v["w"], torch.tensor([[0.0, 0.05]]))  # 0.01 · 5 / 2 · (0, 2)


def test_awp_perturbs_layerwise_then_restores_after_the_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).train()
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    awp = AdversarialWeightPerturbation(gamma=0.01)
    loss_before = F.cross_entropy(model(x), y).item()
    model.load_state_dict(before)  # that forward moved BatchNorm's running statistics
    awp.perturb(model, lambda: F.cross_entropy(model(x), y))
    after = model.state_dict()
    for key in ("0.weight", "3.weight"):
        change = after[key] - before[key]
        assert change.norm().item() == pytest.approx(0.01 * before[key].norm().item(), rel=1e-4), key
    for key in ("0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "3.bias"):
        assert torch.equal(after[key], before[key]), f"{key} is not perturbed and not updated"
    with torch.no_grad():
        loss_perturbed = F.cross_entropy(model(x), y).item()
    model.load_state_dict({**model.state_dict(), "1.running_mean": before["1.running_mean"],
                           "1.running_var": before["1.running_var"],
                           "1.num_batches_tracked": before["1.num_batches_tracked"]})
    assert loss_perturbed > loss_before, "an ascent step on the weights"

    # the optimiser's step is taken at the perturbed weights and kept; only v is removed
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    awp.after_step(model, 0)
    for name, p in model.named_parameters():
        assert torch.allclose(p, before[name] - 0.1 * grads[name], atol=1e-6), name


def test_awp_refuses_to_stack_perturbations():
    model = nn.Linear(2, 2)
    awp = AdversarialWeightPerturbation(0.01)
    awp.perturb(model, lambda: model(torch.ones(1, 2)).sum())
    with pytest.raises(RuntimeError, match="restore"):
        awp.perturb(model, lambda: model(torch.ones(1, 2)).sum())


# --- weight averaging in the training loop ------------------------------------------------------------

def _tiny_loader(n: int = 64, batch: int = 16, seed: int = 5) -> data.TensorLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % 10
    return data.TensorLoader(data.ImageSet(images, labels, data.info("fashion-mnist")), batch, shuffle=True,
                             drop_last=True, seed=seed)


class RecordWeights(Hooks):
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def after_step(self, model, epoch):
        self.weights.append(model[1].weight.detach().clone())


@pytest.mark.parametrize("averaging", [{"kind": "swa", "start": 0.5}, {"kind": "ema", "decay": 0.9}])
def test_weight_average_is_the_hand_computed_average(averaging):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1024, 10))
    recorder = RecordWeights()
    loader = _tiny_loader()
    fit(model, loader, epochs=2, optimizer={"name": "sgd", "lr": 0.05}, schedule={"points": [[0.0, 1.0]]},
        callbacks=[recorder], averaging=averaging)
    steps = recorder.weights
    if averaging["kind"] == "swa":
        expected = torch.stack(steps[len(steps) // 2:]).mean(0)  # from half-way on, equal weights
    else:
        expected = steps[0]
        for w in steps[1:]:
            expected = 0.9 * expected + 0.1 * w
    assert torch.allclose(model[1].weight, expected, atol=1e-6)


def test_averaged_batchnorm_statistics_are_re_estimated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(1024, 10))
    loader = _tiny_loader()
    history = fit(model, loader, epochs=1, optimizer={"name": "sgd", "lr": 0.05}, schedule={"points": [[0.0, 1.0]]},
                  averaging={"kind": "ema", "decay": 0.5},
                  evaluate=lambda m: {"running_mean": m[0].running_mean.item()})
    everything = torch.cat([x for x, _ in loader])
    assert model[0].running_mean.item() == pytest.approx(everything.mean().item(), rel=1e-5)
    assert history[0]["avg_running_mean"] == pytest.approx(everything.mean().item(), rel=1e-5)


def test_resumed_dynat_awp_run_with_ema_ends_with_identical_weights(tmp_path):
    def run(checkpoint, stop_after=None):
        torch.manual_seed(0)
        pair = GuideAndTarget(models.build("small_cnn", 10, 1, width=2), models.build("small_cnn", 10, 1, width=2))
        trainer = defenses.build("dynat_awp", eps=8 / 255, alpha=2 / 255, steps=1, awp_from_epoch=2, seed=1)
        fit(pair, _tiny_loader(32, 16), epochs=3, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
            schedule={"points": [[0.0, 1.0], [0.5, 0.1]]}, loss_fn=trainer, callbacks=[trainer],
            checkpoint=checkpoint, stop_after=stop_after,
            averaging={"kind": "ema", "decay": 0.9, "module": "target"})
        return pair

    reference = run(None).state_dict()
    checkpoint = tmp_path / "run.partial.pt"
    run(checkpoint, stop_after=1)
    resumed = run(checkpoint).state_dict()
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


# --- CW-∞ ---------------------------------------------------------------------------------------------

def test_cw_linf_ascends_the_wrong_minus_true_margin():
    # every wrong logit is negative: a one-hot product would give 0 as the "best other" logit
    logits = torch.tensor([[1.0, -2.0, -3.0], [0.0, 4.0, 1.0]])
    assert (-margin(logits, torch.tensor([0, 2]))).tolist() == pytest.approx([-3.0, 3.0])


def test_cw_linf_one_step_by_hand_and_in_the_ball():
    # margin for y = 1 is Z_0 − Z_1 = −s·Σx: one step of size ε without random start takes ε off
    # every pixel (s > 0)
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([1])
    attack = attacks.build("cw-linf", eps=0.03, alpha=0.03, steps=1, random_start=False)
    assert torch.allclose(attack(SumOfPixels(1.0), x, y), x - 0.03)
    x = torch.rand(16, 1, 8, 8)
    x_adv = attacks.build("cw-linf", eps=0.05, alpha=0.02, steps=5)(SumOfPixels(-1.0), x, torch.zeros(16).long())
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_cw_linf_keeps_the_first_fooling_iterate():
    # Σx starts at 4·0.26 = 1.04 > 0, so class 1 wins at once for y = 0: the (unattacked) start is kept
    x, y = torch.full((1, 1, 2, 2), 0.26), torch.tensor([0])
    attack = attacks.build("cw-linf", eps=0.1, alpha=0.1, steps=3, random_start=False)
    assert torch.equal(attack(SumOfPixels(1.0), x, y), x)


def test_cw_linf_by_hand_on_a_linear_model():
    """Two classes, logits W x: the CW margin's gradient is the fixed sign of w_wrong − w_true, zero
    where the two rows agree. Without a random start the iterates are x + kα·sign (inside the ball);
    the result is the first iterate that fools the model, found at the start of the step after it."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.5, 0.0]]))
    x, y = torch.tensor([[[[0.50, 0.45], [0.3, 0.7]]]]), torch.tensor([0])
    # margin z_0 - z_1 = x_1 - x_2 = 0.05; each step of 0.03 lowers it by 0.06; pixels 3 and 4 never move
    cw = attacks.build("cw-linf", eps=0.2, alpha=0.03, steps=4, random_start=False)
    first_fooling = torch.tensor([[[[0.47, 0.48], [0.3, 0.7]]]])  # after one step: margin -0.01
    assert torch.allclose(cw(model, x, y), first_fooling, atol=1e-6)
    robust = attacks.build("cw-linf", eps=0.02, alpha=0.03, steps=4, random_start=False)
    assert torch.allclose(robust(model, x, y), torch.tensor([[[[0.48, 0.47], [0.3, 0.7]]]]), atol=1e-6)


def test_cw_linf_defaults_are_dynats_evaluation_and_its_seed_moves_the_start(small_model, test_batch):
    spec = config.PROFILES["paper"]["adversarial_training"]
    cw = attacks.build("cw-linf")
    assert (cw.eps, cw.alpha, cw.steps, cw.restarts, cw.random_start) == (
        spec["eval_attack"]["eps"], spec["eval_attack"]["alpha"], spec["evaluation"]["cw_steps"],
        spec["evaluation"]["cw_restarts"], True)
    x, y = test_batch[0][:16], test_batch[1][:16]
    runs = [attacks.build("cw-linf", steps=1, seed=seed)(small_model, x, y) for seed in (0, 0, 3)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# --- the paper profile --------------------------------------------------------------------------------

def test_paper_profile_has_the_issues_hyperparameters():
    spec = config.PROFILES["paper"]["adversarial_training"]
    assert spec["train_attack"] == {"eps": 0.031, "alpha": 2 / 255, "steps": 10}  # Sec. 4.1
    assert spec["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4}
    assert spec["epochs"] == 100 and spec["batch_size"] == 128
    assert spec["target"]["arch"] == "wrn34_10" and spec["guide"]["arch"] == "resnet18_cifar"
    assert spec["trades"]["beta"] == 6.0
    assert spec["dynat_awp"] == {"label_weight": 1.0, "beta": 1.0, "awp_gamma": 0.005, "awp_start": 0.09}
    run = config.setup("paper", device="cpu", quiet=True)
    assert recipes.adversarial_training_config(run, "dynat_awp")["trainer_options"]["awp_from_epoch"] == 10
    # the authors' evaluation: ε 8/255 and step 2/255 (the step 0.003 could not cross the ball in 10 steps)
    assert spec["eval_attack"] == {"eps": 8 / 255, "alpha": 2 / 255}
    assert spec["evaluation"]["cw_steps"] == 20 and spec["evaluation"]["autoattack_subset"] == 1000
    from advlib.training import lr_multiplier, training_progress
    steps = 391
    lr = {epoch: lr_multiplier(training_progress(epoch - 1, 0, steps, 100), spec["schedule"])
          for epoch in (1, 2, 75, 76, 90, 91, 100)}
    assert lr == {1: 0.2, 2: 1.0, 75: 1.0, 76: 0.1, 90: 0.1, 91: 0.01, 100: 0.01}
    assert lr_multiplier(training_progress(0, steps - 1, steps, 100), spec["schedule"]) == 0.2


@pytest.fixture(scope="module")
def paper_size_models() -> dict[str, nn.Module]:
    """One network of each architecture the paper profile trains, by name."""
    torch.manual_seed(0)
    return {arch: models.build(arch, 10, 3) for arch in ("wrn34_10", "resnet18_cifar")}


@pytest.mark.parametrize("name", ["standard", "pgd_at", "trades", "mart", "fat", "gairat", "awp", "lbgat", "dynat",
                                  "dynat_awp", "dynat_inner_awp", "mail", "dynat_inner_gairat", "gairat_small_target",
                                  "dynat_inner_gairat_small_target", "dynat_at_mail", "dynat_mail_inner"])
def test_one_step_of_each_trainer_at_paper_size(paper_size_models, name):
    """The method's paper-profile networks (WRN-34-10 target and ResNet18_cifar guide, the other way
    round for the MAIL rows) on a CIFAR-shaped batch of 2 with the paper profile's options; one inner
    step instead of ten keeps the CPU test short (the step count is just a loop bound), and AWP and
    the reweighting start at once."""
    run = config.setup("paper", device="cpu", quiet=True)
    method_config = recipes.adversarial_training_config(run, name)
    target = paper_size_models[method_config["target"]["arch"]]
    model = (GuideAndTarget(paper_size_models[method_config["guide"]["arch"]], target) if "guide" in method_config
             else target)
    options = method_config.get("trainer_options", {})
    if options:
        options = {**options, "steps": 1, **{key: 1 for key in ("awp_from_epoch", "reweight_from_epoch")
                                              if key in options}}
    trainer = defenses.build(method_config["trainer"], **options)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([3, 8])
    before = next(target.parameters()).detach().clone()
    loss, logits = trainer(model, x, y, 0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if hasattr(trainer, "after_step"):
        trainer.after_step(model, 0)
    assert torch.isfinite(loss) and logits.shape == (2, 10)
    assert not torch.equal(before, next(target.parameters())), "the target took a step"
    if "guide" in method_config:
        assert all(p.grad is not None for p in model.guide.parameters())


def test_paper_profile_results_quote_the_papers_table(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVLIB_HOME", str(tmp_path))
    run = config.setup("paper", device="cpu", quiet=True)
    ours = {"method": "DYNAT", "source": "this run", **{column: 0.5 for column in recipes.AT_COLUMNS}}
    saved = json.loads(recipes.save_at_dynat(run, [ours]).read_text())["results"]
    assert saved[0] == ours
    paper = {row["method"]: row for row in saved[1:]}
    assert {row["source"] for row in saved[1:]} == {"paper (Table 1)"}
    assert paper["DYNAT-Inner-AWP (β = 1)"]["AA"] == pytest.approx(0.553)
    assert paper["DYNAT-AWP (β = 1)"]["clean"] == pytest.approx(0.8841)
    assert paper["PGD-AT"]["clean"] == pytest.approx(0.8517)
    assert all(set(recipes.AT_COLUMNS) <= set(row) for row in saved)


def test_at_rows_carry_the_papers_names():
    labels = {method.label for method in recipes.AT_METHODS.values()}
    assert {"DYNAT-AWP (β = 0)", "DYNAT-AWP (β = 1)", "DYNAT-Inner-AWP (β = 1)", "PGD-AT", "TRADES", "DYNAT"} <= labels
    paper_rows = set(papers.DYNAT_TABLE1) | set(papers.DYNAT_TABLE3) | set(papers.DYNAT_TABLE4)
    for method in recipes.AT_METHODS.values():
        if method.name not in ("standard", "dynat_no_inner"):
            assert method.label in paper_rows, method.label


@pytest.mark.parametrize("dataset, awp_weight", [("cifar10", 1.0), ("cifar100", 0.2), ("fashion-mnist", 1.0)])
def test_dynat_label_weight_is_set_per_dataset(dataset, awp_weight):
    """λ = 1 on CIFAR-10 (DYNAT Sec. 4.1); the authors' CIFAR-100 AWP script uses 0.2; plain DYNAT 1."""
    for profile in ("quick", "paper"):
        run = config.setup(profile, dataset=dataset, device="cpu", quiet=True)
        for method in ("dynat_awp_beta0", "dynat_awp", "dynat_inner_awp"):
            options = recipes.adversarial_training_config(run, method)["trainer_options"]
            assert options["label_weight"] == awp_weight, (profile, method)
        assert recipes.adversarial_training_config(run, "dynat")["trainer_options"]["label_weight"] == 1.0
    betas = {m: recipes.adversarial_training_config(run, m)["trainer_options"]["beta"]
             for m in ("dynat_awp_beta0", "dynat_awp", "dynat_inner_awp")}
    assert betas == {"dynat_awp_beta0": 0.0, "dynat_awp": 1.0, "dynat_inner_awp": 1.0}
    assert recipes.adversarial_training_config(run, "dynat_inner_awp")["trainer"] == "dynat_inner_awp"


def test_quick_profile_evaluation_step_is_a_quarter_of_eps():
    for section in ("adversarial_training", "distillation"):
        attack = config.PROFILES["quick"][section]["eval_attack"]
        assert attack["alpha"] == pytest.approx(attack["eps"] / 4), section


def test_saad_evaluation_restarts_cw_ten_times_in_the_paper_profile():
    evaluation = config.PROFILES["paper"]["distillation"]["evaluation"]
    assert evaluation["cw_steps"] == 50 and evaluation["cw_restarts"] == 10


class FooledAboveThreshold(nn.Module):
    """One pixel; logits (0, 1000 · (x − 0.58)): class 1 wins once x > 0.58."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        s = 1000 * (x.flatten(1)[:, 0] - 0.58)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_cw_linf_restarts_take_the_per_example_worst_case():
    """x = 0.5, ε = 0.1, one step of 0.0005 up: a run fools the model only if its uniform start lands
    above 0.5795, probability 0.1025 per run, so k restarts fool a fraction 1 − 0.8975^k."""
    x, y = torch.full((4000, 1, 1, 1), 0.5), torch.zeros(4000, dtype=torch.long)
    model = FooledAboveThreshold()
    for restarts in (1, 5):
        attack = attacks.build("cw-linf", eps=0.1, alpha=0.0005, steps=1, restarts=restarts, seed=restarts)
        fooled = (model(attack(model, x, y)).argmax(1) != y).float().mean().item()
        assert fooled == pytest.approx(1 - 0.8975 ** restarts, abs=0.025), restarts


# --- defaults and wiring of the trainers --------------------------------------------------------------

def test_standard_training_stores_its_seed_and_is_clean_cross_entropy():
    """Standard training draws nothing at random, but it keeps the seed it is built with (0 by default,
    like every attack and trainer) so every trainer is built the same way; its loss is CE(f(x), y)."""
    assert defenses.build("standard").seed == 0 and defenses.build("standard", seed=5).seed == 5
    x, y = torch.full((1, 1, 2, 2), 0.25), torch.tensor([1])
    loss, logits = defenses.build("standard")(SumOfPixels(1.0), x, y, 3)
    # logits (0, Σx) = (0, 1): CE(·, 1) = log(1 + e^{−1})
    assert logits.tolist() == [[0.0, 1.0]] and loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_pgd_at_defaults_are_madrys_cifar_attack_with_rices_batchnorm():
    """Built without options, PGD-AT trains against PGD with ε = 8/255, step 2/255 and 10 steps (the
    profiles' training attack), the model in train mode while crafting (the paper profile's
    ``pgd_at`` setting, as in Rice et al.'s code), and seed 0."""
    spec = config.PROFILES["paper"]["adversarial_training"]
    trainer = defenses.build("pgd_at")
    pgd = trainer.attack
    assert (pgd.eps, pgd.alpha, pgd.steps) == (8 / 255, 2 / 255, spec["train_attack"]["steps"])
    assert pgd.bn_mode == spec["pgd_at"]["bn_mode"] == "train"
    assert trainer.seed == 0


def test_pgd_at_continues_the_epochs_random_stream_from_batch_to_batch():
    """Successive batches of one epoch draw their random starts from the same generator (one stream per
    epoch, reseeded from (seed, epoch)), not each from a freshly seeded one."""
    model = SumOfPixels(1.0)
    x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
    trainer = defenses.build("pgd_at", eps=0.03, alpha=0.01, steps=1)
    generators, draws = [], []

    def attack(model, inputs, labels, generator):
        generators.append(generator)
        draws.append(torch.rand(3, generator=generator))
        return inputs

    trainer.attack = attack
    for epoch in (0, 0, 1):
        trainer(model, x, y, epoch)
    assert generators[1] is generators[0] and not torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[2], draws[0])


def test_guide_and_target_forward_is_the_targets():
    """Evaluations and attacks see the defended model S, not the guide: (0, Σx) = (0, 2), not G's (0, 1)."""
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    assert pair(torch.full((1, 1, 2, 2), 0.5)).tolist() == [[0.0, 2.0]]


def test_dynat_trainer_weights_the_target_term_with_its_label_weight():
    """Eq. 4–6 with w = 1/2: the guide predicts 1 and y = 0, so CE(G(x), y) = log(1 + e); x' has
    every pixel at 0.5 − ε = 0.47 (as in the inner-step test), S(x') = (0, 1.88) and
    CE(S(x'), 1) = log(1 + e^{−1.88})."""
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])
    loss, _ = defenses.build("dynat", eps=0.03, alpha=0.03, steps=2, label_weight=0.5)(pair, x, y, 0)
    expected = math.log(1 + math.e) + 0.5 * math.log(1 + math.exp(-1.88))
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_label_agreement_restarts_its_count_every_epoch():
    """The fraction of dynamic labels equal to y is per epoch: the guide always says 1, so epoch 1 with
    y = (1, 0) agrees on 1/2, epoch 2 with y = (0, 0) on 0 (nothing carried over)."""
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    x = torch.full((2, 1, 2, 2), 0.5)
    trainer = defenses.build("dynat", eps=0.03, alpha=0.01, steps=1)
    trainer(pair, x, torch.tensor([1, 0]), 0)
    assert trainer.epoch_statistics() == {"label_agreement": 0.5}
    trainer(pair, x, torch.tensor([0, 0]), 1)
    assert trainer.epoch_statistics() == {"label_agreement": 0.0}


# --- DYNAT-AWP: the paper's defaults and where each one goes ------------------------------------------

def _linear_target() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def test_dynat_awp_defaults_are_the_paper_profiles_and_reach_their_components(monkeypatch):
    """Built without options, DYNAT-AWP is the paper profile's (seed 002, Sec. 4.1, Table 1; the
    authors' AWP_dynat.py): x' by 10 steps of 0.007 (the authors' step; the profile passes Sec. 4.1's
    2/255) in the ε = 0.031 ball, S in eval mode; λ = 1, β = 1; AWP with γ = 0.005 from epoch 10 of 100
    (counted from 1: the 0-based epoch 9 is the first) against TRADES's CE + 6·KL (the book never sets
    β_AWP, so 6 is what it runs); seed 0; DYNAT's BatchNorm-only clean pass off (S(x) is in the loss)."""
    from advlib.defenses import dynat
    spec = config.PROFILES["paper"]["adversarial_training"]
    section = spec["dynat_awp"]
    trainer = defenses.build("dynat_awp")
    assert (trainer.eps, trainer.alpha, trainer.steps) == (spec["train_attack"]["eps"], 0.007,
                                                           spec["train_attack"]["steps"]) == (0.031, 0.007, 10)
    assert (trainer.label_weight, trainer.beta, trainer.gamma) == (
        section["label_weight"], section["beta"], section["awp_gamma"]) == (1.0, 1.0, 0.005)
    assert trainer.awp_from_epoch == round(section["awp_start"] * spec["epochs"]) + 1 == 10
    assert trainer.awp_beta == spec["trades"]["beta"] == 6.0
    assert (trainer.awp_inner, trainer.bn_mode, trainer.seed) == ("trades", "eval", 0)
    assert trainer.target_clean_pass is False

    crafted, awp_losses, outer = [], [], []
    real_craft, real_trades_loss, real_outer = dynat.trades_adversarial, dynat.trades_loss, dynat.dynat_awp_loss
    monkeypatch.setattr(dynat, "trades_adversarial", lambda t, x, **kw: crafted.append(kw) or real_craft(t, x, **kw))
    monkeypatch.setattr(dynat, "trades_loss", lambda *a: awp_losses.append(a[3:]) or real_trades_loss(*a))
    monkeypatch.setattr(dynat, "dynat_awp_loss", lambda *a: outer.append(a[4:]) or real_outer(*a))
    pair = GuideAndTarget(ConstantGuide(), _linear_target())
    x, y = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1])
    weight = pair.target[1].weight
    before = weight.detach().clone()
    trainer(pair, x, y, 8)
    assert torch.equal(weight, before) and awp_losses == [], "epoch 9 (from 1): no AWP yet"
    trainer.after_step(pair, 8)
    trainer(pair, x, y, 9)
    assert awp_losses == [(6.0,)], "epoch 10: AWP against CE + 6·KL"
    assert (weight - before).norm().item() == pytest.approx(0.005 * before.norm().item(), rel=1e-4)
    trainer.after_step(pair, 9)
    assert torch.allclose(weight, before, atol=1e-7)
    assert [(kw["eps"], kw["alpha"], kw["steps"], kw["bn_mode"]) for kw in crafted] == [(0.031, 0.007, 10, "eval")] * 2
    assert outer == [(1.0, 1.0), (1.0, 1.0)], "λ and β of the outer loss"


def test_dynat_awp_passes_every_option_to_its_parts(monkeypatch):
    """Options given explicitly land where they act: the seed on the trainer (not on DYNAT's
    clean-pass flag), γ on the AWP component, ε/step/steps on DYNAT-Inner-AWP's dynamic-label attack."""
    from advlib.defenses import dynat
    trainer = defenses.build("dynat_awp", awp_gamma=0.02, seed=5)
    assert trainer.gamma == 0.02 and trainer.seed == 5 and trainer.target_clean_pass is False
    calls = []
    monkeypatch.setattr(dynat, "maximize_linf", lambda model, x, loss, **kw: calls.append(kw) or x.clone())
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    defenses.build("dynat_inner_awp")(pair, torch.full((1, 1, 2, 2), 0.5), torch.tensor([0]), 0)
    [kw] = calls
    assert (kw["eps"], kw["alpha"], kw["steps"]) == (0.031, 0.007, 10)


def test_dynat_awp_continues_the_epochs_random_stream_from_batch_to_batch(monkeypatch):
    """The TRADES inner step's random starts come from the trainer's epoch generator (on x's device),
    one stream per epoch: the second batch continues it, not a freshly seeded copy."""
    from advlib.defenses import dynat
    generators, draws = [], []

    def craft(target, x, *, generator, **kw):
        generators.append(generator)
        draws.append(torch.rand(3, generator=generator))
        return x.clone()

    monkeypatch.setattr(dynat, "trades_adversarial", craft)
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])
    trainer = defenses.build("dynat_awp", awp_from_epoch=99)
    trainer(pair, x, y, 0)
    trainer(pair, x, y, 0)
    assert generators[1] is generators[0] is trainer.generator(x.device, 0)
    assert not torch.equal(draws[0], draws[1])


def test_awp_skips_weights_the_loss_does_not_reach():
    """A weight outside the loss (here the guide's layer, when AWP ascends the target's loss) has no
    gradient: it is left alone, and the used one moves by γ·‖w‖/‖g‖·g (Wu et al. 2020, Eq. 10):
    w = (3, 4), loss w·(0, 1), g = (0, 1), v = 0.01 · 5 · (0, 1)."""
    guide, target = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        guide.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        target.weight.copy_(torch.tensor([[3.0, 4.0]]))
    pair = GuideAndTarget(guide, target)
    awp = AdversarialWeightPerturbation(0.01)
    awp.perturb(pair, lambda: pair(torch.tensor([[0.0, 1.0]])).sum())
    assert torch.allclose(target.weight, torch.tensor([[3.0, 4.05]]))
    assert torch.equal(guide.weight, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    awp.restore()
    assert torch.allclose(target.weight, torch.tensor([[3.0, 4.0]]))


def test_weight_perturbation_guard_is_added_to_the_gradient_norm():
    """v = γ·‖w‖/(‖g‖ + 1e-20)·g: for a gradient of norm 1e-20 (float64) the guard halves the step,
    0.01 · 5 / 2e-20 · 1e-20 = 0.025."""
    w = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    g = torch.tensor([[0.0, 1e-20]], dtype=torch.float64)
    v = weight_perturbation({"w": w}, {"w": g}, gamma=0.01)["w"]
    assert torch.allclose(v, torch.tensor([[0.0, 0.025]], dtype=torch.float64))


def test_trades_defaults_are_the_papers_and_its_settings_reach_the_inner_and_outer_steps(monkeypatch):
    """TRADES's defaults: the CIFAR-10 budget ε = 8/255 with 2/255 × 10 steps (the paper profile passes
    DYNAT's 0.031 and 0.007 explicitly), β = 6 (Zhang et al. 2019, Sec. 5), the model in eval mode
    while x' is crafted (their code), seed 0. The trainer hands its step settings, its BatchNorm
    mode and the epoch's one generator (the same for every batch of an epoch) to the inner
    maximiser, and its β to :func:`trades_loss` of f(x), f(x') and y."""
    from advlib.defenses import adversarial_training

    trainer = defenses.build("trades")
    assert (trainer.eps, trainer.alpha, trainer.steps, trainer.bn_mode, trainer.seed) == (8 / 255, 2 / 255, 10, "eval", 0)
    assert trainer.beta == config.PROFILES["paper"]["adversarial_training"]["trades"]["beta"] == 6.0
    calls = []
    x_adv = torch.full((2, 1, 2, 2), 0.6)

    def inner(model, x, **settings):
        calls.append(settings)
        return x_adv

    monkeypatch.setattr(adversarial_training, "trades_adversarial", inner)
    model, x, y = SumOfPixels(1.0), torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
    trainer = defenses.build("trades", eps=0.1, alpha=0.02, steps=3, beta=2.0, bn_mode="train")
    loss, logits = trainer(model, x, y, 4)
    trainer(model, x, y, 4)
    assert {k: v for k, v in calls[0].items() if k != "generator"} == {"eps": 0.1, "alpha": 0.02, "steps": 3,
                                                                        "bn_mode": "train"}
    assert calls[1]["generator"] is calls[0]["generator"]
    assert loss.item() == pytest.approx(trades_loss(model(x), model(x_adv), y, 2.0).item())
    assert torch.equal(logits, model(x))


def test_dynat_continues_the_epochs_random_stream_from_batch_to_batch(monkeypatch):
    """DYNAT's inner maximisation draws its random starts from one generator per epoch (Eq. 7)."""
    from advlib.defenses import dynat

    generators = []

    def inner(model, x, loss, **settings):
        generators.append(settings["generator"])
        return x

    monkeypatch.setattr(dynat, "maximize_linf", inner)
    trainer = defenses.build("dynat", eps=0.03, alpha=0.01, steps=1)
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
    for epoch in (0, 0, 1):
        trainer(pair, x, y, epoch)
    assert generators[1] is generators[0] and generators[2] is not generators[0]


def test_dynat_defaults_are_the_paper_profiles_and_reach_their_components(monkeypatch):
    """Built without options, DYNAT is the paper profile's (seed 002, Sec. 4.1; the authors' code,
    notes §3): x' by 10 steps of 0.007 in the ε = 0.031 ball (Eq. 7), S in eval mode; label weight
    w = 1 in CE(G(x), y) + w · CE(S(x'), argmax G(x)) (Eq. 4–6); seed 0; the clean BatchNorm pass on."""
    from advlib.defenses import dynat
    spec = config.PROFILES["paper"]["adversarial_training"]
    trainer = defenses.build("dynat")
    assert (trainer.eps, trainer.alpha, trainer.steps) == (spec["train_attack"]["eps"], 0.007,
                                                           spec["train_attack"]["steps"]) == (0.031, 0.007, 10)
    assert trainer.label_weight == spec["dynat"]["label_weight"] == 1.0
    assert (trainer.inner, trainer.bn_mode, trainer.seed, trainer.target_clean_pass) == ("dynamic", "eval", 0, True)
    crafted, outer = [], []
    monkeypatch.setattr(dynat, "maximize_linf", lambda t, x, loss, **kw: crafted.append(kw) or x)
    real_outer = dynat.dynat_loss
    monkeypatch.setattr(dynat, "dynat_loss", lambda *a: outer.append(a[3:]) or real_outer(*a))
    x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([1, 0])
    trainer(GuideAndTarget(ConstantGuide(), SumOfPixels(1.0)), x, y, 0)
    [kw] = crafted
    assert (kw["eps"], kw["alpha"], kw["steps"]) == (0.031, 0.007, 10) and outer == [(1.0,)]
    assert kw["generator"] is trainer.generator(x.device, 0)


def test_label_agreement_sums_every_batch_of_the_epoch():
    """The "weak to strong" curve (seed 002, Fig. 1) counts all of an epoch's dynamic labels: the
    guide always says 1, so batches with y = (1, 0) and y = (1, 1) agree on 3 of 4 labels."""
    pair = GuideAndTarget(ConstantGuide(), SumOfPixels(1.0))
    x = torch.full((2, 1, 2, 2), 0.5)
    trainer = defenses.build("dynat", eps=0.03, alpha=0.01, steps=1)
    trainer(pair, x, torch.tensor([1, 0]), 0)
    trainer(pair, x, torch.tensor([1, 1]), 0)
    assert trainer.epoch_statistics() == {"label_agreement": 0.75}


# --- initial weights follow from the configuration -----------------------------------------------------

@pytest.mark.parametrize("profile,role", [("quick", "classifier"), ("quick", "purifier"), ("quick", "target"),
                                          ("quick", "student"), ("paper", "target"), ("paper", "guide")])
def test_a_network_built_without_initial_weights_takes_the_cached_weights_alike(profile, role):
    run = config.setup(profile, device="cpu", quiet=True)
    initialised = recipes.network(run, role, seed=0).eval()
    empty = recipes.network(run, role, initialise=False)
    assert [(k, v.shape, v.dtype, v.device) for k, v in empty.state_dict().items()] == \
        [(k, v.shape, v.dtype, v.device) for k, v in initialised.state_dict().items()]
    empty.load_state_dict(initialised.state_dict())
    x = torch.rand(2, data.info(run.dataset).in_channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(empty.eval()(x), initialised(x))


def test_a_model_with_unsaved_buffers_cannot_be_built_without_initial_weights():
    class Scaled(nn.Linear):
        def __init__(self) -> None:
            super().__init__(2, 2)
            self.register_buffer("scale", torch.ones(1), persistent=False)

    with torch.device("meta"):
        model = nn.Sequential(Scaled())
    with pytest.raises(ValueError, match="0.scale.*not saved with the weights"):
        config.prepare_model(model, torch.device("cpu"))


def test_seeded_network_ignores_and_keeps_the_global_rng():
    run = config.setup("quick", device="cpu", quiet=True)
    torch.manual_seed(123)
    expected_draws = torch.rand(3)
    torch.manual_seed(123)
    first = recipes.network(run, "target", seed=4)
    assert torch.equal(torch.rand(3), expected_draws), "building a seeded network must not touch the global RNG"
    second = recipes.network(run, "target", seed=4)
    other = recipes.network(run, "target", seed=5)
    pairs = list(zip(first.state_dict().values(), second.state_dict().values(), other.state_dict().values()))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


def test_a_classifier_network_takes_another_architecture_by_name():
    """NRP's quick feature extractor is a classifier of its own (a width-8 small CNN), not chapter 1's."""
    run = config.setup("quick", device="cpu", quiet=True)
    default = recipes.network(run, "classifier", seed=0)
    other = recipes.network(run, "classifier", seed=0, arch="small_cnn", width=4)
    assert models.count_parameters(other) < models.count_parameters(default)  # chapter 1's is a ResNet20
    assert other.net[0].out_channels == 4 and other.net[0].in_channels == 1
    assert isinstance(other.normalize, models.Normalize)  # the dataset's normalisation, as chapter 1's


@pytest.mark.parametrize("method", ["pgd_at", "dynat"])
def test_an_adversarially_trained_model_starts_from_the_same_weights_whatever_ran_before(method, monkeypatch):
    run = config.setup("quick", device="cpu", quiet=True)
    started = []

    def built_for_training(kind, settings, build, train, launch=None):
        started.append(build(True))
        return started[-1], []

    monkeypatch.setattr(recipes.adversarial_training.cache, "load_or_train", built_for_training)
    for draws in (0, 1000):
        torch.rand(draws)
        recipes.adversarially_trained(run, method)
    for a, b in zip(started[0].state_dict().values(), started[1].state_dict().values()):
        assert torch.equal(a, b)


def test_table_1_baselines_have_their_authors_training_settings_in_the_paper_profile():
    from advlib.training import lr_multiplier, training_progress
    run = config.setup("paper", device="cpu", quiet=True)
    settings = {m: recipes.adversarial_training_config(run, m) for m in ("mart", "fat", "gairat", "awp", "lbgat")}
    assert {m: (c["epochs"], c["optimizer"]["lr"], c["optimizer"]["weight_decay"]) for m, c in settings.items()} == {
        "mart": (90, 0.1, 7e-4), "fat": (120, 0.1, 2e-4), "gairat": (120, 0.1, 2e-4), "awp": (200, 0.1, 5e-4),
        "lbgat": (100, 0.1, 2e-4)}
    assert settings["fat"]["trainer_options"]["tau_from_epoch"] == [51, 91]
    assert settings["gairat"]["trainer_options"]["reweight_from_epoch"] == 60
    assert settings["awp"]["trainer_options"]["awp_from_epoch"] == 10
    assert settings["lbgat"]["trainer_options"]["beta"] == 0.0 and "guide" in settings["lbgat"]
    assert settings["mart"]["trainer_options"]["beta"] == 6.0 and "guide" not in settings["mart"]

    def lr_in(method: str, epoch: int) -> float:  # epoch counted from 1, first batch
        c = settings[method]
        return lr_multiplier(training_progress(epoch - 1, 0, 391, c["epochs"]), c["schedule"])
    assert [lr_in("mart", e) for e in (74, 75, 89, 90)] == [1.0, 0.1, 0.1, 0.01]
    assert [lr_in("fat", e) for e in (59, 60, 90, 110)] == [1.0, 0.1, 0.01, 0.005]
    assert [lr_in("awp", e) for e in (99, 100, 149, 150)] == [1.0, 0.1, 0.1, 0.01]
    # the methods of the seed keep the shared settings
    assert recipes.adversarial_training_config(run, "pgd_at")["epochs"] == 100


def test_quick_profile_baselines_share_the_chapters_budget():
    """Same epochs, schedule, data and optimiser as PGD-AT; MART and LBGAT at half its learning rate."""
    run = config.setup("quick", device="cpu", quiet=True)
    shared = recipes.adversarial_training_config(run, "pgd_at")
    for method in ("mart", "fat", "gairat", "awp", "lbgat"):
        own = recipes.adversarial_training_config(run, method)
        keys = ("epochs", "schedule", "train_subset", "batch_size")
        assert {k: own[k] for k in keys} == {k: shared[k] for k in keys}, method
        lr = shared["optimizer"]["lr"] / (2 if method in ("mart", "lbgat") else 1)
        assert own["optimizer"] == {**shared["optimizer"], "lr": lr}, method


def test_the_smoke_run_cuts_every_methods_epochs():
    run = config.setup("paper", device="cpu", quiet=True, smoke=True)
    assert {m: recipes.adversarial_training_config(run, m)["epochs"] for m in recipes.AT_METHODS} == dict.fromkeys(
        recipes.AT_METHODS, 1)


def test_first_epoch_at_by_hand():
    from advlib.recipes.adversarial_training import first_epoch_at
    assert [first_epoch_at(0.09, 100), first_epoch_at(59 / 120, 120), first_epoch_at(0.25, 4),
            first_epoch_at(0.0, 10)] == [10, 60, 2, 1]
