"""Stage 8: DuckDB-backed quality checks on every stage's Parquet tables.

Each check is a SQL query over the files, so it runs in bounded memory however large the
partition, and returns a ``CheckOutcome`` (what the Dagster layer turns into an asset check
result). A check never raises for bad or missing data: a missing file, a missing column or a
query error is itself a failed outcome with a message that says what is wrong.

The constructors at the end (``not_null``, ``unique_key``, ``quarantine_rate``...) make the check
sets that the stage registry (``medtrinity_assets.pipeline``) lists per stage; ``run_check_set``
runs one set for one partition.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import duckdb

from medtrinity_assets import objectstore, schemas
from medtrinity_assets.dataset.exports import DUPLICATE_PAIRS_TABLE
from medtrinity_assets.splits import SPLIT_NAMES
from medtrinity_assets.generation.facts import PROVENANCES
from medtrinity_assets.generation.verifier import SIDE_PROVENANCES
from medtrinity_assets.duckdb_sql import connect, identifier, literal, read_parquet
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.sources.base import QUARANTINE_KINDS

# Above this share of inputs quarantined, a source's layout or parameters are probably wrong.
MAX_QUARANTINE_RATE = 0.2
# Above this share of descriptions with a verifier contradiction, the writer needs attention.
MAX_CONTRADICTION_RATE = 0.05
# Above this share of a model writer's rows written by the grounded fallback, the model (or its
# endpoint, or the prompt) is not doing the work it is paid for: worth a look, not a stop.
MAX_FALLBACK_RATE = 0.5
MIN_ROWS = 1
MAX_EXAMPLES = 5

PathLike = str | Path


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    severity: str  # "ERROR" | "WARN"
    description: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CheckDef:
    """One registered check: its name, what it guards, and how to run it for a partition."""

    name: str
    description: str
    severity: str
    run: Callable[[duckdb.DuckDBPyConnection, "CheckTarget"], CheckOutcome]


# --- helpers ---------------------------------------------------------------------------


def _json_safe(value):
    """Metadata must be JSON: dates, decimals and bytes become text."""
    return json.loads(json.dumps(value, default=str))


def _rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def _dicts(con, sql: str) -> list[dict]:
    return _json_safe(con.sql(sql).to_arrow_table().to_pylist())


def _existing(path: PathLike) -> list[str]:
    if objectstore.is_url(str(path)):  # a data root on an object store
        return objectstore.existing_files(path)
    return sorted(glob.glob(str(path))) if any(c in str(path) for c in "*?[") else ([str(path)] if Path(path).exists() else [])


def _relation(files: list[str]) -> str:
    return read_parquet(files, union_by_name=True)


def _missing(name: str, severity: str, path: PathLike) -> CheckOutcome:
    return CheckOutcome(name, False, severity, f"table file missing: {path} (the stage has not written it)", {"path": str(path)})


def _columns(con, relation: str) -> list[str]:
    return [row[0] for row in _rows(con, f"DESCRIBE SELECT * FROM {relation}")]


def _guarded(name: str, severity: str, path: PathLike, body: Callable[[str], CheckOutcome]) -> CheckOutcome:
    """Run ``body`` on the relation of ``path``; a missing file or SQL error is a failed outcome."""
    files = _existing(path)
    if not files:
        return _missing(name, severity, path)
    try:
        return body(_relation(files))
    except duckdb.Error as error:
        return CheckOutcome(name, False, severity, f"check could not run on {path}: {error}", {"path": str(path)})


def _missing_columns(con, relation: str, columns: Iterable[str]) -> list[str]:
    present = set(_columns(con, relation))
    return [c for c in columns if c not in present]


def _key_columns(con, relation: str, wanted: Iterable[str]) -> list[str]:
    """Columns that identify a row in examples, as far as the table has them."""
    present = set(_columns(con, relation))
    return [c for c in wanted if c in present]


EXAMPLE_KEYS = ("roi_id", "record_id", "chunk_id", "source_id", "source_file")


# --- checks ----------------------------------------------------------------------------


def check_not_null(con, path: PathLike, columns: list[str], *, name: str = "not_null", severity: str = "ERROR") -> CheckOutcome:
    def body(rel: str) -> CheckOutcome:
        absent = _missing_columns(con, rel, columns)
        if absent:
            return CheckOutcome(name, False, severity, f"columns missing from the table: {absent}", {"missing_columns": absent})
        counts = _rows(con, "SELECT count(*), " + ", ".join(f"count(*) FILTER ({identifier(c)} IS NULL)" for c in columns) + f" FROM {rel}")[0]
        nulls = {c: int(n) for c, n in zip(columns, counts[1:]) if n}
        examples = []
        if nulls:
            keys = _key_columns(con, rel, EXAMPLE_KEYS)
            where = " OR ".join(f"{identifier(c)} IS NULL" for c in nulls)
            examples = _dicts(con, f"SELECT {', '.join(map(identifier, keys + list(nulls)))} FROM {rel} WHERE {where} LIMIT {MAX_EXAMPLES}")
        return CheckOutcome(
            name,
            not nulls,
            severity,
            f"no nulls in {', '.join(columns)}" if not nulls else f"nulls in {', '.join(nulls)}",
            {"rows": int(counts[0]), "null_counts": nulls, "examples": examples},
        )

    return _guarded(name, severity, path, body)


def check_unique(con, path: PathLike, columns: list[str], *, name: str = "unique", severity: str = "ERROR") -> CheckOutcome:
    def body(rel: str) -> CheckOutcome:
        absent = _missing_columns(con, rel, columns)
        if absent:
            return CheckOutcome(name, False, severity, f"columns missing from the table: {absent}", {"missing_columns": absent})
        key = ", ".join(map(identifier, columns))
        duplicated = f"SELECT {key}, count(*) AS copies FROM {rel} GROUP BY {key} HAVING count(*) > 1"
        n_keys, n_rows = _rows(con, f"SELECT count(*), coalesce(sum(copies), 0) FROM ({duplicated})")[0]
        examples = _dicts(con, f"{duplicated} ORDER BY copies DESC, {key} LIMIT {MAX_EXAMPLES}") if n_keys else []
        return CheckOutcome(
            name,
            n_keys == 0,
            severity,
            f"({', '.join(columns)}) unique" if n_keys == 0 else f"{n_keys} duplicated keys over ({', '.join(columns)})",
            {"duplicated_keys": int(n_keys), "rows_with_duplicated_keys": int(n_rows), "examples": examples},
        )

    return _guarded(name, severity, path, body)


def check_rois_inside_image(con, rois_path: PathLike, *, name: str = "rois_inside_image", severity: str = "ERROR") -> CheckOutcome:
    """Boxes lie inside their image with positive size; real (non-whole-image) ROIs have area."""
    problem = """CASE
        WHEN x0 IS NULL OR y0 IS NULL OR x1 IS NULL OR y1 IS NULL THEN 'box has nulls'
        WHEN image_width IS NULL OR image_height IS NULL THEN 'image size missing'
        WHEN x0 < 0 OR y0 < 0 THEN 'box starts before the image'
        WHEN x1 > image_width OR y1 > image_height THEN 'box ends past the image'
        WHEN x0 >= x1 OR y0 >= y1 THEN 'box has no width or height'
        WHEN origin <> 'whole_image' AND coalesce(area_px, 0) <= 0 THEN 'ROI has no area'
    END"""

    def body(rel: str) -> CheckOutcome:
        bad = f"SELECT *, {problem} AS problem FROM {rel}"
        totals = _rows(con, f"SELECT count(*), count(problem) FROM ({bad})")[0]
        by_problem = dict(_rows(con, f"SELECT problem, count(*) FROM ({bad}) WHERE problem IS NOT NULL GROUP BY 1 ORDER BY 2 DESC"))
        examples = _dicts(
            con,
            f"""SELECT roi_id, record_id, origin, x0, y0, x1, y1, image_width, image_height, area_px, problem
                FROM ({bad}) WHERE problem IS NOT NULL ORDER BY roi_id LIMIT {MAX_EXAMPLES}""",
        )
        n_bad = int(totals[1])
        return CheckOutcome(
            name,
            n_bad == 0,
            severity,
            "every ROI box inside its image, with area" if n_bad == 0 else f"{n_bad} of {totals[0]} ROIs outside their image or empty",
            {"rois": int(totals[0]), "failing": n_bad, "by_problem": {k: int(v) for k, v in by_problem.items()}, "examples": examples},
        )

    return _guarded(name, severity, rois_path, body)


def check_five_parts(con, descriptions_path: PathLike, *, name: str = "five_parts", severity: str = "ERROR") -> CheckOutcome:
    """MedTrinity's five description parts are all written (not null, not blank)."""
    parts = [f"part_{p}" for p in schemas.DESCRIPTION_PARTS]

    def body(rel: str) -> CheckOutcome:
        absent = _missing_columns(con, rel, parts)
        if absent:
            return CheckOutcome(name, False, severity, f"columns missing from the table: {absent}", {"missing_columns": absent})
        blank = {p: f"coalesce(trim({identifier(p)}), '') = ''" for p in parts}
        counts = _rows(
            con,
            "SELECT count(*), count(*) FILTER (" + " OR ".join(blank.values()) + "), "
            + ", ".join(f"count(*) FILTER ({cond})" for cond in blank.values()) + f" FROM {rel}",
        )[0]
        by_part = {p: int(n) for p, n in zip(parts, counts[2:]) if n}
        examples = []
        if by_part:
            examples = _dicts(
                con,
                f"SELECT record_id, source_id, {', '.join(by_part)} FROM {rel} WHERE "
                + " OR ".join(blank[p] for p in by_part) + f" ORDER BY record_id LIMIT {MAX_EXAMPLES}",
            )
        return CheckOutcome(
            name,
            counts[1] == 0,
            severity,
            "all five description parts written" if counts[1] == 0 else f"{counts[1]} descriptions miss a part: {', '.join(by_part)}",
            {"descriptions": int(counts[0]), "incomplete": int(counts[1]), "blank_by_part": by_part, "examples": examples},
        )

    return _guarded(name, severity, descriptions_path, body)


