"""AutoAttack and its parts (APGD-CE, APGD-T, FAB-T, Square) against the reference code
(``pyautoattack``), plus the Attack contract as properties, the reference's warning flags, and
clear errors."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import advlib.attacks as attacks
from advlib import cache, data
from advlib.attacks import _checks
from advlib.attacks.primitives import project_l2, project_linf
from advlib.attacks.apgd import checkpoints
from advlib.attacks.autoattack import AutoAttackResult
from advlib.attacks.fab import linf_projection_onto_hyperplane
from advlib.attacks.square import square_fraction
from advlib.training import fit

# A small MLP with a little FGSM-RS adversarial training (Wong et al. 2020): cheap enough on a CPU
# for the full 5000-query Square on the points it keeps robust, and robust enough at ε = 8/255 for
# AutoAttack's later attacks to have work left.
EPS_TRAIN = 8 / 255
ROBUST_MLP_CONFIG = {
    "purpose": "autoattack-tests", "arch": "mlp-1024-100-10", "dataset": "fashion-mnist", "train_subset": 10000,
    "epochs": 3, "batch_size": 128, "seed": 0,
    "adversarial": {"method": "fgsm-rs", "eps": EPS_TRAIN, "step": 1.25 * EPS_TRAIN},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    "schedule": {"interpolate": "linear", "points": [[0.0, 1.0], [1.0, 0.0]]},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: with several threads on a busy CPU the attacks' many small
    operations spend more time synchronising threads than computing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(in_features: int, hidden: int, classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


@pytest.fixture(scope="session")
def robust_mlp() -> nn.Module:
    config = ROBUST_MLP_CONFIG
    adversarial = config["adversarial"]

    def train(model, checkpoint):
        noise = torch.Generator().manual_seed(config["seed"])

        def fgsm_rs_loss(model, x, y, epoch):
            start = (x + (torch.rand(x.shape, generator=noise) * 2 - 1) * adversarial["eps"]).clamp(0, 1)
            start.requires_grad_(True)
            grad = torch.autograd.grad(F.cross_entropy(model(start), y), start)[0]
            x_adv = project_linf(start.detach() + adversarial["step"] * grad.sign(), x, adversarial["eps"])
            logits = model(x_adv)
            return F.cross_entropy(logits, y), logits

        train_set = data.load(config["dataset"], "train").subset(config["train_subset"], config["seed"])
        loader = data.TensorLoader(train_set, config["batch_size"], shuffle=True, seed=config["seed"])
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"], schedule=config["schedule"],
                   loss_fn=fgsm_rs_loss, checkpoint=checkpoint, desc="autoattack test model")

    model, _ = cache.load_or_train("test-autoattack-mlp", config, mlp(32 * 32, 100, 10), train, verbose=False)
    return model.eval()


@pytest.fixture(scope="session")
def robust_batch(fashion_test) -> tuple[torch.Tensor, torch.Tensor]:
    return fashion_test.subset(200, seed=2).tensors()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- agreement with the reference

@pytest.mark.slow
def test_autoattack_standard_matches_reference(robust_mlp, robust_batch):
    """The whole standard version with the reference's budgets, on 100 images (each attack's
    iterates are compared with the reference's step by step in the tests below): the same robust
    accuracy within one image."""
    from pyautoattack import AutoAttack as ReferenceAutoAttack

    x, y = robust_batch[0][:100], robust_batch[1][:100]
    eps = 8 / 255
    ours = attacks.build("autoattack", eps=eps, version="standard", seed=0).run(robust_mlp, x, y)
    reference = ReferenceAutoAttack(robust_mlp, norm="Linf", eps=eps, version="standard", seed=0)
    x_reference, _ = reference.run_standard_evaluation(x, y, batch_size=500)
    reference_robust = accuracy(robust_mlp, x_reference, y)
    clean = accuracy(robust_mlp, x, y)
    # the comparison only means something where AutoAttack has work to do at this ε
    assert 0 < reference_robust < clean
    assert ours.clean_accuracy == pytest.approx(clean)
    assert abs(ours.robust_accuracy - reference_robust) <= 0.01
    assert ours.robust_accuracy == pytest.approx(accuracy(robust_mlp, ours.x_adv, y))
    assert (ours.x_adv - x).abs().max() <= eps + 1e-6


def test_autoattack_result_agrees_with_its_images(robust_mlp, robust_batch, monkeypatch):
    """With cut budgets and several batches: the reported accuracies are those of the returned
    images, an image is replaced only by an adversarial example within ε, the breakdown is the
    running robust accuracy after each attack in the standard order, each attack sees each image
    still robust once (in batches of at most ``batch_size``), and no image means nothing measured
    (nan)."""
    from advlib.attacks.square import Square

    x, y = robust_batch
    x, y = x[:64], y[:64]
    eps = 8 / 255
    square_batches, square_perturb = [], Square.perturb

    def recorded_perturb(self, model, images, labels, generator):
        square_batches.append(len(images))
        return square_perturb(self, model, images, labels, generator)

    monkeypatch.setattr(Square, "perturb", recorded_perturb)
    autoattack = attacks.build("autoattack", eps=eps, iterations=5, square_queries=20, n_target_classes=3)
    result = autoattack.run(robust_mlp, x, y, batch_size=16)
    with torch.no_grad():
        clean, robust = (robust_mlp(v).argmax(1) == y for v in (x, result.x_adv))
    assert result.clean_accuracy == pytest.approx(clean.float().mean().item())
    assert result.robust_accuracy == pytest.approx(robust.float().mean().item())
    assert 0 < result.robust_accuracy < result.clean_accuracy  # both kinds of image are checked below
    assert torch.equal(result.x_adv[robust], x[robust])  # a robust image is returned unchanged
    assert (result.x_adv - x).abs().max() <= eps + 1e-6 and not (robust & ~clean).any()
    names, accuracies = zip(*result.breakdown)
    assert names == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert list(accuracies) == sorted(accuracies, reverse=True) and accuracies[0] <= result.clean_accuracy
    assert accuracies[-1] == result.robust_accuracy and 0 <= result.seconds < 600
    assert max(square_batches) <= 16 and sum(square_batches) == round(accuracies[2] * len(x))

    empty = autoattack.run(robust_mlp, x[:0], y[:0])
    assert empty.x_adv.shape == (0, *x.shape[1:]) and empty.flags == []
    assert all(math.isnan(value) for value in (empty.clean_accuracy, empty.robust_accuracy,
                                                *(accuracy for _, accuracy in empty.breakdown)))


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
def test_apgd_matches_reference(robust_mlp, robust_batch, name):
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    x, y = robust_batch
    eps = 8 / 255
    x_ours = attacks.build(name, eps=eps, seed=0)(robust_mlp, x, y)
    if name == "apgd-ce":
        reference = APGDAttack(robust_mlp, n_iter=100, norm="Linf", n_restarts=1, eps=eps, seed=0, loss="ce")
    else:
        reference = APGDAttack_targeted(robust_mlp, n_iter=100, norm="Linf", n_restarts=1, eps=eps, seed=0,
                                        n_target_classes=9)
    x_reference = reference.perturb(x, y)
    clean, ours, theirs = (accuracy(robust_mlp, v, y) for v in (x, x_ours, x_reference))
    assert theirs < clean  # the attack has something to find here
    assert abs(ours - theirs) <= 0.015  # 3 of 200 images: different random starts


class InputRecorder(nn.Module):
    """``model``, recording every input it is differentiated at (an attack's start point and
    iterates; forward passes without gradients, the clean predictions, are left out)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.iterates = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            self.iterates.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize(("name", "norm"), [("apgd-ce", "Linf"), ("apgd-t", "Linf"), ("apgd-dlr", "Linf"),
                                            ("apgd-ce", "L2")])
