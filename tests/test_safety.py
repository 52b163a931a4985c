"""Nothing unsafe: no pickle from storage or specs, and an embedded run listens on loopback only."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "kdtune").rglob("*.py"))


def _calls(text: str, name: str) -> list[str]:
    """The full text of every ``name(...)`` call, nested parentheses included."""
    calls = []
    for match in re.finditer(re.escape(name) + r"\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append(text[match.start():end + 1])
    return calls


def test_checkpoints_load_weights_only_and_specs_load_safely():
    n_loads = 0
    for path in SOURCES:
        text = path.read_text()
        for call in _calls(text, "torch.load"):
            n_loads += 1
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path.name
        assert not re.search(r"^\s*import pickle|pickle\.loads?\(|(?<![.\w])(?<!def )(eval|exec)\(", text,
                             re.M), path.name
    assert n_loads >= 2  # the check saw the checkpoint and teacher loads


PROBE = """
import os, subprocess, time, threading
from kdtune.session import init_ray
init_ray(None, lambda m: None)
from ray import tune

def trial(config):
    time.sleep(4)
    tune.report({"x": 1})

snapshots = []
def snap():
    time.sleep(2.5)
    snapshots.append(subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout)
thread = threading.Thread(target=snap)
thread.start()
tune.Tuner(trial, run_config=tune.RunConfig(storage_path=os.environ["PROBE_STORAGE"],
                                            verbose=0)).fit()
thread.join()
table = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
pairs = [line.split() for line in table.splitlines() if line.strip()]
tree, grew = {str(os.getpid())}, True
while grew:
    new = {pid for pid, ppid in pairs if ppid in tree} - tree
    tree |= new
    grew = bool(new)
for line in snapshots[0].splitlines():
    if any(f"pid={pid}," in line for pid in tree):
        print(line.split()[3])
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list sockets")
def test_embedded_ray_listens_on_loopback_only(tmp_path):
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ,
                                              "PROBE_STORAGE": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    addresses = result.stdout.split()
    assert addresses, "no listening socket found: the probe saw nothing"
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        assert host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"), addresses


def test_a_trial_drops_its_previous_checkpoint_only_once_a_newer_one_exists(tmp_path: Path):
    from ray import tune

    from kdtune.trainables import drop_previous

    folders = []
    for epoch in range(3):
        folder = tmp_path / f"checkpoint_{epoch:06d}"
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"x")
        folders.append(tune.Checkpoint.from_directory(str(folder)))
    first = drop_previous(None, folders[0])  # the first checkpoint: nothing to drop
    assert first is folders[0] and (tmp_path / "checkpoint_000000").is_dir()
    assert drop_previous(first, first) is first  # the same one again (no new report): kept
    assert (tmp_path / "checkpoint_000000").is_dir()
    latest = drop_previous(first, folders[1])
    assert latest is folders[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000001", "checkpoint_000002"]
    assert drop_previous(folders[0], folders[2]) is folders[2]  # already gone: not an error
    assert drop_previous(folders[1], None) is folders[1]  # none reported yet: keep the last
    assert (tmp_path / "checkpoint_000001").is_dir()
