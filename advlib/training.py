"""One training loop for every model in the book: checkpoint/resume, schedule, per-epoch metrics
(chapter 1 introduces it; every later chapter trains through it).

The loop is deliberately short (in the spirit of airbench): a trainer is a *loss function*
``loss_fn(model, x, y, epoch, *paired) -> (loss, logits or None)``; standard training, adversarial
training, purifier training and the distillation methods differ only there. ``paired`` holds the
loader's extra tensors (e.g. precomputed adversarial examples); ``logits``, when given, are used
for the training accuracy. A trainer (and each of ``callbacks``) may also have the two
:class:`Hooks`: ``after_step`` runs after every optimiser step (AWP restores the weights it
perturbed there) and ``epoch_statistics`` adds what the trainer counted during the epoch to the
epoch's record (DYNAT's label agreement, SAAD's weights).

``averaging`` keeps an SWA or EMA copy of the weights (Izmailov et al. 2018; for adversarial
training, Chen et al. 2021) whose BatchNorm statistics are re-estimated before it is evaluated and
which replaces the trained weights at the end. :class:`Checkpoint` saves and restores all of it.
"""
from __future__ import annotations

import bisect
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from . import distributed
from .cache import atomic_save, load_agreed
from .config import autocast, in_notebook, iterate, show_log
from .data import TensorLoader

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


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


