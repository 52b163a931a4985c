"""Ray Tune function trainables: teacher pretraining, scratch baseline, student distillation.

Each is a plain ``fn(config, spec)`` that reads its :class:`~kdtune.job.TrialJob` from the
config, builds the trial (:func:`kdtune.trial.build_trial`), runs the bare training loop of
:mod:`kdtune.engine`, and reports validation accuracy (``tune.report``) every
``scheduler.report_every_s`` seconds, each report carrying every epoch since the one before
(every epoch for search trials an early-stopping rule watches), and a checkpoint every
``scheduler.checkpoint_every_s``. A trial restarted by Tune resumes from its last checkpoint.
The last report of a trial also carries its test accuracy, measured once training ends: it is
recorded, never used to choose anything.

With augmentation off, the teacher's outputs on the whole training split are computed once per
worker process and shared by every trial that has the same teacher, dataset and transfer set
(``_TEACHER_OUTPUTS``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kdtune import methods, teacher_recipe, teacher_store
from kdtune.data import Splits, omit_class
from kdtune.devices import device_name, pick_device
from kdtune.distill import Distiller
from kdtune.engine import (
    Budget,
    TrainingDiverged,
    class_accuracies,
    evaluate,
    train_epochs,
)
from kdtune.job import TrialJob
from kdtune.models import build_model
from kdtune.spec import DatasetSpec, ModelSpec, StudySpec
from kdtune.storage import Location, as_location, join, load_torch, save_torch, version
from kdtune.teacher_outputs import CachedTeacher, feature_bytes, precompute
from kdtune.trial import Trial, build_trial

# what each epoch's row holds, beside the trial's own columns (rundir.EPOCH_SCHEMA)
EPOCH_METRICS = ("epoch", "train_loss", "val_acc", "epoch_s", "wall_s", "reported_at",
                 *(f"loss_{name}" for name in methods.loss_names()))

_SPLITS_CACHE: dict[tuple[str, str], Splits] = {}
_TEACHER_CACHE: dict[tuple[str, str], torch.nn.Module] = {}
_TEACHER_OUTPUTS: dict[tuple, CachedTeacher] = {}
# a reused worker keeps the last few datasets, teachers and teacher outputs; the oldest goes first
_CACHE_SIZE = 4
# cached hint/attention features beyond this stay live (CIFAR-size ResNet-50 layer1 maps would
# take ~50 GB); logits always fit
CACHE_FEATURES_MB = float(os.environ.get("KDTUNE_TEACHER_CACHE_MB", "1024"))

TEACHER_FILE = "teacher.pt"


def _cached(cache: dict, key: tuple, make: Any) -> Any:
    if key not in cache:
        while len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def dataset_splits(dataset: DatasetSpec, device: torch.device, ref: Any = None,
                   pool: Any = None) -> Splits:
    """A dataset's splits on ``device``, once per worker process (Ray reuses workers).

    ``ref`` is the object-store copy of the splits the driver put there (no data folder needed
    on this node); ``pool`` that of the dataset's images before splitting, which a resplit
    trial splits with its own split seed; without either (outside Ray) the dataset is loaded
    from its source.
    """
    def make() -> Splits:
        import ray

        # uint8 splits go to the trial's device once; batches are then drawn there by index
        if ref is not None:
            return ray.get(ref).to(device)
        if pool is not None:
            return dataset.split_from(ray.get(pool)).to(device)
        return dataset.load().to(device)

    key = (ref.hex() if ref is not None else dataset.model_dump_json(), str(device))
    return _cached(_SPLITS_CACHE, key, make)


def teacher_path(storage: str | Path, teacher_id: str) -> Location:
    """Where a teacher is stored: a path under a local storage, a URI under object storage."""
    return join(storage, "teachers", teacher_id, TEACHER_FILE)


def load_teacher(spec: StudySpec, path: Location, splits: Splits, device: torch.device,
                 model: ModelSpec | None = None, ref: Any = None) -> torch.nn.Module:
    """A stored pretrained model (of ``model``'s architecture, default the spec's teacher), from
    the object store (``ref``) or else from its file."""
    model = model or spec.teacher

    def make() -> torch.nn.Module:
        teacher = build_model(model.arch, splits.channels, splits.num_classes,
                              splits.image_size, model.options)
        if ref is not None:
            import ray

            state = ray.get(ref)
        else:  # outside Ray, or no ref given: checked by the driver when the study planned
            try:
                state = load_torch(path, map_location=device)
            except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
                # one line, and never torch's advice to load with weights_only=False
                raise RuntimeError(f"{path}: the stored teacher cannot be read "
                                   f"({type(error).__name__}); kdtune resume checks it again "
                                   "and trains it anew if it is damaged") from None
        teacher.load_state_dict(state["model"])
        return teacher.to(device).eval()

    return _cached(_TEACHER_CACHE, (teacher_key(path, ref), str(device)), make)


def teacher_key(path: Location, ref: Any = None) -> str:
    """What identifies a stored teacher's weights: its object-store ref, else its file's mtime
    (a retrained teacher is a new file)."""
    return ref.hex() if ref is not None else version(path)


def student_splits(spec: StudySpec, dataset: DatasetSpec, device: torch.device,
                   ref: Any = None, pool: Any = None) -> Splits:
    """The student's transfer set: the dataset, less the omitted class if the spec omits one."""
    k = spec.distillation.omit_class
    splits = dataset_splits(dataset, device, ref, pool)
    if k is None:
        return splits
    key = ((ref.hex() if ref is not None else dataset.model_dump_json()) + f"|omit={k}",
           str(device))
    return _cached(_SPLITS_CACHE, key, lambda: omit_class(splits, k))


