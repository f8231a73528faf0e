"""The dbt-like SQL runner and the project's models, run by DuckDB on a real warehouse file."""

from __future__ import annotations

import json

import duckdb
import pytest

from medtrinity_assets import schemas
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.quality.sql_models import (
    ModelError,
    SqlModel,
    discover_models,
    parse_refs,
    render,
    run_model,
    run_models,
    topological_order,
)
from medtrinity_assets.storage import write_table

MODELS_DIR = REPO_ROOT / "dbt_like_sql"


def triplet(record_id, source_id, modality, organ, labels, patient, split, rois, verified=True):
    return {
        "record_id": record_id,
        "source_id": source_id,
        "image_path": f"blobs/images/{record_id}.png",
        "image_sha256": f"sha-{record_id}",
        "phash": "0f0f0f0f0f0f0f0f",
        "height": 256,
        "width": 256,
        "modality": modality,
        "organs": [organ],
        "labels": labels,
        "rois": json.dumps(rois),
        "primary_roi_id": rois[0]["roi_id"],
        "coarse_caption": f"{modality} of the {organ}.",
        "description": f"A {modality} image of the {organ}.",
        "verified": verified,
        "verifier_flags": [] if verified else ["count: says two lesions, one ROI"],
        "patient_hash": patient,
        "split": split,
        "license": "CC BY 4.0" if source_id == "isic2017" else "CC BY-NC-SA 4.0",
        "provenance": json.dumps({"source_file": f"{record_id}.png", "slice_index": -1, "writer": "grounded-writer",
                                  "prompt_version": "p-1", "pipeline_version": "0.1.0"}),
    }


def r(roi_id, label, origin, box, confidence=1.0):
    return {"roi_id": roi_id, "label": label, "origin": origin, "box": box, "mask_path": None, "confidence": confidence}


WHOLE = [0, 0, 256, 256]


@pytest.fixture
def data_root(tmp_path):
    root = DataRoot(tmp_path / "var")
    write_table(
        root.table("triplets", "isic2017"),
        schemas.TRIPLETS,
        [
            triplet("i1", "isic2017", "dermoscopy", "skin", ["melanoma"], "pa", "train",
                    [r("i1-0", "melanoma", "annotation:mask", [40, 50, 200, 210])]),
            triplet("i2", "isic2017", "dermoscopy", "skin", ["nevus"], "pb", "test",
                    [r("i2-0", "nevus", "annotation:mask", [60, 60, 120, 140]), r("i2-1", "nevus", "whole_image", WHOLE)]),
            triplet("i3", "isic2017", "dermoscopy", "skin", ["melanoma"], "pc", "train",
                    [r("i3-0", "melanoma", "annotation:mask", [10, 20, 30, 40])], verified=False),
        ],
    )
    write_table(
        root.table("triplets", "busi"),
        schemas.TRIPLETS,
        [
            triplet("b1", "busi", "ultrasound", "breast", ["benign", "cyst"], "pd", "val",
                    [r("b1-0", "benign", "annotation:mask", [5, 6, 7, 8])]),
            triplet("b2", "busi", "ultrasound", "breast", [], "pe", "train", [r("b2-0", "", "whole_image", WHOLE)]),
        ],
    )
    q = lambda source, file, stage, reason, kind, rid=None: {  # noqa: E731
        "source_id": source, "source_file": file, "record_id": rid, "stage": stage, "kind": kind, "reason": reason}
    # Two wordings of one kind: the model groups by kind, never by wording.
    write_table(root.quarantine("raw_records", "busi"), schemas.QUARANTINE,
                [q("busi", "a.png", "raw_records", "not an image", "unreadable"),
                 q("busi", "b.png", "raw_records", "unreadable image: truncated", "unreadable"),
                 q("busi", "c_mask.png", "raw_records", "mask without image", "unpaired")])
    write_table(root.quarantine("normalized_images", "isic2017"), schemas.QUARANTINE,
                [q("isic2017", "d.jpg", "normalized_images", "cannot normalize: all-constant pixels", "stage_error", "rid-d")])
    return root


def relation_for_root(root: DataRoot, model_names: set[str]):
    def relation_for(ref: str) -> str:
        if ref in model_names:
            return ref
        if ref == "quarantine":
            return f"read_parquet('{root.quarantine_glob()}', union_by_name = true)"
        return f"read_parquet('{root.table_glob(ref)}', union_by_name = true)"

    return relation_for


def test_discover_models_parses_refs_and_orders_them():
    models = discover_models(MODELS_DIR)
    by_name = {m.name: m for m in models}
    assert set(by_name) == {"stg_triplets", "summary_by_source", "summary_by_modality", "summary_by_finding",
                            "qc_quarantine_by_kind"}
    assert by_name["stg_triplets"].refs == ["triplets"]
    assert by_name["summary_by_source"].refs == ["stg_triplets"]
    assert by_name["summary_by_finding"].refs == ["stg_triplets"]
    assert by_name["qc_quarantine_by_kind"].refs == ["quarantine"]
    names = [m.name for m in models]
    for summary in ["summary_by_source", "summary_by_modality", "summary_by_finding"]:
        assert names.index("stg_triplets") < names.index(summary)


