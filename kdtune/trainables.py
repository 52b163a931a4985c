"""Ray Tune function trainables: teacher pretraining, scratch baseline, student distillation.

Each is a plain ``fn(config, study)`` that builds its job from the config, runs the bare training
loop of :mod:`kdtune.engine`, and reports validation accuracy plus a checkpoint every epoch
(``tune.report``). A trial restarted by Tune resumes from its last checkpoint. The last report
of a trial also carries its test accuracy, measured once training ends: it is recorded, never
used to choose anything.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kdtune.data import Splits, load_splits
from kdtune.distill import Scratch, build_distiller
from kdtune.engine import (
    Budget,
    TrainingDiverged,
    evaluate,
    make_optimizer,
    pick_device,
    train_epochs,
)
from kdtune.models import build_model
from kdtune.spec import DatasetSpec, StudySpec

_SPLITS_CACHE: dict[tuple[str, str], Splits] = {}
_TEACHER_CACHE: dict[tuple[str, str], torch.nn.Module] = {}
# a reused worker keeps the last few datasets and teachers; older runs' ones are dropped
_CACHE_SIZE = 4

TEACHER_FILE = "teacher.pt"


def _cached(cache: dict, key: tuple, make: Any) -> Any:
    if key not in cache:
        while len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def dataset_splits(dataset: DatasetSpec, device: torch.device, ref: Any = None) -> Splits:
    """A dataset's splits on ``device``, once per worker process (Ray reuses workers).

    ``ref`` is the object-store copy the driver put there (no data folder needed on this node);
    without it (outside Ray) the dataset is loaded from its source.
    """
    def make() -> Splits:
        if ref is not None:
            import ray

            return ray.get(ref).to(device)
        fractions = None if dataset.split == "paper" else tuple(dataset.split)
        kwargs = {"fractions": fractions} if fractions else {}
        return load_splits(dataset.name, data_dir=dataset.data_dir, download=dataset.download,
                           split_seed=dataset.split_seed, max_train=dataset.max_train,
                           **kwargs).to(device)

    key = (ref.hex() if ref is not None else dataset.model_dump_json(), str(device))
    return _cached(_SPLITS_CACHE, key, make)


def teacher_path(storage: str | Path, teacher_id: str) -> Path:
    return Path(storage) / "teachers" / teacher_id / TEACHER_FILE


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: never a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_teacher(spec: StudySpec, path: Path, splits: Splits, device: torch.device,
                 ref: Any = None) -> torch.nn.Module:
    """The pretrained teacher, from the object store (``ref``) or else from its file."""
    def make() -> torch.nn.Module:
        teacher = build_model(spec.teacher.arch, splits.channels, splits.num_classes,
                              splits.image_size, spec.teacher.options)
        if ref is not None:
            import ray

            state = ray.get(ref)
        else:
            state = torch.load(path, map_location=device, weights_only=True)
        teacher.load_state_dict(state["model"])
        return teacher.to(device).eval()

    key = (ref.hex() if ref is not None else f"{path}@{path.stat().st_mtime}", str(device))
    return _cached(_TEACHER_CACHE, key, make)


def _budget(spec: StudySpec, epochs: int, config: dict[str, Any]) -> Budget:
    t = spec.training
    return Budget(epochs=epochs, batch_size=t.batch_size, optimizer=t.optimizer,
                  lr=float(config.get("lr", t.lr)), momentum=t.momentum,
                  weight_decay=t.weight_decay, augmentation=t.augmentation, amp=t.amp)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests) there is no node
        return "local"


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config with a grid-searched ``job`` dict merged into the top level."""
    job = config.get("job")
    return {k: v for k, v in config.items() if k != "job"} | (job or {})


def _inject_fault(config: dict[str, Any], epoch: int) -> None:
    """Test hook: ``KDTUNE_FAULT=kind:method:epoch[:marker_dir]`` breaks a trial on purpose.

    ``raise`` raises in the trial (a bug); ``kill`` ends the worker process at once (a crashed
    node), only once per trial when a marker folder is given, so the retry can succeed.
    Used by the fault-tolerance tests; unset in normal use.
    """
    fault = os.environ.get("KDTUNE_FAULT")
    if not fault:
        return
    kind, method, at_epoch, *rest = fault.split(":")
    if method != config.get("method") or epoch != int(at_epoch):
        return
    if rest:
        marker = Path(rest[0]) / f"{kind}-{config.get('role')}-{config.get('seed')}-" \
                                  f"{config.get('alpha')}-{config.get('lr')}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    if kind == "raise":
        raise RuntimeError(f"injected fault in {method} at epoch {epoch}")
    if kind == "kill":
        os._exit(137)