def check_quarantine_rate(
    con,
    quarantine_paths: list[PathLike],
    records_path: PathLike,
    max_rate: float = MAX_QUARANTINE_RATE,
    *,
    name: str = "quarantine_rate",
    severity: str = "WARN",
) -> CheckOutcome:
    """quarantined / (quarantined + records), records counted by distinct record_id.

    An absent quarantine file counts as nothing quarantined (a stage writes one only when it
    runs); an absent records table fails, since there is nothing to compare with.
    """
    quarantine_files = sorted({f for p in quarantine_paths for f in _existing(p)})

    def body(records_rel: str) -> CheckOutcome:
        key = "DISTINCT record_id" if "record_id" in _columns(con, records_rel) else "*"
        records = int(_rows(con, f"SELECT count({key}) FROM {records_rel}")[0][0])
        by_kind: list[dict] = []
        quarantined = 0
        if quarantine_files:
            q = _relation(quarantine_files)
            quarantined = int(_rows(con, f"SELECT count(*) FROM {q}")[0][0])
            by_kind = _dicts(con, f"SELECT stage, kind, count(*) AS files FROM {q} GROUP BY stage, kind ORDER BY files DESC, kind")
        total = quarantined + records
        rate = quarantined / total if total else 0.0
        return CheckOutcome(
            name,
            rate <= max_rate,
            severity,
            f"{quarantined} of {total} inputs quarantined ({rate:.1%}; limit {max_rate:.0%})",
            {
                "quarantined": quarantined,
                "records": records,
                "rate": round(rate, 4),
                "max_rate": max_rate,
                "by_kind": by_kind,
                "quarantine_files": len(quarantine_files),
            },
        )

    return _guarded(name, severity, records_path, body)


