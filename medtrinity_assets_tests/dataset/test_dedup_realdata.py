"""Duplicates on real images: hash matches confirmed (or not) by the pixels, through build_dataset.

Real sources are ingested and normalized by the pipeline's own stages into a temporary data
root; their triplet tables are then assembled from those real stage tables (the description
columns are not what this tests), and ``build_dataset`` dedups them as it does in production.

What the images are, checked by eye on the normalized PNGs (zoomed side by side):
- BUSI ``malignant (4)``/``(5)`` and ``(7)``/``(8)``: consecutive frames of one sweep (the speckle
  and the lesion edge move): close hashes, different pictures;
- BUSI-train ``malignant (51)`` and ``benign (42)``: one frame exported twice with a few columns
  cropped (identical speckle), under two classes; ``normal (13)``/``(5)``: one frame twice;
- Kvasir-SEG ``cju8dpa89u6l80818dj6lldh9`` and ``cju8c5223s8j80850b4kealt4``: two different
  polyps whose perceptual hashes differ by 2 bits.
"""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pyarrow.parquet as pq
from conftest import REALDATA, needs_realdata
from PIL import Image
from skimage import data as skdata
from spec_factory import build_spec

from medtrinity_assets import schemas, stages
from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.dataset.dedup import MIN_SSIM, compare_images
from medtrinity_assets.dataset.exports import CONFLICTS_FILE, DUPLICATE_PAIRS_TABLE, build_dataset, llava_file
from medtrinity_assets.splits import SPLIT_NAMES, patient_split
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.pipeline import run_checks
from medtrinity_assets.storage import write_table

SALT = "test-salt"


# --- the pixel comparison, on images scikit-image ships ------------------------------------


def test_compare_images_confirms_recompressed_and_recropped_copies_only():
    tissue = skdata.immunohistochemistry()  # a real 512x512 IHC micrograph
    import io

    buffer = io.BytesIO()
    Image.fromarray(tissue).save(buffer, "JPEG", quality=85)
    recompressed = np.asarray(Image.open(buffer))
    # Six columns cropped, then resized back to the 512 px bound as normalize would.
    recropped = np.asarray(Image.fromarray(tissue[:, 6:]).resize((512, 518), Image.Resampling.BILINEAR))
    for copy in (recompressed, recropped):
        match = compare_images(tissue, copy)
        assert match.matches(), match
    mirrored = compare_images(tissue, tissue[:, ::-1])
    retina = compare_images(tissue, np.asarray(Image.fromarray(skdata.retina()).resize((512, 512))))
    for other in (mirrored, retina):
        assert other.correlation is not None and not other.matches(), other


# --- real sources through build_dataset ----------------------------------------------------


def _triplets_from_stage_tables(root: DataRoot, source_id: str, license: str) -> None:
    """TRIPLETS rows for the records the real ingest and normalize stages wrote."""
    raw, norm = root.table("raw_records", source_id), root.table("normalized_images", source_id)
    rows = duckdb.sql(
        f"""SELECT r.record_id, r.source_id, n.image_path, n.image_sha256, n.phash, n.height, n.width, r.modality,
                   r.organs, r.labels, r.flags, r.patient_hash, r.source_file, r.slice_index
            FROM read_parquet('{raw}') r JOIN read_parquet('{norm}') n USING (record_id) ORDER BY r.record_id"""
    ).to_arrow_table().to_pylist()
    write_table(root.table("triplets", source_id), schemas.TRIPLETS, [
        {
            **{k: row[k] for k in ("record_id", "source_id", "image_path", "image_sha256", "phash", "height", "width",
                                   "modality", "organs", "labels", "flags", "patient_hash")},
            "rois": "[]", "coarse_caption": "caption", "description": f"description of {row['record_id']}",
            "verified": True, "verifier_flags": [], "split": patient_split(row["patient_hash"]), "license": license,
            "provenance": json.dumps({"source_file": row["source_file"], "slice_index": row["slice_index"]}),
        }
        for row in rows
    ])


def _materialize(root: DataRoot, spec) -> None:
    stages.run_ingest(spec, root, SALT)
    stages.run_normalize(spec, root)
    _triplets_from_stage_tables(root, spec.id, spec.license)


def _build(root: DataRoot, source_ids: list[str]) -> dict:
    return build_dataset([root.table("triplets", s) for s in source_ids], root.table("medtrinity_dataset"), root.exports)


def _record_ids(root: DataRoot, source_id: str) -> dict[str, str]:
    """source_file -> record_id."""
    return dict(duckdb.sql(f"SELECT source_file, record_id FROM read_parquet('{root.table('raw_records', source_id)}')").fetchall())


def _pairs(root: DataRoot) -> list[dict]:
    return pq.read_table(root.table(DUPLICATE_PAIRS_TABLE)).to_pylist()


def _exported_ids(root: DataRoot) -> set[str]:
    return {json.loads(line)["id"] for split in SPLIT_NAMES
            for line in (root.exports / llava_file(split)).read_text(encoding="utf-8").splitlines()}


