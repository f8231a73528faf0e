"""The PHI boundary: identifiers planted in real DICOM and NIfTI files never reach the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import polars as pl
import pydicom
import pytest
from conftest import REALDATA, needs_realdata
from phi_fixtures import PLANTED as PLANTED_IN_FIXTURES
from phi_fixtures import every_dicom_fixture, plant_identifiers
from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID
from spec_factory import build_spec

from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.imaging.deid import (
    ALLOWED_KEYWORDS,
    BASIC_PROFILE_ACTIONS,
    SUV_RETAIN_OPTIONS,
    UID_ROOT,
    apply_basic_profile,
    has_burned_in_annotation,
    pseudonymous_uid,
    scan_for_identifiers,
)
from medtrinity_assets.imaging.dicom_io import suv_factor
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.stages import run_ingest, run_normalize

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
# The IBSI headers have over-long SH values (StudyID); pydicom warns on every read of them.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")
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


# Identifiers planted in the free text and identifying columns of a label table (clinical notes
# kept as source_text after free-text de-identification), each distinctive enough for a byte scan.
PLANTED_IN_NOTES = {
    "name": "Zyxwvplanted Quorbling",
    "mrn": "PLNOTE-MRN-583311",
    "date": "17 March 2019",
    "numeric_date": "03/17/2019",
    "phone": "617-555-0142",
    "email": "zq.plantednote@example.org",
    "institution": "Plantedtown Memorial Hospital",
    "age": "97-year-old",
    "location_city": "Quxvilleplanted",
    "patient_id": "PLNOTE-PT-9911",
}


def _build_notes_source(folder: Path) -> SourceSpec:
    """A covid-chestxray-style label table whose clinical notes carry planted identifiers
    between the real note's sentences (a real note of the extract where present)."""
    import csv

    folder.mkdir(parents=True)
    shutil.copy(SITE / "skimage" / "data" / "camera.png", folder / "cxr.png")
    real_note = "Vertical air space consolidation along the left costal margin."
    covid = REALDATA / "covid_chestxray" / "metadata.csv"
    if covid.is_file():
        with open(covid, newline="", encoding="utf-8") as handle:
            real_note = next(r["clinical_notes"] for r in csv.DictReader(handle) if "costal margin" in r["clinical_notes"])
    p = PLANTED_IN_NOTES
    note = (f"Mr. {p['name']}, {p['age']}, MRN {p['mrn']}, seen at {p['institution']} on {p['date']}. {real_note} "
            f"Follow-up {p['numeric_date']}; call {p['phone']} or {p['email']}. Lives in {p['location_city']}.")
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([
            ["patientid", "sex", "age", "view", "location", "filename", "clinical_notes"],
            [p["patient_id"], "F", "97", "PA", f"{p['institution']}, {p['location_city']}", "cxr.png", note],
        ])
    layout = {"family": "image_csv", "csv": "metadata.csv", "id_column": "filename", "path_template": "{id}",
              "text_columns": {"notes": "clinical_notes"}, "identifying_columns": ["location"],
              "metadata_columns": {"view": "view", "sex": "sex", "age": "age"}}
    return build_spec(id="phi_notes", modality="xray", organs=["lung"], annotation_kinds=["label"], layout=layout,
                      root=str(folder), patient={"source": "column", "column": "patientid"})


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


