"""Tests for keras_blockreuse.detection.model: the detector, its loss, decoding and NMS."""

import math

import keras
import numpy as np
import pytest

from keras_blockreuse.detection.data import (
    DetectionBatches,
    DetectionData,
    digit_scenes,
    pack_targets,
)
from keras_blockreuse.detection.evaluate import coco_map
from keras_blockreuse.detection.model import (
    CenterNetLoss,
    batched_nms,
    build_detector,
    decode,
    decode_heatmaps,
    detect,
    encode_targets,
    nms,
)
from keras_blockreuse.sweep.zoo import seed_cnn


def test_detector_blocks_shapes_and_output():
    detector = build_detector(num_classes=3, image_size=(32, 48), width=8)
    assert list(detector.blocks) == ["block_1", "block_2", "neck", "heatmap_head", "box_head"]
    assert detector.output.shape == (None, 8, 12, 3 + 4)
    out = detector.predict(np.zeros((2, 32, 48, 1), "float32"), verbose=0)
    # Heatmap logits start at the prior 0.1 everywhere (zero input, zero features from ReLU).
    np.testing.assert_allclose(1 / (1 + np.exp(-out[..., :3])), 0.1, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by the stride 4"):
        build_detector(image_size=(30, 32))


def test_backbone_matches_the_classifier_and_loads_its_blocks(tmp_path):
    classifier = seed_cnn((8, 8, 1), num_classes=10)
    detector = build_detector(num_classes=10, width=8)
    for name in ("block_1_0", "block_1_1", "block_2_0", "block_2_1"):
        mine = [tuple(w.shape) for w in detector.get_layer(name).weights]
        theirs = [tuple(w.shape) for w in classifier.get_layer(name).weights]
        assert mine == theirs, name
    path = classifier.save_blocks(str(tmp_path / "classifier.blocks.h5"))
    report = detector.load_blocks(path, only=["block_1", "block_2"])
    assert report.ok and sorted(report.loaded) == ["block_1", "block_2"]
    for name in ("block_1_0", "block_2_1"):
        for a, b in zip(
            detector.get_layer(name).weights, classifier.get_layer(name).weights, strict=True
        ):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_encode_targets_hand_made():
    # A 12 x 8 box centred at (30, 22) px: cell (col 7, row 5), offset (0.5, 0.5) at stride 4.
    targets = pack_targets(
        [np.array([[24, 18, 36, 26]]), np.zeros((0, 4))],
        [np.array([3]), np.zeros((0,))],
        max_boxes=2,
    )
    heat, index, size, offset, valid = (np.asarray(t) for t in encode_targets(targets, (16, 16), 4))
    assert heat.shape == (2, 16, 16, 4)
    assert heat[0, 5, 7, 3] == 1.0 and (heat[0] == 1.0).sum() == 1
    assert heat[0, ..., [0, 1, 2]].max() == 0.0 and heat[1].max() == 0.0
    sigma = max(0.5, math.sqrt(3 * 2) / 6)
    np.testing.assert_allclose(heat[0, 5, 8, 3], math.exp(-1 / (2 * sigma**2)), rtol=1e-5)
    assert index[0, 0] == 5 * 16 + 7
    np.testing.assert_allclose(size[0, 0], [math.log(3), math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(offset[0, 0], [0.5, 0.5])
    np.testing.assert_array_equal(valid, [[1, 0], [0, 0]])


def _perfect_logits(targets, h, w, c):
    heat, index, size, offset, _ = (np.asarray(t) for t in encode_targets(targets, (h, w), c))
    logits = np.where(heat >= 1.0, 12.0, -12.0).astype("float32")
    box = np.zeros((len(targets), h * w, 4), "float32")
    for b in range(len(targets)):
        for m in range(targets.shape[1]):
            if targets[b, m, 5]:
                box[b, index[b, m]] = np.concatenate([size[b, m], offset[b, m]])
    return np.concatenate([logits, box.reshape(len(targets), h, w, 4)], axis=-1)


def test_loss_is_small_for_a_perfect_prediction_and_finite_without_boxes():
    data = digit_scenes(4, seed=0)
    targets = pack_targets(data.boxes, data.labels)
    loss = CenterNetLoss(num_classes=10)
    perfect = _perfect_logits(targets, 16, 16, 10)
    good = float(loss(targets, perfect))
    wrong = perfect.copy()
    wrong[..., 10:] += 1.0  # every size and offset off by one
    bad_boxes = float(loss(targets, wrong))
    prior = np.zeros((4, 16, 16, 14), "float32")
    prior[..., :10] = -math.log(9)
    uninformed = float(loss(targets, prior))
    assert good < 0.01
    # Boxes off by 1 in the two log-sizes and the two offsets: L1 of 4 per box.
    np.testing.assert_allclose(bad_boxes - good, 4.0, rtol=1e-4)
    assert uninformed > 1.0
    empty = pack_targets([np.zeros((0, 4))] * 2, [np.zeros((0,))] * 2)
    value = float(loss(empty, prior[:2]))
    assert np.isfinite(value) and value > 0  # only the negatives' focal term
    with pytest.raises(ValueError, match="num_classes \\+ 4 = 14 channels"):
        loss(targets, prior[..., :12])
    config = loss.get_config()
    assert CenterNetLoss.from_config(config).get_config() == config


def test_nms_hand_made():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(3, 0) = 0.9, IoU(3, 1) = 81/109 = 0.74, IoU(0, 1) = 90/110 = 0.82.
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [3, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.85), [3, 1, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.95), [3, 0, 1, 2])
    assert nms(np.zeros((0, 4)), np.zeros(0)).shape == (0,)
    # Different classes never suppress each other.
    np.testing.assert_array_equal(
        batched_nms(boxes, scores, np.array([0, 1, 0, 0]), 0.5), [3, 1, 2]
    )


def test_decode_heatmaps_hand_made():
    heat = np.zeros((2, 16, 16, 4), "float32")
    reg = np.zeros((2, 16, 16, 4), "float32")
    heat[0, 5, 7, 3] = 0.9  # a peak ...
    heat[0, 5, 8, 3] = 0.5  # ... and its shoulder, not a local maximum
    reg[0, 5, 7] = [math.log(3), math.log(2), 0.5, 0.5]
    heat[0, 5, 7, 1] = 0.4  # another class at the same place: kept
    reg[0, 12, 2] = [0.0, 0.0, 0.0, 0.0]
    heat[0, 12, 2, 0] = 0.02  # below the score threshold
    # Two separate peaks of class 2 whose regressed boxes overlap (IoU 0.6): NMS keeps one.
    heat[1, 2, 2, 2], heat[1, 2, 4, 2] = 0.8, 0.7
    reg[1, 2, 2] = [math.log(4), math.log(2), 0.5, 0.5]
    reg[1, 2, 4] = [math.log(4), math.log(2), -0.5, 0.5]
    dets = decode_heatmaps(heat, reg, score_threshold=0.05, nms_iou=0.5)
    assert len(dets) == 2
    np.testing.assert_allclose(dets[0].scores, [0.9, 0.4])
    np.testing.assert_array_equal(dets[0].labels, [3, 1])
    np.testing.assert_allclose(dets[0].boxes[0], [24, 18, 36, 26], atol=1e-5)
    np.testing.assert_allclose(dets[1].boxes, [[2, 6, 18, 14]], atol=1e-5)
    np.testing.assert_allclose(dets[1].scores, [0.8])
    # With a looser NMS both boxes of image 1 stay; max_detections truncates by score.
    assert len(decode_heatmaps(heat, reg, nms_iou=0.7)[1]) == 2
    assert len(decode_heatmaps(heat, reg, max_detections=1)[0]) == 1
    # Boxes are clipped to the image when its size is given.
    reg[0, 5, 7, :2] = math.log(10)
    clipped = decode_heatmaps(heat, reg, image_size=(64, 64))[0].boxes[0]
    np.testing.assert_allclose(clipped, [10, 2, 50, 42], atol=1e-5)
    reg[0, 5, 7, :2] = math.log(20)
    np.testing.assert_allclose(
        decode_heatmaps(heat, reg, image_size=(64, 64))[0].boxes[0], [0, 0, 64, 62], atol=1e-5
    )


def test_decode_applies_the_sigmoid_and_checks_shapes():
    out = np.full((1, 16, 16, 14), -20.0, "float32")
    out[..., 10:] = 0.0
    out[0, 3, 3, 6] = 2.0
    (det,) = decode(out, num_classes=10)
    np.testing.assert_allclose(det.scores, [1 / (1 + math.exp(-2.0))], rtol=1e-6)
    np.testing.assert_allclose(det.boxes, [[10, 10, 14, 14]])  # centre (3 + 0) * 4, size 4
    with pytest.raises(ValueError, match="num_classes \\+ 4 = 7"):
        decode(out, num_classes=3)


@pytest.mark.slow
def test_detector_overfits_a_handful_of_scenes():
    keras.utils.set_random_seed(0)
    scenes = digit_scenes(8, seed=4, max_digits=3)
    detector = build_detector(num_classes=10, width=32)
    detector.compile(optimizer=keras.optimizers.Adam(3e-3), loss=CenterNetLoss(10))
    detector.fit(DetectionBatches(scenes, batch_size=8), epochs=150, verbose=0)
    metrics = coco_map(scenes, detect(detector, scenes.images))
    assert metrics["map_50"] > 0.9, metrics
    assert metrics["map"] > 0.5, metrics


def test_detect_on_untrained_model_returns_one_entry_per_image():
    data = DetectionData(
        np.zeros((3, 32, 32, 1)), [np.zeros((0, 4))] * 3, [np.zeros((0,))] * 3, ("a", "b")
    )
    detector = build_detector(num_classes=2, image_size=(32, 32), width=4)
    dets = detect(detector, data.images, score_threshold=0.5)
    assert len(dets) == 3 and all(len(d) == 0 for d in dets)
