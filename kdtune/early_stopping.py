"""What early stopping costs: replay a stopping rule on curves recorded with it off.

Distillation's advantage can appear late in training, so an early-stopping rule that judges a
trial by its accuracy after a few epochs may stop the trial that would have won. Given every
search trial's full per-epoch validation curve (a run with early stopping off), this module
replays a rule of :mod:`kdtune.stopping` (Ray Tune's ASHA among them, with the same rung rule)
in the order the results arrived, and measures the epochs it saves, whether the best trial
survives, how many top-quarter trials it keeps, and the regret of the config it would select.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kdtune.stopping import Asha, StoppingRule


def asha_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Rung milestones (epochs) of Ray's ASHA bracket 0, ascending."""
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor ** k for k in range(rungs)]


def replay(rule: StoppingRule, events: Iterable[tuple[str, int, float]]) -> dict[str, int]:
    """Epochs each trial would have run under ``rule``, given its results in arrival order.

    ``events`` are (trial, epoch, val_acc), ordered as the driver saw them. A trial's last
    event at the budget completes it (``rule.on_complete``).
    """
    stopped: dict[str, int] = {}
    last: dict[str, int] = {}
    for trial, epoch, value in events:
        if trial in stopped:
            continue
        last[trial] = epoch
        if rule.on_result(trial, epoch, value):
            stopped[trial] = epoch
        elif epoch >= rule.max_t:
            rule.on_complete(trial)
    return {trial: stopped.get(trial, epoch) for trial, epoch in last.items()}


def replay_asha(events: Iterable[tuple[str, int, float]], grace_period: int,
                reduction_factor: float, max_t: int) -> dict[str, int]:
    """Epochs each trial would have run under Ray's ASHA (:class:`kdtune.stopping.Asha`)."""
    return replay(Asha(max_t, grace_period, reduction_factor), events)


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


@dataclass
class RecordedSearch:
    """One search's full curves (trials that ran their whole budget) and their arrival order."""

    search: str
    curves: dict[str, dict[int, float]]  # trial -> epoch -> val_acc
    events: list[tuple[str, int, float]]  # (trial, epoch, val_acc) as the driver saw them

    @property
    def final(self) -> dict[str, float]:
        return {t: c[max(c)] for t, c in self.curves.items()}


def recorded_searches(epochs: list[dict[str, Any]], trials: list[dict[str, Any]],
                      max_t: int) -> list[RecordedSearch]:
    """The search stages of a run made without early stopping, from the rows of
    ``epochs.parquet`` and ``trials.parquet``. Results are ordered by when they happened: a
    trial's end (``finished_at``) less its time after each epoch, ties broken by trial order.
    """
    import datetime as dt

    finished = {r["trial_id"]: r for r in trials if r["role"] == "search"
                and r["status"] == "finished" and r["epochs_run"] == max_t}
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in finished}
    for e in epochs:
        if e["trial_id"] in rows:
            rows[e["trial_id"]].append(e)
    out = []
    for search in sorted({r["stage"] for r in finished.values()}):
        ids = [t for t, r in finished.items() if r["stage"] == search]
        timeline = []
        for order, t in enumerate(ids):
            curve = sorted(rows[t], key=lambda e: e["epoch"])
            end = dt.datetime.fromisoformat(finished[t]["finished_at"]).timestamp()
            last_wall = curve[-1]["wall_s"] or 0.0
            timeline += [(end - last_wall + (e["wall_s"] or 0.0), order, t, e["epoch"],
                          e["val_acc"]) for e in curve]
        timeline.sort()
        curves = {t: {e["epoch"]: e["val_acc"] for e in rows[t]} for t in ids}
        out.append(RecordedSearch(search, curves, [(t, ep, v) for _, _, t, ep, v in timeline]))
    return out


def top_quarter(final: dict[str, float]) -> list[str]:
    """Trials whose final value ranks in the top quarter of their search (ties included)."""
    ranked = sorted(final.values(), reverse=True)
    threshold = ranked[max(1, math.ceil(len(ranked) / 4)) - 1]
    return [t for t, v in final.items() if v >= threshold]


@dataclass
class RuleOutcome:
    """What one rule would have done to one recorded search."""

    search: str
    rule: str
    trials: int
    epochs_full: int
    epochs_run: int
    best_kept: bool  # a trial with the best final value runs to the end
    top_quarter: int
    top_quarter_kept: int
    regret: float  # best final val_acc less that of the config the search would select

    @property
    def saved(self) -> float:
        return 1 - self.epochs_run / self.epochs_full


def rule_outcome(rule: StoppingRule, recorded: RecordedSearch) -> RuleOutcome:
    """Replay ``rule`` on one search. The config it would select is the best final trial
    among those it lets finish (stopped trials are no candidates, as in kdtune); where it
    stops every trial, the one with the best value when stopped. Replaying assumes the sampler
    would have proposed the same configs (it learns from final values only)."""
    ran = replay(rule, recorded.events)
    final = recorded.final
    survivors = [t for t in final if ran[t] >= rule.max_t]
    if survivors:
        selected = max(survivors, key=lambda t: final[t])
    else:
        selected = max(final, key=lambda t: recorded.curves[t][ran[t]])
    best = max(final.values())
    top = top_quarter(final)
    return RuleOutcome(
        search=recorded.search, rule=rule.name, trials=len(final),
        epochs_full=len(final) * rule.max_t, epochs_run=sum(ran.values()),
        best_kept=any(final[t] == best for t in survivors), top_quarter=len(top),
        top_quarter_kept=sum(1 for t in top if ran[t] >= rule.max_t),
        regret=best - final[selected])


def agreement(epochs: list[dict[str, Any]], trials: list[dict[str, Any]], grace_period: int,
              reduction_factor: float, max_t: int) -> list[SearchAgreement]:
    """Replay ASHA on each search stage of a run made with ASHA off (``epochs`` and
    ``trials``: rows of ``epochs.parquet`` and ``trials.parquet``)."""
    out = []
    for recorded in recorded_searches(epochs, trials, max_t):
        ran = replay_asha(recorded.events, grace_period, reduction_factor, max_t)
        final, ids = recorded.final, list(recorded.curves)
        at_grace = {t: next(v for e, v in sorted(recorded.curves[t].items())
                            if e >= grace_period) for t in ids}
        top = top_quarter(final)
        survivors = [t for t in ids if ran[t] >= max_t]
        best = max(final.values())
        out.append(SearchAgreement(
            search=recorded.search, trials=len(ids), top_quarter=len(top),
            top_quarter_stopped=sum(1 for t in top if ran[t] < max_t),
            spearman_at_grace=spearman([at_grace[t] for t in ids], [final[t] for t in ids]),
            best_kept=any(final[t] == best for t in survivors), best_final=best,
            best_final_under_asha=max(final[t] for t in survivors),
            epochs_full=len(ids) * max_t, epochs_asha=sum(ran.values())))
    return out
