"""dagster-celery on loopback: a real Redis broker, two Celery workers and the production
instance on a real PostgreSQL server, all started here. A demo source's partition is
materialized by the operator's command (``dagster asset materialize`` with
MEDTRINITY_EXECUTOR=celery); its steps must run in the workers, both workers must take steps
(facts and coarse_captions are ready together), and the tables and materializations must land."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from services import (  # noqa: F401  (postgres_server, redis_server: fixtures)
    ensure_partition,
    postgres_server,
    redis_server,
    stop_process_group,
)

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import fetch_package_files
from medtrinity_assets.defs.assets import ASSETS_BY_NAME
from medtrinity_assets.duckdb_sql import read_parquet
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.pipeline import STAGE

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TEMPLATE = REPO_ROOT / "deploy" / "dagster.postgres.yaml"
# The workers' settings, as shipped; the run's side has the same (defs/executors.py).
WORKER_CONFIG = REPO_ROOT / "deploy" / "celery.yaml"
SOURCE = "demo_microscopy_cell"
# Ingest to coarse captions (no knowledge base needed); facts and coarse_captions both wait on
# model_rois alone, so they are submitted together and two idle workers take one each.
STAGES = ["raw_records", "normalized_images", "rois", "model_rois", "facts", "coarse_captions"]
WORKERS = ("medtrinity-w1", "medtrinity-w2")
READY_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240


@pytest.fixture
def cluster(isolated_env, postgres_server, redis_server, tmp_path, monkeypatch):
    """The instance (Postgres template), the broker and two workers, one step at a time each (a
    busy worker reserves no second step, so steps ready together go to both); stopped after."""
    home = isolated_env["dagster_home"]
    (home / "dagster.yaml").write_text(TEMPLATE.read_text())
    for name, value in postgres_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MEDTRINITY_EXECUTOR", "celery")
    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", redis_server.url(0))
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", redis_server.url(1))
    fetch_package_files(load_catalog()[SOURCE], isolated_env["raw"] / SOURCE)
    env = {
        **os.environ,
        # The workers import this checkout (the job's code) and find `celery` beside this Python.
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MEDTRINITY_TORCH_THREADS": "1",
    }
    workers = []
    try:
        for name in WORKERS:
            log = open(tmp_path / f"{name}.log", "w")
            workers.append(
                subprocess.Popen(
                    [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(WORKER_CONFIG),
                     "-n", name, "--loglevel", "INFO", "--", "--concurrency=1"],
                    cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )
        hostnames = _wait_for_workers(workers, tmp_path)
        yield {"env": env, "workers": workers, "hostnames": hostnames, "logs": tmp_path}
    finally:
        # SIGTERM: Celery's warm shutdown; then the whole group (the CLI, celery, its pool child).
        for worker in workers:
            stop_process_group(worker, signal.SIGTERM, timeout_s=15)


def _wait_for_workers(workers: list[subprocess.Popen], logs: Path) -> set[str]:
    from dagster_celery.cli import get_validated_config
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    # The broker as the workers read it (environment references resolved).
    config = get_validated_config(str(WORKER_CONFIG))
    app = make_app(CeleryExecutor.for_cli(config["broker"], config["backend"], config_source=config["config_source"]).app_args())
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for worker, name in zip(workers, WORKERS):
            if worker.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {worker.returncode}:\n{(logs / f'{name}.log').read_text()[-3000:]}")
        answered = {next(iter(reply)) for reply in app.control.ping(timeout=1.0)}
        if {hostname.split("@")[0] for hostname in answered} >= set(WORKERS):
            return answered
        time.sleep(0.5)
    raise RuntimeError(f"the celery workers did not answer within {READY_TIMEOUT_S} s; logs in {logs}")


def _materialize(cluster) -> subprocess.CompletedProcess:
    """What an operator types; the run's orchestration runs in this process, its steps in the workers."""
    return subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "medtrinity_assets.definitions", "-a", "defs",
         "--select", ",".join(STAGES), "--partition", SOURCE],
        cwd=REPO_ROOT, env=cluster["env"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_partition_runs_its_steps_in_two_celery_workers(cluster):
    with dg.DagsterInstance.get() as instance:
        ensure_partition(instance, ASSETS_BY_NAME["raw_records"].partitions_def, SOURCE)

    done = _materialize(cluster)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 1
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == SOURCE
        events = [record.event_log_entry for record in instance.get_records_for_run(run.run_id).records]

        # Every step announced by a worker ("Executing steps X in celery worker"), naming it.
        taken = {}
        for entry in events:
            event = entry.dagster_event
            if event and event.event_type == dg.DagsterEventType.ENGINE_EVENT and "Celery worker" in event.event_specific_data.metadata:
                taken[event.step_key] = event.event_specific_data.metadata["Celery worker"].value
        assert set(taken) == set(STAGES)
        assert set(taken.values()) <= cluster["hostnames"]
        assert {hostname.split("@")[0] for hostname in taken.values()} == set(WORKERS), taken

        # The steps ran in the workers' processes: neither this process nor the orchestrating
        # one, and inside a worker's process group (its pool child), while the workers live.
        starts = {e.dagster_event.step_key: e.dagster_event.pid for e in events if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_START}
        orchestrator = {e.dagster_event.pid for e in events if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_START}
        assert set(starts) == set(STAGES)
        worker_groups = {worker.pid for worker in cluster["workers"]}
        for step, pid in starts.items():
            assert pid != os.getpid() and pid not in orchestrator, step
            assert _group_of(pid) in worker_groups, (step, pid)

        # The materializations landed (in Postgres) and match the tables the workers wrote.
        root = DataRoot.from_env()
        for name in STAGES:
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[SOURCE]), limit=1
            ).records
            assert record and record[0].run_id == run.run_id, name
            rows = duckdb.sql(f"SELECT count(*) FROM {read_parquet(STAGE[name].table(root, SOURCE))}").fetchall()[0][0]
            assert record[0].asset_materialization.metadata["dagster/row_count"].value == rows, name
            if name != "model_rois":  # no expert is trained here: model_rois has no row to write
                assert rows > 0, name
