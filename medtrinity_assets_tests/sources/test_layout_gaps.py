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
from medtrinity_assets.sources.check import check_source
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


# ------------------------------------------------------------------ sequence groups from frame ranges

# CVC-ClinicDB ships 612 numbered frames ("Original/1.tif") of 29 colonoscopy sequences; which
# frames form one sequence is a table of ranges in the publisher's text, written here in that
# style (an en dash, a prose preamble, a trailing note) for 20 sequences of 3 frames.
SEQUENCES = 20
FRAMES_PER_SEQUENCE = 3


def _clinicdb_readme() -> str:
    lines = [
        "CVC-ClinicDB",
        "",
        "CVC-ClinicDB is a database of frames extracted from colonoscopy videos, each with the",
        "polyp outlined in the ground truth. Frames come from the following sequences:",
        "",
    ]
    for sequence in range(1, SEQUENCES + 1):
        first = (sequence - 1) * FRAMES_PER_SEQUENCE + 1
        lines.append(f"  frames {first}\u2013{first + FRAMES_PER_SEQUENCE - 1}: sequence {sequence}")
    lines += ["", "Please cite the paper below when using the database (frames 1-612 in total)."]
    return "\n".join(lines) + "\n"


@pytest.fixture
def clinicdb_root(tmp_path) -> Path:
    root = tmp_path / "cvc_clinicdb"
    (root / "Original").mkdir(parents=True)
    for frame in range(1, SEQUENCES * FRAMES_PER_SEQUENCE + 1):
        pixels = np.random.default_rng(frame).integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "Original" / f"{frame}.tif")
    (root / "README.txt").write_text(_clinicdb_readme(), encoding="utf-8")
    return root


CLINICDB_PATIENT = {
    "source": "ranges",
    "pattern": r"Original/(\d+)\.tif$",
    "ranges_file": "README.txt",
    "range_regex": r"frames\s+(?P<first>\d+)\s*[-\u2013]\s*(?P<last>\d+)\s*:\s*sequence\s+(?P<group>\d+)",
}


