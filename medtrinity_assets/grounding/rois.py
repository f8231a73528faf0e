"""Stage 3 core: ROIs from a record's own annotations, in normalized-image coordinates.

Masks give exact regions; contours (RTSTRUCT, COCO polygons) are rasterized into masks; boxes
become coarse rectangular masks with lower confidence. An annotation that yields no region
(empty after resizing, zero-area box, box outside the image, mask of the wrong size) is reported
as a problem and skipped, and the image keeps its other ROIs. An image left with no ROI gets
one whole-image entry, so it still reaches the later stages without an invented lesion.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
from skimage import draw, measure

from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.grounding.attributes import measure_roi, measure_whole_image
from medtrinity_assets.grounding.patient_side import patient_side_locator
from medtrinity_assets.grounding.relations import relate
from medtrinity_assets.imaging.normalize import encode_png, resize_mask
from medtrinity_assets.storage import BlobStore

CONFIDENCE = {"annotation:mask": 1.0, "annotation:contour": 1.0, "annotation:box": 0.7, "whole_image": 0.0}
MAX_CONTOUR_POINTS = 64


def roi_id_for(record_id: str, index: int) -> str:
    return hashlib.sha256(f"{record_id}\x1froi\x1f{index}".encode("utf-8")).hexdigest()[:24]


def outline(mask: np.ndarray, max_points: int = MAX_CONTOUR_POINTS) -> list[list[float]]:
    """Closed outer outline of the largest region of ``mask`` as [[x, y], ...], at most max_points.

    The mask is padded so regions touching the border still give closed contours; the polygon
    tolerance grows until the point budget is met, so small ROIs keep their exact outline.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    contours = measure.find_contours(padded, 0.5)
    if not contours:
        return []
    longest = max(contours, key=len)
    tolerance = 0.5
    simplified = measure.approximate_polygon(longest, tolerance)
    while len(simplified) > max_points:
        tolerance *= 1.5
        simplified = measure.approximate_polygon(longest, tolerance)
    # (row, col) with the padding removed -> [x, y]
    return [[round(float(c) - 1, 1), round(float(r) - 1, 1)] for r, c in simplified]


def _axis_scales(record: dict, display: np.ndarray, scale: float) -> tuple[float, float]:
    """(sy, sx) from original to display pixels; exact per axis when the original size is known."""
    height, width = record.get("height"), record.get("width")
    if height and width:
        return display.shape[0] / height, display.shape[1] / width
    return scale, scale


def _masks_from_annotation(annotation: dict, record: dict, display: np.ndarray, scale: float, blobs: BlobStore):
    """Yield (label, origin, bool mask) for one annotation, or raise ValueError with the reason."""
    shape = display.shape[:2]
    kind = annotation.get("kind")
    label = annotation.get("label")
    if kind == "mask":
        raw = np.asarray(blobs.get_array(annotation["mask_ref"]))
        if raw.ndim == 3:  # an RGB(A) mask file: any non-zero channel marks the region
            raw = raw.max(axis=2)
        expected = (record.get("height"), record.get("width"))
        if all(expected) and tuple(raw.shape) != tuple(expected):
            raise ValueError(f"mask shape {tuple(raw.shape)} differs from image shape {expected}")
        resized = resize_mask(raw, shape)
        if annotation.get("instances"):
            values = [v for v in np.unique(resized) if v != 0]
            if not values:
                raise ValueError("instance mask has no instance after resize")
            for value in values:
                yield label, "annotation:mask", resized == value
        else:
            yield label, "annotation:mask", resized != 0
    elif kind == "box":
        x0, y0, x1, y1 = (float(v) for v in annotation["box"])
        sy, sx = _axis_scales(record, display, scale)
        # floor/ceil keep every partly covered display pixel, so a small box never vanishes.
        bx0, by0 = max(0, math.floor(x0 * sx)), max(0, math.floor(y0 * sy))
        bx1, by1 = min(shape[1], math.ceil(x1 * sx)), min(shape[0], math.ceil(y1 * sy))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {annotation['box']} has zero area")
        if bx1 <= bx0 or by1 <= by0:
            raise ValueError(f"box {annotation['box']} lies outside the image")
        mask = np.zeros(shape, dtype=bool)
        mask[by0:by1, bx0:bx1] = True
        yield label, "annotation:box", mask
    elif kind == "contour":
        points = np.asarray(annotation.get("points") or [], dtype=np.float64)
        if points.ndim != 2 or points.shape[0] < 3 or points.shape[1] != 2:
            raise ValueError(f"contour needs at least 3 [x, y] points, got {points.shape}")
        sy, sx = _axis_scales(record, display, scale)
        rows, cols = points[:, 1] * sy, points[:, 0] * sx
        mask = np.zeros(shape, dtype=bool)
        rr, cc = draw.polygon(rows, cols, shape)
        mask[rr, cc] = True
        # Contour points lie on the region's edge (RTSTRUCT, COCO polygons): add the outline so
        # thin or tiny structures are not lost to the fill rule.
        # (draw.line per edge: skimage's polygon_perimeter would pull in matplotlib.)
        r_int, c_int = np.rint(rows).astype(int), np.rint(cols).astype(int)
        for i in range(len(r_int)):
            rr, cc = draw.line(r_int[i - 1], c_int[i - 1], r_int[i], c_int[i])
            keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
            mask[rr[keep], cc[keep]] = True
        yield label, "annotation:contour", mask
    else:
        raise ValueError(f"unknown annotation kind {kind!r}")


