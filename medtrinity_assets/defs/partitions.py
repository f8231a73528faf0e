"""Partition = source: one static partition per usable catalog entry."""


import dagster as dg

from medtrinity_assets.catalog import load_catalog_report

# Each spec is loaded on its own: a broken one is left out of the partitions (and reported by
# the source_catalog asset's check) instead of stopping the code location.
CATALOG_LOAD = load_catalog_report()
CATALOG = CATALOG_LOAD.specs
source_partitions = dg.StaticPartitionsDefinition(sorted(CATALOG))
DEMO_SOURCES = sorted(source_id for source_id, spec in CATALOG.items() if spec.demo)
