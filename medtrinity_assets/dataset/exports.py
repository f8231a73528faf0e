"""Stage 7b: the final dataset over all sources, and its training-ready exports.

``build_dataset`` brings the per-partition parts up to date (``parts``: one per triplets file,
rebuilt only when that file's content changed), deduplicates across all of them (``dedup``: hash
matches confirmed on the normalized pixels), writes the DATASET Parquet (duplicates stay in it,
with ``duplicate_of``, so the decision can be audited), the DUPLICATE_PAIRS table of every
candidate pair and its verdict, and then, streaming the parts, the exports:

- ``llava_<split>.jsonl``: LLaVA-style conversations of the verified, non-duplicate rows; their
  ``image`` paths are relative to the exports folder (the card says so and where they lead);
- ``hf/<split>-NNNNN.parquet`` and ``webdataset/<split>-NNNNNN.tar``: the same conversations
  with the PNG bytes inside (``training_files``);
- ``rejected_unverified.jsonl``: rows whose description the verifier flagged, with the flags,
  so a contradiction is never shipped for training but is never lost either;
- ``held_back_flagged.jsonl``: rows whose image carries a review flag in ``HELD_BACK_FLAGS``
  (text burned into the pixels may be a patient's name: DICOM says so, or the normalize stage
  found text or markers in the pixels): kept out of training the same way,
  whatever the verifier said, and listed for a reviewer;
- ``held_back_duplicate_conflicts.jsonl``: rows whose pixels match another row carrying other
  labels (``duplicate_conflicts``): at most one of the two can be right, and the pipeline cannot
  tell which, so both copies stay out of training and each is listed with the reason;
- ``dataset_card.md``: counts per source, modality and split, licenses, rejection fraction,
  the files, the root of the image paths and how to load each format.

Rows are written part after part (a source's shards in shard order), each part in record order.

Each exported conversation carries the publisher's own text (``source_text``: captions and
question-answer pairs) beside the generated description, never inside it.

Every file is written beside its final path and renamed into place.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from medtrinity_assets import schemas
from medtrinity_assets.dataset.dedup import (
    MIN_CORRELATION,
    MIN_SSIM,
    NEAR_DUPLICATE_MAX_HAMMING,
    VERDICTS,
    DedupRow,
    ImageComparer,
    RememberedComparer,
    find_duplicates,
    volume_group,
)
from medtrinity_assets.dataset.parts import (
    BATCH_ROWS,
    PART_SCHEMA,
    PARTS_FOLDER,
    PIXEL_MATCHES_FILE,
    PartSettings,
    image_prefix,
    read_pixel_matches,
    sync_parts,
    write_pixel_matches,
)
from medtrinity_assets.dataset.records import (  # noqa: F401  (exported here too, as before)
    HELD_BACK_FLAGS,
    MODALITY_WORDS,
    held_back_flags,
    held_back_sql,
    instruction_for,
    llava_record,
    parsed_source_text,
    review_record,
)
from medtrinity_assets.dataset.training_files import (
    HF_FOLDER,
    SHARD_BYTES,
    WEBDATASET_FOLDER,
    TrainingFiles,
)
from medtrinity_assets.splits import SPLIT_NAMES, SPLIT_VERSION
from medtrinity_assets.duckdb_sql import connect, literal, read_parquet
from medtrinity_assets.storage import atomic_path, write_table

REJECTED_FILE = "rejected_unverified.jsonl"
FLAGGED_FILE = "held_back_flagged.jsonl"
CONFLICTS_FILE = "held_back_duplicate_conflicts.jsonl"
CARD_FILE = "dataset_card.md"
# The table of candidate pairs, beside the dataset table (DataRoot.table(DUPLICATE_PAIRS_TABLE)).
DUPLICATE_PAIRS_TABLE = "duplicate_pairs"
_DUPLICATES_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("duplicate_of", pa.string()),
        ("kept_split", pa.string()),
        ("duplicate_conflicts", pa.list_(pa.string())),
    ]
)


def llava_file(split: str) -> str:
    return f"llava_{split}.jsonl"


def _empty_parts_relation(con) -> str:
    """A zero-row relation with the part columns, for a dataset built from no source."""
    con.register("_no_parts", PART_SCHEMA.empty_table())
    return "_no_parts"


def _dedup_rows(con, relation: str) -> tuple[list[DedupRow], dict[str, str]]:
    """The rows the dedup pass reads (the parts carry them ready), and each record's split."""
    keys = con.execute(
        f"""SELECT source_id, record_id, image_sha256, phash, split, image_path, patient_hash, labels,
                   label_state, source_file, slice_index
            FROM {relation} ORDER BY source_id, record_id"""
    ).fetchall()
    rows, split_of = [], {}
    for source_id, record_id, sha, phash, split, image_path, patient, labels, state, source_file, slice_index in keys:
        split_of[record_id] = split
        rows.append(
            DedupRow(
                source_id=source_id, record_id=record_id, image_sha256=sha, phash=phash,
                group=volume_group(source_id, source_file, slice_index), patient_hash=patient,
                labels=tuple(labels or ()), label_state=state, image_path=image_path,
            )
        )
    return rows, split_of


