"""The recorder callback turns a finished Tune trial into one trial row, with every
hyperparameter it ran with (augmentation and share included), and its epochs into rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtune.job import TrialJob
from kdtune.recorder import Recorder
from kdtune.results import compute_gains
from kdtune.spec import parse_spec


@dataclass
class _Trial:
    config: dict[str, Any]
    last_result: dict[str, Any]
    trial_id: str = "abc_00001"
    num_failures: int = 0
    error_file: str | None = None


@dataclass
class _Store:
    run_dir: Path = Path("/runs/tiny-1")
    trials: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def add_epoch(self, row, replace=True):
        if any(r["epoch"] == row["epoch"] and r["trial_id"] == row["trial_id"]
               for r in self.epochs):
            if not replace:
                return
            self.epochs = [r for r in self.epochs
                           if (r["epoch"], r["trial_id"]) != (row["epoch"], row["trial_id"])]
        self.epochs.append(row)

    def finish_trial(self, row):
        self.trials.append(row)


def _recorder(spec, store, lines):
    return Recorder(store, spec, "final", "final", {"search-digits_n300-rkd": 2}, lines.append,
                    ("epoch", "train_loss", "loss_ce", "loss_kd", "val_acc", "epoch_s",
                     "wall_s"))


def test_a_trial_row_records_the_augmentation_it_ran_with(tiny_spec_dict):
    tiny_spec_dict["search"] |= {"augmentation": ["none", "paper"], "aug_share": [0.2, 0.9]}
    spec = parse_spec(tiny_spec_dict)
    store, lines = _Store(), []
    job = TrialJob("search-digits_n300-rkd", "search", 0, "rkd", 0).with_hp(
        alpha=0.5, tau=2.0, augmentation="paper", aug_share=0.4)
    trial = _Trial(job.to_config(), {"epoch": 2, "val_acc": 81.0, "test_acc": 79.0,
                                     "wall_s": 3.0, "loss_ce": 0.5})
    recorder = _recorder(spec, store, lines)
    recorder.on_trial_result(0, [], trial, trial.last_result)
    recorder.on_trial_complete(0, [], trial)
    (row,) = store.trials
    assert (row["augmentation"], row["aug_share"], row["alpha"], row["tau"]) == (
        "paper", 0.4, 0.5, 2.0)
    assert row["lr"] == spec.training.lr  # not searched: the budget's lr, as it ran
    assert row["status"] == "finished" and row["epochs_budget"] == 2
    assert row["trial_id"] == "search-digits_n300-rkd:abc_00001"
    assert row["dataset"] == "digits[n=300]" and row["arch"].startswith("small_cnn")
    (epoch,) = store.epochs
    assert epoch["loss_ce"] == 0.5 and epoch["trial_id"] == row["trial_id"]
    assert "augmentation=paper aug_share=0.4" in lines[-1] and "1/2" in lines[-1]


def test_a_row_without_a_searched_policy_records_the_spec_s(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)  # training.augmentation: none, share 1
    store = _Store()
    job = TrialJob("final", "final", 0, "scratch", 1, selected_from="search:x")
    trial = _Trial(job.to_config(), {"epoch": 1, "val_acc": 50.0})
    _recorder(spec, store, []).on_trial_complete(0, [], trial)
    (row,) = store.trials
    assert (row["augmentation"], row["aug_share"], row["status"]) == ("none", 1.0, "stopped")


def test_gains_carry_the_selected_augmentation():
    rows = [{"dataset": "d", "method": m, "seed": s, "role": "final", "status": "finished",
             "test_acc": 80.0 + s + (m == "rkd"), "val_acc": 80.0, "augmentation": "paper",
             "aug_share": 0.5, "alpha": 0.3 if m == "rkd" else None}
            for m in ("scratch", "rkd") for s in (0, 1)]
    gains = {g["method"]: g for g in compute_gains(rows)}
    assert (gains["rkd"]["augmentation"], gains["rkd"]["aug_share"]) == ("paper", 0.5)
    assert gains["rkd"]["gain_pts"] == 1.0


def test_epochs_the_driver_never_saw_are_filled_from_the_last_reports_history(tiny_spec_dict):
    """A worker that died right after reporting an epoch: the driver never processed that
    result, the retried trial starts after it; the last report's history fills the gap, and an
    epoch the driver did see keeps its own row."""
    import json

    spec = parse_spec(tiny_spec_dict)
    store, lines = _Store(), []
    job = TrialJob("search-digits_n300-rkd", "search", 0, "rkd", 0).with_hp(alpha=0.5, tau=2.0)
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": 50.0 + e, "epoch_s": 0.1,
                "wall_s": 0.1 * e} for e in (1, 2, 3)]
    recorder = _recorder(spec, store, lines)
    seen = _Trial(job.to_config(), {"epoch": 1, "val_acc": 99.0, "wall_s": 0.1})
    recorder.on_trial_result(0, [], seen, seen.last_result)  # epoch 2 was never seen
    last = {"epoch": 3, "val_acc": 53.0, "test_acc": 50.0, "wall_s": 0.3,
            "epoch_history": json.dumps(history)}
    trial = _Trial(job.to_config(), last)
    recorder.on_trial_result(0, [], trial, last)
    recorder.on_trial_complete(0, [], trial)
    by_epoch = {r["epoch"]: r for r in store.epochs}
    assert sorted(by_epoch) == [1, 2, 3] and len(store.epochs) == 3
    assert by_epoch[1]["val_acc"] == 99.0  # the row the driver saw, not the history's
    assert by_epoch[2]["val_acc"] == 52.0 and by_epoch[2]["train_loss"] == 0.5
    assert all(r["trial_id"] == "search-digits_n300-rkd:abc_00001" for r in store.epochs)