def test_no_planted_identifier_reaches_any_output_of_the_whole_pipeline(tmp_path, shared_knowledge):
    """Every stage, the knowledge base, the final dataset, its exports and the SQL warehouse:
    the scan covers every byte the pipeline wrote (tables, PNGs, masks, Chroma, DuckDB, JSONL)."""
    import duckdb
    from PIL import Image, PngImagePlugin

    from medtrinity_assets import stages
    from medtrinity_assets.defs.sql_models import relation_for
    from medtrinity_assets.paths import REPO_ROOT
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
    notes_spec = _build_notes_source(tmp_path / "inputs" / "notes")

    # The knowledge base holds no PHI by construction; it is in "out" so the scan reads it too.
    root = shared_knowledge.copy_to(DataRoot(tmp_path / "out"))
    specs = (dicom_spec, nifti_spec, photo_spec, notes_spec)
    for spec in specs:
        stages.run_ingest(spec, root, salt="pepper")
        for runner in (stages.run_normalize, stages.run_ground, stages.run_facts, stages.run_coarse_captions,
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
    in_notes = list(PLANTED_IN_NOTES.values())
    # The planted inputs hold them (so a clean scan means something)...
    assert {i for _, i in scan_for_identifiers([tmp_path / "inputs" / "notes"], in_notes)} == set(in_notes)
    assert scan_for_identifiers([tmp_path / "out"], _identifiers() + in_notes) == []
    # ...and decoded table values too (Parquet may compress what the byte scan reads).
    for table in written:
        if table.suffix == ".parquet":
            text = " ".join(str(row) for row in pl.read_parquet(table).to_dicts()).lower()
            assert not [i for i in in_notes if i.lower() in text], table
    # The note itself survives, de-identified, beside the description in the dataset.
    dataset = pl.concat([pl.read_parquet(p) for p in written if p.suffix == ".parquet" and "triplets" in p.parts])
    kept = [json.loads(t)["notes"][0] for t in dataset.filter(pl.col("source_id") == "phi_notes")["source_text"]]
    assert kept and "consolidation along the left costal margin" in kept[0] and "[name]" in kept[0]



# --- DICOM PS3.15 Annex E Basic Profile, over every DICOM fixture of the suite ---------------

FIXTURES = every_dicom_fixture()
REALDATA_GROUPS = {"ibsi_sts", "cxr_samples"}


def _fixture_params(fixtures):
    return [
        pytest.param(f, id=f.test_id, marks=[needs_realdata] if f.group in REALDATA_GROUPS else [])
        for f in fixtures
    ]


def _pixel_bytes(ds: pydicom.Dataset):
    return ds["PixelData"].value if "PixelData" in ds else None


def test_profile_table_names_real_attributes_and_never_removes_the_technical_allowlist():
    valid_actions = {"D", "Z", "X", "K", "C", "U", "U*"}
    for keyword, action in BASIC_PROFILE_ACTIONS.items():
        assert tag_for_keyword(keyword) is not None, keyword
        assert set(action.split("/")) <= valid_actions, (keyword, action)
    assert len(BASIC_PROFILE_ACTIONS) >= 100
    # The ingest allowlist must not keep what the standard removes.
    assert not {k for k in ALLOWED_KEYWORDS if BASIC_PROFILE_ACTIONS.get(k, "K") != "K"}


@pytest.mark.parametrize("fixture", _fixture_params(FIXTURES))
def test_basic_profile_removes_every_planted_identifier_and_keeps_pixels(fixture, tmp_path):
    planted_path, cleaned_path = tmp_path / "planted.dcm", tmp_path / "cleaned.dcm"
    plant_identifiers(fixture.path, planted_path)
    # The scan finds what was planted, so a clean scan afterwards means something.
    assert {ident for _, ident in scan_for_identifiers([planted_path], PLANTED_IN_FIXTURES.strings())} == set(PLANTED_IN_FIXTURES.strings())

    ds = pydicom.dcmread(planted_path, force=True)
    original_uids = [str(ds[k].value) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if k in ds]
    pixels = _pixel_bytes(ds)
    had_overlays = any(0x6000 <= e.tag.group <= 0x60FF and e.tag.group % 2 == 0 for e in ds.iterall())

    report = apply_basic_profile(ds, salt="pepper")
    ds.save_as(cleaned_path, enforce_file_format=False)

    assert scan_for_identifiers([cleaned_path], PLANTED_IN_FIXTURES.strings() + original_uids) == []
    cleaned = pydicom.dcmread(cleaned_path, force=True)
    assert _pixel_bytes(cleaned) == pixels
    assert cleaned.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in cleaned.DeidentificationMethodCodeSequence] == ["113100"]
    assert not [e.tag for e in cleaned.iterall() if e.tag.is_private]
    assert not [e.tag for e in cleaned.iterall() if 0x6000 <= e.tag.group <= 0x60FF or 0x5000 <= e.tag.group <= 0x50FF]
    assert (report.curves_overlays_removed > 0) == had_overlays
    assert report.private_removed >= 2  # at least the planted creator and value
    assert cleaned.PatientName == "" and cleaned.PatientID == "" and "OtherPatientIDs" not in cleaned
    # Instance UIDs are replaced by their salted pseudonyms, the file meta in step.
    assert cleaned.SOPInstanceUID == pseudonymous_uid(original_uids[0], "pepper")
    if "MediaStorageSOPInstanceUID" in cleaned.file_meta:
        assert cleaned.file_meta.MediaStorageSOPInstanceUID == cleaned.SOPInstanceUID
    assert cleaned.SourceImageSequence[0].ReferencedSOPInstanceUID == pseudonymous_uid(PLANTED_IN_FIXTURES.referenced_uid, "pepper")
    assert cleaned.SOPClassUID == ds.SOPClassUID and UID(cleaned.SOPClassUID).name != cleaned.SOPClassUID


