"""MAIL and the DYNATs reweighted as GAIRAT and MAIL (DYNAT's Tables 3-4, chapter 9): the margin, the
weights and the losses worked by hand on tiny tensors (expected values computed here with ``math``
from the formulas), the wiring of each trainer against its parts, and the settings of both profiles."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlib import attacks as advlib_attacks
from advlib import config, defenses, models, papers, recipes
from advlib.attacks.primitives import uniform_start
from advlib.defenses.dynat import GuideAndTarget
from advlib.defenses.dynat_reweighted import reweighted_dynat_loss
from advlib.defenses.gairat import gairat_weights, pgd_with_least_steps
from advlib.defenses.mail import mail_loss, mail_weights, probabilistic_margin

ADVERSARIAL = [[0.5, 1.5, -1.0], [0.4, 0.1, 0.3], [2.0, -1.0, 0.0]]
LABELS = [0, 2, 0]
GUIDE = [[3.0, 0.5, -1.0], [0.0, 2.5, 1.0], [0.2, 0.1, 1.0]]  # argmax: 0, 1, 2


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def cross_entropy(row: list[float], label: int, smoothing: float = 0.0) -> float:
    log_p = [math.log(p) for p in softmax(row)]
    return -(1 - smoothing) * log_p[label] - smoothing * sum(log_p) / len(row)


def margin(row: list[float], label: int) -> float:
    p = softmax(row)
    return p[label] - max(q for k, q in enumerate(p) if k != label)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_probabilistic_margin_by_hand():
    margins = probabilistic_margin(torch.tensor(ADVERSARIAL), torch.tensor(LABELS))
    expected = [margin(r, y) for r, y in zip(ADVERSARIAL, LABELS)]
    assert margins.tolist() == pytest.approx(expected, rel=1e-6)
    assert expected[0] < 0 < expected[2], "x' misclassified: negative margin; classified: positive"


@pytest.mark.parametrize("gamma, bias", [(10.0, -0.5), (2.0, 0.0)])
def test_mail_weights_and_loss_by_hand(gamma, bias):
    margins = [margin(r, y) for r, y in zip(ADVERSARIAL, LABELS)]
    raw = [sigmoid(-gamma * (m - bias)) for m in margins]
    weights = mail_weights(torch.tensor(margins), gamma, bias)
    assert weights.tolist() == pytest.approx([w * 3 / sum(raw) for w in raw], rel=1e-5)
    assert weights[0] > weights[1] > weights[2], "the smaller the margin, the larger the weight"
    ce = [cross_entropy(r, y) for r, y in zip(ADVERSARIAL, LABELS)]
    expected = sum(w * c for w, c in zip(raw, ce)) / sum(raw)
    logits = torch.tensor(ADVERSARIAL, requires_grad=True)
    loss = mail_loss(logits, torch.tensor(LABELS), gamma, bias)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    (gradient,) = torch.autograd.grad(loss, logits)
    one_hot = F.one_hot(torch.tensor(LABELS), 3).float()
    expected_gradient = weights[:, None] * (logits.detach().softmax(1) - one_hot) / 3
    assert torch.allclose(gradient, expected_gradient, atol=1e-6), "the weights carry no gradient"


def test_mail_weights_of_equal_margins_are_all_one():
    assert mail_weights(torch.full((4,), 0.3)).tolist() == pytest.approx([1.0] * 4)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_reweighted_dynat_loss_by_hand(smoothing):
    """CE(G(x), y) + (1/B) Σ ω_i CE_s(S(x'_i), l_i) with l = argmax G(x) = (0, 1, 2)."""
    dynamic = [0, 1, 2]
    weights = [0.5, 1.0, 1.5]
    guide_ce = sum(cross_entropy(g, y) for g, y in zip(GUIDE, LABELS)) / 3
    target = [cross_entropy(r, l, smoothing) for r, l in zip(ADVERSARIAL, dynamic)]
    guide, adversarial, y = torch.tensor(GUIDE), torch.tensor(ADVERSARIAL), torch.tensor(LABELS)
    weighted = reweighted_dynat_loss(guide, adversarial, y, torch.tensor(weights), smoothing)
    assert weighted.item() == pytest.approx(guide_ce + sum(w * t for w, t in zip(weights, target)) / 3, rel=1e-5)
    plain = reweighted_dynat_loss(guide, adversarial, y, None, smoothing)
    assert plain.item() == pytest.approx(guide_ce + sum(target) / 3, rel=1e-5)
    if smoothing == 0.0:
        assert reweighted_dynat_loss(guide, adversarial, y).item() == pytest.approx(plain.item()), \
            "no weights and no smoothing by default"


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def small_pair() -> GuideAndTarget:
    torch.manual_seed(3)
    return GuideAndTarget(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), small_network())


BATCH = (torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1, 2, 0, 1, 2]))
ATTACK = {"eps": 0.1, "alpha": 0.05, "steps": 2}


