"""Teacher and student architectures, looked up by name, with their hint-layer taps.

Every architecture declares the names of the layers a hint can be taken from (``taps``) and the
node that holds its logits, so a spec can be checked without building a model, and
``torchvision.models.feature_extraction`` can tap any of them during training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.models.feature_extraction import create_feature_extractor


@dataclass(frozen=True)
class Arch:
    """One entry of the model registry."""

    name: str
    build: Callable[..., nn.Module]  # build(in_channels, num_classes, image_size, **options)
    taps: tuple[str, ...]
    logits_node: str
    summary: str
    # a hard cap on options keeps typos in a spec ("widht") from being silently ignored
    options: tuple[str, ...] = ()


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


def _small_cnn(in_channels: int, num_classes: int, image_size: int, **options: Any) -> nn.Module:
    return SmallCNN(in_channels, num_classes, image_size, **options)


def _torchvision_resnet(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A torchvision ResNet adapted to small images: 3x3 stride-1 stem and no max-pool at <=32 px."""

    def build(in_channels: int, num_classes: int, image_size: int, **options: Any) -> nn.Module:
        model = builder(weights=None, num_classes=num_classes, **options)
        if image_size <= 32:
            model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        return model

    return build


def _small_cnn_taps() -> tuple[str, ...]:
    # widths can be of any length; stage1..stage8 covers every sensible small net and the
    # spec check below narrows it to the stages a given options dict actually builds
    return tuple(f"stage{i}" for i in range(1, 9))


ARCHS: dict[str, Arch] = {
    "small_cnn": Arch("small_cnn", _small_cnn, _small_cnn_taps(), "fc",
                      "conv-BN-ReLU per width (option widths, default [32, 64])", ("widths",)),
    "resnet18": Arch("resnet18", _torchvision_resnet(tv_models.resnet18),
                     ("layer1", "layer2", "layer3", "layer4"), "fc", "torchvision ResNet-18"),
    "resnet34": Arch("resnet34", _torchvision_resnet(tv_models.resnet34),
                     ("layer1", "layer2", "layer3", "layer4"), "fc", "torchvision ResNet-34"),
    "resnet50": Arch("resnet50", _torchvision_resnet(tv_models.resnet50),
                     ("layer1", "layer2", "layer3", "layer4"), "fc", "torchvision ResNet-50"),
}


def arch_taps(arch: str, options: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The hint-layer names a model built from (arch, options) really has."""
    entry = ARCHS[arch]
    if arch == "small_cnn":
        widths = (options or {}).get("widths", (32, 64))
        return tuple(f"stage{i}" for i in range(1, len(widths) + 1))
    return entry.taps


def build_model(arch: str, in_channels: int, num_classes: int, image_size: int,
                options: dict[str, Any] | None = None) -> nn.Module:
    """Build a registry model for images of ``in_channels`` x ``image_size`` x ``image_size``."""
    return ARCHS[arch].build(in_channels, num_classes, image_size, **(options or {}))


class Tapped(nn.Module):
    """A model that returns ``(logits, hint_features)`` from the named tap.

    Wraps torchvision's feature extractor; the extractor shares its parameters with the model it
    was made from, so saving ``model.state_dict()`` saves what was trained.
    """

    def __init__(self, model: nn.Module, arch: str, tap: str) -> None:
        super().__init__()
        self.extractor = create_feature_extractor(
            model, return_nodes={tap: "hint", ARCHS[arch].logits_node: "logits"})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.extractor(x)
        return out["logits"], out["hint"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
