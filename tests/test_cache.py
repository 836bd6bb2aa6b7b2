"""The artifact cache as a shared resource: keyed by code version, safe under concurrency, robust to
corrupted files, group-readable, never the book's cache in tests; results carry provenance."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import torch

from advlib import cache, config, paths

from conftest import BOOK_CACHE


def _toy_train(calls: list[int]):
    def train(model, checkpoint):
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(float(len(calls)))
        return [{"epoch": 1}]

    return train


def test_a_new_code_version_is_never_served_an_old_artifact(tmp_path, monkeypatch):
    config_ = {"lr": 0.1}
    calls: list[int] = []
    cache.load_or_train("toy-kind", config_, torch.nn.Linear(2, 2), _toy_train(calls), root=tmp_path, verbose=False)
    cache.load_or_train("toy-kind", config_, torch.nn.Linear(2, 2), _toy_train(calls), root=tmp_path, verbose=False)
    assert len(calls) == 1, "the same code loads"
    monkeypatch.setitem(cache.CODE_VERSIONS, "toy", 7)
    assert cache.code_version("toy-kind") == 7 and cache.code_version("toyish") == 0
    model, _ = cache.load_or_train("toy-kind", config_, torch.nn.Linear(2, 2), _toy_train(calls), root=tmp_path,
                                   verbose=False)
    assert len(calls) == 2 and model.weight[0, 0].item() == 2.0, "changed code recomputes"


def test_a_retrained_model_is_never_served_old_results(tmp_path, monkeypatch):
    """An evaluation is keyed by the model's configuration; a new code version of the model's kind
    (the model is retrained) must also move the evaluation's key, or its numbers describe the old model."""
    before = cache.artifact_path("distillation-evaluation", {"model": "saad"}, tmp_path)
    examples = cache.artifact_path("autoattack-examples", {"model": "saad"}, tmp_path)
    unrelated = cache.artifact_path("classifier", {"a": 1}, tmp_path)
    monkeypatch.setitem(cache.CODE_VERSIONS, "distilled", cache.CODE_VERSIONS["distilled"] + 1)
    assert cache.artifact_path("distillation-evaluation", {"model": "saad"}, tmp_path) != before
    assert cache.artifact_path("autoattack-examples", {"model": "saad"}, tmp_path) != examples
    assert cache.artifact_path("classifier", {"a": 1}, tmp_path) == unrelated, "a model's own key is its own"
    student = cache.artifact_path("distilled-saad", {"a": 1}, tmp_path)
    monkeypatch.setitem(cache.CODE_VERSIONS, "at", cache.CODE_VERSIONS["at"] + 1)
    assert cache.artifact_path("distilled-saad", {"a": 1}, tmp_path) != student, "a new teacher retrains the students"
    for kind, models in cache.CODE_DEPENDENCIES.items():
        assert all(cache.code_version(model) >= 1 for model in models), kind


def test_every_kind_the_book_caches_has_a_code_version():
    for kind in ("classifier", "purifier-pairs", "purifier-teacher-nt", "purifier-student-at-nt", "at-dynat_awp",
                 "at-evaluation", "distilled-saad", "distillation-evaluation"):
        assert cache.code_version(kind) >= 1, kind
    assert cache.code_version("at-evaluation") == cache.CODE_VERSIONS["at-evaluation"], "the longest prefix wins"


def test_a_corrupted_artifact_is_reported_moved_aside_and_recomputed(tmp_path, capsys):
    calls: list[int] = []
    cache.load_or_train("toy", {}, torch.nn.Linear(2, 2), _toy_train(calls), root=tmp_path, verbose=False)
    path = cache.artifact_path("toy", {}, tmp_path)
    path.write_bytes(path.read_bytes()[:100])  # a truncated file, as a full disk leaves it
    model, _ = cache.load_or_train("toy", {}, torch.nn.Linear(2, 2), _toy_train(calls), root=tmp_path, verbose=False)
    assert len(calls) == 2 and model.weight[0, 0].item() == 2.0
    message = capsys.readouterr().out
    assert path.name in message and "could not be read" in message and str(tmp_path) not in message
    [aside] = tmp_path.glob("toy-*.corrupt-*.pt")
    assert re.fullmatch(re.escape(path.stem) + r"\.corrupt-\d{8}-\d{6}\.pt", aside.name), "stamped with its time"
    assert cache.load(path)["history"] == [{"epoch": 1}], "the recomputed artifact is whole"


