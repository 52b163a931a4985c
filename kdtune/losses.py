"""The loss terms methods are built from: Hinton's soft-target KL, FitNets' hint regressor and
MSE, Zagoruyko & Komodakis' attention maps. Pure tensor functions and small modules; which
method combines which terms is said in :mod:`kdtune.methods`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, tau: float,
            teacher_log_probs: torch.Tensor | None = None, weight: float = 1.0) -> torch.Tensor:
    """Hinton's soft-target term: ``tau**2 * KL(softmax(t/tau) || softmax(s/tau))``, batch mean.

    The KL runs from the teacher's distribution to the student's (the paper's eq. 4); the
    ``tau**2`` keeps its gradients on the scale of the cross-entropy as ``tau`` grows.
    ``teacher_log_probs`` (``log_softmax(t/tau)``, precomputed by a cached teacher) replaces
    ``teacher_logits``: on a tiny student that saves a tenth of the step. ``weight`` multiplies
    the result in the same (single) operation as ``tau**2``.
    """
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = (teacher_log_probs if teacher_log_probs is not None
                     else F.log_softmax(teacher_logits.float() / tau, dim=1))
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (weight * tau * tau)


def rkd_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
               labels: torch.Tensor, alpha: float, tau: float,
               teacher_log_probs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The paper's eq. 4 as named terms: ``(1-alpha)*CE + alpha*tau**2*KL``; the teacher as
    logits or as ``log_softmax(logits/tau)`` (see :func:`kd_loss`)."""
    return {"ce": (1.0 - alpha) * F.cross_entropy(student_logits, labels),
            "kd": kd_loss(student_logits, teacher_logits, tau, teacher_log_probs,
                          weight=alpha)}


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


def attention_map(features: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: channel mean of squared activations, flattened
    and L2-normalised per image (N x H*W), resampled to ``size`` when given.

    Channels are averaged away, so a teacher and a student of any widths compare directly; the
    map (not the features) is resampled when their spatial sizes differ.
    """
    amap = features.float().pow(2).mean(1, keepdim=True)
    if size is not None and amap.shape[-2:] != size:
        amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
    return F.normalize(amap.flatten(1), dim=1)


def at_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between the normalised attention maps, batch mean.

    ``beta / 2`` times this, summed over layer pairs, is the paper's AT term. Its reference code
    averages over the map's H*W cells instead and uses beta = 1000: at 32x32 maps that is
    1000 / 1024 ~ our beta = 1.
    """
    teacher_map = attention_map(teacher_features)
    student_map = attention_map(student_features, teacher_features.shape[-2:])
    return (student_map - teacher_map).pow(2).sum(1).mean()


def aligned_pairs(teacher_taps: tuple[str, ...],
                  student_taps: tuple[str, ...]) -> list[tuple[str, str]]:
    """(teacher tap, student tap) pairs matched from the deepest stage back, as AT pairs them."""
    n = min(len(teacher_taps), len(student_taps))
    return list(zip(teacher_taps[len(teacher_taps) - n:], student_taps[len(student_taps) - n:]))
