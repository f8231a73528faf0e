"""Validation metrics, computed from ``family.predict`` so every family is measured the same way.

- dice: per image, the union of the ROIs the expert would report (postprocess.to_rois) against
  the union of the target annotations; two empty masks agree (1.0, a normal image left empty);
  mean over the images.
- box_iou: for each annotated object, the best box IoU among the reported ROIs (0 when none);
  mean over the objects.
- map50: average precision at box IoU 0.5 over all predicted instances ranked by score (before
  the confidence cut), greedy one-to-one matching per image, all-point interpolation (VOC).
- precision / recall: of the reported ROIs (after the cut) at box IoU 0.5.
"""

from __future__ import annotations

import time

import numpy as np

from medtrinity_assets.grounding.experts.base import Sample
from medtrinity_assets.grounding.experts.postprocess import to_rois
from medtrinity_assets.grounding.experts.spec import ExpertSpec
from medtrinity_assets.grounding.rois import box_iou

IOU_MATCH = 0.5
# Predictions hold a full-size probability map each: predict this many images at a time.
CHUNK = 32


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    pred, true = np.asarray(pred_mask, dtype=bool), np.asarray(true_mask, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"dice of masks of different shapes {pred.shape} and {true.shape}")
    total = int(pred.sum()) + int(true.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & true).sum()) / total


def _match(pred_boxes: list, true_boxes: list) -> int:
    """True positives of predictions (in the given order) greedily matched to unused truths."""
    used: set[int] = set()
    hits = 0
    for box in pred_boxes:
        best, best_iou = None, IOU_MATCH
        for index, truth in enumerate(true_boxes):
            if index in used:
                continue
            iou = box_iou(box, truth)
            if iou >= best_iou:
                best, best_iou = index, iou
        if best is not None:
            used.add(best)
            hits += 1
    return hits


def average_precision(ranked: list[tuple[float, bool]], truths: int) -> float | None:
    """AP of (score, is_true_positive) pairs against ``truths`` objects (all-point interpolation)."""
    if truths == 0:
        return None
    if not ranked:
        return 0.0
    ranked = sorted(ranked, key=lambda item: -item[0])
    tp = np.cumsum([hit for _, hit in ranked])
    precision = tp / np.arange(1, len(ranked) + 1)
    recall = tp / truths
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    previous = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - previous) * envelope))


def _ranked_hits(instances, truths: list) -> list[tuple[float, bool]]:
    ordered = sorted(instances, key=lambda inst: -inst.score)
    used: set[int] = set()
    out = []
    for inst in ordered:
        best, best_iou = None, IOU_MATCH
        for index, truth in enumerate(truths):
            if index not in used and box_iou(inst.box, truth) >= best_iou:
                best, best_iou = index, box_iou(inst.box, truth)
        if best is not None:
            used.add(best)
        out.append((inst.score, best is not None))
    return out


def evaluate(family, model, spec: ExpertSpec, samples: list[Sample], device: str) -> dict:
    started = time.perf_counter()
    dices, best_ious, ranked = [], [], []
    reported = hits = truths = 0
    for start in range(0, len(samples), CHUNK):
        chunk = samples[start:start + CHUNK]
        predictions = family.predict(model, spec, [s.image for s in chunk], device)
        for sample, prediction in zip(chunk, predictions):
            rois = to_rois(prediction, spec, sample.mask.shape)
            union = np.zeros(sample.mask.shape, dtype=bool)
            for roi in rois:
                union |= roi.mask
            dices.append(dice(union, sample.mask))
            truth_boxes = list(sample.boxes)
            for truth in truth_boxes:
                best_ious.append(max((box_iou(roi.box, truth) for roi in rois), default=0.0))
            ranked += _ranked_hits(prediction.instances, truth_boxes)
            reported += len(rois)
            hits += _match([roi.box for roi in rois], truth_boxes)
            truths += len(truth_boxes)
    ap = average_precision(ranked, truths)
    return {
        "dice": round(float(np.mean(dices)), 5) if dices else None,
        "box_iou": round(float(np.mean(best_ious)), 5) if best_ious else None,
        "map50": None if ap is None else round(ap, 5),
        "precision": round(hits / reported, 5) if reported else (1.0 if truths == 0 else 0.0),
        "recall": round(hits / truths, 5) if truths else None,
        "images": len(samples),
        "seconds": round(time.perf_counter() - started, 3),
    }