def _checks(root: DataRoot) -> dict:
    return {outcome.name: outcome for outcome in run_checks("medtrinity_dataset", root, None)}


@needs_realdata
def test_busi_hash_candidates_are_consecutive_frames_and_stay(tmp_path):
    root = DataRoot(tmp_path / "var")
    spec = load_catalog()["busi"]
    _materialize(root, spec)
    stats = _build(root, ["busi"])
    ids = _record_ids(root, "busi")

    # The hash finds two candidate pairs; the pixels say they are different frames.
    pairs = _pairs(root)
    found = {tuple(sorted((p["record_id"], p["kept_record_id"]))) for p in pairs}
    expected = {tuple(sorted((ids[f"malignant/images/malignant ({a}).png"], ids[f"malignant/images/malignant ({b}).png"])))
                for a, b in ((4, 5), (7, 8))}
    assert found == expected
    for pair in pairs:
        assert pair["verdict"] == "rejected" and pair["match"] == "near" and pair["phash_distance"] <= 4
        # Alike (one lesion, one sweep) but not the same picture.
        assert pair["correlation"] > 0.98 and pair["ssim"] < MIN_SSIM, pair
        assert pair["reason"].startswith("pixels differ")
    assert stats["duplicates"] == 0 and stats["pairs_by_verdict"] == {"confirmed": 0, "conflict": 0, "rejected": 2}
    # Nothing left the training files: all 20 malignant, benign and normal images are exported.
    assert _exported_ids(root) == set(ids.values()) and len(ids) == 20
    checks = _checks(root)
    assert checks["duplicate_label_conflicts"].passed and checks["duplicate_cross_patient"].passed


@needs_realdata
def test_busi_train_frame_exported_under_two_classes_is_a_reported_conflict(tmp_path):
    root = DataRoot(tmp_path / "var")
    spec = load_catalog()["busi"].model_copy(update={"id": "busi_train", "root": str(REALDATA / "busi_train")})
    _materialize(root, spec)
    stats = _build(root, ["busi_train"])
    ids = _record_ids(root, "busi_train")
    malignant, benign = ids["malignant/images/malignant (51).png"], ids["benign/images/benign (42).png"]
    normal_a, normal_b = ids["normal/images/normal (5).png"], ids["normal/images/normal (13).png"]

    pairs = {tuple(sorted((p["record_id"], p["kept_record_id"]))): p for p in _pairs(root)}
    conflict = pairs[tuple(sorted((malignant, benign)))]
    assert conflict["verdict"] == "conflict" and conflict["ssim"] >= MIN_SSIM
    assert {tuple(conflict["labels"]), tuple(conflict["kept_labels"])} == {("malignant breast tumor",), ("benign breast tumor",)}
    same_frame = pairs[tuple(sorted((normal_a, normal_b)))]
    assert same_frame["verdict"] == "confirmed" and same_frame["ssim"] >= MIN_SSIM
    assert stats["pairs_by_verdict"]["conflict"] == 1 and stats["duplicates"] == 1
    # Every other candidate is a different frame: rejected, both rows kept.
    assert stats["pairs_by_verdict"]["rejected"] == len(pairs) - 2

    dataset = {r["record_id"]: r for r in pq.read_table(root.table("medtrinity_dataset")).to_pylist()}
    assert dataset[max(normal_a, normal_b)]["duplicate_of"] == min(normal_a, normal_b)
    assert dataset[malignant]["duplicate_of"] is None and dataset[benign]["duplicate_of"] is None
    assert dataset[malignant]["duplicate_conflicts"] == [benign] and dataset[benign]["duplicate_conflicts"] == [malignant]
    # Both copies of the conflicting frame are held back with a reason; the confirmed copy is dropped.
    exported = _exported_ids(root)
    assert malignant not in exported and benign not in exported and max(normal_a, normal_b) not in exported
    assert len(exported) == len(ids) - 3
    held = {json.loads(line)["id"]: json.loads(line) for line in (root.exports / CONFLICTS_FILE).read_text().splitlines()}
    assert set(held) == {malignant, benign}
    assert held[malignant]["labels"] == ["malignant breast tumor"] and benign in held[malignant]["held_back_reason"]

    checks = _checks(root)
    conflicts = checks["duplicate_label_conflicts"]
    assert not conflicts.passed and conflicts.severity == "WARN"
    assert conflicts.metadata["conflict_pairs"] == 1
    (example,) = conflicts.metadata["examples"]
    assert {example["record_id"], example["kept_record_id"]} == {malignant, benign}
    assert {tuple(example["labels"]), tuple(example["kept_labels"])} == {("malignant breast tumor",), ("benign breast tumor",)}
    # Two frames of one sweep filed as benign (85) and malignant (52): different pixels, so no
    # conflict, but listed beside the check for a reviewer.
    look_alike = {tuple(sorted((e["record_id"], e["kept_record_id"]))) for e in conflicts.metadata["rejected_candidate_examples"]}
    assert tuple(sorted((ids["benign/images/benign (85).png"], ids["malignant/images/malignant (52).png"]))) in look_alike
    assert conflicts.metadata["rejected_candidates_with_other_labels"] == len(look_alike)
    # BUSI has no patient ids (each image is its own patient), so both matches span two "patients".
    cross = checks["duplicate_cross_patient"]
    assert not cross.passed and cross.metadata["within_source"] == 2
    assert {(e["record_id"], e["verdict"]) for e in cross.metadata["examples"]} == {
        (max(malignant, benign), "conflict"), (max(normal_a, normal_b), "confirmed")}


