"""Build the book: execute every notebook with papermill, check it, then run Jupyter Book.

The sources are never modified: notebooks execute into ``_build/book/notebooks/`` next to a copy
of ``_config.yml``, ``_toc.yml`` and ``book/``, and Jupyter Book (``execute_notebooks: "off"``)
renders that copy into ``_build/html``. The build fails if a notebook raised, or if any code cell
was left unexecuted.

``--chapters 06 08`` executes only those chapters (earlier executed chapters stay in the stage; the
HTML is built once every chapter is there), so several GPUs can each take chapters; ``--gpus N``
instead trains each missing model on N GPUs at once (torchrun, :mod:`advlib.distributed`). The quick
profile gives each cell ``--timeout`` seconds (30 minutes by default); the paper profile, whose
trainings take hours to days per cell, has no cell timeout unless one is asked for.

``--smoke`` executes every chapter in the paper profile cut to CI size
(:data:`advlib.config.PAPER_SMOKE_OVERRIDES`) on synthetic CIFAR-format data, in a home of its own
(``_build/paper-smoke/``: data, cache, results and executed notebooks), and builds no HTML.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill
import yaml

ROOT = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT = 1800
# The smoke run's synthetic CIFAR stand-ins: enough training images for the largest smoke subset
# (the classifier's) and a test set the size of the largest evaluation subset.
SMOKE_DATA = {"n_train": 1200, "n_test": 64}


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


def prepare_for_the_book(path: Path) -> None:
    """Tag the cell papermill injects with ``remove-cell`` (the banner already names the profile) and
    drop the widgets' saved state: widgets only work in a live kernel (their cells are removed
    from the book), and a page holding their state loads the widget manager from a CDN."""
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(notebook, path)


SOLUTION = "# Solution to exercise"


def without_solutions(notebook: Path, target: Path) -> Path:
    """A copy of ``notebook`` at ``target`` without its exercise solutions. The smoke run executes it:
    solutions call nothing that only the paper profile reaches, and the quick book executes them."""
    source = nbformat.read(notebook, as_version=4)
    source.cells = [cell for cell in source.cells
                    if not (cell.cell_type == "code" and cell.source.lstrip().startswith(SOLUTION))]
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(source, target)
    return target


def execute(notebook: Path, target: Path, parameters: dict, timeout: int | None) -> None:
    started = time.time()
    print(f"executing {notebook.name} ({', '.join(f'{k}={v}' for k, v in parameters.items())})",
          flush=True)
    papermill.execute_notebook(str(notebook), str(target), parameters=parameters, kernel_name="python3",
                               cwd=str(target.parent), execution_timeout=timeout, progress_bar=False)
    prepare_for_the_book(target)
    bad = unexecuted_cells(target)
    if bad:
        raise SystemExit(f"{notebook.name}: code cells {bad} did not execute cleanly (see {target})")
    print(f"  done in {time.time() - started:.0f} s", flush=True)


INSTALL = '%pip install --quiet "advlib @ git+{url}@{branch}"'
INSTALL_LINE = re.compile(r'%pip install --quiet "advlib @ git\+(?P<url>[^@"]+)@(?P<branch>[^"]+)"')


def repository() -> tuple[str, str]:
    """The repository URL and branch, from ``_config.yml`` (the one place that names them)."""
    settings = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return settings["url"], settings["branch"]


def install_cells_out_of_date(notebooks: list[Path]) -> list[str]:
    """Notebooks whose install cell names another repository or branch than ``_config.yml``."""
    url, branch = repository()
    stale = []
    for notebook in notebooks:
        sources = [cell.source for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code"]
        found = [(m["url"], m["branch"]) for source in sources for m in INSTALL_LINE.finditer(source)]
        if not found or any(match != (url, branch) for match in found):
            stale.append(notebook.name)
    return stale


def set_repository(url: str, branch: str, notebooks: list[Path]) -> None:
    """Name another repository: rewrite ``_config.yml``'s ``repository`` and every install cell."""
    config = ROOT / "_config.yml"
    text = re.sub(r"(?m)^(repository:\n  url: ).*\n  branch: .*$", rf"\g<1>{url}\n  branch: {branch}",
                  config.read_text())
    config.write_text(text)
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.source = INSTALL_LINE.sub(lambda _: INSTALL.format(url=url, branch=branch), cell.source)
        nbformat.write(notebook, path)


