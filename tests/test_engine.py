"""The bare training loop (no Ray): losses fall, checkpoints resume exactly."""

from __future__ import annotations

import copy

import pytest
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
        # the reported accuracy is the trained student's, measured again here; above chance
        assert reports[-1].val_acc == pytest.approx(
            evaluate(student, splits.val_x, splits.val_y, splits)), method
        assert reports[-1].val_acc > 10, method  # chance is 10%


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


def _count_host_reads(monkeypatch):
    """Count every way a tensor's value reaches Python (each waits for a GPU's queue)."""
    reads = {"n": 0}
    for name in ("__float__", "__int__", "__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_the_loop_reads_the_device_once_per_epoch_not_once_per_step(monkeypatch):
    """CPU stand-in for torch.cuda.set_sync_debug_mode: the reads of one epoch do not grow
    with its steps (benchmarks/gpu_check.sh checks the same on a GPU)."""
    splits = _splits()
    teacher = build_model("small_cnn", 1, 10, 8, {"widths": [8, 16]})
    counts = []
    for batch_size in (200, 20):  # 2 steps an epoch, then 20
        torch.manual_seed(0)
        student = build_model("small_cnn", 1, 10, 8, {"widths": [4, 8]})
        d = build_distiller("ikd", student, teacher, {"alpha": 0.5, "tau": 4.0,
                                                      "hint_layer": "stage2"},
                            student_arch="small_cnn", teacher_arch="small_cnn",
                            example=splits.train_x[:2].float())
        reads = _count_host_reads(monkeypatch)
        list(train_epochs(d, splits, Budget(epochs=2, batch_size=batch_size, lr=0.05), seed=0))
        counts.append(reads["n"])
        monkeypatch.undo()
    assert counts[0] == counts[1], counts
    assert counts[0] <= 2 * 3  # per epoch: the losses, the validation count


def test_a_diverging_loss_is_caught_in_its_epoch():
    from kdtune.engine import TrainingDiverged

    splits = _splits()  # 400 training images: 13 steps an epoch at batch 32
    torch.manual_seed(0)
    d = _scratch(build_model("small_cnn", 1, 10, 8, {"widths": [4, 8]}))
    forward, calls = d.forward, {"n": 0}

    def nan_from_step_20(*args):  # step 20 lies in epoch 2
        calls["n"] += 1
        logits, losses = forward(*args)
        if calls["n"] >= 20:
            losses = {"ce": losses["ce"] * float("nan")}
        return logits, losses

    d.forward = nan_from_step_20
    seen = []
    try:
        for report in train_epochs(d, splits, Budget(epochs=5, batch_size=32, lr=0.05), seed=0):
            seen.append(report.epoch)
    except TrainingDiverged as error:
        assert str(error) == "loss became nan in epoch 2"
    else:
        raise AssertionError(f"no divergence in epochs {seen}")
    assert seen == [1]


def test_a_gpu_share_without_a_gpu_fails_instead_of_training_on_the_cpu(monkeypatch):
    import pytest

    from kdtune.devices import DeviceUnavailable, autocast_dtype, device_name, pick_device

    assert pick_device(0) == torch.device("cpu") and device_name(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="given 0.25 GPU but sees no CUDA device"):
        pick_device(0.25)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(0.25) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Fake GPU")
    assert device_name(torch.device("cuda", 0)) == "cuda:0 (Fake GPU)"
    # bf16 autocast on a CUDA device when amp is on; nothing on the CPU or with amp off
    assert autocast_dtype(torch.device("cuda"), True) == torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), True) is None
    assert autocast_dtype(torch.device("cuda"), False) is None
