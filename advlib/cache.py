"""Trained artifacts cached by a hash of their configuration ("load if present, else train").

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a
killed run never leaves a truncated checkpoint, and loaded with ``weights_only=True``, so a
cache file cannot run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import paths


def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``config`` as canonical JSON (sorted keys)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def artifact_path(kind: str, config: dict[str, Any], root: Path | None = None) -> Path:
    return (root or paths.cache_dir()) / f"{kind}-{config_hash(config)}.pt"


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


def load_or_compute(kind: str, config: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]],
                    root: Path | None = None, verbose: bool = True) -> dict[str, torch.Tensor]:
    """Tensors cached under ``config`` (e.g. a precomputed adversarial training set)."""
    path = artifact_path(kind, config, root)
    if path.is_file():
        if verbose:
            print(f"loaded {kind} from cache: {path}")
        return load(path)
    if verbose:
        print(f"computing {kind}; will be cached at {path}")
    tensors = compute()
    atomic_save(tensors, path)
    return tensors


def load_or_train(kind: str, config: dict[str, Any], model: nn.Module,
                  train: Callable[[nn.Module, Path], list[dict[str, Any]]],
                  root: Path | None = None, verbose: bool = True) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Fill ``model`` with the cached weights for ``config``, or train it and cache the result.

    ``train(model, checkpoint_path)`` trains in place and returns the per-epoch history; it is
    expected to save its progress to ``checkpoint_path`` and resume from it (see
    :func:`advlib.training.fit`), so an interrupted run picks up where it stopped.
    """
    path = artifact_path(kind, config, root)
    if path.is_file():
        state = load(path, next(model.parameters()).device)
        model.load_state_dict(state["model"])
        if verbose:
            print(f"loaded {kind} from cache: {path}")
        return model, state["history"]
    checkpoint = path.with_suffix(".partial.pt")
    if verbose:
        resuming = " (resuming)" if checkpoint.is_file() else ""
        print(f"training {kind}{resuming}; will be cached at {path}")
    history = train(model, checkpoint)
    atomic_save({"model": model.state_dict(), "history": history, "config": config}, path)
    atomic_write_json(config, path.with_suffix(".json"), sort_keys=True)
    checkpoint.unlink(missing_ok=True)
    return model, history
