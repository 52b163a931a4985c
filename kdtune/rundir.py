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
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kdtune import methods
from kdtune.hparams import HYPERPARAMS
from kdtune.storage import Location, StorageError, exists, is_uri, join, write_atomic

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
    # where its config came from: a search trial's tpe (Optuna sampled it), paper, points[i]
    # or warm:RUN/DATASET (kdtune.warm_start); a final run's search:TRIAL (the one selected)
    ("config_source", pa.string()),
])

# one loss column per loss name any method returns (kdtune.methods)
LOSS_COLUMNS = tuple(f"loss_{name}" for name in methods.loss_names())

EPOCH_SCHEMA = pa.schema([
    ("study", pa.string()), ("run_id", pa.string()), ("trial_id", pa.string()),
    ("dataset", pa.string()), ("method", pa.string()), ("role", pa.string()),
    ("seed", pa.int64()), ("epoch", pa.int64()), ("train_loss", pa.float64()),
    *[(c, pa.float64()) for c in LOSS_COLUMNS],
    ("val_acc", pa.float64()), ("epoch_s", pa.float64()), ("wall_s", pa.float64()),
    # when the epoch ended in the trial (Unix seconds): results in the order they came
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


class RunFileError(StorageError):
    """A damaged file of a run directory: ``str(error)`` is one line naming it and what to do."""


# what to do about a damaged file, by name (a part of a parts dataset: move that part away)
REPAIR = {
    "trials.parquet": "restore it from a copy, or move it away to run every trial again",
    "epochs.parquet": "restore it from a copy, or move it away (the report then shows no "
                      "learning curves)",
    "datasets.parquet": "restore it from a copy; kdtune run writes it when a run starts",
}


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _part_repair(part: Path) -> str:
    """What to do about a damaged part of ``trials.parquet`` or ``epochs.parquet``: what moving
    it away costs. A part holds the rows of one write (one trial), or, once compacted (at the end
    of a run, by ``kdtune report``), every row: then it is the only part in its folder."""
    table = re.sub(r"\.v\d+$", "", part.parent.name.lstrip("."))  # .trials.parquet.v2
    alone = len([p for p in part.parent.iterdir() if p.name.startswith("part-")]) == 1
    if table == EPOCHS_FILE:
        lost = "" if alone else " for the trials it held"
        return f"restore it from a copy, or move it away (the report then shows no learning " \
               f"curves{lost})"
    again = "every trial again (it is the only part)" if alone else \
        "the trials it held again (a search trial as a new Optuna trial)"
    return f"restore it from a copy, or move it away: kdtune resume then runs {again}"


def damaged(path: Path, error: BaseException) -> RunFileError:
    """The one-line error for a run file that cannot be read."""
    if path.name.startswith("part-"):
        what = _part_repair(path)
    else:
        what = REPAIR.get(path.name, "restore it from a copy")
    return RunFileError(f"{path}: damaged, cannot read it ({first_line(error)}); {what}")


def _bad_part(folder: Path) -> Path | None:
    """The first part file of a parts dataset whose Parquet footer cannot be read."""
    for part in sorted(folder.iterdir()):
        if part.name.startswith("part-"):
            try:
                pq.read_metadata(part)
            except (pa.ArrowException, OSError):
                return part
    return None


def read_rows(path: str | Path, key: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The rows of a Parquet file, or of a parts dataset (a folder of part files, or the link
    to one); with ``key``, a row that a later part repeats is kept once, its last version.
    A damaged file (truncated, empty, not Parquet): :class:`RunFileError` naming it."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as error:
        bad = _bad_part(path.resolve()) if path.is_dir() else None
        raise damaged(bad or path, error) from None
    if key is None or not path.is_dir():
        return rows
    latest = {tuple(r[k] for k in key): r for r in rows}
    return list(latest.values())


# every Parquet file of a run directory, by name: its schema, and the columns that identify a
# row (a parts dataset may hold a row twice until it is compacted: the last one counts)
SCHEMAS = {TRIALS_FILE: TRIAL_SCHEMA, EPOCHS_FILE: EPOCH_SCHEMA, GAINS_FILE: GAIN_SCHEMA,
           TRENDS_FILE: TREND_SCHEMA, DATASETS_FILE: DATASET_SCHEMA}
ROW_KEYS = {TRIALS_FILE: ("trial_id",), EPOCHS_FILE: ("trial_id", "epoch")}


class PartsTable:
    """A Parquet dataset that grows by one small part file per write, whatever its size.

    ``trials.parquet`` is a link to a hidden folder of parts (``.trials.parquet.v3/
    part-00000001.parquet``, ...): pandas (``read_parquet``), polars and DuckDB read the link as
    one dataset at any moment. A write adds one part (a temporary file, then a rename: a kill
    leaves the parts there were). :meth:`compact` rewrites all rows as one part in a new folder
    and swaps the link in one atomic rename, so no reader ever sees a row twice or misses one;
    a file lock keeps a compaction (``kdtune report``) and a study's writes from crossing.
    A run from before parts (a plain file) becomes the first part of its first folder.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema = Path(path), schema
        self._seq: int | None = None

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def _locked(self) -> Any:
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def hold() -> Any:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

        return hold()

    def folder(self) -> Path:
        """The folder the link points to, made (and an old plain file moved in) if need be."""
        if self.path.is_symlink():
            return self.path.resolve()
        version = self.path.with_name(f".{self.path.name}.v1")
        version.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():  # a run written before parts: its file is part one
            os.replace(self.path, version / "part-00000000.parquet")
        elif self.path.is_dir():  # parts copied back from object storage: a plain folder
            version.rmdir()
            os.replace(self.path, version)
        tmp = self.path.with_name(f".{self.path.name}.link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version.name)
        os.replace(tmp, self.path)
        return version

    def parts(self) -> list[Path]:
        if not self.path.exists():
            return []
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.resolve().iterdir() if p.name.startswith("part-"))

    def append(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write ``rows`` as one new part; returns its path (None: nothing to write)."""
        if not rows:
            return None
        with self._locked():
            folder = self.folder()
            if self._seq is None or not (folder / _part_name(self._seq)).exists():
                self._seq = _last_seq(folder)
            self._seq += 1
            target = folder / _part_name(self._seq)
            write_table_atomic(rows, self.schema, target)
            return target

    def compact(self, key: tuple[str, ...] | None = None) -> Path | None:
        """Rewrite every row as one part in a new folder, swap the link to it, delete the old
        folder; returns the new part (None: nothing to compact)."""
        with self._locked():
            if not self.path.exists():
                return None
            old = self.folder()
            if len([p for p in old.iterdir() if p.name.startswith("part-")]) <= 1:
                return next(iter(self.parts()), None)
            rows = read_rows(self.path, key)
            number = int(old.name.rsplit(".v", 1)[1]) + 1
            new = self.path.with_name(f".{self.path.name}.v{number}")
            shutil.rmtree(new, ignore_errors=True)
            new.mkdir()
            # a name no earlier part had: a copy at a URI that holds the old parts uploads it
            # as new, then deletes the old ones (RunMirror.reconcile)
            self._seq = _last_seq(old) + 1
            write_table_atomic(rows, self.schema, new / _part_name(self._seq))
            tmp = self.path.with_name(f".{self.path.name}.link")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(new.name)
            os.replace(tmp, self.path)  # the one atomic step: readers see old or new
            shutil.rmtree(old, ignore_errors=True)
            return new / _part_name(self._seq)


def _part_name(seq: int) -> str:
    return f"part-{seq:08d}.parquet"


def _last_seq(folder: Path) -> int:
    """The highest part number in ``folder`` (-1: none)."""
    numbers = [re.fullmatch(r"part-(\d+)\.parquet", p.name) for p in folder.iterdir()]
    return max((int(m.group(1)) for m in numbers if m), default=-1)  # any part-N.parquet


TRIAL_KEY = ROW_KEYS[TRIALS_FILE]
EPOCH_KEY = ROW_KEYS[EPOCHS_FILE]


class ResultsStore:
    """The run's trial and epoch rows: in memory for the study, and written as one new part of
    ``trials.parquet`` and of ``epochs.parquet`` per finished trial, so a trial costs the same
    at the ten-thousandth as at the first (``benchmarks/results_scale.py``)."""

    def __init__(self, run_dir: Path,
                 after_flush: Callable[[list[Path]], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        # the study's copy to object storage: the parts a flush wrote
        self.after_flush = after_flush
        self._trials = PartsTable(self.run_dir / TRIALS_FILE, TRIAL_SCHEMA)
        self._epochs = PartsTable(self.run_dir / EPOCHS_FILE, EPOCH_SCHEMA)
        self.trials = read_rows(self.run_dir / TRIALS_FILE, TRIAL_KEY)
        self.epochs = read_rows(self.run_dir / EPOCHS_FILE, EPOCH_KEY)
        self._index = {r["trial_id"]: i for i, r in enumerate(self.trials)}
        self.revision = 0  # counts finished trials recorded: what depends on the rows can cache
        self._pending_epochs: dict[str, list[dict[str, Any]]] = {}

    def add_epoch(self, row: dict[str, Any], replace: bool = True) -> None:
        """Hold an epoch row until its trial ends, so the files never show epochs of a trial
        that is not in trials.parquet (a resumed trial starts over cleanly). A retried trial
        reports its epochs again from its last checkpoint: the latest is kept; with
        ``replace`` False a row only fills an epoch that has none."""
        rows = self._pending_epochs.setdefault(row["trial_id"], [])
        if any(r["epoch"] == row["epoch"] for r in rows):
            if not replace:
                return
            rows[:] = [r for r in rows if r["epoch"] != row["epoch"]]
        rows.append(row)

    def finish_trial(self, row: dict[str, Any]) -> None:
        trial_id = row["trial_id"]
        self.revision += 1
        if trial_id in self._index:  # recorded again (rare): the new row replaces it
            self.trials[self._index[trial_id]] = row
            self.epochs = [r for r in self.epochs if r["trial_id"] != trial_id]
        else:
            self._index[trial_id] = len(self.trials)
            self.trials.append(row)
        epochs = sorted(self._pending_epochs.pop(trial_id, []), key=lambda r: r["epoch"])
        self.epochs.extend(epochs)
        # epochs first: a reader may see a trial's epochs a moment before its row, never a row
        # whose epochs are missing
        written = [self._epochs.append(epochs), self._trials.append([row])]
        if self.after_flush is not None:
            self.after_flush([p for p in written if p is not None])

    def compact(self) -> None:
        """One part per file (at the end of a run, and on ``kdtune report``)."""
        self._epochs.compact(EPOCH_KEY)
        self._trials.compact(TRIAL_KEY)

    def finished(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.trials if r["status"] == "finished"
                and all(r.get(k) == v for k, v in match.items())]


def read_meta(path: Path) -> tuple[dict[str, Any], str | None]:
    """``run.json`` as a dict, and why it could not be read (None: it could, or it is not
    there): run.json is rewritten at every status change, so a damaged one is recovered."""
    if not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return {}, first_line(error)
    return (data, None) if isinstance(data, dict) else ({}, "not a JSON object")


def compact_run(run_dir: Path) -> None:
    """Compact a run directory's parts datasets (a no-op for one written as plain files)."""
    PartsTable(Path(run_dir) / EPOCHS_FILE, EPOCH_SCHEMA).compact(EPOCH_KEY)
    PartsTable(Path(run_dir) / TRIALS_FILE, TRIAL_SCHEMA).compact(TRIAL_KEY)


def new_run_dir(storage: str, study: str) -> Location:
    """A new run directory under the storage: a path, made here (one ``mkdir`` that fails if
    the folder exists, so two studies started in the same second get two folders), or a URI
    (its files are staged locally)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{study}-{stamp}"
    run_dir, n = join(storage, base), 1
    while True:
        if is_uri(run_dir):
            if not exists(run_dir):
                return run_dir
        else:
            try:
                Path(run_dir).mkdir(parents=True)
                return run_dir
            except FileExistsError:
                pass
        n += 1
        run_dir = join(storage, f"{base}-{n}")
