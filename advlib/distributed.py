"""Training on several GPUs with the engine PyTorch ships: ``torchrun`` starts one process (a *rank*)
per GPU, :mod:`torch.distributed` connects them, and DistributedDataParallel averages their
gradients after every backward pass (chapter 1, "Training on several GPUs").

A run with ``gpus=N`` trains a missing artifact by launching ``torchrun --nproc_per_node=N -m
advlib.train ...`` (:func:`launcher`) and then loads it from the cache as a one-GPU run does. Inside
the ranks, :func:`advlib.training.fit` splits every batch between them, and only rank 0 takes the
cache's file lock and writes checkpoints, artifacts and logs. Every helper here is the identity on a
single process, so nothing changes for a run without ``torchrun``.
"""
from __future__ import annotations

import datetime
import json
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

# An epoch's held-out evaluation runs on rank 0 while the others wait at the next collective; the
# default timeout (10 minutes for NCCL) is shorter than a paper-profile evaluation can take.
_TIMEOUT = datetime.timedelta(hours=3)


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one that writes files and prints (also true on a single process)."""
    return rank() == 0


def init_from_environment(device: str = "auto") -> torch.device:
    """This rank's device, after joining the process group that ``torchrun`` describes in the
    environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``): NCCL over the GPUs, each rank on
    ``cuda:LOCAL_RANK``, or gloo on the CPU. Without ``torchrun`` the device ``device`` resolves to."""
    from .config import resolve_device

    resolved = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return resolved
    if resolved.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                               "ask torchrun for at most that many processes (--nproc_per_node)")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", timeout=_TIMEOUT)
    return resolved


def agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (for a decision all ranks must take alike)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (a new tensor; ``tensor`` itself on one process)."""
    if not active():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def average_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor averaged over the ranks: a gradient of a shard's mean loss becomes the gradient of
    the whole batch's mean, as DDP does for the training loss (AWP's weight perturbation needs it)."""
    if not active():
        return tensors
    averaged = []
    for tensor in tensors:
        total = tensor.clone()
        dist.all_reduce(total)
        averaged.append(total / world_size())
    return averaged


class TrainingStep(nn.Module):
    """One training step's loss as a module, so that DistributedDataParallel sees every forward pass
    of the step (an attack's, a guide's, the target's) inside its own forward and can average the
    gradients of the one backward pass that follows. The trainer is held outside the module's
    registry: its networks (a frozen teacher, AWP's proxy) are not trained."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.__dict__["loss_fn"] = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor, epoch: int, *paired: torch.Tensor) -> Any:
        return self.loss_fn(self.model, x, y, epoch, *paired)


def data_parallel(model: nn.Module, loss_fn: Callable[..., Any], sync_batchnorm: bool = False
                  ) -> Callable[..., Any]:
    """The step ``(x, y, epoch, *paired) -> (loss, logits)`` for this rank: ``loss_fn`` on ``model``
    wrapped in DistributedDataParallel, which starts every rank from rank 0's weights and averages
    the gradients. BatchNorm keeps statistics per rank unless
    ``sync_batchnorm``, which computes them over the whole batch (CUDA only, as PyTorch's
    SyncBatchNorm is). On one process, ``loss_fn`` on ``model`` itself."""
    if not active():
        if sync_batchnorm:
            raise ValueError("sync_batchnorm needs several ranks (torchrun with gpus > 1); one process has "
                             "nothing to synchronise")
        return lambda *batch: loss_fn(model, *batch)
    device = next(model.parameters()).device
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError("sync_batchnorm needs CUDA GPUs (PyTorch's SyncBatchNorm runs only there); on the "
                             "CPU leave it False and BatchNorm keeps its statistics per rank")
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        TrainingStep(model, loss_fn), device_ids=[device.index] if device.type == "cuda" else None,
        **_per_rank_buffers())


def _per_rank_buffers() -> dict[str, bool]:
    """DDP's option that leaves BatchNorm's statistics per rank: ``forward_sync_buffers`` from torch
    2.13 (where ``broadcast_buffers`` is deprecated), ``broadcast_buffers`` before."""
    parameters = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers": False}


def launcher(run: Any, recipe: str, *arguments: Any) -> Callable[[], None] | None:
    """What trains ``recipe`` (a name of :data:`advlib.train.RECIPES`) with ``arguments`` on
    ``run.gpus`` GPUs, or None where the current process trains it itself (one GPU, or already a
    rank of a ``torchrun`` group)."""
    if run.gpus <= 1 or active():
        return None
    return lambda: train_with_torchrun(run, recipe, *arguments)


def torchrun_command(gpus: int, recipe: str, arguments: tuple[Any, ...], run_file: Path) -> list[str]:
    """``torchrun --nproc_per_node=gpus -m advlib.train recipe arguments --run-file run_file``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "advlib.train", recipe, *map(str, arguments), "--run-file", str(run_file)]


def train_with_torchrun(run: Any, recipe: str, *arguments: Any) -> None:
    """Train ``recipe`` in ``run.gpus`` processes started by ``torchrun`` (which write it to the
    cache) and wait for them. The run's whole configuration travels in a file, so the processes
    train exactly what this one would have. Their output goes to a log file in the cache folder
    (named at the start, shown collapsed at the end); a failure raises with the failing rank's
    traceback, and an interrupt (Jupyter's stop button) stops every process of the group."""
    from .cache import shown_name
    from .config import show_log
    from .paths import cache_dir

    name = " ".join([recipe, *map(str, arguments)])
    ranks = f"{run.gpus} {'GPUs' if run.device.type == 'cuda' else 'CPU processes'}"
    log = cache_dir() / "logs" / f"torchrun-{'-'.join(name.split())}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"training {name} on {ranks} with torchrun (log: {shown_name(log)})", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="advlib-run-") as folder, open(log, "w") as output:
        run_file = Path(folder) / "run.json"
        run_file.write_text(json.dumps(run_description(run)))
        group = subprocess.Popen(torchrun_command(run.gpus, recipe, arguments, run_file), stdout=output,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", "ADVLIB_PROGRESS": "0"})
        try:
            returncode = group.wait()
        except BaseException:
            stop_group(group)
            raise
    lines = log.read_text().splitlines()
    if returncode != 0:
        raise RuntimeError(f"training {name} on {ranks} with torchrun failed (exit code {returncode}); "
                           f"from its log ({shown_name(log)}):\n" + "\n".join(failure_excerpt(lines)))
    show_log(f"trained {name} on {ranks} with torchrun in {time.time() - started:.0f} s", lines,
             title="torchrun log")


def stop_group(group: subprocess.Popen, grace_seconds: float = 30) -> None:
    """Stop torchrun and its ranks (one process group): SIGTERM, which torchrun passes on to the
    ranks, then SIGKILL after ``grace_seconds``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group.pid, sig)
            group.wait(timeout=grace_seconds)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def failure_excerpt(lines: list[str], length: int = 40) -> list[str]:
    """The first traceback in a torchrun log (the rank that failed first), else the log's end."""
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            return lines[i:i + length]
    return lines[-length:]


def run_description(run: Any) -> dict[str, Any]:
    """What :func:`advlib.train.run_from_description` rebuilds ``run`` from in another process."""
    return {"profile": run.profile, "dataset": run.dataset, "seed": run.seed, "config": run.config,
            "smoke": run.smoke, "device": run.device.type, "sync_batchnorm": run.sync_batchnorm}
