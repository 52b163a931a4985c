"""The losses against hand computations, and hint shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdtune.losses import HintRegressor, hint_loss, kd_loss, rkd_losses
from kdtune.models import build_model
from kdtune.trial import build_distiller


def _softmax(values: list[float], tau: float) -> list[float]:
    exps = [math.exp(v / tau) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_hand_computation_and_direction():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.5]]
    tau = 3.0
    # KL(p_teacher || p_student) = sum p_t * (log p_t - log p_s), averaged over the batch
    expected = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, tau), _softmax(t_row, tau)
        expected += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    expected = expected / len(student) * tau**2
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), tau)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # the reverse direction is a different number: the direction is pinned down
    reverse = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, tau), _softmax(t_row, tau)
        reverse += sum(ps * (math.log(ps) - math.log(pt)) for pt, ps in zip(p_t, p_s))
    assert abs(reverse / 2 * tau**2 - expected) > 1e-3


def test_rkd_weights_alpha_and_tau_squared():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    alpha, tau = 0.3, 5.0
    losses = rkd_losses(s, t, y, alpha, tau)
    ce = F.cross_entropy(s, y)
    kl = F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="batchmean")
    assert float(losses["ce"]) == pytest.approx(float((1 - alpha) * ce), rel=1e-6)
    assert float(losses["kd"]) == pytest.approx(float(alpha * tau**2 * kl), rel=1e-5)
    # alpha = 0 is plain cross-entropy; alpha = 1 ignores the labels
    assert float(rkd_losses(s, t, y, 0.0, tau)["kd"]) == 0.0
    assert float(rkd_losses(s, t, y, 1.0, tau)["ce"]) == 0.0


def test_kd_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 7)
    assert float(kd_loss(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("s_shape,t_shape", [((2, 8, 4, 4), (2, 32, 4, 4)),
                                             ((2, 4, 8, 8), (2, 64, 4, 4)),
                                             ((2, 16, 2, 2), (2, 8, 8, 8))])
def test_hint_regressor_matches_teacher_shape(s_shape, t_shape):
    regressor = HintRegressor(s_shape[1], t_shape[1])
    out = regressor(torch.randn(*s_shape), torch.Size(t_shape[-2:]))
    assert out.shape == t_shape
    assert hint_loss(out, torch.randn(*t_shape)).ndim == 0


@pytest.mark.parametrize("hint", ["stage1", "stage2", "stage1:stage2", "stage2:stage1"])
def test_ikd_distiller_produces_named_losses_for_every_tap_pair(hint):
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [16, 32]})
    student = build_model("small_cnn", 1, 10, 8, {"widths": [4, 8]})
    images, labels = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    distiller = build_distiller("ikd", student, teacher,
                                {"alpha": 0.5, "tau": 2.0, "hint_layer": hint, "beta": 1.0},
                                student_arch="small_cnn", teacher_arch="small_cnn",
                                example=images)
    logits, losses = distiller(images, labels)
    assert logits.shape == (6, 10)
    assert set(losses) == {"ce", "kd", "hint"}
    assert all(torch.isfinite(v) for v in losses.values())
    # the teacher is frozen and outside the trainable parameters
    assert all(not p.requires_grad for p in teacher.parameters())
    trainable = {id(p) for p in distiller.parameters()}
    assert not trainable & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in student.parameters()} <= trainable


def test_resnet_taps_produce_hints_through_regressor():
    teacher = build_model("resnet50", 3, 10, 16)
    student = build_model("resnet18", 3, 10, 16)
    images, labels = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    distiller = build_distiller("ikd", student, teacher,
                                {"alpha": 0.7, "tau": 4.0, "hint_layer": "layer3:layer2",
                                 "beta": 1.0},
                                student_arch="resnet18", teacher_arch="resnet50", example=images)
    _, losses = distiller(images, labels)
    assert set(losses) == {"ce", "kd", "hint"}


def test_scratch_and_rkd_loss_names():
    student = build_model("small_cnn", 1, 10, 8, {"widths": [4]})
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [8]})
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    scratch = build_distiller("scratch", student, None, {}, student_arch="small_cnn", example=x)
    assert set(scratch(x, y)[1]) == {"ce"}
    rkd = build_distiller("rkd", student, teacher, {"alpha": 0.7, "tau": 4.0},
                          student_arch="small_cnn", teacher_arch="small_cnn", example=x)
    assert set(rkd(x, y)[1]) == {"ce", "kd"}
    rkd.train()
    assert not teacher.training  # the teacher's BatchNorm never trains
