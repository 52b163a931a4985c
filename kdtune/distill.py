"""The loss module a trial trains: a :class:`Distiller` holds the model trained, the frozen
teacher (read live or from a cache) and the method's extra learnable parts (a hint regressor,
exit heads); its forward returns ``(student logits, {loss name: loss})`` by asking its method
(:meth:`kdtune.methods.base.Method.losses`).

The training loop calls ``distiller(images, labels, index, augmented)`` and sums the returned
losses; it never knows which
method runs (mdistiller's design). A :class:`Batch` carries what a method may look at: the
normalised images, the labels, the rows of the training tensor they are (only when they are
exactly those rows, i.e. un-augmented: a cached teacher needs them), and which images the
augmentation policy changed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from kdtune.teacher_outputs import LOGITS, CachedTeacher, LiveTeacher


class Batch(NamedTuple):
    images: torch.Tensor  # normalised float images, N x C x H x W
    labels: torch.Tensor
    index: torch.Tensor | None = None  # rows of the training tensor, for un-augmented batches
    augmented: torch.Tensor | None = None  # bool per image: changed by the policy (None: none)


class Distiller(nn.Module):
    """One trial's loss module. ``state_dict`` holds the student and the method's extra parts,
    never the teacher (kept out of the module tree). ``method`` is the
    :class:`kdtune.methods.base.Method` that built it (not imported here: methods import this
    module)."""

    def __init__(self, method: Any, student: nn.Module, hp: dict[str, Any],
                 teacher: nn.Module | None = None, teacher_arch: str | None = None,
                 teacher_taps: tuple[str, ...] = (),
                 extra: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.student = student
        self.extra = nn.ModuleDict(extra or {})
        self.method, self.hp = method, dict(hp)
        live = LiveTeacher(teacher, teacher_arch, teacher_taps) if teacher is not None else None
        # kept out of the module tree so .parameters() and state_dict() are the student's alone
        self.__dict__["live_teacher"] = live
        self.__dict__["teacher"] = live

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        """The teacher features this method reads (beside the logits)."""
        return self.live_teacher.taps if self.live_teacher is not None else ()

    def use_cached_teacher(self, cached: CachedTeacher) -> None:
        """Read teacher outputs from ``cached`` rows instead of running the teacher."""
        missing = {LOGITS, *self.teacher_taps} - set(cached.outputs)
        if missing:
            raise ValueError(f"the cache lacks teacher outputs {sorted(missing)}")
        self.__dict__["teacher"] = cached

    def teacher_out(self, batch: Batch, tau: float | None = None) -> dict[str, torch.Tensor]:
        """Teacher logits, tapped features and, given ``tau``, ``log_softmax(logits/tau)``."""
        return self.teacher(batch.images, batch.index, tau)

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                index: torch.Tensor | None = None, augmented: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(student logits, {loss name: loss})`` of one batch of normalised ``images``."""
        return self.method.losses(self, Batch(images, labels, index, augmented))

    @property
    def predictor(self) -> nn.Module:
        """The model that validation and test accuracy measure."""
        return self.method.predictor(self)

    def exit_models(self) -> dict[str, nn.Module]:
        return self.method.exit_models(self)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.method.begin_epoch(self, epoch, epochs)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a teacher's BatchNorm statistics never move
        return self
