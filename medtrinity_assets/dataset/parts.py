"""Per-partition parts of the final dataset, cached by the content of their triplets file.

Assembling the dataset has an expensive side that depends on one partition alone (reading its
triplets, deriving the dedup inputs, building every export record and reading each exportable
image's bytes) and a cheap side that needs all of them (cross-source dedup, the split guard,
concatenation). The first side is done here, once per triplets file, into
``<parts>/<partition>.parquet``; ``manifest.json`` beside the parts records the sha256 of the
triplets file each part was built from. A rerun rebuilds only the parts whose triplets changed,
drops the parts whose triplets are gone and leaves the others alone, so one new or changed
source costs one part plus the global step.

A part holds the TRIPLETS columns (the dataset table is their union) and, per row, what the
exports need: the dedup inputs out of the provenance JSON, the flags that hold the image back,
the image path as the exports folder sees it, the reviewer record and the LLaVA record as JSON
text, the conversation and box as typed columns, and for rows that may be exported (verified,
not held back) the PNG bytes and the WebDataset sample's tar blocks, so the global step writes
the shards by concatenation. Nothing in a part depends on another partition, so a part built in an
incremental run is byte-identical to the one a full rebuild makes.

``PART_VERSION`` and the settings (the exports' image prefix, the coarse-caption option) are in
the manifest: a change to either rebuilds every part, never mixes layouts. The dedup pass keeps
its pixel comparisons beside the parts (``pixel_matches.parquet``, dedup.RememberedComparer).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from medtrinity_assets import schemas
from medtrinity_assets.duckdb_sql import connect, read_parquet
from medtrinity_assets.dataset.records import box_of, held_back_flags, llava_record, review_record
from medtrinity_assets.dataset.training_files import webdataset_blocks
from medtrinity_assets.splits import SPLIT_NAMES
from medtrinity_assets.storage import atomic_path, make_dirs, sha256_file

# Bump when a part's columns or the way a row is turned into export records change.
PART_VERSION = "dataset-part-2"
PARTS_FOLDER = "medtrinity_dataset_parts"
MANIFEST_FILE = "manifest.json"
# The dedup pass's pixel comparisons of the last run (dedup.RememberedComparer).
PIXEL_MATCHES_FILE = "pixel_matches.parquet"
_MATCHES_SCHEMA = pa.schema([("kept_image", pa.string()), ("image", pa.string()), ("correlation", pa.float64()),
                             ("ssim", pa.float64()), ("reason", pa.string())])
# Rows per record batch while a part is written or read (bounds memory: the batch carries PNGs).
BATCH_ROWS = 128
# <source_id>.s<i>of<n>: a shard of a source (catalog/shards.py); a plain key is a whole source.
_SHARD_KEY = re.compile(r"^(?P<source>.+)\.s(?P<index>\d+)of(?P<count>\d+)$")

CONVERSATION = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
PART_SCHEMA = pa.schema(
    [
        *schemas.TRIPLETS,
        ("source_file", pa.string()),  # from provenance: the dedup pass's volume grouping
        ("slice_index", pa.int64()),
        ("held_back", pa.list_(pa.string())),  # the row's HELD_BACK_FLAGS
        ("image_ref", pa.string()),  # image_path relative to the exports folder
        ("review_json", pa.string()),  # the record the rejected / held-back JSONL files carry
        ("llava_json", pa.string()),  # the LLaVA conversation line; null when not exportable
        ("conversations", CONVERSATION),
        ("roi", pa.list_(pa.int64())),
        ("roi_origin", pa.string()),
        ("image_bytes", pa.binary()),  # the normalized PNG; null when not exportable
        # The WebDataset sample's tar blocks around the PNG (training_files.webdataset_blocks).
        ("wds_png_header", pa.binary()),
        ("wds_tail", pa.binary()),
    ]
)


# PNG bytes are compressed already: zstd would spend time on them for nothing.
PART_COMPRESSION = {name: "none" if name == "image_bytes" else "zstd" for name in PART_SCHEMA.names}


@dataclass(frozen=True)
class PartSettings:
    """What every part depends on beside its own triplets file."""

    image_prefix: str  # the data root as seen from the exports folder ("..")
    include_coarse_caption: bool = False

    def key(self) -> str:
        text = json.dumps([PART_VERSION, self.image_prefix, self.include_coarse_caption])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def image_ref(self, image_path: str | None) -> str | None:
        """A data-root-relative image path as a path relative to the exports folder."""
        if not image_path:
            return None
        return posixpath.normpath(posixpath.join(self.image_prefix, image_path))


def image_prefix(images_root: Path, exports_dir: Path) -> str:
    """The data root as a relative path from the exports folder, '/'-separated."""
    relative = os.path.relpath(Path(images_root).resolve(), Path(exports_dir).resolve())
    return Path(relative).as_posix()


def part_order(name: str) -> tuple[str, int, str]:
    """Parts sort by source, then shard number, so a sharded source's rows stay together."""
    match = _SHARD_KEY.match(name)
    if match:
        return match["source"], int(match["index"]), name
    return name, -1, name


