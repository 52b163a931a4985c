"""The Python API (kdtune.load_spec / validate / run / resume / load, kdtune.Run): a tiny study
run from a dict and read back as DataFrames, the same one-line errors as the command line, and
the README's query examples (pandas, DuckDB) run against a real run directory."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kdtune
from kdtune.spec import SpecError
from kdtune.storage import StorageError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_kdtune_is_light():
    """The API is imported on first use: ``import kdtune`` (and so the command) loads neither
    torch, Ray, pyarrow nor pandas."""
    code = ("import sys, kdtune; print(sorted(m for m in ('torch', 'ray', 'pyarrow', 'pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(kdtune.run) and kdtune.Run.__name__ == "Run"
    assert all(getattr(kdtune, name) is not None for name in kdtune.__all__)
    with pytest.raises(AttributeError):
        kdtune.no_such_thing  # noqa: B018


def test_load_spec_takes_a_dict_a_file_or_a_spec(tiny_spec_dict, write_spec):
    from_dict = kdtune.load_spec(tiny_spec_dict)
    from_file = kdtune.load_spec(write_spec(tiny_spec_dict))
    assert from_dict == from_file and kdtune.load_spec(from_dict) is from_dict


def test_a_bad_spec_raises_the_command_lines_one_line_error(tiny_spec_dict, tmp_path):
    tiny_spec_dict["datasets"][0]["name"] = "digitz"
    with pytest.raises(SpecError) as error:
        kdtune.load_spec(tiny_spec_dict)
    assert "digitz" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SpecError, match="cannot read spec"):
        kdtune.load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="expected a file path, a dict"):
        kdtune.load_spec(42)


def test_validate_counts_what_the_spec_will_run(tiny_spec_dict):
    tiny_spec_dict["final"] = {"seeds": [0, 1, 2, 3, 4], "target_halfwidth": 1.0,
                               "max_seeds": 8}
    plan = kdtune.validate(tiny_spec_dict, compute=False)
    # 1 dataset: 1 teacher; scratch searches lr only if a range is given (none: 1 trial),
    # rkd and ikd 2 trials each; 3 methods x 5 seeds, at most 8 seeds each
    assert (plan.teachers, plan.search_trials) == (1, 1 + 2 + 2)
    assert (plan.final_trainings, plan.max_final_trainings) == (15, 24)
    assert plan.max_epochs == 1 * 3 + (5 + 24) * 2
    assert plan.methods == ("scratch", "rkd", "ikd")
    text = str(plan)
    assert text.splitlines()[0].startswith("study tiny: 1 dataset(s)")
    assert "until the gain's 95% interval is +-1.0 points (at most 8 seeds)" in text


def test_load_of_a_folder_that_is_no_run_says_so(tmp_path):
    with pytest.raises(StorageError, match="not a kdtune run directory"):
        kdtune.load(tmp_path)


def _readme_blocks(language: str, containing: str) -> list[str]:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if containing in b]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, _ray_for_the_session):
    """One tiny study, run through the API from a dict, its searches in an SQLite Optuna RDB
    (``search.storage``) as a team's dashboard would watch them."""
    from tests.conftest import TINY_SPEC

    root = tmp_path_factory.mktemp("api")
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(methods=["scratch", "rkd"], final={"seeds": [0, 1]})
    spec["search"]["storage"] = f"sqlite:///{root / 'optuna.db'}"
    lines: list[str] = []
    run = kdtune.run(spec, storage=str(root / "runs"), progress=lines.append)
    yield spec, run, lines, root  # its embedded Ray stays up for the session's other studies


