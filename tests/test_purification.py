"""Distillation-based purification (Koo et al. 2023): the autoencoder, each loss worked by hand on
tiny tensors, and a forward/backward of the paper-profile teachers and student on CIFAR-shaped data."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advlib import config, defenses, models
from advlib.defenses.purification import (kd_components, kd_term, reconstruction_loss, relativistic_loss,
                                          student_loss)
from advlib.evaluation import Purified, gray_box

PAPER_CAE = config.PROFILES["paper"]["purification"]["autoencoder"]


class FirstPixelsAsLogits(nn.Module):
    """A 'classifier' whose two logits are the first two pixels: easy to work out by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2]


class LowerSecondPixel(nn.Module):
    """A 'purifier' that subtracts ``amount`` from the second pixel."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.tensor([0.0, amount]).view(1, 1, 1, 2), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.offset


def test_reconstruction_loss_by_hand():
    assert reconstruction_loss(torch.tensor([[0.5, 1.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.125)


def test_relativistic_loss_by_hand():
    purified = torch.tensor([[[[2.0, 0.0]]]])
    adversarial = torch.tensor([[[[0.5, 0.0]]]])
    # p_out = 2, adv_out = 0.5: −log σ(2 − 0.5) = log(1 + e^(−1.5))
    expected = math.log(1 + math.exp(-1.5))
    classifier = FirstPixelsAsLogits()
    loss = relativistic_loss(classifier(purified), classifier(adversarial), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected)


def test_kd_term_by_hand_in_pixel_space():
    teacher = torch.tensor([[[[0.0, math.log(3.0)]]]])  # softmax → (1/4, 3/4)
    student = torch.zeros(1, 1, 1, 2)                   # softmax → (1/2, 1/2)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    mse = math.log(3.0) ** 2 / 2
    assert kd_term(teacher, student).item() == pytest.approx(kl + mse)
    assert kd_term(student, student).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_term_in_logit_space_uses_the_classifier():
    teacher = torch.tensor([[[[0.0, math.log(3.0), 9.0]]]])
    student = torch.tensor([[[[0.0, 0.0, -9.0]]]])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    mse = (math.log(3.0) ** 2 + 18.0 ** 2) / 3
    assert kd_term(teacher, student, "logits", FirstPixelsAsLogits()).item() == pytest.approx(kl + mse)


def test_student_loss_by_hand():
    student = torch.zeros(1, 1, 1, 2)
    clean = torch.zeros(1, 1, 1, 2)
    teacher_a = torch.tensor([[[[0.0, math.log(3.0)]]]])
    one_teacher = 0.25 * math.log(0.5) + 0.75 * math.log(1.5) + math.log(3.0) ** 2 / 2
    # β·0 + γ·(kd(a) + kd(student itself = 0)) / 2 with β = γ = 0.5
    assert student_loss(student, clean, [teacher_a, student]).item() == pytest.approx(0.5 * one_teacher / 2)
    assert student_loss(student, clean + 1, [student], beta=0.25, gamma=0.5).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="at least one teacher"):
        student_loss(student, clean, [])


def test_paper_autoencoder_architecture():
    net = models.build("cae", in_channels=3, **PAPER_CAE).net
    assert len(net.encoder) == 15 and len(net.decoder) == 15
    for block in net.encoder:
        assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    for block in net.decoder:
        assert [type(m) for m in block] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU]
    sources = [net.skip_source(k) for k in range(1, 16)]
    assert sources == [14, None, 12, None, 10, None, 8, None, 6, None, 4, None, 2, None, 0]
    x = torch.rand(2, 3, 32, 32)
    y = net(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_skips_change_the_function():
    torch.manual_seed(0)
    with_skips = models.build("cae", in_channels=1, width=8, blocks=3).eval()
    without = models.build("cae", in_channels=1, width=8, blocks=3, skips=False).eval()
    without.load_state_dict(with_skips.state_dict())
    x = torch.rand(2, 1, 32, 32)
    assert not torch.allclose(with_skips(x), without(x))


def test_bad_autoencoder_arguments():
    with pytest.raises(ValueError, match="at least 2 blocks"):
        models.build("cae", blocks=1)
    with pytest.raises(ValueError, match="stride"):
        models.build("cae", stride=3)


def _frozen_copy(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_paper_profile_teachers_and_student_forward_backward_on_cifar_shapes():
    torch.manual_seed(0)
    classifier = models.for_dataset("resnet56", "cifar10").eval()
    purifiers = {role: models.build("cae", in_channels=3, **PAPER_CAE) for role in ("nt", "at", "student")}
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    x_adv = (x + 8 / 255 * torch.randn_like(x).sign()).clamp(0, 1)

    losses = {"nt": defenses.build("purifier-nt"), "at": defenses.build("purifier-at", classifier=classifier)}
    classifier_before = _frozen_copy(classifier)
    for role in ("nt", "at"):
        loss, _ = losses[role](purifiers[role], x, y, 0, x_adv)
        loss.backward()
        assert all(p.grad is not None for p in purifiers[role].parameters()), role
        purifiers[role].zero_grad(set_to_none=True)
    teachers_before = {k: _frozen_copy(purifiers[k]) for k in ("nt", "at")}
    distill = defenses.build("purifier-kd", teachers={"at": purifiers["at"], "nt": purifiers["nt"]},
                             classifier=classifier)
    loss, logits = distill(purifiers["student"], x, y, 0, x_adv)
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (2, 10)
    assert all(p.grad is not None for p in purifiers["student"].parameters())
    assert all(p.grad is None for p in classifier.parameters()), "the classifier stays frozen"
    for role in ("nt", "at"):
        assert all(p.grad is None for p in purifiers[role].parameters()), f"teacher {role} gets no gradient"
        assert all(torch.equal(a, b) for a, b in zip(teachers_before[role], purifiers[role].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(classifier_before, classifier.parameters()))


def test_purified_is_a_model():
    purifier = nn.Identity()
    classifier = FirstPixelsAsLogits()
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(Purified(purifier, classifier)(x), classifier(x))


class RaiseSecondPixel:
    """An 'attack' that adds 0.7 to the second pixel and remembers which model it was given."""

    def __init__(self) -> None:
        self.models = []

    def __call__(self, model, x, y):
        self.models.append(model)
        return (x + torch.tensor([0.0, 0.7]).view(1, 1, 1, 2)).clamp(0, 1)


def test_gray_box_evaluation_crafts_on_the_classifier_and_scores_each_purifier():
    x = torch.zeros(4, 1, 1, 2)
    x[:, 0, 0, 0] = torch.tensor([0.6, 0.6, 0.2, 0.2])
    x[:, 0, 0, 1] = torch.tensor([0.0, 0.0, 0.9, 0.9])
    y = torch.tensor([0, 0, 1, 1])
    classifier, attack = FirstPixelsAsLogits(), RaiseSecondPixel()
    table = gray_box(classifier, {"ours": LowerSecondPixel(0.5)}, {"raise": attack}, x, y)
    assert table["Original"] == {"no defence": 1.0, "ours": 1.0, "images": 4}
    # attacked second pixels (0.7, 0.7, 1, 1) beat the first for all four: images 0 and 1 flip to class 1;
    # the purifier lowers them to (0.2, 0.2, 0.5, 0.5) and every prediction is right again
    assert table["raise"] == {"no defence": 0.5, "ours": 1.0, "images": 4}
    assert attack.models == [classifier], "gray-box: x' is crafted on the classifier alone"


class SpyTeacher(nn.Module):
    """A teacher that returns its input unchanged and records every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return x


