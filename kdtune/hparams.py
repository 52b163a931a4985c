"""The hyperparameters a trial can set, defined once: their names, how Optuna samples each
(define-by-run), and the typed values a trial carries.

A method says which of the distillation dimensions it searches (``alpha``, ``tau``,
``hint_layer``, ``beta``; see :mod:`kdtune.methods`); the student dimensions (``lr``,
``augmentation``, ``aug_share``) are searched for every method alike, baseline included, so the
scratch student is tuned as hard as the distilled ones. A dimension the spec leaves out of
``search`` stays at its fixed value. No torch, no Optuna at import: the spec checks use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# the distillation dimensions (a method searches a subset) and the student's (every method)
DISTILLATION_DIMS = ("alpha", "tau", "hint_layer", "beta")
STUDENT_DIMS = ("lr", "augmentation", "aug_share")
HYPERPARAMS = DISTILLATION_DIMS + STUDENT_DIMS
# searched as a [low, high] range; hint_layer and augmentation are choices from a list
RANGE_DIMS = ("alpha", "tau", "beta", "lr", "aug_share")

# the core study's point (Belinga et al. 2024, eq. 4): the first trial of a search over it
PAPER_POINT = {"alpha": 0.7, "tau": 4.0}


@dataclass(frozen=True)
class Hyperparams:
    """The values one trial runs with; None is "not set" (the spec's fixed value applies)."""

    alpha: float | None = None
    tau: float | None = None
    hint_layer: str | None = None
    beta: float | None = None
    lr: float | None = None
    augmentation: str | None = None
    aug_share: float | None = None

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Hyperparams:
        """The hyperparameters among ``values`` (other keys are ignored)."""
        out: dict[str, Any] = {}
        for f in fields(cls):
            value = values.get(f.name)
            if value is not None:
                out[f.name] = value if f.name in ("hint_layer", "augmentation") else float(value)
        return cls(**out)

    def as_dict(self) -> dict[str, Any]:
        """The values that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def sample(trial: Any, name: str, space: dict[str, Any]) -> Any:
    """Sample dimension ``name`` on an Optuna ``trial`` from ``space`` (see ``search.space_of``),
    or return its fixed value where the spec does not search it.

    The one place that says how each dimension is sampled: ranges uniform, ``lr`` on a log
    scale, ``beta`` on a log scale when its range excludes 0 (hint and attention weights span
    orders of magnitude), lists as categorical choices (a single choice is fixed).
    """
    if name == "hint_layer":
        choices = space["hint_layers"]
        return (trial.suggest_categorical(name, choices) if len(choices) > 1 else choices[0])
    if name == "augmentation":
        if space.get("augmentation"):
            return trial.suggest_categorical(name, space["augmentation"])
        return space["fixed"]["augmentation"]
    bounds = space.get(name)
    if not bounds:
        return space["fixed"].get(name)
    log = name == "lr" or (name == "beta" and bounds[0] > 0)
    return trial.suggest_float(name, *bounds, log=log)


def is_searched(name: str, space: dict[str, Any]) -> bool:
    """Whether Optuna varies ``name`` in ``space`` (a single hint layer is fixed)."""
    if name == "hint_layer":
        return len(space["hint_layers"]) > 1
    return bool(space.get(name))


def parse_hint(hint: str) -> tuple[str, str]:
    """``'layer3:layer2'`` is (teacher tap, student tap); ``'stage2'`` names one tap on both."""
    teacher, _, student = hint.partition(":")
    return teacher, (student or teacher)