def check_quarantine_kinds(
    con, quarantine_path: PathLike | None, records_path: PathLike, *, name: str = "quarantine_kinds", severity: str = "ERROR"
) -> CheckOutcome:
    """Every quarantine row's kind is one of QUARANTINE_KINDS (reports and check-source group by
    it). No quarantine file beside the stage's table means nothing was quarantined, which passes;
    without the table the stage never ran, which fails."""
    if not _existing(records_path):
        return _missing(name, severity, records_path)
    if quarantine_path is None or not _existing(quarantine_path):
        return CheckOutcome(name, True, severity, "nothing quarantined", {"unexpected": {}})
    return check_accepted_values(con, quarantine_path, "kind", QUARANTINE_KINDS, name=name, severity=severity)


def check_contradiction_rate(
    con, descriptions_path: PathLike, max_rate: float = MAX_CONTRADICTION_RATE, *, name: str = "contradiction_rate", severity: str = "WARN"
) -> CheckOutcome:
    """Share of descriptions the verifier did not pass (a null verdict counts as not verified)."""

    def body(rel: str) -> CheckOutcome:
        total, flagged = _rows(con, f"SELECT count(*), count(*) FILTER (NOT coalesce(verified, false)) FROM {rel}")[0]
        rate = flagged / total if total else 0.0
        by_flag = dict(
            _rows(
                con,
                f"""SELECT split_part(flag, ':', 1) AS kind, count(*) FROM
                    (SELECT unnest(verifier_flags) AS flag FROM {rel}) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20""",
            )
        )
        examples = _dicts(
            con,
            f"""SELECT record_id, source_id, verifier_flags FROM {rel}
                WHERE NOT coalesce(verified, false) ORDER BY record_id LIMIT {MAX_EXAMPLES}""",
        )
        return CheckOutcome(
            name,
            rate <= max_rate,
            severity,
            f"{flagged} of {total} descriptions contradicted by the measurements ({rate:.1%}; limit {max_rate:.0%})",
            {
                "descriptions": int(total),
                "contradicted": int(flagged),
                "rate": round(rate, 4),
                "max_rate": max_rate,
                "flags_by_kind": {k: int(v) for k, v in by_flag.items()},
                "examples": examples,
            },
        )

    return _guarded(name, severity, descriptions_path, body)


