"""Datasets by name: splits (the paper's sizes, stratified, deterministic), subsampling, image
folders, IDX files, and clear errors (no network)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from kdtune import data
from kdtune.cli import main
from kdtune.data import (
    DatasetError,
    DatasetUnavailable,
    load_splits,
    read_idx,
    split_indices,
)
from kdtune.sources import PAPER_SPLIT, SOURCES, paper_fractions


def test_paper_split_proportions_and_determinism():
    labels = np.repeat(np.arange(10), 600)
    train, val, test = split_indices(labels, PAPER_SPLIT, seed=0)
    assert (len(train), len(val), len(test)) == (5000, 700, 300)
    assert not set(train) & set(val) and not set(val) & set(test) and not set(train) & set(test)
    again = split_indices(labels, PAPER_SPLIT, seed=0)
    assert all((a == b).all() for a, b in zip((train, val, test), again))
    other = split_indices(labels, PAPER_SPLIT, seed=1)
    assert not (other[2] == test).all()


def test_digits_splits_are_uint8_and_stratified():
    splits = load_splits("digits")
    assert splits.train_x.dtype == torch.uint8 and splits.train_x.shape[1:] == (1, 8, 8)
    assert sum(splits.sizes().values()) == 1797
    assert splits.sizes()["test"] == pytest.approx(1797 * 0.05, abs=6)
    assert set(splits.test_y.tolist()) == set(range(10))
    small = load_splits("digits", max_train=200)
    assert len(small.train_y) == 200
    assert torch.equal(small.test_x, splits.test_x)  # subsampling never touches val/test


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_a_local_idx_folder(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 40)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert read_idx(raw / "t10k-labels-idx1-ubyte.gz").shape == (40,)
    splits = load_splits("fashion_mnist", data_dir=tmp_path)
    assert splits.train_x.shape[1:] == (1, 28, 28)
    assert sum(splits.sizes().values()) == 160


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailable, match="--download"):
        load_splits("mnist", data_dir=tmp_path)


def _fake_idx_folder(folder, n_train=120, n_test=40, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


@pytest.mark.parametrize("name", sorted(n for n, s in SOURCES.items() if s.paper_sizes))
def test_paper_split_gives_the_core_study_sizes_exactly(name):
    sizes = SOURCES[name].paper_sizes
    # a balanced stand-in pool of the real size: 10 classes (100 for CIFAR-100)
    classes = 100 if name == "cifar100" else 10
    labels = np.arange(sum(sizes)) % classes
    parts = split_indices(labels, paper_fractions(name), seed=3)
    assert tuple(len(p) for p in parts) == sizes
    # stratified: every class has its proportional share of the test split
    counts = np.bincount(labels[parts[2]], minlength=classes)
    assert counts.max() - counts.min() <= 1


def test_debian_fashion_mnist_is_found_without_download(tmp_path, monkeypatch):
    # Debian's dataset-fashion-mnist layout: gzip IDX files directly in one folder
    debian = _fake_idx_folder(tmp_path / "usr-share-datasets-fashion-mnist")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    splits = load_splits("fashion_mnist", download=False)
    assert splits.train_x.shape[1:] == (1, 28, 28)
    assert sum(splits.sizes().values()) == 160
    # the same proportions as the core study's 60,000 / 7,000 / 3,000
    assert splits.sizes()["test"] == round(160 * 3_000 / 70_000)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DatasetUnavailable) as info:
        load_splits("fashion_mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message
    assert "--data-dir" in message and "\n" not in message


def test_cli_run_with_a_missing_dataset_exits_2_with_one_line(tiny_spec_dict, write_spec,
                                                               tmp_path, capsys):
    tiny_spec_dict["datasets"] = [{"name": "mnist", "data_dir": str(tmp_path / "none")}]
    storage = tmp_path / "storage"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdtune: error: dataset 'MNIST' not found") and "\n" not in err
    assert "--download" in err and "--data-dir" in err
    assert not storage.exists()  # no run directory, and no storage folder made for it


def _image_folder(root, classes=("cat", "dog", "eel"), per_class=6, size=(10, 12),
                  mode="RGB"):
    rng = np.random.default_rng(0)
    for index, cls in enumerate(classes):
        folder = root / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            pixels = rng.integers(0, 60, shape) + 60 * index  # classes differ in brightness
            Image.fromarray(pixels.astype(np.uint8), mode).save(folder / f"{i}.png")
    return root


def test_image_folder_loads_classes_in_sorted_order(tmp_path):
    root = _image_folder(tmp_path / "pets")
    (root / "cat" / "notes.txt").write_text("not an image, ignored")
    # one odd-sized image is resized to the common size
    Image.new("RGB", (20, 20), (1, 2, 3)).save(root / "dog" / "big.jpg")
    splits = load_splits("imagefolder", path=root, fractions=(0.5, 0.25, 0.25))
    assert splits.num_classes == 3 and splits.channels == 3
    assert splits.train_x.shape[2:] == (12, 10)  # (height, width) of the common size
    assert sum(splits.sizes().values()) == 19
    x = torch.cat([splits.train_x, splits.val_x, splits.test_x]).float().mean(dim=(1, 2, 3))
    y = torch.cat([splits.train_y, splits.val_y, splits.test_y])
    # cat (label 0) is the darkest, eel (label 2) the brightest: labels follow sorted names
    means = [float(x[y == k].mean()) for k in range(3)]
    assert means[0] < means[1] < means[2]


def test_grey_image_folder_has_one_channel(tmp_path):
    splits = load_splits("imagefolder", path=_image_folder(tmp_path / "g", mode="L"),
                         fractions=(0.5, 0.25, 0.25))
    assert splits.channels == 1


@pytest.mark.parametrize("breakage,expected", [
    ("empty", "class folder 'dog' holds no images"),
    ("unreadable", "cannot read image dog/broken.png"),
    ("single", "only one class folder ('cat')"),
])
def test_bad_image_folder_gives_a_clear_error_naming_it(tmp_path, breakage, expected):
    root = tmp_path / "mine"
    if breakage == "single":
        _image_folder(root, classes=("cat",))
    else:
        _image_folder(root, classes=("cat", "eel"))
        (root / "dog").mkdir()
        if breakage == "unreadable":
            (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError) as info:
        load_splits("imagefolder", path=root)
    assert str(root) in str(info.value) and expected in str(info.value)


def test_cli_complexity_of_a_bad_image_folder_exits_2(tmp_path, capsys):
    (tmp_path / "solo" / "only").mkdir(parents=True)
    assert main(["complexity", "imagefolder", "--path", str(tmp_path / "solo")]) == 2
    err = capsys.readouterr().err.strip()
    assert "solo" in err and "at least two" in err and "\n" not in err


def test_digits_read_directly_equal_scikit_learns_loader(monkeypatch):
    from sklearn.datasets import load_digits

    from kdtune import data

    assert data._digits_csv() is not None  # else the test below compares the fallback to itself
    images, labels, classes = data._load_digits(None, False)
    bunch = load_digits()
    assert classes == 10 and images.shape == (1797, 1, 8, 8) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, bunch.target)
    np.testing.assert_array_equal(images[:, 0], np.clip(bunch.images * 16.0, 0, 255)
                                  .astype(np.uint8))
    # and the fallback, for a scikit-learn that keeps the file elsewhere, gives the same
    monkeypatch.setattr(data, "_digits_csv", lambda: None)
    fallback, fallback_labels, _ = data._load_digits(None, False)
    np.testing.assert_array_equal(fallback, images)
    np.testing.assert_array_equal(fallback_labels, labels)
