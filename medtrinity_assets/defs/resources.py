"""The resources: where data lives and which catalog to read (every asset), and which writer
describes the records (the descriptions asset)."""


import os
from functools import lru_cache
from pathlib import Path

import dagster as dg

from medtrinity_assets.catalog import SourceSpec, load_catalog
from medtrinity_assets.catalog.shards import parse_partition_key
from medtrinity_assets.generation.writers import WriterConfig
from medtrinity_assets.paths import DataRoot, catalog_dir, experts_dir, knowledge_dir
from medtrinity_assets.settings import load_or_create_salt


@lru_cache(maxsize=4)
def _cached_catalog(folder: str, signature: tuple) -> dict[str, SourceSpec]:
    return load_catalog(Path(folder))


def _catalog_signature(folder: Path) -> tuple:
    """Name, size and change time of every spec file: a spec added, edited or removed since the
    last read gives another signature, so the catalog is read again (no reload needed)."""
    entries = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


class PipelineSettings(dg.ConfigurableResource):
    """Paths of the data root, the catalog, the knowledge corpus and the expert specs (defaults
    from the environment)."""

    data_root: str = ""
    catalog: str = ""
    knowledge: str = ""
    experts: str = ""  # folder of expert specs (grounding/experts/spec.py); default MEDTRINITY_EXPERTS

    def root(self) -> DataRoot:
        return DataRoot(self.data_root) if self.data_root else DataRoot.from_env()  # a path or an object store URL

    def catalog_folder(self) -> Path:
        return Path(self.catalog) if self.catalog else catalog_dir()

    def specs(self) -> dict[str, SourceSpec]:
        """The catalog as its folder is now (read again when a spec file changed)."""
        folder = self.catalog_folder()
        return _cached_catalog(str(folder), _catalog_signature(folder))

    def spec(self, partition: str) -> SourceSpec:
        """The spec of a partition (a source id or a shard key), bound to it (spec.partition)."""
        source_id, _shard = parse_partition_key(partition)
        specs = self.specs()
        if source_id not in specs:
            raise LookupError(
                f"partition {partition!r}: no usable spec {source_id}.yaml in {self.catalog_folder()} "
                "(removed, or it no longer loads: see the source_catalog asset's check)"
            )
        return specs[source_id].for_partition(partition)

    def knowledge_folder(self) -> Path:
        return Path(self.knowledge) if self.knowledge else knowledge_dir()

    def experts_folder(self) -> Path:
        return Path(self.experts) if self.experts else experts_dir()

    def salt(self) -> str:
        return load_or_create_salt(self.root().root)


# Environment defaults of the writer resource, read when a run starts (not at import), so the
# launchpad's run config, the CLI's flags and the environment all reach the same fields.
WRITER_ENV = {
    "kind": "MEDTRINITY_WRITER",
    "base_url": "MEDTRINITY_LLM_BASE_URL",
    "model": "MEDTRINITY_LLM_MODEL",
    "api_key_env": "MEDTRINITY_LLM_API_KEY_ENV",
    "temperature": "MEDTRINITY_LLM_TEMPERATURE",
    "max_tokens": "MEDTRINITY_LLM_MAX_TOKENS",
    "concurrency": "MEDTRINITY_LLM_CONCURRENCY",
    "max_retries": "MEDTRINITY_LLM_MAX_RETRIES",
    "on_unverified": "MEDTRINITY_LLM_ON_UNVERIFIED",
    "response_format": "MEDTRINITY_LLM_RESPONSE_FORMAT",
    "timeout_s": "MEDTRINITY_LLM_TIMEOUT_S",
}
WRITER_RESOURCE = "writer"  # the resource key of WriterSettings
NO_API_KEY = "none"  # api_key_env value for a local server that checks no key


class WriterSettings(dg.ConfigurableResource):
    """Which writer describes the records, and the model endpoint it calls (issue 9).

    Every field left empty (None) falls back to its ``MEDTRINITY_*`` environment variable
    (``WRITER_ENV``), then to ``WriterConfig``'s default, so a run's config only names what it
    changes. ``per_source`` overrides the kind for named sources (e.g. ``{"busi": "vlm"}``);
    ``prices`` is USD per million input and output tokens by model name. ``api_key_env`` names
    the environment variable holding the key, never the key; "none" for a local server."""

    kind: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    concurrency: int | None = None
    max_retries: int | None = None
    on_unverified: str | None = None
    response_format: str | None = None
    timeout_s: float | None = None
    prices: dict[str, list[float]] = {}
    per_source: dict[str, str] = {}

    def _value(self, name: str, cast=str):
        value = getattr(self, name)
        if value is None and os.environ.get(WRITER_ENV[name]):
            value = cast(os.environ[WRITER_ENV[name]])
        return value

    def config_for(self, source_id: str, data_root: DataRoot) -> WriterConfig:
        """The writer config of one source's partition (its cache under the data root)."""
        kind = self.per_source.get(source_id) or self._value("kind") or "grounded"
        if kind == "grounded":
            return WriterConfig()
        fields = {
            name: self._value(name, cast)
            for name, cast in (
                ("base_url", str), ("model", str), ("temperature", float), ("max_tokens", int),
                ("concurrency", int), ("max_retries", int), ("on_unverified", str),
                ("response_format", str), ("timeout_s", float),
            )
        }
        fields = {name: value for name, value in fields.items() if value is not None}
        api_key_env = self._value("api_key_env")
        if api_key_env is not None:
            fields["api_key_env"] = None if api_key_env.lower() == NO_API_KEY else api_key_env
        prices = {model: (float(pair[0]), float(pair[1])) for model, pair in self.prices.items()}
        return WriterConfig(kind=kind, prices=prices, cache_dir=data_root.llm_cache, **fields)
