"""Where advlib keeps downloaded data, cached artifacts and results tables.

Everything lives under one folder: ``$ADVLIB_HOME`` if set, else ``_build/`` of the source checkout
(an editable install, as ``make`` makes), else ``~/.cache/advlib`` (a pip install, e.g. on Colab).
``$ADVLIB_DATA`` moves the data alone, so one download serves several checkouts.
"""
from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def home() -> Path:
    if os.environ.get("ADVLIB_HOME"):
        return Path(os.environ["ADVLIB_HOME"]).expanduser()
    if (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT / "_build"
    return Path.home() / ".cache" / "advlib"


def data_dir() -> Path:
    if os.environ.get("ADVLIB_DATA"):
        return Path(os.environ["ADVLIB_DATA"]).expanduser()
    return home() / "data"


def cache_dir() -> Path:
    """Trained models, keyed by a hash of their configuration (see :mod:`advlib.cache`)."""
    return home() / "cache"


def results_dir(profile: str, dataset: str) -> Path:
    """JSON tables of one profile and dataset: ``_build/results/<profile>-<dataset>/``."""
    return home() / "results" / f"{profile}-{dataset}"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source checkout advlib runs from, or None (a pip install, no git)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_CHECKOUT, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
