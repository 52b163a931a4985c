"""What a report reads from one run directory, and the numbers it derives from those files alone.

A run directory holds ``trials.parquet``, ``epochs.parquet``, ``datasets.parquet``, ``run.json``,
``spec.yaml`` and the Optuna journal. Any of them but ``trials.parquet`` may be missing (an
interrupted run, an older kdtune, a copy without the journal); the report then says what it
could not show instead of failing. Columns beyond the ones named here are carried along as they
are: other parts of kdtune add columns.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kdtune import methods as registry
from kdtune.hparams import HYPERPARAMS
from kdtune.results import FinalSettings, compute_gains, compute_trends
from kdtune.rundir import (
    DATASETS_FILE,
    EPOCH_KEY,
    EPOCHS_FILE,
    GAIN_SCHEMA,
    GAINS_FILE,
    JOURNAL_FILE,
    RUN_FILE,
    SPEC_FILE,
    TREND_SCHEMA,
    TRENDS_FILE,
    TRIAL_KEY,
    TRIALS_FILE,
    compact_run,
    first_line,
    read_rows,
    write_table_atomic,
)

__all__ = ["HYPERPARAMS", "Importance", "ReportError", "Run", "load_run"]


class ReportError(RuntimeError):
    """The run directory holds nothing a report can be built from."""


@dataclass
class Importance:
    """Parameter importance of one search (one dataset and method)."""

    values: dict[str, float] | None  # parameter -> normalised importance, None if not computed
    n_trials: int
    source: str  # "Optuna journal" or "trials.parquet"
    note: str = ""


@dataclass
class Run:
    """Everything the report shows of one run directory."""

    label: str
    path: Path
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    datasets: list[dict[str, Any]]  # rows of datasets.parquet, in run order
    meta: dict[str, Any]  # run.json
    spec_text: str | None
    gains: list[dict[str, Any]] = field(default_factory=list)
    trends: list[dict[str, Any]] = field(default_factory=list)
    importance: dict[tuple[str, str], Importance] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what reading it repaired, to be said

    @property
    def dataset_labels(self) -> list[str]:
        """Datasets in the order of datasets.parquet, then any others the trials name."""
        labels = [d["dataset"] for d in self.datasets]
        for r in self.trials:
            if r["dataset"] not in labels:
                labels.append(r["dataset"])
        return labels

    def dataset_meta(self, label: str) -> dict[str, Any]:
        return next((d for d in self.datasets if d["dataset"] == label), {"dataset": label})

    def methods(self, dataset: str | None = None) -> list[str]:
        """Methods run (not the pretrained models), baselines first, then in order of first
        appearance."""
        seen: list[str] = []
        for r in self.trials:
            if not registry.is_pretrained(r["method"]) and r["method"] not in seen and (
                    dataset is None or r["dataset"] == dataset):
                seen.append(r["method"])
        return sorted(seen, key=lambda m: (not registry.is_baseline(m), seen.index(m)))

    def distilled(self, dataset: str | None = None) -> list[str]:
        """The methods run that are not baselines (the ones a gain is reported for)."""
        return [m for m in self.methods(dataset) if not registry.is_baseline(m)]

    def trial_noise(self, dataset: str, method: str) -> float | None:
        """The seed noise of one search trial's validation accuracy: the sd over the final
        seeds of the selected config (the same config, other seeds)."""
        g = next((g for g in self.gains if g["dataset"] == dataset and g["method"] == method),
                 None)
        sd = g.get("val_acc_std") if g else None
        return float(sd) if _num(sd) else None

    def scratch_reference(self, dataset: str, baseline: str | None = None) -> float | None:
        """Validation accuracy of the tuned ``baseline`` (``scratch``, or ``reversed_scratch``
        for ``reversed``), the zero of every gain surface.

        The best finished scratch search trial: it ran with the same seed as the search trials
        it is compared with. Falls back to the mean of the scratch final runs.
        """
        baseline = baseline or registry.student_baseline()
        search = [r["val_acc"] for r in self.trials if r["dataset"] == dataset
                  and r["method"] == baseline and r["role"] == "search"
                  and r["status"] == "finished" and _num(r["val_acc"])]
        if search:
            return max(search)
        final = [r["val_acc"] for r in self.trials if r["dataset"] == dataset
                 and r["method"] == baseline and r["role"] == "final"
                 and r["status"] == "finished" and _num(r["val_acc"])]
        return sum(final) / len(final) if final else None


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def spec_dict(spec_text: str | None) -> dict[str, Any]:
    """The run's spec.yaml as a mapping ({} if missing or unreadable): the report shows a run
    as it was specified, even by another kdtune version, so it reads, never validates."""
    if not spec_text:
        return {}
    import yaml

    try:
        data = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read one run directory (the Parquet files, run.json, spec.yaml, the Optuna journal)."""
    path = Path(path)
    if not (path / TRIALS_FILE).exists():
        raise ReportError(f"{path}: no {TRIALS_FILE} (not a kdtune run directory, or no trial "
                          "has finished yet)")
    try:  # one part per dataset: the report reads (and a user's pandas reads) one file each
        compact_run(path)
    except OSError:  # a read-only copy of a run: read its parts as they are
        pass
    spec_file = path / SPEC_FILE
    run = Run(label=label or path.resolve().name, path=path,
              trials=read_rows(path / TRIALS_FILE, TRIAL_KEY),
              epochs=read_rows(path / EPOCHS_FILE, EPOCH_KEY),
              datasets=read_rows(path / DATASETS_FILE), meta=_read_json(path / RUN_FILE),
              spec_text=spec_file.read_text(encoding="utf-8", errors="replace")
              if spec_file.exists() else None)
    final = spec_dict(run.spec_text).get("final")
    run.gains = compute_gains(run.trials, run.epochs,
                              FinalSettings.of(final if isinstance(final, dict) else {}))
    run.trends = compute_trends(run.gains, run.datasets)
    if run.meta.get("status") == "finished":
        run.notes = restore_results(run)
    run.importance = importances(run)
    return run