def _splits_by_sequence(records) -> dict[int, set[str]]:
    import duckdb

    from medtrinity_assets.splits import split_sql

    # The split as the triplets table computes it, from the patient hash.
    rows = duckdb.sql(
        f"SELECT f, {split_sql('h')} FROM (SELECT unnest($f) AS f, unnest($h) AS h)",
        params={"f": [r["source_file"] for r in records], "h": [r["patient_hash"] for r in records]},
    ).fetchall()
    by_sequence: dict[int, set[str]] = {}
    for source_file, split in rows:
        frame = int(Path(source_file).stem)
        by_sequence.setdefault((frame - 1) // FRAMES_PER_SEQUENCE + 1, set()).add(split)
    return by_sequence


def test_frames_of_one_sequence_share_a_group_and_never_straddle_splits(tmp_path, clinicdb_root):
    records, quarantined = ingest(tmp_path, clinicdb_root, id="cvc_clinicdb", modality="endoscopy", organs=["colon"],
                                  annotation_kinds=["label"], patient=CLINICDB_PATIENT,
                                  layout={"family": "image_folder", "image_glob": "Original/*.tif"})
    assert quarantined == [] and len(records) == SEQUENCES * FRAMES_PER_SEQUENCE
    hashes: dict[int, set[str]] = {}
    for record in records:
        frame = int(Path(record["source_file"]).stem)
        hashes.setdefault((frame - 1) // FRAMES_PER_SEQUENCE + 1, set()).add(record["patient_hash"])
    assert all(len(group) == 1 for group in hashes.values())
    assert len(set().union(*hashes.values())) == SEQUENCES
    splits = _splits_by_sequence(records)
    assert all(len(split) == 1 for split in splits.values())
    assert len(set().union(*splits.values())) > 1  # sequences do spread over the splits


def test_inline_frame_ranges_group_frames_and_a_frame_outside_them_stands_alone(tmp_path, clinicdb_root):
    patient = {"source": "ranges", "pattern": r"Original/(\d+)\.tif$",
               "ranges": [{"first": 1, "last": 30, "group": "a"}, {"first": 31, "last": 59, "group": "b"}]}
    records, _ = ingest(tmp_path, clinicdb_root, id="cvc_clinicdb", modality="endoscopy", organs=["colon"],
                        annotation_kinds=["label"], patient=patient,
                        layout={"family": "image_folder", "image_glob": "Original/*.tif"})
    by_frame = {int(Path(r["source_file"]).stem): r["patient_hash"] for r in records}
    assert len({by_frame[f] for f in range(1, 31)}) == 1 and len({by_frame[f] for f in range(31, 60)}) == 1
    assert len({by_frame[1], by_frame[31], by_frame[60]}) == 3


def test_frame_ranges_that_overlap_or_a_missing_table_stop_the_read(tmp_path, clinicdb_root):
    layout = {"family": "image_folder", "image_glob": "Original/*.tif"}
    fields = {"id": "cvc_clinicdb", "modality": "endoscopy", "organs": ["colon"], "annotation_kinds": ["label"]}
    overlapping = {"source": "ranges", "pattern": r"(\d+)\.tif$",
                   "ranges": [{"first": 1, "last": 30, "group": "a"}, {"first": 30, "last": 60, "group": "b"}]}
    with pytest.raises(ValueError, match="overlap"):
        ingest(tmp_path, clinicdb_root, patient=overlapping, layout=layout, **fields)
    (clinicdb_root / "README.txt").unlink()
    with pytest.raises(ValueError, match="ranges_file README.txt is absent"):
        ingest(tmp_path, clinicdb_root, patient=CLINICDB_PATIENT, layout=layout, **fields)
    with pytest.raises(ValueError, match="named groups"):
        build_spec(patient={**CLINICDB_PATIENT, "range_regex": r"frames (\d+)-(\d+)"})


# ------------------------------------------------------------------ polygons in XML of any schema

# ASAP, the annotation tool of CAMELYON16/17: one XML per slide, polygons as numbered
# <Coordinate> points in level-0 pixels, the class in PartOfGroup; the points are written out of
# order here, as ASAP keeps them when a point is inserted later.
ASAP_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
\t<Annotations>
\t\t<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="0" X="10.5" Y="8" />
\t\t\t\t<Coordinate Order="2" X="40" Y="30" />
\t\t\t\t<Coordinate Order="1" X="40" Y="8" />
\t\t\t\t<Coordinate Order="3" X="10.5" Y="30" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="Annotation 1" Type="Dot" PartOfGroup="Tumor" Color="#F4FA58">
\t\t\t<Coordinates><Coordinate Order="0" X="5" Y="5" /></Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="Annotation 2" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="0" X="50" Y="40" />
\t\t\t\t<Coordinate Order="1" X="60" Y="40" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t</Annotations>
\t<AnnotationGroups>
\t\t<Group Name="Tumor" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
\t</AnnotationGroups>
</ASAP_Annotations>
"""

ASAP_BOXES = {
    "format": "xml_polygons", "annotation_template": "annotations/{stem}.xml",
    "xml": {"shape_path": ".//Annotation[@Type='Polygon']", "point_path": "Coordinates/Coordinate",
            "label_attribute": "PartOfGroup", "order_attribute": "Order"},
}


def _ground(tmp_path, spec, record):
    from medtrinity_assets.grounding.rois import ground_record

    blobs = BlobStore(tmp_path / "var")
    display = np.asarray(blobs.get_array(record["pixel_ref"]))
    return ground_record(record, display, 1.0, blobs, spec)


def test_asap_polygons_are_read_by_configured_paths_and_rasterized_into_mask_rois(tmp_path):
    root = tmp_path / "camelyon"
    write_png(root / "tiles" / "tumor_001.png", 64, 80)
    write_png(root / "tiles" / "normal_001.png", 64, 80, seed=1)
    (root / "annotations").mkdir()
    (root / "annotations" / "tumor_001.xml").write_text(ASAP_XML)
    fields = {"id": "camelyon_tiles", "modality": "histopathology", "organs": ["lymph node"],
              "annotation_kinds": ["contour"], "labels": {"rename": {"Tumor": "metastasis"}},
              "layout": {"family": "boxes", "image_glob": "tiles/*.png", "boxes": ASAP_BOXES}}
    records, quarantined = ingest(tmp_path, root, **fields)

    by_name = {Path(r["source_file"]).stem: r for r in records}
    assert sorted(by_name) == ["normal_001", "tumor_001"] and annotations_of(by_name["normal_001"]) == []
    (tumor,) = annotations_of(by_name["tumor_001"])  # the Dot is not a polygon; the 2-point one is reported
    assert tumor["kind"] == "contour" and tumor["label"] == "metastasis"
    assert tumor["points"] == [[10.5, 8.0], [40.0, 8.0], [40.0, 30.0], [10.5, 30.0]]  # in Order
    assert by_name["tumor_001"]["label_state"] == "finding"
    assert [(q.source_file, q.kind) for q in quarantined] == [("annotations/tumor_001.xml shape 2", "invalid_annotation")]

    rois, problems = _ground(tmp_path, build_spec(**fields), by_name["tumor_001"])
    assert problems == []
    (roi,) = rois
    assert roi["label"] == "metastasis" and roi["origin"] == "annotation:contour"
    assert (roi["x0"], roi["y0"], roi["x1"], roi["y1"]) == (10, 8, 41, 31)


# A "Shape / Points / Point" schema with every image in one file, as annotation tools export it.
SHAPES_XML = """<?xml version="1.0" encoding="utf-8"?>
<Annotations Version="2">
  <Image Name="frame_001.png" Width="80" Height="64">
    <Shape Type="Polygon" Label="polyp"><Points>
      <Point X="5" Y="5"/><Point X="25" Y="5"/><Point X="25" Y="20"/><Point X="5" Y="20"/>
    </Points></Shape>
    <Shape Type="Rectangle" Label="instrument"><Points><Point X="1" Y="1"/><Point X="3" Y="3"/></Points></Shape>
    <Shape Type="Polygon" Label="polyp"><Points>
      <Point X="50" Y="30"/><Point X="70" Y="30"/><Point X="60" Y="50"/>
    </Points></Shape>
  </Image>
  <Image Name="frame_002.png" Width="80" Height="64"/>
  <Image Name="frame_404.png" Width="80" Height="64">
    <Shape Type="Polygon" Label="polyp"><Points><Point X="1" Y="1"/><Point X="9" Y="1"/><Point X="9" Y="9"/></Points></Shape>
  </Image>
</Annotations>
"""


def test_one_xml_for_all_images_names_each_image_by_an_attribute(tmp_path):
    root = tmp_path / "polyp_shapes"
    write_png(root / "frames" / "frame_001.png")
    write_png(root / "frames" / "frame_002.png", seed=2)
    (root / "shapes.xml").write_text(SHAPES_XML)
    boxes = {"format": "xml_polygons", "file": "shapes.xml", "image_root": "frames",
             "xml": {"image_path": "Image", "image_attribute": "Name",
                     "shape_path": "Shape[@Type='Polygon']", "point_path": "Points/Point", "label_attribute": "Label"}}
    fields = {"id": "polyp_shapes", "modality": "endoscopy", "organs": ["colon"], "annotation_kinds": ["contour"],
              "labels": {"rename": {"polyp": "colorectal polyp"}}, "layout": {"family": "boxes", "boxes": boxes}}
    records, quarantined = ingest(tmp_path, root, **fields)

    first, second = records
    assert first["source_file"] == "frames/frame_001.png" and second["source_file"] == "frames/frame_002.png"
    assert [a["points"] for a in annotations_of(first)] == [
        [[5.0, 5.0], [25.0, 5.0], [25.0, 20.0], [5.0, 20.0]], [[50.0, 30.0], [70.0, 30.0], [60.0, 50.0]]]
    assert annotations_of(second) == []
    assert [(q.source_file, "file is absent" in q.reason) for q in quarantined] == [("frames/frame_404.png", True)]
    rois, problems = _ground(tmp_path, build_spec(**fields), first)
    assert problems == [] and [(r["x0"], r["y0"], r["x1"], r["y1"]) for r in rois] == [(5, 5, 26, 21), (50, 30, 71, 51)]


def test_polygon_xml_with_an_entity_declaration_is_refused_not_expanded(tmp_path):
    root = tmp_path / "hostile"
    write_png(root / "tiles" / "a.png")
    (root / "annotations").mkdir()
    (root / "annotations" / "a.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;">]>'
        '<ASAP_Annotations><Annotations><Annotation Type="Polygon" PartOfGroup="&y;"><Coordinates>'
        '<Coordinate Order="0" X="1" Y="1"/><Coordinate Order="1" X="9" Y="1"/><Coordinate Order="2" X="9" Y="9"/>'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    records, quarantined = ingest(tmp_path, root, id="hostile", modality="histopathology", organs=["lymph node"],
                                  annotation_kinds=["contour"],
                                  layout={"family": "boxes", "image_glob": "tiles/*.png", "boxes": ASAP_BOXES})
    assert annotations_of(records[0]) == []
    assert [(q.source_file, q.kind) for q in quarantined] == [("annotations/a.xml", "unsupported")]
    assert "xxxx" not in quarantined[0].reason


def test_voc_xml_with_an_entity_declaration_is_refused_not_expanded(tmp_path):
    root = tmp_path / "hostile_voc"
    write_png(root / "JPEGImages" / "a.png")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "a.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;">]>'
        "<annotation><size><width>80</width><height>64</height></size><object><name>&y;</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    records, quarantined = ingest(tmp_path, root, id="hostile_voc", modality="endoscopy", organs=["colon"],
                                  annotation_kinds=["box"],
                                  layout={"family": "boxes", "image_glob": "JPEGImages/*.png",
                                          "boxes": {"format": "voc", "annotation_template": "Annotations/{stem}.xml"}})
    assert annotations_of(records[0]) == []
    assert [(q.source_file, q.kind) for q in quarantined] == [("Annotations/a.xml", "unsupported")]
    assert "xxxx" not in quarantined[0].reason
