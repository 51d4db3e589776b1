"""Tests for keras_blockreuse.detection.evaluate: COCO mAP on hand-made predictions."""

import math

import numpy as np
import pytest

from keras_blockreuse.detection.data import DetectionData
from keras_blockreuse.detection.evaluate import coco_map, to_coco
from keras_blockreuse.detection.model import Detections


def _ground_truth():
    # Two images; three boxes of class 0, none of class 1.
    return DetectionData(
        images=np.zeros((2, 64, 64, 1)),
        boxes=[np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([[0, 0, 10, 10]])],
        labels=[np.array([0, 0]), np.array([0])],
        class_names=("a", "b"),
        image_ids=[5, 9],
    )


def _dets(*rows):
    rows = [r for r in rows]
    return Detections(
        boxes=np.array([r[0] for r in rows], "float32").reshape(-1, 4),
        scores=np.array([r[1] for r in rows], "float32"),
        labels=np.array([r[2] for r in rows], "int32"),
    )


def test_map_equals_the_hand_computed_value():
    # Ranked detections: exact hit on image 5 (0.9), false positive on image 9 (0.8),
    # a box with IoU 100/120 = 0.833 against [20, 20, 30, 30] (0.7), exact hit on image 9 (0.6).
    detections = [
        _dets(([0, 0, 10, 10], 0.9, 0), ([20, 20, 30, 32], 0.7, 0)),
        _dets(([40, 40, 50, 50], 0.8, 0), ([0, 0, 10, 10], 0.6, 0)),
    ]
    metrics = coco_map(_ground_truth(), detections)
    # IoU thresholds .50-.80 (7 of 10): TP FP TP TP over 3 boxes. Interpolated precision is 1
    # for recall <= 1/3 (34 of COCO's 101 recall points) and 3/4 above: AP = (34 + 67 * 0.75) / 101.
    ap_low = (34 + 67 * 0.75) / 101
    # Thresholds .85-.95: TP FP FP TP, recall reaches 2/3: AP = (34 + 33 * 0.5) / 101.
    ap_high = (34 + 33 * 0.5) / 101
    assert metrics["map_50"] == pytest.approx(ap_low, abs=1e-9)
    assert metrics["map_75"] == pytest.approx(ap_low, abs=1e-9)
    assert metrics["map"] == pytest.approx((7 * ap_low + 3 * ap_high) / 10, abs=1e-9)
    assert metrics["recall_100"] == pytest.approx((7 * 1 + 3 * 2 / 3) / 10, abs=1e-9)


def test_perfect_detections_score_one_and_wrong_class_scores_zero():
    gt = _ground_truth()
    perfect = [_dets(*[(b, 0.9, 0) for b in boxes.tolist()]) for boxes in gt.boxes]
    assert coco_map(gt, perfect)["map"] == pytest.approx(1.0)
    wrong_class = [_dets(*[(b, 0.9, 1) for b in boxes.tolist()]) for boxes in gt.boxes]
    assert coco_map(gt, wrong_class)["map_50"] == 0.0


def test_no_detections_and_no_ground_truth():
    gt = _ground_truth()
    empty = [_dets(), _dets()]
    assert coco_map(gt, empty)["map_50"] == 0.0
    nothing = DetectionData(np.zeros((1, 8, 8, 1)), [np.zeros((0, 4))], [np.zeros((0,))], ("a",))
    assert math.isnan(coco_map(nothing, [_dets(([0, 0, 4, 4], 0.5, 0))])["map"])
    with pytest.raises(ValueError, match="one detections entry per image \\(2 images\\)"):
        coco_map(gt, [empty[0]])


def test_to_coco_converts_boxes_to_xywh_and_ids():
    coco = to_coco(_ground_truth())
    assert [im["id"] for im in coco["images"]] == [5, 9]
    assert coco["annotations"][1]["bbox"] == [20.0, 20.0, 10.0, 10.0]
    assert coco["annotations"][1]["image_id"] == 5 and coco["annotations"][2]["image_id"] == 9
    assert coco["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
