"""Datasets (CIFAR-10, CIFAR-100, Fashion-MNIST) as tensors, and a loader that keeps them on the device
(chapter 1).

Images are ``uint8`` tensors of shape ``(N, C, 32, 32)``; the loader turns each batch into floats in
[0, 1] on the target device and applies the random crop and flip there, instead of per-sample PIL
transforms, so a GPU is never starved by the CPU (as in Keller Jordan's airbench).
"""
from __future__ import annotations

import gzip
import pickle
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import paths

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    image_size: int = 32


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", "CIFAR-10", 10, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           _CIFAR10_CLASSES),
    "cifar100": DatasetInfo("cifar100", "CIFAR-100", 100, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            tuple(f"class {i}" for i in range(100))),
    # Statistics of the 28x28 images zero-padded to 32x32.
    "fashion-mnist": DatasetInfo("fashion-mnist", "Fashion-MNIST", 10, 1, (0.2190,), (0.3318,), _FASHION_CLASSES),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not on disk and could not be downloaded; the message says how to get it."""


def info(name: str) -> DatasetInfo:
    """Metadata of a dataset: number of classes, channels, normalisation statistics, class names."""
    key = name.strip().lower().replace("_", "-")
    key = {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[key]


@dataclass
class ImageSet:
    """A split of a dataset: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,). The tensors of a
    split loaded twice are the same (:func:`load` reads the files once per process): derive new
    tensors from them, never change them in place."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> "ImageSet":
        """``n`` examples drawn without replacement (all of them if ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        return self.select(split_indices(len(self), n, seed)[1])

    def sample(self, n: int | None, seed: int = 0) -> "ImageSet":
        """The first ``n`` examples of a seeded random order (all of them if ``n`` is larger; the set
        itself, in file order, if ``n`` is None). Samples are nested: ``sample(m)`` is the first ``m``
        of ``sample(n)`` for m ≤ n, so a smaller evaluation (AutoAttack) runs on images a larger one
        also sees."""
        if n is None:
            return self
        return self.select(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n])

    def select(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.info)

    def split(self, n_holdout: int, seed: int = 0) -> tuple["ImageSet", "ImageSet"]:
        """(rest, holdout): a held-out slice of ``n_holdout`` examples, e.g. for per-epoch validation."""
        rest, holdout = split_indices(len(self), n_holdout, seed)
        return self.select(rest), self.select(holdout)

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All images as floats in [0, 1] and their labels, on ``device``."""
        return self.images.to(device).float().div_(255), self.labels.to(device, copy=True)


def split_indices(n: int, n_holdout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices (rest, holdout) of a seeded random split of ``range(n)``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_holdout:].sort().values, order[:n_holdout].sort().values


def load(name: str, split: str = "train", *, root: str | Path | None = None, download: bool = True) -> ImageSet:
    """Load ``split`` ("train" or "test") of ``name`` ("cifar10", "cifar100", "fashion-mnist").

    Looks in ``root`` (default :func:`advlib.paths.data_dir`, set by ``$ADVLIB_DATA``); Fashion-MNIST
    also in the Debian package's folder. Missing data is downloaded through torchvision on first
    use when ``download`` is true; otherwise, or offline, a :class:`DatasetNotFoundError` says
    where it looked and how to get the files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    meta = info(name)
    root = Path(root) if root is not None else paths.data_dir()
    reader = _fashion_mnist if meta.name == "fashion-mnist" else _cifar
    images, labels = reader(meta, split, root, download)
    return ImageSet(images, labels, meta)


# --- Fashion-MNIST: IDX files, gzipped (Debian, the original site) or not (torchvision) -------------

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian dims after a magic number), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(tuple(int(d) for d in dims))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist(meta: DatasetInfo, split: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folders = [root / "FashionMNIST" / "raw", root / "fashion-mnist", DEBIAN_FASHION_MNIST]
    image_stem, label_stem = _IDX_FILES[split]

    def locate() -> tuple[Path, Path] | None:
        for folder in folders:
            image_file, label_file = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
            if image_file and label_file:
                return image_file, label_file
        return None

    found = locate()
    if found is None:
        _download(meta, root, download, folders,
                  how="install the Debian package (apt-get install dataset-fashion-mnist), or put the four "
                      "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into "
                      f"{root / 'fashion-mnist'}")
        found = locate()
        assert found is not None, "torchvision's download did not produce the IDX files"

    def read() -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(read_idx(found[0]).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(found[1]).astype(np.int64))
        return F.pad(images, (2, 2, 2, 2)), labels

    return _read_once(found, read)


# --- CIFAR: the "python version" pickles ------------------------------------------------------------

_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "labels"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels"),
}


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR batch: ``data`` (N, 3072) uint8 rows of R, G, B planes, and its labels."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected data of shape (N, 3072), found {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch[label_key], dtype=np.int64)


def write_cifar_files(root: Path, name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``splits`` (``{"train": (images, labels), "test": (...)}``, images uint8 (N, 3, 32, 32))
    as the "python version" of CIFAR-10/100: pickled dictionaries with ``data`` rows of R, G, B planes,
    split over the archive's files (five training batches for CIFAR-10). Returns the folder."""
    folder_name, files, label_key = _CIFAR_LAYOUT[name]
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        chunks = np.array_split(np.arange(len(labels)), len(files[split]))
        for file, index in zip(files[split], chunks):
            batch = {"batch_label": f"{file} (synthetic)", "data": images[index].reshape(len(index), -1),
                     label_key: [int(label) for label in labels[index]],
                     "filenames": [f"synthetic_{i}.png" for i in index]}
            with open(folder / file, "wb") as f:
                pickle.dump(batch, f, protocol=2)
    return folder