def test_nt_teacher_is_given_the_clean_image_and_at_teacher_the_adversarial_one():
    """Koo et al. Sec. 3.3: "the AT teacher model is given AEs ..., and the NT teacher model is given
    pure images to restore them"; the profile default follows it."""
    x, x_adv, y = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    assert all(config.PROFILES[p]["purification"]["nt_sees_clean"] for p in config.PROFILES)
    at, nt = SpyTeacher(), SpyTeacher()
    trainer = defenses.build("purifier-kd", teachers={"at": at, "nt": nt})
    loss, _ = trainer(nn.Identity(), x, y, 0, x_adv)
    assert [t.shape for t in at.inputs] == [x.shape] and torch.equal(at.inputs[0], x_adv)
    assert len(nt.inputs) == 1 and torch.equal(nt.inputs[0], x)
    # the loss is computed against those outputs: S = identity on x', T_AT(x') = x', T_NT(x) = x
    expected = student_loss(x_adv, x, [x_adv, x])
    assert loss.item() == pytest.approx(expected.item())

    at, nt = SpyTeacher(), SpyTeacher()
    literal = defenses.build("purifier-kd", teachers={"at": at, "nt": nt}, nt_sees_clean=False)
    literal(nn.Identity(), x, y, 0, x_adv)
    assert torch.equal(nt.inputs[0], x_adv) and torch.equal(at.inputs[0], x_adv)


