"""CCD: the confidence weights by hand, the weighted KD term against a hand computation, RKD
when nothing is augmented, and the spec check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdtune.methods.ccd import confidence_weights
from kdtune.models import build_model
from kdtune.spec import SpecError, parse_spec
from kdtune.trial import build_distiller


def test_weights_are_the_cosine_to_the_label_for_augmented_images_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    augmented = torch.tensor([True, True, False])
    p = 1 / (1 + math.exp(-2.0))  # softmax([2, 0])[0]
    cos_right = p / math.hypot(p, 1 - p)  # the teacher is confident and right
    cos_wrong = (1 - p) / math.hypot(p, 1 - p)  # confident in the other class
    got = confidence_weights(logits, labels, augmented).tolist()
    assert got == pytest.approx([cos_right, cos_wrong, 1.0], rel=1e-6)
    assert confidence_weights(logits, labels, None).tolist() == [1.0, 1.0, 1.0]
    # a uniform teacher: cos = (1/K) / (1/sqrt(K)) = 1/sqrt(K)
    uniform = confidence_weights(torch.zeros(1, 4), torch.tensor([2]), torch.tensor([True]))
    assert float(uniform) == pytest.approx(0.5)


def _pair():
    torch.manual_seed(0)
    student = build_model("small_cnn", 1, 5, 8, {"widths": [4, 8]})
    teacher = build_model("small_cnn", 1, 5, 8, {"widths": [8, 16]}).eval()
    return student, teacher


def test_the_kd_term_is_the_confidence_weighted_mean_of_the_per_image_kl():
    student, teacher = _pair()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    augmented = torch.tensor([True, False, True, True, False, True])
    alpha, tau = 0.6, 3.0
    ccd = build_distiller("ccd", student, teacher, {"alpha": alpha, "tau": tau},
                          student_arch="small_cnn", teacher_arch="small_cnn", example=x)
    with torch.no_grad():
        logits, losses = ccd(x, y, None, augmented)
        t, s = teacher(x), student(x)
    expected_kd = 0.0
    for i in range(len(y)):
        p_t = F.softmax(t[i] / tau, 0)
        kl = float((p_t * (p_t.log() - F.log_softmax(s[i] / tau, 0))).sum())
        probs = F.softmax(t[i], 0)
        w = float(probs[y[i]] / probs.norm()) if augmented[i] else 1.0
        expected_kd += w * kl
    expected_kd *= alpha * tau * tau / len(y)
    assert float(losses["kd"]) == pytest.approx(expected_kd, rel=1e-5)
    assert float(losses["ce"]) == pytest.approx(float((1 - alpha) * F.cross_entropy(s, y)),
                                                rel=1e-6)
    assert torch.allclose(logits, s)


def test_without_augmented_images_ccd_is_rkd():
    student, teacher = _pair()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    hp = {"alpha": 0.7, "tau": 4.0}
    common = {"student_arch": "small_cnn", "teacher_arch": "small_cnn", "example": x}
    ccd = build_distiller("ccd", student, teacher, hp, **common)
    rkd = build_distiller("rkd", student, teacher, hp, **common)
    with torch.no_grad():
        rkd_losses = rkd(x, y)[1]
        for augmented in (None, torch.zeros(6, dtype=torch.bool)):
            ccd_losses = ccd(x, y, None, augmented)[1]
            for name in ("ce", "kd"):
                assert float(ccd_losses[name]) == pytest.approx(float(rkd_losses[name]),
                                                                rel=1e-6)


def test_ccd_without_any_augmentation_is_refused(tiny_spec_dict):
    tiny_spec_dict["methods"] = ["scratch", "ccd"]
    with pytest.raises(SpecError, match=r"^training.augmentation: method ccd weights "):
        parse_spec(tiny_spec_dict)
    tiny_spec_dict["training"]["augmentation"] = "jda"
    assert parse_spec(tiny_spec_dict).methods == ["scratch", "ccd"]
