"""Partition = source: one static partition per catalog entry."""


import dagster as dg

from medtrinity_assets.catalog import load_catalog

CATALOG = load_catalog()
source_partitions = dg.StaticPartitionsDefinition(sorted(CATALOG))
DEMO_SOURCES = sorted(source_id for source_id, spec in CATALOG.items() if spec.demo)
