"""A study on a real two-node Ray cluster started on this machine with ``ray start``.

Skipped where Ray cannot start nodes (no ``ray`` CLI, or ``ray start`` fails) and with
``KDTUNE_SKIP_CLUSTER_TESTS=1``. The cluster is stopped by killing exactly the processes it
started. Note: a node started by ``ray start`` binds its GCS and raylet ports on all interfaces
(Ray's behaviour for any cluster node, whatever ``--node-ip-address`` says); the nodes here
advertise loopback addresses and live for the length of the test.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.local_cluster import ClusterUnavailable, LocalCluster

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.cluster,
              pytest.mark.skipif(os.environ.get("KDTUNE_SKIP_CLUSTER_TESTS") == "1",
                                 reason="KDTUNE_SKIP_CLUSTER_TESTS=1")]


@pytest.fixture(scope="module")
def two_nodes():
    # workers on both nodes import this checkout's kdtune, as an installed kdtune would be
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    try:
        cluster = LocalCluster(env)
    except ClusterUnavailable as error:
        pytest.skip(str(error))
    try:
        cluster.start_head(num_cpus=1, ip="127.0.0.2")
        cluster.add_node(num_cpus=1, ip="127.0.0.3", resources={"second_node": 1},
                         name="worker")
        nodes = cluster.nodes(expect=2)
    except ClusterUnavailable as error:
        cluster.stop()
        pytest.skip(f"Ray cannot start a two-node cluster here: {error}")
    yield cluster, nodes
    left = cluster.stop()
    assert not left, f"processes of the test cluster still running: {left}"


def _run(args: list[str], cluster: LocalCluster, env_extra: dict[str, str] | None = None):
    env = dict(cluster.env, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "kdtune", *args], capture_output=True,
                          text=True, env=env, timeout=900)


def test_a_study_runs_trials_on_both_nodes(two_nodes, tiny_spec_dict, write_spec, tmp_path):
    cluster, nodes = two_nodes
    ip_of = {n["id"]: n["ip"] for n in nodes}
    # trials longer than a worker's cold start (a process importing torch: up to ~20 s on a
    # loaded machine): with actor reuse, Tune hands a waiting trial to the first worker that
    # comes free and drops a worker still starting, so trials of a few seconds can all run
    # on whichever node's worker came up first
    tiny_spec_dict.update(methods=["scratch", "rkd"])
    tiny_spec_dict["datasets"][0].pop("max_train")
    tiny_spec_dict["student"]["options"]["widths"] = [8, 16]
    tiny_spec_dict["training"]["student_epochs"] = 30
    tiny_spec_dict["search"] |= {"trials": 3, "lr": [0.05, 0.2]}  # scratch searches too
    storage = tmp_path / "shared"
    proc = _run(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage),
                 "--address", cluster.address], cluster)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"Ray: cluster at {cluster.address}, 2 nodes, 2 CPUs" in proc.stdout
    assert "visible and writable from every node" in proc.stdout
    (run_dir,) = storage.glob("tiny-*")
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert len(rows) == 1 + 2 * 3 + 2 * 2 and all(r["status"] == "finished" for r in rows)
    placement = collections.Counter(ip_of.get(r["node_id"], r["node_id"]) for r in rows)
    print(f"\ntrial placement: {dict(placement)}")
    (run_dir / "placement.txt").write_text(f"{dict(placement)}\n")
    assert set(placement) == {"127.0.0.2", "127.0.0.3"}, placement


def test_ray_job_style_run_joins_through_ray_address(two_nodes, tiny_spec_dict, write_spec,
                                                     tmp_path):
    """What `ray job submit -- kdtune run SPEC` does: RAY_ADDRESS set, no --address."""
    cluster, _ = two_nodes
    tiny_spec_dict.update(methods=["scratch"], final={"seeds": [0]})
    tiny_spec_dict["search"]["trials"] = 2
    storage = tmp_path / "shared"
    proc = _run(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage)], cluster,
                {"RAY_ADDRESS": cluster.address})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"Ray: cluster at {cluster.address}, 2 nodes" in proc.stdout
    (run_dir,) = storage.glob("tiny-*")
    # scratch searches nothing here: one search trial, then the final run
    assert len(pq.read_table(run_dir / "trials.parquet")) == 2


def test_a_ray_client_address_runs_kdtunes_driver_on_the_cluster(two_nodes, tiny_spec_dict,
                                                                 write_spec, tmp_path):
    """``--address ray://HOST:PORT`` from outside the cluster: kdtune's driver runs there, its
    progress is printed here, the run lands in the cluster's storage and resumes the same way."""
    cluster, _ = two_nodes
    if cluster.client_address is None:
        pytest.skip("no Ray Client here (grpcio is not installed)")
    tiny_spec_dict.update(methods=["scratch"], final={"seeds": [0]})
    tiny_spec_dict["search"]["trials"] = 2
    storage = tmp_path / "shared"
    proc = _run(["run", str(write_spec(tiny_spec_dict)), "--storage", str(storage),
                 "--address", cluster.client_address], cluster)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (f"Ray: cluster at {cluster.client_address} (Ray Client), 2 nodes, 2 CPUs, 0 GPUs; "
            f"kdtune's driver runs on 127.0.0.2") in proc.stdout
    # the driver's own lines, printed here as they came (the plan, one line per trial)
    assert "study tiny:" in proc.stdout and "[search-digits_n300-scratch] 1/1" in proc.stdout
    assert "Wrote the latest version" not in proc.stderr  # Ray's INFO logs stay quiet there too
    (run_dir,) = storage.glob("tiny-*")
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)  # what `kdtune resume` takes
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows)

    again = _run(["resume", str(run_dir), "--address", cluster.client_address], cluster)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "nothing left to run" in again.stdout
    assert len(pq.read_table(run_dir / "trials.parquet")) == 2


