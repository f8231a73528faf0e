"""Every catalog entry for ../shared/realdata ingests, with counts checked against the dataset's
own files, CSVs and annotation JSONs (read here with plain Pillow / csv / json / tifffile)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medtrinity_assets.catalog.load import load_spec, source_root
from medtrinity_assets.paths import REPO_ROOT, realdata_dir
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined

REALDATA = realdata_dir()
pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is not present")
CATALOG = REPO_ROOT / "data" / "sources"
REALDATA_SOURCES = {
    "busi": ("busi", "ultrasound", ["breast"]),
    "ham10000": ("ham10000", "dermoscopy", ["skin"]),
    "isic2017": ("isic2017", "dermoscopy", ["skin"]),
    "covid_chestxray": ("covid_chestxray", "xray", ["lung"]),
    "cxr_samples_tbx11k": ("cxr_samples", "xray", ["lung"]),
    "dsb2018": ("dsb2018", "microscopy", ["cell nucleus"]),
    "miccai15_nuclei": ("miccai15_nuclei", "histopathology", ["brain", "head and neck"]),
    "ibsi_sts_nifti": ("ibsi_sts", "ct", ["soft tissue", "extremity"]),
    "ibsi_sts_dicom": ("ibsi_sts", "ct", ["soft tissue", "extremity"]),
}


def ingest(source_id: str, tmp_path):
    from medtrinity_assets.storage import BlobStore

    spec = load_spec(CATALOG / f"{source_id}.yaml")
    ctx = IngestContext(spec=spec, root=source_root(spec), blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    records = [item for item in items if isinstance(item, dict)]
    quarantined = [item for item in items if isinstance(item, Quarantined)]
    return ctx, records, quarantined


@pytest.mark.parametrize("source_id", sorted(REALDATA_SOURCES))
def test_spec_points_at_realdata_with_its_modality(source_id):
    folder, modality, organs = REALDATA_SOURCES[source_id]
    spec = load_spec(CATALOG / f"{source_id}.yaml")
    assert spec.root == f"../shared/realdata/{folder}"
    assert source_root(spec) == REALDATA.resolve() / folder
    assert (spec.modality, spec.organs) == (modality, organs)


def test_busi_masks_and_classes(tmp_path):
    ctx, records, quarantined = ingest("busi", tmp_path)
    root = REALDATA / "busi"
    images = sorted(p.relative_to(root).as_posix() for p in root.glob("*/images/*.png"))
    assert quarantined == [] and sorted(r["source_file"] for r in records) == images
    channel_counts = {1: 0, 3: 0}
    for record in records:
        image = Path(record["source_file"])
        masks = sorted((root / image.parent.parent / "mask").glob(f"{image.stem}_mask*.png"))
        non_empty = [m for m in masks if np.asarray(Image.open(m)).max() > 0]
        annotations = json.loads(record["annotations"])
        assert len(annotations) == len(non_empty), record["source_file"]
        klass = image.parts[0]
        assert record["labels"] == ({"benign": ["benign breast tumor"], "malignant": ["malignant breast tumor"]}.get(klass, []))
        assert all(a["label"] == record["labels"][0] for a in annotations)
        # BUSI stores grayscale scans as RGB PNGs; one (benign 6) carries a coloured overlay.
        rgb = np.asarray(Image.open(root / image).convert("RGB"))
        grayscale = bool((rgb == rgb[:, :, :1]).all())
        assert record["channels"] == (1 if grayscale else 3), record["source_file"]
        channel_counts[record["channels"]] += 1
    assert sum(len(json.loads(r["annotations"])) for r in records) == 17  # 16 masked images, one with 2 masks
    assert channel_counts[1] > channel_counts[3] >= 1


def test_ham10000_masks_match_files(tmp_path):
    ctx, records, quarantined = ingest("ham10000", tmp_path)
    assert quarantined == [] and len(records) == len(list((REALDATA / "ham10000/test_images").glob("*.jpg")))
    for record in records:
        (annotation,) = json.loads(record["annotations"])
        mask_file = REALDATA / "ham10000/test_masks" / (Path(record["source_file"]).stem + ".png")
        expected = (np.asarray(Image.open(mask_file)) > 127).astype(np.uint8)
        np.testing.assert_array_equal(ctx.blobs.get_array(annotation["mask_ref"]), expected)
        assert annotation["label"] == "pigmented skin lesion" and record["photometric"] == "RGB"


def test_isic2017_labels_from_csv_and_absent_files(tmp_path):
    _, records, quarantined = ingest("isic2017", tmp_path)
    root = REALDATA / "isic2017"
    with open(root / "ISIC-2017_Training_Classes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    present = {p.stem for p in (root / "ISIC-2017_Training_Data").glob("*.jpg")}
    assert len(records) == len(present) and len(quarantined) == len(rows) - len(present)
    expected = {row["image_id"]: (["melanoma"] if float(row["melanoma"]) == 1.0 else []) for row in rows}
    for record in records:
        assert record["labels"] == expected[Path(record["source_file"]).stem]
    assert any(r["labels"] == ["melanoma"] for r in records)
    assert all("but file is absent" in q.reason for q in quarantined)


def test_covid_rows_modalities_and_the_absent_image(tmp_path):
    _, records, quarantined = ingest("covid_chestxray", tmp_path)
    root = REALDATA / "covid_chestxray"
    with open(root / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    absent = [row for row in rows if not (root / row["folder"] / row["filename"]).is_file()]
    assert len(absent) == 1 and len(records) == len(rows) - 1
    assert [(q.source_file, "but file is absent" in q.reason) for q in quarantined] == [
        (f"images/{absent[0]['filename']}", True)]
    by_file = {r["source_file"]: r for r in records}
    for row in rows:
        record = by_file.get(f"{row['folder']}/{row['filename']}")
        if record:
            assert record["modality"] == {"X-ray": "xray", "CT": "ct"}[row["modality"]]
            assert record["labels"] == ["covid-19 pneumonia" if row["finding"] == "COVID-19" else "acute respiratory distress syndrome"]
    # Notes are kept, de-identified (test_publisher_text.py): the ones that carry dates never verbatim.
    text = json.dumps(records)
    dated = [row["clinical_notes"] for row in rows if "January" in row["clinical_notes"]]
    assert dated and not any(note[:40] in text for note in dated) and "January" not in text
    same_patient = [by_file[f"images/{row['filename']}"]["patient_hash"] for row in rows if row["patientid"] == "19"]
    assert len(same_patient) == 8 and len(set(same_patient)) == 1


def test_tbx11k_boxes_match_json(tmp_path):
    _, records, quarantined = ingest("cxr_samples_tbx11k", tmp_path)
    root = REALDATA / "cxr_samples"
    coco = json.loads((root / "tbx11k_test_data/annotations/json/TBX11K_train.json").read_text())
    assert quarantined == [] and len(records) == len(coco["images"])
    boxes = [a for r in records for a in json.loads(r["annotations"])]
    assert len(boxes) == len(coco["annotations"]) and {a["kind"] for a in boxes} == {"box"}
    by_id = {a["coco_id"]: a for a in boxes}
    for obj in coco["annotations"]:
        x, y, w, h = obj["bbox"]
        assert by_id[obj["id"]]["box"] == [int(np.floor(x)), int(np.floor(y)), int(np.ceil(x + w)), int(np.ceil(y + h))]
    healthy = [r for r in records if "/health/" in r["source_file"]]
    assert healthy and all(r["labels"] == [] for r in healthy)


def test_dsb2018_instance_mask(tmp_path):
    ctx, records, quarantined = ingest("dsb2018", tmp_path)
    assert quarantined == [] and len(records) == 1
    (record,) = records
    labels = tifffile.imread(REALDATA / "dsb2018/images/mask2d.tif")
    (annotation,) = json.loads(record["annotations"])
    assert annotation["instances"] is True and annotation["instance_count"] == len(np.unique(labels)) - 1
    np.testing.assert_array_equal(ctx.blobs.get_array(annotation["mask_ref"]), labels)
    assert record["pixel_dtype"] == "uint16" and record["modality"] == "microscopy"


def test_miccai15_text_masks(tmp_path):
    ctx, records, quarantined = ingest("miccai15_nuclei", tmp_path)
    root = REALDATA / "miccai15_nuclei"
    assert quarantined == [] and len(records) == len(list(root.glob("image[0-9][0-9].png")))
    for record in records:
        text = (root / record["source_file"].replace(".png", "_mask.txt")).read_text().split()
        width, height = int(text[0]), int(text[1])
        labels = np.array(text[2:], dtype=np.int64).reshape(height, width)
        (annotation,) = json.loads(record["annotations"])
        np.testing.assert_array_equal(ctx.blobs.get_array(annotation["mask_ref"]), labels)
        assert (record["height"], record["width"], record["channels"]) == (height, width, 3)


def test_ibsi_nifti_spec_pairs_images_with_masks_and_modalities():
    spec = load_spec(CATALOG / "ibsi_sts_nifti.yaml")
    root = source_root(spec)
    images = sorted(p.relative_to(root).as_posix() for p in root.glob(spec.layout.image_glob))
    assert len(images) == 3
    for image in images:
        mask = image
        for rule in spec.layout.label_replace:
            mask = mask.replace(rule.old, rule.new)
        assert (root / mask).is_file()
    modalities = {re.search(r"/(\w+)_image", image).group(1): spec.modality_for(image) for image in images}
    assert modalities == {"CT": "ct", "MR_T1": "mri", "PET": "pet"}


def test_ibsi_nifti_pet_is_suv_as_the_spec_says(tmp_path):
    # NIfTI headers carry no units; the spec states the IBSI PET volume is SUV.
    _, records, _ = ingest("ibsi_sts_nifti", tmp_path)
    units = {(r["modality"], r["pixel_units"]) for r in records}
    assert units == {("ct", "HU"), ("mri", "raw"), ("pet", "SUV")}
