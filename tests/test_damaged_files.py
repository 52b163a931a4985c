"""The fault matrix: every file kdtune reads from a run directory or its storage, truncated,
emptied or replaced by garbage, through ``kdtune resume``, ``kdtune report`` and (the stored
teacher) ``kdtune run``. Never a traceback: exit 0 where kdtune recovers without loss (and says
so), exit 2 with one line naming the file where it cannot; never a finished trial lost, and a
refused command writes nothing."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from kdtune.cli import main

pytestmark = pytest.mark.slow

DAMAGES = ("truncated", "empty", "garbage")

# file -> (exit codes of resume, of report): 0 recovered or not needed, 2 refused
MATRIX = {
    "trials.parquet": ({2}, {2}),
    "epochs.parquet": ({2}, {2}),
    "datasets.parquet": ({2}, {2}),
    "run.json": ({0}, {0}),
    "spec.yaml": ({2}, {0}),  # the report reads a spec as text and never needs it whole
    "optuna/journal.log": ({0}, {0}),
    "gains.parquet": ({0}, {0}),  # written anew from trials.parquet, and said so
    "trends.parquet": ({0}, {0}),
}
WRITTEN_ANEW = ("gains.parquet", "trends.parquet")


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(random.Random(0).randbytes(max(64, len(data))))


def _target(run_dir: Path, name: str) -> Path:
    """The file a name stands for: a parts dataset's (compacted) part."""
    path = run_dir / name
    if path.is_dir():
        (part,) = sorted(path.resolve().glob("part-*.parquet"))
        return part
    return path


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and "tune" not in p.relative_to(run_dir).parts}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, _ray_for_the_session):
    import kdtune
    from tests.conftest import TINY_SPEC

    root = tmp_path_factory.mktemp("matrix")
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(methods=["scratch", "rkd"], final={"seeds": [0]})
    spec["search"]["trials"] = 1
    spec["training"] |= {"teacher_epochs": 2, "student_epochs": 2}
    run = kdtune.run(spec, storage=str(root / "runs"), progress=False)
    yield spec, run.path  # its embedded Ray stays up for the session's other studies


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", list(MATRIX))
def test_a_damaged_run_file(finished, name, how, tmp_path, capsys):
    _, original = finished
    rows = pq.read_table(original / "trials.parquet").num_rows
    # the storage as a user holds it: the run beside the stored teachers (a run.json that
    # names no storage means the run directory's parent)
    shutil.copytree(original.parent, tmp_path / "runs", symlinks=True)
    run_dir = tmp_path / "runs" / original.name
    _damage(_target(run_dir, name), how)
    resume_codes, report_codes = MATRIX[name]
    for command, codes in (("report", report_codes), ("resume", resume_codes)):
        before = _snapshot(run_dir)
        capsys.readouterr()
        code = main([command, str(run_dir)])
        out, err = capsys.readouterr()
        assert code in codes, (command, name, how, code, out[-2000:], err[-2000:])
        assert "Traceback" not in out + err and "weights_only" not in out + err
        if code == 2:
            (line,) = err.strip().splitlines()  # one line, naming the file
            assert line.startswith("kdtune: error: ") and Path(name).name.split(".")[0] in line
            assert _snapshot(run_dir) == before  # nothing written
        elif name != "trials.parquet":  # recovered: every finished trial still there
            assert pq.read_table(run_dir / "trials.parquet").num_rows == rows
            if name in ("run.json", "optuna/journal.log") and command == "resume" \
                    and how == "garbage":
                assert "damaged" in out  # said so
            if name in WRITTEN_ANEW:  # readable again, the same rows as before the damage
                assert pq.read_table(run_dir / name).to_pandas().equals(  # NaN == NaN here
                    pq.read_table(original / name).to_pandas())
                if command == "report":  # said in one line (resume rewrites them as it ends)
                    assert f"{run_dir / name}: damaged (" in err
                    assert err.count("written anew") == 1


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_stored_teacher_is_kept_aside_and_trained_again(finished, how, tmp_path,
                                                                 write_spec, capsys):
    spec, original = finished
    storage = tmp_path / "runs"
    shutil.copytree(original.parent / "teachers", storage / "teachers")
    (teacher,) = (storage / "teachers").glob("*/teacher.pt")
    _damage(teacher, how)
    capsys.readouterr()
    assert main(["run", str(write_spec(spec)), "--storage", str(storage)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "weights_only" not in out + err
    assert f"{teacher}: damaged" in out and "training that teacher again" in out
    (aside,) = teacher.parent.glob("teacher.pt.damaged-*")
    assert aside.stat().st_size < teacher.stat().st_size or how == "garbage"
    (run_dir,) = [p for p in storage.iterdir() if p.name.startswith("tiny-")]
    roles = [r["status"] for r in pq.read_table(run_dir / "trials.parquet").to_pylist()
             if r["role"] == "teacher"]
    assert roles == ["finished"]  # trained again, not reused


# --- the stored teacher's record (teacher.json), and a teacher that is not what was stored ---
def _run_on_copied_teachers(finished, tmp_path, write_spec, capsys, damage) -> tuple[str, Path]:
    """``kdtune run`` on a storage holding a copy of the finished run's teachers, one of them
    damaged by ``damage(teacher_pt)``; returns the output and the teacher.pt path."""
    spec, original = finished
    storage = tmp_path / "runs"
    shutil.copytree(original.parent / "teachers", storage / "teachers")
    (teacher,) = (storage / "teachers").glob("*/teacher.pt")
    damage(teacher)
    capsys.readouterr()
    assert main(["run", str(write_spec(spec)), "--storage", str(storage)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "weights_only" not in out + err
    return out, teacher


def _teacher_statuses(storage: Path) -> list[str]:
    (run_dir,) = [p for p in storage.iterdir() if p.name.startswith("tiny-")]
    return [r["status"] for r in pq.read_table(run_dir / "trials.parquet").to_pylist()
            if r["role"] == "teacher"]


@pytest.mark.parametrize("how", (*DAMAGES, "missing"))
def test_a_damaged_or_missing_teacher_record_is_written_anew(finished, how, tmp_path,
                                                             write_spec, capsys):
    """teacher.json damaged, or absent (a teacher stored before records): teacher.pt still
    loads, so it is reused, and its record is written again from it."""
    def damage(teacher: Path) -> None:
        record = teacher.with_name("teacher.json")
        if how == "missing":
            record.unlink()
        else:
            _damage(record, how)

    out, teacher = _run_on_copied_teachers(finished, tmp_path, write_spec, capsys, damage)
    record = teacher.with_name("teacher.json")
    said = f"{record}: damaged (" if how != "missing" else f"{teacher}: stored without a " \
                                                          "teacher.json"
    assert said in out and "accepted, and its size and sha256 recorded" in out
    written = json.loads(record.read_text())
    assert written["size"] == teacher.stat().st_size and written["recorded_from"]
    assert _teacher_statuses(tmp_path / "runs") == ["reused"]


def test_a_teacher_that_differs_from_its_record_is_kept_aside_and_trained_again(
        finished, tmp_path, write_spec, capsys):
    """A teacher.pt that torch reads fine but is not the file that was stored (other weights,
    the same keys and shapes): only its sha256 tells."""
    def damage(teacher: Path) -> None:
        state = torch.load(teacher, weights_only=True)
        state["model"] = {k: v + 1 if v.is_floating_point() else v
                          for k, v in state["model"].items()}
        torch.save(state, teacher)

    out, teacher = _run_on_copied_teachers(finished, tmp_path, write_spec, capsys, damage)
    assert f"{teacher}: damaged (its size or sha256 does not match teacher.json" in out
    assert "training that teacher again" in out
    assert len(list(teacher.parent.glob("teacher.pt.damaged-*"))) == 1
    assert len(list(teacher.parent.glob("teacher.json.damaged-*"))) == 1
    assert _teacher_statuses(tmp_path / "runs") == ["finished"]  # trained again, not reused
    record = json.loads(teacher.with_name("teacher.json").read_text())
    assert record["size"] == teacher.stat().st_size  # the new teacher's record


# --- trial checkpoints (Tune restores a retried trial from its last one) --------------------
CHECKPOINT_DAMAGES = (*DAMAGES, "no state.pt", "another model's state")


class _Tune:
    """What a trial sees of Ray Tune: the checkpoint it restores from, and what it reports
    (each checkpoint copied, as Tune keeps it)."""

    def __init__(self, checkpoint: Path | None, keep: Path) -> None:
        from ray import tune

        self.checkpoint = tune.Checkpoint.from_directory(checkpoint) if checkpoint else None
        self.keep, self.reports, self.saved = keep, [], []

    def get_checkpoint(self):
        return self.checkpoint

    def report(self, metrics, checkpoint=None):
        self.reports.append(metrics)
        if checkpoint is not None:
            target = self.keep / f"checkpoint-{len(self.reports)}"
            shutil.copytree(checkpoint.path, target)
            self.saved.append(target)


def _train(spec_dict: dict, monkeypatch, tmp_path: Path, checkpoint: Path | None) -> _Tune:
    """One scratch trial of the tiny spec (3 epochs, a checkpoint after each), in-process."""
    from ray import tune

    from kdtune.job import TrialJob
    from kdtune.spec import parse_spec
    from kdtune.trainables import train

    spec = parse_spec(spec_dict | {"scheduler": {"checkpoint_every_s": 0}})
    fake = _Tune(checkpoint, tmp_path)
    monkeypatch.setattr(tune, "get_checkpoint", fake.get_checkpoint)
    monkeypatch.setattr(tune, "report", fake.report)
    train(TrialJob("final", "final", 0, "scratch", 0).to_config(), spec)
    return fake


@pytest.fixture
def trial_spec(tiny_spec_dict) -> dict:
    tiny_spec_dict["training"] |= {"student_epochs": 3}
    return tiny_spec_dict


def test_a_trial_resumes_from_its_checkpoint(trial_spec, monkeypatch, tmp_path):
    """The control: a good checkpoint of epoch 1 resumes at epoch 2, as the trial ran."""
    first = _train(trial_spec, monkeypatch, tmp_path / "a", None)
    assert [r["epoch"] for r in first.reports] == [1, 2, 3] and len(first.saved) == 3
    resumed = _train(trial_spec, monkeypatch, tmp_path / "b", first.saved[0])
    assert [r["epoch"] for r in resumed.reports] == [2, 3]
    assert "checkpoint_damaged" not in resumed.reports[0]
    # said once, so the driver can log where the trial resumed
    assert resumed.reports[0]["resumed_from_epoch"] == 1
    assert all("resumed_from_epoch" not in r for r in first.reports + resumed.reports[1:])
    assert [r["train_loss"] for r in resumed.reports] == pytest.approx(
        [r["train_loss"] for r in first.reports[1:]], rel=1e-5)


@pytest.mark.parametrize("how", CHECKPOINT_DAMAGES)
def test_a_trial_with_a_damaged_checkpoint_starts_over(trial_spec, how, monkeypatch, tmp_path):
    """Truncated, emptied, garbage, no state.pt, or a state that does not fit the trial: the
    trial starts again from epoch 0, exactly as a fresh trial, and its first report says why
    (the driver logs it); never a traceback, never torch's weights_only advice."""
    first = _train(trial_spec, monkeypatch, tmp_path / "a", None)
    checkpoint = first.saved[0]
    state = checkpoint / "state.pt"
    if how == "no state.pt":
        state.unlink()
    elif how == "another model's state":
        saved = torch.load(state, weights_only=True)
        saved["distiller"] = {k: torch.zeros(3) for k in saved["distiller"]}
        torch.save(saved, state)
    else:
        _damage(state, how)
    again = _train(trial_spec, monkeypatch, tmp_path / "b", checkpoint)
    assert [r["epoch"] for r in again.reports] == [1, 2, 3]  # from scratch
    reason = again.reports[0]["checkpoint_damaged"]
    assert reason and "weights_only" not in reason and "\n" not in reason
    assert all("checkpoint_damaged" not in r for r in again.reports[1:])
    assert all("resumed_from_epoch" not in r for r in again.reports)
    # the same trial as a fresh one: built again, not left half-restored
    assert [r["train_loss"] for r in again.reports] == pytest.approx(
        [r["train_loss"] for r in first.reports], rel=1e-5)


def test_the_driver_logs_a_trial_that_started_over(tiny_spec_dict):
    from dataclasses import dataclass, field

    from kdtune.job import TrialJob
    from kdtune.recorder import Recorder
    from kdtune.spec import parse_spec

    @dataclass
    class Store:
        run_dir: Path = Path("/runs/tiny-1")
        epochs: list = field(default_factory=list)

        def add_epoch(self, row, replace=True):
            self.epochs.append(row)

    @dataclass
    class Trial:
        config: dict
        trial_id: str = "abc_00001"

    lines: list[str] = []
    recorder = Recorder(Store(), parse_spec(tiny_spec_dict), "final", "final", 1, lines.append,
                        ("epoch", "val_acc"))
    trial = Trial(TrialJob("final", "final", 0, "scratch", 0).to_config())
    recorder.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 50.0,
                                            "checkpoint_damaged": "no state.pt in it"})
    assert lines == ["final:abc_00001: its checkpoint was damaged (no state.pt in it); "
                     "restarted from epoch 0"]
    recorder.on_trial_result(0, [], trial, {"epoch": 2, "val_acc": 50.0,
                                            "resumed_from_epoch": 1})
    assert lines[1:] == ["final:abc_00001: restarted from its checkpoint of epoch 1"]
