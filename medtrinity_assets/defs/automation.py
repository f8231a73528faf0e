"""Sensor and schedule that keep source partitions current.

``raw_files_sensor`` is what makes partitions follow the data: on each tick it reads the catalog
folder again (a new YAML needs no code-location reload), registers a partition for every source
with a spec and files (one per shard of a large source), deletes or reports partitions whose
files are gone, and requests runs only where the files changed. The decisions are the pure
``catalog.partition_plan.plan_tick``; this module reads the instance and turns them into requests.
"""


import json

import dagster as dg

from medtrinity_assets.catalog.fingerprint import SourceState, partitions_to_refresh, source_state
from medtrinity_assets.catalog.partition_plan import plan_tick
from medtrinity_assets.defs.assets import PARTITIONED_ASSETS
from medtrinity_assets.defs.partitions import SOURCES_PARTITIONS, source_partitions
from medtrinity_assets.defs.resources import PipelineSettings

source_pipeline_job = dg.define_asset_job(
    "source_pipeline",
    selection=dg.AssetSelection.assets(*PARTITIONED_ASSETS),
    partitions_def=source_partitions,
    description="Every per-source stage, ingest to triplets, for one source partition (or shard).",
)

RAW_RECORDS = dg.AssetKey("raw_records")


def source_states(settings: PipelineSettings) -> dict[str, SourceState]:
    """Every usable spec's folder state now: fingerprint, file count, partition keys."""
    return {source_id: source_state(spec) for source_id, spec in sorted(settings.specs().items())}


def last_ingested_fingerprints(instance: dg.DagsterInstance) -> dict[str, str | None]:
    """Per partition, the input fingerprint recorded by its last ingest, for partitions whose
    triplets were materialized too (a partition that stopped half-way counts as missing)."""
    completed = instance.get_materialized_partitions(dg.AssetKey("triplets"))
    found = {}
    for partition in sorted(instance.get_materialized_partitions(RAW_RECORDS) & completed):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=RAW_RECORDS, asset_partitions=[partition]), limit=1
        ).records
        materialization = records[0].asset_materialization if records else None
        value = materialization.metadata.get("input_fingerprint") if materialization else None
        found[partition] = getattr(value, "value", None)
    return found


def _read_cursor(cursor: str | None) -> tuple[dict[str, str], set[str]]:
    """(partition -> fingerprint, partitions already reported gone). An older cursor was a flat
    {source: fingerprint} mapping; it reads as the first part."""
    data = json.loads(cursor) if cursor else {}
    if "fingerprints" in data and isinstance(data["fingerprints"], dict):
        return dict(data["fingerprints"]), set(data.get("reported_gone", []))
    return {key: value for key, value in data.items() if isinstance(value, str)}, set()


@dg.sensor(job=source_pipeline_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def raw_files_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettings) -> dg.SensorResult:
    """Register a partition for every source with a spec and files (data/raw/<source>/ or the
    spec's root; one per shard of a large source) and request its run when its files are new or
    changed. Partitions whose files are gone are deleted when never materialized, else kept and
    reported (log, and an observation on raw_records of that partition).

    The cursor holds each partition's last seen fingerprint; where it has none (first tick, or
    a reset cursor) the fingerprint recorded by the partition's last complete run stands in, so
    turning the sensor on after ``make demo`` re-runs nothing."""
    seen, reported = _read_cursor(context.cursor)
    instance = context.instance
    registered = set(instance.get_dynamic_partitions(SOURCES_PARTITIONS))
    states = source_states(settings)
    plan = plan_tick(
        states,
        registered,
        materialized=set(instance.get_materialized_partitions(RAW_RECORDS)),
        seen=seen,
        last_ingested=last_ingested_fingerprints(instance) if set(registered) - set(seen) else {},
    )
    partition_requests = []
    if plan.add:
        partition_requests.append(source_partitions.build_add_request(plan.add))
        context.log.info(f"new partitions (spec and files found): {', '.join(plan.add)}")
    if plan.delete:
        partition_requests.append(source_partitions.build_delete_request(plan.delete))
        context.log.info(f"partitions removed (files gone, never materialized): {', '.join(plan.delete)}")
    events = []
    for key, why in plan.gone.items():
        if key not in reported:  # once per partition, not on every tick
            context.log.warning(f"partition {key} kept, its files are gone: {why}")
            events.append(dg.AssetObservation(RAW_RECORDS, partition=key, metadata={"files_gone": why}))
    runs = [
        dg.RunRequest(
            partition_key=key,
            run_key=f"{key}:{fingerprint}",
            tags={"medtrinity/trigger": "files_changed", "medtrinity/fingerprint": fingerprint},
        )
        for key, fingerprint in plan.runs.items()
    ]
    cursor = {"fingerprints": plan.cursor, "reported_gone": sorted(set(plan.gone))}
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=partition_requests,
        asset_events=events,
        cursor=json.dumps(cursor, sort_keys=True),
    )


@dg.schedule(job=source_pipeline_job, cron_schedule="0 2 * * *", default_status=dg.DefaultScheduleStatus.STOPPED)
def refresh_sources_schedule(context: dg.ScheduleEvaluationContext, settings: PipelineSettings):
    """Nightly: run every registered partition whose files exist but which was never
    materialized, or whose files changed since its last ingest. Partitions not registered yet
    are the sensor's to add."""
    registered = set(context.instance.get_dynamic_partitions(SOURCES_PARTITIONS))
    current = {
        key: state.fingerprint
        for state in source_states(settings).values()
        for key in state.partitions
        if key in registered
    }
    reasons = partitions_to_refresh(current, last_ingested_fingerprints(context.instance))
    if not reasons:
        return dg.SkipReason("every registered partition with files is materialized and current")
    return [
        dg.RunRequest(partition_key=key, tags={"medtrinity/trigger": f"schedule:{why}"})
        for key, why in reasons.items()
    ]
