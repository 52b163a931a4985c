"""One stage of a study as a ``tune.Tuner``: resources per trial, Optuna or a grid, the recorder
callback, checkpoints and retries; and the per-search early-stopping scheduler a spec may
turn on."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from kdtune.cluster import ResourcesByMethod
from kdtune.resources import ClusterView, ResourcePlan
from kdtune.session import check_stop
from kdtune.spec import StudySpec
from kdtune.storage import Location, is_uri, tune_storage


def fit_stage(trainable: Callable[..., None], spec: StudySpec, tune_dir: Location, stage: str,
              param_space: dict[str, Any], num_samples: int, callback: Any,
              searcher: Any = None, scheduler: Any = None, plan: ResourcePlan | None = None,
              **parameters: Any) -> None:
    """One stage as a Tuner. ``parameters`` (object refs of the datasets and teachers) reach
    the trainable through ``tune.with_parameters``, never through its closure. ``tune_dir``:
    Tune's experiment folder (trial checkpoints), a path or a URI every node reaches."""
    from ray import tune

    check_stop()
    if plan is None:
        resources: Any = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    elif len({tuple(sorted(r.bundle().items())) for r in plan.roles.values()}) == 1:
        resources = next(iter(plan.roles.values())).bundle()
    else:  # roles differ: each trial's bundle follows its method
        resources = ResourcesByMethod(plan)
    # Tune lets a custom searcher have one trial waiting for a worker at a time. With actor
    # reuse, a waiting trial takes any worker that comes free and the worker started for it,
    # still starting (a cold start outlasts a small trial), is dropped: every trial then ran on
    # one worker, one after another. With twice as many waiting as the cluster runs at once,
    # a free worker mostly goes to a trial that has no worker starting, and the new workers
    # live; SparingFIFO then gives a free worker a waiting trial whose own worker is not mid-start.
    # (The per-search concurrency limits still bound what Optuna hands out early.)
    own_pending = "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    if own_pending and plan is not None:
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(
            2 * plan.slots(ClusterView.from_ray(), spec.resources.max_concurrent_trials))
    from kdtune.multisearch import SparingFIFO

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, spec=spec, **parameters), resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler or SparingFIFO(),
                                    num_samples=num_samples, reuse_actors=True,
                                    max_concurrent_trials=spec.resources.max_concurrent_trials),
        run_config=tune.RunConfig(
            name=stage, callbacks=[callback], verbose=0,
            **(tune_storage(tune_dir) if is_uri(tune_dir) else {"storage_path": str(tune_dir)}),
            # Tune keeps every checkpoint it is told of; each trial deletes its own previous
            # one (trainables.drop_previous). With num_to_keep set, Tune instead re-writes the
            # whole experiment state after every checkpoint so that a Tuner.restore never
            # points at a deleted one: 7-12 ms of driver CPU per epoch, most of Ray's share of
            # a study of short trials. kdtune resumes from trials.parquet and the Optuna
            # journal, never from Tune's experiment state, so that snapshot bought nothing.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            # a trial whose worker dies or raises is retried from its last checkpoint
            failure_config=tune.FailureConfig(max_failures=spec.scheduler.max_retries)),
    )
    _skip_callback_census()
    try:
        tuner.fit()
    finally:
        if own_pending:
            os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)
    check_stop()


def _skip_callback_census() -> None:
    """Tune's usage telemetry counts a run's callbacks by class, and to know the classes it
    imports every logger integration it ships (MLflow, W&B, Comet, Aim): 1.4 s of the driver's
    CPU at a process's first stage wherever mlflow and wandb are installed (measured
    2026-12-03, Ray 2.60), for a count that would read "CustomCallback" (kdtune's callbacks
    are its own). The count is skipped; Ray's other usage tags are left alone."""
    from ray.air._internal import usage

    if callable(getattr(usage, "tag_callbacks", None)):
        usage.tag_callbacks = lambda callbacks: False


def stage_name(kind: str, label: str, method: str) -> str:
    """A Tune experiment / Optuna study name: a dataset label made path- and URI-safe."""
    safe = label.replace("[", "_").replace("]", "").replace("=", "")
    return f"{kind}-{re.sub(r'[^A-Za-z0-9_.+-]+', '_', safe)}-{method}"


def stopping_scheduler(spec: StudySpec) -> Any:
    """A fresh early-stopping scheduler for one search (``scheduler.kind``), or None."""
    kind, max_t = spec.scheduler.rule, spec.training.student_epochs
    if kind == "none":
        return None
    if kind == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # rungs count epochs, as the trial reports them, also after a restart from a checkpoint
        return ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=max_t,
                             grace_period=min(spec.scheduler.grace_period, max_t),
                             reduction_factor=spec.scheduler.reduction_factor)
    from kdtune.multisearch import RuleScheduler
    from kdtune.stopping import make_rule

    return RuleScheduler(make_rule(kind, max_t))
