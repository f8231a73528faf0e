"""Stage 3 core: ROIs from a record's own annotations, in normalized-image coordinates.

Masks give exact regions, one ROI per connected component (several polyps in one mask are
several ROIs); components under the spec's minimum area are specks (JPEG ringing, stray
clicks), dropped and counted in ``specks_dropped``. Instance masks give one ROI per instance.
Publisher boxes given beside masks (``reference`` boxes) are matched to the mask components by
IoU and recorded as ``box_agreement``; a box or component left unmatched is reported. Contours (RTSTRUCT, COCO polygons) are rasterized into masks; boxes
become coarse rectangular masks with lower confidence. An annotation that yields no region
(empty after resizing, zero-area box, box outside the image, mask of the wrong size) is reported
as a problem and skipped, and the image keeps its other ROIs. An image left with no ROI gets
one whole-image entry, so it still reaches the later stages without an invented lesion.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter

import numpy as np
from scipy import ndimage
from skimage import draw, measure

from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.grounding.attributes import background_mask, measure_roi, measure_whole_image
from medtrinity_assets.grounding.patient_side import patient_side_locator
from medtrinity_assets.grounding.relations import relate
from medtrinity_assets.imaging.normalize import encode_png, resize_mask
from medtrinity_assets.storage import BlobStore

CONFIDENCE = {"annotation:mask": 1.0, "annotation:contour": 1.0, "annotation:box": 0.7, "whole_image": 0.0}
MAX_CONTOUR_POINTS = 64
# A publisher box and a mask component are the same object at IoU >= this. On the 1,000
# Kvasir-SEG images at 512 px, 1,062 of 1,071 publisher boxes matched a component: IoU mean
# 0.972, 10th percentile 0.95, lowest 0.60; the 9 left over are boxes drawn around polyps the
# mask joins into one component (grounding/validate.py kvasir).
BOX_MATCH_IOU = 0.5
# Two touching pixels, diagonals included, belong to one object: a mask drawn along a
# diagonal edge would otherwise fall apart into specks.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
REFERENCE_PREFIX = "publisher box check"


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
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {annotation['box']} has zero area")
        placed = _display_box(annotation["box"], record, display, scale)
        if placed is None:
            raise ValueError(f"box {annotation['box']} lies outside the image")
        bx0, by0, bx1, by1 = placed
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


def min_component_area(shape, spec: SourceSpec) -> int:
    """Smallest connected component (exported pixels) that is an ROI, not a speck."""
    settings = spec.grounding
    return max(settings.min_component_px, math.ceil(settings.min_component_fraction * shape[0] * shape[1]))


def split_components(mask: np.ndarray, min_area: int) -> tuple[list[np.ndarray], int]:
    """(components at least ``min_area`` px, number of smaller ones dropped as specks).

    Components come largest first, ties broken by the top-left corner of the box, so the
    order (and the roi_id that follows from it) is the same on every run.
    """
    labelled, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return [], 0
    areas = np.bincount(labelled.ravel())[1:]
    slices = ndimage.find_objects(labelled)
    kept = [
        (-int(areas[i]), slices[i][0].start, slices[i][1].start, i + 1) for i in range(count) if areas[i] >= min_area
    ]
    kept.sort()
    return [labelled == value for *_, value in kept], int(count - len(kept))


def _display_box(box, record: dict, display: np.ndarray, scale: float) -> tuple[int, int, int, int] | None:
    """A box [x0, y0, x1, y1] in original pixels as display pixels, or None when it is empty or
    outside the image. floor/ceil keep every partly covered display pixel, so a small box never
    vanishes."""
    x0, y0, x1, y1 = (float(v) for v in box)
    sy, sx = _axis_scales(record, display, scale)
    height, width = display.shape[:2]
    bx0, by0 = max(0, math.floor(x0 * sx)), max(0, math.floor(y0 * sy))
    bx1, by1 = min(width, math.ceil(x1 * sx)), min(height, math.ceil(y1 * sy))
    if x1 <= x0 or y1 <= y0 or bx1 <= bx0 or by1 <= by0:
        return None
    return bx0, by0, bx1, by1


def box_iou(a, b) -> float:
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def match_reference_boxes(
    rois: list[dict], boxes: list[tuple[int, int, int, int]], min_iou: float = BOX_MATCH_IOU
) -> tuple[dict[int, tuple[int, float]], list[tuple[int, float]], list[int]]:
    """Greedy one-to-one matching of publisher boxes to mask ROIs by box IoU, best pairs first.

    Returns ({roi index: (box index, IoU)}, [(unmatched box index, its best IoU)], [unmatched
    roi indexes]). Greedy on sorted IoU is exact enough here: a box overlaps one polyp.
    """
    pairs = sorted(
        ((box_iou((r["x0"], r["y0"], r["x1"], r["y1"]), box), ri, bi) for ri, r in enumerate(rois) for bi, box in enumerate(boxes)),
        reverse=True,
    )
    matched: dict[int, tuple[int, float]] = {}
    used_boxes: set[int] = set()
    for iou, ri, bi in pairs:
        if iou < min_iou:
            break
        if ri in matched or bi in used_boxes:
            continue
        matched[ri] = (bi, iou)
        used_boxes.add(bi)
    best = {bi: max((iou for iou, _, b in pairs if b == bi), default=0.0) for bi in range(len(boxes))}
    unmatched_boxes = [(bi, best[bi]) for bi in range(len(boxes)) if bi not in used_boxes]
    unmatched_rois = [ri for ri in range(len(rois)) if ri not in matched]
    return matched, unmatched_boxes, unmatched_rois


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
        "specks_dropped": 0,
        "box_agreement": None,
    }


def ground_record(
    record: dict,
    display: np.ndarray,
    scale: float,
    blobs: BlobStore,
    spec: SourceSpec,
    tally: Counter | None = None,
) -> tuple[list[dict], list[str]]:
    """ROIS rows for one normalized image, and the problems met (reasons).

    A problem is an annotation that could not be used, or a publisher box / mask component the
    cross-check left unmatched (those begin with REFERENCE_PREFIX). ``tally``, when given,
    accumulates counts for the stage report: specks_dropped, reference_boxes, boxes_matched,
    boxes_unmatched, components_without_box, box_iou_sum.
    """
    display = np.asarray(display)
    tally = tally if tally is not None else Counter()
    modality = record.get("modality") or spec.modality
    spacing = record.get("pixel_spacing_mm")
    axis_scales = _axis_scales(record, display, scale)
    try:
        annotations = json.loads(record.get("annotations") or "[]")
    except json.JSONDecodeError as error:
        annotations = []
        problems = [f"annotations are not valid JSON: {error}"]
    else:
        problems = []

    min_area = min_component_area(display.shape[:2], spec)
    background = background_mask(display, modality)  # once per image, shared by its ROIs
    rois: list[dict] = []
    masks: dict[str, np.ndarray] = {}
    side_of = patient_side_locator(record, display)
    reference_boxes: list[tuple[int, int, int, int]] = []
    unplaced_specks = 0
    for number, annotation in enumerate(annotations):
        described = f"annotation {number} ({annotation.get('kind')}, label {annotation.get('label')!r})"
        if annotation.get("reference"):
            box = _display_box(annotation.get("box") or (0, 0, 0, 0), record, display, scale)
            if box is None:
                problems.append(f"{REFERENCE_PREFIX}: {described}: box {annotation.get('box')} is empty in the image")
            else:
                reference_boxes.append(box)
            continue
        try:
            regions = list(_masks_from_annotation(annotation, record, display, scale, blobs))
        except (ValueError, KeyError, TypeError, OSError) as error:
            problems.append(f"{described}: {error}")
            continue
        for label, origin, mask in regions:
            if not mask.any():
                problems.append(f"{described}: no pixels after resizing to {display.shape[0]}x{display.shape[1]}")
                continue
            specks = 0
            parts = [mask]
            if origin == "annotation:mask" and not annotation.get("instances") and spec.grounding.split == "components":
                parts, specks = split_components(mask, min_area)
            tally["specks_dropped"] += specks
            if not parts:
                unplaced_specks += specks
                problems.append(f"{described}: only specks ({specks} component(s) under {min_area} px), no region")
                continue
            for part in parts:
                row = _base_row(record, display, len(rois), label, origin)
                ys, xs = np.nonzero(part)
                _, mask_path = blobs.put("roi_masks", encode_png(part.astype(np.uint8) * 255), "png")
                row.update(
                    x0=int(xs.min()), y0=int(ys.min()), x1=int(xs.max()) + 1, y1=int(ys.max()) + 1,
                    mask_path=mask_path,
                    contour=json.dumps(outline(part)),
                    specks_dropped=specks,
                    **measure_roi(
                        part, display, modality=modality,
                        pixel_spacing_mm=spacing, scale=scale, outline_is_exact=origin != "annotation:box",
                        axis_scales=axis_scales, background=background,
                    ),
                )
                row.update(side_of(row["centroid_x"], row["centroid_y"]))
                masks[row["roi_id"]] = part
                rois.append(row)

    if reference_boxes:
        problems += _cross_check(rois, reference_boxes, tally)

    if not rois:
        row = _base_row(record, display, 0, None, "whole_image")
        row.update(
            x0=0, y0=0, x1=int(display.shape[1]), y1=int(display.shape[0]), mask_path=None, contour=None,
            specks_dropped=unplaced_specks,
            **measure_whole_image(display, pixel_spacing_mm=spacing, scale=scale, axis_scales=axis_scales),
            patient_side_source=None,
        )
        rois.append(row)

    label_counts: dict = {}
    for row in rois:
        label_counts[row["label"]] = label_counts.get(row["label"], 0) + 1
    for row in rois:
        # A whole-image entry is not a finding: it counts as zero of anything.
        row["count_same_label"] = 0 if row["origin"] == "whole_image" else label_counts[row["label"]]
    annotated = sorted((i for i, r in enumerate(rois) if r["origin"] != "whole_image"), key=lambda i: (-rois[i]["area_px"], i))
    for row in rois:
        row["rank_by_area"] = None
    for rank, index in enumerate(annotated, start=1):
        rois[index]["rank_by_area"] = rank
    # Relations from the masks while they are in memory; a later relate(rois) without masks
    # keeps these rather than recomputing them from boxes.
    relate(rois, masks=masks)
    return rois, problems


def _cross_check(rois: list[dict], boxes: list[tuple[int, int, int, int]], tally: Counter) -> list[str]:
    """Match publisher boxes to the mask ROIs; fill box_agreement; report what stays unmatched."""
    candidates = [r for r in rois if r["origin"] == "annotation:mask"]
    matched, unmatched_boxes, unmatched_rois = match_reference_boxes(candidates, boxes)
    for roi_index, (_, iou) in matched.items():
        candidates[roi_index]["box_agreement"] = round(float(iou), 4)
        tally["box_iou_sum"] += float(iou)
    tally["reference_boxes"] += len(boxes)
    tally["boxes_matched"] += len(matched)
    tally["boxes_unmatched"] += len(unmatched_boxes)
    tally["components_without_box"] += len(unmatched_rois)
    problems = [
        f"{REFERENCE_PREFIX}: publisher box {list(boxes[bi])} (display px) matches no mask component (best IoU {best:.2f})"
        for bi, best in unmatched_boxes
    ]
    problems += [
        f"{REFERENCE_PREFIX}: mask component {[candidates[ri][k] for k in ('x0', 'y0', 'x1', 'y1')]} "
        f"(display px) has no publisher box"
        for ri in unmatched_rois
    ]
    return problems
