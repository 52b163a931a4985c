"""What each trial asks Ray for, checked against the cluster before any trial starts.

The spec gives cpus, gpus and memory per role (``teacher``, ``scratch``, ``student``; see
:class:`kdtune.spec.ResourcesSpec`). Here those become numbers Ray can schedule:

- ``gpus: auto`` is ``fit`` where the cluster has a GPU and 0 (CPU) where it has none;
- ``gpus: fit`` measures one training step's peak GPU memory for every (model, batch size) a
  role trains, as a Ray task that holds a whole GPU, and takes the largest share of a GPU that
  leaves room for every trial packed beside it (:func:`fit_fraction`);
- a request no node can satisfy (GPUs on a CPU-only cluster, more CPUs than any node has) is a
  one-line :class:`ResourceError` before any trial starts; Ray itself would wait forever.

Ray packs trials by nominal shares only; ``fit`` is what keeps the shares honest about memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kdtune import methods
from kdtune.spec import StudySpec

ROLES = ("teacher", "scratch", "student")

# A CUDA context plus cuBLAS/cuDNN handles and workspaces live outside PyTorch's caching
# allocator, so torch.cuda.max_memory_allocated does not see them: ~300-600 MiB per process.
CUDA_CONTEXT_BYTES = 640 * 2**20
# The caching allocator rounds blocks up and fragments; a step of another shape (the last,
# smaller batch) can take a little more than the measured one.
HEADROOM = 1.25
# Part of a GPU's memory the driver and other processes may hold; never planned for trials.
GPU_RESERVE = 0.05
# Past this many trials per GPU they compete for its compute, not its memory.
MAX_TRIALS_PER_GPU = 16
# Ray keeps resource quantities to four decimals: a share is rounded down to that precision,
# so k shares of 1/k never add up to more than one GPU.
RAY_RESOURCE_PRECISION = 10_000
# Batch size of the evaluation pass (kdtune.engine.evaluate): its activations count too.
EVAL_BATCH = 512


class ResourceError(ValueError):
    """The cluster cannot run a trial as the spec asks; ``str(error)`` is one line."""


def role_of(method: str) -> str:
    """The resources role of a trial of ``method``: ``teacher`` for pretraining (the teacher, or
    the pretrained student that teaches self/reversed), ``scratch`` for a baseline nobody
    teaches (scratch, reversed_scratch), ``student`` for every distilled student."""
    if methods.is_pretrained(method):
        return "teacher"
    return "student" if methods.get(method).distils else "scratch"


@dataclass(frozen=True)
class TrialResources:
    """Resolved resources of one trial: numbers Ray can schedule."""

    cpus: float
    gpus: float
    memory: int | None = None
    how: str = ""  # how gpus was chosen, for the log ("fit: 1.2 GiB peak of 80 GiB")

    def bundle(self) -> dict[str, float]:
        """The resource dict for ``tune.with_resources``."""
        out = {"cpu": self.cpus, "gpu": self.gpus}
        return out | ({"memory": float(self.memory)} if self.memory else {})

    def describe(self) -> str:
        text = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        text += f" + {_gib(self.memory)} memory" if self.memory else ""
        return text + (f" ({self.how})" if self.how else "")


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


@dataclass(frozen=True)
class NodeView:
    cpus: float
    gpus: float
    memory: float


@dataclass(frozen=True)
class ClusterView:
    """The alive nodes' total resources, as Ray reports them."""

    nodes: tuple[NodeView, ...]

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @classmethod
    def from_ray(cls) -> ClusterView:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        return cls(tuple(NodeView(r.get("CPU", 0.0), r.get("GPU", 0.0), r.get("memory", 0.0))
                         for r in nodes))


# ----------------------------------------------------------------------------- gpus: fit

