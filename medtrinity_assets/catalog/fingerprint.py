"""Fingerprints of a source's files, for the sensor and the staleness schedule."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from medtrinity_assets.catalog.shards import partition_keys, shard_count
from medtrinity_assets.containment import walk_files


@dataclass(frozen=True)
class SourceState:
    """A source's files as the sensor sees them: their fingerprint (None: no files), how many,
    and the partition keys they make (none without files; several when sharded)."""

    source_id: str
    fingerprint: str | None
    files: int
    partitions: tuple[str, ...]


def source_state(spec) -> SourceState:
    """The fingerprint, file count and partition keys of one source's folder now."""
    from medtrinity_assets.catalog.load import source_root

    fingerprint, files = folder_state(source_root(spec))
    keys = tuple(partition_keys(spec.id, shard_count(files, spec.shard_size))) if fingerprint else ()
    return SourceState(spec.id, fingerprint, files, keys)


def folder_fingerprint(root: Path) -> str | None:
    """Hash of every file's relative path, size and modification time under ``root``.

    Unchanged files give the same fingerprint, so the sensor never re-triggers on them; adding,
    removing, replacing or touching a file changes it. ``None`` when the folder is absent or empty.
    Hidden files (editor swap files, partial downloads named .*) are ignored.
    """
    return folder_state(root)[0]


def folder_state(root: Path) -> tuple[str | None, int]:
    """(``folder_fingerprint``, number of files) from one walk of the folder."""
    root = Path(root)
    if not root.is_dir():
        return None, 0
    entries = []
    # Links that leave the folder are not followed (a link to / would hash the whole disk) and a
    # link back into it is walked once (a self-link would never end): containment.walk_files.
    for relative in walk_files(root):
        try:
            stat = (root / relative).stat()
        except OSError:
            continue
        entries.append(f"{relative}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}")
    if not entries:
        return None, 0
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:32], len(entries)


def partitions_to_refresh(
    current: dict[str, str | None], last_materialized: dict[str, str | None]
) -> dict[str, str]:
    """Which sources need a run, and why: never materialized, or files changed since.

    ``current``: source id -> fingerprint of its files now (None: no files, nothing to do).
    ``last_materialized``: source id -> fingerprint recorded by its last ingest (absent: never).
    """
    reasons = {}
    for source_id, fingerprint in sorted(current.items()):
        if fingerprint is None:
            continue
        if source_id not in last_materialized:
            reasons[source_id] = "missing"
        elif last_materialized[source_id] != fingerprint:
            reasons[source_id] = "stale"
    return reasons
