"""The typed trial job: what one trial is, built by the study and read by the trainable.

Ray Tune passes a trial its configuration as a plain dict (the param space, or what a searcher
suggests); :meth:`TrialJob.to_config` writes that dict and :meth:`TrialJob.from_config` reads it
back, so the rest of kdtune handles one frozen object with named fields. Hyperparameters are
:class:`kdtune.hparams.Hyperparams` (names defined once, in :mod:`kdtune.hparams`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from kdtune.hparams import HYPERPARAMS, Hyperparams

ROLES = ("teacher", "search", "final")


@dataclass(frozen=True)
class TrialJob:
    """One trial: which dataset and method, in which role and stage, on which seed, with which
    hyperparameters, taught by which stored model, on which resources."""

    stage: str
    role: str  # teacher (pretraining), search (an Optuna trial) or final (a seed of the best)
    dataset_index: int
    method: str  # a method name, or a pretrained model's (teacher, pretrained_student)
    seed: int
    hp: Hyperparams = field(default_factory=Hyperparams)
    teacher_id: str = ""  # the stored model this trial trains (role teacher) or is taught by
    teacher_path: str = ""
    cpus: float = 1.0  # threads; resolved from the spec's resources for the trial's role
    gpus: float = 0.0
    selected_from: str | None = None  # a final run: the search trial whose config it retrains
    split_seed: int | None = None  # final.resplit: the split this trial's data is drawn with
    # a search trial: where its config came from (tpe, paper, points[i], warm:RUN/DATASET)
    config_source: str | None = None

    def to_config(self) -> dict[str, Any]:
        """A flat dict for Ray's param space; hyperparameters that are set sit at the top level
        (where Optuna's suggestions for them land too)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hp"}
        for optional in ("selected_from", "split_seed", "config_source"):
            if out[optional] is None:
                del out[optional]
        return out | self.hp.as_dict()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialJob:
        """The job of a trial config: a flat dict (``to_config`` merged with what a searcher
        suggested), or a teacher stage's ``{"job": {...}}`` grid entry."""
        flat = flat_config(config)
        unknown = set(flat) - _FIELDS - set(HYPERPARAMS)
        if unknown:
            raise ValueError(f"trial config has unknown keys {sorted(unknown)}")
        values = {k: flat[k] for k in _FIELDS - {"hp"} if k in flat}
        for key, cast in (("dataset_index", int), ("seed", int), ("cpus", float),
                          ("gpus", float), ("split_seed", int)):
            if values.get(key) is not None:
                values[key] = cast(values[key])
        return cls(hp=Hyperparams.from_mapping(flat), **values)

    def with_hp(self, **values: Any) -> TrialJob:
        return replace(self, hp=replace(self.hp, **values))

    def key(self) -> tuple:
        """What makes two jobs the same trial (a study never runs one twice)."""
        return (self.role, self.dataset_index, self.method, self.seed, self.split_seed,
                self.stage if self.role == "search" else "")


_FIELDS = {f.name for f in fields(TrialJob)}


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config with a grid-searched ``job`` dict merged into the top level."""
    job = config.get("job")
    return {k: v for k, v in config.items() if k != "job"} | (job or {})
