"""``crop_flip``: the CIFAR standard, a pad-4 random crop and a random horizontal flip."""

from __future__ import annotations

import torch

from kdtune.augment.ops import flip, pad_crop


def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return flip(pad_crop(x, 4, generator), 3, generator)
