"""Every real-data source (../shared/realdata) materialized through the Dagster asset graph.

Per source: the partition's assets all materialize; the rows of every stage agree with what the
family reader yields for the publisher's files; ROIs come from the dataset's own annotations;
quarantined inputs are visible in the partition's checks, and blocking checks pass.
"""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest
from conftest import REALDATA

from medtrinity_assets.catalog import load_catalog, source_root
from medtrinity_assets.defs.assets import PARTITIONED_ASSETS, knowledge_base
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.sources import IngestContext, Quarantined, read_source
from medtrinity_assets.storage import BlobStore

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is not present")]

REALDATA_SOURCES = sorted(
    source_id for source_id, spec in load_catalog().items() if spec.root and "shared/realdata" in spec.root
)
# Sources whose publisher files include rows or images the layout cannot use (by design of the
# extract): their quarantine-rate check (WARN) reports it; every other check must pass.
# (ISIC 2017: the CSV lists 2,000 images, the extract holds 24.)
EXPECTED_QUARANTINE_WARNINGS = {"isic2017"}


def _read(spec, tmp_path):
    ctx = IngestContext(spec=spec, root=source_root(spec), blobs=BlobStore(tmp_path / "reader"), salt="test-salt")
    items = list(read_source(ctx))
    return [i for i in items if isinstance(i, dict)], [i for i in items if isinstance(i, Quarantined)]


# The shared README gives these as training data for expert models (issue 10), read in place by
# the tests that need them (grounding.validate reads Kvasir-SEG's boxes), not as catalog sources.
TRAINING_DATA_FOLDERS = {"busi_train", "kvasir_seg"}


def test_realdata_catalog_covers_every_shared_dataset():
    folders = {p.name for p in REALDATA.iterdir() if p.is_dir()} - TRAINING_DATA_FOLDERS
    used = {source_root(load_catalog()[s]).relative_to(REALDATA.resolve()).parts[0] for s in REALDATA_SOURCES}
    assert folders <= used, sorted(folders - used)


@pytest.fixture(scope="module")
def instance(tmp_path_factory, shared_knowledge):
    home = tmp_path_factory.mktemp("realdata_home")
    # The session's store, so the knowledge_base asset below embeds nothing again.
    shared_knowledge.copy_to(DataRoot(home / "var"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDTRINITY_HOME", str(home / "var"))
        patch.setenv("MEDTRINITY_SALT", "test-salt")
        with dg.instance_for_test() as dagster_instance:
            result = dg.materialize([*PARTITIONED_ASSETS, knowledge_base], selection=[knowledge_base.key],
                                    instance=dagster_instance, resources={"settings": PipelineSettings()})
            assert result.success
            yield dagster_instance


@pytest.mark.parametrize("source_id", REALDATA_SOURCES)
def test_realdata_source_materializes_with_its_own_annotations(source_id, instance, tmp_path):
    spec = load_catalog()[source_id]
    records, quarantined = _read(spec, tmp_path)
    assert records, f"{source_id}: the reader found no image"

    instance.add_dynamic_partitions("sources", [source_id])  # as the sensor registers it
    result = dg.materialize(
        [*PARTITIONED_ASSETS, knowledge_base], selection=dg.AssetSelection.assets(*PARTITIONED_ASSETS),
        partition_key=source_id, instance=instance, resources={"settings": PipelineSettings()}, raise_on_error=False,
    )
    assert result.success, source_id
    checks = {
        e.asset_check_evaluation_data.check_name + "@" + e.asset_check_evaluation_data.asset_key.to_user_string():
        e.asset_check_evaluation_data
        for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    failed = {name for name, check in checks.items() if not check.passed}
    expected_failures = {"quarantine_rate@raw_records"} if source_id in EXPECTED_QUARANTINE_WARNINGS else set()
    assert failed == expected_failures, {name: checks[name].description for name in failed}

    root = DataRoot.from_env()
    table = lambda asset: f"read_parquet('{root.table(asset, source_id)}')"  # noqa: E731
    raw = duckdb.sql(f"SELECT record_id, annotations FROM {table('raw_records')}").fetchall()
    # The asset holds exactly what the reader yields for the publisher's files.
    assert sorted(r[0] for r in raw) == sorted(r["record_id"] for r in records)
    if quarantined:
        quarantine = duckdb.sql(f"SELECT count(*) FROM read_parquet('{root.quarantine('raw_records', source_id)}')").fetchall()[0][0]
        assert quarantine == len(quarantined)
    # What ingest left out is visible in the partition's check report, with its count.
    rate = checks["quarantine_rate@raw_records"]
    assert rate.metadata["quarantined"].value >= len(quarantined)
    assert rate.description.startswith(f"{rate.metadata['quarantined'].value} of ")

    # ROIs come from the dataset's annotations: one per annotated mask/box/contour at least.
    annotated = {r["record_id"] for r in records if r["annotations"] not in ("[]", None)}
    roi_origins = duckdb.sql(
        f"SELECT record_id, origin FROM {table('rois')}").fetchall()
    from_annotations = {rid for rid, origin in roi_origins if origin.startswith("annotation")}
    # An annotation that is only specks after resizing (a tumour's tip on its first slice) gives
    # no ROI, and the ground stage's quarantine table names it.
    ground_quarantine = root.quarantine("rois", source_id)
    specks_only = set()
    if ground_quarantine.exists():
        specks_only = {rid for (rid,) in duckdb.sql(
            f"SELECT record_id FROM read_parquet('{ground_quarantine}') WHERE reason LIKE '%only specks%'").fetchall()}
    assert from_annotations <= annotated
    assert annotated - from_annotations <= specks_only
    # Every normalized image reaches the triplets (the rest were quarantined on the way).
    normalized = duckdb.sql(f"SELECT count(*) FROM {table('normalized_images')}").fetchall()[0][0]
    described = duckdb.sql(f"SELECT count(DISTINCT record_id) FROM {table('triplets')}").fetchall()[0][0]
    assert described == normalized > 0
