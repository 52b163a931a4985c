"""What a finished trial costs the driver's bookkeeping as a study grows: kdtune's row store
(``kdtune.rundir.ResultsStore``) alone, no Ray, synthetic rows: 10,000 trials of 50 epochs
each, finished one after another. Per trial: the epoch rows held back, then one part of
``epochs.parquet`` and one of ``trials.parquet`` written. Reports the cost per trial around
100, 1,000 and 10,000 trials, the total, and a compaction at the end; results to
benchmarks/results/results_scale.md.

    python benchmarks/results_scale.py [--trials 10000] [--epochs 50]

Headline: the per-trial cost at the last checkpoint over the 20 ms target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from kdtune.rundir import ResultsStore

RESULTS = Path(__file__).resolve().parent / "results" / "results_scale.md"
TARGET_MS = 20.0


def _rows(i: int, epochs: int) -> tuple[dict, list[dict]]:
    trial_id = f"search-digits-rkd:trial_{i:06d}"
    base = {"study": "scale", "run_id": "scale-1", "trial_id": trial_id, "dataset": "digits",
            "method": "rkd", "role": "search", "seed": 0}
    epoch_rows = [base | {"epoch": e + 1, "train_loss": 1.0 / (e + 1), "loss_ce": 0.5,
                          "loss_kd": 0.5, "val_acc": 50.0 + e, "epoch_s": 0.1,
                          "wall_s": 0.1 * (e + 1), "reported_at": 1.8e9 + e}
                  for e in range(epochs)]
    trial = base | {"stage": "search-digits-rkd", "alpha": 0.5, "tau": 4.0, "lr": 0.05,
                    "config_json": "{}", "val_acc": 80.0, "test_acc": 79.0,
                    "epochs_run": epochs, "epochs_budget": epochs, "status": "finished",
                    "wall_s": 600.0, "teacher_id": "t", "node_id": "n", "restarts": 0}
    return trial, epoch_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    checkpoints = sorted({min(args.trials, n) for n in (100, 1_000, 10_000)})
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        store = ResultsStore(Path(folder))
        costs: list[float] = []
        started = time.perf_counter()
        for i in range(args.trials):
            trial, epochs = _rows(i, args.epochs)
            t0 = time.perf_counter()
            for row in epochs:
                store.add_epoch(row)
            store.finish_trial(trial)
            costs.append(time.perf_counter() - t0)
        total = time.perf_counter() - started
        t0 = time.perf_counter()
        store.compact()
        compact_s = time.perf_counter() - t0
        assert len(ResultsStore(Path(folder)).trials) == args.trials
    window = 50  # the median over the trials around each checkpoint
    at = {n: 1000 * statistics.median(costs[max(0, n - window):n]) for n in checkpoints}
    # a study of 10-minute trials on 100 workers: trials * 10 min / 100 of wall time
    study_s = args.trials * 600 / 100
    lines = [f"# results_scale: {args.trials:,} synthetic trials x {args.epochs} epochs, "
             "ResultsStore alone",
             f"{dt.datetime.now().isoformat(timespec='minutes')}, {platform.node()}, "
             f"{os.cpu_count()} CPUs, load {load:.2f} at the start", "",
             "| trials so far | ms per finished trial (median of 50) |", "|---|---|",
             *[f"| {n:,} | {ms:.2f} |" for n, ms in at.items()], "",
             f"total bookkeeping {total:.1f} s for {args.trials:,} trials "
             f"({100 * total / study_s:.3f} % of a study of 10-minute trials on 100 workers, "
             f"{study_s / 3600:.1f} h); compaction at the end {compact_s:.1f} s"]
    RESULTS.parent.mkdir(exist_ok=True)
    ratio = at[checkpoints[-1]] / TARGET_MS
    lines.append(f"results_scale: {ratio:.3f}x (target 1.00)")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
