"""Shared fixtures: Fashion-MNIST (offline, from the Debian package or $ADVLIB_DATA) and a small
trained classifier, cached like every other advlib artifact so it trains once per machine.

The tests keep their artifacts in a home of their own (``_build/test-home``), so they never write
into the book's cache; they read the datasets the book downloaded."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from advlib import paths

BOOK_CACHE = paths.cache_dir()
os.environ.setdefault("ADVLIB_DATA", str(paths.data_dir()))
os.environ["ADVLIB_HOME"] = str(Path(__file__).resolve().parent.parent / "_build" / "test-home")

from advlib import cache, data, models  # noqa: E402
from advlib.training import fit  # noqa: E402

SMALL_MODEL_CONFIG = {
    "purpose": "tests", "arch": "small_cnn", "dataset": "fashion-mnist", "train_subset": 10000, "epochs": 2,
    "batch_size": 128, "seed": 0,
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    "schedule": {"interpolate": "linear", "points": [[0.0, 1.0], [1.0, 0.0]]},
}


@pytest.fixture(scope="session")
def fashion_test() -> data.ImageSet:
    return data.load("fashion-mnist", "test")


@pytest.fixture(scope="session")
def small_model() -> torch.nn.Module:
    """A small CNN trained for two epochs on 10k Fashion-MNIST images (about 85-88 % test accuracy)."""
    config = SMALL_MODEL_CONFIG
    torch.manual_seed(config["seed"])
    model = models.for_dataset(config["arch"], config["dataset"])

    def train(model, checkpoint):
        train_set = data.load(config["dataset"], "train").subset(config["train_subset"], config["seed"])
        loader = data.TensorLoader(train_set, config["batch_size"], shuffle=True, seed=config["seed"])
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], checkpoint=checkpoint, desc="test model")

    model, _ = cache.load_or_train("test-small-cnn", config, model, train, verbose=False)
    return model.eval()


@pytest.fixture(scope="session")
def test_batch(fashion_test) -> tuple[torch.Tensor, torch.Tensor]:
    """256 fixed test images (floats in [0, 1]) and labels."""
    return fashion_test.subset(256, seed=1).tensors()


def under_mutation() -> bool:
    """True in a test run of one mutant of `make mutation` (mutmut names it in the environment)."""
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


def pytest_configure(config: pytest.Config) -> None:
    if under_mutation():
        # mutmut runs one mutant per core: more threads per run only contend for the same cores
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A mutant's run stops at its first failing test (``-x``), and mutmut hands over the tests
    that reach the mutant in no particular order: run the fastest first (durations from mutmut's
    own measurement), so that a caught mutant costs the cheapest test that catches it."""
    stats = Path("mutmut-stats.json")  # mutmut runs the tests from its mutants/ directory
    if under_mutation() and stats.exists():
        duration = json.loads(stats.read_text())["duration_by_test"]
        items.sort(key=lambda item: duration.get(item.nodeid, float("inf")))
