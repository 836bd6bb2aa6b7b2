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


class TwoBatches:
    """Five examples in batches of 3 and 2, the same every epoch."""

    x = torch.zeros(5, 1)
    y = torch.tensor([0, 1, 1, 0, 1])

    def __len__(self) -> int:
        return 2

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        yield self.x[:3], self.y[:3]
        yield self.x[3:], self.y[3:]


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

    history = fit(model, TwoBatches(), epochs=2, optimizer={"name": "sgd", "lr": 0.5},
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

        history = fit(model, TwoBatches(), epochs=2, optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9},
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
