"""``paper``: the core study's policy, RandomRotation(15) + RandomHorizontalFlip +
RandomVerticalFlip (Belinga et al. 2024), as one resampling per batch."""

from __future__ import annotations

import torch

from kdtune.augment.ops import rotate_flip


def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return rotate_flip(x, 15.0, generator)