def test_apgd_trajectory_matches_reference(robust_mlp, robust_batch, name, norm):
    """From the same start point, every iterate up to the first step-size checkpoint (iteration 22
    of 100; from there the paper's Condition 1, which this follows, and the reference's code differ:
    see APGD's docstring) equals the reference's, for each loss and for the L2 ball too. A wrong
    momentum (α = 0.75), first step size (2ε), loss, projection or target class changes the second
    iterate already."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    x, y = robust_batch
    with torch.no_grad():
        logits = robust_mlp(x)
    correct = logits.argmax(1) == y
    x, y, logits = x[correct][:32], y[correct][:32], logits[correct][:32]
    eps = 2 / 255 if norm == "Linf" else 0.1  # about as large a ball for these 32×32 images
    n_iter, compared = 100, 22
    ours = InputRecorder(robust_mlp)
    options = {"n_target_classes": 1} if name == "apgd-t" else {"norm": norm}
    attacks.build(name, eps=eps, n_iter=n_iter, seed=0, **options)(ours, x, y)
    start = ours.iterates[0]
    # no example is fooled this early at this ε, so the batch keeps every row and stays aligned
    assert len(ours.iterates) > compared and all(len(z) == len(x) for z in ours.iterates[:compared])

    theirs = InputRecorder(robust_mlp)
    if name != "apgd-t":
        reference = APGDAttack(theirs, n_iter=n_iter, norm=norm, n_restarts=1, eps=eps, seed=0,
                               loss=name.removeprefix("apgd-"))
    else:
        reference = APGDAttack_targeted(theirs, n_iter=n_iter, norm="Linf", n_restarts=1, eps=eps, seed=0)
        reference.y_target = logits.sort(dim=1)[1][:, -2]  # the most likely wrong class
    reference.init_hyperparam(x)
    reference.attack_single_run(x, y, x_init=start)
    assert torch.equal(theirs.iterates[0], start)
    for k in range(1, compared):
        assert torch.allclose(ours.iterates[k], theirs.iterates[k], atol=1e-6), f"iterate {k} differs"


def apgd_by_the_paper(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, eps: float,
                      n_iter: int, loss_fn, norm: str = "Linf", rho: float = 0.75):
    """APGD for one image (Croce & Hein 2020, Algorithm 1 and Sec. 3.2), written from the paper's text
    one scalar decision at a time: from x^(0) = ``start`` and η = 2ε, the momentum step with α = 1
    then 0.75; at each checkpoint w_j, Condition 1 (fewer than ρ·(w_j − w_{j−1}) of the steps since
    w_{j−1} raised f strictly, counted from x^(0) at the first checkpoint) or Condition 2 (η not
    halved at w_{j−1}, and f_max not risen since) halves η and moves x^(k+1) back to x_max with its
    gradient (x^(k) stays what it was, for the next momentum term). The image stops at its first
    misclassified iterate, which is returned; otherwise x_max is. Returns the iterates, that point and
    whether it is misclassified."""
    def evaluate(point):
        point = point.detach().requires_grad_(True)
        logits = model(point).float()
        loss = loss_fn(logits, y, y)
        return loss.item(), torch.autograd.grad(loss.sum(), point)[0], logits.argmax(1).item() != y.item()

    def project(point):
        return project_linf(point, x, eps) if norm == "Linf" else project_l2(point, x, eps)

    def direction(gradient):
        return gradient.sign() if norm == "Linf" else gradient / gradient.norm()

    marks = checkpoints(n_iter)
    f_cur, g_cur, fooled = evaluate(start)
    iterates = [start]
    if fooled:
        return iterates, start, True
    eta, x_prev, x_cur = 2 * eps, start, start
    x_max, g_max, f_max = start, g_cur, f_cur
    rises, halved_last, f_max_last = 0, False, f_cur
    for k in range(n_iter):
        alpha = 1.0 if k == 0 else 0.75
        z = project(x_cur + eta * direction(g_cur))
        x_new = project(x_cur + alpha * (z - x_cur) + (1 - alpha) * (x_cur - x_prev))
        f_new, g_new, fooled = evaluate(x_new)
        iterates.append(x_new)
        if fooled:
            return iterates, x_new, True
        if f_new > f_cur:
            rises += 1
        if f_new > f_max:
            x_max, g_max, f_max = x_new, g_new, f_new
        x_prev, x_cur, g_cur, f_cur = x_cur, x_new, g_new, f_new
        if k + 1 in marks[1:]:
            j = marks.index(k + 1)
            condition_1 = rises < rho * (marks[j] - marks[j - 1])
            condition_2 = not halved_last and not f_max > f_max_last
            halved_last = condition_1 or condition_2
            if halved_last:
                eta, x_cur, g_cur, f_cur = eta / 2, x_max, g_max, f_max
            rises, f_max_last = 0, f_max
    return iterates, x_max, False


def assert_apgd_follows_the_paper(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, loss_fn,
                                  oracle_model=None, atol: float = 0.0) -> list[int]:
    """Runs ``attack`` on the batch, recording its iterates, and each image alone through
    :func:`apgd_by_the_paper` from the same start; every iterate of every image and every returned
    point agree (images leave the batch as they are fooled, so the k-th recorded batch holds the
    images not fooled before iteration k). Returns the iteration at which each image was fooled
    (``attack.n_iter + 1`` when it was not)."""
    ours = InputRecorder(model)
    x_adv = attack(ours, x, y)
    start = ours.iterates[0]
    oracle_model = oracle_model or model
    paths, returned, fooled = zip(*(apgd_by_the_paper(oracle_model, x[i:i + 1], y[i:i + 1], start[i:i + 1], attack.eps,
                                              attack.n_iter, loss_fn, attack.norm) for i in range(len(x))))
    fooled_at = [len(path) - 1 if misclassified else attack.n_iter + 1 for path, misclassified in zip(paths, fooled)]
    assert len(ours.iterates) == min(max(fooled_at) + 1, attack.n_iter + 1)
    for k, batch in enumerate(ours.iterates):
        alive = [i for i, at in enumerate(fooled_at) if at >= k]
        assert len(batch) == len(alive), f"iteration {k}: {len(batch)} images attacked, not {len(alive)}"
        for row, i in enumerate(alive):
            assert torch.allclose(batch[row], paths[i][k][0], rtol=0, atol=atol), f"iterate {k} of image {i} differs"
    for i, point in enumerate(returned):
        assert torch.allclose(x_adv[i], point[0], rtol=0, atol=atol), f"image {i}: a different point is returned"
    return fooled_at


@pytest.mark.parametrize(("name", "norm", "eps", "atol"), [("apgd-ce", "Linf", 12 / 255, 1e-12),
                                                           ("apgd-dlr", "Linf", 12 / 255, 1e-12),
                                                           ("apgd-ce", "L2", 1.6, 1e-7)])
def test_apgd_follows_the_paper_to_its_last_iteration(robust_mlp, robust_batch, name, norm, eps, atol):
    """Every iterate of all 100, through every step-size checkpoint, and the point each image gets
    back, against the paper's algorithm written out per image (:func:`apgd_by_the_paper`): in float64,
    so that batching cannot move a gradient's sign, and at budgets (above the model's 8/255) where
    some images are fooled under way and the batch shrinks. A float64 image gets float64 step sizes:
    a step of 2ε held in float32 would move the iterates by ~1e-9. (The L2 direction divides by
    ‖∇f‖ + 1e-12, which the paper's ∇f/‖∇f‖ does not: hence the looser tolerance there.)"""
    from advlib.attacks.apgd import LOSSES

    model = copy.deepcopy(robust_mlp).double()
    x, y = robust_batch
    x = x.double()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct][:32], y[correct][:32]
    attack = attacks.build(name, eps=eps, norm=norm, n_iter=100, seed=0)
    fooled_at = assert_apgd_follows_the_paper(model, x, y, attack, LOSSES[attack.loss], atol=atol)
    assert min(fooled_at) <= 100 < max(fooled_at)  # some images leave the batch, some stay to the end


def test_apgd_start_is_drawn_in_the_attacks_own_norm(robust_mlp, robust_batch):
    """L∞ starts fill the cube's surface (‖δ‖∞ = ε before clipping, so more than 0.9 ε after it on
    these images), unlike an L2 start of the same radius (‖δ‖∞ ≈ 0.1 ε for 1024 pixels)."""
    x, y = robust_batch[0][:16], robust_batch[1][:16]
    y = robust_mlp(x).argmax(1)  # every image is attacked
    ours = InputRecorder(robust_mlp)
    attacks.build("apgd-ce", eps=8 / 255, n_iter=1)(ours, x, y)
    assert ((ours.iterates[0] - x).flatten(1).abs().amax(1) > 0.9 * 8 / 255).all()


class ScriptedLoss(nn.Module):
    """Two classes. At its n-th differentiated pass the wrong class's logit is ``values[n]`` with
    input gradient ``gradients[n]``, wherever the point, so class 0's cross-entropy softplus(value)
    rises, falls and ties exactly when the script says (ties at different points are what a real
    model rarely gives); passes without gradients see class 0 win."""

    def __init__(self, values: list[float], gradients: torch.Tensor) -> None:
        super().__init__()
        self.values, self.gradients, self.calls = values, gradients, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = torch.zeros(len(x), dtype=x.dtype)
        if not x.requires_grad:
            return torch.stack([right, right - 1], 1)
        value, gradient = self.values[self.calls], self.gradients[self.calls]
        self.calls += 1
        return torch.stack([right, value + ((x - x.detach()) * gradient).flatten(1).sum(1)], 1)


