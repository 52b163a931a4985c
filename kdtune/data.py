"""Datasets as in-memory uint8 tensors, deterministic splits, and batched augmentation.

Each split lives in memory as one ``uint8`` tensor (N, C, H, W); batches are drawn by index and
augmented as whole tensors, so a trial never pays for per-sample PIL transforms.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# The core study's proportions: CIFAR 50,000/7,000/3,000 of 60,000 (83.33 / 11.66 / 5 %).
PAPER_SPLIT = (50_000 / 60_000, 7_000 / 60_000, 3_000 / 60_000)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DatasetUnavailable(RuntimeError):
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

def _load_digits(data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pixel values are counts 0..16 of an 8x8 grid; scale to the 0..255 range of real images
    images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64), 10


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


def _mnist_like(folder_name: str, tv_class: str, extra: list[Path] | None = None) -> Callable:
    def load(data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray, int]:
        folders = []
        if data_dir is not None:
            folders += [data_dir / folder_name / "raw", data_dir / folder_name, data_dir]
        folders += extra or []
        found = _load_idx_set(folders)
        if found is None and download:
            import torchvision.datasets as tvd

            root = str(data_dir or _default_root())
            getattr(tvd, tv_class)(root, train=True, download=True)
            getattr(tvd, tv_class)(root, train=False, download=True)
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
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
            raise DatasetUnavailable(
                f"dataset '{tv_class}' not found under {root}: pass --download (needs internet) "
                f"or --data-dir DIR in torchvision's layout ({error})") from None
        images = np.concatenate([np.asarray(p.data) for p in parts])
        labels = np.concatenate([np.asarray(p.targets) for p in parts]).astype(np.int64)
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return images.astype(np.uint8), labels, num_classes

    return load


def _default_root() -> Path:
    return Path(os.environ.get("KDTUNE_DATA", Path.home() / ".cache" / "kdtune" / "data"))


LOADERS: dict[str, Callable[[Path | None, bool], tuple[np.ndarray, np.ndarray, int]]] = {
    "digits": _load_digits,
    "mnist": _mnist_like("MNIST", "MNIST"),
    "fashion_mnist": _mnist_like("FashionMNIST", "FashionMNIST", [DEBIAN_FASHION_MNIST]),
    "usps": _torchvision_pooled("USPS", 10),
    "cifar10": _torchvision_pooled("CIFAR10", 10),
    "cifar100": _torchvision_pooled("CIFAR100", 100),
}


# ----------------------------------------------------------------------------- splits

def split_indices(labels: np.ndarray, fractions: tuple[float, float, float],
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, deterministic train/val/test indices in the given proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    total = sum(fractions)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(len(idx) * fractions[1] / total))
        n_test = int(round(len(idx) * fractions[2] / total))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def load_splits(name: str, *, data_dir: str | Path | None = None, download: bool = False,
                fractions: tuple[float, float, float] = PAPER_SPLIT, split_seed: int = 0,
                max_train: int | None = None) -> Splits:
    """Load a dataset by name and carve its train/val/test splits."""
    if name not in LOADERS:
        raise KeyError(f"unknown dataset '{name}' (known: {', '.join(LOADERS)})")
    images, labels, num_classes = LOADERS[name](Path(data_dir) if data_dir else None, download)
    train, val, test = split_indices(labels, fractions, split_seed)
    if max_train is not None and max_train < len(train):
        # subsample the training split only: val and test stay the same for every variant
        train = np.sort(np.random.default_rng(split_seed + 1).choice(train, max_train,
                                                                     replace=False))
    x = torch.from_numpy(np.ascontiguousarray(images))
    y = torch.from_numpy(labels)
    train_float = x[train].float() / 255.0
    mean = tuple(float(v) for v in train_float.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in train_float.std(dim=(0, 2, 3)))
    return Splits(name, x[train], y[train], x[val], y[val], x[test], y[test], num_classes,
                  mean, std)


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


# ----------------------------------------------------------------------------- augmentation
# Policies act on a float batch in [0, 1] (before normalisation), one random draw per image.

def _flip(x: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=generator).to(x.device) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(dim), x)


def _rotate(x: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    angles = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * math.radians(degrees)
    cos, sin = angles.cos(), angles.sin()
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1),
                         torch.stack([sin, cos, zeros], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _pad_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h))  # n x h
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w))  # n x w
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2)


def _paper(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # the core study: RandomRotation(15) + RandomHorizontalFlip + RandomVerticalFlip
    return _flip(_flip(_rotate(x, 15.0, g), 3, g), 2, g)


def _crop_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return _flip(_pad_crop(x, 4, g), 3, g)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = {
    "none": None,
    "paper": _paper,
    "crop_flip": _crop_flip,
}


def augment(x: torch.Tensor, policy: str, generator: torch.Generator,
            share: float = 1.0) -> torch.Tensor:
    """Apply ``policy`` to a float [0, 1] batch; ``share`` is the fraction of images augmented."""
    fn = AUGMENTATIONS[policy]
    if fn is None or share <= 0:
        return x
    out = fn(x, generator)
    if share >= 1:
        return out
    keep = torch.rand(x.shape[0], generator=generator).to(x.device) >= share
    return torch.where(keep.view(-1, 1, 1, 1), x, out)
