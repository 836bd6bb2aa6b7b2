"""FGSM, BIM, PGD and CW: against closed forms on linear models, against torchattacks as an oracle
on a trained CNN, and the contract every attack keeps (hypothesis); plus the evaluation helper."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import advlib.attacks as attacks
from advlib.config import PURIFICATION_ATTACKS
from advlib.evaluation import predict, robust_accuracy
from advlib.registry import UnknownNameError

torchattacks = pytest.importorskip("torchattacks")

OWN_ATTACKS = {  # small settings: the contract does not depend on the number of steps
    "fgsm": {"eps": 8 / 255},
    "bim": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 3},
    "pgd": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 3, "restarts": 2},
    "cw": {"c": 1.0, "steps": 5, "lr": 0.05},
}


def tiny_model(seed: int = 0) -> nn.Module:
    """Conv + BatchNorm + linear head on 1×8×8 inputs, 3 classes: fast, nonlinear, and has BN
    statistics that would change if an attack ran it in training mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():  # non-trivial running statistics
        model(torch.rand(16, 1, 8, 8))
    return model.eval()


def random_batch(seed: int, n: int, shape=(1, 8, 8), classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def with_eps(name: str, eps: float) -> attacks.Attack:
    params = dict(OWN_ATTACKS[name])
    if "eps" in params:
        params.update(eps=eps, **({"alpha": eps / 3} if "alpha" in params else {}))
    return attacks.build(name, **params)


# --- closed forms on a two-class linear model ----------------------------------------------------------------
#
# For logits z = W x + b with two classes, ∇ₓ CE = (p₁ − [y = 1]) (W₁ − W₀): its sign is
# +sign(W₁ − W₀) for y = 0 and −sign(W₁ − W₀) for y = 1, whatever x is.

@pytest.fixture
def linear_two_class() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    x = torch.rand(2, 3, 2, 2) * 0.8 + 0.1
    y = torch.tensor([0, 1])
    weight_gap = (model[1].weight[1] - model[1].weight[0]).detach().sign().view(3, 2, 2)
    ascent = torch.stack([weight_gap, -weight_gap])  # the sign of ∇ₓ CE for each image
    return model, x, y, ascent


def test_fgsm_matches_closed_form_on_linear_model(linear_two_class):
    model, x, y, ascent = linear_two_class
    eps = 0.15
    assert torch.allclose(attacks.build("fgsm", eps=eps)(model, x, y), (x + eps * ascent).clamp(0, 1), atol=1e-7)


def hand_written_sign_ascent(x, start, ascent, eps, alpha, steps):
    x_adv = start
    for _ in range(steps):
        x_adv = torch.clamp(torch.clamp(x_adv + alpha * ascent, x - eps, x + eps), 0, 1)
    return x_adv


def test_bim_equals_hand_written_loop(linear_two_class):
    model, x, y, ascent = linear_two_class
    eps, alpha, steps = 0.2, 0.03, 9  # 9 · 0.03 > 0.2: the projection is active at the end
    expected = hand_written_sign_ascent(x, x, ascent, eps, alpha, steps)
    assert torch.allclose(attacks.build("bim", eps=eps, alpha=alpha, steps=steps)(model, x, y), expected, atol=1e-7)


def test_pgd_equals_hand_written_loop_from_its_random_start(linear_two_class):
    model, x, y, ascent = linear_two_class
    eps, alpha, steps, seed = 0.2, 0.03, 4, 11
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(seed))
    start = torch.clamp(torch.clamp(x + noise, x - eps, x + eps), 0, 1)
    expected = hand_written_sign_ascent(x, start, ascent, eps, alpha, steps)
    pgd = attacks.build("pgd", eps=eps, alpha=alpha, steps=steps, seed=seed)
    assert torch.allclose(pgd(model, x, y), expected, atol=1e-7)
    assert not torch.allclose(pgd(model, x, y), hand_written_sign_ascent(x, x, ascent, eps, alpha, steps))


def test_pgd_without_random_start_is_bim(linear_two_class):
    model, x, y, _ = linear_two_class
    pgd = attacks.build("pgd", eps=0.1, alpha=0.02, steps=7, random_start=False)
    assert torch.equal(pgd(model, x, y), attacks.build("bim", eps=0.1, alpha=0.02, steps=7)(model, x, y))


def test_bim_default_steps_follow_kurakin():
    assert attacks.build("bim", eps=8 / 255).steps == 10  # min(8 + 4, 1.25 · 8)
    assert attacks.build("bim", eps=2 / 255).steps == 2  # min(2 + 4, 1.25 · 2) = 2.5, rounded
    assert attacks.build("bim", eps=0.299).steps == 80  # min(76.245 + 4, 95.3): the other term binds
    assert attacks.build("bim", eps=0.5 / 255).steps == 1  # 0.625 rounds to 1
    assert attacks.build("bim", eps=0.1 / 255).steps == 1  # at least one step


def test_pgd_defaults_are_the_seed_papers_training_pgd():
    """PGD built by name alone is the seed papers' training PGD on CIFAR-10: ε = 8/255, 10 steps of
    2/255 from a uniform random start, one run, seed 0, BatchNorm in eval mode."""
    pgd = attacks.build("pgd")
    assert (pgd.eps, pgd.alpha, pgd.steps, pgd.restarts, pgd.random_start, pgd.seed, pgd.bn_mode) == (
        8 / 255, 2 / 255, 10, 1, True, 0, "eval")


