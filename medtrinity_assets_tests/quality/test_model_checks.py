"""The model_rois checks on hand-made tables: well-formed rows pass, each kind of malformed row
fails with its reason; the drift check averages per expert over annotated records (a record the
expert missed counts 0) against the expert's floor."""

from __future__ import annotations


from medtrinity_assets import schemas
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.pipeline import checks_for, run_checks
from medtrinity_assets.quality.checks import check_model_iou_on_annotated, check_model_rois_well_formed
from medtrinity_assets.storage import write_table

SOURCE = "kv"


def model(roi_id, record_id, annotated, iou=None, expert="polyp_unet", floor=0.5, labels=(), **changes) -> dict:
    row = {name: None for name in schemas.MODEL_ROIS.names}
    row.update(roi_id=roi_id, record_id=record_id, source_id=SOURCE, label="polyp", origin=f"model:{expert}", confidence=0.8,
               image_height=100, image_width=120, x0=10, y0=10, x1=50, y1=40, area_px=900, expert_id=expert,
               weights_sha256="ab" * 32, model_provenance="trained", annotated=annotated, applied=not annotated,
               iou_vs_annotation=iou, target_labels=list(labels), iou_floor=floor)
    row.update(changes)
    return row


def annotation(record_id, label="polyp", origin="annotation:mask") -> dict:
    row = {name: None for name in schemas.ROIS.names}
    row.update(roi_id=f"{record_id}-a", record_id=record_id, source_id=SOURCE, label=label, origin=origin, x0=0, y0=0, x1=5, y1=5)
    return row


def test_well_formed_passes_and_names_each_problem(tmp_path, con):
    root = DataRoot(tmp_path)
    good = [model("g1", "r1", True, iou=0.8), model("g2", "r2", False)]
    path = root.table("model_rois", SOURCE)
    write_table(path, schemas.MODEL_ROIS, good)
    outcome = check_model_rois_well_formed(con, path)
    assert outcome.passed and outcome.metadata["rois"] == 2 and outcome.metadata["rois_by_expert"] == {"polyp_unet": 2}

    bad = good + [
        model("b1", "r3", False, origin="annotation:mask"),
        model("b2", "r3", False, origin="model:other"),
        model("b3", "r3", False, confidence=1.3),
        model("b4", "r3", False, x1=130),
        model("b5", "r3", False, weights_sha256=None),
        model("b6", "r3", False, model_provenance=None),
        model("b7", "r3", False, applied=False),
        model("b8", "r3", False, iou_vs_annotation=0.4),
    ]
    write_table(path, schemas.MODEL_ROIS, bad)
    outcome = check_model_rois_well_formed(con, path)
    assert not outcome.passed and outcome.metadata["failing"] == 8
    assert outcome.metadata["by_problem"] == {
        "origin does not start with model:": 1, "origin does not name the expert_id": 1, "confidence outside [0, 1]": 1,
        "box outside the image": 1, "weights sha256 missing": 1, "model provenance missing (trained | brought)": 1,
        "applied must be exactly: not annotated": 1, "IoU on an unannotated record": 1,
    }


def test_an_empty_table_passes_both_checks(tmp_path, con):
    root = DataRoot(tmp_path)
    write_table(root.table("model_rois", SOURCE), schemas.MODEL_ROIS, [])
    write_table(root.table("rois", SOURCE), schemas.ROIS, [annotation("r1")])
    assert check_model_rois_well_formed(con, root.table("model_rois", SOURCE)).passed
    outcome = check_model_iou_on_annotated(con, root.table("model_rois", SOURCE), root.table("rois", SOURCE))
    assert outcome.passed and "nothing to compare" in outcome.description


def test_iou_check_averages_per_expert_with_misses_as_zero(tmp_path, con):
    root = DataRoot(tmp_path)
    # Four records annotated with polyps, one with an instrument only, one unannotated.
    write_table(root.table("rois", SOURCE), schemas.ROIS, [
        annotation("r1"), annotation("r2"), annotation("r3"), annotation("r4"),
        annotation("r5", label="Instrument"), annotation("r6", origin="whole_image"),
    ])
    rows = [
        # good_unet: best IoU 0.9 on r1 (of two ROIs), 0.8 on r2, 0.7 on r3, r4 missed -> mean 0.6 >= 0.55
        model("g1", "r1", True, iou=0.9, expert="good_unet", floor=0.55, labels=["polyp"]),
        model("g2", "r1", True, iou=0.1, expert="good_unet", floor=0.55, labels=["polyp"]),
        model("g3", "r2", True, iou=0.8, expert="good_unet", floor=0.55, labels=["polyp"]),
        model("g4", "r3", True, iou=0.7, expert="good_unet", floor=0.55, labels=["polyp"]),
        model("g5", "r6", False, expert="good_unet", floor=0.55, labels=["polyp"]),
        # drifted: compared with every label (r1-r5); finds r1 at 0.9 only -> mean 0.18 < 0.5
        model("d1", "r1", True, iou=0.9, expert="drifted"),
    ]
    write_table(root.table("model_rois", SOURCE), schemas.MODEL_ROIS, rows)
    outcome = check_model_iou_on_annotated(con, root.table("model_rois", SOURCE), root.table("rois", SOURCE))
    assert not outcome.passed
    experts = outcome.metadata["experts"]
    assert experts["good_unet"] == {"floor": 0.55, "records_compared": 4, "records_with_model_roi": 3, "mean_iou": 0.6}
    assert experts["drifted"] == {"floor": 0.5, "records_compared": 5, "records_with_model_roi": 1, "mean_iou": 0.18}
    assert "drifted mean IoU 0.180 < 0.50 over 5 records" == outcome.description

    write_table(root.table("model_rois", SOURCE), schemas.MODEL_ROIS, rows[:5])
    outcome = check_model_iou_on_annotated(con, root.table("model_rois", SOURCE), root.table("rois", SOURCE))
    assert outcome.passed and outcome.description == "good_unet mean IoU 0.600 >= 0.55 over 4 records"


def test_registered_on_the_model_rois_stage(tmp_path):
    root = DataRoot(tmp_path)
    names = [c.name for c in checks_for("model_rois")]
    assert {"model_rois_well_formed", "model_iou_on_annotated"} <= set(names)
    severities = {c.name: c.severity for c in checks_for("model_rois")}
    assert severities["model_rois_well_formed"] == "ERROR" and severities["model_iou_on_annotated"] == "WARN"
    write_table(root.table("normalized_images", SOURCE), schemas.NORMALIZED_IMAGES, [
        {name: (f"r{i}" if name == "record_id" else None) for name in schemas.NORMALIZED_IMAGES.names} for i in (1, 2, 3)])
    write_table(root.table("rois", SOURCE), schemas.ROIS, [annotation("r1")])
    write_table(root.table("model_rois", SOURCE), schemas.MODEL_ROIS, [model("g1", "r1", True, iou=0.3), model("g2", "r2", False)])
    outcomes = {o.name: o for o in run_checks("model_rois", root, SOURCE)}
    assert outcomes["model_rois_well_formed"].passed
    assert not outcomes["model_iou_on_annotated"].passed  # 0.3 < 0.5
    # The rate's denominator is the normalized images, not the records a model found something in.
    assert outcomes["quarantine_rate"].passed and outcomes["quarantine_rate"].metadata["records"] == 3
