"""The Ray session of one kdtune command, and how it stops: an embedded Ray on loopback (or the
cluster at ``--address``), Ctrl-C and SIGTERM turned into a clean stop that keeps every
finished trial."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from kdtune.cluster import ClusterError, check_reachable, cluster_address, cluster_summary
from kdtune.rundir import first_line

# Set by Ctrl-C or SIGTERM. A KeyboardInterrupt raised by the handler is lost when it lands in
# a __del__ (Ray's actor handles are collected mid-stage), so the run also checks this flag at
# every Tune step and around every stage.
_STOP_REQUESTED = threading.Event()


def _raise_keyboard_interrupt(signum, frame) -> None:  # noqa: ARG001 - signal API
    _STOP_REQUESTED.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    """Raise KeyboardInterrupt if Ctrl-C or SIGTERM arrived, even if its first raise was lost."""
    if _STOP_REQUESTED.is_set():
        raise KeyboardInterrupt


def stop_on_sigterm(fresh: bool = False) -> None:
    """Treat SIGTERM like Ctrl-C: the run stops cleanly and says how to resume.

    Called again after ``ray.init``, whose core installs its own SIGTERM handler (which aborts).
    ``fresh`` forgets a stop request of an earlier command in this process.
    """
    if fresh:
        _STOP_REQUESTED.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)


def init_ray(address: str | None, log: Callable[[str], None]) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C reaches kdtune at once
    # kdtune prints its own one-line-per-trial progress; Tune's tables and warnings would bury it
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own result.json / progress.csv per trial: kdtune writes every epoch to Parquet
    # itself, and those loggers cost the driver ~1.8 ms per reported epoch (measured: 8 trials x
    # 150 reports, driver CPU 3.5 s with them, 1.3 s without). TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0
    # brings them back (TensorBoard, or reading a trial's folder by hand).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune snapshots its whole experiment state (every trial, pickled) every ~10 s for a
    # Tuner.restore kdtune never does (a run resumes from trials.parquet and the Optuna
    # journal): 2.3 s of the samples of a py-spy profile of the quickstart's driver
    # (2026-12-06), growing with the trials. Every 5 minutes, and when a Tuner ends, is enough for a reader.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "300")
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1":
        # without those files Tune's ResultGrid warns for every trial that it found no metrics
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    if ray.is_initialized():
        return
    started = time.perf_counter()
    source = "--address" if address else "RAY_ADDRESS"
    address = cluster_address(address)
    if address:
        check_reachable(address, source)
        # an existing cluster (--address, or RAY_ADDRESS inside `ray job submit`): kdtune
        # opens no port of its own there; the cluster's ports are those `ray start` opened
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as error:  # something answered there, but no Ray (~20 s)
            ray.shutdown()
            raise ClusterError(f"{source} {address}: {first_line(error)}") from None
        where = f"cluster at {address}"
    else:
        # Dashboard off, and every Ray service bound to loopback, so an embedded run opens no
        # port another machine can reach. Ray binds its gRPC servers to the node IP; with
        # "cluster mode" off (Ray's switch for laptops) the node IP is 127.0.0.1.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray's child processes
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read by this process, already imported
        _start_embedded(log)
        where = "embedded Ray"
    stop_on_sigterm()
    log(f"Ray: {where}, {cluster_summary()[0]} ({time.perf_counter() - started:.1f}s)")


def _start_embedded(log: Callable[[str], None], attempts: int = 2) -> None:
    """``ray.init`` of an embedded Ray on loopback, tried again once when its node did not
    come up in time: Ray waits a fixed 30 s for its raylet to register, and on a loaded 2-core
    machine (a test suite, another study) it once took longer (2026-12-06, this project's
    suite: "The current node timed out during startup")."""
    import ray

    # Ray starts its workers at nice 15 (above the driver's), so a trial yields a core to any
    # other process of the machine at once: with a background process using 30 % of one core,
    # the quickstart's trials ran 13 % longer than bare PyTorch at nice 15 and 7 % at 0 (Ray's
    # share 0.19 against 0.14; benchmarks/README.md, 2026-12-06). An embedded Ray's trials run
    # at kdtune's own priority, as a training script would; `nice kdtune run` lowers them all.
    # Read by the raylet when it starts; a cluster's nodes keep their own setting.
    os.environ.setdefault("RAY_worker_niceness", "0")
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
                     log_to_driver=False)
            return
        except Exception as exc:  # Ray raises a bare Exception for this one
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            log(f"Ray: its node did not start within Ray's 30 s (machine busy?); "
                f"trying once more ({exc.__class__.__name__})")
