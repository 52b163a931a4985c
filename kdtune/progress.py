"""What a running study shows: on a terminal, its lines with one status line kept under them;
on a pipe or in CI, the lines alone; with ``--quiet``, the closing summary alone.

The status line (rewritten in place, at most once a second, cut to the terminal's width)::

    kdtune: 37/120 trials done, 2 running | best val: digits rkd 93.1%, ikd 92.5% | 1m05s, ~2m40s left

The time left is the compute estimate's (FLOPs of the planned work over 60 GFLOP/s per core)
until trials have run, then the FLOPs left over the FLOPs per second measured so far: each
reported epoch counts the FLOPs of its dataset and method (``estimate.epoch_flops``). Seed
rounds beyond the first add their trials' work when they start.
"""

from __future__ import annotations

import io
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

MODES = ("auto", "live", "plain", "quiet")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """The study's output. ``log`` takes a line of the study (a trial ended, a stage began);
    ``summary`` the closing lines (shown even when quiet); ``epoch``, ``trial_started``,
    ``trial_done`` and ``running`` feed the status line and its time left.

    ``mode``: ``live`` (status line), ``plain`` (lines only), ``quiet`` (summary only), or
    ``auto``: live when ``stream`` is a terminal, else plain. ``write``: where plain lines go
    (default: ``stream``).
    """

    def __init__(self, mode: str = "auto", stream: TextIO | None = None,
                 write: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, refresh_s: float = 1.0) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: one of {', '.join(MODES)}")
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "live" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode, self.clock, self.refresh_s = mode, clock, refresh_s
        self._write = write
        self.started = clock()
        self.trials_total: int | None = None
        self.trials_done = 0
        self.running_now = 0
        self.best: dict[tuple[str, str], float] = {}  # (dataset, method) -> best search val
        self.flops_total = 0.0  # the planned work, grown by later seed rounds
        self.flops_done = 0.0
        self.rate_estimate = 0.0  # FLOP/s the compute estimate assumes
        self._epoch_flops: dict[tuple[str, str], float] = {}
        self._epochs: dict[str, int] = {}  # trial -> its epochs budget (for trial_started)
        self._planned_finals = 0
        self._finals_seen = 0
        self._shown = ""
        self._drawn_at = -1e9

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks (the recorder holds this) with the experiment's state:
        # a terminal or a caller's callable does not travel, and a copy prints nowhere
        return self.__dict__ | {"stream": None, "_write": None, "clock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stream, self.clock = io.StringIO(), time.monotonic

    # --- the plan -------------------------------------------------------------------------
    def plan(self, trials: int, flops: float, epoch_flops: dict[tuple[str, str], float],
             rate: float, planned_finals: int) -> None:
        """The planned trials and their FLOPs, the FLOPs of one epoch per (dataset, method or
        ``teacher``), the estimate's FLOP/s, and how many final trainings the plan counts."""
        self.trials_total, self.flops_total = trials, flops
        self._epoch_flops, self.rate_estimate = epoch_flops, rate
        self._planned_finals = planned_finals

    # --- events ---------------------------------------------------------------------------
    def trial_started(self, trial_id: str, dataset: str, method: str, role: str,
                      epochs: int) -> None:
        """A trial's first report; a final training beyond the planned round adds its work."""
        if trial_id in self._epochs:
            return
        self._epochs[trial_id] = epochs
        if role == "final":
            self._finals_seen += 1
            if self._finals_seen > self._planned_finals:
                self.flops_total += epochs * self._epoch_flops.get((dataset, method), 0.0)
                if self.trials_total is not None:
                    self.trials_total += 1

    def epoch(self, dataset: str, method: str, role: str) -> None:
        key = (dataset, "teacher" if role == "teacher" else method)
        self.flops_done += self._epoch_flops.get(key, 0.0)
        self.refresh()

    def trial_done(self, dataset: str, method: str, role: str, val_acc: float | None,
                   epochs_left: int = 0) -> None:
        """A finished (or stopped) trial; ``epochs_left``: epochs of its budget it did not run
        (ASHA stopped it), which no longer count as work left."""
        self.trials_done += 1
        key = (dataset, "teacher" if role == "teacher" else method)
        self.flops_total -= epochs_left * self._epoch_flops.get(key, 0.0)
        if role == "search" and val_acc is not None:
            self.best[dataset, method] = max(self.best.get((dataset, method), 0.0), val_acc)

    def running(self, n: int) -> None:
        self.running_now = n
        self.refresh()

    # --- output ---------------------------------------------------------------------------
    def seconds_left(self) -> float | None:
        """Measured FLOP/s once any epoch ran (and a second passed), else the estimate's."""
        elapsed = self.clock() - self.started
        left = max(0.0, self.flops_total - self.flops_done)
        if self.flops_done > 0 and elapsed >= 1.0:
            return left / (self.flops_done / elapsed)
        if self.rate_estimate > 0:
            return left / self.rate_estimate
        return None

    def status_line(self) -> str:
        total = "?" if self.trials_total is None else str(self.trials_total)
        parts = [f"kdtune: {self.trials_done}/{total} trials done, {self.running_now} running"]
        if self.best:
            by_dataset: dict[str, list[str]] = {}
            for (dataset, method), val in sorted(self.best.items()):
                by_dataset.setdefault(dataset, []).append(f"{method} {val:.1f}%")
            parts.append("best val: " + "; ".join(f"{d} {', '.join(v)}"
                                                  for d, v in by_dataset.items()))
        elapsed = _duration(self.clock() - self.started)
        left = self.seconds_left()
        parts.append(elapsed + (f", ~{_duration(left)} left" if left is not None else ""))
        return " | ".join(parts)

    def _emit(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _clear(self) -> None:
        if self._shown:
            self._emit("\r\x1b[K")
            self._shown = ""

    def refresh(self, force: bool = False) -> None:
        """Redraw the status line (live mode, at most once per ``refresh_s``)."""
        if self.mode != "live" or self.trials_total is None:  # nothing to show before plan()
            return
        now = self.clock()
        if not force and now - self._drawn_at < self.refresh_s:
            return
        width = shutil.get_terminal_size((100, 24)).columns
        line = self.status_line()[: max(20, width - 1)]
        self._emit("\r\x1b[K" + line)
        self._shown, self._drawn_at = line, now

    def log(self, message: str) -> None:
        """A line of the study: printed above the status line; dropped when quiet."""
        if self.mode == "quiet":
            return
        if self._write is not None and self.mode == "plain":
            self._write(message)
            return
        self._clear()
        self._emit(message + "\n")
        self.refresh(force=True)

    __call__ = log

    def summary(self, message: str) -> None:
        """The closing lines: shown in every mode."""
        self._clear()
        if self._write is not None and self.mode != "live":
            self._write(message)
        else:
            self._emit(message + "\n")

    def close(self) -> None:
        self._clear()


def plan_from_spec(progress: Progress, spec, finished: list[dict], cpus: float) -> None:
    """Give ``progress`` the spec's planned work, less what the ``finished`` trial rows of a
    resumed run already did; ``cpus``: the cluster's CPUs, for the estimate's rate."""
    from kdtune import estimate
    from kdtune.plan import validate

    plan = validate(spec, compute=False)
    per_epoch = estimate.epoch_flops(spec)
    planned = plan.teachers + plan.search_trials + plan.final_trainings
    flops = estimate.compute(spec).total
    for row in finished:
        key = (row["dataset"], estimate.TEACHER if row["role"] == "teacher" else row["method"])
        flops -= (row.get("epochs_run") or 0) * per_epoch.get(key, 0.0)
    progress.plan(planned, max(flops, 0.0), per_epoch, estimate.CPU_FLOPS * max(cpus, 1.0),
                  plan.final_trainings)
    progress.trials_done = min(len(finished), planned)
