"""DuckDB quality checks: each passes on good tables and fails, with its evidence, on bad ones.

Tables are real Parquet files written with the stage schemas; the checks run real SQL on them.
"""

from __future__ import annotations

import json

import pytest

from medtrinity_assets import schemas
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.quality.checks import (
    MAX_CONTRADICTION_RATE,
    MAX_QUARANTINE_RATE,
    check_contradiction_rate,
    check_fallback_rate,
    check_five_parts,
    check_not_null,
    check_patient_single_split,
    check_quarantine_rate,
    check_rois_inside_image,
    check_row_count,
    check_unique,
)
from medtrinity_assets.pipeline import checks_for, run_checks
from medtrinity_assets.storage import write_table

SOURCE = "busi"


def raw_row(i: int, **over) -> dict:
    row = {
        "record_id": f"rec{i:03d}",
        "source_id": SOURCE,
        "source_file": f"Dataset_BUSI_with_GT/benign/benign ({i}).png",
        "slice_index": -1,
        "slice_count": 1,
        "modality": "ultrasound",
        "organs": ["breast"],
        "labels": ["benign"],
        "patient_hash": f"patient{i // 2}",
        "pixel_ref": f"blobs/pixels/{i}.npy",
        "height": 480,
        "width": 640,
        "channels": 1,
        "pixel_dtype": "uint8",
        "pixel_units": "raw",
        "annotations": "[]",
        "photometric": "MONOCHROME2",
    }
    row.update(over)
    return row


def roi(i: int, box=(100, 120, 220, 260), origin="annotation:mask", area=None, width=640, height=480) -> dict:
    x0, y0, x1, y1 = box
    return {
        "roi_id": f"roi{i:03d}",
        "record_id": f"rec{i:03d}",
        "source_id": SOURCE,
        "label": "benign",
        "origin": origin,
        "confidence": 1.0,
        "image_height": height,
        "image_width": width,
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "area_px": (x1 - x0) * (y1 - y0) if area is None else area,
    }


def description(i: int, verified=True, **parts) -> dict:
    row = {
        "record_id": f"rec{i:03d}",
        "source_id": SOURCE,
        "description": "An ultrasound image of the breast with a hypoechoic oval lesion.",
        "part_modality": "Breast ultrasound, B-mode.",
        "part_organ_tissue": "Breast parenchyma with subcutaneous fat.",
        "part_roi_analysis": "An oval lesion in the upper left, medium size.",
        "part_texture_colour": "Hypoechoic, homogeneous, well-defined margin.",
        "part_relations": "The lesion lies within the glandular tissue.",
        "writer": "grounded-writer",
        "prompt_version": "p-1",
        "knowledge_ids": ["kb-fibroadenoma-1"],
        "verified": verified,
        "verifier_flags": [] if verified else ["size: description says large, ROI is medium"],
    }
    row.update(parts)
    return row


def write(path, schema, rows):
    write_table(path, schema, rows)
    return path


# --- not null / unique / row count ----------------------------------------------------


def test_not_null_passes_then_fails_with_examples(con, tmp_path):
    good = write(tmp_path / "good.parquet", schemas.RAW_RECORDS, [raw_row(i) for i in range(10)])
    outcome = check_not_null(con, good, ["record_id", "pixel_ref"])
    assert outcome.passed and outcome.metadata["rows"] == 10

    bad = write(tmp_path / "bad.parquet", schemas.RAW_RECORDS, [raw_row(i) for i in range(9)] + [raw_row(9, pixel_ref=None)])
    outcome = check_not_null(con, bad, ["record_id", "pixel_ref"])
    assert not outcome.passed and outcome.severity == "ERROR"
    assert outcome.metadata["null_counts"] == {"pixel_ref": 1}
    assert outcome.metadata["examples"][0]["record_id"] == "rec009"
    json.dumps(outcome.metadata)  # must be JSON-able for Dagster metadata

    outcome = check_not_null(con, good, ["no_such_column"])
    assert not outcome.passed and "no_such_column" in outcome.description


def test_unique_passes_then_fails_on_duplicate_key(con, tmp_path):
    good = write(tmp_path / "good.parquet", schemas.RAW_RECORDS, [raw_row(i) for i in range(5)])
    assert check_unique(con, good, ["record_id"]).passed
    bad = write(tmp_path / "bad.parquet", schemas.RAW_RECORDS, [raw_row(i) for i in range(5)] + [raw_row(3), raw_row(3)])
    outcome = check_unique(con, bad, ["record_id"])
    assert not outcome.passed
    assert outcome.metadata["duplicated_keys"] == 1 and outcome.metadata["rows_with_duplicated_keys"] == 3
    assert outcome.metadata["examples"] == [{"record_id": "rec003", "copies": 3}]


def test_row_count(con, tmp_path):
    table = write(tmp_path / "t.parquet", schemas.RAW_RECORDS, [raw_row(0)])
    assert check_row_count(con, table, 1).passed
    empty = write(tmp_path / "empty.parquet", schemas.RAW_RECORDS, [])
    outcome = check_row_count(con, empty, 1)
    assert not outcome.passed and outcome.metadata["rows"] == 0


