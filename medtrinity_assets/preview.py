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
from medtrinity_assets.vocabulary import MODEL_ORIGIN_PREFIX, is_model_origin

OUTLINE = (255, 64, 64)
# An expert model's ROI (origin "model:<expert_id>") is a finding of a network, not an
# annotation: another colour, dashed, with "model" and its confidence written beside it.
MODEL_OUTLINE = (64, 200, 255)
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


def is_model_roi(roi: dict) -> bool:
    return is_model_origin(roi.get("origin"))


def _dashed_edge(mask: np.ndarray, size: int) -> np.ndarray:
    """The mask's edge, thick enough to survive shrinking to ``size`` px, with every other run
    of pixels (along x + y) left out: a dashed outline that reads apart from the solid
    annotation outline."""
    shrink = max(mask.shape) / size
    edge = thicken(inner_edge(mask), max(1, round(shrink)))
    period = max(8, round(8 * shrink))
    ys, xs = np.indices(mask.shape)
    return edge & (((xs + ys) // period) % 2 == 0)


def _model_label(draw: ImageDraw.ImageDraw, roi: dict, image: Image.Image) -> None:
    confidence = roi.get("confidence")
    text = "model" if confidence is None else f"model {float(confidence):.2f}"
    font = ImageFont.load_default(size=max(10, round(max(image.size) / 16)))
    x0, y0 = (int(v) for v in (roi.get("box") or [0, 0])[:2])
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x, y = min(max(x0, 0), max(image.width - w, 0)), max(y0 - h, 0)
    draw.rectangle([x, y, x + w, y + h], fill=(0, 0, 0))
    draw.text((x + 2, y + 2 - top), text, fill=MODEL_OUTLINE, font=font)


def roi_thumbnail(
    data_root: Path, image_path: str, rois_json: str | None, size: int = 192, burned_in_json: str | None = None
) -> bytes:
    """PNG bytes of the image with each ROI's outline (mask edge, else box) drawn: annotations
    solid red, an expert model's ROIs dashed blue with "model <confidence>"; burned-in text or
    markers (NORMALIZED_IMAGES.burned_in) in red dashed boxes."""
    with Image.open(Path(data_root) / image_path) as opened:
        image = opened.convert("RGB")
    # The thumbnail shrinks the image: the drawing is done at a scale that keeps lines and labels
    # legible after it (a 33 px MR slice is enlarged first, so its outline is not a blur).
    scale = max(1, round(size / max(image.size)))
    # Burned-in marks first: their boxes are in the normalized image's pixels.
    image = mark_burned_in(image, burned_in_json)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    model_labels = []
    for roi in json.loads(rois_json or "[]"):
        if roi.get("origin") == "whole_image":
            continue
        model = is_model_roi(roi)
        colour = MODEL_OUTLINE if model else OUTLINE
        mask = _mask_or_none(data_root, roi.get("mask_path"))
        if mask is not None:
            if scale > 1:
                mask = np.kron(mask, np.ones((scale, scale), dtype=bool))
            # One-pixel edge, drawn three pixels thick so it survives the thumbnail's shrinking.
            pixels = np.asarray(image).copy()
            pixels[_dashed_edge(mask, size) if model else thicken(inner_edge(mask), 1)] = colour
            image = Image.fromarray(pixels)
        elif roi.get("box"):
            x0, y0, x1, y1 = (int(v) * scale for v in roi["box"])
            if model:
                width = max(3, round(3 * max(image.size) / size))
                _dashed_rectangle(ImageDraw.Draw(image), (x0, y0, x1 - 1, y1 - 1), colour, width=width, dash=4 * width)
            else:
                ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=3)
        if model:
            box = roi.get("box")
            model_labels.append({**roi, "box": [int(v) * scale for v in box] if box else None})
    draw = ImageDraw.Draw(image)
    for roi in model_labels:  # after every outline, so no outline crosses a label
        _model_label(draw, roi, image)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def model_roi_caption(rois_json: str | None) -> str:
    """The words under a thumbnail for an expert model's ROIs: which expert, which label, what
    confidence; empty when the row has none. A model finding is never worded as an annotation."""
    found = [roi for roi in json.loads(rois_json or "[]") if is_model_roi(roi)]
    parts = []
    for roi in found:
        expert = roi.get("expert_id") or str(roi["origin"])[len(MODEL_ORIGIN_PREFIX):]
        confidence = roi.get("confidence")
        score = "" if confidence is None else f" {float(confidence):.2f}"
        parts.append(f"{roi.get('label') or 'region'} (model {expert}, confidence{score})")
    return "model ROI: " + "; ".join(parts) if parts else ""


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
        model = model_roi_caption(row.get("rois")).replace("|", "/")
        model = f"<br>_{model}_" if model else ""
        lines.append(f"| {picture} | **{caption}**<br>{text}{model}<br>_{status}_ |")
    return "\n".join(lines)


# --- an expert's training curve (defs/experts.py) ----------------------------------------------------


def _history_columns(history: list[dict]) -> list[str]:
    """The numeric keys of the per-epoch history, epoch first, in first-seen order."""
    columns = []
    for entry in history:
        for key, value in entry.items():
            if key not in columns and isinstance(value, (int, float)) and not isinstance(value, bool):
                columns.append(key)
    return ["epoch", *[c for c in columns if c != "epoch"]] if "epoch" in columns else columns


def training_curve_markdown(history: list[dict]) -> str:
    """The per-epoch history as a markdown table (every numeric key the family recorded)."""
    if not history:
        return "No training history (brought weights, or reused weights trained elsewhere)."
    columns = _history_columns(history)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in history:
        cells = []
        for column in columns:
            value = entry.get(column)
            cells.append("-" if value is None else (str(value) if isinstance(value, int) else f"{value:.4g}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_curve_png(history: list[dict], title: str = "training curve") -> bytes:
    """PNG of the curve: losses on the left axis, validation scores (0-1) on the right."""
    # A bare Figure renders with Agg and touches no display or pyplot global state.
    from matplotlib.figure import Figure

    # Losses and validation scores; timings and the learning rate stay in the table.
    columns = [c for c in _history_columns(history) if "loss" in c or c.startswith("val_")]
    epochs = [entry.get("epoch", i + 1) for i, entry in enumerate(history)]
    figure = Figure(figsize=(5.0, 3.0), dpi=100)
    loss_axis = figure.add_subplot()
    score_axis = loss_axis.twinx()
    # One colour cycle over both axes (each axis would otherwise start its own at blue).
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:grey")
    for index, column in enumerate(columns):
        points = [(e, entry[column]) for e, entry in zip(epochs, history) if isinstance(entry.get(column), (int, float))]
        if not points:
            continue
        axis = loss_axis if "loss" in column else score_axis
        axis.plot(*zip(*points), marker="o", markersize=3, label=column,
                  color=colours[index % len(colours)], linestyle="-" if "loss" in column else "--")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    score_axis.set_ylabel("validation score")
    score_axis.set_ylim(0, 1)
    handles = loss_axis.get_legend_handles_labels()[0] + score_axis.get_legend_handles_labels()[0]
    if handles:
        loss_axis.legend(handles=handles, fontsize=7, loc="center right")
    loss_axis.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
