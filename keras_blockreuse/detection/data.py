"""Detection data: digit scenes, COCO and Pascal VOC readers, padded batches.

Every source is read into one representation, `DetectionData`: images as a float32 array
`(N, H, W, C)` in `[0, 1]`, and per image a variable number of boxes `(n, 4)` in pixels,
`[x_min, y_min, x_max, y_max]` with pixel edges (a box covering pixel columns 3..5 spans
`x_min=3, x_max=6`), and class indices `(n,)` in `[0, num_classes)`.

Example:

```python
scenes = digit_scenes(200, split="train", seed=0)
scenes.boxes[0], scenes.labels[0]        # boxes and classes of the first image
batches = DetectionBatches(scenes, batch_size=32, shuffle=True)
images, targets = batches[0]             # (32, 64, 64, 1), (32, max_boxes, 6)
```
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

import keras
import numpy as np

DIGIT_CLASS_NAMES = tuple(str(d) for d in range(10))
SPLITS = ("train", "val", "test")
# Fractions of the 1797 scikit-learn digits given to each split; the splits never share a digit.
_SPLIT_FRACTIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
_SPLIT_PERMUTATION_SEED = 20190101  # fixed: the split is a property of the data, not of a run
TARGET_COLUMNS = ("x_min", "y_min", "x_max", "y_max", "class", "valid")


@dataclasses.dataclass
class DetectionData:
    """Images and, per image, a variable number of boxes and class labels.

    Example:

    ```python
    data = DetectionData(images=np.zeros((1, 32, 32, 1), "float32"),
                         boxes=[np.array([[2, 3, 10, 12]], "float32")],
                         labels=[np.array([7], "int32")],
                         class_names=DIGIT_CLASS_NAMES)
    data.num_boxes      # 1
    ```

    Attributes:
        images: float32 array `(N, H, W, C)` with values in `[0, 1]`.
        boxes: list of N float32 arrays `(n_i, 4)`: `[x_min, y_min, x_max, y_max]` in pixels.
        labels: list of N int32 arrays `(n_i,)` of class indices.
        class_names: the name of each class index.
        image_ids: an integer id per image (COCO ids for COCO data, else `0..N-1`).
        file_names: where each image came from, or empty strings for generated images.
    """

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    class_names: tuple[str, ...]
    image_ids: list[int] = dataclasses.field(default_factory=list)
    file_names: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.images = np.asarray(self.images, dtype="float32")
        if self.images.ndim != 4:
            raise ValueError(
                f"`images` must have shape (N, H, W, C); received shape {self.images.shape}."
            )
        n = len(self.images)
        if len(self.boxes) != n or len(self.labels) != n:
            raise ValueError(
                f"Expected one boxes array and one labels array per image ({n} images); "
                f"received {len(self.boxes)} boxes arrays and {len(self.labels)} labels arrays."
            )
        self.boxes = [np.asarray(b, dtype="float32").reshape(-1, 4) for b in self.boxes]
        self.labels = [np.asarray(lab, dtype="int32").reshape(-1) for lab in self.labels]
        self.class_names = tuple(self.class_names)
        for i, (b, lab) in enumerate(zip(self.boxes, self.labels, strict=True)):
            if len(b) != len(lab):
                raise ValueError(
                    f"Image {i} has {len(b)} boxes but {len(lab)} labels; expected as many of each."
                )
            if len(lab) and (lab.min() < 0 or lab.max() >= len(self.class_names)):
                raise ValueError(
                    f"Image {i} has labels {lab.tolist()}; expected class indices in "
                    f"[0, {len(self.class_names)}) for class names {self.class_names}."
                )
        if not self.image_ids:
            self.image_ids = list(range(n))
        if not self.file_names:
            self.file_names = [""] * n

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """`(height, width)` of the images."""
        return tuple(self.images.shape[1:3])

    @property
    def num_boxes(self) -> int:
        """Total number of boxes over all images."""
        return int(sum(len(b) for b in self.boxes))

    def subset(self, indices: Sequence[int] | slice) -> DetectionData:
        """The images at `indices` (a sequence of positions or a slice), with their boxes."""
        positions = range(len(self))[indices] if isinstance(indices, slice) else list(indices)
        positions = list(positions)
        return DetectionData(
            images=self.images[positions],
            boxes=[self.boxes[i] for i in positions],
            labels=[self.labels[i] for i in positions],
            class_names=self.class_names,
            image_ids=[self.image_ids[i] for i in positions],
            file_names=[self.file_names[i] for i in positions],
        )


# --------------------------------------------------------------------------------------------
# Digit scenes


def digit_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits of one split, as `(images (n, 8, 8) in [0, 1], labels (n,))`.

    The 1797 digits are divided once, by a fixed permutation, into `"train"` (60%), `"val"`
    (20%) and `"test"` (20%). Scenes of one split are drawn only from that split's digits, and
    a classifier meant as a transfer source should be trained on `digit_split("train")` so the
    detector's test scenes hold digits it has never seen.

    Example:

    ```python
    x, y = digit_split("train")     # x.shape == (1078, 8, 8)
    ```
    """
    if split not in _SPLIT_FRACTIONS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    images, labels = _all_digits()
    order = np.random.RandomState(_SPLIT_PERMUTATION_SEED).permutation(len(images))
    start, stop = _SPLIT_FRACTIONS[split]
    chosen = order[int(round(start * len(order))) : int(round(stop * len(order)))]
    return images[chosen].copy(), labels[chosen].copy()


