"""What early stopping costs: replay ASHA's rule on curves recorded with ASHA off.

Distillation's advantage can appear late in training, so an early-stopping rule that judges a
trial by its accuracy after a few epochs may stop the trial that would have won. Given every
search trial's full per-epoch validation curve (a run with ``scheduler.asha: false``), this
module replays Ray Tune's asynchronous successive halving (``ASHAScheduler``, one bracket, the
same rung rule) in the order the results arrived, and measures how often it would have stopped
a trial whose final accuracy ranked in the top quarter of its search.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def asha_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Rung milestones (epochs) of Ray's ASHA bracket 0, ascending."""
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor ** k for k in range(rungs)]


def _percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, without numpy's NaN handling subtleties."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def replay_asha(events: Iterable[tuple[str, int, float]], grace_period: int,
                reduction_factor: float, max_t: int) -> dict[str, int]:
    """Epochs each trial would have run under ASHA, given its results in arrival order.

    ``events`` are (trial, epoch, val_acc), ordered as the driver saw them. The rule is Ray's
    ``_Bracket.on_result``: at the first result at or past a rung's milestone, a trial stops if
    its metric is below the ``1 - 1/rf`` quantile of the values earlier trials recorded there.
    """
    rungs = {m: {} for m in asha_milestones(grace_period, reduction_factor, max_t)}
    stopped: dict[str, int] = {}
    last: dict[str, int] = {}
    for trial, epoch, value in events:
        if trial in stopped:
            continue
        last[trial] = epoch
        if epoch >= max_t:
            continue
        for milestone in sorted(rungs, reverse=True):
            recorded = rungs[milestone]
            if epoch < milestone or trial in recorded:
                continue
            if recorded and value < _percentile(list(recorded.values()),
                                                (1 - 1 / reduction_factor) * 100):
                stopped[trial] = epoch
            recorded[trial] = value
            break
    return {trial: stopped.get(trial, epoch) for trial, epoch in last.items()}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when undefined."""
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    if len(x) < 3:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else math.nan


@dataclass
class SearchAgreement:
    """One search's verdict: would ASHA have stopped its best trials?"""

    search: str
    trials: int
    top_quarter: int  # trials whose final accuracy ranks in the top quarter (ties included)
    top_quarter_stopped: int  # of those, stopped by the replayed rule
    spearman_at_grace: float  # rank correlation of accuracy at the grace period and at the end
    best_kept: bool  # the best final trial survives
    best_final: float
    best_final_under_asha: float  # best final accuracy among trials ASHA lets finish
    epochs_full: int
    epochs_asha: int


def agreement(epochs: list[dict[str, Any]], trials: list[dict[str, Any]], grace_period: int,
              reduction_factor: float, max_t: int) -> list[SearchAgreement]:
    """Replay ASHA on each search stage of a run made with ASHA off.

    ``epochs`` and ``trials`` are rows of ``epochs.parquet`` and ``trials.parquet``. Results are
    ordered by when they happened: a trial's end (``finished_at``) less its time after each
    epoch, ties broken by trial order.
    """
    import datetime as dt

    finished = {r["trial_id"]: r for r in trials if r["role"] == "search"
                and r["status"] == "finished" and r["epochs_run"] == max_t}
    out = []
    for search in sorted({r["stage"] for r in finished.values()}):
        ids = [t for t, r in finished.items() if r["stage"] == search]
        curves = {t: sorted((e for e in epochs if e["trial_id"] == t), key=lambda e: e["epoch"])
                  for t in ids}
        events = []
        for order, t in enumerate(ids):
            end = dt.datetime.fromisoformat(finished[t]["finished_at"]).timestamp()
            last_wall = curves[t][-1]["wall_s"] or 0.0
            for e in curves[t]:
                events.append((end - last_wall + (e["wall_s"] or 0.0), order, t, e["epoch"],
                               e["val_acc"]))
        events.sort()
        ran = replay_asha([(t, ep, v) for _, _, t, ep, v in events], grace_period,
                          reduction_factor, max_t)
        final = {t: curves[t][-1]["val_acc"] for t in ids}
        at_grace = {t: next(e["val_acc"] for e in curves[t] if e["epoch"] >= grace_period)
                    for t in ids}
        ranked = sorted(final.values(), reverse=True)
        threshold = ranked[max(1, math.ceil(len(ranked) / 4)) - 1]
        top = [t for t in ids if final[t] >= threshold]
        survivors = [t for t in ids if ran[t] >= max_t]
        best = max(final.values())
        out.append(SearchAgreement(
            search=search, trials=len(ids), top_quarter=len(top),
            top_quarter_stopped=sum(1 for t in top if ran[t] < max_t),
            spearman_at_grace=spearman([at_grace[t] for t in ids], [final[t] for t in ids]),
            best_kept=any(final[t] == best for t in survivors), best_final=best,
            best_final_under_asha=max(final[t] for t in survivors),
            epochs_full=len(ids) * max_t, epochs_asha=sum(ran.values())))
    return out
