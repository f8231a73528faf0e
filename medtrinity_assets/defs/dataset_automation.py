"""How the final dataset (and the warehouse's SQL models) follow the per-source triplets.

Two facts of Dagster 1.13 shape this:

- Staleness across a partitioned -> unpartitioned edge is computed only while the upstream
  asset has fewer than 100 partitions (``SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD`` in
  dagster/_core/definitions/data_version.py); with more (the 103-source catalog, or a few
  sharded sources) the dataset showed as fresh however far it lagged. So the set of triplets
  files is also an unpartitioned, observed asset, ``triplets_index``: the sensor below observes
  it with a data version computed from the files' content, the dataset depends on it, and a new
  version marks the dataset stale ("has a new dependency data version") at any partition count.
- ``AutomationCondition.eager()`` waits while *any* upstream partition is missing: a source
  whose files never arrived or whose run failed would hold the dataset back for ever, while the
  dataset is built over the sources that are there. ``follow_triplets`` therefore asks for a new
  index version (not for every triplets partition to exist), and still waits while any triplets
  partition is being made (queued or running), while the dataset itself runs, and while the index
  was never observed (no triplets at all).

The dataset is requested once per new index version: the request is "handled" until the index
changes again, so a tick with nothing new requests nothing.
"""


import json

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_IS_USER_PROVIDED_TAG, DATA_VERSION_TAG

from medtrinity_assets.dataset.parts import triplets_files, triplets_fingerprint
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.pipeline import TRIPLETS_INDEX

FOLLOW_TRIPLETS = "follow_triplets"

triplets_index = dg.AssetSpec(
    TRIPLETS_INDEX,
    deps=["triplets"],
    group_name="pipeline",
    description="The set of triplets files the final dataset is made of (tables/triplets/*.parquet), "
    "observed by triplets_index_sensor: its data version is a hash of the files' names and contents, "
    "so the dataset shows as stale once a partition's triplets change, however many partitions there are.",
    kinds={"parquet"},
)


def follow_triplets() -> dg.AutomationCondition:
    index = dg.AssetSelection.assets(TRIPLETS_INDEX)
    return (
        (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated().allow(index))
        .since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing().allow(index)
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(FOLLOW_TRIPLETS)


# Stage.automation names one of these (pipeline.py); the Dagster layer builds the condition.
CONDITIONS = {FOLLOW_TRIPLETS: follow_triplets}


def condition_for(name: str | None) -> dg.AutomationCondition | None:
    if name is None:
        return None
    if name not in CONDITIONS:
        raise ValueError(f"unknown automation policy {name!r}; known: {sorted(CONDITIONS)}")
    return CONDITIONS[name]()


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def triplets_index_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettings) -> dg.SensorResult:
    """Record a new ``triplets_index`` version when the triplets files' content changed. Launches no run: the
    automation condition sensor requests the dataset on the new version. The cursor keeps each
    file's size, time and sha256, so only rewritten files are read again."""
    state = json.loads(context.cursor) if context.cursor else {}
    files = triplets_files(settings.root().table("triplets", "_").parent, settings.specs())
    version, known = triplets_fingerprint(files, state.get("files", {}))
    cursor = json.dumps({"version": version, "files": known}, sort_keys=True)
    # Nothing to observe before the first triplets file; after that, an emptied folder is news too.
    if version == state.get("version") or (not files and "version" not in state):
        return dg.SensorResult(cursor=cursor)
    # An external asset is updated by reporting its materialization (Dagster counts only
    # materializations as updates of an asset without an observe function); the data version
    # travels in these tags, as MaterializeResult(data_version=) would set them.
    event = dg.AssetMaterialization(
        TRIPLETS_INDEX,
        metadata={"files": len(files), "partitions": dg.MetadataValue.json([p.stem for p in files])},
        tags={DATA_VERSION_TAG: version, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"},
    )
    return dg.SensorResult(asset_events=[event], cursor=cursor)


# Evaluates every asset's automation condition (the dataset's, the SQL models', any other a
# stage declares). Running by default: `dagster dev` starts the daemon that ticks it.
automation_condition_sensor = dg.AutomationConditionSensorDefinition(
    "automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
