"""The notebooks as committed: no outputs, one parameters cell, all in the table of contents; and
the book build's check for unexecuted cells."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _load_build_module():
    spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toc_files(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["file"]] if "file" in node else []
        return found + [f for value in node.values() for f in _toc_files(value)]
    if isinstance(node, list):
        return [f for item in node for f in _toc_files(item)]
    return []


def test_there_are_notebooks():
    assert NOTEBOOKS and all(nb.name[:2].isdigit() and nb.name[2] == "_" for nb in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_only_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    for name in ("profile", "dataset", "device", "seed", "smoke", "gpus"):
        assert f"{name} =" in tagged[0].source
    assert 'profile = "quick"' in tagged[0].source and "smoke = False" in tagged[0].source
    assert "gpus = 1" in tagged[0].source
    for name in ("smoke", "gpus"):
        assert f"{name}={name}" in code[1].source, "the set-up cell passes every parameter to advlib.setup"
    assert "run.finish()" in code[-1].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_chapter_branches_on_the_profile_name(path):
    """Profiles differ in their settings; a chapter reads sizes from ``run.config`` and never asks
    which profile it runs in (the smoke run would take the wrong branch)."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert 'profile == "quick"' not in cell.source and "profile == 'quick'" not in cell.source


def test_table_of_contents_lists_every_notebook():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = _toc_files(toc)
    assert sorted(f for f in files if f.startswith("notebooks/")) == [f"notebooks/{nb.stem}" for nb in NOTEBOOKS]
    for entry in [toc["root"], *files]:
        assert (ROOT / f"{entry}.md").is_file() or (ROOT / f"{entry}.ipynb").is_file(), entry


def test_book_config_keeps_execution_to_papermill():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True


def test_unexecuted_or_failed_cells_are_detected(tmp_path):
    build = _load_build_module()
    notebook = nbformat.v4.new_notebook()
    ran = nbformat.v4.new_code_cell("1 + 1", execution_count=1)
    skipped = nbformat.v4.new_code_cell("2 + 2")
    failed = nbformat.v4.new_code_cell("1 / 0", execution_count=3)
    failed.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="", traceback=[])]
    notebook.cells = [nbformat.v4.new_markdown_cell("text"), ran, skipped, failed, nbformat.v4.new_code_cell("")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook, path)
    assert build.unexecuted_cells(path) == [2, 3]


def _code(cell) -> str:
    """A code cell's source without IPython magics, ready for ``ast``."""
    return "\n".join(line.replace("%", "pass  #", 1) if line.lstrip().startswith("%") else line
                     for line in cell.source.splitlines())


def _headings(notebook) -> list[str]:
    return [line.strip() for cell in notebook.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.startswith("## ")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_has_the_same_anatomy(path):
    """Title → parameters → set-up → load-or-train → narrative → summary → exercises (with an
    executed, collapsed solution) → references → the wall-time line."""
    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    number = int(path.name[:2])
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# {number}. ")
    code = [cell for cell in cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []) and "advlib.setup(" in code[1].source
    headings = _headings(notebook)
    assert headings[-3:] == ["## Summary", "## Exercises", "## References"], headings[-4:]
    summary = next(i for i, cell in enumerate(cells) if cell.cell_type == "markdown" and "## Summary" in cell.source)
    exercises = next(i for i, cell in enumerate(cells) if cell.cell_type == "markdown"
                     and cell.source.startswith("## Exercises"))
    references = next(i for i, cell in enumerate(cells) if cell.cell_type == "markdown"
                      and cell.source.startswith("## References"))
    assert any("recipes." in cell.source for cell in code if cells.index(cell) < summary), "load-or-train"
    numbered = [line for line in cells[exercises].source.splitlines() if line[:2].rstrip(".").isdigit()]
    assert 3 <= len(numbered) <= 5, "3-5 exercises"
    solutions = [cell for cell in cells[exercises:references] if cell.cell_type == "code"]
    assert solutions and all("hide-cell" in cell.metadata.get("tags", []) for cell in solutions)
    assert all(cell.source.startswith("# Solution to exercise") for cell in solutions)
    assert "run.finish()" in cells[-1].source and cells.index(code[-1]) == len(cells) - 1


def test_no_helper_is_defined_in_two_notebooks():
    """Logic that a second notebook needs belongs in advlib: no function or class is defined in more
    than one chapter."""
    import ast
    seen: dict[str, str] = {}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type != "code":
                continue
            for node in ast.walk(ast.parse(_code(cell))):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    assert node.name not in seen, f"{node.name} is defined in {seen.get(node.name)} and {path.name}"
                    seen[node.name] = path.name


def test_the_repository_is_named_in_one_place(tmp_path, monkeypatch):
    """_config.yml names the repository; every install cell follows it, and --set-repository changes
    both together."""
    import shutil
    build = _load_build_module()
    assert build.install_cells_out_of_date(NOTEBOOKS) == []
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    copies = []
    for path in NOTEBOOKS:
        copies.append(tmp_path / path.name)
        shutil.copy(path, copies[-1])
    monkeypatch.setattr(build, "ROOT", tmp_path)
    build.set_repository("https://github.com/someone/advlib-fork", "dev", copies)
    assert build.repository() == ("https://github.com/someone/advlib-fork", "dev")
    assert build.install_cells_out_of_date(copies) == []
    assert build.install_cells_out_of_date(NOTEBOOKS) == [path.name for path in NOTEBOOKS]
    assert any("advlib-fork@dev" in cell.source for cell in nbformat.read(copies[0], as_version=4).cells)


def test_the_smoke_run_executes_everything_but_the_solutions(tmp_path):
    """The paper smoke run leaves out exercise solutions (the quick book executes them) and nothing else."""
    build = _load_build_module()
    for path in NOTEBOOKS:
        original = nbformat.read(path, as_version=4).cells
        kept = nbformat.read(build.without_solutions(path, tmp_path / path.name), as_version=4).cells
        solutions = [cell for cell in original if cell.source.startswith(build.SOLUTION)]
        assert solutions and [cell.source for cell in kept] == [cell.source for cell in original
                                                                 if cell not in solutions]


def test_executed_chapters_keep_no_widget_state(tmp_path):
    """A page holding ipywidgets' state loads the widget manager from a CDN; the build drops it."""
    build = _load_build_module()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "chapter.ipynb"
    nbformat.write(notebook, path)
    build.prepare_for_the_book(path)
    assert "widgets" not in nbformat.read(path, as_version=4).metadata


@pytest.mark.parametrize("profile, smoke, gpus, expected", [
    ("quick", False, 1, {"profile": "quick"}),
    ("paper", False, 4, {"profile": "paper", "gpus": 4}),
    ("quick", True, 1, {"profile": "paper", "smoke": True}),
    ("quick", True, 2, {"profile": "paper", "smoke": True, "gpus": 2})])
def test_what_the_book_build_gives_every_parameters_cell(profile, smoke, gpus, expected):
    assert _load_build_module().notebook_parameters(profile, smoke, gpus) == expected