def fit_fraction(peak_bytes: int, total_bytes: int, *, context_bytes: int = CUDA_CONTEXT_BYTES,
                 headroom: float = HEADROOM, reserve: float = GPU_RESERVE,
                 max_trials: int = MAX_TRIALS_PER_GPU) -> float:
    """The largest GPU share per trial such that every trial packed on one GPU fits in memory.

    Each trial needs ``peak * headroom + context``; ``k`` of them fit in the GPU's memory less a
    reserve, and each gets ``1/k`` (rounded down to Ray's precision). A trial that does not fit
    beside any other gets a whole GPU; one that does not fit alone is an error.
    """
    if peak_bytes < 0 or total_bytes <= 0:
        raise ValueError(f"bad measurement: peak {peak_bytes}, total {total_bytes}")
    need = peak_bytes * headroom + context_bytes
    trials = int(total_bytes * (1 - reserve) // need)
    if trials < 1:
        if peak_bytes + context_bytes <= total_bytes:
            return 1.0  # fits alone, without the headroom: one trial per GPU
        raise ResourceError(f"one training step needs {_gib(peak_bytes)} of GPU memory (plus "
                            f"{_gib(context_bytes)} of CUDA context), more than the GPU's "
                            f"{_gib(total_bytes)}: lower training.batch_size")
    trials = min(trials, max_trials)
    return math.floor(RAY_RESOURCE_PRECISION / trials) / RAY_RESOURCE_PRECISION


@dataclass(frozen=True)
class MemoryProbe:
    """One (model, batch size) a role trains: measured by one training step on a GPU."""

    role: str
    method: str  # 'teacher' for teacher pretraining
    dataset_index: int
    hint_layer: str | None = None


@dataclass(frozen=True)
class Shape:
    """What a model needs to know about a dataset to be built and fed."""

    channels: int
    image_size: int
    num_classes: int
    data_bytes: int = 0  # the splits a trial keeps on its device, beside the training step


def probes_for(spec: StudySpec, roles: Iterable[str]) -> list[MemoryProbe]:
    """Every (role, method, dataset, hint layer) whose training step may differ in memory."""
    probes = []
    for index in range(len(spec.datasets)):
        for role in roles:
            if role == "teacher":
                probes.extend(MemoryProbe(role, methods.PRETRAINED[m], index)
                              for m in methods.teacher_sources(spec))
            else:
                for method in (m for m in spec.methods if role_of(m) == role):
                    probes.extend(MemoryProbe(role, method, index, h)
                                  for h in methods.get(method).memory_variants(spec))
    return probes


def step_peak_bytes(spec: StudySpec, probe: MemoryProbe, shape: Shape, device: Any) -> int:
    """Peak memory PyTorch allocated on ``device`` for two training steps (the optimizer's
    state appears in the first) and one evaluation batch of the trial ``probe`` describes,
    built as the trainable builds it (:func:`kdtune.trial.build_trial`, on random images);
    0 on a CPU, where nothing is measured (the code path still runs, which is what the CPU
    tests check)."""
    import torch

    from kdtune.data import Splits
    from kdtune.devices import autocast
    from kdtune.distill import Batch
    from kdtune.engine import train_step
    from kdtune.job import TrialJob
    from kdtune.models import build_model
    from kdtune.trial import build_trial

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t = spec.training
    n, size = t.batch_size, (shape.channels, shape.image_size, shape.image_size)
    labels = torch.randint(0, shape.num_classes, (n,), device=device)
    pixels = torch.randint(0, 256, (n, *size), dtype=torch.uint8, device=device)
    splits = Splits("probe", pixels, labels, pixels, labels, pixels, labels, shape.num_classes,
                    (0.5,) * shape.channels, (0.25,) * shape.channels)
    role = "teacher" if probe.role == "teacher" else "search"
    job = TrialJob("probe", role, probe.dataset_index, probe.method, 0).with_hp(
        hint_layer=probe.hint_layer)
    _, teacher_arch = methods.trial_models(spec, probe.method)
    teacher = None
    if teacher_arch is not None and role != "teacher":
        teacher = build_model(teacher_arch.arch, shape.channels, shape.num_classes,
                              shape.image_size, teacher_arch.options).to(device).eval()
    trial = build_trial(spec, job, splits, device, teacher)  # the teacher runs live: no cache
    images = torch.randn(n, *size, device=device)
    trial.distiller.train()
    for _ in range(2):
        train_step(trial.distiller, trial.optimizer, Batch(images, labels), t.amp)
    trial.model.eval()
    with torch.no_grad(), autocast(device, t.amp):
        trial.model(torch.randn(EVAL_BATCH, *size, device=device))
    if not cuda:
        return 0
    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device))
    del trial, images, labels, splits, pixels, teacher
    torch.cuda.empty_cache()
    return peak


