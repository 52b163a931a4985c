"""torchvision's ResNet-18/34/50, adapted to small images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision import models as tv_models


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


build_resnet18 = _torchvision_resnet(tv_models.resnet18)
build_resnet34 = _torchvision_resnet(tv_models.resnet34)
build_resnet50 = _torchvision_resnet(tv_models.resnet50)
