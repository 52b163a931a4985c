"""What a method is: one object that says everything about it.

A :class:`Method` carries its name; what it trains (the spec's student architecture, or its
teacher architecture for ``reversed``) and which pretrained model teaches it; its baseline (the
method its gain is measured against); the distillation hyperparameters it searches and how
they are sampled (define-by-run, :meth:`Method.sample`); the names of its losses; its checks on
a spec; the GPU-memory variants ``gpus: fit`` measures; and how it builds its loss module
(:meth:`Method.build`, returning a :class:`kdtune.distill.Distiller` whose forward calls
:meth:`Method.losses`).

Nothing here imports torch at module level: the spec is checked against the registry before
torch loads (a misspelt spec is refused in well under a second). The loss code imports what it
needs (:mod:`kdtune.losses`, :mod:`kdtune.distill`) when a trial builds its loss module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kdtune.hparams import DISTILLATION_DIMS, PAPER_POINT, is_searched, sample

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdtune.distill import Batch, Distiller

Model = Literal["teacher", "student"]
# a kdtune.spec.StudySpec: named, not imported, since the spec imports this registry (no cycle,
# not even for type checkers)
StudySpec = Any
Losses = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class BuildContext:
    """What a method needs to know to build its loss module for one trial."""

    student_arch: str  # the architecture trained (the spec's teacher arch for `reversed`)
    teacher_arch: str | None  # the architecture teaching it
    example: Any  # a float batch of two training images on the trial's device
    num_classes: int


class Method:
    """Base of every method; a subclass sets the class attributes and overrides what differs.

    The defaults describe a response-based method taught by the spec's teacher (RKD).
    """

    name: str = ""
    summary: str = ""
    trains: Model = "student"  # which of the spec's architectures this method trains
    taught_by: Model | None = "teacher"  # whose pretrained model teaches it (None: labels only)
    baseline: str | None = "scratch"  # the method its gain is measured against (None: it is one)
    searched: tuple[str, ...] = ("alpha", "tau")  # its distillation dimensions (lr is common)
    loss_names: tuple[str, ...] = ("ce", "kd")  # the named losses its forward returns
    colour: str | None = None  # the report's colour (None: one from the report's palette)

    @property
    def distils(self) -> bool:
        return self.taught_by is not None

    @property
    def is_baseline(self) -> bool:
        return self.baseline is None

    def __repr__(self) -> str:
        return f"<method {self.name}>"

    # --- search ------------------------------------------------------------------------
    def sample(self, trial: Any, space: dict[str, Any]) -> dict[str, Any]:
        """Sample this method's dimensions on an Optuna trial (define-by-run), in the fixed
        order alpha, tau, hint_layer, beta; returns the values of those it does not search."""
        fixed = {}
        for name in DISTILLATION_DIMS:
            if name in self.searched:
                value = sample(trial, name, space)
                if not is_searched(name, space):
                    fixed[name] = value
        return fixed

    def searched_in(self, space: dict[str, Any]) -> list[str]:
        """The dimensions of this method that ``space`` really varies."""
        return [n for n in DISTILLATION_DIMS if n in self.searched and is_searched(n, space)]

    def start_point(self, space: dict[str, Any], include_paper_point: bool) -> dict[str, Any]:
        """The configuration evaluated first: the core study's point (alpha=0.7, tau=4) where
        this method searches alpha or tau and the point lies in the searched ranges."""
        if not include_paper_point or not {"alpha", "tau"} & set(self.searched):
            return {}
        return {k: v for k, v in PAPER_POINT.items()
                if space.get(k) and space[k][0] <= v <= space[k][1]}

    # --- spec --------------------------------------------------------------------------
    def check(self, spec: StudySpec) -> None:
        """Raise ``ValueError("@field: why")`` if ``spec`` cannot run this method."""

    def memory_variants(self, spec: StudySpec) -> list[str | None]:
        """Hint layers whose training steps may differ in GPU memory (``gpus: fit``)."""
        return [None]

    # --- training ----------------------------------------------------------------------
    def build(self, student: nn.Module, teacher: nn.Module | None, hp: dict[str, Any],
              ctx: BuildContext) -> Distiller:
        """The loss module of one trial: ``student`` is the model trained and ``teacher`` the
        frozen model teaching it (None for a baseline). ``hp``: the trial's hyperparameters,
        fixed values filled in."""
        from kdtune.distill import Distiller

        return Distiller(self, student, hp, teacher, ctx.teacher_arch)

    def losses(self, d: Distiller, batch: Batch) -> tuple[torch.Tensor, Losses]:
        """``(student logits, {loss name: loss})`` of one training batch; the loop sums the
        losses. Default: the paper's eq. 4, ``(1-alpha)*CE + alpha*tau**2*KL``."""
        from kdtune.losses import rkd_losses
        from kdtune.teacher_outputs import LOG_PROBS

        tau = d.hp["tau"]
        teacher = d.teacher_out(batch, tau)
        logits = d.student(batch.images)
        return logits, rkd_losses(logits, None, batch.labels, d.hp["alpha"], tau,
                                  teacher[LOG_PROBS])

    def predictor(self, d: Distiller) -> nn.Module:
        """The model that validation and test accuracy measure (the student, for most)."""
        return d.student

    def exit_models(self, d: Distiller) -> dict[str, nn.Module]:
        """Further models worth a test accuracy of their own (MSKD's exits); name -> model."""
        return {}

    def begin_epoch(self, d: Distiller, epoch: int, epochs: int) -> None:
        """Called by the loop before each 0-based ``epoch`` (phased methods switch here)."""


class Baseline(Method):
    """A model on labels alone: the zero every gain is measured from."""

    taught_by = None
    baseline = None
    searched = ()
    loss_names = ("ce",)

    def losses(self, d: Distiller, batch: Batch) -> tuple[torch.Tensor, Losses]:
        import torch.nn.functional as F

        logits = d.student(batch.images)
        return logits, {"ce": F.cross_entropy(logits, batch.labels)}
