"""Partition keys and shard assignment (catalog/shards.py), without Dagster."""

from __future__ import annotations

import pytest

from medtrinity_assets.catalog.fingerprint import folder_state, source_state
from medtrinity_assets.catalog.shards import (
    Shard,
    owns,
    parse_partition_key,
    partition_key,
    partition_keys,
    shard_count,
    shard_of,
)
from spec_factory import build_spec

PATHS = [f"images/case_{n:05d}.png" for n in range(4000)]


def test_keys_round_trip_and_pad_the_index_to_the_width_of_the_count():
    assert partition_key("kvasir_seg", None) == "kvasir_seg"
    assert partition_key("kvasir_seg", Shard(3, 16)) == "kvasir_seg.s03of16"
    assert partition_key("kvasir_seg", Shard(3, 8)) == "kvasir_seg.s3of8"
    for key in ("kvasir_seg", "kvasir_seg.s03of16", "a_b.s127of128", "x9.s0of2"):
        source_id, shard = parse_partition_key(key)
        assert partition_key(source_id, shard) == key
    assert parse_partition_key("kvasir_seg.s03of16") == ("kvasir_seg", Shard(3, 16))


@pytest.mark.parametrize("key", ["kvasir_seg.s3of16", "kvasir_seg.s16of16", "kvasir_seg.s1of3", "kvasir_seg.s0of1", "k.s0of2", "Kv.s0of2", "kv.x"])
def test_malformed_keys_are_refused_naming_the_key(key):
    with pytest.raises(ValueError, match="partition key|shard"):
        parse_partition_key(key)


def test_shard_count_is_the_smallest_power_of_two_that_keeps_shards_at_or_under_the_size():
    assert shard_count(0, 100) == 1
    assert shard_count(100, 100) == 1
    assert shard_count(101, 100) == 2
    assert shard_count(400, 100) == 4
    assert shard_count(401, 100) == 8
    assert shard_count(2000) == 1 and shard_count(2001) == 2  # the project default
    assert partition_keys("s_x", 1) == ["s_x"]
    assert partition_keys("s_x", 4) == ["s_x.s0of4", "s_x.s1of4", "s_x.s2of4", "s_x.s3of4"]


def test_every_path_has_exactly_one_shard_and_the_shards_are_balanced():
    for count in (2, 8, 32):
        owners = [[index for index in range(count) if owns(Shard(index, count), path)] for path in PATHS]
        assert all(len(found) == 1 for found in owners)
        sizes = [sum(found == [index] for found in owners) for index in range(count)]
        expected = len(PATHS) / count
        # A uniform hash: no shard is more than 25% (and 5 standard deviations) off the mean.
        assert max(abs(size - expected) for size in sizes) < max(0.25 * expected, 5 * expected**0.5), sizes


def test_doubling_the_count_splits_each_shard_in_two():
    for path in PATHS:
        before = shard_of(path, 8)
        after = shard_of(path, 16)
        assert after in (before, before + 8)
    # and adding files never moves one already placed
    assert [shard_of(p, 16) for p in PATHS[:100]] == [shard_of(p, 16) for p in (PATHS + ["new.png"])[:100]]


def test_items_without_a_file_belong_to_shard_zero_only():
    for missing in (None, "", "."):
        assert owns(Shard(0, 4), missing) and not any(owns(Shard(i, 4), missing) for i in (1, 2, 3))
    assert owns(None, None) and owns(None, "a.png")


def test_a_bound_spec_names_its_partition_and_keeps_its_fields():
    spec = build_spec(id="big_source", shard_size=10)
    assert spec.partition == "big_source" and spec.shard is None
    bound = spec.for_partition("big_source.s1of4")
    assert bound.partition == "big_source.s1of4" and bound.shard == Shard(1, 4)
    assert bound.model_dump() == spec.model_dump() and spec.shard is None  # a copy
    assert spec.for_partition("big_source").shard is None
    with pytest.raises(ValueError, match="not a partition of source 'big_source'"):
        spec.for_partition("other.s0of2")
    with pytest.raises(ValueError):
        build_spec(shard_size=0)


def test_source_state_counts_files_and_makes_the_shard_keys(tmp_path):
    root = tmp_path / "files"
    spec = build_spec(id="walked", root=str(root), shard_size=3)
    assert source_state(spec).partitions == ()  # no folder: no partition
    root.mkdir()
    assert source_state(spec).partitions == ()  # empty folder: no partition
    for n in range(7):
        (root / f"{n}.png").write_bytes(b"x")
    (root / ".partial").write_bytes(b"x")  # hidden: not data
    state = source_state(spec)
    assert state.files == 7 and state.fingerprint == folder_state(root)[0]
    assert state.partitions == ("walked.s0of4", "walked.s1of4", "walked.s2of4", "walked.s3of4")


def test_partitions_on_disk_returns_the_complete_set_written_last(tmp_path):
    import os

    from medtrinity_assets.catalog.shards import partitions_on_disk

    assert partitions_on_disk(tmp_path / "absent", "src") == []
    for key, when in [("src", 100), ("src.s0of2", 200), ("src.s1of2", 210), ("src.s0of4", 300), ("srcx", 50), ("src_two", 50)]:
        path = tmp_path / f"{key}.parquet"
        path.write_bytes(b"")
        os.utime(path, (when, when))
    # the 4-way set is incomplete: the 2-way set, newer than the unsharded table, is current
    assert partitions_on_disk(tmp_path, "src") == ["src.s0of2", "src.s1of2"]
    assert partitions_on_disk(tmp_path, "src_two") == ["src_two"]
    os.utime(tmp_path / "src.parquet", (400, 400))  # the source shrank and ran unsharded since
    assert partitions_on_disk(tmp_path, "src") == ["src"]
