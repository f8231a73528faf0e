from medtrinity_assets.catalog.load import (
    CatalogError,
    load_catalog,
    load_spec,
    source_root,
)
from medtrinity_assets.catalog.spec import SourceSpec

__all__ = ["CatalogError", "SourceSpec", "load_catalog", "load_spec", "source_root"]