@functools.lru_cache(maxsize=1)
def _all_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype("float32") / 16.0, digits.target.astype("int32")


def digit_scenes(
    num_images: int,
    *,
    split: str = "train",
    seed: int = 0,
    image_size: int = 64,
    min_digits: int = 1,
    max_digits: int = 4,
    scale_range: tuple[int, int] = (8, 16),
    max_overlap: float = 0.1,
    clutter: int = 0,
    noise: float = 0.0,
) -> DetectionData:
    """Greyscale scenes of 1 to 4 scikit-learn digits, each with a box and a class.

    Each digit (8 x 8, values in `[0, 1]`, ink bright on a dark ground, as a digits classifier
    sees them) is resized to a random square size in `scale_range` pixels and placed at a random
    position; its box is the tight box around its ink (pixels >= 0.25). Placements whose box
    overlaps an earlier one by more than `max_overlap` IoU are redrawn (a scene may hold fewer
    digits than drawn when no free place is found after 50 tries). `clutter` unlabelled
    fragments of other digits and Gaussian `noise` (standard deviation) can be added.

    The same arguments always give the same scenes; different splits use disjoint digits.

    Example:

    ```python
    train = digit_scenes(500, split="train", seed=1)
    test = digit_scenes(200, split="test", seed=0, clutter=2, noise=0.05)
    ```

    Args:
        num_images: number of scenes.
        split: `"train"`, `"val"` or `"test"`: which digits (see `digit_split`) to draw from.
        seed: random seed of the scene layout.
        image_size: side of the square images, in pixels.
        min_digits, max_digits: range (inclusive) of the number of digits per scene.
        scale_range: range (inclusive) of the side, in pixels, of each digit's 8 x 8 patch.
        max_overlap: largest IoU allowed between two digits' boxes.
        clutter: unlabelled digit fragments per scene.
        noise: standard deviation of Gaussian pixel noise (the result is clipped to `[0, 1]`).

    Returns:
        A `DetectionData` with `image_size x image_size x 1` images and class names "0".."9".
    """
    if not 1 <= min_digits <= max_digits:
        raise ValueError(
            f"Expected 1 <= min_digits <= max_digits; received min_digits={min_digits}, "
            f"max_digits={max_digits}."
        )
    low, high = int(scale_range[0]), int(scale_range[1])
    if not 2 <= low <= high <= image_size:
        raise ValueError(
            f"Expected 2 <= scale_range[0] <= scale_range[1] <= image_size ({image_size}); "
            f"received scale_range={tuple(scale_range)}."
        )
    if num_images < 0:
        raise ValueError(f"`num_images` must be >= 0; received {num_images}.")
    pool_images, pool_labels = digit_split(split)
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    images = np.zeros((num_images, image_size, image_size, 1), dtype="float32")
    all_boxes, all_labels = [], []
    for i in range(num_images):
        canvas = images[i, :, :, 0]
        boxes, labels = [], []
        for _ in range(int(rng.integers(min_digits, max_digits + 1))):
            k = int(rng.integers(len(pool_images)))
            for _try in range(50):
                side = int(rng.integers(low, high + 1))
                x0 = int(rng.integers(0, image_size - side + 1))
                y0 = int(rng.integers(0, image_size - side + 1))
                patch = resize_bilinear(pool_images[k][:, :, None], side, side)[:, :, 0]
                box = _ink_box(patch, x0, y0)
                if box is None:
                    continue
                if boxes and box_iou(np.array([box]), np.array(boxes)).max() > max_overlap:
                    continue
                region = canvas[y0 : y0 + side, x0 : x0 + side]
                np.maximum(region, patch, out=region)
                boxes.append(box)
                labels.append(int(pool_labels[k]))
                break
        for _ in range(clutter):
            _draw_fragment(canvas, pool_images[int(rng.integers(len(pool_images)))], low, high, rng)
        all_boxes.append(np.array(boxes, dtype="float32").reshape(-1, 4))
        all_labels.append(np.array(labels, dtype="int32"))
    if noise > 0:
        images += rng.normal(0.0, noise, size=images.shape).astype("float32")
        np.clip(images, 0.0, 1.0, out=images)
    return DetectionData(images, all_boxes, all_labels, DIGIT_CLASS_NAMES)


