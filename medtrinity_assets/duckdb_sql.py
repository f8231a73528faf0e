"""The one place SQL text is built for DuckDB: literals, identifiers, Parquet relations,
connections and streamed rows.

Paths come from the environment (MEDTRINITY_HOME may hold an apostrophe, "o'brien's data"),
so no path is ever pasted into SQL between quotes by hand: ``literal`` escapes it, and queries
that take parameters bind them. Relations (``read_parquet(...)``) cannot be bound where they are
spliced into a larger statement (SQL models, COPY), hence the quoting helper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import duckdb

from medtrinity_assets import objectstore

PathLike = str | Path


def literal(value) -> str:
    """A SQL string literal: single quotes doubled, so any text or path is one value."""
    return "'" + str(value).replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A quoted SQL identifier (a column or table name)."""
    return '"' + str(name).replace('"', '""') + '"'


def read_parquet(paths: PathLike | Iterable[PathLike], *, union_by_name: bool = False) -> str:
    """``read_parquet(...)`` over one file, one glob or a list of them (paths, or URLs of a data
    root on an object store), quoted."""
    if isinstance(paths, (str, Path)) or objectstore.is_remote(paths):
        paths = [paths]
        target = literal(paths[0])
    else:
        paths = list(paths)
        target = "[" + ", ".join(literal(p) for p in paths) + "]"
    for path in paths:
        if objectstore.is_remote(path):  # connections opened from now on can read it
            objectstore.register_filesystem(path.fs)
    return f"read_parquet({target}{', union_by_name = true' if union_by_name else ''})"


def connect(path: PathLike | None = None, *, memory_limit: str | None = None, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory, or the database file ``path``), optionally capped so that
    large joins spill to disk instead of growing. A data root on an object store opened in this
    process is readable from it by URL (objectstore.attach)."""
    con = duckdb.connect(str(path)) if path is not None else duckdb.connect()
    objectstore.attach(con)
    if memory_limit is not None:
        con.execute(f"SET memory_limit = {literal(memory_limit)}")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    return con


def stream_rows(sql: str, batch_rows: int = 256) -> Iterator[dict]:
    """Rows of a query as dicts, streamed in record batches (memory bounded by the batch)."""
    con = connect()
    try:
        for batch in con.sql(sql).to_arrow_reader(batch_rows):
            yield from batch.to_pylist()
    finally:
        con.close()
