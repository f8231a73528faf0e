"""Where things live on disk.

Everything the pipeline writes goes under one data root (``MEDTRINITY_HOME``, default
``<repo>/var``) so a run can be moved, wiped or pointed at another disk in one place.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


@dataclass(frozen=True)
class DataRoot:
    """The layout of the pipeline's outputs under one root folder."""

    root: Path

    @classmethod
    def from_env(cls) -> "DataRoot":
        return cls(_env_path("MEDTRINITY_HOME", REPO_ROOT / "var"))

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
        return self.root / "warehouse.duckdb"

    @property
    def chroma(self) -> Path:
        return self.root / "chroma"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def models(self) -> Path:
        """Expert model weights, content-addressed per expert: models/<expert_id>/<sha256>.pt,
        each with its manifest JSON, and models/<expert_id>/current.json naming the one in use."""
        return self.root / "models"

    @property
    def llm_cache(self) -> Path:
        """The model writers' response cache (a rerun of a partition calls no endpoint)."""
        return self.root / "llm_cache"


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