def test_fgsm_bim_and_cw_defaults_are_the_purification_papers_evaluation():
    """Koo et al. (2023), Sec. 4.1: ε = 8/255 for FGSM and BIM; CW in L2 with 40 Adam steps of
    learning rate 0.01. The paper does not give c and κ; ours are torchattacks' defaults (1 and 0).
    BIM keeps Kurakin et al.'s own step of 1/255 (the paper's table uses 2/255 × 20, set by name)."""
    fgsm, bim, cw = attacks.build("fgsm"), attacks.build("bim"), attacks.build("cw")
    assert (fgsm.eps, fgsm.seed, fgsm.bn_mode) == (8 / 255, 0, "eval")
    assert (bim.eps, bim.alpha, bim.steps, bim.seed, bim.bn_mode) == (8 / 255, 1 / 255, 10, 0, "eval")
    assert (cw.c, cw.kappa, cw.steps, cw.lr, cw.seed, cw.bn_mode) == (1.0, 0.0, 40, 0.01, 0, "eval")
    assert {k: v for k, v in PURIFICATION_ATTACKS["CW"].items() if k != "name"} == {
        "c": cw.c, "kappa": cw.kappa, "steps": cw.steps, "lr": cw.lr}
    assert [attacks.build(name, seed=7).seed for name in ("fgsm", "bim", "cw")] == [7, 7, 7]


@pytest.mark.parametrize("settings_, problem", [
    ({"c": -0.1}, "c must be"), ({"c": "1"}, "c must be"), ({"kappa": -1.0}, "kappa must be"),
    ({"kappa": None}, "kappa must be"), ({"lr": 0}, "learning rate"), ({"lr": "0.01"}, "learning rate"),
    ({"steps": 0}, "steps"), ({"steps": True}, "steps"), ({"steps": 2.0}, "steps")])
def test_cw_rejects_bad_settings_by_name(settings_, problem):
    with pytest.raises(ValueError, match=problem):
        attacks.build("cw", **settings_)


def test_cw_accepts_the_edges_of_its_settings():
    cw = attacks.build("cw", c=0, kappa=0, steps=1, lr=1e-9)
    assert (cw.c, cw.kappa, cw.steps, cw.lr) == (0, 0, 1, 1e-9)


def test_cw_margin_masks_the_true_class_even_when_every_logit_is_negative():
    from advlib.attacks.primitives import margin

    logits_ = torch.tensor([[-1.0, -3.0, -2.0], [-5.0, -4.0, -6.0]])
    assert torch.equal(margin(logits_, torch.tensor([0, 1])), torch.tensor([1.0, 1.0]))


def test_cw_moves_pixels_that_start_at_zero_or_one():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]]))
        model[1].bias.zero_()
    x = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # class 0 by a margin of 4; every pixel saturated
    x_adv = attacks.build("cw", c=10.0, steps=200, lr=0.5)(model, x, torch.tensor([0]))
    assert model(x_adv).argmax(1).item() == 1


# --- against torchattacks on a trained CNN ---------------------------------------------------------------------

def test_fgsm_equals_torchattacks(small_model, test_batch):
    x, y = test_batch
    ours = attacks.build("fgsm", eps=8 / 255)(small_model, x, y)
    theirs = torchattacks.FGSM(small_model, eps=8 / 255)(x, y)
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_pgd_robust_accuracy_matches_torchattacks(small_model, test_batch):
    x, y = test_batch
    # 4/255 leaves the small model between its clean accuracy and zero (looked at: ~80 % → ~67 %).
    eps, alpha, steps = 4 / 255, 1 / 255, 10
    clean = (predict(small_model, x).argmax(1) == y).float().mean().item()
    ours = attacks.build("pgd", eps=eps, alpha=alpha, steps=steps)(small_model, x, y)
    state = torch.get_rng_state()
    torch.manual_seed(0)  # torchattacks draws its random start from the global RNG
    theirs = torchattacks.PGD(small_model, eps=eps, alpha=alpha, steps=steps)(x, y)
    torch.set_rng_state(state)
    ours_accuracy = (predict(small_model, ours).argmax(1) == y).float().mean().item()
    theirs_accuracy = (predict(small_model, theirs).argmax(1) == y).float().mean().item()
    assert 0.15 < ours_accuracy < clean - 0.05, "pick an ε where the comparison means something"
    assert abs(ours_accuracy - theirs_accuracy) <= 0.02


def test_cw_is_not_weaker_than_torchattacks(small_model, test_batch):
    x, y = test_batch[0][:128], test_batch[1][:128]
    settings_ = {"c": 1.0, "kappa": 0.0, "steps": 30, "lr": 0.01}
    ours = attacks.build("cw", **settings_)(small_model, x, y)
    try:
        theirs = torchattacks.CW(small_model, **settings_)(x, y)
    finally:  # torchattacks' CW calls .backward(): clear the shared model's .grad fields it filled
        small_model.zero_grad(set_to_none=True)
    clean = predict(small_model, x).argmax(1) == y
    ours_fooled = clean & (predict(small_model, ours).argmax(1) != y)
    theirs_fooled = clean & (predict(small_model, theirs).argmax(1) != y)
    assert theirs_fooled.sum() > 10, "the comparison needs successes"
    assert ours_fooled.sum() >= theirs_fooled.sum() - 2
    both = ours_fooled & theirs_fooled
    ours_l2 = (ours - x).flatten(1).norm(dim=1)[both].mean().item()
    theirs_l2 = (theirs - x).flatten(1).norm(dim=1)[both].mean().item()
    assert ours_l2 <= theirs_l2 + 0.02


class ShiftedAndRecorded(nn.Module):
    """The model's logits + 100, recording every full batch it is shown. The shift keeps every margin
    and makes torchattacks' f (which zeroes the masked logits instead of leaving them out) equal to
    Carlini and Wagner's, so that both codes optimise the same objective."""

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.model, self.batch_size, self.seen = model, batch_size, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == self.batch_size:
            self.seen.append(x.detach().clone())
        return self.model(x) + 100


