"""Warm start on a label-noise sweep: how many search trials until a search comes within 0.5
validation points of the cold search's best, warm-started vs cold.

    python benchmarks/warm_start.py [--storage /tmp/kdtune-warm] [--seeds 0 1 2]

The sweep is the quickstart's digits setting (300 training images, small CNNs 32/64 -> 8/16,
40 student epochs; lr, alpha and tau searched) at label noise 0, 0.1, 0.2 and 0.4, one run per
level with scratch and rkd searches of ``--trials`` trials each. Per sampler seed, every level
runs cold; every level after the first runs again with ``search.warm_start`` naming the runs
of this seed's earlier levels (level 0's cold run, then the warm ones), so each search begins
with the best configs (``search.warm_start_configs``, 2) of the nearest earlier levels in
measured complexity, as ``warm_start: auto`` would pick them from a storage holding the sweep.

With ``--seeds-by-level`` each level's searches (its cold and its warm one alike) use sampler
seed ``100 * seed + level index`` instead of ``seed``: with one seed for every level (kdtune's
default, ``sampler_seed: 0``) TPE's random start draws the same configs at every level, so a
warm config from the level before is often one the cold search tries anyway, a few trials later.

Per (level, method, seed): the cold search's best validation accuracy, and for the cold and the
warm search the number of trials, in the order they finished, until the best so far
is within ``--within`` points of that cold best (a search that never gets there counts as
``trials + 1``: censored, and said so). Selection only: nothing here reads a test accuracy.
Runs already finished in the storage are reused (their study names carry level, seed, mode).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from early_stopping_record import finished_runs  # noqa: E402  (benchmarks/, beside this file)

METHODS = ["scratch", "rkd"]


def level_spec(level: float, seed: int, trials: int, warm: list[str] | None,
               sampler_seed: int) -> dict[str, Any]:
    name = f"warm-ln{level:g}-s{seed}-{'warm' if warm else 'cold'}"
    dataset: dict[str, Any] = {"name": "digits", "split": [0.6, 0.2, 0.2], "max_train": 300}
    if level:
        dataset["label_noise"] = level
    search: dict[str, Any] = {"trials": trials, "alpha": [0.1, 0.95], "tau": [1.0, 10.0],
                              "lr": [0.01, 0.2], "max_concurrent": 2, "sampler_seed": sampler_seed,
                              "include_paper_point": True}
    if warm:
        search |= {"warm_start": warm, "warm_start_configs": 2}
    return {"study": name, "storage": "runs", "datasets": [dataset],
            "teacher": {"arch": "small_cnn", "options": {"widths": [32, 64]}},
            "student": {"arch": "small_cnn", "options": {"widths": [8, 16]}},
            "teacher_seed": 0, "methods": METHODS,
            "training": {"teacher_epochs": 30, "student_epochs": 40, "batch_size": 32,
                         "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                         "weight_decay": 0.0005, "augmentation": "none"},
            "search": search, "final": {"seeds": [0]}, "resources": {"cpus": 1, "gpus": 0}}


def run_sweep(storage: Path, levels: list[float], seeds: list[int], trials: int,
              seeds_by_level: bool) -> dict[tuple[float, int, str], Path]:
    import kdtune

    done = finished_runs(storage)
    runs: dict[tuple[float, int, str], Path] = {}

    def one(level: float, seed: int, warm: list[str] | None) -> Path:
        sampler_seed = 100 * seed + levels.index(level) if seeds_by_level else seed
        spec = level_spec(level, seed, trials, warm, sampler_seed)
        if spec["study"] in done:
            return done[spec["study"]]
        started = time.perf_counter()
        run = kdtune.run(spec, storage=str(storage), progress=False)
        print(f"{spec['study']}: {run.path.name} in {time.perf_counter() - started:.0f} s "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)
        return run.path

    for seed in seeds:
        chain: list[str] = []
        for i, level in enumerate(levels):
            runs[(level, seed, "cold")] = one(level, seed, None)
            if i == 0:
                chain.append(str(runs[(level, seed, "cold")]))
                continue
            runs[(level, seed, "warm")] = one(level, seed, list(chain))
            chain.append(str(runs[(level, seed, "warm")]))
    return runs


def search_curve(run_dir: Path, method: str) -> list[tuple[float, str]]:
    """(val_acc, config_source) of a run's search trials of ``method``, in the order they
    finished (``trials.parquet`` is appended per finished trial; Tune's trial ids are random
    hashes, so they carry no order): the n-th value is what the search knew after n trials."""
    from kdtune.rundir import read_rows

    rows = [r for r in read_rows(run_dir / "trials.parquet")
            if r["role"] == "search" and r["method"] == method]
    return [(r["val_acc"] if r["val_acc"] is not None else float("-inf"),
             r.get("config_source") or "") for r in rows]


def trials_to_within(values: list[float], threshold: float) -> int | None:
    """The 1-based number of trials until the best so far reaches ``threshold`` (None: never)."""
    best = float("-inf")
    for n, value in enumerate(values, 1):
        best = max(best, value)
        if best >= threshold:
            return n
    return None


def analyse(runs: dict[tuple[float, int, str], Path], levels: list[float], seeds: list[int],
            trials: int, within: float) -> list[dict[str, Any]]:
    rows = []
    for level in levels[1:]:
        for method in METHODS:
            for seed in seeds:
                cold = search_curve(runs[(level, seed, "cold")], method)
                warm = search_curve(runs[(level, seed, "warm")], method)
                cold_best = max(v for v, _ in cold)
                threshold = cold_best - within
                n_cold = trials_to_within([v for v, _ in cold], threshold)
                n_warm = trials_to_within([v for v, _ in warm], threshold)
                rows.append({
                    "level": level, "method": method, "seed": seed,
                    "cold_best": cold_best, "warm_best": max(v for v, _ in warm),
                    "cold_first": cold[0][0], "warm_first": warm[0][0],
                    "warm_sources": [s for _, s in warm if s.startswith("warm:")],
                    "trials_cold": n_cold, "trials_warm": n_warm,
                    "warm_censored": n_warm is None})
    return rows


def _n(value: int | None, trials: int) -> int:
    return trials + 1 if value is None else value


def write(rows: list[dict[str, Any]], trials: int, within: float, out_dir: Path,
          wall_s: float, load: tuple[float, float], runs: dict[Any, Path],
          seeds_by_level: bool) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cold = [_n(r["trials_cold"], trials) for r in rows]
    warm = [_n(r["trials_warm"], trials) for r in rows]
    ratio = statistics.mean(cold) / statistics.mean(warm)
    fewer = sum(w < c for w, c in zip(warm, cold))
    more = sum(w > c for w, c in zip(warm, cold))
    lines = [f"# warm_start ({stamp})", "",
             f"Machine: {platform.node()} ({os.cpu_count()} CPUs), {platform.python_version()}; "
             f"load average at start {load[0]:.2f}, at end {load[1]:.2f}; sweep wall "
             f"{wall_s:.0f} s (runs already in the storage are reused: these {len(runs)} are "
             f"{min(p.name[-15:] for p in runs.values())} ... "
             f"{max(p.name[-15:] for p in runs.values())}; trials are counted, not timed). "
             f"Sampler seeds: {'100 * seed + level index' if seeds_by_level else 'the seed, at every level'}.", "",
             f"Trials until the best so far is within {within} validation points of the cold "
             f"search's best ({trials} trials per search; `{trials + 1}` = never, censored).", "",
             "| label noise | method | seed | cold best | warm best | cold 1st | warm 1st | "
             "trials cold | trials warm | warm sources |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['level']:g} | {r['method']} | {r['seed']} | {r['cold_best']:.2f} | "
            f"{r['warm_best']:.2f} | {r['cold_first']:.2f} | {r['warm_first']:.2f} | "
            f"{_n(r['trials_cold'], trials)} | {_n(r['trials_warm'], trials)}"
            f"{' (never)' if r['warm_censored'] else ''} | "
            f"{', '.join(s.split('/')[0].removeprefix('warm:') for s in r['warm_sources'])} |")
    summary = [
        "", f"Searches: {len(rows)}; mean trials cold {statistics.mean(cold):.2f}, warm "
        f"{statistics.mean(warm):.2f}; median cold {statistics.median(cold):g}, warm "
        f"{statistics.median(warm):g}; warm needed fewer in {fewer}, more in {more}, as many "
        f"in {len(rows) - fewer - more}; warm never got there in "
        f"{sum(r['warm_censored'] for r in rows)}; warm best >= cold best in "
        f"{sum(r['warm_best'] >= r['cold_best'] for r in rows)}."]
    headline = (f"warm_start: {ratio:.2f}x fewer trials to within {within} points of the cold "
                f"best (target 1.00)")
    text = "\n".join(lines + summary + ["", headline, ""])
    (out_dir / f"warm_start-{stamp}.md").write_text(text, encoding="utf-8")
    (out_dir / f"warm_start-{stamp}.json").write_text(json.dumps(
        {"rows": rows, "trials": trials, "within": within, "wall_s": wall_s, "load": load,
         "seeds_by_level": seeds_by_level,
         "runs": {f"{k[0]:g}/{k[1]}/{k[2]}": str(v) for k, v in runs.items()},
         "headline": headline}, indent=2), encoding="utf-8")
    print("\n".join(lines + summary), flush=True)
    return headline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, default=Path("/tmp/kdtune-warm"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.4])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--within", type=float, default=0.5)
    parser.add_argument("--seeds-by-level", action="store_true",
                        help="a sampler seed per level (100 * seed + level index)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.storage.mkdir(parents=True, exist_ok=True)
    load_start, started = os.getloadavg()[0], time.perf_counter()
    runs = run_sweep(args.storage.resolve(), args.levels, args.seeds, args.trials,
                     args.seeds_by_level)
    rows = analyse(runs, args.levels, args.seeds, args.trials, args.within)
    headline = write(rows, args.trials, args.within, args.out, time.perf_counter() - started,
                     (load_start, os.getloadavg()[0]), runs, args.seeds_by_level)
    print(headline, flush=True)


if __name__ == "__main__":
    main()
