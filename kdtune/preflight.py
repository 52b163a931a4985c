"""Checks before anything is written: paths made absolute, the storage writable (and not full),
every dataset loadable. A check that fails stops the run with one line, leaving nothing
behind."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdtune.data import Splits
from kdtune.rundir import RunFileError
from kdtune.spec import SpecError, StudySpec
from kdtune.storage import (
    Location,
    StorageError,
    check_writable,
    exists,
    file_digest,
    is_uri,
    write_atomic,
)

# a run directory of the quickstart is ~5 MB; refuse storage that cannot hold a few of them
MIN_FREE_BYTES = 200 * 1024 * 1024


def resolve_paths(spec: StudySpec, storage: str | None, data_dir: str | None,
                  download: bool | None = None) -> StudySpec:
    """Make storage and data paths absolute (Ray needs absolute paths; trials run elsewhere)."""
    storage_path = storage or spec.storage
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    datasets = []
    for ds in spec.datasets:
        update: dict[str, Any] = {}
        folder = ds.data_dir or data_dir
        if folder:
            update["data_dir"] = str(Path(folder).expanduser().resolve())
        if ds.path:  # an image folder is read by trial workers too
            update["path"] = str(Path(ds.path).expanduser().resolve())
        if download is not None:
            update["download"] = download or ds.download
        datasets.append(ds.model_copy(update=update))
    update: dict[str, Any] = {"storage": storage_path, "datasets": datasets}
    search: dict[str, Any] = {}
    rdb = spec.search.storage
    if rdb and rdb.startswith("sqlite:///") and not rdb.startswith("sqlite:////") \
            and rdb != "sqlite:///:memory:":  # a relative SQLite file: relative to here
        absolute = Path(rdb.removeprefix("sqlite:///")).expanduser().resolve()
        search["storage"] = f"sqlite:///{absolute}"
    if isinstance(spec.search.warm_start, list):  # run directories: relative to here
        search["warm_start"] = [run if "://" in run else str(Path(run).expanduser().resolve())
                                for run in spec.search.warm_start]
    if search:
        update["search"] = spec.search.model_copy(update=search)
    return spec.model_copy(update=update)


def check_search_storage(spec: StudySpec) -> None:
    """``search.storage``: the RDB opens (and Optuna's tables exist) before anything is
    written; one line naming the field if not."""
    if not spec.search.storage:
        return
    try:
        from optuna.storages import RDBStorage

        RDBStorage(spec.search.storage)
    except ImportError as error:  # a database driver that is not installed
        raise StorageError(f"search.storage {spec.search.storage}: {error}") from None
    except Exception as error:  # noqa: BLE001 - SQLAlchemy raises many kinds; one line each
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageError(f"search.storage {spec.search.storage}: cannot open it "
                           f"({reason})") from None


def check_datasets(spec: StudySpec, log: Callable[[str], None] | None = None,
                   loaded: list[Splits] | None = None) -> list[dict[str, Any]]:
    """Load every dataset once in the driver (or take the ``loaded`` splits): a missing one
    fails before any trial starts.

    Each dataset's complexity is measured here too (seconds), so it is stored with the results.
    """
    from kdtune.complexity import as_row, measure

    rows = []
    for index, ds in enumerate(spec.datasets):
        splits = loaded[index] if loaded is not None else ds.load()
        sizes = splits.sizes()
        cx = measure(splits, ds.label)
        knob, knob_value = ds.knob()
        k = spec.distillation.omit_class
        if k is not None and k >= splits.num_classes:
            raise SpecError(f"distillation.omit_class: {ds.label} has no class {k} "
                            f"(0..{splits.num_classes - 1})")
        rows.append({"dataset": ds.label, "name": ds.name, "channels": splits.channels,
                     "image_size": splits.image_size, "num_classes": splits.num_classes,
                     "n_train": sizes["train"], "n_val": sizes["val"], "n_test": sizes["test"],
                     "knob": knob, "knob_value": knob_value,
                     "knobs_json": json.dumps(ds.knob_values())} | as_row(cx))
        if log:
            log(f"dataset {ds.label}: {sizes['train']}/{sizes['val']}/{sizes['test']} images, "
                f"{splits.channels}x{splits.image_size}x{splits.image_size}, "
                f"{splits.num_classes} classes, complexity {cx.score:.3f}")
    return rows


def check_storage(storage: str | Path, min_free: int = MIN_FREE_BYTES) -> Path | None:
    """Fail before any trial starts if ``storage`` cannot take a run: unwritable or full (an
    object store: unreachable or unwritable).

    Returns the topmost folder this check made (None where the storage existed, or is a URI),
    for :func:`remove_made_folders` when a later check fails."""
    if is_uri(storage):
        try:
            check_writable(str(storage))
        except (OSError, ValueError) as error:  # pyarrow: ArrowIOError is OSError
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise StorageError(f"storage {storage}: not reachable or not writable "
                               f"({first})") from None
        return None
    storage = Path(storage)
    made = None
    for folder in (storage, *storage.parents):  # the topmost of those mkdir is about to make
        if folder.exists():
            break
        made = folder
    probe = storage / f".kdtune-write-test-{os.getpid()}"
    try:
        storage.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_bytes(b"x" * 65536)  # a full disk fails here, not only a read-only one
        finally:
            probe.unlink(missing_ok=True)
        free = shutil.disk_usage(storage).free
        if free < min_free:
            raise StorageError(f"storage {storage}: only {free // 2**20} MiB free, need at "
                               f"least {min_free // 2**20} MiB")
    except OSError as error:
        remove_made_folders(storage, made)
        raise StorageError(f"storage {storage}: not writable ({error.strerror or error})") from None
    except StorageError:
        remove_made_folders(storage, made)
        raise
    return made


def remove_made_folders(storage: str | Path, made: Path | None) -> None:
    """Take away the folders :func:`check_storage` made for ``storage`` (from ``storage`` up to
    ``made``), each only while it is still empty: a check that fails after it leaves nothing
    behind."""
    if made is None:
        return
    folder = Path(storage)
    while True:
        try:
            folder.rmdir()  # only an empty folder
        except OSError:
            return
        if folder == made:
            return
        folder = folder.parent


class _Refused(Exception):
    """A stored teacher that loads but is not what was stored (kdtune's own reason)."""


# the stored teachers this process checked, by file identity (teacher_store.identity): their
# accuracies; a teacher is hashed once per study (at plan time, or when it appears while a
# study waits for it), never per trial
_CHECKED: dict[tuple, dict[str, Any]] = {}


def stored_teacher(path: Location, log: Callable[[str], None],
                   recipe: dict[str, Any] | None = None,
                   dataset_label: str | None = None) -> dict[str, Any] | None:
    """A stored teacher's checkpoint, or None where it is unreadable (truncated, empty, not a
    checkpoint) or is not what was stored (its size or sha256 differs from ``teacher.json``): a
    local one is kept aside (``teacher.pt.damaged-TIME``, and its record beside it), so the
    study trains that teacher again; one at a URI is refused (one line: delete it).

    A teacher stored without a record (before records, or its record damaged) is accepted
    where it loads, and its record is written (``recipe``, ``dataset_label``: what it holds
    beside the size and hash); a log line says so."""
    import torch

    from kdtune import teacher_store as ts

    record, record_damage = ts.read_record(path)
    try:
        with ts.local_copy(path) as local:  # a URI is downloaded once, for hash and load
            size, sha256 = file_digest(local)
            if record is not None and (size, sha256) != (record["size"], record["sha256"]):
                raise _Refused(f"its size or sha256 does not match {ts.RECORD_FILE}: "
                               f"{size} bytes, sha256 {sha256[:12]}..., recorded "
                               f"{record['size']} bytes, {record['sha256'][:12]}...")
            state = torch.load(local, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "model" not in state:
            raise _Refused("no model state in it")
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        # torch's own message suggests loading with weights_only=False: never repeated
        reason = str(error) if isinstance(error, _Refused) \
            else "not a readable PyTorch checkpoint"
        if is_uri(path):
            raise RunFileError(f"{path}: damaged ({reason}); delete it (and its "
                               f"{ts.RECORD_FILE}) to train that teacher again") from None
        stamp = f"damaged-{dt.datetime.now():%Y%m%d-%H%M%S}"
        aside = Path(path).with_name(f"{Path(path).name}.{stamp}")
        os.replace(path, aside)
        record_file = Path(ts.record_path(path))
        if record_file.exists():  # a new teacher.pt gets a new record; this one goes with it
            os.replace(record_file, record_file.with_name(f"{record_file.name}.{stamp}"))
        log(f"{path}: damaged ({reason}); kept aside as {aside.name}, training that teacher "
            "again")
        return None
    if record is None:
        if record_damage:
            what = f"{ts.record_path(path)}: damaged ({record_damage}); {path} loads"
        else:
            what = f"{path}: stored without a {ts.RECORD_FILE} (before kdtune recorded teachers)"
        try:
            ts.write_record(path, ts.make_record(ts.teacher_id_of(path), size, sha256, recipe,
                                                 dataset_label, recorded_from="existing file"))
            log(f"{what}; accepted, and its size and sha256 recorded ({size} bytes)")
        except OSError as error:  # read-only storage: the teacher is still used
            log(f"{what}; accepted, but {ts.RECORD_FILE} cannot be written "
                f"({error.strerror or error})")
    return state


def checked_teacher(path: Location, log: Callable[[str], None],
                    recipe: dict[str, Any] | None = None,
                    dataset_label: str | None = None) -> dict[str, Any] | None:
    """A stored teacher's accuracies (``val_acc``, ``test_acc``) where it is there and passes
    :func:`stored_teacher`, else None (absent, or set aside). Checked once per file: an
    unchanged file is not read again."""
    from kdtune import teacher_store as ts

    if not exists(path):
        return None
    try:
        key = ts.identity(path)
    except FileNotFoundError:
        return None
    if key not in _CHECKED:
        state = stored_teacher(path, log, recipe, dataset_label)
        if state is None:
            return None
        _CHECKED[key] = {"val_acc": state.get("val_acc"), "test_acc": state.get("test_acc")}
    return _CHECKED[key]


def repair_journal(journal: Path, log: Callable[[str], None]) -> None:
    """A journal cut mid-record loses that record (Optuna skips a partial last line when it
    reads, but the next record would be appended to it and garble both); a garbled one is kept
    aside (``journal.log.damaged-TIME``): the searches go on from trials.parquet, their
    finished trials kept, TPE without their history."""
    from kdtune.search import journal_damage  # imports Ray Tune: only when a run starts

    data = journal.read_bytes() if journal.exists() else b""
    if data and not data.endswith(b"\n"):
        kept = data[: data.rfind(b"\n") + 1]
        write_atomic(journal, lambda tmp: Path(tmp).write_bytes(kept))
        log(f"{journal}: its last record was cut short; dropped it "
            f"({len(data) - len(kept)} bytes)")
    reason = journal_damage(journal)
    if reason:
        aside = journal.with_name(f"{journal.name}.damaged-{dt.datetime.now():%Y%m%d-%H%M%S}")
        os.replace(journal, aside)
        log(f"{journal}: damaged ({reason}); kept aside as {aside.name}, the searches "
            "continue from trials.parquet without their Optuna history")
