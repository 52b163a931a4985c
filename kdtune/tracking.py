"""Experiment trackers (``tracking:`` in a spec): MLflow, Weights & Biases, TensorBoard.

Every trial becomes a tracked run, named by its trial id and tagged with study, run, stage,
dataset, method, role and seed, holding its hyperparameters and each epoch's metrics; when the
study ends, one summary run holds every comparison's gain, interval and verdict, with
``report.html`` attached (an MLflow artifact, a W&B file).

The trackers take their rows from kdtune's recorder, not from Ray Tune's logger callbacks
(``MLflowLoggerCallback``, ``WandbLoggerCallback``, ``TBXLoggerCallback``): those tag runs only
study-wide and log each trial's raw Tune config, where the recorder already holds the typed
trial (its dataset label, method, role, seed and the hyperparameters it ran with); and
Tune's W&B callback starts a process per trial. Each library is imported only when the spec
names it: the core install has none of them (extras ``kdtune[mlflow]``, ``kdtune[wandb]``,
``kdtune[tensorboard]``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from kdtune.hparams import HYPERPARAMS
from kdtune.spec import StudySpec

# what a trial's tags say (and W&B's tags list)
TAGS = ("study", "run_id", "stage", "dataset", "method", "role", "seed")
# per-epoch metrics every tracker logs, at step = epoch
EPOCH_METRICS = ("train_loss", "val_acc", "epoch_s")
GAIN_METRICS = ("gain_pts", "gain_ci_low", "gain_ci_high", "gain_halfwidth", "test_acc_mean",
                "scratch_test_acc_mean", "n_seeds", "p_holm", "prob_improvement")
EXTRAS = {"mlflow": ("mlflow", "kdtune[mlflow]"), "wandb": ("wandb", "kdtune[wandb]"),
          "tensorboard": ("tensorboardX", "kdtune[tensorboard]")}


class TrackingError(ValueError):
    """A tracker the spec names that cannot be used; ``str(error)`` is one line naming it."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    names = EPOCH_METRICS + tuple(k for k in row if k.startswith("loss_"))
    return {k: float(row[k]) for k in names if _finite(row.get(k))}


def _params(row: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a finished trial ran with, and its architectures."""
    keys = (*HYPERPARAMS, "arch", "teacher_arch", "epochs_budget", "teacher_id", "split_seed")
    return {k: row[k] for k in keys if row.get(k) is not None
            and not (isinstance(row[k], float) and math.isnan(row[k]))}


def metric_name(*parts: str) -> str:
    """A metric name every tracker takes (MLflow allows letters, digits, ``_-. /``):
    ``gain_pts/digits_n300_label_noise0.1_/rkd``."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", p) for p in parts)


