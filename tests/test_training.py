"""advlib.training and advlib.cache: schedules, resume after a kill, load-or-train."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from advlib import cache
from advlib.training import lr_multiplier

STEP = {"interpolate": "step", "points": [[0.0, 1.0], [0.5, 0.1], [0.75, 0.01]]}
ONE_CYCLE = {"interpolate": "linear", "points": [[0.0, 0.1], [0.2, 1.0], [1.0, 0.0]]}


@pytest.mark.parametrize("schedule, progress, expected", [
    (STEP, 0.0, 1.0), (STEP, 0.49, 1.0), (STEP, 0.5, 0.1), (STEP, 0.8, 0.01), (STEP, 1.0, 0.01),
    (ONE_CYCLE, 0.0, 0.1), (ONE_CYCLE, 0.1, 0.55), (ONE_CYCLE, 0.2, 1.0), (ONE_CYCLE, 0.6, 0.5),
    (ONE_CYCLE, 1.0, 0.0),
])
def test_lr_multiplier_by_hand(schedule, progress, expected):
    assert lr_multiplier(progress, schedule) == pytest.approx(expected)


# The child trains 3 epochs with a checkpoint; during epoch 2's evaluation (after epoch 1 was
# checkpointed) it signals the parent, which kills it with SIGKILL.
TRAINING_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from advlib import data, models
    from advlib.training import fit

    checkpoint, marker, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    model = models.build("small_cnn", 10, 1, width=8)
    images = torch.randint(0, 256, (96, 1, 32, 32), dtype=torch.uint8)
    labels = torch.arange(96) % 10
    loader = data.TensorLoader(data.ImageSet(images, labels, data.info("fashion-mnist")), 32, shuffle=True,
                               augment=True, seed=5)

    def evaluate(model):
        if mode == "kill" and checkpoint.exists():
            marker.touch()
            time.sleep(600)
        return {}

    fit(model, loader, epochs=3, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        schedule={"interpolate": "linear", "points": [[0, 1], [1, 0]]}, checkpoint=checkpoint,
        evaluate=evaluate)
    torch.save(model.state_dict(), checkpoint.parent / "final.pth")
""")


def _train(tmp: Path, mode: str) -> subprocess.Popen:
    script = tmp / "train.py"
    script.write_text(TRAINING_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(tmp / "run.partial.pt"), str(tmp / "killed"), mode],
                            env={**os.environ, "ADVLIB_PROGRESS": "0"}, stdout=subprocess.DEVNULL)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    assert _train(reference_dir, "plain").wait(timeout=300) == 0

    victim = _train(killed_dir, "kill")
    deadline = time.time() + 300
    while not (killed_dir / "killed").exists():
        assert victim.poll() is None and time.time() < deadline, "the training child ended before the kill"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = torch.load(killed_dir / "run.partial.pt", weights_only=True)
    assert len(state["history"]) == 1, "the kill came after exactly one checkpointed epoch"
    assert not list(killed_dir.glob(".*.tmp")), "no half-written checkpoint is left behind"

    (killed_dir / "killed").unlink()
    assert _train(killed_dir, "plain").wait(timeout=300) == 0
    reference = torch.load(reference_dir / "final.pth", weights_only=True)
    resumed = torch.load(killed_dir / "final.pth", weights_only=True)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def test_load_or_train_trains_once_then_loads(tmp_path):
    calls = []

    def train(model, checkpoint):
        calls.append(checkpoint)
        with torch.no_grad():
            model.weight.fill_(3.0)
        return [{"epoch": 1, "loss": 0.5}]

    config = {"arch": "linear", "epochs": 1}
    model, history = cache.load_or_train("toy", config, torch.nn.Linear(2, 2), train, root=tmp_path, verbose=False)
    again, history_again = cache.load_or_train("toy", config, torch.nn.Linear(2, 2), train, root=tmp_path,
                                               verbose=False)
    assert len(calls) == 1 and torch.equal(again.weight, torch.full((2, 2), 3.0))
    assert history_again == history == [{"epoch": 1, "loss": 0.5}]
    assert cache.artifact_path("toy", config, tmp_path).is_file()
    assert not calls[0].exists(), "the partial checkpoint is removed once the artifact is saved"

    cache.load_or_train("toy", {**config, "epochs": 2}, torch.nn.Linear(2, 2), train, root=tmp_path, verbose=False)
    assert len(calls) == 2, "a different configuration is a cache miss"


