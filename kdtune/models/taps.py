"""Built models: hint taps (``Tapped``), multi-exit heads (``MultiExit``), parameter and FLOP
counts, and the table ``kdtune models`` prints."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from kdtune.models import ARCHS, build_model
from kdtune.models.small_cnn import SmallCNN


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
    return ARCHS[arch].taps_of({})


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

    def exit(self, index: int | None) -> nn.Module:
        """Exit ``index`` (0 = shallowest) as a plain classifier; None: the ensemble, the mean
        of the exits' probabilities."""
        return ExitView(self, index)


class ExitView(nn.Module):
    """One exit of a multi-exit model, or their ensemble, as a plain classifier (evaluation)."""

    def __init__(self, multi_exit: MultiExit, exit_index: int | None) -> None:
        super().__init__()
        self.multi_exit, self.exit_index = multi_exit, exit_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exits = self.multi_exit(x)
        if self.exit_index is not None:
            return exits[self.exit_index]
        # the ensemble: the mean of the exits' probabilities (log, so argmax and CE both work)
        probs = torch.stack([e.float().softmax(1) for e in exits]).mean(0)
        return probs.clamp_min(1e-12).log()


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
