"""The study spec: a YAML file that reads like a paper's method section, validated with pydantic.

Light on purpose: it imports neither torch nor ray. Names are checked against registries that
import nothing heavy (:mod:`kdtune.sources`, :mod:`kdtune.models`, :mod:`kdtune.augment`,
:mod:`kdtune.methods`), so a misspelt spec is refused before any of that loads.

``load_spec`` turns every problem into one :class:`SpecError` whose message names the field
(``datasets[0].name: unknown dataset 'cifar1000' (known: ...)``) or the file position of a YAML
syntax error, so the CLI can print one line and exit 2 before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kdtune import methods
from kdtune.augment import POLICIES as AUGMENTATIONS
from kdtune.hparams import DISTILLATION_DIMS, RANGE_DIMS, parse_hint
from kdtune.models import ARCHS, arch_taps
from kdtune.sources import SOURCES

if TYPE_CHECKING:
    from kdtune.data import Pool, Splits
    from kdtune.knobs import Knobs

GPU_MODES = ("auto", "fit")


class SpecError(ValueError):
    """A study spec that cannot run; ``str(error)`` is one line naming the field or file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# knob fields in the order a label lists them; None leaves the property as the source has it
KNOB_FIELDS = ("max_train", "classes", "label_noise", "resolution", "channels", "pixel_noise",
               "clutter")


class DatasetSpec(_Strict):
    name: str
    path: str | None = None  # imagefolder only: one sub-folder per class
    data_dir: str | None = None
    download: bool = False
    split: tuple[float, float, float] | Literal["paper"] = "paper"
    split_seed: int = 0
    # complexity knobs (kdtune/knobs.py says what each touches)
    max_train: int | None = Field(default=None, ge=10)  # BatchNorm and stratified splits need a few
    classes: int | list[int] | None = None
    label_noise: float | None = Field(default=None, ge=0, lt=1)
    resolution: int | None = Field(default=None, ge=2, le=512)
    channels: Literal[1, 3] | None = None
    pixel_noise: float | None = Field(default=None, ge=0, le=1)
    clutter: int | None = Field(default=None, ge=0, le=16)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(f"unknown dataset '{value}' (known: {', '.join(SOURCES)})")
        return value

    @field_validator("split")
    @classmethod
    def _fractions(cls, value: Any) -> Any:
        if value != "paper" and (any(f <= 0 for f in value) or abs(sum(value) - 1) > 1e-6):
            raise ValueError("split fractions must be positive and sum to 1")
        return value

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 2:
            raise ValueError("a class subset needs at least 2 classes")
        if isinstance(value, list) and (len(set(value)) < 2 or len(set(value)) != len(value)
                                        or min(value) < 0):
            raise ValueError("a class subset lists at least 2 distinct class indices >= 0")
        return sorted(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _path(self) -> DatasetSpec:
        if self.name == "imagefolder" and not self.path:
            raise ValueError("@path: imagefolder needs path: a folder with one sub-folder "
                             "per class")
        if self.name != "imagefolder" and self.path:
            raise ValueError("@path: path is for imagefolder; use data_dir for a local copy "
                             f"of {self.name}")
        return self

    def knob_values(self) -> dict[str, Any]:
        """The knobs this variant sets, in label order."""
        return {k: getattr(self, k) for k in KNOB_FIELDS if getattr(self, k) is not None}

    def knobs(self) -> Knobs:
        from kdtune.knobs import Knobs

        values = {k: v for k, v in self.knob_values().items() if k != "max_train"}
        if isinstance(values.get("classes"), list):
            values["classes"] = tuple(values["classes"])
        return Knobs(**values)

    @property
    def label(self) -> str:
        """The dataset's key in every result file: the name plus the knobs it sets."""
        base = self.name if self.name != "imagefolder" else f"imagefolder:{Path(self.path or '').name}"
        parts = []
        for key, value in self.knob_values().items():
            if key == "max_train":
                parts.append(f"n={value}")  # the short form earlier runs used
            elif isinstance(value, list):
                parts.append(f"{key}={'+'.join(map(str, value))}")
            else:
                parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        return base + (f"[{','.join(parts)}]" if parts else "")

    def knob(self) -> tuple[str | None, float | None]:
        """(knob, value) for result files: the one knob set, '+'-joined names if several."""
        values = self.knob_values()
        if not values:
            return None, None
        if len(values) > 1:
            return "+".join(values), None
        ((key, value),) = values.items()
        return key, float(len(value) if isinstance(value, list) else value)

    def load(self) -> Splits:
        """Load this dataset's splits with its knobs applied."""
        return self.split_from(self.load_pool())

    def load_pool(self) -> Pool:
        """The dataset's images before splitting (read once, split many times by resplit)."""
        from kdtune.data import load_pool

        return load_pool(self.name, data_dir=self.data_dir, download=self.download,
                         path=self.path, classes=self.knobs().classes)

    def split_from(self, pool: Pool) -> Splits:
        """This variant's splits (its split seed, volume and knobs) carved from ``pool``."""
        from kdtune.data import split_pool

        return split_pool(pool, fractions=None if self.split == "paper" else tuple(self.split),
                          split_seed=self.split_seed, max_train=self.max_train,
                          knobs=self.knobs())

    def resplit(self, seed: int) -> DatasetSpec:
        """This dataset re-drawn for final seed ``seed`` (``final.resplit``): the same variant
        with a split seed derived from its own and the seed, so train, val and test (and every
        knob's draw) differ per seed, and each seed's teacher is its own."""
        digest = hashlib.sha256(f"resplit:{self.split_seed}:{seed}".encode()).hexdigest()
        return self.model_copy(update={"split_seed": int(digest[:8], 16)})


class ModelSpec(_Strict):
    arch: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ARCHS:
            raise ValueError(f"unknown architecture '{value}' (known: {', '.join(ARCHS)})")
        return value

    @model_validator(mode="after")
    def _options(self) -> ModelSpec:
        allowed = ARCHS[self.arch].options
        for key in self.options:
            if key not in allowed:
                raise ValueError(f"unknown option '{key}' for {self.arch} "
                                 f"(known: {', '.join(allowed) or 'none'})")
        widths = self.options.get("widths", [1])
        if (not isinstance(widths, list) or not widths or len(widths) > 8
                or not all(isinstance(w, int) and not isinstance(w, bool) and 0 < w <= 4096
                           for w in widths)):
            raise ValueError(f"options.widths must be a list of 1 to 8 positive integers, "
                             f"got {widths!r}")
        wanted = ARCHS[self.arch].n_widths
        if "widths" in self.options and wanted and len(widths) != wanted:
            raise ValueError(f"options.widths: {self.arch} has {wanted} stages, so widths "
                             f"lists {wanted} integers, got {len(widths)}")
        return self

    @property
    def label(self) -> str:
        return self.arch + (json.dumps(self.options, sort_keys=True) if self.options else "")


class TrainingSpec(_Strict):
    teacher_epochs: int = Field(default=20, ge=1)
    student_epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=2)  # BatchNorm needs two samples to train
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.001, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    augmentation: str = "paper"
    aug_share: float = Field(default=1.0, ge=0, le=1)  # fraction of each batch augmented
    amp: bool = True  # bf16 autocast where a GPU runs the trial; ignored on CPU

    @field_validator("augmentation")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation '{value}' (known: {', '.join(AUGMENTATIONS)})")
        return value