def test_config_hash_ignores_key_order_but_not_values():
    assert cache.config_hash({"a": 1, "b": [1, 2]}) == cache.config_hash({"b": [1, 2], "a": 1})
    assert cache.config_hash({"a": 1}) != cache.config_hash({"a": 2})


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "model.pt"
    cache.atomic_save({"w": torch.ones(1)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        cache.atomic_save({"w": Unpicklable()}, path)
    assert torch.equal(cache.load(path)["w"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_cache_files_load_with_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": print}, path)
    with pytest.raises(Exception):
        cache.load(path)


def test_the_loop_counts_every_networks_forward_passes():
    """PGD-AT with 3 attack steps: 3 passes with gradients to craft x', 1 for the loss, per step; a
    distillation trainer's teacher passes are counted too."""
    import torch

    from advlib import data, defenses, models
    from advlib.training import fit

    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 32, 32), dtype=torch.uint8)
    loader = data.TensorLoader(data.ImageSet(images, torch.arange(32) % 10, data.info("fashion-mnist")), 16)
    model = models.build("small_cnn", 10, 1, width=2)
    trainer = defenses.build("pgd_at", eps=0.1, alpha=0.05, steps=3)
    history = fit(model, loader, epochs=1, optimizer={"name": "sgd", "lr": 0.01}, schedule={"points": [[0, 1]]},
                  loss_fn=trainer, evaluate=lambda m: {"val": m(images[:4].float() / 255).sum().item()})
    assert history[0]["passes_with_grad"] == 2 * (3 + 1), "two steps of (3 attack passes + 1 loss pass)"
    teacher = models.build("small_cnn", 10, 1, width=2)
    student = models.build("small_cnn", 10, 1, width=2)
    adaad = defenses.build("adaad", teacher=teacher, eps=0.1, alpha=0.05, steps=3)
    history = fit(student, loader, epochs=1, optimizer={"name": "sgd", "lr": 0.01}, schedule={"points": [[0, 1]]},
                  loss_fn=adaad)
    # per step: 3 inner steps × (student + teacher) with gradients, then the student's loss pass
    assert history[0]["passes_with_grad"] == 2 * (3 * 2 + 1)
    assert history[0]["passes_without_grad"] >= 2, "the teacher at x' without gradients"


def test_training_summary_by_hand():
    """The one line a finished training prints: the bookkeeping columns (epoch, lr, seconds,
    passes) are left out, the last epoch's numbers are shown to 3 significant digits."""
    from advlib.training import training_summary

    history = [{"epoch": 1, "lr": 0.1, "seconds": 1.25, "loss": 0.9, "passes_with_grad": 4, "passes_without_grad": 1},
               {"epoch": 2, "lr": 0.01, "seconds": 2.0, "loss": 0.25, "train_acc": 0.91234, "note": "text",
                "passes_with_grad": 4, "passes_without_grad": 1}]
    assert training_summary("the model", history) == (
        "trained the model: 2 epochs in 3 s; last epoch: loss 0.25, train_acc 0.912")


class Batches:
    """Fixed batches (x, y, *paired), the same every epoch."""

    def __init__(self, *batches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)


def two_batches() -> Batches:
    """Five examples in batches of 3 and 2, the same every epoch."""
    return Batches((torch.zeros(3, 1), torch.tensor([0, 1, 1])), (torch.zeros(2, 1), torch.tensor([0, 1])))


def test_fit_records_each_epoch_by_hand(capsys):
    """loss = c + Σw (c = 1 on the first batch, 4 on the second), plain SGD at 0.5 with a tenfold
    drop at half of training: w moves by -lr per step, the epoch's loss is the example-weighted
    mean, its accuracy that of the returned logits (2 of 3, then 1 of 2 right), its lr the last step's."""
    from advlib.training import fit

    model = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(model.weight)
    right_on = {3: torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), 2: torch.tensor([[0.0, 1.0], [0.0, 1.0]])}

    def loss_fn(model, x, y, epoch):
        return (1.0 if len(y) == 3 else 4.0) + model.weight.sum(), right_on[len(y)]

    history = fit(model, two_batches(), epochs=2, optimizer={"name": "sgd", "lr": 0.5},
                  schedule={"interpolate": "step", "points": [[0.0, 1.0], [0.5, 0.1]]}, loss_fn=loss_fn,
                  desc="by hand")
    # epoch 1: Σw = 0, then -1 (lr 0.5); epoch 2: Σw = -2, then -2.1 (lr 0.05)
    expected = [{"epoch": 1, "lr": 0.5, "train_loss": (1.0 * 3 + 3.0 * 2) / 5, "train_acc": 0.6},
                {"epoch": 2, "lr": 0.05, "train_loss": (-1.0 * 3 + 1.9 * 2) / 5, "train_acc": 0.6}]
    for record, wanted in zip(history, expected, strict=True):
        assert {key: record[key] for key in wanted} == pytest.approx(wanted)
        assert 0 <= record["seconds"] < 60
    assert torch.allclose(model.weight, torch.full((2, 1), -1.1))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("by hand epoch 1/2: lr 0.5, train_loss 1.8, train_acc 0.6, seconds ")
    assert lines[1].startswith("by hand epoch 2/2: lr 0.05, train_loss 0.16, train_acc 0.6, seconds ")


def test_a_resumed_fit_runs_only_the_epochs_left(tmp_path):
    """After a run stopped at epoch 1, the next call restores the weights, the optimizer (its
    momentum) and the history from the checkpoint and trains epoch 2 only: two steps, not four, and
    the same weights as an uninterrupted run."""
    from advlib.training import fit

    def run(checkpoint, stop_after=None):
        model = nn.Linear(1, 2, bias=False)
        nn.init.zeros_(model.weight)
        steps = []

        def loss_fn(model, x, y, epoch):
            steps.append(epoch)
            return model.weight.sum() * len(y), None

        history = fit(model, two_batches(), epochs=2, optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9},
                      schedule={"interpolate": "step", "points": [[0.0, 1.0]]}, loss_fn=loss_fn,
                      checkpoint=checkpoint, stop_after=stop_after)
        return model.weight.detach().clone(), history, steps

    whole, whole_history, _ = run(None)
    checkpoint = tmp_path / "run.pt"
    _, first_history, first_steps = run(checkpoint, stop_after=1)
    resumed, history, steps = run(checkpoint)
    assert first_steps == [0, 0] and steps == [1, 1]
    assert history[0] == first_history[0] and [r["epoch"] for r in history] == [1, 2]
    assert torch.equal(resumed, whole)
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in whole_history]


