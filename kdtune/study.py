"""Orchestration of one study on Ray Tune: teachers, one Optuna search per (dataset, method),
then the final evaluation of each best config over the spec's seeds.

Every stage is a ``tune.Tuner`` run; a driver-side callback writes each trial to Parquet the
moment it ends. A stage is skipped, or shortened, by what the Parquet files already hold, so
``kdtune resume RUN_DIR`` (or a crash followed by a resume) reruns no finished trial.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from kdtune.cluster import (
    ResourcesByMethod,
    check_shared_storage,
    cluster_address,
    cluster_summary,
)
from kdtune.data import DatasetUnavailable, Splits
from kdtune.methods import METHOD_INFO, PRETRAINED, row_columns, teacher_sources
from kdtune.resources import ClusterView, ResourcePlan, Shape, resolve, roles_needed
from kdtune.results import (
    GAIN_SCHEMA,
    GAINS_FILE,
    ResultsStore,
    best_search_trial,
    compute_gains,
    read_rows,
    write_table_atomic,
)
from kdtune.spec import DatasetSpec, SpecError, StudySpec, parse_spec
from kdtune.storage import (
    Location,
    RunMirror,
    check_writable,
    download_tree,
    exists,
    is_uri,
    join,
    load_torch,
    staging_dir,
    tune_storage,
)
from kdtune.trainables import flat_config, teacher_path

if TYPE_CHECKING:
    from kdtune.multisearch import SearchPart

DATASETS_FILE = "datasets.parquet"
SPEC_FILE = "spec.yaml"
RUN_FILE = "run.json"

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


class StorageError(RuntimeError):
    """The storage path cannot hold a run (unwritable, not a folder, full, ...)."""


class StudyError(RuntimeError):
    """A stage the rest of the study depends on failed (e.g. no teacher could be trained)."""


# a run directory of the quickstart is ~5 MB; refuse storage that cannot hold a few of them
MIN_FREE_BYTES = 200 * 1024 * 1024


def _log(message: str) -> None:
    print(message, flush=True)


def resolve_paths(spec: StudySpec, storage: str | None, data_dir: str | None,
                  download: bool | None = None) -> StudySpec:
    """Make storage and data paths absolute (Ray needs absolute paths; trials run elsewhere)."""
    storage_path = storage or spec.storage
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    datasets = []
    for ds in spec.datasets:
        update: dict[str, Any] = {}
        folder = ds.data_dir or data_dir
        if folder:
            update["data_dir"] = str(Path(folder).expanduser().resolve())
        if ds.path:  # an image folder is read by trial workers too
            update["path"] = str(Path(ds.path).expanduser().resolve())
        if download is not None:
            update["download"] = download or ds.download
        datasets.append(ds.model_copy(update=update))
    return spec.model_copy(update={"storage": storage_path, "datasets": datasets})


def check_datasets(spec: StudySpec, log: Callable[[str], None] | None = None,
                   loaded: list[Splits] | None = None) -> list[dict[str, Any]]:
    """Load every dataset once in the driver (or take the ``loaded`` splits): a missing one
    fails before any trial starts.

    Each dataset's complexity is measured here too (seconds), so it is stored with the results.
    """
    from kdtune.complexity import as_row, measure

    rows = []
    for index, ds in enumerate(spec.datasets):
        splits = loaded[index] if loaded is not None else ds.load()
        sizes = splits.sizes()
        cx = measure(splits, ds.label)
        knob, knob_value = ds.knob()
        k = spec.distillation.omit_class
        if k is not None and k >= splits.num_classes:
            raise SpecError(f"distillation.omit_class: {ds.label} has no class {k} "
                            f"(0..{splits.num_classes - 1})")
        rows.append({"dataset": ds.label, "name": ds.name, "channels": splits.channels,
                     "image_size": splits.image_size, "num_classes": splits.num_classes,
                     "n_train": sizes["train"], "n_val": sizes["val"], "n_test": sizes["test"],
                     "knob": knob, "knob_value": knob_value,
                     "knobs_json": json.dumps(ds.knob_values())} | as_row(cx))
        if log:
            log(f"dataset {ds.label}: {sizes['train']}/{sizes['val']}/{sizes['test']} images, "
                f"{splits.channels}x{splits.image_size}x{splits.image_size}, "
                f"{splits.num_classes} classes, complexity {cx.score:.3f}")
    return rows


def check_storage(storage: str | Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail before any trial starts if ``storage`` cannot take a run: unwritable or full (an
    object store: unreachable or unwritable)."""
    if is_uri(storage):
        try:
            check_writable(str(storage))
        except (OSError, ValueError) as error:  # pyarrow: ArrowIOError is OSError
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise StorageError(f"storage {storage}: not reachable or not writable "
                               f"({first})") from None
        return
    storage = Path(storage)
    probe = storage / f".kdtune-write-test-{os.getpid()}"
    try:
        storage.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_bytes(b"x" * 65536)  # a full disk fails here, not only a read-only one
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        raise StorageError(f"storage {storage}: not writable ({error.strerror or error})") from None
    free = shutil.disk_usage(storage).free
    if free < min_free:
        raise StorageError(f"storage {storage}: only {free // 2**20} MiB free, need at least "
                           f"{min_free // 2**20} MiB")