class DistillationSpec(_Strict):
    """The fixed values used where the search does not open a dimension (the paper's point)."""

    alpha: float = Field(default=0.7, ge=0, le=1)
    tau: float = Field(default=4.0, gt=0)
    hint_layer: str | None = None
    beta: float = Field(default=1.0, ge=0)
    # omit-one-class: every student (scratch included) trains and validates without class k; the
    # teacher saw it; trials report test accuracy on class k (kdtune.methods.omit_class)
    omit_class: int | None = Field(default=None, ge=0)


# the searched ranges' bounds: (low, high, low bound excluded); None is unbounded
SEARCH_RANGES = {"alpha": (0.0, 1.0, False), "tau": (0.0, None, True),
                 "beta": (0.0, None, False), "lr": (0.0, None, True),
                 "aug_share": (0.0, 1.0, False)}
assert set(SEARCH_RANGES) == set(RANGE_DIMS)


def _range(value: Any, low: float | None, high: float | None, name: str,
           low_open: bool = False) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = value
    if lo > hi:
        raise ValueError(f"{name} range [{lo}, {hi}] is empty")
    if low is not None and (lo < low or (low_open and lo <= low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {lo}")
    if high is not None and hi > high:
        raise ValueError(f"{name} must be <= {high}, got {hi}")
    return float(lo), float(hi)


class SearchSpec(_Strict):
    """The dimensions Optuna searches; a dimension left out stays at its fixed value
    (``distillation`` for alpha, tau, beta and the hint layer; ``training`` for lr and the
    augmentation). Setting a dimension both here and in ``distillation`` is an error."""

    trials: int = Field(default=8, ge=1)
    alpha: tuple[float, float] | None = None
    tau: tuple[float, float] | None = None
    hint_layers: list[str] | None = None
    beta: tuple[float, float] | None = None
    lr: tuple[float, float] | None = None  # searched on a log scale, for every method alike
    # the student's augmentation policy and augmented share of each batch, for every method
    # alike (the teacher keeps training.augmentation: augmentation changes what KD transfers)
    augmentation: list[str] | None = None
    aug_share: tuple[float, float] | None = None
    max_concurrent: int = Field(default=2, ge=1)
    sampler_seed: int = 0
    include_paper_point: bool = True  # evaluate alpha=0.7, tau=4 first
    # configurations evaluated next, in order, e.g. a temperature sweep [{tau: 1}, {tau: 2}, ...];
    # each method takes the keys it searches and Optuna samples the rest
    points: list[dict[str, Any]] | None = None
    # an Optuna RDB (sqlite:///FILE.db, postgresql://..., mysql://...) that also holds every
    # search, named RUN_ID/STAGE, for a team's optuna-dashboard; the run directory's journal
    # gets a copy of each search when the run ends (the report reads it from there)
    storage: str | None = None
    # start each search with the best configs of earlier searches of the same method and
    # models (kdtune.warm_start): `auto` (the finished runs in the storage) or run directories;
    # the `warm_start_configs` nearest in measured dataset complexity are enqueued first
    warm_start: Literal["auto"] | list[str] | None = None
    warm_start_configs: int = Field(default=2, ge=1, le=100)

    @field_validator("warm_start", mode="before")
    @classmethod
    def _runs(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "auto":
            v = [v]  # one run directory
        if isinstance(v, list):
            if not v or not all(isinstance(r, str) and r.strip() for r in v):
                raise ValueError("`auto`, or one or more run directories (paths or URIs)")
            if "auto" in v:
                raise ValueError("`auto` stands alone, not in a list of run directories")
        return v

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme = v.split("://", 1)[0].split("+", 1)[0] if "://" in v else ""
        if scheme not in ("sqlite", "postgresql", "mysql"):
            raise ValueError(f"an Optuna RDB URL (sqlite:///FILE.db, postgresql://..., "
                             f"mysql://...), got {v!r}")
        return v

    @field_validator(*SEARCH_RANGES)
    @classmethod
    def _search_range(cls, v: Any, info: ValidationInfo) -> Any:
        low, high, low_open = SEARCH_RANGES[info.field_name]
        return _range(v, low, high, info.field_name, low_open=low_open)

    @field_validator("augmentation")
    @classmethod
    def _policies(cls, v: Any) -> Any:
        if v is None:
            return v
        if not v or len(set(v)) != len(v):
            raise ValueError("augmentation lists at least one policy, each once")
        for index, policy in enumerate(v):
            if policy not in AUGMENTATIONS:
                raise ValueError(f"[{index}]: unknown augmentation '{policy}' "
                                 f"(known: {', '.join(AUGMENTATIONS)})")
        return v

    @field_validator("hint_layers")
    @classmethod
    def _nonempty(cls, v: Any) -> Any:
        if v is not None and not v:
            raise ValueError("hint_layers must list at least one layer")
        return v


class FinalSpec(_Strict):
    """The final evaluation: each search's best config (on validation) retrained per seed.

    ``seeds`` are the first round. With ``target_halfwidth`` (points, 95 %), every comparison
    of a method with its baseline whose paired interval is wider than the target gets more
    seeds (its baseline runs the same ones), round after round, until the target or
    ``max_seeds``; never fewer than ``min_seeds`` (kdtune.stats.next_round says why). The rule
    looks at the width of the interval only, never at its sign. ``resplit`` re-draws the
    train/val/test split per seed (a teacher per split). ``equivalence_margin`` (points) lets
    a verdict say ``equivalent`` (TOST)."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    target_halfwidth: float | None = Field(default=None, gt=0)
    max_seeds: int | None = Field(default=None, ge=2, le=1000)
    min_seeds: int = Field(default=5, ge=2)
    resplit: bool = False
    equivalence_margin: float | None = Field(default=None, gt=0)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("a seed is listed twice")
        return value

    @model_validator(mode="after")
    def _rounds(self) -> FinalSpec:
        if self.target_halfwidth is not None and self.max_seeds is None:
            raise ValueError("@max_seeds: final.target_halfwidth needs final.max_seeds (the "
                             "most seeds a comparison may run), e.g. max_seeds: 20")
        if self.max_seeds is not None and self.max_seeds < len(self.seeds):
            raise ValueError(f"@max_seeds: {self.max_seeds} is fewer than the "
                             f"{len(self.seeds)} seeds of the first round")
        return self

    def all_seeds(self) -> list[int]:
        """The first round, then the seeds later rounds draw from, in order."""
        extra = range(max(self.seeds) + 1, max(self.seeds) + 1 + (self.max_seeds or 0))
        return (self.seeds + [s for s in extra if s not in self.seeds])[:max(
            len(self.seeds), self.max_seeds or 0)]


def _gpu_request(value: Any) -> float | str:
    """A GPU share per trial: a number (0.25 lets four trials share a GPU), 'auto' or 'fit'."""
    if isinstance(value, str) and value.strip().lower() in GPU_MODES:
        return value.strip().lower()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"gpus must be a number (0.25 lets four trials share a GPU), 'auto' or "
                         f"'fit', got {value!r}")
    if not value >= 0:  # also catches NaN
        raise ValueError("Input should be greater than or equal to 0 (or 'auto', 'fit')")
    if value > 1 and not float(value).is_integer():
        # Ray's rule: a share of one GPU, or whole GPUs
        raise ValueError(f"more than one GPU per trial must be a whole number, got {value}")
    return float(value)


_MEMORY_UNITS = {"": 2**30, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def _memory_request(value: Any) -> int | None:
    """Memory per trial in bytes, from a number of GiB or a string such as '512MiB' or '4GiB'."""
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", value.lower())
        if not match:
            raise ValueError(f"memory must be a number of GiB or a size such as '512MiB' or "
                             f"'4GiB', got {value!r}")
        number, unit = float(match[1]), _MEMORY_UNITS[match[2]]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), _MEMORY_UNITS[""]
    else:
        raise ValueError(f"memory must be a number of GiB or a size such as '4GiB', got {value!r}")
    if not 0 < number * unit < 2**60:  # also catches NaN and infinity
        raise ValueError(f"memory must be a positive size, got {value!r}")
    return int(number * unit)


GpuRequest = Annotated[float | str, BeforeValidator(_gpu_request)]
MemoryRequest = Annotated[int | None, BeforeValidator(_memory_request)]


class RoleResources(_Strict):
    """What one role's trials ask for; a field left out takes the flat ``resources`` value."""

    cpus: float | None = Field(default=None, gt=0)
    gpus: GpuRequest | None = None
    memory: MemoryRequest = None


class ResourcesSpec(_Strict):
    """Ray resources per trial. The flat values apply to every trial; ``teacher``, ``scratch``
    and ``student`` override them for one role (scratch falls back to student, then to flat).
    ``gpus: auto`` takes a GPU share where the cluster has GPUs and none otherwise; ``gpus: fit``
    measures a training step's peak GPU memory and derives the largest share that fits."""

    cpus: float = Field(default=1, gt=0)
    gpus: GpuRequest = 0.0
    memory: MemoryRequest = None
    max_concurrent_trials: int | None = Field(default=None, ge=1)  # per stage, all roles
    teacher: RoleResources | None = None
    scratch: RoleResources | None = None
    student: RoleResources | None = None

    def _overrides(self, role: str) -> list[RoleResources]:
        chain = {"teacher": [self.teacher], "scratch": [self.scratch, self.student]}
        return [o for o in chain.get(role, [self.student]) if o is not None]

    def _pick(self, role: str, name: str) -> Any:
        for override in self._overrides(role):
            if getattr(override, name) is not None:
                return getattr(override, name)
        return getattr(self, name)

    def field_name(self, role: str, name: str) -> str:
        """The spec field a role's value comes from, for error messages."""
        for key, override in (("teacher", self.teacher), ("scratch", self.scratch),
                              ("student", self.student)):
            if (any(o is override for o in self._overrides(role))
                    and getattr(override, name) is not None):
                return f"resources.{key}.{name}"
        return f"resources.{name}"

    def for_role(self, role: str) -> tuple[float, float | str]:
        """(cpus, gpus) asked for one trial of ``role``: 'teacher', 'scratch', or any student
        role ('student', 'search', 'final'); gpus may still be 'auto' or 'fit'."""
        return self._pick(role, "cpus"), self._pick(role, "gpus")

    def memory_for(self, role: str) -> int | None:
        """Bytes of memory one trial of ``role`` reserves with Ray, or None."""
        return self._pick(role, "memory")


class SchedulerSpec(_Strict):
    """Early stopping of search trials (final runs are never stopped). ``kind`` names a rule
    of :mod:`kdtune.stopping` (``none``, ``asha``, ``asha_late``, ``median``, ``percentile``,
    ``patient``, ``wilcoxon``, ``extrapolate``, ``trails_leader``); ``asha: true`` is the older
    spelling of ``kind: asha``. Off by default: on recorded curves no rule saved 40 % of search
    epochs while keeping each search's best trial (benchmarks/early_stopping.py)."""

    kind: str | None = None
    asha: bool = False
    grace_period: int = Field(default=2, ge=1)
    reduction_factor: float = Field(default=3, gt=1)
    max_retries: int = Field(default=2, ge=0)  # a crashed trial restarts from its checkpoint
    # a trial checkpoints when this many seconds have passed since its last checkpoint, and
    # after its last epoch; 0: after every epoch. A crashed trial loses at most that much.
    checkpoint_every_s: float = Field(default=10.0, ge=0)
    # a trial reports to Tune when this many seconds have passed since its last report, with
    # every checkpoint and after its last epoch, each report carrying the epochs since the one
    # before; search trials report every epoch while a rule watches them. 0: every epoch.
    report_every_s: float = Field(default=2.0, ge=0)

    @field_validator("kind")
    @classmethod
    def _known_rule(cls, value: str | None) -> str | None:
        from kdtune.stopping import RULES  # imports nothing heavy

        if value is not None and value != "none" and value not in RULES:
            raise ValueError(f"unknown early-stopping rule {value!r}; known: none, "
                             f"{', '.join(RULES)}")
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> SchedulerSpec:
        if self.asha and self.kind not in (None, "asha"):
            raise ValueError(f"asha: true and kind: {self.kind} name two rules; keep one")
        return self

    @property
    def rule(self) -> str:
        """The early-stopping rule in force: ``kind``, else ``asha`` where ``asha: true``."""
        return self.kind or ("asha" if self.asha else "none")


class MlflowSpec(_Strict):
    """An MLflow tracking server (or a local ``file:`` / ``sqlite:`` store)."""

    tracking_uri: str = Field(min_length=1)
    experiment: str | None = None  # default: the study's name


class WandbSpec(_Strict):
    """Weights & Biases; ``offline`` writes run files locally (``wandb sync`` uploads them)."""

    project: str = Field(min_length=1)
    mode: Literal["online", "offline"] = "offline"
    entity: str | None = None
    dir: str | None = None  # default: the run directory (RUN/wandb/)


class TrackingSpec(_Strict):
    """Experiment trackers that get every trial (config, tags, per-epoch metrics) and the
    study's gains as one summary run with report.html attached (``kdtune.tracking``)."""

    mlflow: MlflowSpec | None = None
    wandb: WandbSpec | None = None
    tensorboard: bool = False  # event files in RUN/tensorboard/, one folder per trial


class StudySpec(_Strict):
    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    description: str = ""
    storage: str = "runs"
    datasets: list[DatasetSpec] = Field(min_length=1)
    teacher: ModelSpec
    student: ModelSpec
    teacher_seed: int = 0
    methods: list[str] = Field(min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    final: FinalSpec = Field(default_factory=FinalSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @field_validator("datasets")
    @classmethod
    def _distinct(cls, value: list[DatasetSpec]) -> list[DatasetSpec]:
        labels = [ds.label for ds in value]
        for index, label in enumerate(labels):
            if label in labels[:index]:
                raise ValueError(f"[{index}]: the same dataset as datasets[{labels.index(label)}]"
                                 f" ({label}); results are keyed by it")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        known = methods.names()
        for index, method in enumerate(value):
            if method not in known:
                raise ValueError(f"[{index}]: unknown method '{method}' (known: "
                                 f"{', '.join(known)})")
        if len(set(value)) != len(value):
            raise ValueError("a method is listed twice")
        return value

    @model_validator(mode="after")
    def _hints(self) -> StudySpec:
        teacher_taps = arch_taps(self.teacher.arch, self.teacher.options)
        student_taps = arch_taps(self.student.arch, self.student.options)
        named = [("search.hint_layers", h) for h in self.search.hint_layers or []]
        if self.distillation.hint_layer:
            named.append(("distillation.hint_layer", self.distillation.hint_layer))
        for field, hint in named:
            t, s = parse_hint(hint)
            if t not in teacher_taps:
                raise ValueError(f"@{field}: teacher {self.teacher.arch} has no layer '{t}' "
                                 f"(valid: {', '.join(teacher_taps)})")
            if s not in student_taps:
                raise ValueError(f"@{field}: student {self.student.arch} has no layer '{s}' "
                                 f"(valid: {', '.join(student_taps)})")
        if (self.search.aug_share and self.training.augmentation == "none"
                and set(self.search.augmentation or ["none"]) == {"none"}):
            raise ValueError("@search.aug_share: nothing to share: no augmentation policy "
                             "(set training.augmentation or search.augmentation)")
        return self

    @model_validator(mode="after")
    def _fixed_or_searched(self) -> StudySpec:
        """A dimension is fixed (``distillation``) or searched (``search``), never both: the
        fixed value would be silently ignored."""
        for name in DISTILLATION_DIMS:
            searched = (self.search.hint_layers if name == "hint_layer"
                        else getattr(self.search, name))
            if name in self.distillation.model_fields_set and searched is not None:
                key = "hint_layers" if name == "hint_layer" else name
                raise ValueError(f"@distillation.{name}: fixed at "
                                 f"{getattr(self.distillation, name)} but search.{key} also "
                                 f"searches it; keep one (left out of search = fixed)")
        return self

    @model_validator(mode="after")
    def _method_needs(self) -> StudySpec:
        for method in self.methods:
            methods.get(method).check(self)
        for index, point in enumerate(self.search.points or []):
            for name, value in point.items():
                where = f"@search.points[{index}]"
                if name == "hint_layer":
                    if value not in self.hint_choices():
                        raise ValueError(f"{where}: hint_layer '{value}' is not among "
                                         f"search.hint_layers")
                    continue
                bounds = (getattr(self.search, name, None) if name in RANGE_DIMS
                          and name != "aug_share" else "unknown")
                if bounds == "unknown":
                    raise ValueError(f"{where}: unknown dimension '{name}' (known: alpha, tau, "
                                     "beta, lr, hint_layer)")
                if bounds is None:
                    raise ValueError(f"{where}: {name} is not searched (give search.{name} a "
                                     "range that holds the point)")
                if not isinstance(value, (int, float)) or not bounds[0] <= value <= bounds[1]:
                    raise ValueError(f"{where}: {name}={value} is outside search.{name} "
                                     f"[{bounds[0]}, {bounds[1]}]")
        return self

    def hint_choices(self) -> list[str]:
        return list(self.search.hint_layers or [self.distillation.hint_layer])

    def teacher_id(self, dataset: DatasetSpec, model: Literal["teacher", "student"] = "teacher"
                   ) -> str:
        """Identity of a pretrained model: everything that changes its weights, hashed (the
        recipe of :func:`kdtune.teacher_recipe.recipe`, which ``teacher.json`` records in plain
        form).

        ``model='student'`` is the pretrained student-architecture model that teaches ``self``
        and ``reversed``: the same training recipe with the student's architecture.
        """
        from kdtune.teacher_recipe import recipe, recipe_digest

        # training.amp stays out of the id (decided 2026-12, issue 18): bf16 autocast changes
        # a teacher's weights only at rounding level, as a different GPU or cuDNN version
        # does, not its recipe; it is ignored on CPU; and adding it now would orphan every
        # teacher users have stored (tests/test_spec.py pins the ids). A teacher trained under
        # autocast is reused by an fp32 study of the same recipe, and the other way round.
        spec_model = self.teacher if model == "teacher" else self.student
        digest = recipe_digest(recipe(self, dataset, model))
        return f"{dataset.name}-{spec_model.arch}-s{self.teacher_seed}-{digest}"


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "spec"


def _format_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    path = _field_path(tuple(first["loc"]))
    if message.startswith("["):  # a list validator pointing at one element: "[2]: ..."
        index, _, message = message.partition(": ")
        path += index
    elif message.startswith("@"):  # a cross-field validator naming its own field
        field, _, message = message[1:].partition(": ")
        path = field if path == "spec" else f"{path}.{field}"
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = len(error.errors()) - 1
    return f"{path}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def parse_spec(data: Any, source: str = "spec") -> StudySpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a study spec must be a YAML mapping, got {type(data).__name__}")
    try:
        return StudySpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_validation_error(error)) from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a YAML study spec; every failure is a one-line :class:`SpecError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read spec ({getattr(error, 'strerror', None) or error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise SpecError(f"{where}: YAML syntax error: {problem}") from None
    return parse_spec(data, str(path))
