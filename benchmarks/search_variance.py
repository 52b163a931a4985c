"""How much a study's verdicts depend on its search: the same spec run with several Optuna
sampler seeds (``search.sampler_seed``), each run's verdicts side by side, and the winner's curse
of every search (the chosen config's validation accuracy in its search, one seed, over its own
mean over the final seeds).

    python benchmarks/search_variance.py --spec studies/quickstart.yaml --sampler-seeds 0 1 2
    python benchmarks/search_variance.py --spec studies/quickstart.yaml --trials 24 ...
    python benchmarks/search_variance.py --runs runs/quickstart-A runs/quickstart-B ...

The paired interval of a verdict covers the final seeds of the configs the searches chose, not
the choice; this measures what it leaves out. Writes ``benchmarks/results/search_variance-
<date>.json`` and ``.md``; the last line printed says in how many comparisons every run read the
same verdict.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdtune.rundir import GAINS_FILE, TRIAL_KEY, TRIALS_FILE, first_line, read_rows  # noqa: E402
from kdtune.storage import StorageError  # noqa: E402


def run_study(spec_path: Path, sampler_seed: int, trials: int | None, storage: Path) -> Path:
    """Run ``spec_path`` with this sampler seed (and search trials) through the CLI; its run
    directory."""
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    spec["search"]["sampler_seed"] = sampler_seed
    if trials:
        spec["search"]["trials"] = trials
    spec["study"] = f"{spec['study']}-sampler{sampler_seed}"
    path = storage / f"spec-{sampler_seed}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "kdtune", "run", str(path), "--storage", str(storage),
                    "--quiet"], check=True, cwd=ROOT)
    (run_dir,) = sorted(storage.glob(f"{spec['study']}-*"))
    return run_dir


def summarise(run_dir: Path) -> dict[str, Any]:
    """A run's verdicts and its searches' winner's curse, from its Parquet files alone."""
    gains = read_rows(run_dir / GAINS_FILE)
    trials = read_rows(run_dir / TRIALS_FILE, TRIAL_KEY)  # a part's rows once, as kdtune reads
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8"))
    by_id = {t["trial_id"]: t for t in trials}
    curse = []
    finals: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in trials:
        if t["stage"] == "final" and t["status"] == "finished":
            finals.setdefault((t["dataset"], t["method"]), []).append(t)
    for (dataset, method), rows in sorted(finals.items()):
        source = rows[0].get("config_source") or ""
        chosen = by_id.get(source.split(":", 1)[1]) if source.startswith("search:") else None
        if chosen is None or chosen.get("val_acc") is None:
            continue
        final_val = statistics.mean(r["val_acc"] for r in rows)
        curse.append({"dataset": dataset, "method": method, "search_val": chosen["val_acc"],
                      "final_val_mean": final_val, "n_seeds": len(rows),
                      "curse_pts": chosen["val_acc"] - final_val})
    return {"run_dir": str(run_dir), "sampler_seed": spec["search"].get("sampler_seed", 0),
            "search_trials": spec["search"].get("trials"),
            "verdicts": [{k: g.get(k) for k in ("dataset", "method", "baseline", "gain_pts",
                                                "gain_ci_low", "gain_ci_high", "n_seeds",
                                                "verdict")}
                         for g in gains if g.get("baseline")],
            "curse": curse}


def verdicts_by_comparison(run: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """A summarised run's verdicts by (dataset, method)."""
    return {(v["dataset"], v["method"]): v for v in run["verdicts"]}


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [f"# search_variance {result['date']}", "",
             f"Machine: {result['machine']}. {result['note']}".strip(), "",
             "Runs: " + "; ".join(f"sampler seed {r['sampler_seed']}, {r['search_trials']} "
                                  f"trials per search (`{Path(r['run_dir']).name}`)"
                                  for r in runs), "",
             "| comparison | " + " | ".join(f"sampler seed {r['sampler_seed']}" for r in runs)
             + " |", "|---|" + "---|" * len(runs)]
    by_run = [verdicts_by_comparison(r) for r in runs]
    for dataset, method in by_run[0]:
        cells = []
        for verdicts in by_run:
            v = verdicts.get((dataset, method))
            cells.append("–" if v is None else
                         f"{v['gain_pts']:+.2f} [{v['gain_ci_low']:+.2f}, {v['gain_ci_high']:+.2f}]"
                         f" {v['verdict']} ({v['n_seeds']} seeds)")
        lines.append(f"| {dataset} {method} | " + " | ".join(cells) + " |")
    curse = [c["curse_pts"] for r in runs for c in r["curse"]]
    if curse:
        lines += ["", f"Winner's curse over {len(curse)} searches (the chosen config's search "
                  f"validation accuracy minus its mean over the final seeds, points): mean "
                  f"{statistics.mean(curse):.2f}, median {statistics.median(curse):.2f}, "
                  f"max {max(curse):.2f}."]
    lines += ["", result["headline"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "studies" / "quickstart.yaml"))
    parser.add_argument("--sampler-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, help="search trials per (dataset, method)")
    parser.add_argument("--runs", nargs="+", type=Path,
                        help="summarise these finished run directories instead of running")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--note", default="", help="free text stored with the results")
    args = parser.parse_args()

    load_before = os.getloadavg()
    try:
        if args.runs:
            run_dirs = args.runs
            for run_dir in run_dirs:  # before anything is read: one line, nothing written
                if not (run_dir / GAINS_FILE).is_file():
                    raise StorageError(f"{run_dir}: not a finished kdtune run directory (no "
                                       f"{GAINS_FILE})")
        else:
            spec_path = Path(args.spec)
            try:  # unreadable: one line here, before any run
                yaml.safe_load(spec_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
                raise StorageError(f"--spec {spec_path}: {first_line(error)}") from None
            storage = Path(tempfile.mkdtemp(prefix="kdtune-search-variance-"))
            run_dirs = [run_study(spec_path, seed, args.trials, storage)
                        for seed in args.sampler_seeds]
        runs = [summarise(d) for d in run_dirs]
    except StorageError as error:  # RunFileError (a damaged run file) included
        print(f"search_variance: {first_line(error)}", file=sys.stderr)
        sys.exit(2)
    except subprocess.CalledProcessError as error:  # kdtune run said why, in one line
        sys.exit(error.returncode)
    by_run = [verdicts_by_comparison(r) for r in runs]
    keys = by_run[0]
    same = sum(len({v[key]["verdict"] for v in by_run if key in v}) == 1 for key in keys)
    result = {"benchmark": "search_variance",
              "date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.node()}, {os.cpu_count()} CPUs, load before "
                         f"{[round(x, 2) for x in load_before]}",
              "note": args.note, "runs": runs,
              "headline": f"search_variance: {same} of {len(keys)} comparisons read the same "
                          f"verdict in all {len(runs)} runs"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"search_variance-{stamp}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"search_variance-{stamp}.md").write_text(markdown(result))
    print(f"results: {out / f'search_variance-{stamp}.md'}")
    print(result["headline"])


if __name__ == "__main__":
    main()
