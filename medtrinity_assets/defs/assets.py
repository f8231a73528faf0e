"""The pipeline's assets: one per entry of the stage registry (``medtrinity_assets.pipeline``).

Assets here only wire: they call the stage's runner for the partition, then publish its report,
a preview and the stage's DuckDB checks. The tables
themselves are Parquet files under the data root (written atomically by the stage), so assets
pass no data through Dagster's IO managers; lineage comes from ``deps``.
"""


import warnings
from typing import Callable

import dagster as dg

from medtrinity_assets import stages
from medtrinity_assets.dataset.exports import held_back_sql
from medtrinity_assets.defs.dataset_automation import condition_for
from medtrinity_assets.defs.experts import EXPERT_KEYS
from medtrinity_assets.defs.partitions import source_partitions
from medtrinity_assets.defs.resources import WRITER_RESOURCE, PipelineSettings, WriterSettings
from medtrinity_assets.defs.retries import retry_if_transient
from medtrinity_assets.duckdb_sql import connect, read_parquet
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.preview import thumbnails_markdown
from medtrinity_assets.pipeline import STAGES, Stage, StageInputs
from medtrinity_assets.quality.checks import run_check_set
from medtrinity_assets.vocabulary import MODEL_ORIGIN_PREFIX

PIPELINE_GROUP = "pipeline"


def _check_specs(stage: Stage) -> list[dg.AssetCheckSpec]:
    # Partitioned checks are a Dagster preview feature; dagster is pinned (requirements.lock),
    # and per-source check results are what a user backfilling sources needs to read.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                check.name,
                asset=stage.name,
                description=check.description,
                # Blocking: a failed ERROR check stops the downstream assets of this partition,
                # so bad rows never reach the final dataset.
                blocking=True,
                partitions_def=source_partitions if stage.partitioned else None,
            )
            for check in stage.checks
        ]


def _check_results(stage: Stage, data_root: DataRoot, partition: str | None) -> list[dg.AssetCheckResult]:
    results = []
    for outcome in run_check_set(stage.checks, stage.check_target(data_root, partition)):
        results.append(
            dg.AssetCheckResult(
                check_name=outcome.name,
                passed=bool(outcome.passed),
                severity=dg.AssetCheckSeverity.ERROR if outcome.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
                description=outcome.description,
                metadata={key: _metadata_value(value) for key, value in outcome.metadata.items()},
            )
        )
    return results


def _metadata_value(value):
    if isinstance(value, (dict, list)):
        return dg.MetadataValue.json(value)
    if value is None:
        return dg.MetadataValue.text("null")
    return value


def _quarantine_markdown(report: stages.StageReport) -> str:
    if not report.kinds:
        return "No file quarantined at this stage."
    # By kind: the reasons (with file names) stay in the quarantine table.
    lines = ["| kind | files |", "|---|---|"]
    lines += [f"| {kind} | {count} |" for kind, count in report.kinds.most_common()]
    return "\n".join(lines)


def _report_metadata(report: stages.StageReport) -> dict:
    metadata = {
        "dagster/row_count": report.rows,
        "inputs": report.inputs,
        "quarantined": report.quarantined,
        "quarantine": dg.MetadataValue.md(_quarantine_markdown(report)),
        "seconds": round(report.seconds, 3),
        "inputs_per_second": round(report.rows_per_second, 2),
    }
    if report.output:
        metadata["path"] = dg.MetadataValue.path(report.output)
    for key, value in report.extra.items():
        metadata[key] = _metadata_value(value)
    return metadata


def _inputs(stage: Stage, settings: PipelineSettings, partition: str | None, writer: WriterSettings | None = None) -> StageInputs:
    root = settings.root()
    if stage.partitioned:
        spec = settings.spec(partition)  # bound to the partition: a shard reads only its files
        config = writer.config_for(spec.id, root) if writer is not None else None
        return StageInputs(
            root, spec=spec, salt=settings.salt(), writer=config, experts_folder=settings.experts_folder()
        )
    return StageInputs(root, knowledge_folder=settings.knowledge_folder(), source_ids=tuple(settings.specs()))


def _writer_metadata(report: stages.StageReport) -> dict:
    """What the UI shows per partition of a writing stage: the writer mix as a table."""
    mix = report.extra.get("writer_mix") or {}
    total = sum(mix.values())
    lines = ["| writer | rows | share |", "|---|---|---|"]
    lines += [f"| {writer} | {rows} | {rows / total:.1%} |" for writer, rows in sorted(mix.items(), key=lambda kv: -kv[1])]
    return {"writer_mix": dg.MetadataValue.md("\n".join(lines) if mix else "No row described.")}


