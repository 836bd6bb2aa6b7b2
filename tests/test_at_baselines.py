"""DYNAT's Table 1 baselines — MART, FAT, GAIRAT, AWP (on TRADES) and LBGAT: each loss worked by hand
on tiny tensors (the expected values are computed here with ``math`` from the papers' formulas), the
early-stopped and step-counting PGDs on a one-pixel model whose iterates are known in advance, the
wiring of each trainer, and one step of each at the paper's size."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlib import defenses
from advlib.defenses import awp as awp_module
from advlib.defenses import fat as fat_module
from advlib.defenses import gairat as gairat_module
from advlib.defenses.adversarial_training import trades_adversarial, trades_loss
from advlib.defenses.awp import TRADESAWP, perturbable_weights
from advlib.defenses.dynat import GuideAndTarget
from advlib.defenses.fat import early_stopped_pgd, tau_at
from advlib.defenses.gairat import gairat_loss, gairat_weights, pgd_with_least_steps
from advlib.defenses.lbgat import lbgat_loss
from advlib.defenses.mart import boosted_cross_entropy, mart_loss

CLEAN = [[2.0, 1.0, 0.0], [0.2, -0.3, 1.2]]
ADVERSARIAL = [[0.5, 1.5, -1.0], [0.4, 0.1, 0.3]]
LABELS = [0, 2]


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))


def cross_entropy(row: list[float], label: int) -> float:
    return -math.log(softmax(row)[label])


def tensors(*rows: list[list[float]]) -> list[torch.Tensor]:
    return [torch.tensor(r, dtype=torch.float64) for r in rows]


# --- MART -----------------------------------------------------------------------------------------

def mart_by_hand(beta: float, clean_rows: list[list[float]] = CLEAN) -> float:
    total = 0.0
    for clean, adversarial, y in zip(clean_rows, ADVERSARIAL, LABELS):
        p_adv, p_clean = softmax(adversarial), softmax(clean)
        most_likely_wrong = max(p for k, p in enumerate(p_adv) if k != y)
        boosted = -math.log(p_adv[y]) - math.log(1 - most_likely_wrong)
        total += boosted + beta * kl(p_clean, p_adv) * (1 - p_clean[y])
    return total / len(LABELS)


@pytest.mark.parametrize("beta", [6.0, 5.0, 0.0])
def test_mart_loss_by_hand(beta):
    clean, adversarial = tensors(CLEAN, ADVERSARIAL)
    assert mart_loss(clean, adversarial, torch.tensor(LABELS), beta).item() == pytest.approx(mart_by_hand(beta), rel=1e-6)


def test_mart_weight_and_kl_pass_gradient_to_the_clean_logits():
    """Nothing is detached in MART (the authors' code): the clean logits' gradient, checked against
    central differences of the formula, includes the part through the weight 1 − p_y(x)."""
    clean, adversarial = tensors(CLEAN, ADVERSARIAL)
    clean.requires_grad_(True)
    (gradient,) = torch.autograd.grad(mart_loss(clean, adversarial, torch.tensor(LABELS)), clean)
    h = 1e-6
    for i in range(2):
        for k in range(3):
            plus, minus = [row[:] for row in CLEAN], [row[:] for row in CLEAN]
            plus[i][k] += h
            minus[i][k] -= h
            difference = (mart_by_hand(6.0, plus) - mart_by_hand(6.0, minus)) / (2 * h)
            assert gradient[i, k].item() == pytest.approx(difference, abs=1e-6)


def test_boosted_cross_entropy_stays_finite_when_a_wrong_class_takes_all_the_probability():
    logits = torch.tensor([[0.0, 60.0, -60.0]])
    value = boosted_cross_entropy(logits, torch.tensor([0])).item()
    # −log p_0 ≈ 60 and −log(1 − p_1) = −log(p_0 + p_2) ≈ 60
    assert value == pytest.approx(120.0, rel=1e-6)


# --- a one-pixel model whose PGD iterates are known ------------------------------------------------

class Threshold(nn.Module):
    """Logits (x − 0.5, 0) of a one-pixel image: class 0 while x > 0.5. Every CE step on label 0
    moves x down by α."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1)[:, 0] - 0.5
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def pixels(*values: float) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1)


