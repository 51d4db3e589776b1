"""The detection task of the which-blocks sweep: its source, its trainable, its metric.

`python sweeps/which_blocks.py --task detection` replaces these parts of the classification
sweep, and keeps the rest (strategies, seeds, Ray Tune, report):

- `train_detection_source` instead of `sweep.trial.train_source`: the seed CNN trained on all
  ten classes of the `"train"` digits, returned as block-file bytes with its metrics;
- `train_detection_trial` instead of `sweep.trial.train_trial`: same signature
  `(config, data=None, source=None)`, the policy key decoded over `DETECTION_BLOCKS`, one
  `ray.tune.report` per epoch with `val_map_50` (validation scenes; Tune's metric), the
  last also with `test_map_50` and `test_map`;
- `make_detection_task` instead of `data.make_task`: the fixed validation and test scenes,
  with the attributes the sweep reads from a task (`summary()`, `source_fingerprint()`,
  `input_shape`, `source_classes`, `target_classes`);
- `DETECTION_METRIC` (`"test_map_50"`) and `DETECTION_VAL_METRIC` (`"val_map_50"`) instead of
  `"test_accuracy"` and `"val_accuracy"`, over `DETECTION_BLOCKS`.

`train_images` and `epochs` in the trial configuration carry `--train-images` and `--epochs`.

Example (without Ray: `tune.report` replaced by a list):

```python
from ray import tune
from keras_blockreuse.detection.sweep import train_detection_source, train_detection_trial

blob, source_metrics = train_detection_source(epochs=5)
reports = []
tune.report = reports.append
train_detection_trial({"policy": "block_1=tuned,block_2=frozen", "seed": 0, "epochs": 2,
                       "train_images": 64}, source=blob)
reports[-1]["test_map_50"]
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time

from keras_blockreuse.detection.data import DetectionData, digit_scenes, digit_split
from keras_blockreuse.detection.model import BACKBONE_BLOCKS

DETECTION_BLOCKS = BACKBONE_BLOCKS
"""The blocks a detection sweep assigns policies to: the classifier's convolutional blocks."""
DETECTION_METRIC = "test_map_50"
"""The metric a detection sweep reports per policy (higher is better); `test_map` too."""
DETECTION_VAL_METRIC = "val_map_50"
"""The validation metric (Tune's `metric`, greedy selection), on scenes of `"val"` digits."""
DETECTION_TRIAL_DEFAULTS = {
    "epochs": 10,
    "train_images": 400,
    "test_images": 300,
    "test_seed": 0,
    "batch_size": 16,
    "lr": 2e-3,
    "width": 32,
    "cpus": 1,
}
"""Detection trial settings used when the configuration leaves them out."""


@dataclasses.dataclass
class DetectionTask:
    """The fixed evaluation scenes of a detection sweep, passed to every trial as `data`.

    Training scenes are drawn inside each trial from its seed and `train_images`; validation
    and test scenes are drawn once, from the `"val"` and `"test"` digits, so every trial is
    measured on the same images.

    Example:

    ```python
    task = make_detection_task(val_images=100, test_images=300)
    print(task.summary())
    ```
    """

    val: DetectionData
    test: DetectionData
    input_shape: tuple = (8, 8, 1)
    source_classes: int = 10
    target_classes: int = 10

    def summary(self) -> str:
        """One line describing the task."""
        return (
            f"Detection task: source = seed_cnn classifier on the 'train' digits (8x8, 10 "
            f"classes); target = {self.test.image_size[0]}x{self.test.image_size[1]} scenes of "
            f"1-4 digits; {len(self.val)} validation scenes ({self.val.num_boxes} boxes) and "
            f"{len(self.test)} test scenes ({self.test.num_boxes} boxes) of unseen digits; "
            "training scenes drawn per trial (--train-images, seed); metric mAP@0.5."
        )

    def source_fingerprint(self) -> str:
        """A digest of the source task's data (the `"train"` digits), for the source cache."""
        x, y = digit_split("train")
        return hashlib.sha256(x.tobytes() + y.tobytes() + b"detection").hexdigest()[:16]


def make_detection_task(
    val_images: int = 100, test_images: int = 300, seed: int = 0, **scene_options
) -> DetectionTask:
    """The validation and test scenes of a detection sweep (see `DetectionTask`).

    Example:

    ```python
    task = make_detection_task(test_images=300, seed=0)
    ```
    """
    return DetectionTask(
        val=digit_scenes(val_images, split="val", seed=seed, **scene_options),
        test=digit_scenes(test_images, split="test", seed=seed, **scene_options),
    )


