"""The teacher store: records (size, sha256, recipe) checked on read, and claims that make one
study train a teacher several studies need at once. Unit tests without Ray, then two studies
started together on one storage, and a study that finds the claim of a killed one."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from kdtune import preflight, storage, teacher_recipe
from kdtune import teacher_store as ts
from kdtune.job import TrialJob
from kdtune.rundir import RunFileError
from kdtune.spec import parse_spec
from kdtune.trainables import save_teacher, teacher_path


@pytest.fixture(params=["local", "file_uri"])
def store(request, tmp_path: Path, monkeypatch) -> str | Path:
    """A teacher store: a local folder, or the same through a file:// URI (the object-storage
    code path: no create-if-absent)."""
    monkeypatch.setattr(ts, "URI_SETTLE_S", 0.0)
    if request.param == "local":
        return tmp_path / "store"
    return f"file://{tmp_path}/bucket/store"


def _teacher(store, tid: str = "digits-small_cnn-s0-abc") -> str | Path:
    return teacher_path(store, tid)


def _claim_file(teacher) -> dict:
    return json.loads(ts._read_text(ts.claim_path(teacher)))


def _write_claim(teacher, **body) -> None:
    ts._write_text(ts.claim_path(teacher), json.dumps(
        {"run_id": "killed-run", "host": "gone", "pid": 2**22 + 17, "token": "t0",
         "heartbeat": time.time()} | body))


# --- claims ---------------------------------------------------------------------------------
def test_a_claim_is_taken_once_and_names_its_study(store):
    teacher = _teacher(store)
    claim, taken = ts.acquire(teacher, "digits-small_cnn-s0-abc", "run-a")
    assert claim is not None and taken is None
    body = _claim_file(teacher)
    assert body["run_id"] == "run-a" and body["pid"] == os.getpid() and body["host"]
    assert abs(body["heartbeat"] - time.time()) < 5 and body["token"] == claim.token
    other, holder = ts.acquire(teacher, "digits-small_cnn-s0-abc", "run-b")
    assert other is None and holder["run_id"] == "run-a"  # a live claim: run-b waits
    ts.release(claim)
    assert ts.read_claim(teacher) is None
    again, _ = ts.acquire(teacher, "digits-small_cnn-s0-abc", "run-b")
    assert again is not None and _claim_file(teacher)["run_id"] == "run-b"


def test_the_heartbeat_renews_a_claim_and_leaving_releases_it(store, monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "0.8")  # a beat every 0.2 s
    teacher = _teacher(store)
    claim, _ = ts.acquire(teacher, "t", "run-a")
    first = _claim_file(teacher)["heartbeat"]
    lines: list[str] = []
    with ts.Heartbeat([claim], lines.append):
        time.sleep(1.5)  # longer than the timeout: alive only through its beats
        beat = ts.read_claim(teacher)
        assert beat["heartbeat"] > first and not ts.is_stale(beat)
        assert ts.acquire(teacher, "t", "run-b")[0] is None
    assert ts.read_claim(teacher) is None and not lines


def test_leaving_on_a_failure_releases_the_claim(store):
    teacher = _teacher(store)
    claim, _ = ts.acquire(teacher, "t", "run-a")
    with pytest.raises(KeyboardInterrupt), ts.Heartbeat([claim], print):
        raise KeyboardInterrupt
    assert ts.read_claim(teacher) is None


def test_a_stale_claim_is_taken_over(store, monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "3")
    teacher = _teacher(store)
    _write_claim(teacher, heartbeat=time.time() - 3600)  # a killed study: no beat for an hour
    claim, taken = ts.acquire(teacher, "t", "run-b")
    assert claim is not None and taken["run_id"] == "killed-run"
    assert _claim_file(teacher)["token"] == claim.token
    fresh = _teacher(store, "u")
    _write_claim(fresh)  # a heartbeat a moment ago: live
    assert ts.acquire(fresh, "u", "run-b")[0] is None


def test_a_claim_goes_stale_once_its_heartbeat_stops(store, monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "1")
    teacher = _teacher(store)
    _write_claim(teacher)
    assert ts.acquire(teacher, "t", "run-b")[0] is None
    time.sleep(1.2)
    assert ts.is_stale(ts.read_claim(teacher))
    assert ts.acquire(teacher, "t", "run-b")[0] is not None


def test_a_claim_of_the_same_run_is_taken_over_at_once(store):
    """A run killed (SIGKILL) while training its teacher and resumed at once does not wait for
    its own claim to go stale."""
    teacher = _teacher(store)
    _write_claim(teacher, run_id="run-a")
    claim, taken = ts.acquire(teacher, "t", "run-a")
    assert claim is not None and taken["run_id"] == "run-a"


def test_an_unreadable_claim_is_live_until_its_file_is_old(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "3")
    teacher = _teacher(tmp_path)
    path = Path(ts.claim_path(teacher))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # created, not yet written (or garbage)
    assert ts.acquire(teacher, "t", "run-b")[0] is None
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert ts.acquire(teacher, "t", "run-b")[0] is not None


def test_a_claim_taken_over_is_not_renewed_or_released_by_its_old_holder(store, monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "3")
    teacher = _teacher(store)
    old, _ = ts.acquire(teacher, "t", "run-a")
    _write_claim(teacher, run_id="run-a", token=old.token, heartbeat=time.time() - 60)
    new, _ = ts.acquire(teacher, "t", "run-b")  # run-a's machine slept past the timeout
    assert new is not None
    assert not ts.refresh(old) and old.lost
    ts.release(old)
    assert _claim_file(teacher)["token"] == new.token


# Each racer is its own fresh interpreter released at one wall-clock instant: a fork of the
# test process deadlocked in the full suite (2026-12-02 CI, 90 min), where earlier tests leave
# Ray, gRPC and torch threads whose locks a forked child inherits held.
_RACER = """
import sys, time
from pathlib import Path
from kdtune import teacher_store as ts
folder, run_id, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
print(ts.acquire(Path(folder) / "teacher.pt", "t", run_id)[0] is not None)
"""


def test_of_many_studies_claiming_at_once_one_wins(tmp_path):
    """O_CREAT | O_EXCL: eight processes released at one instant, one claim."""
    start = time.time() + 3.0  # after all eight have imported kdtune (~0.2 s each)
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / "t"), f"run-{i}",
                                repr(start)], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1]) for i in range(8)]
    won = [racer.communicate(timeout=60)[0].split() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), won
    assert sorted(won) == [["False"]] * 7 + [["True"]]


def test_of_two_studies_taking_over_one_stale_claim_one_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "3")
    for attempt in range(20):
        teacher = _teacher(tmp_path, f"t{attempt}")
        _write_claim(teacher, heartbeat=time.time() - 60)
        barrier, won = threading.Barrier(2), []

        def take(run_id: str, teacher=teacher, barrier=barrier, won=won) -> None:
            barrier.wait()
            claim, _ = ts.acquire(teacher, "t", run_id)
            won.append(claim is not None)

        threads = [threading.Thread(target=take, args=(f"run-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(won) == 1, attempt
        assert not list(Path(teacher).parent.glob("claim.json.stale-*"))


# --- records --------------------------------------------------------------------------------
def test_a_teacher_id_needs_neither_torch_nor_pyarrow():
    """The spec (and ``kdtune validate``) stays light: the recipe lives apart from the store."""
    code = ("import sys; from kdtune.spec import load_spec; "
            "s = load_spec('studies/quickstart.yaml'); print(s.teacher_id(s.datasets[0])); "
            "print(sorted(m for m in ('torch', 'ray', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["digits-small_cnn-s0-7a6e66bd0ac2", "[]"]


@pytest.fixture
def spec(tiny_spec_dict):
    return parse_spec(tiny_spec_dict)


def _store_teacher(spec, store, weight: float = 1.0, index: int = 0) -> str | Path:
    tid = spec.teacher_id(spec.datasets[index])
    path = teacher_path(store, tid)
    job = TrialJob("teachers", "teacher", index, "teacher", 0, teacher_id=tid,
                   teacher_path=str(path))
    save_teacher(spec, job, {"model": {"w": torch.full((4,), weight)}, "val_acc": 90.0,
                             "test_acc": 88.0})
    return path


def test_a_stored_teacher_carries_its_size_hash_and_recipe(spec, store):
    path = _store_teacher(spec, store)
    record, damage = ts.read_record(path)
    assert damage is None
    with ts.local_copy(path) as local:
        assert (record["size"], record["sha256"]) == storage.file_digest(local)
    assert record["id"] == spec.teacher_id(spec.datasets[0]) == ts.teacher_id_of(path)
    assert record["arch"] == "small_cnn" and record["options"] == {"widths": [8, 16]}
    assert record["dataset"] == spec.datasets[0].label and record["teacher_epochs"] == 3
    assert record["seed"] == 0 and record["lr"] == 0.1 and record["model"] == "teacher"
    assert record["kdtune_version"] and record["recorded_at"]
    # the plain recipe is what the id hashes
    assert teacher_recipe.recipe_digest(record["recipe"]) == record["id"].rsplit("-", 1)[1]
    lines: list[str] = []
    assert preflight.stored_teacher(path, lines.append)["val_acc"] == 90.0 and not lines


def test_a_teacher_that_is_not_what_was_stored_is_kept_aside(spec, tmp_path):
    """A valid checkpoint with other weights (what torch alone cannot tell): kept aside with
    its record, so the study trains it again."""
    path = _store_teacher(spec, tmp_path)
    record = ts.read_record(path)[0]
    torch.save({"model": {"w": torch.full((4,), 2.0)}, "val_acc": 90.0, "test_acc": 88.0}, path)
    lines: list[str] = []
    assert preflight.checked_teacher(path, lines.append) is None
    (line,) = lines
    assert line.startswith(f"{path}: damaged (its size or sha256 does not match teacher.json")
    assert "kept aside as teacher.pt.damaged-" in line and "training that teacher again" in line
    assert not path.exists() and not Path(ts.record_path(path)).exists()
    (aside,) = path.parent.glob("teacher.pt.damaged-*")
    (record_aside,) = path.parent.glob("teacher.json.damaged-*")
    assert json.loads(record_aside.read_text()) == record and aside.stat().st_size > 0


def test_at_a_uri_a_teacher_that_is_not_what_was_stored_is_refused(spec, tmp_path):
    uri = f"file://{tmp_path}/bucket"
    path = _store_teacher(spec, uri)
    local = Path(str(path).removeprefix("file://"))
    data = local.read_bytes()
    local.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit, the same size
    with pytest.raises(RunFileError) as error:
        preflight.stored_teacher(path, print)
    (line,) = str(error.value).splitlines()
    assert line.startswith(f"{path}: damaged (its size or sha256 does not match teacher.json")
    assert line.endswith("delete it (and its teacher.json) to train that teacher again")
    assert local.exists()  # nothing moved at the URI


@pytest.mark.parametrize("record", ["missing", "garbage"])
def test_a_teacher_without_a_readable_record_is_accepted_and_recorded(spec, store, record):
    path = _store_teacher(spec, store)
    if record == "missing":  # a teacher stored before records
        storage.delete(ts.record_path(path))
    else:
        ts._write_text(ts.record_path(path), "{not json")
    lines: list[str] = []
    state = preflight.stored_teacher(path, lines.append, teacher_recipe.recipe(spec, spec.datasets[0]),
                                     spec.datasets[0].label)
    assert state["val_acc"] == 90.0
    (line,) = lines
    assert "accepted, and its size and sha256 recorded" in line
    assert ("stored without a teacher.json" if record == "missing" else "damaged") in line
    written, damage = ts.read_record(path)
    assert damage is None and written["recipe"] == teacher_recipe.recipe(spec, spec.datasets[0])
    with ts.local_copy(path) as local:
        assert (written["size"], written["sha256"]) == storage.file_digest(local)


def test_a_stored_teacher_is_hashed_once_while_it_does_not_change(spec, tmp_path, monkeypatch):
    path = _store_teacher(spec, tmp_path)
    hashed: list[Path] = []
    digest = preflight.file_digest
    monkeypatch.setattr(preflight, "file_digest", lambda p: hashed.append(p) or digest(p))
    for _ in range(3):
        assert preflight.checked_teacher(path, print)["val_acc"] == 90.0
    assert len(hashed) == 1
    _store_teacher(spec, tmp_path, weight=3.0)  # retrained: a new file
    assert preflight.checked_teacher(path, print)["val_acc"] == 90.0 and len(hashed) == 2
    assert preflight.checked_teacher(tmp_path / "no" / "teacher.pt", print) is None


# --- a study's teacher stage, without Ray ------------------------------------------------------
class _OtherStudy(threading.Thread):
    """Another study holding a claim on ``teacher``: it heartbeats for ``for_s`` seconds, then
    stores the teacher and releases the claim (``then='store'``), releases it without one
    (``'fail'``), or just stops (``'die'``: killed)."""

    def __init__(self, spec, teacher, for_s: float, then: str) -> None:
        super().__init__(daemon=True)
        self.spec, self.teacher, self.for_s, self.then = spec, teacher, for_s, then
        self.claim, _ = ts.acquire(teacher, ts.teacher_id_of(teacher), "other-run")
        assert self.claim is not None

    def run(self) -> None:
        with contextlib.ExitStack() as stack:
            if self.then != "die":
                stack.enter_context(ts.Heartbeat([self.claim], print))
            time.sleep(self.for_s)
            if self.then == "store":
                _store_teacher(self.spec, Path(self.teacher).parents[2], index=self.index)

    index = 0


def _study(spec, tmp_path, trained: list):
    """A Study whose students' Tuner is played here (no Ray): ``run(study)`` asks for the
    teacher jobs as the Tuner would, and each job handed out 'trains' by storing its teacher at
    once, its trial then ending; ``trained`` gets the ids of the jobs, with the time."""
    from kdtune.study import Study

    lines: list[str] = []
    study = Study(spec.model_copy(update={"storage": str(tmp_path)}), tmp_path / "tiny-run",
                  log=lines.append)
    study._cpus_gpus = lambda method: {}  # resources are resolved on a Ray cluster; none here

    def run() -> dict:
        out = study._teachers()
        handed: set[str] = set()
        with ts.Heartbeat(study._claims.values(), lines.append):  # as the Tuner's stage does
            while study._unready:
                for job in study._teacher_jobs():
                    tid = job["teacher_id"]
                    if tid in handed:
                        continue  # the searcher hands each job out once
                    handed.add(tid)
                    # held while it trains
                    assert ts.read_claim(job["teacher_path"])["token"] == \
                        study._claims[tid].token
                    trained.append((tid, time.time()))
                    _store_teacher(study.spec, tmp_path, index=job["dataset_index"])
                    study._job_ended(job, False)
                time.sleep(0.05)
        return out

    return study, lines, run


@pytest.fixture
def two_datasets(tiny_spec_dict):
    tiny_spec_dict["datasets"] = [{"name": "digits", "max_train": 300},
                                  {"name": "digits", "max_train": 200}]
    return parse_spec(tiny_spec_dict)


def test_a_study_trains_what_it_claims_and_reuses_what_another_trains(two_datasets, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "2")  # polled every 0.5 s
    spec = two_datasets
    ids = [spec.teacher_id(ds) for ds in spec.datasets]
    other = _OtherStudy(spec, teacher_path(tmp_path, ids[1]), 1.5, "store")
    other.index = 1
    trained: list = []
    # built first: a first import of kdtune.study can outlast the other study's 1.5 s
    study, lines, run = _study(spec, tmp_path, trained)
    other.start()
    started = time.time()
    out = run()
    other.join()
    assert [t for t, _ in trained] == [ids[0]]  # its own at once, not after the other's
    assert trained[0][1] - started < 1.0
    assert f"waiting for teacher {ids[1]}, being trained by run other-run" in "\n".join(lines)
    assert any(line.startswith(f"teacher {ids[1]}: reusing ") and "(trained by run other-run)"
               in line for line in lines)
    (row,) = study.store.trials
    assert (row["teacher_id"], row["status"], row["val_acc"]) == (ids[1], "reused", 90.0)
    assert {tid for tid, _ in out.values()} == set(ids)
    assert not any(Path(p).with_name("claim.json").exists() for _, p in out.values())


@pytest.mark.parametrize("then", ["fail", "die"])
def test_a_teacher_whose_claim_is_dropped_or_goes_stale_is_trained_here(two_datasets, tmp_path,
                                                                        monkeypatch, then):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "2")
    spec = two_datasets
    ids = [spec.teacher_id(ds) for ds in spec.datasets]
    other = _OtherStudy(spec, teacher_path(tmp_path, ids[1]), 0.5, then)
    trained: list = []
    study, lines, run = _study(spec, tmp_path, trained)
    other.start()
    run()
    other.join()
    assert [t for t, _ in trained] == [ids[0], ids[1]]  # the other's once its claim lapses
    text = "\n".join(lines)
    assert f"waiting for teacher {ids[1]}, being trained by run other-run" in text
    if then == "fail":
        assert f"teacher {ids[1]}: its claim was dropped without a teacher" in text
    else:
        assert f"teacher {ids[1]}: took over the claim of run other-run" in text
    assert not study.store.trials  # trained here: the Tune stage records those
    assert ts.read_claim(teacher_path(tmp_path, ids[1])) is None


def test_a_teacher_whose_trial_ends_without_it_fails_and_its_searches_run_no_trial(
        two_datasets, tmp_path):
    from kdtune.multisearch import SearchPart

    trained: list = []
    study, lines, _ = _study(two_datasets, tmp_path, trained)
    ids = [two_datasets.teacher_id(ds) for ds in two_datasets.datasets]
    study._teachers()
    study._parts = [SearchPart("search-a-rkd", None, 3, {"teacher_id": ids[0]}),
                    SearchPart("search-a-scratch", None, 3, {"teacher_id": ""}),
                    SearchPart("search-b-rkd", None, 3, {"teacher_id": ids[1]})]
    jobs = study._teacher_jobs()
    assert [j["teacher_id"] for j in jobs] == ids  # both claimed here, trained first
    assert [j["stage"] for j in jobs] == ["teachers", "teachers"]
    study._job_ended(jobs[0], True)  # its trial failed (after Tune's retries)
    (job,) = study._teacher_jobs()  # the other is still in flight
    assert job["teacher_id"] == ids[1]
    assert study._failed == [ids[0]]
    assert [p.trials for p in study._parts] == [0, 3, 3]  # its search runs no trial
    assert ts.read_claim(teacher_path(tmp_path, ids[0])) is None  # another study may train it
    assert f"teacher {ids[0]}: its training failed; skipped search-a-rkd" in lines


# --- final.resplit: a teacher per final seed's split, claimed as the final runs need it ------
def _resplit_study(tiny_spec_dict, tmp_path):
    from kdtune.hparams import Hyperparams
    from kdtune.study import Study

    tiny_spec_dict["final"] = {"seeds": [0], "resplit": True}
    spec = parse_spec(tiny_spec_dict | {"storage": str(tmp_path)})
    lines: list[str] = []
    study = Study(spec, tmp_path / "tiny-run", log=lines.append)
    study._cpus_gpus = lambda method: {}  # resources are resolved on a Ray cluster; none here
    split = spec.datasets[0].resplit(0)
    tid = spec.teacher_id(split)

    def final_job():
        return study._final_job(0, "rkd", 0, Hyperparams.from_mapping({}), "search:t1")

    def store_it():
        job = TrialJob("teachers-resplit", "teacher", 0, "teacher", 0, teacher_id=tid,
                       teacher_path=str(teacher_path(tmp_path, tid)),
                       split_seed=split.split_seed)
        save_teacher(spec, job, {"model": {"w": torch.ones(4)}, "val_acc": 90.0,
                                 "test_acc": 88.0})

    return study, lines, tid, teacher_path(tmp_path, tid), final_job, store_it


def test_a_split_teacher_is_claimed_before_its_training_and_released_once_stored(
        tiny_spec_dict, tmp_path):
    study, lines, tid, path, final_job, store_it = _resplit_study(tiny_spec_dict, tmp_path)
    job = final_job()
    assert (job.role, job.teacher_id) == ("teacher", tid)  # its training comes first
    assert ts.read_claim(path)["token"] == study._claims[tid].token
    assert final_job().role == "teacher"  # asked again (another trial ended): still this one's
    store_it()
    job = final_job()
    assert (job.role, job.method, job.teacher_id) == ("final", "rkd", tid)
    assert ts.read_claim(path) is None  # released as soon as the teacher is stored


def test_a_split_teacher_another_study_trains_is_waited_for_then_reused(tiny_spec_dict,
                                                                       tmp_path, monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "2")  # polled every 0.5 s
    study, lines, tid, path, final_job, store_it = _resplit_study(tiny_spec_dict, tmp_path)
    other, _ = ts.acquire(path, tid, "other-run")
    assert final_job() is None  # another study is training it: this seed's final waits
    assert study._waiting and not study._claims
    assert f"waiting for teacher {tid}, being trained by run other-run" in "\n".join(lines)
    store_it()
    ts.release(other)
    job = final_job()
    assert (job.role, job.teacher_id) == ("final", tid)
    assert not study._waiting and not study._claims  # trained once, there
    assert any(line.startswith(f"teacher {tid}: reusing ") for line in lines)


def test_a_stale_claim_on_a_split_teacher_is_taken_over(tiny_spec_dict, tmp_path, monkeypatch):
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "2")
    study, lines, tid, path, final_job, _ = _resplit_study(tiny_spec_dict, tmp_path)
    _write_claim(path, heartbeat=time.time() - 60)  # its study was killed a minute ago
    job = final_job()
    assert (job.role, job.teacher_id) == ("teacher", tid)
    assert f"teacher {tid}: took over the claim of run killed-run" in "\n".join(lines)
    assert ts.read_claim(path)["token"] == study._claims[tid].token


def test_the_students_searcher_does_not_finish_while_a_split_teacher_is_awaited():
    from ray.tune.search import Searcher

    from kdtune.multisearch import StudySearcher

    waiting = [True]
    searcher = StudySearcher([], lambda searched: [], lambda c: (), waiting=lambda: waiting[0])
    assert searcher.suggest("t1") is None  # nothing to hand out yet, but not finished
    waiting[0] = False
    assert searcher.suggest("t2") == Searcher.FINISHED


# --- two studies on one storage -------------------------------------------------------------
def _spec(tiny_spec_dict: dict, datasets: int) -> dict:
    """The smallest study that needs a teacher per dataset: scratch and rkd, one search trial
    each, one final seed, one epoch for the students."""
    tiny_spec_dict.update(methods=["scratch", "rkd"], final={"seeds": [0]},
                          datasets=[{"name": "digits", "max_train": 200 + 50 * i}
                                    for i in range(datasets)])
    tiny_spec_dict["search"]["trials"] = 1
    tiny_spec_dict["training"] |= {"teacher_epochs": 2, "student_epochs": 1}
    return tiny_spec_dict


def _kdtune(spec_file: Path, storage_dir: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdtune", "run", str(spec_file), "--storage",
                             str(storage_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **env))


def _teacher_rows(storage_dir: Path) -> list[dict]:
    return [r for run in sorted(storage_dir.glob("tiny-*"))
            for r in pq.read_table(run / "trials.parquet").to_pylist() if r["role"] == "teacher"]


@pytest.mark.slow
def test_two_studies_started_together_train_each_teacher_once(tiny_spec_dict, write_spec,
                                                              tmp_path):
    spec_file = write_spec(_spec(tiny_spec_dict, 2))
    storage_dir = tmp_path / "runs"
    procs = [_kdtune(spec_file, storage_dir, KDTUNE_CLAIM_TIMEOUT_S="20") for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
        assert "Traceback" not in out
    rows = _teacher_rows(storage_dir)
    spec = parse_spec(tiny_spec_dict)
    ids = {spec.teacher_id(ds) for ds in spec.datasets}
    trained = sorted(r["teacher_id"] for r in rows if r["status"] == "finished")
    reused = sorted(r["teacher_id"] for r in rows if r["status"] == "reused")
    assert trained == sorted(ids)  # each teacher trained exactly once, across both studies
    assert reused == sorted(ids)  # and reused by the other
    for tid in ids:
        folder = storage_dir / "teachers" / tid
        assert sorted(p.name for p in folder.iterdir()) == ["teacher.json", "teacher.pt"]
    # one study waited for the other (they start within a second of each other, and Ray's
    # start-up takes longer than that), unless one was done before the other began
    print("\n".join(line for out in outputs for line in out.splitlines()
                    if "waiting for" in line or "reusing" in line or "training" in line))


@pytest.mark.slow
def test_a_killed_studys_claim_is_taken_over_and_the_study_finishes(
        tiny_spec_dict, write_spec, tmp_path, monkeypatch, capsys, embedded_ray):
    """In this process, on the session's Ray: the claims are the driver's (a worker only
    writes the teacher), so a second kdtune process would test nothing more."""
    from kdtune.cli import main

    spec_dict = _spec(tiny_spec_dict, 1)
    storage_dir = tmp_path / "runs"
    tid = parse_spec(spec_dict).teacher_id(parse_spec(spec_dict).datasets[0])
    teacher = teacher_path(storage_dir, tid)
    # the claim of a study killed while training this teacher: a dead pid, its last
    # heartbeat 10 s ago (waiting, then going stale: the unit tests)
    _write_claim(teacher, run_id="tiny-killed", pid=2**22 + 17, token=uuid.uuid4().hex,
                 heartbeat=time.time() - 10)
    monkeypatch.setenv("KDTUNE_CLAIM_TIMEOUT_S", "3")
    code = main(["run", str(write_spec(spec_dict)), "--storage", str(storage_dir)])
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    assert f"teacher {tid}: took over the claim of run tiny-killed (host gone, pid " in out
    assert "Traceback" not in out
    assert [r["status"] for r in _teacher_rows(storage_dir)] == ["finished"]
    assert sorted(p.name for p in Path(teacher).parent.iterdir()) == ["teacher.json",
                                                                       "teacher.pt"]