def stage_asset(stage: Stage) -> dg.AssetsDefinition:
    """The asset of one registry entry: run the stage, publish its report and its checks."""
    extra_metadata = EXTRA_METADATA.get(stage.name)

    def materialize(context: dg.AssetExecutionContext, settings: PipelineSettings, writer: WriterSettings | None) -> dg.MaterializeResult:
        partition = context.partition_key if stage.partitioned else None
        with retry_if_transient(context):  # a dropped connection or share: retried with backoff
            report = stage.run(_inputs(stage, settings, partition, writer))
        context.log.info(
            f"{stage.name}[{partition or '-'}]: {report.rows} rows from {report.inputs} inputs, "
            f"{report.quarantined} quarantined, {report.seconds:.1f}s"
        )
        metadata = _report_metadata(report)
        if stage.uses_writer:
            metadata.update(_writer_metadata(report))
        if extra_metadata:
            metadata.update(extra_metadata(settings, partition))
        version = stage.data_version(report) if stage.data_version else None
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=_check_results(stage, settings.root(), partition),
            data_version=dg.DataVersion(version) if version else None,
        )

    # resource_defs is a beta parameter of dg.asset; dagster is pinned (requirements.lock).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        decorate = _asset_decorator(stage)
    if stage.uses_writer:

        def _writing_asset(context: dg.AssetExecutionContext, settings: PipelineSettings, writer: WriterSettings) -> dg.MaterializeResult:
            return materialize(context, settings, writer)

        return decorate(_writing_asset)

    def _asset(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
        return materialize(context, settings, None)

    return decorate(_asset)


def _extra_deps(stage: Stage) -> list[dg.AssetKey]:
    """Upstream assets that are no stage (Stage.extra_deps): the expert models feed model_rois,
    so materializing everything trains the experts before their ROIs are made, and new weights
    mark those ROIs stale in the UI. A broken expert spec makes the spec loader raise; the
    experts module has left it out (and logged it), so its asset keys stand in."""
    if stage.extra_deps is None:
        return []
    try:
        return [dg.AssetKey(key) for key in stage.extra_deps()]
    except Exception:  # pydantic ValidationError, YAML errors: the spec file is reported elsewhere
        return list(EXPERT_KEYS)


def _asset_decorator(stage: Stage):
    return dg.asset(
        name=stage.name,
        partitions_def=source_partitions if stage.partitioned else None,
        deps=[*stage.upstream, *_extra_deps(stage)],
        check_specs=_check_specs(stage),
        group_name=PIPELINE_GROUP,
        description=stage.description,
        kinds=set(stage.kinds),
        pool=stage.pool,
        automation_condition=condition_for(stage.automation),
        # Bound to the asset, not given in Definitions: every run that materializes it (the
        # CLI, the UI, the tests) has the writer resource, grounded unless its run config or
        # the MEDTRINITY_WRITER / MEDTRINITY_LLM_* environment says otherwise.
        resource_defs={WRITER_RESOURCE: WriterSettings()} if stage.uses_writer else None,
    )


def _triplet_thumbnails(settings: PipelineSettings, source_id: str) -> dict:
    path = settings.root().table("triplets", source_id)
    if not path.exists():
        return {}
    con = connect()
    try:
        # Annotated images and images with an expert model's ROIs take turns (annotated first),
        # then the rest: the four shown include what grounding found and what a model found.
        # The normalized table's burned_in column lets the thumbnail mark burned-in text (of
        # images the spec keeps). Held-back images are left out, so the four shown can be shown.
        normalized = settings.root().table("normalized_images", source_id)
        rows = con.sql(
            f"""WITH shown AS (
                    SELECT t.*, n.burned_in,
                           CASE WHEN t.rois LIKE '%"origin":"annotation:%' THEN 0
                                WHEN t.rois LIKE '%"origin":"{MODEL_ORIGIN_PREFIX}%' THEN 1 ELSE 2 END AS kind
                    FROM {read_parquet(path)} t
                    LEFT JOIN {read_parquet(normalized)} n USING (record_id)
                    WHERE NOT {held_back_sql('t.flags')})
                SELECT * EXCLUDE (kind) FROM shown
                ORDER BY kind = 2, row_number() OVER (PARTITION BY kind ORDER BY record_id), kind LIMIT 4"""
        ).to_arrow_table().to_pylist()
    finally:
        con.close()
    if not rows:
        return {}
    return {"preview": dg.MetadataValue.md(thumbnails_markdown(settings.root().root, rows))}


def _dataset_exports(settings: PipelineSettings, _partition: None) -> dict:
    return {"exports": dg.MetadataValue.path(str(settings.root().exports))}


def _dataset_metadata(settings: PipelineSettings, partition: None) -> dict:
    from medtrinity_assets.defs.rollup import source_rollup_metadata  # sums the shards per source

    return {**_dataset_exports(settings, partition), **source_rollup_metadata(settings)}


# Dagster-only metadata a stage adds beside its report (previews, links).
EXTRA_METADATA: dict[str, Callable[[PipelineSettings, str | None], dict]] = {
    "triplets": _triplet_thumbnails,
    "medtrinity_dataset": _dataset_metadata,
}


def build_assets(registry=STAGES) -> dict[str, dg.AssetsDefinition]:
    return {stage.name: stage_asset(stage) for stage in registry}


ASSETS_BY_NAME = build_assets()
ASSETS = list(ASSETS_BY_NAME.values())
PARTITIONED_ASSETS = [ASSETS_BY_NAME[stage.name] for stage in STAGES if stage.partitioned]
# Each stage's asset is also a module attribute under its name
# (``from medtrinity_assets.defs.assets import triplets``), a new stage's included.
globals().update(ASSETS_BY_NAME)


# The quarantine tables are written by every stage as a side table; declaring them as an asset
# lets SQL models name them with ref('quarantine') and shows them in the lineage graph.
quarantine = dg.AssetSpec(
    "quarantine",
    group_name=PIPELINE_GROUP,
    description="Files and records each stage could not use, with stage and reason (Parquet per stage "
    "and source under tables/quarantine/). Written by the pipeline assets as they run.",
    kinds={"parquet"},
)
