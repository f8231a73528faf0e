"""The PHI boundary: identifiers planted in real DICOM and NIfTI files never reach the output."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import polars as pl
import pydicom
from spec_factory import build_spec

from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.imaging.deid import scan_for_identifiers
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.stages import run_ingest

SITE = Path(pydicom.__file__).resolve().parent.parent
DATA_STORE = SITE / "data_store" / "data"
PYDICOM_FILES = SITE / "pydicom" / "data" / "test_files"
MNI_T1 = SITE / "nilearn" / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"

PLANTED = {
    "PatientName": "Doe^Planted",
    "PatientID": "PLANTED-ID-12345",
    "PatientBirthDate": "19450317",
    "AccessionNumber": "ACC-PLANTED-778",
    "InstitutionName": "Planted Memorial Hospital",
    "ReferringPhysicianName": "Referrer^Plantedname",
    "StudyDescription": "planted study text for Doe",
    "ImageComments": "Planted free-text comment about the patient",
}
SECOND_PATIENT_ID = "PLANTED-ID-99999"
NIFTI_DESCRIP = "PLANTEDNIFTI Doe^Planted"


def _spec(source_id: str, root: Path, layout: dict, modality: str) -> SourceSpec:
    return build_spec(
        id=source_id, modality=modality, annotation_kinds=["none"], layout=layout, root=str(root),
        patient={"source": "dicom"} if layout["family"] == "dicom" else {"source": "file"},
        slicing={"rule": "every_k", "every_k": 3, "max_slices": 3},
    )

def _plant(source: Path, target: Path, patient_id: str) -> None:
    ds = pydicom.dcmread(source)
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.PatientID = patient_id
    ds.save_as(target)


def _build_sources(folder: Path) -> tuple[SourceSpec, SourceSpec]:
    dicom_root = folder / "dicom"
    dicom_root.mkdir(parents=True)
    _plant(DATA_STORE / "693_UNCR.dcm", dicom_root / "ct_a.dcm", PLANTED["PatientID"])
    _plant(PYDICOM_FILES / "CT_small.dcm", dicom_root / "ct_b.dcm", PLANTED["PatientID"])
    _plant(DATA_STORE / "emri_small.dcm", dicom_root / "mr_multiframe.dcm", SECOND_PATIENT_ID)
    nifti_root = folder / "nifti"
    nifti_root.mkdir()
    t1 = nib.load(MNI_T1)
    crop = t1.slicer[70:120, 80:140, 60:90]
    image = nib.Nifti1Image(np.asanyarray(crop.dataobj), crop.affine)
    image.header["descrip"] = NIFTI_DESCRIP.encode()
    nib.save(image, nifti_root / "brain.nii.gz")
    return (
        _spec("phi_dicom", dicom_root, {"family": "dicom"}, "ct"),
        _spec("phi_nifti", nifti_root, {"family": "nifti", "image_glob": "*.nii.gz"}, "mri"),
    )


def _identifiers() -> list[str]:
    return list(PLANTED.values()) + [SECOND_PATIENT_ID, "PLANTEDNIFTI", "Plantedname", "Doe^Planted"]


def test_scanner_finds_planted_strings_so_a_clean_scan_means_something(tmp_path):
    (tmp_path / "a.json").write_text('{"name": "DOE^PLANTED"}')  # case differs
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes("x PLANTED-ID-12345 y".encode("utf-16-le"))
    (tmp_path / "clean.txt").write_text("nothing here")
    hits = scan_for_identifiers([tmp_path], ["Doe^Planted", "PLANTED-ID-12345"])
    assert sorted((p.name, ident) for p, ident in hits) == [("a.json", "Doe^Planted"), ("b.bin", "PLANTED-ID-12345")]
    # The planted inputs themselves are found: the scanner reads real DICOM and NIfTI bytes.
    spec_dicom, _ = _build_sources(tmp_path / "inputs")
    input_hits = {ident for _, ident in scan_for_identifiers([tmp_path / "inputs"], _identifiers())}
    assert {"Doe^Planted", "PLANTED-ID-12345", "Planted Memorial Hospital", "PLANTEDNIFTI"} <= input_hits


def test_no_planted_identifier_leaves_ingest_and_hashes_are_stable(tmp_path):
    dicom_spec, nifti_spec = _build_sources(tmp_path / "inputs")
    data_root = DataRoot(tmp_path / "out")
    for spec in (dicom_spec, nifti_spec):
        report = run_ingest(spec, data_root, salt="pepper")
        assert report.rows > 0 and report.quarantined == 0
    assert scan_for_identifiers([tmp_path / "out"], _identifiers()) == []

    rows = pl.read_parquet(data_root.table("raw_records", "phi_dicom")).sort("record_id")
    text = " ".join(str(v) for v in rows.to_dicts()).lower()  # decoded values, not just bytes
    assert not any(ident.lower() in text for ident in _identifiers())
    by_file = {r["source_file"]: r["patient_hash"] for r in rows.to_dicts()}
    assert by_file["ct_a.dcm"] == by_file["ct_b.dcm"] != by_file["mr_multiframe.dcm"]
    assert all(h and len(h) == 32 for h in by_file.values())

    # A rerun gives the same rows: same record ids, pixel refs and hashes.
    run_ingest(dicom_spec, data_root, salt="pepper")
    assert pl.read_parquet(data_root.table("raw_records", "phi_dicom")).sort("record_id").equals(rows)

    # Another salt gives other hashes: without the salt a hash cannot be matched to an id.
    other_root = DataRoot(tmp_path / "other")
    run_ingest(dicom_spec, other_root, salt="other-salt")
    other = pl.read_parquet(other_root.table("raw_records", "phi_dicom")).sort("record_id")
    assert set(other["patient_hash"]).isdisjoint(set(rows["patient_hash"]))
    assert other["pixel_ref"].to_list() == rows["pixel_ref"].to_list()


def test_pixels_are_unchanged_by_planting_so_only_the_header_carried_phi(tmp_path):
    dicom_spec, _ = _build_sources(tmp_path / "inputs")
    clean_root = tmp_path / "clean"
    clean_root.mkdir()
    shutil.copy(DATA_STORE / "693_UNCR.dcm", clean_root / "ct_a.dcm")
    planted = DataRoot(tmp_path / "out_planted")
    clean = DataRoot(tmp_path / "out_clean")
    run_ingest(dicom_spec, planted, salt="s")
    run_ingest(dicom_spec.model_copy(update={"root": str(clean_root)}), clean, salt="s")
    planted_rows = pl.read_parquet(planted.table("raw_records", "phi_dicom")).filter(pl.col("source_file") == "ct_a.dcm")
    clean_rows = pl.read_parquet(clean.table("raw_records", "phi_dicom"))
    assert planted_rows["pixel_ref"].to_list() == clean_rows["pixel_ref"].to_list()


def test_no_planted_identifier_reaches_any_output_of_the_whole_pipeline(tmp_path):
    """Every stage, the knowledge base, the final dataset, its exports and the SQL warehouse:
    the scan covers every byte the pipeline wrote (tables, PNGs, masks, Chroma, DuckDB, JSONL)."""
    import duckdb
    from PIL import Image, PngImagePlugin

    from medtrinity_assets import stages
    from medtrinity_assets.defs.sql_models import relation_for
    from medtrinity_assets.paths import REPO_ROOT, knowledge_dir
    from medtrinity_assets.quality.sql_models import discover_models, run_model

    dicom_spec, nifti_spec = _build_sources(tmp_path / "inputs")
    # A photo whose file metadata (PNG text chunks) names the patient.
    photo_root = tmp_path / "inputs" / "photos"
    photo_root.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", PLANTED["PatientName"])
    info.add_text("Comment", PLANTED["PatientID"])
    Image.open(SITE / "skimage" / "data" / "ihc.png").convert("RGB").save(photo_root / "slide.png", pnginfo=info)
    photo_spec = _spec("phi_photo", photo_root, {"family": "image_folder", "image_glob": "*.png"}, "histopathology")

    root = DataRoot(tmp_path / "out")
    stages.run_knowledge_base(root, knowledge_dir())
    specs = (dicom_spec, nifti_spec, photo_spec)
    for spec in specs:
        stages.run_ingest(spec, root, salt="pepper")
        for runner in (stages.run_normalize, stages.run_ground, stages.run_coarse_captions,
                       stages.run_retrieval, stages.run_descriptions, stages.run_triplets):
            runner(spec, root)
    report = stages.run_dataset(root, [s.id for s in specs])
    assert report.rows > 0
    con = duckdb.connect(str(root.warehouse))
    for model in discover_models(REPO_ROOT / "dbt_like_sql"):
        run_model(con, model, lambda ref: relation_for(root, ref))
    con.close()

    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in written) and any(p.name.endswith(".jsonl") for p in written)
    assert scan_for_identifiers([tmp_path / "out"], _identifiers()) == []

