"""The Dagster modules that read the catalog or the expert folder when they load, in import
order: a test that changes either reloads them (and reloads them again afterwards, so later
tests see the project's own)."""

import importlib

DEFS_MODULES = (
    "medtrinity_assets.defs.partitions",
    "medtrinity_assets.defs.experts",
    "medtrinity_assets.defs.assets",
    "medtrinity_assets.defs.automation",
    "medtrinity_assets.defs.catalog",
    "medtrinity_assets.definitions",
)


def reload_definitions() -> list:
    return [importlib.reload(importlib.import_module(name)) for name in DEFS_MODULES]
