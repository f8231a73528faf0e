"""Orientation from geometry only: image_axes, view, laterality and frame kind at ingest, and the
patient side of ROIs from them, on real files (IBSI sarcoma DICOM + RTSTRUCT and NIfTI,
pydicom-data CT head, CR chest and echo cine, HAM10000 photos, a real chest X-ray PNG)."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pydicom
import pytest
from conftest import REALDATA, needs_realdata
from pydantic import ValidationError
from spec_factory import build_spec

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import package_folder
from medtrinity_assets.grounding.patient_side import body_midline_x_mm
from medtrinity_assets.grounding.rois import ground_record
from medtrinity_assets.side_report import count_patient_sides, materialize_upto_rois
from medtrinity_assets.imaging.geometry import (
    anatomical_plane,
    decode_axes,
    dicom_axes,
    dicom_frame_kind,
    normalize_laterality,
    normalize_view,
    patient_position_mm,
)
from medtrinity_assets.imaging.normalize import normalize_pixels
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.sources import IngestContext, read_source
from medtrinity_assets.storage import BlobStore

IBSI_CT_SLICE = REALDATA / "ibsi_sts" / "dicom" / "STS_001" / "CT" / "image" / "000028.dcm"
CXR_PNG = REALDATA / "cxr_samples" / "00000001_000.png"


def pydicom_data(name: str):
    return package_folder("data_store") / "data" / name


def ingest(spec, root, blobs) -> list[dict]:
    items = list(read_source(IngestContext(spec=spec, root=root, blobs=blobs, salt="test-salt")))
    return [item for item in items if isinstance(item, dict)]


def ground_disk(record: dict, spec, blobs, row: float, col: float, radius: float = 6) -> dict:
    """The ROI row of a disk drawn at (row, col) of the STORED pixel array, after normalize."""
    pixels = blobs.get_array(record["pixel_ref"])
    normalized = normalize_pixels(pixels, record, spec.intensity_rule())
    rr, cc = np.ogrid[: record["height"], : record["width"]]
    mask = ((rr - row) ** 2 + (cc - col) ** 2 <= radius**2).astype(np.uint8)
    _, ref = blobs.put_array("masks", mask)
    annotated = {**record, "annotations": json.dumps([{"kind": "mask", "label": "lesion", "mask_ref": ref}])}
    rois, problems = ground_record(annotated, normalized.display, normalized.scale, blobs, spec)
    assert problems == [] and len(rois) == 1
    return rois[0]


def dicom_spec(root, modality="ct", **fields):
    return build_spec(modality=modality, root=str(root), layout={"family": "dicom", "glob": "*.dcm"}, **fields)


# --- IBSI sarcoma: every tumour ROI in the left thigh ------------------------------------


@pytest.fixture(scope="module")
def ibsi_root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ibsi_geo")
    data_root = DataRoot(folder / "var")
    materialize_upto_rois(["ibsi_sts_dicom", "ibsi_sts_nifti"], data_root, folder / "raw")
    return data_root


@needs_realdata
def test_every_ibsi_tumour_roi_is_in_the_left_thigh_by_geometry(ibsi_root):
    # The crop spans x = -23...+170 mm (LPS): the left thigh and a sliver of the right. Frame
    # position would call most of these "midline"; geometry puts every one on the left.
    con = duckdb.connect()
    for source_id in ("ibsi_sts_dicom", "ibsi_sts_nifti"):
        rows = con.execute(
            """
            SELECT regexp_extract(r.source_file, '(CT|MR_T1|PET)'), o.patient_side, o.patient_side_source, count(*)
            FROM read_parquet(?) o JOIN read_parquet(?) r USING (record_id)
            WHERE o.origin <> 'whole_image' GROUP BY ALL
            """,
            [str(ibsi_root.table("rois", source_id)), str(ibsi_root.table("raw_records", source_id))],
        ).fetchall()
        assert {modality for modality, *_ in rows} == {"CT", "MR_T1", "PET"}, (source_id, rows)
        assert {(side, source) for _, side, source, _ in rows} == {("left", "geometry")}, (source_id, rows)
        context = con.execute(
            "SELECT count(*) FROM read_parquet(?) WHERE origin = 'whole_image' AND patient_side IS NOT NULL",
            [str(ibsi_root.table("rois", source_id))],
        ).fetchone()[0]
        assert context == 0  # a context slice's whole-image entry has no side

    report = {row["source_id"]: row for row in count_patient_sides(ibsi_root, ["ibsi_sts_dicom", "ibsi_sts_nifti"])}
    for row in report.values():
        assert row["annotated_rois"] > 0 and row["left"] == row["side_from_geometry"] == row["annotated_rois"]
        assert row["right"] == row["midline"] == row["side_from_declared_view"] == 0


@needs_realdata
def test_nifti_affine_and_dicom_orientation_place_the_same_slices_alike(ibsi_root):
    # The same CT, as DICOM series and as NIfTI: the reader's display turn plus the affine must
    # give the stored pixels the same patient positions as the DICOM headers do.
    con = duckdb.connect()
    axes = {}
    for source_id, family in (("ibsi_sts_dicom", "dicom"), ("ibsi_sts_nifti", "nifti")):
        for (value,) in con.execute(
            "SELECT image_axes FROM read_parquet(?) WHERE source_file LIKE '%CT%'", [str(ibsi_root.table("raw_records", source_id))]
        ).fetchall():
            parsed = decode_axes(value)
            axes.setdefault(family, {})[round(parsed["origin_mm"][2], 1)] = parsed
    common = set(axes["dicom"]) & set(axes["nifti"])
    assert len(common) >= 10
    for z in common:
        dicom, nifti = axes["dicom"][z], axes["nifti"][z]
        assert dicom["source"] == "dicom_orientation" and nifti["source"] == "nifti_affine"
        assert (dicom["column_direction"], dicom["row_direction"]) == (nifti["column_direction"], nifti["row_direction"]) == ("L", "P")
        assert np.allclose(dicom["origin_mm"], nifti["origin_mm"], atol=0.01)
        assert np.allclose(dicom["spacing_mm"], nifti["spacing_mm"], atol=1e-4)


@needs_realdata
def test_rewritten_image_orientation_moves_the_side_with_the_geometry(tmp_path):
    """Same pixels, mirrored geometry: the side flips. Mirrored pixels with matching geometry
    (the same anatomy stored the other way round): the side stays."""
    original = pydicom.dcmread(IBSI_CT_SLICE)
    columns, spacing = int(original.Columns), float(original.PixelSpacing[1])
    x0 = float(original.ImagePositionPatient[0])
    folders = {name: tmp_path / name for name in ("original", "mirrored_patient", "flipped_storage")}
    for folder in folders.values():
        folder.mkdir()
    shutil.copy(IBSI_CT_SLICE, folders["original"] / "slice.dcm")

    mirrored = pydicom.dcmread(IBSI_CT_SLICE)
    mirrored.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    mirrored.ImagePositionPatient = [-x0, *original.ImagePositionPatient[1:]]
    mirrored.save_as(folders["mirrored_patient"] / "slice.dcm")

    flipped = pydicom.dcmread(IBSI_CT_SLICE)
    flipped.PixelData = np.ascontiguousarray(flipped.pixel_array[:, ::-1]).tobytes()
    flipped.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    flipped.ImagePositionPatient = [x0 + (columns - 1) * spacing, *original.ImagePositionPatient[1:]]
    flipped.save_as(folders["flipped_storage"] / "slice.dcm")

    tumour_row, tumour_col = 100, 85  # inside the GTV of this slice: x = +59.6 mm, the left thigh
    sides = {}
    for name, folder in folders.items():
        spec = dicom_spec(folder, organs=["extremity"])
        blobs = BlobStore(tmp_path / f"blobs_{name}")
        (record,) = ingest(spec, folder, blobs)
        axes = decode_axes(record["image_axes"])
        assert axes["source"] == "dicom_orientation"
        col = columns - 1 - tumour_col if name == "flipped_storage" else tumour_col
        roi = ground_disk(record, spec, blobs, tumour_row, col)
        sides[name] = (roi["patient_side"], roi["patient_side_source"], axes["column_direction"])
    assert sides["original"] == ("left", "geometry", "L")
    assert sides["mirrored_patient"] == ("right", "geometry", "R")
    assert sides["flipped_storage"] == ("left", "geometry", "R")


# --- pydicom-data: CT head, CR chest, echo cine ----------------------------------------------


def test_ct_head_axes_body_midline_and_sides(tmp_path):
    shutil.copy(pydicom_data("693_UNCR.dcm"), tmp_path / "head.dcm")
    spec = dicom_spec(tmp_path, organs=["brain"])
    blobs = BlobStore(tmp_path / "blobs")
    (record,) = ingest(spec, tmp_path, blobs)
    axes = decode_axes(record["image_axes"])
    assert (axes["column_direction"], axes["row_direction"], axes["source"]) == ("L", "P", "dicom_orientation")
    assert axes["origin_mm"] == [-122.5, -112.4, 47.0] and axes["spacing_mm"] == pytest.approx([0.478516, 0.478516])
    assert record["frame_kind"] == "slice" and record["view"] is None and record["laterality"] is None
    # The whole head is inside the field of view: the midline is its centre, not x = 0
    # (skull extent at columns 134-404 of 512: centre x = +6.2 mm; the head holder is left out).
    display = normalize_pixels(blobs.get_array(record["pixel_ref"]), record, spec.intensity_rule()).display
    assert body_midline_x_mm(axes, display, 512, 512) == pytest.approx(6.2, abs=1.0)
    assert ground_disk(record, spec, blobs, 250, 180)["patient_side"] == "right"  # image left
    assert ground_disk(record, spec, blobs, 250, 360)["patient_side"] == "left"
    assert ground_disk(record, spec, blobs, 250, 269)["patient_side"] == "midline"


def test_cr_chest_patient_orientation_gives_sides_without_millimetres(tmp_path):
    shutil.copy(pydicom_data("RG1_UNCR.dcm"), tmp_path / "chest.dcm")
    spec = dicom_spec(tmp_path, modality="xray", organs=["chest"])
    blobs = BlobStore(tmp_path / "blobs")
    (record,) = ingest(spec, tmp_path, blobs)
    axes = decode_axes(record["image_axes"])
    assert (axes["column_direction"], axes["row_direction"], axes["source"]) == ("L", "F", "dicom_patient_orientation")
    assert axes["origin_mm"] is None and record["view"] == "PA" and record["frame_kind"] is None
    height, width = record["height"], record["width"]
    right_lung = ground_disk(record, spec, blobs, height * 0.45, width * 0.25, radius=40)
    left_lung = ground_disk(record, spec, blobs, height * 0.45, width * 0.75, radius=40)
    assert (right_lung["patient_side"], right_lung["patient_side_source"], right_lung["horizontal"]) == ("right", "geometry", "left")
    assert (left_lung["patient_side"], left_lung["horizontal"]) == ("left", "right")


def test_echo_cine_frames_are_frames_without_patient_side(tmp_path):
    spec = load_catalog()["demo_ultrasound_heart"]
    shutil.copy(pydicom_data("color3d_jpeg_baseline.dcm"), tmp_path / "echo.dcm")
    blobs = BlobStore(tmp_path / "blobs")
    records = ingest(spec, tmp_path, blobs)
    assert len(records) == 12 and {r["frame_kind"] for r in records} == {"frame"}
    assert {r["slice_count"] for r in records} == {120} and {r["image_axes"] for r in records} == {None}
    roi = ground_disk(records[0], spec, blobs, 240, 200, radius=30)
    assert roi["patient_side"] is None and roi["patient_side_source"] is None and roi["horizontal"] == "left"


# --- declared views and laterality; photos ---------------------------------------------------


@needs_realdata
@pytest.mark.parametrize(
    "declaration, expected",
    [
        ({"view": {"source": "fixed", "fixed": "PA"}}, ("right", "declared_view")),
        ({"view": {"source": "fixed", "fixed": "frontal"}}, ("right", "declared_view")),
        ({"view": {"source": "fixed", "fixed": "lateral"}}, (None, None)),
        ({}, (None, None)),
        # A paired part declared (one breast, one hand): the whole image is one side, no ROI side.
        ({"view": {"source": "fixed", "fixed": "PA"}, "laterality": {"source": "regex", "pattern": r"_(0)00\.png$", "rename": {"0": "left"}}},
         (None, None)),
    ],
)
def test_declared_view_of_a_real_chest_png(tmp_path, declaration, expected):
    root = tmp_path / "cxr"
    root.mkdir()
    shutil.copy(CXR_PNG, root / CXR_PNG.name)
    spec = build_spec(modality="xray", organs=["chest"], root=str(root), layout={"family": "image_folder", "image_glob": "*.png"}, **declaration)
    blobs = BlobStore(tmp_path / "blobs")
    (record,) = ingest(spec, root, blobs)
    height, width = record["height"], record["width"]
    roi = ground_disk(record, spec, blobs, height * 0.5, width * 0.25, radius=width / 25)  # image left third
    assert (roi["patient_side"], roi["patient_side_source"]) == expected
    assert roi["horizontal"] == "left"
    assert record["frame_kind"] is None
    if "laterality" in declaration:
        assert record["laterality"] == "left"


@needs_realdata
def test_photos_have_no_geometry_and_no_patient_side(tmp_path):
    spec = load_catalog()["ham10000"]
    blobs = BlobStore(tmp_path / "blobs")
    records = ingest(spec, REALDATA / "ham10000", blobs)
    assert records and {r["image_axes"] for r in records} == {None} and {r["frame_kind"] for r in records} == {None}
    for record in records:
        display = normalize_pixels(blobs.get_array(record["pixel_ref"]), record, spec.intensity_rule()).display
        rois, _ = ground_record(record, display, display.shape[0] / record["height"], blobs, spec)
        assert [r for r in rois if r["origin"] != "whole_image"]
        assert {(r["patient_side"], r["patient_side_source"]) for r in rois} == {(None, None)}


def test_cbis_ddsm_declaration_reads_breast_and_view_from_the_case_folder():
    spec = load_catalog()["cbis_ddsm"]
    path = "CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm"
    assert (spec.laterality.value_for(path), spec.view.value_for(path)) == ("left", "CC")
    assert spec.laterality.value_for(path.replace("LEFT_CC", "RIGHT_MLO")) == "right"


def test_spec_declarations_reject_unknown_values_and_patterns_without_a_group():
    with pytest.raises(ValidationError, match="unknown view"):
        build_spec(view={"source": "fixed", "fixed": "sideways"})
    with pytest.raises(ValidationError, match="unknown laterality"):
        build_spec(laterality={"source": "regex", "pattern": "_(L|R)_", "rename": {"L": "port"}})
    with pytest.raises(ValidationError, match="one group"):
        build_spec(laterality={"source": "regex", "pattern": "_L_"})
    with pytest.raises(ValidationError, match="needs 'fixed'"):
        build_spec(view={"source": "fixed"})


# --- the rules, on their own ------------------------------------------------------------------


def test_frame_kind_rules():
    positions_apart = [(0, 0, 0), (0, 0, 5)]
    assert dicom_frame_kind("MR", 2, positions_apart) == "slice"
    assert dicom_frame_kind("MR", 2, [(0, 0, 0), (0, 0, 0)]) == "frame"  # cardiac cine: one plane over time
    assert dicom_frame_kind("US", 120, None, (0x00181063,)) == "frame"  # FrameIncrementPointer -> FrameTime
    assert dicom_frame_kind("XA", 30, None) == "frame"
    assert dicom_frame_kind("MR", 10, None) == "slice"
    assert dicom_frame_kind("CT", 1, None, has_orientation=True) == "slice"
    assert dicom_frame_kind("CR", 1, None) is None


def test_view_and_laterality_names_and_incomplete_geometry():
    assert [normalize_view(v) for v in ("PA", "ll", "LATERAL", "MLO", "postero-anterior", "", "XYZ")] == [
        "PA", "lateral", "lateral", "MLO", "PA", None, None]
    assert [normalize_laterality(v) for v in ("L", "R", "B", "U", "", None)] == ["left", "right", "bilateral", None, None, None]
    # No position or a zero vector: no millimetres; PatientOrientation letters still give directions.
    assert dicom_axes([1, 0, 0, 0, 1, 0], None, [1, 1]) is None
    assert dicom_axes([0, 0, 0, 0, 1, 0], [0, 0, 0], [1, 1]) is None
    assert dicom_axes(None, None, None, ["P", "FR"])["column_direction"] == "P"
    axes = dicom_axes([0, 1, 0, 0, 0, -1], [10, -100, 50], [2, 0.5])  # a sagittal plane
    assert (axes["column_direction"], axes["row_direction"]) == ("P", "F")
    assert patient_position_mm(axes, 4, 10).tolist() == [10, -95, 42]
    assert anatomical_plane(axes) == "sagittal"
    assert anatomical_plane(dicom_axes([1, 0, 0, 0, 1, 0], [0, 0, 0], [1, 1])) == "axial"
    assert anatomical_plane(dicom_axes([1, 0, 0, 0, 0, -1], [0, 0, 0], [1, 1])) == "coronal"
    # The pydicom-data shoulder MR is oblique by 35 degrees in the axial plane: no plane word.
    assert anatomical_plane(dicom_axes([0.569486, 0.822001, 0, 0, 0, -1], [0, 0, 0], [1, 1])) is None


@needs_realdata
def test_declared_frontal_views_agree_with_the_publishers_lung_sides(tmp_path):
    """covid-chestxray: the CSV's view (PA / AP / L) as a declared view; the publisher's COCO
    boxes name each lung. Every lung box on a frontal view must get the side its label names."""
    import csv

    from medtrinity_assets.catalog import source_root
    from medtrinity_assets.imaging.geometry import declared_view_axes, encode_axes

    spec = load_catalog()["covid_chestxray"]
    root = source_root(spec)
    with open(root / "metadata.csv", encoding="utf-8") as handle:
        views = {row["filename"]: row["view"] for row in csv.DictReader(handle)}
    blobs = BlobStore(tmp_path / "blobs")
    outcomes = []
    for record in ingest(spec, root, blobs):
        view = normalize_view(views.get(record["source_file"].rsplit("/", 1)[-1]))
        axes = declared_view_axes(view) if record["modality"] == "xray" else None
        record = {**record, "view": view, "image_axes": encode_axes(axes)}
        normalized = normalize_pixels(blobs.get_array(record["pixel_ref"]), record, spec.intensity_rule())
        rois, _ = ground_record(record, normalized.display, normalized.scale, blobs, spec)
        for roi in rois:
            if roi["label"] and roi["label"].lower() in ("right lung", "left lung"):
                outcomes.append((roi["label"].split()[0].lower(), roi["patient_side"], roi["patient_side_source"]))
    assert len(outcomes) >= 10
    assert all(side == named and source == "declared_view" for named, side, source in outcomes), outcomes


@needs_realdata
def test_nifti_without_qform_or_sform_code_has_no_geometry(tmp_path):
    """A NIfTI whose qform and sform codes are 0 carries only voxel sizes: no image_axes, so no
    patient side, even though the volume, the labels and the ROIs are the same."""
    import nibabel as nib

    source = REALDATA / "ibsi_sts" / "nifti" / "STS_001"
    root = tmp_path / "nifti"
    root.mkdir()
    for name in ("CT_image.nii.gz", "CT_mask.nii.gz"):
        image = nib.load(source / name)
        header = image.header.copy()
        header.set_qform(None, code=0)
        header.set_sform(None, code=0)
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), None, header), root / name)
    spec = build_spec(
        modality="ct", organs=["extremity"], root=str(root),
        layout={"family": "nifti", "image_glob": "*_image.nii.gz", "label_replace": [{"old": "_image", "new": "_mask"}]},
    )
    blobs = BlobStore(tmp_path / "blobs")
    records = ingest(spec, root, blobs)
    assert records and {r["image_axes"] for r in records} == {None} and {r["frame_kind"] for r in records} == {"slice"}
    annotated = next(r for r in records if json.loads(r["annotations"]))
    normalized = normalize_pixels(blobs.get_array(annotated["pixel_ref"]), annotated, spec.intensity_rule())
    rois, _ = ground_record(annotated, normalized.display, normalized.scale, blobs, spec)
    assert rois and {r["patient_side"] for r in rois} == {None}
