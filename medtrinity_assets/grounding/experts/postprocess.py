"""A family's raw prediction -> the ROIs an expert reports for one image.

The same cut for every family: instances under the spec's confidence threshold or smaller than
``min_area_fraction`` of the image are dropped, and at most ``max_rois`` are kept, the most
confident first (ties: the larger first, then top-left), so the order is stable across runs.
"""

from __future__ import annotations

import math

from medtrinity_assets.grounding.experts.base import Instance, Prediction
from medtrinity_assets.grounding.experts.spec import ExpertSpec


def to_rois(prediction: Prediction, spec: ExpertSpec, image_shape) -> list[Instance]:
    height, width = int(image_shape[0]), int(image_shape[1])
    min_area = max(1, math.ceil(spec.min_area_fraction * height * width))
    kept = []
    for instance in prediction.instances:
        if instance.score < spec.confidence_threshold:
            continue
        if instance.mask.shape != (height, width):
            raise ValueError(f"instance mask {instance.mask.shape} does not match the image {(height, width)}")
        area = int(instance.mask.sum())
        if area < min_area:
            continue
        kept.append((-instance.score, -area, instance.box[1], instance.box[0], len(kept), instance))
    kept.sort(key=lambda item: item[:5])
    return [item[-1] for item in kept[: spec.max_rois]]
