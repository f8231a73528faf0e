"""The per-source roll-up in the UI: shown on medtrinity_dataset's materialization, since that is
the asset a user reads to see the whole pipeline; a sharded source sums its shards there."""


import dagster as dg

from medtrinity_assets.catalog.fingerprint import source_state
from medtrinity_assets.dataset.rollup import rollup_markdown, source_rollup
from medtrinity_assets.pipeline import PARTITION_TABLES


def source_rollup_metadata(settings) -> dict:
    """Per source, its partitions as its files split them now (only sources with a table)."""
    root = settings.root()
    rollups = {}
    for source_id, spec in sorted(settings.specs().items()):
        partitions = source_state(spec).partitions or (source_id,)
        stages = source_rollup(root, partitions, PARTITION_TABLES)
        if stages[PARTITION_TABLES[0]].partitions:
            rollups[source_id] = stages
    summary = {source_id: {stage: r.as_dict() for stage, r in stages.items()} for source_id, stages in rollups.items()}
    return {
        "sources_rollup": dg.MetadataValue.md(rollup_markdown(rollups, PARTITION_TABLES[0], PARTITION_TABLES[-1])),
        "sources_rollup_json": dg.MetadataValue.json(summary),
    }
