"""kdtune from Python or a notebook: the same spec checks, runs and results as the command line.

    >>> import kdtune
    >>> spec = kdtune.load_spec("studies/quickstart.yaml")       # or a dict
    >>> print(kdtune.validate(spec))                              # trial counts, epochs, FLOPs
    >>> run = kdtune.run(spec, storage="runs")                    # doctest: +SKIP
    >>> run.gains[["dataset", "method", "gain_pts", "gain_halfwidth", "verdict"]]  # +SKIP
    >>> run = kdtune.load("runs/quickstart-20261202-101500")      # doctest: +SKIP
    >>> run.trials.groupby("method").val_acc.max()                # doctest: +SKIP
    >>> run.report()                                              # doctest: +SKIP

Every failure the command line reports as one line (exit code 2) is raised here as the same
exception, whose message is that line: :class:`~kdtune.spec.SpecError` for the spec,
``StorageError``, ``DatasetError``, ``ResourceError``, ``ClusterError`` for what the spec points
at, ``StudyError`` for a run that could not finish. Ctrl-C raises ``KeyboardInterrupt`` and keeps
every finished trial: ``kdtune.resume(path)`` carries on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.spec import SpecError, StudySpec, parse_spec
from kdtune.spec import load_spec as _load_spec_file

if TYPE_CHECKING:  # pandas is imported when a table is first read
    import pandas as pd


def load_spec(source: str | Path | dict[str, Any] | StudySpec) -> StudySpec:
    """A validated spec from a YAML file, a dict (as the YAML would parse) or a spec.

    Raises :class:`~kdtune.spec.SpecError` (one line naming the field or file), as
    ``kdtune validate`` reports it. Imports neither torch nor Ray.
    """
    if isinstance(source, StudySpec):
        return source
    if isinstance(source, dict):
        return parse_spec(source)
    if isinstance(source, (str, Path)):
        return _load_spec_file(source)
    raise SpecError(f"spec: expected a file path, a dict or a StudySpec, got "
                    f"{type(source).__name__}")


@dataclass(frozen=True)
class Plan:
    """What a spec asks for, before anything runs (``kdtune validate`` prints ``str(plan)``)."""

    study: str
    datasets: int
    methods: tuple[str, ...]
    teachers: int  # teacher trainings (reused when already stored)
    search_trials: int
    final_trainings: int  # the first round of seeds; precision-targeted rounds may add more
    max_final_trainings: int  # ... up to final.max_seeds per comparison
    max_epochs: int  # training epochs at most (ASHA stops some search trials earlier)
    lines: tuple[str, ...] = field(repr=False, default=())

    def __str__(self) -> str:
        return "\n".join(self.lines)


def validate(spec: str | Path | dict[str, Any] | StudySpec, compute: bool = True) -> Plan:
    """Check ``spec`` and count what it will run; with ``compute``, add the compute estimate
    (FLOPs per trial on the meta device: imports torch, no data loaded)."""
    from kdtune.methods import teacher_sources
    from kdtune.resources import requested
    from kdtune.search import search_trials, searched_dimensions

    spec = load_spec(spec)
    final = spec.final
    lines = [f"study {spec.study}: {len(spec.datasets)} dataset(s), methods "
             f"{', '.join(spec.methods)}; teacher {spec.teacher.label} "
             f"({spec.training.teacher_epochs} epochs) -> student {spec.student.label} "
             f"({spec.training.student_epochs} epochs)"]
    # the spec's teacher, plus a pretrained student-architecture model for self/reversed
    n_teachers = len(spec.datasets) * len(teacher_sources(spec))
    n_search = len(spec.datasets) * sum(search_trials(spec, m) for m in spec.methods)
    n_final = len(spec.datasets) * len(spec.methods) * len(final.seeds)
    most_seeds = max(len(final.seeds), final.max_seeds or 0)
    n_final_max = len(spec.datasets) * len(spec.methods) * most_seeds
    for method in spec.methods:
        dims = searched_dimensions(spec, method)
        lines.append(f"  {method}: " + (f"{spec.search.trials} Optuna trials per dataset over "
                                         f"{', '.join(dims)}" if dims else
                                         "1 trial per dataset (nothing searched: fixed config)"))
    if spec.distillation.omit_class is not None:
        lines.append(f"  omit-one-class: students train and validate without class "
                     f"{spec.distillation.omit_class}; test accuracy on it is reported")
    epochs = (n_teachers * spec.training.teacher_epochs
              + (n_search + n_final_max) * spec.training.student_epochs)
    rounds = (f", then more seeds until the gain's 95% interval is +-{final.target_halfwidth} "
              f"points (at most {most_seeds} seeds)" if final.target_halfwidth else "")
    lines.append(f"  plan: {n_teachers} teacher(s) (reused if already stored), {n_search} search "
                 f"trials, {n_final} final trainings (seeds {list(final.seeds)}){rounds}; at "
                 f"most {epochs} training epochs; ASHA {'on' if spec.scheduler.asha else 'off'}")
    lines.append(f"  resources per trial: {requested(spec)}")
    if compute:
        from kdtune.estimate import estimate

        lines += estimate(spec)
    return Plan(spec.study, len(spec.datasets), tuple(spec.methods), n_teachers, n_search,
                n_final, n_final_max, epochs, tuple(lines))


def _spec_text(source: Any, spec: StudySpec) -> str:
    """The spec as the run directory keeps it (``spec.yaml``): the file as written, or the
    dict / spec as YAML."""
    import yaml

    if isinstance(source, (str, Path)):
        return Path(source).read_text(encoding="utf-8")
    data = source if isinstance(source, dict) else spec.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)


def _logger(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    from kdtune import console

    if callable(progress):
        return progress
    return console.log if progress else (lambda line: None)


def run(spec: str | Path | dict[str, Any] | StudySpec, storage: str | None = None,
        address: str | None = None, data_dir: str | None = None,
        progress: bool | Callable[[str], None] = True) -> Run:
    """Run a study as ``kdtune run`` does and return its :class:`Run`.

    ``storage`` (a folder or a URI) and ``data_dir`` override the spec's; ``address`` joins a
    Ray cluster (``auto``, ``HOST:PORT``; a ``ray://`` address needs the command line);
    ``progress``: print the study's lines (True), nothing (False), or hand each line to a
    callable.
    """
    from kdtune.cluster import cluster_address, is_ray_client
    from kdtune.preflight import resolve_paths
    from kdtune.study import Study

    if is_ray_client(cluster_address(address)):
        from kdtune.cluster import ClusterError

        raise ClusterError(f"address {address}: Ray Client runs through the kdtune command "
                           "(kdtune run --address ray://...), not kdtune.run")
    parsed = load_spec(spec)
    resolved = resolve_paths(parsed, storage, data_dir)
    log = _logger(progress)
    log(str(validate(resolved, compute=False)))
    study = Study.create(resolved, _spec_text(spec, parsed), log=log, address=address)
    study.run(address=address)
    return Run(study.run_dir, location=str(study.location))


def resume(run_dir: str | Path, address: str | None = None,
           progress: bool | Callable[[str], None] = True) -> Run:
    """Continue a run (a folder or its URI) as ``kdtune resume`` does: no finished trial is
    rerun."""
    from kdtune.storage import as_location
    from kdtune.study import Study

    study = Study.open(as_location(str(run_dir)), log=_logger(progress))
    study.run(address=address)
    return Run(study.run_dir, location=str(study.location))


def load(run_dir: str | Path) -> Run:
    """A finished (or running, or interrupted) run directory, to read."""
    from kdtune.rundir import SPEC_FILE
    from kdtune.storage import StorageError

    path = Path(run_dir).expanduser()
    if not (path / SPEC_FILE).is_file():
        raise StorageError(f"{path}: not a kdtune run directory (no {SPEC_FILE})")
    return Run(path.resolve())


class Run:
    """One run directory, read lazily: its tables as pandas DataFrames (empty where a file is
    not written yet), its spec, its status, and its report.

    ``trials`` (one row per trial), ``epochs`` (per trial and epoch), ``gains`` (per dataset and
    method: the gain, its interval and the verdict), ``trends`` (gain against complexity or a
    knob), ``datasets`` (per dataset, with its measured complexity): the columns are those of
    the README's run-directory table.
    """

    def __init__(self, path: str | Path, location: str | None = None) -> None:
        self.path = Path(path)
        self.location = location or str(self.path)  # a URI for a run on object storage

    def __repr__(self) -> str:
        return f"Run({self.location!r}, status={self.status!r})"

    def _table(self, name: str) -> pd.DataFrame:
        import pandas as pd

        from kdtune.rundir import ROW_KEYS, SCHEMAS, read_rows

        columns = [f.name for f in SCHEMAS[name]]
        file = self.path / name
        if not file.exists():
            return pd.DataFrame(columns=columns)
        return pd.DataFrame(read_rows(file, ROW_KEYS.get(name)), columns=columns)

    @property
    def trials(self) -> pd.DataFrame:
        return self._table("trials.parquet")

    @property
    def epochs(self) -> pd.DataFrame:
        return self._table("epochs.parquet")

    @property
    def gains(self) -> pd.DataFrame:
        return self._table("gains.parquet")

    @property
    def trends(self) -> pd.DataFrame:
        return self._table("trends.parquet")

    @property
    def datasets(self) -> pd.DataFrame:
        return self._table("datasets.parquet")

    @property
    def spec(self) -> StudySpec:
        from kdtune.rundir import SPEC_FILE

        return _load_spec_file(self.path / SPEC_FILE)

    @property
    def status(self) -> str | None:
        """``created``, ``running``, ``interrupted`` or ``finished`` (run.json)."""
        from kdtune.rundir import RUN_FILE

        try:
            return json.loads((self.path / RUN_FILE).read_text()).get("status")
        except (OSError, ValueError):
            return None

    def report(self, out: str | Path | None = None) -> Path:
        """Write the HTML report (default ``RUN/report.html``) and return its path."""
        from kdtune.report import build_report

        return build_report(self.path, out)