MEASURED_MARKER = "<!-- measured-results -->"


def measured_results(results: Path) -> str:
    """The landing page's table: each paper's headline claim (numbers from :mod:`advlib.papers`) next
    to what the chapters measured, read from the results files in ``results``."""
    from advlib import papers

    def load(name: str) -> list | dict | None:
        path = results / f"{name}.json"
        return json.loads(path.read_text())["results"] if path.is_file() else None

    def pct(value: float | None) -> str:
        return "—" if value is None or value != value else f"{100 * value:.1f} %"

    lines = ["| paper | claim | this build measured |", "| --- | --- | --- |"]
    if table2 := load("purification_table2"):
        paper, row = papers.PURIFICATION_TABLE2, table2["PGD8"]
        lines.append(
            f"| Koo et al. 2023 | the student of both teachers purifies best (PGD8, gray-box: "
            f"{paper['KD from AT and NT']['PGD8']:.2f} % against {paper['KD from NT']['PGD8']:.2f} % for the best "
            f"single-teacher student) | {row['KD from AT and NT']:.1f} % against "
            f"{max(row['KD from AT'], row['KD from NT']):.1f} % |")
    if distillation := load("distillation"):
        by_label = {row["method"]: row for row in distillation}
        best = max((row for label, row in by_label.items()
                    if label not in ("Teacher", "SAAD", "Standard student (no teacher)")), key=lambda row: row["AA"])
        lines.append(f"| Lee & Chung 2026 (SAAD) | SAAD improves AutoAttack accuracy over earlier adversarial "
                     f"distillation | SAAD {pct(by_label['SAAD']['AA'])} against {pct(best['AA'])} for "
                     f"{best['method']} ({by_label['SAAD']['aa_images']} images) |")
    if at := load("at_dynat"):
        paper = papers.DYNAT_TABLE1
        ours = {row["method"]: row for row in at if row.get("source") == "this run"}
        inner = "DYNAT-Inner-AWP (β = 1)"
        lines.append(
            f"| Liu et al. 2024 (DYNAT) | DYNAT is more accurate on clean images than PGD-AT "
            f"({paper['DYNAT']['clean']:.2f} % against {paper['PGD-AT']['clean']:.2f} %); {inner} has the best "
            f"AutoAttack accuracy ({paper[inner]['AA']:.2f} %) | clean {pct(ours['DYNAT']['clean'])} against "
            f"{pct(ours['PGD-AT']['clean'])}; AutoAttack {pct(ours[inner]['AA'])} against the best other "
            f"{pct(max(row['AA'] for label, row in ours.items() if label != inner))} |")
    return "\n".join(lines) if len(lines) > 2 else "(No chapter has written its results yet.)"


def names_chapter(notebook: Path, chapter: str) -> bool:
    """``chapter`` is the notebook's number (``6`` or ``06``), its stem or its file name."""
    return chapter in (notebook.name, notebook.stem) or notebook.name.split("_")[0] == chapter.zfill(2)


def select(notebooks: list[Path], chapters: list[str] | None) -> list[Path]:
    """The notebooks named by ``chapters``, in book order; all of them without ``chapters``."""
    if not chapters:
        return notebooks
    unknown = [c for c in chapters if not any(names_chapter(nb, c) for nb in notebooks)]
    if unknown:
        raise SystemExit(f"no chapter {', '.join(unknown)}; chapters: {', '.join(nb.stem for nb in notebooks)}")
    return [nb for nb in notebooks if any(names_chapter(nb, c) for c in chapters)]


