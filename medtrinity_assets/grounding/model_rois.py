"""Stage 3a core: expert models' instances as ROI rows, measured like annotation ROIs.

An expert (grounding/experts) returns instances (bool mask at the image's size, score, box) for
a normalized image. Each becomes a MODEL_ROIS row: the same attribute code as annotation ROIs
(grounding.attributes.measure_roi, patient side, relations), origin ``model:<expert_id>``, label
the expert's target, confidence its score, plus the weights it came from. On a record that has
annotation ROIs the row is not used downstream; it carries its IoU against the annotation,
which the drift check averages per expert.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from medtrinity_assets.grounding.attributes import background_mask, measure_roi
from medtrinity_assets.grounding.patient_side import patient_side_locator
from medtrinity_assets.grounding.relations import relate
from medtrinity_assets.grounding.rois import _axis_scales, outline
from medtrinity_assets.imaging.normalize import encode_png
from medtrinity_assets.storage import BlobStore
from medtrinity_assets.vocabulary import MODEL_ORIGIN_PREFIX, normalize_label
from medtrinity_assets.sources.label_state import label_state_of

# Scores are rounded so a rerun on another BLAS build writes the same rows.
SCORE_DIGITS = 4


def model_origin(expert_id: str) -> str:
    return f"{MODEL_ORIGIN_PREFIX}{expert_id}"


def model_roi_id(record_id: str, expert_id: str, index: int) -> str:
    """Stable and never equal to an annotation roi_id (grounding.rois.roi_id_for)."""
    return hashlib.sha256(f"{record_id}\x1fmodel\x1f{expert_id}\x1f{index}".encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class ExpertRun:
    """One expert as the stage applies it: its spec and the weights it was loaded from."""

    expert_id: str
    target: str
    task: str  # segment | detect
    weights_sha256: str
    provenance: str  # trained | brought
    target_labels: tuple[str, ...]  # normalized annotation labels it is compared with (empty: all)
    iou_floor: float

    @classmethod
    def of(cls, spec, weights_sha256: str) -> "ExpertRun":
        return cls(
            expert_id=spec.id,
            target=spec.target,
            task=spec.task,
            weights_sha256=weights_sha256,
            provenance="brought" if spec.brings_weights else "trained",
            target_labels=tuple(sorted({normalize_label(label) for label in spec.train_labels})),
            iou_floor=float(spec.min_iou_on_annotated),
        )


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 0.0


def best_iou(mask: np.ndarray, annotation_masks: Sequence[np.ndarray]) -> float:
    """The best IoU of ``mask`` against each annotated region and against their union: a model
    that outlines two touching polyps as one is matched by the union, one that separates them by
    the single region."""
    if not annotation_masks:
        return 0.0
    candidates = list(annotation_masks)
    if len(candidates) > 1:
        candidates.append(np.logical_or.reduce(candidates))
    return max(mask_iou(mask, other) for other in candidates)


def annotation_masks_for(run: ExpertRun, annotation_rois: Sequence[dict], load_mask, shape) -> list[np.ndarray]:
    """Masks of the record's annotation ROIs whose label the expert is compared with."""
    masks = []
    for roi in annotation_rois or ():
        if run.target_labels and normalize_label(roi.get("label") or "") not in run.target_labels:
            continue
        if not roi.get("mask_path"):
            continue
        mask = np.asarray(load_mask(roi["mask_path"]))
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        if mask.shape[:2] != tuple(shape):
            raise ValueError(f"annotation mask {roi['mask_path']} is {mask.shape[:2]}, the image {tuple(shape)}")
        masks.append(mask > 0)
    return masks


def model_roi_rows(
    record: dict,
    display: np.ndarray,
    found: Sequence[tuple[ExpertRun, Sequence]],
    blobs: BlobStore,
    load_mask,
) -> list[dict]:
    """MODEL_ROIS rows of one record: ``found`` pairs each expert with its instances on
    ``display`` (apply.find_rois order: most confident / largest first).

    ``record`` is a raw record joined with its normalized image (``image_path``, ``scale``) and
    ``annotation_rois`` (its ROIS rows of annotation origin: label, mask_path), or none.
    """
    display = np.asarray(display)
    shape = display.shape[:2]
    modality = record.get("modality")
    annotation_rois = [r for r in (record.get("annotation_rois") or []) if str(r.get("origin") or "").startswith("annotation")]
    annotated = bool(annotation_rois)
    # An image the source labels normal keeps the source's word: a model's regions there are
    # recorded (for review) but never replace its description, which would contradict the label.
    applied = not annotated and label_state_of(record) != "normal"
    scale = float(record.get("scale") or 1.0)
    axis_scales = _axis_scales(record, display, scale)
    background = background_mask(display, modality)
    side_of = patient_side_locator(record, display)
    rows: list[dict] = []
    masks: dict[str, np.ndarray] = {}
    for run, instances in found:
        compared = annotation_masks_for(run, annotation_rois, load_mask, shape) if annotated else []
        for instance in instances:
            mask = np.asarray(instance.mask, dtype=bool)
            if mask.shape != shape:
                raise ValueError(f"expert {run.expert_id} returned a {mask.shape} mask for a {shape} image")
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            _, mask_path = blobs.put("roi_masks", encode_png(mask.astype(np.uint8) * 255), "png")
            row = {
                "roi_id": model_roi_id(record["record_id"], run.expert_id, sum(1 for r in rows if r["expert_id"] == run.expert_id)),
                "record_id": record["record_id"],
                "source_id": record["source_id"],
                "label": run.target,
                "origin": model_origin(run.expert_id),
                "confidence": round(min(1.0, max(0.0, float(instance.score))), SCORE_DIGITS),
                "image_height": int(shape[0]),
                "image_width": int(shape[1]),
                "x0": int(xs.min()), "y0": int(ys.min()), "x1": int(xs.max()) + 1, "y1": int(ys.max()) + 1,
                "mask_path": mask_path,
                "contour": json.dumps(outline(mask)),
                "relations": None,
                "specks_dropped": 0,
                "box_agreement": None,
                # A detector's mask is its box: a rectangle says nothing of shape or margin.
                **measure_roi(
                    mask, display, modality=modality, pixel_spacing_mm=record.get("pixel_spacing_mm"), scale=scale,
                    outline_is_exact=run.task == "segment", axis_scales=axis_scales, background=background,
                ),
                "expert_id": run.expert_id,
                "weights_sha256": run.weights_sha256,
                "model_provenance": run.provenance,
                "annotated": annotated,
                "applied": applied,
                "iou_vs_annotation": round(best_iou(mask, compared), SCORE_DIGITS) if compared else None,
                "target_labels": list(run.target_labels),
                "iou_floor": run.iou_floor,
            }
            row.update(side_of(row["centroid_x"], row["centroid_y"]))
            masks[row["roi_id"]] = mask
            rows.append(row)
    counts: dict = {}
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    ranked = sorted(range(len(rows)), key=lambda i: (-rows[i]["area_px"], rows[i]["roi_id"]))
    for rank, index in enumerate(ranked, start=1):
        rows[index]["rank_by_area"] = rank
        rows[index]["count_same_label"] = counts[rows[index]["label"]]
    relate(rows, masks=masks)
    return rows