def test_apgd_treats_equal_losses_as_the_paper_says():
    """A loss that ties as often as it rises: a tie is not a rise (Condition 1 counts f(x^(k+1)) >
    f(x^(k))) and does not replace x_max (the first point of the highest loss is kept). Ten
    iterations have checkpoints at 2, 3, ..., 10, so every tie is judged at once."""
    from advlib.attacks.apgd import cross_entropy

    values = [-4.0, -3.0, -3.0, -3.0, -2.5, -2.5, -2.8, -2.5, -2.0, -2.0, -2.0]
    gradients = torch.randn(len(values), 1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    attack = attacks.build("apgd-ce", eps=0.25, n_iter=10, seed=0)
    assert checkpoints(10) == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert assert_apgd_follows_the_paper(ScriptedLoss(values, gradients), x, y, attack, cross_entropy,
                                         oracle_model=ScriptedLoss(values, gradients)) == [11]


def test_apgd_checkpoints_for_a_short_run_by_hand():
    """22 iterations: p_1 = 0.22 gives w_1 = 4; 0.03 · 22 and 0.06 · 22 round down to 0 and 1, and the
    reference's max(·, 1) makes both 1, so the intervals shrink 3, 2, 1 and stay 1, up to and
    including the last iteration."""
    assert checkpoints(22) == [0, 4, 7, 9, *range(10, 23)]


def test_apgd_flags_the_rows_whose_gradient_is_zero():
    """Only the image whose start point has an exactly zero gradient is flagged, not the whole batch."""
    from advlib.attacks.apgd import APGD

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
        model[1].bias.fill_(-1.5)
    # image 0 turns both units off (logits tie at 0, class 0 wins, every gradient is zero); image 1 turns one on
    x = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]).view(2, 1, 2, 2)
    y = torch.tensor([0, 0])
    outcome = APGD(eps=0.05, n_iter=1).attack(model, x, y, torch.Generator().manual_seed(0))
    assert outcome.zero_gradient.tolist() == [True, False]


def test_fab_t_finds_what_the_reference_finds(small_model, test_batch):
    """Per image, FAB-T (3 targets, 20 iterations) finds a misclassified point within ε exactly
    where the reference's FAB-T does: without a random start every (image, target) trajectory is
    the reference's, and an image is fooled if one of its iterates is misclassified within ε. On
    this CNN at 4/255 a quarter of the successes come after the first iterations."""
    from pyautoattack.fab_pt import FABAttack_PT

    x, y = test_batch
    x, y = x[:96], y[:96]
    eps, settings = 4 / 255, {"n_iter": 20, "n_target_classes": 3}
    ours = attacks.build("fab-t", eps=eps, **settings)(small_model, x, y)
    reference = FABAttack_PT(small_model, norm="Linf", n_restarts=1, eps=eps, targeted=True, **settings)
    theirs = reference.perturb(x, y)

    def fooled(x_adv):
        with torch.no_grad():
            wrong = small_model(x_adv).argmax(1) != y
        return wrong & ((x_adv - x).flatten(1).abs().amax(1) <= eps + 1e-6)

    clean = accuracy(small_model, x, y)
    assert torch.equal(fooled(ours), fooled(theirs))
    assert 0 < fooled(ours).sum() < clean * len(x)  # both verdicts occur
    unchanged = ~fooled(ours)
    assert torch.equal(ours[unchanged], x[unchanged])


def test_fab_t_attacks_a_lone_image_and_caps_its_targets_at_the_wrong_classes(robust_batch, monkeypatch):
    """One image is attacked too; with 4 classes and 9 targets asked, the targets are the 3 wrong
    classes, most likely first."""
    import advlib.attacks.fab as fab

    model = mlp(32 * 32, 16, 4, seed=5)
    x, _ = robust_batch
    x = x[:1]
    with torch.no_grad():
        ranked = model(x).argsort(dim=1, descending=True)[0]
    y = ranked[:1]
    runs = []
    original = fab.FABTargeted._run

    def recorded(self, model, x, y, owner, target, x_adv, done):
        runs.append(target.tolist())
        return original(self, model, x, y, owner, target, x_adv, done)

    monkeypatch.setattr(fab.FABTargeted, "_run", recorded)
    attacks.build("fab-t", eps=1e-4, n_iter=2)(model, x, y)
    assert runs == [ranked[1:].tolist()]
    x_adv = attacks.build("fab-t", eps=1.0, n_iter=10, n_target_classes=1)(model, x, y)
    with torch.no_grad():
        assert model(x_adv).argmax(1) != y  # a single (image, target) row: with ε = 1 it is fooled


def test_fab_t_defaults_are_autoattacks_standard_fab():
    """FAB-T built by name alone is the FAB of AutoAttack's standard version: 100 iterations, 9 target
    classes, α_max = 0.1, η = 1.05, β = 0.9 (Croce & Hein 2020b, Sec. 5), seed 0 unless given."""
    from pyautoattack import AutoAttack as ReferenceAutoAttack

    reference = ReferenceAutoAttack(nn.Identity(), norm="Linf", eps=8 / 255, version="standard").fab
    fab = attacks.build("fab-t")
    assert (fab.eps, fab.n_iter, fab.n_target_classes, fab.alpha_max, fab.eta, fab.beta) == (
        8 / 255, reference.n_iter, reference.n_target_classes, reference.alpha_max, reference.eta, reference.beta)
    assert (fab.seed, fab.max_batch, attacks.build("fab-t", seed=7).seed) == (0, None, 7)
    assert attacks.build("fab-t", max_batch=5).max_batch == 5


@pytest.mark.parametrize("setting", ["n_iter", "n_target_classes", "max_batch"])
@pytest.mark.parametrize("value", [0, 2.5, True])
def test_fab_t_rejects_a_count_that_is_not_a_positive_integer(setting, value):
    with pytest.raises(ValueError, match=f"{setting} must be a positive integer"):
        attacks.build("fab-t", **{setting: value})


def linear_two_class_model(w: torch.Tensor, b: float) -> nn.Module:
    """Logits (0, ⟨w, x⟩ + b) of a flattened image: f = z_1 − z_0 is linear, so FAB's linearisation
    is exact and its steps can be worked by hand."""
    layer = nn.Linear(len(w), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack((torch.zeros_like(w), w)))
        layer.bias.copy_(torch.tensor([0.0, b]))
    return nn.Sequential(nn.Flatten(), layer)


def test_fab_t_on_a_linear_model_keeps_each_images_first_point_within_eps():
    """Worked by hand (Croce & Hein 2020, Sec. 3). For linear f = ⟨w, x⟩ + b < 0 the smallest L∞ step
    onto the boundary is d = −f(x)/‖w‖₁ · sign(w), and from x^{(0)} = x_orig the first iterate is
    x + η d whatever α: at distance 1.05 r, r = |f(x)|/‖w‖₁. Image A (r = 0.02) is fooled there, within
    ε = 0.102, and that first point is its result; image B (r = 0.1) is not, but after the backward
    step (β = 0.9) the next iterate lies at ≈ 1.005 r, within ε: B keeps being attacked after A
    leaves the batch. With ε set to exactly A's distance, that point still counts (‖δ‖∞ ≤ ε)."""
    w = torch.tensor([1.0, -2.0, 0.5, 1.5])
    model = linear_two_class_model(w, b=0.0)
    centre = torch.full((4,), 0.5)
    r = {"A": 0.02, "B": 0.1}
    # x = 0.5 − r·sign(w): then f(x) = ⟨w, 0.5⟩ − r‖w‖₁ with ⟨w, 0.5⟩ = 0.5
    x = torch.stack([centre - (r[k] + 0.5 / w.abs().sum()) * w.sign() for k in ("A", "B")]).view(2, 1, 2, 2)
    y = torch.zeros(2, dtype=torch.long)
    f = x.flatten(1) @ w
    assert (f < 0).all() and torch.allclose(-f / w.abs().sum(), torch.tensor([r["A"], r["B"]]))
    d = (-f / w.abs().sum())[:, None] * w.sign()

    x_adv = attacks.build("fab-t", eps=0.102, n_iter=5)(model, x, y)
    assert torch.allclose(x_adv[0].flatten(), x[0].flatten() + 1.05 * d[0], atol=1e-6)
    distance_b = (x_adv[1] - x[1]).abs().max()
    assert model(x_adv[1:]).argmax(1).item() == 1 and r["B"] < distance_b <= 0.102

    distance_a = float((x_adv[0] - x[0]).abs().max())
    at_the_boundary = attacks.build("fab-t", eps=distance_a, n_iter=5)(model, x[:1], y[:1])
    assert torch.equal(at_the_boundary, x_adv[:1])


class CountingPasses(nn.Module):
    """``model`` that counts its forward passes with and without autograd."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.with_grad, self.without_grad = model, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.with_grad += 1
        else:
            self.without_grad += 1
        return self.model(x)


def test_fab_t_takes_one_forward_backward_per_iteration_while_no_row_is_adversarial():
    """The cost FAB-T's docstring promises: while most rows stay robust, the forward pass that checks
    x^{(i+1)} also gives the next gradient, so n iterations cost n forward-backward passes (the
    first at x) and plain forward passes only for the label check, the clean prediction and the last
    iterate. Here f = ⟨1, x⟩ − 10 < 0 on all of [0, 1]^4: no point is adversarial."""
    model = CountingPasses(linear_two_class_model(torch.ones(4), b=-10.0))
    x, y = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(3, dtype=torch.long)
    x_adv = attacks.build("fab-t", eps=0.5, n_iter=6)(model, x, y)
    assert torch.equal(x_adv, x)
    assert (model.with_grad, model.without_grad) == (6, 3)


class QuadraticMargin(nn.Module):
    """Logits (0, ⟨1, x⟩ + ⟨x, x⟩ − 10) of a flattened image: f < 0 on all of [0, 1]^d (d ≤ 4), so no
    point is ever adversarial, and ∇f = 1 + 2x changes from point to point."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        margin = flat.sum(1) + (flat * flat).sum(1) - 10
        return torch.stack((torch.zeros_like(margin), margin), dim=1)


