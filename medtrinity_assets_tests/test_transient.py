"""Which errors are retried: real errors raised by real calls where one can be made here (a
refused connection, a held DuckDB lock), the rest by errno; a wrapped cause counts."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import duckdb
import httpx
import openai
import pytest

from medtrinity_assets.transient import is_transient


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _raised(call) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


def test_refused_connections_are_transient():
    port = _closed_port()
    assert is_transient(_raised(lambda: socket.create_connection(("127.0.0.1", port), timeout=2)))
    assert is_transient(_raised(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2)))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=2)
    assert is_transient(_raised(client.models.list))


def test_a_duckdb_file_locked_by_another_process_is_transient_a_missing_file_is_not(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_transient(_raised(lambda: duckdb.connect(str(path))))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    missing = _raised(lambda: duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / 'none.parquet'}')").fetchall())
    assert isinstance(missing, duckdb.IOException) and not is_transient(missing)


@pytest.mark.parametrize("code", [errno.ESTALE, errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.ENETUNREACH])
def test_network_file_system_and_network_errnos_are_transient(code):
    assert is_transient(OSError(code, "from a mount"))


def test_errors_a_person_must_fix_are_not_transient(tmp_path):
    assert not is_transient(_raised(lambda: open(tmp_path / "absent.png", "rb")))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(OSError(errno.EACCES, "Permission denied"))
    assert not is_transient(ValueError("bad spec"))
    assert not is_transient(KeyError("column"))


def test_a_cause_decides_for_the_error_that_wraps_it():
    def wrapped(inner):
        try:
            raise inner
        except Exception as error:
            raise RuntimeError("stage failed") from error

    assert is_transient(_raised(lambda: wrapped(ConnectionResetError(errno.ECONNRESET, "reset"))))
    assert not is_transient(_raised(lambda: wrapped(ValueError("bug"))))