def _ink_box(patch, x0, y0, threshold=0.25):
    rows = np.flatnonzero(patch.max(axis=1) >= threshold)
    cols = np.flatnonzero(patch.max(axis=0) >= threshold)
    if len(rows) == 0:
        return None
    return [x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1]


def _draw_fragment(canvas, digit, low, high, rng):
    """Draws a random 3..4 pixel square crop of a digit, scaled like a digit, anywhere."""
    crop = int(rng.integers(3, 5))
    cy, cx = (int(v) for v in rng.integers(0, 8 - crop + 1, size=2))
    side = max(2, int(round(crop * int(rng.integers(low, high + 1)) / 8)))
    piece = resize_bilinear(digit[cy : cy + crop, cx : cx + crop, None], side, side)[:, :, 0]
    y0, x0 = (int(v) for v in rng.integers(0, canvas.shape[0] - side + 1, size=2))
    region = canvas[y0 : y0 + side, x0 : x0 + side]
    np.maximum(region, piece, out=region)


# --------------------------------------------------------------------------------------------
# Geometry shared by the data, the decoder and the tests


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes an `(H, W, C)` array with bilinear interpolation and half-pixel centres.

    Matches `tf.image.resize(..., method="bilinear")` without antialiasing.

    Example:

    ```python
    resize_bilinear(np.ones((8, 8, 1)), 16, 16).shape   # (16, 16, 1)
    ```
    """
    image = np.asarray(image, dtype="float32")
    if image.ndim != 3:
        raise ValueError(f"Expected an (H, W, C) array; received shape {image.shape}.")
    in_h, in_w = image.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) * in_h / height - 0.5, 0, in_h - 1)
    xs = np.clip((np.arange(width) + 0.5) * in_w / width - 0.5, 0, in_w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, in_h - 1)
    x1 = np.minimum(x0 + 1, in_w - 1)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
    bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype("float32")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of `(n, 4)` and `(m, 4)` boxes `[x_min, y_min, x_max, y_max]` -> `(n, m)`.

    Example:

    ```python
    box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2]]))   # [[1/3]]
    ```
    """
    a = np.asarray(a, dtype="float64").reshape(-1, 4)
    b = np.asarray(b, dtype="float64").reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# --------------------------------------------------------------------------------------------
# Readers of annotation formats