def shard_count_of(name: str) -> int:
    """How many shards the partition ``name`` is one of (1: a whole source)."""
    match = _SHARD_KEY.match(name)
    return int(match["count"]) if match else 1


def _triplet_rows(triplets_path: Path) -> Iterator[dict]:
    """The triplets file's rows in (source_id, record_id) order, with the TRIPLETS columns (a
    column an older file lacks is null) and the dedup inputs out of the provenance JSON."""
    con = connect(memory_limit="512MB", threads=1)
    try:
        relation = read_parquet(triplets_path)
        present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
        columns = [
            name if name in present else f"NULL::{_duck_type(schemas.TRIPLETS.field(name).type)} AS {name}"
            for name in schemas.TRIPLETS.names
        ]
        query = f"""SELECT {', '.join(columns)},
                       json_extract_string(provenance, '$.source_file') AS source_file,
                       TRY_CAST(json_extract(provenance, '$.slice_index') AS BIGINT) AS slice_index
                FROM {relation} ORDER BY source_id, record_id"""
        for batch in con.sql(query).to_arrow_reader(BATCH_ROWS):
            yield from batch.to_pylist()
    finally:
        con.close()


def _duck_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_list(arrow_type):
        return _duck_type(arrow_type.value_type) + "[]"
    return {pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN", pa.int64(): "BIGINT", pa.int32(): "INTEGER",
            pa.float64(): "DOUBLE", pa.float32(): "FLOAT"}.get(arrow_type, "VARCHAR")


def _part_row(row: dict, settings: PartSettings, images_root: Path, triplets_path: Path) -> dict:
    held = held_back_flags(row)
    ref = settings.image_ref(row.get("image_path"))
    box, origin = box_of(row.get("rois"), row.get("primary_roi_id"))
    part = {**row, "held_back": held, "image_ref": ref, "review_json": json.dumps(review_record(row, ref), ensure_ascii=False),
            "roi": box, "roi_origin": origin}
    if not held and row.get("verified") is True and row.get("split") in SPLIT_NAMES:
        record = llava_record(row, settings.include_coarse_caption, image=ref)
        part["llava_json"] = json.dumps(record, ensure_ascii=False)
        part["conversations"] = record["conversations"]
        image = images_root / row["image_path"]
        try:
            part["image_bytes"] = image.read_bytes()
        except OSError as error:
            # The normalize stage wrote it content-addressed: a missing file is a damaged data root.
            raise FileNotFoundError(
                f"image {image} of record {row['record_id']} (from {triplets_path}) cannot be read "
                f"({type(error).__name__}); re-run normalized_images for its source"
            ) from error
        part["wds_png_header"], part["wds_tail"] = webdataset_blocks(
            row["record_id"], len(part["image_bytes"]), part["llava_json"], row.get("description") or "")
    return part


def build_part(triplets_path: Path, out_path: Path, images_root: Path, settings: PartSettings) -> int:
    """Write one part from one triplets file; returns its row count."""
    rows = 0
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, PART_SCHEMA, compression=PART_COMPRESSION) as writer:
            batch: list[dict] = []
            for row in _triplet_rows(triplets_path):
                batch.append(_part_row(row, settings, images_root, triplets_path))
                if len(batch) == BATCH_ROWS:
                    writer.write_table(pa.Table.from_pylist(batch, schema=PART_SCHEMA))
                    rows += len(batch)
                    batch = []
            if batch or rows == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=PART_SCHEMA))
                rows += len(batch)
    return rows