def check_fallback_rate(
    con, descriptions_path: PathLike, max_rate: float = MAX_FALLBACK_RATE, *, name: str = "model_fallback_rate", severity: str = "WARN"
) -> CheckOutcome:
    """Share of a model writer's rows (model not null) that fell back to the grounded writer,
    with the reasons counted; a grounded-only partition passes."""

    def body(rel: str) -> CheckOutcome:
        total, fallen = _rows(con, f"SELECT count(*), count(fallback_reason) FROM {rel} WHERE model IS NOT NULL")[0]
        if not total:
            return CheckOutcome(name, True, severity, "no row was given to a model writer", {"model_rows": 0})
        rate = fallen / total
        # Reasons up to their first colon: "unverified after 3 attempts", "endpoint", ...
        reasons = dict(_rows(con, f"""SELECT split_part(fallback_reason, ':', 1), count(*) FROM {rel}
                                      WHERE fallback_reason IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20"""))
        return CheckOutcome(
            name,
            rate <= max_rate,
            severity,
            f"{fallen} of {total} model rows fell back to the grounded writer ({rate:.1%}; limit {max_rate:.0%})",
            {"model_rows": int(total), "fallbacks": int(fallen), "rate": round(rate, 4), "max_rate": max_rate,
             "reasons": {k: int(v) for k, v in reasons.items()}},
        )

    return _guarded(name, severity, descriptions_path, body)


def check_row_count(con, path: PathLike, min_rows: int = MIN_ROWS, *, name: str = "row_count", severity: str = "ERROR") -> CheckOutcome:
    def body(rel: str) -> CheckOutcome:
        rows = int(_rows(con, f"SELECT count(*) FROM {rel}")[0][0])
        return CheckOutcome(name, rows >= min_rows, severity, f"{rows} rows (minimum {min_rows})", {"rows": rows, "min_rows": min_rows})

    return _guarded(name, severity, path, body)


def check_accepted_values(
    con,
    path: PathLike,
    column: str,
    accepted: Iterable[str],
    *,
    name: str = "accepted_values",
    severity: str = "ERROR",
    where: str | None = None,
) -> CheckOutcome:
    """Every value of ``column`` (among rows matching ``where``, a SQL condition) is accepted."""
    accepted = list(accepted)

    def body(rel: str) -> CheckOutcome:
        values = ", ".join(literal(v) for v in accepted)
        scope = f"({where}) AND " if where else ""
        bad = dict(_rows(con, f"SELECT {identifier(column)}, count(*) FROM {rel} WHERE {scope}({identifier(column)} IS NULL OR {identifier(column)} NOT IN ({values})) GROUP BY 1"))
        return CheckOutcome(
            name,
            not bad,
            severity,
            f"{column} in {accepted}" if not bad else f"{sum(bad.values())} rows with {column} outside {accepted}",
            {"unexpected": {str(k): int(v) for k, v in bad.items()}},
        )

    return _guarded(name, severity, path, body)


def check_source_text_kept_apart(
    con, path: PathLike, *, name: str = "source_text_kept_apart", severity: str = "ERROR", min_caption_chars: int = 20
) -> CheckOutcome:
    """The publisher's text is well-formed JSON ({"captions": [...], "qa": [...]}) and none of its
    captions is pasted into the generated description, which must stay the pipeline's own.

    Captions shorter than ``min_caption_chars`` ("Normal.") may occur in any description by
    chance and are not compared.
    """

    def body(rel: str) -> CheckOutcome:
        absent = _missing_columns(con, rel, ["source_text", "description"])
        if absent:
            return CheckOutcome(name, False, severity, f"columns missing from the table: {absent}", {"missing_columns": absent})
        problem = f"""CASE
            WHEN source_text IS NULL THEN NULL
            WHEN NOT json_valid(source_text) THEN 'source_text is not JSON'
            WHEN coalesce(json_type(source_text, '$.captions'), '') <> 'ARRAY'
              OR coalesce(json_type(source_text, '$.qa'), '') <> 'ARRAY' THEN 'source_text lacks captions/qa lists'
            WHEN list_bool_or(list_transform(
                    coalesce(json_extract_string(source_text, '$.captions[*]'), []::VARCHAR[]),
                    lambda c: length(trim(c)) >= {int(min_caption_chars)} AND contains(coalesce(description, ''), trim(c))))
                THEN 'publisher caption pasted into the description'
        END"""
        bad = f"SELECT record_id, source_id, source_text IS NOT NULL AS has_text, {problem} AS problem FROM {rel}"
        with_text, failing = _rows(con, f"SELECT count(*) FILTER (has_text), count(problem) FROM ({bad})")[0]
        by_problem = dict(_rows(con, f"SELECT problem, count(*) FROM ({bad}) WHERE problem IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1"))
        examples = _dicts(
            con, f"SELECT record_id, source_id, problem FROM ({bad}) WHERE problem IS NOT NULL ORDER BY record_id LIMIT {MAX_EXAMPLES}"
        ) if failing else []
        return CheckOutcome(
            name,
            failing == 0,
            severity,
            f"{with_text} rows with publisher text, all well-formed and kept apart"
            if failing == 0 else f"{failing} of {with_text} rows with publisher text fail: {', '.join(by_problem)}",
            {"with_source_text": int(with_text), "failing": int(failing),
             "by_problem": {k: int(v) for k, v in by_problem.items()}, "examples": examples},
        )

    return _guarded(name, severity, path, body)


