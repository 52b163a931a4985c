"""All of a study's searches, and the final runs that follow each, in one Ray Tune run.

A ``tune.Tuner`` per search and one for the final runs meant a stage barrier and a cold start
of every trial worker (a new process importing torch) between stages: on two CPU cores that was
the largest cost of a small study. Here one Tuner hands out every search's Optuna trials and,
as soon as a search has finished, the final runs of its best config:

- :class:`StudySearcher` routes ``suggest`` to the searches in order, each behind its own
  concurrency limit (so TPE is fed in small steps however large the cluster), tags each config
  with its stage, and then hands out whatever else the study needs now (``pending``: the final
  runs of every finished search, round by round, and the teachers they wait for);
- :class:`PerStageASHA` gives each search its own ASHA bracket (rung cutoffs never mix
  datasets or methods) and never stops a final run;
- :class:`SparingFIFO` (which PerStageASHA extends) keeps Tune from killing a worker that is
  still starting whenever another worker comes free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher


@dataclass
class SearchPart:
    """One (dataset, method) search: ``trials`` suggestions from ``searcher`` (an OptunaSearch
    behind a ConcurrencyLimiter) merged with ``constants``, once ``ready`` (its teacher is
    stored)."""

    stage: str
    searcher: Searcher
    trials: int
    constants: dict[str, Any]
    ready: Callable[[], bool] = lambda: True
    suggested: int = 0
    running: set[str] = field(default_factory=set)

    @property
    def searching(self) -> bool:
        return self.suggested < self.trials or bool(self.running)


# the jobs the study needs now, given the stages of the searches that are done; and a job's key
Pending = Callable[[set[str]], list[dict[str, Any]]]
JobKey = Callable[[dict[str, Any]], tuple]


class StudySearcher(Searcher):
    """Hands out what ``first`` says the study needs before its searches (the teachers they
    wait for), then the trials of several searches, in order, each once it is ready, then what
    ``pending`` says the study needs (each job once: a job in flight or done is never handed
    out again; ``ended`` hears of each of those jobs' end)."""

    def __init__(self, parts: list[SearchPart], pending: Pending, key: JobKey,
                 metric: str = "val_acc", mode: str = "max",
                 waiting: Callable[[], bool] = lambda: False,
                 first: Callable[[], list[dict[str, Any]]] = list,
                 ended: Callable[[dict[str, Any], bool], None] = lambda job, error: None
                 ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.parts, self.pending, self.key = parts, pending, key
        # True while the study waits for something outside this Tuner (a teacher another
        # study is training): not finished yet, though nothing is in flight
        self.waiting = waiting
        self.first, self.ended = first, ended
        self._owner: dict[str, SearchPart] = {}  # search trial -> its search
        self._in_flight: dict[str, dict[str, Any]] = {}  # other trial -> its job
        self._handed: set[tuple] = set()  # every job key handed out

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every search was built complete, with its own space

    def searched(self) -> set[str]:
        """The stages of the searches that are done."""
        return {p.stage for p in self.parts if not p.searching}

    def _unhanded(self, jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
        for job in jobs:
            if self.key(job) not in self._handed:
                return job
        return None

    def _hand_out(self, trial_id: str, job: dict[str, Any]) -> dict[str, Any]:
        self._handed.add(self.key(job))
        self._in_flight[trial_id] = job
        return job

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        job = self._unhanded(self.first())
        if job is not None:
            return self._hand_out(trial_id, job)
        for part in self.parts:  # searches next, in order: the final runs wait for them
            if part.suggested < part.trials and part.ready():
                config = part.searcher.suggest(trial_id)
                if config == Searcher.FINISHED:
                    part.trials = part.suggested  # it has nothing more to give
                if config is None or config == Searcher.FINISHED:
                    continue  # at its concurrency limit: try the next search
                part.suggested += 1
                part.running.add(trial_id)
                self._owner[trial_id] = part
                return part.constants | config | {"stage": part.stage}
        job = self._unhanded(self.pending(self.searched()))
        if job is not None:
            return self._hand_out(trial_id, job)
        if not any(p.searching for p in self.parts) and not self._in_flight \
                and not self.waiting():
            return Searcher.FINISHED
        return None  # waiting for a search, or a trial whose result decides what follows

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Not passed on: OptunaSearch would store each epoch's val_acc as an Optuna
        # intermediate value, a locked append to the journal for every reported epoch (15% of
        # the driver's busy time in a profile of the quickstart), for pruning kdtune leaves to
        # ASHA. TPE learns from the final value (on_trial_complete); epochs.parquet has the curves.
        pass

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        part = self._owner.pop(trial_id, None)
        if part is not None:
            part.searcher.on_trial_complete(trial_id, result=result, error=error)
            part.running.discard(trial_id)
        job = self._in_flight.pop(trial_id, None)
        if job is not None:
            self.ended(job, error)

    # Nothing to save: a resumed run rebuilds its searches from trials.parquet and the Optuna
    # journal, not from Tune's experiment state (also when Tune wraps this searcher in a
    # ConcurrencyLimiter for max_concurrent_trials, whose save() calls ours).
    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def starting_trials(tune_controller: Any) -> set[Any]:
    """Pending trials whose own worker is being started: its resources are held and its
    process is importing torch, but it has not taken a trial yet. Reads Tune's internals; on a
    Tune without them: none, and the scheduler is plain FIFO."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    try:
        manager, ready = controller._actor_manager, controller._started_actors
        return {trial for trial, actor in controller._trial_to_actor.items()
                if actor not in ready and manager.is_actor_started(actor)}
    except AttributeError:
        return set()


class SparingFIFO(FIFOScheduler):
    """FIFO, except that a worker that comes free takes the first pending trial that has no
    worker of its own mid-start.

    With actor reuse, Tune gives a free worker to the trial this method returns and kills the
    worker that was being started for that trial. Plain FIFO returns the oldest pending trial,
    which is the one whose worker is starting: when a cold start (a new process importing
    torch, ~3 s on 2 cores) outlasts a trial (~0.5 s in the quickstart), every second worker
    was killed before it took a trial, and a whole stage ran on one worker (measured: the
    quickstart in 69 s instead of 42 s, 17 workers started, one used).
    """

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        starting = starting_trials(tune_controller)
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PENDING and trial not in starting:
                return trial
        return super().choose_trial_to_run(tune_controller)


class RuleScheduler(FIFOScheduler):
    """A :mod:`kdtune.stopping` rule behind Tune's scheduler API, for one search: each result's
    ``epoch`` and ``val_acc`` go to the rule, which answers STOP or CONTINUE; a trial that ends
    after its whole budget completes in the rule."""

    def __init__(self, rule: Any) -> None:
        super().__init__()
        self.rule = rule

    def on_trial_result(self, tune_controller, trial, result) -> str:
        if "epoch" not in result or "val_acc" not in result:
            return TrialScheduler.CONTINUE
        stop = self.rule.on_result(trial.trial_id, int(result["epoch"]),
                                   float(result["val_acc"]))
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        if result and int(result.get("epoch", 0)) >= self.rule.max_t:
            self.rule.on_complete(trial.trial_id)

    def debug_string(self) -> str:
        return f"{self.rule.name}: {len(self.rule.curves)} trials, {len(self.rule.finished)} done"


class PerStageASHA(SparingFIFO):
    """One early-stopping scheduler (ASHA, or a :class:`RuleScheduler`) per search stage (by
    the trial config's ``stage``); trials of other stages (the final runs) are never stopped."""

    def __init__(self, make: Callable[[], TrialScheduler]) -> None:
        super().__init__()
        self._make = make
        self._by_stage: dict[str, TrialScheduler] = {}

    def _asha(self, trial) -> TrialScheduler | None:
        stage = str(trial.config.get("stage", ""))
        if not stage.startswith("search-"):
            return None
        if stage not in self._by_stage:
            self._by_stage[stage] = self._make()
        return self._by_stage[stage]

    @property
    def supports_buffered_results(self) -> bool:
        return False

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        if (asha := self._asha(trial)) is not None:
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        if (asha := self._asha(trial)) is not None:
            return asha.on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        if (asha := self._asha(trial)) is not None:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        if (asha := self._asha(trial)) is not None:
            asha.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if (asha := self._asha(trial)) is not None:
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{s}: {a.debug_string()}" for s, a in self._by_stage.items())