def use_cached_teacher(distiller: Distiller, splits: Splits, key: tuple, budget: Budget) -> str:
    """Serve ``distiller``'s teacher outputs from a per-process cache when that is exact and
    fits; returns ``cached`` or ``live`` (reported with the trial's metrics)."""
    if distiller.live_teacher is None or budget.augmentation != "none":
        return "live"  # augmented images are new every epoch: the teacher must see them
    key = key + (distiller.teacher_taps,)
    if key not in _TEACHER_OUTPUTS:
        live = distiller.live_teacher
        if distiller.teacher_taps and feature_bytes(
                live, splits.train_x[:1].float(), len(splits.train_y)) > CACHE_FEATURES_MB * 2**20:
            return "live"
        _cached(_TEACHER_OUTPUTS, key, lambda: CachedTeacher(
            precompute(live, splits.train_x, splits.mean, splits.std, amp=budget.amp)))
    distiller.use_cached_teacher(_TEACHER_OUTPUTS[key])
    return "cached"


def _node_id() -> str:
    """The Ray node a trial runs on; ``local`` outside Ray (a trial run bare, as in tests)."""
    import ray

    # asked outside a session, get_runtime_context() starts one: a 4-s embedded cluster that
    # a bare run (a test) then leaves behind for whatever comes next in that process
    if not ray.is_initialized():
        return "local"
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a driver-less context has no node id
        return "local"