def test_object_storage_uri_on_two_nodes(two_nodes, tiny_spec_dict, write_spec, tmp_path):
    """A storage URI instead of a shared mount: every node reaches it (checked), Tune's
    checkpoints and kdtune's files land there, and the run is named by its URI."""
    cluster, _ = two_nodes
    tiny_spec_dict.update(methods=["scratch"], final={"seeds": [0]})
    tiny_spec_dict["search"]["trials"] = 2
    uri = f"file://{tmp_path}/bucket/kdtune"
    proc = _run(["run", str(write_spec(tiny_spec_dict)), "--storage", uri, "--address",
                 cluster.address], cluster, {"KDTUNE_STAGING": str(tmp_path / "staging")})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "visible and writable from every node" in proc.stdout
    (run_dir,) = (tmp_path / "bucket" / "kdtune").glob("tiny-*")
    assert proc.stdout.strip().splitlines()[-1] == f"{uri}/{run_dir.name}"
    assert len(pq.read_table(run_dir / "trials.parquet")) == 2  # scratch: 1 search + 1 final
    assert (run_dir / "tune" / "students").is_dir() and (run_dir / "report.html").is_file()


CHECK_URI = """
import sys, ray
from kdtune.cluster import check_shared_storage
from kdtune.storage import StorageError
ray.init(address=sys.argv[1], logging_level="ERROR")
try:
    print("nodes", check_shared_storage(sys.argv[2]))
except StorageError as error:
    print("error", error)
"""


def test_a_uri_only_the_driver_reaches_is_refused(two_nodes, tmp_path):
    """fsspec's memory:// lives in one process: the nodes cannot see the driver's marker."""
    cluster, _ = two_nodes
    env = dict(cluster.env)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", CHECK_URI, cluster.address,
                           "memory://kdtune-test/runs"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "error storage memory://kdtune-test/runs: node 127.0.0." in proc.stdout, \
        proc.stdout + proc.stderr[-3000:]
    assert "cannot see files the driver wrote there" in proc.stdout
    assert "object storage every node can reach" in proc.stdout
