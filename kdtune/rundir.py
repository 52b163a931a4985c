"""The run directory: its files' names and schemas (defined once), one atomic writer, and the
store that keeps the trial and epoch rows.

| file | what |
|---|---|
| ``trials.parquet`` | one row per trial (:data:`TRIAL_SCHEMA`) |
| ``epochs.parquet`` | one row per trial and epoch (:data:`EPOCH_SCHEMA`) |
| ``gains.parquet`` | per dataset and method, the gain over its baseline (:data:`GAIN_SCHEMA`) |
| ``datasets.parquet`` | per dataset, its shape, knobs and measured complexity |
| ``spec.yaml``, ``run.json`` | the spec as given; run status and machine |
| ``optuna/journal.log`` | the Optuna studies, one per search |
| ``report.html`` | the report |

Every file is written through :func:`kdtune.storage.write_atomic`: a temporary file in the same folder, then a
rename, so a crash or Ctrl-C leaves the last complete version, never a truncated one.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kdtune import methods
from kdtune.hparams import HYPERPARAMS
from kdtune.storage import Location, exists, join, write_atomic

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
GAINS_FILE = "gains.parquet"
TRENDS_FILE = "trends.parquet"
DATASETS_FILE = "datasets.parquet"
SPEC_FILE = "spec.yaml"
RUN_FILE = "run.json"
JOURNAL_FILE = Path("optuna") / "journal.log"
REPORT_FILE = "report.html"

_HP_TYPES = {"hint_layer": pa.string(), "augmentation": pa.string()}
HP_FIELDS = [(name, _HP_TYPES.get(name, pa.float64())) for name in HYPERPARAMS]

TRIAL_SCHEMA = pa.schema([
    ("study", pa.string()), ("run_id", pa.string()), ("stage", pa.string()),
    ("trial_id", pa.string()), ("dataset", pa.string()), ("method", pa.string()),
    ("role", pa.string()), ("seed", pa.int64()),
    *HP_FIELDS,  # the hyperparameters the trial ran with (kdtune.hparams)
    ("config_json", pa.string()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
    ("epochs_run", pa.int64()), ("epochs_budget", pa.int64()), ("status", pa.string()),
    ("failure", pa.string()), ("wall_s", pa.float64()), ("teacher_id", pa.string()),
    ("node_id", pa.string()), ("finished_at", pa.string()),
    # times Ray Tune restarted the trial from its last checkpoint (a worker or node died)
    ("restarts", pa.int64()),
    # the model trained and the model teaching it (they swap for `reversed`), the
    # omit-one-class experiment, per-class and per-exit (MSKD) test accuracies as JSON objects
    ("arch", pa.string()), ("teacher_arch", pa.string()), ("omitted_class", pa.int64()),
    ("omitted_class_acc", pa.float64()), ("class_acc_json", pa.string()),
    ("exit_acc_json", pa.string()),
    # final.resplit: the split seed the trial's data was drawn with (null: the dataset's own)
    ("split_seed", pa.int64()),
    # the device it trained on: cpu, or cuda:0 (its name)
    ("device", pa.string()),
])

# one loss column per loss name any method returns (kdtune.methods)
LOSS_COLUMNS = tuple(f"loss_{name}" for name in methods.loss_names())

EPOCH_SCHEMA = pa.schema([
    ("study", pa.string()), ("run_id", pa.string()), ("trial_id", pa.string()),
    ("dataset", pa.string()), ("method", pa.string()), ("role", pa.string()),
    ("seed", pa.int64()), ("epoch", pa.int64()), ("train_loss", pa.float64()),
    *[(c, pa.float64()) for c in LOSS_COLUMNS],
    ("val_acc", pa.float64()), ("epoch_s", pa.float64()), ("wall_s", pa.float64()),
    # when the epoch's report left the trial (Unix seconds): results in the order they came
    ("reported_at", pa.float64()),
])

GAIN_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("method", pa.string()),
    # every number of a comparison is over the seeds both it and its baseline ran (n_seeds)
    ("n_seeds", pa.int64()), ("n_runs", pa.int64()),
    ("test_acc_mean", pa.float64()), ("test_acc_std", pa.float64()),
    ("scratch_test_acc_mean", pa.float64()), ("gain_pts", pa.float64()),
    # the paired Student-t 95 % interval (what a verdict rests on), its half-width and the
    # gain's standard error; a seeded percentile bootstrap beside it (never decides)
    ("gain_ci_low", pa.float64()), ("gain_ci_high", pa.float64()),
    ("gain_halfwidth", pa.float64()), ("gain_se", pa.float64()),
    ("gain_boot_low", pa.float64()), ("gain_boot_high", pa.float64()),
    # the paired t-test, Holm-adjusted over every comparison of the study; P(method beats its
    # baseline on a seed) with a Wilson interval; TOST against the equivalence margin
    ("p_value", pa.float64()), ("p_holm", pa.float64()),
    ("prob_improvement", pa.float64()), ("prob_improvement_low", pa.float64()),
    ("prob_improvement_high", pa.float64()), ("tost_p", pa.float64()),
    ("equivalence_margin", pa.float64()),
    # pays / hurts / equivalent / inconclusive (kdtune.stats.verdict), and for inconclusive
    # ones the seeds the target half-width would need at the observed spread
    ("verdict", pa.string()), ("verdict_reason", pa.string()), ("seeds_needed", pa.int64()),
    ("target_halfwidth", pa.float64()), ("max_seeds", pa.int64()),
    ("reached_target", pa.bool_()), ("final_wall_s", pa.float64()),
    # baseline adequacy: was the baseline still improving over the last fifth of its budget?
    ("baseline_still_improving", pa.bool_()), ("baseline_rise_pts", pa.float64()),
    ("adequacy_reason", pa.string()),
    ("val_acc_mean", pa.float64()), ("val_acc_std", pa.float64()),
    *HP_FIELDS,  # the selected configuration
    # the method the gain is measured against (scratch; reversed_scratch for reversed), and
    # for omit-one-class studies the omitted class and the mean test accuracy on it
    ("baseline", pa.string()), ("omitted_class", pa.int64()),
    ("omitted_class_acc_mean", pa.float64()),
])

# per method, the gain against an axis (complexity_score, or a swept knob), fitted across the
# study's datasets (kdtune.results.compute_trends)
TREND_SCHEMA = pa.schema([
    ("method", pa.string()), ("axis", pa.string()), ("n_points", pa.int64()),
    ("slope", pa.float64()), ("slope_low", pa.float64()), ("slope_high", pa.float64()),
    ("intercept", pa.float64()), ("dof", pa.int64()), ("support", pa.string()),
    # the line's 95 % band at x: intercept + slope x +- quantile sqrt(mean_se^2
    # + ((x - x_mean) (slope_high - slope) / quantile)^2)
    ("x_mean", pa.float64()), ("mean_se", pa.float64()), ("quantile", pa.float64()),
    ("datasets_json", pa.string()),
])

DATASET_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("name", pa.string()), ("channels", pa.int64()),
    ("image_size", pa.int64()), ("num_classes", pa.int64()), ("n_train", pa.int64()),
    ("n_val", pa.int64()), ("n_test", pa.int64()),
    # the knob this variant sets ('+'-joined with no value if several; null for a plain dataset)
    ("knob", pa.string()), ("knob_value", pa.float64()), ("knobs_json", pa.string()),
    # measured complexity (kdtune/complexity.py): the score in [0, 1] and what it is made of
    ("complexity_score", pa.float64()), ("samples_per_class", pa.float64()),
    ("pixel_entropy", pa.float64()), ("intrinsic_dim", pa.int64()), ("knn_error", pa.float64()),
    ("linear_error", pa.float64()), ("within_class_var", pa.float64()),
    ("complexity_json", pa.string()),
])


def write_text_atomic(text: str, path: str | Path) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(data: dict[str, Any], path: str | Path) -> None:
    write_text_atomic(json.dumps(data, indent=2, default=str), path)


def write_table_atomic(rows: list[dict[str, Any]], schema: pa.Schema, path: str | Path) -> None:
    """Write ``rows`` as Parquet (the schema's columns, in its order) to ``path``."""
    table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema} for row in rows],
                                 schema=schema)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return pq.read_table(path).to_pylist() if path.exists() else []


