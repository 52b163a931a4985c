"""A real multi-node Ray cluster on this machine, started with the ``ray start`` CLI, and
stopped by killing exactly the processes it started (never ``ray stop``, which would kill every
Ray process on the machine, other people's included).

Each node gets its own loopback address (127.0.0.2, 127.0.0.3, ...), its own temp folder and
its own resources, and runs ``ray start --block`` in a session of its own, so every process it
spawns (GCS, raylet, workers) can be found by that session id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


class ClusterUnavailable(RuntimeError):
    """Ray could not start a node here (no ``ray`` CLI, no free ports, ...): skip, don't fail."""


def _sessions_processes(sessions: set[int], marker: str) -> list[int]:
    """PIDs in one of ``sessions``, or whose command line names our temp folder ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            state, session = fields[0], int(fields[3])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if state != "Z" and (session in sessions or marker in cmdline):  # zombies are gone
            pids.append(int(proc.name))
    return pids


class LocalCluster:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        if RAY is None:
            raise ClusterUnavailable("no `ray` command next to this Python")
        # short: Ray puts unix sockets under it (at most ~107 characters per path)
        self.root = Path(tempfile.mkdtemp(prefix="kdt-", dir="/tmp"))
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **(env or {}))
        # an embedded kdtune run earlier in this process sets this for its own Ray (cluster
        # mode off): inherited, it keeps `ray start` from starting a head on 127.0.0.2
        self.env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        self.env.setdefault("RAY_AUTH_MODE", "disabled")
        self.procs: list[subprocess.Popen] = []
        self.address: str | None = None
        self.client_address: str | None = None  # ray://..., where grpcio is installed

    def _start(self, name: str, args: list[str], ready: str, timeout: float = 180) -> str:
        log = self.root / f"{name}.log"
        temp = self.root / name
        temp.mkdir()
        proc = subprocess.Popen(
            [RAY, "start", "--block", f"--temp-dir={temp}", "--disable-usage-stats",
             "--object-store-memory=200000000", *args],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True)  # its own session: everything it spawns is findable
        self.procs.append(proc)
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = log.read_text(errors="replace")
            if ready in text:
                return text
            if proc.poll() is not None:
                raise ClusterUnavailable(f"`ray start` ({name}) exited {proc.returncode}: "
                                         f"{text[-1500:]}")
            time.sleep(0.5)
        raise ClusterUnavailable(f"`ray start` ({name}) not up after {timeout:.0f}s")

    def start_head(self, num_cpus: int, ip: str = "127.0.0.2",
                   resources: dict[str, float] | None = None) -> str:
        client = []
        if importlib.util.find_spec("grpc"):  # Ray Client's server, on a port of ours
            with socket.socket() as probe:  # (Ray's default, 10001, may be taken)
                probe.bind((ip, 0))
                port = probe.getsockname()[1]
            client = [f"--ray-client-server-port={port}"]
            self.client_address = f"ray://{ip}:{port}"
        text = self._start("head", ["--head", f"--node-ip-address={ip}", "--port=0",
                                    f"--num-cpus={num_cpus}", "--include-dashboard=false",
                                    f"--resources={json.dumps(resources or {})}", *client],
                           ready="Ray runtime started")
        match = re.search(r"ray start --address='([^']+)'", text)
        if not match:
            raise ClusterUnavailable(f"no address in the head's output: {text[-1500:]}")
        self.address = match[1]
        return self.address

    def add_node(self, num_cpus: int, ip: str, resources: dict[str, float] | None = None,
                 name: str | None = None) -> None:
        self._start(name or f"node{len(self.procs)}",
                    [f"--address={self.address}", f"--node-ip-address={ip}",
                     f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources or {})}"],
                    ready="Ray runtime started")

    def nodes(self, expect: int, timeout: float = 60) -> list[dict]:
        """The alive nodes as the GCS sees them, once ``expect`` of them have registered."""
        code = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR');"
                "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'],"
                " 'cpus': n['Resources'].get('CPU', 0), 'resources': n['Resources']}"
                " for n in ray.nodes() if n['Alive']]))")
        deadline, nodes = time.time() + timeout, []
        while time.time() < deadline:
            out = subprocess.run([sys.executable, "-c", code, str(self.address)],
                                 capture_output=True, text=True, env=self.env, timeout=120)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
            nodes = json.loads(lines[-1]) if lines else []
            if len(nodes) >= expect:
                return nodes
            time.sleep(1)
        raise ClusterUnavailable(f"{len(nodes)} of {expect} nodes registered")

    def stop(self, grace: float = 5) -> list[int]:
        """SIGTERM our sessions, SIGKILL what is left after ``grace``; return leftovers.

        A 30 s grace always ran out (some of Ray's processes outlive SIGTERM), so the test
        cluster's teardown took 30 s; whatever is left after 5 s is killed all the same."""
        sessions = {p.pid for p in self.procs}
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and _sessions_processes(sessions, str(self.root)):
            time.sleep(0.5)
        for pid in _sessions_processes(sessions, str(self.root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.5)
        left = _sessions_processes(sessions, str(self.root))
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
        return left