def test_missing_file_is_a_failed_check_not_an_exception(con, tmp_path):
    for outcome in [
        check_not_null(con, tmp_path / "absent.parquet", ["record_id"]),
        check_rois_inside_image(con, tmp_path / "absent.parquet"),
        check_quarantine_rate(con, [], tmp_path / "absent.parquet", 0.2),
        check_row_count(con, str(tmp_path / "nothing" / "*.parquet")),
    ]:
        assert not outcome.passed and "missing" in outcome.description


def test_corrupt_file_is_a_failed_check(con, tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    outcome = check_unique(con, broken, ["record_id"])
    assert not outcome.passed and "could not run" in outcome.description


# --- ROIs ----------------------------------------------------------------------------------


def test_rois_inside_image(con, tmp_path):
    good_rows = [roi(0), roi(1, box=(0, 0, 640, 480), origin="whole_image"), roi(2, box=(600, 400, 640, 480))]
    good = write(tmp_path / "good.parquet", schemas.ROIS, good_rows)
    assert check_rois_inside_image(con, good).passed

    bad_rows = good_rows + [
        roi(3, box=(600, 400, 641, 480)),  # one pixel past the right edge
        roi(4, box=(-1, 10, 20, 30)),
        roi(5, box=(50, 50, 50, 80)),  # zero width
        roi(6, area=0),  # a mask ROI with no pixels
    ]
    outcome = check_rois_inside_image(con, write(tmp_path / "bad.parquet", schemas.ROIS, bad_rows))
    assert not outcome.passed
    assert outcome.metadata["failing"] == 4 and outcome.metadata["rois"] == 7
    assert outcome.metadata["by_problem"] == {
        "box ends past the image": 1,
        "box starts before the image": 1,
        "box has no width or height": 1,
        "ROI has no area": 1,
    }
    assert [e["roi_id"] for e in outcome.metadata["examples"]] == ["roi003", "roi004", "roi005", "roi006"]


# --- descriptions --------------------------------------------------------------------------


def test_five_parts(con, tmp_path):
    good = write(tmp_path / "good.parquet", schemas.DESCRIPTIONS, [description(i) for i in range(4)])
    assert check_five_parts(con, good).passed
    bad = write(
        tmp_path / "bad.parquet",
        schemas.DESCRIPTIONS,
        [description(0), description(1, part_relations="   "), description(2, part_texture_colour=None)],
    )
    outcome = check_five_parts(con, bad)
    assert not outcome.passed
    assert outcome.metadata["incomplete"] == 2
    assert outcome.metadata["blank_by_part"] == {"part_texture_colour": 1, "part_relations": 1}


def test_contradiction_rate(con, tmp_path):
    # 1 of 20 flagged = 5%: at the limit, passes.
    rows = [description(i, verified=(i != 0)) for i in range(20)]
    outcome = check_contradiction_rate(con, write(tmp_path / "ok.parquet", schemas.DESCRIPTIONS, rows), MAX_CONTRADICTION_RATE)
    assert outcome.passed and outcome.metadata["rate"] == 0.05

    rows = [description(i, verified=(i >= 3)) for i in range(20)]
    outcome = check_contradiction_rate(con, write(tmp_path / "bad.parquet", schemas.DESCRIPTIONS, rows), MAX_CONTRADICTION_RATE)
    assert not outcome.passed and outcome.severity == "WARN"
    assert outcome.metadata["contradicted"] == 3 and outcome.metadata["flags_by_kind"] == {"size": 3}
    assert [e["record_id"] for e in outcome.metadata["examples"]] == ["rec000", "rec001", "rec002"]


def test_model_fallback_rate_counts_only_model_rows_and_names_the_reasons(con, tmp_path):
    grounded = [description(i) for i in range(4)]
    outcome = check_fallback_rate(con, write(tmp_path / "grounded.parquet", schemas.DESCRIPTIONS, grounded))
    assert outcome.passed and outcome.metadata["model_rows"] == 0

    def model_row(i: int, reason: str | None) -> dict:
        return {**description(i), "writer": "llm" if reason is None else "grounded-v2", "model": "m", "fallback_reason": reason}

    # 2 of 4 model rows fell back (50%, at the limit); the grounded rows beside them do not count.
    rows = grounded + [model_row(10, None), model_row(11, None), model_row(12, "endpoint: circuit open"),
                       model_row(13, "unverified after 3 attempts: no verified sentence left in part_relations")]
    outcome = check_fallback_rate(con, write(tmp_path / "half.parquet", schemas.DESCRIPTIONS, rows))
    assert outcome.passed and outcome.metadata["model_rows"] == 4 and outcome.metadata["rate"] == 0.5
    assert outcome.metadata["reasons"] == {"endpoint": 1, "unverified after 3 attempts": 1}

    rows.append(model_row(14, "malformed output after 3 attempts"))
    outcome = check_fallback_rate(con, write(tmp_path / "most.parquet", schemas.DESCRIPTIONS, rows))
    assert not outcome.passed and outcome.severity == "WARN" and outcome.metadata["fallbacks"] == 3


# --- quarantine ---------------------------------------------------------------------------


def quarantine_row(i: int, reason: str, kind: str = "unreadable") -> dict:
    return {"source_id": SOURCE, "source_file": f"Dataset_BUSI_with_GT/benign/benign ({i}).png", "record_id": None,
            "stage": "raw_records", "kind": kind, "reason": reason}


def test_quarantine_rate_under_and_over_threshold(con, tmp_path):
    records = write(tmp_path / "records.parquet", schemas.RAW_RECORDS, [raw_row(i) for i in range(8)])
    q_low = write(tmp_path / "q_low.parquet", schemas.QUARANTINE, [quarantine_row(100, "image unreadable: truncated PNG")])
    outcome = check_quarantine_rate(con, [q_low], records, MAX_QUARANTINE_RATE)
    assert outcome.passed and outcome.metadata["rate"] == pytest.approx(1 / 9, abs=1e-4)

    q_high = write(
        tmp_path / "q_high.parquet",
        schemas.QUARANTINE,
        [quarantine_row(100 + i, "mask missing", "unpaired") for i in range(3)] + [quarantine_row(200, "not a readable DICOM file: truncated")],
    )
    outcome = check_quarantine_rate(con, [q_low, q_high], records, MAX_QUARANTINE_RATE)
    assert not outcome.passed
    assert outcome.metadata["quarantined"] == 5 and outcome.metadata["records"] == 8
    assert outcome.metadata["by_kind"] == [{"stage": "raw_records", "kind": "unpaired", "files": 3},
                                           {"stage": "raw_records", "kind": "unreadable", "files": 2}]

    # No quarantine file: nothing was quarantined.
    assert check_quarantine_rate(con, [tmp_path / "none.parquet"], records, 0.2).metadata["quarantined"] == 0


def test_patient_single_split(con, tmp_path):
    def triplet(rid, patient, split):
        return {"record_id": rid, "source_id": SOURCE, "patient_hash": patient, "split": split}

    good = write(tmp_path / "g.parquet", schemas.TRIPLETS, [triplet("a", "p1", "train"), triplet("b", "p1", "train")])
    assert check_patient_single_split(con, good).passed
    bad = write(tmp_path / "b.parquet", schemas.TRIPLETS, [triplet("a", "p1", "train"), triplet("b", "p1", "test")])
    outcome = check_patient_single_split(con, bad)
    assert not outcome.passed and outcome.metadata["examples"][0]["splits"] == ["test", "train"]


# --- registry -----------------------------------------------------------------------------


def test_registry_covers_every_stage_with_unique_names():
    for asset in ["raw_records", "normalized_images", "rois", "coarse_captions", "retrieved_knowledge", "descriptions", "triplets"]:
        checks = checks_for(asset)
        assert checks, asset
        names = [c.name for c in checks]
        assert len(names) == len(set(names)), asset  # Dagster needs unique check names per asset
        assert all(c.severity in {"ERROR", "WARN"} and c.description for c in checks)
    assert "rois_inside_image" in [c.name for c in checks_for("rois")]
    assert {"five_parts", "contradiction_rate", "model_fallback_rate"} <= {c.name for c in checks_for("descriptions")}
    assert checks_for("no_such_asset") == []


def test_run_checks_over_a_data_root(tmp_path):
    root = DataRoot(tmp_path / "var")
    write(root.table("raw_records", SOURCE), schemas.RAW_RECORDS, [raw_row(i) for i in range(10)])
    write(root.quarantine("raw_records", SOURCE), schemas.QUARANTINE, [quarantine_row(99, "not an image")])
    write(root.table("rois", SOURCE), schemas.ROIS, [roi(i) for i in range(10)])
    write(root.table("descriptions", SOURCE), schemas.DESCRIPTIONS, [description(i) for i in range(10)])

    for asset in ["raw_records", "rois", "descriptions"]:
        outcomes = run_checks(asset, root, SOURCE)
        assert [o.name for o in outcomes] == [c.name for c in checks_for(asset)]
        assert all(o.passed for o in outcomes), [(o.name, o.description) for o in outcomes if not o.passed]

    # Bad ROI table for the same partition: the registry's check catches it.
    write(root.table("rois", SOURCE), schemas.ROIS, [roi(0), roi(1, box=(600, 400, 700, 480))])
    failed = {o.name for o in run_checks("rois", root, SOURCE) if not o.passed}
    assert failed == {"rois_inside_image"}

    # A stage that never ran: every check fails with a clear message, nothing raises.
    outcomes = run_checks("coarse_captions", root, SOURCE)
    assert outcomes and all(not o.passed and "missing" in o.description for o in outcomes)
