"""The local Dagster instance: storage created once, and runs whose process died marked failed.

Two things the embedded SQLite instance does not do on its own:

- Two processes starting on a fresh ``DAGSTER_HOME`` at once (``dagster dev`` starts the webserver
  and the daemon together; ``make demo`` next to ``make ui``) both create the SQLite tables and can
  leave them half-stamped. ``ensure_instance`` creates them once, under a file lock, before any run.
- Dagster's run monitoring asks the run launcher whether a STARTED run's process is alive, but the
  default launcher cannot answer, so a run whose process was killed (``kill -9``, the OOM killer, a
  crashed ``dagster dev`` or CLI) stays STARTED forever and holds one of the queue's slots.
  ``LivenessCheckingRunLauncher`` answers from the process id the run recorded.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dagster import DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

from medtrinity_assets.paths import REPO_ROOT, env_overrides

INITIALIZED_MARKER = ".storage-initialized"
# /proc start times are whole clock ticks after a boot time in whole seconds.
_START_TIME_SLACK_SECONDS = 2.0


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / "dagster_home").expanduser().resolve()


def ensure_instance(home: Path | None = None) -> Path:
    """Create the instance's storage under ``home`` (default: ``DAGSTER_HOME``) unless a previous
    call did; concurrent callers wait on a lock in that folder, so only one creates the tables."""
    import dagster as dg

    home = Path(home).resolve() if home else dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    # In history/ (the run storage's folder): `make clean` removes it with the storage.
    marker = home / "history" / INITIALIZED_MARKER
    if marker.exists():
        return home
    with open(home / ".storage-init.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            with env_overrides(DAGSTER_HOME=home), dg.DagsterInstance.get() as instance:
                # The SQLite storages create and stamp their tables when the instance is built;
                # reading each one makes sure they exist before the lock is released.
                instance.get_runs(limit=1)
                instance.all_instigator_state()
                instance.get_asset_keys()
            marker.parent.mkdir(exist_ok=True)
            marker.write_text("Dagster storage created by medtrinity_assets.instance.ensure_instance\n")
    return home


def _linux_process(pid: int) -> tuple[str, float] | None:
    """State letter and start time (epoch seconds) of a process from /proc, None when absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces or parentheses: fields count from the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    started = int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0], started


def process_alive(pid: int, not_after: float | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process that already existed at ``not_after``;
    a process started later only reuses the number of the one that died."""
    if Path("/proc/stat").exists():
        found = _linux_process(pid)
        if found is None:
            return False
        state, started = found
        if state in ("Z", "X"):
            return False
        return not_after is None or started <= not_after + _START_TIME_SLACK_SECONDS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LivenessCheckingRunLauncher(DefaultRunLauncher):
    """The default launcher, plus the health check run monitoring needs: a STARTED run is alive
    while the process executing it is. Its pid is in the run's first engine events: "Started
    process for run (pid: N)" from a run worker, "Executing steps in process (pid: N)" from a run
    executed in the caller's process (the CLI's runs). Local SQLite instance: one host."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def _run_pid(self, run_id: str) -> int | None:
        from dagster import DagsterEventType

        records = self._instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT, limit=10).records
        for record in records:
            event = record.event_log_entry.dagster_event
            metadata = event.event_specific_data.metadata if event and event.event_specific_data else {}
            if "pid" in metadata:
                return int(metadata["pid"].value)
        return None

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        pid = self._run_pid(run.run_id)
        if pid is None:
            # Nothing to check: leave the run alone (any answer but RUNNING would fail it).
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no process id recorded for this run")
        record = self._instance.get_run_record_by_id(run.run_id)
        if process_alive(pid, not_after=record.start_time if record else None):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"process {pid} is alive")
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run's process {pid} is gone (killed or crashed)")


if __name__ == "__main__":
    # `make ui` and `make demo` create the storage here before starting anything that uses it.
    print(f"Dagster instance ready in {ensure_instance()}")
