"""Expert-model ROIs without a model: the ROI rows made from instances, and the one relation
(grounding.grounded_view) every later stage reads.

Tables are real Parquet files with the stage schemas; the view runs in real DuckDB. The rows
are made from real masks on a real Kvasir-SEG image (the "instances" here are the publisher's
own mask and a shifted copy of it, so the IoU each row must carry is known).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medtrinity_assets import schemas
from medtrinity_assets.duckdb_sql import connect
from medtrinity_assets.grounding.experts.base import Instance
from medtrinity_assets.grounding.grounded_view import grounded_rois_sql
from medtrinity_assets.grounding.model_rois import ExpertRun, best_iou, model_roi_id, model_roi_rows
from medtrinity_assets.grounding.rois import roi_id_for
from medtrinity_assets.imaging.normalize import encode_png
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.storage import BlobStore, write_table
from medtrinity_assets_tests.conftest import REALDATA, needs_realdata

SOURCE = "kv"
SHA = "c0ffee" * 10 + "abcd"


def _row(schema, **values) -> dict:
    row = {name: None for name in schema.names}
    row.update(values)
    return row


def _roi(record_id, origin, index=0, label="polyp", **extra) -> dict:
    box = dict(x0=0, y0=0, x1=64, y1=64) if origin == "whole_image" else dict(x0=10, y0=10, x1=30, y1=30)
    return _row(schemas.ROIS, roi_id=roi_id_for(record_id, index), record_id=record_id, source_id=SOURCE, label=None if origin == "whole_image" else label,
                origin=origin, confidence=0.0 if origin == "whole_image" else 1.0, image_height=64, image_width=64,
                area_px=4096 if origin == "whole_image" else 400, **box, **extra)


def _model(record_id, index, annotated, score=0.8, iou=None, expert="kvasir_polyp") -> dict:
    return _row(schemas.MODEL_ROIS, roi_id=model_roi_id(record_id, expert, index), record_id=record_id, source_id=SOURCE,
                label="polyp", origin=f"model:{expert}", confidence=score, image_height=64, image_width=64,
                x0=5, y0=5, x1=25, y1=25, area_px=400, expert_id=expert, weights_sha256=SHA, model_provenance="trained",
                annotated=annotated, applied=not annotated, iou_vs_annotation=iou, target_labels=[], iou_floor=0.5)


def _view(root: DataRoot) -> list[dict]:
    con = connect()
    try:
        return con.sql(f"SELECT * FROM ({grounded_rois_sql(root, SOURCE)}) ORDER BY record_id, roi_id").to_arrow_table().to_pylist()
    finally:
        con.close()


def test_view_replaces_whole_image_of_unannotated_records_only(tmp_path):
    root = DataRoot(tmp_path)
    write_table(root.table("rois", SOURCE), schemas.ROIS, [
        _roi("annotated", "annotation:mask"),
        _roi("bare", "whole_image"),  # the model marks two regions here
        _roi("empty", "whole_image"),  # the model found nothing here
    ])
    # Without a model_rois table (a data root from before experts) the view is the rois table.
    before = _view(root)
    assert [(r["record_id"], r["origin"]) for r in before] == [("annotated", "annotation:mask"), ("bare", "whole_image"), ("empty", "whole_image")]
    assert all(r["expert_id"] is None for r in before)

    write_table(root.table("model_rois", SOURCE), schemas.MODEL_ROIS, [
        _model("annotated", 0, annotated=True, iou=0.7),  # drift evidence only, never described
        _model("bare", 0, annotated=False, score=0.9),
        _model("bare", 1, annotated=False, score=0.6),
    ])
    rows = _view(root)
    by_record: dict[str, list[str]] = {}
    for row in rows:
        by_record.setdefault(row["record_id"], []).append(row["origin"])
    assert by_record == {
        "annotated": ["annotation:mask"],
        "bare": ["model:kvasir_polyp", "model:kvasir_polyp"],
        "empty": ["whole_image"],
    }
    model_rows = [r for r in rows if r["record_id"] == "bare"]
    assert {r["weights_sha256"] for r in model_rows} == {SHA} and {r["model_provenance"] for r in model_rows} == {"trained"}
    assert sorted(r["confidence"] for r in model_rows) == [0.6, 0.9]
    # A stale model_rois table (the record was annotated since): the annotation alone.
    write_table(root.table("rois", SOURCE), schemas.ROIS, [
        _roi("annotated", "annotation:mask"), _roi("bare", "annotation:box"), _roi("empty", "whole_image")])
    assert [(r["record_id"], r["origin"]) for r in _view(root)] == [
        ("annotated", "annotation:mask"), ("bare", "annotation:box"), ("empty", "whole_image")]
    # One shape downstream: the ROIS columns plus the three naming the model; the drift-check
    # columns stay in model_rois.
    assert set(rows[0]) == set(schemas.ROIS.names) | {"expert_id", "weights_sha256", "model_provenance"}


def test_best_iou_takes_each_region_and_their_union():
    a = np.zeros((20, 20), bool)
    a[2:8, 2:8] = True
    b = np.zeros((20, 20), bool)
    b[2:8, 8:14] = True
    both = a | b
    assert best_iou(a, [a, b]) == 1.0
    assert best_iou(both, [a, b]) == 1.0  # one model region over two touching annotated ones
    assert best_iou(a, []) == 0.0
    assert best_iou(np.roll(a, 3, axis=1), [a]) == pytest.approx(18 / 54)


@needs_realdata
def test_rows_from_instances_on_a_real_image(tmp_path):
    """A real polyp image and its publisher mask: an instance equal to the annotation gets IoU 1
    on the annotated record; the same instance on an unannotated copy is applied, with no IoU;
    measurements are those of the annotation code; reruns give the same rows."""
    image_path = sorted((REALDATA / "kvasir_seg" / "images").glob("*.jpg"))[0]
    display = np.asarray(Image.open(image_path).convert("RGB").resize((160, 128)))
    mask = np.asarray(Image.open(REALDATA / "kvasir_seg" / "masks" / image_path.name).convert("L").resize((160, 128))) > 127
    blobs = BlobStore(tmp_path)
    _, mask_path = blobs.put("roi_masks", encode_png(mask.astype(np.uint8) * 255), "png")
    load_mask = lambda rel: np.asarray(Image.open(blobs.path(rel)))  # noqa: E731
    run = ExpertRun("kvasir_polyp", "polyp", "segment", SHA, "trained", (), 0.6)
    shifted = np.roll(mask, 12, axis=1)
    ys, xs = np.nonzero(mask)
    instances = [Instance(mask, 0.91234567, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)),
                 Instance(shifted & ~mask, 0.4, (0, 0, 1, 1))]
    base = {"source_id": SOURCE, "modality": "endoscopy", "scale": 1.0, "height": 128, "width": 160}
    annotated = {**base, "record_id": "a1", "annotation_rois": [{"roi_id": "x", "label": "polyp", "origin": "annotation:mask", "mask_path": mask_path}]}
    bare = {**base, "record_id": "b1", "annotation_rois": None}

    rows = model_roi_rows(annotated, display, [(run, instances)], blobs, load_mask)
    assert [r["rank_by_area"] for r in rows] == [1, 2] and all(r["count_same_label"] == 2 for r in rows)
    first = rows[0]
    assert first["origin"] == "model:kvasir_polyp" and first["label"] == "polyp" and first["confidence"] == 0.9123
    assert first["annotated"] is True and first["applied"] is False and first["iou_vs_annotation"] == 1.0
    assert 0.0 <= rows[1]["iou_vs_annotation"] < 0.2  # the sliver beside the polyp
    assert first["roi_id"] == model_roi_id("a1", "kvasir_polyp", 0) != roi_id_for("a1", 0)
    assert (first["x0"], first["y0"], first["x1"], first["y1"]) == instances[0].box
    assert first["area_px"] == int(mask.sum()) and first["colour"] and first["shape"] and first["horizontal"]
    assert json.loads(first["relations"]) and first["iou_floor"] == 0.6 and first["weights_sha256"] == SHA
    assert set(first) == set(schemas.MODEL_ROIS.names)

    applied = model_roi_rows(bare, display, [(run, instances)], blobs, load_mask)
    assert [r["applied"] for r in applied] == [True, True] and all(r["iou_vs_annotation"] is None for r in applied)
    # Same measurements as on the annotated copy: one attribute code for every ROI.
    assert {k: v for k, v in applied[0].items() if k not in ("roi_id", "record_id", "annotated", "applied", "iou_vs_annotation", "relations")} == \
        {k: v for k, v in first.items() if k not in ("roi_id", "record_id", "annotated", "applied", "iou_vs_annotation", "relations")}
    assert model_roi_rows(bare, display, [(run, instances)], blobs, load_mask) == applied
    # An image the source labels normal keeps its label: the model's regions are recorded only.
    labelled_normal = model_roi_rows({**bare, "label_state": "normal"}, display, [(run, instances)], blobs, load_mask)
    assert [r["applied"] for r in labelled_normal] == [False, False]

    # An expert compared only with other labels has nothing to be compared with on this record.
    other = ExpertRun("kvasir_polyp", "polyp", "segment", SHA, "trained", ("instrument",), 0.6)
    assert model_roi_rows(annotated, display, [(other, instances[:1])], blobs, load_mask)[0]["iou_vs_annotation"] is None
    # A detector's box says nothing of shape or margin.
    boxed = ExpertRun("kvasir_polyp", "polyp", "detect", SHA, "brought", (), 0.6)
    box_row = model_roi_rows(bare, display, [(boxed, instances[:1])], blobs, load_mask)[0]
    assert box_row["shape"] is None and box_row["margin"] is None and box_row["model_provenance"] == "brought"
    with pytest.raises(ValueError, match="mask for a"):
        model_roi_rows(bare, display, [(run, [Instance(np.ones((5, 5), bool), 0.9, (0, 0, 5, 5))])], blobs, load_mask)


def test_model_rois_stage_names_the_expert_assets_it_reads(tmp_path, monkeypatch):
    from medtrinity_assets.pipeline import STAGE

    (tmp_path / "polyp_unet.yaml").write_text(
        "id: polyp_unet\nmodality: endoscopy\ntarget: polyp\nfamily: monai\narchitecture: unet\n", encoding="utf-8")
    monkeypatch.setenv("MEDTRINITY_EXPERTS", str(tmp_path))
    stage = STAGE["model_rois"]
    assert stage.upstream == ("normalized_images", "rois") and stage.extra_deps() == ("expert_polyp_unet",)
    monkeypatch.setenv("MEDTRINITY_EXPERTS", str(tmp_path / "none"))
    assert stage.extra_deps() == ()
