"""2D ingest: image decoding and the image_folder / image_mask / image_csv / coco families.

Files are real encodings written by Pillow, tifffile and the csv module (or real dataset
files copied into tmp_path); nothing is mocked.
"""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image, PngImagePlugin

from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.imaging.image_io import ImageReadError, read_image, read_mask
from medtrinity_assets.paths import realdata_dir
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import (
    IngestContext,
    Quarantined,
    patient_hash,
    record_id_for,
)
from medtrinity_assets.storage import BlobStore

REALDATA = realdata_dir()
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is not present")

BASE_SPEC = {
    "name": "test source",
    "description": "written by the test",
    "homepage": "https://example.org/",
    "license": "CC0",
    "citation": "none",
    "access": "open",
    "modality": "ultrasound",
    "organs": ["breast"],
    "diseases": ["breast lesion"],
    "annotation_kinds": ["mask"],
    "approx_size": "tiny",
}


@pytest.fixture
def ingest(tmp_path):
    """Build a context (BlobStore under tmp_path, salt "test-salt") and split its stream."""

    def run(layout: dict, root, **spec_fields):
        spec = SourceSpec.model_validate({**BASE_SPEC, "id": "t_src", "layout": layout, **spec_fields})
        ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
        items = list(read_source(ctx))
        records = [item for item in items if isinstance(item, dict)]
        quarantined = [item for item in items if isinstance(item, Quarantined)]
        assert len(records) + len(quarantined) == len(items)
        return ctx, records, quarantined

    return run


def save_png(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------- image_io


def test_read_image_keeps_16_bit_grayscale(tmp_path):
    array = np.arange(0, 60000, 1000, dtype=np.uint16).reshape(6, 10)
    tifffile.imwrite(tmp_path / "x.tif", array)
    Image.fromarray(array).save(tmp_path / "x.png")
    for name in ("x.tif", "x.png"):
        pixels, photometric = read_image(tmp_path / name)
        assert pixels.dtype == np.uint16 and photometric == "MONOCHROME2"
        np.testing.assert_array_equal(pixels, array)


def test_read_image_collapses_equal_channels_and_keeps_colour(tmp_path):
    gray = noise((12, 9))
    save_png(tmp_path / "gray_as_rgb.png", np.stack([gray] * 3, axis=2))
    pixels, photometric = read_image(tmp_path / "gray_as_rgb.png")
    assert pixels.shape == (12, 9) and photometric == "MONOCHROME2"
    np.testing.assert_array_equal(pixels, gray)

    colour = noise((12, 9, 3), seed=1)
    save_png(tmp_path / "colour.png", colour)
    pixels, photometric = read_image(tmp_path / "colour.png")
    assert photometric == "RGB" and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, colour)


