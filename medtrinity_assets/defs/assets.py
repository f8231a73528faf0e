"""The pipeline's assets: each stage of DESIGN.md, partitioned by source.

Assets here only wire: they call a function of ``medtrinity_assets.stages`` for the partition,
then publish its report, a preview and the DuckDB checks of ``quality.checks``. The tables
themselves are Parquet files under the data root (written atomically by the stage), so assets
pass no data through Dagster's IO managers; lineage comes from ``deps``.
"""


import warnings
from typing import Callable

import dagster as dg

from medtrinity_assets import stages
from medtrinity_assets.dataset.exports import held_back_sql
from medtrinity_assets.defs.partitions import source_partitions
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.preview import thumbnails_markdown
from medtrinity_assets.quality.checks import checks_for, run_checks

PIPELINE_GROUP = "pipeline"


def _check_specs(asset_name: str, partitioned: bool) -> list[dg.AssetCheckSpec]:
    # Partitioned checks are a Dagster preview feature; dagster is pinned (requirements.lock),
    # and per-source check results are what a user backfilling sources needs to read.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                check.name,
                asset=asset_name,
                description=check.description,
                # Blocking: a failed ERROR check stops the downstream assets of this partition,
                # so bad rows never reach the final dataset.
                blocking=True,
                partitions_def=source_partitions if partitioned else None,
            )
            for check in checks_for(asset_name)
        ]


def _check_results(asset_name: str, data_root: DataRoot, partition: str | None) -> list[dg.AssetCheckResult]:
    results = []
    for outcome in run_checks(asset_name, data_root, partition):
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
    if not report.reasons:
        return "No file quarantined at this stage."
    lines = ["| reason | files |", "|---|---|"]
    lines += [f"| {reason.replace('|', '/')} | {count} |" for reason, count in report.reasons.most_common(20)]
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


def _partition_asset(
    name: str,
    run: Callable[[PipelineSettings, str], stages.StageReport],
    deps: list[str],
    description: str,
    extra_metadata: Callable[[PipelineSettings, str], dict] | None = None,
) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        partitions_def=source_partitions,
        deps=deps,
        check_specs=_check_specs(name, partitioned=True),
        group_name=PIPELINE_GROUP,
        description=description,
        kinds={"parquet", "duckdb"},
    )
    def _asset(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
        source_id = context.partition_key
        report = run(settings, source_id)
        context.log.info(
            f"{name}[{source_id}]: {report.rows} rows from {report.inputs} inputs, "
            f"{report.quarantined} quarantined, {report.seconds:.1f}s"
        )
        metadata = _report_metadata(report)
        if extra_metadata:
            metadata.update(extra_metadata(settings, source_id))
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=_check_results(name, settings.root(), source_id),
        )

    return _asset


def _ingest(settings: PipelineSettings, source_id: str) -> stages.StageReport:
    from medtrinity_assets.catalog import source_root
    from medtrinity_assets.catalog.fingerprint import folder_fingerprint

    spec = settings.spec(source_id)
    # Taken before reading, so a file that changes during the run makes the source stale
    # for the schedule instead of being recorded as already ingested.
    fingerprint = folder_fingerprint(source_root(spec)) or ""
    report = stages.run_ingest(spec, settings.root(), settings.salt())
    report.extra["input_fingerprint"] = fingerprint
    return report


def _triplet_thumbnails(settings: PipelineSettings, source_id: str) -> dict:
    import duckdb

    path = settings.root().table("triplets", source_id)
    if not path.exists():
        return {}
    con = duckdb.connect()
    try:
        # Annotated images first: they show what grounding found; then the rest.
        # The normalized table's burned_in column lets the thumbnail mark burned-in text (of
        # images the spec keeps). Held-back images are left out, so the four shown can be shown.
        normalized = settings.root().table("normalized_images", source_id)
        rows = con.sql(
            f"""SELECT t.*, n.burned_in FROM read_parquet('{path}') t
                LEFT JOIN read_parquet('{normalized}') n USING (record_id)
                WHERE NOT {held_back_sql('t.flags')}
                ORDER BY (t.rois LIKE '%annotation:%') DESC, t.record_id LIMIT 4"""
        ).to_arrow_table().to_pylist()
    finally:
        con.close()
    if not rows:
        return {}
    return {"preview": dg.MetadataValue.md(thumbnails_markdown(settings.root().root, rows))}


