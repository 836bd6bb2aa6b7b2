"""The book's trained artifacts, each "load if present, else train" under its configuration hash.

A notebook asks for what it needs (``recipes.classifier(run)``); whichever notebook runs first
trains it, every later one loads it, and each notebook still runs on its own.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from . import cache, data, models
from .config import Run, prepare_model
from .evaluation import accuracy
from .training import fit


def classifier_config(run: Run) -> dict[str, Any]:
    """Everything that determines the chapter-01 classifier's weights."""
    return {"dataset": run.dataset, "seed": run.seed, **run.config["classifier"]}


def classifier(run: Run) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The standard-trained classifier of chapter 01 (ResNet56 on CIFAR-10 in the paper profile),
    in eval mode, with its per-epoch history (training loss/accuracy, held-out accuracy)."""
    config = classifier_config(run)
    model = prepare_model(models.for_dataset(config["arch"], run.dataset), run.device)

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        train_set = data.load(run.dataset, "train").subset(config["train_subset"], run.seed)
        train_set, holdout = train_set.split(config["holdout"], run.seed)
        x_val, y_val = holdout.tensors(run.device)
        loader = data.TensorLoader(train_set, config["batch_size"], shuffle=True, augment=config["augment"],
                                   drop_last=True, device=run.device, seed=run.seed)
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], checkpoint=checkpoint, desc=config["arch"],
                   evaluate=lambda m: {"val_acc": accuracy(m, x_val, y_val)})

    model, history = cache.load_or_train("classifier", config, model, train)
    return model.eval(), history


def test_set(run: Run, subset: int | None | str = "profile") -> tuple[Any, Any]:
    """The test images (floats in [0, 1]) and labels on the run's device; ``subset`` defaults to the
    profile's ``eval_subset`` (a fixed random sample, the same in every chapter)."""
    n = run.config["eval_subset"] if subset == "profile" else subset
    return data.load(run.dataset, "test").subset(n, seed=0).tensors(run.device)
