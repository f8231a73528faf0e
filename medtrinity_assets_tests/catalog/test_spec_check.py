"""check-source: what a spec matches, what is unpaired, unreadable or unused, before any run;
it writes nothing under the data root; the CLI's exit code says whether anything matched."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REALDATA, needs_realdata
from PIL import Image
from spec_factory import build_spec

from medtrinity_assets import cli
from medtrinity_assets.catalog import load_spec
from medtrinity_assets.paths import REPO_ROOT
from medtrinity_assets.sources.check import (
    ANNOTATION_WITHOUT_IMAGE,
    IMAGE_WITHOUT_ANNOTATION,
    ROW_WITHOUT_IMAGE,
    check_source,
)

ULTRASOUND = {
    "id": "thyroid_us",
    "modality": "ultrasound",
    "organs": ["thyroid"],
    "diseases": ["thyroid nodule"],
    "annotation_kinds": ["mask"],
    "layout": {
        "family": "image_mask",
        "image_glob": "images/*.png",
        "mask_replace": [{"old": "images/", "new": "masks/"}, {"old": ".png", "new": "_mask.png"}],
    },
}


def _scan(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 200, (48, 64), dtype=np.uint8)


def _nodule_mask(top: int, left: int) -> np.ndarray:
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[top : top + 10, left : left + 12] = 255
    return mask


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def ultrasound_root(tmp_path) -> Path:
    """Two paired scans, one scan whose mask is missing, one mask whose scan is missing,
    one scan that is not a PNG at all, and the publisher's README."""
    root = tmp_path / "thyroid_us"
    for index, (top, left) in enumerate([(5, 8), (20, 30)], start=1):
        _write_png(root / f"images/case_{index:03d}.png", _scan(index))
        _write_png(root / f"masks/case_{index:03d}_mask.png", _nodule_mask(top, left))
    _write_png(root / "images/case_003.png", _scan(3))
    _write_png(root / "masks/case_004_mask.png", _nodule_mask(1, 1))
    (root / "images/case_005.png").write_bytes(b"<html>403 Forbidden</html>")
    _write_png(root / "masks/case_005_mask.png", _nodule_mask(2, 2))
    (root / "README.txt").write_text("Thyroid ultrasound, two nodules per case at most.\n")
    return root


def test_report_counts_matched_unpaired_unreadable_and_unused(ultrasound_root, isolated_env):
    report = check_source(build_spec(**ULTRASOUND), ultrasound_root)
    assert (report.images, report.annotated_images, report.rois) == (2, 2, 2)
    assert report.roi_kinds == {"mask": 2}
    assert report.matched
    missing_mask = report.unpaired[IMAGE_WITHOUT_ANNOTATION]
    assert missing_mask.count == 1 and missing_mask.items[0].startswith("images/case_003.png: ")
    assert report.unpaired[ANNOTATION_WITHOUT_IMAGE].items == ["masks/case_004_mask.png"]
    assert report.unreadable.count == 1 and report.unreadable.items[0].startswith("images/case_005.png: unreadable")
    # case_005's mask is unused because its scan is unreadable: not a mask without an image.
    assert report.unused_files.items == ["README.txt", "masks/case_005_mask.png"]
    # The masks the pairing reached are used, not listed as unused or unpaired.
    assert "masks/case_001_mask.png" not in report.unused_files.items + report.unpaired[ANNOTATION_WITHOUT_IMAGE].items

    text = report.render()
    for expected in ("Matched: 2 images; 2 with annotations (2 ROIs: mask 2)", "case_003.png", "case_004_mask.png", "README.txt"):
        assert expected in text
    # Nothing written under the data root: the check runs before any pipeline run.
    assert list(isolated_env["var"].iterdir()) == []