@dataclass
class PartsSync:
    """What ``sync_parts`` did: the parts in order and which of them it (re)built or removed."""

    parts: list[Path]
    built: list[str]
    reused: list[str]
    removed: list[str]


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def sync_parts(triplet_paths: list[Path], parts_dir: Path, images_root: Path, settings: PartSettings) -> PartsSync:
    """Bring ``parts_dir`` in line with the triplets files: one part per file, rebuilt only where
    the file's sha256 (or the settings) changed since the part was made."""
    names = [Path(p).stem for p in triplet_paths]
    if len(set(names)) != len(names):
        raise ValueError(f"two triplets files share a partition name: {sorted(triplet_paths)}")
    manifest_path = Path(parts_dir) / MANIFEST_FILE
    manifest = _read_manifest(manifest_path)
    known = manifest.get("parts", {}) if manifest.get("settings") == settings.key() else {}
    entries, built, reused = {}, [], []
    for triplets_path in sorted(triplet_paths, key=lambda p: part_order(Path(p).stem)):
        name = Path(triplets_path).stem
        digest = sha256_file(Path(triplets_path))
        out = Path(parts_dir) / f"{name}.parquet"
        if known.get(name, {}).get("triplets_sha256") == digest and out.exists():
            entries[name] = known[name]
            reused.append(name)
            continue
        rows = build_part(Path(triplets_path), out, Path(images_root), settings)
        entries[name] = {"triplets_sha256": digest, "rows": rows}
        built.append(name)
    removed = []
    if Path(parts_dir).is_dir():
        for stale in sorted(Path(parts_dir).glob("*.parquet")):
            if stale.stem not in entries and stale.name != PIXEL_MATCHES_FILE:
                stale.unlink()
                removed.append(stale.stem)
    make_dirs(Path(parts_dir))
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps({"version": PART_VERSION, "settings": settings.key(), "parts": entries},
                                  indent=1, sort_keys=True) + "\n", encoding="utf-8")
    parts = [Path(parts_dir) / f"{name}.parquet" for name in entries]
    return PartsSync(parts, built, reused, removed)



def triplets_files(triplets_folder: Path, source_ids) -> list[Path]:
    """The triplets files the dataset is made of: one per partition (a source or one of its
    shards) of the given sources, in part order."""
    folder = Path(triplets_folder)
    if not folder.is_dir():
        return []
    wanted = set(source_ids)
    # A source split anew (2 shards, later 4) leaves the older set's files behind: per source,
    # only the shard count written last is read, so no record enters the dataset twice. A set
    # still being materialized counts with the shards it has so far.
    sets: dict[tuple[str, int], list[Path]] = {}
    for path in folder.glob("*.parquet"):
        source = part_order(path.stem)[0]
        if source in wanted:
            sets.setdefault((source, shard_count_of(path.stem)), []).append(path)
    newest: dict[str, tuple[float, int]] = {}
    for (source, count), files in sets.items():
        written = max(p.stat().st_mtime for p in files)
        newest[source] = max(newest.get(source, (written, count)), (written, count))
    found = [p for (source, count), files in sets.items() if newest[source][1] == count for p in files]
    return sorted(found, key=lambda p: part_order(p.stem))


def triplets_fingerprint(files: list[Path], known: dict) -> tuple[str, dict]:
    """One version for a set of triplets files: the sha256 over their names and content hashes.

    ``known`` maps a file name to ``[size, mtime_ns, sha256]`` from an earlier call; a file whose
    size and time did not change is not read again. Returns the version and the new map. A file
    rewritten with the same rows keeps the version, so re-running a partition that changed
    nothing does not make the dataset look stale.
    """
    state, digest = {}, hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed while listing: it is not part of this version
            continue
        previous = known.get(path.name)
        if previous and previous[0] == stat.st_size and previous[1] == stat.st_mtime_ns:
            sha = previous[2]
        else:
            sha = sha256_file(path)
        state[path.name] = [stat.st_size, stat.st_mtime_ns, sha]
        digest.update(f"{path.name}\x1f{sha}\n".encode("utf-8"))
    return digest.hexdigest(), state


def read_pixel_matches(path: Path) -> dict:
    """The pixel matches a previous run kept ({} when none, or unreadable: they are only a cache)."""
    from medtrinity_assets.dataset.dedup import PixelMatch

    try:
        rows = pq.read_table(path, schema=_MATCHES_SCHEMA).to_pylist()
    except (OSError, pa.ArrowInvalid):
        return {}
    return {(r["kept_image"], r["image"]): PixelMatch(r["correlation"], r["ssim"], r["reason"]) for r in rows}


def write_pixel_matches(path: Path, matches: dict) -> None:
    rows = [{"kept_image": kept, "image": image, "correlation": m.correlation, "ssim": m.ssim, "reason": m.reason}
            for (kept, image), m in sorted(matches.items())]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=_MATCHES_SCHEMA), tmp, compression="zstd")