@pytest.mark.parametrize("tau, expected", [(0, 0.495), (1, 0.485), (2, 0.475), (10, 0.475)])
def test_early_stopped_pgd_stops_tau_misclassified_steps_after_the_boundary(tau, expected):
    """From 0.525 the iterates are 0.515, 0.505, 0.495 (the first misclassified), 0.485, 0.475 (the
    ball's edge, ε = 0.05): τ = 0 keeps the first misclassified one, τ = 1 the next, τ ≥ 2 runs into
    the edge. The second image never crosses: it runs all 10 steps to 0.85."""
    x = pixels(0.525, 0.9)
    x_adv = early_stopped_pgd(Threshold(), x, torch.tensor([0, 0]), x, eps=0.05, alpha=0.01, steps=10, tau=tau)
    assert x_adv.flatten().tolist() == pytest.approx([expected, 0.85], abs=1e-6)


def test_early_stopped_pgd_returns_a_misclassified_start_as_it_is():
    x = pixels(0.49)
    assert early_stopped_pgd(Threshold(), x, torch.tensor([0]), x, eps=0.05, alpha=0.01, steps=10,
                             tau=0).item() == pytest.approx(0.49)


def test_early_stopped_pgd_refuses_a_negative_tau():
    with pytest.raises(ValueError, match="tau"):
        early_stopped_pgd(Threshold(), pixels(0.5), torch.tensor([0]), pixels(0.5), eps=0.05, alpha=0.01,
                          steps=1, tau=-1)


def test_fat_tau_grows_at_the_authors_epochs():
    assert [tau_at(e, 0, (51, 91)) for e in (0, 49, 50, 89, 90, 119)] == [0, 0, 1, 1, 2, 2]
    assert tau_at(0, 3, ()) == 3


def test_fat_trainer_uses_the_epochs_tau_and_trains_on_cross_entropy(monkeypatch):
    monkeypatch.setattr(fat_module, "uniform_start", lambda x, eps, generator: x.clone())
    trainer = defenses.build("fat", eps=0.05, alpha=0.01, steps=10, tau_from_epoch=(2,))
    x, y = pixels(0.525), torch.tensor([0])
    for epoch, expected in ((0, 0.495), (1, 0.485)):
        loss, logits = trainer(Threshold(), x, y, epoch)
        assert logits[0, 0].item() == pytest.approx(expected - 0.5, abs=1e-6)
        assert loss.item() == pytest.approx(math.log(1 + math.exp(0.5 - expected)), abs=1e-6)


# --- GAIRAT ----------------------------------------------------------------------------------------

def test_least_pgd_steps_on_the_one_pixel_model():
    """κ = 3 from 0.525 (0.495 is the fourth iterate), 0 for a start already misclassified, K = 10 for
    an image no iterate misclassifies; x' is the last iterate."""
    x = pixels(0.525, 0.49, 0.9)
    x_adv, least = pgd_with_least_steps(Threshold(), x, torch.tensor([0, 0, 0]), x, eps=0.05, alpha=0.01, steps=10)
    assert least.tolist() == [3, 0, 10]
    assert x_adv.flatten().tolist() == pytest.approx([0.475, 0.44, 0.85], abs=1e-6)


def test_gairat_weights_and_loss_by_hand():
    least, steps = torch.tensor([0, 3, 10]), 10
    raw = [(1 + math.tanh(-1.0 + 5 * (1 - 2 * k / steps))) / 2 for k in (0, 3, 10)]
    expected_weights = [w * 3 / sum(raw) for w in raw]
    weights = gairat_weights(least, steps, lam=-1.0)
    assert weights.tolist() == pytest.approx(expected_weights, rel=1e-6)
    rows, labels = [[1.0, 0.0, -1.0], [0.2, 0.6, 0.1], [-0.5, 0.3, 1.5]], [0, 0, 2]
    ce = [cross_entropy(r, y) for r, y in zip(rows, labels)]
    expected = sum(w * c for w, c in zip(raw, ce)) / sum(raw)
    assert gairat_loss(torch.tensor(rows), torch.tensor(labels), weights).item() == pytest.approx(expected, rel=1e-6)
    assert gairat_weights(least, steps, lam=math.inf).tolist() == [1.0, 1.0, 1.0], "λ = ∞ is PGD-AT"


