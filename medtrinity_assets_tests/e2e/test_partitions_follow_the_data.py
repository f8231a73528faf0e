"""Partitions follow the data (issue 11): the sensor, evaluated against a real Dagster instance
(SQLite storage in a throw-away DAGSTER_HOME), registers a partition for each source with a spec
and files, splits a large source into shards, picks up a spec written after the code location
loaded, requests each change once, re-runs nothing already materialized from the same files
even with a fresh cursor, and reports partitions whose files are gone."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REALDATA, needs_realdata
from medtrinity_assets.catalog.shards import Shard, owns
from medtrinity_assets.defs import automation
from medtrinity_assets.defs.assets import PARTITIONED_ASSETS
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from conftest import no_defs_state_storage

pytestmark = pytest.mark.slow

KVASIR = REALDATA / "kvasir_seg"


def spec_yaml(source_id: str, **extra) -> str:
    """The catalog's Kvasir-SEG spec for a folder of copied images and masks."""
    data = yaml.safe_load((REPO_ROOT / "data" / "sources" / "kvasir_seg.yaml").read_text(encoding="utf-8"))
    data.update(id=source_id, acquisition={"method": "manual"}, **extra)
    data["layout"] = {"family": "image_mask", "image_glob": "images/*.jpg", "mask_template": "masks/{stem}.jpg", "mask_threshold": 128}
    return yaml.safe_dump(data, sort_keys=False)


def copy_images(folder, ids) -> None:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            shutil.copyfile(KVASIR / sub / f"{image_id}.jpg", folder / sub / f"{image_id}.jpg")


def ids_for_two_shards(count: int) -> list[str]:
    """``count`` Kvasir ids whose images fall in both shards of two (no shard is empty)."""
    ids = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))
    in_first = [owns(Shard(0, 2), f"images/{i}.jpg") for i in ids]
    first = [i for i, mine in zip(ids, in_first) if mine][: count // 2]
    second = [i for i, mine in zip(ids, in_first) if not mine][: count - len(first)]
    return first + second


class Sensor:
    """Ticks of the real sensor; what the daemon does with a tick's partition requests
    (add / delete in the instance) is done here, as the daemon does it, before the next tick."""

    def __init__(self, instance, settings):
        self.instance, self.resources = instance, {"settings": settings}

    def tick(self, cursor: str | None):
        result = automation.raw_files_sensor(dg.build_sensor_context(instance=self.instance, cursor=cursor, resources=self.resources))
        for request in result.dynamic_partitions_requests:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
        return result


def requested(result) -> list[str]:
    return sorted(r.partition_key for r in result.run_requests)


def added(result) -> list[str]:
    return sorted(k for r in result.dynamic_partitions_requests if isinstance(r, dg.AddDynamicPartitionsRequest) for k in r.partition_keys)


def deleted(result) -> list[str]:
    return sorted(k for r in result.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest) for k in r.partition_keys)


@needs_realdata
def test_sources_become_partitions_follow_their_files_and_are_not_rerun(isolated_env, shared_knowledge, tmp_path):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    raw = isolated_env["raw"]
    (catalog / "alpha.yaml").write_text(spec_yaml("alpha"))
    (catalog / "beta.yaml").write_text(spec_yaml("beta"))  # a spec without files: no partition
    ids = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))
    copy_images(raw / "alpha", ids[:2])
    root = DataRoot(isolated_env["var"])
    shared_knowledge.copy_to(root)
    settings = PipelineSettings(catalog=str(catalog))

    instance = dg.DagsterInstance.get()  # SQLite under the test's DAGSTER_HOME
    try:
        sensor = Sensor(instance, settings)
        first = sensor.tick(None)
        assert added(first) == ["alpha"] and requested(first) == ["alpha"]
        assert instance.get_dynamic_partitions("sources") == ["alpha"]

        # A spec written now, with files, becomes partitions on the next tick: no reload. It has
        # 8 files and a shard size of 4, so two shards.
        (catalog / "gamma.yaml").write_text(spec_yaml("gamma", shard_size=4))
        copy_images(raw / "gamma", ids_for_two_shards(4))
        second = sensor.tick(first.cursor)
        assert added(second) == ["gamma.s0of2", "gamma.s1of2"] == requested(second)
        assert settings.spec("gamma.s1of2").partition == "gamma.s1of2"  # resolved without reload

        third = sensor.tick(second.cursor)
        assert requested(third) == [] and added(third) == [] and deleted(third) == []

        # What the daemon would launch: the per-source stages of each requested partition.
        for key in ["alpha", "gamma.s0of2", "gamma.s1of2"]:
            with no_defs_state_storage():
                result = dg.materialize(PARTITIONED_ASSETS, partition_key=key, instance=instance, resources={"settings": settings}, raise_on_error=False)
            assert result.success, key
        shards = [pq.read_table(root.table("raw_records", key)).to_pylist() for key in ("gamma.s0of2", "gamma.s1of2")]
        assert all(shards) and {r["source_id"] for s in shards for r in s} == {"gamma"}
        assert sorted(r["source_file"] for s in shards for r in s) == sorted(f"images/{p.name}" for p in (raw / "gamma" / "images").iterdir())
        assert all(pq.read_table(root.table("triplets", key)).num_rows for key in ("gamma.s0of2", "gamma.s1of2"))

        # A fresh cursor (the sensor turned on after `make demo`, or reset) re-runs nothing
        # that was materialized from the same files.
        fresh = sensor.tick(None)
        assert requested(fresh) == [] and added(fresh) == []
        cursor = json.loads(fresh.cursor)["fingerprints"]
        assert sorted(cursor) == ["alpha", "gamma.s0of2", "gamma.s1of2"]

        # A changed file re-runs that source's partitions only, once.
        (raw / "alpha" / "images" / f"{ids[0]}.jpg").write_bytes((KVASIR / "images" / f"{ids[5]}.jpg").read_bytes())
        changed = sensor.tick(fresh.cursor)
        assert requested(changed) == ["alpha"]
        assert requested(sensor.tick(changed.cursor)) == []

        # Files gone: a materialized partition is kept and reported (log and an observation on
        # raw_records[alpha]), once; one never materialized is deleted.
        (catalog / "delta.yaml").write_text(spec_yaml("delta"))
        copy_images(raw / "delta", ids[2:3])
        with_delta = sensor.tick(changed.cursor)
        assert added(with_delta) == ["delta"]
        shutil.rmtree(raw / "alpha")
        shutil.rmtree(raw / "delta")
        gone = sensor.tick(with_delta.cursor)
        assert deleted(gone) == ["delta"] and requested(gone) == []
        assert [(e.asset_key.to_user_string(), e.partition) for e in gone.asset_events] == [("raw_records", "alpha")]
        assert "no files for source alpha" in gone.asset_events[0].metadata["files_gone"].value
        assert sorted(instance.get_dynamic_partitions("sources")) == ["alpha", "gamma.s0of2", "gamma.s1of2"]
        again = sensor.tick(gone.cursor)
        assert again.asset_events == [] and deleted(again) == [] and requested(again) == []
    finally:
        instance.dispose()
