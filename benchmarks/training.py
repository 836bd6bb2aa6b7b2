"""How close each trainer of the book runs to the hardware's limit (issue: training throughput).

For every trainer of the quick profile (or ``--profile paper``, on a GPU), on one batch of the
profile's size and freshly initialised networks of the profile's architectures:

* the trainer: a few steps of :func:`advlib.training.fit` (the book's training loop, with the
  trainer as its loss function);
* its floor: the same number of bare forward passes of each network per step as the trainer runs
  (counted by hooks during its steps), each followed by a backward pass where the trainer's was —
  to the input for an attack step (its input requires grad), to the weights for a training loss —
  on the same networks and batch: the network arithmetic any implementation of the method has to
  do, with no attack, loss, optimiser or bookkeeping work.

Prints a markdown table: trainer, passes per step, images per second of the trainer and of its
floor, and their ratio (1.00 = nothing but the networks' arithmetic).

    python benchmarks/training.py [--profile quick] [--device auto] [--steps 8] [--only trades saad]

``--profile paper --smoke`` runs the paper profile's architectures and trainers at the smoke run's
sizes (with ``ADVLIB_HOME=_build/paper-smoke``, whose synthetic CIFAR files ``make paper-smoke``
writes): a check that every paper-profile trainer runs, not a timing to quote.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import advlib
from advlib import data, defenses
from advlib.config import Run
from advlib.defenses.dynat import GuideAndTarget
from advlib.recipes import common
from advlib.recipes.adversarial_training import AT_METHODS, adversarial_training_config
from advlib.recipes.classifier import classifier_config
from advlib.recipes.distillation import DISTILLATION_METHODS, distillation_config, distillation_trainer
from advlib.recipes.purification import student_trainer
from advlib.training import fit, held_networks


def trainers(run: Run) -> dict[str, tuple[Callable[[], nn.Module], Callable[[], Any], dict[str, Any]]]:
    """name -> (fresh model, fresh trainer, the training config with its batch size and optimiser).
    The networks a trainer only reads (teacher, classifier) are fresh too: random weights cost what
    trained ones do, and the trainers freeze them."""
    table: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any], dict[str, Any]]] = {}
    network = lambda role: common.network(run, role)  # noqa: E731
    table["classifier (ch. 1)"] = (lambda: network("classifier"),
                                   lambda: defenses.build("standard", seed=run.seed), classifier_config(run))
    purification = run.config["purification"]
    purifier_trainers = {
        "purifier NT teacher (ch. 4)": lambda: defenses.build("purifier-nt"),
        "purifier AT teacher (ch. 4)": lambda: defenses.build("purifier-at", classifier=network("classifier")),
        "purifier student (ch. 5)": lambda: student_trainer(
            run, {"at": network("purifier"), "nt": network("purifier")}, lambda: network("classifier")),
    }
    for name, make in purifier_trainers.items():
        table[name] = (lambda: network("purifier"), make, purification)
    for method, recipe in AT_METHODS.items():
        config = adversarial_training_config(run, method)
        options = dict(config.get("trainer_options", {}))
        for start in ("awp_from_epoch", "reweight_from_epoch"):
            if start in options:
                options[start] = 1  # the steady state: AWP's extra passes, GAIRAT's weights, from the first step
        guided = "guide" in config
        table[f"{recipe.label} (ch. {8 if guided else 6})"] = (
            (lambda: GuideAndTarget(network("guide"), network("target"))) if guided
            else (lambda: network("target")),
            lambda trainer=config["trainer"], options=options: defenses.build(trainer, **options, seed=run.seed),
            config)
    for method, recipe in DISTILLATION_METHODS.items():
        table[f"{recipe.label} (ch. 7)"] = (lambda: network("student"),
                                            lambda method=method: distillation_trainer(run, method, network("target")),
                                            distillation_config(run, method))
    return table


def networks_of(model: nn.Module, trainer: Any) -> dict[str, nn.Module]:
    """Every network a step runs, by name: the trained one(s) and those the trainer holds."""
    found = {"guide": model.guide, "target": model.target} if isinstance(model, GuideAndTarget) else {"model": model}
    return {**found, **held_networks(trainer)}


KINDS = ("to input", "to weights", "no grad")


def kind_of_pass(inputs: tuple[Any, ...], output: torch.Tensor) -> str:
    """An attack step backpropagates to its input (which requires grad), a training loss to the
    weights (its input is detached); a pass without a graph is a plain forward."""
    if not (torch.is_grad_enabled() and output.requires_grad):
        return "no grad"
    return "to input" if inputs[0].requires_grad else "to weights"


Counts = dict[str, dict[tuple[str, bool], int]]  # network -> (kind, BatchNorm in train mode) -> passes


def count_passes(networks: dict[str, nn.Module], step: Callable[[], None]) -> Counts:
    """How many forward passes of each kind (:data:`KINDS`) and mode each network runs during ``step``."""
    counts: Counts = {name: {} for name in networks}

    def hook(name: str) -> Callable[..., None]:
        def count(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            key = (kind_of_pass(inputs, output), module.training)
            counts[name][key] = counts[name].get(key, 0) + 1
        return count

    handles = [net.register_forward_hook(hook(name)) for name, net in networks.items()]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_passes(networks: dict[str, nn.Module], counts: Counts, steps: int, x: torch.Tensor,
                labels: torch.Tensor) -> None:
    """The floor: per step, each network's counted passes on ``x`` in the mode the trainer ran
    them, each backpropagated where the trainer's was (to the input, or to the weights)."""
    def loss(out: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, labels) if out.dim() == 2 else out.square().mean()

    for _ in range(steps):
        for name, count in counts.items():
            net = networks[name]
            for (kind, training), passes in count.items():
                net.train(training)
                for _ in range(passes):
                    if kind == "to input":
                        x_input = x.detach().requires_grad_(True)
                        torch.autograd.grad(loss(net(x_input)), x_input)
                    elif kind == "to weights":
                        net.zero_grad(set_to_none=True)
                        loss(net(x)).backward()
                    else:
                        with torch.no_grad():
                            net(x)