def _base_row(record: dict, display: np.ndarray, index: int, label, origin: str) -> dict:
    return {
        "roi_id": roi_id_for(record["record_id"], index),
        "record_id": record["record_id"],
        "source_id": record["source_id"],
        "label": label,
        "origin": origin,
        "confidence": CONFIDENCE[origin],
        "image_height": int(display.shape[0]),
        "image_width": int(display.shape[1]),
        "relations": None,
    }


def ground_record(
    record: dict, display: np.ndarray, scale: float, blobs: BlobStore, spec: SourceSpec
) -> tuple[list[dict], list[str]]:
    """ROIS rows for one normalized image, and the annotations that could not be used (reasons)."""
    display = np.asarray(display)
    modality = record.get("modality") or spec.modality
    spacing = record.get("pixel_spacing_mm")
    try:
        annotations = json.loads(record.get("annotations") or "[]")
    except json.JSONDecodeError as error:
        annotations = []
        problems = [f"annotations are not valid JSON: {error}"]
    else:
        problems = []

    rois: list[dict] = []
    masks: dict[str, np.ndarray] = {}
    side_of = patient_side_locator(record, display)
    for number, annotation in enumerate(annotations):
        described = f"annotation {number} ({annotation.get('kind')}, label {annotation.get('label')!r})"
        try:
            regions = list(_masks_from_annotation(annotation, record, display, scale, blobs))
        except (ValueError, KeyError, TypeError, OSError) as error:
            problems.append(f"{described}: {error}")
            continue
        for label, origin, mask in regions:
            if not mask.any():
                problems.append(f"{described}: no pixels after resizing to {display.shape[0]}x{display.shape[1]}")
                continue
            row = _base_row(record, display, len(rois), label, origin)
            ys, xs = np.nonzero(mask)
            _, mask_path = blobs.put("roi_masks", encode_png(mask.astype(np.uint8) * 255), "png")
            row.update(
                x0=int(xs.min()), y0=int(ys.min()), x1=int(xs.max()) + 1, y1=int(ys.max()) + 1,
                mask_path=mask_path,
                contour=json.dumps(outline(mask)),
                **measure_roi(
                    mask, display, modality=modality,
                    pixel_spacing_mm=spacing, scale=scale, outline_is_exact=origin != "annotation:box",
                ),
            )
            row.update(side_of(row["centroid_x"], row["centroid_y"]))
            masks[row["roi_id"]] = mask
            rois.append(row)

    if not rois:
        row = _base_row(record, display, 0, None, "whole_image")
        row.update(
            x0=0, y0=0, x1=int(display.shape[1]), y1=int(display.shape[0]), mask_path=None, contour=None,
            **measure_whole_image(display, pixel_spacing_mm=spacing, scale=scale),
            patient_side_source=None,
        )
        rois.append(row)

    label_counts: dict = {}
    for row in rois:
        label_counts[row["label"]] = label_counts.get(row["label"], 0) + 1
    for row in rois:
        # A whole-image entry is not a finding: it counts as zero of anything.
        row["count_same_label"] = 0 if row["origin"] == "whole_image" else label_counts[row["label"]]
    # Relations from the masks while they are in memory; a later relate(rois) without masks
    # keeps these rather than recomputing them from boxes.
    relate(rois, masks=masks)
    return rois, problems