def check_patient_single_split(
    con, path: PathLike, *, where: str = "TRUE", name: str = "patient_single_split", severity: str = "ERROR"
) -> CheckOutcome:
    """No patient's images in two splits: that would leak the patient from train into test."""

    def body(rel: str) -> CheckOutcome:
        leaking = f"""SELECT patient_hash, list(DISTINCT split ORDER BY split) AS splits, count(*) AS images
            FROM {rel} WHERE patient_hash IS NOT NULL AND ({where})
            GROUP BY patient_hash HAVING count(DISTINCT split) > 1"""
        n = int(_rows(con, f"SELECT count(*) FROM ({leaking})")[0][0])
        examples = _dicts(con, f"{leaking} ORDER BY patient_hash LIMIT {MAX_EXAMPLES}") if n else []
        return CheckOutcome(
            name, n == 0, severity,
            "every patient in one split" if n == 0 else f"{n} patients span more than one split",
            {"leaking_patients": n, "examples": examples},
        )

    return _guarded(name, severity, path, body)


_PAIR_EXAMPLE = """record_id, source_id, labels, kept_record_id, kept_source_id, kept_labels,
    match, phash_distance, correlation, ssim, reason"""


def check_duplicate_label_conflicts(
    con, pairs_path: PathLike, *, name: str = "duplicate_label_conflicts", severity: str = "WARN"
) -> CheckOutcome:
    """No picture appears twice under different labels (verdict ``conflict`` in the pairs table).

    Such rows are held out of training by the export; the check makes them visible, with the
    record ids and both label sets, so someone can ask the publisher which label is right.
    Candidates the pixels rejected but whose labels differ (two frames of one sweep, one called
    benign and one malignant) do not fail the check; they are counted and listed beside it.
    """

    def body(rel: str) -> CheckOutcome:
        by_verdict = dict(_rows(con, f"SELECT verdict, count(*) FROM {rel} GROUP BY 1 ORDER BY 1"))
        conflicts = int(by_verdict.get("conflict", 0))
        examples = _dicts(
            con, f"SELECT {_PAIR_EXAMPLE} FROM {rel} WHERE verdict = 'conflict' ORDER BY record_id LIMIT {MAX_EXAMPLES}"
        ) if conflicts else []
        look_alike = """verdict = 'rejected' AND correlation IS NOT NULL
            AND list_sort(list_distinct(coalesce(labels, []))) <> list_sort(list_distinct(coalesce(kept_labels, [])))"""
        n_look_alike = int(_rows(con, f"SELECT count(*) FROM {rel} WHERE {look_alike}")[0][0])
        look_alike_examples = _dicts(
            con, f"SELECT {_PAIR_EXAMPLE} FROM {rel} WHERE {look_alike} ORDER BY ssim DESC, record_id LIMIT {MAX_EXAMPLES}"
        ) if n_look_alike else []
        return CheckOutcome(
            name, conflicts == 0, severity,
            "no duplicate image carries conflicting labels" if conflicts == 0
            else f"{conflicts} duplicate pairs carry conflicting labels (both rows held out of training)",
            {"conflict_pairs": conflicts, "pairs_by_verdict": {k: int(v) for k, v in by_verdict.items()},
             "examples": examples, "rejected_candidates_with_other_labels": n_look_alike,
             "rejected_candidate_examples": look_alike_examples},
        )

    return _guarded(name, severity, pairs_path, body)


def check_cross_patient_duplicates(
    con, pairs_path: PathLike, *, name: str = "duplicate_cross_patient", severity: str = "WARN"
) -> CheckOutcome:
    """No image confirmed as a copy of another patient's image within one source.

    Patient hashes are salted per source, so across sources every pair is "cross-patient" by
    construction (a re-published image); those are counted but do not fail the check. Within
    one source, one picture under two patients means the publisher mixed up patients or images.
    """

    def body(rel: str) -> CheckOutcome:
        matched = "verdict IN ('confirmed', 'conflict') AND cross_patient"
        within, across = _rows(
            con, f"SELECT count(*) FILTER (NOT cross_source), count(*) FILTER (cross_source) FROM {rel} WHERE {matched}"
        )[0]
        examples = _dicts(
            con,
            f"""SELECT {_PAIR_EXAMPLE}, patient_hash, kept_patient_hash, verdict FROM {rel}
                WHERE {matched} AND NOT cross_source ORDER BY record_id LIMIT {MAX_EXAMPLES}""",
        ) if within else []
        return CheckOutcome(
            name, within == 0, severity,
            "no duplicate spans two patients of one source" if within == 0
            else f"{within} duplicate pairs span two patients of one source",
            {"within_source": int(within), "across_sources": int(across), "examples": examples},
        )

    return _guarded(name, severity, pairs_path, body)


