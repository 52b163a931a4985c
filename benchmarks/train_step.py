"""CPU time of one training step through kdtune's loop (``engine.train_epochs``): the
quickstart's models on digits, scratch and RKD with cached teacher outputs, the whole loop
(batches drawn by index, the step, loss bookkeeping, the divergence check), validation
excluded. Median over repeated epochs; results to benchmarks/results/train_step.json, appended
with the code's git revision, so a change is measured before and after on one machine.

    python benchmarks/train_step.py [--epochs 30]

Run it in turns on the two revisions (A B A B ...): the headline is the median of the
before/after ratios of neighbouring records; not slower is <= 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from kdtune.data import load_splits
from kdtune.engine import Budget, train_epochs
from kdtune.models import build_model
from kdtune.teacher_outputs import CachedTeacher, precompute
from kdtune.trial import build_distiller

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def _steps(method: str, epochs: int) -> float:
    splits = load_splits("digits", fractions=(0.6, 0.2, 0.2), max_train=300)
    torch.manual_seed(0)
    student = build_model("small_cnn", 1, 10, 8, {"widths": [8, 16]})
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [32, 64]}).eval()
    d = build_distiller(method, student, teacher if method != "scratch" else None,
                        {"alpha": 0.5, "tau": 4.0}, student_arch="small_cnn",
                        teacher_arch="small_cnn", example=splits.train_x[:2].float())
    if method != "scratch":
        d.use_cached_teacher(CachedTeacher(precompute(d.live_teacher, splits.train_x,
                                                      splits.mean, splits.std)))
    # no validation pass in the timing: an empty val split
    splits.val_x, splits.val_y = splits.val_x[:0], splits.val_y[:0]
    budget = Budget(epochs=epochs, batch_size=32, lr=0.05)
    steps_per_epoch = -(-len(splits.train_y) // 32)
    times, last = [], time.thread_time()
    for _ in train_epochs(d, splits, budget, seed=0):
        now = time.thread_time()
        times.append((now - last) / steps_per_epoch)
        last = now
    return statistics.median(times[2:])  # the first epochs warm up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a quickstart trial runs: one CPU
    root = Path(__file__).resolve().parents[1]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=root).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "kdtune"], capture_output=True,
                           text=True, cwd=root).stdout.strip()
    record = {"revision": rev + ("+changes" if dirty else ""),
              "date": dt.datetime.now().isoformat(timespec="minutes"),
              "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
              "load_before": os.getloadavg()[0],
              # the median of five runs of each
              "ms_per_step": {m: round(1000 * statistics.median(
                  _steps(m, args.epochs) for _ in range(3)), 4) for m in ("scratch", "rkd")}}
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    records.append(record)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(records, indent=2) + "\n")
    print(record)
    # measured in turns, A B A B ...: each pair of neighbours with different revisions is one
    # before/after ratio (the later revision's CPU time per step over the earlier's)
    ratios = [b["ms_per_step"][m] / a["ms_per_step"][m]
              for a, b in zip(records, records[1:]) if a["revision"] != b["revision"]
              and records.index(a) % 2 == 0 for m in a["ms_per_step"]]
    if ratios:
        print(f"{len(ratios)} before/after ratios: {', '.join(f'{x:.3f}' for x in ratios)}")
        print(f"train_step: {statistics.median(ratios):.3f}x (target 1.00)")


if __name__ == "__main__":
    main()
