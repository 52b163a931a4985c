"""The teacher store: ``STORAGE/teachers/<id>/`` holds one pretrained model, trained once and
reused by every study whose recipe it is.

| file | what |
|---|---|
| ``teacher.pt`` | the weights (and the model's validation and test accuracy) |
| ``teacher.json`` | its record: size in bytes, sha256, the recipe it was trained with, kdtune's version, the date; written after ``teacher.pt`` |
| ``claim.json`` | while a study trains it: that study's run id, host, pid and a heartbeat |

A teacher whose size or sha256 does not match its record is treated as missing (see
:func:`kdtune.preflight.stored_teacher`). A claim makes one study train a teacher that several
studies started together need (:func:`acquire`, :class:`Heartbeat`): the others wait for it and
reuse it; a claim whose heartbeat is older than :func:`claim_timeout` (its study was killed) is
taken over. The recipe itself (what a teacher id hashes) is :mod:`kdtune.teacher_recipe`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from kdtune.rundir import first_line
from kdtune.storage import (
    Location,
    delete,
    download,
    exists,
    is_uri,
    join,
    name_of,
    open_uri,
    upload,
    write_atomic,
)

RECORD_FILE = "teacher.json"
CLAIM_FILE = "claim.json"
# a claim whose heartbeat is older than this many seconds is stale: its study is gone
# (``KDTUNE_CLAIM_TIMEOUT_S`` overrides it, read at each use)
CLAIM_TIMEOUT_S = 60.0
# the heartbeat is refreshed every HEARTBEAT_S seconds (at most a quarter of the timeout)
HEARTBEAT_S = 10.0
# object storage has no create-if-absent: a claim written there is read back after this long
URI_SETTLE_S = 1.0


# a study waiting for a teacher another study trains looks for it this often (at most a
# quarter of the timeout)
POLL_S = 5.0


def claim_timeout() -> float:
    return float(os.environ.get("KDTUNE_CLAIM_TIMEOUT_S") or CLAIM_TIMEOUT_S)


def heartbeat_every() -> float:
    return min(HEARTBEAT_S, claim_timeout() / 4)


def poll_every() -> float:
    return min(POLL_S, claim_timeout() / 4)


def model_of(method: str) -> str:
    """``teacher`` or ``student``: which spec model a pretraining method (``teacher``,
    ``pretrained_student``) trains."""
    from kdtune.methods import PRETRAINED

    return next(k for k, v in PRETRAINED.items() if v == method)


# --- the record -----------------------------------------------------------------------------
def record_path(teacher: Location) -> Location:
    return join(_folder(teacher), RECORD_FILE)


def claim_path(teacher: Location) -> Location:
    return join(_folder(teacher), CLAIM_FILE)


def _folder(teacher: Location) -> Location:
    return str(teacher).rsplit("/", 1)[0] if is_uri(teacher) else Path(teacher).parent


@contextlib.contextmanager
def local_copy(location: Location) -> Iterator[Path]:
    """A local path holding the file at ``location``: itself, or a download of a URI."""
    if not is_uri(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / name_of(location)
        download(location, local)
        yield local


def teacher_id_of(teacher: Location) -> str:
    """The id of the teacher stored at ``teacher`` (its folder's name)."""
    return name_of(_folder(teacher))


def identity(teacher: Location) -> tuple:
    """What changes whenever the file at ``teacher`` does: a check of its content holds while
    this stays the same (local: inode, size and mtime in ns; object storage: mtime and size)."""
    if is_uri(teacher):
        from kdtune.storage import version

        return (str(teacher), version(teacher))
    stat = Path(teacher).stat()
    return (str(teacher), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def make_record(teacher_id: str, size: int, sha256: str, key: dict[str, Any] | None,
                dataset_label: str | None = None, **extra: Any) -> dict[str, Any]:
    try:  # the installed distribution's (kdtune.__version__ is the same number)
        from importlib.metadata import PackageNotFoundError, version

        kdtune_version = version("kdtune")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        kdtune_version = "unknown"
    out: dict[str, Any] = {"id": teacher_id, "size": size, "sha256": sha256}
    if key is not None:
        model = key["model"]
        out |= {"arch": model["arch"], "options": model.get("options", {}),
                "dataset": dataset_label, "teacher_epochs": key["epochs"], "seed": key["seed"],
                "lr": key["training"].get("lr"), "recipe": key}
    return out | extra | {"kdtune_version": kdtune_version,
                          "recorded_at": dt.datetime.now().isoformat(timespec="seconds")}


def write_record(teacher: Location, record: dict[str, Any]) -> None:
    """``teacher.json`` beside ``teacher``, whole or not at all (after ``teacher.pt``)."""
    _write_text(record_path(teacher), json.dumps(record, indent=2, sort_keys=True, default=str))


def read_record(teacher: Location) -> tuple[dict[str, Any] | None, str | None]:
    """The record of a stored teacher and why it could not be read: ``(None, None)`` where there
    is none (a teacher stored before records), ``(None, reason)`` where it is damaged."""
    path = record_path(teacher)
    try:
        if not exists(path):
            return None, None
        data = json.loads(_read_text(path))
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        return None, first_line(error)
    if not isinstance(data, dict):
        return None, "not a JSON object"
    if not isinstance(data.get("size"), int) or not isinstance(data.get("sha256"), str):
        return None, "no size and sha256 in it"
    return data, None


def _read_text(location: Location) -> str:
    if not is_uri(location):
        return Path(location).read_text(encoding="utf-8")
    fs, path = open_uri(str(location))
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def _write_text(location: Location, text: str) -> None:
    if not is_uri(location):
        write_atomic(location, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / name_of(location)
        local.write_text(text, encoding="utf-8")
        upload(local, str(location))


# --- claims ---------------------------------------------------------------------------------
class Claim:
    """One study's claim on one teacher it is about to train."""

    def __init__(self, teacher: Location, teacher_id: str, run_id: str) -> None:
        self.teacher, self.teacher_id, self.run_id = teacher, teacher_id, run_id
        self.path = claim_path(teacher)
        self.token = uuid.uuid4().hex
        self.lost = False  # taken over by another study (this one stopped heartbeating)

    def body(self) -> dict[str, Any]:
        now = time.time()
        return {"teacher_id": self.teacher_id, "run_id": self.run_id,
                "host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                "heartbeat": now,
                "heartbeat_at": dt.datetime.fromtimestamp(now).isoformat(timespec="seconds")}


def read_claim(teacher: Location) -> dict[str, Any] | None:
    """The claim on a teacher (None: none). One that cannot be read (half-written, garbage)
    counts as live while its file is younger than the timeout: ``{"heartbeat": mtime}``."""
    path = claim_path(teacher)
    try:
        data = json.loads(_read_text(path))
        if isinstance(data, dict) and isinstance(data.get("heartbeat"), (int, float)):
            return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        pass
    mtime = _mtime(path)
    return None if mtime is None else {"heartbeat": mtime, "run_id": "?", "damaged": True}


def _mtime(location: Location) -> float | None:
    try:
        if not is_uri(location):
            return Path(location).stat().st_mtime
        import pyarrow.fs as pafs

        fs, path = open_uri(str(location))
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        return info.mtime_ns / 1e9 if info.mtime_ns else time.time()
    except FileNotFoundError:
        return None


def is_stale(claim: dict[str, Any], now: float | None = None) -> bool:
    """Its heartbeat is older than :func:`claim_timeout` (every host's clock is assumed to
    agree to within a few seconds)."""
    return (now or time.time()) - float(claim.get("heartbeat", 0)) > claim_timeout()


def acquire(teacher: Location, teacher_id: str, run_id: str
            ) -> tuple[Claim | None, dict[str, Any] | None]:
    """Claim ``teacher`` for the study ``run_id``: ``(claim, None)`` where this study now holds
    it, ``(None, holder)`` where another study's live claim holds it. A stale claim, or one of
    this same run (left by a killed earlier process of it), is taken over: ``(claim, the
    claim taken over)``."""
    claim, taken = Claim(teacher, teacher_id, run_id), None
    for _ in range(3):  # create; on conflict, take over a stale claim and create again
        if _create(claim):
            return claim, taken
        holder = read_claim(teacher)
        if holder is None:
            continue  # released in between
        if not (is_stale(holder) or holder.get("run_id") == run_id):
            return None, holder
        _remove_stale(teacher, holder)
        taken = holder
    holder = read_claim(teacher)
    return None, holder or {"run_id": "?", "heartbeat": time.time()}


def _create(claim: Claim) -> bool:
    """Create the claim file if there is none: ``O_CREAT | O_EXCL`` on a local (or NFSv3+)
    path; on object storage, where pyarrow offers no write-if-absent, create it where it is
    absent and read it back after :data:`URI_SETTLE_S`: the last writer wins, and a study
    reading back another's token yields. Two studies that both check before either writes, and
    each read back before the other writes, both train it (a window of about the time of one
    request; the teacher is the same either way, written whole)."""
    text = json.dumps(claim.body(), indent=2)
    if not is_uri(claim.path):
        path = Path(claim.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True
    if exists(claim.path):
        return False
    _write_text(claim.path, text)
    time.sleep(URI_SETTLE_S)
    back = read_claim(claim.teacher)
    return back is not None and back.get("token") == claim.token


def _remove_stale(teacher: Location, stale: dict[str, Any]) -> None:
    """Delete a stale claim, and only it: locally it is first renamed to a name of its own
    (one taker wins the rename), then checked to be the claim judged stale; a fresh claim
    taken by another study in between is put back."""
    path = claim_path(teacher)
    if is_uri(path):
        delete(path)  # best effort: another taker may delete a claim just made (see _create)
        return
    moved = Path(path).with_name(f"{CLAIM_FILE}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return
    try:
        data = json.loads(moved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("heartbeat"), (int, float)) \
            and data.get("token") != stale.get("token") and not is_stale(data):
        with contextlib.suppress(OSError):  # a fresh claim: back, unless a third one exists
            os.link(moved, path)
    moved.unlink(missing_ok=True)


def refresh(claim: Claim) -> bool:
    """Renew the claim's heartbeat; False (and the claim marked lost) where it is no longer
    this study's (taken over after its heartbeat stopped, e.g. the machine slept)."""
    current = read_claim(claim.teacher)
    if current is None or current.get("token") != claim.token:
        claim.lost = True
        return False
    _write_text(claim.path, json.dumps(claim.body(), indent=2))
    return True


def release(claim: Claim) -> None:
    """Remove the claim, if it is still this study's."""
    current = read_claim(claim.teacher)
    if current is not None and current.get("token") == claim.token:
        with contextlib.suppress(OSError):
            delete(claim.path)


class Heartbeat:
    """While the ``with`` block runs, a driver thread renews each claim's heartbeat every
    :func:`heartbeat_every` seconds; on leaving it (the teachers stored, or a failure, or
    Ctrl-C) the claims are released."""

    def __init__(self, claims: Iterable[Claim], log: Callable[[str], None]) -> None:
        self.claims, self.log = claims, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="kdtune-claims", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_every()):
            # a snapshot: the claims may be a live view another thread adds to
            for claim in list(self.claims):
                if claim.lost:
                    continue
                try:
                    if not refresh(claim):
                        self.log(f"teacher {claim.teacher_id}: its claim was taken over by "
                                 "another study (this one's heartbeat was late); both train it")
                except OSError as error:  # a storage hiccup: the next beat tries again
                    self.log(f"teacher {claim.teacher_id}: could not renew its claim "
                             f"({first_line(error)})")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        for claim in list(self.claims):
            with contextlib.suppress(OSError):
                release(claim)
