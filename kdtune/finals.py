"""Which final seeds each (dataset, method) runs: the precision-targeted final evaluation.

The first round is ``final.seeds``. With ``final.target_halfwidth``, each comparison of a method
with its baseline goes round by round: once every seed of a round has a row for both (finished,
or failed), the paired t half-width over the seeds both finished decides
(:func:`kdtune.stats.next_round`, which looks at the width only, never at the sign): stop at the
target or ``max_seeds``, else run the next seeds of ``final.all_seeds()``. A baseline runs every
seed any of its comparisons asks for, so each seed is paired.

Everything here is computed from the rows of ``trials.parquet``, so a resumed run (or a crash
mid-round) takes up exactly where it was: a round's decision uses only rows of finished rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdtune import methods
from kdtune.spec import FinalSpec, StudySpec
from kdtune.stats import halfwidth, next_round

DONE = ("finished", "failed")


@dataclass(frozen=True)
class Progress:
    """Where one comparison stands."""

    dataset: str
    method: str
    baseline: str
    seeds: tuple[int, ...]  # every seed it has asked for so far
    complete: bool  # no seed outstanding: the comparison has stopped
    n_paired: int
    halfwidth: float
    reached_target: bool | None  # None: no target


def _results(rows: list[dict[str, Any]], dataset: str, method: str) -> dict[int, float | None]:
    """seed -> test accuracy (None for a failed run) of the done final runs."""
    out: dict[int, float | None] = {}
    for r in rows:
        if (r["role"] == "final" and r["dataset"] == dataset and r["method"] == method
                and r["status"] in DONE):
            out[int(r["seed"])] = r["test_acc"] if r["status"] == "finished" else None
    return out


def comparison(final: FinalSpec, dataset: str, method: str, baseline: str,
               rows: list[dict[str, Any]]) -> Progress:
    """The seeds a comparison has asked for, from the rows so far."""
    ours, theirs = _results(rows, dataset, method), _results(rows, dataset, baseline)
    pool = final.all_seeds()
    seeds = list(final.seeds)

    def diffs() -> list[float]:
        return [ours[s] - theirs[s] for s in seeds
                if ours.get(s) is not None and theirs.get(s) is not None]

    while True:
        if any(s not in ours or s not in theirs for s in seeds):  # the round is still running
            d = diffs()
            return Progress(dataset, method, baseline, tuple(seeds), False, len(d),
                            halfwidth(d), None if final.target_halfwidth is None else False)
        d = diffs()
        width = halfwidth(d)
        if final.target_halfwidth is None:
            return Progress(dataset, method, baseline, tuple(seeds), True, len(d), width, None)
        sd = _sd(d)
        more = next_round(len(d), sd, final.target_halfwidth, final.max_seeds,
                          final.min_seeds)
        more = min(more, len(pool) - len(seeds))  # never past max_seeds seeds attempted
        if more <= 0:
            reached = math.isfinite(width) and width <= final.target_halfwidth
            return Progress(dataset, method, baseline, tuple(seeds), True, len(d), width,
                            reached)
        seeds += [s for s in pool if s not in seeds][:more]


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def comparisons(spec: StudySpec, rows: list[dict[str, Any]]) -> list[Progress]:
    """Every comparison of the study (a method with a baseline, on a dataset)."""
    out = []
    for ds in spec.datasets:
        for method in spec.methods:
            baseline = methods.baseline_of(method)
            if baseline is not None and baseline in spec.methods:
                out.append(comparison(spec.final, ds.label, method, baseline, rows))
    return out


def required_seeds(spec: StudySpec, rows: list[dict[str, Any]]) -> dict[tuple[str, str],
                                                                        list[int]]:
    """(dataset label, method) -> the seeds it must run so far: its comparison's, and for a
    baseline the first round and every seed one of its comparisons asks for."""
    out: dict[tuple[str, str], list[int]] = {
        (ds.label, m): list(spec.final.seeds) for ds in spec.datasets for m in spec.methods}
    for progress in comparisons(spec, rows):
        for method in (progress.method, progress.baseline):
            have = out[(progress.dataset, method)]
            have += [s for s in progress.seeds if s not in have]
    return out


def done_seeds(rows: list[dict[str, Any]], dataset: str, method: str) -> set[int]:
    return set(_results(rows, dataset, method))
