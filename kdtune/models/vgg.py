"""torchvision's VGG with batch norm (Simonyan & Zisserman 2015), adapted to small inputs, so
that heterogeneous pairs (VGG <-> ResNet, as in the Duke poster) can be studied.

The convolutions are torchvision's own (``torchvision.models.vgg.make_layers`` on its ``cfgs``,
batch norm on, its initialisation); what changes for 8-32 px images: the first convolution takes
any number of channels; the five blocks are the stages ``stage1`` ... ``stage5`` (the hint taps),
each ending in its 2x max-pool only while the feature map is larger than 1 px; and the 7x7
average pool and three-layer 4096-wide classifier (120M parameters, made for 224 px) become a
global average pool and one linear layer, as CIFAR VGGs do. Option ``widths`` (five ints)
replaces the per-block widths 64/128/256/512/512, e.g. [16, 32, 64, 128, 128] for a CPU-sized
net.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

DEFAULT_WIDTHS = (64, 128, 256, 512, 512)


def _config(name: str, widths: list[int] | tuple[int, ...]) -> list[Any]:
    """torchvision's layer list for ``name`` ('A' = VGG-11, 'B' = 13, 'D' = 16) with block b's
    convolutions ``widths[b]`` wide."""
    if len(widths) != 5 or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths must be five positive ints, got {list(widths)}")
    out, block = [], 0
    for item in cfgs[name]:
        if item == "M":
            out.append("M")
            block += 1
        else:
            out.append(int(widths[block]))
    return out


class VGG(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, config: str,
                 widths: list[int] | tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        features = make_layers(_config(config, widths), batch_norm=True)
        first = features[0]
        features[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
        stage: list[nn.Module] = []
        index, side = 1, image_size
        for layer in features:
            if isinstance(layer, nn.MaxPool2d):
                if side > 1:  # past 1 px a pool has nothing left to halve
                    stage.append(layer)
                    side //= 2
                self.add_module(f"stage{index}", nn.Sequential(*stage))
                stage, index = [], index + 1
            else:
                stage.append(layer)
        self.num_stages = index - 1
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(int(widths[-1]), num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.01)  # torchvision's init of its linear layers
        nn.init.zeros_(self.fc.bias)
        nn.init.kaiming_normal_(features[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(features[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"stage{index}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _builder(config: str):
    def build(in_channels: int, num_classes: int, image_size: int, **options: Any) -> nn.Module:
        return VGG(in_channels, num_classes, image_size, config, **options)

    return build


build_vgg11 = _builder("A")
build_vgg13 = _builder("B")
build_vgg16 = _builder("D")