def measure_peaks(spec: StudySpec, probes: list[MemoryProbe],
                  shapes: list[Shape]) -> tuple[list[int], int, str]:
    """Run in a Ray task holding one GPU: each probe's peak bytes, the GPU's memory, its name."""
    import torch

    if not torch.cuda.is_available():
        raise ResourceError("the task Ray gave a GPU sees no CUDA device "
                            "(CUDA_VISIBLE_DEVICES or the node's driver)")
    device = torch.device("cuda")
    peaks = [step_peak_bytes(spec, p, shapes[p.dataset_index], device) for p in probes]
    props = torch.cuda.get_device_properties(device)
    return peaks, int(props.total_memory), props.name


def measure_on_gpu(spec: StudySpec, probes: list[MemoryProbe], shapes: list[Shape],
                   timeout_s: float = 900) -> tuple[list[int], int, str]:
    """:func:`measure_peaks` as a Ray task with a whole GPU to itself (nothing else on it)."""
    import ray

    ref = ray.remote(num_gpus=1, num_cpus=1, max_retries=0)(measure_peaks).remote(
        spec, probes, shapes)
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        raise ResourceError(f"resources.gpus: fit: no GPU became free for the memory "
                            f"measurement within {timeout_s:.0f}s")
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = error.as_instanceof_cause()
        if isinstance(cause, ResourceError):
            raise ResourceError(str(cause).splitlines()[-1]) from None
        raise ResourceError(f"resources.gpus: fit: the memory measurement failed: "
                            f"{str(error).strip().splitlines()[-1]}") from None


# ----------------------------------------------------------------------------- resolution

Measure = Callable[[StudySpec, list[MemoryProbe], list[Shape]], tuple[list[int], int, str]]