def _run(config: dict[str, Any], spec: StudySpec, *, is_teacher: bool,
         data: list[Any] | None = None, teachers: dict[str, Any] | None = None) -> None:
    from ray import tune

    config = flat_config(config)
    started = time.perf_counter()
    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    device = pick_device(float(config.get("gpus", 0)))
    index = int(config["dataset_index"])
    splits = dataset_splits(spec.datasets[index], device, data[index] if data else None)
    seed = int(config["seed"])
    teacher = None
    if not is_teacher and config["method"] != "scratch":
        # before seeding: building an uncached teacher draws from the global generator, and
        # whether this worker has it cached must not change the student's initialisation
        teacher = load_teacher(spec, Path(config["teacher_path"]), splits, device,
                               (teachers or {}).get(config["teacher_id"]))
    torch.manual_seed(seed)
    arch = spec.teacher if is_teacher else spec.student
    epochs = spec.training.teacher_epochs if is_teacher else spec.training.student_epochs
    model = build_model(arch.arch, splits.channels, splits.num_classes, splits.image_size,
                        arch.options).to(device)
    if teacher is None:
        distiller = Scratch(model)
    else:
        distiller = build_distiller(config["method"], model, teacher, config,
                                    student_arch=spec.student.arch, teacher_arch=spec.teacher.arch,
                                    example=splits.train_x[:2].float()).to(device)
    budget = _budget(spec, epochs, config)
    optimizer = make_optimizer([p for p in distiller.parameters() if p.requires_grad], budget)
    start_epoch, generator_state = 0, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retried or resumed trial continues where it stopped
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", map_location=device, weights_only=True)
        distiller.load_state_dict(state["distiller"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, generator_state = int(state["epoch"]), state["generator"]
    node_id = _node_id()
    _inject_fault(config, start_epoch)  # epoch 0: before any training
    try:
        for report in train_epochs(distiller, splits, budget, seed=seed, start_epoch=start_epoch,
                                   optimizer=optimizer, generator_state=generator_state):
            _inject_fault(config, report.epoch)
            metrics = report.metrics() | {"node_id": node_id,
                                          "wall_s": time.perf_counter() - started}
            if report.epoch == budget.epochs:
                metrics["test_acc"] = evaluate(model, splits.test_x, splits.test_y, splits,
                                               amp=budget.amp)
                if is_teacher:
                    save_atomic({"model": model.state_dict(), "val_acc": report.val_acc,
                                 "test_acc": metrics["test_acc"]}, Path(config["teacher_path"]))
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"distiller": distiller.state_dict(),
                            "optimizer": report.optimizer.state_dict(),
                            "generator": report.generator_state, "epoch": report.epoch},
                           Path(folder) / "state.pt")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except TrainingDiverged as error:
        # reported, not raised: retrying a diverging config wastes compute, and the search
        # should learn that this corner of the space is bad (val_acc 0)
        tune.report({"val_acc": 0.0, "diverged": 1, "failure": str(error), "node_id": node_id,
                     "wall_s": time.perf_counter() - started})


def train_teacher(config: dict[str, Any], spec: StudySpec, data: list[Any] | None = None) -> None:
    """Pretrain one teacher and save it to the study's teacher store.

    ``data``: object refs of the datasets' splits (``tune.with_parameters``), by dataset index.
    """
    _run(config, spec, is_teacher=True, data=data)


def train_student(config: dict[str, Any], spec: StudySpec, data: list[Any] | None = None,
                  teachers: dict[str, Any] | None = None) -> None:
    """Train a student: from scratch, or distilled from the stored teacher (``config['method']``).

    ``data`` as for :func:`train_teacher`; ``teachers``: object refs of the teachers' weights by
    teacher id (absent outside Ray: the teacher is read from its file).
    """
    _run(config, spec, is_teacher=False, data=data, teachers=teachers)

