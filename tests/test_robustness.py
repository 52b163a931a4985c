"""Bad input and faults: one-line errors, exit 0 or 2 and never a traceback, nothing lost."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kdtune.cli import main
from kdtune.rundir import TRIAL_SCHEMA, write_table_atomic
from tests.conftest import TINY_SPEC

# ----------------------------------------------------------------------------- spec fuzzing

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6),
                                                                       inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


ALL_PATHS = [p for p in _paths(TINY_SPEC) if p]


def _mutated(path_index: int, value, drop: bool) -> dict:
    spec = copy.deepcopy(TINY_SPEC)
    path = ALL_PATHS[path_index % len(ALL_PATHS)]
    node = spec
    for part in path[:-1]:
        node = node[part]
    if drop and isinstance(node, dict):
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return spec


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    return path


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as error:  # argparse
        return int(error.code or 0)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path_index=st.integers(0, 10**6), value=VALUES, drop=st.booleans())
def test_mutated_specs_validate_to_0_or_2(tmp_path, capsys, path_index, value, drop):
    spec = _write(tmp_path, yaml.safe_dump(_mutated(path_index, value, drop)))
    code = _exit_code(["validate", str(spec)])
    assert code in (0, 2)
    err = capsys.readouterr().err.strip()
    if code == 2:
        assert err.startswith("kdtune: error: ") and "\n" not in err and "Traceback" not in err


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path_index=st.integers(0, 10**6), value=VALUES, drop=st.booleans())
def test_invalid_mutated_specs_do_not_run_or_write(tmp_path, capsys, path_index, value, drop):
    spec = _write(tmp_path, yaml.safe_dump(_mutated(path_index, value, drop)))
    assume(_exit_code(["validate", str(spec)]) == 2)
    storage = tmp_path / "storage-never-made"
    assert _exit_code(["run", str(spec), "--storage", str(storage)]) == 2
    assert not storage.exists()
    capsys.readouterr()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200),
                      st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_random_text_specs_give_0_or_2(tmp_path, capsys, text):
    spec = _write(tmp_path, text)
    assert _exit_code(["validate", str(spec)]) in (0, 2)
    capsys.readouterr()


# ----------------------------------------------------------------------------- storage

def test_storage_that_is_a_file_is_refused_before_anything(tiny_spec_dict, write_spec, tmp_path,
                                                           capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage",
                 str(blocker / "runs")]) == 2
    err = capsys.readouterr().err
    assert "storage" in err and "not writable" in err and str(blocker) in err


def test_full_storage_is_refused_before_anything(tiny_spec_dict, write_spec, tmp_path, capsys,
                                                 monkeypatch):
    import shutil

    from kdtune import preflight

    real = shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=5 * 2**20))
    storage = tmp_path / "runs"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 2
    assert "only 5 MiB free" in capsys.readouterr().err
    assert not storage.exists()  # the check made the folder, and took it away again


def test_storage_check_takes_away_only_the_empty_folders_it_made(tmp_path):
    from kdtune.preflight import check_storage, remove_made_folders

    assert check_storage(tmp_path) is None  # it existed: nothing to take away
    remove_made_folders(tmp_path, None)
    assert tmp_path.is_dir()
    storage = tmp_path / "a" / "b" / "c"
    made = check_storage(storage)
    assert made == tmp_path / "a" and storage.is_dir()
    (tmp_path / "a" / "b" / "kept.txt").write_text("x")  # something else wrote there since
    remove_made_folders(storage, made)
    assert not storage.exists() and (tmp_path / "a" / "b" / "kept.txt").exists()
    (tmp_path / "a" / "b" / "kept.txt").unlink()
    remove_made_folders(tmp_path / "a" / "b", made)
    assert sorted(tmp_path.iterdir()) == []


def test_ctrl_c_before_the_run_directory_leaves_no_storage_folder(tiny_spec_dict, tmp_path,
                                                                  monkeypatch):
    from kdtune import study as study_module
    from kdtune.spec import parse_spec

    def interrupted(address, log):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "init_ray", interrupted)
    spec = parse_spec(tiny_spec_dict).model_copy(update={"storage": str(tmp_path / "new" / "runs")})
    with pytest.raises(KeyboardInterrupt):
        study_module.Study.create(spec, "study: tiny\n", log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_is_one_line_exit_2(tiny_spec_dict, write_spec, tmp_path, capsys):
    tiny_spec_dict["datasets"] = [{"name": "cifar10", "data_dir": str(tmp_path / "empty")}]
    storage = tmp_path / "runs"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--download" in err and "\n" not in err
    assert not storage.exists()  # no run directory, and no storage folder made for it


# ----------------------------------------------------------------------------- atomic writes

WRITER = """
import sys
from pathlib import Path
from kdtune.rundir import TRIAL_SCHEMA, write_table_atomic
path = Path(sys.argv[1])
n = 0
while True:
    n += 1
    rows = [{"trial_id": f"t{i}", "status": "finished", "val_acc": float(i),
             "config_json": "x" * 2000} for i in range(2000 + n % 7)]
    write_table_atomic(rows, TRIAL_SCHEMA, path)