@pytest.mark.parametrize("epoch, reweighted", [(0, False), (1, True)])
def test_mail_trainer_is_pgd_at_until_its_epoch_then_mail(epoch, reweighted):
    from advlib.defenses.adversarial_training import maximize_linf
    model, (x, y) = small_network(), BATCH
    trainer = defenses.build("mail", **ATTACK, gamma=2.0, bias=0.1, reweight_from_epoch=2)
    twin = defenses.build("mail")
    model.eval()
    x_adv = maximize_linf(model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum"), **ATTACK,
                          generator=twin.generator(x.device, epoch))
    loss, logits = trainer(model, x, y, epoch)
    assert torch.allclose(logits, model(x_adv))
    expected = mail_loss(model(x_adv), y, 2.0, 0.1) if reweighted else F.cross_entropy(model(x_adv), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (mail_loss(model(x_adv), y, 2.0, 0.1).item() != pytest.approx(F.cross_entropy(model(x_adv), y).item()))


@pytest.mark.parametrize("inner", ["dynamic", "ground_truth"])
@pytest.mark.parametrize("epoch, reweighted", [(0, False), (1, True)])
def test_dynat_mail_trainer_weights_the_target_term_by_its_margin_to_the_dynamic_label(inner, epoch, reweighted):
    pair, (x, y) = small_pair(), BATCH
    trainer = defenses.build("dynat_mail", **ATTACK, gamma=2.0, bias=0.1, reweight_from_epoch=2, inner=inner)
    twin = defenses.build("dynat", **ATTACK)  # DYNAT's own inner step, with the same (seed, epoch) stream
    pair.eval()
    labels = pair.guide(x).argmax(1)
    x_adv = twin.craft_on_labels(pair.target, x, labels if inner == "dynamic" else y, epoch)
    loss, logits = trainer(pair, x, y, epoch)
    assert torch.allclose(logits, pair.target(x_adv))
    weights = mail_weights(probabilistic_margin(pair.target(x_adv), labels), 2.0, 0.1) if reweighted else None
    expected = reweighted_dynat_loss(pair.guide(x), pair.target(x_adv), y, weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert trainer.epoch_statistics()["label_agreement"] == pytest.approx((labels == y).float().mean().item())


@pytest.mark.parametrize("epoch, reweighted", [(0, False), (1, True)])
def test_dynat_inner_gairat_counts_steps_against_the_dynamic_label_and_smooths_it(epoch, reweighted):
    torch.manual_seed(5)  # a pair whose images cross the boundary after 0 to 3 steps
    pair = GuideAndTarget(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
                          nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)))
    x, y = BATCH
    attack = {"eps": 0.4, "alpha": 0.1, "steps": 4}  # large enough that κ differs between the images
    trainer = defenses.build("dynat_inner_gairat", **attack, lam=0.0, reweight_from_epoch=2, label_smoothing=0.2)
    pair.eval()
    labels = pair.guide(x).argmax(1)
    start = uniform_start(x, 0.4, defenses.build("dynat").generator(x.device, epoch))
    x_adv, least = pgd_with_least_steps(pair.target, x, labels, start, **attack)
    assert len(set(least.tolist())) > 1, "the test needs images that cross after different numbers of steps"
    loss, logits = trainer(pair, x, y, epoch)
    assert torch.allclose(logits, pair.target(x_adv))
    weights = gairat_weights(least, 4, 0.0) if reweighted else None
    expected = reweighted_dynat_loss(pair.guide(x), pair.target(x_adv), y, weights, 0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name, options, match", [
    ("mail", {"gamma": -1.0}, "gamma"), ("mail", {"bias": math.nan}, "bias"),
    ("dynat_mail", {"gamma": -0.5}, "gamma"), ("dynat_mail", {"inner": "trades"}, "inner"),
    ("dynat_inner_gairat", {"label_smoothing": 1.0}, "label_smoothing"),
    ("dynat_inner_gairat", {"lam": math.nan}, "lambda")])
