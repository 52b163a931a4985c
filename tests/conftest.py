"""Shared fixtures: a tiny study spec that runs through real Ray Tune in seconds."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

# Under pytest-xdist (-n 2) each worker gets its own Ray temp dir: a bare ray.init() joins the
# newest cluster `ray start` left in <temp dir>/ray/ray_current_cluster, and session folders and
# sockets live there too, so the other worker's test cluster must not be found from here.
# Set before any test imports Ray; subprocesses (kdtune run, ray start) inherit it.
if os.environ.get("PYTEST_XDIST_WORKER") and "RAY_TMPDIR" not in os.environ:
    os.environ["RAY_TMPDIR"] = f"/tmp/ray-{os.environ['PYTEST_XDIST_WORKER']}"
    os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)
# The tests' Rays keep Ray's default, trial workers at nice 15, instead of kdtune's (the
# driver's; kdtune.session): with two test workers on two cores, one worker's trials at normal
# priority slow the other's Ray starts, which Ray gives a fixed 30 s (an error in one of two
# parallel runs beside a busy loop, 2026-12-06). test_resources checks kdtune's own default.
os.environ.setdefault("RAY_worker_niceness", "15")

TINY_SPEC = {
    "study": "tiny",
    "storage": "runs",
    "datasets": [{"name": "digits", "max_train": 300}],
    "teacher": {"arch": "small_cnn", "options": {"widths": [8, 16]}},
    "student": {"arch": "small_cnn", "options": {"widths": [4, 8]}},
    "methods": ["scratch", "rkd", "ikd"],
    "training": {"teacher_epochs": 3, "student_epochs": 2, "batch_size": 32, "lr": 0.1,
                 "augmentation": "none"},
    "search": {"trials": 2, "alpha": [0.1, 0.9], "tau": [1.0, 8.0],
               "hint_layers": ["stage1", "stage2"], "max_concurrent": 2},
    "final": {"seeds": [0, 1]},
    "resources": {"cpus": 1, "gpus": 0},
}


@pytest.fixture
def tiny_spec_dict() -> dict:
    return copy.deepcopy(TINY_SPEC)


@pytest.fixture
def write_spec(tmp_path: Path):
    def write(data: dict, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def _ray_for_the_session():
    """Stops the shared embedded Ray (if up) when the whole session ends."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        ray.shutdown()


@pytest.fixture
def embedded_ray(_ray_for_the_session):
    """kdtune's embedded Ray, started once and shared by every test that runs a study in this
    process: ``kdtune.session.init_ray`` joins a Ray already up, as ``kdtune.run`` does in a
    notebook. A fresh one per test cost its start (~4 s here) and shutdown (~1.5 s). A test
    that needs a process without Ray shuts it down itself; the next one starts it again.
    Studies read no environment variable a test sets in their trial workers (those run as
    ``kdtune`` subprocesses), so workers of a Ray started by an earlier test serve them."""
    from kdtune.session import init_ray

    init_ray(None, lambda line: None)
    yield

