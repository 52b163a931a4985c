"""Batched augmentation policies: shapes, determinism per seed, the augmented mask, and what
each policy does to an image."""

from __future__ import annotations

import pytest
import torch

from kdtune.augment import POLICIES, augment
from kdtune.augment.ops import pad_crop, rotate_flip


@pytest.mark.parametrize("policy", list(POLICIES))
def test_augmentation_keeps_shape_and_is_deterministic(policy):
    x = torch.rand(16, 3, 12, 12)
    a, mask_a = augment(x, policy, torch.Generator().manual_seed(0))
    b, mask_b = augment(x, policy, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    if policy == "none":
        assert mask_a is None and torch.equal(a, x)
    else:
        assert not torch.equal(a, x)
        assert mask_a.dtype == torch.bool and bool(mask_a.all()) and torch.equal(mask_a, mask_b)


def test_augmentation_share_leaves_the_rest_untouched():
    x = torch.rand(200, 1, 8, 8)
    out, augmented = augment(x, "crop_flip", torch.Generator().manual_seed(0), share=0.25)
    unchanged = sum(torch.equal(out[i], x[i]) for i in range(len(x)))
    assert 120 <= unchanged <= 180
    # the mask says which images the policy changed: every unmasked image is untouched, and
    # about a quarter are masked
    assert all(torch.equal(out[i], x[i]) for i in range(len(x)) if not augmented[i])
    assert 20 <= int(augmented.sum()) <= 80


def test_registry_names_every_policy_and_refuses_unknown_ones():
    assert {"none", "paper", "crop_flip"} <= set(POLICIES)
    with pytest.raises(KeyError, match="unknown augmentation 'mixup9'"):
        augment(torch.rand(2, 1, 4, 4), "mixup9", torch.Generator())


def test_paper_policy_is_rotation_then_flips_and_crop_is_a_zero_padded_shift():
    x = torch.rand(64, 2, 9, 9)
    # with no rotation, every image comes out as itself flipped in some way
    out = rotate_flip(x, 0.0, torch.Generator().manual_seed(0))
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
    crops = pad_crop(img, 4, torch.Generator().manual_seed(1))
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
