"""Experiment tracking with the real components: an MLflow tracking server (SQLite backend, on
loopback, started and stopped here) receives every trial and the summary run, read back with
MlflowClient; W&B in offline mode writes its run files, and they hold the metrics; TensorBoard
event files read back with tensorboard's own event reader. A missing extra or an unreachable
server is one line and exit 2 before anything is written."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdtune.cli import main
from kdtune.spec import SpecError, parse_spec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_tracker_is_one_line_and_nothing_is_written(tiny_spec_dict, write_spec,
                                                              tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if kdtune[wandb] were not installed
    tiny_spec_dict["tracking"] = {"wandb": {"project": "kd"}}
    storage = tmp_path / "runs"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("kdtune: error: tracking.wandb: wandb is not installed "
                   "(pip install 'kdtune[wandb]')")
    assert not storage.exists()


def test_an_unreachable_mlflow_server_is_one_line(tiny_spec_dict, write_spec, tmp_path, capsys):
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    tiny_spec_dict["tracking"] = {"mlflow": {"tracking_uri": uri}}
    storage = tmp_path / "runs"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdtune: error: tracking.mlflow.tracking_uri {uri}: cannot reach "
                          "the MLflow server (") and "\n" not in err
    assert not storage.exists()


def test_tracking_fields_are_checked(tiny_spec_dict):
    tiny_spec_dict["tracking"] = {"wandb": {"project": "kd", "mode": "sometimes"}}
    with pytest.raises(SpecError, match=r"tracking\.wandb\.mode"):
        parse_spec(tiny_spec_dict)
    tiny_spec_dict["tracking"] = {"neptune": {}}
    with pytest.raises(SpecError, match="tracking.neptune"):
        parse_spec(tiny_spec_dict)


def _wandb_records(path: Path) -> list:
    """The records of a W&B ``.wandb`` file: LevelDB's log format (32 KiB blocks of
    crc32/length/type-headed chunks) after a 7-byte W&B header, each record a protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.mark.slow
def test_every_trial_reaches_mlflow_wandb_and_tensorboard(tiny_spec_dict, write_spec,
                                                          tmp_path, embedded_ray):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no MLflow server"
                time.sleep(0.5)

        tiny_spec_dict.update(methods=["scratch", "rkd"], final={"seeds": [0]})
        tiny_spec_dict["tracking"] = {"mlflow": {"tracking_uri": uri, "experiment": "kd-tiny"},
                                      "wandb": {"project": "kd-tiny", "mode": "offline"},
                                      "tensorboard": True}
        storage = tmp_path / "runs"
        assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 0
        import kdtune

        (run_dir,) = [p for p in storage.iterdir() if p.name.startswith("tiny-")]
        run = kdtune.load(run_dir)
        trials = run.trials.set_index("trial_id")
        epochs = run.epochs
        # 1 teacher, 1 scratch + 2 rkd search trials, 2 final runs
        assert len(trials) == 6

        # MLflow: a run per trial, tagged, with every epoch; one summary run with the report
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("kd-tiny")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        summary = [r for r in runs if r.data.tags.get("kdtune.kind") == "summary"]
        per_trial = {r.data.tags["kdtune.trial_id"]: r for r in runs if r not in summary}
        assert len(summary) == 1 and sorted(per_trial) == sorted(trials.index)
        for trial_id, r in per_trial.items():
            row = trials.loc[trial_id]
            for tag in ("study", "stage", "dataset", "method", "role", "seed"):
                assert r.data.tags[f"kdtune.{tag}"] == str(row[tag]), (trial_id, tag)
            assert r.info.status == "FINISHED"
            history = client.get_metric_history(r.info.run_id, "val_acc")
            mine = epochs[epochs.trial_id == trial_id].sort_values("epoch")
            assert [m.step for m in history] == list(mine.epoch)
            assert [m.value for m in history] == pytest.approx(list(mine.val_acc))
            if row["method"] == "rkd":
                assert float(r.data.params["alpha"]) == pytest.approx(row["alpha"])
        (s,) = summary
        rkd = run.gains[run.gains.method == "rkd"].iloc[0]
        assert s.data.metrics["gain_pts/digits_n_300_/rkd"] == pytest.approx(rkd.gain_pts)
        assert s.data.tags["verdict.digits_n_300_/rkd"] == rkd.verdict
        assert [a.path for a in client.list_artifacts(s.info.run_id)] == ["report.html"]

        # W&B offline: one run folder per trial and the summary, each epoch in its history
        offline = sorted((run_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == len(trials) + 1
        seen: dict[str, list[tuple[int, float]]] = {}
        for folder in offline:
            (data,) = folder.glob("*.wandb")
            records = _wandb_records(data)
            name = next(r.run.display_name for r in records if r.WhichOneof("record_type")
                        == "run")
            steps = []
            for r in records:
                if r.WhichOneof("record_type") == "history":
                    items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in r.history.item}
                    if "val_acc" in items:
                        steps.append((items["_step"], items["val_acc"]))
            seen[name] = steps
        assert sorted(seen) == sorted([*trials.index, f"{run_dir.name} summary"])
        for trial_id in trials.index:
            mine = epochs[epochs.trial_id == trial_id].sort_values("epoch")
            assert [s for s, _ in seen[trial_id]] == list(mine.epoch)
            assert [v for _, v in seen[trial_id]] == pytest.approx(list(mine.val_acc))
        (summary_dir,) = [f for f in offline if (f / "files" / "report.html").exists()]
        assert summary_dir

        # TensorBoard: one event folder per trial, val_acc at every epoch
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        folders = sorted((run_dir / "tensorboard").iterdir())
        assert len(folders) == len(trials)
        for trial_id in trials.index:
            folder = run_dir / "tensorboard" / trial_id.replace(":", "_")
            events = EventAccumulator(str(folder))
            events.Reload()
            mine = epochs[epochs.trial_id == trial_id].sort_values("epoch")
            scalars = events.Scalars("val_acc")
            assert [e.step for e in scalars] == list(mine.epoch)
            assert [e.value for e in scalars] == pytest.approx(list(mine.val_acc), abs=1e-4)
    finally:
        server.terminate()
        server.wait(timeout=30)
