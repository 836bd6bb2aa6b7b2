"""Trained artifacts cached by a hash of their configuration and of the code that produced them
("load if present, else train"; chapter 1 introduces it).

* Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a
  killed run never leaves a truncated checkpoint, readable by the group like any other file the
  user writes, and loaded with ``weights_only=True``, so a cache file cannot run code.
* The key of an artifact is its configuration *and* the version of the code of its kind
  (:data:`CODE_VERSIONS`): a change to what a trainer computes bumps the version, and the old
  artifacts are no longer found, never loaded as if they were new.
* Two processes asking for the same artifact (two notebooks, two GPUs sharing a cache) take a file
  lock: one computes, the other waits and then loads.
* An artifact that cannot be read (truncated by a full disk, corrupted) is reported with its name,
  moved aside (``*.corrupt-<time>.pt``) and computed again.
* In a distributed run (:mod:`advlib.distributed`) every rank computes alike, but only rank 0 takes
  the lock, decides whether the artifact is there (the others follow it) and writes it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from filelock import FileLock
from torch import nn

from . import distributed, paths

# Bump the version of a kind when a change alters what it computes (weights, examples, results), so
# that no artifact computed by older code is loaded. The longest matching prefix of a kind counts;
# kinds without one (e.g. the tests' own) are version 0.
CODE_VERSIONS: dict[str, int] = {
    "classifier": 2,               # initial weights drawn from the run's seed alone
    "purifier-pairs": 1,
    "purifier": 4,                 # histories record train_acc_adv on a fixed sample of training pairs
    "at": 3,                       # initial weights drawn from the run's seed alone
    "at-evaluation": 4,            # per-image outcomes (confidence intervals, paired tests)
    "distilled": 3,                # initial weights drawn from the student's seed
    "distillation-evaluation": 4,  # per-image outcomes (confidence intervals, paired tests)
    "autoattack-examples": 1,      # test images in nested random order (recipes.test_set)
    "leaderboard-checklist": 1,    # test images in nested random order (recipes.test_set)
}


# Artifacts computed from trained models (evaluations, adversarial examples, and models trained through
# or distilled from another model) also carry the code versions of those models' kinds: retraining a
# model under new code invalidates what was measured on it or learnt from it.
TRAINED_MODEL_KINDS = ("classifier", "purifier", "at", "distilled")
CODE_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "purifier-pairs": ("classifier",),
    "purifier": ("classifier",),  # the teachers and students are trained through the frozen classifier
    "nrp": ("classifier",),  # NRP is trained on the purifiers' pairs, crafted on the classifier
    "distilled": ("at",),  # chapter 6's TRADES model is the students' teacher
    "at-evaluation": ("at",),
    "distillation-evaluation": ("at", "distilled"),
    "autoattack-examples": TRAINED_MODEL_KINDS,
    "leaderboard-checklist": TRAINED_MODEL_KINDS,
}


def longest_prefix(kind: str, table: dict[str, Any]) -> str | None:
    """The longest key of ``table`` that is ``kind`` or a ``-``-separated prefix of it, if any."""
    matches = [prefix for prefix in table if kind == prefix or kind.startswith(prefix + "-")]
    return max(matches, key=len) if matches else None


def code_version(kind: str) -> int:
    """The version of the code behind ``kind`` (:data:`CODE_VERSIONS`, longest matching prefix)."""
    prefix = longest_prefix(kind, CODE_VERSIONS)
    return 0 if prefix is None else CODE_VERSIONS[prefix]


def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``config`` as canonical JSON (sorted keys)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def artifact_path(kind: str, config: dict[str, Any], root: Path | None = None) -> Path:
    """Where the artifact of ``kind`` for ``config`` lives: the hash covers the configuration, the
    kind's code version and those of the model kinds it is computed from (:data:`CODE_DEPENDENCIES`,
    longest matching prefix as for the versions)."""
    key: dict[str, Any] = {"config": config, "code_version": code_version(kind)}
    dependent = longest_prefix(kind, CODE_DEPENDENCIES)
    if dependent is not None:
        key["model_code_versions"] = {model: code_version(model) for model in CODE_DEPENDENCIES[dependent]}
    return (root or paths.cache_dir()) / f"{kind}-{config_hash(key)}.pt"


def _readable_by_group(path: str) -> None:
    # mkstemp creates files 0600; give the file the permissions the user's umask gives any other file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _atomic_write(path: Path, mode: str, write: Callable[[Any], None]) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it over ``path``: readers
    see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _readable_by_group(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def atomic_write_json(obj: Any, path: Path, sort_keys: bool = False) -> None:
    """Write JSON atomically (results tables, the configuration beside each artifact)."""
    _atomic_write(path, "w", lambda f: f.write(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n"))


_ANNOUNCED: set[Path] = set()
_quiet = False


def _announce_load(kind: str, path: Path) -> None:
    """Say once per process that an artifact came from the cache (recipes load the same classifier
    many times; a page should say so once), unless :func:`quietly` holds it back or this process
    announced computing or training it."""
    if path not in _ANNOUNCED:
        _ANNOUNCED.add(path)
        if not _quiet:
            print(f"loaded {kind} from the cache ({shown_name(path)})")


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Within it, loads from the cache go unsaid (and count as said, so they stay unsaid later in the
    process): for a caller that sums up what it loaded in one line. Training still reports."""
    global _quiet
    before, _quiet = _quiet, True
    try:
        yield
    finally:
        _quiet = before


