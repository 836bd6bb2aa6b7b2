"""advlib.data: real Fashion-MNIST, CIFAR files in the real on-disk format, the on-device loader."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from advlib import data


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_on_disk_format(tmp_path, name):
    """The writer the paper smoke run uses produces the archives' format, and the reader reads it."""
    classes = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(0)
    written = {split: (rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, classes, size=n))
               for split, n in (("train", 20), ("test", 6))}
    folder = data.write_cifar_files(tmp_path, name, written)
    expected_files = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10"
                      else ["train", "test"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected_files)
    with open(folder / expected_files[0], "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    label_key = "labels" if name == "cifar10" else "fine_labels"
    images = written["train"][0]
    # A row stores the red plane, then green, then blue, each row-major; labels are a list of ints.
    assert raw["data"].shape[1] == 3072 and raw["data"].dtype == np.uint8
    assert raw["data"][0, 1] == images[0, 0, 0, 1] and raw["data"][0, 32] == images[0, 0, 1, 0]
    assert raw["data"][0, 1024] == images[0, 1, 0, 0] and raw["data"][0, 3071] == images[0, 2, 31, 31]
    assert isinstance(raw[label_key], list) and isinstance(raw[label_key][0], int)
    for split in ("train", "test"):
        loaded = data.load(name, split, root=tmp_path, download=False)
        images, labels = written[split]
        assert loaded.images.dtype == torch.uint8 and torch.equal(loaded.images, torch.from_numpy(images))
        assert torch.equal(loaded.labels, torch.from_numpy(labels))
        assert loaded.info.in_channels == 3 and loaded.info.num_classes == classes


def test_synthetic_cifar_is_learnable_and_shares_patterns_across_splits(tmp_path):
    """The smoke data must be learnable (chapter 2 checks that PGD breaks a model that learned
    something): the nearest class pattern, estimated on the training split, labels the test split."""
    data.write_synthetic_cifar(tmp_path, "cifar10", n_train=500, n_test=200, seed=3)
    train = data.load("cifar10", "train", root=tmp_path, download=False)
    test = data.load("cifar10", "test", root=tmp_path, download=False)
    x_train, y_train = train.tensors()
    centroids = torch.stack([x_train[y_train == k].mean(0) for k in range(10)])
    x_test, y_test = test.tensors()
    nearest = torch.cdist(x_test.flatten(1), centroids.flatten(1)).argmin(1)
    assert (nearest == y_test).float().mean() > 0.95
    assert set(y_test.tolist()) == set(range(10))


def test_cifar_missing_offline_names_place_and_fix(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load("cifar10", "train", root=tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "ADVLIB_DATA" in message


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(root, train, download):
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"half a download")
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(data.DatasetNotFoundError, match="download failed .*network is unreachable"):
        data.load("cifar10", "test", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_read_idx_round_trip_and_truncation(tmp_path):
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">iii", 2, 3, 4)
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(header + values.tobytes())
    (tmp_path / "cut-idx3-ubyte").write_bytes(header + values.tobytes()[:-1])
    assert np.array_equal(data.read_idx(tmp_path / "x-idx3-ubyte.gz"), values)
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "cut-idx3-ubyte")


def test_fashion_mnist_real_files(fashion_test):
    train = data.load("fashion-mnist", "train")
    assert len(train) == 60000 and len(fashion_test) == 10000
    assert fashion_test.images.shape == (10000, 1, 32, 32) and fashion_test.images.dtype == torch.uint8
    # Zero padding from 28x28 to 32x32: a 2-pixel black border.
    border = torch.cat([fashion_test.images[..., :2, :].flatten(), fashion_test.images[..., -2:, :].flatten(),
                        fashion_test.images[..., :, :2].flatten(), fashion_test.images[..., :, -2:].flatten()])
    assert border.max() == 0
    assert torch.equal(torch.bincount(fashion_test.labels), torch.full((10,), 1000))
    x, y = fashion_test.subset(50).tensors()
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="known datasets: cifar10, cifar100, fashion-mnist"):
        data.load("mnist")
    with pytest.raises(ValueError, match="split"):
        data.load("fashion-mnist", "validation")


def _tiny_set(n: int = 10) -> data.ImageSet:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 32, 32).contiguous()
    return data.ImageSet(images, torch.arange(n), data.info("fashion-mnist"))


def test_loader_shapes_range_and_coverage():
    loader = data.TensorLoader(_tiny_set(10), batch_size=4, shuffle=True, seed=3)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2] and len(loader) == 3
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(10))
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32)
        assert torch.allclose(x[:, 0, 0, 0], y.float() / 255)
    assert len(data.TensorLoader(_tiny_set(10), batch_size=4, drop_last=True)) == 2


def test_loader_is_deterministic_per_seed_and_epoch():
    def order(seed: int, epoch: int) -> list[int]:
        loader = data.TensorLoader(_tiny_set(50), batch_size=50, shuffle=True, augment=True, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader))[1].tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    state = torch.get_rng_state()
    order(0, 2)
    assert torch.equal(state, torch.get_rng_state()), "the loader must not draw from the global RNG"


def _epoch_labels(loader: data.TensorLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader]).tolist()