def smooth_model(seed: int = 0, classes: int = 5) -> nn.Module:
    """Conv + tanh + linear on 1×8×8 inputs: no pixel with a zero gradient. On those (max-pooled or dead
    ReLU pixels), Adam's first step has the size lr whatever the gradient, so its sign is set by
    the rounding noise of tanh(atanh(x)) − x and the two codes would part for a reason that is not
    the attack."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, classes)).eval()


def cw_images(model: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images away from 0 and 1 (torchattacks' atanh of a saturated pixel is infinite, ours is shrunk),
    labelled as the model classifies them, so that every image has to be fooled."""
    x = 0.1 + 0.8 * random_batch(1, n)[0]
    with torch.no_grad():
        return x, model(x).argmax(1)


@pytest.mark.parametrize("kappa", [0.0, 0.3])
def test_cw_iterates_equal_torchattacks(kappa):
    """The images both codes show the model, step by step: the tanh change of variables, the squared
    L2 term, c, κ in f and Adam's learning rate all enter the next iterate."""
    model, steps, settings_ = smooth_model(), 8, {"c": 3.0, "kappa": kappa, "lr": 0.01}
    x, y = cw_images(model, 16)
    ours_model, theirs_model = ShiftedAndRecorded(model, len(x)), ShiftedAndRecorded(model, len(x))
    attacks.build("cw", steps=steps, **settings_)(ours_model, x, y)
    torchattacks.CW(theirs_model, steps=steps, **settings_)(x, y)
    assert len(theirs_model.seen) == steps, "torchattacks stopped early: its cost rose"
    assert len(ours_model.seen) == steps + 1  # and the last iterate, checked after the last step
    for step, (ours, theirs) in enumerate(zip(ours_model.seen, theirs_model.seen)):
        assert (ours - theirs).abs().max().item() < 1e-4, f"iterate {step}"


