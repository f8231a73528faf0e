"""Sensor and schedule that keep source partitions current."""


import json

import dagster as dg

from medtrinity_assets.catalog import source_root
from medtrinity_assets.catalog.fingerprint import (
    folder_fingerprint,
    partitions_to_refresh,
)
from medtrinity_assets.defs.assets import PARTITIONED_ASSETS
from medtrinity_assets.defs.partitions import CATALOG

source_pipeline_job = dg.define_asset_job(
    "source_pipeline",
    selection=dg.AssetSelection.assets(*PARTITIONED_ASSETS),
    partitions_def=PARTITIONED_ASSETS[0].partitions_def,
    description="Every per-source stage, ingest to triplets, for one source partition.",
)


def current_fingerprints() -> dict[str, str | None]:
    return {source_id: folder_fingerprint(source_root(spec)) for source_id, spec in CATALOG.items()}


@dg.sensor(job=source_pipeline_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def raw_files_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Request a source's run when files under its folder (data/raw/<source>/) are added or changed.

    The cursor holds each source's last seen fingerprint, so unchanged files never re-trigger.
    """
    seen = json.loads(context.cursor) if context.cursor else {}
    requests = []
    for source_id, fingerprint in sorted(current_fingerprints().items()):
        if fingerprint is None or seen.get(source_id) == fingerprint:
            continue
        seen[source_id] = fingerprint
        requests.append(
            dg.RunRequest(
                partition_key=source_id,
                run_key=f"{source_id}:{fingerprint}",
                tags={"medtrinity/trigger": "files_changed", "medtrinity/fingerprint": fingerprint},
            )
        )
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True))


def last_ingested_fingerprints(instance: dg.DagsterInstance) -> dict[str, str | None]:
    """Per source, the input fingerprint recorded by its last ingest, for sources whose
    triplets were materialized too (a source that stopped half-way counts as missing)."""
    key = dg.AssetKey("raw_records")
    completed = instance.get_materialized_partitions(dg.AssetKey("triplets"))
    found = {}
    for partition in sorted(instance.get_materialized_partitions(key) & completed):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        ).records
        materialization = records[0].asset_materialization if records else None
        value = materialization.metadata.get("input_fingerprint") if materialization else None
        found[partition] = getattr(value, "value", None)
    return found


@dg.schedule(job=source_pipeline_job, cron_schedule="0 2 * * *", default_status=dg.DefaultScheduleStatus.STOPPED)
def refresh_sources_schedule(context: dg.ScheduleEvaluationContext):
    """Nightly: run every source whose files exist but which was never materialized, or whose
    files changed since its last ingest."""
    reasons = partitions_to_refresh(current_fingerprints(), last_ingested_fingerprints(context.instance))
    if not reasons:
        return dg.SkipReason("every source with files is materialized and current")
    return [
        dg.RunRequest(partition_key=source_id, tags={"medtrinity/trigger": f"schedule:{why}"})
        for source_id, why in reasons.items()
    ]
