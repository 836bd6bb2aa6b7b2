"""Adversarial distillation (chapter 7): every loss term worked by hand on tiny tensors, the
linearised teacher checked against a linear teacher (for which it is exact), frozen teachers, the
per-epoch SWA of SAAD, and a few SAAD steps at the paper's sizes."""
from __future__ import annotations

import copy
import sys
from math import isnan, log

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlib import config, data, defenses, models, recipes
from advlib.defenses import distillation
from advlib.defenses.distillation import (
    adaad_loss, ard_loss, igdm_ramp, igdm_term, kl_per_sample, linearised_teacher_logits,
    normalised_weights, renyi_entropy, rslad_loss, saad_loss, transferability_weights)
from advlib.evaluation import transfer_rate
from advlib.training import Hooks, fit

TRAINERS = ("ard", "rslad", "adaad", "igdm", "saad")
# softmax(0, ln 3) = (1/4, 3/4) and softmax(0, 0) = (1/2, 1/2)
QUARTER = torch.tensor([[0.0, log(3)]])
HALF = torch.zeros(1, 2)
KL_QUARTER_HALF = 0.25 * log(0.25 / 0.5) + 0.75 * log(0.75 / 0.5)
KL_HALF_QUARTER = 0.5 * log(0.5 / 0.25) + 0.5 * log(0.5 / 0.75)


def _trainer(name: str, teacher: nn.Module, **options):
    settings = {"eps": 0.1, "alpha": 0.04, "steps": 2, **({"epochs": 4} if name in ("igdm", "saad") else {})}
    return defenses.build(name, teacher=teacher, **{**settings, **options})


@pytest.fixture()
def pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return models.build("small_cnn", 10, 1, width=4), models.build("small_cnn", 10, 1, width=2)


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator)


# --- loss terms by hand -------------------------------------------------------------------------------

def test_kl_per_sample_by_hand_and_its_direction():
    target, student = torch.cat([QUARTER, HALF]), torch.cat([HALF, HALF])
    assert kl_per_sample(target, student).tolist() == pytest.approx([KL_QUARTER_HALF, 0.0], abs=1e-6)
    assert kl_per_sample(HALF, QUARTER).item() == pytest.approx(KL_HALF_QUARTER, abs=1e-6)


def test_renyi_entropy_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    assert renyi_entropy(p.log()).item() == pytest.approx(1.5 * log(2), abs=1e-6)  # Shannon
    assert renyi_entropy(p.log(), 2.0).item() == pytest.approx(-log(0.25 + 0.0625 + 0.0625), abs=1e-6)
    assert renyi_entropy(p.log(), 0.5).item() == pytest.approx(2 * log(0.5 ** 0.5 + 2 * 0.25 ** 0.5), abs=1e-6)
    uniform = torch.zeros(1, 4)
    for order in (0.5, 1.0, 2.0, 5.0):
        assert renyi_entropy(uniform, order).item() == pytest.approx(log(4), abs=1e-6)
    with pytest.raises(ValueError, match="Rényi order"):
        renyi_entropy(uniform, 0.0)


def test_transferability_weights_and_their_normalisation_by_hand():
    weights = transferability_weights(torch.tensor([0.5, 1.0, 2.0]))
    assert weights.tolist() == pytest.approx([0.0, 2.5, 7.5])
    assert normalised_weights(weights).tolist() == pytest.approx([0.0, 1 / 3, 1.0], abs=1e-6)
    # one sample, or all equally uncertain: every weight is 0 (the clean term then takes over)
    assert transferability_weights(torch.tensor([0.7, 0.7])).tolist() == [0.0, 0.0]
    assert normalised_weights(torch.zeros(2)).tolist() == [0.0, 0.0]


