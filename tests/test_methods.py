"""Every distillation method: AT by hand, losses that fall, MSKD's phases and exits, and cached
teacher outputs that equal the live teacher's."""

from __future__ import annotations

import math

import pytest
import torch

from kdtune import methods
from kdtune.data import load_splits
from kdtune.engine import Budget, train_epochs
from kdtune.losses import aligned_pairs, at_loss, attention_map
from kdtune.methods.mskd import active_exits as mskd_active_exits
from kdtune.models import build_model
from kdtune.teacher_outputs import CachedTeacher, LiveTeacher, precompute
from kdtune.trial import build_distiller

CONFIG = {"alpha": 0.5, "tau": 4.0, "beta": 1.0, "hint_layer": "stage2"}


def _hand_attention(features: list[list[list[float]]]) -> list[float]:
    """features[c][i][j] of one image -> normalised flattened channel mean of squares."""
    channels = len(features)
    cells = [sum(features[c][i][j] ** 2 for c in range(channels)) / channels
             for i in range(len(features[0])) for j in range(len(features[0][0]))]
    norm = math.sqrt(sum(v * v for v in cells))
    return [v / norm for v in cells]


def test_at_loss_matches_hand_computation():
    student = [[[1.0, -2.0], [0.5, 0.0]], [[0.0, 1.0], [3.0, -1.0]]]  # 2 channels, 2x2
    teacher = [[[2.0, 0.0], [1.0, 1.0]], [[-1.0, 1.0], [0.0, 2.0]], [[0.5, 0.5], [0.5, 0.5]]]
    a_s, a_t = _hand_attention(student), _hand_attention(teacher)
    expected = sum((s - t) ** 2 for s, t in zip(a_s, a_t))
    got = at_loss(torch.tensor([student]), torch.tensor([teacher]))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert attention_map(torch.tensor([teacher])).flatten().tolist() == pytest.approx(a_t)
    # a batch is the mean of its images; the channel count never matters
    batch = at_loss(torch.tensor([student, student]), torch.tensor([teacher, teacher]))
    assert float(batch) == pytest.approx(expected, rel=1e-6)


def test_at_loss_resamples_the_student_map_and_ignores_scale():
    teacher = torch.ones(2, 8, 4, 4)
    assert float(at_loss(torch.full((2, 3, 2, 2), 5.0), teacher)) == pytest.approx(0, abs=1e-6)
    x = torch.randn(2, 4, 4, 4)
    assert float(at_loss(3 * x, x)) == pytest.approx(0, abs=1e-6)  # maps are normalised


def test_at_weights_beta_over_two_per_aligned_pair():
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [8, 16]})
    student = build_model("resnet8", 1, 10, 8)
    assert aligned_pairs(("stage1", "stage2"), ("layer1", "layer2", "layer3")) == [
        ("stage1", "layer2"), ("stage2", "layer3")]
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    at = build_distiller("at", student, teacher, {"alpha": 0.3, "tau": 2.0, "beta": 6.0},
                         student_arch="resnet8", teacher_arch="small_cnn", example=x).eval()
    with torch.no_grad():
        _, losses = at(x, y)
    assert set(losses) == {"ce", "kd", "at"}
    t_out = LiveTeacher(teacher, "small_cnn", ("stage1", "stage2"))(x)
    with torch.no_grad():
        s_out = at.extra["tapped"](x)
    expected = 3.0 * (at_loss(s_out["layer2"], t_out["stage1"])
                      + at_loss(s_out["layer3"], t_out["stage2"]))
    assert float(losses["at"]) == pytest.approx(float(expected), rel=1e-5)


def _pair(method: str):
    """(trained model, its teacher, trained arch, teacher arch) as the trainable picks them."""
    small = ("small_cnn", {"widths": [8, 16]})
    large = ("small_cnn", {"widths": [16, 32]})
    arch = {"student": small, "teacher": large}  # the spec's two architectures
    info = methods.get(method)
    trained, teacher = arch[info.trains], (arch[info.taught_by] if info.taught_by else None)
    torch.manual_seed(1)
    build = lambda a: build_model(a[0], 1, 10, 8, a[1])  # noqa: E731
    return build(trained), (build(teacher) if teacher else None), trained[0], (teacher or
                                                                              large)[0]


