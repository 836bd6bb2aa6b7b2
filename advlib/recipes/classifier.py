"""Chapter 1: the standard-trained classifier every purification chapter defends."""
from __future__ import annotations

from typing import Any

from torch import nn

from .. import cache, distributed
from ..config import Run
from ..evaluation import accuracy
from ..training import fit
from .common import network, training_data


def classifier_config(run: Run) -> dict[str, Any]:
    """Everything that determines the chapter-1 classifier's weights."""
    return {"dataset": run.dataset, "seed": run.seed, **run.config["classifier"]}


def classifier(run: Run) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The standard-trained classifier of chapter 1 (ResNet56 on CIFAR-10 in the paper profile),
    in eval mode, with its per-epoch history (training loss/accuracy, held-out accuracy)."""
    config = classifier_config(run)

    def build(initialise: bool) -> nn.Module:
        return network(run, "classifier", seed=run.seed, initialise=initialise)

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        loader, x_val, y_val = training_data(run, config)
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], checkpoint=checkpoint, desc=config["arch"],
                   evaluate=lambda m: {"val_acc": accuracy(m, x_val, y_val)}, sync_batchnorm=run.sync_batchnorm)

    model, history = cache.load_or_train("classifier", config, build, train,
                                         launch=distributed.launcher(run, "classifier"))
    return model.eval(), history
