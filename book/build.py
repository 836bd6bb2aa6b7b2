"""Build the book: execute every notebook with papermill, check it, then run Jupyter Book.

The sources are never modified: notebooks execute into ``_build/book/notebooks/`` next to a copy
of ``_config.yml``, ``_toc.yml`` and ``book/``, and Jupyter Book (``execute_notebooks: "off"``)
renders that copy into ``_build/html``. The build fails if a notebook raised, or if any code cell
was left unexecuted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "_build" / "book"


def unexecuted_cells(path: Path) -> list[int]:
    """Indices of code cells that carry no execution count, or an error output."""
    notebook = nbformat.read(path, as_version=4)
    bad = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if cell.get("execution_count") is None or any(o.get("output_type") == "error" for o in cell.outputs):
            bad.append(i)
    return bad


def hide_injected_parameters(path: Path) -> None:
    """Tag the cell papermill injects with ``remove-cell``: the banner already names the profile."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(notebook, path)


def execute(notebook: Path, profile: str, timeout: int) -> Path:
    target = STAGE / "notebooks" / notebook.name
    started = time.time()
    print(f"executing {notebook.relative_to(ROOT)} (profile {profile})", flush=True)
    papermill.execute_notebook(str(notebook), str(target), parameters={"profile": profile}, kernel_name="python3",
                               cwd=str(target.parent), execution_timeout=timeout, progress_bar=False)
    hide_injected_parameters(target)
    bad = unexecuted_cells(target)
    if bad:
        raise SystemExit(f"{notebook.name}: code cells {bad} did not execute cleanly")
    print(f"  done in {time.time() - started:.0f} s", flush=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    parser.add_argument("--only", nargs="*", help="execute only these notebooks (by file name)")
    args = parser.parse_args()

    os.environ["ADVLIB_PROGRESS"] = "0"  # progress bars are noise in a rendered page
    if STAGE.exists():
        shutil.rmtree(STAGE)
    (STAGE / "notebooks").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, STAGE / name)
    shutil.copytree(ROOT / "book", STAGE / "book", ignore=shutil.ignore_patterns("build.py", "__pycache__"))

    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name in args.only or nb.stem in args.only]
    for notebook in notebooks:
        execute(notebook, args.profile, args.timeout)

    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jupyter_book), "build", str(STAGE), "--path-output", str(ROOT), "--warningiserror",
                    "--keep-going"], check=True)
    print(f"\nThe book is at {ROOT / '_build' / 'html' / 'index.html'}")


if __name__ == "__main__":
    main()