def restore_results(run: Run) -> list[str]:
    """A finished run's ``gains.parquet`` and ``trends.parquet`` (the study writes them as it
    ends, for a user's own pandas), written anew from the rows the report computed where one is
    missing or cannot be read; one line for each, to be said. A read-only copy stays as it is."""
    said = []
    for name, schema, rows in ((GAINS_FILE, GAIN_SCHEMA, run.gains),
                               (TRENDS_FILE, TREND_SCHEMA, run.trends)):
        path = run.path / name
        if not path.exists():
            why = "missing"
        else:
            try:
                pq.read_metadata(path)
                continue
            except (pa.ArrowException, OSError) as error:
                why = f"damaged ({first_line(error)})"
        try:
            write_table_atomic(rows, schema, path)
        except OSError:
            continue
        said.append(f"{path}: {why}; written anew from {TRIALS_FILE}")
    return said


# ----------------------------------------------------------------------------- overview numbers

def status_counts(trials: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in trials:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return dict(sorted(counts.items()))


def compute_summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Total compute and what early stopping saved, from the trial rows."""
    trained = [r for r in trials if r["status"] != "reused"]
    stopped = [r for r in trials if r["status"] == "stopped"]
    epochs_run = sum(r["epochs_run"] or 0 for r in trained)
    saved = sum(max(0, (r.get("epochs_budget") or 0) - (r["epochs_run"] or 0)) for r in stopped)
    return {"trials": len(trials), "by_status": status_counts(trials),
            "compute_s": sum(r["wall_s"] or 0.0 for r in trained),
            "epochs_run": epochs_run, "epochs_saved": saved, "n_stopped": len(stopped),
            "epochs_budget": sum(r.get("epochs_budget") or 0 for r in trained)}


# ----------------------------------------------------------------------------- importance

def importances(run: Run) -> dict[tuple[str, str], Importance]:
    """Importance of each search's parameters, from the Optuna journal of the run directory.

    The Optuna study of a search is named like its stage. Where the journal (or that study) is
    missing, the study is rebuilt in memory from the search rows of ``trials.parquet``, with
    each parameter's range taken from the values tried.
    """
    searches: dict[tuple[str, str], str] = {}
    for r in run.trials:
        if r["role"] == "search":
            searches.setdefault((r["dataset"], r["method"]), r["stage"])
    if not searches:
        return {}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    journal = run.path / JOURNAL_FILE
    if journal.exists():
        try:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            storage = JournalStorage(JournalFileBackend(str(journal)))
        except Exception:  # noqa: BLE001 - an unreadable journal is reported, not fatal
            storage = None
    out = {}
    for (dataset, method), stage in searches.items():
        study, source = None, "trials.parquet"
        if storage is not None:
            try:
                study, source = optuna.load_study(study_name=stage, storage=storage), \
                    "Optuna journal"
            except Exception:  # noqa: BLE001 - e.g. KeyError: that search is not in the journal
                study = None
        if study is None:
            study = _study_from_rows([r for r in run.trials if r["stage"] == stage])
            source = "trials.parquet"
        out[(dataset, method)] = _importance(study, source)
    return out


def _study_from_rows(rows: list[dict[str, Any]]):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    rows = [r for r in rows if r["status"] in ("finished", "stopped") and _num(r["val_acc"])]
    dists: dict[str, Any] = {}
    for name in HYPERPARAMS:
        values = [r[name] for r in rows if r.get(name) is not None]
        if len(values) != len(rows) or len(set(values)) < 2:
            continue  # not searched (fixed, or absent for this method)
        if all(_num(v) for v in values):
            low, high = float(min(values)), float(max(values))
            dists[name] = FloatDistribution(low, high, log=name == "lr" and low > 0)
        else:
            dists[name] = CategoricalDistribution(sorted({str(v) for v in values}))
    study = optuna.create_study(direction="maximize")
    for r in rows:
        params = {k: (str(r[k]) if isinstance(d, CategoricalDistribution) else float(r[k]))
                  for k, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(r["val_acc"])))
    return study


def _importance(study, source: str) -> Importance:
    """PED-ANOVA importance (Optuna's default evaluator) of the parameters that varied.

    PED-ANOVA asks how differently each parameter is distributed among the best 10% of the
    trials than among all of them; it takes milliseconds, where fANOVA's random forest takes
    about a second per search on this machine, too slow for a report with dozens of searches.
    """
    import optuna
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    n = len(done)
    if n < 2:
        return Importance(None, n, source, f"{n} completed trial(s): importance needs at least 2")
    seen: dict[str, set[str]] = {}
    for t in done:
        for name, value in t.params.items():
            seen.setdefault(name, set()).add(repr(value))
    varied = sorted(name for name, values in seen.items() if len(values) > 1)
    if not varied:
        return Importance(None, n, source, "no parameter varied: nothing to rank")
    if len(varied) == 1:
        return Importance({varied[0]: 1.0}, n, source,
                          f"only {varied[0]} was searched: its importance is 1 by definition")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varied)
    except Exception as error:  # noqa: BLE001 - e.g. too few trials with every parameter
        return Importance(None, n, source, f"importance failed: {type(error).__name__}: {error}")
    if any("select the same set of trials" in str(w.message) for w in caught):
        # PED-ANOVA's best 10% is every trial: it would report equal importances
        return Importance(None, n, source, f"{n} completed trials are too few for PED-ANOVA to "
                          "set the best apart from the rest")
    return Importance({k: float(v) for k, v in values.items()}, n, source)