def test_gairat_trainer_reweights_only_after_the_burn_in(monkeypatch):
    monkeypatch.setattr(gairat_module, "uniform_start", lambda x, eps, generator: x.clone())
    trainer = defenses.build("gairat", eps=0.05, alpha=0.01, steps=10, reweight_from_epoch=2)
    x, y = pixels(0.525, 0.9), torch.tensor([0, 0])
    ce = [math.log(1 + math.exp(0.5 - 0.475)), math.log(1 + math.exp(0.5 - 0.85))]
    loss, logits = trainer(Threshold(), x, y, 0)
    assert loss.item() == pytest.approx(sum(ce) / 2, abs=1e-6), "burn-in: PGD-AT"
    raw = [(1 + math.tanh(-1.0 + 5 * (1 - 2 * k / 10))) / 2 for k in (3, 10)]
    loss, _ = trainer(Threshold(), x, y, 1)
    assert loss.item() == pytest.approx(sum(w * c for w, c in zip(raw, ce)) / sum(raw), abs=1e-6)


# --- AWP on TRADES ----------------------------------------------------------------------------------

def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def test_trades_awp_perturbs_against_the_trades_loss_from_its_epoch_and_restores_after_the_step():
    model, x, y = small_network(), torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    options = {"eps": 0.1, "alpha": 0.05, "steps": 2, "beta": 6.0, "awp_gamma": 0.01, "awp_from_epoch": 3}
    trainer, twin = TRADESAWP(**options), TRADESAWP(**options)
    original = {name: w.detach().clone() for name, w in perturbable_weights(model).items()}

    loss, _ = trainer(model, x, y, 1)
    assert all(torch.equal(w, original[n]) for n, w in perturbable_weights(model).items()), "no AWP before epoch 3"

    x_adv = trades_adversarial(model, x, eps=0.1, alpha=0.05, steps=2, generator=twin.generator(x.device, 2))
    weights = perturbable_weights(model)
    gradients = torch.autograd.grad(trades_loss(model(x), model(x_adv), y, 6.0), list(weights.values()))
    loss, logits_clean = trainer(model, x, y, 2)
    for (name, w), g in zip(weights.items(), gradients):
        expected = original[name] + 0.01 * original[name].norm() / g.norm() * g
        assert torch.allclose(w, expected, atol=1e-6), name
    assert loss.item() == pytest.approx(trades_loss(model(x), model(x_adv), y, 6.0).item(), rel=1e-5)
    assert torch.allclose(logits_clean, model(x))
    trainer.after_step(model, 2)
    assert all(torch.allclose(w, original[n]) for n, w in perturbable_weights(model).items())


# --- LBGAT ------------------------------------------------------------------------------------------

GUIDE = [[3.0, 0.5, -1.0], [0.0, 2.5, 1.0]]


@pytest.mark.parametrize("beta", [0.0, 6.0])
def test_lbgat_loss_by_hand(beta):
    mse = sum((a - g) ** 2 for ar, gr in zip(ADVERSARIAL, GUIDE) for a, g in zip(ar, gr)) / 6
    guide_ce = sum(cross_entropy(g, y) for g, y in zip(GUIDE, LABELS)) / 2
    kl_term = sum(kl(softmax(c), softmax(a)) for c, a in zip(CLEAN, ADVERSARIAL)) / 2
    guide, clean, adversarial = tensors(GUIDE, CLEAN, ADVERSARIAL)
    value = lbgat_loss(guide, clean, adversarial, torch.tensor(LABELS), beta).item()
    assert value == pytest.approx(mse + guide_ce + beta * kl_term, rel=1e-6)


