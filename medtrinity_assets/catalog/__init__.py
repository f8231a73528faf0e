from medtrinity_assets.catalog.load import (
    CatalogError,
    CatalogLoad,
    SpecProblem,
    load_catalog,
    load_catalog_report,
    load_spec,
    source_root,
)
from medtrinity_assets.catalog.spec import SourceSpec

__all__ = [
    "CatalogError", "CatalogLoad", "SourceSpec", "SpecProblem", "load_catalog", "load_catalog_report", "load_spec",
    "source_root",
]
