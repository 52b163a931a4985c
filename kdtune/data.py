"""Datasets as in-memory uint8 tensors, deterministic splits, and batches drawn by index.

Each split lives in memory as one ``uint8`` tensor (N, C, H, W); batches are drawn by index and
augmented as whole tensors (:mod:`kdtune.augment`), so a trial never pays for per-sample PIL
transforms.

Datasets come by name (:data:`LOADERS`, one per entry of :mod:`kdtune.sources`): ``digits`` (bundled with scikit-learn), ``mnist``,
``fashion_mnist`` (also found in Debian's ``dataset-fashion-mnist`` package), ``usps``,
``cifar10``, ``cifar100`` (torchvision's layout; downloaded only when allowed), and
``imagefolder`` (a user's folder with one sub-folder per class). Knobs (:mod:`kdtune.knobs`)
derive controlled variants.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdtune.knobs import Knobs, apply_image_knobs, noisy_labels, select_classes
from kdtune.sources import SOURCES, paper_fractions

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")


class DatasetError(RuntimeError):
    """A dataset cannot be used as given; the one-line message names the dataset or folder."""


class DatasetUnavailable(DatasetError):
    """A dataset is not on this machine and may not be downloaded; the message says how to get it."""


@dataclass
class Splits:
    """Train/val/test images (uint8, N x C x H x W) and labels (int64) of one dataset."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def to(self, device: torch.device | str) -> Splits:
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return Splits(self.name, num_classes=self.num_classes, mean=self.mean, std=self.std,
                      **moved)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


# ----------------------------------------------------------------------------- raw loaders
# Each loader returns (images uint8 N x C x H x W, labels int64 N, num_classes), pooled over the
# source's own train/test files: kdtune carves its own splits so val and test come from one seed.

def _digits_csv() -> Path | None:
    """scikit-learn's bundled ``digits.csv.gz`` (64 pixels and the label per row), found
    without importing sklearn; None if this scikit-learn keeps it elsewhere."""
    found = importlib.util.find_spec("sklearn")
    if found is None or not found.origin:
        return None
    path = Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def _load_digits(data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray, int]:
    # the file read as load_digits reads it: importing sklearn.datasets costs every driver
    # ~0.9 s of CPU (measured 2026-12-03) for a 1,797-row CSV
    csv = _digits_csv()
    if csv is not None:
        table = np.loadtxt(csv, delimiter=",")
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, target = bunch.images, bunch.target
    # pixel values are counts 0..16 of an 8x8 grid; scale to the 0..255 range of real images
    images = np.clip(pixels * 16.0, 0, 255).astype(np.uint8)[:, None]
    return images, target.astype(np.int64), 10


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{path}: truncated IDX file ({array.size} of {math.prod(shape)} values)")
    return array.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_set(folders: list[Path]) -> tuple[np.ndarray, np.ndarray] | None:
    for folder in folders:
        parts = [_find_idx(folder, f"{prefix}-{kind}-idx{dim}-ubyte")
                 for prefix in ("train", "t10k") for kind, dim in (("images", 3), ("labels", 1))]
        if all(parts):
            images = np.concatenate([read_idx(parts[0]), read_idx(parts[2])])
            labels = np.concatenate([read_idx(parts[1]), read_idx(parts[3])])
            return images[:, None], labels.astype(np.int64)
    return None


def _debian_fashion_mnist() -> list[Path]:
    return [DEBIAN_FASHION_MNIST]  # read at call time, so tests can point it elsewhere


def _mnist_like(folder_name: str, tv_class: str,
                extra: Callable[[], list[Path]] | None = None) -> Callable:
    def load(data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray, int]:
        folders = []
        if data_dir is not None:
            folders += [data_dir / folder_name / "raw", data_dir / folder_name, data_dir]
        folders += extra() if extra else []
        found = _load_idx_set(folders)
        if found is None and download:
            import torchvision.datasets as tvd

            root = str(data_dir or _default_root())
            try:
                getattr(tvd, tv_class)(root, train=True, download=True)
                getattr(tvd, tv_class)(root, train=False, download=True)
            except (RuntimeError, OSError) as error:  # offline: URLError is an OSError
                raise DatasetUnavailable(f"dataset '{tv_class}': download to {root} failed "
                                         f"({_one_line(error)})") from None
            found = _load_idx_set([Path(root) / folder_name / "raw"])
        if found is None:
            hint = ("install Debian's dataset-fashion-mnist package (apt-get install "
                    "dataset-fashion-mnist), " if folder_name == "FashionMNIST" else "")
            where = f" under {data_dir}" if data_dir else ""
            raise DatasetUnavailable(
                f"dataset '{folder_name}' not found{where}: {hint}pass --download (needs internet) "
                f"or --data-dir DIR holding {folder_name}/raw/*-ubyte[.gz] in torchvision's layout")
        return found[0], found[1], 10

    return load