def test_training_summary_sums_the_seconds_it_has_and_shows_the_last_epoch():
    from advlib.training import training_summary

    history = [{"epoch": 1, "loss": 0.9, "seconds": 2.0}, {"epoch": 2, "loss": 0.5},
               {"epoch": 3, "loss": 0.25, "seconds": 1.0}]
    assert training_summary("m", history) == "trained m: 3 epochs in 3 s; last epoch: loss 0.25"


def test_fit_names_its_progress_bar_and_summary_by_epoch(monkeypatch, capsys):
    """Without a ``desc`` the loop calls itself "train"; each epoch's progress bar is numbered from 1.
    A loss function that returns no logits gets no training accuracy."""
    import advlib.training as training

    names = []
    real_iterate = training.iterate
    monkeypatch.setattr(training, "iterate", lambda loader, desc: names.append(desc) or real_iterate(loader, desc))
    model = nn.Linear(1, 2, bias=False)
    history = training.fit(model, two_batches(), epochs=2, optimizer={"name": "sgd", "lr": 0.1},
                           schedule={"points": [[0.0, 1.0]]}, loss_fn=lambda m, x, y, epoch: (m.weight.sum(), None))
    assert names == ["train 1/2", "train 2/2"]
    assert capsys.readouterr().out.startswith("train epoch 1/2: lr 0.1, train_loss ")
    assert all("train_acc" not in record for record in history)


