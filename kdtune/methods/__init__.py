"""The method registry: every method a spec can name, one module each.

- ``scratch``: the spec's student on labels alone, the baseline of every student method.
- ``rkd``, ``ikd``, ``at``, ``mskd``: the spec's student, taught by the spec's teacher.
- ``self``: the spec's student, taught by a pretrained model of the student's own architecture.
- ``reversed``: the roles swapped (the teacher architecture trained, taught by a pretrained
  student-architecture model), against its own baseline ``reversed_scratch``.

Pretrained models appear in the results with role ``teacher`` and method ``teacher`` (the spec's
teacher architecture) or ``pretrained_student`` (the student architecture, for self/reversed).

To add a method: one module in this package defining ``METHOD`` (a
:class:`~kdtune.methods.base.Method`), and its line in ``_MODULES`` below. Search, resources,
the compute estimate, result columns, the report and the CLI ask this registry and name no
method themselves. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from kdtune.methods.base import Baseline, BuildContext, Method, Model, StudySpec

_MODULES = (
    "scratch",
    "rkd",
    "ikd",
    "at",
    "self_kd",
    "reversed_kd",
    "reversed_scratch",
    "mskd",
    "ccd",
)

REGISTRY: dict[str, Method] = {}
for _module in _MODULES:
    _method = importlib.import_module(f"{__name__}.{_module}").METHOD
    REGISTRY[_method.name] = _method

# the method name of a pretrained model, by which spec architecture it has
PRETRAINED: dict[Model, str] = {"teacher": "teacher", "student": "pretrained_student"}


class _Pretraining(Baseline):
    """How a pretrained model (a teacher) is trained: labels alone."""

    name = "pretraining"
    summary = "a teacher (or the student-architecture model of self/reversed) on labels alone"


_PRETRAINING = _Pretraining()

__all__ = ["PRETRAINED", "REGISTRY", "BuildContext", "Method", "baseline_of", "get",
           "is_baseline", "is_pretrained", "loss_names", "model_spec", "names",
           "student_baseline", "teacher_sources", "trainer_of", "trial_models"]


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Method:
    """The method called ``name``; a KeyError names the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method '{name}' (known: {', '.join(REGISTRY)})") from None


def trainer_of(name: str) -> Method:
    """The method that trains a trial of ``name``: the method itself, or, for a pretrained
    model, training on labels alone."""
    return _PRETRAINING if is_pretrained(name) else get(name)


def is_pretrained(name: str) -> bool:
    """A pretrained model's rows (role ``teacher``), not a method a spec names."""
    return name in PRETRAINED.values()


def baseline_of(name: str) -> str | None:
    """The method whose test accuracy ``name``'s gain is measured against (None: a baseline or
    a pretrained model). An unknown name (a newer kdtune's rows) is measured against the
    student's baseline."""
    if is_pretrained(name):
        return None
    method = REGISTRY.get(name)
    return method.baseline if method else student_baseline()


def is_baseline(name: str) -> bool:
    method = REGISTRY.get(name)
    return bool(method and method.is_baseline)


def student_baseline() -> str:
    """The baseline that trains the spec's student: the zero of the core study's tables."""
    return next(m.name for m in REGISTRY.values() if m.is_baseline and m.trains == "student")


# a kdtune.spec.ModelSpec (named, not imported: the spec imports this registry)
ModelSpec = Any


def model_spec(spec: StudySpec, which: Model) -> ModelSpec:
    return spec.teacher if which == "teacher" else spec.student


def teacher_sources(spec: StudySpec) -> list[Model]:
    """The pretrained models a study needs, in a stable order (teacher first)."""
    needed = {REGISTRY[m].taught_by for m in spec.methods} - {None}
    return [m for m in ("teacher", "student") if m in needed]


def trial_models(spec: StudySpec, method: str) -> tuple[ModelSpec, ModelSpec | None]:
    """(the model a trial of ``method`` trains, the model teaching it) for any method name,
    including the pretrained ones, which nobody teaches."""
    if is_pretrained(method):
        which = next(k for k, v in PRETRAINED.items() if v == method)
        return model_spec(spec, which), None
    info = get(method)
    return (model_spec(spec, info.trains),
            model_spec(spec, info.taught_by) if info.taught_by else None)


def loss_names() -> tuple[str, ...]:
    """Every loss name some method returns, in registry order (the epoch rows' columns)."""
    return tuple(dict.fromkeys(n for m in REGISTRY.values() for n in m.loss_names))
