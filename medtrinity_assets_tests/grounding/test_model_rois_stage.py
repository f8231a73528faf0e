"""The model_rois stage on a tiny real data root, with a tiny expert trained here.

Twelve Kvasir-SEG images go through the pipeline's own ingest, normalize and ground twice: as
the catalog's kvasir_seg source (masks: annotated) and as an image-folder source without masks
(the same pixels, unannotated, label state unknown). A MONAI UNet trained for a few epochs at
64 px on the annotated partition is applied to both: annotated records get their IoU against
the publisher's mask, unannotated ones get applied ROIs, which the later stages describe as the
model's possible findings. Experts that cannot run (not trained, a brought file missing) are
skipped with their reason and the partition still finishes.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from expert_fixtures import KVASIR, KVASIR_IDS, expert_spec, ground, kvasir_source
from medtrinity_assets import schemas, stages
from medtrinity_assets.duckdb_sql import connect, read_parquet
from medtrinity_assets.grounding.experts.training import train_expert
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.pipeline import run_checks
from medtrinity_assets.storage import write_table
from spec_factory import build_spec

pytestmark = [pytest.mark.skipif(not KVASIR.is_dir(), reason="../shared/realdata is not present"), pytest.mark.realdata]

UNANNOTATED = "kvasir_unlabelled"
# Low threshold: a few epochs at 64 px give soft probabilities; the test needs ROIs to exist,
# not a good polyp detector (the benchmark measures that).
EXPERT = dict(epochs=6, learning_rate=3e-3, confidence_threshold=0.3, min_iou_on_annotated=0.05, augment=False)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def unannotated_source(folder):
    (folder / "images").mkdir(parents=True)
    for image_id in KVASIR_IDS:
        shutil.copyfile(KVASIR / "images" / f"{image_id}.jpg", folder / "images" / f"{image_id}.jpg")
    return build_spec(id=UNANNOTATED, name="Kvasir images without masks", modality="endoscopy", organs=["colon"],
                      annotation_kinds=["label"], root=str(folder), layout={"family": "image_folder", "image_glob": "images/*.jpg"})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both partitions grounded, the expert trained (once for the module)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("model_rois")
    annotated = kvasir_source(tmp / "kvasir_seg")
    bare = unannotated_source(tmp / "unlabelled")
    root = DataRoot(tmp / "var")
    ground(annotated, root)
    ground(bare, root)
    spec = expert_spec(**EXPERT)
    outcome = train_expert(spec, root, {annotated.id: annotated}, tmp)
    return root, annotated, bare, spec, tmp, outcome.manifest


def rows_of(path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: r["roi_id"])


def test_model_rois_on_annotated_and_unannotated_partitions(built):
    root, annotated, bare, spec, folder, manifest = built
    untrained = expert_spec(id="polyp_untrained", **EXPERT)
    missing = expert_spec(id="polyp_brought", weights="nowhere/polyp.ts", **EXPERT)
    other_modality = expert_spec(id="lung_test", modality="ct", target="nodule")
    experts = {e.id: e for e in (spec, untrained, missing, other_modality)}

    report = stages.run_model_rois(bare, root, experts, folder)
    assert report.inputs == len(KVASIR_IDS) and report.quarantined == 0
    skipped = report.extra["experts_skipped"]
    assert set(skipped) == {"polyp_untrained", "polyp_brought"}  # lung_test does not apply to endoscopy
    assert "has no trained weights yet: materialize the asset expert_polyp_untrained" in skipped["polyp_untrained"]
    assert str(folder / "nowhere" / "polyp.ts") in skipped["polyp_brought"] and "does not exist" in skipped["polyp_brought"]
    applied = report.extra["experts_applied"]["polyp_test"]
    assert applied["weights_sha256"] == manifest.sha256 and applied["provenance"] == "trained"
    assert applied["unannotated_records"] == len(KVASIR_IDS) and applied["annotated_records"] == 0

    bare_rows = rows_of(root.table("model_rois", UNANNOTATED))
    assert bare_rows, "the expert found no region on any image"
    assert applied["rois"] == applied["applied_rois"] == len(bare_rows)
    assert all(r["applied"] and not r["annotated"] and r["iou_vs_annotation"] is None for r in bare_rows)
    assert {r["origin"] for r in bare_rows} == {"model:polyp_test"} and {r["label"] for r in bare_rows} == {"polyp"}
    assert all(0.3 <= r["confidence"] <= 1 and r["weights_sha256"] == manifest.sha256 for r in bare_rows)
    assert all(r["mask_path"] and (root.root / r["mask_path"]).exists() and r["colour"] for r in bare_rows)

    # Deterministic: a rerun writes the same rows.
    stages.run_model_rois(bare, root, experts, folder)
    assert rows_of(root.table("model_rois", UNANNOTATED)) == bare_rows

    report = stages.run_model_rois(annotated, root, {spec.id: spec}, folder)
    ann_rows = rows_of(root.table("model_rois", annotated.id))
    assert report.extra["experts_applied"]["polyp_test"]["annotated_records"] == len(KVASIR_IDS)
    assert all(r["annotated"] and not r["applied"] and 0 <= r["iou_vs_annotation"] <= 1 for r in ann_rows)
    # The same pixels in both partitions: the same regions, only their use differs.
    strip = lambda r: {k: r[k] for k in ("x0", "y0", "x1", "y1", "confidence", "area_px", "mask_path")}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, ann_rows))) == sorted(map(json.dumps, map(strip, bare_rows)))

    outcomes = {o.name: o for o in run_checks("model_rois", root, annotated.id)}
    assert all(o.passed for o in outcomes.values()), {o.name: o.description for o in outcomes.values() if not o.passed}
    drift = outcomes["model_iou_on_annotated"].metadata["experts"]["polyp_test"]
    assert drift["records_compared"] == len(KVASIR_IDS) and drift["mean_iou"] > 0.05
    assert all(o.passed for o in run_checks("model_rois", root, UNANNOTATED))


def test_partition_finishes_when_no_expert_can_run(built, tmp_path):
    root, _, bare, _, folder, _ = built
    untrained = expert_spec(id="polyp_untrained", **EXPERT)
    report = stages.run_model_rois(bare, root, {untrained.id: untrained}, folder)
    assert report.rows == 0 and list(report.extra["experts_skipped"]) == ["polyp_untrained"]
    table = pq.read_table(root.table("model_rois", UNANNOTATED))
    assert table.num_rows == 0 and table.schema.names == schemas.MODEL_ROIS.names
    # No expert at all: an empty table, no torch needed.
    assert stages.run_model_rois(bare, root, {}, folder).extra == {"experts_applied": {}, "experts_skipped": {}}
    # Downstream then describes the whole image, as before experts existed.
    con = connect()
    try:
        origins = con.sql(f"SELECT DISTINCT origin FROM ({stages.grounded_rois_sql(root, UNANNOTATED)})").fetchall()
    finally:
        con.close()
    assert origins == [("whole_image",)]


def test_downstream_describes_model_rois_as_model_findings(built):
    root, _, bare, spec, folder, manifest = built
    stages.run_model_rois(bare, root, {spec.id: spec}, folder)
    model_records = {r["record_id"] for r in rows_of(root.table("model_rois", UNANNOTATED))}
    stages.run_facts(bare, root)
    stages.run_coarse_captions(bare, root)
    # No knowledge base here (embedding the corpus takes tens of seconds): every record got no passage.
    records = pq.read_table(root.table("raw_records", UNANNOTATED)).column("record_id").to_pylist()
    write_table(root.table("retrieved_knowledge", UNANNOTATED), schemas.RETRIEVED_KNOWLEDGE, [
        {"record_id": r, "source_id": UNANNOTATED, "query": "", "knowledge_ids": [], "knowledge_texts": [], "distances": [],
         "knowledge_sections": "[]"} for r in records])
    report = stages.run_descriptions(bare, root)
    assert report.extra["contradictions"] == 0 and report.extra["rows_by_label_state"] == {"unknown": len(records)}
    stages.run_triplets(bare, root)

    con = connect()
    try:
        facts = con.sql(f"SELECT record_id, attribute, provenance, confidence FROM {read_parquet(root.table('facts', UNANNOTATED))}").fetchall()
        descriptions = {r[0]: r[1:] for r in con.sql(
            f"SELECT record_id, description, verified FROM {read_parquet(root.table('descriptions', UNANNOTATED))}").fetchall()}
        captions = dict(con.sql(f"SELECT record_id, coarse_caption FROM {read_parquet(root.table('coarse_captions', UNANNOTATED))}").fetchall())
        triplets = {r[0]: r[1:] for r in con.sql(
            f"SELECT record_id, rois, provenance, primary_roi_id FROM {read_parquet(root.table('triplets', UNANNOTATED))}").fetchall()}
    finally:
        con.close()
    assert {"label", "origin"} <= {a for _, a, p, _ in facts if p == "model"} <= {"label", "origin", "count_same_label"}
    assert {r for r, a, p, _ in facts if a == "label_state"} == set(records)
    assert all(p != "annotation" for r, a, p, _ in facts if a in ("finding", "label"))
    for record in records:
        text, verified = descriptions[record]
        assert verified
        if record in model_records:
            assert "expert model (polyp_test)" in text and "possible polyp" in text
            assert "expert model (polyp_test) marks a possible polyp region" in captions[record]
            rois, provenance, primary = triplets[record]
            assert json.loads(rois)[0]["origin"] == "model:polyp_test" and json.loads(rois)[0]["roi_id"] == primary
            assert json.loads(provenance)["experts"] == [{"expert_id": "polyp_test", "weights_sha256": manifest.sha256, "provenance": "trained"}]
        else:
            assert "expert model" not in text and "possible" not in captions[record]
            assert json.loads(triplets[record][0])[0]["origin"] == "whole_image"


def test_an_image_that_cannot_be_read_is_quarantined_and_the_rest_go_on(built, tmp_path):
    root, _, bare, spec, folder, _ = built
    copy = DataRoot(tmp_path / "var")
    shutil.copytree(root.root, copy.root)
    images = pq.read_table(copy.table("normalized_images", UNANNOTATED)).to_pylist()
    (copy.root / images[0]["image_path"]).unlink()  # content-addressed: gone for this record only if unique
    lost = {r["record_id"] for r in images if r["image_path"] == images[0]["image_path"]}
    report = stages.run_model_rois(bare, copy, {spec.id: spec}, folder)
    assert report.quarantined == len(lost) and report.kinds == {"stage_error": len(lost)}
    reasons = pq.read_table(copy.quarantine("model_rois", UNANNOTATED)).to_pylist()
    assert {r["record_id"] for r in reasons} == lost and all("cannot read the normalized image" in r["reason"] for r in reasons)
    assert report.extra["experts_applied"]["polyp_test"]["unannotated_records"] == len(KVASIR_IDS) - len(lost)
    assert not lost & {r["record_id"] for r in rows_of(copy.table("model_rois", UNANNOTATED))}


def test_brought_torchscript_expert_is_applied_with_its_file_hash(built, tmp_path):
    """Bring your own weights: the trained network saved as TorchScript by the test and named in
    a spec; its ROIs carry provenance brought and the sha256 of that file."""
    import hashlib

    from medtrinity_assets.grounding.experts.apply import load_for_inference

    root, _, bare, spec, folder, _ = built
    model = load_for_inference(spec, root, folder).model  # the MONAI family's wrapper
    torch.jit.trace(model.net.eval(), torch.zeros(1, model.in_channels, spec.input_size, spec.input_size)).save(str(tmp_path / "polyp.ts"))
    brought = expert_spec(id="polyp_brought", weights="polyp.ts", **EXPERT)
    copy = DataRoot(tmp_path / "var")
    shutil.copytree(root.root, copy.root)
    report = stages.run_model_rois(bare, copy, {brought.id: brought}, tmp_path)
    sha = hashlib.sha256((tmp_path / "polyp.ts").read_bytes()).hexdigest()
    assert report.extra["experts_skipped"] == {} and report.extra["experts_applied"]["polyp_brought"]["weights_sha256"] == sha
    rows = rows_of(copy.table("model_rois", UNANNOTATED))
    assert rows and {(r["origin"], r["model_provenance"], r["weights_sha256"]) for r in rows} == {("model:polyp_brought", "brought", sha)}
    assert all(o.passed for o in run_checks("model_rois", copy, UNANNOTATED))


def test_a_broken_expert_spec_is_left_out_and_the_partition_finishes(built, tmp_path):
    from medtrinity_assets.pipeline import STAGE, StageInputs

    root, _, bare, _, _, _ = built
    broken = tmp_path / "broken_expert.yaml"
    broken.write_text("id: broken_expert\nmodality: endoscopy\ntarget: polyp\nfamily: tensorflow\narchitecture: unet\n",
                      encoding="utf-8")
    report = STAGE["model_rois"].run(StageInputs(root, spec=bare, experts_folder=tmp_path))
    assert list(report.extra["expert_specs_left_out"]) == [str(broken)]
    assert "family" in report.extra["expert_specs_left_out"][str(broken)]
    assert pq.read_table(root.table("model_rois", UNANNOTATED)).schema.names == schemas.MODEL_ROIS.names
