"""The CIFAR ResNets of He et al. 2016 (section 4.2): ResNet-8 and ResNet-20."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class BasicBlock(nn.Module):
    """He et al.'s two 3x3 convs with an identity shortcut (1x1 conv + BN where shapes change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride,
                                                    bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNets of He et al. 2016 (section 4.2): depth 6n+2, three stages of n blocks.

    Stage widths 16/32/64 by default, stride 2 at the start of stages 2 and 3; ResNet-8 (n=1,
    ~78k parameters) and ResNet-20 (n=3, ~0.27M) train at hundreds of images/s on two cores.
    """

    def __init__(self, in_channels: int, num_classes: int, blocks: int,
                 widths: list[int] | tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 3 or any(w < 1 for w in widths):
            raise ValueError(f"widths must be three positive ints, got {widths}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(channels if b == 0 else width, width, stride if b == 0 else 1)
                      for b in range(blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
            channels = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_resnet8(in_channels: int, num_classes: int, image_size: int,
                  **options: Any) -> nn.Module:
    return CifarResNet(in_channels, num_classes, 1, **options)


def build_resnet20(in_channels: int, num_classes: int, image_size: int,
                   **options: Any) -> nn.Module:
    return CifarResNet(in_channels, num_classes, 3, **options)
