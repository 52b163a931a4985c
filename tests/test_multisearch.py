"""One Tuner for every search and its final runs: the routing searcher and per-stage ASHA."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from kdtune.multisearch import PerStageASHA, SearchPart, StudySearcher


class Counting(Searcher):
    """A searcher that suggests x = 0, 1, 2, ... and remembers what it was told."""

    def __init__(self):
        super().__init__(metric="val_acc", mode="max")
        self.n, self.completed, self.results = 0, [], []

    def suggest(self, trial_id):
        self.n += 1
        return {"x": self.n - 1}

    def on_trial_result(self, trial_id, result):
        self.results.append(trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


def _part(name, trials, limit):
    searcher = ConcurrencyLimiter(Counting(), max_concurrent=limit)
    return SearchPart(f"search-{name}", searcher, trials, {"method": name})


def _key(job):
    return (job["of"], job["seed"])


def test_searches_fill_slots_in_order_then_each_search_s_finals_once_it_is_done():
    a, b = _part("a", trials=3, limit=2), _part("b", trials=2, limit=2)
    finals = {"search-a": [0, 1], "search-b": [0]}
    asked = []

    def pending(searched):
        asked.append(sorted(searched))
        return [{"stage": "final", "of": stage[-1], "seed": s}
                for stage in sorted(searched) for s in finals[stage]]

    searcher = StudySearcher([a, b], pending, _key)
    got = [searcher.suggest(f"t{i}") for i in range(4)]
    # a is at its limit after two: b fills the next slots, nothing else is ready yet
    assert [g["stage"] for g in got] == ["search-a", "search-a", "search-b", "search-b"]
    assert got[0] == {"method": "a", "x": 0, "stage": "search-a"}
    assert searcher.suggest("t4") is None and asked[-1] == []
    searcher.on_trial_result("t0", {"val_acc": 1.0})
    # per-epoch results stay out of Optuna (no journal write per epoch); the final one counts
    searcher.on_trial_complete("t0", {"val_acc": 1.0})
    assert searcher.suggest("t5")["stage"] == "search-a"  # a's third trial
    for t in ("t2", "t3"):  # b is done: its final run is released
        searcher.on_trial_complete(t, {"val_acc": 1.0})
    assert searcher.suggest("t6") == {"stage": "final", "of": "b", "seed": 0}
    assert asked[-1] == ["search-b"]
    assert searcher.suggest("t7") is None  # a still runs t1 and t5; b's final is handed out
    for t in ("t1", "t5"):
        searcher.on_trial_complete(t, {"val_acc": 1.0})
    assert [searcher.suggest(f"t{i}")["seed"] for i in (8, 9)] == [0, 1]
    assert searcher.suggest("t10") is None  # finals still in flight: their results may ask
    for t in ("t6", "t8", "t9"):
        searcher.on_trial_complete(t, {"val_acc": 1.0})
    assert searcher.suggest("t11") == Searcher.FINISHED
    inner = a.searcher.searcher
    assert inner.completed == ["t0", "t1", "t5"] and inner.results == []


def test_a_finished_round_can_ask_for_more_and_nothing_is_handed_out_twice():
    a = _part("a", trials=0, limit=2)  # its search was done in an earlier session
    done = set()

    def pending(searched):
        assert searched == {"search-a"}
        seeds = [0, 1] + ([2, 3] if {0, 1} <= done else [])  # round 2 once round 1 is done
        return [{"stage": "final", "of": "a", "seed": s} for s in seeds if s not in done]

    searcher = StudySearcher([a], pending, _key)
    assert [searcher.suggest(f"t{i}")["seed"] for i in (0, 1)] == [0, 1]
    assert searcher.suggest("t2") is None  # round 1 in flight
    searcher.on_trial_complete("t0", {})
    done.add(0)
    assert searcher.suggest("t3") is None  # seed 1 is still running, and 0 is not repeated
    searcher.on_trial_complete("t1", {})
    done.add(1)
    assert [searcher.suggest(f"t{i}")["seed"] for i in (4, 5)] == [2, 3]
    for t, seed in (("t4", 2), ("t5", 3)):
        searcher.on_trial_complete(t, {})
        done.add(seed)
    assert searcher.suggest("t6") == Searcher.FINISHED


def test_teachers_go_first_and_a_search_waits_for_its_teacher_while_others_run():
    teacher_ready = [False]
    scratch = _part("scratch", trials=2, limit=2)
    kd = SearchPart("search-kd", ConcurrencyLimiter(Counting(), max_concurrent=2), 1,
                    {"method": "kd"}, ready=lambda: teacher_ready[0])
    teachers = [{"stage": "teachers", "of": "teacher", "seed": 0}]
    ended = []
    searcher = StudySearcher([kd, scratch], lambda searched: [], _key,
                             first=lambda: [] if teacher_ready[0] else teachers,
                             ended=lambda job, error: ended.append((job["of"], error)))
    assert searcher.suggest("t0") == teachers[0]  # before any search, the first search's too
    # the teacher is in flight (handed out once): kd waits for it, scratch runs meanwhile
    assert [searcher.suggest(f"t{i}")["stage"] for i in (1, 2)] == ["search-scratch"] * 2
    assert searcher.suggest("t3") is None
    searcher.on_trial_complete("t0", {})
    assert ended == [("teacher", False)]  # the study hears of the teacher's end
    teacher_ready[0] = True
    assert searcher.suggest("t4")["stage"] == "search-kd"
    searcher.on_trial_complete("t1", {"val_acc": 1.0})  # a search trial: not a job's end
    assert ended == [("teacher", False)]
    for t in ("t2", "t4"):
        searcher.on_trial_complete(t, {"val_acc": 1.0})
    assert searcher.suggest("t5") == Searcher.FINISHED


def test_a_search_whose_teacher_never_comes_keeps_the_searcher_from_finishing_until_dropped():
    kd = SearchPart("search-kd", ConcurrencyLimiter(Counting(), max_concurrent=2), 2,
                    {"method": "kd"}, ready=lambda: False)
    searcher = StudySearcher([kd], lambda searched: [], _key)
    assert searcher.suggest("t0") is None  # not finished: its teacher may still come
    kd.trials = kd.suggested  # the study drops it (its teacher's training failed)
    assert searcher.suggest("t1") == Searcher.FINISHED


def _trial(trial_id, stage):
    return SimpleNamespace(trial_id=trial_id, config={"stage": stage},
                           evaluated_params={}, status="RUNNING")


def test_each_search_has_its_own_asha_bracket_and_final_runs_are_never_stopped():
    def make():
        return ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=10,
                             grace_period=1, reduction_factor=2)

    scheduler = PerStageASHA(make)
    trials = {"a1": "search-a", "a2": "search-a", "b1": "search-b", "f1": "final"}
    for trial_id, stage in trials.items():
        scheduler.on_trial_add(None, _trial(trial_id, stage))
    result = {"epoch": 1, "val_acc": 90.0}

    def report(trial_id, value):
        return scheduler.on_trial_result(None, _trial(trial_id, trials[trial_id]),
                                         result | {"val_acc": value})

    assert report("a1", 90.0) == TrialScheduler.CONTINUE
    assert report("a2", 10.0) == TrialScheduler.STOP  # below a1 in search a
    assert report("b1", 10.0) == TrialScheduler.CONTINUE  # search b's bracket is its own
    assert report("f1", 0.0) == TrialScheduler.CONTINUE  # final runs always continue
    assert sorted(scheduler._by_stage) == ["search-a", "search-b"]


class _FakeActorManager:
    def __init__(self, created: set[str]) -> None:
        self.created = created

    def is_actor_started(self, actor: str) -> bool:  # Tune's name: resources held, created
        return actor in self.created


def _controller(trials, trial_to_actor, created, ready):
    """What SparingFIFO reads of Tune's controller, behind Tune's scheduler-facing wrapper."""
    controller = SimpleNamespace(_trial_to_actor=trial_to_actor, _started_actors=ready,
                                 _actor_manager=_FakeActorManager(created))
    return SimpleNamespace(_tune_controller=controller, get_trials=lambda: trials)


def test_a_free_worker_skips_the_pending_trial_whose_own_worker_is_still_starting():
    from ray.tune.experiment import Trial

    from kdtune.multisearch import SparingFIFO

    class FakeTrial:  # hashable, as Tune's trials are
        def __init__(self, status: str) -> None:
            self.status = status

    running, starting, queued = (FakeTrial(s) for s in (Trial.RUNNING, Trial.PENDING,
                                                         Trial.PENDING))
    trials = [running, starting, queued]
    # "starting" holds a worker that is importing torch; "queued" waits for resources
    tune_controller = _controller(trials, {running: "w1", starting: "w2", queued: "w3"},
                                  created={"w1", "w2"}, ready={"w1"})
    assert SparingFIFO().choose_trial_to_run(tune_controller) is queued
    # once that worker is ready, plain FIFO order again
    tune_controller._tune_controller._started_actors.add("w2")
    assert SparingFIFO().choose_trial_to_run(tune_controller) is starting
    # every pending trial has a worker starting: the oldest, as FIFO (nothing else to run)
    only = _controller([running, starting], {running: "w1", starting: "w2"},
                       created={"w1", "w2"}, ready={"w1"})
    assert SparingFIFO().choose_trial_to_run(only) is starting
    # a Tune without those internals: plain FIFO
    bare = SimpleNamespace(get_trials=lambda: trials)
    assert SparingFIFO().choose_trial_to_run(bare) is starting
    assert isinstance(PerStageASHA(lambda: None), SparingFIFO)