class WithTarget(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.guide, self.target = nn.Linear(2, 2), nn.Linear(2, 3)


def test_an_average_of_a_submodule_holds_that_submodule_only():
    """DYNAT averages its target, not the guide trained beside it (``averaging["module"]``)."""
    from advlib.training import make_averaged

    model = WithTarget()
    averaged = make_averaged(model, {"kind": "ema", "decay": 0.5, "module": "target"})
    assert set(averaged.module.state_dict()) == {"weight", "bias"}
    assert torch.equal(averaged.module.weight, model.target.weight)
    whole = make_averaged(model, {"kind": "swa"})
    assert set(whole.module.state_dict()) == {"guide.weight", "guide.bias", "target.weight", "target.bias"}


class Normalized(nn.Module):
    """A network as :func:`advlib.models.build` makes one: its first layer is called ``normalize``."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize, self.body = nn.Identity(), nn.Linear(2, 2)

    def forward(self, x):
        return self.body(self.normalize(x))


class Slotted:
    __slots__ = ("weight",)


def test_pass_counter_counts_each_network_once_from_zero(tmp_path):
    """A network held twice (the model and a trainer's attribute, or nested two levels deep inside a
    wrapper) is counted once per forward pass; the counts start at zero and restart after ``pop``.
    Trainers are found by attribute, networks in a dict attribute too, and an owner without
    attributes holds none."""
    from advlib.training import PassCounter, held_networks

    model = Normalized()
    wrapper = nn.Sequential(nn.Sequential(model))  # model.normalize is "0.0.normalize" in it

    class Trainer:
        def __init__(self) -> None:
            self.teacher, self.teachers, self.eps = model, {"at": model, "other": Normalized(), "eps": 0.1}, 0.1

    trainer = Trainer()
    assert held_networks(trainer) == {"teacher": model, "teachers[at]": model, "teachers[other]": trainer.teachers["other"]}
    assert held_networks(Slotted()) == {} and held_networks(len) == {}
    nested = PassCounter(wrapper)
    wrapper(torch.zeros(1, 2))
    assert nested.pop() == {"passes_with_grad": 1, "passes_without_grad": 0}
    nested.remove()
    counter = PassCounter(wrapper, trainer)
    assert counter.pop() == {"passes_with_grad": 0, "passes_without_grad": 0}
    x = torch.zeros(1, 2)
    wrapper(x), trainer.teachers["other"](x)
    with torch.no_grad():
        model(x)
    assert counter.pop() == {"passes_with_grad": 2, "passes_without_grad": 1}
    with torch.no_grad():
        wrapper(x)
    assert counter.pop() == {"passes_with_grad": 0, "passes_without_grad": 1}
    counter.remove()
    model(x)
    assert counter.pop() == {"passes_with_grad": 0, "passes_without_grad": 0}


def test_a_checkpoint_without_optimizer_state_is_set_aside_not_half_restored(tmp_path, capsys):
    """A checkpoint missing a part (here the optimiser's state, as a foreign or truncated file would)
    is not resumed from: training starts over, from epoch 1."""
    from advlib import cache as cache_module
    from advlib.training import fit

    checkpoint = tmp_path / "run.partial.pt"
    model = nn.Linear(1, 2, bias=False)
    cache_module.atomic_save({"model": model.state_dict(), "history": [{"epoch": 1}]}, checkpoint)
    history = fit(model, two_batches(), epochs=1, optimizer={"name": "sgd", "lr": 0.1}, schedule={"points": [[0.0, 1.0]]},
                  loss_fn=lambda m, x, y, epoch: (m.weight.sum(), None), checkpoint=checkpoint)
    assert [record["epoch"] for record in history] == [1] and "train_loss" in history[0]
    assert "could not be read" in capsys.readouterr().out


def test_load_or_train_says_what_it_does_and_caches_weights_history_and_config(tmp_path, capsys, monkeypatch):
    """Training is announced once (with "resuming" when a partial checkpoint is left from a killed
    run), a later load in the same process is not announced again; a load in a new process is, by
    kind and file name. The artifact holds the weights, the history and the configuration, and a
    JSON file beside it the configuration with sorted keys. An artifact missing its history is
    trained again."""
    import json

    config = {"epochs": 1, "arch": "linear"}
    path = cache.artifact_path("toy", config, tmp_path)
    checkpoints = []

    def train(model, checkpoint):
        checkpoints.append(checkpoint)
        return [{"epoch": 1}]

    path.with_suffix(".partial.pt").write_bytes(b"left by a killed run")
    cache.load_or_train("toy", config, nn.Linear(2, 2), train, root=tmp_path)
    assert checkpoints == [path.with_suffix(".partial.pt")] and not checkpoints[0].exists()
    assert capsys.readouterr().out == f"training toy, resuming from its last finished epoch (to be cached as {path.name})\n"
    cache.load_or_train("toy", config, nn.Linear(2, 2), train, root=tmp_path)
    assert capsys.readouterr().out == "" and len(checkpoints) == 1
    monkeypatch.setattr(cache, "_ANNOUNCED", set())  # as in a new process
    cache.load_or_train("toy", config, nn.Linear(2, 2), train, root=tmp_path)
    assert capsys.readouterr().out == f"loaded toy from the cache ({path.name})\n"
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model", "history", "config"} and saved["config"] == config
    assert path.with_suffix(".json").read_text() == '{\n  "arch": "linear",\n  "epochs": 1\n}\n'
    assert json.loads(path.with_suffix(".json").read_text()) == config

    fresh = {"epochs": 3}
    cache.load_or_train("toy", fresh, nn.Linear(2, 2), train, root=tmp_path)
    fresh_path = cache.artifact_path("toy", fresh, tmp_path)
    assert capsys.readouterr().out == f"training toy (to be cached as {fresh_path.name})\n"
    other = {"epochs": 2}
    cache.atomic_save({"model": nn.Linear(2, 2).state_dict()}, cache.artifact_path("toy", other, tmp_path))
    cache.load_or_train("toy", other, nn.Linear(2, 2), train, root=tmp_path, verbose=False)
    assert len(checkpoints) == 3, "an artifact without its history is not served"
    assert "training" not in capsys.readouterr().out


def test_load_or_compute_writes_under_the_given_root(tmp_path):
    cache.load_or_compute("toy-tensors", {"a": 1}, lambda: {"t": torch.ones(1)}, root=tmp_path, verbose=False)
    assert cache.artifact_path("toy-tensors", {"a": 1}, tmp_path).is_file()


def test_lr_multiplier_before_the_first_point_and_without_an_interpolation_named():
    """Before the first point the first multiplier holds; a schedule that names no interpolation steps."""
    assert lr_multiplier(0.05, {"points": [[0.1, 0.5], [0.5, 1.0]]}) == 0.5
    assert lr_multiplier(0.3, {"points": [[0.0, 1.0], [0.5, 0.1]]}) == 1.0


def test_fit_hands_the_loss_the_paired_tensors_and_the_hooks_the_epoch():
    """A loader's extra tensors (precomputed x') reach the loss; ``after_step`` hears the epoch; what a
    trainer counted (``epoch_statistics``) joins the epoch's record."""
    from advlib.training import fit

    seen, steps = [], []

    class Trainer:
        def __call__(self, model, x, y, epoch, *paired):
            seen.append([p.tolist() for p in paired])
            return model.weight.sum() * 0, None

        def after_step(self, model, epoch):
            steps.append(epoch)

        def epoch_statistics(self):
            return {"counted": float(len(steps))}

    loader = Batches((torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), torch.ones(2, 1)),)
    history = fit(nn.Linear(1, 2, bias=False), loader, epochs=2, optimizer={"name": "sgd", "lr": 0.1},
                  schedule={"points": [[0.0, 1.0]]}, loss_fn=Trainer())
    assert seen == [[[[1.0], [1.0]]]] * 2 and steps == [0, 1]
    assert [record["counted"] for record in history] == [1.0, 2.0]


