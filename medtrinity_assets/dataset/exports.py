"""Stage 7b: the final dataset over all sources, and its training-ready exports.

``build_dataset`` unions every source's triplets in DuckDB, marks cross-source duplicates
(``dedup``), writes the DATASET Parquet (duplicates stay in it, with ``duplicate_of``, so the
decision can be audited) and then, from that file, the exports:

- ``llava_<split>.jsonl``: LLaVA-style conversations of the verified, non-duplicate rows;
- ``rejected_unverified.jsonl``: rows whose description the verifier flagged, with the flags,
  so a contradiction is never shipped for training but is never lost either;
- ``held_back_flagged.jsonl``: rows whose image carries a review flag in ``HELD_BACK_FLAGS``
  (text burned into the pixels may be a patient's name: DICOM says so, or the normalize stage
  found text or markers in the pixels): kept out of training the same way,
  whatever the verifier said, and listed for a reviewer;
- ``dataset_card.md``: counts per source, modality and split, licenses, rejection fraction.

Each exported conversation carries the publisher's own text (``source_text``: captions and
question-answer pairs) beside the generated description, never inside it.

Every file is written beside its final path and renamed into place.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa

from medtrinity_assets import schemas
from medtrinity_assets.dataset.dedup import NEAR_DUPLICATE_MAX_HAMMING, find_duplicates
from medtrinity_assets.dataset.splits import SPLIT_NAMES, SPLIT_VERSION
from medtrinity_assets.dataset.triplets import connect, sql_string
from medtrinity_assets.storage import atomic_path

REJECTED_FILE = "rejected_unverified.jsonl"
FLAGGED_FILE = "held_back_flagged.jsonl"
# Record flags (RAW_RECORDS.flags) that keep an image out of the training files.
# "burned_in_text": text or markers the normalize stage found in the pixels (spec policy hold_back).
HELD_BACK_FLAGS = ("burned_in_annotation", "burned_in_text")
CARD_FILE = "dataset_card.md"
MODALITY_WORDS = {
    "ct": "CT",
    "mri": "MRI",
    "xray": "X-ray",
    "pet": "PET",
    "mammography": "mammography",
    "nuclear_medicine": "nuclear medicine",
}
_DUPLICATES_SCHEMA = pa.schema(
    [("record_id", pa.string()), ("duplicate_of", pa.string()), ("kept_split", pa.string())]
)


def llava_file(split: str) -> str:
    return f"llava_{split}.jsonl"


def held_back_flags(row: dict) -> list[str]:
    """The row's flags that keep it out of the training exports."""
    return [flag for flag in (row.get("flags") or []) if flag in HELD_BACK_FLAGS]


def held_back_sql(flags_column: str = "flags") -> str:
    """SQL truth of ``held_back_flags``, for the dataset card's counts."""
    listed = ", ".join(sql_string(flag) for flag in HELD_BACK_FLAGS)
    return f"list_has_any(coalesce({flags_column}, []::VARCHAR[]), [{listed}])"


def parsed_source_text(row: dict) -> dict | None:
    """The publisher's text as JSON for the exports (a string in the Parquet table)."""
    text = row.get("source_text")
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"raw": text}


def _box_of(rois_json: str | None, primary_roi_id: str | None) -> tuple[list | None, str | None]:
    """Box and origin of the primary ROI (the first of the ordered list)."""
    try:
        rois = json.loads(rois_json or "[]")
    except json.JSONDecodeError:
        return None, None
    for roi in rois:
        if primary_roi_id is None or roi.get("roi_id") == primary_roi_id:
            return roi.get("box"), roi.get("origin")
    return None, None