class ResultsStore:
    """The run's trial and epoch rows in memory, flushed to Parquet after every finished
    trial."""

    def __init__(self, run_dir: Path, after_flush: Callable[[], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        # the study's copy to object storage, once the files are complete
        self.after_flush = after_flush
        self.trials = read_rows(self.run_dir / TRIALS_FILE)
        self.epochs = read_rows(self.run_dir / EPOCHS_FILE)
        self._pending_epochs: dict[str, list[dict[str, Any]]] = {}

    def add_epoch(self, row: dict[str, Any]) -> None:
        # held back until the trial ends, so the file never shows epochs of a trial that is
        # not in trials.parquet (a resumed trial starts over cleanly)
        # a retried trial reports its epochs again from its last checkpoint: keep the latest
        rows = self._pending_epochs.setdefault(row["trial_id"], [])
        rows[:] = [r for r in rows if r["epoch"] != row["epoch"]] + [row]

    def finish_trial(self, row: dict[str, Any]) -> None:
        self.trials = [r for r in self.trials if r["trial_id"] != row["trial_id"]] + [row]
        epochs = self._pending_epochs.pop(row["trial_id"], [])
        self.epochs = [r for r in self.epochs if r["trial_id"] != row["trial_id"]] + epochs
        self.flush()

    def flush(self) -> None:
        write_table_atomic(self.epochs, EPOCH_SCHEMA, self.run_dir / EPOCHS_FILE)
        write_table_atomic(self.trials, TRIAL_SCHEMA, self.run_dir / TRIALS_FILE)
        if self.after_flush is not None:
            self.after_flush()

    def finished(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.trials if r["status"] == "finished"
                and all(r.get(k) == v for k, v in match.items())]


def new_run_dir(storage: str, study: str) -> Location:
    """A new run directory under the storage: a path, or a URI (its files are staged locally)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{study}-{stamp}"
    run_dir, n = join(storage, base), 1
    while exists(run_dir):
        n += 1
        run_dir = join(storage, f"{base}-{n}")
    return run_dir
