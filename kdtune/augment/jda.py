"""``jda``: a rich joint augmentation, after "What Role Does Data Augmentation Play in
Knowledge Distillation?" (../shared/SEEDS.md section 3: joint data augmentation beats a single
rotation). Per image, every draw independent: a random rotation within +-15 degrees, a
horizontal flip (p = 1/2), a translation of up to side/8 pixels each way (a random crop of the
zero-padded image), brightness (+-0.2) and contrast (x0.7-1.3) jitter, and a cutout of a
side/4 square (p = 1/2). Rotation, flip and translation are one ``grid_sample``; the rest are
whole-batch tensor operations. Deterministic per generator seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEGREES = 15.0
BRIGHTNESS = 0.2
CONTRAST = (0.7, 1.3)
CUTOUT_P = 0.5


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    shift = max(1, min(h, w) // 8)
    angles = _uniform(n, -DEGREES, DEGREES, generator) * (math.pi / 180)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    # whole-pixel translations: with align_corners=False a shift of 2*d/size in normalised
    # coordinates moves pixel centres onto pixel centres (a zero-padded crop, exactly)
    dx = torch.randint(-shift, shift + 1, (n,), generator=generator).float() * (2.0 / w)
    dy = torch.randint(-shift, shift + 1, (n,), generator=generator).float() * (2.0 / h)
    cos, sin = angles.cos(), angles.sin()
    theta = torch.stack([torch.stack([cos * flip, -sin, dx], 1),
                         torch.stack([sin * flip, cos, dy], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # brightness and contrast about each image's mean, then back into [0, 1]
    brightness = _uniform(n, -BRIGHTNESS, BRIGHTNESS, generator).to(x.device, x.dtype)
    contrast = _uniform(n, *CONTRAST, generator).to(x.device, x.dtype)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast.view(-1, 1, 1, 1) + mean
           + brightness.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    # cutout: a square of side/4 (at least one pixel) set to zero, centred anywhere
    side = max(1, min(h, w) // 4)
    cy = torch.randint(0, h, (n,), generator=generator).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator).to(x.device)
    cut = (torch.rand(n, generator=generator) < CUTOUT_P).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = (cy - side // 2).view(n, 1, 1), (cx - side // 2).view(n, 1, 1)
    inside = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
              & cut.view(n, 1, 1))
    return out.masked_fill(inside.unsqueeze(1), 0.0)