def training_progress(epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Training progress in [0, 1) at ``step`` of ``epoch`` (both from 0)."""
    return (epoch * steps_per_epoch + step) / (epochs * steps_per_epoch)


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


class Hooks:
    """What :func:`fit` calls on a trainer, and on each of its ``callbacks``, besides the loss."""

    def after_step(self, model: nn.Module, epoch: int) -> None:
        """Runs right after ``optimizer.step()``, before the weight average is updated."""

    def epoch_statistics(self) -> dict[str, float]:
        """What the trainer counted since the last call (then reset), added to the epoch's record."""
        return {}


def make_averaged(model: nn.Module, averaging: dict[str, Any]) -> AveragedModel:
    """An SWA (``{"kind": "swa"}``, equal-weight running mean) or EMA (``{"kind": "ema",
    "decay": 0.999}``) copy of ``model`` or of its submodule ``averaging["module"]``."""
    source = averaging_source(model, averaging)
    if averaging["kind"] == "swa":
        return AveragedModel(source)
    if averaging["kind"] == "ema":
        return AveragedModel(source, multi_avg_fn=get_ema_multi_avg_fn(averaging["decay"]))
    raise ValueError(f"averaging kind must be 'swa' or 'ema', not {averaging['kind']!r}")


def averaging_source(model: nn.Module, averaging: dict[str, Any]) -> nn.Module:
    return getattr(model, averaging["module"]) if averaging.get("module") else model


def held_networks(trainer: object) -> dict[str, nn.Module]:
    """The networks a trainer holds (a teacher, a frozen classifier), by attribute name; those in a
    dict attribute as ``name[key]`` (the purifier student's ``teachers[at]``)."""
    found: dict[str, nn.Module] = {}
    for attribute, value in vars(trainer).items() if hasattr(trainer, "__dict__") else ():
        if isinstance(value, nn.Module):
            found[attribute] = value
        elif isinstance(value, dict):
            found.update({f"{attribute}[{key}]": net for key, net in value.items() if isinstance(net, nn.Module)})
    return found


class PassCounter:
    """Counts the forward passes of every network a training step runs — the model's and those a
    trainer holds (a teacher, a frozen classifier) — split into passes with gradients (followed by a
    backward pass: attack steps, the training loss) and without. A network is anything
    :func:`advlib.models.build` made: its first layer, ``normalize``, runs once per forward pass."""

    def __init__(self, *owners: object) -> None:
        self.with_grad, self.without_grad = 0, 0
        self._handles = []
        seen: set[int] = set()
        for owner in owners:
            for module in [owner] if isinstance(owner, nn.Module) else held_networks(owner).values():
                for name, layer in module.named_modules():
                    if name.rsplit(".", 1)[-1] == "normalize" and id(layer) not in seen:
                        seen.add(id(layer))
                        self._handles.append(layer.register_forward_hook(self._count))

    def _count(self, *_: Any) -> None:
        if torch.is_grad_enabled():
            self.with_grad += 1
        else:
            self.without_grad += 1

    def pop(self) -> dict[str, int]:
        """The counts since the last call, then reset."""
        counts = {"passes_with_grad": self.with_grad, "passes_without_grad": self.without_grad}
        self.with_grad, self.without_grad = 0, 0
        return counts

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class Checkpoint:
    """The training state after each finished epoch (model, optimiser, weight average, history),
    written atomically to ``path`` and restored from it, so that a killed run resumes where it
    stopped and ends with the weights of an uninterrupted one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, averaged: AveragedModel | None
                ) -> list[dict[str, Any]]:
        """Load the saved state into the given objects; the history of the finished epochs (empty
        when there is nothing to resume)."""
        state = None if self.path is None else load_agreed(self.path, next(model.parameters()).device,
                                                           required=("model", "optimizer", "history"))
        if state is None:
            return []
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if averaged is not None:
            averaged.load_state_dict(state["averaged"])
        return list(state["history"])

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, averaged: AveragedModel | None,
             history: list[dict[str, Any]]) -> None:
        if self.path is None:
            return
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history}
        if averaged is not None:
            state["averaged"] = averaged.state_dict()
        atomic_save(state, self.path)


def _summary(desc: str, epoch: int, epochs: int, record: dict[str, Any]) -> str:
    return f"{desc} epoch {epoch}/{epochs}: " + ", ".join(
        f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "passes_with_grad", "passes_without_grad")
        and isinstance(v, (int, float)))


def fit(model: nn.Module, loader: TensorLoader, *, epochs: int, optimizer: dict[str, Any],
        schedule: dict[str, Any], loss_fn: LossFn = cross_entropy_loss, checkpoint: Path | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None, desc: str = "train",
        stop_after: int | None = None, callbacks: Sequence[Hooks] = (),
        averaging: dict[str, Any] | None = None, sync_batchnorm: bool = False) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``epochs`` and return one metrics record per epoch.

    After every epoch the training state is saved to ``checkpoint`` (:class:`Checkpoint`); if that
    file exists the run resumes after its last epoch. Batches depend only on the loader's seed and
    the epoch, so a resumed run ends with the same weights as an uninterrupted one. ``stop_after``
    ends the call after that many epochs (as a kill would). ``loss_fn`` and ``callbacks`` may have
    :class:`Hooks`.

    ``averaging`` (``{"kind": "swa" | "ema", "decay": …, "start": fraction of training,
    "every": "step" | "epoch", "module": submodule name or None}``) averages the weights after
    every step from ``start`` on, or (``"every": "epoch"``) at the end of every epoch that ends at
    or after ``start``, as SAAD's SWA does. Each epoch the average's BatchNorm statistics are
    re-estimated on the (clean) training batches and ``evaluate`` also runs on it (keys prefixed
    ``avg_``); at the end the average replaces the trained weights.

    Under ``torchrun`` (:mod:`advlib.distributed`) every rank runs this same call: each trains on its
    slice of every batch, DistributedDataParallel averages the gradients (so the step is the one of
    the whole batch wherever the loss is a mean over images), the records sum the ranks' losses and
    counts, and only rank 0 evaluates, prints and writes the checkpoint that all ranks resume from.
    What a trainer computes over its batch (BatchNorm statistics unless ``sync_batchnorm``, GAIRAT's
    and MAIL's weights normalised over the batch) is computed over the rank's slice, and attacks
    draw their random starts from a stream of their own on each rank.
    """
    device = next(model.parameters()).device
    opt = make_optimizer(model.parameters(), **optimizer)
    base_lrs = [group["lr"] for group in opt.param_groups]
    averaged = make_averaged(model, averaging) if averaging else None
    saved = Checkpoint(checkpoint if distributed.is_main() else None)
    history = Checkpoint(checkpoint).restore(model, opt, averaged)
    if distributed.active():
        loader.set_shard(distributed.rank(), distributed.world_size())
    step_loss = distributed.data_parallel(model, loss_fn, sync_batchnorm)
    hooks = [hook for hook in (loss_fn, *callbacks) if hasattr(hook, "after_step")]
    steps_per_epoch = len(loader)
    per_epoch = bool(averaging) and averaging.get("every", "step") == "epoch"
    if averaging and averaging.get("every", "step") not in ("step", "epoch"):
        raise ValueError(f"averaging 'every' must be 'step' or 'epoch', not {averaging['every']!r}")
    passes = PassCounter(model, loss_fn)
    for epoch in range(len(history), epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        passes.pop()
        started = time.time()
        loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen, has_logits = 0, False
        for step, (x, y, *paired) in enumerate(iterate(loader, desc=f"{desc} {epoch + 1}/{epochs}")):
            progress = training_progress(epoch, step, steps_per_epoch, epochs)
            multiplier = lr_multiplier(progress, schedule)
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * multiplier
            with autocast(device):
                loss, logits = step_loss(x, y, epoch, *paired)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for hook in hooks:
                hook.after_step(model, epoch)
            if averaged is not None and not per_epoch and progress >= averaging.get("start", 0.0):
                averaged.update_parameters(averaging_source(model, averaging))
            loss_sum += loss.detach() * len(y)
            if logits is not None:
                has_logits = True
                correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        if averaged is not None and per_epoch and (epoch + 1) / epochs >= averaging.get("start", 0.0):
            averaged.update_parameters(averaging_source(model, averaging))
        loss_sum, correct, seen = distributed.sum_over_ranks(torch.stack([loss_sum, correct, torch.tensor(
            float(seen), device=device)])).tolist()
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": base_lrs[0] * multiplier,
                                  "train_loss": loss_sum / seen, **passes.pop()}
        if has_logits:
            record["train_acc"] = correct / seen
        if hasattr(loss_fn, "epoch_statistics"):
            record.update(mean_over_ranks(loss_fn.epoch_statistics(), device))
        if distributed.is_main():
            if evaluate is not None:
                record.update(evaluate(model))
            if averaged is not None and int(averaged.n_averaged) > 0:
                if distributed.active():  # the average's BatchNorm statistics from whole batches
                    loader.set_shard(0, 1)
                update_bn(loader, averaged)
                if distributed.active():
                    loader.set_shard(distributed.rank(), distributed.world_size())
                if evaluate is not None:
                    record.update({f"avg_{k}": v for k, v in evaluate(averaged.module).items()})
        record["seconds"] = time.time() - started
        history.append(record)
        if distributed.is_main() and not in_notebook():
            print(_summary(desc, epoch + 1, epochs, record), flush=True)
        saved.save(model, opt, averaged, history)
    passes.remove()
    if averaged is not None and int(averaged.n_averaged) > 0 and len(history) == epochs:
        averaging_source(model, averaging).load_state_dict(averaged.module.state_dict())
    if distributed.is_main() and in_notebook() and history:
        show_log(training_summary(desc, history),
                 [_summary(desc, r["epoch"], epochs, r) for r in history])
    return history


def mean_over_ranks(statistics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each of a trainer's epoch statistics averaged over the ranks that measured it (a rank reports
    nan where it had nothing to count). A mean over each rank's images, such as DYNAT's label
    agreement, becomes the mean over all of them, since the ranks see equally many; a ratio whose
    denominator varies by rank (SAAD's transfer rate among the examples that fooled the student) is
    approximated by the mean of the ranks' ratios."""
    if not statistics or distributed.world_size() == 1:
        return statistics
    values = torch.tensor(list(statistics.values()), dtype=torch.float64, device=device)
    measured = ~values.isnan()
    totals = distributed.sum_over_ranks(torch.stack([values.nan_to_num(), measured.double()]))
    return dict(zip(statistics, (totals[0] / totals[1]).tolist()))


def training_summary(desc: str, history: list[dict[str, Any]]) -> str:
    """One line for a finished training: epochs, the last epoch's metrics and the total seconds."""
    last = history[-1]
    metrics = ", ".join(f"{k} {v:.3g}" for k, v in last.items()
                        if k not in ("epoch", "lr", "seconds", "passes_with_grad", "passes_without_grad")
                        and isinstance(v, (int, float)))
    seconds = sum(r.get("seconds", 0.0) for r in history)
    return f"trained {desc}: {len(history)} epochs in {seconds:.0f} s; last epoch: {metrics}"