def test_read_image_rgba_and_palette_become_rgb(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 200, 50, 255
    rgba[0, 0, 3] = 0  # fully transparent corner composites to black
    save_png(tmp_path / "rgba.png", rgba)
    pixels, photometric = read_image(tmp_path / "rgba.png")
    assert photometric == "RGB" and pixels.shape == (4, 4, 3)
    assert tuple(pixels[0, 0]) == (0, 0, 0) and tuple(pixels[1, 1]) == (200, 50, 0)

    palette = Image.fromarray(noise((8, 8, 3), seed=2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    pixels, photometric = read_image(tmp_path / "palette.png")
    assert photometric == "RGB" and pixels.shape == (8, 8, 3)
    np.testing.assert_array_equal(pixels, np.asarray(palette.convert("RGB")))


def test_read_image_applies_exif_orientation(tmp_path):
    array = noise((10, 20, 3), seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(array).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels, _ = read_image(tmp_path / "rotated.jpg")
    assert pixels.shape[:2] == (20, 10)


def test_no_metadata_reaches_the_record(tmp_path, ingest):
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", "DOE^JANE")
    save_png(tmp_path / "src" / "a.png", noise((5, 5)), pnginfo=info)
    assert b"DOE^JANE" in (tmp_path / "src" / "a.png").read_bytes()
    ctx, records, _ = ingest({"family": "image_folder", "image_glob": "*.png"}, tmp_path / "src")
    stored = ctx.blobs.path(records[0]["pixel_ref"]).read_bytes()
    assert b"DOE^JANE" not in stored and "DOE^JANE" not in json.dumps(records[0])


@pytest.mark.parametrize(
    "content, cause",
    [(b"", "empty"), (b"this is a text file", "not an image"), ("truncated", "truncated")],
)
def test_read_image_errors_name_file_and_cause(tmp_path, content, cause):
    path = tmp_path / "bad.png"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(noise((64, 64, 3))).save(buffer, format="PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    assert str(path) in str(error.value) and cause in str(error.value)


def test_read_mask_binarizes_rgb_and_lossy_jpeg(tmp_path):
    truth = np.zeros((32, 32), dtype=bool)
    truth[8:24, 4:20] = True
    save_png(tmp_path / "m.png", np.stack([truth.astype(np.uint8) * 255] * 3, axis=2))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", binarize=True), truth.astype(np.uint8))

    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "m.jpg", quality=60)
    raw = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert len(np.unique(raw)) > 2  # the JPEG really is lossy
    assert (read_mask(tmp_path / "m.jpg", binarize=True) != truth).mean() < 0.01


def test_read_mask_miccai_text_format(tmp_path):
    # The example of the MICCAI 2015 README: a 5x4 image with two nuclei.
    labels = np.array([[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 2, 0, 0], [0, 2, 2, 2, 0]])
    (tmp_path / "m.txt").write_text("5 4\n" + "\n".join(str(v) for v in labels.ravel()) + "\n")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.txt", binarize=False), labels)
    np.testing.assert_array_equal(
        read_mask(tmp_path / "m.txt", binarize=True, rule="any_nonzero"), (labels > 0).astype(np.uint8)
    )
    (tmp_path / "short.txt").write_text("5 4\n0\n1\n")
    with pytest.raises(ImageReadError, match="20 values, file has 2"):
        read_mask(tmp_path / "short.txt", binarize=False)


# ---------------------------------------------------------------- image_folder


def test_image_folder_labels_from_folders_and_quarantines_bad_file(tmp_path, ingest):
    root = tmp_path / "src"
    save_png(root / "pneumonia" / "p1.png", noise((6, 7), 1))
    save_png(root / "pneumonia" / "p2.png", noise((6, 7), 2))
    save_png(root / "normal" / "n1.png", noise((6, 7), 3))
    (root / "normal" / "broken.png").write_bytes(b"")
    (root / "README.md").write_text("not an image")
    _, records, quarantined = ingest(
        {"family": "image_folder", "image_glob": "**/*.png"},
        root,
        labels={"source": "folder", "folder_depth": 0, "rename": {"normal": "", "pneumonia": "Pneumonia"}},
        patient={"source": "regex", "pattern": r"/(\w)\d"},
    )
    by_file = {r["source_file"]: r for r in records}
    assert sorted(by_file) == ["normal/n1.png", "pneumonia/p1.png", "pneumonia/p2.png"]
    assert by_file["normal/n1.png"]["labels"] == []
    assert by_file["pneumonia/p1.png"]["labels"] == ["pneumonia"]
    assert by_file["pneumonia/p1.png"]["patient_hash"] == by_file["pneumonia/p2.png"]["patient_hash"]
    assert by_file["pneumonia/p1.png"]["patient_hash"] != by_file["normal/n1.png"]["patient_hash"]
    assert [(q.source_file, "empty" in q.reason) for q in quarantined] == [("normal/broken.png", True)]


# ---------------------------------------------------------------- image_mask

BUSI_LAYOUT = {
    "family": "image_mask",
    "image_glob": "*/images/*.png",
    "mask_replace": [{"old": "/images/", "new": "/mask/"}, {"old": ".png", "new": "_mask.png"}],
    "extra_mask_glob": "{mask_stem}_[0-9]*.png",
}
BUSI_LABELS = {"source": "folder", "rename": {"benign": "benign breast tumor", "normal": ""}}


@needs_realdata
def test_image_mask_on_copied_busi_files(tmp_path, ingest):
    root = tmp_path / "busi"
    for name in ["benign/images/benign (4).png", "benign/mask/benign (4)_mask.png", "benign/mask/benign (4)_mask_1.png",
                 "benign/images/benign (1).png", "benign/mask/benign (1)_mask.png",
                 "normal/images/normal (1).png", "normal/mask/normal (1)_mask.png",
                 "benign/images/benign (2).png", "benign/images/benign (3).png", "benign/mask/benign (3)_mask.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REALDATA / "busi" / name, root / name)
    # A mask of another size than its image: quarantined, never cropped or stretched.
    bad = np.asarray(Image.open(root / "benign/mask/benign (3)_mask.png"))
    Image.fromarray(bad[:400, :500]).save(root / "benign/mask/benign (3)_mask.png")

    ctx, records, quarantined = ingest(BUSI_LAYOUT, root, labels=BUSI_LABELS)
    reasons = {q.source_file: q.reason for q in quarantined}
    assert reasons["benign/images/benign (2).png"] == "mask benign/mask/benign (2)_mask.png is absent"
    image_size = Image.open(root / "benign/images/benign (3).png").size
    assert reasons["benign/images/benign (3).png"].startswith(
        f"mask 500x400 differs from image {image_size[0]}x{image_size[1]}")
    by_file = {r["source_file"]: r for r in records}
    assert sorted(by_file) == ["benign/images/benign (1).png", "benign/images/benign (4).png", "normal/images/normal (1).png"]

    two = json.loads(by_file["benign/images/benign (4).png"]["annotations"])
    assert [a["label"] for a in two] == ["benign breast tumor"] * 2
    for annotation, mask_file in zip(two, ["benign (4)_mask.png", "benign (4)_mask_1.png"]):
        expected = np.asarray(Image.open(root / "benign/mask" / mask_file).convert("L")) > 127
        np.testing.assert_array_equal(ctx.blobs.get_array(annotation["mask_ref"]), expected.astype(np.uint8))
    normal = by_file["normal/images/normal (1).png"]
    assert normal["annotations"] == "[]" and normal["labels"] == []
    assert by_file["benign/images/benign (1).png"]["modality"] == "ultrasound"


def test_image_mask_optional_and_instances(tmp_path, ingest):
    root = tmp_path / "nuclei"
    labels = np.zeros((6, 8), dtype=np.int64)
    labels[1:3, 1:3], labels[4:6, 5:8] = 1, 7
    save_png(root / "image01.png", noise((6, 8, 3)))
    (root / "image01_mask.txt").write_text("8 6\n" + "\n".join(map(str, labels.ravel())))
    save_png(root / "image02.png", noise((6, 8, 3), 5))  # no mask file
    layout = {"family": "image_mask", "image_glob": "image*.png", "mask_replace": [{"old": ".png", "new": "_mask.txt"}],
              "instances": True, "mask_label": "nucleus", "mask_optional": True}
    ctx, records, quarantined = ingest(layout, root, modality="histopathology")
    assert quarantined == []
    first, second = records
    (annotation,) = json.loads(first["annotations"])
    assert annotation["instances"] is True and annotation["label"] == "nucleus" and annotation["instance_count"] == 2
    np.testing.assert_array_equal(ctx.blobs.get_array(annotation["mask_ref"]), labels)
    assert second["annotations"] == "[]"


# ---------------------------------------------------------------- image_csv

CSV_LAYOUT = {
    "family": "image_csv",
    "csv": "meta.csv",
    "id_column": "filename",
    "path_template": "{folder}/{id}",
    "label_column": "finding",
    "label_separator": ",",
    "modality_column": "modality",
    "modality_map": {"X-ray": "xray", "CT": "ct"},
}


def write_csv(path, rows, encoding="utf-8"):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))


def test_image_csv_rows_labels_modality_and_bad_rows(tmp_path, ingest):
    root = tmp_path / "src"
    for name, seed in [("a.png", 1), ("b.png", 2), ("c.png", 3), ("é.png", 4)]:
        save_png(root / "images" / name, noise((5, 6), seed))
    note = "Elderly woman seen at St. Example hospital on 3 March"
    write_csv(
        root / "meta.csv",
        [
            ["patientid", "finding", "modality", "folder", "filename", "clinical_notes"],
            ["7", "COVID-19, ARDS", "X-ray", "images", "a.png", note],
            ["7", "COVID-19", "CT", "images", "b.png", note],
            ["8", "No Finding", "X-ray", "images", "c.png", note],
            ["9", "COVID-19", "X-ray", "images", "missing.png", note],
            ["9", "COVID-19", "Ultrasound", "images", "c.png", note],
            ["10", "Pneumonia", "X-ray", "images", "é.png", "na\u00efve patient"],  # latin-1 bytes
        ],
        encoding="latin-1",
    )
    ctx, records, quarantined = ingest(
        CSV_LAYOUT, root, modality="xray", organs=["lung"],
        labels={"rename": {"COVID-19": "covid-19 pneumonia", "ARDS": "acute respiratory distress syndrome", "No Finding": ""}},
        patient={"source": "column", "column": "patientid"},
    )
    by_file = {r["source_file"]: r for r in records}
    assert sorted(by_file) == ["images/a.png", "images/b.png", "images/c.png"]
    assert by_file["images/a.png"]["labels"] == ["acute respiratory distress syndrome", "covid-19 pneumonia"]
    assert by_file["images/c.png"]["labels"] == []
    assert (by_file["images/a.png"]["modality"], by_file["images/b.png"]["modality"]) == ("xray", "ct")
    assert by_file["images/a.png"]["patient_hash"] == by_file["images/b.png"]["patient_hash"]
    assert by_file["images/a.png"]["patient_hash"] == patient_hash("test-salt", "t_src", "column:7")
    assert all(note not in json.dumps(r) and "7" != r["patient_hash"] for r in records)

    reasons = sorted((q.source_file, q.reason) for q in quarantined)
    assert reasons == [
        ("images/c.png", "modality 'Ultrasound' (column modality) is not in modality_map"),
        ("images/missing.png", "metadata row names an absent image: listed in meta.csv but file is absent"),
        ("images/é.png", "image has no metadata row in meta.csv"),
        ("meta.csv:7", "meta.csv line 7: row holds bytes that are not valid utf-8; "
                       "declare the publisher's encoding in the spec (encoding: latin-1, cp1252, ...)"),
    ]


def test_image_csv_multilabel_columns_and_missing_column(tmp_path, ingest):
    root = tmp_path / "src"
    for index in range(3):
        save_png(root / "imgs" / f"ISIC_{index}.jpg", noise((4, 4, 3), index), format="JPEG")
    write_csv(root / "gt.csv", [["image_id", "melanoma", "seborrheic_keratosis"],
                                ["ISIC_0", "1.0", "0.0"], ["ISIC_1", "0.0", "yes"], ["ISIC_2", "0", "0"]])
    layout = {"family": "image_csv", "csv": "gt.csv", "id_column": "image_id", "path_template": "imgs/{id}.jpg",
              "label_columns": ["melanoma", "seborrheic_keratosis"]}
    _, records, quarantined = ingest(layout, root, modality="dermoscopy",
                                     labels={"rename": {"seborrheic_keratosis": "seborrheic keratosis"}})
    assert quarantined == []
    assert [r["labels"] for r in records] == [["melanoma"], ["seborrheic keratosis"], []]
    # Both flags 0 and no all-negative rule declared: nothing is known, never "normal".
    assert [r["label_state"] for r in records] == ["finding", "finding", "unknown"]

    _, records, quarantined = ingest({**layout, "label_columns": ["nevus"]}, root, modality="dermoscopy")
    assert records == [] and "layout.label_columns[0] names column 'nevus'" in quarantined[0].reason
    assert "gt.csv" in quarantined[0].reason


# ---------------------------------------------------------------- coco


def test_coco_boxes_polygons_and_bad_entries(tmp_path, ingest):
    root = tmp_path / "src"
    save_png(root / "imgs" / "one.png", noise((100, 80)))
    save_png(root / "imgs" / "two.png", noise((100, 80), 2))
    coco = {
        "categories": [{"id": 1, "name": "ActiveTuberculosis"}, {"id": 2, "name": "Lung"}],
        "images": [
            {"id": 1, "file_name": "one.png", "width": 80, "height": 100},
            {"id": 2, "file_name": "two.png", "width": 80, "height": 100},
            {"id": 3, "file_name": "gone.png", "width": 80, "height": 100},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [70.5, 10.2, 30, 20], "segmentation": []},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [200, 200, 10, 10]},
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10],
             "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]]},
        ],
    }
    (root / "ann.json").write_text(json.dumps(coco))
    _, records, quarantined = ingest(
        {"family": "coco", "annotations": "ann.json", "image_root": "imgs"}, root,
        modality="xray", annotation_kinds=["box"], labels={"rename": {"ActiveTuberculosis": "active tuberculosis"}},
    )
    one, two = records
    annotations = json.loads(one["annotations"])
    assert {"kind": "box", "label": "active tuberculosis", "box": [70, 10, 80, 31], "coco_id": 10} in annotations
    assert {"kind": "contour", "label": "lung", "points": [[1, 1], [9, 1], [9, 9], [1, 9]], "coco_id": 12} in annotations
    assert len(annotations) == 2 and one["labels"] == ["active tuberculosis", "lung"]
    assert two["annotations"] == "[]" and two["labels"] == []
    outside = [q for q in quarantined if q.source_file == "imgs/one.png"]
    assert len(outside) == 1 and "lies outside" in outside[0].reason
    assert outside[0].record_id == record_id_for("t_src", "imgs/one.png", None, -1) == one["record_id"]
    assert [(q.source_file, q.reason) for q in quarantined if q is not outside[0]] == [
        ("imgs/gone.png", "listed in ann.json but file is absent")]


def test_labels_from_a_file_name_pattern(tmp_path, ingest):
    # Shenzhen / Montgomery: the tuberculosis label is the file name's suffix, _0 or _1.
    root = tmp_path / "src"
    for i, name in enumerate(("CHNCXR_0001_0.png", "CHNCXR_0002_1.png", "CHNCXR_0003.png")):
        save_png(root / "CXR_png" / name, noise((32, 32), seed=i))
    _, records, quarantined = ingest(
        {"family": "image_folder", "image_glob": "CXR_png/*.png"},
        root,
        labels={"source": "regex", "pattern": "_([01])\\.png$", "rename": {"0": "", "1": "tuberculosis"}},
    )
    assert not quarantined
    assert {r["source_file"]: r["labels"] for r in records} == {
        "CXR_png/CHNCXR_0001_0.png": [], "CXR_png/CHNCXR_0002_1.png": ["tuberculosis"], "CXR_png/CHNCXR_0003.png": []}


def test_label_regex_without_group_is_a_spec_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs one group"):
        SourceSpec.model_validate({**BASE_SPEC, "id": "t_src", "layout": {"family": "image_folder", "image_glob": "*.png"},
                                   "labels": {"source": "regex", "pattern": "_1\\.png$"}})
