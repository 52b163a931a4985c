"""The study spec: a YAML file that reads like a paper's method section, validated with pydantic.

``load_spec`` turns every problem into one :class:`SpecError` whose message names the field
(``datasets[0].name: unknown dataset 'cifar1000' (known: ...)``) or the file position of a YAML
syntax error, so the CLI can print one line and exit 2 before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdtune.data import AUGMENTATIONS, LOADERS
from kdtune.methods import METHOD_INFO
from kdtune.models import ARCHS, arch_taps

METHODS = tuple(METHOD_INFO)  # scratch, rkd, ikd, at, self, reversed, reversed_scratch, mskd


class SpecError(ValueError):
    """A study spec that cannot run; ``str(error)`` is one line naming the field or file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    name: str
    data_dir: str | None = None
    download: bool = False
    split: tuple[float, float, float] | Literal["paper"] = "paper"
    split_seed: int = 0
    max_train: int | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in LOADERS:
            raise ValueError(f"unknown dataset '{value}' (known: {', '.join(LOADERS)})")
        return value

    @field_validator("split")
    @classmethod
    def _fractions(cls, value: Any) -> Any:
        if value != "paper" and (any(f <= 0 for f in value) or abs(sum(value) - 1) > 1e-6):
            raise ValueError("split fractions must be positive and sum to 1")
        return value

    @property
    def label(self) -> str:
        return self.name if self.max_train is None else f"{self.name}[n={self.max_train}]"


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
        return self

    @property
    def label(self) -> str:
        return self.arch + (json.dumps(self.options, sort_keys=True) if self.options else "")


class TrainingSpec(_Strict):
    teacher_epochs: int = Field(default=20, ge=1)
    student_epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.001, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    augmentation: str = "paper"
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
    """The dimensions Optuna searches; a dimension left out stays at its fixed value."""

    trials: int = Field(default=8, ge=1)
    alpha: tuple[float, float] | None = (0.0, 1.0)
    tau: tuple[float, float] | None = (1.0, 20.0)
    hint_layers: list[str] | None = None
    beta: tuple[float, float] | None = None
    lr: tuple[float, float] | None = None  # searched on a log scale, for every method alike
    max_concurrent: int = Field(default=2, ge=1)
    sampler_seed: int = 0
    include_paper_point: bool = True  # evaluate alpha=0.7, tau=4 first
    # configurations evaluated next, in order, e.g. a temperature sweep [{tau: 1}, {tau: 2}, ...];
    # each method takes the keys it searches and Optuna samples the rest
    points: list[dict[str, Any]] | None = None

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: Any) -> Any:
        return _range(v, 0.0, 1.0, "alpha")

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: Any) -> Any:
        return _range(v, 0.0, None, "tau", low_open=True)

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: Any) -> Any:
        return _range(v, 0.0, None, "beta")

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: Any) -> Any:
        return _range(v, 0.0, None, "lr", low_open=True)

    @field_validator("hint_layers")
    @classmethod
    def _nonempty(cls, v: Any) -> Any:
        if v is not None and not v:
            raise ValueError("hint_layers must list at least one layer")
        return v


class FinalSpec(_Strict):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


class ResourcesSpec(_Strict):
    cpus: float = Field(default=1, gt=0)
    gpus: float = Field(default=0, ge=0)


class SchedulerSpec(_Strict):
    asha: bool = False
    grace_period: int = Field(default=2, ge=1)
    reduction_factor: float = Field(default=3, gt=1)


def parse_hint(hint: str) -> tuple[str, str]:
    """``'layer3:layer2'`` is (teacher tap, student tap); ``'stage2'`` names the same tap on both."""
    teacher, _, student = hint.partition(":")
    return teacher, (student or teacher)


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

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        for index, method in enumerate(value):
            if method not in METHODS:
                raise ValueError(f"[{index}]: unknown method '{method}' (known: {', '.join(METHODS)})")
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
        if "ikd" in self.methods and not (self.search.hint_layers or self.distillation.hint_layer):
            raise ValueError("@search.hint_layers: method ikd needs a hint layer "
                             "(search.hint_layers or distillation.hint_layer)")
        return self

    @model_validator(mode="after")
    def _method_needs(self) -> StudySpec:
        if "reversed" in self.methods and "reversed_scratch" not in self.methods:
            raise ValueError("@methods: method reversed needs its baseline reversed_scratch (the "
                             "teacher architecture on labels alone) in methods")
        if "mskd" in self.methods and len(arch_taps(self.student.arch, self.student.options)) < 2:
            raise ValueError(f"@methods: mskd needs a student with at least two stages "
                             f"({self.student.label} has one)")
        for index, point in enumerate(self.search.points or []):
            for name, value in point.items():
                where = f"@search.points[{index}]"
                if name == "hint_layer":
                    if value not in self.hint_choices():
                        raise ValueError(f"{where}: hint_layer '{value}' is not among "
                                         f"search.hint_layers")
                    continue
                bounds = getattr(self.search, name, None) if name in (
                    "alpha", "tau", "beta", "lr") else "unknown"
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
        """Identity of a pretrained model: everything that changes its weights, hashed.

        ``model='student'`` is the pretrained student-architecture model that teaches ``self``
        and ``reversed``: the same training recipe with the student's architecture.
        """
        spec_model = self.teacher if model == "teacher" else self.student
        key = {"dataset": dataset.model_dump(exclude={"data_dir", "download"}),
               "model": spec_model.model_dump(), "seed": self.teacher_seed,
               "epochs": self.training.teacher_epochs,
               "training": self.training.model_dump(exclude={"student_epochs", "amp"})}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
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
        path, _, message = message[1:].partition(": ")
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
