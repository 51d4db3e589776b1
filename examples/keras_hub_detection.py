"""Classification blocks in keras-hub's RetinaNet: a digits ResNet's stages reused for detection.

The seed workflow with ecosystem parts, end to end and offline:

1. a keras-hub `ImageClassifier` over a small `ResNetBackbone` is trained on single digits
   (the bundled scikit-learn digits, resized to 8-16 px and placed at random in 24 x 24
   images, as they appear in the scenes); its blocks (`stem`, `stage_1 ... stage_3`,
   `predictions`) are saved with `save_blocks`;
2. for each seed, a keras-hub `RetinaNetObjectDetector` over a `ResNetBackbone` of the same
   configuration is built three times: its backbone stages **transferred and tuned**
   (`load_blocks(detector, file, only=["stem", "stage_*"])`), **transferred and frozen**
   (`freeze=True`), and **from scratch**; its FPN and heads always start random;
3. each is trained on 64 x 64 scenes of 1-4 digits (`detection.digit_scenes`, several boxes per
   image) and scored by mAP@0.5 with pycocotools on test scenes of digits neither model saw;
4. the mean over seeds, a 95% interval and the paired difference from scratch are printed.

The anchors are keras-hub's `AnchorGenerator` with `anchor_size=1` (8-25 px at levels 3-4), since
its default (32-128 px) matches no 8-16 px digit.

Run:

```
python examples/keras_hub_detection.py                      # a few minutes on 2 CPU cores
python examples/keras_hub_detection.py --seeds 0 1 2 --epochs 20 --train-images 400
```
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_blockreuse import get_blocks, load_blocks, save_blocks  # noqa: E402
from keras_blockreuse.detection import Detections, coco_map, digit_scenes, pad_boxes  # noqa: E402
from keras_blockreuse.detection.experiment import mean_ci  # noqa: E402

POLICIES = ("transferred, tuned", "transferred, frozen", "scratch")
STAGES = ["stem", "stage_*"]
SCENE_SIZE = 64


def resnet():
    """A small ResNet-18-style backbone for 1-channel images of any size (0.22 M parameters)."""
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64, 64], stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        image_shape=(None, None, 1),
    )


def digit_crops(num_images: int, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """24 x 24 images of one digit each (8-16 px, at a random place) and their classes."""
    scenes = digit_scenes(num_images, split=split, seed=seed, image_size=24, min_digits=1,
                          max_digits=1)
    keep = [i for i, labels in enumerate(scenes.labels) if len(labels) == 1]
    return scenes.images[keep], np.array([scenes.labels[i][0] for i in keep], dtype="int32")


def train_classifier(path: str, epochs: int, num_images: int) -> dict:
    """Trains the keras-hub ImageClassifier on digit crops and saves its blocks to `path`."""
    import keras_hub

    keras.utils.set_random_seed(1000)
    x, y = digit_crops(num_images, "train", seed=0)
    x_val, y_val = digit_crops(max(num_images // 4, 8), "val", seed=0)
    classifier = keras_hub.models.ImageClassifier(backbone=resnet(), num_classes=10)
    classifier.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = classifier.fit(x, y, validation_data=(x_val, y_val), batch_size=32,
                             epochs=epochs, verbose=0)
    save_blocks(classifier, path, metadata={"task": "digit crops 24x24", "epochs": epochs})
    return {
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "seconds": time.perf_counter() - start,
        "blocks": list(get_blocks(classifier)),
    }


def build_detector(num_classes: int = 10):
    """RetinaNet over the same backbone configuration, with anchors sized for the digits."""
    import keras_hub

    anchors = keras_hub.layers.AnchorGenerator(
        "xyxy", min_level=3, max_level=4, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
        anchor_size=1,
    )
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=resnet(), min_level=3, max_level=4, use_p5=False,
        image_shape=(SCENE_SIZE, SCENE_SIZE, 1),
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format="xyxy",
        anchor_generator=anchors, pre_logits_num_conv_layers=1,
    )
    # keras-hub 0.32 gives the focal-loss prior bias (log(0.01 / 0.99) = -4.6) to the *box*
    # head's output, which starts every box far off its anchor and barely moves in a short
    # schedule; it belongs to the classification head (Lin et al. 2017, section 4.1).
    box_bias = detector.box_head.prediction_layer.bias
    class_bias = detector.classification_head.prediction_layer.bias
    box_bias.assign(np.zeros(box_bias.shape, "float32"))
    class_bias.assign(np.full(class_bias.shape, -np.log(99.0), "float32"))
    # Anchors are positive from IoU 0.3 (ignored from 0.2): with the default 0.5 only 48% of the
    # 8-16 px digits overlap any anchor enough and the rest are trained as background; at 0.3,
    # 95% do. (keras-hub 0.32's `force_match_for_each_col` fails with an index error here.)
    detector.label_encoder.box_matcher.thresholds = [-np.inf, 0.2, 0.3, np.inf]
    # Keep low-scoring boxes, as mAP needs them; the default keeps scores >= 0.5 only.
    detector.prediction_decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format="xyxy", from_logits=True, confidence_threshold=0.05,
        iou_threshold=0.5, max_detections=20,
    )
    return detector


def predict(detector, images: np.ndarray, batch_size: int = 50) -> dict:
    """`detector.predict` in full batches: keras-hub's NMS cannot trace a partial last batch."""
    count = len(images)
    padded = -count % batch_size
    if padded:
        images = np.concatenate([images, np.zeros((padded, *images.shape[1:]), images.dtype)])
    out = detector.predict(images, batch_size=batch_size, verbose=0)
    return {key: np.asarray(value)[:count] for key, value in out.items()}