def test_fab_t_linearises_at_the_current_point_while_no_row_is_adversarial(monkeypatch):
    """Every step of FAB-T (Croce & Hein 2020, Eq. 7) projects onto the linearisation of f at the
    current iterate x^{(i)}: the gradient and f passed to the projection are those at that point, also
    when the forward pass that checked x^{(i)} supplied them (the path taken while no row is
    adversarial)."""
    from advlib.attacks import fab
    calls = []

    def recording(points, w, needed):
        calls.append((points.clone(), w.clone(), needed.clone()))
        return linf_projection_onto_hyperplane(points, w, needed)

    monkeypatch.setattr(fab, "linf_projection_onto_hyperplane", recording)
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    attacks.build("fab-t", eps=0.5, n_iter=4)(QuadraticMargin(), x, torch.zeros(3, dtype=torch.long))
    assert len(calls) == 4
    for points, w, needed in calls:
        current = points[:3]  # the rows stepping from x^{(i)}; the others step from x^{(0)}
        assert torch.allclose(w[:3], 1 + 2 * current, atol=1e-6)
        assert torch.allclose(needed[:3], -(current.sum(1) + (current * current).sum(1) - 10), atol=1e-5)
    assert not torch.allclose(calls[0][0][:3], calls[1][0][:3]), "the first step moves (to the box's corner)"


def test_fab_projection_matches_reference():
    from pyautoattack.fab_projections import projection_linf

    generator = torch.Generator().manual_seed(0)
    for dims in (3, 40, 1024):
        point = torch.rand(32, dims, generator=generator)
        w = torch.randn(32, dims, generator=generator) * (torch.rand(32, dims, generator=generator) > 0.2)
        b = (w * torch.rand(32, dims, generator=generator)).sum(1)
        ours = linf_projection_onto_hyperplane(point, w, b - (w * point).sum(1))
        theirs = projection_linf(point, w, b)
        assert torch.allclose(ours, theirs, atol=1e-5)
        inside = (point + ours >= 0).all() and (point + ours <= 1).all()
        assert inside


@pytest.mark.parametrize(("model_name", "settings", "rows"), [
    ("robust_mlp", {}, 32), ("robust_mlp", {"alpha_max": 0.5, "eta": 1.2, "beta": 0.85}, 32),
    # on this CNN most steps fall short of the boundary: no row is misclassified after them
    ("small_model", {}, 4)])
def test_fab_t_trajectory_matches_reference(request, robust_batch, monkeypatch, model_name, settings, rows):
    """From x itself (no random start), every FAB-T iterate — the point each step is taken from —
    equals the reference's, as do the hyperplanes they project onto. The ε is far below any
    adversarial example's distance, so no example leaves the batch and both runs keep every row
    for every iteration; the trajectory includes the backward steps (β) of the rows that turn
    adversarial. A wrong η, β, target class or projection changes the second iterate; α_max binds
    only on some iterates, which the second setting reaches."""
    import pyautoattack.fab_base as reference_fab
    from pyautoattack.fab_pt import FABAttack_PT

    import advlib.attacks.fab as fab

    model = request.getfixturevalue(model_name)
    x, y = robust_batch
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct][:rows], y[correct][:rows]
    n, n_iter = len(x), 12

    def recording(projection, calls):
        def record(points, w, c):
            calls.append((points[:n].clone(), w[:n].clone()))
            return projection(points, w, c)
        return record

    ours, theirs = [], []
    monkeypatch.setattr(fab, "linf_projection_onto_hyperplane", recording(fab.linf_projection_onto_hyperplane, ours))
    monkeypatch.setattr(reference_fab, "projection_linf", recording(reference_fab.projection_linf, theirs))
    x_ours = attacks.build("fab-t", eps=1e-4, n_iter=n_iter, n_target_classes=1, **settings)(model, x, y)
    reference = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=n_iter, eps=1e-4, targeted=True,
                             **settings)
    reference.target_class = 2  # the most likely wrong class, AutoAttack's first target
    reference.attack_single_run(x, y, use_rand_start=False, is_targeted=True)

    assert torch.equal(x_ours, x)  # nothing within this ε
    assert len(ours) == len(theirs) == n_iter
    with torch.no_grad():
        target = model(x).sort(dim=1)[1][:, -2]
    for k, ((point, w), (point_ref, _)) in enumerate(zip(ours, theirs)):
        assert torch.allclose(point, point_ref.view_as(point), atol=1e-5), f"iterate {k} differs"
        # the reference's hyperplane at our point: at theirs, a point 1e-7 away can lie across a
        # ReLU's or max-pool's kink, where the gradient jumps
        _, w_ref = reference.get_diff_logits_grads_batch_targeted(point.view_as(x), y, target)
        assert torch.allclose(w, w_ref.view_as(w), atol=1e-5), f"gradient {k} differs"
    # rows turned adversarial on the way, so the backward steps are part of what was compared
    assert any(bool((model(point.view_as(x)).argmax(1) != y).any()) for point, _ in ours) or rows < 32


def test_square_trajectory_matches_reference(robust_mlp, robust_batch):
    """Given the reference's random draws (the stripes, each square's corner and signs), Square
    makes the reference's choices: after 1, 2, 5, 11, 12, 51 and 150 iterations (either side of
    the first halvings of p) its point is the reference's, the fooled images' included. One image
    per run, since the reference draws one square for a whole batch and we one per image; our
    ``n_queries`` counts the start, the reference's counts only the iterations after it. A wrong
    schedule of p, sign, projection onto the ball or acceptance rule changes the point."""
    from pyautoattack.square import SquareAttack

    x, y = robust_batch
    with torch.no_grad():
        correct = robust_mlp(x).argmax(1) == y
    x, y = x[correct][:6], y[correct][:6]
    eps, fooled = 0.1, 0
    for image, label in zip(x.split(1), y.split(1)):
        for iterations in (1, 2, 5, 11, 12, 51, 150):
            reference = SquareAttack(robust_mlp, p_init=0.8, n_queries=iterations, eps=eps, norm="Linf",
                                     loss="margin", resc_schedule=False)
            reference.init_hyperparam(image)
            signs, corners = [], []

            def recorded(draw, into):
                def record(*args, **kwargs):
                    into.append(draw(*args, **kwargs))
                    return into[-1]
                return record

            reference.random_choice = recorded(reference.random_choice, signs)
            reference.random_int = recorded(reference.random_int, corners)
            with torch.random.fork_rng():
                torch.manual_seed(iterations)
                _, x_reference = reference.attack_single_run(image, label)

            ours = attacks.build("square", eps=eps, n_queries=iterations + 1)
            replayed_signs, replayed_corners = iter(signs), iter(corners)
            ours._random_signs = lambda shape, generator, like: next(replayed_signs).view(shape)
            ours._square_corners = lambda m, side, size, generator, device: (
                next(replayed_corners).view(1, 1), next(replayed_corners).view(1, 1))
            x_ours = ours(robust_mlp, image, label)
            assert torch.allclose(x_ours, x_reference, atol=1e-6), f"after {iterations} iterations"
            assert next(replayed_signs, None) is None  # every draw of the reference was used
        fooled += int(robust_mlp(x_ours).argmax(1) != label)
    assert 0 < fooled < len(x)  # both outcomes were compared


def test_schedules_follow_the_papers():
    # p_1 = 0.22, then intervals shrink by 0.03 down to 0.06 (APGD, Sec. 3.2)
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    # Square's p halves after iterations 10, 50, 200, 500, 1000, 2000, 4000 (5000 queries)
    assert [square_fraction(i, 0.8) for i in (0, 10, 11, 50, 51, 4001, 4999)] == [
        0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 128, 0.8 / 128]


# ---------------------------------------------------------------- Square