def benchmark(run: Run, make_model: Callable[[], nn.Module], make_trainer: Callable[[], Any],
              config: dict[str, Any], steps: int) -> dict[str, Any]:
    batch = config["batch_size"]
    train_set = data.load(run.dataset, "train").subset(batch * steps, run.seed)
    x, y = train_set.tensors(run.device)
    paired = (x + 0.03 * torch.randn_like(x)).clamp(0, 1).cpu()  # the purifiers train on (clean, x') pairs
    loader = data.TensorLoader(train_set, batch, shuffle=True, drop_last=True, device=run.device, seed=run.seed,
                               paired=paired if "autoencoder" in config else None)
    model, trainer = make_model(), make_trainer()
    train = lambda epochs: fit(model, loader, epochs=epochs, optimizer=config["optimizer"],  # noqa: E731
                               schedule={"interpolate": "step", "points": [[0.0, 1.0]]}, loss_fn=trainer,
                               desc="benchmark")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        train(1)  # warm-up: allocator, lazily built state (AWP's proxy), first-call dispatch
        networks = networks_of(model, trainer)
        counts = count_passes(networks, lambda: train(1))
        counts = {name: {key: n // steps for key, n in count.items()} for name, count in counts.items() if count}
        synchronize(run.device)
        started = time.perf_counter()
        train(1)
        synchronize(run.device)
        seconds = time.perf_counter() - started
    xb, yb = x[:batch], y[:batch]
    bare_passes(networks, counts, 1, xb, yb)
    synchronize(run.device)
    started = time.perf_counter()
    bare_passes(networks, counts, steps, xb, yb)
    synchronize(run.device)
    floor = time.perf_counter() - started
    images = batch * steps
    return {"passes": counts, "trainer": images / seconds, "floor": images / floor, "ratio": seconds / floor}


def rate(images_per_second: float) -> str:
    return f"{images_per_second:.0f}" if images_per_second >= 10 else f"{images_per_second:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=8, help="training steps timed per trainer")
    parser.add_argument("--only", nargs="*", help="trainers whose name starts with one of these words")
    parser.add_argument("--smoke", action="store_true", help="the paper profile at the smoke run's sizes")
    args = parser.parse_args()
    run = advlib.setup(args.profile, device=args.device, quiet=True, smoke=args.smoke)
    gpu = f" ({torch.cuda.get_device_name(run.device)})" if run.device.type == "cuda" else ""
    print(f"profile {args.profile} ({run.dataset}), device {run.device}{gpu}, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}; {args.steps} steps per trainer, fresh networks\n")
    print("| trainer | passes per step (to input + to weights + no grad) | trainer (images/s) | floor (images/s) "
          "| ratio to floor |")
    print("|---|---|---:|---:|---:|")
    for name, (make_model, make_trainer, config) in trainers(run).items():
        if args.only and not any(name.lower().startswith(word.lower()) for word in args.only):
            continue
        result = benchmark(run, make_model, make_trainer, config, args.steps)
        passes = "; ".join(f"{net} " + " + ".join(str(sum(n for (k, _), n in count.items() if k == kind))
                                                  for kind in KINDS)
                           for net, count in result["passes"].items())
        print(f"| {name} | {passes} | {rate(result['trainer'])} | {rate(result['floor'])} | {result['ratio']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
