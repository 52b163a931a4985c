"""Results as Parquet: ``trials.parquet`` (one row per trial) and ``epochs.parquet`` (per epoch).

Files are rewritten whole, through a temporary file and a rename, each time a trial ends: a
crash or Ctrl-C leaves the last complete version, never a truncated one. Gains are computed
from the rows alone, so ``kdtune report`` needs nothing else.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
GAINS_FILE = "gains.parquet"

TRIAL_SCHEMA = pa.schema([
    ("study", pa.string()), ("run_id", pa.string()), ("stage", pa.string()),
    ("trial_id", pa.string()), ("dataset", pa.string()), ("method", pa.string()),
    ("role", pa.string()), ("seed", pa.int64()), ("alpha", pa.float64()), ("tau", pa.float64()),
    ("hint_layer", pa.string()), ("beta", pa.float64()), ("lr", pa.float64()),
    ("config_json", pa.string()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
    ("epochs_run", pa.int64()), ("epochs_budget", pa.int64()), ("status", pa.string()),
    ("failure", pa.string()), ("wall_s", pa.float64()), ("teacher_id", pa.string()),
    ("node_id", pa.string()), ("finished_at", pa.string()),
    # times Ray Tune restarted the trial from its last checkpoint (a worker or node died)
    ("restarts", pa.int64()),
    # issue 4: the model trained and the model teaching it (they swap for `reversed`), the
    # omit-one-class experiment, per-class and per-exit (MSKD) test accuracies as JSON objects
    ("arch", pa.string()), ("teacher_arch", pa.string()), ("omitted_class", pa.int64()),
    ("omitted_class_acc", pa.float64()), ("class_acc_json", pa.string()),
    ("exit_acc_json", pa.string()),
])

EPOCH_SCHEMA = pa.schema([
    ("study", pa.string()), ("run_id", pa.string()), ("trial_id", pa.string()),
    ("dataset", pa.string()), ("method", pa.string()), ("role", pa.string()),
    ("seed", pa.int64()), ("epoch", pa.int64()), ("train_loss", pa.float64()),
    ("loss_ce", pa.float64()), ("loss_kd", pa.float64()), ("loss_hint", pa.float64()),
    ("val_acc", pa.float64()), ("epoch_s", pa.float64()), ("wall_s", pa.float64()),
    ("loss_at", pa.float64()),
])

GAIN_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("method", pa.string()), ("n_seeds", pa.int64()),
    ("test_acc_mean", pa.float64()), ("test_acc_std", pa.float64()),
    ("scratch_test_acc_mean", pa.float64()), ("gain_pts", pa.float64()),
    ("gain_ci_low", pa.float64()), ("gain_ci_high", pa.float64()),
    ("val_acc_mean", pa.float64()), ("alpha", pa.float64()), ("tau", pa.float64()),
    ("hint_layer", pa.string()), ("beta", pa.float64()), ("lr", pa.float64()),
    # the method the gain is measured against (scratch; reversed_scratch for reversed), and
    # for omit-one-class studies the omitted class and the mean test accuracy on it
    ("baseline", pa.string()), ("omitted_class", pa.int64()),
    ("omitted_class_acc_mean", pa.float64()),
])


def write_table_atomic(rows: list[dict[str, Any]], schema: pa.Schema, path: Path) -> None:
    """Write ``rows`` as Parquet to ``path`` through a temporary file in the same folder."""
    table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema} for row in rows],
                                 schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist() if path.exists() else []


class ResultsStore:
    """The run's rows in memory, flushed to Parquet after every finished trial."""

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


# ----------------------------------------------------------------------------- statistics

def t_quantile_975(dof: int) -> float:
    # scipy.special, not scipy.stats: the same quantile without seconds of import time
    from scipy.special import stdtrit

    return float(stdtrit(dof, 0.975))


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t confidence interval; the interval is NaN for one value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def compute_gains(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gain of every method over its baseline, from the final-evaluation rows.

    The baseline is ``scratch`` for student methods and ``reversed_scratch`` for ``reversed``
    (the same architecture on labels alone); ``scratch_test_acc_mean`` holds the baseline's mean.
    ``gain_pts`` = mean test accuracy (method) - mean test accuracy (baseline), in points. The
    95% interval is a paired Student-t interval over the seeds both ran (same seed, same split,
    same initialisation of the student), which removes the seed-to-seed spread they share.
    """
    final = [r for r in trials if r["role"] == "final" and r["status"] == "finished"
             and r.get("test_acc") is not None]
    out = []
    for dataset in sorted({r["dataset"] for r in final}):
        by_method: dict[str, dict[int, dict[str, Any]]] = {}
        for r in final:
            if r["dataset"] == dataset:
                by_method.setdefault(r["method"], {})[r["seed"]] = r
        for method in sorted(by_method, key=lambda m: (m != "scratch", m)):
            baseline = baseline_of(method)
            scratch = by_method.get(baseline or method, {})  # a baseline: its own mean
            rows = by_method[method]
            accs = [r["test_acc"] for r in rows.values()]
            first = next(iter(rows.values()))
            paired = sorted(set(rows) & set(scratch))
            omitted = [r["omitted_class_acc"] for r in rows.values()
                       if r.get("omitted_class_acc") is not None]
            if baseline is None or not paired:
                gain = low = high = math.nan
            else:
                gain, low, high = mean_ci([rows[s]["test_acc"] - scratch[s]["test_acc"]
                                           for s in paired])
                # equal accuracies differ by float rounding (1e-15): print 0.00, not -0.00
                gain = round(gain, 9)
            out.append({
                "dataset": dataset, "method": method, "n_seeds": len(rows),
                "test_acc_mean": sum(accs) / len(accs), "test_acc_std": _std(accs),
                "scratch_test_acc_mean": (sum(r["test_acc"] for r in scratch.values())
                                          / len(scratch)) if scratch else math.nan,
                "gain_pts": gain, "gain_ci_low": low, "gain_ci_high": high,
                "val_acc_mean": sum(r["val_acc"] for r in rows.values()) / len(rows),
                **{k: first.get(k) for k in ("alpha", "tau", "hint_layer", "beta", "lr")},
                "baseline": baseline, "omitted_class": first.get("omitted_class"),
                "omitted_class_acc_mean": sum(omitted) / len(omitted) if omitted else None,
            })
    return out


def baseline_of(method: str) -> str | None:
    """The method whose test accuracy ``method``'s gain is measured against (None: a baseline)."""
    from kdtune.methods import METHOD_INFO

    info = METHOD_INFO.get(method)
    return info.baseline if info else "scratch"


def best_search_trial(trials: list[dict[str, Any]], dataset: str,
                      method: str) -> dict[str, Any] | None:
    """The search trial that trained its whole budget with the best validation accuracy.

    Trials stopped early by ASHA have status ``stopped`` and are not candidates; the test
    accuracy is never looked at.
    """
    rows = [r for r in trials if r["role"] == "search" and r["status"] == "finished"
            and r["dataset"] == dataset and r["method"] == method and r["val_acc"] is not None]
    if not rows:
        return None
    # ties go to the earlier trial, so the choice does not depend on anything but val_acc
    return max(enumerate(rows), key=lambda item: (item[1]["val_acc"], -item[0]))[1]
