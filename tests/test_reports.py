"""A trial reports to Tune every ``scheduler.report_every_s`` seconds, each report carrying the
epochs since the one before, and the driver writes a row for every epoch all the same; search
trials that an early-stopping rule watches report every epoch; a diverging trial's unreported
epochs still reach ``epochs.parquet``. In-process, with a fake of what a trial sees of Tune."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kdtune import trainables
from kdtune.engine import TrainingDiverged
from kdtune.job import TrialJob
from kdtune.recorder import Recorder
from kdtune.spec import parse_spec
from tests.test_recorder import _Store, _Trial  # what the recorder sees of Tune and the store

EPOCH_COLUMNS = ("epoch", "train_loss", "val_acc", "epoch_s", "wall_s", "reported_at")


class _Tune:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def get_checkpoint(self):
        return None

    def report(self, metrics, checkpoint=None):
        self.reports.append(dict(metrics))


def _spec(tiny_spec_dict: dict, **scheduler: Any):
    tiny_spec_dict["training"] |= {"student_epochs": 3}
    tiny_spec_dict["scheduler"] = {"checkpoint_every_s": 1000} | scheduler
    return parse_spec(tiny_spec_dict)


def _train(spec, job: TrialJob, monkeypatch) -> list[dict[str, Any]]:
    from ray import tune

    fake = _Tune()
    monkeypatch.setattr(tune, "get_checkpoint", fake.get_checkpoint)
    monkeypatch.setattr(tune, "report", fake.report)
    trainables.train(job.to_config(), spec)
    return fake.reports


def _record(spec, job: TrialJob, reports: list[dict[str, Any]]) -> _Store:
    store = _Store()
    recorder = Recorder(store, spec, job.stage, job.role, 1, lambda line: None, EPOCH_COLUMNS)
    trial = _Trial(job.to_config(), {})
    for result in reports:
        trial.last_result = result
        recorder.on_trial_result(0, [], trial, result)
    recorder.on_trial_complete(0, [], trial)
    return store


FINAL = TrialJob("final", "final", 0, "scratch", 0)
SEARCH = TrialJob("search-digits_n300-scratch", "search", 0, "scratch", 0)


def test_a_short_trial_reports_once_and_every_epoch_gets_its_row(tiny_spec_dict, monkeypatch):
    spec = _spec(tiny_spec_dict, report_every_s=1000)
    reports = _train(spec, FINAL, monkeypatch)
    assert len(reports) == 1  # one round trip instead of three
    (last,) = reports
    assert last["epoch"] == 3 and last["test_acc"] is not None
    batch = json.loads(last["epoch_batch"])
    assert [e["epoch"] for e in batch] == [1, 2, 3]
    assert batch[-1]["val_acc"] == last["val_acc"]
    store = _record(spec, FINAL, reports)
    assert [r["epoch"] for r in store.epochs] == [1, 2, 3]
    assert [r["train_loss"] for r in store.epochs] == [e["train_loss"] for e in batch]
    (row,) = store.trials
    assert row["status"] == "finished" and row["epochs_run"] == 3


def test_a_trial_run_bare_starts_no_ray_session(tiny_spec_dict, monkeypatch):
    """Outside Ray a trial's node is ``local``: asking Ray's runtime context for it there
    would start an embedded cluster (4 s) and leave it to whatever runs next in the process."""
    import ray

    ray.shutdown()
    reports = _train(_spec(tiny_spec_dict, report_every_s=0), FINAL, monkeypatch)
    assert not ray.is_initialized()
    assert {r["node_id"] for r in reports} == {"local"}


def test_report_every_s_0_reports_every_epoch(tiny_spec_dict, monkeypatch):
    spec = _spec(tiny_spec_dict, report_every_s=0)
    reports = _train(spec, FINAL, monkeypatch)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert not any("epoch_batch" in r for r in reports)
    assert [r["epoch"] for r in _record(spec, FINAL, reports).epochs] == [1, 2, 3]


def test_a_rule_sees_every_epoch_of_a_search_trial_and_finals_still_batch(tiny_spec_dict,
                                                                          monkeypatch):
    spec = _spec(tiny_spec_dict, kind="median", report_every_s=1000)
    assert [r["epoch"] for r in _train(spec, SEARCH, monkeypatch)] == [1, 2, 3]
    assert [r["epoch"] for r in _train(spec, FINAL, monkeypatch)] == [3]  # never stopped


def test_a_diverging_trial_reports_the_epochs_it_had_not_sent(tiny_spec_dict, monkeypatch):
    real = trainables.train_epochs

    def diverging_in_epoch_3(*args, **kwargs):
        for report in real(*args, **kwargs):
            if report.epoch == 3:
                raise TrainingDiverged("loss became nan in epoch 3")
            yield report

    monkeypatch.setattr(trainables, "train_epochs", diverging_in_epoch_3)
    spec = _spec(tiny_spec_dict, report_every_s=1000)
    reports = _train(spec, FINAL, monkeypatch)
    (last,) = reports
    assert last["diverged"] == 1 and "epoch 3" in last["failure"]
    store = _record(spec, FINAL, reports)
    assert [r["epoch"] for r in store.epochs] == [1, 2]
    (row,) = store.trials
    assert row["status"] == "failed" and row["val_acc"] is None


@pytest.mark.parametrize("value", [-1, "soon"])
def test_a_bad_report_every_s_is_refused(tiny_spec_dict, value):
    from kdtune.spec import SpecError

    tiny_spec_dict["scheduler"] = {"report_every_s": value}
    with pytest.raises(SpecError, match="report_every_s"):
        parse_spec(tiny_spec_dict)