def test_square_respects_ball_budget_and_seed(robust_mlp, robust_batch):
    x, y = robust_batch
    x, y = x[:100], y[:100]
    eps, budget = 8 / 255, 300
    square = attacks.build("square", eps=eps, n_queries=budget, seed=3)
    x_adv = square(robust_mlp, x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert int(square.queries_used.max()) <= budget
    assert torch.equal(x_adv, attacks.build("square", eps=eps, n_queries=budget, seed=3)(robust_mlp, x, y))
    assert not torch.equal(x_adv, attacks.build("square", eps=eps, n_queries=budget, seed=4)(robust_mlp, x, y))
    # random search beats random vertices of the ball, drawn as often as Square queries
    generator = torch.Generator().manual_seed(0)
    robust_to_noise = torch.ones(len(x), dtype=torch.bool)
    for _ in range(budget // 10):
        signs = torch.randint(0, 2, x.shape, generator=generator) * 2 - 1
        with torch.no_grad():
            robust_to_noise &= robust_mlp((x + eps * signs).clamp(0, 1)).argmax(1) == y
    assert accuracy(robust_mlp, x_adv, y) < robust_to_noise.float().mean().item()


# ---------------------------------------------------------------- the Attack contract, as properties

@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    return mlp(8 * 8, 16, 10, seed=1)


SETTINGS = {
    "apgd-ce": {"n_iter": 10},
    "apgd-t": {"n_iter": 10, "n_target_classes": 3},
    "apgd-dlr": {"n_iter": 10},
    "fab-t": {"n_iter": 10, "n_target_classes": 3},
    "square": {"n_queries": 50},
    "autoattack": {},
}


@pytest.mark.parametrize("name", list(SETTINGS))
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.sampled_from([1 / 255, 8 / 255, 0.1, 0.3]), n=st.integers(1, 4),
       train_mode=st.booleans())
def test_attack_contract(tiny_model, name, seed, eps, n, train_mode):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    with torch.no_grad():
        y = tiny_model(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one misclassified example, which must come back unchanged
    attack = attacks.build(name, eps=eps, seed=seed, **SETTINGS[name])
    tiny_model.train(train_mode)
    rng_before = torch.get_rng_state()
    x_adv = attack(tiny_model, x, y)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert tiny_model.training == train_mode
    assert all(p.grad is None for p in tiny_model.parameters())
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    tiny_model.eval()
    with torch.no_grad():
        clean_correct = tiny_model(x).argmax(1) == y
        adv_correct = tiny_model(x_adv).argmax(1) == y
    assert (adv_correct <= clean_correct).all()  # robust ≤ clean, per example
    assert torch.equal(x_adv[~clean_correct], x[~clean_correct])  # misclassified points are not attacked
    assert torch.equal(x_adv, attacks.build(name, eps=eps, seed=seed, **SETTINGS[name])(tiny_model, x, y))


class ModeRecorder(nn.Module):
    """A tiny MLP that records whether it was in training mode at each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.modes = mlp(8 * 8, 16, 10, seed=1), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.net(x)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("name", attacks.ATTACKS.names())
def test_every_attack_runs_the_model_in_the_mode_it_is_asked_for(name, bn_mode):
    """``bn_mode`` reaches the model: adversarial training crafts in "train" mode (BatchNorm's batch
    statistics), evaluation in "eval"; only the label check looks at one image in eval mode."""
    model = ModeRecorder().eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    model.modes.clear()
    settings = {"cw": {"steps": 3}, "cw-linf": {"eps": 0.1, "steps": 3}, "pgd": {"eps": 0.1, "steps": 3},
                "bim": {"eps": 0.1, "steps": 3}, "fgsm": {"eps": 0.1}}
    options = {"eps": 0.1, **SETTINGS[name]} if name in SETTINGS else settings[name]
    attacks.build(name, seed=0, bn_mode=bn_mode, **options)(model, x, y)
    assert model.modes[0] is False and len(model.modes) > 1
    assert set(model.modes[1:]) == {bn_mode == "train"}
    assert model.training is False


def test_run_agrees_with_call_and_reports(tiny_model):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    aa = attacks.build("autoattack", eps=0.1, version="standard", seed=5)
    result = aa.run(tiny_model, x, y, batch_size=4)
    assert isinstance(result, AutoAttackResult)
    assert torch.equal(result.x_adv, aa(tiny_model, x, y))
    assert [name for name, _ in result.breakdown] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accuracies = [result.clean_accuracy] + [value for _, value in result.breakdown]
    assert accuracies == sorted(accuracies, reverse=True)
    assert result.robust_accuracy == pytest.approx(accuracy(tiny_model, result.x_adv, y))
    assert result.seconds > 0


# ---------------------------------------------------------------- flags and errors

class Quantised(nn.Module):
    """Rounds its input to 4 grey levels first: gradients are exactly zero (masked), yet small
    perturbations still change the output, which a black-box attack can find."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(8 * 8, 16, 10, seed=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 3) / 3)


class GradientStepDefence(nn.Module):
    """A 'dynamic defence': one gradient step on its own input inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(8 * 8, 16, 10, seed=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            energy = self.net(z).logsumexp(1).sum()
            step = torch.autograd.grad(energy, z)[0]
        return self.net(x + 0.01 * step.sign())


def random_batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_softmax_output_is_flagged(tiny_model):
    x, y = random_batch()
    probabilities = nn.Sequential(tiny_model, nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="softmax"):
        result = attacks.build("autoattack", eps=0.3).run(probabilities, x, y)
    assert any(flag.startswith("softmax outputs") for flag in result.flags)
    assert _checks.flag_softmax(tiny_model(x)) is None


def test_randomised_forward_is_flagged(tiny_model):
    x, y = random_batch()
    noisy = nn.Sequential(nn.Dropout(0.5), tiny_model)
    # crafting in train mode keeps dropout on: two forward passes differ
    with pytest.warns(UserWarning, match="randomised"):
        result = attacks.build("autoattack", eps=0.3, bn_mode="train").run(noisy, x, y)
    assert any(flag.startswith("randomised forward pass") for flag in result.flags)
    assert _checks.flag_randomized(noisy.eval(), x, y) is None


def test_zero_gradients_and_square_beating_white_box_are_flagged():
    x, y = random_batch(8, seed=1)
    with pytest.warns(UserWarning):
        result = attacks.build("autoattack", eps=0.2).run(Quantised(), x, y)
    assert any(flag.startswith("zero gradients") and " in the DLR-loss attacks;" in flag for flag in result.flags)
    assert any(flag.startswith("Square beats the white-box attacks") for flag in result.flags)


def test_zero_gradients_are_looked_for_in_the_dlr_losses_only():
    """As the reference does: a confidently correct linear model saturates the softmax, so APGD-CE
    sees exactly zero gradients, while the DLR losses (ratios of logit differences) do not; nothing
    is masked, and nothing is flagged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[1].weight.mul_(1000)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    z = x[:1].clone().requires_grad_(True)
    assert torch.autograd.grad(F.cross_entropy(model(z), y[:1]), z)[0].abs().max() == 0, "CE saturates"
    autoattack = attacks.build("autoattack", eps=1e-3, iterations=2, square_queries=2, n_target_classes=2)
    assert autoattack.run(model, x, y).flags == []


def reference_warns(check, *args, **kwargs) -> bool:
    """Whether one of the reference's checks (``pyautoattack.checks``) warns."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(*args, **kwargs)
    return bool(caught)


class ScaledAfter(nn.Module):
    """``model``, its logits multiplied by a per-example factor that changes on every call after
    the first ``calls``: same directions (same predictions), different lengths."""

    def __init__(self, model: nn.Module, calls: int = 0, noise: float = 0.0) -> None:
        super().__init__()
        self.model, self.calls, self.noise, self.seen = model, calls, noise, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        logits = self.model(x)
        if self.seen <= self.calls:
            return logits
        generator = torch.Generator().manual_seed(self.seen)
        scale = 1 + torch.rand(len(x), 1, generator=generator) * 3
        jitter = self.noise * torch.randn(logits.shape, generator=generator) * logits.norm(dim=1, keepdim=True)
        return scale * logits + jitter


def test_model_checks_agree_with_the_references_checks(tiny_model):
    """Each warning of AutoAttack's checks is raised exactly where the reference's own check
    warns: randomised passes (a rescaled output is not randomised; a relative change above 1e-4 is;
    five passes are compared), probabilities instead of logits, Square beating the white-box
    attacks (by more than 0.2 points, once at least one other attack ran), and too few classes
    (with one exception, below)."""
    from pyautoattack import checks

    x, y = random_batch(16, seed=4)
    for model in (tiny_model, ScaledAfter(tiny_model), ScaledAfter(tiny_model, noise=1e-3),
                  ScaledAfter(tiny_model, noise=1e-6), ScaledAfter(tiny_model, calls=5, noise=1e-2)):
        ours = _checks.flag_randomized(model, x, y) is not None
        if isinstance(model, ScaledAfter):
            model.seen = 0  # the reference's check starts from the same first call
        assert ours == reference_warns(checks.check_randomized, model, x, y), model
    probabilities = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    for logits in (probabilities, probabilities * 0.9, torch.tensor([[1.5, -0.5]]), tiny_model(x).detach(),
                   probabilities + 2e-5 * torch.tensor([[1.0, -1.0], [0.0, 0.0]])):
        ours = _checks.flag_softmax(logits) is not None
        assert ours == reference_warns(checks.check_range_output, lambda _: logits, x), logits
    for breakdown in ([("apgd-ce", 0.5), ("square", 0.497)], [("apgd-ce", 0.5), ("square", 0.499)],
                      [("apgd-ce", 0.5), ("apgd-t", 0.4), ("square", 0.39)], [("square", 0.1)],
                      [("apgd-ce", 0.5), ("apgd-t", 0.45)]):
        ours = _checks.flag_square_beats_white_box(breakdown) is not None
        assert ours == reference_warns(checks.check_square_sr, {"clean": 0.9, **dict(breakdown)}), breakdown
    for n_classes in (2, 3, 4, 10):
        for names in (["apgd-ce", "apgd-t", "fab-t", "square"], ["apgd-ce", "apgd-dlr"], ["apgd-ce", "fab-t"]):
            ours = _checks.flag_targets(n_classes, names, 3, 3) is not None
            theirs = reference_warns(checks.check_n_classes, n_classes, names, 3, 3)
            if n_classes == 3 and names == ["apgd-ce", "apgd-dlr"]:
                # the reference warns that the *targeted* DLR loss needs 4 classes even when only
                # the untargeted one runs, whose z_π1 - z_π3 exists with 3 classes
                assert theirs and not ours
            else:
                assert ours == theirs, (n_classes, names)



def test_flag_messages_by_hand():
    """What a reader is told, with the numbers in it."""
    assert _checks.flag_zero_gradients(torch.tensor([True, False, False, False]), "APGD-T") == (
        "zero gradients: 1 of 4 examples (25.0%) have an all-zero input gradient in APGD-T; gradient-based "
        "attacks cannot move them, so the evaluation may be unreliable (gradient masking)")
    assert _checks.flag_zero_gradients(torch.zeros(4, dtype=torch.bool), "APGD-T") is None
    assert _checks.flag_square_beats_white_box([("apgd-ce", 0.5), ("square", 0.45)]) == (
        "Square beats the white-box attacks: it lowered robust accuracy by 5.00% after them; gradients are "
        "probably masked, so try more Square queries/restarts or an adaptive attack")
    assert _checks.flag_targets(4, ["apgd-ce", "apgd-t", "fab-t"], 9, 2) == (
        "too few classes: APGD-T asks for 9 target classes but only 3 exist (the extra ones are skipped)")
    assert _checks.flag_targets(2, ["apgd-ce", "apgd-dlr"], 9, 9) == (
        "too few classes: with 2 classes the DLR loss is undefined")
    assert _checks.flag_targets(3, ["apgd-t", "fab-t"], 2, 3) == (
        "too few classes: with 3 classes the targeted DLR loss is undefined; FAB-T asks for 3 target classes "
        "but only 2 exist (the extra ones are skipped)")
    x, _ = random_batch()
    assert _checks.flag_dynamic(GradientStepDefence(), x) == (
        "autograd inside forward: the forward pass computes gradients (a dynamic defence); AutoAttack alone "
        "may not be enough, add an adaptive attack")


def test_the_dynamic_check_hands_back_the_tracer_it_found(tiny_model):
    """A debugger's or coverage's tracer is active again after the check."""
    import sys

    def tracer(frame, event, arg):
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        _checks.flag_dynamic(tiny_model, random_batch()[0])
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)

def test_dynamic_defence_is_flagged(tiny_model):
    x, _ = random_batch()
    assert _checks.flag_dynamic(GradientStepDefence(), x) is not None
    assert _checks.flag_dynamic(tiny_model, x) is None


def test_more_targets_than_classes_is_flagged_and_capped():
    x, _ = random_batch()
    y = torch.randint(0, 5, (len(x),), generator=torch.Generator().manual_seed(0))
    five_classes = mlp(8 * 8, 16, 5, seed=4)
    with pytest.warns(UserWarning, match="too few classes"):
        result = attacks.build("autoattack", eps=0.05, n_target_classes=9).run(five_classes, x, y)
    assert any(flag.startswith("too few classes") for flag in result.flags)
    assert (result.x_adv - x).abs().max() <= 0.05 + 1e-6


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown AutoAttack version 'plus'.*standard, rand"):
        attacks.build("autoattack", version="plus")
    with pytest.raises(ValueError, match="L∞ only"):
        attacks.build("autoattack", norm="L2")
    with pytest.raises(ValueError, match="norm"):
        attacks.build("apgd-ce", norm="L1")
    with pytest.raises(ValueError, match="n_target_classes"):
        attacks.build("apgd-t", n_target_classes=0)
    with pytest.raises(ValueError, match="eps"):
        attacks.build("square", eps=-1)
    for name in ("apgd-ce", "apgd-t"):
        with pytest.raises(ValueError, match="n_iter"):
            attacks.build(name, n_iter=0)


def test_apgd_defaults_are_the_reference_budget():
    """APGD built by name alone: AutoAttack's budget (100 iterations, one run, ρ = 0.75), L∞ at
    8/255 on the cross-entropy, no EOT, seed 0."""
    apgd = attacks.build("apgd-ce")
    assert (apgd.eps, apgd.norm, apgd.loss, apgd.n_iter, apgd.n_restarts, apgd.rho, apgd.eot_iter, apgd.seed) == (
        8 / 255, "Linf", "ce", 100, 1, 0.75, 1, 0)


@pytest.mark.parametrize(("version", "norm", "eps"), [("standard", "Linf", 8 / 255), ("standard", "Linf", 0.1),
                                                    ("rand", "Linf", 0.1), ("rand", "L2", 0.5)])
def test_settings_match_the_reference(version, norm, eps):
    """Every attack of the ensemble has the reference's settings for this version, norm and ε (the
    APGD losses are set by name when the reference runs them)."""
    from pyautoattack import AutoAttack as ReferenceAutoAttack

    reference = ReferenceAutoAttack(nn.Identity(), norm=norm, eps=eps, version=version, seed=0)
    ours = attacks.build("autoattack", eps=eps, norm=norm, version=version).attacks()
    assert list(ours) == reference.attacks_to_run
    for name, attack in ours.items():
        assert attack.eps == eps
        if name.startswith("apgd"):
            twin = reference.apgd_targeted if name == "apgd-t" else reference.apgd
            assert (attack.n_iter, attack.rho, attack.eot_iter) == (twin.n_iter, twin.thr_decr, twin.eot_iter)
            assert attack.n_restarts == twin.n_restarts and attack.norm == twin.norm == norm
            assert attack.loss == {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}[name]
        if name == "apgd-t":
            assert attack.n_target_classes == reference.apgd_targeted.n_target_classes
        if name == "fab-t":
            fab = reference.fab
            assert (attack.n_iter, attack.n_target_classes, fab.norm) == (fab.n_iter, fab.n_target_classes, norm)
            assert (attack.alpha_max, attack.eta, attack.beta) == (fab.alpha_max, fab.eta, fab.beta)
        if name == "square":
            square = reference.square
            assert (attack.n_queries, attack.p_init, square.rescale_schedule) == (square.n_queries, square.p_init, False)


def test_rand_version_runs_eot_on_a_randomised_model(tiny_model):
    x, y = random_batch()
    noisy = nn.Sequential(nn.Dropout(0.3), tiny_model)
    result = attacks.build("autoattack", eps=0.05, version="rand", bn_mode="train").run(noisy, x, y)
    assert [name for name, _ in result.breakdown] == ["apgd-ce", "apgd-dlr"]
    assert not any(flag.startswith("randomised") for flag in result.flags)  # that is what "rand" is for
    assert (result.x_adv - x).abs().max() <= 0.05 + 1e-6


# ---------------------------------------------------------------- losses, projection and run() by hand

def test_dlr_by_hand():
    """DLR loss (Croce & Hein 2020, Eq. 5): −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3), π sorting the logits
    of each example decreasingly. z = (3, 1, 0, −1), y = 1: −(1 − 3)/(3 − 0) = 2/3; z = (0, 4, 2, 1),
    y = 1: −(4 − 2)/(4 − 1) = −2/3."""
    from advlib.attacks.apgd import dlr

    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 4.0, 2.0, 1.0]])
    y = torch.tensor([1, 1])
    assert torch.allclose(dlr(logits, y, y), torch.tensor([2 / 3, -2 / 3]))


def test_dlr_is_positive_for_a_misclassified_point_even_when_the_top_logits_tie():
    """−margin / (z_π1 − z_π3) is > 0 exactly when the point is misclassified; the 1e-12 added to the
    denominator keeps it positive when z_π1 = z_π3. z = (1, 1, 1, 0), y = 3: margin −1, denominator
    0 + 1e-12, DLR = 1e12 > 0 (a ceiling for the loss, not a sign flip)."""
    from advlib.attacks.apgd import dlr

    y = torch.tensor([3])
    value = dlr(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), y, y)
    assert value.item() == pytest.approx(1e12, rel=1e-6)


def test_project_l2_leaves_a_tiny_perturbation_alone():
    """Inside the L2 ball the projection is the identity, however small ‖δ‖₂: the 1e-12 that guards
    the division ε/‖δ‖₂ must not flip the scale for ‖δ‖₂ = 1e-13 (float64, so δ is exact)."""
    from advlib.attacks.primitives import project_l2

    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] += 1e-13
    assert torch.equal(project_l2(x_adv, x, 0.9), x_adv)


def test_run_draws_from_the_generator_it_is_given(tiny_model):
    """``run(..., generator=g)`` draws its random starts from ``g`` instead of a fresh generator seeded
    by ``seed``: seed 5 with a generator seeded 7 gives what seed 7 gives, and not what seed 5 gives."""
    x, y = random_batch(6, seed=1)
    with torch.no_grad():
        y = tiny_model(x).argmax(1)  # every image attacked
    build = lambda seed: attacks.build("autoattack", eps=0.1, seed=seed, iterations=3,  # noqa: E731
                                       n_target_classes=2, square_queries=10)
    given_seven = build(5).run(tiny_model, x, y, generator=torch.Generator().manual_seed(7)).x_adv
    assert torch.equal(given_seven, build(7).run(tiny_model, x, y).x_adv)
    assert not torch.equal(given_seven, build(5).run(tiny_model, x, y).x_adv)


@pytest.mark.filterwarnings("ignore:AutoAttack")
def test_run_attacks_500_images_at_a_time_by_default():
    """``run`` feeds each attack at most ``batch_size`` (default 500) images at a time, and one
    generator serves all batches, so the batching shows in the result once a random attack sees more
    than one batch: on a quantised model (zero gradients) Square does the work, drawing its windows
    per iteration for the whole batch, and the default equals batch_size=500, not 501."""
    model = Quantised().eval()
    x = torch.rand(1000, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    aa = attacks.build("autoattack", eps=0.05, iterations=1, n_target_classes=1, square_queries=20)
    result = aa.run(model, x, y)
    assert result.breakdown[-2][1] * len(x) > 500, "more than one batch of survivors reaches Square"
    assert torch.equal(result.x_adv, aa.run(model, x, y, batch_size=500).x_adv)
    assert not torch.equal(result.x_adv, aa.run(model, x, y, batch_size=501).x_adv)


@pytest.mark.parametrize("budget", ["iterations", "square_queries", "n_target_classes"])
def test_autoattack_rejects_a_bad_budget_by_name(budget):
    """The budgets are checked when AutoAttack is built, not when an attack inside it first runs."""
    with pytest.raises(ValueError, match=f"{budget} must be a positive integer"):
        attacks.build("autoattack", **{budget: 0})


def test_autoattack_keeps_its_seed():
    """``seed`` reaches the Attack base class, which seeds the generator of every call: 0 by default."""
    assert attacks.build("autoattack").seed == 0
    assert attacks.build("autoattack", seed=7).seed == 7


def test_softmax_flag_at_its_tolerance_edges():
    """The reference's check_range_output: max < 1 + tol, min > −tol and every |row sum − 1| < tol, all
    strict. With tol = 0.25 (exact in binary) each row below sits exactly on one edge, or beyond it
    while inside the others, and is not flagged; the last rows are inside all three."""
    flag = lambda rows: _checks.flag_softmax(torch.tensor(rows), tolerance=0.25)  # noqa: E731
    assert flag([[0.5, 0.75]]) is None                        # |sum − 1| = tol
    assert flag([[1.25, -0.125]]) is None                     # max = 1 + tol
    assert flag([[1.5, -0.125, -0.125, -0.125, -0.125]]) is None  # max > 1 + tol, sum 1, min > −tol
    assert flag([[-0.25, 0.75, 0.5]]) is None                 # min = −tol
    assert flag([[0.5, 0.625], [1.125, -0.125]]) is not None  # sums 1.125 and 1, max 1.125, min −0.125
    assert flag([[-0.125, 0.75, 0.375]]) is not None


def test_softmax_flag_sums_over_the_last_dimension():
    """Rows are the last dimension (the reference sums ``output.sum(-1)``): per-position probabilities of shape (1, 2, 2) are flagged, though
    their sums over dimension 1 (0.75 and 1.25) are not 1."""
    assert _checks.flag_softmax(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]])) is not None


def test_square_flag_at_its_tolerance_edge():
    """Square is flagged when its robust accuracy is below the best white-box one by *more* than the
    tolerance (the reference's strict comparison): 0.75 − 0.5 = 0.25 = tol is not flagged, 0.375 is."""
    assert _checks.flag_square_beats_white_box([("apgd-ce", 0.75), ("square", 0.5)], tolerance=0.25) is None
    assert _checks.flag_square_beats_white_box([("apgd-ce", 0.75), ("square", 0.375)], tolerance=0.25) is not None


def test_targets_flag_at_its_edge():
    """APGD-T needs targets + 1 ≤ classes (the true class is never a target): 9 targets with 10 classes
    pass, 10 do not."""
    assert _checks.flag_targets(10, ["apgd-t"], 9, 9) is None
    assert _checks.flag_targets(10, ["apgd-t"], 10, 9) is not None


class Scripted(nn.Module):
    """Returns the given logits in turn, one set per forward pass (a model whose passes differ)."""

    def __init__(self, *outputs: list[list[float]]) -> None:
        super().__init__()
        self.outputs, self.calls = [torch.tensor(o) for o in outputs], 0
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.outputs[(self.calls - 1) % len(self.outputs)]


def test_randomised_flag_measures_each_rows_change_and_counts_per_row_predictions():
    """The reference's check: the largest change of one example's normalised logits (not of the whole
    batch's), and the number of correct predictions per pass, each row by its own argmax. Rows
    whose normalised logits move by 0.8 × the tolerance each are not flagged (the batch as a whole
    moves by 1.13 ×); a near-tie that flips one row's prediction is; a near-tie between two rows'
    maxima, which flips no row's prediction, is not."""
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    step = 0.4e-4  # [1, step] and [1, -step] lie 0.8e-4 apart (after normalising, to within 1e-9)
    small = Scripted([[1.0, step], [-step, 1.0]], [[1.0, -step], [step, 1.0]])
    assert _checks.flag_randomized(small, x, y) is None
    flips = Scripted([[5.0, 0.0], [5.0, 5.0 + 1e-6]], [[5.0, 0.0], [5.0 + 1e-6, 5.0]])
    assert _checks.flag_randomized(flips, x, y) is not None
    rows_tie = Scripted([[5.0, 0.0], [0.0, 5.0 + 1e-6]], [[5.0 + 1e-6, 0.0], [0.0, 5.0]])
    assert _checks.flag_randomized(rows_tie, x, y) is None


def test_autoattack_flags_a_dynamic_defence_and_is_quiet_by_default():
    x, y = random_batch()
    autoattack = attacks.build("autoattack", eps=0.03)
    model = GradientStepDefence()
    flags = autoattack._model_flags(model, x, y, model(x).detach())
    assert any(flag.startswith("autograd inside forward") for flag in flags)
    assert autoattack.verbose is False


def test_awp_default_gamma_is_wu_et_al_s_and_zero_switches_it_off():
    """Wu et al. (2020), Sec. 5: γ = 5 × 10⁻³ for CIFAR-10; γ = 0 is plain training, not an error."""
    from advlib.defenses.awp import AdversarialWeightPerturbation

    assert AdversarialWeightPerturbation().gamma == 0.005
    assert AdversarialWeightPerturbation(0.0).gamma == 0.0
    with pytest.raises(ValueError, match="gamma"):
        AdversarialWeightPerturbation(-0.001)


def test_square_draws_signs_and_corners_uniformly_where_the_square_fits():
    """Square (Andriushchenko et al. 2020, Alg. 2): signs ±1 in the image's dtype; a side-2 square's top
    and left edges in a 5 × 6 image are uniform over the 4 rows and 5 columns where it fits."""
    from advlib.attacks.square import Square

    square, generator = Square(eps=0.1), torch.Generator().manual_seed(0)
    signs = square._random_signs((4000,), generator, torch.zeros(1, dtype=torch.float64))
    assert signs.dtype == torch.float64 and set(signs.tolist()) == {-1.0, 1.0}
    assert abs(signs.mean().item()) < 0.05
    top, left = square._square_corners(4000, 2, (5, 6), generator, torch.device("cpu"))
    assert top.shape == left.shape == (4000, 1)
    assert set(top.flatten().tolist()) == {0, 1, 2, 3} and set(left.flatten().tolist()) == {0, 1, 2, 3, 4}
    assert torch.bincount(top.flatten()).min() > 900 and torch.bincount(left.flatten()).min() > 700


def test_square_defaults_are_autoattacks_and_p_init_is_a_fraction():
    """AutoAttack's Square: 5000 queries and p_init = 0.8 (Andriushchenko et al. 2020, Sec. 4; the
    reference's L∞ setting), seed 0; p_init is the fraction of pixels of the first square, in (0, 1]."""
    from advlib.attacks.square import Square

    square = Square()
    assert (square.n_queries, square.p_init, square.seed) == (5000, 0.8, 0)
    assert Square(p_init=1.0).p_init == 1.0
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="p_init"):
            Square(p_init=bad)


