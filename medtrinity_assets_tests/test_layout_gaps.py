"""Layouts met while adding public datasets by YAML alone: each is a spec option, tested on the
publisher's real file where ../shared/realdata has one, otherwise on a fixture written in the
publisher's format (MIAS Info.txt, a CVC-ClinicDB-style frame table, ASAP / CAMELYON XML).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REALDATA, needs_realdata
from PIL import Image
from spec_factory import build_spec

from medtrinity_assets import cli
from medtrinity_assets.catalog.check import check_source
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.storage import BlobStore


def ingest(tmp_path, root, **spec_fields):
    spec = build_spec(**spec_fields)
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    records = [item for item in items if isinstance(item, dict)]
    quarantined = [item for item in items if isinstance(item, Quarantined)]
    return records, quarantined


def annotations_of(record) -> list[dict]:
    return json.loads(record["annotations"] or "[]")


def write_png(path: Path, height: int = 64, width: int = 80, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(30, 220, (height, width), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


# ------------------------------------------------------------------ boxes keyed by image id


KVASIR = REALDATA / "kvasir_seg"


@needs_realdata
def test_kvasir_keyed_json_is_the_primary_box_source_of_a_boxes_layout(tmp_path):
    """kavsir_bboxes.json (the publisher's file, unmodified) drives a boxes layout: its ids map
    to images by path_template, each box's keys are named in the spec, and an image with
    several polyps gets one box ROI each."""
    document = json.loads((KVASIR / "kavsir_bboxes.json").read_text())
    several = [key for key, entry in document.items() if len(entry["bbox"]) > 1][:2]
    root = tmp_path / "kvasir"
    (root / "images").mkdir(parents=True)
    shutil.copy(KVASIR / "kavsir_bboxes.json", root)
    for key in several:
        shutil.copy(KVASIR / "images" / f"{key}.jpg", root / "images")
    layout = {"family": "boxes", "boxes": {
        "format": "keyed_json", "file": "kavsir_bboxes.json", "path_template": "images/{id}.jpg",
        "boxes_key": "bbox", "box_columns": ["xmin", "ymin", "xmax", "ymax"], "label_column": "label",
        "known_labels": ["polyp"]}}
    records, quarantined = ingest(tmp_path, root, id="kvasir_boxes", modality="endoscopy", organs=["colon"],
                                  annotation_kinds=["box"], layout=layout,
                                  labels={"rename": {"polyp": "colorectal polyp"}})

    assert [Path(r["source_file"]).stem for r in records] == several
    for record in records:
        entry = document[Path(record["source_file"]).stem]
        expected = [[b["xmin"], b["ymin"], min(b["xmax"], entry["width"]), min(b["ymax"], entry["height"])] for b in entry["bbox"]]
        assert [a["box"] for a in annotations_of(record)] == expected
        assert {a["kind"] for a in annotations_of(record)} == {"box"}
        assert record["labels"] == ["colorectal polyp"] and record["label_state"] == "finding"
    # The 998 ids whose images were not copied are reported, each as absent.
    assert len(quarantined) == len(document) - 2
    assert all("file is absent" in q.reason for q in quarantined)


# ------------------------------------------------------------------ check-source warnings


def test_check_source_warns_when_a_voc_layout_finds_no_voc_annotation(tmp_path, isolated_env, capsys):
    """A VOC layout over XML files of another schema used to print OK with 0 annotations."""
    root = isolated_env["raw"] / "polyp_xml"
    for name in ("a", "b"):
        write_png(root / "images" / f"{name}.png")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(
            '<Image Name="%s.png"><Shape Type="Polygon"><Points><Point X="1" Y="1"/><Point X="9" Y="1"/>'
            '<Point X="9" Y="9"/></Points></Shape></Image>' % name
        )
    spec = build_spec(id="polyp_xml", modality="endoscopy", organs=["colon"], annotation_kinds=["box"], layout={
        "family": "boxes", "image_glob": "images/*.png",
        "boxes": {"format": "voc", "annotation_template": "Annotations/{stem}.xml"}})
    report = check_source(spec, root)
    assert report.images == 2 and report.rois == 0
    assert not report.ok
    text = report.render()
    assert "WARNING: layout boxes promises annotations" in text
    assert "layout.boxes.annotation_template 'Annotations/{stem}.xml'" in text
    assert text.splitlines()[-1].startswith("NOT OK: 2 images would be ingested")

    spec_path = tmp_path / "polyp_xml.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False))
    assert cli.main(["check-source", str(spec_path), "--root", str(root)]) == 1
    assert "WARNING" in capsys.readouterr().out


# ------------------------------------------------------------------ a table behind a preamble

# The head of mini-MIAS Info.txt as the publisher ships it: a column legend and numbered notes
# before the rows, rows of a normal film with no coordinates, and one finding whose place is
# given as "*NOTE 3*" (calcifications spread through the breast) instead of x y radius.
MIAS_INFO = """\
MINI-MIAS DATABASE OF MAMMOGRAMS

This file lists the films in the MIAS database and provides appropriate details as follows:

1st column: MIAS database reference number.

2nd column: Character of background tissue:
                F  Fatty
                G  Fatty-glandular
                D  Dense-glandular

3rd column: Class of abnormality present:
                CALC  Calcification
                CIRC  Well-defined/circumscribed masses
                SPIC  Spiculated masses
                NORM  Normal

4th column: Severity of abnormality;
                B  Benign
                M  Malignant

5th,6th columns: x,y image-coordinates of centre of abnormality.

7th column: Approximate radius (in pixels) of a circle enclosing the abnormality.

NOTES
=====
1) The list is arranged in pairs of films, where each pair represents the left (even
   filename numbers) and right mammograms (odd filename numbers) of a single patient.