def test_pseudonymous_uids_are_valid_consistent_and_salted(tmp_path):
    def cleaned_uids(salt: str) -> dict[str, str]:
        ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
        apply_basic_profile(ds, salt)
        return {k: str(ds[k].value) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")}

    first, again, other = cleaned_uids("salt-a"), cleaned_uids("salt-a"), cleaned_uids("salt-b")
    assert first == again
    assert set(first.values()).isdisjoint(other.values())
    assert len(set(first.values())) == len(first)  # distinct inputs stay distinct
    for uid in first.values():
        assert uid.startswith(UID_ROOT) and len(uid) <= 64 and UID(uid).is_valid


def test_retain_options_keep_what_pet_suv_needs_and_are_declared():
    pet_path = REALDATA / "ibsi_sts" / "dicom" / "STS_001" / "PET" / "image" / "000001.dcm"
    if not pet_path.is_file():
        pytest.skip("ibsi_sts realdata is not present")

    def pet() -> pydicom.Dataset:
        ds = pydicom.dcmread(pet_path)
        # This scanner stored SUV already (Units GML); read its values as activity so that the
        # SUV factor is computed from the weight, dose and times of this real header.
        ds.Units = "BQML"
        ds.PatientBirthDate = PLANTED_IN_FIXTURES.birth_date
        return ds

    expected = suv_factor(pet())
    assert expected is not None and expected > 0

    basic = pet()
    apply_basic_profile(basic, "s")
    assert suv_factor(basic) is None and "PatientWeight" not in basic  # weight and times removed

    retained = pet()
    apply_basic_profile(retained, "s", retain=SUV_RETAIN_OPTIONS)
    assert suv_factor(retained) == pytest.approx(expected)
    assert retained["PatientName"].is_empty and retained["PatientBirthDate"].is_empty
    assert retained.SeriesTime == pet().SeriesTime and retained.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [c.CodeValue for c in retained.DeidentificationMethodCodeSequence] == ["113100", "113106", "113108"]
    with pytest.raises(ValueError, match="unknown retain option"):
        apply_basic_profile(pet(), "s", retain=["retain_everything"])


@needs_realdata
def test_rtstruct_references_still_resolve_and_series_still_group_after_deid(tmp_path):
    """The IBSI CT series and its RTSTRUCT, de-identified apart with one salt, still match."""
    ct_folder = REALDATA / "ibsi_sts" / "dicom" / "STS_001" / "CT"
    images = [pydicom.dcmread(p) for p in sorted((ct_folder / "image").glob("*.dcm"))]
    structure_set = pydicom.dcmread(ct_folder / "mask" / "RS.dcm")

    def contour_image_refs(ds) -> list[str]:
        return [
            str(item.ReferencedSOPInstanceUID)
            for roi in ds.ROIContourSequence
            for contour in roi.ContourSequence
            for item in contour.get("ContourImageSequence", [])
        ]

    refs_before = contour_image_refs(structure_set)
    frame_before = images[0].FrameOfReferenceUID
    assert {item.FrameOfReferenceUID for item in structure_set.ReferencedFrameOfReferenceSequence} == {frame_before}
    for ds in (*images, structure_set):
        apply_basic_profile(ds, "pepper")

    assert len({ds.SeriesInstanceUID for ds in images}) == 1
    assert len({ds.SOPInstanceUID for ds in images}) == len(images)
    assert len({ds.StudyInstanceUID for ds in (*images, structure_set)}) == 1
    frame_after = {item.FrameOfReferenceUID for item in structure_set.ReferencedFrameOfReferenceSequence}
    assert frame_after == {images[0].FrameOfReferenceUID} and frame_before not in frame_after
    # Its contour references (to slices of the full series, not all in this extract) map one to one.
    assert refs_before and contour_image_refs(structure_set) == [pseudonymous_uid(u, "pepper") for u in refs_before]


def test_burned_in_annotation_is_read_from_the_header(tmp_path):
    ds = pydicom.dcmread(DATA_STORE / "emri_small.dcm")  # a real file that declares "NO"
    assert ds.BurnedInAnnotation == "NO" and not has_burned_in_annotation(ds)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "burned.dcm")
    assert has_burned_in_annotation(pydicom.dcmread(tmp_path / "burned.dcm"))
    del ds.BurnedInAnnotation
    assert not has_burned_in_annotation(ds)


