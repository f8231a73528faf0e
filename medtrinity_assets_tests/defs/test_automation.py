"""The sensor requests a source's run when its files change, never for unchanged files; the
schedule requests sources that are missing or stale."""

from __future__ import annotations

import os
import time

import dagster as dg

from medtrinity_assets.catalog.fingerprint import (
    folder_fingerprint,
    partitions_to_refresh,
)
from medtrinity_assets.defs.automation import raw_files_sensor, refresh_sources_schedule
from medtrinity_assets.defs.partitions import DEMO_SOURCES
from medtrinity_assets.defs.resources import PipelineSettings

SOURCE = DEMO_SOURCES[0]
RESOURCES = {"settings": PipelineSettings()}


def _requested(result) -> set[str]:
    return {request.partition_key for request in result.run_requests}


def test_fingerprint_changes_with_files_only(tmp_path):
    assert folder_fingerprint(tmp_path / "absent") is None
    assert folder_fingerprint(tmp_path) is None
    (tmp_path / "a.png").write_bytes(b"x")
    first = folder_fingerprint(tmp_path)
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / ".partial").write_bytes(b"ignored")
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / "b.png").write_bytes(b"y")
    second = folder_fingerprint(tmp_path)
    assert second != first
    os.utime(tmp_path / "a.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert folder_fingerprint(tmp_path) != second


def test_partitions_to_refresh():
    current = {"a": "f1", "b": "f2", "c": None, "d": "f4"}
    last = {"a": "f1", "b": "old"}
    assert partitions_to_refresh(current, last) == {"b": "stale", "d": "missing"}


def test_sensor_triggers_on_new_and_changed_files_only(isolated_env):
    folder = isolated_env["raw"] / SOURCE
    with dg.instance_for_test() as instance:
        first = raw_files_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES))
        assert SOURCE not in _requested(first)  # no files yet

        folder.mkdir()
        (folder / "scan.png").write_bytes(b"\x89PNG fake bytes are enough for a fingerprint")
        second = raw_files_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=RESOURCES))
        assert SOURCE in _requested(second)
        added = [key for request in second.dynamic_partitions_requests for key in request.partition_keys]
        assert SOURCE in added  # a source with files becomes a partition in the same tick
        instance.add_dynamic_partitions("sources", added)  # as the daemon applies the request
        request = next(r for r in second.run_requests if r.partition_key == SOURCE)
        assert request.run_key.startswith(f"{SOURCE}:")

        third = raw_files_sensor(dg.build_sensor_context(instance=instance, cursor=second.cursor, resources=RESOURCES))
        assert _requested(third) == set()  # nothing changed: nothing re-triggers

        (folder / "scan2.png").write_bytes(b"another file")
        fourth = raw_files_sensor(dg.build_sensor_context(instance=instance, cursor=third.cursor, resources=RESOURCES))
        assert _requested(fourth) == {SOURCE}


def test_schedule_requests_missing_and_stale_sources(isolated_env):
    folder = isolated_env["raw"] / SOURCE
    folder.mkdir()
    (folder / "scan.png").write_bytes(b"first version")
    with dg.instance_for_test() as instance:
        result = refresh_sources_schedule(dg.build_schedule_context(instance=instance, resources=RESOURCES))
        assert isinstance(result, dg.SkipReason)  # not registered yet: the sensor adds partitions
        instance.add_dynamic_partitions("sources", [SOURCE])
        result = refresh_sources_schedule(dg.build_schedule_context(instance=instance, resources=RESOURCES))
        assert SOURCE in {r.partition_key for r in result}  # never materialized: missing

        fingerprint = folder_fingerprint(folder)
        for key, metadata in (("raw_records", {"input_fingerprint": fingerprint}), ("triplets", {})):
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=SOURCE, metadata=metadata))
        result = refresh_sources_schedule(dg.build_schedule_context(instance=instance, resources=RESOURCES))
        requested = set() if isinstance(result, dg.SkipReason) else {r.partition_key for r in result}
        assert SOURCE not in requested  # current: nothing to do

        (folder / "scan.png").write_bytes(b"second version, longer")
        result = refresh_sources_schedule(dg.build_schedule_context(instance=instance, resources=RESOURCES))
        stale = [r for r in result if r.partition_key == SOURCE]
        assert stale and stale[0].tags["medtrinity/trigger"] == "schedule:stale"