def test_apgd_attacks_a_batch_of_one():
    """A single image is attacked like any batch: a linear model at a budget that reaches the boundary."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x, _ = random_batch(1)
    y = model(x).argmax(1)
    x_adv = attacks.build("apgd-ce", eps=0.5, n_iter=5)(model, x, y)
    assert model(x_adv).argmax(1).item() != y.item()


def test_apgd_checkpoint_review_by_hand():
    """APGD's step-size rule at a checkpoint (Croce & Hein 2020, Sec. 3.2): halve η and restart from
    x_max when (1) fewer than ρ·(w_j − w_{j−1}) of the steps since the last checkpoint raised the
    loss, or (2) η was not halved at the last checkpoint and the best loss has not improved since.
    Four rows: oscillating (1 rise < 2); stalled (no rise in the best loss, not halved before); the
    same but halved at the last checkpoint (kept); improving with enough rises (kept)."""
    from advlib.attacks.apgd import _review_step_size

    rows = torch.arange(4, dtype=torch.float32)
    s = {"rises": torch.tensor([1.0, 2.0, 2.0, 3.0]), "halved_at_checkpoint": torch.tensor([False, False, True, False]),
         "loss_best": torch.tensor([5.0, 4.0, 4.0, 6.0]), "best_at_checkpoint": torch.tensor([4.0, 4.0, 4.0, 5.0]),
         "step": torch.full((4, 1, 1, 1), 0.2), "x_adv": rows.view(4, 1, 1, 1) + 0.5,
         "x_best": rows.view(4, 1, 1, 1), "grad": torch.ones(4, 1, 1, 1), "grad_best": -torch.ones(4, 1, 1, 1),
         "loss": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    _review_step_size(s, min_rises=2.0)
    halved = torch.tensor([True, True, False, False])
    assert torch.equal(s["halved_at_checkpoint"], halved)
    assert torch.allclose(s["step"].flatten(), torch.tensor([0.1, 0.1, 0.2, 0.2]))
    assert torch.equal(s["x_adv"].flatten(), torch.tensor([0.0, 1.0, 2.5, 3.5]))
    assert torch.equal(s["grad"].flatten(), torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    assert torch.equal(s["loss"], torch.tensor([5.0, 4.0, 3.0, 4.0]))
    assert torch.equal(s["best_at_checkpoint"], torch.tensor([5.0, 4.0, 4.0, 6.0]))
    assert torch.equal(s["rises"], torch.zeros(4))


def test_targeted_dlr_by_hand():
    """Croce & Hein 2020, Sec. 4: −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2). z = (3, 1, 0, −1, −2), y = 1,
    t = 2: −1/3.5. When the four largest logits tie the denominator is 1e-12, so an image whose
    true logit is below the target's gets a large positive loss, not a negative one."""
    from advlib.attacks.apgd import targeted_dlr

    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0], [1.0, 1.0, 1.0, 1.0, 0.0]])
    loss = targeted_dlr(logits, torch.tensor([1, 4]), torch.tensor([2, 0]))
    assert loss[0].item() == pytest.approx(-1 / 3.5)
    assert loss[1].item() == pytest.approx(1e12)


