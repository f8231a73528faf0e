"""The ``boxes`` family (YOLO, VOC, CSV rows, MIAS circles) and the ``extra_boxes`` overlay.

Fixtures are real files written in tmp_path: PNG/PGM by Pillow, XML by ElementTree, YOLO text,
CSV by the csv module, a DICOM file pydicom ships. Expected pixel boxes are computed in each
test from the coordinates it wrote, by the format's own convention.
"""

from __future__ import annotations

import csv
import json
import shutil
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import REALDATA, needs_realdata
from PIL import Image
from pydicom.data import get_testdata_file
from spec_factory import build_spec

from medtrinity_assets.catalog.load import load_spec, source_root
from medtrinity_assets.paths import REPO_ROOT
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined, record_id_for
from medtrinity_assets.sources.boxes import NOT_IN_SOURCE
from medtrinity_assets.storage import BlobStore


def ingest(tmp_path, root, layout, **spec_fields):
    fields = {"id": "box_src", "modality": "xray", "organs": ["lung"], "annotation_kinds": ["box"], **spec_fields}
    spec = build_spec(layout=layout, **fields)
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    records = [item for item in items if isinstance(item, dict)]
    quarantined = [item for item in items if isinstance(item, Quarantined)]
    return records, quarantined


def save_image(path, height, width, seed=0, suffix_format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=suffix_format)
    return pixels


def boxes_of(record):
    return [(a["label"], a["box"]) for a in json.loads(record["annotations"])]


def write_csv(path, header, rows, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


# ------------------------------------------------------------------------- Pascal VOC


def write_voc(path, objects, size=None):
    annotation = ElementTree.Element("annotation")
    if size:
        size_element = ElementTree.SubElement(annotation, "size")
        ElementTree.SubElement(size_element, "width").text = str(size[0])
        ElementTree.SubElement(size_element, "height").text = str(size[1])
    for name, corners, difficult in objects:
        obj = ElementTree.SubElement(annotation, "object")
        if name is not None:
            ElementTree.SubElement(obj, "name").text = name
        ElementTree.SubElement(obj, "difficult").text = str(difficult)
        if corners is not None:
            bndbox = ElementTree.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), corners):
                ElementTree.SubElement(bndbox, tag).text = str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(annotation).write(path)


def test_voc_boxes_are_one_based_inclusive_and_bad_objects_reported(tmp_path):
    root = tmp_path / "voc"
    width, height = 120, 90
    for stem in ("a", "b", "c"):
        save_image(root / "JPEGImages" / f"{stem}.png", height, width)
    whole_image = (1, 1, width, height)  # VOC: the first pixel is 1, the last one is included
    nodule = (11, 21, 30, 40)
    write_voc(root / "Annotations/a.xml", [("nodule", whole_image, 0), ("nodule", nodule, 1),
                                           ("nodule", (500, 500, 600, 600), 0), ("mass", None, 0)], size=(width, height))
    (root / "Annotations/b.xml").write_text("<annotation><object><name>x</name>")  # truncated XML
    records, quarantined = ingest(tmp_path, root, {
        "family": "boxes", "image_glob": "JPEGImages/*.png",
        "boxes": {"format": "voc", "annotation_template": "Annotations/{stem}.xml"}})

    assert [r["source_file"] for r in records] == ["JPEGImages/a.png", "JPEGImages/b.png", "JPEGImages/c.png"]
    a, b, c = records
    annotations = json.loads(a["annotations"])
    to_pixels = lambda xmin, ymin, xmax, ymax: [xmin - 1, ymin - 1, xmax, ymax]
    assert [x["box"] for x in annotations] == [[0, 0, width, height], to_pixels(*nodule)] == [[0, 0, 120, 90], [10, 20, 30, 40]]
    assert [x["difficult"] for x in annotations] == [False, True] and a["labels"] == ["nodule"]
    assert boxes_of(b) == [] and boxes_of(c) == []  # c has no XML: an image without objects
    assert any(q.source_file == "Annotations/b.xml" and "malformed VOC XML of JPEGImages/b.png" in q.reason for q in quarantined)
    assert any(q.source_file == "Annotations/a.xml object 4" and "lacks <name> or a numeric <bndbox>" in q.reason for q in quarantined)
    outside = [q for q in quarantined if q.source_file == "JPEGImages/a.png"]
    assert len(outside) == 1 and "lies outside the 120x90 image" in outside[0].reason
    assert outside[0].record_id == a["record_id"] and len(quarantined) == 3, quarantined


# ------------------------------------------------------------------------- YOLO


