"""Tests for keras_blockreuse.detection.data: scenes, COCO and VOC readers, batching."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_blockreuse.detection.data import (
    DIGIT_CLASS_NAMES,
    DetectionBatches,
    DetectionData,
    box_iou,
    digit_scenes,
    digit_split,
    pack_targets,
    pad_boxes,
    read_coco,
    read_voc,
    resize_bilinear,
    unpack_targets,
)

# --- digit scenes --------------------------------------------------------------------------


def test_scenes_boxes_inside_image_and_counts():
    scenes = digit_scenes(60, seed=3, image_size=64, min_digits=1, max_digits=4)
    assert scenes.images.shape == (60, 64, 64, 1)
    assert scenes.images.dtype == np.float32
    assert 0.0 <= scenes.images.min() and scenes.images.max() <= 1.0
    for boxes, labels in zip(scenes.boxes, scenes.labels, strict=True):
        assert 1 <= len(boxes) <= 4
        assert len(labels) == len(boxes)
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
        assert np.all(boxes[:, 2] <= 64) and np.all(boxes[:, 3] <= 64)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert np.all((labels >= 0) & (labels <= 9))
        if len(boxes) > 1:
            iou = box_iou(boxes, boxes)
            assert iou[~np.eye(len(boxes), dtype=bool)].max() <= 0.1 + 1e-9
    assert scenes.class_names == DIGIT_CLASS_NAMES


def test_scenes_box_is_tight_around_ink():
    scenes = digit_scenes(20, seed=1, scale_range=(10, 14))
    for image, boxes in zip(scenes.images[..., 0], scenes.boxes, strict=True):
        ink = image >= 0.25
        for x1, y1, x2, y2 in boxes.astype(int):
            inside = ink[y1:y2, x1:x2]
            # Every edge row and column of the box holds ink.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
        covered = np.zeros_like(ink)
        for x1, y1, x2, y2 in boxes.astype(int):
            covered[y1:y2, x1:x2] = True
        assert not (ink & ~covered).any()  # no clutter asked: all ink is in a box


def test_scenes_labels_are_the_drawn_digits():
    # At scale 8 a digit is pasted unchanged, so the box's crop is the digit's own ink box.
    pool_x, pool_y = digit_split("test")
    scenes = digit_scenes(25, split="test", seed=5, min_digits=1, max_digits=1, scale_range=(8, 8))

    def ink_crop(img):
        rows = np.flatnonzero(img.max(axis=1) >= 0.25)
        cols = np.flatnonzero(img.max(axis=0) >= 0.25)
        return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    crops = [ink_crop(d) for d in pool_x]
    for image, (box,), (label,) in zip(
        scenes.images[..., 0], scenes.boxes, scenes.labels, strict=True
    ):
        x1, y1, x2, y2 = box.astype(int)
        crop = image[y1:y2, x1:x2]
        matches = {
            int(pool_y[k])
            for k, c in enumerate(crops)
            if c.shape == crop.shape and np.allclose(c, crop, atol=1e-6)
        }
        assert matches == {int(label)}


def test_scenes_are_deterministic_and_seed_dependent():
    a = digit_scenes(10, seed=7, clutter=2, noise=0.05)
    b = digit_scenes(10, seed=7, clutter=2, noise=0.05)
    c = digit_scenes(10, seed=8, clutter=2, noise=0.05)
    np.testing.assert_array_equal(a.images, b.images)
    for x, y in zip(a.boxes, b.boxes, strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.labels, b.labels, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, c.images)
    # The same seed in another split gives other scenes.
    assert not np.array_equal(a.images, digit_scenes(10, seed=7, split="val").images)


def test_digit_splits_are_disjoint_and_cover_the_digits():
    parts = [digit_split(s)[0].reshape(-1, 64) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [1078, 360, 359]
    rows = [{r.tobytes() for r in p} for p in parts]
    # Duplicate digits inside sklearn's set are rare; no image is shared between splits.
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        digit_split("dev")


def test_scenes_clutter_and_noise_stay_in_range():
    scenes = digit_scenes(5, seed=0, clutter=3, noise=0.1)
    assert 0.0 <= scenes.images.min() and scenes.images.max() <= 1.0
    plain = digit_scenes(5, seed=0)
    assert scenes.images.std() > plain.images.std() * 0.9  # noise was added


def test_scenes_argument_errors():
    with pytest.raises(ValueError, match="min_digits <= max_digits"):
        digit_scenes(1, min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="scale_range=\\(8, 80\\)"):
        digit_scenes(1, scale_range=(8, 80))


def test_resize_bilinear_matches_tensorflow():
    x = np.random.default_rng(0).random((8, 8, 2)).astype("float32")
    for h, w in [(16, 16), (13, 9), (8, 8), (4, 6)]:
        expected = tf.image.resize(x, (h, w), method="bilinear").numpy()
        np.testing.assert_allclose(resize_bilinear(x, h, w), expected, atol=1e-5)


def test_box_iou_values():
    iou = box_iou(np.array([[0, 0, 2, 2], [0, 0, 1, 1]]), np.array([[1, 0, 3, 2], [5, 5, 6, 6]]))
    np.testing.assert_allclose(iou, [[1 / 3, 0.0], [0.0, 0.0]])


def test_detection_data_validation():
    with pytest.raises(ValueError, match="1 boxes but 2 labels"):
        DetectionData(np.zeros((1, 4, 4, 1)), [np.zeros((1, 4))], [np.array([0, 1])], ("a", "b"))
    with pytest.raises(ValueError, match=r"labels \[5\]; expected class indices in \[0, 2\)"):
        DetectionData(np.zeros((1, 4, 4, 1)), [np.zeros((1, 4))], [np.array([5])], ("a", "b"))
    with pytest.raises(ValueError, match="one boxes array and one labels array per image"):
        DetectionData(np.zeros((2, 4, 4, 1)), [np.zeros((1, 4))], [np.array([0])], ("a",))


# --- COCO and Pascal VOC --------------------------------------------------------------------


def _fixture_scenes():
    scenes = digit_scenes(3, seed=11, max_digits=3)
    # Quantize to 8 bits so PNG files hold the images exactly; the middle image has no boxes.
    images = np.round(scenes.images * 255) / 255
    boxes = [scenes.boxes[0], np.zeros((0, 4), "float32"), scenes.boxes[2]]
    labels = [scenes.labels[0], np.zeros((0,), "int32"), scenes.labels[2]]
    return DetectionData(images, boxes, labels, DIGIT_CLASS_NAMES)


def _write_png(path, image):
    tf.io.write_file(path, tf.io.encode_png(np.round(image * 255).astype("uint8")))


def _write_coco(root, data, image_ids):
    os.makedirs(os.path.join(root, "images"))
    images, annotations = [], []
    for image_id, image, boxes, labels in zip(
        image_ids, data.images, data.boxes, data.labels, strict=True
    ):
        name = f"{image_id:06d}.png"
        _write_png(os.path.join(root, "images", name), image)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 10 * (label + 1),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    # A crowd region, which readers skip.
    annotations.append(
        {
            "id": 999,
            "image_id": image_ids[0],
            "category_id": 10,
            "bbox": [0, 0, 5, 5],
            "area": 25,
            "iscrowd": 1,
        }
    )
    # Categories listed out of order, with ids 10, 20, ... 100.
    categories = [{"id": 10 * (k + 1), "name": str(k)} for k in reversed(range(10))]
    path = os.path.join(root, "instances_fixture.json")
    with open(path, "w") as f:
        json.dump({"images": images[::-1], "annotations": annotations, "categories": categories}, f)
    return path


def _write_voc(root, data, image_ids):
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub))
    names = []
    for image_id, image, boxes, labels in zip(
        image_ids, data.images, data.boxes, data.labels, strict=True
    ):
        name = f"{image_id:06d}"
        names.append(name)
        _write_png(os.path.join(root, "JPEGImages", name + ".png"), image)
        objects = "".join(
            f"<object><name>{label}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax>"
            "</bndbox></object>"
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True)
        )
        if image_id == image_ids[0]:  # a difficult object, skipped by default
            objects += (
                "<object><name>7</name><difficult>1</difficult><bndbox><xmin>1</xmin>"
                "<ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>"
            )
        xml = (
            f"<annotation><filename>{name}.png</filename><size><width>64</width>"
            f"<height>64</height><depth>1</depth></size>{objects}</annotation>"
        )
        with open(os.path.join(root, "Annotations", name + ".xml"), "w") as f:
            f.write(xml)
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


def _assert_same(a, b):
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    assert a.class_names == b.class_names
    assert [len(x) for x in a.boxes] == [len(x) for x in b.boxes]
    for x, y in zip(a.boxes, b.boxes, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    for x, y in zip(a.labels, b.labels, strict=True):
        np.testing.assert_array_equal(x, y)


def test_coco_and_voc_read_into_the_same_representation(tmp_path):
    data = _fixture_scenes()
    image_ids = [3, 7, 11]
    coco = read_coco(_write_coco(tmp_path / "coco", data, image_ids), tmp_path / "coco" / "images")
    _write_voc(str(tmp_path / "voc"), data, image_ids)
    voc = read_voc(tmp_path / "voc", split="test", class_names=DIGIT_CLASS_NAMES)
    _assert_same(coco, data)
    _assert_same(voc, data)
    assert coco.image_ids == image_ids
    assert coco.images.shape == voc.images.shape == (3, 64, 64, 1)
    assert len(coco.boxes[1]) == 0 and coco.boxes[1].shape == (0, 4)
    # Without a split, VOC reads every annotation file in sorted order.
    _assert_same(read_voc(tmp_path / "voc", class_names=DIGIT_CLASS_NAMES), data)
    # Difficult objects only when asked.
    hard = read_voc(tmp_path / "voc", class_names=DIGIT_CLASS_NAMES, keep_difficult=True)
    assert len(hard.boxes[0]) == len(data.boxes[0]) + 1


def test_readers_resize_images_and_boxes(tmp_path):
    data = _fixture_scenes()
    path = _write_coco(tmp_path / "coco", data, [1, 2, 3])
    small = read_coco(path, tmp_path / "coco" / "images", image_size=(32, 48), channels=3)
    assert small.images.shape == (3, 32, 48, 3)
    np.testing.assert_allclose(small.boxes[0], data.boxes[0] * [0.75, 0.5, 0.75, 0.5], atol=1e-5)


def test_reader_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no 'annotations' key"):
        read_coco(bad, tmp_path)
    with pytest.raises(ValueError, match="no 'Annotations' folder"):
        read_voc(tmp_path)
    data = _fixture_scenes()
    _write_voc(str(tmp_path / "voc"), data, [1, 2, 3])
    with pytest.raises(ValueError, match="not in class_names"):
        read_voc(tmp_path / "voc", class_names=("a", "b"))


# --- batching -----------------------------------------------------------------------------


def test_pad_boxes_zero_one_many():
    boxes = [np.zeros((0, 4)), np.array([[1, 2, 3, 4]]), np.arange(20).reshape(5, 4)]
    labels = [np.zeros((0,)), np.array([7]), np.array([0, 1, 2, 3, 4])]
    b, lab, mask = pad_boxes(boxes, labels)
    assert b.shape == (3, 5, 4) and lab.shape == (3, 5) and mask.shape == (3, 5)
    assert mask.sum(axis=1).tolist() == [0, 1, 5]
    assert lab.tolist() == [[-1] * 5, [7, -1, -1, -1, -1], [0, 1, 2, 3, 4]]
    np.testing.assert_array_equal(b[1, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(b[2], np.arange(20).reshape(5, 4))
    assert not b[0].any() and not b[1, 1:].any()
    # No boxes anywhere still gives one (masked) slot per image.
    b, lab, mask = pad_boxes([np.zeros((0, 4))] * 2, [np.zeros((0,))] * 2)
    assert b.shape == (2, 1, 4) and not mask.any() and (lab == -1).all()
    with pytest.raises(ValueError, match="Image 2 has 5 boxes, more than max_boxes=3"):
        pad_boxes(boxes, labels, max_boxes=3)


def test_pack_and_unpack_targets_round_trip():
    boxes = [np.zeros((0, 4)), np.array([[1, 2, 3, 4], [5, 6, 7, 8]])]
    labels = [np.zeros((0,)), np.array([9, 0])]
    targets = pack_targets(boxes, labels, max_boxes=3)
    assert targets.shape == (2, 3, 6) and targets.dtype == np.float32
    np.testing.assert_array_equal(targets[1, 1], [5, 6, 7, 8, 0, 1])
    b, lab, mask = unpack_targets(targets)
    assert lab.tolist() == [[-1, -1, -1], [9, 0, -1]]
    assert mask.tolist() == [[False] * 3, [True, True, False]]
    np.testing.assert_array_equal(b[1, :2], boxes[1])


def test_detection_batches_shapes_order_and_shuffle():
    data = digit_scenes(10, seed=2)
    batches = DetectionBatches(data, batch_size=4)
    assert len(batches) == 3
    max_boxes = max(len(b) for b in data.boxes)
    images, targets = batches[2]
    assert images.shape == (2, 64, 64, 1) and targets.shape == (2, max_boxes, 6)
    np.testing.assert_array_equal(images, data.images[8:])
    assert targets[..., 5].sum() == len(data.boxes[8]) + len(data.boxes[9])
    with pytest.raises(IndexError):
        batches[3]
    shuffled = DetectionBatches(data, batch_size=10, shuffle=True, seed=0)
    first = shuffled[0][0]
    assert not np.array_equal(first, data.images)
    assert sorted(map(bytes, first.reshape(10, -1))) == sorted(
        map(bytes, data.images.reshape(10, -1))
    )
    shuffled.on_epoch_end()
    assert not np.array_equal(shuffled[0][0], first)


def test_detection_batches_with_zero_boxes_everywhere():
    data = DetectionData(
        np.zeros((3, 8, 8, 1)), [np.zeros((0, 4))] * 3, [np.zeros((0,))] * 3, ("a",)
    )
    images, targets = DetectionBatches(data, batch_size=3)[0]
    assert targets.shape == (3, 1, 6) and not targets.any()
