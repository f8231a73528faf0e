"""Real PostgreSQL and Redis servers for tests, from the Debian packages' binaries.

Each server runs on 127.0.0.1 on a free port, with its data (and PostgreSQL's unix socket) in a
throw-away folder, and is stopped when the fixture ends, failed test or not: the whole process
group is killed if a polite shutdown does not finish. Where a binary is missing the test is
skipped with the Debian package to install; under CI=true it fails instead, so CI cannot pass by
skipping. A plain module, not a conftest.py: tests import the fixtures by name
(``from services import postgres_server``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# initdb and postgres refuse to run as root; a root test process (CI containers) runs them as this user.
UNPRIVILEGED_USER = "nobody"


def missing_service(message: str) -> None:
    """Skip the test naming what to install, or fail it under CI=true (CI must not pass by skipping)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: required)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin_dir() -> Path | None:
    """Where initdb and postgres are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin
    (the newest version when several are installed)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).parent
    versions = sorted(
        (folder for folder in Path("/usr/lib/postgresql").glob("*/bin") if (folder / "initdb").is_file()),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


def redis_binary() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def _wait_port(port: int, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening; its log: {log}\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s; its log: {log}\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Send ``sig`` to the process (started with start_new_session=True, so it leads its own
    group), wait, then SIGKILL its whole group: no server or worker child outlives the test."""
    if process.poll() is None:
        try:
            os.kill(process.pid, sig)
            process.wait(timeout=timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass


def _owner() -> dict:
    """Popen arguments that drop root for PostgreSQL (empty when the test is not root)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        missing_service(f"running as root, and PostgreSQL refuses root: no user '{UNPRIVILEGED_USER}' to run it as")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    socket_dir: Path
    log: Path

    def connect(self, database: str | None = None):
        """A psycopg2 connection over TCP with the password (what Dagster does)."""
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database or self.database
        )

    def env(self) -> dict[str, str]:
        """The environment deploy/dagster.postgres.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.database,
        }


@contextmanager
def running_postgres(database: str = "dagster") -> Iterator[PostgresServer]:
    """A PostgreSQL server in a fresh cluster, password authentication on (scram-sha-256) for
    TCP, ``database`` created; stopped and its folder removed on exit."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        missing_service("PostgreSQL binaries (initdb, postgres) not found: install the Debian package postgresql")
    owner = _owner()
    # Not pytest's tmp_path: its parents are private to root, and the server may run as nobody
    # (who must reach the folder: /tmp, not a TMPDIR inside root's home).
    folder = Path(tempfile.mkdtemp(prefix="medtrinity-pg-", dir="/tmp" if owner and os.path.isdir("/tmp") else None))
    process = None
    try:
        if owner:
            os.chown(folder, owner["user"], owner["group"])
        password = f"pw-{os.urandom(8).hex()}"
        (folder / "pwfile").write_text(password + "\n")
        if owner:
            os.chown(folder / "pwfile", owner["user"], owner["group"])
        log = folder / "postgres.log"
        data = folder / "data"
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "dagster", f"--pwfile={folder / 'pwfile'}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"],
            cwd=folder, capture_output=True, text=True, **owner,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}) in {data}:\n{initdb.stderr or initdb.stdout}")
        port = free_port()
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(folder),
             # A throw-away cluster: durability buys nothing here and costs seconds per test.
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            cwd=folder, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, **owner,
        )
        _wait_port(port, process, log, "postgres")
        server = PostgresServer("127.0.0.1", port, "dagster", password, database, folder, log)
        _wait_accepting(server)
        admin = server.connect("postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        admin.close()
        yield server
    finally:
        if process is not None:
            # SIGINT: PostgreSQL's fast shutdown (sessions aborted, clean checkpoint).
            stop_process_group(process, signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_accepting(server: PostgresServer) -> None:
    """The port opens before the cluster accepts sessions ("the database system is starting up")."""
    import psycopg2

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            server.connect("postgres").close()
            return
        except psycopg2.OperationalError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres on port {server.port} refuses sessions: {error}; its log: {server.log}") from error
            time.sleep(0.2)


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    folder: Path
    log: Path

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


@contextmanager
def running_redis(folder: Path) -> Iterator[RedisServer]:
    """redis-server on 127.0.0.1 with no persistence, its working folder ``folder``; stopped
    (process group killed) on exit."""
    binary = redis_binary()
    if binary is None:
        missing_service("redis-server not found: install the Debian package redis-server")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "redis.log"
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""],
        cwd=folder, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_port(port, process, log, "redis-server")
        yield RedisServer("127.0.0.1", port, folder, log)
    finally:
        stop_process_group(process, signal.SIGTERM)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


def ensure_partition(instance, partitions_def, key: str) -> None:
    """Register ``key`` when the source partitions are dynamic (added by the sensor in a running
    deployment); static partitions need nothing."""
    import dagster as dg

    if isinstance(partitions_def, dg.DynamicPartitionsDefinition) and not instance.has_dynamic_partition(partitions_def.name, key):
        instance.add_dynamic_partitions(partitions_def.name, [key])
