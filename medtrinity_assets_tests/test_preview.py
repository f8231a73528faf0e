"""The UI thumbnails and the expert's training curve (preview.py), on a real Kvasir-SEG frame:
an expert model's ROI is drawn apart from an annotation (another colour, dashed) and captioned
as the model's, with its confidence; the training curve is a real PNG and a table."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import REALDATA, needs_realdata
from PIL import Image
from scipy import ndimage

from medtrinity_assets.generation.roi_overlay import inner_edge
from medtrinity_assets.preview import (
    MODEL_OUTLINE,
    OUTLINE,
    _dashed_edge,
    model_roi_caption,
    roi_thumbnail,
    thumbnails_markdown,
    training_curve_markdown,
    training_curve_png,
)

FRAME = "cju0qkwl35piu0993l0dewei2"


@pytest.fixture
def frame_with_mask(tmp_path):
    """The frame and its real polyp mask, as the pipeline stores them under a data root."""
    with Image.open(REALDATA / "kvasir_seg" / "images" / f"{FRAME}.jpg") as image:
        image.convert("RGB").save(tmp_path / "frame.png")
    with Image.open(REALDATA / "kvasir_seg" / "masks" / f"{FRAME}.jpg") as mask:
        inside = np.asarray(mask.convert("L")) >= 128
    Image.fromarray(inside.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    ys, xs = np.nonzero(inside)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return tmp_path, box


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _count(pixels: np.ndarray, colour) -> int:
    return int((np.abs(pixels - np.array(colour)).sum(axis=-1) <= 30).sum())


def _roi(origin: str, box, **extra) -> dict:
    return {"roi_id": "r1", "label": "polyp", "origin": origin, "box": box, "mask_path": "mask.png", **extra}


@needs_realdata
def test_model_roi_is_drawn_apart_from_an_annotation(frame_with_mask):
    root, box = frame_with_mask
    annotation = _pixels(roi_thumbnail(root, "frame.png", json.dumps([_roi("annotation:mask", box)]), size=512))
    model = _pixels(roi_thumbnail(root, "frame.png", json.dumps([_roi("model:polyp_expert", box, confidence=0.87)]), size=512))
    plain = _pixels(roi_thumbnail(root, "frame.png", "[]", size=512))
    # Colours the frame itself barely has mark each kind of outline.
    assert _count(annotation, OUTLINE) > _count(plain, OUTLINE) + 200
    assert _count(model, MODEL_OUTLINE) > _count(plain, MODEL_OUTLINE) + 100
    assert _count(model, OUTLINE) <= _count(plain, OUTLINE) + 20
    # Dashed: the model's outline of the real polyp mask falls apart into many pieces.
    mask = np.asarray(Image.open(root / "mask.png")) > 0
    dashes = ndimage.label(_dashed_edge(mask, 512), structure=np.ones((3, 3)))[1]
    solid = ndimage.label(inner_edge(mask), structure=np.ones((3, 3)))[1]
    assert solid <= 2 and dashes >= 10 * solid


def test_caption_words_model_rois_as_the_models_with_confidence():
    rois = [
        {"origin": "annotation:mask", "label": "polyp"},
        {"origin": "model:grey_matter", "label": "grey matter", "confidence": 0.734},
    ]
    assert model_roi_caption(json.dumps(rois)) == "model ROI: grey matter (model grey_matter, confidence 0.73)"
    assert model_roi_caption(json.dumps(rois[:1])) == ""


@needs_realdata
def test_thumbnail_table_row_of_a_model_roi(frame_with_mask):
    root, box = frame_with_mask
    row = {"record_id": "rec", "image_path": "frame.png", "rois": json.dumps([_roi("model:polyp_expert", box, confidence=0.5)]),
           "coarse_caption": "Endoscopy of the colon.", "description": "A region found by a model.", "verified": True, "flags": []}
    markdown = thumbnails_markdown(root, [row])
    assert "data:image/png;base64," in markdown and "model ROI: polyp (model polyp_expert, confidence 0.50)" in markdown


def test_small_image_is_enlarged_before_outlines_are_drawn(tmp_path):
    """A 33 x 41 MR slice: drawn at 192 px, so the outline is not lost in a blur."""
    Image.fromarray(np.full((41, 33), 90, dtype=np.uint8)).save(tmp_path / "slice.png")
    mask = np.zeros((41, 33), dtype=np.uint8)
    mask[10:30, 8:25] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    png = roi_thumbnail(tmp_path, "slice.png", json.dumps([_roi("annotation:mask", [8, 10, 25, 30])]))
    pixels = _pixels(png)
    assert max(pixels.shape[:2]) == 192
    assert _count(pixels, OUTLINE) > 300


def test_training_curve_is_a_png_and_a_table():
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_dice": 0.1 * e, "seconds": 2.0} for e in range(1, 4)]
    png = training_curve_png(history, title="polyp")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.width >= 300
    table = training_curve_markdown(history).splitlines()
    assert table[0] == "| epoch | train_loss | val_dice | seconds |"
    assert table[2].startswith("| 1 | 1 | 0.1 |") and len(table) == 5
    assert "No training history" in training_curve_markdown([])