def test_parse_refs_variants_and_render():
    sql = "SELECT * FROM {{ref('a')}} JOIN {{  ref(\"b\")  }} USING (x) JOIN {{ ref('a') }} USING (y);"
    assert parse_refs(sql) == ["a", "b"]
    rendered = render(SqlModel("m", MODELS_DIR / "m.sql", sql, ["a", "b"]), lambda ref: f"tbl_{ref}")
    assert rendered == "SELECT * FROM tbl_a JOIN tbl_b USING (x) JOIN tbl_a USING (y)"


def test_models_run_in_a_warehouse_file(data_root, tmp_path):
    models = discover_models(MODELS_DIR)
    warehouse = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(warehouse))
    try:
        rows = run_models(con, models, relation_for_root(data_root, {m.name for m in models}))
    finally:
        con.close()
    assert rows == {
        "qc_quarantine_by_kind": 3,
        "stg_triplets": 5,
        "summary_by_finding": 5,  # melanoma, nevus, benign, cyst, no finding
        "summary_by_modality": 2,
        "summary_by_source": 2,
    }

    # The tables persist in the file: reopen it and read the results.
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        stg = {row[0]: row[1:] for row in con.execute(
            "SELECT record_id, roi_count, primary_roi_origin, primary_x0, primary_y0, primary_x1, primary_y1, "
            "verifier_flag_count, writer FROM stg_triplets").fetchall()}
        assert stg["i2"] == (2, "annotation:mask", 60, 60, 120, 140, 0, "grounded-writer")
        assert stg["i3"][6] == 1
        by_source = {row[0]: row[1:] for row in con.execute(
            "SELECT source_id, triplets, patients, train, val, test, verified_fraction, mean_rois_per_image, "
            "annotated_fraction FROM summary_by_source").fetchall()}
        assert by_source["isic2017"][:5] == (3, 3, 2, 0, 1)
        assert by_source["isic2017"][5] == pytest.approx(2 / 3)
        assert by_source["isic2017"][6] == pytest.approx(4 / 3)
        assert by_source["busi"][7] == pytest.approx(0.5)
        findings = {row[0]: row[1:] for row in con.execute(
            "SELECT finding, images, sources, verified_fraction FROM summary_by_finding").fetchall()}
        assert findings["melanoma"] == (2, 1, pytest.approx(0.5))
        assert findings["no finding"] == (1, 1, 1.0)
        quarantine = con.execute("SELECT source_id, stage, kind, files, records FROM qc_quarantine_by_kind").fetchall()
        assert quarantine[0] == ("busi", "raw_records", "unreadable", 2, 0)
        assert ("isic2017", "normalized_images", "stage_error", 1, 1) in quarantine
    finally:
        con.close()


def test_run_model_replaces_the_table_on_rerun(data_root, tmp_path):
    models = {m.name: m for m in discover_models(MODELS_DIR)}
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    try:
        relation_for = relation_for_root(data_root, set(models))
        assert run_model(con, models["stg_triplets"], relation_for) == 5
        data_root.table("triplets", "busi").unlink()
        assert run_model(con, models["stg_triplets"], relation_for) == 3
    finally:
        con.close()


def test_ref_cycle_fails_naming_the_models(tmp_path):
    (tmp_path / "alpha.sql").write_text("SELECT * FROM {{ ref('beta') }}")
    (tmp_path / "beta.sql").write_text("SELECT * FROM {{ ref('gamma') }}")
    (tmp_path / "gamma.sql").write_text("SELECT * FROM {{ ref('alpha') }} JOIN {{ ref('triplets') }} USING (x)")
    (tmp_path / "delta.sql").write_text("SELECT * FROM {{ ref('triplets') }}")
    with pytest.raises(ModelError, match=r"alpha -> beta -> gamma -> alpha"):
        discover_models(tmp_path)
    (tmp_path / "self_ref.sql").write_text("SELECT * FROM {{ ref('self_ref') }}")
    with pytest.raises(ModelError, match="self_ref"):
        discover_models(tmp_path)


def test_topological_order_is_stable_for_independent_models(tmp_path):
    for name, sql in {"zeta": "SELECT 1 AS x", "alpha": "SELECT * FROM {{ ref('zeta') }}", "mid": "SELECT 2 AS x"}.items():
        (tmp_path / f"{name}.sql").write_text(sql)
    order = [m.name for m in topological_order(list(reversed(discover_models(tmp_path))))]
    assert order == ["mid", "zeta", "alpha"]
