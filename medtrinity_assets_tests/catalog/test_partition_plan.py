"""The sensor's decisions as a pure function (catalog/partition_plan.py), without Dagster."""

from __future__ import annotations

from medtrinity_assets.catalog.fingerprint import SourceState
from medtrinity_assets.catalog.partition_plan import plan_tick


def state(source_id: str, fingerprint: str | None, keys: tuple[str, ...] = ()) -> SourceState:
    return SourceState(source_id, fingerprint, len(keys), keys or ((source_id,) if fingerprint else ()))


def test_new_sources_are_added_and_run_unchanged_ones_are_not():
    states = {"a": state("a", "f1"), "b": state("b", "f2", ("b.s0of2", "b.s1of2")), "c": state("c", None)}
    plan = plan_tick(states, registered={"a"}, materialized={"a"}, seen={"a": "f1"}, last_ingested={})
    assert plan.add == ["b.s0of2", "b.s1of2"] and plan.runs == {"b.s0of2": "f2", "b.s1of2": "f2"}
    assert plan.skipped == {"a": "files unchanged since the last run"}
    assert plan.cursor == {"a": "f1", "b.s0of2": "f2", "b.s1of2": "f2"} and plan.delete == [] and plan.gone == {}


def test_without_a_cursor_the_last_ingest_stands_in():
    states = {"a": state("a", "f1"), "b": state("b", "f2")}
    plan = plan_tick(states, registered={"a", "b"}, materialized={"a", "b"}, seen={}, last_ingested={"a": "f1", "b": "old"})
    assert plan.runs == {"b": "f2"} and plan.skipped == {"a": "already materialized from these files"}


def test_gone_partitions_are_deleted_unless_materialized_and_say_why():
    states = {"a": state("a", None), "b": state("b", "f2", ("b.s0of2", "b.s1of2"))}
    registered = {"a", "b", "gone_spec", "b.s0of4"}
    plan = plan_tick(states, registered, materialized={"a", "b"}, seen={}, last_ingested={})
    assert plan.delete == ["b.s0of4", "gone_spec"]
    assert plan.gone == {"a": "no files for source a any more", "b": "source b is now split into b.s0of2, b.s1of2 (2 files)"}
    assert sorted(plan.runs) == ["b.s0of2", "b.s1of2"]
    plan = plan_tick({}, {"old_source"}, {"old_source"}, {}, {})
    assert plan.gone == {"old_source": "no spec for source old_source in the catalog"}
