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
    for name in ("profile", "dataset", "device", "seed", "smoke"):
        assert f"{name} =" in tagged[0].source
    assert 'profile = "quick"' in tagged[0].source and "smoke = False" in tagged[0].source
    assert "smoke=smoke" in code[1].source, "the set-up cell passes every parameter to advlib.setup"
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