def _pair_record(pair) -> dict:
    row, kept = pair.row, pair.kept
    return {
        "record_id": row.record_id, "source_id": row.source_id, "patient_hash": row.patient_hash,
        "labels": list(row.labels), "label_state": row.label_state,
        "kept_record_id": kept.record_id, "kept_source_id": kept.source_id, "kept_patient_hash": kept.patient_hash,
        "kept_labels": list(kept.labels), "kept_label_state": kept.label_state,
        "match": pair.kind, "phash_distance": pair.distance,
        "correlation": pair.match.correlation, "ssim": pair.match.ssim,
        "verdict": pair.verdict, "reason": pair.reason,
        "cross_patient": pair.cross_patient, "cross_source": row.source_id != kept.source_id,
    }


def _mark_duplicates(con, relation: str, max_hamming: int, images_root: Path, pairs_path: Path,
                     matches_path: Path) -> dict:
    rows, split_of = _dedup_rows(con, relation)
    comparer = RememberedComparer(ImageComparer(images_root), read_pixel_matches(matches_path))
    result = find_duplicates(rows, comparer, max_hamming=max_hamming)
    write_pixel_matches(matches_path, comparer.seen)
    duplicates = list(result.duplicates.values())
    conflicts = sorted(result.conflicts.items())
    table = pa.table(
        {
            "record_id": [d.record_id for d in duplicates] + [record_id for record_id, _ in conflicts],
            "duplicate_of": [d.kept_record_id for d in duplicates] + [None] * len(conflicts),
            # Leakage guard: a duplicate joins its kept row's split, so no image pair spans splits.
            # Conflicting rows keep their own split (moving one could split its patient); they are
            # held out of every training file anyway.
            "kept_split": [split_of[d.kept_record_id] for d in duplicates] + [None] * len(conflicts),
            "duplicate_conflicts": [None] * len(duplicates) + [sorted(set(others)) for _, others in conflicts],
        },
        schema=_DUPLICATES_SCHEMA,
    )
    con.register("_duplicates", table)
    marks = {row["record_id"]: row for row in table.to_pylist()}
    write_table(pairs_path, schemas.DUPLICATE_PAIRS, (_pair_record(pair) for pair in result.pairs))
    verdicts = {verdict: sum(1 for p in result.pairs if p.verdict == verdict) for verdict in VERDICTS}
    return {
        "duplicates": len(duplicates),
        "exact_duplicates": sum(1 for d in duplicates if d.kind == "exact"),
        "near_duplicates": sum(1 for d in duplicates if d.kind == "near"),
        "split_reassigned": sum(1 for d in duplicates if split_of[d.record_id] != split_of[d.kept_record_id]),
        "candidate_pairs": len(result.pairs),
        "pairs_by_verdict": verdicts,
        "conflict_rows": len(conflicts),
        "cross_patient_pairs": sum(1 for p in result.pairs if p.verdict != "rejected" and p.cross_patient
                                   and p.row.source_id == p.kept.source_id),
        "images_compared": comparer.compared,
    }, marks


def _part_rows(parts: list[Path]) -> Iterator[dict]:
    """Every part's rows, part after part (dataset/parts.py part_order), a batch at a time."""
    columns = ["record_id", "source_id", "split", "verified", "labels", "description", "modality", "organs",
               "label_state", "license", "source_text", "facts", "held_back", "image_ref", "review_json",
               "llava_json", "conversations", "roi", "roi_origin", "image_bytes", "wds_png_header", "wds_tail"]
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield from batch.to_pylist()


