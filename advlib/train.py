"""``python -m advlib.train RECIPE [ARGUMENT ...]``: train one cached artifact of the book, on one
device or, under ``torchrun``, as one of several ranks (:mod:`advlib.distributed`).

    torchrun --standalone --nproc_per_node=4 -m advlib.train at dynat --profile paper
    python -m advlib.train distilled saad --profile paper --dataset cifar100

The recipes are those of :mod:`advlib.recipes` that train (:data:`RECIPES`); a notebook with
``gpus=N`` runs this through :func:`advlib.distributed.train_with_torchrun` for whatever it finds
missing, then loads it from the cache. Arguments of the form ``key=value`` are keyword arguments
(values read as JSON where they parse: ``skips=false``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from . import data, distributed, recipes
from .config import Run, seed_everything, setup

RECIPES: dict[str, Callable[..., Any]] = {
    "classifier": recipes.classifier,
    "purifier-teacher": recipes.purifier_teacher,
    "purifier-student": lambda run, *teachers: recipes.purifier_student(run, tuple(teachers) or ("at", "nt")),
    "soap": recipes.soap_network,
    "nrp": recipes.nrp_purifier,
    "at": recipes.adversarially_trained,
    "distilled": lambda run, method, seed=None: recipes.distilled_student(run, method, None if seed is None
                                                                          else int(seed)),
}


def split_arguments(arguments: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Positional arguments and ``key=value`` keyword arguments (values parsed as JSON where they can be)."""
    positional, keywords = [], {}
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if not equals:
            positional.append(argument)
            continue
        try:
            keywords[key] = json.loads(value)
        except json.JSONDecodeError:
            keywords[key] = value
    return positional, keywords


def run_from_description(description: dict[str, Any], device: torch.device) -> Run:
    """The :class:`~advlib.config.Run` that :func:`advlib.distributed.run_description` described, on
    ``device`` (this rank's), with the process set up as :func:`~advlib.config.setup` sets it up."""
    run = Run(description["profile"], description["dataset"], device, int(description["seed"]),
              description["config"], bool(description["smoke"]), distributed.world_size(),
              bool(description.get("sync_batchnorm", False)))
    seed_everything(run.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return run


def datasets_on_disk(run: Run) -> None:
    """Rank 0 loads (on a fresh machine: downloads) the run's dataset before the other ranks read it,
    so that no two ranks download into the same folder."""
    if distributed.is_main():
        for split in ("train", "test"):
            data.load(run.dataset, split)
    distributed.barrier()


@record
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m advlib.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("arguments", nargs="*", help="the recipe's arguments, e.g. a method name")
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu; under torchrun each rank takes "
                        "GPU LOCAL_RANK (set CUDA_VISIBLE_DEVICES to choose which)")
    parser.add_argument("--smoke", action="store_true", help="the paper profile cut to CI size")
    parser.add_argument("--sync-batchnorm", action="store_true",
                        help="BatchNorm statistics over all ranks' images (CUDA only)")
    parser.add_argument("--run-file", type=Path, help="the whole run, as a notebook with gpus > 1 writes it "
                        "(replaces --profile, --dataset, --seed and --smoke)")
    args = parser.parse_args(argv)
    description = json.loads(args.run_file.read_text()) if args.run_file is not None else None
    device = distributed.init_from_environment(description["device"] if description else args.device)
    try:
        if description is not None:
            run = run_from_description(description, device)
        else:
            run = setup(args.profile, args.dataset, args.device, args.seed, smoke=args.smoke,
                        quiet=not distributed.is_main())
            run.device, run.gpus, run.sync_batchnorm = device, distributed.world_size(), args.sync_batchnorm
        positional, keywords = split_arguments(args.arguments)
        datasets_on_disk(run)
        RECIPES[args.recipe](run, *positional, **keywords)
        distributed.barrier()
    finally:
        if distributed.active():
            distributed.dist.destroy_process_group()


if __name__ == "__main__":
    main()
