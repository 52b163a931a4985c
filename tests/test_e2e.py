"""A tiny study through real Ray Tune + OptunaSearch, checked against what ran."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from kdtune.cli import main
from kdtune.results import best_search_trial
from kdtune.search import load_optuna_study
from tests._browser import check_in_browser, find_chromium

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _shared_ray(embedded_ray):
    """The in-process studies here join the session's embedded Ray (tests/conftest.py)."""


def _run_dirs(storage: Path) -> list[Path]:
    return sorted(p for p in storage.iterdir() if p.is_dir() and p.name != "teachers")


def _tune_trials(stage_dir: Path) -> dict[str, dict]:
    """Tune's own record of each trial of a stage (its experiment state, written by the
    driver when the stage ends): trial id -> last result."""
    (state,) = stage_dir.glob("experiment_state-*.json")
    out = {}
    for trial_json, runtime_json in json.loads(state.read_text())["trial_data"]:
        last = json.loads(runtime_json)["last_result"]
        if last:
            out[json.loads(trial_json)["trial_id"]] = last
    return out


def test_tiny_study_end_to_end(tiny_spec_dict, write_spec, tmp_path, capsys):
    storage = tmp_path / "storage"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    (run_dir,) = _run_dirs(storage)
    assert str(run_dir) in out and "gain" in out

    trials = pq.read_table(run_dir / "trials.parquet").to_pylist()
    epochs = pq.read_table(run_dir / "epochs.parquet").to_pylist()
    assert len({r["trial_id"] for r in trials}) == len(trials)

    # every row is a trial Ray Tune ran, and every trial Tune ran has a row (one Tuner trains
    # the teachers, then runs every search and the final runs)
    assert sorted(p.name for p in (run_dir / "tune").iterdir()) == ["students"]
    by_stage = {stage_dir: _tune_trials(stage_dir) for stage_dir in (run_dir / "tune").iterdir()}
    ran = {trial_id: last for stage in by_stage.values() for trial_id, last in stage.items()}
    rows = {r["trial_id"].split(":", 1)[1]: r for r in trials}
    assert set(rows) == set(ran)
    for trial_id, last in ran.items():
        assert rows[trial_id]["val_acc"] == pytest.approx(last["val_acc"])
        assert rows[trial_id]["epochs_run"] == last["epoch"]
    # every trial kept only its last checkpoint, that of its last epoch (Tune keeps all it is
    # told of; the trial drops its previous one), with every epoch's metrics
    for stage_dir, stage in by_stage.items():
        for trial_id, last in stage.items():
            (trial_dir,) = stage_dir.glob(f"*_{trial_id}_*")
            (checkpoint,) = trial_dir.glob("checkpoint_*")
            state = torch.load(checkpoint / "state.pt", weights_only=True)
            assert state["epoch"] == last["epoch"]
            assert [e["epoch"] for e in state["history"]] == list(range(1, last["epoch"] + 1))
            # Tune's per-trial loggers are off (kdtune writes Parquet): no result.json
            assert not (trial_dir / "result.json").exists()
    roles = [r["role"] for r in trials]
    assert roles.count("teacher") == 1
    # scratch searches nothing (no lr range): one search trial, not copies of one config
    assert roles.count("search") == 1 + 2 * 2 and roles.count("final") == 3 * 2
    assert sum(1 for r in trials if r["role"] == "search" and r["method"] == "scratch") == 1
    assert all(r["status"] == "finished" for r in trials)

    # the searches went through Optuna, with the define-by-run space
    for method in ("scratch", "rkd", "ikd"):
        rows = [r for r in trials if r["role"] == "search" and r["method"] == method]
        study = load_optuna_study(run_dir / "optuna" / "journal.log", f"search-tiny-{method}"
                                  .replace("tiny", "digits_n300"))
        assert study is not None and len(study.trials) == (1 if method == "scratch" else 2)
        assert {round(t.value, 6) for t in study.trials} == {round(r["val_acc"], 6) for r in rows}
        for r in rows:
            if method == "scratch":
                assert r["alpha"] is None and r["hint_layer"] is None
            else:
                assert 0.1 <= r["alpha"] <= 0.9 and 1.0 <= r["tau"] <= 8.0
            assert (r["hint_layer"] in ("stage1", "stage2")) == (method == "ikd")
        # the final runs retrain the config chosen on validation
        best = best_search_trial(trials, "digits[n=300]", method)
        finals = [r for r in trials if r["role"] == "final" and r["method"] == method]
        assert sorted(r["seed"] for r in finals) == [0, 1]
        for r in finals:
            assert (r["alpha"], r["tau"], r["hint_layer"]) == (best["alpha"], best["tau"],
                                                               best["hint_layer"])
            assert r["test_acc"] is not None

    # one epoch row per epoch run
    for r in trials:
        n = sum(1 for e in epochs if e["trial_id"] == r["trial_id"])
        assert n == r["epochs_run"]

    # the gain is the mean paired difference of the final rows
    gains = {g["method"]: g for g in pq.read_table(run_dir / "gains.parquet").to_pylist()}
    scratch = {r["seed"]: r["test_acc"] for r in trials
               if r["role"] == "final" and r["method"] == "scratch"}
    for method in ("rkd", "ikd"):
        distilled = {r["seed"]: r["test_acc"] for r in trials
                     if r["role"] == "final" and r["method"] == method}
        expected = sum(distilled[s] - scratch[s] for s in scratch) / len(scratch)
        assert gains[method]["gain_pts"] == pytest.approx(expected)
        assert gains[method]["gain_ci_low"] <= expected <= gains[method]["gain_ci_high"]

    html = (run_dir / "report.html").read_text()
    assert "Did distillation pay?" in html and "plotly" in html.lower()
    assert len(html) > 1_000_000  # plotly.js is inlined: the file opens offline
    if find_chromium():  # the real run's report renders in a browser (test_report_browser)
        check_in_browser(run_dir / "report.html", tmp_path / "e2e-report.png")

    # the report rebuilds from the Parquet files alone
    rebuilt = tmp_path / "copy" / "r.html"
    assert main(["report", str(run_dir), "--out", str(rebuilt)]) == 0
    assert "Did distillation pay?" in rebuilt.read_text()

    # a second run on the same storage reuses the teacher instead of training it again
    tiny_spec_dict.update(methods=["scratch", "rkd"], final={"seeds": [0]})
    tiny_spec_dict["search"]["trials"] = 1
    assert main(["run", str(write_spec(tiny_spec_dict, "again.yaml")), "--storage",
                 str(storage)]) == 0
    second = [d for d in _run_dirs(storage) if d != run_dir][0]
    rows = pq.read_table(second / "trials.parquet").to_pylist()
    teacher_rows = [r for r in rows if r["role"] == "teacher"]
    assert [r["status"] for r in teacher_rows] == ["reused"]
    assert not (second / "tune" / "teachers").exists()
    assert len(list((storage / "teachers").iterdir())) == 1


