"""Running kdtune on a cluster from outside it, through Ray Client (``--address ray://...``).

Tune under Ray Client moves its driver loop onto the cluster anyway, away from the files kdtune
writes as each trial ends; so the whole of kdtune's driver runs there, as one task (no CPU of
its own) on the node of the client server, which is what ``ray job submit`` does too. The task
runs :func:`kdtune.commands.main`; its output comes back line by line and is printed here; Ctrl-C
here stops it as Ctrl-C would locally (finished trials kept, ``kdtune resume`` continues).
This module sits above :mod:`kdtune.commands` and below :mod:`kdtune.cli`: nothing imports back.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path
from typing import Any

from kdtune.cluster import ClusterError, cluster_summary


def close_abandoned_channels() -> None:
    """Close the gRPC channel that a failed Ray Client connect leaves open.

    Ray Client gives up on a server it cannot reach without closing its channel
    (``ray.util.client.worker.Worker._connect_channel``), and the channel's subscription keeps
    a thread polling it for good. A later fork in this process then races that thread: an
    embedded ``ray.init`` after a failed ``ray://`` connect, beside two busy processes, hit
    Ray's 30-s wait for its GCS in 5 of 12 tries, and in none of 12 with the channel closed
    (2026-12-06; once in this project's CI); gRPC and fork race the same way in
    ray-project/ray#63202. The worker that owns the channel was never handed to Ray's client
    API (its constructor raised), so only the garbage collector still knows it; this runs on
    the error path alone.
    """
    import gc

    from ray.util.client.worker import Worker

    for obj in gc.get_objects():
        channel = getattr(obj, "channel", None) if isinstance(obj, Worker) else None
        if channel is not None:
            try:
                channel.unsubscribe(obj._on_channel_state_change)
                channel.close()
            except Exception:  # noqa: BLE001 - already closed, or a Ray without these: harmless
                pass
            obj.channel = None


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

    from kdtune.commands import main

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
            close_abandoned_channels()
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