def test_epochs_of_a_fixed_size_take_turns_through_the_shuffled_passes():
    # 12 images, epochs of 2 batches of 2: every three epochs make one pass, each image once
    loader = data.TensorLoader(_tiny_set(12), batch_size=2, shuffle=True, drop_last=True, seed=5, images_per_epoch=4)
    assert len(loader) == 2
    epochs = [_epoch_labels(loader, e) for e in range(6)]
    first_pass, second_pass = epochs[0] + epochs[1] + epochs[2], epochs[3] + epochs[4] + epochs[5]
    assert sorted(first_pass) == sorted(second_pass) == list(range(12))
    assert first_pass != second_pass and first_pass != list(range(12)), "each pass is shuffled afresh"
    assert _epoch_labels(loader, 1) == epochs[1], "an epoch's images must not depend on what ran before it"


def test_an_epoch_can_span_two_passes_and_a_dropped_batch_stays_in_the_stream():
    # epochs of 5 images in batches of 2 with drop_last: 4 images per epoch, over passes of 6
    loader = data.TensorLoader(_tiny_set(6), batch_size=2, shuffle=False, drop_last=True, images_per_epoch=5)
    assert len(loader) == 2
    assert [_epoch_labels(loader, e) for e in range(3)] == [[0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5]]


def test_images_per_epoch_unset_keeps_one_pass_per_epoch():
    plain = data.TensorLoader(_tiny_set(10), batch_size=3, shuffle=True, seed=2)
    whole = data.TensorLoader(_tiny_set(10), batch_size=3, shuffle=True, seed=2, images_per_epoch=10)
    for epoch in range(3):
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(2 * 1_000_003 + epoch)).tolist()
        assert _epoch_labels(plain, epoch) == expected == _epoch_labels(whole, epoch)


@pytest.mark.parametrize("images_per_epoch", [0, 11, -1])
def test_images_per_epoch_out_of_range_is_a_clear_error(images_per_epoch):
    with pytest.raises(ValueError, match="images_per_epoch must be between 1 and the 10 images"):
        data.TensorLoader(_tiny_set(10), batch_size=2, images_per_epoch=images_per_epoch)


def test_an_epoch_smaller_than_a_dropped_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="images_per_epoch must be between 4 and the 10 images"):
        data.TensorLoader(_tiny_set(10), batch_size=4, drop_last=True, images_per_epoch=3)


@pytest.mark.parametrize("section", ["adversarial_training", "distillation"])
def test_quick_profile_sees_each_training_image_once(section):
    from advlib import config, recipes

    run = config.setup("quick", device="cpu", quiet=True)
    spec = run.config[section]
    settings = recipes.adversarial_training_config(run, "pgd_at") if section == "adversarial_training" \
        else recipes.distillation_config(run, "ard")
    loader, x_val, _ = recipes.training_data(run, settings)
    assert len(x_val) == spec["holdout"] and loader.images_per_epoch == spec["images_per_epoch"]
    assert spec["epochs"] * len(loader) * spec["batch_size"] == len(loader.labels) == spec["train_subset"] - spec["holdout"]


def test_random_crop_flip_is_a_crop_of_the_padded_image():
    x = torch.rand(6, 2, 8, 8)
    out = data.random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        candidates = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        candidates += [crop.flip(-1) for crop in candidates]
        assert any(torch.equal(out[i], crop) for crop in candidates)
    assert not torch.equal(out, x), "six images all left in place is vanishingly unlikely"


def test_subset_and_split_are_disjoint_and_seeded():
    full = _tiny_set(20)
    rest, holdout = full.split(5, seed=1)
    assert len(holdout) == 5 and len(rest) == 15
    assert set(rest.labels.tolist()).isdisjoint(holdout.labels.tolist())
    assert torch.equal(full.subset(7, seed=2).labels, full.subset(7, seed=2).labels)
    assert not torch.equal(full.subset(7, seed=2).labels, full.subset(7, seed=3).labels)
    assert len(set(full.subset(7, seed=2).labels.tolist())) == 7, "drawn without replacement"
    assert full.subset(None) is full


def test_samples_are_nested_seeded_and_without_replacement():
    full = _tiny_set(20)
    large, small = full.sample(12, seed=4), full.sample(5, seed=4)
    assert torch.equal(large.labels[:5], small.labels), "sample(5) is the first 5 of sample(12)"
    assert torch.equal(large.images[:5], small.images)
    assert len(set(large.labels.tolist())) == 12, "drawn without replacement"
    assert not torch.equal(full.sample(12, seed=5).labels, large.labels)
    assert full.sample(None) is full, "None: the set itself, in file order"
    everything = full.sample(30, seed=4)
    assert sorted(everything.labels.tolist()) == list(range(20)), "more than there are: all, in random order"
    assert torch.equal(everything.labels[:12], large.labels), "still nested"


def test_a_split_is_read_once_per_process_and_again_when_its_files_change(tmp_path, monkeypatch):
    reads: list[Path] = []
    read_batch = data.read_cifar_batch
    monkeypatch.setattr(data, "read_cifar_batch", lambda path, key: (reads.append(path), read_batch(path, key))[1])
    data.write_synthetic_cifar(tmp_path, "cifar10", n_train=10, n_test=6)
    first = data.load("cifar10", "test", root=tmp_path, download=False)
    second = data.load("cifar10", "test", root=tmp_path, download=False)
    assert len(reads) == 1 and torch.equal(first.images, second.images)
    x, y = second.tensors()
    y[0] = (y[0] + 1) % 10  # a caller's changes to its tensors stay its own
    assert torch.equal(data.load("cifar10", "test", root=tmp_path, download=False).labels, first.labels)
    data.write_synthetic_cifar(tmp_path, "cifar10", n_train=10, n_test=8, seed=3)
    assert len(data.load("cifar10", "test", root=tmp_path, download=False)) == 8 and len(reads) == 2
