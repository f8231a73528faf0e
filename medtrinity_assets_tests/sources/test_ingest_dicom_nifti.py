"""Ingest of DICOM (single, multi-frame, series) and NIfTI volumes, on real files."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import convert_color_space
from spec_factory import build_spec

from medtrinity_assets.catalog.spec import Slicing, SourceSpec
from medtrinity_assets.imaging.slicing import select_slices
from medtrinity_assets.paths import realdata_dir
from medtrinity_assets.sources import dicom as dicom_reader
from medtrinity_assets.sources import nifti as nifti_reader
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.storage import BlobStore

SITE = Path(pydicom.__file__).resolve().parent.parent
DATA_STORE = SITE / "data_store" / "data"
PYDICOM_FILES = SITE / "pydicom" / "data" / "test_files"
NILEARN_DATA = SITE / "nilearn" / "datasets" / "data"
MNI_T1 = NILEARN_DATA / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = NILEARN_DATA / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"


def make_spec(layout: dict, modality: str = "ct", **extra) -> SourceSpec:
    return build_spec(
        modality=modality, layout=layout,
        patient={"source": "dicom"} if layout["family"] == "dicom" else {"source": "file"},
        **extra,
    )

def ingest(spec: SourceSpec, root: Path, out: Path):
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(out), salt="salt")
    items = list(
        dicom_reader.read(ctx) if spec.layout.family == "dicom" else nifti_reader.read(ctx)
    )
    records = [i for i in items if not isinstance(i, Quarantined)]
    quarantined = [i for i in items if isinstance(i, Quarantined)]
    return ctx, records, quarantined


# --- slicing rule (pure) -----------------------------------------------------------------


def test_annotated_plus_context_keeps_labelled_slices_and_neighbours():
    presence = np.zeros(50, dtype=bool)
    presence[[20, 21, 30]] = True
    rule = Slicing(rule="annotated_plus_context", context=2, max_slices=24)
    assert select_slices(50, presence, rule) == [18, 19, 20, 21, 22, 23, 28, 29, 30, 31, 32]


def test_annotated_plus_context_thins_evenly_and_is_deterministic():
    presence = np.ones(189, dtype=bool)
    rule = Slicing(rule="annotated_plus_context", context=2, max_slices=24)
    kept = select_slices(189, presence, rule)
    assert len(kept) == 24 and kept[0] == 0 and kept[-1] == 188
    assert kept == sorted(set(kept)) == select_slices(189, presence, rule)
    gaps = np.diff(kept)
    assert gaps.max() - gaps.min() <= 1


def test_context_is_clipped_at_the_volume_edges():
    presence = np.zeros(10, dtype=bool)
    presence[[0, 9]] = True
    assert select_slices(10, presence, Slicing(context=3)) == [0, 1, 2, 3, 6, 7, 8, 9]


def test_no_labelled_slice_falls_back_to_every_k_over_the_centre():
    rule = Slicing(rule="annotated_plus_context", every_k=10, central_fraction=0.5, max_slices=24)
    assert select_slices(100, np.zeros(100, dtype=bool), rule) == [25, 35, 45, 55, 65]
    assert select_slices(100, None, rule) == [25, 35, 45, 55, 65]
    assert select_slices(10, None, Slicing(rule="every_k", every_k=2)) == [1, 3, 5, 7]
    assert select_slices(1, None, Slicing(rule="every_k")) == [0]
    assert select_slices(0, None, Slicing()) == []


def test_label_presence_of_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        select_slices(5, np.ones(4, dtype=bool), Slicing())


# --- DICOM ------------------------------------------------------------------------------


def test_ct_pixels_are_hounsfield_units(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    shutil.copy(DATA_STORE / "693_UNCR.dcm", root / "head.dcm")
    ctx, records, quarantined = ingest(make_spec({"family": "dicom", "glob": "*.dcm"}), root, tmp_path / "out")
    assert not quarantined and len(records) == 1
    record = records[0]
    hu = ctx.blobs.get_array(record["pixel_ref"])
    stored = pydicom.dcmread(root / "head.dcm").pixel_array
    assert record["pixel_units"] == "HU" and record["dicom_modality"] == "CT"
    assert np.array_equal(hu, stored.astype(np.int32) - 1024)  # RescaleIntercept -1024, slope 1
    # Air in the field of view (not the -3024 padding outside it) sits near -1000 HU.
    air = hu[(hu > -1500) & (hu < -500)]
    assert abs(np.median(air) + 1000) < 50
    assert record["pixel_spacing_mm"] == pytest.approx([0.478516, 0.478516])
    assert record["slice_index"] == -1 and record["slice_count"] == 1


def test_monochrome1_radiograph_is_inverted_so_bone_is_bright(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    shutil.copy(DATA_STORE / "RG1_UNCR.dcm", root / "chest.dcm")
    ctx, records, _ = ingest(make_spec({"family": "dicom"}, modality="xray"), root, tmp_path / "out")
    (record,) = records
    pixels = ctx.blobs.get_array(record["pixel_ref"]).astype(np.int64)
    stored = pydicom.dcmread(root / "chest.dcm").pixel_array.astype(np.int64)
    assert record["photometric"] == "MONOCHROME2"
    assert np.array_equal(pixels, (2**15 - 1) - stored)  # BitsStored 15, unsigned
    height, width = pixels.shape
    mid_rows = slice(height // 3, 2 * height // 3)
    mediastinum = pixels[mid_rows, width // 2 - 60 : width // 2 + 60].mean()
    right_lung = pixels[mid_rows, width // 4 - 60 : width // 4 + 60].mean()
    assert mediastinum > right_lung  # dense mediastinum is brighter than aerated lung
    # This CR writes PixelSpacing 0\0: not a spacing, so none is claimed.
    assert record["pixel_spacing_mm"] is None


def test_multi_frame_file_gives_one_record_per_kept_frame(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    shutil.copy(DATA_STORE / "emri_small.dcm", root / "emri.dcm")
    spec = make_spec({"family": "dicom"}, modality="mri", slicing={"rule": "every_k", "every_k": 2})
    ctx, records, quarantined = ingest(spec, root, tmp_path / "out")
    assert not quarantined
    assert [r["slice_index"] for r in records] == [1, 3, 5, 7]
    assert {r["slice_count"] for r in records} == {10}
    frames = pydicom.dcmread(root / "emri.dcm").pixel_array
    for record in records:
        assert np.array_equal(ctx.blobs.get_array(record["pixel_ref"]), frames[record["slice_index"]])
    assert len({r["record_id"] for r in records}) == 4


def test_ybr_colour_is_converted_to_rgb(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    shutil.copy(DATA_STORE / "SC_ybr_full_uncompressed.dcm", root / "ybr.dcm")
    ctx, records, _ = ingest(make_spec({"family": "dicom"}, modality="microscopy"), root, tmp_path / "out")
    (record,) = records
    pixels = ctx.blobs.get_array(record["pixel_ref"])
    ds = pydicom.dcmread(root / "ybr.dcm")
    ds.pixel_array_options(as_rgb=False)  # the stored YBR values, converted here independently
    expected = convert_color_space(ds.pixel_array, "YBR_FULL", "RGB")
    assert record["pixel_units"] == "rgb" and record["channels"] == 3 and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1


def _write_series(folder: Path, z_positions: list[float]) -> list[int]:
    """Real CT slices of one series at the given heights; names do not follow position order."""
    template = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    original = template.pixel_array.copy()
    offsets = []
    for number, z in enumerate(z_positions):
        ds = copy.deepcopy(template)
        offset = 10 * (number + 1)  # marks which file a slice came from
        ds.PixelData = (original + offset).astype(original.dtype).tobytes()
        ds.ImagePositionPatient = [-158.0, -179.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = 100 - number  # disagrees with position: position must win
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{number}"
        ds.save_as(folder / f"slice_{chr(ord('e') - number)}.dcm")
        offsets.append(offset)
    return offsets


def test_series_is_stacked_along_the_slice_normal(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    z_positions = [5.0, -10.0, 20.0, 0.0, -5.0]
    offsets = _write_series(root, z_positions)
    spec = make_spec(
        {"family": "dicom", "stack_series": True},
        slicing={"rule": "every_k", "every_k": 1, "central_fraction": 1.0},
    )
    ctx, records, quarantined = ingest(spec, root, tmp_path / "out")
    assert not quarantined and len(records) == 5
    base = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm").pixel_array.astype(np.int32) - 1024
    by_index = sorted(records, key=lambda r: r["slice_index"])
    assert [r["slice_index"] for r in by_index] == [0, 1, 2, 3, 4]
    assert {r["slice_count"] for r in records} == {5}
    expected_order = [offsets[i] for i in np.argsort(z_positions)]  # inferior to superior
    found_order = [int(np.median(ctx.blobs.get_array(r["pixel_ref"]) - base)) for r in by_index]
    assert found_order == expected_order


def test_bad_files_are_quarantined_and_the_rest_still_ingests(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    shutil.copy(DATA_STORE / "693_UNCR.dcm", root / "good_ct.dcm")
    shutil.copy(PYDICOM_FILES / "MR_truncated.dcm", root / "truncated_mr.dcm")
    whole = (DATA_STORE / "RG1_UNCR.dcm").read_bytes()
    (root / "half_cr.dcm").write_bytes(whole[: len(whole) // 2])
    (root / "empty.dcm").write_bytes(b"")
    (root / "not_dicom.dcm").write_text("hello, not a DICOM file")
    shutil.copy(DATA_STORE / "liver.dcm", root / "liver_seg.dcm")
    shutil.copy(PYDICOM_FILES / "JPEG-lossy.dcm", root / "nm_12bit_jpeg.dcm")
    ctx, records, quarantined = ingest(make_spec({"family": "dicom"}), root, tmp_path / "out")
    assert [r["source_file"] for r in records] == ["good_ct.dcm"]
    reasons = {q.source_file: q.reason for q in quarantined}
    assert set(reasons) == {"truncated_mr.dcm", "half_cr.dcm", "empty.dcm", "not_dicom.dcm", "liver_seg.dcm", "nm_12bit_jpeg.dcm"}
    # Both cut short: found from the header, before any pixel is decoded.
    assert "pixel data cut short" in reasons["truncated_mr.dcm"] and "pixel data cut short" in reasons["half_cr.dcm"]
    assert "empty file (0 bytes)" in reasons["empty.dcm"]
    assert reasons["liver_seg.dcm"].startswith("not an image object (Modality=SEG)")
    assert "pylibjpeg-libjpeg" in reasons["nm_12bit_jpeg.dcm"]
    assert "Error" in reasons["not_dicom.dcm"]


# --- NIfTI ------------------------------------------------------------------------------


def _mni_crop(folder: Path, affine_flip: bool = False, label_shape_off: bool = False):
    """A real crop of the MNI T1 template and its grey-matter map, saved as NIfTI files."""
    t1 = nib.load(MNI_T1)
    gm = nib.load(MNI_GM)
    crop = (slice(60, 140), slice(80, 180), slice(70, 110))
    t1_data = np.asanyarray(t1.dataobj)[crop]
    gm_data = np.asanyarray(gm.dataobj)[crop]
    affine = t1.slicer[crop].affine
    if affine_flip:  # store the same anatomy in LPS-like voxel order: x and y reversed
        t1_data, gm_data = t1_data[::-1, ::-1], gm_data[::-1, ::-1]
        affine = affine @ np.array([[-1, 0, 0, t1_data.shape[0] - 1], [0, -1, 0, t1_data.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    if label_shape_off:
        gm_data = gm_data[:, :, :-1]
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(t1_data), affine), folder / "sub01_t1_image.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(gm_data), affine), folder / "sub01_gm_image.nii.gz")


NIFTI_LAYOUT = {
    "family": "nifti",
    "image_glob": "*_t1_*.nii.gz",
    "label_replace": [{"old": "_t1_", "new": "_gm_"}],
    "label_threshold": 128,
    "label_names": {1: "grey matter"},
    "sequence_regex": "_(t1)_",
}


def test_nifti_volume_with_label_volume_gives_masked_slices(tmp_path):
    _mni_crop(tmp_path / "src")
    spec = make_spec(NIFTI_LAYOUT, modality="mri", slicing={"max_slices": 6})
    ctx, records, quarantined = ingest(spec, tmp_path / "src", tmp_path / "out")
    assert not quarantined and len(records) == 6
    canonical = nib.as_closest_canonical(nib.load(tmp_path / "src" / "sub01_t1_image.nii.gz"))
    volume = np.asanyarray(canonical.dataobj)
    for record in records:
        assert record["sequence"] == "T1" and record["slice_count"] == 40
        assert record["labels"] == ["grey matter"] and record["pixel_spacing_mm"] == [1.0, 1.0]
        pixels = ctx.blobs.get_array(record["pixel_ref"])
        # Radiological display: rows run anterior -> posterior, columns patient right -> left.
        expected = volume[:, :, record["slice_index"]].T[::-1, ::-1]
        assert np.array_equal(pixels, expected)
        (annotation,) = json.loads(record["annotations"])
        mask = ctx.blobs.get_array(annotation["mask_ref"])
        assert annotation["kind"] == "mask" and mask.shape == pixels.shape
        assert 0 < mask.sum() < mask.size and set(np.unique(mask)) <= {0, 1}


def test_nifti_orientation_does_not_depend_on_voxel_order(tmp_path):
    _mni_crop(tmp_path / "ras")
    _mni_crop(tmp_path / "lps", affine_flip=True)
    spec = make_spec(NIFTI_LAYOUT, modality="mri", slicing={"max_slices": 4})
    _, ras_records, _ = ingest(spec, tmp_path / "ras", tmp_path / "out")
    _, lps_records, _ = ingest(spec, tmp_path / "lps", tmp_path / "out")
    assert [r["pixel_ref"] for r in ras_records] == [r["pixel_ref"] for r in lps_records]
    assert [r["annotations"] for r in ras_records] == [r["annotations"] for r in lps_records]


def test_anterior_is_up_and_patient_right_is_on_the_left(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    image = np.zeros((20, 30, 10), dtype=np.int16)
    image[15:, 25:, :] = 100  # patient right (high x) and anterior (high y) in RAS voxels
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "marker_t1_.nii.gz")
    spec = make_spec({"family": "nifti", "image_glob": "*.nii.gz"}, modality="mri", slicing={"rule": "every_k", "every_k": 5})
    ctx, records, _ = ingest(spec, folder, tmp_path / "out")
    pixels = ctx.blobs.get_array(records[0]["pixel_ref"])
    assert pixels.shape == (30, 20)
    rows, cols = np.nonzero(pixels)
    assert rows.max() < 5 and cols.max() < 5  # top-left corner


def test_label_volume_of_another_shape_is_quarantined(tmp_path):
    _mni_crop(tmp_path / "src", label_shape_off=True)
    shutil.copy(tmp_path / "src" / "sub01_t1_image.nii.gz", tmp_path / "src" / "sub02_t1_image.nii.gz")
    spec = make_spec(NIFTI_LAYOUT, modality="mri", slicing={"max_slices": 3})
    _, records, quarantined = ingest(spec, tmp_path / "src", tmp_path / "out")
    (problem,) = quarantined
    assert problem.source_file == "sub01_t1_image.nii.gz"
    assert "label volume shape (80, 100, 39) differs from image shape (80, 100, 40)" in problem.reason
    # sub02 has no label volume: its slices are kept, without annotations.
    assert records and {r["source_file"] for r in records} == {"sub02_t1_image.nii.gz"}
    assert all(r["annotations"] == "[]" for r in records)


def test_unreadable_nifti_is_quarantined(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "broken_t1_.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    spec = make_spec({"family": "nifti", "image_glob": "*.nii.gz"}, modality="mri")
    _, records, quarantined = ingest(spec, folder, tmp_path / "out")
    assert not records and quarantined[0].reason.startswith("not a readable NIfTI volume")


REALDATA_PET = realdata_dir() / "ibsi_sts" / "dicom" / "STS_001" / "PET"


@pytest.mark.skipif(not REALDATA_PET.is_dir(), reason="../shared/realdata is not present")
def test_real_pet_series_is_read_in_suv(tmp_path):
    spec = make_spec({"family": "dicom", "glob": "image/*.dcm", "stack_series": True}, modality="pet")
    ctx, records, quarantined = ingest(spec, REALDATA_PET, tmp_path / "out")
    assert not quarantined and records
    assert {r["pixel_units"] for r in records} == {"SUV"}  # Units GML: stored as body-weight SUV
    peak = max(float(ctx.blobs.get_array(r["pixel_ref"]).max()) for r in records)
    assert 1.0 < peak < 50.0  # a plausible FDG SUV range, not raw counts
