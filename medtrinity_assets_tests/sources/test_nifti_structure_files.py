"""NIfTI label volumes split into one binary file per structure (TotalSegmentator layout:
s0000/ct.nii.gz beside s0000/segmentations/<structure>.nii.gz), on real files written by nibabel.

The volumes are stored in a non-RAS voxel order (file axes permuted and reversed); expected
slices and masks are computed here through ``nibabel.as_closest_canonical``, an independent
route to RAS order, never taken from the reader. Display convention: ``.T[::-1, ::-1]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydantic import ValidationError
from spec_factory import build_spec

from medtrinity_assets.catalog.load import load_spec
from medtrinity_assets.imaging.slicing import select_slices
from medtrinity_assets.knowledge.corpus import load_corpus
from medtrinity_assets.paths import REPO_ROOT
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.sources.nifti import canonical_presence
from medtrinity_assets.storage import BlobStore
from medtrinity_assets.vocabulary import normalize_label

FILE_SHAPE = (12, 10, 40)
# File axis 0 runs posterior (-y), axis 1 towards the patient's left... reversed (-x), axis 2
# inferior (-z): nothing is in RAS order, and the canonical axes are a permutation of the file's.
AFFINE = np.array(
    [[0.0, -1.2, 0.0, 12.0], [-1.5, 0.0, 0.0, 18.0], [0.0, 0.0, -2.5, 100.0], [0.0, 0.0, 0.0, 1.0]]
)
NAMES = {
    "liver": "liver",
    "spleen": "spleen",
    "vertebrae_L1": "L1 vertebra",
    "lung_upper_lobe_left": "left lung",
    "lung_lower_lobe_left": "left lung",
    "kidney_cyst_left": "kidney cyst",
}
FINDINGS = ["kidney cyst"]


def write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def box(z0: int, z1: int, x0: int = 2, x1: int = 8, shape=FILE_SHAPE) -> np.ndarray:
    """A binary structure filling a block of file voxels."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[x0:x1, 3:7, z0:z1] = 1
    return mask


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    rng = np.random.default_rng(7)
    for case in ("s0001", "s0002", "s0003"):
        write(root / case / "ct.nii.gz", rng.integers(-1000, 1000, FILE_SHAPE).astype(np.int16))
    first = root / "s0001" / "segmentations"
    write(first / "liver.nii.gz", box(5, 14))
    write(first / "spleen.nii.gz", np.zeros(FILE_SHAPE, np.uint8))  # out of the field of view
    write(first / "vertebrae_L1.nii.gz", box(0, 3, shape=(12, 10, 39)))  # wrong shape
    write(first / "rib_left_1.nii.gz", box(30, 38))  # not in the map: ignored
    second = root / "s0002" / "segmentations"
    write(second / "liver.nii.gz", box(20, 26))
    write(second / "spleen.nii.gz", box(22, 30, 0, 3))
    write(second / "vertebrae_L1.nii.gz", box(8, 12, 4, 6))
    write(second / "lung_upper_lobe_left.nii.gz", box(33, 37, 0, 5))
    write(second / "lung_lower_lobe_left.nii.gz", box(31, 35, 4, 9))  # overlaps the upper lobe
    write(second / "kidney_cyst_left.nii.gz", box(24, 25, 9, 11))
    write(second / "rib_left_1.nii.gz", box(0, 40))
    (second / "aorta.nii.gz").write_bytes(b"not a gzip stream")
    # s0003 has no segmentations folder: an incomplete download.
    return root


def spec_for(rule: str = "annotated_plus_context", **layout):
    return build_spec(
        id="structure_test",
        modality="ct",
        organs=["whole body"],
        patient={"source": "regex", "pattern": "(s[0-9]{4})/ct"},
        slicing={"rule": rule, "context": 1, "every_k": 8},
        layout={"family": "nifti", "image_glob": "**/*.nii.gz", "structure_glob": "segmentations/*.nii.gz", **layout},
    )


