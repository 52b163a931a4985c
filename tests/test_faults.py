"""Faults mid-study: a trial's worker process dies (Tune restarts the trial from its last
checkpoint), and the driver itself is killed (``kdtune resume`` carries on). In both cases every
trial ends up in ``trials.parquet`` exactly once and nothing finished is rerun or lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def _kdtune(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdtune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), **kwargs)


def test_a_killed_worker_is_restarted_from_its_checkpoint(tiny_spec_dict, write_spec,
                                                          tmp_path):
    tiny_spec_dict.update(methods=["scratch", "rkd"], final={"seeds": [0]})
    tiny_spec_dict["training"]["student_epochs"] = 4
    tiny_spec_dict["search"]["trials"] = 2
    tiny_spec_dict["scheduler"] = {"checkpoint_every_s": 0}  # a checkpoint every epoch
    markers = tmp_path / "killed"
    storage = tmp_path / "runs"
    # every rkd trial's worker process dies once, after training epoch 2 but before reporting
    # it: the last checkpoint is epoch 1, and the retry resumes from it (the driver logs the
    # epoch the worker restored). Every scratch trial's worker dies the same way, having first
    # cut its epoch-1 checkpoint in half: Tune's retry cannot restore it, and the trial starts
    # over from epoch 0. (Not Tune's own result.json: on a retry Tune copies the storage's
    # copy over the driver's, and a copy older than epoch 1 drops it - CI, 2026-12-04.)
    proc = _kdtune("run", str(write_spec(tiny_spec_dict)), "--storage", str(storage),
                   env={"KDTUNE_FAULT": f"kill:rkd:2:{markers},damage:scratch:2:{markers}"})
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-4000:]
    (run_dir,) = storage.glob("tiny-*")
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    epochs = pq.read_table(run_dir / "epochs.parquet").to_pylist()
    ids = [r["trial_id"] for r in rows]
    # every trial exactly once: the teacher, 1 scratch (nothing searched) and 2 rkd search
    # trials, 2 final runs
    assert len(ids) == len(set(ids)) == 1 + 1 + 2 + 2
    assert all(r["status"] == "finished" for r in rows)
    killed = [r for r in rows if r["method"] == "rkd"]
    damaged = [r for r in rows if r["method"] == "scratch"]
    assert len(list(markers.glob("kill-*"))) == len(killed) == 3  # each was killed once
    assert len(list(markers.glob("damage-*"))) == len(damaged) == 2
    for r in killed + damaged:
        assert r["restarts"] == 1 and r["epochs_run"] == 4
        assert sorted(e["epoch"] for e in epochs if e["trial_id"] == r["trial_id"]) == [1, 2, 3,
                                                                                         4]
    # resumed from epoch 1's checkpoint, or, where it was damaged, trained again from 0
    resumed = [line for line in output.splitlines()
               if "restarted from its checkpoint of epoch 1" in line]
    assert sorted(line.split(": ")[0].split()[-1] for line in resumed) == sorted(
        r["trial_id"] for r in killed), output[-4000:]
    assert all(r["restarts"] == 0 for r in rows if r["method"] not in ("rkd", "scratch"))
    assert "restarted 1x from its checkpoint" in output
    restarted = [line for line in output.splitlines()
                 if "its checkpoint was damaged" in line and "restarted from epoch 0" in line]
    assert len(restarted) == 2, output[-4000:]
    assert not any("Traceback" in line or "weights_only" in line for line in restarted)


def _kill_session(session: int) -> None:
    """What is left of a killed driver's embedded Ray (its raylet and workers): gone, as if
    the machine had died."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3]) == session:
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


def test_a_killed_driver_resumes_without_rerunning_or_losing_trials(tiny_spec_dict, write_spec,
                                                                    tmp_path, embedded_ray,
                                                                    capsys):
    tiny_spec_dict["search"] |= {"trials": 3, "lr": [0.05, 0.2]}  # scratch searches too
    storage = tmp_path / "runs"
    proc = _kdtune("run", str(write_spec(tiny_spec_dict)), "--storage", str(storage),
                   start_new_session=True)
    deadline, trials_file = time.time() + 600, None
    while time.time() < deadline and proc.poll() is None:
        found = list(storage.glob("tiny-*/trials.parquet")) if storage.exists() else []
        if found and pq.read_table(found[0]).num_rows >= 4:  # the teacher and a few searches
            trials_file = found[0]
            break
        time.sleep(0.2)
    assert trials_file is not None and proc.poll() is None, proc.communicate()[0][-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs, nothing is flushed
    proc.wait()
    _kill_session(proc.pid)
    proc.stdout.close()
    run_dir = trials_file.parent
    kept = {r["trial_id"]: r for r in pq.read_table(trials_file).to_pylist()}
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # it never knew

    # resumed in this process, on the session's embedded Ray (a fresh one cost ~10 s)
    from kdtune.cli import main

    assert main(["resume", str(run_dir)]) == 0, capsys.readouterr().out[-4000:]
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids))
    by_id = {r["trial_id"]: r for r in rows}
    for trial_id, before in kept.items():  # nothing finished was lost or rerun
        assert by_id[trial_id] == before
    for method in ("scratch", "rkd", "ikd"):
        assert sum(1 for r in rows if r["role"] == "search" and r["method"] == method) == 3
        assert sum(1 for r in rows if r["role"] == "final" and r["method"] == method) == 2
    assert sum(1 for r in rows if r["role"] == "teacher") == 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