@dataclass
class ResourcePlan:
    """Resolved resources per role, and the measurements behind ``fit``."""

    roles: dict[str, TrialResources]
    measured: dict[str, Any] = field(default_factory=dict)

    def for_method(self, method: str) -> TrialResources:
        return self.roles[role_of(method)]

    def describe(self) -> str:
        return "; ".join(f"{role} {r.describe()}" for role, r in self.roles.items())

    def slots(self, cluster: ClusterView, cap: int | None = None) -> int:
        """How many trials the cluster runs at once (of the role that packs best), at most
        ``cap``: Tune's limit on trials waiting for a worker should not be lower."""
        def fits(node: NodeView, r: TrialResources) -> int:
            counts = [node.cpus // r.cpus if r.cpus else math.inf]
            counts += [node.gpus // r.gpus] if r.gpus else []
            counts += [node.memory // r.memory] if r.memory else []
            return int(min(counts)) if min(counts) != math.inf else 1

        best = max((sum(fits(n, r) for n in cluster.nodes) for r in self.roles.values()),
                   default=1)
        return max(1, min(best, cap or best))


def check_fits(spec: StudySpec, role: str, trial: TrialResources, cluster: ClusterView) -> None:
    """A one-line :class:`ResourceError` if no node of ``cluster`` can run one such trial."""
    res = spec.resources
    if not cluster.nodes:
        raise ResourceError("the Ray cluster has no alive node")
    gpus_field, cpus_field = res.field_name(role, "gpus"), res.field_name(role, "cpus")
    if trial.gpus > 0 and cluster.gpus == 0:
        raise ResourceError(f"{gpus_field}: {trial.gpus:g} GPU per {role} trial, but the Ray "
                            f"cluster has no GPU (use gpus: auto to take one only where there "
                            f"is one, or gpus: 0)")
    most_gpus = max(n.gpus for n in cluster.nodes)
    if trial.gpus > most_gpus:
        raise ResourceError(f"{gpus_field}: {trial.gpus:g} GPUs per {role} trial, but no node "
                            f"has more than {most_gpus:g}")
    most_cpus = max(n.cpus for n in cluster.nodes)
    if trial.cpus > most_cpus:
        raise ResourceError(f"{cpus_field}: {trial.cpus:g} CPUs per {role} trial, but no node "
                            f"has more than {most_cpus:g}")
    if trial.memory:
        most_memory = max(n.memory for n in cluster.nodes)
        if trial.memory > most_memory:
            raise ResourceError(f"{res.field_name(role, 'memory')}: {_gib(trial.memory)} per "
                                f"{role} trial, but no node offers more than "
                                f"{_gib(most_memory)} to Ray")
    if not any(n.cpus >= trial.cpus and n.gpus >= trial.gpus
               and n.memory >= (trial.memory or 0) for n in cluster.nodes):
        raise ResourceError(f"resources: no node of the cluster has {trial.describe()} at once "
                            f"for a {role} trial")


def resolve(spec: StudySpec, roles: Iterable[str], cluster: ClusterView, shapes: list[Shape],
            measure: Measure = measure_on_gpu,
            log: Callable[[str], None] = lambda _: None) -> ResourcePlan:
    """Turn each role's request into numbers, measuring GPU memory for ``fit``; check them."""
    res, roles = spec.resources, list(dict.fromkeys(roles))
    asked = {role: res.for_role(role) for role in roles}
    to_fit = []
    for role, (_, gpus) in asked.items():
        if gpus == "fit" and cluster.gpus == 0:
            raise ResourceError(f"{res.field_name(role, 'gpus')}: 'fit' sizes a GPU share from "
                                f"measured GPU memory, but the Ray cluster has no GPU (use "
                                f"gpus: auto to run on CPU where there is none, or gpus: 0)")
        if gpus in ("fit", "auto") and cluster.gpus > 0:
            to_fit.append(role)
    shares: dict[str, tuple[float, str]] = {}
    measured: dict[str, Any] = {}
    if to_fit:
        probes = probes_for(spec, to_fit)
        log(f"resources: measuring GPU memory of {len(probes)} training step(s) for "
            f"{', '.join(to_fit)} trials")
        peaks, total, name = measure(spec, probes, shapes)
        measured = {"gpu": name, "gpu_memory": total,
                    "peaks": [{"role": p.role, "method": p.method, "dataset_index":
                               p.dataset_index, "hint_layer": p.hint_layer, "peak_bytes": b}
                              for p, b in zip(probes, peaks)]}
        for role in to_fit:
            # a trial holds its dataset's splits on the GPU for its whole life
            peak = max(b + shapes[p.dataset_index].data_bytes
                       for p, b in zip(probes, peaks) if p.role == role)
            try:
                share = fit_fraction(peak, total)
            except ResourceError as error:
                raise ResourceError(f"{res.field_name(role, 'gpus')}: {role} trials: "
                                    f"{error}") from None
            shares[role] = (share, f"fit: {_gib(peak)} peak per trial on a {_gib(total)} "
                                   f"{name}")
    plan = {}
    for role, (cpus, gpus) in asked.items():
        if role in shares:
            gpus, how = shares[role]
        elif gpus == "auto":
            gpus, how = 0.0, "auto: no GPU in the cluster"
        else:
            how = ""
        trial = TrialResources(float(cpus), float(gpus), res.memory_for(role), how)
        check_fits(spec, role, trial, cluster)
        plan[role] = trial
    return ResourcePlan(plan, measured)


def roles_needed(spec: StudySpec, train_teacher: bool) -> list[str]:
    """The roles whose trials this study will run."""
    roles = ["teacher"] if train_teacher else []
    return roles + sorted({role_of(m) for m in spec.methods}, key=ROLES.index)


def requested(spec: StudySpec) -> str:
    """What each role asks for, as written (``auto``/``fit`` unresolved), for ``validate``."""
    train_teacher = any(role_of(m) == "student" for m in spec.methods)
    parts = []
    for role in roles_needed(spec, train_teacher):
        cpus, gpus = spec.resources.for_role(role)
        memory = spec.resources.memory_for(role)
        text = f"{role} {cpus:g} CPU"
        text += f" + {gpus} GPU" if isinstance(gpus, str) else (f" + {gpus:g} GPU" if gpus else "")
        parts.append(text + (f" + {_gib(memory)}" if memory else ""))
    cap = spec.resources.max_concurrent_trials
    return "; ".join(parts) + (f"; at most {cap} trials at once" if cap else "")