def prepare_smoke_home() -> Path:
    """``_build/paper-smoke/`` as advlib's home, with synthetic CIFAR-10 and CIFAR-100 written in the
    archives' on-disk format into its data folder and random weights in the shape of VGG-16's first
    layers in its torch hub cache, where NRP looks for the ImageNet ones (no network)."""
    from advlib import data
    from advlib.defenses import nrp

    home = ROOT / "_build" / "paper-smoke"
    os.environ["ADVLIB_HOME"] = str(home)
    os.environ.pop("ADVLIB_DATA", None)
    for name in ("cifar10", "cifar100"):
        data.write_synthetic_cifar(home / "data", name, **SMOKE_DATA)
    os.environ["TORCH_HOME"] = str(home / "torch")  # NRP's VGG-16: random stand-in weights, no download
    if not nrp.vgg16_weights_path().exists():
        nrp.write_stand_in_vgg16_weights()
    return home


def notebook_parameters(profile: str, smoke: bool, gpus: int) -> dict:
    """What papermill gives every notebook's parameters cell: the profile (the paper profile for the
    smoke run, with ``smoke``) and, where more than one, the GPUs to train on."""
    parameters: dict = {"profile": "paper", "smoke": True} if smoke else {"profile": profile}
    if gpus != 1:
        parameters["gpus"] = gpus
    return parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    parser.add_argument("--smoke", action="store_true", help="the paper profile cut to CI size, no HTML")
    parser.add_argument("--timeout", type=int, default=None,
                        help=f"seconds allowed per cell (default: {QUICK_TIMEOUT} in the quick profile, none otherwise)")
    parser.add_argument("--chapters", nargs="*", help="execute only these chapters, e.g. 06 08")
    parser.add_argument("--gpus", type=int, default=1, help="train what is not cached on this many GPUs, each "
                        "model by one torchrun group (the notebooks' gpus parameter)")
    parser.add_argument("--set-repository", metavar="URL", help="name the book's repository (_config.yml and the "
                        "notebooks' install cells) and exit")
    parser.add_argument("--branch", default="main", help="the branch for --set-repository")
    args = parser.parse_args()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.set_repository:
        set_repository(args.set_repository, args.branch, notebooks)
        print(f"repository set to {args.set_repository}@{args.branch}")
        return
    stale = install_cells_out_of_date(notebooks)
    if stale:
        raise SystemExit(f"the install cell of {', '.join(stale)} does not name _config.yml's repository; run "
                         "python book/build.py --set-repository URL --branch BRANCH")

    os.environ["ADVLIB_PROGRESS"] = "0"  # progress bars are noise in a rendered page
    parameters = notebook_parameters(args.profile, args.smoke, args.gpus)
    stage = prepare_smoke_home() / "notebooks" if args.smoke else ROOT / "_build" / "book"
    timeout = args.timeout if args.timeout is not None else (QUICK_TIMEOUT if args.profile == "quick" and not
                                                              args.smoke else None)
    chosen = select(notebooks, args.chapters)
    if stage.exists() and not args.chapters:
        shutil.rmtree(stage)
    executed = stage if args.smoke else stage / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        for name in ("_config.yml", "_toc.yml"):
            shutil.copy2(ROOT / name, stage / name)
        shutil.rmtree(stage / "book", ignore_errors=True)
        shutil.copytree(ROOT / "book", stage / "book", ignore=shutil.ignore_patterns("build.py", "__pycache__"))

    started = time.time()
    for notebook in chosen:
        source = without_solutions(notebook, stage.parent / "sources" / notebook.name) if args.smoke else notebook
        execute(source, executed / notebook.name, parameters, timeout)
    print(f"executed {len(chosen)} chapter(s) in {time.time() - started:.0f} s", flush=True)
    if args.smoke:
        return
    missing = [nb.name for nb in notebooks if not (executed / nb.name).is_file()]
    if missing:
        print(f"not building the HTML yet: chapters {', '.join(missing)} have not been executed in this stage")
        return
    from advlib import config, paths

    dataset = config.PROFILES[args.profile]["dataset"]
    intro = stage / "book" / "intro.md"
    intro.write_text(intro.read_text().replace(MEASURED_MARKER,
                                               measured_results(paths.results_dir(args.profile, dataset))))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jupyter_book), "build", str(stage), "--path-output", str(ROOT), "--warningiserror",
                    "--keep-going"], check=True)
    print(f"\nThe book is at {(ROOT / '_build' / 'html' / 'index.html').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
