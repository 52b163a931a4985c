"""Distillation methods: one small module per method, each returning a dict of named losses.

The training loop calls ``distiller(images, labels)`` and sums the returned losses; it never
knows which method runs (mdistiller's design). A method is a loss plus the teacher outputs it
needs: ``scratch`` needs none, ``rkd`` the teacher's logits, ``ikd`` its logits and one hint
layer's features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdtune.models import Tapped


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton's soft-target term: ``tau**2 * KL(softmax(t/tau) || softmax(s/tau))``, batch mean.

    The KL runs from the teacher's distribution to the student's (the paper's eq. 4); the
    ``tau**2`` keeps its gradients on the scale of the cross-entropy as ``tau`` grows.
    """
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / tau, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * tau * tau


def rkd_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
               alpha: float, tau: float) -> dict[str, torch.Tensor]:
    """The paper's eq. 4 as named terms: ``(1-alpha)*CE + alpha*tau**2*KL``."""
    return {"ce": (1.0 - alpha) * F.cross_entropy(student_logits, labels),
            "kd": alpha * kd_loss(student_logits, teacher_logits, tau)}


class HintRegressor(nn.Module):
    """FitNets regressor: 1x1 conv + BN from student to teacher channels, resampled to match."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
                                  nn.BatchNorm2d(teacher_channels))

    def forward(self, student_features: torch.Tensor, teacher_size: torch.Size) -> torch.Tensor:
        out = self.proj(student_features)
        if out.shape[-2:] != teacher_size:
            out = F.interpolate(out, size=teacher_size, mode="bilinear", align_corners=False)
        return out


def hint_loss(regressed: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(regressed, teacher_features)


class Distiller(nn.Module):
    """Base: holds the student; ``forward`` returns ``(student_logits, {loss_name: loss})``."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class Scratch(Distiller):
    """The baseline: the student on labels alone."""

    def forward(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}


class _WithTeacher(Distiller):
    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__(student)
        teacher.eval()
        teacher.requires_grad_(False)
        # kept out of the module tree so .parameters() and state_dict() are the student's alone
        self.__dict__["teacher"] = teacher

    def train(self, mode: bool = True) -> _WithTeacher:
        super().train(mode)
        self.teacher.eval()  # a teacher's BatchNorm statistics never move
        return self


class RKD(_WithTeacher):
    """Response-based KD (Hinton 2015; the paper's eq. 4)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float, tau: float) -> None:
        super().__init__(student, teacher)
        self.alpha, self.tau = float(alpha), float(tau)

    def forward(self, images, labels):
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self.student(images)
        return logits, rkd_losses(logits, teacher_logits.float(), labels, self.alpha, self.tau)


class IKD(_WithTeacher):
    """Intermediate KD: FitNets hints at one (teacher, student) layer pair plus the RKD loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module, *, student_arch: str,
                 teacher_arch: str, teacher_layer: str, student_layer: str, alpha: float,
                 tau: float, beta: float, example: torch.Tensor) -> None:
        tapped_teacher = Tapped(teacher, teacher_arch, teacher_layer)
        super().__init__(student, tapped_teacher)
        self.tapped_student = Tapped(student, student_arch, student_layer)
        self.alpha, self.tau, self.beta = float(alpha), float(tau), float(beta)
        with torch.no_grad():  # one probe batch tells the regressor its channel counts
            was_training = student.training
            student.eval()
            _, t_feat = tapped_teacher(example[:2])
            _, s_feat = self.tapped_student(example[:2])
            student.train(was_training)
        self.regressor = HintRegressor(s_feat.shape[1], t_feat.shape[1])

    def forward(self, images, labels):
        with torch.no_grad():
            teacher_logits, teacher_features = self.teacher(images)
        logits, student_features = self.tapped_student(images)
        losses = rkd_losses(logits, teacher_logits.float(), labels, self.alpha, self.tau)
        regressed = self.regressor(student_features, teacher_features.shape[-2:])
        losses["hint"] = self.beta * hint_loss(regressed.float(), teacher_features.float())
        return logits, losses


def build_distiller(method: str, student: nn.Module, teacher: nn.Module | None, config: dict,
                    *, student_arch: str, teacher_arch: str, example: torch.Tensor) -> Distiller:
    """The distiller for ``method`` with its hyperparameters from a trial ``config``."""
    if method == "scratch":
        return Scratch(student)
    if teacher is None:
        raise ValueError(f"method {method} needs a teacher")
    if method == "rkd":
        return RKD(student, teacher, config["alpha"], config["tau"])
    if method == "ikd":
        from kdtune.spec import parse_hint

        teacher_layer, student_layer = parse_hint(config["hint_layer"])
        return IKD(student, teacher, student_arch=student_arch, teacher_arch=teacher_arch,
                   teacher_layer=teacher_layer, student_layer=student_layer,
                   alpha=config["alpha"], tau=config["tau"], beta=config.get("beta", 1.0),
                   example=example)
    raise ValueError(f"unknown method '{method}'")
