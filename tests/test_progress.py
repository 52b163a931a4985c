"""The study's live progress: a status line under the trial lines on a terminal (checked on a
pseudo-terminal), plain lines on a pipe, the summary alone with --quiet, and a time left that
starts from the compute estimate and follows the measured rate."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys

import pytest

from kdtune.progress import Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _planned(mode: str = "live", stream=None) -> tuple[Progress, _Clock]:
    clock = _Clock()
    progress = Progress(mode, stream=stream or _Terminal(), clock=clock, refresh_s=0)
    # 1 teacher of 10 epochs at 1 GFLOP, 4 rkd trials of 5 epochs at 2 GFLOP (2 are finals)
    progress.plan(trials=5, flops=10e9 + 4 * 5 * 2e9, rate=1e9, planned_finals=2,
                  epoch_flops={("digits", "teacher"): 1e9, ("digits", "rkd"): 2e9})
    return progress, clock


def test_time_left_is_the_estimates_until_epochs_are_measured():
    progress, clock = _planned()
    assert progress.seconds_left() == pytest.approx(50.0)  # 50 GFLOP at the estimated 1 GFLOP/s
    for _ in range(10):
        progress.epoch("digits", "teacher", "teacher")
    clock.now += 20.0  # the teacher's 10 GFLOP took 20 s: half the estimated rate
    assert progress.seconds_left() == pytest.approx(40e9 / (10e9 / 20.0))


def test_stopped_trials_and_extra_seed_rounds_change_the_work_left():
    progress, clock = _planned()
    progress.trial_done("digits", "rkd", "search", 80.0, epochs_left=3)  # ASHA stopped it
    assert progress.flops_total == pytest.approx(50e9 - 3 * 2e9)
    for i in range(3):  # the third final is a second round's: its work is added
        progress.trial_started(f"final:{i}", "digits", "rkd", "final", epochs=5)
    progress.trial_started("final:0", "digits", "rkd", "final", epochs=5)  # seen once
    assert progress.flops_total == pytest.approx(44e9 + 5 * 2e9)
    assert progress.trials_total == 6


def test_the_status_line_says_done_running_best_and_time():
    progress, clock = _planned()
    progress.trial_done("digits", "teacher", "teacher", 97.0)
    progress.trial_done("digits", "rkd", "search", 81.25)
    progress.trial_done("digits", "rkd", "search", 90.0)
    progress.trial_done("digits", "rkd", "final", 99.0)  # not a search: not "best"
    progress.running(2)
    clock.now += 65
    assert progress.status_line() == (
        "kdtune: 4/5 trials done, 2 running | best val: digits rkd 90.0% | 1m05s, ~50s left")


def test_live_output_keeps_one_status_line_under_the_lines():
    terminal = _Terminal()
    progress, _ = _planned(stream=terminal)
    progress.log("  [teachers] digits teacher epoch 2/10: val 50.0%")
    progress.running(1)
    progress.summary("done in 3s: 1 trials (1 finished)")
    out = terminal.getvalue()
    # each line goes above the status line, which is erased and redrawn after it
    assert out.startswith("  [teachers] digits teacher epoch 2/10: val 50.0%\n"
                          "\r\x1b[Kkdtune: 0/5 trials done, 0 running")
    assert "\r\x1b[Kkdtune: 0/5 trials done, 1 running" in out
    assert out.endswith("\r\x1b[Kdone in 3s: 1 trials (1 finished)\n")


def test_plain_and_quiet_output():
    lines: list[str] = []
    plain = Progress("plain", write=lines.append)
    plain.log("a trial line")
    plain.running(3)  # no status line off a terminal
    plain.summary("the summary")
    assert lines == ["a trial line", "the summary"]
    pipe = io.StringIO()
    quiet = Progress("quiet", stream=pipe)
    quiet.log("a trial line")
    quiet.summary("the summary")
    assert pipe.getvalue() == "the summary\n"
    assert Progress("auto", stream=io.StringIO()).mode == "plain"  # a pipe
    assert Progress("auto", stream=_Terminal()).mode == "live"
    with pytest.raises(ValueError, match="progress mode"):
        Progress("loud")


def _read_all(fd: int, proc: subprocess.Popen, timeout: float = 600) -> str:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            break
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_study_on_a_terminal_shows_a_status_line_and_quiet_shows_the_summary(
        tiny_spec_dict, write_spec, tmp_path, capsys, embedded_ray):
    tiny_spec_dict.update(methods=["scratch", "rkd"], final={"seeds": [0]})
    tiny_spec_dict["training"]["teacher_epochs"] = 10
    spec = write_spec(tiny_spec_dict)
    primary, secondary = pty.openpty()
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160")
    proc = subprocess.Popen([sys.executable, "-m", "kdtune", "run", str(spec), "--storage",
                             str(tmp_path / "runs")], stdin=secondary, stdout=secondary,
                            stderr=subprocess.DEVNULL, env=env, close_fds=True)
    os.close(secondary)
    out = _read_all(primary, proc)
    os.close(primary)
    assert proc.returncode == 0, out[-3000:]
    status = [part.split("\r")[0] for part in out.split("\x1b[K")[1:]
              if part.startswith("kdtune: ")]
    assert status, out[-3000:]
    assert any("running" in s and "left" in s for s in status)
    assert any("best val: digits[n=300] rkd" in s for s in status)
    assert all("/?" not in s for s in status)  # drawn once the plan is known
    assert "done in" in out and "report:" in out
    # a teacher of 10 epochs prints every 2nd epoch: 5 lines, not 10
    assert out.count("teacher epoch") == 5

    # --quiet on a pipe: the summary and the run directory, no trial lines (run in this
    # process, on the session's embedded Ray: a second process cost ~15 s of Ray and imports)
    from kdtune.cli import main

    capsys.readouterr()
    assert main(["run", str(spec), "--storage", str(tmp_path / "runs"), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("done in") and lines[-2].startswith("report:")
    assert not any("[search" in line or "teacher epoch" in line for line in lines)
    assert lines[-1].startswith(str(tmp_path / "runs"))


def test_a_pickled_copy_prints_nowhere():
    """Tune pickles its callbacks with the experiment state; the terminal stays behind."""
    import pickle

    lines: list[str] = []
    progress, _ = _planned(stream=_Terminal())
    progress._write = lines.append
    copy = pickle.loads(pickle.dumps(progress))
    copy.log("from the copy")
    assert lines == [] and copy.trials_total == 5