def ingest(spec, root: Path, out: Path):
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(out), salt="salt")
    items = list(read_source(ctx))
    return ctx, [i for i in items if isinstance(i, dict)], [i for i in items if isinstance(i, Quarantined)]


def canonical(path: Path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def display(plane: np.ndarray) -> np.ndarray:
    return plane.T[::-1, ::-1]


def expected_regions(case: Path, names: dict[str, str], usable: set[str]) -> dict[str, np.ndarray]:
    """Label -> joined canonical binary volume, over the structure files the reader can use."""
    regions: dict[str, np.ndarray] = {}
    for stem, label in names.items():
        if stem in usable:
            inside = canonical(case / "segmentations" / f"{stem}.nii.gz") != 0
            regions[label] = regions.get(label, np.zeros_like(inside)) | inside
    return regions


def check_records(ctx, records, root: Path, spec, usable: dict[str, set[str]], names=NAMES, findings=FINDINGS):
    by_case: dict[str, list[dict]] = {}
    for record in records:
        by_case.setdefault(record["source_file"], []).append(record)
    assert sorted(by_case) == sorted(f"{case}/ct.nii.gz" for case in usable)
    for case, stems in usable.items():
        regions = expected_regions(root / case, names, stems)
        image = canonical(root / case / "ct.nii.gz")
        union = np.logical_or.reduce([r.any(axis=(0, 1)) for r in regions.values()]) if regions else None
        presence = union if spec.slicing.rule == "annotated_plus_context" else None
        kept = select_slices(image.shape[2], presence, spec.slicing)
        case_records = by_case[f"{case}/ct.nii.gz"]
        assert [r["slice_index"] for r in case_records] == kept
        for record in case_records:
            index = record["slice_index"]
            assert np.array_equal(ctx.blobs.get_array(record["pixel_ref"]), display(image[:, :, index]))
            annotations = json.loads(record["annotations"])
            masks = {a["label"]: ctx.blobs.get_array(a["mask_ref"]) for a in annotations}
            assert len(masks) == len(annotations)  # one mask per label, parts joined
            expected = {
                label: display(region[:, :, index]).astype(np.uint8)
                for label, region in regions.items()
                if region[:, :, index].any()
            }
            assert sorted(masks) == sorted(expected)
            for label, mask in expected.items():
                assert np.array_equal(masks[label], mask), (case, index, label)
            # Anatomy is ROI only; findings enter the record's labels.
            assert record["labels"] == sorted(label for label in expected if label in findings)


def test_structure_masks_follow_the_files_in_canonical_order(dataset, tmp_path):
    spec = spec_for(structure_names=NAMES, finding_structures=FINDINGS)
    ctx, records, quarantined = ingest(spec, dataset, tmp_path / "out")
    usable = {
        "s0001": {"liver", "spleen"},
        "s0002": {"liver", "spleen", "vertebrae_L1", "lung_upper_lobe_left", "lung_lower_lobe_left", "kidney_cyst_left"},
    }
    check_records(ctx, records, dataset, spec, usable)
    labels_seen = {a["label"] for r in records for a in json.loads(r["annotations"])}
    assert "kidney cyst" in labels_seen and "left lung" in labels_seen
    assert not any("rib" in label for label in labels_seen)  # unlisted stem ignored
    assert any(r["labels"] == ["kidney cyst"] for r in records)

    reasons = {q.source_file: q.reason for q in quarantined}
    # aorta is not in the map, so its broken file is never opened.
    assert sorted(reasons) == ["s0001/segmentations/vertebrae_L1.nii.gz", "s0003/ct.nii.gz"]
    shape_reason = reasons["s0001/segmentations/vertebrae_L1.nii.gz"]
    assert "(12, 10, 39)" in shape_reason and "(12, 10, 40)" in shape_reason and "L1 vertebra" in shape_reason
    assert "no structure file matches" in reasons["s0003/ct.nii.gz"]


def test_without_a_map_every_file_is_a_region_named_by_its_stem(dataset, tmp_path):
    spec = spec_for(rule="every_k")
    ctx, records, quarantined = ingest(spec, dataset, tmp_path / "out")
    stems = ["liver", "spleen", "vertebrae_L1", "rib_left_1", "lung_upper_lobe_left", "lung_lower_lobe_left", "kidney_cyst_left"]
    names = {stem: stem.replace("_", " ") for stem in stems}
    usable = {
        "s0001": {"liver", "spleen", "rib_left_1"},
        "s0002": set(stems),
    }
    check_records(ctx, records, dataset, spec, usable, names=names, findings=[])
    reasons = {q.source_file: q.reason for q in quarantined}
    assert sorted(reasons) == [
        "s0001/segmentations/vertebrae_L1.nii.gz", "s0002/segmentations/aorta.nii.gz", "s0003/ct.nii.gz",
    ]
    assert "not readable" in reasons["s0002/segmentations/aorta.nii.gz"] and "s0002/ct.nii.gz" in reasons["s0002/segmentations/aorta.nii.gz"]


def test_rerun_gives_identical_rows(dataset, tmp_path):
    spec = spec_for(structure_names=NAMES, finding_structures=FINDINGS)
    _, first, first_q = ingest(spec, dataset, tmp_path / "a")
    _, second, second_q = ingest(spec, dataset, tmp_path / "b")
    assert first == second and first_q == second_q
    assert len({r["record_id"] for r in first}) == len(first)


def test_catalog_spec_reads_totalsegmentator_folders(dataset, tmp_path):
    spec = load_spec(REPO_ROOT / "data" / "sources" / "totalsegmentator.yaml")
    ctx, records, quarantined = ingest(spec, dataset, tmp_path / "out")
    layout = spec.layout
    usable = {
        "s0001": {"liver", "spleen"},
        "s0002": {"liver", "spleen", "vertebrae_L1", "lung_upper_lobe_left", "lung_lower_lobe_left", "kidney_cyst_left"},
    }
    check_records(ctx, records, dataset, spec, usable, names=dict(layout.structure_names), findings=layout.finding_structures)
    # The catalog maps the aorta, so its broken file is opened and quarantined here.
    assert {q.source_file for q in quarantined} == {
        "s0001/segmentations/vertebrae_L1.nii.gz", "s0002/segmentations/aorta.nii.gz", "s0003/ct.nii.gz",
    }
    assert len({r["patient_hash"] for r in records}) == 2


def test_totalsegmentator_structure_names_have_knowledge():
    spec = load_spec(REPO_ROOT / "data" / "sources" / "totalsegmentator.yaml")
    known = {normalize_label(name) for e in load_corpus(REPO_ROOT / "data" / "knowledge") for name in [e["finding"], *e["aliases"]]}
    missing = sorted({v for v in spec.layout.structure_names.values() if normalize_label(v) not in known})
    assert not missing, missing


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_streamed_presence_matches_the_canonical_volume(tmp_path, axis):
    path = tmp_path / "structure.nii.gz"
    mask = np.zeros(FILE_SHAPE, dtype=np.uint8)
    mask[1, 2, 3] = mask[7, 9, 33] = mask[11, 0, 17] = 1
    write(path, mask)
    expected = (canonical(path) != 0).any(axis=tuple(a for a in range(3) if a != axis))
    assert np.array_equal(canonical_presence(nib.load(path), axis, None, None), expected)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"case_glob": "*/", "sequences": {"ct": "ct.nii.gz"}}, "cannot be combined"),
        ({"structure_names": {"liver": "liver"}, "finding_structures": ["tumour"]}, "finding_structures"),
        ({"structure_glob": "../segmentations/*.nii.gz"}, "relative"),
        ({"structure_glob": None, "structure_names": {"liver": "liver"}}, "need layout.structure_glob"),
    ],
)
def test_layout_rejects_unusable_structure_parameters(layout, message):
    with pytest.raises(ValidationError, match=message):
        spec_for(**layout)
