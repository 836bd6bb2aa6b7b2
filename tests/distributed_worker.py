"""One training for tests/test_distributed.py, run by ``torchrun`` as one of several ranks or as a
plain single process: tiny networks on 64 random images, trained through the artifact cache.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py \
        ROOT TRAINER... [--epochs N] [--slow]

writes one artifact per trainer under ROOT/TRAINER (rank 0 only) and, with ``--slow``, sleeps after
every step so that a test can kill the run mid-training."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from advlib import cache, data, defenses, distributed
from advlib.training import Hooks, fit

# name -> (registered trainer, its options, weight averaging). ε = 0 makes every attack return the
# clean images, so the result does not depend on the random starts (each rank draws its own) and two
# ranks can be compared with one process exactly; "batchnorm" trains a network with BatchNorm, whose
# statistics differ by rank.
TRAINERS = {
    "standard": ("standard", {}, None),
    "batchnorm": ("standard", {}, None),
    "swa": ("standard", {}, {"kind": "swa", "start": 0.3}),
    "trades_awp": ("trades_awp", {"eps": 0.0, "alpha": 0.0, "steps": 1, "awp_gamma": 0.01, "awp_from_epoch": 1},
                   None),
    "dynat": ("dynat", {"eps": 0.0, "alpha": 0.0, "steps": 1}, None),
}


def tiny_network(seed: int, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4) if batchnorm else nn.Identity(), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 4))


def training_set() -> data.ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return data.ImageSet(images, torch.randint(0, 4, (64,), generator=generator), data.info("fashion-mnist"))


class CountingImages:
    """``trainer``, counting the images this rank trains on."""

    def __init__(self, trainer: object) -> None:
        self.trainer, self.images = trainer, 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> object:
        self.images += len(y)
        return self.trainer(model, x, y, epoch)

    def __getattr__(self, name: str) -> object:
        return getattr(self.trainer, name)


class Slow(Hooks):
    def after_step(self, model: nn.Module, epoch: int) -> None:
        time.sleep(0.2)


def train(name: str, root: Path, epochs: int = 3, slow: bool = False, device: str = "cpu") -> None:
    """Train the tiny network (DYNAT: a guide and a target) as ``name`` of :data:`TRAINERS` says,
    through the cache, and write how many images this rank trained on to
    ``root/name/images-rank<rank>`` and the sum of the weights it ended with to
    ``root/name/weights-rank<rank>``."""
    trainer, options, averaging = TRAINERS[name]
    if trainer == "dynat":
        model: nn.Module = defenses.dynat.GuideAndTarget(tiny_network(1), tiny_network(2))
    else:
        model = tiny_network(1, batchnorm=name == "batchnorm")
    loss_fn = CountingImages(defenses.build(trainer, **options, seed=0))
    loader = data.TensorLoader(training_set(), 16, shuffle=True, augment=True, drop_last=True, device=device, seed=0)

    def train_model(model: nn.Module, checkpoint: Path) -> list[dict]:
        return fit(model, loader, epochs=epochs, loss_fn=loss_fn, checkpoint=checkpoint,
                   optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                   schedule={"interpolate": "step", "points": [[0.0, 1.0], [0.5, 0.1]]},
                   callbacks=[Slow()] if slow else (), averaging=averaging)

    cache.load_or_train("test-distributed", {"trainer": name, "epochs": epochs}, model, train_model,
                        root=root / name, verbose=False)
    (root / name / f"images-rank{distributed.rank()}").write_text(str(loss_fn.images))
    total = sum(float(value.double().sum()) for value in model.state_dict().values())
    (root / name / f"weights-rank{distributed.rank()}").write_text(repr(total))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("trainers", nargs="+", choices=sorted(TRAINERS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--slow", action="store_true")
    args = parser.parse_args()
    device = distributed.init_from_environment("cpu")
    for trainer in args.trainers:
        train(trainer, args.root, args.epochs, args.slow, device)
    distributed.dist.destroy_process_group()


if __name__ == "__main__":
    main()
