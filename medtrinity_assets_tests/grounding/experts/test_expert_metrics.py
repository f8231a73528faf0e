"""Expert metrics and ROI postprocessing on hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from expert_fixtures import expert_spec
from medtrinity_assets.grounding.experts.base import Instance, Prediction, Sample
from medtrinity_assets.grounding.experts.metrics import average_precision, dice, evaluate
from medtrinity_assets.grounding.experts.postprocess import to_rois
from medtrinity_assets.grounding.rois import box_iou


def rect(shape, x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def instance(shape, box, score) -> Instance:
    return Instance(mask=rect(shape, *box), score=score, box=box)


def test_dice_and_box_iou_known_values():
    shape = (10, 10)
    a, b = rect(shape, 0, 0, 4, 5), rect(shape, 2, 0, 6, 5)  # 20 px each, 10 in common
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0 and dice(a, np.zeros(shape, bool)) == 0.0
    assert dice(np.zeros(shape, bool), np.zeros(shape, bool)) == 1.0  # a normal image left empty
    assert box_iou((0, 0, 4, 5), (2, 0, 6, 5)) == pytest.approx(10 / 30)
    assert box_iou((0, 0, 2, 2), (5, 5, 6, 6)) == 0.0
    with pytest.raises(ValueError, match="different shapes"):
        dice(a, np.zeros((5, 5), bool))


def test_average_precision_known_ranking():
    # Two objects; ranked hits T, F, T: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    assert average_precision([(0.9, True), (0.8, False), (0.7, True)], 2) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision([], 3) == 0.0 and average_precision([(0.5, False)], 0) is None


def test_to_rois_threshold_min_area_max_count_and_order():
    shape = (100, 100)
    spec = expert_spec(confidence_threshold=0.5, min_area_fraction=0.01, max_rois=2)
    prediction = Prediction(instances=(
        instance(shape, (0, 0, 10, 10), 0.6),   # 100 px
        instance(shape, (20, 20, 23, 23), 0.99),  # 9 px < 1% of the image: a speck
        instance(shape, (40, 40, 60, 60), 0.6),  # same score, larger: first of the two
        instance(shape, (70, 70, 90, 90), 0.4),  # under the threshold
        instance(shape, (0, 50, 20, 70), 0.9),
    ))
    kept = to_rois(prediction, spec, shape)
    assert [(i.box, i.score) for i in kept] == [((0, 50, 20, 70), 0.9), ((40, 40, 60, 60), 0.6)]


class FixedFamily:
    """Returns the given predictions: evaluate's arithmetic alone, on known masks."""

    name = "fixed"

    def __init__(self, predictions):
        self.predictions = predictions

    def predict(self, model, spec, images, device):
        out, self.predictions = self.predictions[: len(images)], self.predictions[len(images):]
        return out


def test_evaluate_on_known_masks():
    shape = (20, 20)
    spec = expert_spec(confidence_threshold=0.5, min_area_fraction=0.0, max_rois=5)
    truth = rect(shape, 0, 0, 10, 10)
    samples = [
        Sample("r1", "s", "p1", np.zeros(shape, np.uint8), truth, boxes=((0, 0, 10, 10),), instances=(truth,)),
        Sample("r2", "s", "p2", np.zeros(shape, np.uint8), np.zeros(shape, bool)),  # a normal image
        Sample("r3", "s", "p3", np.zeros(shape, np.uint8), truth, boxes=((0, 0, 10, 10),), instances=(truth,)),
    ]
    predictions = [
        Prediction((instance(shape, (0, 0, 10, 5), 0.9),)),  # half the polyp: Dice 2*50/150, IoU 0.5
        Prediction(()),  # empty and empty: Dice 1
        Prediction((instance(shape, (10, 10, 20, 20), 0.8),  # a false positive elsewhere
                    instance(shape, (0, 0, 10, 10), 0.3))),  # the right box, under the threshold
    ]
    metrics = evaluate(FixedFamily(predictions), None, spec, samples, "cpu")
    assert metrics["dice"] == pytest.approx((2 * 50 / 150 + 1.0 + 0.0) / 3, abs=1e-5)
    assert metrics["box_iou"] == pytest.approx((0.5 + 0.0) / 2)
    # Ranked: 0.9 hit (IoU 0.5), 0.8 miss, 0.3 hit -> AP = 0.5*1 + 0.5*2/3.
    assert metrics["map50"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-5)
    assert metrics["precision"] == pytest.approx(0.5) and metrics["recall"] == pytest.approx(0.5)
    assert metrics["images"] == 3