def new_run_dir(spec: StudySpec) -> Location:
    """A new run directory under the storage: a path, or a URI (its files are staged locally)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{spec.study}-{stamp}"
    run_dir, n = join(spec.storage, base), 1
    while exists(run_dir):
        n += 1
        run_dir = join(spec.storage, f"{base}-{n}")
    return run_dir


def _write_json_atomic(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- Tune glue

def _tune_callback(store: ResultsStore, spec: StudySpec, stage: str, role: str,
                   expected: int | dict[str, int], log: Callable[[str], None]):
    """The driver-side callback of one Tuner. ``stage`` and ``role`` are defaults: a trial
    whose config names its own (several searches and the final runs share a Tuner) keeps them;
    ``expected`` counts the trials of each stage, for the progress lines."""
    from ray.tune import Callback

    labels = [ds.label for ds in spec.datasets]
    totals = expected if isinstance(expected, dict) else {stage: expected}

    class Recorder(Callback):
        """Writes each finished trial to Parquet at once and prints progress."""

        def __init__(self) -> None:
            self.done: dict[str, int] = {}
            self.best: dict[str, float] = {}

        def _base(self, trial) -> dict[str, Any]:
            c = flat_config(trial.config)
            own = c.get("stage", stage)
            return {"study": spec.study, "run_id": store.run_dir.name, "stage": own,
                    "trial_id": f"{own}:{trial.trial_id}",
                    "dataset": labels[int(c["dataset_index"])], "method": c["method"],
                    "role": c.get("role", role), "seed": int(c["seed"])}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" not in result:
                return
            row = self._base(trial) | {k: result.get(k) for k in (
                "epoch", "train_loss", "loss_ce", "loss_kd", "loss_hint", "val_acc", "epoch_s",
                "wall_s", "loss_at")}
            store.add_epoch(row)
            if row["role"] == "teacher":
                log(f"  [{row['stage']}] {row['dataset']} teacher epoch {row['epoch']}/"
                    f"{spec.training.teacher_epochs}: val {row['val_acc']:.1f}%")

        def _finish(self, trial, status: str | None, failure: str | None) -> None:
            c, last = flat_config(trial.config), trial.last_result or {}
            base = self._base(trial)
            budget = (spec.training.teacher_epochs if base["role"] == "teacher"
                      else spec.training.student_epochs)
            epochs_run = int(last.get("epoch") or 0)
            if status is None:
                if last.get("diverged"):
                    status, failure = "failed", last.get("failure")
                else:
                    status = "finished" if epochs_run >= budget else "stopped"
            row = base | {
                "alpha": c.get("alpha"), "tau": c.get("tau"), "hint_layer": c.get("hint_layer"),
                "beta": c.get("beta"), "lr": float(c.get("lr", spec.training.lr)),
                "config_json": json.dumps({k: v for k, v in sorted(c.items())
                                           if k not in ("teacher_path",)}, default=str),
                "val_acc": last.get("val_acc") if status != "failed" else None,
                "test_acc": last.get("test_acc"), "epochs_run": epochs_run,
                "epochs_budget": budget, "status": status, "failure": failure,
                "wall_s": last.get("wall_s"), "teacher_id": c.get("teacher_id"),
                "node_id": last.get("node_id"), "restarts": int(trial.num_failures),
                "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **row_columns(spec, c["method"], last),
            }
            store.finish_trial(row)
            own = row["stage"]
            self.done[own] = self.done.get(own, 0) + 1
            if row["val_acc"] is not None and status == "finished":
                self.best[own] = max(self.best.get(own, 0.0), row["val_acc"])
            hp = " ".join(f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                          for k in ("alpha", "tau", "hint_layer", "lr") if row[k] is not None
                          and (k != "lr" or spec.search.lr))
            hp += "".join(f" {k}={c[k]:.3g}" if isinstance(c[k], float) else f" {k}={c[k]}"
                          for k in ("augmentation", "aug_share") if k in c)
            val = f"val {row['val_acc']:.1f}%" if row["val_acc"] is not None else "no val"
            best = (f" (best {self.best[own]:.1f}%)" if own in self.best
                    and row["role"] == "search" else "")
            why = f" [{status}: {failure}]" if failure else (" [stopped early]" if status == "stopped" else "")
            why += f" [restarted {row['restarts']}x from its checkpoint]" if row["restarts"] else ""
            log(f"  [{own}] {self.done[own]}/{totals.get(own, '?')} {row['dataset']} "
                f"{row['method']} seed "
                f"{row['seed']}: {val}{best} after {epochs_run} epochs, "
                f"{row['wall_s'] or 0:.0f}s {hp}{why}")

        def on_step_end(self, iteration, trials, **info):
            check_stop()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial, None, None)

        def on_trial_error(self, iteration, trials, trial, **info):
            failure = "trial raised an error"
            if trial.error_file and Path(trial.error_file).exists():
                lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
                failure = lines[-1][:500] if lines else failure
            self._finish(trial, "failed", failure)

    return Recorder()


def _fit(trainable, spec: StudySpec, tune_dir: Location, stage: str, param_space: dict[str, Any],
         num_samples: int, callback, searcher=None, scheduler=None,
         plan: ResourcePlan | None = None, **parameters: Any) -> None:
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
    try:
        tuner.fit()
    finally:
        if own_pending:
            os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)
    check_stop()


def stage_name(kind: str, label: str, method: str) -> str:
    """A Tune experiment / Optuna study name: a dataset label made path- and URI-safe."""
    safe = label.replace("[", "_").replace("]", "").replace("=", "")
    return f"{kind}-{re.sub(r'[^A-Za-z0-9_.+-]+', '_', safe)}-{method}"


def _asha(spec: StudySpec):
    if not spec.scheduler.asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    # rungs count epochs, as the trial reports them, also after a restart from a checkpoint
    return ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max",
                         max_t=spec.training.student_epochs,
                         grace_period=min(spec.scheduler.grace_period,
                                          spec.training.student_epochs),
                         reduction_factor=spec.scheduler.reduction_factor)


# Set by Ctrl-C or SIGTERM. A KeyboardInterrupt raised by the handler is lost when it lands in
# a __del__ (Ray's actor handles are collected mid-stage), so the run also checks this flag at
# every Tune step and around every stage.
_STOP_REQUESTED = threading.Event()


def _raise_keyboard_interrupt(signum, frame) -> None:  # noqa: ARG001 - signal API
    _STOP_REQUESTED.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    """Raise KeyboardInterrupt if Ctrl-C or SIGTERM arrived, even if its first raise was lost."""
    if _STOP_REQUESTED.is_set():
        raise KeyboardInterrupt


def stop_on_sigterm(fresh: bool = False) -> None:
    """Treat SIGTERM like Ctrl-C: the run stops cleanly and says how to resume.

    Called again after ``ray.init``, whose core installs its own SIGTERM handler (which aborts).
    ``fresh`` forgets a stop request of an earlier command in this process.
    """
    if fresh:
        _STOP_REQUESTED.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)


def _init_ray(address: str | None, log: Callable[[str], None]) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C reaches kdtune at once
    # kdtune prints its own one-line-per-trial progress; Tune's tables and warnings would bury it
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own result.json / progress.csv per trial: kdtune writes every epoch to Parquet
    # itself, and those loggers cost the driver ~1.8 ms per reported epoch (measured: 8 trials x
    # 150 reports, driver CPU 3.5 s with them, 1.3 s without). TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0
    # brings them back (TensorBoard, or reading a trial's folder by hand).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1":
        # without those files Tune's ResultGrid warns for every trial that it found no metrics
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    if ray.is_initialized():
        return
    started = time.perf_counter()
    address = cluster_address(address)
    if address:
        # an existing cluster (--address, or RAY_ADDRESS inside `ray job submit`): kdtune
        # opens no port of its own there; the cluster's ports are those `ray start` opened
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        where = f"cluster at {address}"
    else:
        # Dashboard off, and every Ray service bound to loopback, so an embedded run opens no
        # port another machine can reach. Ray binds its gRPC servers to the node IP; with
        # "cluster mode" off (Ray's switch for laptops) the node IP is 127.0.0.1.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray's child processes
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read by this process, already imported
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=False)
        where = "embedded Ray"
    stop_on_sigterm()
    log(f"Ray: {where}, {cluster_summary()[0]} ({time.perf_counter() - started:.1f}s)")


# ----------------------------------------------------------------------------- the study

class Study:
    """One run directory of one spec. ``run()`` runs (or continues) every stage."""

    def __init__(self, spec: StudySpec, run_dir: Path, spec_text: str | None = None,
                 log: Callable[[str], None] = _log, remote: str | None = None) -> None:
        """``run_dir``: the local run directory; with object storage, the staging copy of the
        run at the URI ``remote``, which gets each file again after every write."""
        self.spec, self.run_dir, self.log = spec, Path(run_dir), log
        self.spec_text = spec_text
        self.remote = remote
        self.location: Location = remote or self.run_dir  # what `kdtune resume` takes
        self._mirror = RunMirror(self.run_dir, remote) if remote else None
        self.store = ResultsStore(self.run_dir, after_flush=self._sync)
        self.splits: list[Splits] | None = None  # loaded by the driver, put in the object store
        self.plan: ResourcePlan | None = None  # resolved resources per role
        self._data_refs: list[Any] | None = None
        self._teacher_refs: dict[str, Any] = {}

    @classmethod
    def create(cls, spec: StudySpec, spec_text: str, log: Callable[[str], None] = _log,
               address: str | None = None) -> Study:
        """Check storage, datasets, the cluster and the resources the spec asks of it, then make
        the run directory: a check that fails leaves nothing behind."""
        check_storage(spec.storage)
        # kept for the run: trials get them through Ray's object store
        splits = [ds.load() for ds in spec.datasets]
        dataset_rows = check_datasets(spec, log, splits)
        _init_ray(address, log)
        if check_shared_storage(spec.storage) > 1:
            log(f"storage {spec.storage}: visible and writable from every node")
        plan = plan_resources(spec, splits, log)
        location = new_run_dir(spec)
        remote = str(location) if is_uri(location) else None
        run_dir = staging_dir(remote) if remote else Path(location)
        if remote:  # leftovers of an earlier run of that name are not this run's files
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        (run_dir / SPEC_FILE).write_text(spec_text)
        write_table_atomic(dataset_rows, DATASET_SCHEMA, run_dir / DATASETS_FILE)
        study = cls(spec, run_dir, spec_text, log, remote=remote)
        study.splits, study.plan = splits, plan
        study._write_meta("created")
        return study

    @classmethod
    def open(cls, run_dir: Location, log: Callable[[str], None] = _log) -> Study:
        """An existing run directory, for ``kdtune resume``: a path, or a URI whose kdtune
        files are first copied to a local staging folder (Tune's stay where they are)."""
        remote = str(run_dir).rstrip("/") if is_uri(run_dir) else None
        if remote:
            run_dir = staging_dir(remote)
            shutil.rmtree(run_dir, ignore_errors=True)  # the URI holds the run, not staging
            try:
                download_tree(remote, run_dir, skip=("tune",))
            except (OSError, ValueError) as error:
                raise StorageError(f"{remote}: cannot read it ({error})") from None
        run_dir = Path(run_dir).resolve()
        spec_file = run_dir / SPEC_FILE
        if not spec_file.exists():
            raise StorageError(f"{remote or run_dir}: not a kdtune run directory "
                               f"(no {SPEC_FILE})")
        meta = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).exists() else {}
        spec = parse_spec(yaml.safe_load(spec_file.read_text()), str(spec_file))
        parent = remote.rsplit("/", 1)[0] if remote else str(run_dir.parent)
        spec = spec.model_copy(update={"storage": meta.get("storage", parent)})
        if meta.get("datasets"):
            spec = spec.model_copy(update={"datasets": [DatasetSpec(**d) for d in meta["datasets"]]})
        return cls(spec, run_dir, spec_file.read_text(), log, remote=remote)

    @property
    def tune_dir(self) -> Location:
        """Tune's experiment folders: beside kdtune's files, at the URI for object storage."""
        return join(self.location, "tune")

    def _sync(self) -> None:
        """Copy the files that changed to the run's URI (nothing to do for a local run)."""
        if self._mirror is not None:
            self._mirror.sync()

    def _prepare(self, address: str | None) -> None:
        """Join Ray, load the datasets (a resumed run) and resolve resources for this cluster."""
        _init_ray(address, self.log)
        if self.splits is None:  # a resumed run: its datasets.parquet is already written
            self.splits = [ds.load() for ds in self.spec.datasets]
        if self.plan is None:
            check_shared_storage(self.spec.storage)
            self.plan = plan_resources(self.spec, self.splits, self.log)
        if self._data_refs is None:
            import ray

            # once per run: every stage's trials read the same objects, on any node
            self._data_refs = [ray.put(s) for s in self.splits]

    def _write_meta(self, status: str, **extra: Any) -> None:
        path = self.run_dir / RUN_FILE
        meta = json.loads(path.read_text()) if path.exists() else {}
        meta.update({"study": self.spec.study, "status": status, "storage": self.spec.storage,
                     "datasets": [d.model_dump() for d in self.spec.datasets],
                     "host": socket.gethostname(), "platform": platform.platform(),
                     "python": platform.python_version(),
                     "updated_at": dt.datetime.now().isoformat(timespec="seconds")}, **extra)
        meta.setdefault("created_at", meta["updated_at"])
        _write_json_atomic(meta, path)
        self._sync()

    # --- stages -------------------------------------------------------------------------
    def _teachers(self, model: str = "teacher") -> dict[int, tuple[str, Location]]:
        """Train (or reuse) the pretrained models of one spec architecture: ``teacher``, or
        ``student`` for the pretrained copy of the student that teaches self/reversed."""
        from kdtune.trainables import train_teacher

        spec = self.spec
        method = PRETRAINED[model]
        stage = "teachers" if model == "teacher" else "teachers-student"
        arch = spec.teacher.arch if model == "teacher" else spec.student.arch
        out, to_train = {}, []
        for index, ds in enumerate(spec.datasets):
            tid = spec.teacher_id(ds, model)
            path = teacher_path(spec.storage, tid)
            out[index] = (tid, path)
            if exists(path):
                self.log(f"{method} {tid}: reusing {path}")
                self._record_reused_teacher(index, tid, path, method, stage)
            elif index not in [i for i, _ in to_train] and tid not in [t for _, t in to_train]:
                to_train.append((index, tid))
        if to_train:
            self.log(f"stage {stage}: training {len(to_train)} {method} model(s) "
                     f"({arch}, {spec.training.teacher_epochs} epochs)")
            jobs = [{"dataset_index": i, "method": method, "role": "teacher",
                     "seed": spec.teacher_seed, "teacher_id": tid,
                     "teacher_path": str(out[i][1]),
                     **self._cpus_gpus(method)} for i, tid in to_train]
            from ray import tune

            callback = _tune_callback(self.store, spec, stage, "teacher", len(jobs), self.log)
            _fit(train_teacher, spec, self.tune_dir, stage,
                 {"job": tune.grid_search(jobs)}, 1, callback, plan=self.plan,
                 data=self._data_refs)
            missing = [tid for i, tid in to_train if not exists(out[i][1])]
            if missing:
                raise StudyError(f"teacher training failed for {', '.join(missing)}; "
                                 f"see {self.run_dir / 'trials.parquet'} (column failure)")
        return out

    def _cpus_gpus(self, method: str) -> dict[str, float]:
        """The resolved resources a trial's config carries (threads, device) for ``method``."""
        trial = self.plan.for_method(method)
        return {"cpus": trial.cpus, "gpus": trial.gpus}

    def _record_reused_teacher(self, index: int, tid: str, path: Location,
                               method: str = "teacher", stage: str = "teachers") -> None:
        trial_id = f"{stage}:reused:{tid}"
        if any(r["trial_id"] == trial_id or (r["role"] == "teacher" and r["teacher_id"] == tid)
               for r in self.store.trials):
            return  # this run trained it (and was resumed), or already recorded its reuse
        state = load_torch(path)
        self.store.finish_trial({
            "study": self.spec.study, "run_id": self.run_dir.name, "stage": stage,
            "trial_id": trial_id, "dataset": self.spec.datasets[index].label,
            "method": method, "role": "teacher", "seed": self.spec.teacher_seed,
            "lr": self.spec.training.lr, "config_json": json.dumps({"reused": str(path)}),
            "val_acc": state.get("val_acc"), "test_acc": state.get("test_acc"),
            "epochs_run": self.spec.training.teacher_epochs,
            "epochs_budget": self.spec.training.teacher_epochs, "status": "reused",
            "wall_s": 0.0, "teacher_id": tid, **row_columns(self.spec, method, {})})

    def _search_part(self, index: int, method: str,
                     teachers: dict[int, tuple[str, Location]]) -> SearchPart:
        """The Optuna search of one (dataset, method), as much of it as is not done yet;
        ``teachers``: the pretrained models that teach ``method``, by dataset index."""
        from kdtune.multisearch import SearchPart
        from kdtune.search import make_searcher, search_trials

        spec, ds = self.spec, self.spec.datasets[index]
        stage = stage_name("search", ds.label, method)
        done = [r for r in self.store.trials if r["stage"] == stage]
        trials = search_trials(spec, method)
        remaining = max(0, trials - len(done))
        if remaining:
            self.log(f"stage {stage}: {remaining} Optuna trial(s)"
                     + (f" ({len(done)} already done)" if done else ""))
        else:
            self.log(f"stage {stage}: all {trials} trials already in the results")
        searcher = make_searcher(spec, method, self.run_dir / "optuna" / "journal.log",
                                 stage, seed=spec.search.sampler_seed + index)
        teacher = teachers.get(index, ("", Path()))
        constants = {"dataset_index": index, "method": method, "role": "search",
                     "seed": spec.final.seeds[0], "teacher_id": teacher[0],
                     "teacher_path": str(teacher[1]), **self._cpus_gpus(method)}
        return SearchPart(stage, searcher, remaining, constants,
                          finals=lambda: self._final_jobs(index, method, teachers))

    def _final_jobs(self, index: int, method: str,
                    teachers: dict[int, tuple[str, Location]]) -> list[dict[str, Any]]:
        """The best search trial of (dataset, method) (on validation), retrained on each seed
        not yet finished; called once that search is done."""
        spec, ds = self.spec, self.spec.datasets[index]
        best = best_search_trial(self.store.trials, ds.label, method)
        if best is None:
            self.log(f"final: no finished search trial for {ds.label} {method}; skipped")
            return []
        config = {k: v for k, v in json.loads(best["config_json"]).items()
                  if k in ("alpha", "tau", "hint_layer", "beta", "lr", "augmentation", "aug_share")}
        jobs = [config | {"dataset_index": index, "method": method, "role": "final",
                          "stage": "final", "seed": seed,
                          "teacher_id": teachers.get(index, ("", ""))[0],
                          "teacher_path": str(teachers.get(index, ("", ""))[1]),
                          "selected_from": best["trial_id"], **self._cpus_gpus(method)}
                for seed in spec.final.seeds
                if not self.store.finished(role="final", dataset=ds.label, method=method,
                                           seed=seed)]
        if jobs:
            self.log(f"final {ds.label} {method}: {best['trial_id']} (val "
                     f"{best['val_acc']:.1f}%) on seeds {[j['seed'] for j in jobs]}")
        return jobs

    def _students(self, teachers: dict[str, dict[int, tuple[str, Location]]]) -> None:
        """Every search, and the final runs of each search's best config, in one Tuner: no
        stage barrier, and trial workers stay warm from the first search to the last run.
        ``teachers``: the pretrained models by source (``teacher``, ``student``), then index."""
        from kdtune.multisearch import PerStageASHA, StudySearcher
        from kdtune.trainables import train_student

        spec = self.spec
        parts = [self._search_part(index, method,
                                   teachers.get(METHOD_INFO[method].taught_by or "", {}))
                 for index in range(len(spec.datasets)) for method in spec.methods]
        finals = sum(1 for index, ds in enumerate(spec.datasets) for method in spec.methods
                     for seed in spec.final.seeds
                     if not self.store.finished(role="final", dataset=ds.label, method=method,
                                                seed=seed))
        searches = sum(p.trials for p in parts)
        if not searches and not finals:
            self.log("stage final: nothing left to run")
            return
        self.log(f"stage final: up to {finals} trainings (best config per dataset and method "
                 f"x seeds {spec.final.seeds}), each search's as soon as it is done")
        expected = {p.stage: p.trials for p in parts} | {"final": finals}
        callback = _tune_callback(self.store, spec, "final", "final", expected, self.log)
        asha = _asha(spec)
        _fit(train_student, spec, self.tune_dir, "students", {}, searches + finals, callback,
             searcher=StudySearcher(parts),
             scheduler=PerStageASHA(lambda: _asha(spec)) if asha else None, plan=self.plan,
             data=self._data_refs, teachers=self._teacher_refs)

    def run(self, address: str | None = None) -> Path:
        """Run every stage not yet done; write gains and the report; return the run directory."""
        from kdtune.report import build_report

        started = time.perf_counter()
        self.log(f"run directory: {self.location}"
                 + (f" (staged in {self.run_dir})" if self.remote else ""))
        self._write_meta("running")
        try:
            self._prepare(address)
            self._write_meta("running", resources={role: r.__dict__ for role, r in
                                                   self.plan.roles.items()},
                             gpu_fit=self.plan.measured or None)
            # the spec's teacher, and a pretrained student-architecture model for self/reversed
            teachers = {model: self._teachers(model) for model in teacher_sources(self.spec)}
            self._teacher_refs = _put_teachers(teachers)
            self._students(teachers)
        except BaseException:
            self._write_meta("interrupted")
            raise
        gains = compute_gains(self.store.trials)
        write_table_atomic(gains, GAIN_SCHEMA, self.run_dir / GAINS_FILE)
        report = build_report(self.run_dir)
        wall = time.perf_counter() - started
        self._write_meta("finished", wall_s=round(wall, 1))
        self.log(summary(self.store.trials, gains, wall))
        self.log(f"report: {report}")
        return self.run_dir


