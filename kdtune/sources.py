"""The datasets a spec can name, and what is known of each without loading it.

Light on purpose (no torch, no numpy): the spec checks a dataset's name here, and the compute
estimate reads its shape, before anything heavy is imported. The loaders live in
:mod:`kdtune.data` (``LOADERS``, keyed by these names).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One dataset source: its shape and the core study's split sizes where it has them."""

    name: str
    channels: int | None  # None: known once loaded (an image folder)
    side: int | None
    classes: int | None
    pooled: int | None  # images over the source's own train and test files
    paper_sizes: tuple[int, int, int] | None = None  # train / val / test (Belinga et al. 2024)
    summary: str = ""


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("digits", 1, 8, 10, 1_797, None, "scikit-learn's 8x8 digits (bundled, offline)"),
    Source("mnist", 1, 28, 10, 70_000, (60_000, 7_000, 3_000), "MNIST (torchvision)"),
    Source("fashion_mnist", 1, 28, 10, 70_000, (60_000, 7_000, 3_000),
           "Fashion-MNIST (torchvision, or Debian's dataset-fashion-mnist)"),
    Source("usps", 1, 16, 10, 9_298, (7_291, 1_404, 603), "USPS (torchvision)"),
    Source("cifar10", 3, 32, 10, 60_000, (50_000, 7_000, 3_000), "CIFAR-10 (torchvision)"),
    Source("cifar100", 3, 32, 100, 60_000, (50_000, 7_000, 3_000), "CIFAR-100 (torchvision)"),
    Source("imagefolder", None, None, None, None, None,
           "a folder with one sub-folder per class (torchvision's ImageFolder layout)"),
)}

# The core study's proportions: CIFAR 50,000/7,000/3,000 of 60,000 (83.33 / 11.66 / 5 %); a
# dataset it did not use, or a pool of another size, is split in the same proportions.
PAPER_SPLIT = (50_000 / 60_000, 7_000 / 60_000, 3_000 / 60_000)


def paper_fractions(name: str) -> tuple[float, float, float]:
    """The core study's split proportions for ``name`` (CIFAR's for datasets it did not use)."""
    sizes = SOURCES[name].paper_sizes if name in SOURCES else None
    if sizes is None:
        return PAPER_SPLIT
    total = sum(sizes)
    return (sizes[0] / total, sizes[1] / total, sizes[2] / total)