def test_student_trainer_rejects_unknown_teacher_names():
    with pytest.raises(ValueError, match="'at' and 'nt'"):
        defenses.build("purifier-kd", teachers={"robust": SpyTeacher()})


class ScaledPurifier(nn.Module):
    """P(x) = w · x with one trainable scalar: its gradient is easy to check."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def test_at_teacher_relativistic_term_reaches_the_purifier_through_the_classifier():
    """L_AT = MSE(P(x'), x) + softplus(f(x')_y − f(P(x'))_y): the value and dL/dw, worked by hand for
    P(x) = w·x and f = the first two pixels as logits. Detaching the relativistic term, or computing
    it on x' instead of P(x'), changes the value or the gradient."""
    x = torch.tensor([[[[0.2, 0.6]]], [[[0.5, 0.1]]]])
    x_adv = torch.tensor([[[[0.3, 0.4]]], [[[0.4, 0.3]]]])
    y = torch.tensor([0, 1])
    w = 0.8
    purifier = ScaledPurifier(w)
    loss, logits = defenses.build("purifier-at", classifier=FirstPixelsAsLogits())(purifier, x, y, 0, x_adv)
    loss.backward()

    true_adv = torch.tensor([0.3, 0.3])          # f(x')_y: pixel y of x'
    mse = ((w * x_adv - x) ** 2).mean()
    relativistic = torch.nn.functional.softplus(true_adv - w * true_adv).mean()
    # d/dw: MSE → mean(2 (w x' − x) x'); softplus(a − w a) → −a · σ(a − w a), averaged over the batch
    grad_mse = (2 * (w * x_adv - x) * x_adv).mean()
    grad_rel = (-true_adv * torch.sigmoid(true_adv - w * true_adv)).mean()
    assert loss.item() == pytest.approx((mse + relativistic).item(), rel=1e-6)
    assert purifier.w.grad.item() == pytest.approx((grad_mse + grad_rel).item(), rel=1e-5)
    assert torch.allclose(logits, (w * x_adv).flatten(1)[:, :2])


def test_pixel_space_kl_is_about_half_the_centred_mse():
    """For a softmax over n pixels, KL(g(T) ‖ g(S)) ≈ ½ (1/n) Σ (d_i − d̄)² with d = T − S, so the KL
    term of L_kd is of the same order as its MSE term, not negligible."""
    torch.manual_seed(0)
    student = torch.rand(8, 1, 8, 8)
    teacher = (student + 0.05 * torch.randn_like(student) + 0.02).clamp(0, 1)
    spy = SpyTeacher()
    trainer = defenses.build("purifier-kd", teachers={"at": spy})
    parts = trainer.kd_breakdown(nn.Identity(), torch.zeros_like(student), teacher)["at"]
    # the identity student outputs x' = teacher, and T_AT = identity sees x' too: no difference at all
    assert parts["kl"] == pytest.approx(0.0, abs=1e-7) and parts["mse"] == 0.0

    kl, mse = kd_components(teacher, student)
    d = (teacher - student).flatten(1)
    centred = ((d - d.mean(1, keepdim=True)) ** 2).mean()
    assert mse.item() == pytest.approx((d ** 2).mean().item())
    assert kl.item() == pytest.approx(0.5 * centred.item(), rel=0.05)


def test_student_recipe_trains_with_the_profiles_loss_settings(monkeypatch):
    """The recipe, not only the loss, is wired: the trainer it builds carries the profile's β, γ, KD
    space and NT input, and computes the student's loss (Koo et al. Eq. 5) with them."""
    import importlib

    recipe = importlib.import_module("advlib.recipes.purification")
    monkeypatch.setattr(recipe, "purifier_teacher", lambda run, kind: (SpyTeacher(), []))
    monkeypatch.setattr(recipe, "classifier", lambda run: (nn.Identity(), []))
    x, x_adv, y = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])

    run = config.setup("quick", quiet=True, overrides={"purification.beta": 0.3, "purification.gamma": 0.7})
    trainer = recipe.purifier_student_loss(run)
    assert (trainer.beta, trainer.gamma, trainer.kd_space, trainer.nt_sees_clean) == (0.3, 0.7, "pixels", True)
    assert sorted(trainer.teachers) == ["at", "nt"]
    loss, _ = trainer(nn.Identity(), x, y, 0, x_adv)
    # identity teachers: T_AT(x') = x', T_NT(x) = x; the identity student outputs x'
    expected = student_loss(x_adv, x, [x_adv, x], beta=0.3, gamma=0.7)
    assert loss.item() == pytest.approx(expected.item())
    assert loss.item() != pytest.approx(student_loss(x_adv, x, [x_adv, x], beta=0.3, gamma=0.0).item())

    literal = config.setup("quick", quiet=True, overrides={"purification.nt_sees_clean": False})
    assert recipe.purifier_student_loss(literal).nt_sees_clean is False


