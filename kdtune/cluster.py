"""Running on a Ray cluster: which address to join, and checks that make a misconfigured
cluster fail before any trial starts rather than hours into a study. (Reaching a cluster from
outside it, through Ray Client, is :mod:`kdtune.client`.)"""

from __future__ import annotations

import importlib.util
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from kdtune.job import flat_config
from kdtune.resources import ResourcePlan, role_of
from kdtune.rundir import first_line
from kdtune.storage import StorageError, as_location, delete, exists, is_uri, join, write_bytes


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


def check_reachable(address: str, source: str = "--address", timeout_s: float = 5.0) -> None:
    """Raise :class:`ClusterError` unless something accepts a connection where Ray would look
    for the cluster at ``address`` (``auto``: the cluster ``ray start`` last started on this
    machine; ``source`` names where the address came from, for the message).

    ``ray.init`` itself waits on a GCS that does not answer for good, printing a log line every
    few seconds (2026-12-06: ``--address 127.0.0.1:9`` still waiting after 150 s), and reports
    an ``auto`` that finds no cluster with a traceback. Probed at the address Ray connects to
    (it turns ``localhost`` into this machine's IP).
    """
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address(address)
    except Exception as error:  # noqa: BLE001 - ConnectionError (auto: none), ValueError (form)
        raise ClusterError(f"{source} {address}: {first_line(error)}") from None
    if resolved is None:  # "local": Ray starts a cluster in this process
        return
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        raise ClusterError(f"{source} {address}: no Ray cluster answers at {resolved} "
                           f"({type(error).__name__}: {error}); start one with `ray start "
                           f"--head`, or leave --address out to run on this machine") from None


def is_ray_client(address: str | None) -> bool:
    """``ray://HOST:10001``: this process is a Ray Client, outside the cluster."""
    return bool(address) and address.startswith("ray://")


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
