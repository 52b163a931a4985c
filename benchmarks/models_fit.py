"""Does every registered model learn at every input size kdtune serves? Each architecture, at
its default options, trained from scratch for a few epochs on a Fashion-MNIST subset resized to
8, 28 and 32 px (the sizes of digits, MNIST and CIFAR); validation accuracy after each epoch.
A check, not a speed benchmark: run it by hand (minutes on 2 cores, most of it the torchvision
ResNets at 32 px); results to benchmarks/results/models_fit.md.

    python benchmarks/models_fit.py [--train 600] [--epochs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import torch

from kdtune.data import Splits, load_splits
from kdtune.engine import Budget, train_epochs
from kdtune.knobs import resize
from kdtune.models import ARCHS, build_model
from kdtune.models.taps import count_parameters
from kdtune.trial import build_distiller

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    base = load_splits("fashion_mnist", fractions=(0.94, 0.03, 0.03), max_train=args.train,
                       split_seed=1)
    lines = [f"# models_fit: every registered model, {args.train} Fashion-MNIST training "
             f"images, {args.epochs} epochs (SGD lr 0.02, batch 64)",
             f"{dt.datetime.now().isoformat(timespec='minutes')}, {platform.node()}, "
             f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", "",
             "| arch | params | px | val acc per epoch, % | seconds |", "|---|---|---|---|---|"]
    for arch in ARCHS:
        for size in (8, 28, 32):
            splits = base if size == 28 else Splits(
                base.name, resize(base.train_x, size), base.train_y,
                resize(base.val_x[:1000], size), base.val_y[:1000], base.test_x, base.test_y,
                base.num_classes, base.mean, base.std)
            torch.manual_seed(0)
            model = build_model(arch, 1, 10, size)
            distiller = build_distiller("scratch", model, None, {}, student_arch=arch,
                                        example=splits.train_x[:2].float())
            started = time.perf_counter()
            reports = list(train_epochs(distiller, splits, Budget(
                epochs=args.epochs, batch_size=64, lr=0.02, weight_decay=5e-4), seed=0))
            line = (f"| {arch} | {count_parameters(model):,} | {size} | "
                    f"{' / '.join(f'{r.val_acc:.1f}' for r in reports)} | "
                    f"{time.perf_counter() - started:.0f} |")
            print(line, flush=True)
            lines.append(line)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "models_fit.md").write_text("\n".join(lines) + "\n")
    best = min(max(float(x) for x in ln.split("|")[4].split(" / ")) for ln in lines[5:])
    print(f"models_fit: {best:.1f} (worst model's best val acc %, chance 10)")


if __name__ == "__main__":
    main()
