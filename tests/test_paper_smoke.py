"""The paper profile at smoke scale: the overrides only cut sizes, every evaluation entry point
accepts an empty selection, chapters are selected by number, and a paper-profile training killed
mid-run resumes to the same weights as an uninterrupted one."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advlib import attacks, config, evaluation, models
from advlib.evaluation import accuracy, predict, robust_accuracy

ROOT = Path(__file__).resolve().parent.parent
SIZE_SETTINGS = {"eval_subset", "cw_subset", "autoattack_subset", "epochs", "teacher_epochs", "student_epochs",
                 "train_subset", "holdout", "batch_size", "cw_steps", "cw_restarts", "autoattack_iterations",
                 "square_queries", "check_subset", "check_steps", "check_square_queries",
                 "pgd_steps", "apgd_iterations",  # Table 4's evaluation attacks, as cw_steps
                 "images_per_epoch",  # the training images an epoch takes (NRP's)
                 "steps"}  # the training attack's (and SOAP's purification) step count, a loop bound
# lists of candidates the method tries one by one (SOAP's purification budgets): the smoke run keeps some
CANDIDATE_SETTINGS = {"budgets"}


def _paper_value(dotted: str):
    node = config.PROFILES["paper"]
    for key in dotted.split("."):
        node = node[key]
    return node


@pytest.mark.parametrize("dotted", sorted(config.PAPER_SMOKE_OVERRIDES))
def test_smoke_overrides_only_cut_sizes(dotted):
    """Each override is a size of the paper profile (an epoch count, a subset, a batch size or an
    evaluation attack's budget) and is smaller than the paper's value (None means all images), or
    keeps some of a list of candidates."""
    paper, smoke = _paper_value(dotted), config.PAPER_SMOKE_OVERRIDES[dotted]
    if dotted.split(".")[-1] in CANDIDATE_SETTINGS:
        assert smoke and set(smoke) < set(paper), (dotted, paper, smoke)
        return
    assert dotted.split(".")[-1] in SIZE_SETTINGS, f"{dotted} is not a size"
    assert isinstance(smoke, int) and smoke >= 1
    assert paper is None or smoke <= paper, (dotted, paper, smoke)


def test_smoke_run_is_the_paper_profile_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVLIB_HOME", str(tmp_path))
    run = config.setup("paper", device="cpu", smoke=True, quiet=True)
    assert run.profile == "paper" and run.smoke
    assert run.config["adversarial_training"]["target"] == config.PROFILES["paper"]["adversarial_training"]["target"]
    assert run.config["classifier"]["epochs"] == config.PAPER_SMOKE_OVERRIDES["classifier.epochs"]
    banner = run.banner()
    assert "SMOKE RUN" in banner
    for dotted, value in config.PAPER_SMOKE_OVERRIDES.items():
        section, _, key = dotted.rpartition(".")
        line = next(line for line in banner.splitlines() if line.startswith(f"  {section or '(top level)'}: "))
        assert f"{key}={value}" in re.split(r", (?=\w+=)", line.split(": ", 1)[1]), dotted
    assert run.results_dir.name == "paper-smoke-cifar10", "a smoke run never overwrites a real run's tables"
    with pytest.raises(ValueError, match="paper profile"):
        config.setup("quick", device="cpu", smoke=True, quiet=True)


# --- empty selections -----------------------------------------------------------------------------------

@pytest.fixture()
def tiny_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("small_cnn", 10, 1, width=2).eval()


def test_every_evaluation_entry_point_accepts_no_images(tiny_classifier):
    x, y = torch.rand(0, 1, 32, 32), torch.zeros(0, dtype=torch.long)
    assert predict(tiny_classifier, x).shape == (0, 10)
    assert math.isnan(accuracy(tiny_classifier, x, y))
    report = robust_accuracy(tiny_classifier, x, y, {"PGD-20": attacks.build("pgd", steps=2)}, cascade=False,
                             keep_adversarial=("PGD-20",))
    assert all(math.isnan(v) for v in report.accuracies.values())
    assert report.as_table()[0]["n"] == 0
    assert math.isnan(evaluation.transfer_rate(tiny_classifier, tiny_classifier, x, y))
    purifier = models.build("cae", in_channels=1, width=4, blocks=2)
    table = evaluation.gray_box(tiny_classifier, {"ours": purifier},
                                                      {"PGD": attacks.build("pgd", steps=1)}, x, y)
    assert table["PGD"]["images"] == 0 and math.isnan(table["PGD"]["ours"])


def test_transfer_rate_when_the_student_gets_nothing_right(tiny_classifier):
    """Chapter 7's case: a student that classifies none of its evaluation images correctly leaves
    no adversarial example to transfer; the rate is nan, not an IndexError."""
    x = torch.rand(4, 1, 32, 32)
    y = (predict(tiny_classifier, x).argmax(1) + 1) % 10
    report = robust_accuracy(tiny_classifier, x, y, {"PGD-20": attacks.build("pgd", steps=2)}, cascade=False,
                             keep_adversarial=("PGD-20",))
    assert not report.clean.any()
    chosen = report.adversarial["PGD-20"][report.clean]
    assert math.isnan(evaluation.transfer_rate(tiny_classifier, tiny_classifier, chosen, y[report.clean]))


# --- the build script -----------------------------------------------------------------------------------

def _build_module():
    spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chapters_are_chosen_by_number_or_name():
    build = _build_module()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [nb.name[:2] for nb in build.select(notebooks, ["08", "6"])] == ["06", "08"]
    assert build.select(notebooks, ["01_data_and_classifier"])[0].name.startswith("01")
    assert build.select(notebooks, None) == notebooks
    with pytest.raises(SystemExit, match="no chapter 42"):
        build.select(notebooks, ["42"])


# --- resume after a kill, at smoke scale ------------------------------------------------------------------

_TRAIN_CLASSIFIER = """
import sys
import advlib
from advlib import data, recipes
from pathlib import Path
home = Path(sys.argv[1])
data.write_synthetic_cifar(home / "data", "cifar10", n_train=160, n_test=16)
run = advlib.setup("paper", device="cpu", smoke=True, quiet=True, overrides={
    "classifier.epochs": 3, "classifier.train_subset": 96, "classifier.holdout": 32, "classifier.batch_size": 32})
recipes.classifier(run)
"""


def _classifier_run(home: Path) -> subprocess.Popen:
    env = {**os.environ, "ADVLIB_HOME": str(home), "ADVLIB_PROGRESS": "0"}
    env.pop("ADVLIB_DATA", None)
    return subprocess.Popen([sys.executable, "-c", _TRAIN_CLASSIFIER, str(home)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_paper_profile_training_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    """What an interrupted ``make book PROFILE=paper`` does when it is started again: the model it was
    training resumes from its last finished epoch and ends with an uninterrupted run's weights."""
    reference_home, killed_home = tmp_path / "reference", tmp_path / "killed"
    reference = _classifier_run(reference_home)
    victim = _classifier_run(killed_home)
    partial = killed_home / "cache"
    deadline = time.time() + 300
    while not list(partial.glob("classifier-*.partial.pt")):
        assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no epoch finished within 5 minutes"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = torch.load(next(partial.glob("classifier-*.partial.pt")), weights_only=True)
    assert 1 <= len(state["history"]) < 3, "killed after an epoch and before the end"
    assert not list(partial.glob("classifier-*[0-9a-f].pt")), "no finished artifact yet"

    resumed = _classifier_run(killed_home)
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    assert reference.wait() == 0, reference.stderr.read().decode()[-2000:]
    finished = {home: next((home / "cache").glob("classifier-*[0-9a-f].pt")) for home in (reference_home, killed_home)}
    assert finished[reference_home].name == finished[killed_home].name, "the same configuration hash"
    a, b = (torch.load(path, weights_only=True) for path in finished.values())
    assert [r["epoch"] for r in b["history"]] == [1, 2, 3]
    # the finished epochs were loaded, not trained again: their records are the killed run's
    assert b["history"][:len(state["history"])] == state["history"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert json.loads(finished[killed_home].with_suffix(".json").read_text())["epochs"] == 3
