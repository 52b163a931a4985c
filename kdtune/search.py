"""The Optuna search of one (dataset, method): a define-by-run space behind Ray Tune's OptunaSearch.

Define-by-run lets the space depend on the method (each method's ``searched`` dimensions in
:mod:`kdtune.methods`; how each dimension is sampled in :mod:`kdtune.hparams`): ``alpha`` and
``tau`` exist only for methods that distil, ``beta`` and ``hint_layer`` only for those that use
them. The Optuna study lives in a journal
file in the run directory, so a resumed run continues the same TPE study, and parameter
importance can be computed from it later.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from kdtune import methods
from kdtune.hparams import is_searched, sample
from kdtune.spec import StudySpec


def define_space(trial: optuna.Trial, method: str, space: dict[str, Any],
                 sampled: str = "tpe") -> dict[str, Any]:
    """Sample one configuration; returns the fixed values of the dimensions not searched, and
    the config's ``config_source``: an enqueued start point's (``warm:RUN/DATASET``,
    ``paper``, ``points[i]``), else ``sampled``.

    The student's dimensions first (lr, augmentation, and the augmented share only where some
    policy augments), then the method's own (:meth:`kdtune.methods.base.Method.sample`): the
    order of the suggestions is part of what makes a seeded search repeat exactly.
    Module level (not a closure) so that Ray can pickle the searcher with it.
    """
    if is_searched("lr", space):
        sample(trial, "lr", space)
    policy = sample(trial, "augmentation", space)
    if is_searched("aug_share", space) and policy != "none":
        sample(trial, "aug_share", space)
    fixed = methods.get(method).sample(trial, space)
    return fixed | {"config_source": trial.user_attrs.get("config_source", sampled)}


def space_of(spec: StudySpec) -> dict[str, Any]:
    """The plain-data description of the search space that ``define_space`` reads."""
    s, d = spec.search, spec.distillation
    return {"lr": s.lr, "alpha": s.alpha, "tau": s.tau, "beta": s.beta,
            "hint_layers": spec.hint_choices(),
            "augmentation": s.augmentation, "aug_share": s.aug_share,
            "fixed": {"alpha": d.alpha, "tau": d.tau, "beta": d.beta,
                      "augmentation": spec.training.augmentation}}


def searched_dimensions(spec: StudySpec, method: str) -> list[str]:
    """Names of the hyperparameters Optuna varies for ``method``."""
    space = space_of(spec)
    common = [name for name in ("lr", "augmentation", "aug_share") if is_searched(name, space)]
    return common + methods.get(method).searched_in(space)


def search_trials(spec: StudySpec, method: str) -> int:
    """Search trials of ``method`` per dataset: ``search.trials``, or one where nothing is
    searched (every trial would be the same config on the same seed)."""
    return spec.search.trials if searched_dimensions(spec, method) else 1


def sourced_start_points(spec: StudySpec, method: str, warm: list[dict[str, Any]] = (),
                         ) -> list[tuple[str, dict[str, Any]]]:
    """The configurations evaluated first, each with where it came from (a trial row's
    ``config_source``): ``warm`` (warm-start configs, each ``{"source", "config"}``), then
    the paper's point, then ``search.points``, each cut to the dimensions this method searches
    (a point left empty is dropped)."""
    dims = searched_dimensions(spec, method)
    space = space_of(spec)
    points = [(f"warm:{w['source']}", {k: v for k, v in w["config"].items() if k in dims})
              for w in warm]
    points.append(("paper", methods.get(method).start_point(space,
                                                              spec.search.include_paper_point)))
    points += [(f"points[{i}]", {k: v for k, v in p.items() if k in dims})
               for i, p in enumerate(spec.search.points or [])]
    return [(source, point) for source, point in points if point]


def start_points(spec: StudySpec, method: str) -> list[dict[str, Any]] | None:
    """The configurations evaluated first without a warm start (None: none)."""
    return [point for _, point in sourced_start_points(spec, method)] or None


def sampled_source(spec: StudySpec, method: str) -> str:
    """The ``config_source`` of a search trial Optuna sampled (``fixed``: nothing is searched)."""
    return "tpe" if searched_dimensions(spec, method) else "fixed"


def optuna_storage(spec: StudySpec, journal: Path) -> Any:
    """Where the searches live: the run directory's journal, or ``search.storage`` (an RDB)."""
    if spec.search.storage:
        from optuna.storages import RDBStorage

        return RDBStorage(spec.search.storage)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def optuna_study_name(spec: StudySpec, run_id: str, stage: str) -> str:
    """A search's Optuna name: its stage in the run's own journal; ``RUN_ID/STAGE`` in a shared
    RDB, which holds many runs."""
    return f"{run_id}/{stage}" if spec.search.storage else stage