def shown_name(path: Path) -> str:
    """How the cache names a file in what it prints: relative to advlib's home, never an absolute
    path of the machine (the printout ends up in the rendered book)."""
    try:
        return str(path.relative_to(paths.home()))
    except ValueError:
        return path.name


def load_readable(path: Path, device: torch.device | str, required: tuple[str, ...] = ()) -> Any | None:
    """The artifact at ``path``, or None when there is none; an unreadable one (or one missing a key
    of ``required``) is reported, moved aside and treated as missing."""
    if not path.is_file():
        return None
    try:
        state = load(path, device)
        missing = [key for key in required if key not in state]
        if missing:
            raise KeyError(f"missing {missing}")
        return state
    except Exception as error:  # a truncated zip, a bad pickle, a foreign file: all mean "recompute"
        aside = path.with_name(f"{path.stem}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}.pt")
        os.replace(path, aside)
        print(f"cache: {shown_name(path)} could not be read ({type(error).__name__}: {error}); "
              f"moved it to {aside.name} and computing it again", flush=True)
        return None


def _locked(path: Path) -> contextlib.AbstractContextManager:
    """The artifact's file lock, taken by rank 0 alone in a distributed run (its other ranks wait for
    rank 0 in every collective operation instead; taking the lock too would deadlock them)."""
    return FileLock(path.with_suffix(".lock")) if distributed.is_main() else contextlib.nullcontext()


def load_agreed(path: Path, device: torch.device | str, required: tuple[str, ...] = ()) -> Any | None:
    """:func:`load_readable` on rank 0; the other ranks of a distributed run load the file only where
    rank 0 found it, so that all of them go on to load, or all to compute."""
    state = load_readable(path, device, required) if distributed.is_main() else None
    if not distributed.agree(state is not None):
        return None
    return state if state is not None else load(path, device)


def _written_by_rank_0(path: Path, device: torch.device | str) -> Any | None:
    """On the other ranks of a distributed run, what rank 0 has just written to ``path`` (their own
    results differ: BatchNorm statistics and random starts are per rank), so that a model trained on
    the way to another (a teacher, a classifier) is the cached one on every rank; None on rank 0 and
    on a single process, which keep their own."""
    if not distributed.active():
        return None
    distributed.barrier()
    return None if distributed.is_main() else load(path, device)


def load_or_compute(kind: str, config: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]],
                    root: Path | None = None, verbose: bool = True) -> dict[str, torch.Tensor]:
    """Tensors cached under ``config`` (e.g. a precomputed adversarial training set, a results row)."""
    path = artifact_path(kind, config, root)
    verbose = verbose and distributed.is_main()
    with _locked(path):
        tensors = load_agreed(path, "cpu")
        if tensors is not None:
            if verbose:
                _announce_load(kind, path)
            return tensors
        if verbose:
            print(f"computing {kind} (to be cached as {shown_name(path)})")
            _ANNOUNCED.add(path)  # said once: a later load in this process needs no "loaded" line
        tensors = compute()
        if distributed.is_main():
            atomic_save(tensors, path)
        reloaded = _written_by_rank_0(path, "cpu")
        return tensors if reloaded is None else reloaded


def load_or_train(kind: str, config: dict[str, Any], model: nn.Module | Callable[[bool], nn.Module],
                  train: Callable[[nn.Module, Path], list[dict[str, Any]]],
                  root: Path | None = None, verbose: bool = True, launch: Callable[[], None] | None = None
                  ) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Fill ``model`` with the cached weights for ``config``, or train it and cache the result.

    ``model`` may instead be a function ``build(initialise)`` that returns the network: it is then
    built with initial weights only when it is to be trained, and with empty ones when the cached
    weights are about to replace them (drawing WRN-34-10's initial weights takes longer on two CPU
    cores than loading its checkpoint).

    ``train(model, checkpoint_path)`` trains in place and returns the per-epoch history; it is
    expected to save its progress to ``checkpoint_path`` and resume from it (see
    :func:`advlib.training.fit`), so an interrupted run picks up where it stopped. ``launch``, where
    given, is called first when the artifact is missing, to train it in other processes
    (:func:`advlib.distributed.launcher`); it is then loaded like any cached artifact.
    """
    path = artifact_path(kind, config, root)
    if launch is not None and not path.is_file():
        launch()
        if not path.is_file():
            raise RuntimeError(f"torchrun finished without writing {kind} to {shown_name(path)}: its processes "
                               "see another advlib home (ADVLIB_HOME) or another configuration")
    verbose = verbose and distributed.is_main()
    build = model if callable(model) and not isinstance(model, nn.Module) else None
    with _locked(path):
        loaded = build(False) if build else model
        state = load_agreed(path, next(loaded.parameters()).device, required=("model", "history"))
        if state is not None:
            loaded.load_state_dict(state["model"])
            if verbose:
                _announce_load(kind, path)
            return loaded, state["history"]
        checkpoint = path.with_suffix(".partial.pt")
        if verbose:
            resuming = ", resuming from its last finished epoch" if checkpoint.is_file() else ""
            print(f"training {kind}{resuming} (to be cached as {shown_name(path)})")
            _ANNOUNCED.add(path)
        del loaded  # an empty network's memory is not held through the training
        model = build(True) if build else model
        history = train(model, checkpoint)
        if distributed.is_main():
            atomic_save({"model": model.state_dict(), "history": history, "config": config}, path)
            atomic_write_json(config, path.with_suffix(".json"), sort_keys=True)
            checkpoint.unlink(missing_ok=True)
        state = _written_by_rank_0(path, next(model.parameters()).device)
        if state is not None:
            model.load_state_dict(state["model"])
            history = state["history"]
        return model, history
