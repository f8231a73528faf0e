"""Ingest of a shard reads only its files, and the shards of a source together give exactly the
records and quarantine rows of the unsharded run (real Kvasir-SEG and IBSI DICOM files)."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import yaml

from conftest import REALDATA, needs_realdata
from medtrinity_assets import stages
from medtrinity_assets.catalog.load import source_root
from medtrinity_assets.catalog.shards import partition_keys, shard_count
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.grounding.validate import kvasir_realdata_spec
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined, shard_path_of
from medtrinity_assets.storage import BlobStore

KVASIR = REALDATA / "kvasir_seg"


def kvasir_copy(tmp_path, count: int, shard_size: int) -> SourceSpec:
    """A Kvasir-SEG folder with the first ``count`` images and masks (copies: links leaving the
    folder are refused), the publisher's box file for all 1,000 (so the others are orphan
    boxes), and one image whose bytes are cut short (quarantined)."""
    root = tmp_path / "kvasir"
    ids = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[:count]
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        for image_id in ids:
            shutil.copyfile(KVASIR / folder / f"{image_id}.jpg", root / folder / f"{image_id}.jpg")
    shutil.copyfile(KVASIR / "kavsir_bboxes.json", root / "kavsir_bboxes.json")
    cut = root / "images" / f"{ids[0]}.jpg"
    cut.write_bytes(cut.read_bytes()[:300])
    data = kvasir_realdata_spec(root).model_dump(mode="json", exclude_none=True)
    return SourceSpec.model_validate({**data, "shard_size": shard_size})


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def ingest_all_ways(spec: SourceSpec, tmp_path) -> tuple[DataRoot, list[str]]:
    root = DataRoot(tmp_path / "var")
    stages.run_ingest(spec, root, "salt")
    files = sum(1 for p in source_root(spec).rglob("*") if p.is_file())
    keys = partition_keys(spec.id, shard_count(files, spec.shard_size))
    for key in keys:
        stages.run_ingest(spec.for_partition(key), root, "salt")
    return root, keys


def assert_union_is_the_whole(root: DataRoot, source_id: str, keys: list[str]) -> None:
    assert len(keys) > 1
    whole = sorted(rows(root.table("raw_records", source_id)), key=lambda r: r["record_id"])
    parts = [rows(root.table("raw_records", key)) for key in keys]
    assert all(parts), "a shard without records: the test data is too small for the shard count"
    union = sorted((r for part in parts for r in part), key=lambda r: r["record_id"])
    ids = [r["record_id"] for r in union]
    assert len(ids) == len(set(ids)), "a record in two shards"
    assert union == whole  # same rows, value for value, apart from order
    assert {r["source_id"] for r in union} == {source_id}
    q_whole = sorted(json.dumps(r, sort_keys=True) for r in rows(root.quarantine("raw_records", source_id)))
    q_union = sorted(json.dumps(r, sort_keys=True) for key in keys for r in rows(root.quarantine("raw_records", key)))
    assert q_union == q_whole and q_whole


@needs_realdata
def test_kvasir_shards_give_the_unsharded_records_once_each(tmp_path):
    spec = kvasir_copy(tmp_path, count=48, shard_size=13)  # 97 files: 8 shards
    root, keys = ingest_all_ways(spec, tmp_path)
    assert len(keys) == 8 and keys[0] == "kvasir_seg.s0of8"
    assert_union_is_the_whole(root, spec.id, keys)
    quarantined = rows(root.quarantine("raw_records", spec.id))
    kinds = {r["kind"] for r in quarantined}
    assert "unreadable" in kinds and "orphan" in kinds  # the cut image; boxes of absent images


@needs_realdata
def test_the_reader_of_a_shard_never_decodes_another_shards_image(tmp_path):
    spec = kvasir_copy(tmp_path, count=24, shard_size=13)
    bound = spec.for_partition("kvasir_seg.s1of4")
    ctx = IngestContext(bound, source_root(spec), BlobStore(tmp_path / "blobs"), "salt", shard=bound.shard)
    records = [item for item in read_source(ctx) if not isinstance(item, Quarantined)]
    assert records and all(ctx.owns(r["source_file"]) for r in records)
    # masks follow their image: every record of the shard has its mask annotation
    assert all(json.loads(r["annotations"]) for r in records)


@needs_realdata
def test_dicom_series_are_one_unit_and_the_shards_add_up(tmp_path):
    data = yaml.safe_load((REPO_ROOT / "data" / "sources" / "ibsi_sts_dicom.yaml").read_text(encoding="utf-8"))
    data["root"] = str(REALDATA / "ibsi_sts")
    spec = SourceSpec.model_validate({**data, "shard_size": 60})  # 182 files: 4 shards
    root = DataRoot(tmp_path / "var")
    stages.run_ingest(spec, root, "salt")
    keys = partition_keys(spec.id, 4)
    for key in keys:
        stages.run_ingest(spec.for_partition(key), root, "salt")
    whole = sorted(rows(root.table("raw_records", spec.id)), key=lambda r: r["record_id"])
    union = sorted((r for key in keys for r in rows(root.table("raw_records", key))), key=lambda r: r["record_id"])
    assert whole and union == whole and len({r["record_id"] for r in union}) == len(union)
    # each series (CT, MR, PET) lies in one shard: slice indices of a series are never split
    by_series: dict[str, set[str]] = {}
    for key in keys:
        for r in rows(root.table("raw_records", key)):
            by_series.setdefault(r["source_file"].split("/")[2], set()).add(key)
    assert len(by_series) == 3 and all(len(found) == 1 for found in by_series.values()), by_series
    assert len(set().union(*by_series.values())) > 1  # and the series do not all share one shard


def test_run_ingest_filters_items_of_a_reader_that_does_not_ask(tmp_path, monkeypatch):
    """The safety net: a reader that ignores the shard still gives each record to one shard."""
    from medtrinity_assets.sources import image_folder

    from spec_factory import build_spec
    import numpy as np
    from PIL import Image

    source = tmp_path / "plain"
    source.mkdir()
    for n in range(12):
        Image.fromarray(np.full((8, 8), n * 10, dtype=np.uint8)).save(source / f"{n}.png")
    spec = build_spec(id="plain_source", root=str(source), shard_size=4, modality="xray", organs=["chest"])
    original = image_folder.read

    def ignoring_the_shard(ctx):
        yield from original(IngestContext(ctx.spec, ctx.root, ctx.blobs, ctx.salt))

    monkeypatch.setattr(image_folder, "read", ignoring_the_shard)
    root, keys = ingest_all_ways(spec, tmp_path)
    assert keys == partition_keys("plain_source", 4)
    whole = sorted(r["record_id"] for r in rows(root.table("raw_records", "plain_source")))
    union = sorted(r["record_id"] for key in keys for r in rows(root.table("raw_records", key)))
    assert union == whole and len(whole) == 12


def test_items_of_a_unit_follow_the_unit_path():
    item = {"source_file": "a/b.png", "_shard_path": "a"}
    assert shard_path_of(item) == "a"
    assert shard_path_of(Quarantined("x.png", "r", kind="unreadable")) == "x.png"
    assert shard_path_of(Quarantined("x.png", "r", kind="unreadable", shard_path="case")) == "case"