def _write_exports(parts: list[Path], marks: dict[str, dict], exports_dir: Path, shard_bytes: int) -> dict:
    """The JSONL files and the training shards, streamed from the parts; ``marks``: the dedup
    verdicts by record id (duplicate_of, duplicate_conflicts)."""
    exported = {split: 0 for split in SPLIT_NAMES}
    rejected = 0
    held_back_by_flag = {flag: 0 for flag in HELD_BACK_FLAGS}
    held_back = 0
    held_back_conflicts = 0
    with ExitStack() as stack:
        files = {}
        # Each file is entered after its atomic path, so unwinding closes it before the rename.
        for name in [*(llava_file(s) for s in SPLIT_NAMES), REJECTED_FILE, FLAGGED_FILE, CONFLICTS_FILE]:
            tmp = stack.enter_context(atomic_path(exports_dir / name))
            files[name] = stack.enter_context(tmp.open("w", encoding="utf-8"))
        training = stack.enter_context(TrainingFiles(exports_dir, SPLIT_NAMES, shard_bytes))
        for row in _part_rows(parts):
            mark = marks.get(row["record_id"], {})
            if mark.get("duplicate_of"):
                continue  # a confirmed copy of a kept row: in the dataset table only
            conflicts = mark.get("duplicate_conflicts")
            flagged = row["held_back"] or []
            if flagged:
                # The image itself is unfit for training, so this comes before the verdict.
                files[FLAGGED_FILE].write(row["review_json"] + "\n")
                held_back += 1
                for flag in flagged:
                    held_back_by_flag[flag] += 1
            elif conflicts:
                record = json.loads(row["review_json"])
                record["held_back_reason"] = "same pixels as " + ", ".join(conflicts) + " under other labels"
                record["labels"] = list(row.get("labels") or [])
                record["duplicate_conflicts"] = list(conflicts)
                files[CONFLICTS_FILE].write(json.dumps(record, ensure_ascii=False) + "\n")
                held_back_conflicts += 1
            elif row["llava_json"] is not None:  # verified, not held back, a known split
                files[llava_file(row["split"])].write(row["llava_json"] + "\n")
                training.add(row["split"], row)
                exported[row["split"]] += 1
            else:
                files[REJECTED_FILE].write(row["review_json"] + "\n")
                rejected += 1
        shards = training.shards()
    return {
        "exported": exported,
        "rejected_unverified": rejected,
        "held_back_flagged": held_back,
        "held_back_by_flag": held_back_by_flag,
        "held_back_conflicts": held_back_conflicts,
        "shards": shards,
    }