def read_coco(
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    image_size: tuple[int, int] | None = None,
    channels: int = 1,
) -> DetectionData:
    """Reads a COCO detection set (`instances_*.json` plus its image folder).

    Categories are sorted by COCO id and numbered `0..K-1`; images keep their COCO ids in
    `image_ids` and are ordered by id. COCO boxes `[x, y, width, height]` become
    `[x_min, y_min, x_max, y_max]`. Crowd annotations (`iscrowd=1`) are skipped, as detectors
    usually do in training. Images without annotations are kept, with zero boxes.

    Example:

    ```python
    data = read_coco("annotations/instances_val2017.json", "val2017", image_size=(64, 64))
    ```

    Args:
        annotation_file: path to the COCO JSON file.
        image_dir: folder holding the `file_name` of each image.
        image_size: `(height, width)` to resize every image (boxes are scaled alike); required
            when the images differ in size.
        channels: 1 (greyscale, what this package's detector takes) or 3.
    """
    with open(annotation_file, encoding="utf-8") as f:
        coco = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(
                f"{os.fspath(annotation_file)!r} is not a COCO detection file: it has no "
                f"{key!r} key (keys found: {sorted(coco)})."
            )
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    per_image = {img["id"]: ([], []) for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        if ann["image_id"] not in per_image:
            raise ValueError(
                f"Annotation {ann.get('id')} refers to image_id {ann['image_id']}, which is not "
                f"among the {len(per_image)} images of {os.fspath(annotation_file)!r}."
            )
        x, y, w, h = (float(v) for v in ann["bbox"])
        per_image[ann["image_id"]][0].append([x, y, x + w, y + h])
        per_image[ann["image_id"]][1].append(label_of[ann["category_id"]])
    entries = []
    for img in sorted(coco["images"], key=lambda im: im["id"]):
        boxes, labels = per_image[img["id"]]
        entries.append((img["id"], os.path.join(image_dir, img["file_name"]), boxes, labels))
    return _assemble(entries, [c["name"] for c in categories], image_size, channels)


VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def read_voc(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int = 1,
    keep_difficult: bool = False,
) -> DetectionData:
    """Reads a Pascal VOC folder (`Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/`).

    VOC coordinates are 1-based and inclusive; like Detectron2, `x_min`/`y_min` are shifted by
    -1 and `x_max`/`y_max` kept, which gives this package's pixel-edge boxes.

    Example:

    ```python
    data = read_voc("VOCdevkit/VOC2007", split="test", class_names=VOC_CLASS_NAMES)
    ```

    Args:
        root: the folder holding `Annotations` and `JPEGImages`.
        split: a name in `ImageSets/Main/<split>.txt` listing image ids, or `None` for every
            XML file in `Annotations`, in sorted order.
        class_names: the classes, in label order; `None` takes the sorted set of names found.
        image_size: `(height, width)` to resize every image (boxes are scaled alike); required
            when the images differ in size.
        channels: 1 (greyscale) or 3.
        keep_difficult: keep objects marked `<difficult>1</difficult>`.
    """
    root = os.fspath(root)
    annotation_dir = os.path.join(root, "Annotations")
    if not os.path.isdir(annotation_dir):
        raise ValueError(f"{root!r} is not a Pascal VOC folder: it has no 'Annotations' folder.")
    if split is None:
        ids = sorted(f[:-4] for f in os.listdir(annotation_dir) if f.endswith(".xml"))
    else:
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), encoding="utf-8") as f:
            ids = [line.split()[0] for line in f if line.strip()]
    parsed = []
    for image_id in ids:
        tree = ElementTree.parse(os.path.join(annotation_dir, f"{image_id}.xml")).getroot()
        file_name = tree.findtext("filename") or f"{image_id}.jpg"
        objects = []
        for obj in tree.iter("object"):
            if not keep_difficult and int(obj.findtext("difficult") or 0):
                continue
            bb = obj.find("bndbox")
            x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.findtext("name").strip(), [x1 - 1, y1 - 1, x2, y2]))
        parsed.append((image_id, os.path.join(root, "JPEGImages", file_name), objects))
    if class_names is None:
        class_names = sorted({name for _, _, objects in parsed for name, _ in objects})
    label_of = {name: i for i, name in enumerate(class_names)}
    entries = []
    for index, (image_id, path, objects) in enumerate(parsed):
        unknown = [name for name, _ in objects if name not in label_of]
        if unknown:
            raise ValueError(
                f"{image_id}.xml has objects of classes {unknown}, not in class_names "
                f"{list(class_names)}."
            )
        entries.append(
            (index, path, [b for _, b in objects], [label_of[name] for name, _ in objects])
        )
    return _assemble(entries, class_names, image_size, channels)


def _assemble(entries, class_names, image_size, channels):
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3; received {channels}.")
    images, boxes = [], []
    for _, path, image_boxes, _ in entries:
        image = _read_image(path, channels)
        b = np.array(image_boxes, dtype="float32").reshape(-1, 4)
        if image_size is not None and tuple(image.shape[:2]) != tuple(image_size):
            h, w = image.shape[:2]
            b = b * np.array([image_size[1] / w, image_size[0] / h] * 2, dtype="float32")
            image = resize_bilinear(image, int(image_size[0]), int(image_size[1]))
        images.append(image)
        boxes.append(b)
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise ValueError(
            f"The images differ in size ({shapes[:4]}{' ...' if len(shapes) > 4 else ''}); "
            "pass image_size=(height, width) to resize them to one size."
        )
    stacked = np.stack(images) if images else np.zeros((0, 1, 1, channels), "float32")
    return DetectionData(
        images=stacked,
        boxes=boxes,
        labels=[np.array(e[3], dtype="int32") for e in entries],
        class_names=tuple(class_names),
        image_ids=[int(e[0]) for e in entries],
        file_names=[e[1] for e in entries],
    )