def instruction_for(row: dict, box: list | None, origin: str | None, include_coarse_caption: bool = False) -> str:
    """The human turn. Built from the metadata the coarse caption states (modality, organ) and the
    ROI box, but not the finding: naming the finding in the question would hand the answer over."""
    modality = MODALITY_WORDS.get(row.get("modality") or "", row.get("modality") or "medical")
    organs = [o for o in (row.get("organs") or []) if o]
    organ = " and ".join(organs) if organs else "body region"
    if box and origin != "whole_image":
        focus = f"focusing on the region of interest at [{', '.join(str(v) for v in box)}]"
    else:
        focus = "covering the whole image"
    text = f"<image>\nDescribe this {modality} image of the {organ}, {focus}."
    if include_coarse_caption and row.get("coarse_caption"):
        text += f"\nMetadata: {row['coarse_caption']}"
    return text


def llava_record(row: dict, include_coarse_caption: bool = False) -> dict:
    box, origin = _box_of(row.get("rois"), row.get("primary_roi_id"))
    return {
        "id": row["record_id"],
        "image": row["image_path"],
        "conversations": [
            {"from": "human", "value": instruction_for(row, box, origin, include_coarse_caption)},
            {"from": "gpt", "value": row["description"]},
        ],
        "roi": box,
        "source_id": row["source_id"],
        "source_text": parsed_source_text(row),
    }


def _rejected_record(row: dict) -> dict:
    box, _ = _box_of(row.get("rois"), row.get("primary_roi_id"))
    return {
        "id": row["record_id"],
        "image": row["image_path"],
        "source_id": row["source_id"],
        "split": row["split"],
        "roi": box,
        "description": row["description"],
        "source_text": parsed_source_text(row),
        "verifier_flags": list(row.get("verifier_flags") or []),
        "flags": list(row.get("flags") or []),
    }


def _empty_triplets_relation(con) -> str:
    """A zero-row relation with the TRIPLETS columns, for a dataset built from no source."""
    con.register("_no_triplets", schemas.TRIPLETS.empty_table())
    return "_no_triplets"


def _mark_duplicates(con, relation: str, max_hamming: int) -> dict:
    keys = con.execute(
        f"""SELECT source_id, record_id, image_sha256, phash, split,
                   source_id || '/' || json_extract_string(provenance, '$.source_file') AS volume
            FROM {relation} ORDER BY source_id, record_id"""
    ).fetchall()
    split_of = {record_id: split for _, record_id, _, _, split, _ in keys}
    duplicates = find_duplicates(((s, r, sha, ph, volume) for s, r, sha, ph, _, volume in keys), max_hamming=max_hamming)
    records = [d.record_id for d in duplicates.values()]
    table = pa.table(
        {
            "record_id": records,
            "duplicate_of": [d.kept_record_id for d in duplicates.values()],
            # Leakage guard: a duplicate joins its kept row's split, so no image pair spans splits.
            "kept_split": [split_of[d.kept_record_id] for d in duplicates.values()],
        },
        schema=_DUPLICATES_SCHEMA,
    )
    con.register("_duplicates", table)
    return {
        "duplicates": len(duplicates),
        "exact_duplicates": sum(1 for d in duplicates.values() if d.kind == "exact"),
        "near_duplicates": sum(1 for d in duplicates.values() if d.kind == "near"),
        "split_reassigned": sum(1 for d in duplicates.values() if split_of[d.record_id] != split_of[d.kept_record_id]),
    }