3) In some cases calcifications are widely distributed throughout the image rather than
   concentrated at a single site. In these cases centre locations and radii are inappropriate
   and have been omitted.

mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM
mdb059 F CIRC B *NOTE 3*
mdb209 G CALC M 647 503 87
"""

MIAS_BOXES = {
    "format": "circles", "file": "Info.txt", "delimiter": " ", "has_header": False,
    "columns": ["refnum", "tissue", "abnormality", "severity", "x", "y", "radius"],
    "id_column": "refnum", "path_template": "{id}.pgm", "label_column": "abnormality",
    "center_columns": ["x", "y"], "radius_column": "radius", "y_origin": "bottom",
    "empty_labels": ["NORM"], "known_labels": ["CALC", "CIRC", "SPIC", "NORM"],
}
MIAS_LABELS = {"rename": {"CALC": "calcification", "CIRC": "circumscribed mass", "SPIC": "spiculated mass"}}


@pytest.fixture
def mias_root(tmp_path) -> Path:
    root = tmp_path / "mias"
    for index, name in enumerate(("mdb001", "mdb002", "mdb003", "mdb059", "mdb209")):
        write_png(root / f"{name}.pgm", 1024, 1024, seed=index)  # Pillow writes PGM by suffix
    (root / "Info.txt").write_text(MIAS_INFO)
    return root


def test_mias_info_preamble_is_skipped_and_rows_without_coordinates_keep_their_label(tmp_path, mias_root):
    boxes = {
        **MIAS_BOXES,
        "row_regex": r"^mdb\d{3}\s",
        "rows_without_coordinates": "image_label",
        "column_labels": {"severity": {"B": "benign", "M": "malignant"}},
        "column_fields": {"tissue": {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}},
    }
    records, quarantined = ingest(tmp_path, mias_root, id="mias_info", modality="mammography", organs=["breast"],
                                  annotation_kinds=["box", "label"], labels=MIAS_LABELS,
                                  layout={"family": "boxes", "boxes": boxes})

    assert quarantined == []  # the legend and notes are not rows of images "1st", "CALC", "1)"
    by_name = {Path(r["source_file"]).stem: r for r in records}
    assert list(by_name) == ["mdb001", "mdb002", "mdb003", "mdb059", "mdb209"]
    (mass,) = annotations_of(by_name["mdb001"])
    assert mass["label"] == "circumscribed mass" and mass["tissue"] == "fatty-glandular"
    assert mass["circle"] == [535, 1023 - 425, 197]
    assert by_name["mdb001"]["labels"] == ["benign", "circumscribed mass"]
    (calcification,) = annotations_of(by_name["mdb209"])
    assert calcification["label"] == "calcification" and by_name["mdb209"]["labels"] == ["calcification", "malignant"]
    # *NOTE 3*: the finding is kept at image level, without an ROI.
    note = by_name["mdb059"]
    assert annotations_of(note) == [] and note["label_state"] == "finding"
    assert note["labels"] == ["benign", "circumscribed mass"]
    # NORM: kept, no finding.
    normal = by_name["mdb003"]
    assert annotations_of(normal) == [] and normal["labels"] == [] and normal["label_state"] == "unknown"


def test_mias_column_value_outside_the_mapping_is_reported_not_guessed(tmp_path, mias_root):
    text = MIAS_INFO.replace("mdb209 G CALC M", "mdb209 G CALC X")
    (mias_root / "Info.txt").write_text(text)
    boxes = {**MIAS_BOXES, "preamble_until": r"^mdb001\s", "rows_without_coordinates": "image_label",
             "column_fields": {"severity": {"B": "benign", "M": "malignant"}}}
    records, quarantined = ingest(tmp_path, mias_root, id="mias_info", modality="mammography", organs=["breast"],
                                  annotation_kinds=["box"], labels=MIAS_LABELS, layout={"family": "boxes", "boxes": boxes})
    line = text.splitlines().index("mdb209 G CALC X 647 503 87") + 1
    assert [(q.source_file, q.kind) for q in quarantined] == [(f"Info.txt:{line}", "bad_label")]
    assert "column 'severity'" in quarantined[0].reason and "'X'" not in quarantined[0].reason
    (calcification,) = annotations_of(next(r for r in records if r["source_file"] == "mdb209.pgm"))
    assert "severity" not in calcification and calcification["label"] == "calcification"


def test_preamble_options_are_refused_for_formats_that_have_no_table():
    with pytest.raises(ValueError, match="only for the table formats"):
        build_spec(layout={"family": "boxes", "image_glob": "*.png", "boxes": {
            "format": "voc", "annotation_template": "{stem}.xml", "row_regex": "^mdb"}})