def _torchvision_pooled(tv_class: str, num_classes: int) -> Callable:
    def load(data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray, int]:
        import torchvision.datasets as tvd

        root = str(data_dir or _default_root())
        cls = getattr(tvd, tv_class)
        try:
            parts = [cls(root, train=train, download=download) for train in (True, False)]
        except (RuntimeError, OSError) as error:  # "Dataset not found", or offline download
            what = "download failed" if download else "not found"
            raise DatasetUnavailable(
                f"dataset '{tv_class}' {what} under {root}: pass --download (needs internet) "
                f"or --data-dir DIR in torchvision's layout ({_one_line(error)})") from None
        images = np.concatenate([np.asarray(p.data) for p in parts])
        labels = np.concatenate([np.asarray(p.targets) for p in parts]).astype(np.int64)
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return images.astype(np.uint8), labels, num_classes

    return load


def load_image_folder(folder: Path | None, download: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """torchvision's ImageFolder layout: ``folder/<class>/<image>``, classes in sorted order.

    Images are all-grey -> 1 channel, otherwise RGB; images of differing sizes are resized to
    the most common size, so the whole set fits one uint8 tensor.
    """
    from PIL import Image, UnidentifiedImageError

    if folder is None:
        raise DatasetError("imagefolder needs path: a folder with one sub-folder per class")
    if not folder.is_dir():
        raise DatasetUnavailable(f"imagefolder {folder}: no such folder")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        found = f"only one class folder ('{classes[0]}')" if classes else "no class sub-folder"
        raise DatasetError(f"imagefolder {folder}: {found}; a classifier needs at least two "
                           "classes, one sub-folder each")
    images, labels = [], []
    for index, cls in enumerate(classes):
        files = sorted(f for f in (folder / cls).rglob("*")
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                       and not f.name.startswith("."))
        if not files:
            raise DatasetError(f"imagefolder {folder}: class folder '{cls}' holds no images "
                               f"({', '.join(IMAGE_EXTENSIONS)})")
        for file in files:
            try:
                with Image.open(file) as image:
                    image.load()
                    images.append(image.copy())
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise DatasetError(f"imagefolder {folder}: cannot read image "
                                   f"{file.relative_to(folder)} ({error})") from None
            labels.append(index)
    grey = all(im.mode in ("1", "L", "I", "I;16", "F", "LA") for im in images)
    sizes = [im.size for im in images]
    size = max(set(sizes), key=sizes.count)  # the most common (width, height)
    arrays = []
    for im in images:
        im = im.convert("L" if grey else "RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if grey else a.transpose(2, 0, 1))
    return np.stack(arrays), np.asarray(labels, dtype=np.int64), len(classes)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _default_root() -> Path:
    return Path(os.environ.get("KDTUNE_DATA", Path.home() / ".cache" / "kdtune" / "data"))


LOADERS: dict[str, Callable[[Path | None, bool], tuple[np.ndarray, np.ndarray, int]]] = {
    "digits": _load_digits,
    "mnist": _mnist_like("MNIST", "MNIST"),
    "fashion_mnist": _mnist_like("FashionMNIST", "FashionMNIST", _debian_fashion_mnist),
    "usps": _torchvision_pooled("USPS", 10),
    "cifar10": _torchvision_pooled("CIFAR10", 10),
    "cifar100": _torchvision_pooled("CIFAR100", 100),
    "imagefolder": load_image_folder,  # called with the spec's path, not data_dir
}
assert set(LOADERS) == set(SOURCES), "every source in kdtune.sources needs a loader here"


# ----------------------------------------------------------------------------- splits

def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum exactly to ``total`` (largest remainder)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts


def split_indices(labels: np.ndarray, fractions: tuple[float, float, float],
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, deterministic train/val/test indices in the given proportions.

    The val and test sizes are exact (``round(n * fraction)``, so the paper's sizes come out
    to the image), shared among the classes in proportion to their sizes.
    """
    rng = np.random.default_rng(seed)
    total = sum(fractions)
    classes, class_sizes = np.unique(labels, return_counts=True)
    n_val = _apportion(int(round(len(labels) * fractions[1] / total)), class_sizes)
    n_test = _apportion(int(round(len(labels) * fractions[2] / total)), class_sizes)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls, v, t in zip(classes, n_val, n_test):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        parts[2].append(idx[:t])
        parts[1].append(idx[t:t + v])
        parts[0].append(idx[t + v:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


@dataclass
class Pool:
    """A dataset's images before splitting: the source's train and test files pooled, the
    class subset applied (uint8 N x C x H x W, int64 labels)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int


def load_pool(name: str, *, data_dir: str | Path | None = None, download: bool = False,
              path: str | Path | None = None, classes: int | tuple[int, ...] | None = None
              ) -> Pool:
    """Read a dataset by name, pooled over its own files, with the ``classes`` knob applied."""
    if name not in LOADERS:
        raise KeyError(f"unknown dataset '{name}' (known: {', '.join(LOADERS)})")
    source = path if name == "imagefolder" else data_dir
    images, labels, num_classes = LOADERS[name](Path(source) if source else None, download)
    try:
        images, labels, num_classes = select_classes(images, labels, num_classes, classes)
    except ValueError as error:
        raise DatasetError(f"{name}: {error}") from None
    return Pool(name, images, labels, num_classes)


def split_pool(pool: Pool, *, fractions: tuple[float, float, float] | None = None,
               split_seed: int = 0, max_train: int | None = None,
               knobs: Knobs | None = None) -> Splits:
    """Carve stratified train/val/test splits from ``split_seed`` and apply the knobs (drawn
    from ``split_seed`` too). ``fractions`` None: the core study's split."""
    knobs = knobs or Knobs()
    labels, num_classes = pool.labels, pool.num_classes
    train, val, test = split_indices(labels, fractions or paper_fractions(pool.name), split_seed)
    if max_train is not None and max_train < len(train):
        # subsample the training split only: val and test stay the same for every variant
        train = np.sort(np.random.default_rng(split_seed + 1).choice(train, max_train,
                                                                     replace=False))
    x = torch.from_numpy(np.ascontiguousarray(pool.images))
    y = torch.from_numpy(labels)
    parts = {split: (apply_image_knobs(x[idx], knobs, split, split_seed), y[idx])
             for split, idx in (("train", train), ("val", val), ("test", test))}
    train_x, train_y = parts["train"]
    if knobs.label_noise:
        train_y = noisy_labels(train_y, knobs.label_noise, num_classes, split_seed)
    train_float = train_x.float() / 255.0
    mean = tuple(float(v) for v in train_float.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in train_float.std(dim=(0, 2, 3)))
    return Splits(pool.name, train_x, train_y, *parts["val"], *parts["test"], num_classes,
                  mean, std)


def load_splits(name: str, *, data_dir: str | Path | None = None, download: bool = False,
                fractions: tuple[float, float, float] | None = None, split_seed: int = 0,
                max_train: int | None = None, path: str | Path | None = None,
                knobs: Knobs | None = None) -> Splits:
    """Load a dataset by name, carve its train/val/test splits and apply its knobs.

    ``fractions`` None means the core study's split (:func:`kdtune.sources.paper_fractions`);
    ``path`` is the folder of an ``imagefolder`` dataset.
    """
    knobs = knobs or Knobs()
    pool = load_pool(name, data_dir=data_dir, download=download, path=path,
                     classes=knobs.classes)
    return split_pool(pool, fractions=fractions, split_seed=split_seed, max_train=max_train,
                      knobs=knobs)


# ----------------------------------------------------------------------------- batches

def batch_indices(n: int, batch_size: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Shuffled index batches over ``n`` samples (the last, smaller batch is kept).

    A last batch of a single sample is folded into the one before: BatchNorm cannot train on
    one sample, and which batch ends up alone depends only on the dataset size.
    """
    order = torch.randperm(n, generator=generator).to(device)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    yield from batches


def normalize(images_uint8: torch.Tensor, mean: tuple[float, ...],
              std: tuple[float, ...]) -> torch.Tensor:
    x = images_uint8.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def omit_class(splits: Splits, k: int) -> Splits:
    """The student's transfer set without class ``k`` (Hinton et al. 2015, section 3; the Duke
    poster): train and validation lose every image of class ``k``, the test split keeps them,
    so test accuracy on ``k`` shows what the student learned of a class it never saw."""
    if not 0 <= k < splits.num_classes:
        raise ValueError(f"omit_class {k} is not a class of {splits.name} "
                         f"(0..{splits.num_classes - 1})")
    # mean/std stay those of the full training split: the teacher was trained, and its cached
    # outputs computed, on inputs normalised with them
    keep_train, keep_val = splits.train_y != k, splits.val_y != k
    return Splits(splits.name, splits.train_x[keep_train], splits.train_y[keep_train],
                  splits.val_x[keep_val], splits.val_y[keep_val], splits.test_x, splits.test_y,
                  splits.num_classes, splits.mean, splits.std)