def test_lbgat_guide_learns_from_its_cross_entropy_and_the_matching_term():
    guide, clean, adversarial = tensors(GUIDE, CLEAN, ADVERSARIAL)
    guide.requires_grad_(True)
    (gradient,) = torch.autograd.grad(lbgat_loss(guide, clean, adversarial, torch.tensor(LABELS)), guide)
    one_hot = F.one_hot(torch.tensor(LABELS), 3).double()
    expected = (guide.detach().softmax(1) - one_hot) / 2 - 2 * (adversarial - guide.detach()) / 6
    assert torch.allclose(gradient, expected)


def test_lbgat_trainer_attacks_the_target_alone_and_returns_its_adversarial_logits():
    torch.manual_seed(1)
    pair = GuideAndTarget(small_network(), nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    trainer, twin = defenses.build("lbgat", eps=0.1, alpha=0.05, steps=2, beta=6.0), defenses.build("lbgat")
    x_adv = trades_adversarial(pair.target, x, eps=0.1, alpha=0.05, steps=2, generator=twin.generator(x.device, 0))
    loss, logits = trainer(pair, x, y, 0)
    assert torch.allclose(logits, pair.target(x_adv))
    expected = lbgat_loss(pair.guide(x), pair.target(x), pair.target(x_adv), y, 6.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(TypeError, match="GuideAndTarget"):
        trainer(pair.target, x, y, 0)


# --- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, options, match", [
    ("mart", {"beta": -1.0}, "beta"), ("lbgat", {"beta": -0.5}, "beta"), ("fat", {"tau": -1}, "tau"),
    ("gairat", {"lam": math.nan}, "lambda"), ("trades_awp", {"awp_gamma": -0.1}, "gamma")])
def test_bad_settings_are_refused_with_their_name(name, options, match):
    with pytest.raises(ValueError, match=match):
        defenses.build(name, **options)


def test_defaults_are_the_papers_settings():
    """Built with no options, each trainer and loss uses its paper's CIFAR-10 settings (ε 8/255, 10
    steps of 2/255, eval-mode crafting; MART and TRADES-AWP β = 6, LBGAT0 β = 0, FAT's τ schedule,
    GAIRAT's λ = −1 from epoch 60, AWP γ = 0.005 from epoch 10)."""
    attack = {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "bn_mode": "eval", "seed": 0}
    expected = {"mart": {"beta": 6.0}, "lbgat": {"beta": 0.0}, "fat": {"tau": 0, "tau_from_epoch": (51, 91)},
                "gairat": {"lam": -1.0, "reweight_from_epoch": 60},
                "trades_awp": {"beta": 6.0, "gamma": 0.005, "awp_from_epoch": 10}}
    for name, own in expected.items():
        trainer = defenses.build(name)
        assert {k: getattr(trainer, k) for k in {**attack, **own}} == {**attack, **own}, name
    clean, adversarial = tensors(CLEAN, ADVERSARIAL)
    y = torch.tensor(LABELS)
    assert mart_loss(clean, adversarial, y).item() == pytest.approx(mart_by_hand(6.0), rel=1e-6)
    assert lbgat_loss(clean, clean, adversarial, y).item() == pytest.approx(
        lbgat_loss(clean, clean, adversarial, y, 0.0).item())
    assert gairat_weights(torch.tensor([3, 7]), 10).tolist() == pytest.approx(
        gairat_weights(torch.tensor([3, 7]), 10, lam=-1.0).tolist())


def test_trainers_pass_their_own_weights_to_their_losses():
    """A β (or λ) given to a trainer reaches its loss: MART and TRADES-AWP at β = 0 and GAIRAT at
    λ = ∞ reduce to their plain parts, which differ from the defaults' values on the same batch."""
    model, x, y = small_network(), torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    model.eval()
    cases = (("mart", {"beta": 0.0}, {}),
             ("trades_awp", {"beta": 0.0, "awp_from_epoch": 99}, {"awp_from_epoch": 99}),
             ("gairat", {"lam": math.inf, "reweight_from_epoch": 1}, {"reweight_from_epoch": 1}))
    for name, plain, default in cases:
        options = {"eps": 0.1, "alpha": 0.05, "steps": 2}
        low, _ = defenses.build(name, **options, **plain)(model, x, y, 0)
        high, _ = defenses.build(name, **options, **default)(model, x, y, 0)
        assert low.item() != pytest.approx(high.item()), name
    assert defenses.build("mart", beta=0.0).beta == 0.0, "β = 0 is allowed"