"""


def test_killed_mid_write_leaves_a_readable_file(tmp_path):
    path = tmp_path / "trials.parquet"
    write_table_atomic([{"trial_id": "first", "status": "finished"}], TRIAL_SCHEMA, path)
    for delay in (0.3, 0.55, 0.8, 1.1, 1.45):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        table = pq.read_table(path)  # the old or the new version, never a broken one
        assert table.num_rows in (1,) or 2000 <= table.num_rows < 2007


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import kdtune.rundir as rundir

    path = tmp_path / "trials.parquet"
    write_table_atomic([{"trial_id": "a", "status": "finished"}], TRIAL_SCHEMA, path)

    def broken(table, where, **kw):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir.pq, "write_table", broken)
    with pytest.raises(OSError):
        write_table_atomic([{"trial_id": "b"}], TRIAL_SCHEMA, path)
    assert pq.read_table(path).to_pylist()[0]["trial_id"] == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]


# ----------------------------------------------------------------------------- failing trials

@pytest.mark.slow
def test_diverging_and_raising_trials_are_recorded_and_the_study_goes_on(tiny_spec_dict,
                                                                          write_spec, tmp_path):
    # log scale up to 1e30: most trials overflow to NaN (BatchNorm keeps a merely huge lr finite)
    tiny_spec_dict["search"].update(trials=3, lr=[0.05, 1e30])
    tiny_spec_dict["scheduler"] = {"max_retries": 0}
    storage = tmp_path / "runs"
    env = dict(os.environ, KDTUNE_FAULT="raise:ikd:0")  # every ikd trial raises at its start
    proc = subprocess.run([sys.executable, "-m", "kdtune", "run", str(write_spec(tiny_spec_dict)),
                           "--storage", str(storage)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in storage.iterdir() if p.name.startswith("tiny-")]
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    search = [r for r in rows if r["role"] == "search"]
    assert len(search) == 9  # every search trial is recorded, failed or not
    ikd = [r for r in search if r["method"] == "ikd"]
    assert all(r["status"] == "failed" and "injected fault" in r["failure"] for r in ikd)
    diverged = [r for r in search if r["method"] != "ikd" and r["status"] == "failed"]
    assert diverged and all("loss became" in r["failure"] for r in diverged)
    assert all(r["val_acc"] is None for r in diverged + ikd)
    # the final evaluation used only methods with a finished search trial
    finished_methods = {r["method"] for r in search if r["status"] == "finished"}
    final_methods = {r["method"] for r in rows if r["role"] == "final"}
    assert final_methods <= finished_methods and "ikd" not in final_methods
    gains = pq.read_table(run_dir / "gains.parquet").to_pylist()
    assert {g["method"] for g in gains} <= finished_methods
    html = (run_dir / "report.html").read_text()
    assert "injected fault" in html and "Failed trials" in html
    assert "final: no finished search trial for digits[n=300] ikd" in proc.stdout


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_keeps_finished_trials(tiny_spec_dict, write_spec, tmp_path):
    storage = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "kdtune", "run",
                             str(write_spec(tiny_spec_dict)), "--storage", str(storage)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 240
    trials_file = None
    while time.time() < deadline and proc.poll() is None:
        found = list(storage.glob("tiny-*/trials.parquet")) if storage.exists() else []
        if found and pq.read_table(found[0]).num_rows >= 2:
            trials_file = found[0]
            break
        time.sleep(0.2)
    assert trials_file is not None and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    for parquet in trials_file.parent.glob("*.parquet"):
        pq.read_table(parquet)
    assert json.loads((trials_file.parent / "run.json").read_text())["status"] == "interrupted"


# ----------------------------------------------------------------------------- Ray's start
@pytest.mark.parametrize("message, calls", [
    ("The current node timed out during startup. This could happen because ...", 2),
    ("some other failure", 1),
])
def test_an_embedded_ray_whose_node_starts_late_is_started_once_more(monkeypatch, message,
                                                                     calls):
    import ray

    from kdtune import session

    tried: list[dict] = []

    def fake_init(**kwargs):
        tried.append(kwargs)
        if len(tried) == 1:
            raise Exception(message)

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    lines: list[str] = []
    if calls == 1:  # not the startup timeout: raised as it is, not tried again
        with pytest.raises(Exception, match="some other failure"):
            session._start_embedded(lines.append)
    else:
        session._start_embedded(lines.append)
        assert lines == ["Ray: its node did not start within Ray's 30 s (machine busy?); "
                         "trying once more (Exception)"]
    assert len(tried) == calls
    assert all(kw["_node_ip_address"] == "127.0.0.1" for kw in tried)  # loopback both times