def train_detection_source(
    data=None,
    model: str = "seed_cnn",
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    cpus: int | None = None,
    metadata: dict | None = None,
) -> tuple[bytes, dict]:
    """Trains the digits classifier a detection sweep transfers from; returns its block file.

    Same signature and result as `sweep.trial.train_source`, so the sweep can call either;
    `data` is ignored (the source task is fixed: `digit_split("train")`, all ten classes, so
    the detector's test scenes hold unseen digits). Only `seed_cnn` has the detector's
    backbone blocks.

    Example:

    ```python
    blob, metrics = train_detection_source(epochs=30)
    metrics["val_accuracy"]
    ```
    """
    if model != "seed_cnn":
        raise ValueError(
            f"The detection task transfers from 'seed_cnn', whose blocks block_1 and block_2 "
            f"the detector's backbone repeats; received model={model!r}."
        )
    from keras_blockreuse.detection.experiment import train_source_classifier

    _configure_tensorflow(cpus)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "source.blocks.h5")
        info = train_source_classifier(
            path,
            epochs=int(epochs),
            seed=int(seed),
            batch_size=int(batch_size),
            lr=float(lr),
            metadata=metadata,
        )
        with open(path, "rb") as f:
            blob = f.read()
    metrics = {
        "epochs": int(epochs),
        "val_accuracy": info["val_accuracy"],
        "val_loss": info["val_loss"],
        "seconds": info["seconds"],
    }
    return blob, metrics


def train_detection_trial(config: dict, data=None, source: bytes | str | None = None) -> dict:
    """Ray Tune function trainable: train and evaluate one detector under one block policy.

    Args:
        config: `policy` (a key such as `"block_1=tuned,block_2=frozen"` or `"scratch"`),
            `seed`, and optionally the keys of `DETECTION_TRIAL_DEFAULTS`.
        data: a `DetectionTask` (its `val` and `test` scenes); `None` draws `test_images`
            test scenes with `test_seed` and no validation scenes.
        source: the source block file, as bytes or a path; required unless nothing is
            transferred.

    Returns:
        The last metrics reported: `epoch`, `loss`, `test_map_50`, `test_map`, `test_map_75`,
        `val_map_50`, `val_map` (with a `DetectionTask`), `train_seconds`, `policy`, `seed`,
        `train_images`.

    Example:

    ```python
    trainable = tune.with_parameters(train_detection_trial, source=blob)
    ```
    """
    from ray import tune

    from keras_blockreuse.detection.trial import run_detection_trial
    from keras_blockreuse.sweep.space import decode_policy
    from keras_blockreuse.sweep.trial import block_file, where

    settings = {**DETECTION_TRIAL_DEFAULTS, **config}
    _configure_tensorflow(settings["cpus"])
    policy = decode_policy(settings["policy"], DETECTION_BLOCKS)
    started, started_at = time.perf_counter(), time.time()
    last: dict = {}
    common = {
        "policy": settings["policy"],
        "seed": int(settings["seed"]),
        "train_images": int(settings["train_images"]),
        **where(),
    }

    def report(metrics: dict) -> None:
        out = {"epoch": metrics["epoch"], "loss": metrics["loss"], **common}
        if "map_50" in metrics:
            out.update(
                test_map_50=metrics["map_50"],
                test_map=metrics["map"],
                test_map_75=metrics["map_75"],
                train_seconds=time.perf_counter() - started,
                started_at=started_at,
            )
        if "val_map_50" in metrics:
            out.update(val_map_50=metrics["val_map_50"], val_map=metrics["val_map"])
        last.clear()
        last.update(out)
        tune.report(out)

    transferred = any(p != "reinit" for p in policy.values())
    with block_file(source if transferred else None) as path:
        run_detection_trial(
            policy,
            path,
            epochs=int(settings["epochs"]),
            train_images=int(settings["train_images"]),
            seed=int(settings["seed"]),
            test_images=int(settings["test_images"]),
            test_seed=int(settings["test_seed"]),
            batch_size=int(settings["batch_size"]),
            learning_rate=float(settings["lr"]),
            width=int(settings["width"]),
            test_data=None if data is None else data.test,
            val_data=None if data is None else data.val,
            report_fn=report,
        )
    return dict(last)


def _configure_tensorflow(cpus):
    try:
        from keras_blockreuse.sweep.trial import configure_tensorflow
    except ImportError:  # the sweep package is optional for the detection package
        return
    configure_tensorflow(cpus)