def test_apgd_t_tries_every_wrong_class_it_is_asked_for_most_likely_first(monkeypatch):
    """AutoAttack's APGD-T: 9 target classes by default, capped at the K − 1 wrong classes; each
    example's targets are its wrong classes by clean logit, most likely first."""
    from advlib.attacks.apgd import APGDTargeted

    assert APGDTargeted().n_target_classes == 9
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x, _ = random_batch(2)
    ranked = model(x).argsort(1, descending=True)
    y = ranked[:, 0]
    attack = APGDTargeted(eps=1e-3, n_iter=2)
    calls = []
    monkeypatch.setattr(attack, "run_rows", lambda model, x, y, owner, target, *rest: calls.append((owner, target)))
    attack.attack(model, x, y, torch.Generator().manual_seed(0))
    [(owner, target)] = calls
    assert owner.tolist() == [0, 1, 0, 1]
    assert target.tolist() == [ranked[0, 1].item(), ranked[1, 1].item(), ranked[0, 2].item(), ranked[1, 2].item()]


def test_square_has_counted_no_queries_before_it_runs():
    from advlib.attacks.square import Square

    assert Square().queries_used is None


def test_apgd_start_points_lie_on_the_balls_surface():
    """APGD's random start (the reference's): x + ε·u/‖u‖ with u uniform in [−1, 1]^d for L∞ and
    Gaussian for L2, so every start is at distance exactly ε (no clipping at x = 0.5), with pixels
    moved both ways."""
    from advlib.attacks.apgd import _start_points

    x = torch.full((64, 1, 4, 4), 0.5)
    linf = _start_points(x, 0.1, "Linf", torch.Generator().manual_seed(0)) - x
    assert torch.allclose(linf.flatten(1).abs().amax(1), torch.full((64,), 0.1))
    assert (linf > 0).any() and (linf < 0).any() and (linf.flatten(1).abs().amin(1) < 0.05).all()
    l2 = _start_points(x, 0.1, "L2", torch.Generator().manual_seed(0)) - x
    assert torch.allclose(l2.flatten(1).norm(dim=1), torch.full((64,), 0.1))
    assert (l2.flatten(1).abs().amax(1) < 0.1).all()