def test_linearised_teacher_target_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    labels = torch.tensor([2, 0])
    gradient = torch.tensor([[1.0, -2.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    delta = torch.tensor([[0.1, 0.1, 0.3, -0.1], [0.01, 0.02, 0.03, 0.04]]).view(2, 1, 2, 2)
    # <g, δ> = 0.1 − 0.2 + 0 − 0.4 = −0.5 and 0.1; λ = 2 doubles them, only the true logit moves
    target = linearised_teacher_logits(logits, gradient, delta, labels, lam=2.0)
    assert target.tolist()[0] == pytest.approx([1.0, 2.0, 2.0])
    assert target.tolist()[1] == pytest.approx([0.7, 0.5, 0.5])
    assert logits.tolist()[0] == [1.0, 2.0, 3.0], "the teacher's logits are not modified in place"


def test_linearised_teacher_is_exact_for_a_linear_teacher_and_costs_one_pass(batch):
    x, y = batch
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(1024, 10))
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    student = models.build("small_cnn", 10, 1, width=2)
    trainer = _trainer("saad", teacher)
    x_adv, teacher_clean, returned_gradient = trainer.inner_maximisation(student, x, y, epoch=0)
    assert len(calls) == 1, "one teacher forward (and backward) per batch, not one per step"
    with torch.enable_grad():
        x_grad = x.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(teacher(x_grad).gather(1, y[:, None]).sum(), x_grad)
    assert torch.allclose(returned_gradient, gradient, atol=1e-6)
    linearised = linearised_teacher_logits(teacher_clean, gradient, x_adv - x, y)
    exact = teacher(x_adv).detach()
    true_class = torch.arange(len(y)), y
    assert torch.allclose(linearised[true_class], exact[true_class], atol=1e-4)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


class ConstantStudent(nn.Module):
    """Logits that do not depend on the input: any push on x' must come from the teacher's side."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), 10)


def test_saad_inner_step_ascends_through_the_linearised_target(batch):
    """With a student blind to its input, only the δ-dependence of z̃ moves x': a detached target
    would leave x' at its 0.001·N(0, I) start."""
    x, y = batch
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(1024, 10))
    x_adv, _, _ = _trainer("saad", teacher).inner_maximisation(ConstantStudent(), x, y, epoch=0)
    assert (x_adv - x).abs().max() > 0.05


def test_trainers_ramp_igdm_with_the_epoch_counted_from_one(pair, batch, monkeypatch):
    teacher, student = pair
    calls = []
    real_ramp = distillation.igdm_ramp
    monkeypatch.setattr(distillation, "igdm_ramp", lambda *args: calls.append(args) or real_ramp(*args))
    for name in ("igdm", "saad"):
        _trainer(name, teacher, igdm_weight=2.0)(student, *batch, epoch=0)
    assert calls == [(1, 4, 2.0), (1, 4, 2.0)]


def test_igdm_term_and_ramp_by_hand():
    # T(x+δ) − T(x−δ) = (0, ln 3) and S(x+δ) − S(x−δ) = (0, 0)
    value = igdm_term(QUARTER + 1.0, torch.ones(1, 2), HALF + 2.0, torch.full((1, 2), 2.0))
    assert value.item() == pytest.approx(KL_QUARTER_HALF, abs=1e-6)
    assert igdm_ramp(50, 200) == pytest.approx(0.25)
    assert igdm_ramp(200, 200, 10.0) == pytest.approx(10.0)


def test_ard_loss_by_hand():
    teacher, student = torch.tensor([[0.0, 2 * log(3)]]), HALF
    # τ = 1: softmax(0, 2 ln 3) = (1/10, 9/10)
    assert ard_loss(student, teacher).item() == pytest.approx(0.1 * log(0.2) + 0.9 * log(1.8), abs=1e-6)
    # τ = 2 divides the teacher's logits to (0, ln 3): τ² · KL((1/4, 3/4) ‖ (1/2, 1/2))
    assert ard_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * KL_QUARTER_HALF, abs=1e-6)
    ce = log(2)  # CE(S(x) = (1/2, 1/2), y)
    mixed = ard_loss(student, teacher, temperature=2.0, ce_weight=0.25, student_clean=HALF, labels=torch.tensor([1]))
    assert mixed.item() == pytest.approx(0.75 * 4 * KL_QUARTER_HALF + 0.25 * ce, abs=1e-6)
    with pytest.raises(ValueError, match="student_clean"):
        ard_loss(student, teacher, ce_weight=0.5)


def test_ard_loss_without_temperature_by_hand():
    # τ = 1, no CE term (the SAAD repository's ARD): KL(T(x) ‖ S(x'))
    assert ard_loss(HALF, QUARTER).item() == pytest.approx(KL_QUARTER_HALF, abs=1e-6)



def test_ard_trainer_feeds_its_loss_the_right_tensors(pair, batch):
    """The trainer of ARD with the original ARD's temperature and CE term: x' comes from PGD on the
    student (with the trainer's ε, step, steps and BatchNorm mode, and the epoch's generator), and
    the loss is :func:`ard_loss` of S(x'), T(x), S(x) and y."""
    teacher, student = pair
    x, y = batch
    trainer = _trainer("ard", teacher, temperature=2.0, ce_weight=0.25, bn_mode="train")
    pgd = trainer.attack
    assert type(pgd).__name__ == "PGD" and (pgd.eps, pgd.alpha, pgd.steps, pgd.bn_mode) == (0.1, 0.04, 2, "train")
    x_adv, calls = (x + 0.05).clamp(0, 1), []

    def attack(model, inputs, labels, generator):
        calls.append((model, inputs, labels, generator))
        return x_adv

    trainer.attack = attack
    student.eval()  # BatchNorm fixed, so that the expected outputs are the same
    loss, logits = trainer(student, x, y, epoch=3)
    [(model, inputs, labels, generator)] = calls
    assert model is student and torch.equal(inputs, x) and torch.equal(labels, y)
    assert generator is trainer.generator(x.device, 3)
    with torch.no_grad():
        expected = ard_loss(student(x_adv), teacher(x), 2.0, 0.25, student(x), y)
        assert torch.allclose(logits, student(x_adv))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