def _planted_tree(folder: Path, fixtures) -> dict[str, Path]:
    roots = {}
    for fixture in fixtures:
        plant_identifiers(fixture.path, folder / fixture.group / fixture.relative)
        roots[fixture.group] = folder / fixture.group
    return roots


# Per fixture group: how its source is laid out and which modality each file is.
PLANTED_SOURCE_LAYOUTS = {
    "demo": ({"family": "dicom", "glob": "*.dcm"}, "mri",
             {"693_UNCR": "ct", "RG1_UNCR": "xray", "JPEG2000_UNC": "nuclear_medicine", "color3d": "ultrasound"}),
    "pydicom": ({"family": "dicom", "glob": "*.dcm"}, "mri", {"CT_small": "ct", "RG3|ybr": "xray", "JPEG-lossy": "nuclear_medicine"}),
    "ibsi_sts": ({"family": "dicom", "glob": "**/*.dcm", "stack_series": True}, "mri", {"/CT/": "ct", "/PET/": "pet"}),
    "cxr_samples": ({"family": "dicom", "glob": "*.dcm"}, "xray", {}),
}


def test_no_planted_identifier_leaves_ingest_or_normalize_for_any_dicom_fixture(tmp_path):
    """Planted copies of every DICOM fixture (demo sources, pydicom files, real series with
    their RTSTRUCTs) run through ingest and normalize; no identifier reaches any output byte."""
    available = [f for f in FIXTURES if f.group not in REALDATA_GROUPS or REALDATA.is_dir()]
    roots = _planted_tree(tmp_path / "inputs", available)
    data_root = DataRoot(tmp_path / "out")
    for group, root in roots.items():
        layout, modality, by_path = PLANTED_SOURCE_LAYOUTS[group]
        spec = build_spec(
            id=f"phi_{group}", modality=modality, modality_by_path=by_path, annotation_kinds=["none"],
            layout=layout, root=str(root), patient={"source": "dicom"},
            slicing={"rule": "every_k", "every_k": 4, "max_slices": 2},
        )
        ingested = run_ingest(spec, data_root, salt="pepper")
        assert ingested.rows > 0, group
        assert run_normalize(spec, data_root).rows == ingested.rows
        for table in (data_root.table("raw_records", spec.id), data_root.quarantine("raw_records", spec.id)):
            if table.exists():  # decoded values too: Parquet may compress what the byte scan reads
                text = " ".join(str(row) for row in pl.read_parquet(table).to_dicts()).lower()
                assert not [i for i in PLANTED_IN_FIXTURES.strings() if i.lower() in text], (group, table)
    assert scan_for_identifiers([tmp_path / "out"], PLANTED_IN_FIXTURES.strings()) == []


def test_pseudonymize_paths_hides_identifiers_in_file_names(tmp_path, monkeypatch):
    # Private data often names files by MRN or patient name; the spec can hash every path part.
    from PIL import Image

    from medtrinity_assets.paths import DataRoot
    from medtrinity_assets.sources.base import pseudonymous_path
    from medtrinity_assets.stages import run_ingest

    root = tmp_path / "src"
    (root / "PLANTED-MRN-55120").mkdir(parents=True)
    Image.new("L", (16, 16), 90).save(root / "PLANTED-MRN-55120" / "Doe.Jane_19010203.png")
    spec = build_spec(root=str(root), pseudonymize_paths=True, layout={"family": "image_folder", "image_glob": "*/*.png"})
    data_root = DataRoot(tmp_path / "var")
    rows = []
    for _ in range(2):
        run_ingest(spec, data_root, "s1")
        rows.append(pl.read_parquet(data_root.table("raw_records", spec.id)).to_dicts())
    (record,) = rows[0]
    assert rows[1] == rows[0]  # a rerun gives the same hashed path and record id
    assert "PLANTED" not in record["source_file"] and "Jane" not in record["source_file"] and "1901" not in record["source_file"]
    assert record["source_file"].endswith(".png") and record["source_file"].count("/") == 1
    assert pseudonymous_path("s1", "a/MRN.1234567.CT.nii.gz").endswith(".nii.gz")
    assert "1234567" not in pseudonymous_path("s1", "a/MRN.1234567.CT.nii.gz")
