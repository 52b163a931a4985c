"""A study's storage as a local (shared) path or as a URI: object storage (``s3://``,
``gs://``) or ``file://``, opened with pyarrow's filesystems (fsspec's for other schemes).

A location is a ``Path`` for a local storage and a ``str`` URI otherwise; the helpers here take
either, so callers (teacher store, run directory mirror, cluster check) need no branch of
their own. With a URI storage the driver keeps a run directory in a local staging folder
(:func:`staging_dir`) and :class:`RunMirror` copies each kdtune file to the URI after it is
written: Optuna's journal needs a local file lock, and Parquet is rewritten whole per trial.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """The storage path cannot hold a run (unwritable, not a folder, full, unreachable, ...)."""


Location = str | Path  # a local path, or a URI such as s3://bucket/prefix/teachers/x/teacher.pt


def is_uri(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location


def as_location(text: str | Path) -> Location:
    """A config string back as a location: ``Path("s3://b/x")`` would fold ``//`` into ``/``."""
    return text if is_uri(text) else Path(text)


def join(base: str | Path, *parts: str) -> Location:
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def name_of(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``uri`` and the path within it. pyarrow knows s3, gs, hdfs and file
    (credentials as the AWS/GCP SDKs find them); other schemes (memory://, az:// with adlfs,
    ...) go through fsspec."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid for a scheme it lacks
        import fsspec
        from fsspec.core import url_to_fs

        try:
            fs, path = url_to_fs(uri)
        except (ImportError, ValueError):
            raise error from None
        if not isinstance(fs, fsspec.AbstractFileSystem):
            raise error from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def exists(location: str | Path) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    fs, path = open_uri(str(location))
    # on object storage a folder exists once an object is under it
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def version(location: str | Path) -> str:
    """What changes when the file at ``location`` is rewritten (a retrained teacher)."""
    if not is_uri(location):
        return f"{location}@{Path(location).stat().st_mtime}"
    fs, path = open_uri(str(location))
    info = fs.get_file_info(path)
    return f"{location}@{info.mtime_ns or ''}:{info.size}"


def write_bytes(location: str | Path, data: bytes) -> None:
    if not is_uri(location):
        Path(location).write_bytes(data)
        return
    fs, path = open_uri(str(location))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def delete(location: str | Path) -> None:
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = open_uri(str(location))
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_file(path)


def upload(local: Path, uri: str) -> None:
    """Copy a local file to ``uri`` so that no reader ever sees half of it: an object store's
    put (S3, GCS) is atomic; a filesystem (file://, fsspec's) gets a temporary name and a move."""
    fs, path = open_uri(uri)
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    # by name: a pyarrow built without S3 or GCS support lacks the class
    atomic_put = type(fs).__name__ in ("S3FileSystem", "GcsFileSystem")
    target = path if atomic_put else f"{folder}/.{name}.{os.getpid()}.tmp"
    try:
        with open(local, "rb") as src, fs.open_output_stream(target) as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
        if target != path:
            fs.move(target, path)
    except BaseException:
        if target != path and fs.get_file_info(target).type != pafs.FileType.NotFound:
            fs.delete_file(target)
        raise


def download(location: str | Path, local: Path) -> None:
    fs, path = open_uri(str(location))
    local.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(path) as src, open(local, "wb") as out:
        while chunk := src.read(8 << 20):
            out.write(chunk)


def download_tree(uri: str, local: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file under ``uri`` (but those under a top-level folder in ``skip``) to ``local``;
    returns their relative paths (none: nothing there)."""
    fs, base = open_uri(uri)
    base = base.rstrip("/")
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    names = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        rel = info.path[len(base) + 1:]
        if info.type == pafs.FileType.File and rel.split("/", 1)[0] not in skip:
            download(f"{uri.rstrip('/')}/{rel}", local / rel)
            names.append(rel)
    return names


def write_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """Write a local file through a temporary file in the same folder and a rename: a reader
    (or a crash) sees the old file or the new one, never half of one. ``write(tmp_path)``
    writes the content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: str | Path) -> tuple[int, str]:
    """Size in bytes and sha256 of a local file, read in 8 MiB chunks."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def save_torch(obj: Any, location: str | Path) -> tuple[int, str]:
    """``torch.save`` to a local path or a URI, through a temporary file: never a truncated
    file (a crashed trial leaves the old teacher or none). Returns the file's size in bytes
    and its sha256, read from the temporary file before it takes its name."""
    import torch

    if is_uri(location):
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / name_of(location)
            torch.save(obj, local)
            digest = file_digest(local)
            upload(local, str(location))
        return digest
    digests: list[tuple[int, str]] = []

    def write(tmp: str) -> None:
        torch.save(obj, tmp)
        digests.append(file_digest(tmp))

    write_atomic(location, write)
    return digests[0]


def load_torch(location: str | Path, map_location: Any = "cpu") -> Any:
    import torch

    if not is_uri(location):
        return torch.load(location, map_location=map_location, weights_only=True)
    with tempfile.TemporaryDirectory() as folder:
        download(location, Path(folder) / name_of(location))
        return torch.load(Path(folder) / name_of(location), map_location=map_location,
                          weights_only=True)


def check_writable(uri: str) -> None:
    """Write and delete a small object under ``uri``; raises OSError/ValueError if the storage
    is unreachable or read-only."""
    target = join(uri, f".kdtune-write-test-{os.getpid()}")
    write_bytes(target, b"x")
    delete(target)


def tune_storage(uri: str) -> dict[str, Any]:
    """``tune.RunConfig`` arguments that put Tune's experiment folder (trial checkpoints) at
    ``uri``: a filesystem object, so schemes only fsspec knows work as well."""
    fs, path = open_uri(uri)
    return {"storage_path": path, "storage_filesystem": fs}


def staging_root() -> Path:
    """Where the driver keeps run directories whose storage is a URI (``KDTUNE_STAGING``)."""
    return Path(os.environ.get("KDTUNE_STAGING")
                or Path.home() / ".cache" / "kdtune" / "runs").expanduser().resolve()


def staging_dir(run_uri: str) -> Path:
    return staging_root() / name_of(run_uri)


class RunMirror:
    """Copies a staging run directory's files to its URI, each one again whenever it changed.

    ``tune/`` is never in staging (Tune writes straight to the URI); hidden files are the
    temporary files of atomic writes. A parts dataset (``trials.parquet``, a link to a folder
    of parts) goes up part by part under its own name, ``URI/trials.parquet/part-...``: a sync
    after a finished trial uploads the one new part it is told of, whatever the run's size;
    :meth:`reconcile` makes the remote parts match the local ones (after a compaction).
    """

    def __init__(self, local: Path, uri: str) -> None:
        self.local, self.uri = Path(local), uri
        self._sent: dict[str, tuple[int, int]] = {}
        self._parts: dict[str, set[str]] = {}  # dataset -> its part names at the URI

    def _files(self) -> list[Path]:
        """The run's plain files: walked without following links (a parts dataset's link is
        synced part by part, not walked)."""
        out = []
        for folder, dirs, files in os.walk(self.local):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and not Path(folder, d).is_symlink())
            out += [Path(folder, f) for f in sorted(files) if not f.startswith(".")
                    and not f.endswith(".lock") and not Path(folder, f).is_symlink()]
        return out

    def sync(self, parts: list[Path] | None = None) -> int:
        """Upload what changed since the last call, and the given new ``parts`` of parts
        datasets; returns how many files were uploaded."""
        sent = 0
        for path in self._files():
            rel = path.relative_to(self.local).as_posix()
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._sent.get(rel) != stamp:
                upload(path, f"{self.uri}/{rel}")
                self._sent[rel] = stamp
                sent += 1
        for part in parts or []:
            dataset = self._dataset_of(part)
            upload(part, f"{self.uri}/{dataset}/{part.name}")
            self._parts.setdefault(dataset, set()).add(part.name)
            sent += 1
        return sent

    def _dataset_of(self, part: Path) -> str:
        """``trials.parquet`` for a part in ``.trials.parquet.v3/``."""
        return part.parent.name.lstrip(".").rsplit(".v", 1)[0]

    def reconcile(self) -> None:
        """Make every parts dataset at the URI hold exactly the local parts."""
        for link in sorted(p for p in self.local.iterdir() if p.is_symlink() and p.is_dir()):
            local = {p.name: p for p in link.resolve().iterdir() if p.name.startswith("part-")}
            remote = self._remote_parts(link.name)
            for name, path in sorted(local.items()):
                if name not in remote or name not in self._parts.get(link.name, set()):
                    upload(path, f"{self.uri}/{link.name}/{name}")
            for name in sorted(remote - set(local)):
                delete(f"{self.uri}/{link.name}/{name}")
            self._parts[link.name] = set(local)

    def _remote_parts(self, dataset: str) -> set[str]:
        fs, path = open_uri(f"{self.uri}/{dataset}")
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return {i.path.rsplit("/", 1)[-1] for i in infos if i.type == pafs.FileType.File}
