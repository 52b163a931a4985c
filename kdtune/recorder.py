"""The driver-side Ray Tune callback: writes each finished trial to Parquet the moment it ends
and prints one line for it.

A ``tune.Callback`` at module level (not a class inside a function) so that it reads in one
place and Tune can hold it like any callback. ``stage`` and ``role`` are defaults: a trial whose
job names its own (several searches and the final runs share one Tuner) keeps them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from kdtune import console, methods
from kdtune.hparams import HYPERPARAMS
from kdtune.job import TrialJob, flat_config
from kdtune.progress import Progress
from kdtune.session import check_stop
from kdtune.spec import StudySpec
from kdtune.trial import budget_for

# what a trial's last report adds to its row (per-class and per-exit accuracies, omit-one-class)
LAST_REPORT_COLUMNS = ("omitted_class", "omitted_class_acc", "class_acc_json", "exit_acc_json",
                       "device")


class Recorder(Callback):
    """Writes each finished trial to ``store`` at once and prints progress; ``expected``
    counts the trials of each stage, for the progress lines."""

    def __init__(self, store: Any, spec: StudySpec, stage: str, role: str,
                 expected: int | dict[str, int | None], log: Callable[[str], None],
                 epoch_columns: tuple[str, ...], progress: Progress | None = None,
                 trackers: Any = None) -> None:
        self.store, self.spec, self.stage, self.role, self.log = store, spec, stage, role, log
        self.progress = progress
        self.trackers = trackers  # kdtune.tracking.Trackers: MLflow, W&B, TensorBoard
        # a teacher prints about five lines, not one per epoch
        self.teacher_every = max(1, math.ceil(spec.training.teacher_epochs / 5))
        self.totals = expected if isinstance(expected, dict) else {stage: expected}
        self.epoch_columns = epoch_columns
        self.labels = [ds.label for ds in spec.datasets]
        self.done: dict[str, int] = {}
        self.best: dict[str, float] = {}
        shown = ["alpha", "tau", "hint_layer"] + (["lr"] if spec.search.lr else [])
        self.hp_shown = shown + [k for k in ("augmentation", "aug_share")
                                 if getattr(spec.search, k)]

    def _job(self, trial: Any) -> TrialJob:
        config = flat_config(trial.config)
        return TrialJob.from_config({"stage": self.stage, "role": self.role} | config)

    def _base(self, trial: Any, job: TrialJob) -> dict[str, Any]:
        return {"study": self.spec.study, "run_id": self.store.run_dir.name, "stage": job.stage,
                "trial_id": f"{job.stage}:{trial.trial_id}",
                "dataset": self.labels[job.dataset_index], "method": job.method,
                "role": job.role, "seed": job.seed}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # a report carries the epochs since the one before (scheduler.report_every_s)
        epochs = json.loads(result["epoch_batch"]) if result.get("epoch_batch") \
            else [result] if "epoch" in result else []
        if not epochs:
            return
        job = self._job(trial)
        if result.get("checkpoint_damaged"):  # kdtune.trainables._restore could not use it
            self.log(f"{self._base(trial, job)['trial_id']}: its checkpoint was damaged "
                     f"({result['checkpoint_damaged']}); restarted from epoch 0")
        if result.get("resumed_from_epoch") is not None:  # a retried or resumed trial
            self.log(f"{self._base(trial, job)['trial_id']}: restarted from its checkpoint of "
                     f"epoch {result['resumed_from_epoch']}")
        for epoch in epochs:
            self._epoch(trial, job, epoch)

    def _epoch(self, trial: Any, job: TrialJob, epoch: dict[str, Any]) -> None:
        row = self._base(trial, job) | {k: epoch.get(k) for k in self.epoch_columns}
        self.store.add_epoch(row)
        if self.trackers is not None:
            self.trackers.epoch(row)
        if self.progress is not None:
            self.progress.trial_started(row["trial_id"], row["dataset"], job.method, job.role,
                                        budget_for(self.spec, job).epochs)
            self.progress.epoch(row["dataset"], job.method, job.role)
        epochs = self.spec.training.teacher_epochs
        if row["role"] == "teacher" and (row["epoch"] % self.teacher_every == 0
                                         or row["epoch"] == epochs):
            self.log(console.teacher_epoch_line(row, epochs))

    def _finish(self, trial: Any, status: str | None, failure: str | None) -> None:
        job, last = self._job(trial), trial.last_result or {}
        # epochs the driver never saw (a worker died right after reporting one): from the
        # history the trial's last report carries
        for epoch in json.loads(last.get("epoch_history") or "[]"):
            row = self._base(trial, job) | {k: epoch.get(k) for k in self.epoch_columns}
            self.store.add_epoch(row, replace=False)
        budget = budget_for(self.spec, job)
        epochs_run = int(last.get("epoch") or 0)
        if status is None:
            if last.get("diverged"):
                status, failure = "failed", last.get("failure")
            else:
                status = "finished" if epochs_run >= budget.epochs else "stopped"
        trained, teacher = methods.trial_models(self.spec, job.method)
        config = flat_config(trial.config)
        # the hyperparameters it ran with: searched or fixed for the method; the student
        # budget's lr, augmentation and share (the spec's where the search leaves them)
        ran = job.hp.as_dict() | {"lr": budget.lr, "augmentation": budget.augmentation,
                                  "aug_share": budget.aug_share}
        row = self._base(trial, job) | {k: ran.get(k) for k in HYPERPARAMS} | {
            "config_json": json.dumps({k: v for k, v in sorted(config.items())
                                       if k != "teacher_path"}, default=str),
            "val_acc": last.get("val_acc") if status != "failed" else None,
            "test_acc": last.get("test_acc"), "epochs_run": epochs_run,
            "epochs_budget": budget.epochs, "status": status, "failure": failure,
            "wall_s": last.get("wall_s"), "teacher_id": job.teacher_id or None,
            "node_id": last.get("node_id"), "restarts": int(trial.num_failures),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "arch": trained.label, "teacher_arch": teacher.label if teacher else None,
            "split_seed": job.split_seed,
            "config_source": job.config_source or (f"search:{job.selected_from}"
                                                   if job.selected_from else None),
            **{k: last.get(k) for k in LAST_REPORT_COLUMNS},
        }
        self.store.finish_trial(row)
        if self.trackers is not None:
            self.trackers.end(row)
        if self.progress is not None:
            left = budget.epochs - epochs_run if status == "stopped" else 0
            self.progress.trial_done(row["dataset"], job.method, job.role, row["val_acc"],
                                     epochs_left=left)
        stage = row["stage"]
        self.done[stage] = self.done.get(stage, 0) + 1
        if row["val_acc"] is not None and status == "finished":
            self.best[stage] = max(self.best.get(stage, 0.0), row["val_acc"])
        self.log(console.trial_line(row, self.done[stage], self.totals.get(stage, "?"),
                                    self.best.get(stage), self.hp_shown))

    def on_step_end(self, iteration, trials, **info):
        if self.progress is not None:
            self.progress.running(sum(t.status == "RUNNING" for t in trials))
        check_stop()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, None, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        failure = "trial raised an error"
        if trial.error_file and Path(trial.error_file).exists():
            lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
            failure = lines[-1][:500] if lines else failure
        self._finish(trial, "failed", failure)
