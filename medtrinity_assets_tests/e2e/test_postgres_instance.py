"""The production instance (deploy/dagster.postgres.yaml) on a real PostgreSQL server: a demo
source's partition materialized through the project's assets, its materializations, check
results and pool slots read back from Postgres by a new instance and by SQL; nothing written to
SQLite. The embedded default (dagster_home/dagster.yaml) stays SQLite."""

from __future__ import annotations

import shutil

import dagster as dg
import duckdb
import pytest
from services import ensure_partition, postgres_server  # noqa: F401  (postgres_server: a fixture)

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import fetch_package_files
from medtrinity_assets.defs.assets import ASSETS_BY_NAME
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.duckdb_sql import read_parquet
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.pipeline import STAGE

pytestmark = pytest.mark.slow

TEMPLATE = REPO_ROOT / "deploy" / "dagster.postgres.yaml"
SOURCE = "demo_microscopy_cell"
# Ingest to coarse captions: no knowledge base needed, model_rois takes a slot of the "gpu" pool.
STAGES = ["raw_records", "normalized_images", "rois", "model_rois", "facts", "coarse_captions"]


@pytest.fixture
def postgres_home(isolated_env, postgres_server, monkeypatch):
    shutil.copy(TEMPLATE, isolated_env["dagster_home"] / "dagster.yaml")
    for name, value in postgres_server.env().items():
        monkeypatch.setenv(name, value)
    fetch_package_files(load_catalog()[SOURCE], isolated_env["raw"] / SOURCE)
    return isolated_env


def test_a_partition_materialized_on_the_postgres_instance_is_read_back_from_postgres(postgres_home, postgres_server):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assets = [ASSETS_BY_NAME[name] for name in STAGES]
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        # What the template promises: monitoring, retries of crashed runs only, pools at 1.
        assert instance.run_monitoring_enabled and instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        ensure_partition(instance, assets[0].partitions_def, SOURCE)
        result = dg.materialize(
            assets, partition_key=SOURCE, instance=instance, resources={"settings": PipelineSettings()}, raise_on_error=False
        )
        assert result.success
        run_id = result.run_id

    root = DataRoot.from_env()
    # A new instance (new connections) reads what the run wrote.
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        for name in STAGES:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[SOURCE]), limit=5
            ).records
            assert [r.run_id for r in records] == [run_id], name
            on_disk = duckdb.sql(f"SELECT count(*) FROM {read_parquet(STAGE[name].table(root, SOURCE))}").fetchall()[0][0]
            assert records[0].asset_materialization.metadata["dagster/row_count"].value == on_disk, name
        checks = [
            r.event_log_entry.dagster_event.event_specific_data
            for r in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        ]
        expected = {(name, check.name) for name in STAGES for check in STAGE[name].checks}
        assert {(c.asset_key.to_user_string(), c.check_name) for c in checks} == expected
        assert [c.check_name for c in checks if not c.passed] == []
        # model_rois took a slot of the gpu pool (limit 1 from default_limit) and gave it back.
        gpu = instance.event_log_storage.get_concurrency_info("gpu")
        assert gpu.slot_count == 1 and gpu.claimed_slots == []

    # The same rows seen by SQL: Dagster wrote its event log to this server, not to SQLite.
    connection = postgres_server.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT asset_key, partition FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                (run_id,),
            )
            rows = cursor.fetchall()
            cursor.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
            status = cursor.fetchone()
    finally:
        connection.close()
    assert sorted(rows) == sorted((dg.AssetKey(name).to_string(), SOURCE) for name in STAGES)
    assert status == ("SUCCESS",)
    assert not list(postgres_home["dagster_home"].rglob("*.db"))


def test_the_embedded_instance_stays_sqlite(tmp_path, monkeypatch):
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    from dagster._core.storage.runs import SqliteRunStorage

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, SqliteRunStorage)