def test_cw_does_not_count_a_tie_as_fooled():
    """Untargeted success needs another class strictly above the true one (Carlini & Wagner 2017,
    Sec. III.A: C(x') ≠ t). A model whose logits always tie is never fooled, so CW returns x itself."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    nn.init.zeros_(model[1].weight), nn.init.zeros_(model[1].bias)
    x, y = random_batch(0, 4)
    assert torch.equal(attacks.build("cw", steps=3, lr=0.1)(model, x, y), x)


def test_cw_keeps_the_closest_fooling_iterate_as_torchattacks_does():
    """With κ = 0 both keep, per image, the closest iterate the model misclassifies. torchattacks looks
    at an iterate before stepping from it, so its run of steps + 1 sees the iterates ours sees in steps."""
    model, settings_ = smooth_model(), {"c": 3.0, "kappa": 0.0, "lr": 0.01}
    x, y = cw_images(model, 64)
    ours = attacks.build("cw", steps=10, **settings_)(model, x, y)
    theirs_model = ShiftedAndRecorded(model, len(x))
    theirs = torchattacks.CW(theirs_model, steps=11, **settings_)(x, y)
    assert len(theirs_model.seen) == 11, "torchattacks stopped early: its cost rose"
    moved = (ours != x).flatten(1).any(1)
    assert 5 < moved.sum() < len(x), "the comparison needs fooled and unfooled images"
    assert torch.equal(moved, (theirs != x).flatten(1).any(1))
    assert (ours - theirs).abs().max().item() < 1e-4


# --- the contract, for every attack ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OWN_ATTACKS))
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 16), n=st.integers(1, 5), eps=st.floats(0.0, 0.3),
       attack_seed=st.integers(0, 2 ** 16))
def test_attack_contract(name, seed, n, eps, attack_seed):
    model = tiny_model()
    x, y = random_batch(seed, n)
    attack = with_eps(name, eps)
    attack.seed = attack_seed
    buffers = [b.clone() for b in model.buffers()]
    model.train()
    rng_state = torch.get_rng_state()

    x_adv = attack(model, x, y)

    assert torch.equal(torch.get_rng_state(), rng_state)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers())), "BatchNorm ran in training mode"
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    if name != "cw":
        assert (x_adv - x).abs().max() <= eps + 1e-6
    assert torch.equal(attack(model, x, y), x_adv)
    report = robust_accuracy(model, x, y, {name: attack})
    assert report.accuracies[name] <= report.accuracies["clean"]


@pytest.mark.parametrize("name", sorted(OWN_ATTACKS))
def test_bad_inputs_fail_loudly(name):
    model = tiny_model()
    x, y = random_batch(0, 2)
    attack = attacks.build(name, **OWN_ATTACKS[name])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x * 2, y)
    with pytest.raises(ValueError, match="4-D"):
        attack(model, x[0], y)
    with pytest.raises(ValueError, match="one label per image"):
        attack(model, x, y[:1])
    budget = "eps" if "eps" in OWN_ATTACKS[name] else "c"
    with pytest.raises(ValueError, match=budget):
        attacks.build(name, **{**OWN_ATTACKS[name], budget: -0.1})
    poisoned = x.clone()
    poisoned[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite pixels in 1 of 2 images"):
        attack(model, poisoned, y)
    with pytest.raises(ValueError, match=r"class indices \[0, 3\), got values in \[0, 10\]"):
        attack(model, x, torch.tensor([0, 10]))  # the tiny model has 3 classes
    with pytest.raises(ValueError, match="class indices"):
        attack(model, x, torch.tensor([-1, 0]))


def test_evaluation_entry_points_reject_nan_pixels_and_out_of_range_labels():
    from advlib.evaluation import accuracy, gray_box, predict
    model = tiny_model()
    x, y = random_batch(0, 2)
    bad_labels = torch.tensor([3, 12])
    for call in (lambda: accuracy(model, x, bad_labels),
                 lambda: robust_accuracy(model, x, bad_labels, {"FGSM": attacks.build("fgsm")}),
                 lambda: gray_box(model, {}, {}, x, bad_labels)):
        with pytest.raises(ValueError, match="class indices"):
            call()
    poisoned = x.clone()
    poisoned[0, 0, 0, 0] = float("inf")
    for call in (lambda: predict(model, poisoned), lambda: robust_accuracy(model, poisoned, y, {}),
                 lambda: gray_box(model, {}, {}, poisoned, y)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            call()


def test_unknown_attack_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as error:
        attacks.build("pgdd", eps=0.1)
    for name in OWN_ATTACKS:
        assert name in str(error.value)


def test_invalid_iteration_settings_are_rejected():
    for bad in ({"steps": 0}, {"alpha": -1.0}, {"restarts": 0}):
        with pytest.raises(ValueError):
            attacks.build("pgd", **bad)


# --- the evaluation helper ------------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2 ** 16), eps=st.floats(0.0, 0.5), cascade=st.booleans(), batch_size=st.integers(1, 8))
def test_worst_case_bounds_every_attack_and_clean_bounds_all(seed, eps, cascade, batch_size):
    model = tiny_model()
    x, y = random_batch(seed, 12)
    report = robust_accuracy(model, x, y, [("fgsm", with_eps("fgsm", eps)), ("pgd", with_eps("pgd", eps))],
                             batch_size=batch_size, cascade=cascade)
    accuracy = report.accuracies
    assert accuracy["worst case"] <= min(accuracy["fgsm"], accuracy["pgd"])
    assert max(accuracy["fgsm"], accuracy["pgd"]) <= accuracy["clean"]
    assert not (report.worst_case & ~report.clean).any()
    for mask in report.per_attack.values():
        assert not (mask & ~report.clean).any(), "a clean-misclassified example counted as robust"
    assert [row["attack"] for row in report.as_table()] == ["clean", "fgsm", "pgd", "worst case"]


def test_clean_misclassified_examples_are_never_attacked():
    model = tiny_model()
    x, y = random_batch(5, 20)
    clean = predict(model, x).argmax(1) == y
    calls = []

    class Recording(attacks.Attack):
        def perturb(self, model, x, y, generator):
            calls.append(len(x))
            return x

    recording = Recording()
    assert (recording.seed, recording.bn_mode) == (0, "eval"), "a subclass gets the documented defaults"
    report = robust_accuracy(model, x, y, {"identity": recording})
    assert sum(calls) == int(clean.sum()) == report.attacked["identity"]
    assert torch.equal(report.per_attack["identity"], clean) and torch.equal(report.worst_case, clean)


def test_cascade_runs_later_attacks_only_on_survivors(small_model, test_batch):
    x, y = test_batch[0][:64], test_batch[1][:64]
    strong, weak = attacks.build("pgd", eps=0.1, alpha=0.02, steps=5), attacks.build("fgsm", eps=1 / 255)
    report = robust_accuracy(small_model, x, y, {"pgd": strong, "fgsm": weak})
    assert report.attacked["fgsm"] == int(report.per_attack["pgd"].sum())
    separate = robust_accuracy(small_model, x, y, {"pgd": strong, "fgsm": weak}, cascade=False)
    assert separate.attacked["fgsm"] == int(separate.clean.sum())
    assert torch.equal(report.worst_case, separate.worst_case)


def gradient_passes(model: nn.Module) -> list[int]:
    """A list that grows by the batch size at every forward pass of ``model`` that builds a graph."""
    passes: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: passes.append(len(inputs[0]))
                                if torch.is_grad_enabled() else None)
    return passes


def test_pgds_of_different_lengths_are_read_off_one_trajectory():
    """Without cascading, PGD-8 listed before PGD-3 and PGD-5 (same ε, α, seed, one run each) gives,
    image by image and pixel by pixel, what each gives alone, in the order they were named, for
    8 gradient passes per image instead of 16; CW and a PGD with another seed run on their own."""

    model = tiny_model()
    x, y = random_batch(11, 40)
    pgd = {steps: attacks.build("pgd", eps=0.1, alpha=0.02, steps=steps, seed=3) for steps in (8, 3, 5)}
    named = {f"PGD-{steps}": attack for steps, attack in pgd.items()}
    named["other seed"] = attacks.build("pgd", eps=0.1, alpha=0.02, steps=3, seed=4)
    passes = gradient_passes(model)
    together = robust_accuracy(model, x, y, named, batch_size=4, cascade=False, keep_adversarial=tuple(named))
    assert list(together.per_attack) == list(named)
    attacked = int(together.clean.sum())
    assert attacked > 4  # several batches: the trajectory continues the one generator from batch to batch
    assert sum(passes) == (8 + 3) * attacked
    for name, attack in named.items():
        alone = robust_accuracy(model, x, y, {name: attack}, batch_size=4, keep_adversarial=(name,))
        assert torch.equal(together.per_attack[name], alone.per_attack[name]), name
        assert torch.equal(together.adversarial[name], alone.adversarial[name]), name
        assert together.attacked[name] == alone.attacked[name] == attacked
    assert not torch.equal(together.adversarial["PGD-3"], together.adversarial["other seed"])
    assert not torch.equal(together.adversarial["PGD-3"], together.adversarial["PGD-8"])


def test_only_single_pgd_runs_with_the_same_settings_share_a_trajectory():
    from advlib.evaluation.robustness import shared_trajectories

    def pgd(**changes):
        return attacks.build("pgd", **{"eps": 0.1, "alpha": 0.02, "steps": 5, "seed": 0, **changes})

    named = [("a", pgd(steps=20)), ("b", pgd(steps=10)), ("eps", pgd(eps=0.2)), ("alpha", pgd(alpha=0.01)),
             ("seed", pgd(seed=1)), ("restarts", pgd(restarts=2)), ("no start", pgd(random_start=False)),
             ("bn", pgd(bn_mode="train")), ("bim", attacks.build("bim", eps=0.1, alpha=0.02, steps=5)),
             ("c", pgd(steps=10))]
    groups = shared_trajectories(named)
    assert list(groups) == ["a"]
    assert [name for name, _ in groups["a"]] == ["b", "c", "a"]
    assert shared_trajectories(named[2:9]) == {}
    assert [name for name, _ in shared_trajectories(named[:2])["a"]] == ["b", "a"]  # a pair shares too


def test_cascading_pgds_run_one_after_another():
    model = tiny_model()
    x, y = random_batch(12, 24)
    named = {f"PGD-{steps}": attacks.build("pgd", eps=0.1, alpha=0.02, steps=steps) for steps in (2, 4)}
    passes = gradient_passes(model)
    report = robust_accuracy(model, x, y, named)
    assert sum(passes) == 2 * int(report.clean.sum()) + 4 * report.attacked["PGD-4"]


def test_pgd_iterates_are_what_shorter_runs_return_and_bad_steps_are_refused():
    model = tiny_model()
    x, y = random_batch(13, 12)
    long = attacks.build("pgd", eps=0.1, alpha=0.02, steps=50, seed=5)
    iterates = list(long.iterates(model, x, y, [1, 4, 4, 7]))
    for steps, iterate in zip([1, 4, 4, 7], iterates):
        assert torch.equal(iterate, attacks.build("pgd", eps=0.1, alpha=0.02, steps=steps, seed=5)(model, x, y))
    with torch.no_grad():  # the caller's mode holds between two iterates
        walk = long.iterates(model, x, y, [1, 2])
        assert torch.equal(next(walk), iterates[0]) and not torch.is_grad_enabled()
    given = long.iterates(model, x, y, [3], generator=torch.Generator().manual_seed(8))
    assert torch.equal(next(given), attacks.build("pgd", eps=0.1, alpha=0.02, steps=3, seed=8)(model, x, y)), \
        "a generator passed in draws the random start"
    inside = 0.2 + 0.6 * x  # no clipping to [0, 1] within one step
    first = next(attacks.build("pgd", eps=0.1, alpha=0.02, random_start=False).iterates(model, inside, y, [1]))
    assert torch.allclose((first - inside).abs(), torch.full_like(x, 0.02)), "no random start: one step of α from x"
    with pytest.raises(ValueError, match="restarts=2"):
        attacks.build("pgd", restarts=2).iterates(model, x, y, [1])
    with pytest.raises(ValueError, match="non-decreasing"):
        long.iterates(model, x, y, [4, 2])
    with pytest.raises(ValueError, match=r"steps\[1\] must be a positive integer"):
        long.iterates(model, x, y, [1, 0])


def test_kept_adversarial_examples_are_the_attacks_output(small_model, test_batch):
    x, y = test_batch[0][:64], test_batch[1][:64]
    fgsm = attacks.build("fgsm", eps=8 / 255)
    report = robust_accuracy(small_model, x, y, {"fgsm": fgsm}, keep_adversarial=("fgsm",))
    kept, attacked = report.adversarial["fgsm"], report.clean
    assert torch.equal(kept[~attacked], x[~attacked]), "examples misclassified clean are not attacked"
    assert torch.allclose(kept[attacked], fgsm(small_model, x[attacked], y[attacked]))
    assert report.per_attack["fgsm"].tolist() == (predict(small_model, kept).argmax(1) == y).tolist()
    with pytest.raises(ValueError, match="keep_adversarial"):
        robust_accuracy(small_model, x, y, {"fgsm": fgsm}, keep_adversarial=("pgd",))


def test_report_table_and_printout_by_hand():
    """Four images: three correct clean, two of them survive FGSM, one also PGD (in cascade)."""
    from advlib.evaluation.robustness import RobustnessReport

    mask = lambda *bits: torch.tensor(bits, dtype=torch.bool)  # noqa: E731
    report = RobustnessReport(clean=mask(1, 1, 1, 0), per_attack={"fgsm": mask(1, 1, 0, 0), "pgd": mask(1, 0, 0, 0)},
                              worst_case=mask(1, 0, 0, 0), attacked={"fgsm": 3, "pgd": 2},
                              seconds={"fgsm": 1.23456, "pgd": 2.5})
    assert report.accuracies == {"clean": 0.75, "fgsm": 0.5, "pgd": 0.25, "worst case": 0.25}
    assert report.as_table() == [
        {"attack": "clean", "robust": 3, "n": 4, "accuracy": 0.75, "attacked": 0, "seconds": 0.0},
        {"attack": "fgsm", "robust": 2, "n": 4, "accuracy": 0.5, "attacked": 3, "seconds": 1.235},
        {"attack": "pgd", "robust": 1, "n": 4, "accuracy": 0.25, "attacked": 2, "seconds": 2.5},
        {"attack": "worst case", "robust": 1, "n": 4, "accuracy": 0.25, "attacked": 5, "seconds": 3.735}]
    assert str(report).splitlines() == [
        "               accuracy  attacked  seconds",
        "clean            75.00%         0      0.0",
        "after fgsm       50.00%         3      1.2",
        "after pgd        25.00%         2      2.5",
        "worst case       25.00%         5      3.7"]
    report.cascade = False  # each attack on its own: "under", not "after" the earlier ones
    assert str(report).splitlines()[2].startswith("under fgsm    ")
    empty = RobustnessReport(clean=mask(), per_attack={}, worst_case=mask())
    assert all(value != value for value in empty.accuracies.values())  # nan: nothing was measured




# --- robust_accuracy refuses attacks that leave the threat model ---------------------------------------------

def linear_4x4(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear 3-class model on 1×4×4 images and a batch it classifies correctly (labels = its predictions)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


class Returns(attacks.Attack):
    """A stand-in attack that returns ``output(x)`` and declares the attributes it is given (eps, norm)."""

    def __init__(self, output, **declared) -> None:
        super().__init__()
        self.output = output
        for key, value in declared.items():
            setattr(self, key, value)

    def perturb(self, model, x, y, generator):
        return self.output(x)


@pytest.mark.parametrize("output, problem", [
    (lambda x: x[:, :, :2], "returned shape"),
    (lambda x: torch.full_like(x, -0.01), "returned pixels outside"),  # below 0, none above 1
    (lambda x: torch.full_like(x, 1.01), "returned pixels outside"),   # above 1, none below 0
])
def test_robust_accuracy_refuses_a_broken_attack_by_name(output, problem):
    """A wrong shape, or pixels outside [0, 1] by more than RANGE_TOLERANCE on *either* side, would
    report fake successes: robust_accuracy raises and names the attack."""
    model, x, y = linear_4x4()

    with pytest.raises(RuntimeError, match=f"attack 'broken' {problem}"):
        robust_accuracy(model, x, y, {"broken": Returns(output)})


def test_robust_accuracy_accepts_pixels_exactly_at_the_range_tolerance():
    """The range check is strict: min = −RANGE_TOLERANCE and max = 1 + RANGE_TOLERANCE (float rounding
    of x ± ε) are still accepted, in the dtype the attack returns."""
    from advlib.attacks.primitives import RANGE_TOLERANCE

    model, x, y = linear_4x4()
    edges = torch.zeros_like(x)
    edges[:, :, 0, 0], edges[:, :, 0, 1] = -RANGE_TOLERANCE, 1 + RANGE_TOLERANCE
    report = robust_accuracy(model, x, y, {"edges": Returns(lambda x: edges)})
    assert report.attacked["edges"] == len(x)


def test_robust_accuracy_checks_the_linf_ball_of_linf_attacks_only():
    """‖δ‖∞ may exceed ε by EPS_TOLERANCE at most for an L∞ attack: one that says norm = "Linf", or
    says no norm at all (the library's default threat model). An attack with norm = "L2" declares an
    L2 radius, which this check does not measure."""
    model, x, y = linear_4x4()
    x = x * 0.5  # room to move up by 0.2 inside [0, 1]
    for declared in ({"eps": 0.1, "norm": "Linf"}, {"eps": 0.1}):
        with pytest.raises(RuntimeError, match="attack 'broken' left its L∞ ball"):
            robust_accuracy(model, x, y, {"broken": Returns(lambda x: x + 0.2, **declared)})
    report = robust_accuracy(model, x, y, {"l2": Returns(lambda x: x + 0.2, eps=0.1, norm="L2")})
    assert report.attacked["l2"] == len(x)


def test_robust_accuracy_accepts_an_overshoot_of_exactly_eps_tolerance():
    """The ball check is strict too: ‖δ‖∞ − ε = EPS_TOLERANCE exactly passes. With δ = 2⁻¹⁹ and
    ε = 2⁻¹⁹ − 10⁻⁶ the subtraction is exact in float64 (Sterbenz), so the overshoot is exactly 10⁻⁶."""
    from advlib.evaluation.robustness import EPS_TOLERANCE

    delta, eps = 2.0 ** -19, 2.0 ** -19 - EPS_TOLERANCE
    assert delta - eps == EPS_TOLERANCE
    model = linear_4x4()[0].double()
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    report = robust_accuracy(model, x, y, {"edge": Returns(lambda x: x + delta, eps=eps)})
    assert report.attacked["edge"] == 1
    with pytest.raises(RuntimeError, match="left its L∞ ball"):
        robust_accuracy(model, x, y, {"edge": Returns(lambda x: x + 2 * delta, eps=eps)})


def test_robust_accuracy_shares_one_generator_across_an_attacks_batches():
    """Each attack draws from one generator seeded by its ``seed`` and shared by its batches: the kept
    adversarial examples equal the attack called batch by batch with that one generator (a fresh
    generator per batch would give every batch the same random start)."""
    model, x, y = linear_4x4()
    pgd = attacks.build("pgd", eps=0.1, alpha=0.02, steps=1, seed=3)
    report = robust_accuracy(model, x, y, {"pgd": pgd}, batch_size=2, keep_adversarial=("pgd",))
    generator = torch.Generator().manual_seed(3)
    expected = torch.cat([pgd(model, x[i:i + 2], y[i:i + 2], generator=generator) for i in range(0, 5, 2)])
    assert torch.equal(report.adversarial["pgd"], expected)


def test_robust_accuracy_adds_up_the_seconds_of_every_batch(monkeypatch):
    """An attack's seconds are the sum over its batches; along a shared trajectory each PGD is
    charged the steps it added. A clock that advances one second per reading makes each batch of
    each attack cost exactly one second."""
    import itertools
    from types import SimpleNamespace

    import advlib.evaluation.robustness as robustness

    model, x, y = linear_4x4()
    clock = itertools.count()  # only robust_accuracy's readings advance it
    monkeypatch.setattr(robustness, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    named = {steps: attacks.build("pgd", eps=0.1, alpha=0.02, steps=steps, seed=3) for steps in (1, 2)}
    report = robust_accuracy(model, x, y, named, batch_size=2, cascade=False)
    batches = -(-int(report.clean.sum()) // 2)
    assert batches >= 2
    assert report.seconds == {1: batches, 2: batches}


def test_robust_accuracy_default_batch_is_256():
    """With the default batch size an attack sees the images 256 at a time; for a 2-restart random
    attack the batching changes the draws (the second restart of batch one comes before the first of
    batch two), so the kept images equal the attack called on chunks of 256 with one generator."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(300, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    pgd = attacks.build("pgd", eps=0.01, alpha=0.01, steps=1, restarts=2, seed=2)
    report = robust_accuracy(model, x, y, {"pgd": pgd}, keep_adversarial=("pgd",))
    generator = torch.Generator().manual_seed(2)
    expected = torch.cat([pgd(model, x[:256], y[:256], generator=generator),
                          pgd(model, x[256:], y[256:], generator=generator)])
    assert torch.equal(report.adversarial["pgd"], expected)


def test_robust_accuracy_report_keeps_cascade_named_attacks_and_seconds():
    """The report says how it was run: ``cascade`` as passed (its printout reads "after" an attack in a
    cascade, "under" it otherwise), only the attacks named in ``keep_adversarial``, and per attack the
    wall time it took (between 0 and the time of the whole call)."""
    import time

    model, x, y = linear_4x4()
    identity = {"a": Returns(lambda x: x), "b": Returns(lambda x: x)}
    for cascade, word in ((True, "after"), (False, "under")):
        started = time.perf_counter()
        report = robust_accuracy(model, x, y, identity, cascade=cascade, keep_adversarial=("a",))
        elapsed = time.perf_counter() - started
        assert report.cascade is cascade
        assert str(report).splitlines()[2].startswith(f"{word} a ")
        assert set(report.adversarial) == {"a"}
        assert all(0 <= seconds <= elapsed for seconds in report.seconds.values())
    assert robust_accuracy(model, x, y, identity).adversarial == {}


# --- CW-∞ and the attacks' printout ---------------------------------------------------------------------------

def test_cw_linf_does_not_count_a_tie_as_fooled():
    """CW-∞ keeps the first iterate with max_{i≠y} Z_i − Z_y > 0, strictly (a tie leaves argmax on the
    true class). z₀ = 0 and z₁ = Σx − 8 tie at x = 0.5; one step of α = 0.05 along sign ∇(z₁ − z₀) = +1
    gives x = 0.55, z₁ = 0.8 > 0: that, not the tied start, is the result."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    nn.init.zeros_(model[1].weight), nn.init.zeros_(model[1].bias)
    with torch.no_grad():
        model[1].weight[1] = 1.0
        model[1].bias[1] = -8.0
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    x_adv = attacks.build("cw-linf", eps=0.1, alpha=0.05, steps=1, random_start=False)(model, x, y)
    assert torch.allclose(x_adv, torch.full_like(x, 0.55))


def test_cw_linf_seed_defaults_to_zero():
    """Like every attack, CW-∞ draws its random start from a generator seeded by ``seed``, 0 unless
    given: an unseeded attack reproduces seed = 0 (and the seed does matter: seed = 1 differs)."""
    model, x, y = linear_4x4()
    run = lambda **seed: attacks.build("cw-linf", eps=0.1, alpha=0.02, steps=1, **seed)(model, x, y)  # noqa: E731
    assert torch.equal(run(), run(seed=0))
    assert not torch.equal(run(), run(seed=1))


def test_attack_repr_shows_its_public_settings():
    """repr(attack) is ``ClassName(setting=value, ...)`` over the public attributes, in the order they
    were set; private ones (a leading underscore) are left out."""
    class Probe(attacks.Attack):
        def __init__(self) -> None:
            super().__init__(seed=4)
            self.eps, self._cache = 0.1, "private"

    assert repr(Probe()) == "Probe(seed=4, bn_mode='eval', eps=0.1)"
    pgd = repr(attacks.build("pgd", eps=0.1))
    assert pgd.startswith("PGD(") and "eps=0.1" in pgd and "(_" not in pgd and ", _" not in pgd


# --- worst case over restarts, with scripted runs -------------------------------------------------------------

class PixelLogits(nn.Module):
    """Logits = the first three pixels of a 1×4×4 image; the other pixels are ignored."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3]


def logit_images(*rows: tuple[float, float, float], ignored: float = 0.0) -> torch.Tensor:
    """1×4×4 images whose first three pixels are the given logits and whose fourth is ``ignored``."""
    images = torch.zeros(len(rows), 1, 4, 4)
    images.view(len(rows), 16)[:, :3] = torch.tensor(rows)
    images.view(len(rows), 16)[:, 3] = ignored
    return images


def scripted_run(*outputs: torch.Tensor):
    """A stand-in for ``run(x, y)``: call k returns ``outputs[k]``; ``calls`` records the batch sizes."""
    calls: list[int] = []

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return outputs[len(calls) - 1]
    return run, calls


def test_worst_case_keeps_the_first_run_that_fools_and_stops_when_all_are_fooled():
    """The first misclassifying run is kept; once no example is left unfooled, no further run is made
    (a second fooling run would otherwise replace it)."""
    from advlib.attacks.primitives import worst_case_over_restarts

    x, y = logit_images((0.9, 0.1, 0.1)), torch.tensor([0])
    first, second = logit_images((0.1, 0.9, 0.1)), logit_images((0.1, 0.1, 0.9))
    run, calls = scripted_run(first, second, second)
    assert torch.equal(worst_case_over_restarts(run, PixelLogits(), x, y, restarts=3), first)
    assert calls == [1]


def test_worst_case_keeps_the_highest_loss_run_when_none_fools():
    """Two restarts, no run fooling: each example keeps its run of highest cross-entropy, whether that
    is the first run (example 1) or the second (example 0), and never the clean image."""
    from advlib.attacks.primitives import worst_case_over_restarts

    x, y = logit_images((0.9, 0.1, 0.1), (0.9, 0.1, 0.1)), torch.tensor([0, 0])
    low, high = (0.9, 0.2, 0.1), (0.9, 0.6, 0.1)  # y = 0: a larger z₁ is a larger CE, still z₀ wins
    run, calls = scripted_run(logit_images(low, high), logit_images(high, low))
    best = worst_case_over_restarts(run, PixelLogits(), x, y, restarts=2)
    assert torch.equal(best, logit_images(high, high))
    assert calls == [2, 2]


def test_worst_case_keeps_the_earlier_run_on_equal_loss():
    """Only a strictly higher loss replaces the kept run: two unfooled runs with the same logits (they
    differ in an ignored pixel) leave the first."""
    from advlib.attacks.primitives import worst_case_over_restarts

    x, y = logit_images((0.9, 0.1, 0.1)), torch.tensor([0])
    first, second = logit_images((0.9, 0.5, 0.1), ignored=0.25), logit_images((0.9, 0.5, 0.1), ignored=0.75)
    run, _ = scripted_run(first, second)
    assert torch.equal(worst_case_over_restarts(run, PixelLogits(), x, y, restarts=2), first)


# --- CW's keep-best rule, with Adam replaced by a script of iterates ------------------------------------------

class ScriptedSteps:
    """Stands in for ``torch.optim.Adam([w], lr=...)``: step k sets w to ``points[k]``, whatever the gradient."""

    def __init__(self, params, points) -> None:
        (self.w,), self.points = params, iter(points)

    def step(self) -> None:
        with torch.no_grad():
            self.w.copy_(next(self.points))


def cw_scripted(monkeypatch, *iterates: torch.Tensor) -> torch.Tensor:
    """CW on x = 0.5 everywhere (w₀ = atanh(0) = 0, so its first iterate is x), label 0, on the model
    z₀ = 0, z₁ = Σx − 8.1 (fooled once Σx > 8.1), stepping to the given iterates in turn."""
    points = [torch.atanh(2 * image - 1) for image in iterates]
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr: ScriptedSteps(params, points))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    nn.init.zeros_(model[1].weight), nn.init.zeros_(model[1].bias)
    with torch.no_grad():
        model[1].weight[1] = 1.0
        model[1].bias[1] = -8.1
    x = torch.full((1, 1, 4, 4), 0.5)
    return attacks.build("cw", steps=len(iterates))(model, x, torch.tensor([0]))