def test_table_rows_naming_absent_images_are_unpaired(tmp_path, isolated_env):
    root = tmp_path / "derm"
    _write_png(root / "images/lesion_1.png", _scan(1))
    _write_png(root / "images/lesion_2.png", _scan(2))
    with (root / "labels.csv").open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["image_id", "dx"])
        writer.writerows([["lesion_1", "melanoma"], ["lesion_9", "nevus"]])
    spec = build_spec(
        id="derm",
        modality="dermoscopy",
        organs=["skin"],
        annotation_kinds=["label"],
        layout={"family": "image_csv", "csv": "labels.csv", "id_column": "image_id",
                "path_template": "images/{id}.png", "label_column": "dx"},
    )
    report = check_source(spec, root)
    assert report.images == 1 and report.labels == {"melanoma": 1}
    rows = report.unpaired[ROW_WITHOUT_IMAGE]
    assert rows.count == 1 and "lesion_9" in rows.items[0]
    assert "labels.csv" not in report.unused_files.items  # the table is the layout's own file
    # The reader quarantines an image no row names (unlisted_images defaults to "quarantine").
    [unlisted] = report.unpaired[IMAGE_WITHOUT_ANNOTATION].items
    assert unlisted.startswith("images/lesion_2.png: ")


def _write_spec(folder: Path, fields: dict) -> Path:
    spec = build_spec(**fields)
    path = folder / f"{spec.id}.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path


def test_cli_exit_code_follows_what_matched(ultrasound_root, tmp_path, isolated_env, capsys):
    spec_path = _write_spec(tmp_path, ULTRASOUND)
    assert cli.main(["check-source", str(spec_path), "--root", str(ultrasound_root)]) == 0
    out = capsys.readouterr().out
    assert "OK: 2 images would be ingested" in out and "case_004_mask.png" in out

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["check-source", str(spec_path), "--root", str(empty)]) == 1
    out = capsys.readouterr().out
    assert "NOTHING MATCHED" in out and "no file matches image_glob" in out

    # Without --root the spec's folder is data/raw/<id> (MEDTRINITY_RAW), absent here.
    assert cli.main(["check-source", str(spec_path)]) == 1
    assert "source folder does not exist" in capsys.readouterr().out


def test_cli_names_the_file_and_field_of_a_broken_spec(tmp_path, capsys):
    spec_path = _write_spec(tmp_path, ULTRASOUND)
    broken = yaml.safe_load(spec_path.read_text())
    broken["layout"]["mask_replace"][0]["neww"] = broken["layout"]["mask_replace"][0].pop("new")
    spec_path.write_text(yaml.safe_dump(broken))
    assert cli.main(["check-source", str(spec_path)]) == 1
    err = capsys.readouterr().err
    assert str(spec_path) in err
    assert "layout.image_mask.mask_replace.0.neww" in err or "mask_replace.0.neww" in err


def test_cli_unknown_id_lists_the_catalog(capsys):
    assert cli.main(["check-source", "no_such_source"]) == 1
    err = capsys.readouterr().err
    assert "no_such_source" in err and "busi" in err


@needs_realdata
def test_busi_check_matches_the_dataset_own_masks(isolated_env):
    """Every BUSI image is matched and every non-empty mask file (incl. "_mask_1") is one ROI."""
    spec = load_spec(REPO_ROOT / "data" / "sources" / "busi.yaml")
    root = REALDATA / "busi"
    images = sorted(root.glob("*/images/*.png"))
    masks = sorted(root.glob("*/mask/*.png"))
    lesion_masks = [m for m in masks if np.asarray(Image.open(m)).any()]
    report = check_source(spec)
    assert report.images == len(images)
    assert report.rois == len(lesion_masks)
    assert report.unpaired[IMAGE_WITHOUT_ANNOTATION].count == 0
    assert report.unpaired[ANNOTATION_WITHOUT_IMAGE].count == 0
    assert report.unreadable.count == 0
    assert report.unused_files.count == len([p for p in root.rglob("*") if p.is_file()]) - len(images) - len(masks)