def _table_md(header: list[str], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ["" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def _dataset_card(con, dataset: str, stats: dict, root_prefix: str) -> str:
    kept = f"(SELECT * FROM {dataset} WHERE duplicate_of IS NULL)"
    # Held out of training: a review flag on the image, or the same pixels under other labels.
    held = f"({held_back_sql()} OR len(coalesce(duplicate_conflicts, []::VARCHAR[])) > 0)"
    by_source = con.execute(
        f"""SELECT source_id, count(*) AS rows, count(*) FILTER (duplicate_of IS NOT NULL) AS duplicates,
                   count(*) FILTER (duplicate_of IS NULL AND verified AND NOT {held}) AS exported,
                   count(*) FILTER (duplicate_of IS NULL AND NOT coalesce(verified, false) AND NOT {held}) AS rejected,
                   string_agg(DISTINCT license, '; ') AS license
            FROM {dataset} GROUP BY source_id ORDER BY source_id"""
    ).fetchall()
    by_modality = con.execute(
        f"""SELECT modality, count(DISTINCT source_id), count(*), count(*) FILTER (verified)
            FROM {kept} GROUP BY modality ORDER BY modality"""
    ).fetchall()
    by_split = con.execute(
        f"""SELECT split, count(*), count(*) FILTER (verified), count(DISTINCT patient_hash)
            FROM {kept} GROUP BY split ORDER BY split"""
    ).fetchall()
    considered = stats["rows"] - stats["duplicates"]
    lines = [
        "# MedTrinity-style dataset card",
        "",
        "Image - ROI - description triplets assembled by medtrinity-assets from the public sources below.",
        "Each source keeps its own license; check it before redistributing or training.",
        "",
        f"- Rows in the Parquet table: {stats['rows']} (of which duplicates kept for audit: {stats['duplicates']};"
        f" exact {stats['exact_duplicates']}, near {stats['near_duplicates']})",
        f"- Duplicate candidates (same sha256, or phash Hamming <= {NEAR_DUPLICATE_MAX_HAMMING}), checked on the"
        f" normalized pixels (correlation >= {MIN_CORRELATION}, SSIM >= {MIN_SSIM}): {stats['candidate_pairs']} pairs;"
        + "".join(f" {verdict} {n}," for verdict, n in stats["pairs_by_verdict"].items()).rstrip(",")
        + f" (table `{DUPLICATE_PAIRS_TABLE}`)",
        f"- Held back as label conflicts (same pixels, other labels; both copies): {stats['held_back_conflicts']}",
        f"- Exported for training (verified, not duplicate, not held back): {sum(stats['exported'].values())}",
        f"- Rejected as unverified (verifier found a contradiction): {stats['rejected_unverified']}"
        f" = {stats['rejected_fraction']:.1%} of {considered} non-duplicate rows",
        f"- Held back for review (image flagged {', '.join(HELD_BACK_FLAGS)}): {stats['held_back_flagged']}",
        f"- Split rule: {SPLIT_VERSION} (by patient; duplicates follow their kept row, {stats['split_reassigned']} moved)",
        "",
        "## By source",
        "",
        *_table_md(["source", "rows", "duplicates", "exported", "rejected", "license"], by_source),
        "",
        "## By modality (non-duplicate rows)",
        "",
        *_table_md(["modality", "sources", "rows", "verified"], by_modality),
        "",
        "## By split (non-duplicate rows)",
        "",
        *_table_md(["split", "rows", "verified", "patients"], by_split),
        "",
        "## Files",
        "",
        *[f"- `{llava_file(s)}`: {stats['exported'][s]} conversations" for s in SPLIT_NAMES],
        f"- `{REJECTED_FILE}`: {stats['rejected_unverified']} rows with their verifier flags",
        f"- `{FLAGGED_FILE}`: {stats['held_back_flagged']} rows held back by their record flags",
        f"- `{CONFLICTS_FILE}`: {stats['held_back_conflicts']} rows held back as duplicate label conflicts",
        *[f"- `{HF_FOLDER}/{split}-*.parquet`: {len(stats['shards']['hf'][split])} shard(s), the {split} conversations"
          " with their PNG bytes (Hugging Face `datasets` layout)" for split in SPLIT_NAMES],
        *[f"- `{WEBDATASET_FOLDER}/{split}-*.tar`: {len(stats['shards']['webdataset'][split])} shard(s), the {split}"
          " conversations as WebDataset samples (`<id>.png`, `<id>.json`, `<id>.txt`)" for split in SPLIT_NAMES],
        "",
        *_loading_section(root_prefix, [s for s in SPLIT_NAMES if stats["shards"]["hf"][s]]),
    ]
    return "\n".join(lines)


def _loading_section(root_prefix: str, splits: list[str]) -> list[str]:
    """Where the image paths point, and how to load each format (the card's last section)."""
    return [
        "## Loading",
        "",
        "Every path below is relative to the folder holding this card (the exports folder). The `image`"
        " of a JSONL line is relative to that folder as well: the images stay in the pipeline's"
        f" content-addressed store, `{root_prefix}` from here (the data root), so open"
        " `os.path.join(<this folder>, record['image'])`; move the exports folder together with the data"
        " root, or use the Parquet or WebDataset files, which carry the image bytes and stand alone.",
        "",
        "```python",
        "import glob, json, os",
        "import pandas as pd",
        "",
        "folder = 'path/to/exports'  # the folder of this card",
        f"splits = {tuple(splits)!r}  # the splits with rows (a split without rows has no shard)",
        "rows = pd.read_json(os.path.join(folder, f'llava_{splits[0]}.jsonl'), lines=True)",
        "first_image = os.path.join(folder, rows.loc[0, 'image'])",
        "",
        "# Hugging Face datasets: the image column decodes to PIL images",
        "from datasets import load_dataset",
        "ds = load_dataset('parquet', data_files={",
        "    split: os.path.join(folder, 'hf', f'{split}-*.parquet') for split in splits})",
        "ds[splits[0]][0]['image']  # PIL.Image.Image",
        "",
        "# pyarrow alone: image is a struct {bytes, path} of PNG bytes",
        "import pyarrow.parquet as pq",
        "table = pq.read_table(sorted(glob.glob(os.path.join(folder, 'hf', f'{splits[0]}-*.parquet')))[0])",
        "",
        "# WebDataset: <id>.png, <id>.json (the LLaVA record), <id>.txt (the description)",
        "import webdataset as wds",
        "shards = sorted(glob.glob(os.path.join(folder, 'webdataset', f'{splits[0]}-*.tar')))",
        "samples = wds.WebDataset(shards, shardshuffle=False).decode('pil')",
        "```",
        "",
    ]


def build_dataset(
    triplet_paths: list[Path],
    out_path: Path,
    exports_dir: Path,
    *,
    max_hamming: int = NEAR_DUPLICATE_MAX_HAMMING,
    images_root: Path | None = None,
    pairs_path: Path | None = None,
    parts_dir: Path | None = None,
    include_coarse_caption: bool = False,
    shard_bytes: int = SHARD_BYTES,
    memory_limit: str = "1GB",
) -> dict:
    """Union, deduplicate, write DATASET Parquet, DUPLICATE_PAIRS and the exports. Returns counts.

    Each triplets file is one part (dataset/parts.py), rebuilt only when its content changed;
    the dedup pass, the dataset table and the exports are then made from the parts.
    ``images_root`` is the folder the triplets' ``image_path`` values are relative to (the data
    root), ``pairs_path`` where the candidate pairs go and ``parts_dir`` the parts' folder; by
    default all three follow the data-root layout of ``out_path``
    (``<root>/tables/medtrinity_dataset.parquet``): ``<root>``,
    ``<root>/tables/duplicate_pairs.parquet`` and ``<root>/tables/medtrinity_dataset_parts/``.
    """
    out_path, exports_dir = Path(out_path), Path(exports_dir)
    images_root = Path(images_root) if images_root is not None else out_path.parent.parent
    pairs_path = Path(pairs_path) if pairs_path is not None else out_path.with_name(f"{DUPLICATE_PAIRS_TABLE}.parquet")
    parts_dir = Path(parts_dir) if parts_dir is not None else out_path.parent / PARTS_FOLDER
    missing = [str(p) for p in triplet_paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"triplet tables missing: {', '.join(missing)}")
    settings = PartSettings(image_prefix(images_root, exports_dir), include_coarse_caption)
    synced = sync_parts([Path(p) for p in triplet_paths], parts_dir, images_root, settings)
    con = connect(memory_limit=memory_limit, threads=2)
    try:
        if synced.parts:
            con.execute(f"CREATE VIEW all_parts AS SELECT * FROM {read_parquet(synced.parts)}")
            relation = "all_parts"
        else:
            relation = _empty_parts_relation(con)
        stats, marks = _mark_duplicates(con, relation, max_hamming, images_root, pairs_path,
                                        parts_dir / PIXEL_MATCHES_FILE)
        columns = ",\n    ".join(
            "coalesce(d.kept_split, t.split) AS split" if name == "split" else f"t.{name}"
            for name in schemas.TRIPLETS.names
        )
        query = f"""SELECT {columns}, d.duplicate_of, d.duplicate_conflicts
            FROM {relation} AS t LEFT JOIN _duplicates AS d USING (record_id)
            ORDER BY t.source_id, t.record_id"""
        with atomic_path(out_path) as tmp:
            con.execute(f"COPY ({query}) TO {literal(tmp)} (FORMAT parquet, COMPRESSION zstd)")
        dataset = read_parquet(out_path)
        stats["rows"] = con.execute(f"SELECT count(*) FROM {dataset}").fetchall()[0][0]
        stats.update(_write_exports(synced.parts, marks, exports_dir, shard_bytes))
        considered = stats["rows"] - stats["duplicates"]
        stats["rejected_fraction"] = stats["rejected_unverified"] / considered if considered else 0.0
        stats["by_source"] = dict(con.execute(f"SELECT source_id, count(*) FROM {dataset} GROUP BY 1 ORDER BY 1").fetchall())
        card = _dataset_card(con, dataset, stats, settings.image_prefix)
        with atomic_path(exports_dir / CARD_FILE) as tmp:
            tmp.write_text(card, encoding="utf-8")
    finally:
        con.close()
    stats["parts"] = {"built": synced.built, "reused": synced.reused, "removed": synced.removed}
    return stats
