"""Where things live on disk.

Everything the pipeline writes goes under one data root (``MEDTRINITY_HOME``, default
``<repo>/var``) so a run can be moved, wiped or pointed at another disk in one place.

The data root may be an object store URL (``MEDTRINITY_HOME=s3://bucket/prefix``; see
objectstore.py and docs/STORAGE.md): the tables and blobs then live there, and what needs a
local filesystem (the warehouse file, Chroma, expert weights, the LLM cache, exports) goes under
``MEDTRINITY_LOCAL_HOME`` instead. On a local root both are the same folder.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from medtrinity_assets import objectstore

if TYPE_CHECKING:
    from upath import UPath

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


@dataclass(frozen=True)
class DataRoot:
    """The layout of the pipeline's outputs under one root folder.

    ``root`` holds the tables and blobs: a local ``Path``, or an object store location (a URL
    string or ``UPath``, kept as a ``UPath``). ``local`` holds what must be on a local disk;
    it defaults to ``root`` when that is local and to ``MEDTRINITY_LOCAL_HOME`` otherwise."""

    root: "Path | UPath"  # a str given here is read as a path or URL (objectstore.as_root)
    local: Path | None = None

    def __post_init__(self):
        root = objectstore.as_root(self.root)
        object.__setattr__(self, "root", root)
        if self.local is None:
            object.__setattr__(self, "local", objectstore.local_home() if objectstore.is_remote(root) else root)
        else:
            object.__setattr__(self, "local", Path(self.local))

    def __reduce__(self):
        # Rebuilt through __init__ in the receiving process (a process pool's worker, a Dagster
        # step), so an object store root opens there too and DuckDB connections can read it.
        return (type(self), (self.root, self.local))

    @classmethod
    def from_env(cls) -> "DataRoot":
        value = os.environ.get(objectstore.ROOT_ENV, "")
        if objectstore.is_url(value):
            root = objectstore.as_root(value)
            return cls(root.expanduser().resolve() if isinstance(root, Path) else root)
        return cls(_env_path(objectstore.ROOT_ENV, REPO_ROOT / "var"))

    @property
    def remote(self) -> bool:
        """Whether the tables and blobs are on an object store."""
        return objectstore.is_remote(self.root)

    def table(self, asset: str, partition: str | None = None) -> Path:
        """Parquet file of one asset (one file per partition for partitioned assets)."""
        if partition is None:
            return self.root / "tables" / f"{asset}.parquet"
        return self.root / "tables" / asset / f"{partition}.parquet"

    def table_glob(self, asset: str) -> str:
        return str(self.root / "tables" / asset / "*.parquet")

    def quarantine(self, stage: str, partition: str) -> Path:
        return self.root / "tables" / "quarantine" / stage / f"{partition}.parquet"

    def quarantine_glob(self) -> str:
        return str(self.root / "tables" / "quarantine" / "*" / "*.parquet")

    @property
    def blobs(self) -> Path:
        """Content-addressed store: de-identified pixel arrays, PNG images, masks."""
        return self.root / "blobs"

    @property
    def warehouse(self) -> Path:
        return self.local / "warehouse.duckdb"

    @property
    def chroma(self) -> Path:
        return self.local / "chroma"

    @property
    def exports(self) -> Path:
        return self.local / "exports"

    @property
    def models(self) -> Path:
        """Expert model weights, content-addressed per expert: models/<expert_id>/<sha256>.pt,
        each with its manifest JSON, and models/<expert_id>/current.json naming the one in use."""
        return self.local / "models"

    @property
    def query_embeddings(self) -> Path:
        """Retrieval's query vectors, one small file per (embedding model, text): a rerun or
        another partition embeds no query twice (knowledge/embedder.py)."""
        return self.local / "query_embeddings"

    @property
    def llm_cache(self) -> Path:
        """The model writers' response cache (a rerun of a partition calls no endpoint)."""
        return self.local / "llm_cache"


@contextmanager
def env_overrides(**values) -> Iterator[None]:
    """Set environment variables (e.g. MEDTRINITY_RAW for a scratch run) and restore them after,
    so a report or a test fixture leaves no setting behind for the rest of the process."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def catalog_dir() -> Path:
    return _env_path("MEDTRINITY_CATALOG", REPO_ROOT / "data" / "sources")


def raw_dir() -> Path:
    """Where users put downloaded sources: ``<raw>/<source_id>/`` in the publisher's layout."""
    return _env_path("MEDTRINITY_RAW", REPO_ROOT / "data" / "raw")


def allowed_source_roots() -> list[Path]:
    """Folders a spec's ``root:`` may point into: the raw folder, the shared real-data extracts
    and each folder of ``MEDTRINITY_ALLOWED_ROOTS`` (``os.pathsep``-separated). A spec file is
    contributed text; its root must not make ingest or ``check-source`` read arbitrary folders."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get("MEDTRINITY_ALLOWED_ROOTS", "").split(os.pathsep) if p]
    # The shipped specs name "../shared/realdata/<x>" whatever MEDTRINITY_REALDATA says.
    shipped = (REPO_ROOT.parent / "shared" / "realdata").resolve()
    return list(dict.fromkeys([raw_dir(), realdata_dir(), shipped, *extra]))


def knowledge_dir() -> Path:
    return _env_path("MEDTRINITY_KNOWLEDGE", REPO_ROOT / "data" / "knowledge")


def experts_dir() -> Path:
    """The expert specs (grounding/experts/spec.py): one YAML file per expert model."""
    return _env_path("MEDTRINITY_EXPERTS", REPO_ROOT / "data" / "experts")


def realdata_dir() -> Path:
    """The shared real-data extracts that tests read in place (never copied into the project)."""
    return _env_path("MEDTRINITY_REALDATA", REPO_ROOT.parent / "shared" / "realdata")