def check_model_rois_well_formed(con, path: PathLike, *, name: str = "model_rois_well_formed", severity: str = "ERROR") -> CheckOutcome:
    """Every expert-model ROI names its expert and weights, has a score in [0, 1] and a box with
    area inside its image; ``applied`` is exactly "not annotated"; an IoU only on annotated records."""
    problem = """CASE
        WHEN origin IS NULL OR NOT starts_with(origin, 'model:') THEN 'origin does not start with model:'
        WHEN expert_id IS NULL OR origin <> 'model:' || expert_id THEN 'origin does not name the expert_id'
        WHEN confidence IS NULL OR confidence < 0 OR confidence > 1 OR isnan(confidence) THEN 'confidence outside [0, 1]'
        WHEN x0 IS NULL OR y0 IS NULL OR x1 IS NULL OR y1 IS NULL OR image_width IS NULL OR image_height IS NULL THEN 'box or image size missing'
        WHEN x0 < 0 OR y0 < 0 OR x1 > image_width OR y1 > image_height THEN 'box outside the image'
        WHEN x0 >= x1 OR y0 >= y1 OR coalesce(area_px, 0) <= 0 THEN 'box or mask has no area'
        WHEN coalesce(weights_sha256, '') = '' THEN 'weights sha256 missing'
        WHEN coalesce(model_provenance, '') NOT IN ('trained', 'brought') THEN 'model provenance missing (trained | brought)'
        WHEN annotated IS NULL OR applied IS NULL OR applied = annotated THEN 'applied must be exactly: not annotated'
        WHEN NOT annotated AND iou_vs_annotation IS NOT NULL THEN 'IoU on an unannotated record'
        WHEN iou_vs_annotation < 0 OR iou_vs_annotation > 1 THEN 'IoU outside [0, 1]'
    END"""

    def body(rel: str) -> CheckOutcome:
        bad = f"SELECT *, {problem} AS problem FROM {rel}"
        total, n_bad = _rows(con, f"SELECT count(*), count(problem) FROM ({bad})")[0]
        by_problem = dict(_rows(con, f"SELECT problem, count(*) FROM ({bad}) WHERE problem IS NOT NULL GROUP BY 1 ORDER BY 2 DESC"))
        examples = _dicts(
            con,
            f"""SELECT roi_id, record_id, origin, expert_id, confidence, x0, y0, x1, y1, image_width, image_height,
                       weights_sha256, model_provenance, annotated, applied, iou_vs_annotation, problem
                FROM ({bad}) WHERE problem IS NOT NULL ORDER BY roi_id LIMIT {MAX_EXAMPLES}""",
        ) if n_bad else []
        by_expert = dict(_rows(con, f"SELECT expert_id, count(*) FROM {rel} GROUP BY 1 ORDER BY 1"))
        return CheckOutcome(
            name, n_bad == 0, severity,
            (f"{total} model ROIs well formed" if total else "no model ROI (no expert applied, or none found anything)")
            if n_bad == 0 else f"{n_bad} of {total} model ROIs malformed",
            {"rois": int(total), "failing": int(n_bad), "rois_by_expert": {str(k): int(v) for k, v in by_expert.items()},
             "by_problem": {k: int(v) for k, v in by_problem.items()}, "examples": examples},
        )

    return _guarded(name, severity, path, body)


# normalize_label (vocabulary) in SQL: lower case, "_" and "-" as spaces, single spaces.
def _normalized_label_sql(column: str) -> str:
    return f"trim(regexp_replace(replace(replace(lower({column}), '_', ' '), '-', ' '), '\\s+', ' ', 'g'))"