def test_rslad_loss_by_hand():
    # the student is exact on the clean image, off on x'
    assert rslad_loss(HALF, QUARTER, QUARTER).item() == pytest.approx(5 / 6 * KL_QUARTER_HALF, abs=1e-6)
    assert rslad_loss(QUARTER, HALF, QUARTER).item() == pytest.approx(1 / 6 * KL_QUARTER_HALF, abs=1e-6)


def test_adaad_loss_by_hand():
    assert adaad_loss(HALF, QUARTER).item() == pytest.approx(KL_QUARTER_HALF, abs=1e-6)
    assert adaad_loss(QUARTER, HALF).item() == pytest.approx(KL_HALF_QUARTER, abs=1e-6)


def test_saad_loss_by_hand():
    # sample 1: uncertain teacher (entropy ln 2), student off; sample 2: confident teacher
    teacher_plus = torch.cat([HALF, QUARTER])
    student_plus = torch.cat([QUARTER, QUARTER])
    entropy_2 = -(0.25 * log(0.25) + 0.75 * log(0.75))
    w1 = 5 * (log(2) - entropy_2)
    # x−δ mirrors x+δ exactly, so the IGDM differences are zero and that term vanishes
    loss, weights = saad_loss(teacher_plus, teacher_plus, QUARTER.repeat(2, 1), student_plus, student_plus,
                              torch.cat([HALF, HALF]), igdm_weight=1.0)
    assert weights.tolist() == pytest.approx([w1, 0.0], abs=1e-6)
    assert loss.item() == pytest.approx(w1 * KL_HALF_QUARTER / 2, abs=1e-6)
    # β = 1: the clean term weighs (1 − ŵ) = (0, 1), i.e. only the non-transferable sample
    loss_beta, _ = saad_loss(teacher_plus, teacher_plus, QUARTER.repeat(2, 1), student_plus, student_plus,
                             torch.cat([HALF, HALF]), igdm_weight=1.0, clean_weight=1.0)
    assert loss_beta.item() == pytest.approx((w1 * KL_HALF_QUARTER + KL_QUARTER_HALF) / 2, abs=1e-6)
    # the IGDM term enters weighted by w_i and the ramp
    loss_igdm, _ = saad_loss(teacher_plus, teacher_plus - QUARTER, QUARTER.repeat(2, 1), student_plus,
                             student_plus, torch.cat([HALF, HALF]), igdm_weight=0.5)
    assert loss_igdm.item() == pytest.approx(w1 * (KL_HALF_QUARTER + 0.5 * KL_QUARTER_HALF) / 2, abs=1e-6)