POLYPS = ("cju8dpa89u6l80818dj6lldh9", "cju8c5223s8j80850b4kealt4")
RELABELLED_SPEC = {
    "id": "relabelled", "modality": "ultrasound", "organs": ["breast"],
    "layout": {"family": "image_folder", "image_glob": "*/*.png"},
    "labels": {"source": "folder", "folder_depth": 0}, "patient": {"source": "file"},
}


def _relabelled_source(tmp_path) -> tuple[DataRoot, dict]:
    """A temp source in class folders: one real ultrasound image filed as benign and as malignant,
    plus two different real colonoscopy frames whose hashes are 2 bits apart. Ingested,
    normalized and assembled into triplets; returns the data root and the spec fields."""
    source = tmp_path / "relabelled"
    busi_image = REALDATA / "busi" / "benign" / "images" / "benign (1).png"
    for label in ("benign", "malignant"):
        (source / label).mkdir(parents=True)
        shutil.copy(busi_image, source / label / "case.png")
    (source / "polyp").mkdir()
    for name in POLYPS:
        Image.open(REALDATA / "kvasir_seg" / "images" / f"{name}.jpg").save(source / "polyp" / f"{name}.png")
    fields = {**RELABELLED_SPEC, "root": str(source)}
    root = DataRoot(tmp_path / "var")
    _materialize(root, build_spec(**fields))
    return root, fields


@needs_realdata
def test_real_image_copied_under_two_labels_and_close_different_images(tmp_path):
    root, _ = _relabelled_source(tmp_path)
    stats = _build(root, ["relabelled"])
    ids = _record_ids(root, "relabelled")
    benign, malignant = ids["benign/case.png"], ids["malignant/case.png"]
    polyp_ids = [ids[f"polyp/{name}.png"] for name in POLYPS]

    pairs = {tuple(sorted((p["record_id"], p["kept_record_id"]))): p for p in _pairs(root)}
    conflict = pairs[tuple(sorted((benign, malignant)))]
    assert conflict["match"] == "exact" and conflict["verdict"] == "conflict"
    assert conflict["correlation"] == 1.0 and conflict["cross_patient"] and not conflict["cross_source"]
    close = pairs[tuple(sorted(polyp_ids))]
    assert close["match"] == "near" and close["phash_distance"] <= 4
    assert close["verdict"] == "rejected" and close["correlation"] < 0.9
    assert stats["duplicates"] == 0 and len(pairs) == 2

    exported = _exported_ids(root)
    assert set(polyp_ids) <= exported  # two different polyps: both kept
    assert benign not in exported and malignant not in exported
    held = [json.loads(line) for line in (root.exports / CONFLICTS_FILE).read_text().splitlines()]
    assert sorted((h["id"], tuple(h["labels"])) for h in held) == sorted([(benign, ("benign",)), (malignant, ("malignant",))])
    example = _checks(root)["duplicate_label_conflicts"].metadata["examples"][0]
    assert {example["record_id"], example["kept_record_id"]} == {benign, malignant}


@needs_realdata
def test_dagster_dataset_asset_warns_with_examples_of_the_conflict(tmp_path, monkeypatch):
    import dagster as dg
    import yaml
    from spec_factory import PLACEHOLDER_METADATA

    from medtrinity_assets.defs.assets import medtrinity_dataset
    from medtrinity_assets.defs.resources import PipelineSettings

    root, fields = _relabelled_source(tmp_path)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "relabelled.yaml").write_text(yaml.safe_dump({**PLACEHOLDER_METADATA, **fields}))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("MEDTRINITY_ALLOWED_ROOTS", str(tmp_path))  # the spec file's root is a temp folder
    ids = _record_ids(root, "relabelled")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [medtrinity_dataset], instance=instance,
            resources={"settings": PipelineSettings(data_root=str(root.root), catalog=str(catalog))},
        )
    assert result.success  # a WARN check does not stop the dataset
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    conflict = checks["duplicate_label_conflicts"]
    assert not conflict.passed and conflict.severity == dg.AssetCheckSeverity.WARN
    (example,) = conflict.metadata["examples"].value
    assert {example["record_id"], example["kept_record_id"]} == {ids["benign/case.png"], ids["malignant/case.png"]}
    assert sorted(example["labels"] + example["kept_labels"]) == ["benign", "malignant"]
    assert not checks["duplicate_cross_patient"].passed  # one picture, two "patients" of one source
    materialized = next(e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION")
    metadata = materialized.event_specific_data.materialization.metadata
    assert metadata["pairs_by_verdict"].value == {"confirmed": 0, "conflict": 1, "rejected": 1}
