"""Stage 7b: the final dataset over all sources, and its training-ready exports.

``build_dataset`` unions every source's triplets in DuckDB, deduplicates (``dedup``: hash
matches confirmed on the normalized pixels), writes the DATASET Parquet (duplicates stay in it,
with ``duplicate_of``, so the decision can be audited), the DUPLICATE_PAIRS table of every
candidate pair and its verdict, and then, from the dataset file, the exports:

- ``llava_<split>.jsonl``: LLaVA-style conversations of the verified, non-duplicate rows;
- ``rejected_unverified.jsonl``: rows whose description the verifier flagged, with the flags,
  so a contradiction is never shipped for training but is never lost either;
- ``held_back_flagged.jsonl``: rows whose image carries a review flag in ``HELD_BACK_FLAGS``
  (text burned into the pixels may be a patient's name: DICOM says so, or the normalize stage
  found text or markers in the pixels): kept out of training the same way,
  whatever the verifier said, and listed for a reviewer;
- ``held_back_duplicate_conflicts.jsonl``: rows whose pixels match another row carrying other
  labels (``duplicate_conflicts``): at most one of the two can be right, and the pipeline cannot
  tell which, so both copies stay out of training and each is listed with the reason;
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
from medtrinity_assets.dataset.dedup import (
    MIN_CORRELATION,
    MIN_SSIM,
    NEAR_DUPLICATE_MAX_HAMMING,
    VERDICTS,
    DedupRow,
    ImageComparer,
    find_duplicates,
    volume_group,
)
from medtrinity_assets.splits import SPLIT_NAMES, SPLIT_VERSION
from medtrinity_assets.duckdb_sql import connect, literal, read_parquet
from medtrinity_assets.storage import atomic_path, write_table

REJECTED_FILE = "rejected_unverified.jsonl"
FLAGGED_FILE = "held_back_flagged.jsonl"
CONFLICTS_FILE = "held_back_duplicate_conflicts.jsonl"
# Record flags (RAW_RECORDS.flags) that keep an image out of the training files.
# "burned_in_text": text or markers the normalize stage found in the pixels (spec policy hold_back).
HELD_BACK_FLAGS = ("burned_in_annotation", "burned_in_text")
CARD_FILE = "dataset_card.md"
# The table of candidate pairs, beside the dataset table (DataRoot.table(DUPLICATE_PAIRS_TABLE)).
DUPLICATE_PAIRS_TABLE = "duplicate_pairs"
MODALITY_WORDS = {
    "ct": "CT",
    "mri": "MRI",
    "xray": "X-ray",
    "pet": "PET",
    "mammography": "mammography",
    "nuclear_medicine": "nuclear medicine",
}
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


def held_back_flags(row: dict) -> list[str]:
    """The row's flags that keep it out of the training exports."""
    return [flag for flag in (row.get("flags") or []) if flag in HELD_BACK_FLAGS]


def held_back_sql(flags_column: str = "flags") -> str:
    """SQL truth of ``held_back_flags``, for the dataset card's counts."""
    listed = ", ".join(literal(flag) for flag in HELD_BACK_FLAGS)
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
        # whole_image, annotation:<kind>, or model:<expert_id>: a model's ROI stays in the
        # training files (its description words it as the model's possible finding), and a
        # user who wants annotation-only ROIs filters on this.
        "roi_origin": origin,
        "source_id": row["source_id"],
        "source_text": parsed_source_text(row),
        # What the description was written from, each with its provenance (generation/facts.py).
        "label_state": row.get("label_state"),
        "facts": json.loads(row["facts"]) if row.get("facts") else [],
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


def _dedup_rows(con, relation: str) -> tuple[list[DedupRow], dict[str, str]]:
    """The rows the dedup pass reads, and each record's split."""
    label_state = "label_state" if "label_state" in {c[0] for c in con.execute(f"DESCRIBE {relation}").fetchall()} else "NULL"
    keys = con.execute(
        f"""SELECT source_id, record_id, image_sha256, phash, split, image_path, patient_hash, labels,
                   {label_state}::VARCHAR AS label_state,
                   json_extract_string(provenance, '$.source_file') AS source_file,
                   TRY_CAST(json_extract(provenance, '$.slice_index') AS BIGINT) AS slice_index
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


def _mark_duplicates(con, relation: str, max_hamming: int, images_root: Path, pairs_path: Path) -> dict:
    rows, split_of = _dedup_rows(con, relation)
    comparer = ImageComparer(images_root)
    result = find_duplicates(rows, comparer, max_hamming=max_hamming)
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
    }


def _write_exports(con, dataset: str, exports_dir: Path, include_coarse_caption: bool) -> dict:
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
                elif row.get("duplicate_conflicts"):
                    record = _rejected_record(row)
                    record["held_back_reason"] = (
                        "same pixels as " + ", ".join(row["duplicate_conflicts"]) + " under other labels"
                    )
                    record["labels"] = list(row.get("labels") or [])
                    record["duplicate_conflicts"] = list(row["duplicate_conflicts"])
                    files[CONFLICTS_FILE].write(json.dumps(record, ensure_ascii=False) + "\n")
                    held_back_conflicts += 1
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
        "held_back_conflicts": held_back_conflicts,
    }


def _table_md(header: list[str], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ["" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def _dataset_card(con, dataset: str, stats: dict) -> str:
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
        "",
    ]
    return "\n".join(lines)


def build_dataset(
    triplet_paths: list[Path],
    out_path: Path,
    exports_dir: Path,
    *,
    max_hamming: int = NEAR_DUPLICATE_MAX_HAMMING,
    images_root: Path | None = None,
    pairs_path: Path | None = None,
    include_coarse_caption: bool = False,
    memory_limit: str = "1GB",
) -> dict:
    """Union, deduplicate, write DATASET Parquet, DUPLICATE_PAIRS and the exports. Returns counts.

    ``images_root`` is the folder the triplets' ``image_path`` values are relative to (the data
    root) and ``pairs_path`` where the candidate pairs go; by default both follow the data-root
    layout of ``out_path`` (``<root>/tables/medtrinity_dataset.parquet``): ``<root>`` and
    ``<root>/tables/duplicate_pairs.parquet``.
    """
    out_path, exports_dir = Path(out_path), Path(exports_dir)
    images_root = Path(images_root) if images_root is not None else out_path.parent.parent
    pairs_path = Path(pairs_path) if pairs_path is not None else out_path.with_name(f"{DUPLICATE_PAIRS_TABLE}.parquet")
    missing = [str(p) for p in triplet_paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"triplet tables missing: {', '.join(missing)}")
    con = connect(memory_limit=memory_limit, threads=2)
    try:
        if triplet_paths:
            con.execute(f"CREATE VIEW all_triplets AS SELECT * FROM {read_parquet(triplet_paths, union_by_name=True)}")
            relation = "all_triplets"
        else:
            relation = _empty_triplets_relation(con)
        stats = _mark_duplicates(con, relation, max_hamming, images_root, pairs_path)
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
