"""Running on a Ray cluster: which address to join, and checks that make a misconfigured
cluster fail before any trial starts rather than hours into a study."""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kdtune.resources import ResourcePlan, role_of
from kdtune.storage import as_location, delete, exists, is_uri, join, write_bytes
from kdtune.trainables import flat_config


class ClusterError(ValueError):
    """A cluster kdtune cannot run on as asked; ``str(error)`` is one line."""


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``--address``, else ``RAY_ADDRESS`` (set by ``ray job submit`` for
    its entrypoint), else None for an embedded Ray on this machine."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if is_ray_client(address) and importlib.util.find_spec("grpc") is None:
        raise ClusterError(f"--address {address}: Ray Client needs grpcio: pip install "
                           f"'kdtune[client]' (or run kdtune on a node of the cluster with "
                           f"--address auto, or submit it: ray job submit -- kdtune run SPEC)")
    return address


def is_ray_client(address: str | None) -> bool:
    """``ray://HOST:10001``: this process is a Ray Client, outside the cluster."""
    return bool(address) and address.startswith("ray://")


def check_client_paths(address: str, paths: dict[str, str | None]) -> None:
    """Under Ray Client, kdtune's driver runs on the cluster, so every folder it is given must
    mean the same there: an absolute path (a shared mount) or a URI, never one relative to
    this machine's working directory. ``paths``: field name -> value."""
    for field, value in paths.items():
        if value and "://" not in value and not Path(value).expanduser().is_absolute():
            raise ClusterError(f"{field} {value}: under Ray Client ({address}) kdtune's driver "
                               f"runs on the cluster; give an absolute path there or a URI "
                               f"(s3://...)")


class _LineSink(io.TextIOBase):
    """A text stream that sends each complete line to a Ray queue, tagged with its stream."""

    def __init__(self, queue: Any, stream: str) -> None:
        self.queue, self.stream, self.pending = queue, stream, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.queue.put((self.stream, line))
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.queue.put((self.stream, self.pending))
            self.pending = ""


def _main_on_cluster(argv: list[str], spec_file: tuple[str, str] | None, queue: Any) -> int:
    """``kdtune ARGV`` itself, run as a task on the cluster; its output goes back line by line.
    ``spec_file``: (name, text) of the spec ``kdtune run`` names as ``argv[1]``."""
    import contextlib
    import signal
    import tempfile

    from kdtune.cli import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray_logger = logging.getLogger("ray")  # Ray's INFO lines, quiet as in kdtune's own driver
    ray_level = ray_logger.level
    ray_logger.setLevel(logging.WARNING)
    out, err = _LineSink(queue, "out"), _LineSink(queue, "err")
    with tempfile.TemporaryDirectory(prefix="kdtune-client-") as folder:
        if spec_file:  # under its own name: the study's default name comes from it
            argv[1] = str(Path(folder) / spec_file[0])
            Path(argv[1]).write_text(spec_file[1], encoding="utf-8")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return main(argv)
        finally:
            out.flush()
            err.flush()
            for sig, handler in handlers.items():  # this worker is Ray's again
                signal.signal(sig, handler)
            ray_logger.setLevel(ray_level)


def _print_lines(queue: Any) -> None:
    waiting = queue.qsize()  # one call to the queue's actor when there is nothing to print
    for stream, line in queue.get_nowait_batch(waiting) if waiting else []:
        print(line, file=sys.stderr if stream == "err" else sys.stdout, flush=True)


CLIENT_ATTEMPTS = 3