def test_bad_settings_are_refused_with_their_name(name, options, match):
    with pytest.raises(ValueError, match=match):
        defenses.build(name, **options)


def test_boundary_settings_are_accepted():
    """γ = 0 (every weight equal: PGD-AT, chapter 9's exercise 1), a slope below 1 and no label
    smoothing are all valid."""
    assert defenses.build("mail", gamma=0.0).gamma == 0.0
    assert defenses.build("dynat_mail", gamma=0.5).gamma == 0.5
    assert defenses.build("dynat_inner_gairat", label_smoothing=0.0).label_smoothing == 0.0


def test_defaults_are_the_papers_settings():
    """MAIL-AT: γ = 10, β = −0.5, weights from epoch 77 (the authors' README and train.py); DYNAT-Inner-
    GAIRAT: λ = −1, label smoothing 0.2, weights after a 70-epoch burn-in (Sec. 4.3); DYNAT's ε and step."""
    mail = defenses.build("mail")
    assert (mail.eps, mail.alpha, mail.steps, mail.gamma, mail.bias, mail.reweight_from_epoch, mail.bn_mode,
            mail.seed) == (8 / 255, 2 / 255, 10, 10.0, -0.5, 77, "eval", 0)
    combined = defenses.build("dynat_mail")
    assert (combined.eps, combined.alpha, combined.steps, combined.gamma, combined.bias, combined.reweight_from_epoch,
            combined.inner, combined.bn_mode, combined.target_clean_pass, combined.seed) == (
        0.031, 0.007, 10, 10.0, -0.5, 77, "dynamic", "eval", True, 0)
    gairat = defenses.build("dynat_inner_gairat")
    assert (gairat.eps, gairat.alpha, gairat.steps, gairat.lam, gairat.label_smoothing, gairat.reweight_from_epoch,
            gairat.inner, gairat.bn_mode, gairat.target_clean_pass, gairat.seed) == (
        0.031, 0.007, 10, -1.0, 0.2, 71, "dynamic", "eval", True, 0)
    margins = torch.tensor([-0.4, 0.2, 0.9])
    assert mail_weights(margins).tolist() == pytest.approx(mail_weights(margins, 10.0, -0.5).tolist())
    logits, labels = torch.tensor(ADVERSARIAL), torch.tensor(LABELS)
    assert mail_loss(logits, labels).item() == pytest.approx(mail_loss(logits, labels, 10.0, -0.5).item())


@pytest.mark.parametrize("name", ["dynat_mail", "dynat_inner_gairat"])
def test_reweighted_dynats_pass_their_settings_on_to_dynat(name):
    """What the combined trainers hand to DYNAT's constructor arrives: the step count, the BatchNorm
    mode, the seed and the clean BatchNorm pass."""
    trainer = defenses.build(name, steps=3, bn_mode="train", seed=7, target_clean_pass=False)
    assert (trainer.steps, trainer.bn_mode, trainer.seed, trainer.target_clean_pass) == (3, "train", 7, False)


