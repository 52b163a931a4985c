"""The ASHA replay follows Ray Tune's own rule, and the agreement summary counts right."""

from __future__ import annotations

import datetime as dt
import random
from types import SimpleNamespace

import pytest

from kdtune.early_stopping import agreement, asha_milestones, replay_asha, spearman


def _ray_decisions(events, grace, rf, max_t):
    """Ray's _Bracket fed the same events: epochs each trial ran."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(grace, max_t, rf, s=0)
    stopped, last = {}, {}
    for trial, epoch, value in events:
        if trial in stopped:
            continue
        last[trial] = epoch
        if epoch >= max_t:
            continue
        if bracket.on_result(SimpleNamespace(trial_id=trial), epoch, value) == "STOP":
            stopped[trial] = epoch
    return {t: stopped.get(t, e) for t, e in last.items()}


def test_milestones_match_the_quickstart():
    assert asha_milestones(3, 3, 10) == [3, 9]
    assert asha_milestones(1, 2, 16) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("seed", range(20))
def test_replay_makes_rays_decisions(seed):
    rng = random.Random(seed)
    grace, rf, max_t = rng.choice([(1, 2, 8), (2, 3, 10), (3, 3, 10), (1, 4, 16)])
    n = rng.randint(2, 20)
    curves = {f"t{i}": [round(rng.random() * 100, rng.choice([0, 1])) for _ in range(max_t)]
              for i in range(n)}
    # interleave the trials' epochs at random, as concurrent trials report
    cursors = {t: 0 for t in curves}
    events = []
    while cursors:
        t = rng.choice(sorted(cursors))
        events.append((t, cursors[t] + 1, curves[t][cursors[t]]))
        cursors[t] += 1
        if cursors[t] == max_t:
            del cursors[t]
    assert replay_asha(events, grace, rf, max_t) == _ray_decisions(events, grace, rf, max_t)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)
    assert spearman([1, 2], [1, 2]) != spearman([1, 2], [1, 2])  # NaN: too few


def test_agreement_counts_top_quarter_trials_asha_would_stop():
    # four sequential trials of 10 epochs; the last is slow to start but ends best
    finals = {"a": 50.0, "b": 60.0, "c": 40.0, "d": 90.0}
    early = {"a": 50.0, "b": 60.0, "c": 40.0, "d": 10.0}
    trials, epochs = [], []
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for i, t in enumerate("abcd"):
        end = start + dt.timedelta(seconds=10 * (i + 1))
        trials.append({"trial_id": t, "stage": "search-x-rkd", "role": "search",
                       "status": "finished", "epochs_run": 10,
                       "finished_at": end.isoformat()})
        for epoch in range(1, 11):
            epochs.append({"trial_id": t, "epoch": epoch, "wall_s": float(epoch),
                           "val_acc": early[t] if epoch < 10 else finals[t]})
    (result,) = agreement(epochs, trials, grace_period=3, reduction_factor=3, max_t=10)
    assert result.trials == 4 and result.top_quarter == 1
    assert result.top_quarter_stopped == 1  # d: 10% at epoch 3 is below the cutoff
    assert not result.best_kept and result.best_final == 90.0
    assert result.best_final_under_asha == 60.0
    assert result.epochs_full == 40 and result.epochs_asha == 10 + 10 + 3 + 3
