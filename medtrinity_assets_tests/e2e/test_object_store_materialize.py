"""The partitioned assets materialized through Dagster with the data root on an S3 API (moto's
server on loopback): the resource reads the URL from MEDTRINITY_HOME, the stages write their
tables and blobs to the bucket, the checks read them there, and only what must be local (the
Chroma store) is on disk."""

from __future__ import annotations

import json
import shutil
import uuid

import dagster as dg
import pytest

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import fetch_package_files
from medtrinity_assets.defs.assets import ASSETS, PARTITIONED_ASSETS
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.paths import DataRoot
from s3_server import BUCKET, s3_server
from services import ensure_partition

pytestmark = pytest.mark.slow

SOURCE = "demo_mri_brain_mni"
# triplets and the dataset are not on object stores yet (docs/STORAGE.md): dataset/triplets.py
# and dataset/exports.py take their paths as local pathlib paths.
ON_OBJECT_STORE = [a for a in PARTITIONED_ASSETS if a.key.to_user_string() != "triplets"]


def test_partitioned_assets_materialize_on_an_s3_data_root(isolated_env, shared_knowledge, monkeypatch, tmp_path):
    with s3_server() as options:
        monkeypatch.setenv("MEDTRINITY_STORAGE_OPTIONS", json.dumps(options))
        monkeypatch.setenv("MEDTRINITY_HOME", f"s3://{BUCKET}/{uuid.uuid4().hex}")
        monkeypatch.setenv("MEDTRINITY_LOCAL_HOME", str(tmp_path / "local"))
        root = DataRoot.from_env()
        assert root.remote
        # The knowledge base as its stage would leave it: Chroma on the local disk.
        shutil.copytree(shared_knowledge.root.chroma, root.chroma)
        spec = load_catalog()[SOURCE]
        fetch_package_files(spec, isolated_env["raw"] / SOURCE)

        with dg.instance_for_test() as instance:
            ensure_partition(instance, PARTITIONED_ASSETS[0].partitions_def, SOURCE)  # as the sensor would
            result = dg.materialize(
                ASSETS, selection=dg.AssetSelection.assets(*ON_OBJECT_STORE), partition_key=SOURCE, instance=instance,
                resources={"settings": PipelineSettings()}, raise_on_error=False,
            )
        failures = [e.event_specific_data.error.to_string()[-1500:] for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert result.success, failures
        checks = [e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert {c.asset_key.to_user_string() for c in checks} == {a.key.to_user_string() for a in ON_OBJECT_STORE}
        failed = {(c.asset_key.to_user_string(), c.check_name): c.description for c in checks if not c.passed}
        assert not failed, failed
        rows = {
            e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization.metadata["dagster/row_count"].value
            for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
        }
        assert rows["raw_records"] > 0 and rows["descriptions"] == rows["raw_records"], rows

        # Every stage's table is in the bucket; none on the local disk.
        for asset in ON_OBJECT_STORE:
            assert root.table(asset.key.to_user_string(), SOURCE).exists(), asset.key
        assert not (root.local / "tables").exists() and not (isolated_env["var"] / "tables").exists()