def half_with(pixel: int, value: float) -> torch.Tensor:
    image = torch.full((1, 1, 4, 4), 0.5)
    image.view(16)[pixel] = value
    return image


def test_cw_keeps_the_final_iterate_when_it_is_the_closest_fooling_one(monkeypatch):
    """Iterates x (not fooled), then one pixel at 0.8 (fooled, ‖δ‖² = 0.09), then — the final iterate,
    checked after the last step — at 0.7 (fooled, ‖δ‖² = 0.04): the final one is the closest, and kept."""
    best = cw_scripted(monkeypatch, half_with(0, 0.8), half_with(0, 0.7))
    assert torch.allclose(best, half_with(0, 0.7), atol=1e-6)


def test_cw_keeps_the_earlier_of_two_equally_close_fooling_iterates(monkeypatch):
    """Only a strictly smaller ‖δ‖² replaces the kept iterate (torchattacks' ``best_L2 > current_L2``):
    0.8 in pixel 0, then 0.8 in pixel 1, both fooled at the same distance, leave the first."""
    best = cw_scripted(monkeypatch, half_with(0, 0.8), half_with(1, 0.8))
    assert torch.allclose(best, half_with(0, 0.8), atol=1e-6)


def test_input_checks_name_the_problem_at_their_boundaries():
    """The shared checks of every attack (primitives.check_*): each refuses exactly what it should,
    at its boundary, with a message that names the argument and the values."""
    from advlib.attacks.primitives import RANGE_TOLERANCE, check_eps, check_inputs, check_labels
    with pytest.raises(ValueError, match=r"^eps must be >= 0, got -1"):
        check_eps(-1)
    for not_a_number in ("0.1", float("nan")):
        with pytest.raises(TypeError, match=r"^eps must be a number"):
            check_eps(not_a_number)
    x, y = torch.rand(3, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match="x and y must be torch tensors"):
        check_inputs(x, [0, 1, 2])
    nans = x.clone()
    nans[0, 0, 0, 0] = nans[0, 0, 1, 1] = nans[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="in 2 of 3 images"):
        check_inputs(nans, y)
    edges = x.clone()
    edges[0, 0, 0, 0], edges[1, 0, 0, 0] = -RANGE_TOLERANCE, 1 + RANGE_TOLERANCE
    check_inputs(edges, y)  # within the tolerance, both ends included
    with pytest.raises(ValueError, match=r"class indices \[0, 3\), got values in \[0, 3\]"):
        check_inputs(x, torch.tensor([0, 1, 3]), num_classes=3)
    with pytest.raises(ValueError, match=r"class indices non-negative, got values in \[-1, 1\]"):
        check_labels(torch.tensor([-1, 1]))
    check_labels(torch.tensor([0, 2]), 3)
