"""Partition keys and shards: how one source becomes one or many partitions.

A partition key is the source id (``kvasir_seg``) or, for a source split into shards,
``<source_id>.s<i>of<n>`` (``kvasir_seg.s03of16``): ``i`` zero-padded to the width of ``n``,
``n`` a power of two. The shard count follows the number of files (``shard_count``), and a file
belongs to the shard given by a hash of its path relative to the source root (``shard_of``).

Why a hash of the path, and why powers of two: a file's shard depends only on its own path, so
adding or removing other files never moves it; and with ``n`` a power of two the shard is the
low bits of the hash, so when a growing source doubles its count each shard splits in two (shard
``i`` of ``n`` becomes ``i`` and ``i + n`` of ``2n``) and no file moves between unrelated shards.
Pure Python, no Dagster: the sensor, the CLI and the stages all use these functions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Files per shard when a spec gives no shard_size: one shard of a few thousand 2D images is a
# few minutes of ingest on one core, short enough to retry and long enough to be worth a run.
DEFAULT_SHARD_SIZE = 2000

_KEY = re.compile(r"^(?P<source>[a-z][a-z0-9_]{1,63})\.s(?P<index>\d+)of(?P<count>\d+)$")


@dataclass(frozen=True, order=True)
class Shard:
    index: int
    count: int

    def __post_init__(self):
        if self.count < 2 or self.count & (self.count - 1):
            raise ValueError(f"shard count {self.count} is not a power of two of at least 2")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is outside 0..{self.count - 1}")

    @property
    def suffix(self) -> str:
        width = len(str(self.count))
        return f"s{self.index:0{width}d}of{self.count}"


def partition_key(source_id: str, shard: Shard | None) -> str:
    """The partition key of a source (``shard`` None) or of one of its shards."""
    return source_id if shard is None else f"{source_id}.{shard.suffix}"


def parse_partition_key(key: str) -> tuple[str, Shard | None]:
    """(source id, shard or None) of a partition key; ValueError naming the key when it is
    malformed (a shard number not padded to the width of the count reads as another key)."""
    if "." not in key:
        return key, None
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"partition key {key!r} is neither a source id nor '<source>.s<i>of<n>'")
    shard = Shard(int(match["index"]), int(match["count"]))
    if partition_key(match["source"], shard) != key:
        raise ValueError(f"partition key {key!r}: the shard number must be padded to the width of the count ({shard.suffix})")
    return match["source"], shard


def path_hash(relative_path: str) -> int:
    """A stable 64-bit hash of a POSIX path relative to the source root (sha256, not Python's
    salted ``hash``): the same path gives the same shard in every process and release."""
    normalized = relative_path[2:] if relative_path.startswith("./") else relative_path
    digest = hashlib.sha256(normalized.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little")


def shard_of(relative_path: str, count: int) -> int:
    """The shard (0..count-1) a file belongs to: the low bits of its path hash."""
    if count < 1 or count & (count - 1):
        raise ValueError(f"shard count {count} is not a power of two")
    return path_hash(relative_path) & (count - 1)


def shard_count(files: int, shard_size: int | None = None) -> int:
    """The smallest power of two n with files / n <= shard_size (1: not sharded)."""
    size = shard_size or DEFAULT_SHARD_SIZE
    if size < 1:
        raise ValueError(f"shard_size must be at least 1, not {size}")
    count = 1
    while files > count * size:
        count *= 2
    return count


def shards_for(count: int) -> list[Shard | None]:
    """The shards of a source split ``count`` ways ([None] for an unsharded source)."""
    return [None] if count == 1 else [Shard(index, count) for index in range(count)]


def partition_keys(source_id: str, count: int) -> list[str]:
    """Every partition key of a source split ``count`` ways, in shard order."""
    return [partition_key(source_id, shard) for shard in shards_for(count)]


def owns(shard: Shard | None, relative_path: str | None) -> bool:
    """Whether ``shard`` (None: the whole source) holds the file at ``relative_path``. An item
    without a file (None, "", ".": a source-wide problem) belongs to shard 0 only, so it is
    reported once however many shards read the source."""
    if shard is None:
        return True
    if relative_path in (None, "", "."):
        return shard.index == 0
    return shard_of(relative_path, shard.count) == shard.index


def partitions_on_disk(folder, source_id: str) -> list[str]:
    """The partition keys of ``source_id`` whose tables ``<key>.parquet`` are in ``folder`` (one
    stage's table folder), for readers that take a source whole (expert training, roll-ups).

    A source split anew (2 shards, later 4) leaves the older set's files behind until they are
    removed; only one complete set is returned: the one written last (whose oldest file is the
    newest), so no record is read twice. ``[]`` when no complete set exists."""
    from pathlib import Path

    folder = Path(folder)
    sets: dict[int, dict[str, float]] = {}
    for path in folder.glob(f"{source_id}*.parquet") if folder.is_dir() else ():
        key = path.name[: -len(".parquet")]
        try:
            found, shard = parse_partition_key(key)
        except ValueError:
            continue
        if found == source_id:
            sets.setdefault(shard.count if shard else 1, {})[key] = path.stat().st_mtime
    complete = {count: keys for count, keys in sets.items() if len(keys) == count}
    if not complete:
        return []
    count = max(complete, key=lambda n: (min(complete[n].values()), n))
    return partition_keys(source_id, count)
