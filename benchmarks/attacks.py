"""How close advlib's attacks run to the hardware's limit, and to the reference libraries.

On one model and one batch of Fashion-MNIST test images:

* PGD-20 against 20 bare forward+backward passes with respect to the input (the floor: PGD cannot
  be faster) and against torchattacks' PGD-20;
* advlib's AutoAttack (standard) against the authors' ``pyautoattack`` (standard).

Prints a markdown table: method, seconds, ratio to the row's baseline, robust accuracy.

    python benchmarks/attacks.py --n 256 --eps 8/255 --device auto [--model small_cnn] [--aa-n 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
from fractions import Fraction
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import advlib
from advlib import cache, data, models, recipes
from advlib.attacks import build
from advlib.evaluation import predict
from advlib.training import fit

SMALL_CNN = {  # a few seconds of training on a CPU; only for benchmarking
    "purpose": "benchmark", "arch": "small_cnn", "dataset": "fashion-mnist", "train_subset": 10000, "epochs": 2,
    "batch_size": 128, "seed": 0,
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    "schedule": {"interpolate": "linear", "points": [[0.0, 1.0], [1.0, 0.0]]},
}


def load_model(name: str, run: advlib.config.Run) -> nn.Module:
    if name == "chapter01":
        return recipes.classifier(run)[0]
    config = SMALL_CNN
    model = advlib.config.prepare_model(models.for_dataset(config["arch"], config["dataset"]), run.device)

    def train(model: nn.Module, checkpoint) -> list:
        train_set = data.load(config["dataset"], "train").subset(config["train_subset"], config["seed"])
        loader = data.TensorLoader(train_set, config["batch_size"], shuffle=True, seed=config["seed"],
                                   device=run.device)
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], checkpoint=checkpoint, desc="benchmark model")

    return cache.load_or_train("benchmark-small-cnn", config, model, train)[0].eval()


def timed(function: Callable[[], torch.Tensor | None], device: torch.device,
          repeats: int = 1) -> tuple[float, torch.Tensor | None]:
    """The fastest of ``repeats`` runs (the least disturbed by other processes) and its result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best, result


def input_gradient_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int) -> None:
    for _ in range(passes):
        x_input = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_input), y, reduction="sum"), x_input)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="test images in the batch")
    parser.add_argument("--eps", type=lambda s: float(Fraction(s)), default=8 / 255, help="L∞ budget, e.g. 8/255")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--model", default="chapter01", choices=["chapter01", "small_cnn"],
                        help="the chapter-01 classifier (quick profile) or a small CNN")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps")
    parser.add_argument("--aa-n", type=int, default=None, help="images for the AutoAttack rows (default: --n)")
    parser.add_argument("--repeats", type=int, default=3, help="PGD timings: the fastest of this many runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's); 1 gives stable timings on a busy machine")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    run = advlib.setup("quick", device=args.device, quiet=True)
    model = load_model(args.model, run)
    x, y = recipes.test_set(run, args.n)
    aa_n = min(args.aa_n or args.n, args.n)
    alpha = args.eps / 4
    accuracy = lambda x_adv, labels=y: (predict(model, x_adv).argmax(1) == labels).float().mean().item()

    import torchattacks

    pgd = build("pgd", eps=args.eps, alpha=alpha, steps=args.steps)
    reference_pgd = torchattacks.PGD(model, eps=args.eps, alpha=alpha, steps=args.steps, random_start=True)
    # Warm-up: allocator, cuDNN autotuning, lazy imports.
    input_gradient_passes(model, x[:16], y[:16], 2)
    pgd(model, x[:16], y[:16])
    reference_pgd(x[:16], y[:16])

    rows: list[tuple[str, float | None, str, str]] = []
    floor, _ = timed(lambda: input_gradient_passes(model, x, y, args.steps), run.device, args.repeats)
    rows.append((f"{args.steps} × forward+backward w.r.t. the input (the floor)", floor, "1.00", "—"))
    seconds, x_adv = timed(lambda: pgd(model, x, y), run.device, args.repeats)
    rows.append((f"advlib PGD-{args.steps}", seconds, f"{seconds / floor:.2f} × floor",
                 f"{100 * accuracy(x_adv):.1f} %"))
    seconds, x_adv = timed(lambda: reference_pgd(x, y), run.device, args.repeats)
    rows.append((f"torchattacks PGD-{args.steps}", seconds, f"{seconds / floor:.2f} × floor",
                 f"{100 * accuracy(x_adv):.1f} %"))

    x_aa, y_aa = x[:aa_n], y[:aa_n]
    notes = []
    try:
        from pyautoattack import AutoAttack as ReferenceAutoAttack
    except ImportError:
        ReferenceAutoAttack = None
        notes.append("pyautoattack is not installed: its AutoAttack row is missing.")
    reference_seconds = None
    if ReferenceAutoAttack is not None:
        reference = ReferenceAutoAttack(model, norm="Linf", eps=args.eps, version="standard", device=run.device, seed=0)
        reference.verbose = False
        rng_state = torch.get_rng_state()  # the reference reseeds the global RNG
        reference_seconds, (x_adv, _) = timed(
            lambda: reference.run_standard_evaluation(x_aa, y_aa, batch_size=aa_n), run.device)
        torch.set_rng_state(rng_state)
        rows.append((f"pyautoattack standard ({aa_n} images)", reference_seconds, "1.00",
                     f"{100 * accuracy(x_adv, y_aa):.1f} %"))
    autoattack = build("autoattack", eps=args.eps, version="standard")
    seconds, result = timed(lambda: autoattack.run(model, x_aa, y_aa, batch_size=aa_n), run.device)
    ratio = f"{seconds / reference_seconds:.2f} × pyautoattack" if reference_seconds else "—"
    rows.append((f"advlib AutoAttack standard ({aa_n} images)", seconds, ratio,
                 f"{100 * accuracy(result.x_adv, y_aa):.1f} %"))

    gpu = f" ({torch.cuda.get_device_name(run.device)})" if run.device.type == "cuda" else ""
    print(f"model {args.model}, {args.n} Fashion-MNIST test images, ε = {args.eps * 255:g}/255, α = ε/4, "
          f"device {run.device}{gpu}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
          f"PGD rows: fastest of {args.repeats} runs; "
          f"clean accuracy {100 * accuracy(x):.1f} %\n")
    print("| method | seconds | ratio | robust accuracy |")
    print("|---|---:|---:|---:|")
    for method, seconds, ratio, robust in rows:
        print(f"| {method} | {seconds:.2f} | {ratio} | {robust} |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