def copy_searches_to_journal(spec: StudySpec, journal: Path, run_id: str,
                             stages: list[str]) -> int:
    """With ``search.storage``: copy this run's searches from the RDB into the run directory's
    journal under their stage names (replacing an earlier copy), so the run directory alone
    holds them; returns how many were copied."""
    if not spec.search.storage:
        return 0
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    source = optuna_storage(spec, journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.unlink(missing_ok=True)
    target = JournalStorage(JournalFileBackend(str(journal)))
    copied = 0
    for stage in stages:
        name = optuna_study_name(spec, run_id, stage)
        try:
            optuna.copy_study(from_study_name=name, from_storage=source, to_storage=target,
                              to_study_name=stage)
            copied += 1
        except KeyError:  # a search that never ran
            continue
    return copied


def make_searcher(spec: StudySpec, method: str, journal: Path, study_name: str,
                  seed: int, run_id: str = "", warm: list[dict[str, Any]] = (),
                  ) -> ConcurrencyLimiter:
    """OptunaSearch (TPE) for one (dataset, method), stored in ``journal`` (or the spec's
    ``search.storage``, as ``run_id/study_name``), its start points enqueued first (``warm``:
    warm-start configs, each ``{"source", "config"}``)."""
    storage = optuna_storage(spec, journal)
    study_name = optuna_study_name(spec, run_id, study_name)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                load_if_exists=True)
    # start points are asked for first, so a resumed search has already had (or still holds,
    # enqueued) the first len(trials) of them. Enqueued here rather than by OptunaSearch's
    # points_to_evaluate so that each carries its source, which define_space puts in the
    # trial's config (and so its row): a resumed run's enqueued points keep theirs.
    for source, point in sourced_start_points(spec, method, warm)[len(study.trials):]:
        study.enqueue_trial(point, user_attrs={"config_source": source})
    searcher = OptunaSearch(
        space=functools.partial(define_space, method=method, space=space_of(spec),
                                sampled=sampled_source(spec, method)),
        metric="val_acc", mode="max", sampler=optuna.samplers.TPESampler(seed=seed),
        storage=storage, study_name=study_name)
    # TPE drowns in random start-up trials when many run at once: keep it fed in small steps
    return ConcurrencyLimiter(searcher, max_concurrent=spec.search.max_concurrent)


def _trials(storage: Any, study_name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study_name, storage=storage).trials
    except KeyError:
        return []


def journal_damage(journal: Path) -> str | None:
    """Why the run's Optuna journal cannot be read (None: it can, or it is not there). A
    journal cut short mid-line reads as the complete records before the cut (Optuna drops
    the partial line): not damage."""
    if not journal.exists():
        return None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:  # as a resumed search reads it: every study and its trials
        storage = JournalStorage(JournalFileBackend(str(journal)))
        for summary in optuna.get_all_study_summaries(storage):
            optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(
                deepcopy=False)
    except Exception as error:  # noqa: BLE001 - a garbled journal raises decode/JSON errors
        return type(error).__name__
    return None


def load_optuna_study(journal: Path, study_name: str) -> optuna.Study | None:
    """The stored Optuna study of one search, or None if it never ran."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not journal.exists():
        return None
    try:
        return optuna.load_study(study_name=study_name,
                                 storage=JournalStorage(JournalFileBackend(str(journal))))
    except KeyError:
        return None
