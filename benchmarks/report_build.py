"""Benchmark: build the HTML report of a 1,000-trial run directory; the budget is 10 seconds.

    python benchmarks/report_build.py [--trials 1000] [--repeats 3]

The run directory is synthetic (``kdtune.report.synthetic``: trials, epochs, datasets Parquet
files and an Optuna journal, as ``kdtune run`` leaves them; 4 datasets x 5 methods, 3 seeds).
Each repeat builds the report in a fresh Python process and times it from before
``import kdtune.report`` to the written file, so imports (plotly, Optuna, pyarrow, scikit-learn
through Optuna's importance module) count: that is what ``kdtune report`` costs. The median of
the repeats is the figure.

Results go to ``benchmarks/results/report_build-<date>.json`` with the machine, the date and the
load average before and after (this machine's 2 cores are shared; a loaded machine is slower).
The last line printed is ``report_build: <speed>x (target 1)``, where speed = 10 s / median
build seconds: 1 or more meets the budget (2.0x means the report took 5 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 10.0
METHODS = ("scratch", "rkd", "ikd", "at", "self")

CHILD = """
import json, sys, time
started, cpu = time.perf_counter(), time.process_time()
from kdtune.report import build_report
path = build_report(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - started, "bytes": path.stat().st_size,
                  "cpu_seconds": time.process_time() - cpu}))
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_run(folder: Path, n_trials: int) -> Path:
    from tests.synthetic import DEFAULT_DATASETS, write_synthetic_run

    n_ds, n_m, seeds = len(DEFAULT_DATASETS), len(METHODS), (0, 1, 2)
    fixed = n_ds + n_ds * n_m * len(seeds)  # teachers + final runs
    per_search, extra = divmod(n_trials - fixed, n_ds * n_m)
    return write_synthetic_run(folder / "bench-run", methods=METHODS, search_trials=per_search,
                               extra_search=extra, seeds=seeds, study="bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import pyarrow.parquet as pq

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kdtune-bench-") as tmp:
        started = time.perf_counter()
        run = make_run(Path(tmp), args.trials)
        setup_s = time.perf_counter() - started
        n = pq.read_table(run / "trials.parquet").num_rows
        n_epochs = pq.read_table(run / "epochs.parquet").num_rows
        print(f"synthetic run: {n} trials, {n_epochs} epoch rows, journal "
              f"{(run / 'optuna' / 'journal.log').stat().st_size / 1e6:.1f} MB "
              f"(written in {setup_s:.1f}s)", flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get(
            "PYTHONPATH", ""))
        runs = []
        for i in range(args.repeats):
            out = Path(tmp) / f"report-{i}.html"
            proc = subprocess.run([sys.executable, "-c", CHILD, str(run), str(out)],
                                  capture_output=True, text=True, env=env, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  build {i + 1}/{args.repeats}: {runs[-1]['seconds']:.2f}s "
                  f"({runs[-1]['cpu_seconds']:.2f}s CPU), "
                  f"{runs[-1]['bytes'] / 1e6:.2f} MB", flush=True)
            page = out.read_text()
        figures = page.count("class='plotly-graph-div'")
    load_after = os.getloadavg()
    median = statistics.median(r["seconds"] for r in runs)
    speed = BUDGET_S / median
    result = {
        "benchmark": "report_build", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"host": socket.gethostname(), "platform": platform.platform(),
                    "python": platform.python_version(), "cpu": cpu_model(),
                    "cpus": os.cpu_count()},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "trials": n, "epoch_rows": n_epochs, "figures": figures,
        "report_bytes": runs[-1]["bytes"],
        "build_seconds": [round(r["seconds"], 3) for r in runs],
        "build_cpu_seconds": [round(r["cpu_seconds"], 3) for r in runs],
        "median_seconds": round(median, 3), "budget_seconds": BUDGET_S,
        "speed_vs_budget": round(speed, 2),
        "note": "fresh process per build, imports included; wall-clock seconds (CPU seconds of "
                "the process beside them: the machine's 2 cores are shared, so wall time "
                "depends on the load); speed = budget / median wall seconds",
    }
    folder = ROOT / "benchmarks" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"report_build-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median {median:.2f}s for {n} trials ({figures} figures, "
          f"{runs[-1]['bytes'] / 1e6:.1f} MB); load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}; results: {path.relative_to(ROOT)}")
    print(f"report_build: {speed:.2f}x (target 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