@pytest.mark.parametrize("names_file, names_text", [
    ("classes.txt", "nodule\nmass\n"),
    ("data.yaml", "path: .\nnames:\n  0: nodule\n  1: mass\n"),
])
def test_yolo_normalized_boxes_classes_and_bad_lines(tmp_path, names_file, names_text):
    root = tmp_path / "yolo"
    width, height = 200, 100
    for stem in ("p1", "p2", "p3", "p4"):
        save_image(root / "images" / f"{stem}.png", height, width)
    (root / names_file).write_text(names_text)
    (root / "labels").mkdir()
    cx, cy, w, h = 0.5, 0.5, 0.2, 0.4
    (root / "labels/p1.txt").write_text(f"0 {cx} {cy} {w} {h}\n1 0.9 0.1 0.1 0.1\n")
    (root / "labels/p2.txt").write_text("5 0.5 0.5 0.1 0.1\n1 0.5 abc 0.1 0.1\n0 0.5 0.5 0.1\n")
    (root / "labels/p3.txt").write_text("")  # YOLO's background image: no object
    records, quarantined = ingest(tmp_path, root, {
        "family": "boxes", "image_glob": "images/*.png",
        "boxes": {"format": "yolo", "annotation_template": "labels/{stem}.txt", "class_names_file": names_file}})

    p1, p2, p3, p4 = records
    expected = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    assert boxes_of(p1) == [("nodule", [round(v) for v in expected]), ("mass", [170, 5, 190, 15])]
    assert boxes_of(p1)[0][1] == [80, 30, 120, 70] and p1["labels"] == ["mass", "nodule"]
    assert boxes_of(p2) == boxes_of(p3) == boxes_of(p4) == []
    assert [(q.source_file, q.reason.split(" (")[0]) for q in quarantined] == [
        ("labels/p2.txt:1", "class index 5 is out of range"),
        ("labels/p2.txt:2", "malformed YOLO line"),
        ("labels/p2.txt:3", "malformed YOLO line"),
    ]


def test_yolo_absent_class_names_file_reported_images_kept(tmp_path):
    root = tmp_path / "yolo"
    save_image(root / "images/x.png", 10, 10)
    records, quarantined = ingest(tmp_path, root, {
        "family": "boxes", "image_glob": "images/*.png",
        "boxes": {"format": "yolo", "annotation_template": "labels/{stem}.txt", "class_names_file": "obj.names"}})
    assert len(records) == 1 and [(q.source_file, q.reason) for q in quarantined] == [
        ("obj.names", "YOLO class names file is absent")]


# ------------------------------------------------------------------------- CSV rows


