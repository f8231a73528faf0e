"""Thumbnails of image + ROI outline beside the description, for the Dagster UI and the QC report."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUTLINE = (255, 64, 64)


def roi_thumbnail(data_root: Path, image_path: str, rois_json: str | None, size: int = 192) -> bytes:
    """PNG bytes of the image with each annotated ROI's outline (mask edge, else box) drawn."""
    with Image.open(Path(data_root) / image_path) as opened:
        image = opened.convert("RGB")
    for roi in json.loads(rois_json or "[]"):
        if roi.get("origin") == "whole_image":
            continue
        mask_path = roi.get("mask_path")
        if mask_path and (Path(data_root) / mask_path).exists():
            with Image.open(Path(data_root) / mask_path) as mask_image:
                mask = np.asarray(mask_image) > 0
            # The outline is the mask minus its erosion: one-pixel edge, drawn thick after scaling.
            interior = mask.copy()
            interior[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
            edge = mask & ~interior
            pixels = np.asarray(image).copy()
            ys, xs = np.nonzero(edge)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    pixels[np.clip(ys + dy, 0, pixels.shape[0] - 1), np.clip(xs + dx, 0, pixels.shape[1] - 1)] = OUTLINE
            image = Image.fromarray(pixels)
        elif roi.get("box"):
            x0, y0, x1, y1 = roi["box"]
            ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=OUTLINE, width=3)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnails_markdown(data_root: Path, rows: list[dict], max_chars: int = 600) -> str:
    """A markdown table: thumbnail | coarse caption and description (verifier status)."""
    lines = ["| image + ROI | description |", "|---|---|"]
    for row in rows:
        png = roi_thumbnail(data_root, row["image_path"], row.get("rois"))
        encoded = base64.b64encode(png).decode("ascii")
        text = (row.get("description") or "").replace("\n", " ").replace("|", "/")
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + " …"
        status = "verified" if row.get("verified") else "FLAGGED: " + "; ".join(row.get("verifier_flags") or [])
        caption = (row.get("coarse_caption") or "").replace("|", "/")
        lines.append(f"| ![{row['record_id']}](data:image/png;base64,{encoded}) | **{caption}**<br>{text}<br>_{status}_ |")
    return "\n".join(lines)
