"""All of a study's searches, and the final runs that follow each, in one Ray Tune run.

A ``tune.Tuner`` per search and one for the final runs meant a stage barrier and a cold start
of every trial worker (a new process importing torch) between stages: on two CPU cores that was
the largest cost of a small study. Here one Tuner hands out every search's Optuna trials and,
as soon as a search has finished, the final runs of its best config:

- :class:`StudySearcher` routes ``suggest`` to the searches in order, each behind its own
  concurrency limit (so TPE is fed in small steps however large the cluster), tags each config
  with its stage, and releases a search's final runs once every trial of that search is done;
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
    behind a ConcurrencyLimiter) merged with ``constants``; then the final runs ``finals()``
    returns, computed once the search is done (they depend on its best trial)."""

    stage: str
    searcher: Searcher
    trials: int
    constants: dict[str, Any]
    finals: Callable[[], list[dict[str, Any]]]
    suggested: int = 0
    running: set[str] = field(default_factory=set)
    final_jobs: list[dict[str, Any]] | None = None  # None until released

    @property
    def searching(self) -> bool:
        return self.suggested < self.trials or bool(self.running)


class StudySearcher(Searcher):
    """Hands out the trials of several searches and their final runs, in order."""

    def __init__(self, parts: list[SearchPart], metric: str = "val_acc", mode: str = "max",
                 on_release: Callable[[SearchPart], None] | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.parts = parts
        self.on_release = on_release
        self._owner: dict[str, tuple[SearchPart, bool]] = {}  # trial -> (part, is a search)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every search was built complete, with its own space

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for part in self.parts:  # searches first, in order: they gate the final runs
            if part.suggested < part.trials:
                config = part.searcher.suggest(trial_id)
                if config == Searcher.FINISHED:
                    part.trials = part.suggested  # it has nothing more to give
                if config is None or config == Searcher.FINISHED:
                    continue  # at its concurrency limit: try the next search
                part.suggested += 1
                part.running.add(trial_id)
                self._owner[trial_id] = (part, True)
                return part.constants | config | {"stage": part.stage}
        for part in self.parts:
            if not part.searching and part.final_jobs is None:
                part.final_jobs = list(part.finals())
                if self.on_release:
                    self.on_release(part)
            if part.final_jobs:
                self._owner[trial_id] = (part, False)
                return part.final_jobs.pop(0)
        if all(not p.searching and p.final_jobs == [] for p in self.parts):
            return Searcher.FINISHED
        return None  # waiting for a search to finish

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Not passed on: OptunaSearch would store each epoch's val_acc as an Optuna
        # intermediate value, a locked append to the journal for every reported epoch (15% of
        # the driver's busy time in a profile of the quickstart), for pruning kdtune leaves to
        # ASHA. TPE learns from the final value (on_trial_complete); epochs.parquet has the curves.
        pass

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        part, is_search = self._owner.pop(trial_id, (None, False))
        if is_search:
            part.searcher.on_trial_complete(trial_id, result=result, error=error)
            part.running.discard(trial_id)

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


class PerStageASHA(SparingFIFO):
    """One ASHA scheduler per search stage (by the trial config's ``stage``); trials of other
    stages (the final runs) are never stopped."""

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
