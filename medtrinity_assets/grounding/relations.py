"""Region-wise relations between the ROIs of one image (MedTrinity's local-global part).

Each ROI's ``relations`` is a JSON list of {"roi_id", "label", "relation", "distance"}, read as
"this ROI <relation> that ROI", all in image coordinates (left_of means nearer the image's left
edge; patient sides are the attributes' business). Containment and overlap come from the masks
when they are given, else from the boxes.
"""

from __future__ import annotations

import json
import math
from typing import Mapping

import numpy as np

CONTAINED = 0.95  # share of the smaller region inside the larger one that counts as "inside"
ADJACENT_GAP = 0.02  # box gap (fraction of image width/height) within which ROIs are adjacent
# Directional relations are kept to the nearest few ROIs: an image with 100+ nuclei would
# otherwise carry 10,000 pair entries that no description reads. Containment and overlap are
# always kept, however far apart the centroids.
MAX_NEIGHBOURS = 8


def _box(roi: dict) -> tuple[int, int, int, int]:
    return int(roi["x0"]), int(roi["y0"]), int(roi["x1"]), int(roi["y1"])


def _box_area(box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _intersection(a, b) -> int:
    return _box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def _overlap(a: dict, b: dict, masks: Mapping[str, np.ndarray] | None) -> tuple[int, int, int]:
    """(area a, area b, area of a and b) from the masks when both are at hand, else the boxes."""
    box_a, box_b = _box(a), _box(b)
    shared_box = _intersection(box_a, box_b)
    # Disjoint boxes mean disjoint masks: skip the full-image mask arithmetic (images with
    # hundreds of nuclei would otherwise spend seconds here).
    if shared_box and masks and a["roi_id"] in masks and b["roi_id"] in masks:
        mask_a, mask_b = masks[a["roi_id"]], masks[b["roi_id"]]
        x0, y0 = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
        x1, y1 = min(box_a[2], box_b[2]), min(box_a[3], box_b[3])
        shared = int(np.logical_and(mask_a[y0:y1, x0:x1], mask_b[y0:y1, x0:x1]).sum())
        return int(a["area_px"]), int(b["area_px"]), shared
    return _box_area(box_a), _box_area(box_b), shared_box


def pair_relations(a: dict, b: dict, masks: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """Relations of ROI ``a`` to ROI ``b``."""
    area_a, area_b, shared = _overlap(a, b, masks)
    if shared > 0:
        if area_b and shared >= CONTAINED * area_b and area_a > area_b:
            return ["contains"]
        if area_a and shared >= CONTAINED * area_a and area_b > area_a:
            return ["inside"]
        return ["overlaps"]
    width, height = a["image_width"], a["image_height"]
    dx = (a["centroid_x"] - b["centroid_x"]) * width
    dy = (a["centroid_y"] - b["centroid_y"]) * height
    if abs(dx) >= abs(dy):
        relations = ["left_of" if dx < 0 else "right_of"]
    else:
        relations = ["above" if dy < 0 else "below"]
    box_a, box_b = _box(a), _box(b)
    gap_x = max(0, box_b[0] - box_a[2], box_a[0] - box_b[2]) / width
    gap_y = max(0, box_b[1] - box_a[3], box_a[1] - box_b[3]) / height
    if gap_x <= ADJACENT_GAP and gap_y <= ADJACENT_GAP:
        relations.append("adjacent")
    return relations


def relate(
    rois: list[dict], masks: Mapping[str, np.ndarray] | None = None, max_neighbours: int = MAX_NEIGHBOURS
) -> None:
    """Fill each ROI's ``relations`` (JSON) in place; "[]" for a lone ROI.

    ``masks`` maps roi_id to a boolean mask for exact containment and overlap. Without masks,
    ROIs that already carry relations (ground_record computes them from the masks) are left as
    they are, because recomputing from boxes would only lose precision.
    """
    if masks is None and rois and all(roi.get("relations") is not None for roi in rois):
        return
    for roi in rois:
        width, height = roi["image_width"], roi["image_height"]
        diagonal = math.hypot(width, height)
        by_distance = sorted(
            (
                math.hypot((roi["centroid_x"] - o["centroid_x"]) * width, (roi["centroid_y"] - o["centroid_y"]) * height)
                / diagonal,
                index,
                o,
            )
            for index, o in enumerate(rois)
            if o is not roi
        )
        entries = []
        for rank, (distance, _, other) in enumerate(by_distance):
            relations = pair_relations(roi, other, masks)
            if rank >= max_neighbours:
                relations = [r for r in relations if r in ("contains", "inside", "overlaps")]
            for relation in relations:
                entries.append(
                    {"roi_id": other["roi_id"], "label": other["label"], "relation": relation, "distance": round(distance, 4)}
                )
        roi["relations"] = json.dumps(entries)
