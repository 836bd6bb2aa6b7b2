"""One training loop for every model in the book: checkpoint/resume, schedule, per-epoch metrics.

The loop is deliberately short (in the spirit of airbench): a trainer is a *loss function*
``loss_fn(model, x, y, epoch) -> (loss, logits)``; standard training, adversarial training and the
distillation methods differ only there.
"""
from __future__ import annotations

import bisect
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .cache import atomic_save, load
from .config import autocast, iterate
from .data import TensorLoader

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor | None]]


def lr_multiplier(progress: float, schedule: dict[str, Any]) -> float:
    """The learning-rate multiplier at ``progress`` in [0, 1] of training.

    ``schedule = {"interpolate": "step" | "linear", "points": [[p0, m0], [p1, m1], ...]}`` with
    ``p0 = 0``: ``step`` holds ``m_i`` from ``p_i`` on (multi-step decay); ``linear`` interpolates
    between the points (warm-up, one-cycle).
    """
    points = schedule["points"]
    positions = [p for p, _ in points]
    i = bisect.bisect_right(positions, progress) - 1
    if i < 0:
        return float(points[0][1])
    if schedule.get("interpolate", "step") == "step" or i == len(points) - 1:
        return float(points[i][1])
    (p0, m0), (p1, m1) = points[i], points[i + 1]
    return float(m0 + (m1 - m0) * (progress - p0) / (p1 - p0))


def make_optimizer(parameters: Iterable[nn.Parameter], name: str = "sgd", lr: float = 0.1, **options: Any
                   ) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, **options)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, **options)
    raise ValueError(f"unknown optimizer {name!r}; known optimizers: sgd, adam")


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard training: cross-entropy on clean images."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def fit(model: nn.Module, loader: TensorLoader, *, epochs: int, optimizer: dict[str, Any],
        schedule: dict[str, Any], loss_fn: LossFn = cross_entropy_loss, checkpoint: Path | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None, desc: str = "train",
        stop_after: int | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``epochs`` and return one metrics record per epoch.

    After every epoch the model, optimiser and history are saved atomically to ``checkpoint``;
    if that file exists the run resumes after its last epoch. Batches depend only on the loader's
    seed and the epoch, so a resumed run ends with the same weights as an uninterrupted one.
    ``stop_after`` ends the call after that many epochs (as a kill would).
    """
    device = next(model.parameters()).device
    opt = make_optimizer(model.parameters(), **optimizer)
    base_lrs = [group["lr"] for group in opt.param_groups]
    history: list[dict[str, Any]] = []
    if checkpoint is not None and checkpoint.is_file():
        state = load(checkpoint, device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = list(state["history"])
    steps_per_epoch = len(loader)
    for epoch in range(len(history), epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        started = time.time()
        loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for step, (x, y) in enumerate(iterate(loader, desc=f"{desc} {epoch + 1}/{epochs}")):
            multiplier = lr_multiplier((epoch * steps_per_epoch + step) / (epochs * steps_per_epoch), schedule)
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * multiplier
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                loss, logits = loss_fn(model, x, y, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            if logits is not None:
                correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": base_lrs[0] * multiplier,
                                  "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen}
        if evaluate is not None:
            record.update(evaluate(model))
        record["seconds"] = time.time() - started
        history.append(record)
        print(f"{desc} epoch {epoch + 1}/{epochs}: "
              + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"), flush=True)
        if checkpoint is not None:
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "history": history},
                        checkpoint)
    return history
