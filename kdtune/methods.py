"""The method registry: for each method, which model it trains, which pretrained model teaches
it, what Optuna may search, and which baseline its gain is measured against.

The names a study reads in its results:

- ``scratch``: the spec's student on labels alone, the baseline of every student method.
- ``rkd``, ``ikd``, ``at``, ``mskd``: the spec's student, taught by the spec's teacher.
- ``self``: the spec's student, taught by a pretrained model of the student's own architecture
  (trained once per dataset with the teacher's budget, stored like any teacher).
- ``reversed``: the roles swapped. The model trained has the spec's **teacher** architecture and
  the student budget; it is taught by that same pretrained student-architecture model. Its
  baseline is ``reversed_scratch`` (the teacher architecture on labels alone, student budget),
  never ``scratch``: a gain always compares two models of the same architecture. Rows carry
  ``arch`` (the model trained) and ``teacher_arch`` (the model teaching it) so nobody has to
  remember this.

Pretrained models appear in the results with role ``teacher`` and method ``teacher`` (the spec's
teacher architecture) or ``pretrained_student`` (the student architecture, for self/reversed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from kdtune.data import Splits
    from kdtune.spec import ModelSpec, StudySpec

Model = Literal["teacher", "student"]


@dataclass(frozen=True)
class Method:
    name: str
    trains: Model  # which of the spec's architectures this method trains
    taught_by: Model | None  # the pretrained model of which spec architecture teaches it
    searched: tuple[str, ...]  # method-specific dimensions (lr is common to all)
    baseline: str | None  # the method whose test accuracy its gain is measured against
    summary: str


METHOD_INFO: dict[str, Method] = {m.name: m for m in (
    Method("scratch", "student", None, (), None, "the student on labels alone (baseline)"),
    Method("rkd", "student", "teacher", ("alpha", "tau"), "scratch",
           "response-based KD, the paper's eq. 4"),
    Method("ikd", "student", "teacher", ("alpha", "tau", "hint_layer", "beta"), "scratch",
           "FitNets hints at one layer pair + the RKD loss"),
    Method("at", "student", "teacher", ("alpha", "tau", "beta"), "scratch",
           "attention transfer at every aligned stage pair + the RKD loss"),
    Method("self", "student", "student", ("alpha", "tau"), "scratch",
           "self-distillation: a pretrained copy of the student's architecture teaches it"),
    Method("reversed", "teacher", "student", ("alpha", "tau"), "reversed_scratch",
           "reversed KD: a pretrained student-architecture model teaches the teacher "
           "architecture"),
    Method("reversed_scratch", "teacher", None, (), None,
           "the teacher architecture on labels alone, student budget (reversed's baseline)"),
    Method("mskd", "student", "teacher", ("alpha", "tau"), "scratch",
           "multi-stage KD: an exit per student stage, each taught, trained in phases"),
)}

# the method name of a pretrained model, by which spec architecture it has
PRETRAINED = {"teacher": "teacher", "student": "pretrained_student"}


def model_spec(spec: StudySpec, which: Model) -> ModelSpec:
    return spec.teacher if which == "teacher" else spec.student


def teacher_sources(spec: StudySpec) -> list[Model]:
    """The pretrained models a study needs, in a stable order (teacher first)."""
    needed = {METHOD_INFO[m].taught_by for m in spec.methods} - {None}
    return [m for m in ("teacher", "student") if m in needed]


def trial_models(spec: StudySpec, method: str) -> tuple[ModelSpec, ModelSpec | None]:
    """(the model a trial of ``method`` trains, the model teaching it) for any method name,
    including the pretrained ones (``teacher``, ``pretrained_student``), which nobody teaches."""
    if method in PRETRAINED.values():
        return model_spec(spec, "teacher" if method == "teacher" else "student"), None
    info = METHOD_INFO[method]
    return (model_spec(spec, info.trains),
            model_spec(spec, info.taught_by) if info.taught_by else None)


def row_columns(spec: StudySpec, method: str, last: dict[str, Any]) -> dict[str, Any]:
    """The trial-row columns this module adds: who trained whom, and per-class/per-exit
    accuracies from the trial's last report."""
    trained, teacher = trial_models(spec, method)
    return {"arch": trained.label, "teacher_arch": teacher.label if teacher else None,
            **{k: last.get(k) for k in ("omitted_class", "omitted_class_acc", "class_acc_json",
                                        "exit_acc_json")}}


def omit_class(splits: Splits, k: int) -> Splits:
    """The student's transfer set without class ``k`` (Hinton et al. 2015, section 3; the Duke
    poster): train and validation lose every image of class ``k``, the test split keeps them,
    so test accuracy on ``k`` shows what the student learned of a class it never saw."""
    from kdtune.data import Splits

    if not 0 <= k < splits.num_classes:
        raise ValueError(f"omit_class {k} is not a class of {splits.name} "
                         f"(0..{splits.num_classes - 1})")
    # mean/std stay those of the full training split: the teacher was trained, and its cached
    # outputs computed, on inputs normalised with them
    keep_train, keep_val = splits.train_y != k, splits.val_y != k
    return Splits(splits.name, splits.train_x[keep_train], splits.train_y[keep_train],
                  splits.val_x[keep_val], splits.val_y[keep_val], splits.test_x, splits.test_y,
                  splits.num_classes, splits.mean, splits.std)


def accuracy_json(values: dict[Any, float]) -> str:
    return json.dumps({str(k): round(float(v), 4) for k, v in values.items()})