class FirstPixelClassifier(nn.Module):
    """Predicts class round(10 · x[0, 0, 0]): inputs chosen by hand give known predictions."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot((x[:, 0, 0, 0] * 10).round().long(), 10).float() + self.anchor


def test_transfer_rate_by_hand():
    y = torch.zeros(4, dtype=torch.long)
    x_adv = torch.zeros(4, 1, 2, 2)
    x_adv[:, 0, 0, 0] = torch.tensor([0.0, 0.1, 0.2, 0.3])  # the student predicts 0, 1, 2, 3
    x_adv[:, 0, 1, 1] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    student = FirstPixelClassifier()

    class Teacher(FirstPixelClassifier):
        def forward(self, x):  # predicts 1 where the marker pixel is set, else 0
            return F.one_hot(x[:, 0, 1, 1].round().long(), 10).float() + self.anchor

    # the student is fooled on samples 1-3; of those the teacher is fooled only on sample 1
    assert transfer_rate(student, Teacher(), x_adv, y) == pytest.approx(1 / 3)
    assert isnan(transfer_rate(Teacher(), student, x_adv[2:], y[2:])), "nothing fooled the first model"


# --- trainers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TRAINERS)
def test_teacher_gets_no_gradients_and_student_does(pair, batch, name):
    teacher, student = pair
    trainer = _trainer(name, teacher)
    student.train()
    loss, logits = trainer(student, *batch, epoch=1)
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (8, 10)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not teacher.training, "the teacher stays in eval mode (its BatchNorm statistics are fixed)"
    assert student.training, "the inner maximisation restores the student's training mode"


@pytest.mark.parametrize("name", TRAINERS)
def test_trainers_are_reproducible_per_epoch(pair, batch, name):
    teacher, student = pair
    # fresh copies: a call in training mode moves the student's BatchNorm running statistics
    losses = [_trainer(name, teacher, seed=3)(copy.deepcopy(student), *batch, epoch=2)[0].item() for _ in range(2)]
    assert losses[0] == losses[1]


def test_adaptive_inner_maximisation_stays_in_the_ball_and_raises_the_disagreement(pair, batch):
    teacher, student = pair
    x, _ = batch
    trainer = _trainer("adaad", teacher)
    x_adv = trainer.ascend_adaptive(student.eval(), x, epoch=0)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        before = kl_per_sample(teacher(x), student(x)).sum()
        after = kl_per_sample(teacher(x_adv), student(x_adv)).sum()
    assert after > before


def test_trainers_reject_bad_settings(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="Rényi order"):
        _trainer("saad", teacher, renyi_order=-1.0)
    with pytest.raises(ValueError, match="eps"):
        _trainer("ard", teacher, eps=-0.1)
    with pytest.raises(TypeError, match="epochs"):
        defenses.build("igdm", teacher=teacher)


def test_saad_weight_statistics_by_hand(pair):
    trainer = _trainer("saad", pair[0])
    y = torch.tensor([0, 0, 0, 0])
    student_plus = F.one_hot(torch.tensor([1, 1, 0, 0]), 10).float()  # fooled on samples 0 and 1
    teacher_plus = F.one_hot(torch.tensor([1, 0, 2, 0]), 10).float()  # fooled on samples 0 and 2
    trainer._count(student_plus, teacher_plus, y, torch.tensor([4.0, 1.0, 2.0, 3.0]))
    trainer._count(student_plus[:1], teacher_plus[:1], y[:1], torch.tensor([6.0]))
    # the student was fooled 3 times, and the teacher too on 2 of them; weights of the x' that
    # fool the teacher: 4, 2, 6; of the others: 1, 3
    assert trainer.epoch_statistics() == pytest.approx(
        {"train_transfer": 2 / 3, "weight_fooling_teacher": 4.0, "weight_teacher_correct": 2.0})
    assert all(isnan(v) for v in trainer.epoch_statistics().values()), "popping resets the counts"


class RecordEpochEnds(Hooks):
    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch, self.steps, self.ends = steps_per_epoch, 0, []

    def after_step(self, model, epoch):
        self.steps += 1
        if self.steps % self.steps_per_epoch == 0:
            self.ends.append(model[1].weight.detach().clone())


def test_per_epoch_swa_averages_the_end_of_epoch_weights():
    """SAAD's SWA: one snapshot at the end of each epoch whose end is at or after 47.5 % of training."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1024, 10))
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8, generator=generator)
    loader = data.TensorLoader(data.ImageSet(images, torch.arange(64) % 10, data.info("fashion-mnist")), 16,
                               shuffle=True, drop_last=True, seed=0)
    recorder = RecordEpochEnds(len(loader))
    fit(model, loader, epochs=6, optimizer={"name": "sgd", "lr": 0.05}, schedule={"points": [[0.0, 1.0]]},
        callbacks=[recorder], averaging={"kind": "swa", "start": 0.475, "every": "epoch"})
    expected = torch.stack(recorder.ends[2:]).mean(0)  # epochs 3-6 of 6 end at or after 47.5 %
    assert torch.allclose(model[1].weight, expected, atol=1e-6)
    with pytest.raises(ValueError, match="every"):
        fit(model, loader, epochs=1, optimizer={"name": "sgd"}, schedule={"points": [[0.0, 1.0]]},
            averaging={"kind": "swa", "every": "batch"})


def test_resumed_run_with_per_epoch_swa_and_batchnorm_ends_with_identical_weights(tmp_path):
    def train(checkpoint, stop_after=None):
        torch.manual_seed(0)
        teacher, student = models.build("small_cnn", 10, 1, width=4), models.build("small_cnn", 10, 1, width=2)
        images = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        loader = data.TensorLoader(data.ImageSet(images, torch.arange(64) % 10, data.info("fashion-mnist")), 16,
                                   shuffle=True, drop_last=True, seed=0)
        fit(student, loader, epochs=4, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
            schedule={"points": [[0.0, 1.0], [0.5, 0.1]]}, loss_fn=_trainer("saad", teacher, seed=1),
            checkpoint=checkpoint, stop_after=stop_after, averaging={"kind": "swa", "start": 0.475, "every": "epoch"})
        return student.state_dict()

    reference = train(None)
    checkpoint = tmp_path / "saad.partial.pt"
    train(checkpoint, stop_after=3)
    resumed = train(checkpoint)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


