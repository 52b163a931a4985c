"""Early-stopping rules: hand cases per rule, the replay's scores, the spec field, and a rule
behind Tune's scheduler API stopping real search trials (recorded as ``stopped``)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from kdtune.early_stopping import RecordedSearch, replay, replay_asha, rule_outcome
from kdtune.stopping import (
    RULES,
    Extrapolate,
    Median,
    StoppingRule,
    TrailsLeader,
    make_rule,
)


def _events(curves: dict[str, list[float]], order: list[str] | None = None):
    """Trials one after another (each whole curve), in ``order``."""
    return [(t, e + 1, v) for t in (order or list(curves)) for e, v in enumerate(curves[t])]


def test_every_registered_rule_runs_and_never_stops_at_the_budget():
    rng = random.Random(0)
    curves = {f"t{i}": [rng.uniform(0, 100) for _ in range(12)] for i in range(8)}
    for kind in RULES:
        ran = replay(make_rule(kind, 12), _events(curves))
        assert set(ran) == set(curves)
        assert all(1 <= epochs <= 12 for epochs in ran.values()), kind
        # the first trial has nothing to be compared with: it always runs to the end
        assert ran["t0"] == 12, kind


def test_asha_rule_is_the_replayed_ray_bracket():
    rng = random.Random(3)
    curves = {f"t{i}": [rng.uniform(0, 100) for _ in range(9)] for i in range(10)}
    events = _events(curves)
    assert replay(make_rule("asha", 9, grace_period=1, reduction_factor=3), events) == \
        replay_asha(events, 1, 3, 9)


def test_trails_leader_stops_a_trial_far_behind_the_leader_for_k_epochs_only():
    rule = TrailsLeader(max_t=12, k=3, margin=3.0)
    leader = [50 + e for e in range(12)]
    close = [48 + e for e in range(12)]  # 2 points behind: within the margin
    late = [40] * 2 + [70] * 10  # far behind for fewer than k epochs, then ahead
    far = [30] * 12
    ran = replay(rule, _events({"lead": leader, "close": close, "late": late, "far": far}))
    assert ran == {"lead": 12, "close": 12, "late": 12, "far": 3}


def test_extrapolate_projects_a_line_and_keeps_a_rising_trial():
    rule = Extrapolate(max_t=20, k=5, z=0.0)
    flat = {e: 60.0 for e in range(1, 11)}
    assert rule.projection(flat, 10) == pytest.approx(60.0)
    rising = {e: 40.0 + 2 * e for e in range(1, 11)}  # +2 per epoch: 80 at 20
    assert rule.projection(rising, 10) == pytest.approx(80.0)
    falling = {e: 80.0 - e for e in range(1, 11)}  # a falling slope is clipped to 0
    assert rule.projection(falling, 10) == pytest.approx(sum(80.0 - e for e in range(6, 11)) / 5)
    ran = replay(Extrapolate(max_t=20, k=5, z=0.0), _events({
        "done": [75.0] * 20, "rising": [40.0 + 2 * e for e in range(1, 21)],
        "flat": [60.0] * 20}))
    assert ran["done"] == 20 and ran["rising"] == 20 and ran["flat"] == 5


def test_median_stops_below_the_median_of_running_means():
    rule = Median(max_t=8, min_samples=2)
    curves = {"a": [50.0] * 8, "b": [60.0] * 8, "c": [70.0] * 8, "d": [10.0] * 8}
    ran = replay(rule, _events(curves))
    assert ran["d"] == 2  # grace: a quarter of 8
    assert ran["b"] == 8  # 60 >= median(50) of the two before it
    assert ran["c"] == 8


def test_wilcoxon_pruner_stops_a_curve_below_the_best_at_every_epoch():
    rule = make_rule("wilcoxon", 20)
    best = [60.0 + e for e in range(20)]
    worse = [30.0 + e for e in range(20)]
    ran = replay(rule, _events({"best": best, "worse": worse}))
    assert ran["best"] == 20 and ran["worse"] < 20


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="unknown early-stopping rule 'nope'"):
        make_rule("nope", 10)


def test_rule_outcome_scores_saved_epochs_best_kept_recall_and_regret():
    class StopsTrialB(StoppingRule):
        name = "stops-b"

        def judge(self, trial, epoch, value):
            return trial == "b" and epoch == 2

    curves = {"a": [10, 20, 30, 40], "b": [5, 10, 60, 90], "c": [1, 2, 3, 4], "d": [1, 1, 1, 2]}
    recorded = RecordedSearch(
        "s", {t: {e + 1: float(v) for e, v in enumerate(c)} for t, c in curves.items()},
        _events({t: [float(v) for v in c] for t, c in curves.items()}))
    outcome = rule_outcome(StopsTrialB(4), recorded)
    assert outcome.epochs_full == 16 and outcome.epochs_run == 14
    assert outcome.saved == pytest.approx(1 - 14 / 16)
    assert not outcome.best_kept  # b (90) was the best
    assert outcome.top_quarter == 1 and outcome.top_quarter_kept == 0
    assert outcome.regret == pytest.approx(90 - 40)  # a is selected instead


def test_spec_scheduler_kind(tiny_spec_dict):
    from kdtune.spec import SpecError, StudySpec, parse_spec

    assert StudySpec.model_validate(tiny_spec_dict).scheduler.rule == "none"
    tiny_spec_dict["scheduler"] = {"asha": True}
    assert StudySpec.model_validate(tiny_spec_dict).scheduler.rule == "asha"
    tiny_spec_dict["scheduler"] = {"kind": "extrapolate"}
    assert StudySpec.model_validate(tiny_spec_dict).scheduler.rule == "extrapolate"
    tiny_spec_dict["scheduler"] = {"kind": "sometimes"}
    with pytest.raises(SpecError, match=r"scheduler\.kind: .*unknown early-stopping rule"):
        parse_spec(tiny_spec_dict, "spec.yaml")
    tiny_spec_dict["scheduler"] = {"kind": "median", "asha": True}
    with pytest.raises(SpecError, match="name two rules"):
        parse_spec(tiny_spec_dict, "spec.yaml")


def _trial(trial_id: str, stage: str):
    return SimpleNamespace(trial_id=trial_id, config={"stage": stage})


def test_rule_scheduler_routes_results_per_search_and_completes_trials():
    from ray.tune.schedulers import TrialScheduler

    from kdtune.multisearch import PerStageASHA, RuleScheduler

    scheduler = PerStageASHA(lambda: RuleScheduler(TrailsLeader(max_t=4, k=2, margin=5.0)))

    def report(trial_id, stage, epoch, value):
        return scheduler.on_trial_result(None, _trial(trial_id, stage),
                                         {"epoch": epoch, "val_acc": value})

    for epoch in range(1, 5):
        assert report("a1", "search-a", epoch, 80.0) == TrialScheduler.CONTINUE
    scheduler.on_trial_complete(None, _trial("a1", "search-a"), {"epoch": 4, "val_acc": 80.0})
    assert report("a2", "search-a", 1, 10.0) == TrialScheduler.CONTINUE  # grace: 2 epochs
    assert report("a2", "search-a", 2, 10.0) == TrialScheduler.STOP
    assert report("b1", "search-b", 2, 10.0) == TrialScheduler.CONTINUE  # b: no leader yet
    assert report("f1", "final", 2, 0.0) == TrialScheduler.CONTINUE
    assert sorted(scheduler._by_stage) == ["search-a", "search-b"]


@pytest.mark.slow
def test_a_rule_stops_search_trials_through_tune_and_they_are_recorded_stopped(
        tiny_spec_dict, tmp_path, monkeypatch, embedded_ray):
    """A rule registered for the test stops every search trial but each search's first at
    epoch 2; Tune stops them, the rows say ``stopped`` with 2 epochs, finals run in full."""

    import kdtune
    from kdtune import stopping

    class FirstOnly(StoppingRule):
        name = "first_only"

        def judge(self, trial, epoch, value):
            return epoch >= 2 and trial != next(iter(self.curves))

    monkeypatch.setitem(stopping.RULES, "first_only", FirstOnly)
    tiny_spec_dict["training"]["student_epochs"] = 4
    tiny_spec_dict["search"]["trials"] = 3
    tiny_spec_dict["search"]["max_concurrent"] = 1
    tiny_spec_dict["final"] = {"seeds": [0]}
    tiny_spec_dict["scheduler"] = {"kind": "first_only"}
    run = kdtune.run(tiny_spec_dict, storage=str(tmp_path / "runs"), progress=False)
    trials = run.trials
    search = trials[trials.role == "search"]
    # scratch searches nothing in this spec: one trial; rkd and ikd: three each
    assert search.groupby("method").size().to_dict() == {"ikd": 3, "rkd": 3, "scratch": 1}
    per_search = search.groupby("stage").status.value_counts().unstack(fill_value=0)
    assert (per_search["finished"] == 1).all()
    assert per_search["stopped"].to_dict() == {s: (0 if "scratch" in s else 2)
                                               for s in per_search.index}
    assert (search[search.status == "stopped"].epochs_run == 2).all()
    assert (search[search.status == "finished"].epochs_run == 4).all()
    finals = trials[trials.role == "final"]
    assert len(finals) == 3 and (finals.status == "finished").all()
    assert (finals.epochs_run == 4).all()