def plan_resources(spec: StudySpec, splits: list[Splits],
                   log: Callable[[str], None] = _log) -> ResourcePlan:
    """Each role's resources on the connected cluster (``gpus: fit`` measures here)."""
    train_teacher = not all(exists(teacher_path(spec.storage, spec.teacher_id(ds, model)))
                            for ds in spec.datasets for model in teacher_sources(spec))
    shapes = [Shape(s.channels, s.image_size, s.num_classes, splits_bytes(s)) for s in splits]
    plan = resolve(spec, roles_needed(spec, train_teacher), ClusterView.from_ray(), shapes,
                   log=log)
    log(f"resources per trial: {plan.describe()}")
    return plan


def splits_bytes(splits: Splits) -> int:
    """Bytes a trial's copy of a dataset's splits takes on its device."""
    return sum(getattr(splits, k).nbytes for k in ("train_x", "train_y", "val_x", "val_y",
                                                    "test_x", "test_y"))


def _put_teachers(teachers: dict[str, dict[int, tuple[str, Location]]]) -> dict[str, Any]:
    """Each pretrained model's weights, once in the object store: student trials on any node
    read them from there, not from the teacher store (a path or a URI)."""
    import ray

    paths = {tid: path for source in teachers.values() for tid, path in source.values()}
    return {tid: ray.put(load_torch(path))
            for tid, path in paths.items()}


