"""JDA: each part of the joint policy does what it says, per image, deterministically."""

from __future__ import annotations

import pytest
import torch

from kdtune.augment import augment, jda
from kdtune.spec import parse_spec


def _run(monkeypatch, x, seed=0, **constants):
    for name, value in constants.items():
        monkeypatch.setattr(jda, name, value)
    return jda.apply(x, torch.Generator().manual_seed(seed))


def test_jda_is_deterministic_per_seed_in_range_and_per_image(monkeypatch):
    x = torch.rand(1, 1, 16, 16).repeat(32, 1, 1, 1)  # one image, 32 times
    a, b = _run(monkeypatch, x, 0), _run(monkeypatch, x, 0)
    assert torch.equal(a, b) and not torch.equal(a, _run(monkeypatch, x, 1))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    # every image draws its own parameters: 32 copies of one image come out different
    assert len({tuple(img.flatten().tolist()) for img in a}) == 32


def test_without_rotation_jitter_and_cutout_an_image_is_flipped_and_shifted(monkeypatch):
    x = torch.rand(48, 2, 8, 8)
    out = _run(monkeypatch, x, DEGREES=0.0, BRIGHTNESS=0.0, CONTRAST=(1.0, 1.0), CUTOUT_P=0.0)
    shift, seen = 1, set()  # side 8 // 8
    for i in range(len(x)):
        matches = []
        for flip in (False, True):
            src = x[i].flip(2) if flip else x[i]
            for dy in range(-shift, shift + 1):
                for dx in range(-shift, shift + 1):
                    moved = torch.zeros_like(src)
                    # a shift of the sampling grid by +d moves the content by -d
                    ys, xs = slice(max(0, -dy), 8 - max(0, dy)), slice(max(0, -dx), 8 - max(0, dx))
                    yt, xt = slice(max(0, dy), 8 - max(0, -dy)), slice(max(0, dx), 8 - max(0, -dx))
                    moved[:, ys, xs] = src[:, yt, xt]
                    if torch.allclose(out[i], moved, atol=1e-5):
                        matches.append((flip, dy, dx))
        assert matches, f"image {i} is not a flipped, shifted copy of its input"
        seen.add(matches[0][0])
    assert seen == {False, True}  # both flips happen


def test_cutout_zeroes_one_square_and_changes_nothing_else(monkeypatch):
    x = 0.2 + 0.6 * torch.rand(64, 1, 16, 16)  # no pixel is 0 before the cutout
    fixed = {"DEGREES": 0.0, "BRIGHTNESS": 0.0, "CONTRAST": (1.0, 1.0)}
    without = _run(monkeypatch, x, CUTOUT_P=0.0, **fixed)
    with_cut = _run(monkeypatch, x, CUTOUT_P=1.0, **fixed)  # same draws, so the same shifts
    side = 16 // 4
    for i in range(len(x)):
        changed = (with_cut[i] != without[i])[0].nonzero()
        assert bool((with_cut[i][0][tuple(changed.T)] == 0).all())
        if len(changed):
            assert int(changed[:, 0].max() - changed[:, 0].min()) < side
            assert int(changed[:, 1].max() - changed[:, 1].min()) < side
    assert sum(bool((with_cut[i] != without[i]).any()) for i in range(len(x))) > 40


def test_brightness_moves_each_image_by_its_own_constant(monkeypatch):
    x = 0.3 + 0.4 * torch.rand(32, 1, 12, 12)
    fixed = {"DEGREES": 0.0, "CONTRAST": (1.0, 1.0), "CUTOUT_P": 0.0}
    base = _run(monkeypatch, x, BRIGHTNESS=0.0, **fixed)
    bright = _run(monkeypatch, x, BRIGHTNESS=0.2, **fixed)
    offsets = []
    for i in range(len(x)):
        inside = base[i] > 0.25  # not the zeros a shift brought in (clamped at 0)
        delta = (bright[i] - base[i])[inside]
        assert float(delta.max() - delta.min()) < 1e-5
        offsets.append(float(delta.mean()))
    assert max(offsets) <= 0.2 + 1e-6 and min(offsets) >= -0.2 - 1e-6
    assert max(offsets) - min(offsets) > 0.1  # drawn per image


@pytest.mark.parametrize("field", ["training.augmentation", "search.augmentation"])
def test_jda_is_a_policy_a_spec_can_name(tiny_spec_dict, field):
    if field == "training.augmentation":
        tiny_spec_dict["training"]["augmentation"] = "jda"
    else:
        tiny_spec_dict["search"]["augmentation"] = ["paper", "jda"]
    parse_spec(tiny_spec_dict)
    out, mask = augment(torch.rand(4, 1, 8, 8), "jda", torch.Generator().manual_seed(0), 0.5)
    assert out.shape == (4, 1, 8, 8) and mask.dtype == torch.bool
