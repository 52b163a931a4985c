"""The bare training loop (no Ray): losses fall, checkpoints resume exactly."""

from __future__ import annotations

import copy

import torch

from kdtune.data import load_splits
from kdtune.engine import Budget, evaluate, train_epochs
from kdtune.models import build_model
from kdtune.trial import build_distiller


def _scratch(model):
    return build_distiller("scratch", model, None, {}, student_arch="small_cnn",
                           example=torch.zeros(2, 1, 8, 8))


def _splits():
    return load_splits("digits", max_train=400)


def test_each_method_learns_on_tiny_data():
    torch.manual_seed(0)
    splits = _splits()
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [16, 32]})
    list(train_epochs(_scratch(teacher), splits, Budget(epochs=8, batch_size=32, lr=0.1),
                      seed=0))
    teacher_acc = evaluate(teacher, splits.val_x, splits.val_y, splits)
    assert teacher_acc > 50  # chance is 10%
    for method in ("scratch", "rkd", "ikd"):
        student = build_model("small_cnn", 1, 10, 8, {"widths": [8, 16]})
        distiller = build_distiller(method, student, teacher,
                                    {"alpha": 0.7, "tau": 4.0, "hint_layer": "stage2",
                                     "beta": 1.0}, student_arch="small_cnn",
                                    teacher_arch="small_cnn", example=splits.train_x[:2].float())
        reports = list(train_epochs(distiller, splits, Budget(epochs=4, batch_size=64, lr=0.05),
                                    seed=0))
        assert [r.epoch for r in reports] == [1, 2, 3, 4]
        assert reports[-1].train_loss < reports[0].train_loss, method
        assert all(0 <= r.val_acc <= 100 for r in reports)


def test_resume_from_checkpoint_state_matches_uninterrupted_run():
    splits = _splits()
    budget = Budget(epochs=3, batch_size=64, lr=0.05, augmentation="paper")

    def fresh():
        torch.manual_seed(1)
        return _scratch(build_model("small_cnn", 1, 10, 8, {"widths": [4, 8]}))

    straight = fresh()
    full = list(train_epochs(straight, splits, budget, seed=3))

    first = fresh()
    it = train_epochs(first, splits, budget, seed=3)
    report = next(it)
    saved = {"model": copy.deepcopy(first.state_dict()),
             "optimizer": copy.deepcopy(report.optimizer.state_dict()),
             "generator": report.generator_state.clone()}
    resumed = fresh()
    from kdtune.engine import make_optimizer

    resumed.load_state_dict(saved["model"])
    optimizer = make_optimizer(resumed.parameters(), budget)
    optimizer.load_state_dict(saved["optimizer"])
    rest = list(train_epochs(resumed, splits, budget, seed=3, start_epoch=1, optimizer=optimizer,
                             generator_state=saved["generator"]))
    assert [r.epoch for r in rest] == [2, 3]
    assert rest[-1].val_acc == full[-1].val_acc
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