# --- what every trainer shares: its random stream, its BatchNorm mode, pixels without a gradient -------

GUIDED = ("lbgat", "dynat_inner_gairat", "dynat_mail")


def network_for(name: str) -> nn.Module:
    if name in GUIDED:
        return GuideAndTarget(small_network(), nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    return small_network()


TRAINERS = ["mart", "fat", "gairat", "trades_awp", "lbgat", "mail", "dynat_inner_gairat", "dynat_mail"]
SMALL_ATTACK = {"eps": 0.1, "alpha": 0.05, "steps": 1}


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_draws_from_its_own_stream_which_runs_on_within_an_epoch(name):
    """The random start comes from the trainer's (seed, epoch) stream: a twin with the same seed
    reproduces the first batch whatever the global RNG holds, and the next batch of the same epoch
    continues the stream (a different start, so a different loss on the same images)."""
    model, x, y = network_for(name), torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    trainer, twin = defenses.build(name, **SMALL_ATTACK), defenses.build(name, **SMALL_ATTACK)
    torch.manual_seed(1)
    first, _ = trainer(model, x, y, 0)
    torch.manual_seed(2)
    reproduced, _ = twin(model, x, y, 0)
    assert reproduced.item() == first.item(), "the start must not come from the global RNG"
    second, _ = trainer(model, x, y, 0)
    assert second.item() != first.item(), "the second batch must continue the epoch's stream"


class ModeRecorder(nn.Module):
    """A linear model that records whether it was in training mode at each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = small_network()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.linear(x)


@pytest.mark.parametrize("name", TRAINERS)
@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_trainer_crafts_in_its_bn_mode_whatever_mode_the_model_is_in(name, bn_mode):
    """The inner maximisation runs in the trainer's ``bn_mode``: the attack's forward passes (all but
    the last two or three, the outer passes and DYNAT's clean pass) see that mode although the model
    is in the other one."""
    recorder = ModeRecorder()
    model = GuideAndTarget(small_network(), recorder) if name in GUIDED else recorder
    model.train(bn_mode == "eval")
    trainer = defenses.build(name, **{**SMALL_ATTACK, "steps": 2}, bn_mode=bn_mode)
    trainer(model, torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]), 0)
    assert recorder.modes[0] == (bn_mode == "train")
    assert recorder.modes[-1] == (bn_mode == "eval"), "the outer pass keeps the model's own mode"


def test_trades_awp_perturbs_the_weights_against_its_own_beta(monkeypatch):
    calls = []

    def spy(*args):
        calls.append(args[3] if len(args) > 3 else "the default β")
        return trades_loss(*args)

    monkeypatch.setattr(awp_module, "trades_loss", spy)
    model, x, y = small_network(), torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    TRADESAWP(**SMALL_ATTACK, beta=2.5, awp_from_epoch=1)(model, x, y, 0)
    assert calls == [2.5, 2.5], "the weight perturbation and the outer loss both use β = 2.5"


def two_pixels(first: float, second: float) -> torch.Tensor:
    return torch.tensor([first, second]).view(1, 1, 1, 2)


def test_pixels_without_a_gradient_stay_where_they_start():
    """The one-pixel model reads only the first pixel, so the second has a zero gradient, and a step of
    α·sign(0) = 0 leaves it at its start in both step-counting PGDs."""
    x, y = two_pixels(0.525, 0.7), torch.tensor([0])
    start = two_pixels(0.525, 0.68)
    stopped = early_stopped_pgd(Threshold(), x, y, start, eps=0.05, alpha=0.01, steps=10, tau=1)
    counted, _ = pgd_with_least_steps(Threshold(), x, y, start, eps=0.05, alpha=0.01, steps=10)
    for x_adv in (stopped, counted):
        assert x_adv.flatten()[1].item() == pytest.approx(0.68)
