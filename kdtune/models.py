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


def _cifar_resnet(depth: int) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, image_size: int, **options: Any) -> nn.Module:
        return CifarResNet(in_channels, num_classes, (depth - 2) // 6, **options)

    return build


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
    "resnet8": Arch("resnet8", _cifar_resnet(8), ("layer1", "layer2", "layer3"), "fc",
                    "CIFAR ResNet-8 (He et al. 2016; option widths, default [16, 32, 64])",
                    ("widths",)),
    "resnet20": Arch("resnet20", _cifar_resnet(20), ("layer1", "layer2", "layer3"), "fc",
                     "CIFAR ResNet-20 (He et al. 2016; option widths, default [16, 32, 64])",
                     ("widths",)),
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


def model_taps(model: nn.Module, arch: str) -> tuple[str, ...]:
    """The taps a built model really has (a small CNN's depth depends on its widths)."""
    if isinstance(model, SmallCNN):
        return tuple(f"stage{i}" for i in range(1, model.num_stages + 1))
    return ARCHS[arch].taps


class MultiExit(nn.Module):
    """A model with a classifier after every stage (MSKD's multi-exit student).

    The exits after stages 1..N-1 are new heads (global average pool + linear); the last exit is
    the model's own classifier, so the model itself is the deepest exit and stays usable alone.
    ``forward`` returns the exits' logits, shallowest first.
    """

    def __init__(self, model: nn.Module, arch: str, num_classes: int,
                 example: torch.Tensor) -> None:
        super().__init__()
        taps = model_taps(model, arch)[:-1]
        if not taps:
            raise ValueError(f"{arch} has a single stage: no early exit to attach")
        self.taps = taps
        nodes = {tap: tap for tap in taps} | {ARCHS[arch].logits_node: "logits"}
        self.extractor = create_feature_extractor(model, return_nodes=nodes)
        with torch.no_grad():  # one probe batch tells each head its channel count
            was_training = model.training
            self.extractor.eval()
            probe = self.extractor(example[:2])
            self.extractor.train(was_training)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(probe[tap].shape[1], num_classes)) for tap in taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.extractor(x)
        return [head(out[tap]) for tap, head in zip(self.taps, self.heads)] + [out["logits"]]


def count_flops(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Forward FLOPs of one image, counted by ``torch.utils.flop_counter``.

    Convolutions and matrix products only (one multiply-add = 2 FLOPs); BatchNorm, ReLU and
    pooling are left out, as in most published FLOP counts.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, image_size, image_size))
    model.train(was_training)
    return int(counter.get_total_flops())


def model_table(image_size: int = 32, channels: int = 3,
                num_classes: int = 10) -> list[dict[str, Any]]:
    """One row per registry model at its default options: parameters, FLOPs, taps."""
    rows = []
    for name, entry in ARCHS.items():
        model = build_model(name, channels, num_classes, image_size)
        rows.append({"arch": name, "params": count_parameters(model),
                     "flops": count_flops(model, channels, image_size),
                     "taps": model_taps(model, name), "summary": entry.summary})
    return rows


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def format_model_table(rows: list[dict[str, Any]], image_size: int, channels: int,
                       num_classes: int) -> str:
    lines = [f"models at {channels}x{image_size}x{image_size}, {num_classes} classes "
             "(FLOPs: forward, one image, conv + linear, multiply-add = 2)",
             f"{'arch':<10} {'params':>8} {'FLOPs':>8}  {'hint taps':<30} summary"]
    for r in rows:
        lines.append(f"{r['arch']:<10} {_si(r['params']):>8} {_si(r['flops']):>8}  "
                     f"{', '.join(r['taps']):<30} {r['summary']}")
    return "\n".join(lines)