# --- the paper profile --------------------------------------------------------------------------------

def test_paper_profile_has_the_seeds_hyperparameters():
    spec = config.PROFILES["paper"]["distillation"]
    assert spec["train_attack"] == {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10}
    assert spec["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4}
    assert spec["epochs"] == 200 and spec["batch_size"] == 128 and spec["student"]["arch"] == "resnet18"
    assert spec["saad"] == {"lam": 1.0, "renyi_order": 1.0, "igdm_weight": 1.0, "clean_weight": 0.0}
    assert spec["averaging"]["every"] == "epoch" and round(spec["averaging"]["start"] * 200) == 95
    from advlib.training import lr_multiplier, training_progress
    lr = {epoch: lr_multiplier(training_progress(epoch - 1, 0, 391, 200), spec["schedule"])
          for epoch in (1, 100, 101, 150, 151, 200)}
    assert lr == {1: 1.0, 100: 1.0, 101: 0.1, 150: 0.1, 151: 0.01, 200: 0.01}
    teacher = config.PROFILES["paper"]["adversarial_training"]["target"]["arch"]
    assert teacher == "wrn34_10" and spec["teacher"] == "trades"



@pytest.mark.parametrize("name", TRAINERS)
def test_defaults_are_the_paper_profiles_settings(name):
    """Built from a teacher alone (and the epochs, for the ramps of IGDM and SAAD), each trainer
    runs the seed's setting: the paper profile's training attack, the method's own section, and
    the student in eval mode while x' is crafted (as every reference code does)."""
    spec = config.PROFILES["paper"]["distillation"]
    trainer = defenses.build(name, teacher=models.build("small_cnn", 10, 1, width=2),
                             **({"epochs": 200} if name in ("igdm", "saad") else {}))
    expected = {**spec["train_attack"], **spec[name], "bn_mode": "eval"}
    assert {key: getattr(trainer, key) for key in expected} == expected
    assert _trainer(name, trainer.teacher, seed=7).seed == 7

def test_a_few_saad_steps_at_paper_size():
    """ResNet-18 student, WRN-34-10 teacher, a CIFAR-shaped batch of 2 and the paper's 10 inner
    steps: two optimiser steps on the CPU."""
    torch.manual_seed(0)
    spec = config.PROFILES["paper"]["distillation"]
    teacher = models.build("wrn34_10", 10, 3)
    student = models.build(spec["student"]["arch"], 10, 3).train()
    trainer = defenses.build("saad", teacher=teacher, **spec["train_attack"], epochs=spec["epochs"], **spec["saad"])
    optimizer = torch.optim.SGD(student.parameters(), **{k: v for k, v in spec["optimizer"].items() if k != "name"})
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([3, 8])
    teacher_before = [p.clone() for p in teacher.parameters()]
    student_before = next(student.parameters()).detach().clone()
    for epoch in range(2):
        loss, logits = trainer(student, x, y, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and logits.shape == (2, 10)
    assert not torch.equal(student_before, next(student.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))


def test_mobilenet_student_takes_a_saad_step():
    torch.manual_seed(0)
    teacher, student = models.build("resnet18", 10, 3), models.build("mobilenetv2", 10, 3).train()
    trainer = defenses.build("saad", teacher=teacher, eps=8 / 255, alpha=2 / 255, steps=1, epochs=200)
    loss, _ = trainer(student, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), 0)
    loss.backward()
    assert torch.isfinite(loss)


# --- recipes --------------------------------------------------------------------------------------------

def test_distillation_config_names_the_teacher_and_rejects_unknown_methods():
    run = config.setup("quick", device="cpu", quiet=True)
    saad = recipes.distillation_config(run, "saad")
    assert saad["teacher"] == recipes.adversarial_training_config(run, "trades")
    assert saad["averaging"]["kind"] == "swa" and recipes.distillation_config(run, "ard")["averaging"] is None
    assert "teacher" not in recipes.distillation_config(run, "standard")
    assert {recipes.distillation_config(run, m)["trainer_options"]["eps"] for m in ("ard", "rslad", "saad")} == {0.1}
    with pytest.raises(ValueError, match="unknown distillation method 'kd'"):
        recipes.distillation_config(run, "kd")
    run100 = config.setup("paper", dataset="cifar100", device="cpu", quiet=True)
    assert recipes.distillation_config(run100, "igdm")["trainer_options"]["igdm_weight"] == 10.0


def test_robustbench_teacher_without_the_package_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(ImportError, match="pip install .*robustbench"):
        recipes.robustbench_model("Gowal2021Improving_28_10_ddpm_100m", "cifar10")


def test_sample_weights_match_the_trainers_pieces(pair, batch):
    teacher, student = pair
    x, y = batch
    trainer = _trainer("saad", teacher)
    look = trainer.sample_weights(student.eval(), x, y)
    with torch.no_grad():
        teacher_plus = teacher(look["x_adv"])
    assert torch.allclose(look["entropy"], renyi_entropy(teacher_plus), atol=1e-6)
    assert torch.allclose(look["weight"], transferability_weights(renyi_entropy(teacher_plus)), atol=1e-5)
    assert look["weight"].min() == 0 and 0 <= look["normalised_weight"].min() <= look["normalised_weight"].max() <= 1
    assert torch.equal(look["fools_teacher"], teacher_plus.argmax(1) != y)
    assert all(p.grad is None for p in student.parameters())


def test_a_student_seed_changes_the_student_and_nothing_else():
    """Chapter 7's seed spread: the run's seed is the chapter's own student (same cache entry); any
    other seed is another student of the same teacher on the same training images."""
    run = config.setup("quick", device="cpu", quiet=True)
    chapter = recipes.distillation_config(run, "saad")
    assert recipes.distillation_config(run, "saad", run.seed) == chapter
    other = recipes.distillation_config(run, "saad", run.seed + 1)
    assert other.pop("student_seed") == run.seed + 1
    assert other == chapter, "teacher, data, optimiser and schedule stay the run's"
    loader, x_val, _ = recipes.training_data(run, chapter)
    reordered, x_val_other, _ = recipes.training_data(run, chapter, shuffle_seed=run.seed + 1)
    assert torch.equal(x_val, x_val_other), "the same held-out slice"
    assert torch.equal(loader.labels.sort().values, reordered.labels.sort().values), "the same training images"
    assert not torch.equal(next(iter(loader))[1], next(iter(reordered))[1]), "in another order"


# --- more hand-worked cases and trainer wiring ---------------------------------------------------------

def test_normalised_weights_with_a_nonzero_minimum_by_hand():
    """SAAD's min–max normalisation ŵ = (w − min w) / (max w − min w + 1e-8) when no weight is 0:
    (1, 2, 5) → (0, 1/4, 1)."""
    assert normalised_weights(torch.tensor([1.0, 2.0, 5.0])).tolist() == pytest.approx([0.0, 0.25, 1.0], abs=1e-6)
    assert normalised_weights(torch.tensor([3.0, 3.0])).tolist() == [0.0, 0.0]


def test_ard_loss_temperature_divides_both_logits_by_hand():
    """ARD's Eq. 3 softens the student's logits by τ too: S(x') = T(x) gives 0 at every τ, and
    S(x') = (0, 2 ln 3), T(x) = (0, 0) at τ = 2 is τ² · KL((1/2, 1/2) ‖ (1/4, 3/4))."""
    teacher = torch.tensor([[0.0, 2 * log(3)], [1.0, -1.0]])
    assert ard_loss(teacher, teacher, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[0.0, 2 * log(3)]])
    assert ard_loss(student, HALF, temperature=2.0).item() == pytest.approx(4 * KL_HALF_QUARTER, abs=1e-6)