@pytest.mark.parametrize("method", methods.names())
def test_each_method_loss_falls_in_a_few_steps(method):
    splits = load_splits("digits", max_train=128)
    x = (splits.train_x.float() / 255 - splits.mean[0]) / splits.std[0]
    y = splits.train_y
    model, teacher, arch, teacher_arch = _pair(method)
    augmented = torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < 0.5
    distiller = build_distiller(method, model, teacher, CONFIG, student_arch=arch,
                                teacher_arch=teacher_arch, example=x[:2], num_classes=10)
    distiller.begin_epoch(9, 10)  # MSKD: the last phase, every exit trains
    distiller.train()
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.1,
                                momentum=0.9)
    totals = []
    for _ in range(25):
        logits, losses = distiller(x, y, None, augmented)
        assert logits.shape == (len(y), 10)
        assert set(losses) == set(methods.get(method).loss_names)
        loss = sum(losses.values())
        totals.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert totals[-1] < 0.9 * totals[0], (method, totals)
    if method != "scratch" and teacher is not None:  # the teacher never moved and is no parameter of the distiller
        assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
        assert not {id(p) for p in teacher.parameters()} & {id(p) for p in distiller.parameters()}


def test_mskd_phases_add_exits_and_end_with_all():
    assert [mskd_active_exits(e, 10, 2) for e in range(10)] == [1] * 5 + [2] * 5
    assert [mskd_active_exits(e, 10, 3) for e in range(10)] == [1, 1, 1, 2, 2] + [3] * 5
    assert [mskd_active_exits(e, 1, 3) for e in range(1)] == [3]
    assert [mskd_active_exits(e, 3, 4) for e in range(3)] == [1, 4, 4]


def test_mskd_trains_only_active_exits_and_predicts_with_the_ensemble():
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [8, 16]})
    student = build_model("resnet8", 1, 10, 8)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    mskd = build_distiller("mskd", student, teacher, {"alpha": 0.5, "tau": 2.0},
                           student_arch="resnet8", teacher_arch="small_cnn", example=x,
                           num_classes=10)
    assert mskd.n_exits == 3
    mskd.begin_epoch(0, 10)
    _, losses = mskd(x, y)
    sum(losses.values()).backward()
    assert student.fc.weight.grad is None  # only the first exit trains in phase 1
    assert mskd.extra["multi_exit"].heads[0][2].weight.grad is not None
    exits = mskd.exit_models()
    assert list(exits) == ["exit1", "exit2", "exit3", "ensemble"]
    mskd.eval()
    with torch.no_grad():
        probs = torch.stack([m(x).softmax(1) for n, m in exits.items() if n != "ensemble"])
        assert torch.allclose(mskd.predictor(x).exp(), probs.mean(0), atol=1e-5)
        assert torch.allclose(exits["exit3"](x), student(x))


def test_cached_teacher_rows_equal_the_live_teacher():
    splits = load_splits("digits", max_train=200)
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [8, 16]})
    live = LiveTeacher(teacher, "small_cnn", ("stage1",))
    cached = CachedTeacher(precompute(live, splits.train_x, splits.mean, splits.std,
                                      batch_size=64))
    assert cached.outputs["logits"].shape == (200, 10)
    index = torch.tensor([5, 0, 199, 17])
    x = (splits.train_x[index].float() / 255 - splits.mean[0]) / splits.std[0]
    for name, value in live(x).items():
        assert torch.allclose(cached(x, index)[name], value, atol=1e-5)
    with pytest.raises(ValueError, match="row indices"):
        cached(x, None)


@pytest.mark.parametrize("method", ["rkd", "ikd", "at"])
def test_training_with_cached_teacher_equals_training_live(method):
    splits = load_splits("digits", max_train=256)
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [8, 16]}).eval()
    budget = Budget(epochs=2, batch_size=64, lr=0.05)
    runs = []
    for use_cache in (False, True):
        torch.manual_seed(3)
        student = build_model("small_cnn", 1, 10, 8, {"widths": [4, 8]})
        distiller = build_distiller(method, student, teacher, CONFIG, student_arch="small_cnn",
                                    teacher_arch="small_cnn", example=splits.train_x[:2].float())
        if use_cache:
            outputs = precompute(distiller.live_teacher, splits.train_x, splits.mean, splits.std)
            distiller.use_cached_teacher(CachedTeacher(outputs))
        runs.append([r.losses for r in train_epochs(distiller, splits, budget, seed=0)])
    for live, cached in zip(*runs):
        assert live == pytest.approx(cached, rel=1e-4)


def test_augmented_batches_never_reach_a_cache():
    splits = load_splits("digits", max_train=128)
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [8]})
    distiller = build_distiller("rkd", build_model("small_cnn", 1, 10, 8, {"widths": [4]}),
                                teacher, CONFIG, student_arch="small_cnn",
                                teacher_arch="small_cnn", example=splits.train_x[:2].float())
    distiller.use_cached_teacher(CachedTeacher(precompute(
        distiller.live_teacher, splits.train_x, splits.mean, splits.std)))
    with pytest.raises(ValueError, match="un-augmented"):
        next(train_epochs(distiller, splits, Budget(epochs=1, batch_size=64,
                                                    augmentation="crop_flip"), seed=0))
