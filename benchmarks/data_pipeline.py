"""Images/s of kdtune's in-memory batched data path against torchvision's per-sample PIL path.

Same images (Fashion-MNIST's 60,000 training images where Debian's package is installed,
otherwise random 28x28 images of the same size), same augmentation, batches of 128, each path
producing normalised float batches ready for a model:

- torchvision: a Dataset returning a PIL image through ``transforms.Compose`` (per sample),
  batched by a DataLoader with ``num_workers`` 0 and 2;
- kdtune: one uint8 tensor, shuffled index batches, ``kdtune.data.augment`` on the whole batch.

Both run with one torch thread in the main process: on a shared 2-core machine, OpenMP's
spin-waiting makes 2-thread timings of small tensor ops erratic (10x swings seen here), and one
thread is what a kdtune trial with ``cpus: 1`` uses. The DataLoader with 2 workers still gets two
processes. Each measurement is repeated; the median counts. The ratio is kdtune's images/s over the faster
torchvision setting, for the core study's policy (rotation 15 + both flips). Figures go to
``benchmarks/results/data_pipeline.{json,md}`` with the machine, its load and the date.

    python benchmarks/data_pipeline.py [--images 12800] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdtune.augment import augment  # noqa: E402
from kdtune.data import DEBIAN_FASHION_MNIST, batch_indices, read_idx

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 128


def images() -> tuple[np.ndarray, str]:
    path = DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz"
    if path.exists():
        return read_idx(path), "Fashion-MNIST train (Debian package), 60,000 x 28 x 28"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8), "random 60,000 x 28 x 28"


class PilImages(Dataset):
    """What a torchvision pipeline does: one PIL image per sample through a transform."""

    def __init__(self, array: np.ndarray, transform) -> None:
        self.array, self.transform = array, transform

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.array[index], mode="L")), 0


def torchvision_transform(policy: str, mean: float, std: float):
    steps = {"paper": [transforms.RandomRotation(15), transforms.RandomHorizontalFlip(),
                       transforms.RandomVerticalFlip()],
             "crop_flip": [transforms.RandomCrop(28, padding=4),
                           transforms.RandomHorizontalFlip()]}[policy]
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize([mean], [std])])


def time_torchvision(array: np.ndarray, policy: str, workers: int, n_images: int) -> float:
    mean, std = float(array.mean() / 255), float(array.std() / 255)
    loader = DataLoader(PilImages(array, torchvision_transform(policy, mean, std)),
                        batch_size=BATCH, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    batches = iter(loader)
    next(batches)  # worker start-up is not throughput
    started, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += len(x)
        if seen >= n_images:
            break
    return seen / (time.perf_counter() - started)


def time_kdtune(array: np.ndarray, policy: str, n_images: int) -> float:
    x_all = torch.from_numpy(np.array(array)).unsqueeze(1)  # uint8 N x 1 x 28 x 28, as Splits holds it
    mean = x_all.float().mean().div(255).view(1, 1, 1, 1)
    std = x_all.float().std().div(255).view(1, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    seen, started = 0, time.perf_counter()
    while seen < n_images:
        for index in batch_indices(len(x_all), BATCH, generator):
            batch = x_all[index].float().div_(255.0)
            batch = (augment(batch, policy, generator)[0] - mean) / std
            seen += len(batch)
            if seen >= n_images:
                break
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12_800,
                        help="images per torchvision measurement (kdtune runs 60,000)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    array, source = images()
    load_before = os.getloadavg()
    rows = []
    for policy in ("paper", "crop_flip"):
        runs = {"torchvision, workers 0": lambda p=policy: time_torchvision(array, p, 0,
                                                                            args.images),
                "torchvision, workers 2": lambda p=policy: time_torchvision(array, p, 2,
                                                                            args.images),
                "kdtune, batched tensors": lambda p=policy: time_kdtune(array, p, 60_000)}
        for name, run in runs.items():
            values = [run() for _ in range(args.repeats)]
            rows.append({"policy": policy, "pipeline": name,
                         "images_per_s": statistics.median(values),
                         "runs": [round(v) for v in values]})
            print(f"{policy:<10} {name:<24} {statistics.median(values):>10,.0f} img/s  "
                  f"(runs: {', '.join(f'{v:,.0f}' for v in values)})", flush=True)
    ratios = {}
    for policy in ("paper", "crop_flip"):
        by = {r["pipeline"]: r["images_per_s"] for r in rows if r["policy"] == policy}
        ratios[policy] = by["kdtune, batched tensors"] / max(by["torchvision, workers 0"],
                                                             by["torchvision, workers 2"])
    result = {
        "benchmark": "data_pipeline", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "data": source, "batch_size": BATCH, "repeats": args.repeats, "results": rows,
        "ratio_vs_faster_torchvision": ratios, "target": 10,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_pipeline.json").write_text(json.dumps(result, indent=2))
    lines = [f"# data_pipeline ({result['date']})", "",
             f"Machine: {result['machine']['platform']}, {os.cpu_count()} CPUs, load average "
             f"{load_before[0]:.2f} before / {result['machine']['loadavg_after'][0]:.2f} after "
             "(1 min; the machine is shared, figures vary).", f"Data: {source}; batch {BATCH}; "
             f"median of {args.repeats} runs.", "",
             "| policy | pipeline | images/s | runs |", "|---|---|---|---|"]
    lines += [f"| {r['policy']} | {r['pipeline']} | {r['images_per_s']:,.0f} | "
              f"{', '.join(f'{v:,}' for v in r['runs'])} |" for r in rows]
    lines += ["", "kdtune over the faster torchvision setting: "
              + ", ".join(f"{p} {v:.1f}x" for p, v in ratios.items()) + " (target 10x)."]
    (RESULTS / "data_pipeline.md").write_text("\n".join(lines) + "\n")
    print(f"results: {RESULTS / 'data_pipeline.json'}")
    print(f"data_pipeline: {ratios['paper']:.1f}x (target 10)")


if __name__ == "__main__":
    main()