def test_paper_profile_has_each_methods_published_settings():
    from advlib.training import lr_multiplier, training_progress
    run = config.setup("paper", device="cpu", quiet=True)
    settings = {m: recipes.adversarial_training_config(run, m)
                for m in ("mail", "dynat_at_mail", "dynat_mail_inner", "dynat_inner_gairat")}
    for method in ("mail", "dynat_at_mail", "dynat_mail_inner"):
        c = settings[method]
        assert (c["epochs"], c["optimizer"]["lr"], c["optimizer"]["weight_decay"]) == (120, 0.01, 3.5e-3), method
        assert c["target"] == {"arch": "resnet18_cifar"}, method
        assert c["trainer_options"]["reweight_from_epoch"] == 77 and c["trainer_options"]["gamma"] == 10.0
        lr = [lr_multiplier(training_progress(e - 1, 0, 391, 120), c["schedule"]) for e in (75, 76, 91, 101)]
        assert lr == pytest.approx([1.0, 0.1, 0.01, 0.001])
    assert "guide" not in settings["mail"]
    assert settings["dynat_at_mail"]["guide"] == settings["dynat_mail_inner"]["guide"] == {"arch": "wrn34_10"}
    assert (settings["dynat_at_mail"]["trainer_options"]["inner"],
            settings["dynat_mail_inner"]["trainer_options"]["inner"]) == ("ground_truth", "dynamic")
    g = settings["dynat_inner_gairat"]
    assert (g["epochs"], g["optimizer"]["weight_decay"], g["target"]["arch"], g["guide"]["arch"]) == (
        120, 5e-4, "wrn34_10", "resnet18_cifar")
    assert (g["trainer_options"]["label_smoothing"], g["trainer_options"]["reweight_from_epoch"]) == (0.2, 71)


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_table_3s_small_target_rows_swap_the_target_and_the_guide_and_change_nothing_else(profile):
    run = config.setup(profile, device="cpu", quiet=True)
    for wide, swapped in (("gairat", "gairat_small_target"),
                          ("dynat_inner_gairat", "dynat_inner_gairat_small_target")):
        a, b = recipes.adversarial_training_config(run, wide), recipes.adversarial_training_config(run, swapped)
        assert a["trainer"] == b["trainer"] and a["trainer_options"] == b["trainer_options"], swapped
        differ = {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}
        assert differ == {"method", "target", "guide"} - ({"guide"} if "guide" not in a else set()), swapped
        if "guide" in a:
            assert (b["target"], b["guide"]) == (a["guide"], a["target"]), "the two networks change places"
        else:
            assert b["target"] == recipes.adversarial_training_config(run, "dynat_inner_gairat")["guide"]


def test_a_methods_own_architecture_builds_its_networks(tmp_path, monkeypatch):
    """The paper profile's per-method target and guide reach the networks (checked on the quick profile
    with a wider guide and target, so that it stays small)."""
    monkeypatch.setenv("ADVLIB_HOME", str(tmp_path))
    from advlib.recipes.common import network
    run = config.setup("quick", device="cpu", quiet=True)
    default = network(run, "target", seed=0)
    wider = network(run, "target", seed=0, width=24)
    assert sum(p.numel() for p in wider.parameters()) > sum(p.numel() for p in default.parameters())

    def size(net: nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())
    resnet = network(run, "guide", seed=0, arch="resnet18_cifar")
    assert size(resnet) == size(models.for_dataset("resnet18_cifar", run.dataset)) > 10 * size(default), \
        "an arch replaces the profile's settings (the guide's width is not passed to ResNet-18)"


def test_rows_carry_the_papers_names_and_tables_hold_the_seeds_numbers():
    labels = {recipes.AT_METHODS[m].label for m in recipes.REWEIGHTING_METHODS}
    assert labels == {"MAIL", "DYNAT-Inner-GAIRAT", "GAIRAT (small target)", "DYNAT-Inner-GAIRAT (small target)",
                      "DYNAT-AT-MAIL", "DYNAT-MAIL-Inner"}
    assert set(recipes.REWEIGHTING_METHODS) <= set(recipes.REWEIGHTING_ROWS)
    for name, (table, methods) in recipes.REWEIGHTING_TABLES.items():
        assert {recipes.AT_METHODS[m].label for m in methods} <= set(table), name
    assert papers.DYNAT_TABLE3["DYNAT-Inner-GAIRAT"]["AA"] == 42.60
    assert papers.DYNAT_TABLE3["GAIRAT (small target)"] == {"clean": 82.27, "PGD-20": 60.07, "CW": 37.82, "AA": 35.70}
    assert papers.DYNAT_TABLE4["DYNAT-MAIL-Inner"]["AA"] == 49.90
    assert papers.DYNAT_TABLE4["MAIL"]["CW"] == 48.88
    assert [recipes.chapter_of(m) for m in ("gairat", "mail", "dynat_mail_inner", "dynat", "trades")] == [6, 9, 9, 8, 6]


