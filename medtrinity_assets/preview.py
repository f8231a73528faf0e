"""Thumbnails of image + ROI outline beside the description, for the Dagster UI and the QC report.

An image held back from training for what its pixels may show (``dataset.exports.HELD_BACK_FLAGS``:
burned-in text can be a patient's name) never gets a thumbnail: a preview is a copy outside the
blob store, kept for good in Dagster's event log and shown to whoever opens the UI.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medtrinity_assets.dataset.exports import held_back_flags
from medtrinity_assets.generation.roi_overlay import OverlayError, inner_edge, read_mask, thicken

OUTLINE = (255, 64, 64)
BURNED_IN_COLOUR = (255, 0, 0)
BURNED_IN_CAPTION = "burned-in text"


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, colour, width: int = 2, dash: int = 6) -> None:
    """A dashed box, so burned-in regions read differently from solid ROI outlines."""
    x0, y0, x1, y1 = box
    for start in range(x0, x1, 2 * dash):
        end = min(start + dash, x1)
        draw.line([(start, y0), (end, y0)], fill=colour, width=width)
        draw.line([(start, y1), (end, y1)], fill=colour, width=width)
    for start in range(y0, y1, 2 * dash):
        end = min(start + dash, y1)
        draw.line([(x0, start), (x0, end)], fill=colour, width=width)
        draw.line([(x1, start), (x1, end)], fill=colour, width=width)


def mark_burned_in(image: Image.Image, burned_in_json: str | None) -> Image.Image:
    """Red dashed boxes around detected burned-in text and markers, with a caption, drawn on
    ``image`` (the normalized display image, whose pixels the boxes are in)."""
    if not burned_in_json:
        return image
    found = json.loads(burned_in_json)
    if not found.get("present"):
        return image
    draw = ImageDraw.Draw(image)
    # Widths scale with the image so the marks survive the thumbnail's shrinking.
    width = max(2, round(max(image.size) / 110))
    for box in found.get("boxes") or []:
        x0, y0, x1, y1 = (int(v) for v in box)
        pad = width
        _dashed_rectangle(draw, (max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, image.width - 1), min(y1 + pad, image.height - 1)), BURNED_IN_COLOUR, width, dash=4 * width)
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 18)))
    left, top, right, bottom = draw.textbbox((0, 0), BURNED_IN_CAPTION, font=font)
    draw.rectangle([0, image.height - (bottom - top) - 8, right - left + 8, image.height - 1], fill=(0, 0, 0))
    draw.text((4, image.height - (bottom - top) - 6 - top), BURNED_IN_CAPTION, fill=BURNED_IN_COLOUR, font=font)
    return image


def _mask_or_none(data_root: Path, mask_path: str | None) -> np.ndarray | None:
    """The ROI's mask when it is a readable file inside the data root; else None (the box is
    drawn instead: a thumbnail is a glance, not a record)."""
    if not mask_path:
        return None
    try:
        return read_mask(data_root, mask_path)
    except OverlayError:
        return None


def roi_thumbnail(
    data_root: Path, image_path: str, rois_json: str | None, size: int = 192, burned_in_json: str | None = None
) -> bytes:
    """PNG bytes of the image with each annotated ROI's outline (mask edge, else box) drawn, and
    burned-in text or markers (NORMALIZED_IMAGES.burned_in) in red dashed boxes."""
    with Image.open(Path(data_root) / image_path) as opened:
        image = opened.convert("RGB")
    for roi in json.loads(rois_json or "[]"):
        if roi.get("origin") == "whole_image":
            continue
        mask = _mask_or_none(data_root, roi.get("mask_path"))
        if mask is not None:
            # One-pixel edge, drawn three pixels thick so it survives the thumbnail's shrinking.
            pixels = np.asarray(image).copy()
            pixels[thicken(inner_edge(mask), 1)] = OUTLINE
            image = Image.fromarray(pixels)
        elif roi.get("box"):
            x0, y0, x1, y1 = roi["box"]
            ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=OUTLINE, width=3)
    image = mark_burned_in(image, burned_in_json)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnails_markdown(data_root: Path, rows: list[dict], max_chars: int = 600) -> str:
    """A markdown table: thumbnail | coarse caption and description (verifier status).
    A held-back row (``held_back_flags``) gets a line saying so instead of its picture."""
    lines = ["| image + ROI | description |", "|---|---|"]
    for row in rows:
        withheld = held_back_flags(row)
        if withheld:
            picture = f"_image withheld ({', '.join(withheld)})_"
        else:
            png = roi_thumbnail(data_root, row["image_path"], row.get("rois"), burned_in_json=row.get("burned_in"))
            picture = f"![{row['record_id']}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
        text = (row.get("description") or "").replace("\n", " ").replace("|", "/")
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + " …"
        status = "verified" if row.get("verified") else "FLAGGED: " + "; ".join(row.get("verifier_flags") or [])
        caption = (row.get("coarse_caption") or "").replace("|", "/")
        lines.append(f"| {picture} | **{caption}**<br>{text}<br>_{status}_ |")
    return "\n".join(lines)
