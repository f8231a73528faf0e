"""Atomic, streaming writes of tables and content-addressed blobs.

A killed run must leave no half-written file: every write goes to a temporary file in the
same folder and is renamed into place only once it is complete (rename is atomic on POSIX).
Tables are written batch by batch so a stage's memory does not grow with its partition.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temporaries(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


class TableWriter:
    """Write a Parquet table in batches of rows (dicts), atomically.

    ``schema`` fixes column types so an empty partition still yields a readable table with the
    right columns, and so batches cannot drift in type.
    """

    def __init__(self, final: Path, schema: pa.Schema, batch_rows: int = 512):
        self.final = Path(final)
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


def write_table(final: Path, schema: pa.Schema, rows: Iterable[dict]) -> int:
    with TableWriter(final, schema) as writer:
        writer.write_all(rows)
    return writer.rows_written


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Content-addressed files: ``<root>/<kind>/<sha[:2]>/<sha>.<ext>``.

    The same content always lands at the same path, so a rerun rewrites nothing and two sources
    holding the same image share one file. Paths handed out are relative to the data root so
    the tables stay valid when the root moves.
    """

    def __init__(self, data_root: Path):
        self.data_root = Path(data_root)

    def put(self, kind: str, data: bytes, ext: str) -> tuple[str, str]:
        digest = sha256_bytes(data)
        rel = f"blobs/{kind}/{digest[:2]}/{digest}.{ext}"
        final = self.data_root / rel
        if not final.exists():
            write_bytes_atomic(final, data)
        return digest, rel

    def path(self, rel: str) -> Path:
        return self.data_root / rel

    def put_array(self, kind: str, array: np.ndarray) -> tuple[str, str]:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        return self.put(kind, buffer.getvalue(), "npy")

    def get_array(self, rel: str) -> np.ndarray:
        return np.load(self.path(rel), allow_pickle=False)