def test_paper_profile_results_quote_tables_3_and_4(tmp_path, monkeypatch):
    import json
    monkeypatch.setenv("ADVLIB_HOME", str(tmp_path))
    monkeypatch.setattr(recipes.adversarial_training, "reweighting_outcomes",
                        lambda run, method: {"clean": torch.tensor([True, False])})
    run = config.setup("paper", device="cpu", quiet=True)
    rows = recipes.reweighting_table(run, save=True)
    assert [r["method"] for r in rows] == ["GAIRAT", "DYNAT-Inner-GAIRAT", "GAIRAT (small target)",
                                           "DYNAT-Inner-GAIRAT (small target)", "PGD-AT", "TRADES", "MART", "FAT",
                                           "AWP", "MAIL", "DYNAT-AT-MAIL", "DYNAT-MAIL-Inner"]
    saved = json.loads((run.results_dir / "at_dynat_reweighting.json").read_text())["results"]
    quoted = [r for r in saved if r.get("source", "").startswith("paper")]
    assert {r["source"] for r in quoted} == {"paper (Table 3)", "paper (Table 4)"}
    mail = next(r for r in quoted if r["method"] == "MAIL")
    assert mail["AA"] == pytest.approx(0.4422) and mail["source"] == "paper (Table 4)"


def test_table_4s_own_columns_are_pgd_100_and_apgd_on_the_first_images(tmp_path, monkeypatch):
    """table4_outcomes against the two attacks run by hand on the first ``subset`` images of a tiny
    model: PGD with 100 steps and APGD-CE with 100 iterations, each on its own, robust only where
    also clean; the rows of Table 4's methods carry both columns and their image count, Table 3's
    alone do not; and the smoke run names its PGD column by the steps it takes."""
    monkeypatch.setenv("ADVLIB_HOME", str(tmp_path))
    run = config.setup("quick", device="cpu", quiet=True)
    spec = run.config["adversarial_training"]
    assert spec["table4_evaluation"] == {"subset": 100, "pgd_steps": 100, "apgd_iterations": 100}
    assert recipes.table4_columns(run) == ["PGD-100", "APGD"]
    assert recipes.table4_columns(config.setup("paper", device="cpu", smoke=True, quiet=True)) == ["PGD-3", "APGD"]
    spec["table4_evaluation"]["subset"] = 12
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    monkeypatch.setattr(recipes.adversarial_training, "adversarially_trained", lambda run, method: (model, []))
    monkeypatch.setattr(recipes.adversarial_training, "test_set", lambda run, subset: (x, y))
    outcomes = recipes.table4_outcomes(run, "mail")
    eps, alpha = spec["eval_attack"]["eps"], spec["eval_attack"]["alpha"]
    first, labels = x[:12], y[:12]
    clean = model(first).argmax(1) == labels
    by_hand = {"PGD-100": advlib_attacks.build("pgd", eps=eps, alpha=alpha, steps=100, seed=run.seed),
               "APGD": advlib_attacks.build("apgd-ce", eps=eps, n_iter=100, seed=run.seed)}
    assert outcomes["clean (Table 4 images)"].tolist() == clean.tolist()
    for column, attack in by_hand.items():
        x_adv = attack(model, first, labels)
        assert (x_adv - first).abs().max() <= eps + 1e-6
        expected = clean & (model(x_adv).argmax(1) == labels)
        assert outcomes[column].tolist() == expected.tolist(), column
        assert not (outcomes[column] & ~clean).any(), "robust only where clean"
    assert 0 < int(clean.sum()) and outcomes["PGD-100"].sum() < clean.sum(), "the attack must bite for the test to mean anything"
    monkeypatch.setattr(recipes.adversarial_training, "at_outcomes",
                        lambda run, method: {"clean": torch.ones(20, dtype=torch.bool)})
    rows = {row["method"]: row for row in recipes.reweighting_table(run)}
    assert rows["MAIL"]["table4_images"] == 12 and rows["MAIL"]["images"] == 20
    assert "PGD-100" in rows["GAIRAT"] and "APGD" not in rows["DYNAT-Inner-GAIRAT"]
