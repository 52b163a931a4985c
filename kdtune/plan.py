"""What a spec asks for, counted before anything runs: teachers, search trials, final
trainings, epochs (``kdtune validate`` prints it; the live progress starts from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtune.spec import SpecError, StudySpec, parse_spec
from kdtune.spec import load_spec as _load_spec_file


def as_spec(source: str | Path | dict[str, Any] | StudySpec) -> StudySpec:
    """A validated spec from a YAML file, a dict (as the YAML would parse) or a spec;
    :class:`~kdtune.spec.SpecError` (one line naming the field or file) if it is not one."""
    if isinstance(source, StudySpec):
        return source
    if isinstance(source, dict):
        return parse_spec(source)
    if isinstance(source, (str, Path)):
        return _load_spec_file(source)
    raise SpecError(f"spec: expected a file path, a dict or a StudySpec, got "
                    f"{type(source).__name__}")


@dataclass(frozen=True)
class Plan:
    """What a spec asks for, before anything runs (``kdtune validate`` prints ``str(plan)``)."""

    study: str
    datasets: int
    methods: tuple[str, ...]
    teachers: int  # teacher trainings (reused when already stored)
    search_trials: int
    final_trainings: int  # the first round of seeds; precision-targeted rounds may add more
    max_final_trainings: int  # ... up to final.max_seeds per comparison
    max_epochs: int  # training epochs at most (ASHA stops some search trials earlier)
    lines: tuple[str, ...] = field(repr=False, default=())

    def __str__(self) -> str:
        return "\n".join(self.lines)


def validate(spec: str | Path | dict[str, Any] | StudySpec, compute: bool = True) -> Plan:
    """Check ``spec`` and count what it will run; with ``compute``, add the compute estimate
    (FLOPs per trial on the meta device: imports torch, no data loaded)."""
    from kdtune.methods import teacher_sources
    from kdtune.resources import requested
    from kdtune.search import search_trials, searched_dimensions

    spec = as_spec(spec)
    final = spec.final
    lines = [f"study {spec.study}: {len(spec.datasets)} dataset(s), methods "
             f"{', '.join(spec.methods)}; teacher {spec.teacher.label} "
             f"({spec.training.teacher_epochs} epochs) -> student {spec.student.label} "
             f"({spec.training.student_epochs} epochs)"]
    # the spec's teacher, plus a pretrained student-architecture model for self/reversed
    n_teachers = len(spec.datasets) * len(teacher_sources(spec))
    n_search = len(spec.datasets) * sum(search_trials(spec, m) for m in spec.methods)
    n_final = len(spec.datasets) * len(spec.methods) * len(final.seeds)
    most_seeds = max(len(final.seeds), final.max_seeds or 0)
    n_final_max = len(spec.datasets) * len(spec.methods) * most_seeds
    for method in spec.methods:
        dims = searched_dimensions(spec, method)
        lines.append(f"  {method}: " + (f"{spec.search.trials} Optuna trials per dataset over "
                                         f"{', '.join(dims)}" if dims else
                                         "1 trial per dataset (nothing searched: fixed config)"))
    if spec.search.warm_start is not None:
        where = ("the storage's finished runs" if spec.search.warm_start == "auto"
                 else f"{len(spec.search.warm_start)} run(s) named")
        lines.append(f"  warm start: each search begins with up to "
                     f"{spec.search.warm_start_configs} best config(s) of earlier searches of "
                     f"the same method and models in {where}, nearest in complexity first")
    if spec.distillation.omit_class is not None:
        lines.append(f"  omit-one-class: students train and validate without class "
                     f"{spec.distillation.omit_class}; test accuracy on it is reported")
    epochs = (n_teachers * spec.training.teacher_epochs
              + (n_search + n_final_max) * spec.training.student_epochs)
    rounds = (f", then more seeds until the gain's 95% interval is +-{final.target_halfwidth} "
              f"points (at most {most_seeds} seeds)" if final.target_halfwidth else "")
    lines.append(f"  plan: {n_teachers} teacher(s) (reused if already stored), {n_search} search "
                 f"trials, {n_final} final trainings (seeds {list(final.seeds)}){rounds}; at "
                 f"most {epochs} training epochs; early stopping {spec.scheduler.rule.replace('none', 'off')}")
    lines.append(f"  resources per trial: {requested(spec)}")
    if compute:
        from kdtune.estimate import estimate

        lines += estimate(spec)
    return Plan(spec.study, len(spec.datasets), tuple(spec.methods), n_teachers, n_search,
                n_final, n_final_max, epochs, tuple(lines))


