"""A small CenterNet-style detector whose backbone blocks are a digits classifier's blocks.

The backbone repeats the classifier's convolutional blocks layer for layer: `block_1_0`,
`block_1_1` (`Conv2D(32, 3)`), `block_1_2` (`AveragePooling2D`), `block_2_0`, `block_2_1`
(`Conv2D(64, 3)`), `block_2_2` (`AveragePooling2D`), so the classifier's `block_1` and
`block_2` load into it by name. A neck and two heads then predict, at stride 4, a heatmap of
object centres per class and, per location, the box's log size and its centre's sub-cell offset
(Zhou, Wang, Krähenbühl 2019, "Objects as Points").

Example:

```python
detector = build_detector(num_classes=10)
detector.load_blocks("classifier.blocks.h5", only=["block_1", "block_2"])
detector.compile(optimizer="adam", loss=CenterNetLoss(num_classes=10))
detector.fit(DetectionBatches(train, batch_size=32, shuffle=True), epochs=10)
detections = detect(detector, test.images)     # one Detections per image
```
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import layers, ops

from keras_blockreuse.detection.data import box_iou
from keras_blockreuse.model import BlockModel

BACKBONE_BLOCKS = ("block_1", "block_2")
DETECTOR_BLOCKS = {
    "block_1": ["block_1_*"],
    "block_2": ["block_2_*"],
    "neck": ["neck_*"],
    "heatmap_head": ["heatmap_*"],
    "box_head": ["box_*"],
}
STRIDE = 4
# Initial heatmap bias: every location starts at probability 0.1 (CenterNet's -2.19).
_HEATMAP_PRIOR = 0.1


def build_detector(
    num_classes: int = 10,
    *,
    image_size: tuple[int, int] = (64, 64),
    channels: int = 1,
    width: int = 64,
    name: str = "digit_detector",
):
    """Builds the detector as a `BlockModel` with blocks `block_1, block_2, neck, ...`.

    Its output is one tensor `(batch, H / 4, W / 4, num_classes + 4)`: class heatmap logits,
    then `log(width / 4)`, `log(height / 4)`, `offset_x`, `offset_y` of the box centred there.
    `CenterNetLoss` trains it and `decode` / `detect` turn it into boxes.

    Example:

    ```python
    detector = build_detector(num_classes=10, image_size=(64, 64))
    list(detector.blocks)    # ['block_1', 'block_2', 'neck', 'heatmap_head', 'box_head']
    ```

    Args:
        num_classes: number of object classes.
        image_size: `(height, width)` of the input, each divisible by 4.
        channels: input channels; 1 to match a greyscale digits classifier.
        width: filters of the neck and head convolutions.
        name: the model's name.
    """
    height, width_px = (int(v) for v in image_size)
    if height % STRIDE or width_px % STRIDE:
        raise ValueError(
            f"`image_size` must be divisible by the stride {STRIDE}; received {tuple(image_size)}."
        )
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1; received {num_classes}.")

    def conv(filters, layer_name, kernel_size=3, **kwargs):
        kwargs.setdefault("activation", "relu")
        return layers.Conv2D(filters, kernel_size, padding="same", name=layer_name, **kwargs)

    inputs = keras.Input((height, width_px, channels), name="image")
    x = conv(32, "block_1_0")(inputs)
    x = conv(32, "block_1_1")(x)
    x = layers.AveragePooling2D(2, name="block_1_2")(x)
    x = conv(64, "block_2_0")(x)
    x = conv(64, "block_2_1")(x)
    x = layers.AveragePooling2D(2, name="block_2_2")(x)
    x = conv(width, "neck_0")(x)
    x = conv(width, "neck_1")(x)
    heat = conv(width, "heatmap_0")(x)
    prior_bias = -math.log((1 - _HEATMAP_PRIOR) / _HEATMAP_PRIOR)
    heat = conv(
        num_classes,
        "heatmap_1",
        kernel_size=1,
        activation=None,
        bias_initializer=keras.initializers.Constant(prior_bias),
    )(heat)
    box = conv(width, "box_0")(x)
    box = conv(4, "box_1", kernel_size=1, activation=None)(box)
    outputs = layers.Concatenate(name="outputs")([heat, box])
    return BlockModel(inputs, outputs, blocks=DETECTOR_BLOCKS, name=name)


@keras.saving.register_keras_serializable(package="keras_blockreuse")
class CenterNetLoss(keras.losses.Loss):
    """Focal heatmap loss plus L1 box loss, from padded boxes (`pack_targets`).

    Targets are built inside the loss from `y_true`, the `(batch, max_boxes, 6)` packed boxes,
    so the data pipeline only pads boxes: a Gaussian peak of value 1 at each box centre's cell
    in its class's heatmap (standard deviation `max(0.5, sqrt(w * h) / 6)` cells), CenterNet's
    penalty-reduced focal loss on it, and at each centre cell an L1 loss on the log size and the
    sub-cell offset. Each image's loss is divided by its number of boxes (at least 1).

    Example:

    ```python
    detector.compile(optimizer="adam", loss=CenterNetLoss(num_classes=10))
    ```

    Args:
        num_classes: number of classes (the first `num_classes` output channels).
        stride: input pixels per output cell.
        size_weight: weight of the L1 loss on `log(size / stride)`.
        offset_weight: weight of the L1 loss on the centre offset.
    """

    def __init__(
        self,
        num_classes: int,
        stride: int = STRIDE,
        size_weight: float = 1.0,
        offset_weight: float = 1.0,
        name: str = "centernet_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.stride = int(stride)
        self.size_weight = float(size_weight)
        self.offset_weight = float(offset_weight)

    def call(self, y_true, y_pred):
        c = self.num_classes
        if y_pred.shape[-1] != c + 4:
            raise ValueError(
                f"Expected predictions with num_classes + 4 = {c + 4} channels; received shape "
                f"{tuple(y_pred.shape)}."
            )
        if y_true.shape[-1] != 6:
            raise ValueError(
                "Expected packed targets (batch, max_boxes, 6) from `pack_targets`; received "
                f"shape {tuple(y_true.shape)}."
            )
        h, w = int(y_pred.shape[1]), int(y_pred.shape[2])
        heat_target, centre_index, size_target, offset_target, valid = encode_targets(
            y_true, (h, w), c, self.stride
        )
        logits = y_pred[..., :c]
        prob = ops.sigmoid(logits)
        positive = ops.cast(heat_target >= 1.0 - 1e-6, logits.dtype)
        pos_term = positive * ops.square(1.0 - prob) * ops.log_sigmoid(logits)
        neg_term = (
            (1.0 - positive)
            * ops.power(1.0 - heat_target, 4.0)
            * ops.square(prob)
            * ops.log_sigmoid(-logits)
        )
        num_boxes = ops.maximum(ops.sum(valid, axis=1), 1.0)
        focal = -ops.sum(pos_term + neg_term, axis=(1, 2, 3)) / num_boxes

        regression = ops.reshape(y_pred[..., c:], (-1, h * w, 4))
        at_centres = ops.take_along_axis(regression, centre_index[..., None], axis=1)
        size_error = ops.sum(ops.abs(at_centres[..., :2] - size_target), axis=-1)
        offset_error = ops.sum(ops.abs(at_centres[..., 2:] - offset_target), axis=-1)
        box_term = self.size_weight * size_error + self.offset_weight * offset_error
        box_loss = ops.sum(box_term * valid, axis=1) / num_boxes
        return focal + box_loss

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            stride=self.stride,
            size_weight=self.size_weight,
            offset_weight=self.offset_weight,
        )
        return config


def encode_targets(targets, output_size: tuple[int, int], num_classes: int, stride: int = STRIDE):
    """Dense CenterNet targets from packed boxes, with backend ops (usable inside a loss).

    Example:

    ```python
    heat, index, size, offset, valid = encode_targets(pack_targets(boxes, labels), (16, 16), 10)
    ```

    Args:
        targets: `(batch, max_boxes, 6)` packed boxes (see `pack_targets`), in input pixels.
        output_size: `(h, w)` of the heatmap.
        num_classes: number of heatmap channels.
        stride: input pixels per heatmap cell.

    Returns:
        `heatmap (batch, h, w, C)` with a peak of 1 at each box centre's cell,
        `index (batch, M)` int32 flat cell index `row * w + col` of each centre,
        `size (batch, M, 2)` `log(width / stride), log(height / stride)`,
        `offset (batch, M, 2)` centre minus its cell's corner, in cells,
        `valid (batch, M)` 1.0 for real boxes, 0.0 for padding.
    """
    h, w = output_size
    targets = ops.convert_to_tensor(targets, dtype="float32")
    x1, y1, x2, y2 = (targets[..., i] / stride for i in range(4))
    valid = targets[..., 5]
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    bw, bh = ops.maximum(x2 - x1, 1e-2), ops.maximum(y2 - y1, 1e-2)
    col = ops.clip(ops.floor(cx), 0.0, float(w - 1))
    row = ops.clip(ops.floor(cy), 0.0, float(h - 1))
    sigma = ops.maximum(ops.sqrt(bw * bh) / 6.0, 0.5)
    grid_x = ops.reshape(ops.arange(w, dtype="float32"), (1, 1, 1, w))
    grid_y = ops.reshape(ops.arange(h, dtype="float32"), (1, 1, h, 1))
    squared = ops.square(grid_x - col[..., None, None]) + ops.square(grid_y - row[..., None, None])
    gaussian = ops.exp(-squared / (2.0 * ops.square(sigma)[..., None, None]))  # (B, M, h, w)
    classes = ops.one_hot(ops.cast(targets[..., 4], "int32"), num_classes) * valid[..., None]
    heatmap = ops.max(gaussian[..., None] * classes[:, :, None, None, :], axis=1)
    index = ops.cast(row * w + col, "int32")
    size = ops.stack([ops.log(bw), ops.log(bh)], axis=-1)
    offset = ops.stack([cx - col, cy - row], axis=-1)
    return heatmap, index, size, offset, valid


# --------------------------------------------------------------------------------------------
# Decoding


@dataclasses.dataclass
class Detections:
    """The detections of one image: boxes `(n, 4)` in pixels, scores `(n,)`, labels `(n,)`."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression; the indices kept, by decreasing score.

    A box is dropped when its IoU with a kept, higher-scoring box exceeds `iou_threshold`.

    Example:

    ```python
    nms(np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]]),
        np.array([0.9, 0.8, 0.7]))        # array([0, 2])
    ```
    """
    boxes = np.asarray(boxes, dtype="float64").reshape(-1, 4)
    scores = np.asarray(scores, dtype="float64").reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"Received {len(boxes)} boxes but {len(scores)} scores.")
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        best = order[0]
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest])[0] <= iou_threshold]
    return np.array(keep, dtype="int64")


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """`nms` within each class: boxes of different classes never suppress each other."""
    labels = np.asarray(labels).reshape(-1)
    keep = [
        np.flatnonzero(labels == c)[nms(boxes[labels == c], scores[labels == c], iou_threshold)]
        for c in np.unique(labels)
    ]
    keep = np.concatenate(keep) if keep else np.zeros((0,), "int64")
    return keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]


def decode_heatmaps(
    heatmaps: np.ndarray,
    regression: np.ndarray,
    *,
    stride: int = STRIDE,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    image_size: tuple[int, int] | None = None,
) -> list[Detections]:
    """Turns centre heatmaps (probabilities) and box regressions into boxes, per image.

    A detection is a local maximum of a class heatmap (highest in its 3 x 3 neighbourhood) with
    a score of at least `score_threshold`; its box is centred at `(cell + offset) * stride` with
    size `exp(log_size) * stride`. Boxes are clipped to `image_size` when given, then class-wise
    `nms` removes duplicates, and the `max_detections` best are kept.

    Example:

    ```python
    heat = np.zeros((1, 16, 16, 10)); heat[0, 5, 7, 3] = 0.9
    reg = np.zeros((1, 16, 16, 4)); reg[0, 5, 7] = [np.log(3), np.log(2), 0.5, 0.5]
    decode_heatmaps(heat, reg)[0].boxes     # [[24, 18, 36, 26]], label 3
    ```

    Args:
        heatmaps: `(batch, h, w, C)` centre probabilities.
        regression: `(batch, h, w, 4)`: `log(w / stride), log(h / stride), offset_x, offset_y`.
    """
    heatmaps = np.asarray(heatmaps, dtype="float32")
    regression = np.asarray(regression, dtype="float32")
    if heatmaps.ndim != 4 or regression.shape != heatmaps.shape[:3] + (4,):
        raise ValueError(
            "Expected heatmaps (batch, h, w, C) and regression (batch, h, w, 4); received "
            f"{heatmaps.shape} and {regression.shape}."
        )
    padded = np.pad(heatmaps, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h, w = heatmaps.shape[1:3]
    neighbourhood_max = np.max(
        [padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0
    )
    peaks = (heatmaps >= neighbourhood_max) & (heatmaps >= score_threshold)
    results = []
    for b in range(len(heatmaps)):
        rows, cols, labels = np.nonzero(peaks[b])
        scores = heatmaps[b, rows, cols, labels]
        reg = regression[b, rows, cols]
        size = np.exp(np.clip(reg[:, :2], -10.0, 10.0)) * stride
        cx = (cols + reg[:, 2]) * stride
        cy = (rows + reg[:, 3]) * stride
        boxes = np.stack(
            [cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2],
            axis=-1,
        ).reshape(-1, 4)
        if image_size is not None:
            boxes = np.clip(boxes, 0.0, [image_size[1], image_size[0]] * 2)
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_detections]
        results.append(
            Detections(
                boxes=boxes[keep].astype("float32"),
                scores=scores[keep].astype("float32"),
                labels=labels[keep].astype("int32"),
            )
        )
    return results


def decode(outputs: np.ndarray, num_classes: int, **kwargs) -> list[Detections]:
    """Decodes the detector's raw output `(batch, h, w, num_classes + 4)` (heatmap logits).

    Example:

    ```python
    detections = decode(detector.predict(images), num_classes=10, image_size=(64, 64))
    ```

    `**kwargs` go to `decode_heatmaps` (`stride`, `score_threshold`, `nms_iou`,
    `max_detections`, `image_size`).
    """
    outputs = np.asarray(outputs, dtype="float32")
    if outputs.ndim != 4 or outputs.shape[-1] != num_classes + 4:
        raise ValueError(
            f"Expected outputs (batch, h, w, num_classes + 4 = {num_classes + 4}); received "
            f"shape {outputs.shape}."
        )
    heat = 1.0 / (1.0 + np.exp(-outputs[..., :num_classes]))
    return decode_heatmaps(heat, outputs[..., num_classes:], **kwargs)


def detect(model: keras.Model, images: np.ndarray, *, batch_size: int = 64, **kwargs):
    """Runs a detector built by `build_detector` on images and decodes its boxes.

    The number of classes and the stride are read from the model's input and output shapes.

    Example:

    ```python
    detections = detect(detector, test.images, score_threshold=0.05)
    ```
    """
    images = np.asarray(images, dtype="float32")
    outputs = model.predict(images, batch_size=batch_size, verbose=0)
    stride = images.shape[1] // outputs.shape[1]
    kwargs.setdefault("image_size", images.shape[1:3])
    kwargs.setdefault("stride", stride)
    return decode(outputs, num_classes=outputs.shape[-1] - 4, **kwargs)
