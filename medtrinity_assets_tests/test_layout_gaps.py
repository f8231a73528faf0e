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
