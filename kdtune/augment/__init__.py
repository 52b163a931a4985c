"""Batched augmentation policies, looked up by name.

A policy is one module here with ``apply(images, generator) -> images``: it acts on a float
batch in [0, 1] (N x C x H x W, before normalisation) on the batch's device, with one random
draw per image from ``generator``, so a trial's augmentation is deterministic per seed. The
registry below maps each name a spec can use to its module; it imports nothing heavy, so a spec
is checked without torch. To add a policy: add a module and one line to ``POLICIES``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

POLICIES: dict[str, str | None] = {
    "none": None,
    "paper": "kdtune.augment.paper",  # the core study's rotation +-15 degrees and both flips
    "crop_flip": "kdtune.augment.crop_flip",  # pad-4 random crop + horizontal flip
    "jda": "kdtune.augment.jda",  # joint: rotation, flip, shift, jitter, cutout per image
}


@functools.cache
def policy(name: str) -> Callable[[Any, Any], Any] | None:
    """The ``apply`` function of policy ``name`` (None for ``none``)."""
    if name not in POLICIES:
        raise KeyError(f"unknown augmentation '{name}' (known: {', '.join(POLICIES)})")
    module = POLICIES[name]
    return importlib.import_module(module).apply if module else None


def augment(x: Any, name: str, generator: Any, share: float = 1.0) -> tuple[Any, Any]:
    """Apply policy ``name`` to a float [0, 1] batch; ``share`` is the fraction of images
    augmented (the rest pass through unchanged). Returns the batch and a bool tensor saying
    which images the policy changed (None when none was)."""
    fn = policy(name)
    if fn is None or share <= 0:
        return x, None
    import torch

    out = fn(x, generator)
    if share >= 1:
        return out, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    keep = torch.rand(x.shape[0], generator=generator).to(x.device) >= share
    return torch.where(keep.view(-1, 1, 1, 1), x, out), ~keep