@pytest.mark.slow
def test_a_tiny_study_from_a_dict_runs_and_reads_back(tiny_run, tmp_path, monkeypatch):
    import pandas as pd

    import kdtune.study

    spec, run, lines, root = tiny_run
    assert run.status == "finished" and run.path.parent == root / "runs"
    assert any(line.startswith("study tiny:") for line in lines)  # the plan, first
    assert any("[search-digits_n300-rkd]" in line for line in lines)
    assert any(line.startswith("done in") for line in lines)  # the summary, last

    trials, epochs, gains = run.trials, run.epochs, run.gains
    assert isinstance(trials, pd.DataFrame)
    # 1 teacher, 1 scratch + 2 rkd search trials, 2 methods x 2 seeds
    assert len(trials) == 1 + 1 + 2 + 4 and trials.trial_id.is_unique
    assert set(trials.status) == {"finished"}
    assert set(epochs.trial_id) == set(trials.trial_id)
    assert set(gains.method) == {"scratch", "rkd"}  # the baseline has its row too
    (gain,) = gains[gains.method == "rkd"].itertuples()
    assert gain.n_seeds == 2 and gain.verdict in ("pays", "hurts", "equivalent", "inconclusive")
    assert len(run.datasets) == 1 and run.spec.study == "tiny"

    # the spec the run kept is the dict, as YAML
    again = kdtune.load(run.path)
    assert again.spec == kdtune.load_spec(spec)
    pd.testing.assert_frame_equal(again.trials, trials)
    report = again.report(tmp_path / "copy.html")
    assert report == tmp_path / "copy.html" and report.stat().st_size > 100_000

    # resumed: nothing left to run, the same trials, and no Ray session asked for
    def no_ray(*args):
        raise AssertionError("a finished run's resume joined Ray")

    monkeypatch.setattr(kdtune.study, "init_ray", no_ray)
    resumed = kdtune.resume(run.path, progress=lines.append)
    assert any("nothing left to run" in line for line in lines)
    assert sorted(resumed.trials.trial_id) == sorted(trials.trial_id)


@pytest.mark.slow
def test_the_readmes_queries_run_on_a_real_run(tiny_run):
    """The README's pandas and DuckDB examples, on a real run directory."""
    _, run, _, _ = tiny_run
    blocks = _readme_blocks("python", "read_parquet")
    assert any("duckdb" in b for b in blocks) and any("pd.read_parquet" in b for b in blocks)
    for block in blocks:
        code = block.replace("runs/quickstart-...", str(run.path))
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
        answer = scope["answer"]
        assert list(answer.sort_index().index if "method" not in answer else answer.method) \
            == ["rkd", "scratch"], block


@pytest.mark.slow
def test_searches_in_an_optuna_rdb_and_the_dashboard_shows_them(tiny_run):
    """search.storage: every search is in the RDB as RUN_ID/STAGE while the study runs, and
    copied into the run's journal at the end; optuna-dashboard, started as the README says
    (on loopback), lists the searches of the journal and of the RDB, with their trials."""
    import optuna

    spec, run, _, root = tiny_run
    rdb = optuna.storages.RDBStorage(spec["search"]["storage"])
    names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(rdb)}
    stages = ("search-digits_n300-scratch", "search-digits_n300-rkd")
    assert names == {f"{run.path.name}/{stage}": n for stage, n in zip(stages, (1, 2))}
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(run.path / "optuna" / "journal.log")))
    copied = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(journal)}
    assert copied == dict(zip(stages, (1, 2)))

    pytest.importorskip("optuna_dashboard")
    for storage in (str(run.path / "optuna" / "journal.log"), spec["search"]["storage"]):
        studies = _dashboard_studies(storage)
        assert sorted(s["study_name"].rsplit("/", 1)[-1] for s in studies) == sorted(stages)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_studies(storage: str) -> list[dict]:
    """``optuna-dashboard STORAGE --host 127.0.0.1 --port N``; its API's study list, each with
    its trials."""
    import json
    import shutil
    import time
    import urllib.request

    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) \
        or "optuna-dashboard"
    port = _free_port()
    proc = subprocess.Popen([exe, storage, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/studies"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        for study in studies:
            with urllib.request.urlopen(f"{url}/{study['study_id']}?after=0",
                                        timeout=5) as response:
                detail = json.load(response)
            assert detail["trials"] and all(t["state"] == "Complete" for t in detail["trials"])
            assert all(t["params"] for t in detail["trials"]
                       if not study["study_name"].endswith("scratch"))
        return studies
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_spec_object_is_kept_as_yaml_that_reads_back_the_same(tiny_spec_dict):
    """kdtune.run(StudySpec) writes spec.yaml from the object: what it leaves unset stays unset
    (a default written out would read back as set: distillation.alpha beside search.alpha is
    refused)."""
    import yaml

    from kdtune.api import _spec_text

    spec = kdtune.load_spec(tiny_spec_dict)
    text = _spec_text(spec, spec)
    assert kdtune.load_spec(yaml.safe_load(text)) == spec
    assert "alpha: 0.7" not in text  # the fixed default, unset, is not written