def _write_exports(con, dataset: str, exports_dir: Path, include_coarse_caption: bool) -> dict:
    exported = {split: 0 for split in SPLIT_NAMES}
    rejected = 0
    held_back_by_flag = {flag: 0 for flag in HELD_BACK_FLAGS}
    held_back = 0
    with ExitStack() as stack:
        files = {}
        # Each file is entered after its atomic path, so unwinding closes it before the rename.
        for name in [*(llava_file(s) for s in SPLIT_NAMES), REJECTED_FILE, FLAGGED_FILE]:
            tmp = stack.enter_context(atomic_path(exports_dir / name))
            files[name] = stack.enter_context(tmp.open("w", encoding="utf-8"))
        reader = con.sql(
            f"SELECT * FROM {dataset} WHERE duplicate_of IS NULL ORDER BY source_id, record_id"
        ).to_arrow_reader(1024)
        for batch in reader:
            for row in batch.to_pylist():
                flagged = held_back_flags(row)
                if flagged:
                    # The image itself is unfit for training, so this comes before the verdict.
                    files[FLAGGED_FILE].write(json.dumps(_rejected_record(row), ensure_ascii=False) + "\n")
                    held_back += 1
                    for flag in flagged:
                        held_back_by_flag[flag] += 1
                elif row["verified"] is True and row["split"] in exported:
                    record = llava_record(row, include_coarse_caption)
                    files[llava_file(row["split"])].write(json.dumps(record, ensure_ascii=False) + "\n")
                    exported[row["split"]] += 1
                else:
                    files[REJECTED_FILE].write(json.dumps(_rejected_record(row), ensure_ascii=False) + "\n")
                    rejected += 1
    return {
        "exported": exported,
        "rejected_unverified": rejected,
        "held_back_flagged": held_back,
        "held_back_by_flag": held_back_by_flag,
    }


def _table_md(header: list[str], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ["" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def _dataset_card(con, dataset: str, stats: dict) -> str:
    kept = f"(SELECT * FROM {dataset} WHERE duplicate_of IS NULL)"
    held = held_back_sql()
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
        f" exact {stats['exact_duplicates']}, near {stats['near_duplicates']} at phash Hamming <= {NEAR_DUPLICATE_MAX_HAMMING})",
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
        "",
    ]
    return "\n".join(lines)


def build_dataset(
    triplet_paths: list[Path],
    out_path: Path,
    exports_dir: Path,
    *,
    max_hamming: int = NEAR_DUPLICATE_MAX_HAMMING,
    include_coarse_caption: bool = False,
    memory_limit: str = "1GB",
) -> dict:
    """Union, deduplicate, write DATASET Parquet and the exports. Returns counts (see keys below)."""
    out_path, exports_dir = Path(out_path), Path(exports_dir)
    missing = [str(p) for p in triplet_paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"triplet tables missing: {', '.join(missing)}")
    con = connect(memory_limit=memory_limit)
    try:
        if triplet_paths:
            files = "[" + ", ".join(sql_string(p) for p in triplet_paths) + "]"
            con.execute(f"CREATE VIEW all_triplets AS SELECT * FROM read_parquet({files}, union_by_name = true)")
            relation = "all_triplets"
        else:
            relation = _empty_triplets_relation(con)
        stats = _mark_duplicates(con, relation, max_hamming)
        columns = ",\n    ".join(
            "coalesce(d.kept_split, t.split) AS split" if name == "split" else f"t.{name}"
            for name in schemas.TRIPLETS.names
        )
        query = f"""SELECT {columns}, d.duplicate_of
            FROM {relation} AS t LEFT JOIN _duplicates AS d USING (record_id)
            ORDER BY t.source_id, t.record_id"""
        with atomic_path(out_path) as tmp:
            con.execute(f"COPY ({query}) TO {sql_string(tmp)} (FORMAT parquet, COMPRESSION zstd)")
        dataset = f"read_parquet({sql_string(out_path)})"
        stats["rows"] = con.execute(f"SELECT count(*) FROM {dataset}").fetchall()[0][0]
        stats.update(_write_exports(con, dataset, exports_dir, include_coarse_caption))
        considered = stats["rows"] - stats["duplicates"]
        stats["rejected_fraction"] = stats["rejected_unverified"] / considered if considered else 0.0
        stats["by_source"] = dict(con.execute(f"SELECT source_id, count(*) FROM {dataset} GROUP BY 1 ORDER BY 1").fetchall())
        card = _dataset_card(con, dataset, stats)
        with atomic_path(exports_dir / CARD_FILE) as tmp:
            tmp.write_text(card, encoding="utf-8")
    finally:
        con.close()
    return stats