def run_trial(policy: str, source: str, seed: int, epochs: int, train_images: int, test,
              learning_rate: float) -> dict:
    """Builds, loads (or not), trains and scores one detector; returns its metrics."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    detector = build_detector()
    report = None
    if policy != "scratch":
        report = load_blocks(detector, source, only=STAGES, freeze=policy.endswith("frozen"))
    train = digit_scenes(train_images, split="train", seed=100 + seed)
    boxes, labels, _ = pad_boxes(train.boxes, train.labels)
    detector.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=10.0))
    start = time.perf_counter()
    history = detector.fit(train.images, {"boxes": boxes, "labels": labels}, batch_size=16,
                           epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    out = predict(detector, test.images)
    detections = [
        Detections(boxes=out["boxes"][i][:n], scores=out["confidence"][i][:n],
                   labels=out["labels"][i][:n])
        for i, n in enumerate(np.asarray(out["num_detections"]))
    ]
    metrics = coco_map(test, detections)
    return {
        "policy": policy, "seed": seed, "map_50": metrics["map_50"], "map": metrics["map"],
        "loss": float(history.history["loss"][-1]), "train_seconds": seconds,
        "trainable_params": int(sum(np.prod(v.shape) for v in detector.trainable_weights)),
        "report": report,
    }


def summarize(rows: list[dict]) -> str:
    """A table: mAP@0.5 mean ± 95% CI per policy, and the paired difference from scratch."""
    by_policy = {p: {r["seed"]: r["map_50"] for r in rows if r["policy"] == p} for p in POLICIES}
    lines = ["| policy | mAP@0.5 mean ± 95% CI | minus scratch (95% CI) | train s/run |",
             "|---|---|---|---:|"]
    for policy in POLICIES:
        seeds = sorted(by_policy[policy])
        mean, half = mean_ci([by_policy[policy][s] for s in seeds])
        seconds = np.mean([r["train_seconds"] for r in rows if r["policy"] == policy])
        if policy == "scratch":
            diff = "-"
        else:
            d_mean, d_half = mean_ci([by_policy[policy][s] - by_policy["scratch"][s]
                                      for s in seeds])
            diff = f"{d_mean:+.3f} ({d_mean - d_half:+.3f}, {d_mean + d_half:+.3f})"
        lines.append(f"| {policy} | {mean:.3f} ± {half:.3f} | {diff} | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier-epochs", type=int, default=6)
    parser.add_argument("--classifier-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", help="folder for the classifier's block file (default: temp)")
    args = parser.parse_args(argv)

    out = args.out or tempfile.mkdtemp(prefix="keras_hub_detection_")
    os.makedirs(out, exist_ok=True)
    source = os.path.join(out, "classifier.blocks.h5")
    start = time.perf_counter()
    info = train_classifier(source, args.classifier_epochs, args.classifier_images)
    print(f"classifier: blocks {info['blocks']}, val accuracy {info['val_accuracy']:.3f} "
          f"({info['seconds']:.0f}s) -> {source}", flush=True)
    test = digit_scenes(args.test_images, split="test", seed=0)
    rows = []
    for seed in args.seeds:
        for policy in POLICIES:
            row = run_trial(policy, source, seed, args.epochs, args.train_images, test,
                            args.learning_rate)
            rows.append(row)
            print(f"seed {seed} {policy:<20} mAP@0.5 {row['map_50']:.3f}  mAP {row['map']:.3f}  "
                  f"loss {row['loss']:.3f}  trainable {row['trainable_params']:,}  "
                  f"({row['train_seconds']:.0f}s)", flush=True)
            if row["report"] is not None and seed == args.seeds[0]:
                print(row["report"])
    print(summarize(rows))
    print(f"total {time.perf_counter() - start:.0f}s, {test.num_boxes} test boxes in "
          f"{len(test.images)} scenes")
    return {policy: [r for r in rows if r["policy"] == policy] for policy in POLICIES}


if __name__ == "__main__":
    main()