_TRAIN_ONCE = """
import sys, time, torch
from pathlib import Path
from advlib import cache
root, log = Path(sys.argv[1]), Path(sys.argv[2])
def train(model, checkpoint):
    with open(log, "a") as f:
        f.write("trained\\n")
    time.sleep(2)
    return [{"epoch": 1}]
model, history = cache.load_or_train("shared", {"n": 1}, torch.nn.Linear(2, 2), train, root=root, verbose=False)
print(history)
"""


def test_two_processes_asking_for_the_same_artifact_train_it_once(tmp_path):
    log = tmp_path / "log.txt"
    runs = [subprocess.Popen([sys.executable, "-c", _TRAIN_ONCE, str(tmp_path), str(log)], stdout=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert log.read_text().count("trained") == 1, "one computes, the other waits and loads"
    assert all("'epoch': 1" in output for output in outputs)


def test_cache_files_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        cache.atomic_save({"x": torch.zeros(1)}, tmp_path / "a.pt")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.pt").stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IRUSR and not mode & stat.S_IWOTH
    assert not mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH), "data, not a program"


def test_the_tests_never_write_into_the_books_cache():
    assert paths.cache_dir() != BOOK_CACHE
    assert "test-home" in str(paths.cache_dir())


def test_every_results_file_carries_its_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVLIB_HOME", str(tmp_path))
    run = config.setup("quick", device="cpu", seed=3, quiet=True)
    path = run.save_results("toy", [{"method": "x", "clean": 0.5}])
    saved = json.loads(path.read_text())
    provenance = saved["provenance"]
    assert set(provenance) >= {"advlib", "git_commit", "torch", "device", "profile", "seed", "config_hash",
                               "wall_seconds"}
    assert provenance["seed"] == 3 and provenance["profile"] == "quick" and provenance["torch"] == torch.__version__
    assert provenance["config_hash"] == cache.config_hash(run.config)
    assert provenance["git_commit"] is None or len(provenance["git_commit"]) == 40
    assert saved["results"] == [{"method": "x", "clean": 0.5}]


def test_no_module_imports_a_private_module_of_another_package():
    """One home per idea: a package's ``_private`` modules are its own business."""
    root = Path(__file__).resolve().parent.parent / "advlib"
    offenders = []
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not stripped.startswith(("from ", "import ")):
                continue
            module = stripped.split()[1]
            if any(part.startswith("_") and part != "__future__" for part in module.split(".")):
                if not module.startswith(".") or module.startswith(".."):
                    offenders.append(f"{path.relative_to(root)}: {stripped}")
    assert not offenders, offenders


def test_quietly_holds_back_what_was_loaded_but_not_what_was_computed(tmp_path, capsys):
    # computed without a word (as another process would have), so that only quietly() keeps its load unsaid
    first = cache.load_or_compute("test-quiet", {"a": 1}, lambda: {"t": torch.zeros(1)}, root=tmp_path,
                                  verbose=False)
    assert capsys.readouterr().out == ""
    with cache.quietly():
        again = cache.load_or_compute("test-quiet", {"a": 1}, lambda: {"t": torch.ones(1)}, root=tmp_path)
        cache.load_or_compute("test-quiet", {"a": 2}, lambda: {"t": torch.ones(1)}, root=tmp_path)
    said = capsys.readouterr().out
    assert torch.equal(again["t"], first["t"])
    assert "loaded" not in said and "computing test-quiet" in said
    # what was loaded quietly counts as said: loading it again later stays quiet
    cache.load_or_compute("test-quiet", {"a": 1}, lambda: {"t": torch.ones(1)}, root=tmp_path)
    assert capsys.readouterr().out == ""


def test_what_this_process_computed_is_not_announced_again_as_loaded(tmp_path, capsys):
    cache.load_or_compute("test-said", {"a": 1}, lambda: {"t": torch.zeros(1)}, root=tmp_path)
    assert "computing test-said" in capsys.readouterr().out
    cache.load_or_compute("test-said", {"a": 1}, lambda: {"t": torch.ones(1)}, root=tmp_path)
    assert capsys.readouterr().out == ""
    cache.load_or_compute("test-said", {"a": 2}, lambda: {"t": torch.zeros(1)}, root=tmp_path, verbose=False)
    cache.load_or_compute("test-said", {"a": 2}, lambda: {"t": torch.ones(1)}, root=tmp_path)
    assert "loaded test-said" in capsys.readouterr().out, "computed unsaid: its first load is said"


def test_cache_keys_by_hand(tmp_path):
    """The key is the SHA-256 of the canonical JSON (sorted keys, no spaces, other objects as their
    str) of the configuration with the code versions of the kind and of the models it is measured
    on: 12 hex digits in the file name."""
    import hashlib
    from pathlib import PurePosixPath

    def sha12(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    config = {"b": [1, 2], "a": PurePosixPath("x/y")}
    assert cache.config_hash(config) == sha12('{"a":"x/y","b":[1,2]}')
    assert cache.code_version("classifier-extra") == cache.CODE_VERSIONS["classifier"]
    assert cache.code_version("no-such-kind") == 0
    version = cache.code_version("classifier")
    key = '{"code_version":%d,"config":{"a":1}}' % version
    assert cache.artifact_path("classifier", {"a": 1}, tmp_path) == tmp_path / f"classifier-{sha12(key)}.pt"
    dependent = next(iter(cache.CODE_DEPENDENCIES))
    models = ",".join('"%s":%d' % (m, cache.code_version(m)) for m in sorted(cache.CODE_DEPENDENCIES[dependent]))
    key = '{"code_version":%d,"config":{"a":1},"model_code_versions":{%s}}' % (cache.code_version(dependent), models)
    assert cache.artifact_path(dependent, {"a": 1}, tmp_path) == tmp_path / f"{dependent}-{sha12(key)}.pt"


def test_json_is_written_indented_in_the_given_order_through_a_hidden_temporary_beside_it(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace

    def replace(source, target):
        renames.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "results" / "table.json"
    cache.atomic_write_json({"b": 1, "a": [2]}, path)
    assert path.read_text() == '{\n  "b": 1,\n  "a": [\n    2\n  ]\n}\n'
    [(source, target)] = renames
    assert target == path and source.parent == path.parent
    assert source.name.startswith(".table.json.") and source.name.endswith(".tmp")
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.json"]


def test_a_model_given_as_a_builder_draws_initial_weights_only_to_train(tmp_path):
    asked: list[bool] = []

    def build(initialise: bool) -> torch.nn.Module:
        asked.append(initialise)
        if initialise:
            return torch.nn.Linear(2, 2)
        with torch.device("meta"):
            return torch.nn.Linear(2, 2).to_empty(device="cpu")

    calls: list[int] = []
    trained, _ = cache.load_or_train("toy", {}, build, _toy_train(calls), root=tmp_path, verbose=False)
    assert asked[-1] is True and calls == [1]
    asked.clear()
    loaded, history = cache.load_or_train("toy", {}, build, _toy_train(calls), root=tmp_path, verbose=False)
    assert asked == [False] and calls == [1], "a cached model is built empty and never trained again"
    assert history == [{"epoch": 1}]
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
