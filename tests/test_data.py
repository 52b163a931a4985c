"""Datasets, splits and batched augmentation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from kdtune.data import (
    PAPER_SPLIT,
    DatasetUnavailable,
    augment,
    load_splits,
    read_idx,
    split_indices,
)


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


@pytest.mark.parametrize("policy", ["none", "paper", "crop_flip"])
def test_augmentation_keeps_shape_and_is_deterministic(policy):
    x = torch.rand(16, 3, 12, 12)
    a = augment(x, policy, torch.Generator().manual_seed(0))
    b = augment(x, policy, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    if policy != "none":
        assert not torch.equal(a, x)


def test_augmentation_share_leaves_the_rest_untouched():
    x = torch.rand(200, 1, 8, 8)
    out = augment(x, "crop_flip", torch.Generator().manual_seed(0), share=0.25)
    unchanged = sum(torch.equal(out[i], x[i]) for i in range(len(x)))
    assert 120 <= unchanged <= 180


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


def test_paper_policy_is_rotation_then_flips_and_crop_is_a_zero_padded_shift():
    from kdtune.data import _pad_crop, _rotate_flip

    x = torch.rand(64, 2, 9, 9)
    # with no rotation, every image comes out as itself flipped in some way
    out = _rotate_flip(x, 0.0, torch.Generator().manual_seed(0))
    kinds = set()
    for i in range(len(x)):
        for kind, dims in (("id", ()), ("h", (2,)), ("v", (1,)), ("hv", (1, 2))):
            if torch.allclose(out[i], x[i].flip(dims) if dims else x[i], atol=1e-5):
                kinds.add(kind)
                break
        else:
            raise AssertionError(f"image {i} is not a flip of its input")
    assert kinds == {"id", "h", "v", "hv"}
    # pad-crop: each output is the input shifted by at most 4 pixels, zeros shifted in
    img = torch.arange(1, 82, dtype=torch.float32).view(1, 1, 9, 9).repeat(32, 1, 1, 1)
    crops = _pad_crop(img, 4, torch.Generator().manual_seed(1))
    for crop in crops:
        nonzero = crop[0] > 0
        r0, c0 = (int(v) for v in nonzero.nonzero()[0])
        value = int(crop[0, r0, c0]) - 1  # the top-left input pixel still visible
        dy, dx = r0 - value // 9, c0 - value % 9
        assert abs(dy) <= 4 and abs(dx) <= 4
        shifted = torch.zeros(9, 9)
        src = img[0, 0, max(0, -dy):9 - max(0, dy), max(0, -dx):9 - max(0, dx)]
        shifted[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        assert torch.equal(crop[0], shifted)