class Drifting(nn.Module):
    """A linear model whose every forward pass adds one more to all its logits (a randomised model
    whose cross-entropy and input gradient do not change, and whose logits do)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.calls = nn.Linear(16, 3), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x.flatten(1)) + self.calls


def test_apgd_eot_averages_loss_gradient_and_logits_over_its_passes():
    """EOT (Athalye et al. 2018): the loss, its gradient and the logits are means over the passes."""
    from advlib.attacks.apgd import _loss_gradient_logits, cross_entropy

    torch.manual_seed(0)
    model, x = Drifting(), torch.rand(2, 1, 4, 4)
    y = torch.tensor([0, 2])
    z = x.clone().requires_grad_(True)
    once = cross_entropy(model.linear(z.flatten(1)), y, y)
    gradient = torch.autograd.grad(once.sum(), z)[0]
    loss, grad, logits = _loss_gradient_logits(model, cross_entropy, x, y, y, eot_iter=2)
    assert torch.allclose(loss, once.detach(), atol=1e-6) and torch.allclose(grad, gradient, atol=1e-6)
    assert torch.allclose(logits, model.linear(x.flatten(1)).detach() + 1.5, atol=1e-6)


# --- APGD's helpers, by hand -----------------------------------------------------------------------------

def test_even_chunks_split_rows_into_the_fewest_near_equal_chunks():
    from advlib.attacks.apgd import even_chunks

    assert even_chunks(300, 128) == [slice(0, 100), slice(100, 200), slice(200, 300)]
    assert even_chunks(5, 128) == [slice(0, 5)]
    assert even_chunks(256, 128) == [slice(0, 128), slice(128, 256)]
    assert even_chunks(0, 128) == []


def test_apgd_linf_start_is_uniform_on_the_sphere_and_symmetric():
    from advlib.attacks.apgd import _start_points

    x = torch.full((64, 1, 16, 16), 0.5)
    delta = (_start_points(x, 0.1, "Linf", torch.Generator().manual_seed(0)) - x).flatten(1)
    assert torch.allclose(delta.abs().amax(1), torch.full((64,), 0.1))
    # u uniform in [-1, 1]^d: the mean displacement is 0 within a few standard errors (0.0005 here)
    assert abs(float(delta.mean())) < 0.005
    assert float(delta.min()) < -0.09


def test_apgd_l2_start_is_on_the_sphere_and_drawn_from_the_attack_generator_only():
    from advlib.attacks.apgd import _start_points

    x = torch.full((8, 1, 8, 8), 0.5)
    state = torch.get_rng_state()
    first = _start_points(x, 0.5, "L2", torch.Generator().manual_seed(3))
    again = _start_points(x, 0.5, "L2", torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be drawn from"
    assert torch.equal(first, again)
    assert torch.allclose((first - x).flatten(1).norm(dim=1), torch.full((8,), 0.5), atol=1e-5)


def test_apgd_settings_are_checked_and_kept():
    for bad in ({"n_restarts": 0}, {"eot_iter": 0}, {"max_batch": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            attacks.build("apgd-ce", **bad)
    apgd = attacks.build("apgd-ce", max_batch=64, seed=5)
    assert apgd.max_batch == 64 and apgd.seed == 5


def test_apgd_outcome_says_which_examples_were_correct_clean():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    outcome = attacks.build("apgd-ce", eps=0.0, n_iter=2).attack(model, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(outcome.clean_correct, correct)
