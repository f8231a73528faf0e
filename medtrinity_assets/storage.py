"""Atomic, streaming writes of tables and content-addressed blobs, with one file mode.

A killed run must leave no half-written file: every write goes to a temporary file in the
same folder and is renamed into place only once it is complete (rename is atomic on POSIX).
Tables are written batch by batch so a stage's memory does not grow with its partition.

On a data root on an object store (objectstore.py) the temporary is a local file and "rename
into place" is its upload to the final key, which the store makes visible only once complete;
blobs go up in one PUT. Modes do not apply there: the bucket's policy decides who reads.

Every file the pipeline writes gets ``file_mode()`` and every folder it creates ``dir_mode()``
(README, "File modes"): set explicitly, so the umask of a shell, a cron job or the Dagster
daemon cannot make one table world-readable and the next export unreadable to the group.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medtrinity_assets import objectstore


FILE_MODE_ENV = "MEDTRINITY_FILE_MODE"
# Owner read-write, group read: a training job of the data's group reads the exports, blobs
# and tables; other users of the machine read nothing (the tables hold patient hashes, labels
# and, unless pseudonymized, file names).
DEFAULT_FILE_MODE = 0o640
# The patient-hash salt is a key, not data: owner only, whatever the policy.
SECRET_FILE_MODE = 0o600


def file_mode() -> int:
    """The mode of every file the pipeline writes: ``MEDTRINITY_FILE_MODE`` (octal) or 0640.
    Owner read-write always; group and others may read, never write or execute."""
    raw = os.environ.get(FILE_MODE_ENV, "").strip()
    if not raw:
        return DEFAULT_FILE_MODE
    try:
        mode = int(raw, 8)
    except ValueError:
        raise ValueError(f"{FILE_MODE_ENV}={raw!r} is not an octal file mode such as 0640") from None
    if mode & ~0o644 or mode & 0o600 != 0o600:
        raise ValueError(f"{FILE_MODE_ENV}={raw!r}: data files are read-write for their owner and at most "
                         "readable by group and others (0600, 0640 or 0644)")
    return mode


def dir_mode(mode: int | None = None) -> int:
    """The folder mode matching a file mode: searchable wherever readable (0640 -> 0750)."""
    mode = file_mode() if mode is None else mode
    return mode | (mode & 0o444) >> 2


def make_dirs(folder: Path, mode: int | None = None) -> None:
    """Create ``folder`` and its missing parents with ``dir_mode(mode)``; existing folders are left as they are."""
    folder = Path(folder)
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:
            continue  # a concurrent writer made it, with the same policy
        os.chmod(created, dir_mode(mode))


def apply_modes(tree: Path) -> None:
    """Give a folder written by another library (Chroma) the policy: ``dir_mode`` on its folders,
    ``file_mode`` on its files."""
    tree = Path(tree)
    os.chmod(tree, dir_mode())
    for folder, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dir_mode(), follow_symlinks=False)
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), file_mode())


def _target(final):
    """A local ``Path`` or a remote ``UPath`` (a string URL is opened as a data root would be)."""
    return final if isinstance(final, Path) else objectstore.as_root(final)


@contextmanager
def atomic_path(final, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success, with
    ``mode`` (default ``file_mode()``) set first, whoever wrote the temporary (DuckDB's COPY
    recreates it with the umask's mode).

    When ``final`` is on an object store the temporary is a local file (under the local home's
    tmp/), uploaded to ``final`` only on success: the yielded path is always a local ``Path``,
    so DuckDB's COPY and pyarrow write to it as they would locally."""
    final = _target(final)
    if objectstore.is_remote(final):
        with _atomic_upload(final) as tmp:
            yield tmp
        return
    mode = file_mode() if mode is None else mode
    make_dirs(final.parent, mode)
    _remove_orphaned_temporaries(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def _atomic_upload(final) -> Iterator[Path]:
    scratch = objectstore.local_home() / "tmp"
    make_dirs(scratch)
    # Named after the key's file name, with the pid, so the orphan sweep below applies here too.
    _remove_orphaned_temporaries(scratch / final.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=scratch)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        objectstore.upload_file(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_orphaned_temporaries(final: Path) -> None:
    """Delete temporaries left by killed writers of ``final`` (their process no longer exists).

    The writer's pid is in the temporary's name, so a live concurrent writer's file is kept.
    """
    for tmp in final.parent.glob(f".{final.name}.*.tmp"):
        pid_part = tmp.name[len(final.name) + 2 :].split(".", 1)[0]
        if not pid_part.isdigit() or int(pid_part) == os.getpid():
            continue
        try:
            os.kill(int(pid_part), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, owned by someone else


def write_bytes_atomic(final, data: bytes, mode: int | None = None) -> None:
    final = _target(final)
    if objectstore.is_remote(final):
        objectstore.put_bytes(final, data)  # one PUT: all or nothing
        return
    with atomic_path(final, mode) as tmp:
        tmp.write_bytes(data)


class TableWriter:
    """Write a Parquet table in batches of rows (dicts), atomically.

    ``schema`` fixes column types so an empty partition still yields a readable table with the
    right columns, and so batches cannot drift in type.
    """

    def __init__(self, final, schema: pa.Schema, batch_rows: int = 512):
        self.final = _target(final)
        self.schema = schema
        self.batch_rows = batch_rows
        self._pending: list[dict] = []
        self.rows_written = 0

    def __enter__(self) -> "TableWriter":
        self._ctx = atomic_path(self.final)
        tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd")
        return self

    def write(self, row: dict) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def write_all(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.write(row)

    def _flush(self) -> None:
        if not self._pending:
            return
        columns = {name: [r.get(name) for r in self._pending] for name in self.schema.names}
        self._writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))
        self.rows_written += len(self._pending)
        self._pending = []

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
        self._writer.close()
        self._ctx.__exit__(exc_type, exc, tb)


def write_table(final, schema: pa.Schema, rows: Iterable[dict]) -> int:
    with TableWriter(final, schema) as writer:
        writer.write_all(rows)
    return writer.rows_written


def sha256_file(path: Path) -> str:
    """The sha256 of a local file, read in 1 MiB blocks (weights, triplets files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Content-addressed files: ``<root>/<kind>/<sha[:2]>/<sha>.<ext>``.

    The same content always lands at the same path, so a rerun rewrites nothing and two sources
    holding the same image share one file. Paths handed out are relative to the data root so
    the tables stay valid when the root moves.

    ``data_root`` may be on an object store (a ``UPath``, or a URL): blobs then go up in one PUT
    each and are read back through the root's filesystem; ``path`` hands out a local copy.
    """

    def __init__(self, data_root):
        self.data_root = _target(data_root)
        self.remote = objectstore.is_remote(self.data_root)

    def put(self, kind: str, data: bytes, ext: str) -> tuple[str, str]:
        digest = sha256_bytes(data)
        rel = f"blobs/{kind}/{digest[:2]}/{digest}.{ext}"
        final = self.data_root / rel
        if not final.exists():
            write_bytes_atomic(final, data)
        return digest, rel

    def path(self, rel: str) -> Path:
        """A local file holding blob ``rel``: the blob itself on a local root; on an object store
        a copy in the local home's cache/ (fetched once, checked against its sha256 name)."""
        if not self.remote:
            return self.data_root / rel
        cached = objectstore.cache_path(rel)
        if not cached.exists():
            write_bytes_atomic(cached, self.read_bytes(rel))
        return cached

    def read_bytes(self, rel: str) -> bytes:
        """The blob's bytes; from an object store, checked against the sha256 its name holds."""
        if not self.remote:
            return (self.data_root / rel).read_bytes()
        source = self.data_root / rel
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {source} does not exist in the object store") from None
        expected = PurePosixPath(rel).name.split(".", 1)[0]
        if len(expected) == 64 and sha256_bytes(data) != expected:
            raise ValueError(f"blob {source} does not hash to the sha256 its name holds: the object was altered")
        return data

    def put_array(self, kind: str, array: np.ndarray) -> tuple[str, str]:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        return self.put(kind, buffer.getvalue(), "npy")

    def get_array(self, rel: str) -> np.ndarray:
        if self.remote:
            return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)
        return np.load(self.path(rel), allow_pickle=False)
