"""A compute estimate for a spec, from dataset shapes and model FLOPs, without loading any data.

FLOPs are counted by ``torch.utils.flop_counter`` on a model built on the meta device (no
memory, no data). A training step costs about 3x the forward pass; a distilled student also
pays one teacher forward per training image; every epoch evaluates the validation split.
Times assume sustained rates, stated in the output: 60 GFLOP/s per CPU core (measured here:
ResNet-18 trains 29-44 images/s on 2 cores at 3x1.11 GFLOP per image) and 10 TFLOP/s per GPU
(a P100, the core study's card, in fp32; current GPUs with bf16 run several times faster), plus
about 3 s of Ray start-up per trial, which dominates for tiny models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from kdtune import methods
from kdtune.sources import SOURCES, paper_fractions
from kdtune.spec import DatasetSpec, ModelSpec, StudySpec

CPU_FLOPS = 60e9  # per core, sustained while training (measured, see the module docstring)
GPU_FLOPS = 10e12
TRIAL_OVERHEAD_S = 3.0


@dataclass
class DatasetShape:
    channels: int
    side: int
    classes: int
    n_train: int
    n_val: int
    n_test: int


def dataset_shape(ds: DatasetSpec) -> DatasetShape | None:
    """Shape and split sizes of a dataset variant, or None if only loading it can tell."""
    source = SOURCES[ds.name]
    if source.pooled is None:
        return None
    channels, side, classes, pooled = source.channels, source.side, source.classes, source.pooled
    if ds.classes is not None:  # a class subset keeps its share of the (balanced) pool
        kept = ds.classes if isinstance(ds.classes, int) else len(ds.classes)
        pooled, classes = pooled * kept // classes, kept
    fractions = paper_fractions(ds.name) if ds.split == "paper" else tuple(ds.split)
    if ds.split == "paper" and ds.classes is None and source.paper_sizes:
        n_train, n_val, n_test = source.paper_sizes
    else:
        n_val, n_test = (round(pooled * f / sum(fractions)) for f in fractions[1:])
        n_train = pooled - n_val - n_test
    if ds.max_train is not None:
        n_train = min(n_train, ds.max_train)
    return DatasetShape(ds.channels or channels, ds.resolution or side, classes, n_train,
                        n_val, n_test)


@functools.lru_cache(maxsize=64)
def forward_flops(arch: str, options_json: str, channels: int, side: int, classes: int) -> float:
    """FLOPs of one forward pass of one image."""
    import json

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kdtune.models import build_model

    with torch.device("meta"):
        model = build_model(arch, channels, classes, side, json.loads(options_json))
        x = torch.empty(1, channels, side, side)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def _flops(model: ModelSpec, shape: DatasetShape) -> float:
    import json

    return forward_flops(model.arch, json.dumps(model.options, sort_keys=True), shape.channels,
                         shape.side, shape.classes)


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.2g} min"
    return f"{hours:.3g} h" if hours < 48 else f"{hours / 24:.3g} days"


@dataclass(frozen=True)
class Compute:
    """The FLOPs of a whole plan: pretrained models (teachers) and students (every search
    trial and final run), over ``trials`` trials; ``unknown``: datasets whose sizes only
    loading them tells."""

    teacher_flops: float
    student_flops: float
    trials: int
    unknown: tuple[str, ...] = ()

    @property
    def total(self) -> float:
        return self.teacher_flops + self.student_flops


TEACHER = "teacher"  # the key of a pretrained model's epoch in epoch_flops


def epoch_flops(spec: StudySpec) -> dict[tuple[str, str], float]:
    """FLOPs of one training epoch (train split x3, validation once) per (dataset label,
    method), and per (dataset label, ``teacher``) for the pretrained models: each pretrained
    model the methods need (the teacher, the student-architecture model of self/reversed)
    trains on the teacher's budget; a distilled student also runs one forward of the
    architecture teaching it per training image. Datasets whose sizes only loading tells are
    left out."""
    out: dict[tuple[str, str], float] = {}
    for ds in spec.datasets:
        shape = dataset_shape(ds)
        if shape is None:
            continue
        out[ds.label, TEACHER] = sum(
            3 * f * shape.n_train + f * shape.n_val
            for f in (_flops(methods.model_spec(spec, source), shape)
                      for source in methods.teacher_sources(spec)))
        for method in spec.methods:
            trained, teacher = methods.trial_models(spec, method)
            f = _flops(trained, shape)
            per_epoch = 3 * f * shape.n_train + f * shape.n_val
            if teacher is not None:
                per_epoch += _flops(teacher, shape) * shape.n_train
            out[ds.label, method] = per_epoch
    return out


def compute(spec: StudySpec) -> Compute:
    """FLOPs of every trial ``spec`` plans: the pretrained models once per dataset, each
    method's search trials and first round of seeds (:func:`epoch_flops` per epoch)."""
    from kdtune.search import search_trials

    t_epochs, s_epochs = spec.training.teacher_epochs, spec.training.student_epochs
    seeds = len(spec.final.seeds)
    per_epoch = epoch_flops(spec)
    teacher_flops = student_flops = 0.0
    trials, unknown = 0, []
    for ds in spec.datasets:
        if (ds.label, TEACHER) not in per_epoch:
            unknown.append(ds.label)
            continue
        teacher_flops += t_epochs * per_epoch[ds.label, TEACHER]
        trials += len(methods.teacher_sources(spec))
        for method in spec.methods:
            n = search_trials(spec, method) + seeds
            student_flops += n * s_epochs * per_epoch[ds.label, method]
            trials += n
    return Compute(teacher_flops, student_flops, trials, tuple(unknown))