def check(spec: StudySpec) -> None:
    """Before any trial: every tracker the spec names can be imported and reached."""
    cfg = spec.tracking
    for field, on in (("mlflow", cfg.mlflow), ("wandb", cfg.wandb),
                      ("tensorboard", cfg.tensorboard)):
        if not on:
            continue
        module, extra = EXTRAS[field]
        try:
            __import__(module)
        except ImportError:
            raise TrackingError(f"tracking.{field}: {module} is not installed "
                                f"(pip install '{extra}')") from None
    if cfg.mlflow and cfg.mlflow.tracking_uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        uri = cfg.mlflow.tracking_uri.rstrip("/")
        try:  # the server's health endpoint; MLflow's own client would retry for minutes
            with urllib.request.urlopen(f"{uri}/health", timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise TrackingError(f"tracking.mlflow.tracking_uri {uri}: cannot reach the MLflow "
                                f"server ({reason})") from None
    if cfg.wandb and cfg.wandb.mode == "online" and not os.environ.get("WANDB_API_KEY"):
        raise TrackingError("tracking.wandb.mode online: needs WANDB_API_KEY (or use mode: "
                            "offline and `wandb sync` later)")


class _Tracker:
    """One backend: a run per trial, opened at its first epoch and closed with its row."""

    def epoch(self, row: dict[str, Any]) -> None: ...

    def end(self, row: dict[str, Any]) -> None: ...

    def summary(self, run_id: str, gains: list[dict[str, Any]], report: Path | None) -> None: ...

    def close(self) -> None: ...


class MlflowTracker(_Tracker):
    def __init__(self, spec: StudySpec) -> None:
        from mlflow.tracking import MlflowClient

        cfg = spec.tracking.mlflow
        self.client = MlflowClient(cfg.tracking_uri)
        name = cfg.experiment or spec.study
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id

    def _run(self, row: dict[str, Any]) -> str:
        trial_id = row["trial_id"]
        if trial_id not in self.runs:
            tags = {f"kdtune.{k}": str(row.get(k)) for k in TAGS} | {"kdtune.trial_id": trial_id}
            run = self.client.create_run(self.experiment_id, run_name=trial_id, tags=tags)
            self.runs[trial_id] = run.info.run_id
        return self.runs[trial_id]

    def epoch(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id = self._run(row)
        stamp = int(1000 * (row.get("reported_at") or 0))
        self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, int(row["epoch"]))
                                               for k, v in _epoch_metrics(row).items()])

    def end(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self._run(row)
        final = {k: float(row[k]) for k in ("val_acc", "test_acc", "wall_s") if _finite(row.get(k))}
        self.client.log_batch(
            run_id, metrics=[Metric(f"final_{k}", v, 0, int(row.get("epochs_run") or 0))
                             for k, v in final.items()],
            params=[Param(k, str(v)) for k, v in _params(row).items()],
            tags=[RunTag("kdtune.status", str(row["status"]))])
        status = {"finished": "FINISHED", "stopped": "KILLED"}.get(row["status"], "FAILED")
        self.client.set_terminated(run_id, status)
        self.runs.pop(row["trial_id"], None)

    def summary(self, run_id: str, gains: list[dict[str, Any]], report: Path | None) -> None:
        from mlflow.entities import Metric, RunTag

        run = self.client.create_run(self.experiment_id, run_name=f"{run_id} summary",
                                     tags={"kdtune.kind": "summary", "kdtune.run_id": run_id})
        metrics, tags = [], []
        for g in gains:
            if not g.get("baseline"):
                continue
            for k in GAIN_METRICS:
                if _finite(g.get(k)):
                    metrics.append(Metric(metric_name(k, g["dataset"], g["method"]),
                                          float(g[k]), 0, 0))
            tags.append(RunTag(f"verdict.{metric_name(g['dataset'], g['method'])}",
                               str(g.get("verdict"))))
        self.client.log_batch(run.info.run_id, metrics=metrics, tags=tags)
        if report is not None and report.exists():
            self.client.log_artifact(run.info.run_id, str(report))
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def close(self) -> None:  # trials still open (an interrupted study)
        for run_id in list(self.runs.values()):
            self.client.set_terminated(run_id, "KILLED")
        self.runs = {}


class WandbTracker(_Tracker):
    def __init__(self, spec: StudySpec, run_dir: Path) -> None:
        import wandb

        cfg = spec.tracking.wandb
        self.wandb, self.cfg = wandb, cfg
        self.dir = Path(cfg.dir) if cfg.dir else run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.runs: dict[str, Any] = {}

    def _init(self, name: str, group: str, job_type: str, tags: list[str],
              config: dict[str, Any]) -> Any:
        return self.wandb.init(project=self.cfg.project, entity=self.cfg.entity,
                               mode=self.cfg.mode, dir=str(self.dir), name=name, group=group,
                               job_type=job_type, tags=tags, config=config,
                               reinit="create_new", settings=self.wandb.Settings(
                                   silent=True, console="off", x_disable_stats=True))

    def _run(self, row: dict[str, Any]) -> Any:
        trial_id = row["trial_id"]
        if trial_id not in self.runs:
            tags = [str(row.get(k)) for k in ("study", "dataset", "method", "role")]
            self.runs[trial_id] = self._init(
                trial_id, str(row.get("run_id")), str(row.get("role")), tags,
                {k: row.get(k) for k in TAGS} | {"trial_id": trial_id})
        return self.runs[trial_id]

    def epoch(self, row: dict[str, Any]) -> None:
        self._run(row).log(_epoch_metrics(row), step=int(row["epoch"]))

    def end(self, row: dict[str, Any]) -> None:
        run = self._run(row)
        run.config.update(_params(row), allow_val_change=True)
        run.summary.update({f"final_{k}": row[k] for k in ("val_acc", "test_acc", "wall_s")
                            if _finite(row.get(k))} | {"status": row["status"]})
        run.finish(exit_code=0 if row["status"] != "failed" else 1)
        self.runs.pop(row["trial_id"], None)

    def summary(self, run_id: str, gains: list[dict[str, Any]], report: Path | None) -> None:
        run = self._init(f"{run_id} summary", run_id, "summary", ["summary"], {"run_id": run_id})
        compared = [g for g in gains if g.get("baseline")]
        columns = ["dataset", "method", *GAIN_METRICS, "verdict"]
        run.log({"gains": self.wandb.Table(columns=columns,
                                           data=[[g.get(c) for c in columns] for g in compared])})
        run.summary.update({metric_name(k, g["dataset"], g["method"]): g[k]
                            for g in compared for k in GAIN_METRICS if _finite(g.get(k))})
        if report is not None and report.exists():
            run.save(str(report), base_path=str(report.parent), policy="now")
        run.finish()

    def close(self) -> None:
        for run in list(self.runs.values()):
            run.finish(exit_code=1)
        self.runs = {}


class TensorBoardTracker(_Tracker):
    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / "tensorboard"
        self.writers: dict[str, Any] = {}

    def _writer(self, row: dict[str, Any]) -> Any:
        trial_id = row["trial_id"]
        if trial_id not in self.writers:
            from tensorboardX import SummaryWriter

            folder = self.root / re.sub(r"[^A-Za-z0-9_.-]+", "_", trial_id)
            writer = SummaryWriter(logdir=str(folder))
            writer.add_text("tags", ", ".join(f"{k}={row.get(k)}" for k in TAGS))
            self.writers[trial_id] = writer
        return self.writers[trial_id]

    def epoch(self, row: dict[str, Any]) -> None:
        writer = self._writer(row)
        for k, v in _epoch_metrics(row).items():
            writer.add_scalar(k, v, int(row["epoch"]))

    def end(self, row: dict[str, Any]) -> None:
        writer = self._writer(row)
        final = {f"final_{k}": float(row[k]) for k in ("val_acc", "test_acc")
                 if _finite(row.get(k))}
        params = {k: v if isinstance(v, (int, float, str)) else str(v)
                  for k, v in _params(row).items()}
        if final:
            writer.add_hparams(params, final, name=".")
        writer.close()
        self.writers.pop(row["trial_id"], None)

    def close(self) -> None:
        for writer in list(self.writers.values()):
            writer.close()
        self.writers = {}


class Trackers:
    """Every tracker the spec names, fed by the recorder; does nothing when none is named."""

    def __init__(self, spec: StudySpec, run_dir: Path) -> None:
        cfg = spec.tracking
        self.all: list[_Tracker] = []
        if cfg.mlflow:
            self.all.append(MlflowTracker(spec))
        if cfg.wandb:
            self.all.append(WandbTracker(spec, run_dir))
        if cfg.tensorboard:
            self.all.append(TensorBoardTracker(run_dir))

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks (the recorder holds this) with the experiment state:
        # open clients and writers do not travel, and a copy tracks nothing
        return {"all": []}

    def epoch(self, row: dict[str, Any]) -> None:
        for tracker in self.all:
            tracker.epoch(row)

    def end(self, row: dict[str, Any]) -> None:
        for tracker in self.all:
            tracker.end(row)

    def summary(self, run_id: str, gains: list[dict[str, Any]], report: Path | None) -> None:
        for tracker in self.all:
            tracker.summary(run_id, gains, report)

    def close(self) -> None:
        for tracker in self.all:
            tracker.close()