def check_model_iou_on_annotated(
    con, model_path: PathLike, rois_path: PathLike, *, name: str = "model_iou_on_annotated", severity: str = "WARN"
) -> CheckOutcome:
    """Per expert: the mean, over the partition's records annotated with the expert's labels, of
    the best IoU of its ROIs against the annotation (0 where it found nothing) is at least the
    expert's floor (``iou_floor``, the spec's min_iou_on_annotated). An expert with no ROI at all
    in the partition is not in the table and so not measured here (the stage report lists it)."""
    rois_files = _existing(rois_path)

    def body(rel: str) -> CheckOutcome:
        experts = f"""SELECT expert_id, max(iou_floor) AS floor, any_value(target_labels) AS labels
                      FROM {rel} GROUP BY expert_id"""
        best = f"""SELECT expert_id, record_id, max(iou_vs_annotation) AS iou
                   FROM {rel} WHERE annotated AND iou_vs_annotation IS NOT NULL GROUP BY ALL"""
        if rois_files:
            annotated = f"""SELECT DISTINCT record_id, {_normalized_label_sql('label')} AS label
                            FROM {_relation(rois_files)} WHERE origin LIKE 'annotation:%'"""
            targets = f"""SELECT DISTINCT e.expert_id, a.record_id FROM ({experts}) e JOIN ({annotated}) a
                          ON len(coalesce(e.labels, [])) = 0 OR list_contains(e.labels, a.label)"""
        else:  # no rois table to count misses from: the records where the expert found something
            targets = f"SELECT DISTINCT expert_id, record_id FROM ({best})"
        per_expert = _dicts(
            con,
            f"""SELECT e.expert_id, e.floor, count(t.record_id) AS records_compared, count(b.iou) AS records_with_model_roi,
                       round(avg(coalesce(b.iou, 0)) FILTER (t.record_id IS NOT NULL), 4) AS mean_iou
                FROM ({experts}) e LEFT JOIN ({targets}) t USING (expert_id)
                LEFT JOIN ({best}) b ON b.expert_id = t.expert_id AND b.record_id = t.record_id
                GROUP BY ALL ORDER BY e.expert_id""",
        )
        below = [e for e in per_expert if e["records_compared"] and e["mean_iou"] is not None and e["mean_iou"] < e["floor"]]
        compared = [e for e in per_expert if e["records_compared"]]
        if not per_expert:
            text = "no model ROI in this partition: nothing to compare"
        elif not compared:
            text = "no annotated record to compare the experts with"
        elif below:
            text = "; ".join(f"{e['expert_id']} mean IoU {e['mean_iou']:.3f} < {e['floor']:.2f} over {e['records_compared']} records" for e in below)
        else:
            text = "; ".join(f"{e['expert_id']} mean IoU {e['mean_iou']:.3f} >= {e['floor']:.2f} over {e['records_compared']} records" for e in compared)
        return CheckOutcome(
            name, not below, severity, text,
            {"experts": {e["expert_id"]: {k: v for k, v in e.items() if k != "expert_id"} for e in per_expert},
             "rois_table": str(rois_files[0]) if rois_files else None},
        )

    return _guarded(name, severity, model_path, body)


# --- check sets ------------------------------------------------------------------------
#
# The constructors below build the checks a stage lists in its registry entry
# (medtrinity_assets.pipeline.STAGES); each reads the stage's own table and quarantine table
# through a CheckTarget, so a check set never names its stage.


@dataclass(frozen=True)
class CheckTarget:
    """What one stage's checks read for one partition."""

    root: DataRoot
    table: Path
    quarantine: Path | None = None


def not_null(columns: list[str]) -> CheckDef:
    return CheckDef(
        "not_null", f"No nulls in {', '.join(columns)}.", "ERROR",
        lambda con, t: check_not_null(con, t.table, columns, name="not_null"),
    )


def unique_key(columns: list[str]) -> CheckDef:
    return CheckDef(
        "unique_key", f"({', '.join(columns)}) identifies one row.", "ERROR",
        lambda con, t: check_unique(con, t.table, columns, name="unique_key"),
    )


def row_count(min_rows: int = MIN_ROWS) -> CheckDef:
    return CheckDef(
        "row_count", f"At least {min_rows} row(s).", "ERROR",
        lambda con, t: check_row_count(con, t.table, min_rows, name="row_count"),
    )


def quarantine_rate(max_rate: float = MAX_QUARANTINE_RATE, records_table: str | None = None) -> CheckDef:
    """``records_table``: count the inputs in that stage's table of the same partition instead of
    this stage's own (for a table that has rows only for some of its inputs)."""

    def records(t: CheckTarget) -> Path:
        return t.root.table(records_table, t.table.stem) if records_table else t.table

    return CheckDef(
        "quarantine_rate",
        f"At most {max_rate:.0%} of this stage's inputs quarantined, grouped by kind.",
        "WARN",
        lambda con, t: check_quarantine_rate(con, [t.quarantine] if t.quarantine else [], records(t), max_rate, name="quarantine_rate"),
    )


def quarantine_kinds() -> CheckDef:
    return CheckDef(
        "quarantine_kinds", f"Every quarantine row's kind is one of {', '.join(QUARANTINE_KINDS)}.", "ERROR",
        lambda con, t: check_quarantine_kinds(con, t.quarantine, t.table),
    )


def quarantine_checks(max_rate: float = MAX_QUARANTINE_RATE) -> tuple[CheckDef, CheckDef]:
    """The checks every stage that writes quarantine rows lists."""
    return quarantine_rate(max_rate), quarantine_kinds()


