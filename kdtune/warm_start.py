"""Warm starts: a search that begins with what earlier studies of the same models learnt.

``search.warm_start: auto`` looks through the storage's finished runs (``RUN_DIR ...``: through
the runs named) for search trials of the same method, trained model and teaching model, takes
the best of each earlier search (on that search's own validation split), ranks those searches
by how close their dataset's measured complexity (``datasets.parquet``' ``complexity_score``) is
to this search's dataset, and enqueues the ``search.warm_start_configs`` nearest as this
search's first Optuna trials. Only configurations travel: never an accuracy (Optuna learns
the values from this study's own trials), and never anything measured on a test split.

A config is cut to the dimensions this search varies, and a value outside this study's range
(or a hint layer or policy it does not search) is left for Optuna to sample. What was chosen is
written once to ``warm_start.json`` in the run directory, so a resumed run enqueues the same
configs, and each search trial's row says where its config came from (``config_source``).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdtune import methods
from kdtune.hparams import HYPERPARAMS
from kdtune.rundir import (
    DATASETS_FILE,
    RUN_FILE,
    TRIALS_FILE,
    RunFileError,
    first_line,
    read_meta,
    read_rows,
    write_json_atomic,
)
from kdtune.spec import StudySpec
from kdtune.storage import Location, StorageError, download_tree, is_uri, join, open_uri

WARM_START_FILE = "warm_start.json"


@dataclass(frozen=True)
class WarmConfig:
    """One enqueued configuration: the earlier search it is the best trial of, that search's
    dataset complexity, and the distance to this search's."""

    source: str  # RUN_ID/DATASET_LABEL
    trial_id: str
    config: dict[str, Any]
    complexity: float | None
    distance: float | None


@dataclass(frozen=True)
class SourceSearch:
    """The best finished trial of one earlier search (a run, a dataset, a method)."""

    run_id: str
    dataset: str
    method: str
    arch: str
    teacher_arch: str | None
    trial_id: str
    val_acc: float
    config: dict[str, Any]
    complexity: float | None
    finished_at: str


def best_of_searches(run_id: str, trials: list[dict[str, Any]],
                     datasets: list[dict[str, Any]]) -> list[SourceSearch]:
    """The best finished search trial (highest ``val_acc``) of each (dataset, method) search in
    one run's rows; ties go to the earlier trial, as Tune and :mod:`kdtune.results` select."""
    complexity = {d["dataset"]: d.get("complexity_score") for d in datasets}
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in trials:
        if row.get("role") != "search" or row.get("status") != "finished" \
                or not _finite(row.get("val_acc")):
            continue
        key = (row["dataset"], row["method"])
        if key not in best or row["val_acc"] > best[key]["val_acc"]:
            best[key] = row
    out = []
    for (dataset, method), row in best.items():
        try:
            config = json.loads(row.get("config_json") or "{}")
        except ValueError:
            continue
        score = complexity.get(dataset)
        out.append(SourceSearch(run_id, dataset, method, row.get("arch") or "",
                                row.get("teacher_arch"), row["trial_id"], float(row["val_acc"]),
                                {k: config[k] for k in HYPERPARAMS if config.get(k) is not None},
                                float(score) if _finite(score) else None,
                                row.get("finished_at") or ""))
    return out


def in_space(config: dict[str, Any], spec: StudySpec, method: str) -> dict[str, Any]:
    """``config`` cut to what this study's search of ``method`` varies, each value inside its
    range (a value outside it, or a choice this search does not offer, is dropped: Optuna
    samples that dimension)."""
    from kdtune.search import searched_dimensions, space_of

    space = space_of(spec)
    choices = {"hint_layer": space["hint_layers"], "augmentation": space["augmentation"]}
    out = {}
    for name in searched_dimensions(spec, method):
        value = config.get(name)
        if value is None:
            continue
        if name in choices:
            if choices[name] and value in choices[name]:
                out[name] = value
            continue
        bounds = space.get(name)
        if bounds and _finite(value) and bounds[0] <= float(value) <= bounds[1]:
            out[name] = float(value)
    return out