def _inject_fault(config: dict[str, Any], epoch: int) -> None:
    """Test hook: ``KDTUNE_FAULT=kind:method:epoch[:marker_dir][,...]`` breaks a trial on
    purpose (several faults separated by commas).

    ``raise`` raises in the trial (a bug); ``kill`` ends the worker process at once (a crashed
    node); ``damage`` truncates the trial's last checkpoint, then ends the worker (a node that
    died mid-write), so Tune's retry finds a checkpoint it cannot restore. With a marker folder,
    only once per trial, so the retry can succeed. Used by the fault-tolerance tests; unset in
    normal use.
    """
    for fault in filter(None, os.environ.get("KDTUNE_FAULT", "").split(",")):
        kind, method, at_epoch, *rest = fault.split(":")
        if method != config.get("method") or epoch != int(at_epoch):
            continue
        if rest:
            marker = Path(rest[0]) / f"{kind}-{config.get('role')}-{config.get('seed')}-" \
                                      f"{config.get('alpha')}-{config.get('lr')}"
            if marker.exists():
                continue
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        if kind == "raise":
            raise RuntimeError(f"injected fault in {method} at epoch {epoch}")
        if kind == "damage":
            from ray import tune

            checkpoint = tune.get_checkpoint()
            if checkpoint is not None:
                state = Path(checkpoint.path) / "state.pt"
                state.write_bytes(state.read_bytes()[:state.stat().st_size // 2])
        if kind in ("kill", "damage"):
            os._exit(137)


def accuracy_json(values: dict[Any, float]) -> str:
    return json.dumps({str(k): round(float(v), 4) for k, v in values.items()})


def trial_dataset(spec: StudySpec, job: TrialJob) -> DatasetSpec:
    """The dataset variant a trial trains on: the spec's, re-drawn with the job's split seed
    under ``final.resplit``."""
    dataset = spec.datasets[job.dataset_index]
    if job.split_seed is None:
        return dataset
    return dataset.model_copy(update={"split_seed": job.split_seed})


def _trial_splits(spec: StudySpec, job: TrialJob, device: torch.device,
                  data: list[Any] | None, pools: list[Any] | None) -> Splits:
    """Pretrained models see every class; students see the transfer set (omit-one-class)."""
    dataset = trial_dataset(spec, job)
    ref = data[job.dataset_index] if data and job.split_seed is None else None
    pool = pools[job.dataset_index] if pools and job.split_seed is not None else None
    if job.role == "teacher":
        return dataset_splits(dataset, device, ref, pool)
    return student_splits(spec, dataset, device, ref, pool)


def _run(config: dict[str, Any], spec: StudySpec, *, data: list[Any] | None = None,
         teachers: dict[str, Any] | None = None, pools: list[Any] | None = None) -> None:
    from ray import tune

    job = TrialJob.from_config(config)
    started = time.perf_counter()
    torch.set_num_threads(max(1, int(job.cpus)))
    device = pick_device(job.gpus)
    splits = _trial_splits(spec, job, device, data, pools)
    teacher = cache = None
    _, teacher_arch = methods.trial_models(spec, job.method)
    if job.role != "teacher" and teacher_arch is not None:
        # loaded before the trial is built and seeded: building it (first time in this worker)
        # draws random numbers, which would otherwise shift the student's initialisation
        path = as_location(job.teacher_path)
        teacher_ref = (teachers or {}).get(job.teacher_id)
        teacher = load_teacher(spec, path, splits, device, teacher_arch, teacher_ref)
        key = (teacher_key(path, teacher_ref), trial_dataset(spec, job).model_dump_json(),
               spec.distillation.omit_class, str(device))

        def cache(distiller: Distiller, budget: Budget) -> str:
            return use_cached_teacher(distiller, splits, key, budget)

    trial = build_trial(spec, job, splits, device, teacher, cache)
    damaged = resumed_from = None
    try:
        start_epoch, generator_state, history = _restore(trial, device)
        # said once, with the first report: the driver logs where a retried trial resumed
        # (Tune's own result.json cannot show it: on a retry Tune copies the storage's older
        # copy over the driver's, which can drop the epochs reported before the crash)
        resumed_from = start_epoch if tune.get_checkpoint() is not None else None
    except DamagedCheckpoint as error:
        # recovery without loss: this trial starts over, as it first did; the driver logs it
        damaged = str(error)
        trial = build_trial(spec, job, splits, device, teacher, cache)
        start_epoch, generator_state, history = 0, None, []
    previous = tune.get_checkpoint()
    node_id = _node_id()
    every_s = spec.scheduler.checkpoint_every_s
    # a report is a round trip to the driver (~3 ms on 2 cores, a third of Ray's share of the
    # quickstart); a rule that stops search trials decides on every epoch, so it gets them all
    report_s = 0.0 if job.role == "search" and spec.scheduler.rule != "none" \
        else spec.scheduler.report_every_s
    checkpointed = reported = time.perf_counter()
    unreported: list[dict[str, Any]] = []  # epochs since the last report, sent with the next
    _inject_fault(config, start_epoch)  # epoch 0: before any training
    try:
        for report in train_epochs(trial.distiller, splits, trial.budget, seed=job.seed,
                                   start_epoch=start_epoch, optimizer=trial.optimizer,
                                   generator_state=generator_state):
            _inject_fault(config, report.epoch)
            metrics = report.metrics() | {"node_id": node_id, "device": device_name(device),
                                          "wall_s": time.perf_counter() - started,
                                          # when the epoch ended (Unix seconds): Tune's own
                                          # timestamps are whole seconds
                                          "reported_at": time.time(),
                                          "teacher_outputs": trial.teacher_outputs}
            if damaged is not None:  # said once, with the first epoch of the new start
                metrics["checkpoint_damaged"], damaged = damaged, None
            if resumed_from is not None:
                metrics["resumed_from_epoch"], resumed_from = resumed_from, None
            history.append({k: metrics[k] for k in EPOCH_METRICS if k in metrics})
            unreported.append(history[-1])
            last = report.epoch == trial.budget.epochs
            checkpoint_due = last or time.perf_counter() - checkpointed >= every_s
            if not (checkpoint_due or metrics.get("checkpoint_damaged")
                    or "resumed_from_epoch" in metrics
                    or time.perf_counter() - reported >= report_s):
                continue
            if len(unreported) > 1:  # the driver writes a row for each
                metrics["epoch_batch"] = json.dumps(unreported)
            unreported = []
            if last:
                metrics |= _final_metrics(spec, trial, splits, report.val_acc)
                # every epoch's metrics once more: an epoch whose result the driver never
                # processed (its worker died right after reporting it) still gets its row
                metrics["epoch_history"] = json.dumps(history)
            # a checkpoint every checkpoint_every_s seconds, and always after the last epoch:
            # each one costs Tune a few ms of the driver and a file per epoch on short trials
            if checkpoint_due:
                with tempfile.TemporaryDirectory() as folder:
                    torch.save({"distiller": trial.distiller.state_dict(),
                                "optimizer": report.optimizer.state_dict(),
                                "generator": report.generator_state, "epoch": report.epoch,
                                "history": history}, Path(folder) / "state.pt")
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
                previous = drop_previous(previous, tune.get_checkpoint())
                checkpointed = time.perf_counter()
            else:
                tune.report(metrics)
            reported = time.perf_counter()
    except TrainingDiverged as error:
        # reported, not raised: retrying a diverging config wastes compute, and the search
        # should learn that this corner of the space is bad (val_acc 0)
        tune.report({"val_acc": 0.0, "diverged": 1, "failure": str(error), "node_id": node_id,
                     "wall_s": time.perf_counter() - started,
                     "epoch_batch": json.dumps(unreported)})


class DamagedCheckpoint(Exception):
    """A trial checkpoint that cannot be restored; ``str()`` says why, in a few words."""


def _restore(trial: Trial, device: torch.device
             ) -> tuple[int, torch.Tensor | None, list[dict[str, Any]]]:
    """A retried or resumed trial continues where it stopped: (first epoch, batch generator
    state, the metrics of the epochs before) from its last checkpoint, or (0, None, []).

    A checkpoint that cannot be restored (no ``state.pt``, a file torch cannot read, a state
    that does not fit this trial) raises :class:`DamagedCheckpoint`; ``trial`` may then hold
    part of it, so the caller builds the trial again and starts it from epoch 0."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0, None, []
    try:
        with checkpoint.as_directory() as folder:
            file = Path(folder) / "state.pt"
            if not file.is_file():
                raise DamagedCheckpoint("no state.pt in it")
            state = torch.load(file, map_location=device, weights_only=True)
    except DamagedCheckpoint:
        raise
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        # never torch's own message: it suggests loading with weights_only=False
        raise DamagedCheckpoint(f"not a readable PyTorch checkpoint: {type(error).__name__}"
                                ) from None
    if not isinstance(state, dict) or not {"distiller", "optimizer", "epoch"} <= set(state):
        raise DamagedCheckpoint("not a trial state (distiller, optimizer, epoch)")
    epoch, generator = state["epoch"], state.get("generator")
    if not isinstance(epoch, int) or not 0 <= epoch <= trial.budget.epochs:
        raise DamagedCheckpoint(f"epoch {epoch!r} is not within the trial's budget")
    try:
        if generator is not None:  # a CPU generator's state, wherever the tensors were mapped
            generator = generator.cpu()
            torch.Generator().set_state(generator)
        trial.distiller.load_state_dict(state["distiller"])
        trial.optimizer.load_state_dict(state["optimizer"])
    except Exception as error:  # noqa: BLE001 - shapes, keys, types: any mismatch
        raise DamagedCheckpoint(f"its state does not fit this trial "
                                f"({type(error).__name__})") from None
    history = state.get("history", [])
    return epoch, generator, list(history) if isinstance(history, list) else []


def _final_metrics(spec: StudySpec, trial: Trial, splits: Splits,
                   val_acc: float) -> dict[str, Any]:
    """What the last epoch adds: test accuracy (measured once, never used to choose), per-class
    and per-exit accuracies for students; a teacher is saved to the teacher store."""
    d, budget = trial.distiller, trial.budget
    out: dict[str, Any] = {"test_acc": evaluate(d.predictor, splits.test_x, splits.test_y,
                                                splits, amp=budget.amp)}
    if trial.job.role == "teacher":
        save_teacher(spec, trial.job, {"model": trial.model.state_dict(), "val_acc": val_acc,
                                       "test_acc": out["test_acc"]})
    else:
        out |= _class_and_exit_metrics(spec, d, splits, budget)
    return out


def save_teacher(spec: StudySpec, job: TrialJob, state: dict[str, Any]) -> None:
    """A trained pretrained model into the teacher store: ``teacher.pt`` (whole, or not at all),
    then its record ``teacher.json`` (size, sha256, recipe), which marks it complete."""
    path = as_location(job.teacher_path)
    size, sha256 = save_torch(state, path)
    dataset = trial_dataset(spec, job)
    model = teacher_store.model_of(job.method)
    teacher_store.write_record(path, teacher_store.make_record(
        job.teacher_id, size, sha256, teacher_recipe.recipe(spec, dataset, model), dataset.label,
        model=model, val_acc=state.get("val_acc"), test_acc=state.get("test_acc")))


def drop_previous(previous: Any, latest: Any) -> Any:
    """Delete a trial's previous checkpoint once Tune holds a newer one; returns the one to keep
    (``latest``, or ``previous`` while no checkpoint has been reported).

    Tune runs with ``num_to_keep=None`` (see ``study._fit``), so the trial keeps its own
    storage to one checkpoint. ``tune.report`` returns only after the driver has registered the
    new checkpoint, so a retry can no longer ask for the old one.
    """
    if previous is not None and latest is not None and previous.path != latest.path:
        try:
            previous.filesystem.delete_dir(previous.path)
        except OSError:  # already gone (a retry re-reported it) or not ours to delete: harmless
            pass
    return latest if latest is not None else previous


def _class_and_exit_metrics(spec: StudySpec, distiller: Distiller, splits: Splits,
                            budget: Budget) -> dict[str, Any]:
    """Per-class test accuracy (and the omitted class's), and each exit's for multi-exit models."""
    per_class = class_accuracies(distiller.predictor, splits.test_x, splits.test_y, splits,
                                 amp=budget.amp)
    out: dict[str, Any] = {"class_acc_json": accuracy_json(per_class)}
    k = spec.distillation.omit_class
    if k is not None:
        out |= {"omitted_class": k, "omitted_class_acc": per_class.get(k)}
    exits = distiller.exit_models()
    if exits:
        out["exit_acc_json"] = json.dumps({name: round(evaluate(m, splits.test_x, splits.test_y,
                                                                splits, amp=budget.amp), 4)
                                           for name, m in exits.items()})
    return out


def train(config: dict[str, Any], spec: StudySpec, data: list[Any] | None = None,
          teachers: dict[str, Any] | None = None, pools: list[Any] | None = None) -> None:
    """The one trainable: a teacher (``role`` teacher: ``teacher``, or ``pretrained_student``
    for self/reversed, saved to the study's teacher store) or a student (from scratch, or
    distilled from the stored teacher its job names).

    ``data``: object refs of the datasets' splits (``tune.with_parameters``), by dataset index;
    ``teachers``: refs of the teachers' weights by teacher id (absent outside Ray, or for a
    teacher trained during the run: it is read from its file); ``pools``: refs of the datasets'
    images before splitting, for ``final.resplit``.
    """
    _run(config, spec, data=data, teachers=teachers, pools=pools)
