"""Early-stopping rules replayed on recorded learning curves: epochs saved against answers lost.

1. ``--record`` (once; ~20 min on 2 cores): each search space's study runs with early stopping
   off, once per sampler seed (``benchmarks/early_stopping_record.py``): the quickstart's
   (digits, 3 datasets), a Fashion-MNIST subset (``early_stopping_fashion.yaml``, 2 datasets)
   and a knob variant (``studies/knobs-digits.yaml``, label noise 0/0.1/0.2/0.4); every search
   trial's full validation curve lands in ``epochs.parquet``.
2. Replay (seconds): every rule of :mod:`kdtune.stopping` is fed each search's results in the
   order the driver saw them (:func:`kdtune.early_stopping.rule_outcome`). Per rule: search
   epochs saved, the best trial kept (in k of n searches), top-quartile recall, and the regret
   of the config the search would then select (validation points below the full-budget best).
   Each rule runs with the settings it is registered with, chosen before any replay; the
   sensitivity table shows a few others, for reading, not for picking a winner on the same
   curves.

A rule meets the target when it saves >= 40 % of search epochs, keeps the best trial in >= 90 %
of searches and its median regret is <= 0.5 points. Writes ``benchmarks/results/
early_stopping-<date>.json`` and ``.md``; the last line printed is
``early_stopping: <saved> saved, best kept <k>/<n> (target 0.40, 0.90)`` for the rule that keeps
the best trial most often (ties: the one that saves more).

    python benchmarks/early_stopping.py --storage /tmp/es-curves --record
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_SAVED, TARGET_KEPT, TARGET_REGRET = 0.40, 0.90, 0.5
SENSITIVITY = [  # (label, rule kind, options): read-only context for the registered settings
    ("trails_leader k=3 margin=3", "trails_leader", {"k": 3, "margin": 3.0}),
    ("trails_leader k=8 margin=8", "trails_leader", {"k": 8, "margin": 8.0}),
    ("extrapolate k=5 z=1", "extrapolate", {"k": 5, "z": 1.0}),
    ("extrapolate k=5 z=0", "extrapolate", {"k": 5, "z": 0.0}),
    ("asha grace=10 rf=3", "asha", {"grace_period": 10, "reduction_factor": 3}),
]


def searches_of(storage: Path) -> list[tuple[str, int, Any]]:
    """(space, budget, RecordedSearch) of every finished curve run in ``storage``."""
    import pandas as pd
    from early_stopping_record import finished_runs

    from kdtune.early_stopping import recorded_searches

    out = []
    for name, run in sorted(finished_runs(storage).items()):
        if not name.startswith("es-"):
            continue
        space = name.split("-")[1]
        trials = pd.read_parquet(run / "trials.parquet").to_dict("records")
        epochs = pd.read_parquet(run / "epochs.parquet").to_dict("records")
        max_t = max(r["epochs_budget"] for r in trials if r["role"] == "search")
        for recorded in recorded_searches(epochs, trials, max_t):
            recorded.search = f"{name}/{recorded.search}"
            out.append((space, max_t, recorded))
    return out


def summarise(outcomes: list[Any]) -> dict[str, Any]:
    full = sum(o.epochs_full for o in outcomes)
    regrets = [o.regret for o in outcomes]
    return {"searches": len(outcomes),
            "saved": round(1 - sum(o.epochs_run for o in outcomes) / full, 3),
            "best_kept": sum(o.best_kept for o in outcomes),
            "top_quarter_recall": round(sum(o.top_quarter_kept for o in outcomes)
                                        / sum(o.top_quarter for o in outcomes), 3),
            "median_regret": round(statistics.median(regrets), 2),
            "mean_regret": round(statistics.mean(regrets), 2),
            "max_regret": round(max(regrets), 2)}


def meets(summary: dict[str, Any]) -> bool:
    return (summary["saved"] >= TARGET_SAVED
            and summary["best_kept"] >= TARGET_KEPT * summary["searches"]
            and summary["median_regret"] <= TARGET_REGRET)


def evaluate(searches: list[tuple[str, int, Any]], kind: str,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    from kdtune.early_stopping import rule_outcome
    from kdtune.stopping import make_rule

    by_space: dict[str, list[Any]] = {}
    for space, max_t, recorded in searches:
        outcome = rule_outcome(make_rule(kind, max_t, **(options or {})), recorded)
        by_space.setdefault(space, []).append(outcome)
    every = [o for outcomes in by_space.values() for o in outcomes]
    return {"all": summarise(every), **{s: summarise(o) for s, o in sorted(by_space.items())}}


def _row(label: str, s: dict[str, Any]) -> str:
    return (f"| {label} | {s['saved']:.2f} | {s['best_kept']}/{s['searches']} | "
            f"{s['top_quarter_recall']:.2f} | {s['median_regret']:.2f} | {s['mean_regret']:.2f} "
            f"| {s['max_regret']:.2f} | {'yes' if meets(s) else 'no'} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True, help="where the curve runs are")
    parser.add_argument("--record", action="store_true", help="run the missing curve studies")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*experimental.*")
    if args.record:
        from early_stopping_record import SPACES, record

        args.storage.mkdir(parents=True, exist_ok=True)
        record(args.storage, list(SPACES), args.seeds)

    from kdtune.stopping import RULES

    searches = searches_of(args.storage)
    if not searches:
        raise SystemExit(f"{args.storage}: no recorded curve runs (run with --record)")
    results = {kind: evaluate(searches, kind) for kind in RULES}
    sensitivity = {label: evaluate(searches, kind, options)
                   for label, kind, options in SENSITIVITY}
    headline_rule = max(results, key=lambda k: (results[k]["all"]["best_kept"],
                                                results[k]["all"]["saved"]))
    winners = [k for k, r in results.items() if meets(r["all"])]
    machine = {"host": socket.gethostname(), "cpus": os.cpu_count(),
               "platform": platform.platform(), "date": dt.datetime.now().isoformat("T", "seconds"),
               "load": [round(x, 2) for x in os.getloadavg()]}
    spaces = sorted({s for s, _, _ in searches})
    counts = {s: sum(1 for x, _, _ in searches if x == s) for s in spaces}
    header = ("| rule | epochs saved | best kept | top-quarter recall | median regret | "
              "mean regret | max regret | meets target |\n|---|---|---|---|---|---|---|---|")
    lines = [f"# early_stopping, {machine['date']}",
             "",
             f"Curves: `{args.storage}` — {len(searches)} searches "
             f"({', '.join(f'{s}: {n}' for s, n in counts.items())}), sampler seeds "
             f"{' '.join(map(str, args.seeds))}, 8 trials per search, early stopping off. "
             f"Machine {machine['host']} ({machine['cpus']} CPUs), load {machine['load']}.",
             f"Target: >= {TARGET_SAVED:.0%} of search epochs saved, best trial kept in >= "
             f"{TARGET_KEPT:.0%} of searches, median regret <= {TARGET_REGRET} points.",
             "", "## All searches, registered settings", "", header]
    lines += [_row(f"`{k}`", r["all"]) for k, r in results.items()]
    for space in spaces:
        lines += ["", f"## {space}", "", header]
        lines += [_row(f"`{k}`", r[space]) for k, r in results.items()]
    lines += ["", "## Sensitivity (all searches; not used to pick a rule)", "", header]
    lines += [_row(label, r["all"]) for label, r in sensitivity.items()]
    lines += ["", "Rules that meet the target: " + (", ".join(winners) or "none") + "."]
    text = "\n".join(lines) + "\n"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"early_stopping-{stamp}.md").write_text(text, encoding="utf-8")
    (args.out / f"early_stopping-{stamp}.json").write_text(json.dumps(
        {"machine": machine, "storage": str(args.storage), "rules": results,
         "sensitivity": sensitivity, "meets_target": winners}, indent=1), encoding="utf-8")
    print(text)
    best = results[headline_rule]["all"]
    print(f"headline rule (keeps the best trial most often): {headline_rule}")
    print(f"early_stopping: {best['saved']:.2f} saved, best kept {best['best_kept']}/"
          f"{best['searches']} (target {TARGET_SAVED:.2f}, {TARGET_KEPT:.2f})")


if __name__ == "__main__":
    main()