def test_ctrl_c_keeps_finished_trials_and_resume_completes(tiny_spec_dict, write_spec, tmp_path,
                                                           capsys):
    storage = tmp_path / "storage"
    tiny_spec_dict["search"] |= {"trials": 3, "lr": [0.05, 0.2]}  # scratch searches too
    spec = write_spec(tiny_spec_dict)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "kdtune", "run", str(spec), "--storage",
                             str(storage)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    deadline = time.time() + 180
    trials_file = None
    while time.time() < deadline and proc.poll() is None:
        dirs = _run_dirs(storage) if storage.exists() else []
        if dirs and (dirs[0] / "trials.parquet").exists():
            trials_file = dirs[0] / "trials.parquet"
            if pq.read_table(trials_file).num_rows >= 3:
                break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "kdtune resume" in output
    kept = pq.read_table(trials_file).to_pylist()
    assert len(kept) >= 3 and all(r["status"] == "finished" for r in kept)
    run_dir = trials_file.parent
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"

    # resumed in this process, on the session's embedded Ray (a fresh one cost ~10 s)
    assert main(["resume", str(run_dir)]) == 0, capsys.readouterr()
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert {r["trial_id"] for r in kept} <= set(ids)  # nothing finished was lost or rerun
    for method in ("scratch", "rkd", "ikd"):
        assert sum(1 for r in rows if r["role"] == "search" and r["method"] == method) == 3
        assert sum(1 for r in rows if r["role"] == "final" and r["method"] == method) == 2
    assert not math.isnan(pq.read_table(run_dir / "gains.parquet").to_pylist()[1]["gain_pts"])
