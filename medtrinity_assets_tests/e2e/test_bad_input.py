"""Each kind of bad input named in the foundation issue: the file is quarantined with its
reason, the partition still completes to triplets, and the quarantine check reports it."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from spec_factory import build_spec

from medtrinity_assets import stages
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.pipeline import run_checks

SITE = Path(np.__file__).resolve().parent.parent
CT = SITE / "data_store" / "data" / "693_UNCR.dcm"
IHC = SITE / "skimage" / "data" / "ihc.png"
MNI = SITE / "nilearn" / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _spec(root: Path, layout: dict, modality: str = "histopathology", organs=("colon",)) -> SourceSpec:
    return build_spec(
        id="bad_input", modality=modality, organs=list(organs), diseases=["adenocarcinoma"], layout=layout,
        root=str(root), slicing={"rule": "every_k", "every_k": 20, "max_slices": 2},
    )

def truncated_dicom(root: Path) -> tuple[SourceSpec, str, str]:
    shutil.copy(CT, root / "good.dcm")
    (root / "truncated.dcm").write_bytes(CT.read_bytes()[: CT.stat().st_size // 2])
    return _spec(root, {"family": "dicom"}, "ct", ("head", "brain")), "truncated.dcm", ""


def zero_byte_png(root: Path) -> tuple[SourceSpec, str, str]:
    shutil.copy(IHC, root / "good.png")
    (root / "empty.png").write_bytes(b"")
    return _spec(root, {"family": "image_folder", "image_glob": "*.png"}), "empty.png", ""


def mask_of_another_size(root: Path) -> tuple[SourceSpec, str, str]:
    (root / "images").mkdir()
    (root / "masks").mkdir()
    image = Image.open(IHC).convert("RGB")
    mask = np.zeros((image.height, image.width), np.uint8)
    mask[100:200, 150:300] = 255
    for name in ("good", "wrong"):
        image.save(root / "images" / f"{name}.png")
    Image.fromarray(mask).save(root / "masks" / "good.png")
    Image.fromarray(mask).resize((image.width // 2, image.height // 2)).save(root / "masks" / "wrong.png")
    layout = {"family": "image_mask", "image_glob": "images/*.png", "mask_replace": [{"old": "images/", "new": "masks/"}]}
    return _spec(root, layout), "images/wrong.png", ""


def label_volume_of_another_shape(root: Path) -> tuple[SourceSpec, str, str]:
    t1 = nib.load(MNI).slicer[60:120, 70:140, 50:90]
    data = np.asanyarray(t1.dataobj)
    label = (data > np.percentile(data, 80)).astype(np.uint8)
    for name, label_data in (("good", label), ("wrong", label[:, :, :-5])):
        nib.save(nib.Nifti1Image(data, t1.affine), root / f"{name}_image.nii.gz")
        nib.save(nib.Nifti1Image(label_data, t1.affine), root / f"{name}_label.nii.gz")
    layout = {"family": "nifti", "image_glob": "*_image.nii.gz", "label_replace": [{"old": "_image", "new": "_label"}]}
    return _spec(root, layout, "mri", ("brain",)), "wrong_image.nii.gz", "shape"


def csv_row_naming_a_missing_file(root: Path) -> tuple[SourceSpec, str, str]:
    shutil.copy(IHC, root / "slide1.png")
    (root / "labels.csv").write_text("image,finding\nslide1,adenocarcinoma\nslide2,adenocarcinoma\n")
    layout = {"family": "image_csv", "csv": "labels.csv", "id_column": "image", "path_template": "{id}.png", "label_column": "finding"}
    return _spec(root, layout), "slide2.png", "absent"


def non_utf8_metadata(root: Path) -> tuple[SourceSpec, str, str]:
    shutil.copy(IHC, root / "slide1.png")
    # Latin-1 bytes in a file read as UTF-8: the row naming "slidé2" cannot be decoded.
    (root / "labels.csv").write_bytes("image,finding\nslide1,adenocarcinoma\nslidé2,adenocarcinoma\n".encode("latin-1"))
    layout = {"family": "image_csv", "csv": "labels.csv", "id_column": "image", "path_template": "{id}.png", "label_column": "finding"}
    return _spec(root, layout), "", "UTF-8"


@pytest.mark.parametrize(
    "make",
    [truncated_dicom, zero_byte_png, mask_of_another_size, label_volume_of_another_shape,
     csv_row_naming_a_missing_file, non_utf8_metadata],
)
def test_bad_file_is_quarantined_partition_completes_and_check_reports_it(tmp_path, make, shared_knowledge):
    source = tmp_path / "source"
    source.mkdir()
    spec, bad_file, reason_word = make(source)
    root = shared_knowledge.copy_to(DataRoot(tmp_path / "var"))

    ingest = stages.run_ingest(spec, root, "salt")
    assert ingest.rows >= 1 and ingest.quarantined == 1, ingest.kinds
    import duckdb

    quarantined = duckdb.connect().sql(
        f"SELECT source_file, reason FROM read_parquet('{root.quarantine('raw_records', spec.id)}')"
    ).fetchall()
    (file, reason), = quarantined
    if bad_file:
        assert file == bad_file
    assert reason and reason_word.lower() in reason.lower()

    for runner in (stages.run_normalize, stages.run_ground, stages.run_facts, stages.run_coarse_captions,
                   stages.run_retrieval, stages.run_descriptions, stages.run_triplets):
        runner(spec, root)
    triplets = duckdb.connect().sql(f"SELECT count(*) FROM read_parquet('{root.table('triplets', spec.id)}')").fetchall()[0][0]
    assert triplets == ingest.rows  # everything readable made it to the end

    outcome = next(o for o in run_checks("raw_records", root, spec.id) if o.name == "quarantine_rate")
    assert outcome.metadata["quarantined"] == 1
    assert [r["files"] for r in outcome.metadata["by_kind"]] == [1]


def test_annotation_files_cannot_point_outside_the_source_folder(tmp_path):
    # A path in a COCO JSON, a label CSV or a caption file is data, not a licence to read
    # anywhere: "../" and absolute names are quarantined, and nothing outside is ingested.
    import json

    from PIL import Image

    from medtrinity_assets.sources import IngestContext, Quarantined, read_source
    from medtrinity_assets.storage import BlobStore

    outside = tmp_path / "outside.png"
    Image.new("L", (8, 8), 7).save(outside)
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    Image.new("L", (8, 8), 9).save(root / "images" / "ok.png")
    (root / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": "../../outside.png"},
                   {"id": 3, "file_name": str(outside)}, {"id": [4], "file_name": "images/ok.png"}],
        "annotations": [None, {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": [[1, None, 2, 2, 3, 3]]}],
        "categories": [{"id": 1, "name": "lesion"}],
    }))
    (root / "labels.csv").write_text("image,finding\nok,lesion\n../../outside,lesion\n")
    (root / "qa.json").write_text(json.dumps([{"image": "ok.png", "q": "Is it?", "a": "yes"},
                                              {"image": "../../outside.png", "q": "Is it?", "a": "no"}]))
    layouts = {
        "coco": {"family": "coco", "annotations": "coco.json", "image_root": "images"},
        "csv": {"family": "image_csv", "csv": "labels.csv", "id_column": "image", "path_template": "images/{id}.png",
                "label_column": "finding", "unlisted_images": "ignore"},
        "captions": {"family": "captions", "annotations": "qa.json", "image_field": "image", "image_template": "images/{value}",
                     "question_field": "q", "answer_field": "a"},
    }
    for name, layout in layouts.items():
        spec = build_spec(root=str(root), layout=layout)
        items = list(read_source(IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / name), salt="s")))
        records = [i for i in items if isinstance(i, dict)]
        assert [r["source_file"] for r in records] == ["images/ok.png"], name
        reasons = " | ".join(i.reason for i in items if isinstance(i, Quarantined))
        assert "outside the source folder" in reasons, (name, reasons)
