"""NIfTI layouts on real files written by nibabel: Decathlon dataset.json with 4D multi-sequence
images, BraTS per-case folders, slice choice per case, and the IBSI sarcoma NIfTI copy.

Expected slices and masks are computed here from the label files through
``nibabel.as_closest_canonical`` (an independent route to RAS order), never taken from the
reader; the display convention (anterior up, patient right on the left) is ``.T[::-1, ::-1]``.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import needs_realdata
from spec_factory import build_spec

from medtrinity_assets.catalog.load import load_spec, source_root
from medtrinity_assets.catalog.spec import Slicing
from medtrinity_assets.imaging.slicing import label_value_masks, select_slices
from medtrinity_assets.paths import REPO_ROOT
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.storage import BlobStore

SHAPE = (32, 32, 20)
CONTEXT = 2


def save_from_ras(ras: np.ndarray, path: Path, flip: tuple[bool, bool, bool], spacing=(1.2, 1.2, 2.5)) -> None:
    """Save a volume given in RAS voxel order, storing the axes marked in ``flip`` reversed
    (flip=(True, True, False) is the LPS order DICOM converters write)."""
    data = ras
    affine = np.eye(4)
    for axis, reversed_axis in enumerate(flip):
        affine[axis, axis] = -spacing[axis] if reversed_axis else spacing[axis]
        if reversed_axis:
            data = np.flip(data, axis=axis)
            affine[axis, 3] = spacing[axis] * (ras.shape[axis] - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)


def ras_array(path: Path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def display(plane: np.ndarray) -> np.ndarray:
    return plane.T[::-1, ::-1]


def expected_slices(label_ras: np.ndarray, n_slices: int, context: int = CONTEXT) -> list[int]:
    lesion = np.flatnonzero(label_ras.reshape(-1, n_slices).any(axis=0))
    return sorted({i for z in lesion for i in range(z - context, z + context + 1) if 0 <= i < n_slices})


def ingest(spec, root: Path, out: Path):
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(out), salt="salt")
    items = list(read_source(ctx))
    records = [i for i in items if isinstance(i, dict)]
    quarantined = [i for i in items if isinstance(i, Quarantined)]
    return ctx, records, quarantined


def masks_by_label(ctx, record) -> dict[str, np.ndarray]:
    annotations = json.loads(record["annotations"])
    assert all(a["kind"] == "mask" for a in annotations)
    return {a["label"]: ctx.blobs.get_array(a["mask_ref"]) for a in annotations}


# --- the slicing rule --------------------------------------------------------------------


def test_over_budget_context_goes_before_a_small_lesion():
    presence = np.zeros(220, dtype=bool)
    presence[5] = True  # a one-slice lesion far from the big one
    presence[100:201] = True
    kept = select_slices(220, presence, Slicing(context=2, max_slices=24))
    assert len(kept) == 24 and kept[0] == 5 and kept[-1] == 200
    assert all(presence[kept])  # every kept slice shows the lesion once context is dropped


def test_every_k_samples_the_central_fraction():
    kept = select_slices(40, None, Slicing(rule="every_k", every_k=4, central_fraction=0.5))
    # The middle half of 40 slices is 10..29; every 4th from its start.
    assert kept == list(range(10, 30, 4))
    assert select_slices(40, np.ones(40, bool), Slicing(rule="every_k", every_k=4, central_fraction=0.5)) == kept


def test_each_label_value_is_its_own_named_mask():
    plane = np.zeros((4, 5), dtype=np.uint8)
    plane[0, :2] = 1
    plane[2, 3] = 4
    plane[3, 0] = 7
    masks = label_value_masks(plane, {1: "necrosis", 4: "enhancing tumour", 7: ""})
    assert [(value, name) for value, name, _ in masks] == [(1, "necrosis"), (4, "enhancing tumour")]
    for value, _, mask in masks:
        assert np.array_equal(mask, (plane == value).astype(np.uint8))
    (unnamed,) = label_value_masks(plane == 1, {})
    assert unnamed[1] == "label 1"


# --- Medical Segmentation Decathlon ---------------------------------------------------------

MSD_MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def planted_lesion(z_range: range, shape=SHAPE) -> np.ndarray:
    """Label volume (RAS): oedema around a non-enhancing core around an enhancing centre."""
    label = np.zeros(shape, dtype=np.uint8)
    for z in z_range:
        label[8:20, 14:26, z] = 1
    label[11:17, 17:23, z_range[1] : z_range[-1]] = 2
    label[13:15, 19:21, z_range[2]] = 3
    return label


def make_msd_tree(root: Path, rng: np.random.Generator) -> Path:
    task = root / "Task01_BrainTumour"
    flip_lps = (True, True, False)
    for case, z_range in (("BRATS_001", range(8, 12)), ("BRATS_002", range(4, 7))):
        channels = rng.integers(0, 1000, size=SHAPE + (4,), dtype=np.int16)
        save_from_ras(channels, task / "imagesTr" / f"{case}.nii.gz", flip_lps)
    save_from_ras(planted_lesion(range(8, 12)), task / "labelsTr" / "BRATS_001.nii.gz", flip_lps)
    # BRATS_002's label file is absent: the entry must be quarantined, not half-read.
    save_from_ras(rng.integers(0, 1000, size=SHAPE + (4,), dtype=np.int16), task / "imagesTs" / "BRATS_485.nii.gz", flip_lps)
    # AppleDouble files as the real MSD tarballs carry them: Finder metadata, not NIfTI.
    for folder in ("imagesTr", "labelsTr"):
        (task / folder / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    description = {
        "name": "BRATS",
        "tensorImageSize": "4D",
        "modality": MSD_MODALITIES,
        "labels": MSD_LABELS,
        "numTraining": 2,
        "numTest": 1,
        "training": [
            {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"},
            {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"},
        ],
        "test": ["./imagesTs/BRATS_485.nii.gz"],
    }
    (task / "dataset.json").write_text(json.dumps(description, indent=2))
    return task


def msd_spec(**layout):
    return build_spec(
        modality="mri",
        organs=["brain"],
        diseases=["glioma"],
        layout={"family": "nifti", "dataset_json": "Task01_BrainTumour/dataset.json", **layout},
        slicing={"rule": "annotated_plus_context", "context": CONTEXT},
    )


def test_msd_4d_channels_become_sequences_on_the_lesion_slices(tmp_path):
    task = make_msd_tree(tmp_path / "src", np.random.default_rng(1))
    ctx, records, quarantined = ingest(msd_spec(), tmp_path / "src", tmp_path / "out")

    (missing_label,) = quarantined
    assert missing_label.source_file == "Task01_BrainTumour/imagesTr/BRATS_002.nii.gz"
    assert "labelsTr/BRATS_002.nii.gz" in missing_label.reason and "missing" in missing_label.reason
    assert not any("._" in r["source_file"] for r in records)

    label_ras = ras_array(task / "labelsTr" / "BRATS_001.nii.gz")
    image_ras = ras_array(task / "imagesTr" / "BRATS_001.nii.gz")
    chosen = expected_slices(label_ras, SHAPE[2])
    assert len(records) == len(chosen) * len(MSD_MODALITIES)
    assert {r["source_file"] for r in records} == {"Task01_BrainTumour/imagesTr/BRATS_001.nii.gz"}
    names = {int(k): v for k, v in MSD_LABELS.items() if k != "0"}
    for channel, sequence in ((int(k), v) for k, v in MSD_MODALITIES.items()):
        mine = [r for r in records if r["sequence"] == sequence]
        assert [r["slice_index"] for r in mine] == chosen
        for record in mine:
            z = record["slice_index"]
            assert record["slice_count"] == SHAPE[2]
            assert np.array_equal(ctx.blobs.get_array(record["pixel_ref"]), display(image_ras[:, :, z, channel]))
            masks = masks_by_label(ctx, record)
            present = {names[v] for v in np.unique(label_ras[:, :, z]) if v}
            assert set(masks) == present and set(record["labels"]) == present
            for value, name in names.items():
                if name in masks:
                    assert np.array_equal(masks[name], display(label_ras[:, :, z] == value))
    assert len({r["record_id"] for r in records}) == len(records)
    assert len({r["patient_hash"] for r in records}) == 1


def test_msd_use_sequences_label_overrides_and_test_entries(tmp_path):
    make_msd_tree(tmp_path / "src", np.random.default_rng(2))
    spec = msd_spec(use_sequences=["flair", "T2W"], label_names={2: "necrotic core"}, include_test=True)
    _, records, quarantined = ingest(spec, tmp_path / "src", tmp_path / "out")
    assert {r["sequence"] for r in records} == {"FLAIR", "T2w"}
    training = [r for r in records if "imagesTr" in r["source_file"]]
    labels = set().union(*(r["labels"] for r in training))
    assert labels == {"edema", "necrotic core", "enhancing tumour"}
    # The unlabelled test image is sampled every_k over its centre, without annotations.
    test_records = [r for r in records if "imagesTs" in r["source_file"]]
    every_k = select_slices(SHAPE[2], None, spec.slicing)
    assert [r["slice_index"] for r in test_records if r["sequence"] == "FLAIR"] == every_k
    assert all(r["annotations"] == "[]" for r in test_records)
    assert [q.source_file for q in quarantined] == ["Task01_BrainTumour/imagesTr/BRATS_002.nii.gz"]


def test_use_sequences_naming_no_channel_is_reported(tmp_path):
    make_msd_tree(tmp_path / "src", np.random.default_rng(3))
    _, records, quarantined = ingest(msd_spec(use_sequences=["DWI"]), tmp_path / "src", tmp_path / "out")
    assert not records
    reasons = {q.source_file: q.reason for q in quarantined}
    assert "DWI" in reasons["Task01_BrainTumour/dataset.json"]


def test_broken_dataset_json_is_quarantined_by_name(tmp_path):
    task = make_msd_tree(tmp_path / "src", np.random.default_rng(4))
    (task / "dataset.json").write_text('{"training": [')
    _, records, quarantined = ingest(msd_spec(), tmp_path / "src", tmp_path / "out")
    assert not records
    assert quarantined[0].source_file == "Task01_BrainTumour/dataset.json"
    assert "not usable" in quarantined[0].reason


def test_apple_double_files_are_skipped_by_the_glob_layout(tmp_path):
    root = tmp_path / "src"
    rng = np.random.default_rng(5)
    save_from_ras(rng.integers(0, 500, size=SHAPE, dtype=np.int16), root / "imagesTr" / "hippo_01.nii.gz", (True, True, False))
    save_from_ras(planted_lesion(range(9, 13)), root / "labelsTr" / "hippo_01.nii.gz", (True, True, False))
    (root / "imagesTr" / "._hippo_01.nii.gz").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    spec = build_spec(
        modality="mri",
        layout={"family": "nifti", "image_glob": "imagesTr/*.nii.gz", "label_replace": [{"old": "imagesTr", "new": "labelsTr"}]},
        slicing={"context": CONTEXT},
    )
    _, records, quarantined = ingest(spec, root, tmp_path / "out")
    assert quarantined == []
    assert {r["source_file"] for r in records} == {"imagesTr/hippo_01.nii.gz"}
    label_ras = ras_array(root / "labelsTr" / "hippo_01.nii.gz")
    assert [r["slice_index"] for r in records] == expected_slices(label_ras, SHAPE[2])


def test_4d_channels_are_read_without_copying_the_volume(tmp_path):
    shape = (96, 96, 64, 4)
    task = tmp_path / "src" / "Task01_BrainTumour"
    rng = np.random.default_rng(6)
    save_from_ras(rng.random(shape, dtype=np.float32), task / "imagesTr" / "BRATS_001.nii.gz", (True, True, False))
    label = np.zeros(shape[:3], dtype=np.uint8)
    label[40:50, 40:50, 30:32] = 1
    save_from_ras(label, task / "labelsTr" / "BRATS_001.nii.gz", (True, True, False))
    (task / "dataset.json").write_text(json.dumps({
        "modality": MSD_MODALITIES, "labels": MSD_LABELS,
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
    }))
    spec = msd_spec()
    spec = spec.model_copy(update={"slicing": Slicing(context=0)})
    ctx = IngestContext(spec=spec, root=tmp_path / "src", blobs=BlobStore(tmp_path / "out"), salt="salt")
    tracemalloc.start()
    try:
        records = [item for item in read_source(ctx) if isinstance(item, dict)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == 2 * 4
    # Loading the 4D array (once, or per channel) needs all of it; the peak here is the label
    # volume's gzip decoding plus two-slice slabs.
    whole = np.prod(shape) * 4
    assert peak < whole / 2, f"peak {peak} bytes while the 4D volume is {whole}"


# --- BraTS per-case folders ------------------------------------------------------------------

BRATS_SEQUENCES = ("flair", "t1", "t1ce", "t2")
BRATS_LAYOUT = {
    "family": "nifti",
    "case_glob": "MICCAI_BraTS2020_TrainingData/*/",
    "sequences": {name: f"{{case}}_{name}.nii.gz" for name in BRATS_SEQUENCES},
    "label_template": "{case}_seg.nii.gz",
    "label_names": {1: "necrotic tumour core", 2: "peritumoral edema", 4: "enhancing tumour"},
}
BRATS_CASES = {
    # case: (lesion slices in RAS, stored axes reversed)
    "BraTS20_Training_001": (range(9, 13), (True, True, False)),  # LPS, as BraTS ships
    "BraTS20_Training_002": (range(2, 5), (False, False, True)),  # slices stored top-down
}


def brats_label(z_range: range) -> np.ndarray:
    label = planted_lesion(z_range)
    label[label == 3] = 4  # BraTS codes enhancing tumour 4
    return label


def make_brats_tree(root: Path, rng: np.random.Generator) -> Path:
    top = root / "MICCAI_BraTS2020_TrainingData"
    for case, (z_range, flip) in BRATS_CASES.items():
        for name in BRATS_SEQUENCES:
            save_from_ras(rng.integers(0, 3000, size=SHAPE, dtype=np.int16), top / case / f"{case}_{name}.nii.gz", flip)
        save_from_ras(brats_label(z_range), top / case / f"{case}_seg.nii.gz", flip)
    (top / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii.gz").unlink()
    (top / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_001\n")
    return top


def test_brats_cases_give_every_sequence_the_same_slices_and_masks(tmp_path):
    top = make_brats_tree(tmp_path / "src", np.random.default_rng(7))
    spec = build_spec(modality="mri", organs=["brain"], diseases=["glioma"], layout=BRATS_LAYOUT, slicing={"context": CONTEXT})
    ctx, records, quarantined = ingest(spec, tmp_path / "src", tmp_path / "out")

    (missing,) = quarantined
    assert missing.source_file == "MICCAI_BraTS2020_TrainingData/BraTS20_Training_002/BraTS20_Training_002_t2.nii.gz"
    assert "'t2'" in missing.reason and "BraTS20_Training_002" in missing.reason

    names = dict(BRATS_LAYOUT["label_names"])
    patients = set()
    for case in BRATS_CASES:
        label_ras = ras_array(top / case / f"{case}_seg.nii.gz")
        chosen = expected_slices(label_ras, SHAPE[2])
        mine = [r for r in records if f"/{case}/" in r["source_file"]]
        present = [s for s in BRATS_SEQUENCES if (top / case / f"{case}_{s}.nii.gz").exists()]
        assert len(mine) == len(chosen) * len(present)
        assert sorted({r["sequence"] for r in mine}) == sorted(present)
        annotations_by_slice = {}
        for record in mine:
            assert record["slice_index"] in chosen and record["slice_count"] == SHAPE[2]
            image_ras = ras_array(tmp_path / "src" / record["source_file"])
            z = record["slice_index"]
            assert np.array_equal(ctx.blobs.get_array(record["pixel_ref"]), display(image_ras[:, :, z]))
            # One label volume per case: every sequence carries the identical annotations.
            assert annotations_by_slice.setdefault(z, record["annotations"]) == record["annotations"]
            masks = masks_by_label(ctx, record)
            assert set(masks) == {names[v] for v in np.unique(label_ras[:, :, z]) if v}
            for value, name in names.items():
                if name in masks:
                    assert np.array_equal(masks[name], display(label_ras[:, :, z] == value))
        for sequence in present:
            assert [r["slice_index"] for r in mine if r["sequence"] == sequence] == chosen
        case_patients = {r["patient_hash"] for r in mine}
        assert len(case_patients) == 1
        patients |= case_patients
    assert len(patients) == 2


def test_brats_use_sequences_and_reruns_are_identical(tmp_path):
    make_brats_tree(tmp_path / "src", np.random.default_rng(8))
    layout = {**BRATS_LAYOUT, "use_sequences": ["FLAIR", "T1ce"]}
    spec = build_spec(modality="mri", layout=layout, slicing={"context": CONTEXT})
    _, first, quarantined = ingest(spec, tmp_path / "src", tmp_path / "out")
    _, second, _ = ingest(spec, tmp_path / "src", tmp_path / "out")
    assert quarantined == []  # the missing t2 is not asked for
    assert {r["sequence"] for r in first} == {"flair", "t1ce"}
    assert first == second


def test_brats_missing_label_and_mismatched_shape(tmp_path):
    top = make_brats_tree(tmp_path / "src", np.random.default_rng(9))
    (top / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz").unlink()
    odd = top / "BraTS20_Training_002" / "BraTS20_Training_002_t1.nii.gz"
    save_from_ras(np.zeros((32, 32, 19), dtype=np.int16), odd, (False, False, True))
    spec = build_spec(modality="mri", layout=BRATS_LAYOUT, slicing={"context": CONTEXT})
    _, records, quarantined = ingest(spec, tmp_path / "src", tmp_path / "out")
    reasons = {q.source_file: q.reason for q in quarantined}
    assert "BraTS20_Training_001_seg.nii.gz is missing" in reasons["MICCAI_BraTS2020_TrainingData/BraTS20_Training_001"]
    shape_reason = reasons["MICCAI_BraTS2020_TrainingData/BraTS20_Training_002/BraTS20_Training_002_t1.nii.gz"]
    assert "(32, 32, 20)" in shape_reason and "(32, 32, 19)" in shape_reason
    assert not any("Training_001" in r["source_file"] for r in records)
    assert {r["sequence"] for r in records} == {"flair", "t1ce"}


def test_cases_without_label_template_are_sampled_every_k(tmp_path):
    make_brats_tree(tmp_path / "src", np.random.default_rng(10))
    layout = {key: value for key, value in BRATS_LAYOUT.items() if key != "label_template"}
    spec = build_spec(modality="mri", layout=layout, slicing={"rule": "annotated_plus_context", "every_k": 5})
    _, records, _ = ingest(spec, tmp_path / "src", tmp_path / "out")
    every_k = select_slices(SHAPE[2], None, spec.slicing)
    assert {r["slice_index"] for r in records} == set(every_k)
    assert len(records) == len(every_k) * (4 + 3) and all(r["annotations"] == "[]" for r in records)


# --- real data: IBSI soft-tissue sarcoma, CT / MR T1 / PET of STS_001 --------------------------


@needs_realdata
def test_ibsi_sts_records_lie_on_the_gtv_slices(tmp_path):
    spec = load_spec(REPO_ROOT / "data" / "sources" / "ibsi_sts_nifti.yaml")
    root = source_root(spec)
    ctx, records, quarantined = ingest(spec, root, tmp_path / "out")
    assert quarantined == []
    images = sorted(p.relative_to(root).as_posix() for p in root.glob(spec.layout.image_glob))
    assert {r["source_file"] for r in records} == set(images) and len(images) == 3
    for image in images:
        mask_ras = ras_array(root / image.replace("_image", "_mask"))
        n_slices = mask_ras.shape[spec.layout.slice_axis]
        chosen = expected_slices(mask_ras, n_slices, spec.slicing.context)
        assert len(chosen) <= spec.slicing.max_slices  # the spec keeps them all, unthinned
        mine = [r for r in records if r["source_file"] == image]
        assert [r["slice_index"] for r in mine] == chosen
        with_lesion = [z for z in chosen if mask_ras[:, :, z].any()]
        annotated = [r for r in mine if r["annotations"] != "[]"]
        assert [r["slice_index"] for r in annotated] == with_lesion
        for record in annotated:
            (mask,) = masks_by_label(ctx, record).values()
            assert np.array_equal(mask, display(mask_ras[:, :, record["slice_index"]] != 0))
            assert record["labels"] == ["soft-tissue sarcoma"]
    modalities = {r["source_file"].split("/")[-1]: r["modality"] for r in records}
    assert modalities == {"CT_image.nii.gz": "ct", "MR_T1_image.nii.gz": "mri", "PET_image.nii.gz": "pet"}


def test_two_dimensional_nifti_frames_are_one_slice_each(tmp_path):
    # CAMUS stores each echocardiography frame as a 2D NIfTI with a 2D label file beside it.
    import nibabel as nib

    from medtrinity_assets.sources import IngestContext, read_source
    from medtrinity_assets.storage import BlobStore

    root = tmp_path / "camus" / "patient0001"
    root.mkdir(parents=True)
    frame = np.random.default_rng(3).integers(0, 255, size=(40, 30)).astype(np.uint8)
    label = np.zeros((40, 30), dtype=np.uint8)
    label[10:20, 5:15] = 1
    label[22:30, 5:15] = 2
    affine = np.diag([0.3, 0.3, 1.0, 1.0])
    nib.save(nib.Nifti1Image(frame, affine), root / "patient0001_2CH_ED.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "patient0001_2CH_ED_gt.nii.gz")
    spec = build_spec(
        root=str(tmp_path / "camus"), modality="ultrasound", organs=["heart"],
        layout={"family": "nifti", "image_glob": "*/*_ED.nii.gz", "label_replace": [{"old": ".nii.gz", "new": "_gt.nii.gz"}],
                "label_names": {1: "left ventricle cavity", 2: "left ventricle myocardium"}},
    )
    ctx = IngestContext(spec=spec, root=tmp_path / "camus", blobs=BlobStore(tmp_path / "var"), salt="s")
    items = list(read_source(ctx))
    records = [i for i in items if isinstance(i, dict)]
    assert len(records) == 1 and len(items) == 1, items
    record = records[0]
    assert (record["slice_index"], record["slice_count"]) == (0, 1)
    assert sorted(a["label"] for a in json.loads(record["annotations"])) == ["left ventricle cavity", "left ventricle myocardium"]
    assert sorted([record["height"], record["width"]]) == [30, 40]


def test_volume_with_a_degenerate_affine_is_quarantined_and_the_rest_read(tmp_path):
    # A zero column in the affine gives no orientation; that volume alone is left out.
    import nibabel as nib

    from medtrinity_assets.sources import IngestContext, Quarantined, read_source
    from medtrinity_assets.storage import BlobStore

    root = tmp_path / "vols"
    root.mkdir()
    data = np.random.default_rng(0).integers(0, 100, size=(8, 8, 6)).astype(np.int16)
    broken = nib.Nifti1Image(data, None)
    srow = np.diag([1.0, 1.0, 1.0, 1.0])
    srow[1, 1] = 0.0
    broken.header["sform_code"] = 1  # written field by field: nibabel refuses such an affine
    broken.header["srow_x"], broken.header["srow_y"], broken.header["srow_z"] = srow[0], srow[1], srow[2]
    nib.save(broken, root / "a_broken.nii.gz")
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), root / "b_good.nii.gz")
    spec = build_spec(root=str(root), modality="mri", layout={"family": "nifti", "image_glob": "*.nii.gz"},
                      slicing={"rule": "every_k", "every_k": 2})
    items = list(read_source(IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="s")))
    quarantined = [i for i in items if isinstance(i, Quarantined)]
    assert [q.source_file for q in quarantined] == ["a_broken.nii.gz"]
    assert "not a readable NIfTI volume" in quarantined[0].reason
    assert {i["source_file"] for i in items if isinstance(i, dict)} == {"b_good.nii.gz"}


def test_a_wide_glob_does_not_read_label_volumes_as_images(tmp_path):
    import nibabel as nib

    from medtrinity_assets.sources import IngestContext, read_source
    from medtrinity_assets.storage import BlobStore

    root = tmp_path / "vols"
    root.mkdir()
    image = np.random.default_rng(1).integers(0, 100, size=(8, 8, 6)).astype(np.int16)
    label = np.zeros((8, 8, 6), dtype=np.uint8)
    label[2:5, 2:5, 3] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "case1.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "case1_seg.nii.gz")
    spec = build_spec(root=str(root), modality="mri", diseases=["lesion"],
                      layout={"family": "nifti", "image_glob": "**/*.nii.gz", "label_replace": [{"old": ".nii.gz", "new": "_seg.nii.gz"}]})
    items = list(read_source(IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="s")))
    assert {i["source_file"] for i in items if isinstance(i, dict)} == {"case1.nii.gz"}
