"""Runs that survive a crash, on a real instance: the shipped dagster.yaml, a real daemon, real
run worker processes killed with SIGKILL, and concurrent first starts on a fresh DAGSTER_HOME."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from medtrinity_assets.paths import REPO_ROOT

SHIPPED_INSTANCE = REPO_ROOT / "dagster_home" / "dagster.yaml"
WORKTREE = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The shipped run monitoring polls every 15 s; a dead run must be failed within this.
FAILED_WITHIN_SECONDS = 90

SLEEPY_LOCATION = '''
import os, time
from pathlib import Path
import dagster as dg

@dg.op
def nap(context):
    # The op runs in the run worker itself (in-process executor): this pid is the run's process.
    (Path(os.environ["PID_DIR"]) / f"{context.run_id}.pid").write_text(str(os.getpid()))
    time.sleep(300)

@dg.job(executor_def=dg.in_process_executor)
def sleepy():
    nap()

defs = dg.Definitions(jobs=[sleepy])
'''


def _env(home: Path, pid_dir: Path) -> dict[str, str]:
    # PYTHONPATH: the daemon, code server and run workers import this checkout's package
    # (the shipped dagster.yaml names its run launcher).
    return {**os.environ, "DAGSTER_HOME": str(home), "PID_DIR": str(pid_dir), "PYTHONPATH": str(WORKTREE)}


@pytest.fixture
def shipped_instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(SHIPPED_INSTANCE, home / "dagster.yaml")
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    (tmp_path / "sleepy.py").write_text(SLEEPY_LOCATION)
    (tmp_path / "workspace.yaml").write_text(f"load_from:\n  - python_file: {tmp_path / 'sleepy.py'}\n")
    # Storage created before any process starts (concurrent first starts are tested below).
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.upgrade()
    return home, pid_dir, tmp_path


def _start_daemon(folder: Path, env: dict) -> subprocess.Popen:
    # Own session: the daemon ignores SIGTERM in the background, so it is stopped with its group.
    return subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(folder / "workspace.yaml")],
        cwd=folder,
        env=env,
        stdout=open(folder / f"daemon-{time.time_ns()}.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _launch(folder: Path, env: dict) -> None:
    subprocess.run(
        [str(BIN / "dagster"), "job", "launch", "-w", str(folder / "workspace.yaml"), "-j", "sleepy"],
        cwd=folder, env=env, check=True, capture_output=True,
    )


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"not within {seconds:.0f}s: {what}")


@pytest.mark.slow
def test_killed_run_workers_are_failed_and_queued_run_starts(shipped_instance):
    """Two runs' processes die with the daemon and its code server (kill -9 of the whole group,
    as in a crash of `dagster dev`): with the shipped queue limit of 2 they held both slots
    forever. After a restart, run monitoring fails them and the queued run starts."""
    home, pid_dir, folder = shipped_instance
    env = _env(home, pid_dir)
    instance = dg.DagsterInstance.from_config(str(home))
    daemon = _start_daemon(folder, env)
    try:
        _launch(folder, env)
        _launch(folder, env)
        pid_files = _wait_for(
            lambda: found if len(found := sorted(pid_dir.glob("*.pid"))) == 2 else None, 120, "both runs started"
        )
        crashed = {p.stem: int(p.read_text()) for p in pid_files}
        _launch(folder, env)
        queued = _wait_for(
            lambda: [r.run_id for r in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))],
            30, "third run queued",
        )[0]

        _kill_group(daemon)
        for pid in crashed.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_for(lambda: all(_gone(pid) for pid in crashed.values()), 30, "run workers dead")
        assert {instance.get_run_by_id(r).status for r in crashed} == {dg.DagsterRunStatus.STARTED}

        daemon = _start_daemon(folder, env)
        started = time.monotonic()

        def recovered():
            failed = all(instance.get_run_by_id(r).status == dg.DagsterRunStatus.FAILURE for r in crashed)
            return failed and instance.get_run_by_id(queued).status != dg.DagsterRunStatus.QUEUED

        _wait_for(recovered, FAILED_WITHIN_SECONDS, "crashed runs FAILURE and the queued run launched")
        print(f"recovered {time.monotonic() - started:.0f}s after the daemon restarted")
        # The crashed runs are re-executed once (run_retries), not their own steps' failures.
        _wait_for(
            lambda: {r.tags.get("dagster/parent_run_id") for r in instance.get_runs()} >= set(crashed),
            FAILED_WITHIN_SECONDS, "a retry of each crashed run",
        )
    finally:
        _kill_group(daemon)
        for pid_file in pid_dir.glob("*.pid"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


CLI_RUN = '''
import time
import dagster as dg
from medtrinity_assets.cli import RUN_TAGS

@dg.asset
def slow_asset():
    print("running", flush=True)
    time.sleep(300)

dg.materialize([slow_asset], instance=dg.DagsterInstance.get(), tags=RUN_TAGS)
'''


@pytest.mark.slow
def test_killed_cli_process_run_is_failed(shipped_instance):
    """A run executed in the CLI's own process (make demo) and killed there has no run worker
    Dagster knows of: it stayed STARTED. Run monitoring fails it (its pid is in its events)."""
    home, pid_dir, folder = shipped_instance
    env = _env(home, pid_dir)
    instance = dg.DagsterInstance.from_config(str(home))
    daemon = _start_daemon(folder, env)
    cli = subprocess.Popen([sys.executable, "-c", CLI_RUN], cwd=WORKTREE, env=env,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert cli.stdout.readline().strip() == "running"
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED
        cli.kill()
        cli.wait()
        _wait_for(lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE,
                  FAILED_WITHIN_SECONDS, "the killed CLI run marked FAILURE")
        # Its job exists only in the CLI process: no retry is attempted.
        time.sleep(5)
        assert len(instance.get_runs()) == 1
    finally:
        cli.kill()
        _kill_group(daemon)


def test_a_running_run_is_not_failed_by_the_health_check():
    """The other side: a live process, and a pid whose process started after the run did
    (the number was reused), are told apart."""
    from medtrinity_assets.instance import process_alive

    assert process_alive(os.getpid(), not_after=time.time())
    assert not process_alive(os.getpid(), not_after=time.time() - 3600)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)


FIRST_START = '''
import sys, time
import dagster as dg
from medtrinity_assets.cli import _instance
start_at = float(sys.argv[1])
while time.time() < start_at:  # every process reaches the instance at the same moment
    time.sleep(0.002)
instance = _instance()
instance.get_runs(limit=1)
instance.all_instigator_state()
print("ok")
'''


def test_concurrent_first_starts_leave_one_alembic_head(tmp_path):
    """Several first starts on one fresh DAGSTER_HOME at once (make ui's webserver and daemon, a
    CLI run next to them) used to interleave table creation: two alembic heads in one SQLite
    file, and every later call failed (5 starters: 3 failures in 3 tries before the lock)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(SHIPPED_INSTANCE, home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(WORKTREE)}
    start_at = str(time.time() + 8)
    starters = [
        subprocess.Popen([sys.executable, "-c", FIRST_START, start_at], cwd=WORKTREE, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(5)
    ]
    outputs = [starter.communicate(timeout=180)[0] for starter in starters]
    heads = {}
    for db in sorted(home.rglob("*.db")):
        with sqlite3.connect(db) as con:
            heads[db.relative_to(home).as_posix()] = [row[0] for row in con.execute("SELECT version_num FROM alembic_version")]
    assert heads and all(len(found) == 1 for found in heads.values()), heads
    assert all(out.strip().endswith("ok") for out in outputs), outputs
    later = subprocess.run([sys.executable, "-c", FIRST_START, "0"], cwd=WORKTREE, env=env,
                           capture_output=True, text=True, timeout=120)
    assert later.stdout.strip().endswith("ok"), later.stderr[-2000:]
