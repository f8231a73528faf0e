"""The final dataset follows the triplets through Dagster's declarative automation, and shows
as stale when a triplets partition changes after it was built.

A real Dagster instance (SQLite under a throw-away DAGSTER_HOME), the project's Definitions,
real triplets files and the real dataset asset. The two sensors are ticked the way the daemon
ticks them: ``triplets_index_sensor`` is called with a sensor context and its observation is
stored on the instance; ``dg.evaluate_automation_conditions`` evaluates every asset's
condition with the automation sensor's cursor.
"""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq
from conftest import no_defs_state_storage
from triplet_factory import triplet, write_triplets

from dagster._core.definitions.data_version import StaleStatus

from medtrinity_assets.definitions import defs
from medtrinity_assets.defs.assets import medtrinity_dataset
from medtrinity_assets.defs.dataset_automation import FOLLOW_TRIPLETS, triplets_index, triplets_index_sensor
from medtrinity_assets.defs.partitions import CATALOG
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.paths import DataRoot

DATASET = dg.AssetKey("medtrinity_dataset")


class Ticks:
    """The daemon's part: tick the index sensor (keeping its cursor, storing its events) and the
    automation sensor (keeping its evaluation cursor)."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self.sensor_cursor = None
        self.automation_cursor = None

    def observe(self) -> int:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.sensor_cursor, resources={"settings": PipelineSettings()}
        )
        result = triplets_index_sensor(context)
        self.sensor_cursor = result.cursor
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        return len(result.asset_events)

    def requested(self) -> set[str]:
        result = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.automation_cursor)
        self.automation_cursor = result.cursor
        return {partition.asset_key.to_user_string() for partition in result._requested_asset_partitions}


def stale_status(instance: dg.DagsterInstance):
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.definitions.temporal_context import TemporalContext
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance, asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    return resolver.get_status(DATASET), resolver.get_stale_root_causes(DATASET)


def materialize_dataset(instance) -> None:
    with no_defs_state_storage():
        result = dg.materialize(
            [medtrinity_dataset, triplets_index], selection=[DATASET], instance=instance,
            resources={"settings": PipelineSettings()},
        )
    assert result.success


def test_dataset_and_sql_models_carry_the_follow_condition():
    graph = defs.resolve_asset_graph()
    assert graph.get(DATASET).automation_condition.get_label() == FOLLOW_TRIPLETS
    assert dg.AssetKey("triplets_index") in graph.get(DATASET).parent_keys
    assert graph.get(dg.AssetKey("stg_triplets")).automation_condition.get_label() == FOLLOW_TRIPLETS
    assert graph.get(dg.AssetKey("summary_by_source")).automation_condition.get_label() == "eager"
    assert graph.get(dg.AssetKey("triplets")).automation_condition is None  # sources stay the sensor's
    names = {sensor.name for sensor in defs.sensors}
    assert {"triplets_index_sensor", "automation_condition_sensor"} <= names


def ensure_partitions(instance, keys) -> None:
    """Partitions that follow the data are registered on the instance; static ones exist."""
    partitions = defs.resolve_assets_def("triplets").partitions_def
    if isinstance(partitions, dg.DynamicPartitionsDefinition):
        instance.add_dynamic_partitions(partitions.name, list(keys))


def test_new_triplets_request_the_dataset_once_and_mark_it_stale(isolated_env):
    # Entered, so Dagster's current defs-state storage is this instance's, not one a
    # test before left behind.
    with dg.DagsterInstance.get() as instance:
        root = DataRoot.from_env()
        source, other = sorted(CATALOG)[:2]
        ensure_partitions(instance, [source, other])
        ticks = Ticks(instance)

        # No triplets yet: nothing to observe, nothing requested.
        assert ticks.observe() == 0
        assert "medtrinity_dataset" not in ticks.requested()

        # One source's triplets arrive (its partition materialized, its file written).
        write_triplets(root, source, [triplet(root, source, n) for n in range(3)])
        instance.report_runless_asset_event(dg.AssetMaterialization("triplets", partition=source))
        assert ticks.observe() == 1
        requested = ticks.requested()
        assert {"medtrinity_dataset", "stg_triplets", "summary_by_source"} <= requested
        # Nothing changed since: the index sensor stays quiet and nothing is requested again.
        assert ticks.observe() == 0
        assert "medtrinity_dataset" not in ticks.requested()

        # The requested run builds the dataset: fresh.
        materialize_dataset(instance)
        status, _ = stale_status(instance)
        assert status == StaleStatus.FRESH
        assert pq.read_table(root.table("medtrinity_dataset")).num_rows == 3
        assert "medtrinity_dataset" not in ticks.requested()

        # A second source's run is under way; its triplets land after the dataset was built:
        # stale at once, but not requested while the source's run (which plans its triplets) lasts.
        run = instance.create_run_for_job(
            job_def=defs.resolve_job_def("source_pipeline"), tags={"dagster/partition": other},
            status=dg.DagsterRunStatus.STARTED,
        )
        # (The run writes the file before it ends; its materialization event comes with the run.)
        write_triplets(root, other, [triplet(root, other, n) for n in range(2)])
        assert ticks.observe() == 1
        status, causes = stale_status(instance)
        assert status == StaleStatus.STALE
        assert any(cause.key.asset_key == dg.AssetKey("triplets_index") for cause in causes)
        assert "medtrinity_dataset" not in ticks.requested()
        instance.report_run_failed(run)  # the run ends (how does not matter): the wait is over
        assert "medtrinity_dataset" in ticks.requested()

        # Rebuilt: fresh again, the new source in it, only its part made anew.
        materialize_dataset(instance)
        assert stale_status(instance)[0] == StaleStatus.FRESH
        assert pq.read_table(root.table("medtrinity_dataset")).num_rows == 5
        assert "medtrinity_dataset" not in ticks.requested()

        # A partition re-run that rewrote the same rows: same index version, nothing to do.
        path = root.table("triplets", source)
        path.write_bytes(path.read_bytes())
        instance.report_runless_asset_event(dg.AssetMaterialization("triplets", partition=source))
        assert ticks.observe() == 0
