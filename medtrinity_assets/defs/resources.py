"""The one resource every asset shares: where data lives and which catalog to read."""


from functools import lru_cache
from pathlib import Path

import dagster as dg

from medtrinity_assets.catalog import SourceSpec, load_catalog
from medtrinity_assets.paths import DataRoot, catalog_dir, knowledge_dir
from medtrinity_assets.settings import load_or_create_salt


@lru_cache(maxsize=4)
def _cached_catalog(folder: str) -> dict[str, SourceSpec]:
    return load_catalog(Path(folder))


class PipelineSettings(dg.ConfigurableResource):
    """Paths of the data root, the catalog and the knowledge corpus (defaults from the environment)."""

    data_root: str = ""
    catalog: str = ""
    knowledge: str = ""

    def root(self) -> DataRoot:
        return DataRoot(Path(self.data_root)) if self.data_root else DataRoot.from_env()

    def specs(self) -> dict[str, SourceSpec]:
        return _cached_catalog(str(Path(self.catalog) if self.catalog else catalog_dir()))

    def spec(self, source_id: str) -> SourceSpec:
        return self.specs()[source_id]

    def knowledge_folder(self) -> Path:
        return Path(self.knowledge) if self.knowledge else knowledge_dir()

    def salt(self) -> str:
        return load_or_create_salt(self.root().root)
