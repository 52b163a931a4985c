"""A plain conv net: one conv-BN-ReLU per width, 2x max-pool after every stage but the first."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SmallCNN(nn.Module):
    """A plain conv net: one conv-BN-ReLU per width, 2x max-pool after every stage but the first.

    Small enough to train on two CPU cores in seconds; its stages are the hint taps.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 widths: list[int] | tuple[int, ...] = (32, 64)) -> None:
        super().__init__()
        widths = list(widths)
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        channels = in_channels
        for index, width in enumerate(widths):
            layers: list[nn.Module] = [
                nn.Conv2d(channels, int(width), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(width)),
                nn.ReLU(inplace=True),
            ]
            if index > 0 and image_size >> index >= 1:
                layers.append(nn.MaxPool2d(2))
            self.add_module(f"stage{index + 1}", nn.Sequential(*layers))
            channels = int(width)
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(self.num_stages):
            x = getattr(self, f"stage{index + 1}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def build(in_channels: int, num_classes: int, image_size: int, **options: Any) -> nn.Module:
    return SmallCNN(in_channels, num_classes, image_size, **options)
