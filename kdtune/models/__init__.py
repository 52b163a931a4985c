"""Teacher and student architectures, looked up by name, with their hint-layer taps.

Every architecture declares the layers a hint can be taken from (``taps``), the node that holds
its logits and the options a spec may set, so a spec is checked without building a model (and
without importing torch: the builders are imported on first use). ``kdtune.models.taps`` taps
a built model with ``torchvision.models.feature_extraction``. To add an architecture: a module
here with ``build(in_channels, num_classes, image_size, **options)`` and one entry in ``ARCHS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _fixed(*taps: str) -> Callable[[dict[str, Any]], tuple[str, ...]]:
    return lambda options: taps


def _stages(options: dict[str, Any]) -> tuple[str, ...]:
    """One tap per width: a small CNN is as deep as its widths list is long."""
    return tuple(f"stage{i}" for i in range(1, len(options.get("widths", (32, 64))) + 1))


@dataclass(frozen=True)
class Arch:
    """One entry of the model registry."""

    name: str
    builder: str  # "module:function", imported on first use
    taps_of: Callable[[dict[str, Any]], tuple[str, ...]]  # the taps a given options dict builds
    logits_node: str
    summary: str
    # a hard cap on options keeps typos in a spec ("widht") from being silently ignored
    options: tuple[str, ...] = ()
    n_widths: int | None = None  # how many ints option widths takes (None: 1 to 8, any)

    def build(self, in_channels: int, num_classes: int, image_size: int,
              **options: Any) -> Any:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)(
            in_channels, num_classes, image_size, **options)


_RESNET_TAPS = _fixed("layer1", "layer2", "layer3", "layer4")
_VGG_TAPS = _fixed("stage1", "stage2", "stage3", "stage4", "stage5")
_CIFAR_TAPS = _fixed("layer1", "layer2", "layer3")

ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("small_cnn", "kdtune.models.small_cnn:build", _stages, "fc",
         "conv-BN-ReLU per width (option widths, default [32, 64])", ("widths",)),
    Arch("resnet8", "kdtune.models.cifar_resnet:build_resnet8", _CIFAR_TAPS, "fc",
         "CIFAR ResNet-8 (He et al. 2016; option widths, default [16, 32, 64])", ("widths",),
         3),
    Arch("resnet20", "kdtune.models.cifar_resnet:build_resnet20", _CIFAR_TAPS, "fc",
         "CIFAR ResNet-20 (He et al. 2016; option widths, default [16, 32, 64])", ("widths",),
         3),
    Arch("resnet18", "kdtune.models.torchvision_resnet:build_resnet18", _RESNET_TAPS, "fc",
         "torchvision ResNet-18"),
    Arch("resnet34", "kdtune.models.torchvision_resnet:build_resnet34", _RESNET_TAPS, "fc",
         "torchvision ResNet-34"),
    Arch("resnet50", "kdtune.models.torchvision_resnet:build_resnet50", _RESNET_TAPS, "fc",
         "torchvision ResNet-50"),
    Arch("vgg11", "kdtune.models.vgg:build_vgg11", _VGG_TAPS, "fc",
         "torchvision VGG-11 with batch norm, small-input head (option widths, five ints)",
         ("widths",), 5),
    Arch("vgg13", "kdtune.models.vgg:build_vgg13", _VGG_TAPS, "fc",
         "torchvision VGG-13 with batch norm, small-input head (option widths)", ("widths",), 5),
    Arch("vgg16", "kdtune.models.vgg:build_vgg16", _VGG_TAPS, "fc",
         "torchvision VGG-16 with batch norm, small-input head (option widths)", ("widths",), 5),
)}


def arch_taps(arch: str, options: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The hint-layer names a model built from (arch, options) really has."""
    return ARCHS[arch].taps_of(options or {})


def build_model(arch: str, in_channels: int, num_classes: int, image_size: int,
                options: dict[str, Any] | None = None) -> Any:
    """Build a registry model (an ``nn.Module``) for images of ``in_channels`` x
    ``image_size`` x ``image_size``."""
    return ARCHS[arch].build(in_channels, num_classes, image_size, **(options or {}))