def test_ard_loss_with_a_ce_term_needs_both_the_clean_logits_and_the_labels():
    """c · CE(S(x), y) needs S(x) and y: either one alone is an error, not a silent CE-less loss."""
    with pytest.raises(ValueError, match="student_clean"):
        ard_loss(HALF, QUARTER, ce_weight=0.5, student_clean=HALF)
    with pytest.raises(ValueError, match="student_clean"):
        ard_loss(HALF, QUARTER, ce_weight=0.5, labels=torch.tensor([1]))


def test_ard_trainer_without_ce_term_runs_the_student_once_and_continues_the_epochs_stream(pair, batch):
    """With c = 0 (the SAAD code's ARD) the student runs on x' only, not on the clean batch (whose
    BatchNorm update would be spurious); within an epoch successive batches draw their random
    starts from one generator, which a new epoch reseeds."""
    teacher, student = pair
    x, y = batch
    trainer = _trainer("ard", teacher)
    x_adv, draws, generators, student_inputs = (x + 0.05).clamp(0, 1), [], [], []

    def attack(model, inputs, labels, generator):
        generators.append(generator)
        draws.append(torch.rand(3, generator=generator))
        return x_adv

    trainer.attack = attack
    student.eval()
    student.register_forward_hook(lambda module, inputs, output: student_inputs.append(inputs[0]))
    loss, _ = trainer(student, x, y, epoch=3)
    assert len(student_inputs) == 1 and torch.equal(student_inputs[0], x_adv)
    with torch.no_grad():
        assert loss.item() == pytest.approx(ard_loss(student(x_adv), teacher(x)).item(), rel=1e-6)
    trainer(student, x, y, epoch=3)
    assert generators[1] is generators[0] and not torch.equal(draws[0], draws[1]), "the stream continues"
    trainer(student, x, y, epoch=4)
    assert not torch.equal(draws[2], draws[0]) and not torch.equal(draws[2], draws[1])


