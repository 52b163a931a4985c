"""Record the learning curves benchmarks/early_stopping.py replays: each search space's study
run with early stopping off, once per sampler seed, its final round cut to one seed (the
curves are what is wanted; finals are not replayed).

    python benchmarks/early_stopping_record.py --storage /tmp/es-curves [--seeds 0 1 2]

A run already in the storage (same study name, status finished) is not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACES = {  # name -> spec file (the search spaces the benchmark replays)
    "quickstart": ROOT / "studies" / "quickstart.yaml",
    "fashion": ROOT / "benchmarks" / "early_stopping_fashion.yaml",
    "knobs": ROOT / "studies" / "knobs-digits.yaml",
}


def curve_spec(space: str, seed: int) -> dict[str, Any]:
    """The space's spec with a sampler seed, ASHA off and one final seed."""
    data = yaml.safe_load(SPACES[space].read_text(encoding="utf-8"))
    data["study"] = f"es-{space}-s{seed}"
    data.setdefault("search", {})["sampler_seed"] = seed
    data["final"] = {"seeds": [0]}
    data["scheduler"] = {"asha": False}
    return data


def finished_runs(storage: Path) -> dict[str, Path]:
    """Study name -> its finished run directory in ``storage``."""
    out = {}
    for meta in sorted(storage.glob("*/run.json")):
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if info.get("status") == "finished":
            out[info.get("study") or meta.parent.name.rsplit("-", 2)[0]] = meta.parent
    return out


def record(storage: Path, spaces: list[str], seeds: list[int]) -> dict[str, Path]:
    import kdtune

    done = finished_runs(storage)
    for space in spaces:
        for seed in seeds:
            name = f"es-{space}-s{seed}"
            if name in done:
                print(f"{name}: recorded already ({done[name].name})", flush=True)
                continue
            start = time.perf_counter()
            run = kdtune.run(curve_spec(space, seed), storage=str(storage), progress=False)
            done[name] = run.path
            print(f"{name}: {run.path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    args.storage.mkdir(parents=True, exist_ok=True)
    record(args.storage, args.spaces, args.seeds)


if __name__ == "__main__":
    main()