raw_records = _partition_asset(
    "raw_records",
    _ingest,
    deps=[],
    description="Ingest: one record per 2D image read from the source's own layout; protected health "
    "information stripped here (salted patient hash kept); unreadable files quarantined with a reason.",
)
normalized_images = _partition_asset(
    "normalized_images",
    lambda s, p: stages.run_normalize(s.spec(p), s.root()),
    deps=["raw_records"],
    description="Normalize: modality-aware intensity (CT windows, MR/X-ray percentiles, PET SUV, photos "
    "passed through), bounded size, content-addressed PNG, perceptual hash.",
)
rois = _partition_asset(
    "rois",
    lambda s, p: stages.run_ground(s.spec(p), s.root()),
    deps=["normalized_images"],
    description="Ground: regions of interest from the source's annotations with measured attributes "
    "(position, size, shape, intensity, texture, margin, colour, count) and relations.",
)
facts = _partition_asset(
    "facts",
    lambda s, p: stages.run_facts(s.spec(p), s.root()),
    deps=["rois"],
    description="Facts: everything a description may say about each record and ROI (modality, organs, label "
    "state, view, sides from geometry, sizes in the exported frame, measured attributes, publisher text), one "
    "row per fact with its provenance and confidence.",
)
coarse_captions = _partition_asset(
    "coarse_captions",
    lambda s, p: stages.run_coarse_captions(s.spec(p), s.root()),
    deps=["rois"],
    description="Coarse caption: metadata to one sentence (modality, organ, finding, ROI position).",
)
retrieved_knowledge = _partition_asset(
    "retrieved_knowledge",
    lambda s, p: stages.run_retrieval(s.spec(p), s.root()),
    deps=["facts", "knowledge_base"],
    description="Knowledge retrieval: passages per record from the Chroma store, filtered by modality and organ.",
)
descriptions = _partition_asset(
    "descriptions",
    lambda s, p: stages.run_descriptions(s.spec(p), s.root()),
    deps=["facts", "coarse_captions", "retrieved_knowledge"],
    description="Describe: MedTrinity's five-part description rendered from the facts by the grounded writer, "
    "then read back sentence by sentence by the verifier (unsupported claims flagged, never shipped for training).",
)
triplets = _partition_asset(
    "triplets",
    lambda s, p: stages.run_triplets(s.spec(p), s.root()),
    deps=["descriptions"],
    description="Assemble: image - ROI - description triplets with provenance and a patient-level split.",
    extra_metadata=_triplet_thumbnails,
)


@dg.asset(
    group_name=PIPELINE_GROUP,
    check_specs=_check_specs("knowledge_base", partitioned=False),
    description="Knowledge base: the project's medical knowledge corpus, chunked, embedded with the local "
    "all-MiniLM-L6-v2 model and stored in a persistent Chroma collection.",
    kinds={"chroma"},
)
def knowledge_base(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    report = stages.run_knowledge_base(settings.root(), settings.knowledge_folder())
    context.log.info(f"knowledge_base: {report.rows} chunks from {report.inputs} entries")
    return dg.MaterializeResult(
        metadata=_report_metadata(report), check_results=_check_results("knowledge_base", settings.root(), None)
    )


@dg.asset(
    group_name=PIPELINE_GROUP,
    deps=["triplets"],
    check_specs=_check_specs("medtrinity_dataset", partitioned=False),
    description="The final dataset over all materialized sources: cross-source deduplication, patient-level "
    "splits, Parquet plus LLaVA-style conversation JSONL exports and a dataset card.",
    kinds={"parquet", "duckdb"},
)
def medtrinity_dataset(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    root = settings.root()
    report = stages.run_dataset(root, list(settings.specs()))
    context.log.info(f"medtrinity_dataset: {report.rows} rows from {report.inputs} sources")
    metadata = _report_metadata(report)
    metadata["exports"] = dg.MetadataValue.path(str(root.exports))
    return dg.MaterializeResult(metadata=metadata, check_results=_check_results("medtrinity_dataset", root, None))


# The quarantine tables are written by every stage as a side table; declaring them as an asset
# lets SQL models name them with ref('quarantine') and shows them in the lineage graph.
quarantine = dg.AssetSpec(
    "quarantine",
    group_name=PIPELINE_GROUP,
    description="Files and records each stage could not use, with stage and reason (Parquet per stage "
    "and source under tables/quarantine/). Written by the pipeline assets as they run.",
    kinds={"parquet"},
)

PARTITIONED_ASSETS = [raw_records, normalized_images, rois, facts, coarse_captions, retrieved_knowledge, descriptions, triplets]
ASSETS = [knowledge_base, *PARTITIONED_ASSETS, medtrinity_dataset]