def test_rslad_trainer_feeds_its_loss_the_right_tensors(pair, batch):
    """RSLAD's loss is :func:`rslad_loss` of S(x'), S(x), T(x) with the trainer's own weight of the
    adversarial term (here 1/2, not the default 5/6)."""
    teacher, student = pair
    x, y = batch
    trainer = _trainer("rslad", teacher, adversarial_weight=0.5)
    x_adv = (x + 0.05).clamp(0, 1)
    trainer.ascend = lambda model, inputs, objective, epoch: x_adv
    student.eval()
    loss, logits = trainer(student, x, y, epoch=0)
    with torch.no_grad():
        expected = rslad_loss(student(x_adv), student(x), teacher(x), 0.5)
        assert torch.allclose(logits, student(x_adv))
        assert expected.item() != pytest.approx(rslad_loss(student(x_adv), student(x), teacher(x)).item(), rel=1e-3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_igdm_trainer_adds_the_ramped_igdm_term(pair, batch):
    """IGDM's loss is AdaAD's KL(T(x') ‖ S(x')) + r · IGDM(T(x±δ), S(x±δ)), r = α · epoch / epochs with
    the epoch counted from 1: α = 2 in epoch 1 of 4 gives r = 1/2."""
    teacher, student = pair
    x, y = batch
    trainer = _trainer("igdm", teacher, igdm_weight=2.0)
    x_adv = 1 - x  # far outside the ball: the untrained models' central differences are then visible
    trainer.ascend_adaptive = lambda model, inputs, epoch: x_adv
    student.eval()
    loss, logits = trainer(student, x, y, epoch=0)
    x_minus = 2 * x - x_adv
    with torch.no_grad():
        matching = igdm_term(teacher(x_adv), teacher(x_minus), student(x_adv), student(x_minus)).mean()
        expected = adaad_loss(student(x_adv), teacher(x_adv)) + 0.5 * matching
        assert torch.allclose(logits, student(x_adv))
    assert matching.item() > 1e-4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", TRAINERS)
def test_trainers_default_seed_is_zero_like_every_attacks(name):
    """Built without a seed, a trainer draws its random starts from seed 0, as every attack does."""
    trainer = defenses.build(name, teacher=models.build("small_cnn", 10, 1, width=2),
                             **({"epochs": 200} if name in ("igdm", "saad") else {}))
    assert trainer.seed == 0


def test_igdm_term_matches_differences_not_sums_by_hand():
    """IGDM's term (Lee, Cho & Kim 2025; SAAD notes §2) compares the central differences
    T(x+δ) − T(x−δ) = (0, ln 3) − (0, −ln 3) = (0, 2 ln 3), softmax (1/10, 9/10), with the student's
    S(x+δ) − S(x−δ) = 0, softmax (1/2, 1/2). The sum T(x+δ) + T(x−δ) = 0 would give KL 0."""
    value = igdm_term(QUARTER, -QUARTER, HALF, HALF)
    assert value.item() == pytest.approx(0.1 * log(0.1 / 0.5) + 0.9 * log(0.9 / 0.5), abs=1e-6)


def test_saad_loss_with_renyi_order_two_and_its_own_weight_scale_by_hand():
    """SAAD (Lee & Chung 2026) with Rényi order γ = 2 and scale 2: H_2(p) = −log Σ p_k², so
    H_2(1/2, 1/2) = ln 2 and H_2(1/4, 3/4) = −ln(10/16) = ln 1.6; w = 2 · (H − min H) = (2 ln 1.25, 0)
    (Shannon's entropy or the default scale 5 would give other weights)."""
    teacher_plus = torch.cat([HALF, QUARTER])
    student_plus = torch.cat([QUARTER, QUARTER])
    loss, weights = saad_loss(teacher_plus, teacher_plus, QUARTER.repeat(2, 1), student_plus, student_plus,
                              torch.cat([HALF, HALF]), igdm_weight=1.0, renyi_order=2.0, weight_scale=2.0)
    w1 = 2 * log(1.25)
    assert weights.tolist() == pytest.approx([w1, 0.0], abs=1e-6)
    assert loss.item() == pytest.approx(w1 * KL_HALF_QUARTER / 2, abs=1e-6)


def test_linearised_teacher_keeps_the_logits_dtype_under_a_double_gradient():
    """z̃_y = T(x)_y + λ · ⟨∇ₓ T(x)_y, δ⟩ (SAAD, notes §2) in the dtype of T(x): a gradient and δ of
    another dtype (here float64 images) only supply the correction ⟨g, δ⟩ = 0.5 − 0.5 + 0 − 0.5 = −0.5."""
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    gradient = torch.tensor([[1.0, -2.0, 0.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    delta = torch.tensor([[0.5, 0.25, 0.0, -0.125]], dtype=torch.float64).view(1, 1, 2, 2)
    target = linearised_teacher_logits(logits, gradient, delta, torch.tensor([1]), lam=1.0)
    assert target.dtype == torch.float32
    assert target.tolist()[0] == pytest.approx([1.0, 1.5, 3.0])


def _sharp_linear_teacher() -> nn.Module:
    """A linear teacher with logits of a few units: its entropies and input gradients differ visibly
    from sample to sample (an untrained CNN's are all near uniform)."""
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(1024, 10))
    with torch.no_grad():
        teacher[1].weight.mul_(10)
    return teacher


def test_saad_inner_objective_uses_lambda_and_the_perturbation_delta(pair, batch):
    """SAAD's inner step ascends KL(z̃(x') ‖ S(x')) with z̃ linearised along δ = x' − x and scaled
    by the trainer's λ (notes §2): the objective it hands to the ascent is exactly that, here λ = 2."""
    _, student = pair
    x, y = batch
    trainer = _trainer("saad", _sharp_linear_teacher(), lam=2.0)
    objectives = []
    trainer.ascend = lambda model, inputs, objective, epoch: objectives.append(objective) or inputs
    student.eval()
    _, teacher_clean, gradient = trainer.inner_maximisation(student, x, y, epoch=0)
    [objective] = objectives
    x_adv = x + 0.05
    with torch.no_grad():
        value = objective(x_adv)
        expected = kl_per_sample(linearised_teacher_logits(teacher_clean, gradient, x_adv - x, y, 2.0),
                                 student(x_adv)).sum()
        with_lambda_one = kl_per_sample(linearised_teacher_logits(teacher_clean, gradient, x_adv - x, y, 1.0),
                                        student(x_adv)).sum()
    assert abs(expected.item() - with_lambda_one.item()) > 1e-3
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_saad_trainer_feeds_its_loss_the_right_tensors(pair, batch):
    """SAAD's trainer (Lee & Chung 2026, notes §2): the loss is :func:`saad_loss` of T(x±δ), T(x),
    S(x±δ), S(x) with the ramp r = α · 1/4 in epoch 1 of 4 (α = 2: r = 1/2) and the trainer's own
    β, Rényi order and weight scale (none of them the defaults)."""
    _, student = pair
    x, y = batch
    teacher = _sharp_linear_teacher()
    trainer = _trainer("saad", teacher, igdm_weight=2.0, clean_weight=0.5, renyi_order=2.0, weight_scale=3.0)
    x_adv = 1 - x  # far outside the ball: the untrained models' differences are then visible
    with torch.no_grad():
        teacher_clean = teacher(x)
    trainer.inner_maximisation = lambda model, inputs, labels, epoch: (x_adv, teacher_clean, None)
    student.eval()
    loss, logits = trainer(student, x, y, epoch=0)
    x_minus = 2 * x - x_adv
    with torch.no_grad():
        expected, weights = saad_loss(teacher(x_adv), teacher(x_minus), teacher_clean, student(x_adv),
                                      student(x_minus), student(x), 0.5, 0.5, 2.0, 3.0)
        assert torch.allclose(logits, student(x_adv))
    assert weights.max().item() > 0.5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_distillation_ascent_starts_continue_the_epochs_stream(pair):
    """The inner maximisation starts at x + 0.001·N(0, I) (notes §2); within an epoch successive
    batches draw from one generator, so two batches get different starts. With a flat objective
    (zero gradient, sign 0) x' is its start."""
    teacher, student = pair
    trainer = _trainer("rslad", teacher)
    x = torch.full((2, 1, 4, 4), 0.5)
    flat = lambda x_adv: (0 * x_adv).sum()  # noqa: E731
    first, second = (trainer.ascend(student, x, flat, epoch=0) for _ in range(2))
    assert 0 < (first - x).abs().max() < 0.01 and 0 < (second - x).abs().max() < 0.01
    assert not torch.equal(first, second), "the stream continues"