def _read_image(path, channels):
    import tensorflow as tf

    if not os.path.exists(path):
        raise ValueError(f"Image file {path!r} does not exist.")
    raw = tf.io.read_file(path)
    image = tf.io.decode_image(raw, channels=channels, expand_animations=False)
    return image.numpy().astype("float32") / 255.0


# --------------------------------------------------------------------------------------------
# Batching a variable number of boxes


def pad_boxes(
    boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray], max_boxes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads per-image boxes and labels to one array, with a mask of the real boxes.

    Example:

    ```python
    b, lab, mask = pad_boxes([np.zeros((0, 4)), np.ones((2, 4))], [[], [3, 4]])
    b.shape, lab.tolist(), mask.tolist()  # (2, 2, 4), [[-1, -1], [3, 4]], [[F, F], [T, T]]
    ```

    Args:
        boxes: one `(n_i, 4)` array per image.
        labels: one `(n_i,)` array per image.
        max_boxes: the padded length; `None` for the largest `n_i` (at least 1).

    Returns:
        `(boxes (N, M, 4) float32, labels (N, M) int32 padded with -1, mask (N, M) bool)`.
    """
    counts = [len(b) for b in boxes]
    if max_boxes is None:
        max_boxes = max([1, *counts])
    too_many = [(i, c) for i, c in enumerate(counts) if c > max_boxes]
    if too_many:
        i, c = too_many[0]
        raise ValueError(
            f"Image {i} has {c} boxes, more than max_boxes={max_boxes}; "
            f"{len(too_many)} image(s) exceed it. Raise max_boxes or pass max_boxes=None."
        )
    out_boxes = np.zeros((len(boxes), max_boxes, 4), dtype="float32")
    out_labels = np.full((len(boxes), max_boxes), -1, dtype="int32")
    mask = np.zeros((len(boxes), max_boxes), dtype=bool)
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        n = len(b)
        out_boxes[i, :n] = np.asarray(b, dtype="float32").reshape(-1, 4)
        out_labels[i, :n] = np.asarray(lab, dtype="int32")
        mask[i, :n] = True
    return out_boxes, out_labels, mask


def pack_targets(
    boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray], max_boxes: int | None = None
) -> np.ndarray:
    """Padded boxes, labels and mask in one float32 array `(N, M, 6)`, what the loss takes.

    Columns are `TARGET_COLUMNS`: `x_min, y_min, x_max, y_max, class, valid` (padding rows are
    all zero, `valid == 0`). `unpack_targets` is the inverse.

    Example:

    ```python
    targets = pack_targets(data.boxes[:8], data.labels[:8])
    ```
    """
    b, lab, mask = pad_boxes(boxes, labels, max_boxes)
    return np.concatenate([b, np.where(mask, lab, 0)[..., None], mask[..., None]], axis=-1).astype(
        "float32"
    )


def unpack_targets(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits `(N, M, 6)` packed targets into `(boxes, labels, mask)` (labels -1 at padding)."""
    targets = np.asarray(targets)
    mask = targets[..., 5] > 0.5
    labels = np.where(mask, targets[..., 4].astype("int32"), -1)
    return targets[..., :4], labels, mask


class DetectionBatches(keras.utils.PyDataset):
    """Batches of `(images, targets)` from a `DetectionData`, for `model.fit`/`predict`.

    `targets` is `(batch, max_boxes, 6)` as `pack_targets` makes it: every batch is padded to
    the same `max_boxes` so the training step is traced once.

    Example:

    ```python
    batches = DetectionBatches(digit_scenes(256), batch_size=32, shuffle=True, seed=0)
    detector.fit(batches, epochs=5)
    ```

    Args:
        data: the images and boxes.
        batch_size: images per batch (the last batch may be smaller).
        max_boxes: boxes per image after padding; `None` for the most in `data` (at least 1).
        shuffle: reshuffle the order at the end of every epoch.
        seed: seed of the shuffling.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` for `PyDataset`.
    """

    def __init__(
        self,
        data: DetectionData,
        batch_size: int = 32,
        *,
        max_boxes: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1; received {batch_size}.")
        self.data = data
        self.batch_size = int(batch_size)
        self.max_boxes = max([1, *(len(b) for b in data.boxes)]) if max_boxes is None else max_boxes
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(data)) if shuffle else np.arange(len(data))

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch index {index} out of range [0, {len(self)}).")
        chosen = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        targets = pack_targets(
            [self.data.boxes[i] for i in chosen],
            [self.data.labels[i] for i in chosen],
            self.max_boxes,
        )
        return self.data.images[chosen], targets

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self._rng.permutation(len(self.data))
