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

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.plan import Plan, as_spec, validate
from kdtune.spec import StudySpec
from kdtune.spec import load_spec as _load_spec_file

__all__ = ["Plan", "Run", "load", "load_spec", "resume", "run", "validate"]

if TYPE_CHECKING:  # pandas is imported when a table is first read
    import pandas as pd


def load_spec(source: str | Path | dict[str, Any] | StudySpec) -> StudySpec:
    """A validated spec from a YAML file, a dict (as the YAML would parse) or a spec.

    Raises :class:`~kdtune.spec.SpecError` (one line naming the field or file), as
    ``kdtune validate`` reports it. Imports neither torch nor Ray.
    """
    return as_spec(source)


def _spec_text(source: Any, spec: StudySpec) -> str:
    """The spec as the run directory keeps it (``spec.yaml``): the file as written, or the
    dict / spec as YAML."""
    import yaml

    if isinstance(source, (str, Path)):
        return Path(source).read_text(encoding="utf-8")
    # unset fields stay out: a default written out would read back as set (distillation.alpha
    # beside search.alpha is refused)
    data = source if isinstance(source, dict) else spec.model_dump(mode="json", exclude_unset=True)
    return yaml.safe_dump(data, sort_keys=False)


def _progress(progress: bool | Callable[[str], None]) -> Any:
    """True: the command line's output (a status line on a terminal); False: nothing; a
    callable: each line handed to it."""
    from kdtune.progress import Progress

    if callable(progress):
        return Progress("plain", write=progress)
    return Progress("auto") if progress else Progress("quiet", write=lambda line: None)


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
    shown = _progress(progress)
    shown.log(str(validate(resolved, compute=False)))
    study = Study.create(resolved, _spec_text(spec, parsed), address=address, progress=shown)
    try:
        study.run(address=address)
    finally:
        shown.close()
    return Run(study.run_dir, location=str(study.location))


def resume(run_dir: str | Path, address: str | None = None,
           progress: bool | Callable[[str], None] = True) -> Run:
    """Continue a run (a folder or its URI) as ``kdtune resume`` does: no finished trial is
    rerun."""
    from kdtune.storage import as_location
    from kdtune.study import Study

    shown = _progress(progress)
    study = Study.open(as_location(str(run_dir)), progress=shown)
    try:
        study.run(address=address)
    finally:
        shown.close()
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

    trials = property(lambda self: self._table("trials.parquet"), doc="one row per trial")
    epochs = property(lambda self: self._table("epochs.parquet"), doc="per trial and epoch")
    gains = property(lambda self: self._table("gains.parquet"),
                     doc="per dataset and method: the gain, its interval, the verdict")
    trends = property(lambda self: self._table("trends.parquet"),
                      doc="gain against complexity or a swept knob, per method")
    datasets = property(lambda self: self._table("datasets.parquet"),
                        doc="per dataset, with its measured complexity")

    @property
    def spec(self) -> StudySpec:
        from kdtune.rundir import SPEC_FILE

        return _load_spec_file(self.path / SPEC_FILE)

    @property
    def status(self) -> str | None:
        """``created``, ``running``, ``interrupted`` or ``finished`` (run.json)."""
        from kdtune.rundir import RUN_FILE, read_meta

        return read_meta(self.path / RUN_FILE)[0].get("status")

    def report(self, out: str | Path | None = None) -> Path:
        """Write the HTML report (default ``RUN/report.html``) and return its path."""
        from kdtune.report import build_report

        return build_report(self.path, out)
