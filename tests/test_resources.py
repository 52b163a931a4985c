"""Trial resources: per-role spec values, gpus auto/fit resolved against a cluster, and errors
before any trial starts. The GPU arithmetic is checked here on CPU with made-up measurements."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kdtune.cluster import ResourcesByMethod
from kdtune.resources import (
    CUDA_CONTEXT_BYTES,
    ClusterView,
    MemoryProbe,
    NodeView,
    ResourceError,
    Shape,
    fit_fraction,
    probes_for,
    resolve,
    role_of,
    roles_needed,
    step_peak_bytes,
)
from kdtune.spec import SpecError, parse_spec

GiB = 2**30
CPU_ONLY = ClusterView((NodeView(cpus=8, gpus=0, memory=32 * GiB),))
TWO_GPU_NODES = ClusterView((NodeView(cpus=8, gpus=1, memory=64 * GiB),
                             NodeView(cpus=16, gpus=2, memory=128 * GiB)))
SHAPES = [Shape(channels=1, image_size=8, num_classes=10)]


def _spec(tiny_spec_dict, **resources):
    tiny_spec_dict["resources"] = resources
    return parse_spec(tiny_spec_dict)


def _no_measure(*args):
    raise AssertionError("nothing should be measured")


# ----------------------------------------------------------------------------- the spec

def test_flat_resources_apply_to_every_role(tiny_spec_dict):
    res = _spec(tiny_spec_dict, cpus=2, gpus=0.5).resources
    assert [res.for_role(r) for r in ("teacher", "scratch", "student", "search", "final")] == \
        [(2, 0.5)] * 5
    assert res.memory_for("teacher") is None and res.max_concurrent_trials is None


def test_role_overrides_fall_back_field_by_field(tiny_spec_dict):
    res = _spec(tiny_spec_dict, cpus=2, gpus=0.5, memory="1GiB", max_concurrent_trials=3,
                teacher={"gpus": 1}, student={"gpus": 0.25, "memory": 2},
                scratch={"cpus": 1}).resources
    assert res.for_role("teacher") == (2, 1)
    assert res.for_role("student") == (2, 0.25)
    assert res.for_role("scratch") == (1, 0.25)  # scratch -> student -> flat, per field
    assert res.memory_for("teacher") == GiB and res.memory_for("scratch") == 2 * GiB
    assert res.field_name("scratch", "gpus") == "resources.student.gpus"
    assert res.field_name("scratch", "cpus") == "resources.scratch.cpus"
    assert res.field_name("teacher", "cpus") == "resources.cpus"
    assert res.max_concurrent_trials == 3


@pytest.mark.parametrize("value,expected", [
    ("auto", "auto"), ("fit", "fit"), (" Auto ", "auto"), (0, 0.0), (0.25, 0.25), (2, 2.0)])
def test_gpus_accepts_numbers_auto_and_fit(tiny_spec_dict, value, expected):
    assert _spec(tiny_spec_dict, gpus=value).resources.gpus == expected


@pytest.mark.parametrize("field,value,message", [
    ("gpus", -1, "resources.gpus: Input should be greater than or equal to 0"),
    ("gpus", 1.5, "resources.gpus: more than one GPU per trial must be a whole number"),
    ("gpus", "lots", "resources.gpus: gpus must be a number"),
    ("gpus", True, "resources.gpus: gpus must be a number"),
    ("memory", "4 parsecs", "resources.memory: memory must be a number of GiB or a size"),
    ("memory", 0, "resources.memory: memory must be a positive size"),
    ("max_concurrent_trials", 0, "resources.max_concurrent_trials: Input should be greater"),
    ("gpu", 1, "resources.gpu: unknown field"),
])
def test_bad_resources_are_named(tiny_spec_dict, field, value, message):
    with pytest.raises(SpecError) as info:
        _spec(tiny_spec_dict, **{field: value})
    assert str(info.value).startswith(message), str(info.value)


def test_role_override_errors_name_the_role(tiny_spec_dict):
    with pytest.raises(SpecError, match=r"^resources.student.gpus: more than one GPU"):
        _spec(tiny_spec_dict, student={"gpus": 2.5})


@pytest.mark.parametrize("text,expected", [("512MiB", 512 * 2**20), ("4GiB", 4 * GiB),
                                           ("2G", 2 * GiB), ("1.5 gb", int(1.5 * GiB)),
                                           (3, 3 * GiB)])
def test_memory_sizes(tiny_spec_dict, text, expected):
    assert _spec(tiny_spec_dict, memory=text).resources.memory == expected


# ----------------------------------------------------------------------------- gpus: fit

def test_fit_fraction_packs_as_many_trials_as_fit():
    # 1 GiB peak -> 1.25 GiB + context per trial; 16 GiB * 0.95 holds 8 of them
    assert fit_fraction(GiB, 16 * GiB) == 0.125
    # a share is 1/k rounded down to Ray's 4 decimals, so k shares never exceed one GPU
    share = fit_fraction(5 * GiB, 24 * GiB)
    assert share == 0.3333 and 3 * share <= 1
    for peak in (10**6, 10**8, 10**9, 3 * 10**9, 7 * 10**9):
        for total in (8 * GiB, 24 * GiB, 80 * GiB):
            share = fit_fraction(peak, total)
            k = round(1 / share)
            assert k * share <= 1.0
            # k trials fit in memory with their headroom and context
            assert k * (peak * 1.25 + CUDA_CONTEXT_BYTES) <= total * 0.95 or k == 1


def test_fit_fraction_caps_tiny_models_and_handles_big_ones():
    assert fit_fraction(10**6, 80 * GiB) == 0.0625  # at most 16 trials per GPU
    assert fit_fraction(20 * GiB, 24 * GiB) == 1.0  # fits alone but not with headroom
    with pytest.raises(ResourceError, match="more than the GPU's 24 GiB: lower training"):
        fit_fraction(25 * GiB, 24 * GiB)


def test_probes_cover_each_role_method_dataset_and_hint_layer(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    probes = probes_for(spec, ["teacher", "scratch", "student"])
    assert MemoryProbe("teacher", "teacher", 0) in probes
    assert MemoryProbe("scratch", "scratch", 0) in probes
    assert MemoryProbe("student", "rkd", 0) in probes
    assert {p.hint_layer for p in probes if p.method == "ikd"} == {"stage1", "stage2"}
    assert len(probes) == 5


def test_roles_of_every_method():
    assert role_of("teacher") == role_of("pretrained_student") == "teacher"
    assert role_of("scratch") == role_of("reversed_scratch") == "scratch"
    assert {role_of(m) for m in ("rkd", "ikd", "at", "self", "reversed", "mskd")} == {"student"}


def test_probes_for_self_and_reversed_measure_the_pretrained_student(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict | {"methods": ["reversed_scratch", "self", "reversed"]})
    probes = probes_for(spec, ["teacher", "scratch", "student"])
    assert MemoryProbe("teacher", "pretrained_student", 0) in probes
    assert MemoryProbe("scratch", "reversed_scratch", 0) in probes
    assert {p.method for p in probes if p.role == "student"} == {"self", "reversed"}


@pytest.mark.parametrize("method", ["teacher", "pretrained_student", "scratch", "rkd", "ikd",
                                    "at", "self", "reversed", "reversed_scratch", "mskd"])
def test_the_measured_training_step_runs_on_cpu(tiny_spec_dict, method):
    import torch

    spec = parse_spec(tiny_spec_dict)
    probe = MemoryProbe(role_of(method), method, 0, "stage1" if method == "ikd" else None)
    assert step_peak_bytes(spec, probe, SHAPES[0], torch.device("cpu")) == 0


def test_fit_uses_each_roles_largest_peak(tiny_spec_dict):
    spec = _spec(tiny_spec_dict, gpus="fit", teacher={"gpus": 1})
    seen = []

    def measure(spec, probes, shapes):
        seen.extend(probes)
        peaks = {"scratch": GiB, "rkd": 2 * GiB, "ikd": 3 * GiB}
        return [peaks[p.method] + (GiB if p.hint_layer == "stage1" else 0) for p in probes], \
            40 * GiB, "Test GPU"

    plan = resolve(spec, ["teacher", "scratch", "student"], TWO_GPU_NODES, SHAPES, measure)
    assert {p.role for p in seen} == {"scratch", "student"}  # the teacher asked for a number
    assert plan.roles["teacher"].gpus == 1.0
    assert plan.roles["scratch"].gpus == fit_fraction(GiB, 40 * GiB) == 0.0625
    assert plan.roles["student"].gpus == fit_fraction(4 * GiB, 40 * GiB) == 0.1666  # 6 x 5.6 GiB
    assert "fit: 4 GiB peak per trial" in plan.roles["student"].how
    assert plan.measured["gpu"] == "Test GPU" and len(plan.measured["peaks"]) == len(seen)
    assert plan.for_method("ikd") == plan.roles["student"]


def test_auto_is_fit_with_gpus_and_cpu_without(tiny_spec_dict):
    spec = _spec(tiny_spec_dict, gpus="auto")
    plan = resolve(spec, ["scratch", "student"], CPU_ONLY, SHAPES, _no_measure)
    assert all(r.gpus == 0 for r in plan.roles.values())
    assert "no GPU in the cluster" in plan.roles["student"].how
    plan = resolve(spec, ["scratch"], TWO_GPU_NODES, SHAPES,
                   lambda s, probes, sh: ([GiB] * len(probes), 16 * GiB, "G"))
    assert plan.roles["scratch"].gpus == 0.125


def test_fit_on_a_cpu_cluster_is_a_clear_error(tiny_spec_dict):
    spec = _spec(tiny_spec_dict, student={"gpus": "fit"})
    with pytest.raises(ResourceError) as info:
        resolve(spec, ["student"], CPU_ONLY, SHAPES, _no_measure)
    assert str(info.value).startswith("resources.student.gpus: 'fit' sizes a GPU share")
    assert "no GPU" in str(info.value) and "\n" not in str(info.value)


def test_a_model_too_big_for_the_gpu_is_a_clear_error(tiny_spec_dict):
    spec = _spec(tiny_spec_dict, gpus="fit")
    with pytest.raises(ResourceError, match=r"^resources.gpus: teacher trials: one training "
                                            r"step needs 100 GiB"):
        resolve(spec, ["teacher"], TWO_GPU_NODES, SHAPES,
                lambda s, probes, sh: ([100 * GiB] * len(probes), 80 * GiB, "G"))


@pytest.mark.parametrize("resources,cluster,message", [
    ({"gpus": 0.25}, CPU_ONLY, "resources.gpus: 0.25 GPU per teacher trial, but the Ray "
                               "cluster has no GPU"),
    ({"student": {"gpus": 4}}, TWO_GPU_NODES, "resources.student.gpus: 4 GPUs per student "
                                              "trial, but no node has more than 2"),
    ({"cpus": 32}, TWO_GPU_NODES, "resources.cpus: 32 CPUs per teacher trial, but no node has "
                                  "more than 16"),
    ({"memory": "100GiB", "teacher": {"memory": 1}}, CPU_ONLY,
     "resources.memory: 100 GiB per student trial, but no node offers more than 32 GiB"),
    ({"cpus": 12, "gpus": 2}, ClusterView((NodeView(16, 1, GiB), NodeView(8, 2, GiB))),
     "resources: no node of the cluster has 12 CPU + 2 GPU at once"),
])
def test_requests_no_node_can_meet_fail_before_any_trial(tiny_spec_dict, resources, cluster,
                                                         message):
    spec = _spec(tiny_spec_dict, **resources)
    with pytest.raises(ResourceError) as info:
        resolve(spec, ["teacher", "student"], cluster, SHAPES, _no_measure)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_roles_needed(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    assert roles_needed(spec, train_teacher=True) == ["teacher", "scratch", "student"]
    assert roles_needed(spec, train_teacher=False) == ["scratch", "student"]
    tiny_spec_dict["methods"] = ["rkd"]
    assert roles_needed(parse_spec(tiny_spec_dict), train_teacher=False) == ["student"]


def test_each_trial_gets_its_methods_bundle(tiny_spec_dict):
    spec = _spec(tiny_spec_dict, cpus=1, gpus=0.5, memory="1GiB", scratch={"gpus": 0.25},
                 teacher={"gpus": 1, "cpus": 4})
    plan = resolve(spec, ["teacher", "scratch", "student"], TWO_GPU_NODES, SHAPES, _no_measure)
    request = ResourcesByMethod(plan)
    bundle = request({"job": {"method": "teacher"}}).bundles[0]
    assert bundle == {"CPU": 4.0, "GPU": 1.0, "memory": float(GiB)}
    assert request({"method": "scratch", "alpha": 0.5}).bundles[0]["GPU"] == 0.25
    assert request({"job": {"method": "ikd"}}).bundles[0]["GPU"] == 0.5
    import pickle

    assert pickle.loads(pickle.dumps(request)).bundles == request.bundles


# ----------------------------------------------------------------------------- through the CLI

@pytest.mark.slow
@pytest.mark.parametrize("role,gpus,message", [
    ("teacher", 1, "resources.teacher.gpus: 1 GPU per teacher trial, but the Ray cluster has "
                   "no GPU"),
    ("student", "fit", "resources.student.gpus: 'fit' sizes a GPU share from measured GPU "
                       "memory, but the Ray cluster has no GPU"),
])
def test_gpus_the_cluster_lacks_stop_the_run_before_anything_is_written(
        tiny_spec_dict, write_spec, tmp_path, capsys, embedded_ray, role, gpus, message):
    from kdtune.cli import main

    tiny_spec_dict["resources"] = {"cpus": 1, role: {"gpus": gpus}}
    storage = tmp_path / "runs"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdtune: error: {message}") and "\n" not in err
    assert not storage.exists()  # no run directory, and no storage folder made for it


def test_ray_client_paths_must_mean_the_same_on_the_cluster(tiny_spec_dict, write_spec,
                                                           tmp_path, capsys, monkeypatch):
    """Under ray://, kdtune's driver runs on the cluster: a folder relative to this machine's
    working directory is refused before connecting (so nothing is written anywhere)."""
    from kdtune.cli import main

    monkeypatch.chdir(tmp_path)
    spec = str(write_spec(tiny_spec_dict))
    assert main(["run", spec, "--storage", "runs", "--address", "ray://head:10001"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdtune: error: --storage runs: under Ray Client (ray://head:10001)")
    assert "absolute path" in err and "\n" not in err
    assert main(["run", spec, "--storage", str(tmp_path / "abs"), "--data-dir", "data",
                 "--address", "ray://head:10001"]) == 2
    assert capsys.readouterr().err.startswith("kdtune: error: --data-dir data: under Ray Client")
    assert main(["resume", "runs/tiny-1", "--address", "ray://head:10001"]) == 2
    assert capsys.readouterr().err.startswith("kdtune: error: run directory runs/tiny-1: under")
    assert not any(tmp_path.glob("runs*")) and not (tmp_path / "abs").exists()


def test_ray_client_without_grpcio_says_what_to_install(tiny_spec_dict, write_spec, tmp_path,
                                                        capsys, monkeypatch):
    import importlib.util

    from kdtune.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "grpc" else real(name, *a))
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(tmp_path / "runs"),
                 "--address", "ray://head:10001"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdtune: error: --address ray://head:10001: Ray Client needs grpcio")
    assert "kdtune[client]" in err and "ray job submit" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_ray_client_address_is_one_line(tiny_spec_dict, write_spec, tmp_path,
                                                       capsys, monkeypatch):
    pytest.importorskip("grpc")
    import ray
    import ray.util.client.worker as client_worker

    ray.shutdown()  # a process without Ray, whatever ran before in it

    from kdtune.cli import main

    # Ray Client tries for ~30 s before it gives up; the message is the same after 2 s
    monkeypatch.setattr(client_worker, "INITIAL_TIMEOUT_SEC", 1)
    monkeypatch.setattr(client_worker, "MAX_TIMEOUT_SEC", 1)

    threads_before = set(threading.enumerate())
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(tmp_path / "runs"),
                 "--address", "ray://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdtune: error: --address ray://127.0.0.1:9: cannot connect")
    assert "\n" not in err and not (tmp_path / "runs").exists()
    # Ray Client leaves a thread polling the channel of the failed connect, which a later fork
    # (ray.init below) races; kdtune closes that channel, and the thread ends within 0.2 s
    deadline = time.monotonic() + 5
    while True:
        left = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads left by the failed connect: {left}"
    # and this process can still start an embedded Ray afterwards (the session's shared one,
    # which the next test joins)
    from kdtune.session import init_ray

    init_ray(None, lambda line: None)
    assert ray.is_initialized()


def test_a_cluster_address_where_nothing_answers_is_one_line(tiny_spec_dict, write_spec,
                                                             tmp_path, capsys, monkeypatch):
    # Ray itself waits on a refused GCS address for good, printing a log line every few seconds
    import ray

    from kdtune.cli import main

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh `kdtune run`
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was reached"))
    with socket.socket() as closed:  # a port nothing listens on (bound, then let go)
        closed.bind(("0.0.0.0", 0))
        port = closed.getsockname()[1]
    started = time.monotonic()
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(tmp_path / "runs"),
                 "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdtune: error: --address 127.0.0.1:{port}: no Ray cluster answers at ")
    assert "ConnectionRefusedError" in err and "\n" not in err
    # no run directory, and no storage folder: the storage check made it, and takes it away
    assert not (tmp_path / "runs").exists() and time.monotonic() - started < 30


def test_check_reachable_passes_a_listening_port_and_names_the_source():
    from kdtune.cluster import ClusterError, check_reachable

    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")  # Ray's node IP: bound too
        port = server.getsockname()[1]
    with pytest.raises(ClusterError, match=rf"^RAY_ADDRESS 127\.0\.0\.1:{port}: no Ray cluster"):
        check_reachable(f"127.0.0.1:{port}", "RAY_ADDRESS")


def test_an_auto_address_without_a_cluster_is_one_line(monkeypatch):
    import ray._private.services as services

    from kdtune.cluster import ClusterError, check_reachable

    def none_found(address, temp_dir=None):
        raise ConnectionError("Could not find any running Ray instance. Please specify one.\n"
                              "(a second line)")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", none_found)
    with pytest.raises(ClusterError) as caught:
        check_reachable("auto")
    assert str(caught.value) == "--address auto: Could not find any running Ray instance. " \
                                "Please specify one."


def test_an_address_that_answers_without_ray_is_one_line(monkeypatch):
    # this sandbox's network accepts any TCP connection; Ray then gives up after ~20 s with a
    # ConnectionError of its own, which kdtune says in one line
    import ray

    from kdtune import session
    from kdtune.cluster import ClusterError

    def refuse(*args, **kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "shutdown", lambda: None)  # the test session's Ray stays up
    monkeypatch.setattr(session, "check_reachable", lambda address, source: None)
    with pytest.raises(ClusterError) as caught:
        session.init_ray("10.0.0.1:6379", lambda line: None)
    assert str(caught.value) == ("--address 10.0.0.1:6379: Failed to connect to Ray cluster at "
                                 "10.0.0.1:6379")


def test_validate_shows_each_roles_request(write_spec, capsys):
    from pathlib import Path

    from kdtune.cli import main

    spec = Path(__file__).resolve().parents[1] / "studies" / "cluster" / "study-gpu.yaml"
    assert main(["validate", str(spec)]) == 0
    assert ("resources per trial: teacher 2 CPU + 1 GPU + 16 GiB; scratch 1 CPU + fit GPU; "
            "student 2 CPU + fit GPU; at most 16 trials at once") in capsys.readouterr().out


def test_slots_count_the_trials_a_cluster_runs_at_once(tiny_spec_dict):
    spec = _spec(tiny_spec_dict, cpus=2, gpus=0.5, teacher={"gpus": 1, "cpus": 4})
    plan = resolve(spec, ["teacher", "student"], TWO_GPU_NODES, SHAPES, _no_measure)
    # students pack best: node 1 fits min(8/2, 1/0.5) = 2, node 2 min(16/2, 2/0.5) = 4
    assert plan.slots(TWO_GPU_NODES) == 6
    assert plan.slots(TWO_GPU_NODES, cap=3) == 3
    cpu_plan = resolve(_spec(tiny_spec_dict, cpus=1), ["student"], CPU_ONLY, SHAPES, _no_measure)
    assert cpu_plan.slots(CPU_ONLY) == 8


def test_fit_counts_the_dataset_each_trial_keeps_on_the_gpu(tiny_spec_dict):
    spec = _spec(tiny_spec_dict, gpus="fit")
    shapes = [Shape(3, 32, 10, data_bytes=2 * GiB)]
    plan = resolve(spec, ["scratch"], TWO_GPU_NODES, shapes,
                   lambda s, probes, sh: ([GiB] * len(probes), 16 * GiB, "G"))
    assert plan.roles["scratch"].gpus == fit_fraction(3 * GiB, 16 * GiB) == 0.3333
    assert fit_fraction(GiB, 16 * GiB) == 0.125  # what the step alone would have got


@pytest.mark.slow
def test_max_concurrent_trials_caps_a_stage(tiny_spec_dict, write_spec, tmp_path, embedded_ray,
                                            monkeypatch):
    """Tune wraps the study's searcher in a ConcurrencyLimiter: the run still completes, one
    student trial at a time.

    The overlap check reads each epoch's ``reported_at`` (sub-second, stamped by the trial) and
    ``epoch_s``: Tune's own timestamps are whole seconds, which made an earlier version of this
    check fail under load without any overlap.
    """
    import pyarrow.parquet as pq

    from kdtune.cli import main

    tiny_spec_dict.update(methods=["scratch", "rkd"], final={"seeds": [0]})
    tiny_spec_dict["search"]["trials"] = 2
    tiny_spec_dict["resources"] = {"cpus": 1, "max_concurrent_trials": 1,
                                   "teacher": {"cpus": 2}}
    storage = tmp_path / "runs"
    assert main(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)]) == 0
    (run_dir,) = storage.glob("tiny-*")
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert len(rows) == 1 + 1 + 2 + 2 and all(r["status"] == "finished" for r in rows)
    # one trial at a time: no two student trials overlap
    import json

    epochs = pq.read_table(run_dir / "epochs.parquet").to_pylist()
    spans = []
    for trial_id in {r["trial_id"] for r in rows if r["role"] != "teacher"}:
        mine = sorted((e for e in epochs if e["trial_id"] == trial_id), key=lambda e: e["epoch"])
        # the trial trained from before its first epoch ended to its last epoch's report
        spans.append((mine[0]["reported_at"] - mine[0]["epoch_s"], mine[-1]["reported_at"]))
    spans.sort()
    assert len(spans) == 5  # one scratch and two rkd search trials, two final runs
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    teacher = next(r for r in rows if r["role"] == "teacher")
    assert json.loads(teacher["config_json"])["cpus"] == 2.0  # the teacher's own resources


NICENESS_PROBE = """
import os, ray
from kdtune.session import init_ray
init_ray(None, lambda line: None)

@ray.remote(num_cpus=1)
class Niceness:
    def value(self):
        return os.nice(0)

print(ray.get(Niceness.remote().value.remote(), timeout=120), os.nice(0))
ray.shutdown()
"""


@pytest.mark.slow
def test_an_embedded_rays_trials_run_at_the_drivers_priority():
    """Not Ray's default of nice 15 (why: ``kdtune.session._start_embedded``). In a process of
    its own, without the tests' setting (conftest.py) and under ``nice -n 3``: the trials
    follow the driver, not a fixed value."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}
    result = subprocess.run(["nice", "-n", "3", sys.executable, "-c", NICENESS_PROBE],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    worker, driver = result.stdout.split()[-2:]
    assert worker == driver == str(os.nice(0) + 3)