def summary(trials: list[dict[str, Any]], gains: list[dict[str, Any]], wall_s: float) -> str:
    counts: dict[str, int] = {}
    for r in trials:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [f"done in {wall_s:.0f}s: {len(trials)} trials ("
             + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"]
    for g in gains:
        if g["method"] == "scratch" or not g.get("baseline"):
            lines.append(f"  {g['dataset']:<16} {g['method']:<8} test {g['test_acc_mean']:.2f}% "
                         f"over {g['n_seeds']} seeds")
        else:
            vs = "" if g["baseline"] == "scratch" else f" vs {g['baseline']}"
            lines.append(f"  {g['dataset']:<16} {g['method']:<8} test {g['test_acc_mean']:.2f}%"
                         f"  gain {g['gain_pts']:+.2f} pts  95% CI [{g['gain_ci_low']:+.2f}, "
                         f"{g['gain_ci_high']:+.2f}]{vs}")
        if g.get("omitted_class_acc_mean") is not None:
            lines[-1] += f"  (class {g['omitted_class']}: {g['omitted_class_acc_mean']:.1f}%)"
    return "\n".join(lines)


def load_trials(run_dir: Path) -> list[dict[str, Any]]:
    return read_rows(Path(run_dir) / "trials.parquet")


__all__ = ["Study", "StorageError", "StudyError", "DatasetUnavailable", "resolve_paths",
           "summary"]
