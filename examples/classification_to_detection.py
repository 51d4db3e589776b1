"""From classification to detection: reuse a digits classifier's blocks in a detector.

The seed workflow's next step, end to end and offline:

1. train the seed CNN (`zoo.seed_cnn`) on 8 x 8 digits, saving its blocks every epoch with
   `BlockCheckpoint`;
2. build a small CenterNet-style detector whose backbone has the classifier's layer names, and
   `load_blocks` the classifier's `block_1` and `block_2` into it from the last checkpoint;
3. train it on 64 x 64 scenes of 1-4 digits (boxes and classes), next to the same detector
   trained from scratch for the same schedule;
4. print both detectors' mAP, computed with pycocotools on test scenes of unseen digits.

Run:

```
python examples/classification_to_detection.py                 # a few minutes on 2 CPU cores
python examples/classification_to_detection.py --epochs 12 --train-images 400
```
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from keras_blockreuse import BlockCheckpoint, latest_checkpoint, read_blocks  # noqa: E402
from keras_blockreuse.detection import (  # noqa: E402
    CenterNetLoss,
    DetectionBatches,
    build_detector,
    coco_map,
    detect,
    digit_scenes,
    digit_split,
)
from keras_blockreuse.sweep.zoo import seed_cnn  # noqa: E402


def train_classifier(folder: str, epochs: int) -> str:
    """Trains the seed CNN on the 'train' digits, checkpointing its blocks every epoch."""
    x, y = digit_split("train")
    x_val, y_val = digit_split("val")
    classifier = seed_cnn(input_shape=(8, 8, 1), num_classes=10)
    classifier.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    checkpoints = BlockCheckpoint(os.path.join(folder, "classifier_{epoch:03d}.blocks.h5"))
    classifier.fit(
        x[..., None],
        y,
        validation_data=(x_val[..., None], y_val),
        epochs=epochs,
        batch_size=32,
        callbacks=[checkpoints],
        verbose=0,
    )
    path = latest_checkpoint(folder)
    info = read_blocks(path)
    print(
        f"classifier: {len(os.listdir(folder))} checkpoints, last {os.path.basename(path)} "
        f"(epoch {info.metadata['epoch']}, val accuracy "
        f"{info.metadata['logs']['val_accuracy']:.3f}), blocks {list(info.blocks)}"
    )
    return path


def train_detector(name, train, test, epochs, source=None, freeze=False, batch_size=16):
    """Trains one detector (from `source`'s backbone blocks, or from scratch); returns mAP."""
    keras.utils.set_random_seed(0)
    detector = build_detector(num_classes=train.num_classes, width=32)
    if source is not None:
        report = detector.load_blocks(source, only=["block_1", "block_2"], freeze=freeze)
        print(report)
    batches = DetectionBatches(train, batch_size=batch_size, shuffle=True, seed=0)
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, epochs * len(batches))
    detector.compile(optimizer=keras.optimizers.Adam(schedule), loss=CenterNetLoss(10))
    start = time.perf_counter()
    history = detector.fit(batches, epochs=epochs, verbose=0)
    metrics = coco_map(test, detect(detector, test.images))
    print(
        f"{name:<22} loss {history.history['loss'][-1]:.3f}  "
        f"mAP@0.5 {metrics['map_50']:.3f}  mAP@[.5:.95] {metrics['map']:.3f}  "
        f"({time.perf_counter() - start:.0f}s)"
    )
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description="Reuse classifier blocks in a detector.")
    parser.add_argument("--classifier-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="detector training epochs")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--out", default=None, help="checkpoint folder (default: a temp dir)")
    args = parser.parse_args(argv)

    folder = args.out or tempfile.mkdtemp(prefix="classification_to_detection_")
    source = train_classifier(folder, args.classifier_epochs)
    train = digit_scenes(args.train_images, split="train", seed=0)
    test = digit_scenes(args.test_images, split="test", seed=0)
    print(
        f"detection data: {len(train)} train scenes ({train.num_boxes} boxes), "
        f"{len(test)} test scenes ({test.num_boxes} boxes) of unseen digits"
    )
    results = {
        "transferred, tuned": train_detector(
            "transferred, tuned", train, test, args.epochs, source=source
        ),
        "transferred, frozen": train_detector(
            "transferred, frozen", train, test, args.epochs, source=source, freeze=True
        ),
        "scratch": train_detector("scratch", train, test, args.epochs),
    }
    print(
        f"\n{'detector':<22} {'mAP@0.5':>8} {'mAP@[.5:.95]':>13}   "
        f"({args.train_images} scenes, {args.epochs} epochs)"
    )
    for name, metrics in results.items():
        print(f"{name:<22} {metrics['map_50']:>8.3f} {metrics['map']:>13.3f}")
    return results


if __name__ == "__main__":
    main()
