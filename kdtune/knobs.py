"""Complexity knobs: controlled variants of a dataset, each changing one property.

The core study compared very different datasets; a knob changes one property of one dataset
while the rest stays fixed. What each knob touches, and why:

- ``classes`` (class diversity): keep a subset of classes, relabelled 0..k-1, in every split —
  the task itself changes.
- ``max_train`` (data volume, applied in :func:`kdtune.data.load_splits`): train split only, so
  every volume is measured on the same val/test images.
- ``resolution`` (dimensionality): resize every split to ``resolution`` x ``resolution``
  (pixel averaging when shrinking, bilinear when enlarging) — a property of the images, so train and test see the same one.
- ``channels`` (colour): 3 -> 1 converts to luma (ITU-R 601); 1 -> 3 tints each image with a
  random colour drawn per image (a nuisance variable, like Colored-MNIST: plain channel copies
  would change nothing but the input width). Every split.
- ``pixel_noise`` and ``clutter`` (variability): Gaussian pixel noise (std as a fraction of the
  pixel range) or ``clutter`` fragments (side/4 crops of other images of the same split, pasted
  with max-blending, as in cluttered MNIST), drawn once per image at load time. Every split:
  they change what the images look like, not the supervision.
- ``label_noise`` (supervision): exactly ``round(p * n)`` train labels replaced by a different
  class, uniformly. Train split only: val (which picks configs) and test (which scores them)
  keep the true labels, so every noise level is scored on the same clean images and labels.

Every random draw is seeded from the dataset's ``split_seed`` and the split, never from the other
knobs, so variants that differ in one knob share everything else (for example, label-noise
variants have identical val and test tensors).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_NAMES = ("train", "val", "test")
# a distinct stream per knob, so adding one knob never shifts another's random draws
_STREAM = {"channels": 11, "pixel_noise": 12, "clutter": 13, "label_noise": 14}


@dataclass(frozen=True)
class Knobs:
    """The knob settings of one dataset variant; ``None`` leaves a property as it is."""

    classes: int | tuple[int, ...] | None = None
    label_noise: float | None = None
    resolution: int | None = None
    channels: int | None = None
    pixel_noise: float | None = None
    clutter: int | None = None

    def active(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


def _rng(seed: int, split: str, knob: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_NAMES.index(split), _STREAM[knob]])


def select_classes(images: np.ndarray, labels: np.ndarray, num_classes: int,
                   classes: int | tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep ``classes`` (the first k, or the listed ones) and relabel them 0..k-1."""
    if classes is None:
        return images, labels, num_classes
    keep = list(range(classes)) if isinstance(classes, int) else sorted(set(classes))
    if len(keep) < 2 or max(keep) >= num_classes or min(keep) < 0:
        raise ValueError(f"classes: the dataset has classes 0..{num_classes - 1}; "
                         f"a subset needs at least two of them, got {classes}")
    mapping = np.full(num_classes, -1, dtype=np.int64)
    mapping[keep] = np.arange(len(keep))
    mask = mapping[labels] >= 0
    return images[mask], mapping[labels[mask]], len(keep)


def resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """Resize uint8 N x C x H x W images to side x side.

    Shrinking averages the pixels each output pixel covers (``area``: no aliasing, brightness
    kept); enlarging interpolates bilinearly.
    """
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    if side <= min(x.shape[-2:]):
        out = F.interpolate(x.float(), size=(side, side), mode="area")
    else:
        out = F.interpolate(x.float(), size=(side, side), mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def set_channels(x: torch.Tensor, channels: int, rng: np.random.Generator) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    # a random colour per image, brightest channel at full scale so contrast is kept
    colour = torch.from_numpy(rng.uniform(0.1, 1.0, size=(x.shape[0], 3)).astype(np.float32))
    colour /= colour.max(dim=1, keepdim=True).values
    grey = x.float().mean(1, keepdim=True)
    return (grey * colour.view(-1, 3, 1, 1)).round_().clamp_(0, 255).to(torch.uint8)


def add_pixel_noise(x: torch.Tensor, std: float, rng: np.random.Generator) -> torch.Tensor:
    if std <= 0:
        return x
    noise = torch.from_numpy(rng.standard_normal(size=tuple(x.shape), dtype=np.float32))
    return (x.float() + noise * (255.0 * std)).round_().clamp_(0, 255).to(torch.uint8)


def add_clutter(x: torch.Tensor, fragments: int, rng: np.random.Generator,
                chunk: int = 8192) -> torch.Tensor:
    """Paste ``fragments`` crops of other images of the same split into each image (max-blend)."""
    n, _, h, w = x.shape
    if fragments <= 0 or n < 2:
        return x
    f = max(2, min(h, w) // 4)
    out = x.clone()
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    for _ in range(fragments):
        # another image as the source (never the image itself), a source and a target window
        src = torch.from_numpy((np.arange(n) + rng.integers(1, n, n)) % n)
        sy, sx, ty, tx = (torch.from_numpy(rng.integers(0, lim - f + 1, n))
                          for lim in (h, w, h, w))
        for start in range(0, n, chunk):
            part = slice(start, min(n, start + chunk))
            m = part.stop - part.start
            # canvas pixel (r, c) inside the target window reads source pixel (r - ty + sy, ...)
            r = rows - ty[part].view(m, 1, 1)
            c = cols - tx[part].view(m, 1, 1)
            inside = (r >= 0) & (r < f) & (c >= 0) & (c < f)
            rr = (r + sy[part].view(m, 1, 1)).clamp_(0, h - 1).expand(m, h, w)
            cc = (c + sx[part].view(m, 1, 1)).clamp_(0, w - 1).expand(m, h, w)
            b = src[part].view(m, 1, 1).expand(m, h, w)
            patch = x.permute(0, 2, 3, 1)[b, rr, cc].permute(0, 3, 1, 2)  # m x C x h x w
            patch = patch * inside.unsqueeze(1)
            out[part] = torch.maximum(out[part], patch)
    return out


def apply_image_knobs(x: torch.Tensor, knobs: Knobs, split: str, seed: int) -> torch.Tensor:
    """The knobs that change the images of one split, in a fixed order."""
    if knobs.resolution is not None:
        x = resize(x, knobs.resolution)
    if knobs.channels is not None:
        x = set_channels(x, knobs.channels, _rng(seed, split, "channels"))
    if knobs.pixel_noise:
        x = add_pixel_noise(x, knobs.pixel_noise, _rng(seed, split, "pixel_noise"))
    if knobs.clutter:
        x = add_clutter(x, knobs.clutter, _rng(seed, split, "clutter"))
    return x.contiguous()


def noisy_labels(labels: torch.Tensor, rate: float, num_classes: int,
                 seed: int) -> torch.Tensor:
    """Replace exactly ``round(rate * n)`` labels by a different class, chosen uniformly."""
    n = len(labels)
    flips = int(round(rate * n))
    if flips == 0:
        return labels
    rng = _rng(seed, "train", "label_noise")
    where = torch.from_numpy(rng.choice(n, flips, replace=False))
    shift = torch.from_numpy(rng.integers(1, num_classes, flips))
    out = labels.clone()
    out[where] = (labels[where] + shift) % num_classes
    return out
