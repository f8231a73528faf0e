"""The per-source roll-up sums a sharded source's partitions back to one source (no Dagster)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medtrinity_assets import stages
from medtrinity_assets.catalog.fingerprint import source_state
from medtrinity_assets.dataset.rollup import rollup_markdown, source_rollup
from medtrinity_assets.paths import DataRoot
from spec_factory import build_spec


def test_rollup_sums_rows_quarantine_and_kinds_over_the_shards(tmp_path):
    source = tmp_path / "files"
    source.mkdir()
    for n in range(9):
        Image.fromarray(np.full((16, 16), 20 * n, dtype=np.uint8)).save(source / f"img{n}.png")
    for n in range(3):
        (source / f"broken{n}.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    spec = build_spec(id="sharded", root=str(source), shard_size=4, annotation_kinds=["none"])
    keys = source_state(spec).partitions
    assert len(keys) == 4
    root = DataRoot(tmp_path / "var")
    for key in keys[:3]:  # the last shard not run yet
        stages.run_ingest(spec.for_partition(key), root, "salt")

    rolled = source_rollup(root, keys, ["raw_records", "normalized_images"])
    raw = rolled["raw_records"]
    ran = [stages.run_ingest(spec.for_partition(k), DataRoot(tmp_path / "again"), "salt") for k in keys[:3]]
    assert raw.rows == sum(r.rows for r in ran) and raw.quarantined == sum(r.quarantined for r in ran)
    assert raw.partitions == 3 and raw.missing == [keys[3]]
    assert set(raw.kinds) <= {"unreadable"} and sum(raw.kinds.values()) == raw.quarantined
    assert rolled["normalized_images"].partitions == 0 and rolled["normalized_images"].missing == list(keys)

    stages.run_ingest(spec.for_partition(keys[3]), root, "salt")
    whole = source_rollup(root, keys, ["raw_records"])["raw_records"]
    assert (whole.rows, whole.quarantined, dict(whole.kinds)) == (9, 3, {"unreadable": 3})
    table = rollup_markdown({"sharded": source_rollup(root, keys, ["raw_records", "triplets"])}, "raw_records", "triplets")
    assert "| sharded | 4 of 4 | 9 | 0 | 3 | unreadable 3 |" in table
