"""Training under torchrun (advlib.distributed): two CPU ranks with the gloo backend against one
process, a killed two-rank run resumed, and a notebook's ``gpus=2`` launching torchrun through the
artifact cache."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import advlib
from advlib import cache, data, distributed, recipes
import advlib.train
from advlib.train import split_arguments

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker  # noqa: E402

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parent.parent


def torchrun(ranks: int, *arguments: str, **popen: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(WORKER), *arguments]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finished(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output


def artifacts(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*.pt"))


def trained(root: Path) -> dict:
    [path] = artifacts(root)
    return torch.load(path, weights_only=True)


TRAINERS = tuple(name for name in distributed_worker.TRAINERS if name != "batchnorm")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Every trainer of the worker trained by one torchrun group of two ranks (one group: each start
    of torchrun costs seconds)."""
    root = tmp_path_factory.mktemp("two-ranks")
    finished(torchrun(2, str(root), *distributed_worker.TRAINERS))
    return root


@pytest.mark.parametrize("trainer", TRAINERS)
def test_two_ranks_train_what_one_process_trains(two_ranks, tmp_path, trainer):
    """Each rank trains on half of every batch of 16 and DDP averages the gradients: the weights (SWA's
    average too), the epoch records (summed losses, DYNAT's label agreement averaged over the ranks)
    and, for AWP, the weight perturbation (its gradient averaged over the ranks too) are the single
    process's."""
    distributed_worker.train(trainer, tmp_path)
    one, two = trained(tmp_path / trainer), trained(two_ranks / trainer)
    assert len(two["history"]) == 3
    assert [(two_ranks / trainer / f"images-rank{r}").read_text() for r in (0, 1)] == ["96", "96"]
    for name, weight in one["model"].items():
        torch.testing.assert_close(two["model"][name], weight, rtol=1e-5, atol=1e-6)
    for single, ranks in zip(one["history"], two["history"]):
        for key in ("train_loss", "train_acc", "label_agreement"):
            if key in single:
                assert ranks[key] == pytest.approx(single[key], rel=1e-5), key


def test_every_rank_ends_with_the_model_rank_0_wrote(two_ranks):
    """With BatchNorm the ranks' running statistics differ; the cache reloads rank 0's artifact on the
    others, so that a model trained on the way to another (a teacher) is the same on every rank."""
    folder = two_ranks / "batchnorm"
    artifact = sum(float(value.double().sum()) for value in trained(folder)["model"].values())
    assert [float((folder / f"weights-rank{r}").read_text()) for r in (0, 1)] == [artifact, artifact]


def test_a_killed_two_rank_run_resumes_from_rank_0s_checkpoint(tmp_path):
    """Kill the whole torchrun group once rank 0 has checkpointed an epoch: no artifact is left
    behind; a second run resumes and ends with the single process's weights, leaving one artifact
    file and no checkpoint."""
    folder = tmp_path / "standard"
    killed = torchrun(2, str(tmp_path), "standard", "--epochs", "6", "--slow", start_new_session=True)
    deadline = time.time() + 120
    while not list(folder.glob("*.partial.pt")):
        assert killed.poll() is None and time.time() < deadline, killed.stdout.read()
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert artifacts(folder) == list(folder.glob("*.partial.pt"))
    finished(torchrun(2, str(tmp_path), "standard", "--epochs", "6"))
    distributed_worker.train("standard", tmp_path / "single", epochs=6)
    resumed, single = trained(folder), trained(tmp_path / "single" / "standard")
    assert [r["epoch"] for r in resumed["history"]] == list(range(1, 7))
    for name, weight in single["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, rtol=1e-5, atol=1e-6)


def test_shards_of_a_batch_are_the_single_process_batch():
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    imageset = data.ImageSet(images, torch.arange(40), data.info("fashion-mnist"))

    def batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = data.TensorLoader(imageset, 12, shuffle=True, augment=True, drop_last=True, seed=3)
        loader.set_shard(rank, world)
        loader.set_epoch(2)
        return list(loader)

    whole = batches(0, 1)
    shards = [batches(rank, 3) for rank in range(3)]
    assert len(whole) == 3 and all(len(shard) == 3 for shard in shards)
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([shard[b][0] for shard in shards]), x)
        assert torch.equal(torch.cat([shard[b][1] for shard in shards]), y)


