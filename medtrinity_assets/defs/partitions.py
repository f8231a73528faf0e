"""Partition = source (or one shard of a large source), following the data.

The partitions are dynamic: ``raw_files_sensor`` registers one for every source that has a spec
and files (several, ``<id>.s<i>of<n>``, for a source larger than its shard size:
catalog/shards.py), and the CLI registers those it runs. A new YAML file with files behind it
becomes a partition on the sensor's next tick, without reloading the code location.
"""


import dagster as dg

from medtrinity_assets.catalog import load_catalog_report

SOURCES_PARTITIONS = "sources"
source_partitions = dg.DynamicPartitionsDefinition(name=SOURCES_PARTITIONS)

# The catalog as the code location loaded it: the source_catalog asset's metadata and the
# expert models' lineage. Run-time code (sensor, schedule, assets) reads the catalog again
# (PipelineSettings.specs). Each spec is loaded on its own: a broken one is left out and
# reported by the source_catalog asset's check instead of stopping the code location.
CATALOG_LOAD = load_catalog_report()
CATALOG = CATALOG_LOAD.specs
DEMO_SOURCES = sorted(source_id for source_id, spec in CATALOG.items() if spec.demo)