def estimate(spec: StudySpec) -> list[str]:
    """Lines for ``kdtune validate``: FLOPs and device time of the whole plan."""
    c = compute(spec)
    teacher_flops, student_flops, trials, unknown = (c.teacher_flops, c.student_flops,
                                                     c.trials, list(c.unknown))
    total = teacher_flops + student_flops
    t_cpus, t_gpus = spec.resources.for_role("teacher")
    s_cpus, s_gpus = spec.resources.for_role("student")
    lines = [f"  compute: {total / 1e15:.3g} PFLOP ({teacher_flops / 1e15:.3g} teachers, "
             f"{student_flops / 1e15:.3g} students) over {trials} trials"]
    overhead_h = trials * TRIAL_OVERHEAD_S / 3600
    # 'auto' and 'fit' are resolved against the cluster at run time (fit: measured memory)
    wants_gpu = [g for g in (t_gpus, s_gpus) if isinstance(g, str) or g > 0]
    if wants_gpu:
        gpu_h = total / GPU_FLOPS / 3600 + overhead_h
        if isinstance(s_gpus, str):
            share = f"{s_gpus} (resolved on the cluster at run time)"
        else:
            share = (f"{s_gpus:g}, so up to {int(1 / s_gpus) if s_gpus else 0} students share "
                     "one")
        t_share = t_gpus if isinstance(t_gpus, str) else f"{t_gpus:g}"
        lines.append(f"  estimate: ~{_num(gpu_h)} GPU-hours at {GPU_FLOPS / 1e12:g} TFLOP/s "
                     f"sustained (a GPU per teacher trial: {t_share}, per student trial: "
                     f"{share})")
    cpu_h = total / CPU_FLOPS / 3600 + overhead_h * max(t_cpus, s_cpus)
    lines.append(f"  estimate: ~{_num(cpu_h)} CPU core-hours at {CPU_FLOPS / 1e9:g} GFLOP/s per "
                 f"core (~{_duration(cpu_h / 2)} wall on 2 cores)")
    if unknown:
        lines.append(f"  (not counted: {', '.join(unknown)}: their sizes are known once loaded)")
    return lines