def synthetic_images(n: int, num_classes: int, seed: int = 0, noise: float = 0.3
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` learnable CIFAR-shaped images: each class has a fixed random colour, and every image is
    its class's colour plus uniform pixel noise of amplitude ``noise``. A colour survives random
    crops and flips, and averaging over the image removes the noise, so the classes are easy to
    learn; the colours lie in [0.4, 0.6]³, close enough that a shift of 16/255 in every pixel
    crosses from one class to another, as on real images an undefended model's boundary is within
    reach of PGD. Colours depend only on ``num_classes``, so a training and a test set drawn with
    different seeds share them. Used by CI's paper smoke run and the tests, where CIFAR cannot be
    downloaded."""
    colours = np.random.default_rng(num_classes).uniform(0.4, 0.6, size=(num_classes, 3, 1, 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    images = colours[labels] + rng.uniform(-noise, noise, size=(n, 3, 32, 32))
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


def write_synthetic_cifar(root: Path, name: str, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a synthetic stand-in for ``name`` ("cifar10" or "cifar100") in the real on-disk format
    under ``root`` (:func:`synthetic_images`, :func:`write_cifar_files`); ``advlib.data.load`` reads it
    like the real dataset."""
    classes = info(name).num_classes
    return write_cifar_files(root, info(name).name, {"train": synthetic_images(n_train, classes, seed),
                                                     "test": synthetic_images(n_test, classes, seed + 1)})


def _cifar(meta: DatasetInfo, split: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder_name, files, label_key = _CIFAR_LAYOUT[meta.name]
    folder = root / folder_name
    if not all((folder / f).is_file() for f in files[split]):
        archive = "cifar-10-python.tar.gz" if meta.name == "cifar10" else "cifar-100-python.tar.gz"
        _download(meta, root, download, [folder],
                  how=f"download {archive} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
                      f"into {root} (or point $ADVLIB_DATA at a folder that holds {folder_name}/)")

    def read() -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_cifar_batch(folder / f, label_key) for f in files[split]]
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))

    return _read_once([folder / f for f in files[split]], read)


# Splits read in this process, by file identity. A chapter asks for its test images dozens of times,
# and decompressing Fashion-MNIST's test set takes 50 ms, its training set 0.3 s. Bounded, since
# the tests write many small synthetic datasets.
_READ: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_READ_KEEP = 4


def _read_once(files: Sequence[Path], read: Callable[[], tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``read()``'s (images, labels), read only once per process for the same files (same path, size
    and modification time: a file written again is read again). The tensors are shared between the
    :class:`ImageSet` s of those files, which never modify them in place."""
    key = tuple((str(path.resolve()), stat.st_size, stat.st_mtime_ns) for path in files for stat in [path.stat()])
    if key in _READ:
        _READ.move_to_end(key)
    else:
        _READ[key] = read()
        while len(_READ) > _READ_KEEP:
            _READ.popitem(last=False)
    return _READ[key]


def _download(meta: DatasetInfo, root: Path, download: bool, looked_in: list[Path], how: str) -> None:
    """Fetch ``meta`` through torchvision into ``root``, staging in a temporary folder so that a
    failed or interrupted download leaves nothing half-written behind."""
    where = ", ".join(str(p) for p in looked_in)
    if not download:
        raise DatasetNotFoundError(f"{meta.title} not found (looked in {where}) and download=False. To fix: {how}.")
    import torchvision.datasets as tvd

    dataset_class = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST}[meta.name]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        for train in (True, False):
            dataset_class(root=str(staging), train=train, download=True)
        for entry in staging.iterdir():
            if not entry.name.endswith((".tar.gz", ".zip")):
                target = root / entry.name
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(str(entry), str(target))
    except Exception as error:  # torchvision raises URLError, RuntimeError, OSError... when offline
        raise DatasetNotFoundError(
            f"{meta.title} not found (looked in {where}) and the download failed "
            f"({type(error).__name__}: {error}). To fix: {how}."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- the loader -------------------------------------------------------------------------------------

class TensorLoader:
    """Batches of ``(x, y)`` with ``x`` float in [0, 1] on ``device``; data stays on the device.

    Shuffling and augmentation draw from a generator seeded by ``(seed, epoch)``, so an epoch's
    batches do not depend on what ran before it: a resumed run sees the same batches as an
    uninterrupted one. Augmentation is the CIFAR standard: zero-pad 4, random 32x32 crop, flip.
    ``paired`` (float images aligned with ``data``, e.g. precomputed adversarial examples) makes
    every batch ``(x, y, paired_x)``.

    ``images_per_epoch`` (default: all of them) makes an epoch a fixed share of a stream of passes
    over the data instead of one pass: epoch ``e`` takes the next images of the stream, each pass
    shuffled by a generator seeded by ``(seed, pass)``. A short run then sees more distinct images
    in as many epochs of the same length, and still reports (and checkpoints) once per epoch.

    :meth:`set_shard` makes the loader one of ``world_size`` ranks of a distributed run: each batch
    is drawn and augmented as on one process and the rank keeps its slice of it, so the ranks'
    slices together are the one-process epoch.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                 drop_last: bool = False, device: torch.device | str = "cpu", seed: int = 0,
                 paired: torch.Tensor | None = None, images_per_epoch: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        fewest = batch_size if drop_last else 1  # with drop_last, fewer images than a batch make no batch
        if images_per_epoch is not None and not fewest <= images_per_epoch <= len(data):
            raise ValueError(f"images_per_epoch must be between {fewest} and the {len(data)} images of the data, "
                             f"not {images_per_epoch}; leave it None for epochs of one pass each")
        if paired is not None and (len(paired) != len(data) or augment):
            raise ValueError("paired images need one entry per image and no augmentation "
                             f"(got {len(paired)} for {len(data)} images, augment={augment})")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.paired = None if paired is None else paired.to(self.device)
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.seed, self.epoch, self.images_per_epoch = seed, 0, images_per_epoch
        self.rank, self.world_size = 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_shard(self, rank: int, world_size: int) -> None:
        """Yield only the ``rank``-th of ``world_size`` equal slices of every batch."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), not {rank}")
        if world_size > 1 and (self.batch_size % world_size or not self.drop_last):
            raise ValueError(f"a batch of {self.batch_size} cannot be split evenly between {world_size} ranks "
                             "(the batch size must be a multiple of the number of ranks, with drop_last=True)")
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = self.images_per_epoch or len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _pass_order(self, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The order of pass ``index``, shuffled by ``generator`` (default: one seeded by (seed, index))."""
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=generator or torch.Generator().manual_seed(self.seed * 1_000_003 + index))

    def _stream_order(self) -> torch.Tensor:
        """This epoch's images: the next ones of the stream of shuffled passes (images a dropped last
        batch would have held stay in the stream for the next epoch)."""
        n, taken = len(self.labels), min(self.images_per_epoch, len(self) * self.batch_size)
        start = self.epoch * taken
        first, last = start // n, (start + taken - 1) // n
        stream = torch.cat([self._pass_order(index) for index in range(first, last + 1)])
        return stream[start - first * n:start - first * n + taken]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        # one pass per epoch shuffles with the generator that then augments, as it always has
        order = self._pass_order(self.epoch, generator) if self.images_per_epoch is None else self._stream_order()
        order = order.to(self.device)
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[index].float().div_(255)
            if self.augment:
                x = random_crop_flip(x, generator)
            if self.world_size > 1:
                share = self.batch_size // self.world_size
                mine = slice(self.rank * share, (self.rank + 1) * share)
                x, index = x[mine], index[mine]
            if self.paired is None:
                yield x, self.labels[index]
            else:
                yield x, self.labels[index], self.paired[index].float()


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Per-example random crop (after zero padding) and horizontal flip, done on ``x``'s device."""
    n, _, h, w = x.shape
    shift = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (padding,) * 4)
    rows = (shift[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shift[1, :, None] + torch.arange(w, device=x.device))
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def main(argv: list[str] | None = None) -> None:
    """``python -m advlib.data NAME...``: make sure the datasets are on disk (downloading if needed)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("names", nargs="+", choices=sorted(DATASETS))
    args = parser.parse_args(argv)
    for name in args.names:
        for split in ("train", "test"):
            images = load(name, split)
            print(f"{info(name).title} {split}: {len(images)} images of shape {tuple(images.images.shape[1:])}")


if __name__ == "__main__":
    main()
