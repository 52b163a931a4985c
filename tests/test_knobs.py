"""Complexity knobs: each changes one property, on the splits it should, deterministically."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from kdtune.knobs import add_clutter, noisy_labels
from kdtune.spec import DatasetSpec, SpecError, parse_spec


def _load(**knobs):
    return DatasetSpec(name="digits", **knobs).load()


@pytest.fixture(scope="module")
def clean():
    return _load()


@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_label_noise_flips_exactly_that_share_of_train_labels_only(clean, rate):
    noisy = _load(label_noise=rate)
    assert torch.equal(noisy.train_x, clean.train_x)
    flipped = noisy.train_y != clean.train_y
    assert int(flipped.sum()) == round(rate * len(clean.train_y))
    assert set(noisy.train_y.tolist()) <= set(range(10))
    # val (which selects configs) and test (which scores them) stay clean and identical
    for part in ("val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(noisy, part), getattr(clean, part)), part


def test_label_noise_never_keeps_the_true_class_and_spreads_over_the_others():
    labels = torch.arange(10_000) % 10
    out = noisy_labels(labels, 0.5, 10, seed=0)
    changed = out != labels
    assert int(changed.sum()) == 5_000
    counts = torch.bincount((out[changed] - labels[changed]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 450  # every other class, ~555 each


def test_class_subset_relabels_every_split(clean):
    subset = _load(classes=[2, 5, 7])
    assert subset.num_classes == 3
    for y in (subset.train_y, subset.val_y, subset.test_y):
        assert set(y.tolist()) == {0, 1, 2}
    total = sum(subset.sizes().values())
    assert total == sum(int((lab == k).sum()) for lab in (clean.train_y, clean.val_y,
                                                          clean.test_y) for k in (2, 5, 7))
    assert _load(classes=4).num_classes == 4


def test_class_subset_beyond_the_dataset_is_a_clear_error():
    from kdtune.data import DatasetError

    with pytest.raises(DatasetError, match="classes 0..9"):
        _load(classes=[3, 12])


def test_resolution_and_channels_change_every_split(clean):
    small = _load(resolution=4)
    for x in (small.train_x, small.val_x, small.test_x):
        assert x.shape[1:] == (1, 4, 4) and x.dtype == torch.uint8
    # down-scaling averages: the mean brightness is kept within a grey level or two
    assert abs(small.train_x.float().mean() - clean.train_x.float().mean()) < 2
    colour = _load(channels=3)
    assert colour.channels == 3 and colour.test_x.shape[1] == 3
    # tinted: the channels differ from one another, and the luma keeps the digit's shape
    assert not torch.equal(colour.train_x[:, 0], colour.train_x[:, 1])
    bright = colour.train_x.float().amax(1) > 0
    assert torch.equal(bright, clean.train_x[:, 0] > 0)
    assert _load(channels=3, resolution=16).train_x.shape[1:] == (3, 16, 16)


def test_pixel_noise_and_clutter_are_fixed_per_image_and_seeded(clean):
    noisy = _load(pixel_noise=0.2)
    again = _load(pixel_noise=0.2)
    assert torch.equal(noisy.train_x, again.train_x) and torch.equal(noisy.test_x, again.test_x)
    residual = noisy.train_x.float() - clean.train_x.float()
    assert 0.1 * 255 < residual.std() < 0.2 * 255  # clipping at 0 and 255 eats some of it
    assert not torch.equal(noisy.test_x, clean.test_x)  # a property of the images, every split
    assert torch.equal(noisy.train_y, clean.train_y)
    other_seed = DatasetSpec(name="digits", pixel_noise=0.2, split_seed=1).load()
    assert not torch.equal(other_seed.test_x, noisy.test_x)


def test_clutter_pastes_fragments_of_other_images():
    x = torch.zeros(50, 1, 16, 16, dtype=torch.uint8)
    x[:, :, 6:10, 6:10] = torch.arange(1, 51, dtype=torch.uint8).view(50, 1, 1, 1)
    out = add_clutter(x, 3, __import__("numpy").random.default_rng(0))
    assert (out >= x).all()  # max-blending never darkens
    assert (out != x).any(dim=(1, 2, 3)).float().mean() > 0.3
    for i in range(50):  # every pasted value is another image's value, never its own
        values = set(out[i][out[i] != x[i]].tolist())
        assert i + 1 not in values


def test_labels_teacher_ids_and_knob_columns_are_distinct(tiny_spec_dict):
    variants = [{"name": "digits"}, {"name": "digits", "label_noise": 0.0},
                {"name": "digits", "label_noise": 0.2}, {"name": "digits", "max_train": 300},
                {"name": "digits", "classes": [0, 1, 2]}, {"name": "digits", "resolution": 4},
                {"name": "digits", "pixel_noise": 0.1, "clutter": 2}]
    tiny_spec_dict["datasets"] = variants
    spec = parse_spec(tiny_spec_dict)
    labels = [ds.label for ds in spec.datasets]
    assert labels == ["digits", "digits[label_noise=0]", "digits[label_noise=0.2]",
                      "digits[n=300]", "digits[classes=0+1+2]", "digits[resolution=4]",
                      "digits[pixel_noise=0.1,clutter=2]"]
    ids = [spec.teacher_id(ds) for ds in spec.datasets]
    assert len(set(ids[2:])) == len(ids) - 2 and ids[2] != ids[0]
    knobs = [ds.knob() for ds in spec.datasets]
    assert knobs[:5] == [(None, None), ("label_noise", 0.0), ("label_noise", 0.2),
                         ("max_train", 300.0), ("classes", 3.0)]
    assert knobs[6] == ("pixel_noise+clutter", None)


def test_teacher_id_of_a_plain_dataset_is_what_it_was_before_knobs(tiny_spec_dict):
    # teachers stored by earlier runs must still be found: the hash of a spec without knobs
    # is computed exactly as before they existed
    spec = parse_spec(tiny_spec_dict)
    ds = spec.datasets[0]
    before = {"dataset": {"name": "digits", "split": "paper", "split_seed": 0, "max_train": 300},
              "model": spec.teacher.model_dump(), "seed": 0,
              "epochs": spec.training.teacher_epochs,
              "training": spec.training.model_dump(exclude={"student_epochs", "amp",
                                                            "aug_share"})}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert spec.teacher_id(ds) == f"digits-small_cnn-s0-{digest}"


def test_a_dataset_listed_twice_is_rejected(tiny_spec_dict):
    tiny_spec_dict["datasets"] = [{"name": "digits", "label_noise": 0.1},
                                  {"name": "digits", "label_noise": 0.1}]
    with pytest.raises(SpecError, match=r"^datasets\[1\]: the same dataset as datasets\[0\]"):
        parse_spec(tiny_spec_dict)


@pytest.mark.parametrize("dataset,expected", [
    ({"name": "digits", "label_noise": 1.0}, "datasets[0].label_noise: Input should be less than 1"),
    ({"name": "digits", "classes": [3]}, "datasets[0].classes: Value error, a class subset"),
    ({"name": "digits", "channels": 2}, "datasets[0].channels: Input should be 1 or 3"),
    ({"name": "imagefolder"}, "datasets[0].path: imagefolder needs path"),
    ({"name": "digits", "path": "/x"}, "datasets[0].path: path is for imagefolder"),
])
def test_bad_knob_is_named(tiny_spec_dict, dataset, expected):
    tiny_spec_dict["datasets"] = [dataset]
    with pytest.raises(SpecError) as info:
        parse_spec(tiny_spec_dict)
    assert str(info.value).startswith(expected.replace("Value error, ", "")), str(info.value)