def test_csv_rows_rsna_style_several_boxes_empty_rows_and_bad_rows(tmp_path):
    root = tmp_path / "rsna"
    width, height = 64, 48
    for name in ("a", "b", "c", "extra"):
        save_image(root / "train" / f"{name}.png", height, width)
    rows = [
        ["c", "", "", "", "", "0"],  # Target 0: an image without finding, empty box cells
        ["a", "10", "5", "20", "10", "1"],
        ["b", "1", "1", "0", "10", "1"],  # zero width
        ["a", "30", "20", "40", "40", "1"],  # overhangs the image: clamped
        ["b", "100", "100", "5", "5", "1"],  # wholly outside
        ["gone", "1", "1", "5", "5", "1"],
        ["a", "", "", "", "", "1"],  # a finding without coordinates
        ["a", "x", "1", "2", "3", "1"],
    ]
    write_csv(root / "labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    layout = {"family": "boxes", "image_glob": "train/*.png", "boxes": {
        "format": "csv", "file": "labels.csv", "id_column": "patientId", "path_template": "train/{id}.png",
        "label_column": "Target", "empty_labels": ["0"], "box_columns": ["x", "y", "width", "height"],
        "box_format": "xywh"}}
    records, quarantined = ingest(tmp_path, root, layout, labels={"rename": {"1": "lung opacity"}})

    # Table order (first appearance), then the glob's images no row names.
    assert [r["source_file"] for r in records] == ["train/c.png", "train/a.png", "train/b.png", "train/extra.png"]
    c, a, b, extra = records
    assert boxes_of(a) == [("lung opacity", [10, 5, 10 + 20, 5 + 10]), ("lung opacity", [30, 20, width, height])]
    assert a["labels"] == ["lung opacity"] and c["labels"] == b["labels"] == extra["labels"] == []
    assert boxes_of(b) == boxes_of(c) == boxes_of(extra) == []
    by_file = {}
    for q in quarantined:
        by_file.setdefault(q.source_file, []).append(q.reason)
    assert set(by_file) == {"labels.csv:8", "labels.csv:9", "train/gone.png", "train/b.png"}
    assert "gives no coordinates" in by_file["labels.csv:8"][0]
    assert "non-numeric coordinates" in by_file["labels.csv:9"][0]
    assert by_file["train/gone.png"] == ["listed in labels.csv (line 7) but file is absent"]
    assert ["zero or negative size" in r for r in by_file["train/b.png"]] == [True, False]
    assert "lies outside the 64x48 image" in by_file["train/b.png"][1]


@pytest.mark.parametrize("box_format", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("normalized", [False, True])
def test_csv_box_formats_agree(tmp_path, box_format, normalized):
    root = tmp_path / "formats"
    width, height = 80, 40
    save_image(root / "img.png", height, width)
    x0, y0, x1, y1 = 8.0, 4.0, 48.0, 36.0
    values = {"xyxy": (x0, y0, x1, y1), "xywh": (x0, y0, x1 - x0, y1 - y0),
              "cxcywh": ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)}[box_format]
    if normalized:
        values = (values[0] / width, values[1] / height, values[2] / width, values[3] / height)
    write_csv(root / "boxes.csv", ["image", "a", "b", "c", "d"], [["img.png", *values]])
    records, quarantined = ingest(tmp_path, root, {"family": "boxes", "boxes": {
        "format": "csv", "file": "boxes.csv", "id_column": "image", "fixed_label": "nodule",
        "box_columns": ["a", "b", "c", "d"], "box_format": box_format, "normalized": normalized}})
    assert quarantined == [] and boxes_of(records[0]) == [("nodule", [8, 4, 48, 36])]


def test_csv_rows_naming_dicom_files_decode_with_pydicom(tmp_path):
    root = tmp_path / "dcm"
    (root / "images").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "images/ct1.dcm")
    write_csv(root / "boxes.csv", ["id", "x0", "y0", "x1", "y1", "finding"], [["ct1", 10, 20, 30, 40, "Nodule"]])
    records, quarantined = ingest(tmp_path, root, {"family": "boxes", "boxes": {
        "format": "csv", "file": "boxes.csv", "id_column": "id", "path_template": "images/{id}.dcm",
        "label_column": "finding", "box_columns": ["x0", "y0", "x1", "y1"]}}, modality="ct")
    (record,) = records
    assert quarantined == [] and boxes_of(record) == [("nodule", [10, 20, 30, 40])]
    assert (record["height"], record["width"], record["dicom_modality"], record["pixel_units"]) == (128, 128, "CT", "HU")


def test_known_labels_report_unexpected_label(tmp_path):
    root = tmp_path / "known"
    save_image(root / "img.png", 20, 20)
    write_csv(root / "boxes.csv", ["image", "label", "x0", "y0", "x1", "y1"],
              [["img.png", "Nodule", 1, 1, 5, 5], ["img.png", "Nodlue", 2, 2, 6, 6]])
    records, quarantined = ingest(tmp_path, root, {"family": "boxes", "boxes": {
        "format": "csv", "file": "boxes.csv", "id_column": "image", "label_column": "label",
        "box_columns": ["x0", "y0", "x1", "y1"], "known_labels": ["Nodule"]}})
    assert boxes_of(records[0]) == [("nodule", [1, 1, 5, 5])]
    assert [(q.source_file, "label 'Nodlue' is not among the known labels" in q.reason) for q in quarantined] == [
        ("img.png", True)]


# ------------------------------------------------------------------------- MIAS circles


def test_mias_circles_flip_y_from_bottom_left(tmp_path):
    root = tmp_path / "mias"
    side = 1024
    cx, cy_from_bottom, radius = 535, 425, 197
    row = side - 1 - cy_from_bottom  # pixel row of the centre counted from the top
    mammogram = np.zeros((side, side), dtype=np.uint8)
    mammogram[row, cx] = 255  # a marker at the centre, to check the flip against the pixels
    root.mkdir()
    Image.fromarray(mammogram).save(root / "mdb001.pgm")
    save_image(root / "mdb003.pgm", side, side, suffix_format="PPM")
    save_image(root / "mdb005.pgm", side, side, suffix_format="PPM")
    (root / "Info.txt").write_text(
        f"mdb001 G CIRC B {cx} {cy_from_bottom} {radius}\n"
        "mdb003 D NORM \n"
        "mdb005 F CIRC B 477 133 30\n"
        "mdb005 F CIRC B 500 168 26\n"
        "mdb005 F SPIC M\n"
    )
    layout = {"family": "boxes", "boxes": {
        "format": "circles", "file": "Info.txt", "delimiter": " ", "has_header": False,
        "columns": ["REFNUM", "BG", "CLASS", "SEVERITY", "X", "Y", "RADIUS"], "id_column": "REFNUM",
        "path_template": "{id}.pgm", "label_column": "CLASS", "empty_labels": ["NORM"],
        "center_columns": ["X", "Y"], "radius_column": "RADIUS", "y_origin": "bottom"}}
    records, quarantined = ingest(tmp_path, root, layout, modality="mammography", organs=["breast"],
                                  labels={"rename": {"CIRC": "circumscribed mass", "SPIC": "spiculated mass"}})

    mdb001, mdb003, mdb005 = records
    (annotation,) = json.loads(mdb001["annotations"])
    assert annotation["box"] == [cx - radius, row - radius, cx + radius + 1, row + radius + 1] == [338, 401, 733, 796]
    assert annotation["circle"] == [cx, row, radius] and annotation["label"] == "circumscribed mass"
    x0, y0, x1, y1 = annotation["box"]
    assert mammogram[(y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2] == 255  # the box is centred on the marker
    assert boxes_of(mdb003) == [] and mdb003["labels"] == []
    assert [box for _, box in boxes_of(mdb005)] == [[447, 1023 - 133 - 30, 508, 1023 - 133 + 31], [474, 829, 527, 882]]
    assert [(q.source_file, "gives no coordinates" in q.reason) for q in quarantined] == [("Info.txt:5", True)]


# ------------------------------------------------------------------------- extra_boxes overlay


def test_extra_boxes_overlay_on_image_csv_source(tmp_path):
    root = tmp_path / "overlay"
    for name in ("one", "two"):
        save_image(root / "images" / f"{name}.png", 50, 60)
    write_csv(root / "meta.csv", ["file", "finding"], [["one.png", "COVID-19"], ["two.png", "No Finding"]])
    write_csv(root / "lungs.csv", ["file", "lung", "x0", "y0", "x1", "y1"], [
        ["one.png", "Right Lung", 2, 3, 25, 45], ["one.png", "Left Lung", 30, 3, 58, 45],
        ["missing.png", "Right Lung", 1, 1, 5, 5]])
    layout = {"family": "image_csv", "csv": "meta.csv", "id_column": "file", "path_template": "images/{id}",
              "label_column": "finding"}
    extra = {"format": "csv", "file": "lungs.csv", "image_root": "images", "id_column": "file",
             "label_column": "lung", "box_columns": ["x0", "y0", "x1", "y1"]}
    rename = {"rename": {"COVID-19": "covid-19 pneumonia", "No Finding": ""}}
    records, quarantined = ingest(tmp_path, root, layout, labels=rename, extra_boxes=extra)
    without, _ = ingest(tmp_path, root, layout, labels=rename)

    one, two = records
    assert boxes_of(one) == [("right lung", [2, 3, 25, 45]), ("left lung", [30, 3, 58, 45])]
    assert one["labels"] == ["covid-19 pneumonia", "left lung", "right lung"]
    assert two == without[1] and one["record_id"] == without[0]["record_id"]
    assert [(q.source_file, q.reason) for q in quarantined] == [("images/missing.png", NOT_IN_SOURCE)]


def test_rerun_gives_identical_rows(tmp_path):
    root = tmp_path / "rerun"
    for name in ("b", "a"):
        save_image(root / f"{name}.png", 30, 30)
    write_csv(root / "boxes.csv", ["image", "x0", "y0", "x1", "y1"], [["b.png", 1, 1, 9, 9], ["a.png", 2, 2, 8, 8]])
    layout = {"family": "boxes", "boxes": {"format": "csv", "file": "boxes.csv", "id_column": "image",
                                          "fixed_label": "lesion", "box_columns": ["x0", "y0", "x1", "y1"]}}
    first, _ = ingest(tmp_path, root, layout)
    second, _ = ingest(tmp_path, root, layout)
    assert first == second and [r["source_file"] for r in first] == ["b.png", "a.png"]
    assert first[0]["record_id"] == record_id_for("box_src", "b.png", None, -1)


# ------------------------------------------------------------------------- real data


def ingest_catalog(source_id, tmp_path):
    spec = load_spec(REPO_ROOT / "data" / "sources" / f"{source_id}.yaml")
    ctx = IngestContext(spec=spec, root=source_root(spec), blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    return [i for i in items if isinstance(i, dict)], [i for i in items if isinstance(i, Quarantined)]


def coco_pixel_box(bbox):
    x, y, w, h = bbox
    return [int(np.floor(x)), int(np.floor(y)), int(np.ceil(x + w)), int(np.ceil(y + h))]


@needs_realdata
def test_tbx11k_boxes_equal_the_json(tmp_path):
    records, quarantined = ingest_catalog("cxr_samples_tbx11k", tmp_path)
    coco = json.loads((REALDATA / "cxr_samples/tbx11k_test_data/annotations/json/TBX11K_train.json").read_text())
    files = {image["id"]: f"tbx11k_test_data/imgs/{image['file_name']}" for image in coco["images"]}
    assert quarantined == [] and sorted(r["source_file"] for r in records) == sorted(files.values())
    expected = {path: [] for path in files.values()}
    for obj in coco["annotations"]:
        expected[files[obj["image_id"]]].append(coco_pixel_box(obj["bbox"]))
    assert {r["source_file"]: [box for _, box in boxes_of(r)] for r in records} == expected


@needs_realdata
def test_covid_csv_labels_plus_coco_lung_boxes(tmp_path):
    records, quarantined = ingest_catalog("covid_chestxray", tmp_path)
    root = REALDATA / "covid_chestxray"
    coco = json.loads((root / "annotations/imageannotation_ai_lung_bounding_boxes.json").read_text())
    categories = {c["id"]: c["name"].lower() for c in coco["categories"]}
    files = {image["id"]: f"images/{image['file_name']}" for image in coco["images"]}
    expected = {}
    for obj in coco["annotations"]:
        expected.setdefault(files[obj["image_id"]], []).append((categories[obj["category_id"]], coco_pixel_box(obj["bbox"])))
    with open(root / "metadata.csv", newline="", encoding="utf-8") as handle:
        finding_of = {f"{row['folder']}/{row['filename']}": row["finding"] for row in csv.DictReader(handle)}
    absent = sorted(path for path in set(finding_of) | set(files.values()) if not (root / path).is_file())

    assert len(absent) == 1 and len(records) == len(finding_of) - 1
    boxed = [r for r in records if r["source_file"] in expected]
    assert len(boxed) == len(files) - 1 and len(expected) == len(files)
    for record in records:
        assert boxes_of(record) == expected.get(record["source_file"], []), record["source_file"]
        finding = {"COVID-19": "covid-19 pneumonia", "ARDS": "acute respiratory distress syndrome"}[finding_of[record["source_file"]]]
        # Lung boxes outline anatomy (boxes_are_findings: false): ROIs, not findings.
        assert record["labels"] == [finding]
    # The absent image is reported once, by the CSV reader; the overlay does not repeat it.
    assert [(q.source_file, "file is absent" in q.reason) for q in quarantined] == [(absent[0], True)]


def test_extra_boxes_from_yolo_files_on_image_folder_source(tmp_path):
    root = tmp_path / "folder_yolo"
    save_image(root / "scans/a.png", 40, 100)
    save_image(root / "scans/b.png", 40, 100)
    (root / "scans/a.txt").write_text("0 0.25 0.5 0.1 0.5\n")  # labels beside the images
    extra = {"format": "yolo", "annotation_template": "{parent}/{stem}.txt", "class_names": ["polyp"]}
    records, quarantined = ingest(tmp_path, root, {"family": "image_folder", "image_glob": "scans/*.png"},
                                  extra_boxes=extra)
    assert quarantined == [] and [r["source_file"] for r in records] == ["scans/a.png", "scans/b.png"]
    assert boxes_of(records[0]) == [("polyp", [20, 10, 30, 30])] and records[0]["labels"] == ["polyp"]
    assert boxes_of(records[1]) == [] and records[1]["labels"] == []


def test_dicom_rows_with_burned_in_text_are_quarantined(tmp_path):
    # RSNA-style CSV rows naming DICOM files: the burned-in flag is honoured here too.
    import pydicom
    from pydicom.data import get_testdata_file

    root = tmp_path / "rsna"
    root.mkdir()
    for name, burned in (("clean", "NO"), ("burned", "YES")):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.BurnedInAnnotation = burned
        ds.save_as(root / f"{name}.dcm")
    (root / "labels.csv").write_text("patientId,x,y,width,height,Target\nclean,10,10,20,20,1\nburned,10,10,20,20,1\n")
    boxes = {"format": "csv", "file": "labels.csv", "id_column": "patientId", "path_template": "{id}.dcm",
             "fixed_label": "lung opacity", "box_columns": ["x", "y", "width", "height"], "box_format": "xywh"}
    records, quarantined = ingest(tmp_path, root, {"family": "boxes", "boxes": boxes})
    assert [r["source_file"] for r in records] == ["clean.dcm"]
    assert [(q.source_file, "BurnedInAnnotation is YES" in q.reason) for q in quarantined] == [("burned.dcm", True)]
