"""One study on Ray Tune, as a plan of stages: teachers (trained once per dataset and reused
across runs), one Optuna search per (dataset, method), then the final evaluation of each best
config over the spec's seeds.

A stage is skipped, or shortened, by what the Parquet files already hold, so ``kdtune resume
RUN_DIR`` (or a crash followed by a resume) reruns no finished trial. The layers below it: the
run directory (:mod:`kdtune.rundir`), the checks before anything is written
(:mod:`kdtune.preflight`), the Ray session and its signals (:mod:`kdtune.session`), a stage as a
Tuner (:mod:`kdtune.tuner`), the recorder callback (:mod:`kdtune.recorder`), console lines
(:mod:`kdtune.console`).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdtune import console, methods, teacher_recipe, teacher_store, tracking
from kdtune.cluster import check_shared_storage
from kdtune.data import Splits
from kdtune.finals import done_seeds, required_seeds
from kdtune.hparams import Hyperparams
from kdtune.job import TrialJob
from kdtune.preflight import (
    check_datasets,
    check_search_storage,
    check_storage,
    checked_teacher,
    remove_made_folders,
    repair_journal,
)
from kdtune.progress import Progress, plan_from_spec
from kdtune.recorder import Recorder
from kdtune.resources import ClusterView, ResourcePlan, Shape, resolve, roles_needed
from kdtune.results import FinalSettings, best_search_trial, compute_gains, compute_trends
from kdtune.rundir import (
    DATASET_SCHEMA,
    DATASETS_FILE,
    EPOCH_SCHEMA,
    GAIN_SCHEMA,
    GAINS_FILE,
    JOURNAL_FILE,
    RUN_FILE,
    SPEC_FILE,
    TREND_SCHEMA,
    TRENDS_FILE,
    TRIALS_FILE,
    ResultsStore,
    RunFileError,
    first_line,
    new_run_dir,
    read_meta,
    read_rows,
    write_json_atomic,
    write_table_atomic,
    write_text_atomic,
)
from kdtune.search import copy_searches_to_journal
from kdtune.session import init_ray
from kdtune.spec import DatasetSpec, SpecError, StudySpec, parse_spec
from kdtune.storage import (
    Location,
    RunMirror,
    StorageError,
    download_tree,
    exists,
    is_uri,
    join,
    load_torch,
    staging_dir,
)
from kdtune.trainables import teacher_path
from kdtune.tuner import fit_stage, stage_name, stopping_scheduler
from kdtune.warm_start import WarmConfig, choose_warm_start, read_warm_start, write_warm_start

if TYPE_CHECKING:
    from kdtune.multisearch import SearchPart


class StudyError(RuntimeError):
    """A stage the rest of the study depends on failed (e.g. no teacher could be trained)."""


class Study:
    """One run directory of one spec. ``run()`` runs (or continues) every stage."""

    def __init__(self, spec: StudySpec, run_dir: Path, spec_text: str | None = None,
                 log: Callable[[str], None] = console.log, remote: str | None = None,
                 progress: Progress | None = None) -> None:
        """``run_dir``: the local run directory; with object storage, the staging copy of the
        run at the URI ``remote``, which gets each file again after every write. ``progress``:
        where the study's lines go (default: ``log``, plain lines)."""
        self.progress = progress or Progress("plain", write=log)
        self.spec, self.run_dir, self.log = spec, Path(run_dir), self.progress.log
        self.spec_text = spec_text
        self.remote = remote
        self.location: Location = remote or self.run_dir  # what `kdtune resume` takes
        self._mirror = RunMirror(self.run_dir, remote) if remote else None
        self.store = ResultsStore(self.run_dir, after_flush=self._sync)
        self.splits: list[Splits] | None = None  # loaded by the driver, put in the object store
        self.plan: ResourcePlan | None = None  # resolved resources per role
        self._data_refs: list[Any] | None = None
        self._pool_refs: list[Any] | None = None  # final.resplit: the images before splitting
        self._teacher_refs: dict[str, Any] = {}
        self._said: set[tuple] = set()
        # the pretrained models this study claimed (renewed while the students' Tuner runs),
        # those another study is training, with when to look again and who holds them
        self._claims: dict[str, teacher_store.Claim] = {}
        self._waiting: dict[str, float] = {}
        self._holders: dict[str, dict[str, Any]] = {}
        # the spec's pretrained models not stored when the study began (id -> dataset index,
        # model): trained inside the students' Tuner, or waited for; those whose trial ended;
        # those whose training failed
        self._unready: dict[str, tuple[int, str]] = {}
        self._ended: set[str] = set()
        self._pending_memo: tuple[tuple, list[dict[str, Any]]] | None = None
        self._failed: list[str] = []
        self._parts: list[Any] = []  # the students' Tuner's searches (SearchPart)
        self._said_training: set[str] = set()
        self.trackers: tracking.Trackers | None = None  # opened when the run starts
        # each search stage's warm-start configs (kdtune.warm_start), chosen when it started
        self.warm: dict[str, list[WarmConfig]] = {}

    @classmethod
    def create(cls, spec: StudySpec, spec_text: str, log: Callable[[str], None] = console.log,
               address: str | None = None, progress: Progress | None = None) -> Study:
        """Check storage, datasets, the cluster and the resources the spec asks of it, then make
        the run directory: a check that fails leaves nothing behind."""
        progress = progress or Progress("plain", write=log)
        log = progress.log
        made = check_storage(spec.storage)
        try:
            check_search_storage(spec)
            tracking.check(spec)
            # kept for the run: trials get them through Ray's object store
            splits = [ds.load() for ds in spec.datasets]
            dataset_rows = check_datasets(spec, log, splits)
            complexity = {row["dataset"]: row.get("complexity_score") for row in dataset_rows}
            warm = choose_warm_start(spec, {stage_name("search", ds.label, method):
                                            (method, complexity.get(ds.label))
                                            for ds in spec.datasets for method in spec.methods},
                                     log)
            init_ray(address, log)
            if check_shared_storage(spec.storage) > 1:
                log(f"storage {spec.storage}: visible and writable from every node")
            plan = plan_resources(spec, splits, log)
        except BaseException:  # Ctrl-C included: the storage folder this run made goes too
            remove_made_folders(spec.storage, made)
            raise
        location = new_run_dir(spec.storage, spec.study)
        remote = str(location) if is_uri(location) else None
        run_dir = staging_dir(remote) if remote else Path(location)
        if remote:  # leftovers of an earlier run of that name are not this run's files
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)  # a local run directory: made by new_run_dir
        write_text_atomic(spec_text, run_dir / SPEC_FILE)
        write_table_atomic(dataset_rows, DATASET_SCHEMA, run_dir / DATASETS_FILE)
        write_warm_start(warm, run_dir)
        study = cls(spec, run_dir, spec_text, log, remote=remote, progress=progress)
        study.splits, study.plan, study.warm = splits, plan, warm
        study._write_meta("created")
        return study

    @classmethod
    def open(cls, run_dir: Location, log: Callable[[str], None] = console.log,
             progress: Progress | None = None) -> Study:
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
        read_rows(run_dir / DATASETS_FILE)  # a damaged one is refused before anything runs
        meta, meta_damage = read_meta(run_dir / RUN_FILE)
        if meta_damage:  # rewritten below: the run's status and machine, nothing else
            (progress or Progress("plain", write=log)).log(
                f"{run_dir / RUN_FILE}: damaged ({meta_damage}); written anew")
        try:
            spec_text = spec_file.read_text(encoding="utf-8")
            spec = parse_spec(yaml.safe_load(spec_text), str(spec_file))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, SpecError) as error:
            raise RunFileError(f"{spec_file}: damaged, cannot read it ({first_line(error)}); "
                               "restore it from the spec the run was started with") from None
        parent = remote.rsplit("/", 1)[0] if remote else str(run_dir.parent)
        spec = spec.model_copy(update={"storage": meta.get("storage", parent)})
        if meta.get("datasets"):
            spec = spec.model_copy(update={"datasets": [DatasetSpec(**d) for d in meta["datasets"]]})
        tracking.check(spec)  # a new run checks in create()
        study = cls(spec, run_dir, spec_text, log, remote=remote, progress=progress)
        study.warm = read_warm_start(run_dir)  # the configs it chose when it started
        return study

    @property
    def tune_dir(self) -> Location:
        """Tune's experiment folders: beside kdtune's files, at the URI for object storage."""
        return join(self.location, "tune")

    def _sync(self, parts: list[Path] | None = None) -> None:
        """Copy the files that changed, and the new ``parts`` of the results, to the run's URI
        (nothing to do for a local run)."""
        if self._mirror is not None:
            self._mirror.sync(parts)

    def _prepare(self, address: str | None) -> None:
        """Join Ray, load the datasets (a resumed run) and resolve resources for this cluster."""
        init_ray(address, self.log)
        if self.splits is None:  # a resumed run: its datasets.parquet is already written
            self.splits = [ds.load() for ds in self.spec.datasets]
        if self.plan is None:
            check_shared_storage(self.spec.storage)
            self.plan = plan_resources(self.spec, self.splits, self.log)
        if self._data_refs is None:
            import ray

            # once per run: every stage's trials read the same objects, on any node
            self._data_refs = [ray.put(s) for s in self.splits]
            if self.spec.final.resplit:  # each final seed splits these its own way
                self._pool_refs = [ray.put(ds.load_pool()) for ds in self.spec.datasets]

    def _plan_progress(self) -> None:
        """The status line's totals and time left (live progress only)."""
        if self.progress.mode != "live":
            return
        import ray

        plan_from_spec(self.progress, self.spec, self.store.finished(),
                       ray.cluster_resources().get("CPU", 1.0))

    def _write_meta(self, status: str, **extra: Any) -> None:
        path = self.run_dir / RUN_FILE
        meta, _ = read_meta(path)
        meta.update({"study": self.spec.study, "status": status, "storage": self.spec.storage,
                     "datasets": [d.model_dump() for d in self.spec.datasets],
                     "host": socket.gethostname(), "platform": platform.platform(),
                     "python": platform.python_version(),
                     "updated_at": dt.datetime.now().isoformat(timespec="seconds")}, **extra)
        meta.setdefault("created_at", meta["updated_at"])
        write_json_atomic(meta, path)
        self._sync()

    # --- stages -------------------------------------------------------------------------
    def _teachers(self, model: str = "teacher") -> dict[int, tuple[str, Location]]:
        """The pretrained models of one spec architecture, by dataset index: ``teacher``, or
        ``student`` for the pretrained copy of the student that teaches self/reversed.

        One teacher, one training, across studies. A stored one is reused (and recorded as
        such); the others go to ``_unready``, and the students' Tuner trains them (as its
        first trials, each claimed in the teacher store before its training) or waits for the
        study that holds their claim (:meth:`_teacher_jobs`). No Tune run of their own: a
        teachers stage cost a cold start of every trial worker (~11 s of a tiny study's 50 s,
        measured 2026-12-04), and the searches of methods that need no teacher wait for none."""
        method = methods.PRETRAINED[model]
        stage = _teacher_stage(model)
        out: dict[int, tuple[str, Location]] = {}
        for index, ds in enumerate(self.spec.datasets):
            tid = self.spec.teacher_id(ds, model)
            path = teacher_path(self.spec.storage, tid)
            out[index] = (tid, path)
            if tid in self._unready:
                continue
            if self._stored(index, model, path):  # checked once (plan_resources)
                self.log(f"{method} {tid}: reusing {path}")
                self._record_reused_teacher(index, tid, path, method, stage)
            else:
                self._unready[tid] = (index, model)
        return out

    def _stored(self, index: int, model: str, path: Location) -> bool:
        """A stored teacher is there and is what was stored (hashed once per study)."""
        ds = self.spec.datasets[index]
        return checked_teacher(path, self.log, teacher_recipe.recipe(self.spec, ds, model),
                               ds.label) is not None

    def _teacher_jobs(self) -> list[dict[str, Any]]:
        """The trainings of the spec's pretrained models this study holds the claim of and has
        not trained yet: the students' Tuner hands these out before any search trial (each
        once). Called again whenever the Tuner asks for a trial: a teacher another study
        trains is looked for every poll interval, reused once stored, and claimed here when
        that study's claim goes stale or is dropped; one whose trial ended without storing it
        failed, and the searches it teaches are skipped."""
        jobs = []
        for tid, (index, model) in list(self._unready.items()):
            path = teacher_path(self.spec.storage, tid)
            method = methods.PRETRAINED[model]
            if tid in self._claims and tid not in self._ended:
                jobs.append(self._teacher_job(tid, index, model, path))
                continue  # its trial's end says whether it is stored
            if time.time() < self._waiting.get(tid, 0.0):
                continue  # another study's: looked at again every poll interval
            if self._teacher_ready(tid, path, method):
                del self._unready[tid]
                if tid not in self._claims:  # trained by another study
                    self._record_reused_teacher(index, tid, path, method, _teacher_stage(model))
            elif tid in self._claims:
                self._teacher_failed(tid, method)
            elif self._claim_teacher(tid, path, method):
                jobs.append(self._teacher_job(tid, index, model, path))
        return jobs

    def _teacher_job(self, tid: str, index: int, model: str, path: Location) -> dict[str, Any]:
        method = methods.PRETRAINED[model]
        if tid not in self._said_training:
            self._said_training.add(tid)
            arch = self.spec.teacher.arch if model == "teacher" else self.spec.student.arch
            self.log(f"stage {_teacher_stage(model)}: training {method} {tid} ({arch}, "
                     f"{self.spec.training.teacher_epochs} epochs)")
        return TrialJob(_teacher_stage(model), "teacher", index, method, self.spec.teacher_seed,
                        teacher_id=tid, teacher_path=str(path),
                        **self._cpus_gpus(method)).to_config()

    def _job_ended(self, job: dict[str, Any], error: bool) -> None:
        """A trial the students' Tuner handed out (not a search's) ended: a teacher's is
        looked at the next time the Tuner asks for a trial."""
        if job.get("role") == "teacher" and job.get("teacher_id"):
            self._ended.add(str(job["teacher_id"]))

    def _teacher_failed(self, tid: str, method: str) -> None:
        """A pretrained model's trial ended without storing it: its claim is dropped (another
        study may train it), and the searches it would teach run no trial."""
        del self._unready[tid]
        self._failed.append(tid)
        claim = self._claims[tid]
        if not claim.lost:
            claim.lost = True
            teacher_store.release(claim)
        skipped = [p.stage for p in self._parts if p.constants.get("teacher_id") == tid]
        for part in self._parts:
            if part.stage in skipped:
                part.trials = part.suggested
        self.log(f"{method} {tid}: its training failed; skipped "
                 f"{', '.join(skipped) or 'nothing'}")

    def _recorder(self, stage: str, role: str, expected: int | dict[str, int]) -> Recorder:
        epoch_columns = tuple(f.name for f in EPOCH_SCHEMA if f.name not in (
            "study", "run_id", "trial_id", "dataset", "method", "role", "seed"))
        return Recorder(self.store, self.spec, stage, role, expected, self.log, epoch_columns,
                        progress=self.progress, trackers=self.trackers)

    def _cpus_gpus(self, method: str) -> dict[str, float]:
        """The resolved resources a trial's config carries (threads, device) for ``method``."""
        trial = self.plan.for_method(method)
        return {"cpus": trial.cpus, "gpus": trial.gpus}

    def _check_journal(self) -> None:
        """A damaged Optuna journal is repaired or kept aside before any search reads it."""
        repair_journal(self.run_dir / JOURNAL_FILE, self.log)

    def _record_reused_teacher(self, index: int, tid: str, path: Location,
                               method: str = "teacher", stage: str = "teachers") -> None:
        trial_id = f"{stage}:reused:{tid}"
        if any(r["trial_id"] == trial_id or (r["role"] == "teacher" and r["teacher_id"] == tid)
               for r in self.store.trials):
            return  # this run trained it (and was resumed), or already recorded its reuse
        ds = self.spec.datasets[index]
        state = checked_teacher(path, self.log,
                                teacher_recipe.recipe(self.spec, ds, teacher_store.model_of(
                                    method)), ds.label) or {}
        arch, _ = methods.trial_models(self.spec, method)
        self.store.finish_trial({
            "study": self.spec.study, "run_id": self.run_dir.name, "stage": stage,
            "trial_id": trial_id, "dataset": self.spec.datasets[index].label,
            "method": method, "role": "teacher", "seed": self.spec.teacher_seed,
            "lr": self.spec.training.lr, "config_json": json.dumps({"reused": str(path)}),
            "val_acc": state.get("val_acc"), "test_acc": state.get("test_acc"),
            "epochs_run": self.spec.training.teacher_epochs,
            "epochs_budget": self.spec.training.teacher_epochs, "status": "reused",
            "wall_s": 0.0, "teacher_id": tid, "arch": arch.label, "teacher_arch": None})

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
        searcher = make_searcher(spec, method, self.run_dir / JOURNAL_FILE,
                                 stage, seed=spec.search.sampler_seed + index,
                                 run_id=self.run_dir.name,
                                 warm=[{"source": c.source, "config": c.config}
                                       for c in self.warm.get(stage, [])])
        teacher = teachers.get(index, ("", Path()))
        constants = TrialJob(stage, "search", index, method, spec.final.seeds[0],
                             teacher_id=teacher[0], teacher_path=str(teacher[1]),
                             **self._cpus_gpus(method)).to_config()
        return SearchPart(stage, searcher, remaining, constants,
                          ready=lambda: teacher[0] not in self._unready)

    def _pending(self, searched: set[str]) -> list[dict[str, Any]]:
        """What the study needs now, given the searches that are done: each search's best
        config (on validation) retrained on every seed its comparison asks for so far
        (:mod:`kdtune.finals`), and under ``final.resplit`` the teacher of each seed's split
        first. Called again whenever a trial ends."""
        # Tune asks for a trial at every turn of its loop while the slots are full (2.2 s of
        # the samples of a py-spy profile of the quickstart's driver, 2026-12-06); the answer
        # changes only when a trial is recorded or a teacher's state does. Not cached while
        # waiting for another study's teacher: that is looked at on a clock
        if self._waiting or self.spec.final.resplit:
            return self._needed(searched)
        key = (self.store.revision, frozenset(searched), frozenset(self._unready),
               frozenset(self._claims), frozenset(self._ended))
        if self._pending_memo is None or self._pending_memo[0] != key:
            self._pending_memo = (key, self._needed(searched))
        return list(self._pending_memo[1])

    def _needed(self, searched: set[str]) -> list[dict[str, Any]]:
        """:meth:`_pending`, computed from the rows."""
        spec, rows = self.spec, self.store.trials
        needed = required_seeds(spec, rows)
        jobs: dict[tuple, TrialJob] = {}
        for index, ds in enumerate(spec.datasets):
            for method in spec.methods:
                if stage_name("search", ds.label, method) not in searched:
                    continue
                best = best_search_trial(rows, ds.label, method)
                if best is None:
                    self._say_once(("none", ds.label, method), f"final: no finished search "
                                   f"trial for {ds.label} {method}; skipped")
                    continue
                # the selected trial's config as it ran: json, since a row's hyperparameter
                # columns hold the budget's effective values, which it did not all set
                hp = Hyperparams.from_mapping(json.loads(best["config_json"]))
                done = done_seeds(rows, ds.label, method)
                todo = [seed for seed in needed[(ds.label, method)] if seed not in done]
                if todo:
                    # once per round (the seeds it needs), not again as each seed ends
                    self._say_once(("final", ds.label, method,
                                    tuple(needed[(ds.label, method)])),
                                   f"final {ds.label} {method}: {best['trial_id']} (val "
                                   f"{best['val_acc']:.1f}%) on seeds {todo}")
                for seed in todo:
                    job = self._final_job(index, method, seed, hp, best["trial_id"])
                    if job is not None:  # None: its split's teacher is another study's to train
                        jobs[job.key()] = job
        return [j.to_config() for j in jobs.values()]

    def _final_job(self, index: int, method: str, seed: int, hp: Hyperparams,
                   selected_from: str) -> TrialJob | None:
        """The final run of ``method`` on ``seed``; under ``final.resplit``, on that seed's
        split and taught by that split's teacher, or that teacher's training if it is not
        stored yet and this study could claim it (None: another study is training it)."""
        spec = self.spec
        source = methods.get(method).taught_by
        split_seed = spec.datasets[index].resplit(seed).split_seed if spec.final.resplit \
            else None
        teacher_id, path = "", ""
        if source is not None:
            ds = spec.datasets[index].resplit(seed) if split_seed is not None \
                else spec.datasets[index]
            teacher_id = spec.teacher_id(ds, source)
            path = teacher_path(spec.storage, teacher_id)
            if teacher_id in self._unready:
                return None  # the spec's own teacher, trained (or awaited) first
            pretrained = methods.PRETRAINED[source]
            if not self._teacher_ready(teacher_id, path, pretrained):
                if not self._claim_teacher(teacher_id, path, pretrained):
                    return None
                return TrialJob("teachers-resplit", "teacher", index, pretrained,
                                spec.teacher_seed, teacher_id=teacher_id,
                                teacher_path=str(path), split_seed=split_seed,
                                **self._cpus_gpus(pretrained))
        return TrialJob("final", "final", index, method, seed, hp, teacher_id, str(path),
                        selected_from=selected_from, split_seed=split_seed,
                        **self._cpus_gpus(method))

    def _teacher_ready(self, teacher_id: str, path: Location, method: str = "teacher") -> bool:
        """A pretrained model is stored; one another study trained counts once its record is
        written too (after ``teacher.pt``). This study's claim on it is dropped then."""
        if not exists(path) or (teacher_id in self._waiting
                                and not exists(teacher_store.record_path(path))):
            return False
        if self._waiting.pop(teacher_id, None) is not None:
            by = self._holders.pop(teacher_id, None) or {}
            self.log(f"{method} {teacher_id}: reusing {path} (trained by run "
                     f"{by.get('run_id', '?')})")
        claim = self._claims.get(teacher_id)
        if claim is not None and not claim.lost:
            claim.lost = True  # the heartbeat passes over it from now on
            teacher_store.release(claim)
        return True

    def _claim_teacher(self, teacher_id: str, path: Location, method: str = "teacher") -> bool:
        """Claim a pretrained model before training it: False while another study's live
        claim holds it (looked at again every poll interval; a stale one is taken over, and
        one dropped without a teacher is claimed here)."""
        if teacher_id in self._claims:
            return True
        if time.time() < self._waiting.get(teacher_id, 0.0):
            return False
        claim, holder = teacher_store.acquire(path, teacher_id, self.run_dir.name)
        if claim is None:
            self._waiting[teacher_id] = time.time() + teacher_store.poll_every()
            self._holders[teacher_id] = holder or {}
            self._say_once(("wait", teacher_id, (holder or {}).get("token")),
                           f"waiting for {method} {teacher_id}, being trained by run "
                           f"{_holder(holder or {})}")
            return False
        waited = self._waiting.pop(teacher_id, None) is not None
        self._holders.pop(teacher_id, None)
        if holder is not None:  # a stale claim, or this run's own from a killed process
            self.log(f"{method} {teacher_id}: took over the claim of run {_holder(holder)}, "
                     f"whose heartbeat stopped "
                     f"{time.time() - float(holder.get('heartbeat', 0)):.0f} s ago")
        elif waited:
            self.log(f"{method} {teacher_id}: its claim was dropped without a teacher (that "
                     "study's training failed or stopped); training it here")
        self._claims[teacher_id] = claim
        return True

    def _say_once(self, key: tuple, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log(message)

    def _students(self, teachers: dict[str, dict[int, tuple[str, Location]]]) -> None:
        """Every search, and the final runs of each search's best config, in one Tuner: no
        stage barrier, and trial workers stay warm from the first search to the last run.
        ``teachers``: the pretrained models by source (``teacher``, ``student``), then index."""
        from kdtune.multisearch import PerStageASHA, StudySearcher
        from kdtune.trainables import train

        spec = self.spec
        parts = self._parts = [
            self._search_part(index, method,
                              teachers.get(methods.get(method).taught_by or "", {}))
            for index in range(len(spec.datasets)) for method in spec.methods]
        searches = sum(p.trials for p in parts)
        first = {(ds.label, m): spec.final.seeds for ds in spec.datasets for m in spec.methods}
        finals = sum(1 for (label, m), seeds in first.items()
                     for seed in seeds if seed not in done_seeds(self.store.trials, label, m))
        rounds = spec.final.target_halfwidth is not None
        if not searches and not self._unready and not self._pending({p.stage for p in parts}) \
                and not self._waiting:
            self.log("stage final: nothing left to run")
            return
        if rounds:
            self.log(f"stage final: best config per dataset and method on seeds "
                     f"{spec.final.seeds}, then more seeds, round by round, for every "
                     f"comparison whose 95% interval is wider than +-"
                     f"{spec.final.target_halfwidth:g} points (at most {spec.final.max_seeds}"
                     f" seeds, at least {min(spec.final.min_seeds, spec.final.max_seeds)})")
        else:
            self.log(f"stage final: up to {finals} trainings (best config per dataset and "
                     f"method x seeds {spec.final.seeds}), each search's as soon as it is done")
        if spec.final.resplit:
            self.log("final: every seed re-draws the train/val/test split (final.resplit), "
                     "with a teacher of its own per split")
        expected: dict[str, int | None] = {p.stage: p.trials for p in parts}
        expected |= {"final": None if rounds else finals, "teachers-resplit": None}
        for _, model in self._unready.values():
            expected[_teacher_stage(model)] = expected.get(_teacher_stage(model), 0) + 1
        callback = self._recorder("final", "final", expected)
        most = len(spec.final.all_seeds())
        bound = searches + len(spec.datasets) * most * (
            len(spec.methods) + (len(methods.teacher_sources(spec)) if spec.final.resplit
                                 else 0))
        bound += len(self._unready)
        # the teachers claimed as the Tuner asks for trials are renewed while it runs, and
        # dropped when it ends, however it ends
        with teacher_store.Heartbeat(self._claims.values(), self.log):
            fit_stage(train, spec, self.tune_dir, "students", {}, bound, callback,
                      searcher=StudySearcher(parts, self._pending,
                                             lambda c: TrialJob.from_config(c).key(),
                                             waiting=lambda: bool(self._waiting
                                                                  or self._unready),
                                             first=self._teacher_jobs, ended=self._job_ended),
                      scheduler=(PerStageASHA(lambda: stopping_scheduler(spec))
                                 if spec.scheduler.rule != "none" else None),
                      plan=self.plan, data=self._data_refs, teachers=self._teacher_refs,
                      pools=self._pool_refs)
        if self._failed:
            raise StudyError(f"teacher training failed for {', '.join(self._failed)}; see "
                             f"{self.run_dir / 'trials.parquet'} (column failure)")

    def run(self, address: str | None = None) -> Path:
        """Run every stage not yet done; write gains and the report; return the run directory."""
        from kdtune.report import build_report

        started = time.perf_counter()
        self.log(f"run directory: {self.location}"
                 + (f" (staged in {self.run_dir})" if self.remote else ""))
        self._write_meta("running")
        try:
            self.trackers = tracking.Trackers(self.spec, self.run_dir)
            if self.splits is None and self._nothing_left():  # a resumed run, complete
                self.log("stage final: nothing left to run (every search trial and final "
                         "seed is in the results)")
            else:
                self._train(address)
        except BaseException:
            self._write_meta("interrupted")
            if self.trackers is not None:
                self.trackers.close()
            raise
        if self.spec.search.storage:  # the run directory holds its searches too
            copy_searches_to_journal(self.spec, self.run_dir / JOURNAL_FILE, self.run_dir.name,
                                     [stage_name("search", ds.label, method)
                                      for ds in self.spec.datasets
                                      for method in self.spec.methods])
            self._sync()
        self.store.compact()  # one part per dataset, at the URI too
        if self._mirror is not None:
            self._mirror.reconcile()
        gains = compute_gains(self.store.trials, self.store.epochs,
                              FinalSettings.of(self.spec.final))
        write_table_atomic(gains, GAIN_SCHEMA, self.run_dir / GAINS_FILE)
        trends = compute_trends(gains, read_rows(self.run_dir / DATASETS_FILE))
        write_table_atomic(trends, TREND_SCHEMA, self.run_dir / TRENDS_FILE)
        report = build_report(self.run_dir)
        self.trackers.summary(self.run_dir.name, gains, report)
        self.trackers.close()
        wall = time.perf_counter() - started
        self._write_meta("finished", wall_s=round(wall, 1))
        self.progress.summary(console.summary(self.store.trials, gains, wall, trends))
        self.progress.summary(f"report: {report}")
        return self.run_dir


    def _train(self, address: str | None) -> None:
        """Join Ray and train what the run still needs: teachers, searches, final seeds."""
        self._prepare(address)
        self._write_meta("running", resources={role: r.__dict__ for role, r in
                                               self.plan.roles.items()},
                         gpu_fit=self.plan.measured or None)
        self._plan_progress()
        self._check_journal()
        # the spec's teacher, and a pretrained student-architecture model for self/reversed
        teachers = {model: self._teachers(model) for model in methods.teacher_sources(self.spec)}
        self._teacher_refs = _put_teachers(teachers, set(self._unready))
        self._students(teachers)

    def _nothing_left(self) -> bool:
        """Every search trial and every final seed the comparisons ask for is in the results:
        a resumed run with nothing to train, summed up without starting Ray (a start of ~4 s
        here, for a summary). What counts is what :meth:`_search_part` and :meth:`_pending`
        would hand out."""
        from kdtune.search import search_trials

        rows = self.store.trials
        for ds in self.spec.datasets:
            for method in self.spec.methods:
                stage = stage_name("search", ds.label, method)
                if sum(r["stage"] == stage for r in rows) < search_trials(self.spec, method):
                    return False
        return all(best_search_trial(rows, label, method) is None  # skipped: nothing to retrain
                   or set(seeds) <= done_seeds(rows, label, method)
                   for (label, method), seeds in required_seeds(self.spec, rows).items())


def _teacher_stage(model: str) -> str:
    """The stage name of a spec pretrained model's training (in trials.parquet)."""
    return "teachers" if model == "teacher" else "teachers-student"


def _holder(claim: dict[str, Any]) -> str:
    """Who holds a claim, for a log line."""
    return (f"{claim.get('run_id', '?')} (host {claim.get('host', '?')}, "
            f"pid {claim.get('pid', '?')})")


def plan_resources(spec: StudySpec, splits: list[Splits],
                   log: Callable[[str], None] = console.log) -> ResourcePlan:
    """Each role's resources on the connected cluster (``gpus: fit`` measures here)."""
    sources = methods.teacher_sources(spec)
    # every stored teacher the study may use is checked here, once (read, hashed against its
    # record): one that is damaged, or not what was stored, is set aside, so its training gets
    # resources; under resplit, each final seed's split has a teacher of its own
    variants = [(ds, model) for ds in spec.datasets for model in sources]
    stored = [checked_teacher(teacher_path(spec.storage, spec.teacher_id(ds, model)), log,
                              teacher_recipe.recipe(spec, ds, model), ds.label) is not None
              for ds, model in variants]
    if spec.final.resplit:
        for ds, model in variants:
            for seed in spec.final.all_seeds():
                split = ds.resplit(seed)
                checked_teacher(teacher_path(spec.storage, spec.teacher_id(split, model)), log,
                                teacher_recipe.recipe(spec, split, model), split.label)
    train_teacher = not all(stored)
    # under resplit, each final seed's split has a teacher of its own, trained as needed
    train_teacher = train_teacher or bool(spec.final.resplit and sources)
    shapes = [Shape(s.channels, s.image_size, s.num_classes, splits_bytes(s)) for s in splits]
    plan = resolve(spec, roles_needed(spec, train_teacher), ClusterView.from_ray(), shapes,
                   log=log)
    log(f"resources per trial: {plan.describe()}")
    return plan


def splits_bytes(splits: Splits) -> int:
    """Bytes a trial's copy of a dataset's splits takes on its device."""
    return sum(getattr(splits, k).nbytes for k in ("train_x", "train_y", "val_x", "val_y",
                                                    "test_x", "test_y"))


def _put_teachers(teachers: dict[str, dict[int, tuple[str, Location]]],
                  unready: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """Each stored pretrained model's weights, once in the object store: student trials on any
    node read them from there, not from the teacher store (a path or a URI). Those not stored
    yet (``unready``: trained in the students' Tuner) are read from the teacher store, as every
    node reaches it (it is where their trials write them)."""
    import ray

    paths = {tid: path for source in teachers.values() for tid, path in source.values()
             if tid not in unready}
    refs = {}
    for tid, path in paths.items():
        try:  # checked when the study planned or the teacher appeared: this read is the same
            state = load_torch(path)
        except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
            raise RunFileError(f"{path}: changed while the study ran, cannot read it "
                               f"({type(error).__name__}); kdtune resume checks it again") from None
        refs[tid] = ray.put(state)
    return refs


def load_trials(run_dir: Path) -> list[dict[str, Any]]:
    return read_rows(Path(run_dir) / TRIALS_FILE)