def run_through_ray_client(address: str, argv: list[str],
                           spec_file: tuple[str, str] | None = None) -> int:
    """Run ``kdtune ARGV`` on a cluster reached through Ray Client (``ray://``).

    Tune under Ray Client moves its driver loop onto the cluster anyway, away from the files
    kdtune writes as each trial ends; so the whole of kdtune's driver runs there, as one task
    (no CPU of its own) on the node of the client server, which is what ``ray job submit``
    does too. Its output is printed here as it comes; Ctrl-C here stops it as Ctrl-C would
    locally (finished trials kept, ``kdtune resume`` continues). ``spec_file``: (name, text)
    of the local spec ``kdtune run`` names, recreated there.
    """
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = time.perf_counter()
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            break
        except Exception as error:  # the server's traceback spans lines; the last says why
            ray.shutdown()  # a failed connect leaves Ray in client mode: a later init would fail
            why = (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()
            # the client server starts a session process per client, and that start can fail
            # once (seen here: it exited at once, its log empty); a second one then comes up
            if "Initialization failure from server" not in str(error) \
                    or attempt == CLIENT_ATTEMPTS:
                raise ClusterError(f"--address {address}: cannot connect ({why})") from None
            print(f"Ray Client: the cluster could not start a session ({why}); "
                  f"retrying ({attempt + 1}/{CLIENT_ATTEMPTS})", file=sys.stderr, flush=True)
            time.sleep(2)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        summary, alive = cluster_summary()
        head = next((n["NodeManagerAddress"] for n in alive if n["NodeID"] == node_id), node_id)
        print(f"Ray: cluster at {address} (Ray Client), {summary}; kdtune's driver runs on "
              f"{head} ({time.perf_counter() - started:.1f}s)", flush=True)
        queue = Queue(actor_options={"num_cpus": 0})
        driver = ray.remote(num_cpus=0, max_retries=0)(_main_on_cluster).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        ref = driver.remote(list(argv), spec_file, queue)
        interrupted = False
        while True:
            try:
                if ray.wait([ref], timeout=0.5)[0]:
                    break
            except KeyboardInterrupt:  # a KeyboardInterrupt there: kdtune there stops as it
                ray.cancel(ref)        # does on Ctrl-C (finished trials kept), then we return
                interrupted = True
            _print_lines(queue)
        _print_lines(queue)
        return 130 if interrupted else ray.get(ref)
    finally:
        ray.shutdown()


def cluster_summary() -> tuple[str, list[dict[str, Any]]]:
    """"N nodes, C CPUs, G GPUs" for the Ray this process is connected to, and its alive
    nodes (``ray.nodes()`` entries)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    return (f"{len(alive)} node{'s' * (len(alive) > 1)}, {res.get('CPU', 0):g} CPUs, "
            f"{res.get('GPU', 0):g} GPUs"), alive


def _touch_and_check(path: str, marker: str) -> tuple[str, str | None]:
    """Run on one node: can it see the driver's marker and write beside it? (``path``: a
    folder or a URI; a node without the bucket's credentials fails here.)"""
    import ray

    ip = ray.util.get_node_ip_address()
    folder = as_location(path)
    try:
        if not exists(join(folder, marker)):
            return ip, "cannot see files the driver wrote there"
    except (OSError, ValueError) as error:  # no route to the bucket, no credentials
        return ip, f"cannot reach it ({str(error).splitlines()[0] if str(error) else error!r})"
    probe = join(folder, f"{marker}-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes(probe, b"x")
        delete(probe)
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        return ip, f"cannot write there ({str(reason).splitlines()[0]})"
    return ip, None


def check_shared_storage(storage: str | Path, timeout_s: float = 120) -> int:
    """On a multi-node cluster, check from every alive node that ``storage`` is the same folder
    the driver writes to (a shared mount, or the same object storage URI), since trials write
    checkpoints and teachers there.

    Returns the number of nodes checked; raises ``StorageError`` (one line) if one cannot.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from kdtune.study import StorageError

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return len(nodes)
    marker = f".kdtune-shared-{uuid.uuid4().hex[:12]}"
    storage = as_location(str(storage))
    write_bytes(join(storage, marker), b"x")
    try:
        check = ray.remote(num_cpus=0, max_retries=0)(_touch_and_check)
        refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                    n["NodeID"], soft=False)).remote(str(storage), marker) for n in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            raise StorageError(f"storage {storage}: {len(refs) - len(ready)} of {len(refs)} "
                               f"nodes did not answer the shared-storage check in "
                               f"{timeout_s:.0f}s")
        for ip, problem in ray.get(refs):
            if problem:
                where = ("object storage every node can reach (credentials on each node)"
                         if is_uri(storage) else "a path every node mounts (NFS, ...)")
                raise StorageError(f"storage {storage}: node {ip} {problem}; on a cluster, "
                                   f"storage must be {where}")
    finally:
        delete(join(storage, marker))
    return len(nodes)


class ResourcesByMethod:
    """``tune.with_resources`` callable: a trial's bundle from its method's role.

    A class rather than a closure so Tune can pickle it with the trainable.
    """

    def __init__(self, plan: ResourcePlan) -> None:
        self.bundles = {role: r.bundle() for role, r in plan.roles.items()}

    def __call__(self, config: dict[str, Any]):
        from ray.tune import PlacementGroupFactory

        bundle = self.bundles[role_of(flat_config(config)["method"])]
        return PlacementGroupFactory([{"CPU": bundle["cpu"], "GPU": bundle["gpu"]}
                                      | ({"memory": bundle["memory"]} if "memory" in bundle
                                         else {})])