def rois_inside_image() -> CheckDef:
    return CheckDef(
        "rois_inside_image", "0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height; annotated ROIs have area.", "ERROR",
        lambda con, t: check_rois_inside_image(con, t.table),
    )


def accepted_values(name: str, column: str, accepted: Iterable[str], description: str, where: str | None = None) -> CheckDef:
    accepted = list(accepted)
    return CheckDef(
        name, description, "ERROR",
        lambda con, t: check_accepted_values(con, t.table, column, accepted, name=name, where=where),
    )


def provenance_values() -> CheckDef:
    return accepted_values("provenance_values", "provenance", PROVENANCES, f"provenance is one of {', '.join(PROVENANCES)}.")


def patient_side_from_geometry() -> CheckDef:
    return accepted_values(
        "patient_side_from_geometry", "provenance", sorted(SIDE_PROVENANCES),
        "Patient-side facts come only from geometry or a declared view/laterality, never from the frame.",
        where="attribute = 'patient_side'",
    )


def five_parts() -> CheckDef:
    return CheckDef(
        "five_parts", "All five MedTrinity description parts are written (not blank).", "ERROR",
        lambda con, t: check_five_parts(con, t.table),
    )


def contradiction_rate(max_rate: float = MAX_CONTRADICTION_RATE) -> CheckDef:
    return CheckDef(
        "contradiction_rate", f"At most {max_rate:.0%} of descriptions contradicted by the measured attributes.", "WARN",
        lambda con, t: check_contradiction_rate(con, t.table, max_rate),
    )


def fallback_rate(max_rate: float = MAX_FALLBACK_RATE) -> CheckDef:
    return CheckDef(
        "model_fallback_rate", f"At most {max_rate:.0%} of a model writer's rows fall back to the grounded writer.", "WARN",
        lambda con, t: check_fallback_rate(con, t.table, max_rate),
    )


def split_values() -> CheckDef:
    return accepted_values("split_values", "split", SPLIT_NAMES, f"split is one of {', '.join(SPLIT_NAMES)}.")


def patient_single_split(where: str = "TRUE", description: str = "No patient has images in two splits.") -> CheckDef:
    return CheckDef(
        "patient_single_split", description, "ERROR",
        lambda con, t: check_patient_single_split(con, t.table, where=where),
    )


def source_text_kept_apart() -> CheckDef:
    return CheckDef(
        "source_text_kept_apart",
        "Publisher text is {captions, qa} JSON and no caption of it is pasted into the description.", "ERROR",
        lambda con, t: check_source_text_kept_apart(con, t.table),
    )


def duplicate_label_conflicts() -> CheckDef:
    return CheckDef(
        "duplicate_label_conflicts",
        "No image is a confirmed duplicate of another carrying different labels (examples listed).", "WARN",
        lambda con, t: check_duplicate_label_conflicts(con, t.root.table(DUPLICATE_PAIRS_TABLE)),
    )


def duplicate_cross_patient() -> CheckDef:
    return CheckDef(
        "duplicate_cross_patient",
        "No image is a confirmed duplicate of another patient's image in the same source (examples listed).", "WARN",
        lambda con, t: check_cross_patient_duplicates(con, t.root.table(DUPLICATE_PAIRS_TABLE)),
    )


def model_rois_well_formed() -> CheckDef:
    return CheckDef(
        "model_rois_well_formed",
        "Expert-model ROIs: origin model:<expert_id>, confidence in [0, 1], box with area inside the image, "
        "weights sha256 and provenance present, applied exactly on unannotated records.",
        "ERROR",
        lambda con, t: check_model_rois_well_formed(con, t.table),
    )


def model_iou_on_annotated() -> CheckDef:
    """Drift: reads the partition's rois table beside the model_rois table (records the expert missed count as 0)."""
    return CheckDef(
        "model_iou_on_annotated",
        "Per expert, the mean best IoU against the annotation over annotated records is at least the "
        "expert's min_iou_on_annotated (0 where it found nothing).",
        "WARN",
        lambda con, t: check_model_iou_on_annotated(con, t.table, t.root.table("rois", t.table.stem)),
    )


def run_check_set(checks: Iterable[CheckDef], target: CheckTarget) -> list[CheckOutcome]:
    """Run a stage's checks for one partition; a check that raises is a failed outcome."""
    con = connect()
    try:
        outcomes = []
        for check in checks:
            try:
                outcome = check.run(con, target)
            except Exception as error:  # a check bug must show as a failed check, not kill the run
                outcome = CheckOutcome(check.name, False, check.severity, f"check raised {type(error).__name__}: {error}", {})
            outcome.name, outcome.severity = check.name, check.severity
            outcomes.append(outcome)
        return outcomes
    finally:
        con.close()