def test_a_network_left_out_of_a_steps_loss_is_not_moved_by_it():
    """Gradients are reset to None, not zero, before each step: SGD with momentum then leaves a
    parameter the step's loss does not use where it is (a zero gradient would let the momentum
    carry it on)."""
    from advlib.training import fit

    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    nn.init.ones_(model[0].weight), nn.init.ones_(model[1].weight)

    def loss_fn(model, x, y, epoch):
        return (model[0].weight.sum() if epoch == 0 else model[1].weight.sum()), None

    fit(model, Batches((torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))), epochs=2,
        optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9}, schedule={"points": [[0.0, 1.0]]}, loss_fn=loss_fn)
    assert model[0].weight.item() == 0.5 and model[1].weight.item() == 0.5


def _bn_fit(averaging, epochs=2, evaluate=None):
    """A BatchNorm layer and a linear head trained on batches x = (1, 2, 3) and (4, 5)."""
    from advlib.training import fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(1), nn.Linear(1, 2))
    loader = Batches((torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 1, 1])),
                     (torch.tensor([[4.0], [5.0]]), torch.tensor([0, 1])))
    history = fit(model, loader, epochs=epochs, optimizer={"name": "sgd", "lr": 0.1},
                  schedule={"points": [[0.0, 1.0]]}, averaging=averaging, evaluate=evaluate)
    return model, history


