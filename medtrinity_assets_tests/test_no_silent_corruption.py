"""No silent corruption: a mask, a label or a series that cannot be read as the spec says is
quarantined with the reason (or read the way the spec declares), never quietly turned into
something else. Fixtures are real files written by Pillow, the csv module and pydicom.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from spec_factory import build_spec

from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.storage import BlobStore


def run_spec(tmp_path: Path, spec, root: Path):
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    records = [item for item in items if isinstance(item, dict)]
    quarantined = [item for item in items if isinstance(item, Quarantined)]
    return ctx, records, quarantined


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def stored_masks(ctx, record: dict) -> list[np.ndarray]:
    return [np.asarray(ctx.blobs.get_array(a["mask_ref"])) for a in json.loads(record["annotations"])]


# ---------------------------------------------------------------- mask values

MASK_LAYOUT = {"family": "image_mask", "image_glob": "images/*.png", "mask_replace": [{"old": "images/", "new": "masks/"}]}


def four_value_mask() -> np.ndarray:
    """A mask with regions of values 1, 2, 77 and 200: a class or id mask, not a binary one."""
    mask = np.zeros((40, 40), np.uint8)
    mask[2:10, 2:10], mask[12:20, 2:10], mask[2:10, 12:20], mask[22:30, 22:30] = 1, 2, 77, 200
    return mask


def write_mask_source(root: Path, mask: np.ndarray) -> None:
    save(root / "images" / "a.png", np.full((40, 40), 90, np.uint8))
    save(root / "masks" / "a.png", mask)


def test_binary_mask_with_unexpected_values_is_quarantined_naming_them(tmp_path):
    root = tmp_path / "src"
    write_mask_source(root, four_value_mask())
    spec = build_spec(layout=MASK_LAYOUT, root=str(root), modality="ultrasound", diseases=["lesion"])
    _, records, quarantined = run_spec(tmp_path, spec, root)
    assert records == []  # not one region of the four kept without a word
    (item,) = quarantined
    assert item.source_file == "images/a.png" and item.kind == "invalid_annotation"
    assert "masks/a.png" in item.reason and "1, 2, 77, 200" in item.reason


@pytest.mark.parametrize("foreground", [255, 1, 38])
def test_binary_mask_of_zero_and_one_value_is_read_whole(tmp_path, foreground):
    root = tmp_path / "src"
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 8:30] = foreground
    write_mask_source(root, mask)
    spec = build_spec(layout=MASK_LAYOUT, root=str(root), modality="ultrasound", diseases=["lesion"])
    ctx, (record,), quarantined = run_spec(tmp_path, spec, root)
    assert quarantined == []
    (stored,) = stored_masks(ctx, record)
    np.testing.assert_array_equal(stored, (mask > 0).astype(np.uint8))


def test_declared_binarize_any_nonzero_keeps_every_region(tmp_path):
    root = tmp_path / "src"
    mask = four_value_mask()
    write_mask_source(root, mask)
    spec = build_spec(layout={**MASK_LAYOUT, "binarize": "any_nonzero"}, root=str(root), modality="ultrasound", diseases=["lesion"])
    ctx, (record,), quarantined = run_spec(tmp_path, spec, root)
    assert quarantined == []
    (stored,) = stored_masks(ctx, record)
    np.testing.assert_array_equal(stored, (mask > 0).astype(np.uint8))


def test_declared_label_values_map_each_value_to_its_finding(tmp_path):
    root = tmp_path / "src"
    mask = four_value_mask()
    write_mask_source(root, mask)
    layout = {**MASK_LAYOUT, "label_values": {1: "tumor", 2: "edema", 77: "necrosis", 200: "cyst"}}
    spec = build_spec(layout=layout, root=str(root), modality="mri", diseases=["tumor"])
    ctx, (record,), quarantined = run_spec(tmp_path, spec, root)
    assert quarantined == []
    annotations = json.loads(record["annotations"])
    by_label = {a["label"]: np.asarray(ctx.blobs.get_array(a["mask_ref"])) for a in annotations}
    for value, label in layout["label_values"].items():
        np.testing.assert_array_equal(by_label[label], (mask == value).astype(np.uint8))