def test_student_recipe_gives_the_classifier_only_to_a_logit_space_loss(monkeypatch):
    """In pixel space f would only score the training batches (a forward pass per step that the
    history's train_acc_adv replaces); in logit space L_kd itself needs it."""
    import importlib

    recipe = importlib.import_module("advlib.recipes.purification")
    classifier = nn.Identity()
    monkeypatch.setattr(recipe, "purifier_teacher", lambda run, kind: (SpyTeacher(), []))
    monkeypatch.setattr(recipe, "classifier", lambda run: (classifier, []))
    x, x_adv, y = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])

    pixels = recipe.purifier_student_loss(config.setup("quick", quiet=True))
    assert pixels.classifier is None
    assert pixels(nn.Identity(), x, y, 0, x_adv)[1] is None
    logits = recipe.purifier_student_loss(config.setup("quick", quiet=True,
                                                       overrides={"purification.kd_space": "logits"}))
    assert logits.classifier is classifier


def test_student_trainer_in_logit_space_distils_the_classifiers_view():
    """kd_space="logits" (the other reading of g in L_kd): the KL compares f's softmax on the teacher's
    and the student's outputs; worked by hand for identity teachers and student and f = the first
    two pixels as logits. Without a classifier the trainer returns no logits."""
    import torch.nn.functional as F

    f = FirstPixelsAsLogits()
    x, x_adv, y = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    trainer = defenses.build("purifier-kd", teachers={"at": SpyTeacher(), "nt": SpyTeacher()}, classifier=f,
                             kd_space="logits", beta=0.3, gamma=0.7)
    loss, logits = trainer(nn.Identity(), x, y, 0, x_adv)
    # S(x') = x' = T_AT(x'): the AT term is 0; T_NT(x) = x
    nt_logits, student_logits = x.flatten(1)[:, :2], x_adv.flatten(1)[:, :2]
    p_teacher = F.softmax(nt_logits, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student_logits, dim=1))).sum(1).mean()
    kd = (kl + ((x - x_adv) ** 2).mean()) / 2
    expected = 0.3 * ((x_adv - x) ** 2).mean() + 0.7 * kd
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(logits, student_logits)

    pixels = defenses.build("purifier-kd", teachers={"at": SpyTeacher()})
    assert pixels(nn.Identity(), x, y, 0, x_adv)[1] is None


def test_table_1_computes_the_baselines_columns_and_table_2_leaves_them_out(monkeypatch, tmp_path):
    """gray_box_tables turns the protocol's accuracies into Table 1 (with computed "NRP" and "SOAP"
    columns beside the quoted "paper: NRP" and "paper: SOAP") and Table 2 (the ablation, without them)."""
    import importlib

    recipe = importlib.import_module("advlib.recipes.purification")
    monkeypatch.setenv("ADVLIB_HOME", str(tmp_path))
    rows = ["Original", "PGD8", "PGD16", "FGSM", "BIM", "CW", "AA"]
    accuracies = {"no defence": 0.1, "ours": 0.5, "AT teacher, no KD": 0.4, "KD from AT": 0.3, "KD from NT": 0.2,
                  "SOAP": 0.25, "NRP": 0.35}
    monkeypatch.setattr(recipe, "classifier", lambda run: (nn.Identity(), []))
    monkeypatch.setattr(recipe, "test_set", lambda run, n: (torch.rand(2, 1, 4, 4), torch.tensor([0, 1])))
    monkeypatch.setattr(recipe, "gray_box", lambda *args, **kwargs: {row: {**accuracies, "images": 2} for row in rows})
    run = config.setup("quick", quiet=True)
    purifiers = {name: nn.Identity() for name in accuracies if name != "no defence"}
    table1, table2 = recipe.gray_box_tables(run, purifiers)
    assert table1["PGD8"]["SOAP"] == 25.0 and table1["PGD8"]["paper: SOAP"] == 39.14
    assert table1["PGD8"]["ours"] == 50.0 and table1["AA"]["no defence"] == 10.0
    assert table1["CW"]["NRP"] == 35.0 and table1["PGD8"]["paper: NRP"] == 35.07
    assert all("SOAP" not in row and "NRP" not in row for row in table2.values())
    assert table2["PGD8"]["KD from AT and NT"] == 50.0
