"""Every asset materialized on a source partition through Dagster, with its checks; a partition
with bad files completes, quarantines them and reports it in a failing check."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import fetch_package_files
from medtrinity_assets.defs.assets import (
    ASSETS,
    PARTITIONED_ASSETS,
    knowledge_base,
    medtrinity_dataset,
)
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.defs.sql_models import SQL_ASSETS
from medtrinity_assets.paths import DataRoot, realdata_dir

pytestmark = pytest.mark.slow

REALDATA = realdata_dir()

ALL = [*ASSETS, *SQL_ASSETS]
# BUSI (real lesion masks) when the shared real data is here, else a demo source.
SOURCE = "busi" if (REALDATA / "busi").is_dir() else "demo_microscopy_cell"


def _materialize(instance, selection, partition=None):
    if partition and not instance.has_dynamic_partition("sources", partition):
        instance.add_dynamic_partitions("sources", [partition])  # as the sensor registers it
    return dg.materialize(
        ALL, selection=selection, partition_key=partition, instance=instance,
        resources={"settings": PipelineSettings()}, raise_on_error=False,
    )


def _checks(result) -> dict[tuple[str, str], object]:
    return {
        (e.asset_check_evaluation_data.asset_key.to_user_string(), e.asset_check_evaluation_data.check_name): e.asset_check_evaluation_data
        for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def _materializations(result) -> dict[str, dict]:
    return {
        e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
        for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
    }


@pytest.fixture
def seeded_env(isolated_env, shared_knowledge):
    """The data root holds the session's knowledge base: materializing the knowledge_base asset
    then finds the store built from the same corpus and reuses it (its checks still run)."""
    shared_knowledge.copy_to(DataRoot(isolated_env["var"]))
    return isolated_env


@pytest.fixture
def source_files(seeded_env):
    spec = load_catalog()[SOURCE]
    if spec.acquisition.method == "package":
        fetch_package_files(spec, seeded_env["raw"] / SOURCE)
    return seeded_env


def test_every_asset_materializes_on_a_partition_with_passing_checks(source_files):
    with dg.instance_for_test() as instance:
        assert _materialize(instance, dg.AssetSelection.assets(knowledge_base)).success
        result = _materialize(instance, dg.AssetSelection.assets(*PARTITIONED_ASSETS), partition=SOURCE)
        assert result.success
        checks = _checks(result)
        assert {asset for asset, _ in checks} == {a.key.to_user_string() for a in PARTITIONED_ASSETS}
        failed = {key: c.description for key, c in checks.items() if not c.passed}
        assert not failed, failed

        materialized = _materializations(result)
        assert materialized["raw_records"]["dagster/row_count"].value > 0
        assert "quarantine" in materialized["raw_records"]
        assert "data:image/png;base64," in materialized["triplets"]["preview"].value
        assert instance.get_materialized_partitions(dg.AssetKey("triplets")) == {SOURCE}

        final = _materialize(instance, dg.AssetSelection.assets(medtrinity_dataset, *SQL_ASSETS))
        assert final.success
        root = DataRoot.from_env()
        rows = duckdb.sql(f"SELECT count(*), count(DISTINCT split) FROM read_parquet('{root.table('medtrinity_dataset')}')").fetchall()[0]
        assert rows[0] == materialized["triplets"]["dagster/row_count"].value
        summary = duckdb.connect(str(root.warehouse)).sql("SELECT source_id, triplets FROM summary_by_source").fetchall()
        assert summary and summary[0][0] == SOURCE
        assert (root.exports / "llava_train.jsonl").exists()


def test_bad_files_are_quarantined_and_a_check_reports_them(seeded_env):
    source = "demo_fundus_normal"
    folder = seeded_env["raw"] / source
    fetch_package_files(load_catalog()[source], folder)
    (folder / "empty.jpg").write_bytes(b"")
    good = next(folder.glob("*.jpg"))
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    with dg.instance_for_test() as instance:
        assert _materialize(instance, dg.AssetSelection.assets(knowledge_base)).success
        result = _materialize(instance, dg.AssetSelection.assets(*PARTITIONED_ASSETS), partition=source)
        checks = _checks(result)
        rate = checks[("raw_records", "quarantine_rate")]
        assert not rate.passed  # 2 of 3 files quarantined: over the 20% limit
        reasons = duckdb.sql(
            f"SELECT source_file, reason FROM read_parquet('{DataRoot.from_env().quarantine('raw_records', source)}') ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in reasons] == ["empty.jpg", "truncated.jpg"]
        assert all(r[1] for r in reasons)
        # The partition still completes for the readable file.
        triplets = duckdb.sql(f"SELECT count(*) FROM read_parquet('{DataRoot.from_env().table('triplets', source)}')").fetchall()[0][0]
        assert triplets == 1