def test_per_epoch_average_from_its_start_and_its_batchnorm_statistics():
    """SWA at the end of every epoch from ``start`` (a fraction of training: epoch 2 of 4 ends exactly
    at 0.5 and counts; without a start, from the first epoch). An average is evaluated (``avg_`` keys)
    only once it holds a model, and at the end replaces the weights together with its BatchNorm
    statistics, re-estimated over the training batches: the mean of the batch means, (2 + 4.5)/2."""
    def evaluate(model):
        return {"bias": model[1].bias.sum().item()}

    model, history = _bn_fit({"kind": "swa", "every": "epoch", "start": 0.5}, epochs=4, evaluate=evaluate)
    assert ["avg_bias" in record for record in history] == [False, True, True, True]
    assert model[0].running_mean.item() == pytest.approx(3.25)
    assert model[1].bias.sum().item() == pytest.approx(history[-1]["bias"])
    _, from_the_start = _bn_fit({"kind": "swa", "every": "epoch"}, evaluate=evaluate)
    assert ["avg_bias" in record for record in from_the_start] == [True, True]
    trained, _ = _bn_fit(None)
    assert trained[0].running_mean.item() != pytest.approx(3.25)
    last_only, _ = _bn_fit({"kind": "swa", "every": "epoch", "start": 1.0})  # an average of one model
    assert last_only[0].running_mean.item() == pytest.approx(3.25)


def test_an_average_that_never_started_does_not_replace_the_weights():
    """Per-step averaging from a start the training never reaches: the trained weights stay."""
    averaged, history = _bn_fit({"kind": "swa", "start": 1.0})
    trained, _ = _bn_fit(None)
    assert torch.equal(averaged[1].weight, trained[1].weight)
    assert all(not any(key.startswith("avg_") for key in record) for record in history)


def test_in_a_notebook_fit_shows_its_summary_with_the_log_collapsed(monkeypatch):
    """On a page the per-epoch lines go into a collapsed log under the one-line summary; outside a
    notebook they are printed instead."""
    import advlib.training as training

    shown = []
    monkeypatch.setattr(training, "show_log", lambda summary, lines: shown.append((summary, lines)))
    history = training.fit(nn.Linear(1, 2, bias=False), two_batches(), epochs=2, optimizer={"name": "sgd", "lr": 0.1},
                           schedule={"points": [[0.0, 1.0]]}, loss_fn=lambda m, x, y, epoch: (m.weight.sum(), None),
                           desc="toy")
    assert shown == []
    monkeypatch.setattr(training, "in_notebook", lambda: True)
    history = training.fit(nn.Linear(1, 2, bias=False), two_batches(), epochs=2, optimizer={"name": "sgd", "lr": 0.1},
                           schedule={"points": [[0.0, 1.0]]}, loss_fn=lambda m, x, y, epoch: (m.weight.sum(), None),
                           desc="toy")
    [(summary, lines)] = shown
    assert summary == training.training_summary("toy", history)
    assert [line.split(":")[0] for line in lines] == ["toy epoch 1/2", "toy epoch 2/2"]
    assert lines[1].startswith("toy epoch 2/2: lr 0.1, train_loss ")