def choose(sources: list[SourceSearch], spec: StudySpec, method: str,
           complexity: float | None, k: int) -> list[WarmConfig]:
    """The ``k`` configs to enqueue for a search of ``method`` on a dataset of measured
    ``complexity``: the best configs of the matching earlier searches, nearest in complexity
    first (an unmeasured one last; ties: the most recent run), a config already chosen (or
    empty once cut to this space) skipped."""
    trained, teacher = methods.trial_models(spec, method)
    teacher_label = teacher.label if teacher else None
    matching = [s for s in sources if s.method == method and s.arch == trained.label
                and (s.teacher_arch or None) == teacher_label]

    def distance(s: SourceSearch) -> float | None:
        if s.complexity is None or complexity is None:
            return None
        return abs(s.complexity - complexity)

    ranked = sorted(matching, key=lambda s: s.finished_at, reverse=True)
    ranked.sort(key=lambda s: (distance(s) is None, distance(s) or 0.0))
    chosen: list[WarmConfig] = []
    for s in ranked:
        config = in_space(s.config, spec, method)
        if not config or any(c.config == config for c in chosen):
            continue
        chosen.append(WarmConfig(f"{s.run_id}/{s.dataset}", s.trial_id, config, s.complexity,
                                 distance(s)))
        if len(chosen) == k:
            break
    return chosen


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- reading earlier runs -----------------------------------------------------------------
def candidate_runs(spec: StudySpec) -> list[Location]:
    """The run directories ``search.warm_start`` names, or under ``auto`` every run directory
    in the storage."""
    named = spec.search.warm_start
    if named is None:
        return []
    if named != "auto":
        return list(named)
    storage = spec.storage
    if is_uri(storage):
        import pyarrow.fs as pafs

        fs, base = open_uri(storage)
        try:
            infos = fs.get_file_info(pafs.FileSelector(base.rstrip("/"), allow_not_found=True))
        except OSError as error:
            raise StorageError(f"search.warm_start: cannot list {storage} ({error})") from None
        names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        return [join(storage, n) for n in names if n != "teachers"]
    root = Path(storage)
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir())
            if p.is_dir() and (p / RUN_FILE).exists()]


def read_sources(runs: list[Location], auto: bool, log: Any) -> list[SourceSearch]:
    """The best trial of every search in ``runs``. Under ``auto`` a run that has not finished,
    or whose files cannot be read, is passed over (with a line for a damaged one); a run named
    explicitly that cannot be read is an error naming it."""
    sources: list[SourceSearch] = []
    for run in runs:
        try:
            with _local_copy(run) as local:
                meta, _ = read_meta(local / RUN_FILE)
                if not (local / TRIALS_FILE).exists():
                    if auto:
                        continue
                    raise StorageError(f"search.warm_start: {run}: not a kdtune run directory "
                                       f"(no {TRIALS_FILE})")
                if auto and meta.get("status") != "finished":
                    continue
                sources += best_of_searches(local.name, read_rows(local / TRIALS_FILE),
                                            read_rows(local / DATASETS_FILE))
        except RunFileError as error:
            if not auto:
                raise StorageError(f"search.warm_start: {error}") from None
            log(f"warm start: {run} passed over: {error}")
    return sources


@contextlib.contextmanager
def _local_copy(run: Location) -> Iterator[Path]:
    """A run directory as a local path: itself, or its kdtune files downloaded from a URI."""
    if not is_uri(run):
        path = Path(run)
        if not path.is_dir():
            raise StorageError(f"search.warm_start: {path}: no such run directory")
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="kdtune-warm-") as folder:
        local = Path(folder) / str(run).rstrip("/").rsplit("/", 1)[-1]
        try:
            download_tree(str(run), local, skip=("tune", "epochs.parquet", "optuna"))
        except OSError as error:
            raise StorageError(f"search.warm_start: {run}: cannot read it ({error})") from None
        yield local


# --- the run directory's record -----------------------------------------------------------
def choose_warm_start(spec: StudySpec, stages: dict[str, tuple[str, float | None]],
                      log: Any) -> dict[str, list[WarmConfig]]:
    """The configs each search stage enqueues, chosen before the run directory is made (a run
    named that cannot be read stops the study with nothing written). ``stages``: each search
    stage's (method, its dataset's measured complexity score)."""
    if spec.search.warm_start is None:
        return {}
    auto = spec.search.warm_start == "auto"
    sources = read_sources(candidate_runs(spec), auto, log)
    chosen = {stage: choose(sources, spec, method, complexity, spec.search.warm_start_configs)
              for stage, (method, complexity) in stages.items()}
    for stage, configs in chosen.items():
        if configs:
            log(f"warm start {stage}: " + "; ".join(
                f"{c.source} {c.trial_id}" + (f" (complexity distance {c.distance:.3f})"
                                              if c.distance is not None else "")
                for c in configs))
        else:
            log(f"warm start {stage}: no finished search of the same method and models in "
                f"{'the storage' if auto else 'the runs named'}; it starts cold")
    return chosen


def write_warm_start(chosen: dict[str, list[WarmConfig]], run_dir: Path) -> None:
    """``warm_start.json``: what a resumed run enqueues again (nothing without a warm start)."""
    if chosen:
        write_json_atomic({stage: [asdict(c) for c in configs]
                           for stage, configs in chosen.items()}, run_dir / WARM_START_FILE)


def read_warm_start(run_dir: Path) -> dict[str, list[WarmConfig]]:
    """The configs a run chose when it started (none: it has no ``warm_start.json``)."""
    path = run_dir / WARM_START_FILE
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return {stage: [WarmConfig(**c) for c in configs] for stage, configs in stored.items()}
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise RunFileError(f"{path}: damaged, cannot read it ({first_line(error)}); restore it "
                           "from a copy, or move it away to run the rest of each search "
                           "without its warm-start configs") from None