@pytest.mark.parametrize("batch_size, drop_last", [(12, False), (10, True)])
def test_a_batch_that_does_not_split_evenly_is_refused(batch_size, drop_last):
    imageset = data.ImageSet(torch.zeros(40, 1, 8, 8, dtype=torch.uint8), torch.arange(40), data.info("fashion-mnist"))
    loader = data.TensorLoader(imageset, batch_size, drop_last=drop_last)
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        loader.set_shard(1, 3)


def test_the_entry_points_arguments():
    assert split_arguments(["nt", "skips=false", "depth=2", "name=wide"]) == (
        ["nt"], {"skips": False, "depth": 2, "name": "wide"})


def test_one_process_launches_nothing_and_bad_gpu_counts_are_refused():
    run = advlib.setup("quick", device="cpu", quiet=True)
    assert distributed.launcher(run, "classifier") is None
    with pytest.raises(ValueError, match="gpus must be at least 1"):
        advlib.setup("quick", device="cpu", gpus=0, quiet=True)
    with pytest.raises(ValueError, match="sync_batchnorm needs gpus > 1 on CUDA"):
        advlib.setup("quick", device="cpu", gpus=2, sync_batchnorm=True, quiet=True)


def test_a_run_with_two_gpus_trains_a_missing_model_with_torchrun_and_loads_it(capsys):
    """``gpus=2`` (two CPU processes here) trains the chapter-1 classifier, cut to a few hundred
    images, in a torchrun group that writes it to the cache; this process then loads it without
    training, and a second call finds it cached without launching anything."""
    overrides = {"classifier.epochs": 1, "classifier.train_subset": 512, "classifier.holdout": 64,
                 "classifier.batch_size": 64, "classifier.arch": "small_cnn"}
    run = advlib.setup("quick", device="cpu", gpus=2, overrides=overrides, seed=11, quiet=True)
    path = cache.artifact_path("classifier", recipes.classifier_config(run))
    path.unlink(missing_ok=True)
    model, history = recipes.classifier(run)
    output = capsys.readouterr().out
    assert "on 2 CPU processes with torchrun" in output and "loaded classifier from the cache" in output
    assert path.is_file() and not path.with_suffix(".partial.pt").exists()
    assert len(history) == 1 and 0 <= history[0]["val_acc"] <= 1
    for name, weight in torch.load(path, weights_only=True)["model"].items():
        assert torch.equal(model.state_dict()[name], weight), name
    assert distributed.launcher(run, "classifier") is not None
    recipes.classifier(run)
    assert "torchrun" not in capsys.readouterr().out


def test_the_entry_point_builds_the_run_from_its_options():
    """``python -m advlib.train`` without a run file: the profile's run, and the recipe's own error for
    a method it does not know (before anything is trained)."""
    with pytest.raises(ValueError, match="unknown method 'no_such_method'"):
        advlib.train.main(["at", "no_such_method", "--profile", "quick", "--device", "cpu"])


def test_a_failing_group_reports_the_ranks_traceback():
    run = advlib.setup("quick", device="cpu", gpus=2, quiet=True)
    with pytest.raises(RuntimeError, match="(?s)failed.*Traceback.*unknown method 'no_such_method'"):
        distributed.train_with_torchrun(run, "at", "no_such_method")


def test_a_launch_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="torchrun finished without writing"):
        cache.load_or_train("test-launch", {"n": 1}, torch.nn.Linear(1, 1), lambda model, checkpoint: [],
                            root=tmp_path, launch=lambda: None)
    assert not list(tmp_path.glob("*.pt"))


def test_stopping_a_group_stops_all_its_processes():
    group = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60; wait"], start_new_session=True)
    distributed.stop_group(group, grace_seconds=5)
    assert group.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(group.pid, 0)
