"""One detection trial: build the detector, apply a block policy, train, measure mAP.

This is the unit of work the which-blocks sweep runs for `--task detection`: the same policy
dictionary `{block: "reinit" | "frozen" | "tuned"}` as for classification, a source
`.blocks.h5` file (a digits classifier's blocks), a schedule and a training-set size.

Example:

```python
metrics = run_detection_trial({"block_1": "tuned", "block_2": "frozen"},
                              "runs/classifier.blocks.h5", epochs=10, train_images=400, seed=0)
metrics["map_50"], metrics["map"]
```
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import keras

from keras_blockreuse.detection.data import DetectionBatches, DetectionData, digit_scenes
from keras_blockreuse.detection.evaluate import coco_map
from keras_blockreuse.detection.model import (
    BACKBONE_BLOCKS,
    CenterNetLoss,
    build_detector,
    detect,
)

POLICIES = ("reinit", "frozen", "tuned")


def check_policy(policy: Mapping[str, str], source: str | os.PathLike | None = None) -> None:
    """Raises a `ValueError` naming the problem if `policy` cannot run with `source`.

    Example:

    ```python
    check_policy({"block_1": "tuned", "block_2": "reinit"}, "classifier.blocks.h5")
    ```
    """
    unknown = {b: p for b, p in policy.items() if p not in POLICIES}
    if unknown:
        raise ValueError(f"Unknown block policies {unknown}; each must be one of {POLICIES}.")
    transferred = [b for b, p in policy.items() if p != "reinit"]
    if transferred and source is None:
        raise ValueError(
            f"Blocks {transferred} are to be transferred but no source was given; pass the "
            "classifier's .blocks.h5 file as `source`, or use 'reinit' for every block."
        )


def policy_name(policy: Mapping[str, str]) -> str:
    """A short, stable name for a policy: `"scratch"`, `"tuned"`, `"frozen"` or per block.

    Example:

    ```python
    policy_name({"block_1": "frozen", "block_2": "tuned"})   # "block_1=frozen,block_2=tuned"
    ```
    """
    kinds = set(policy.values())
    if not policy or kinds == {"reinit"}:
        return "scratch"
    if len(kinds) == 1 and set(policy) >= set(BACKBONE_BLOCKS):
        return kinds.pop()
    return ",".join(f"{b}={p}" for b, p in sorted(policy.items()))


def run_detection_trial(
    policy: Mapping[str, str],
    source: str | os.PathLike | None,
    *,
    epochs: int = 10,
    train_images: int = 400,
    seed: int = 0,
    test_images: int = 300,
    test_seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    width: int = 32,
    scene_options: Mapping | None = None,
    test_data: DetectionData | None = None,
    val_data: DetectionData | None = None,
    report_fn: Callable[[dict], None] | None = None,
    eval_every: int = 0,
    verbose: int = 0,
) -> dict:
    """Trains and evaluates one detector for a block policy; returns its metrics.

    The detector (`build_detector`) gets the source's blocks named in `policy` with
    `"frozen"` or `"tuned"` (`load_blocks(..., only=[...])`), the `"frozen"` ones are frozen,
    every other block starts from its random initialisation. It trains with Adam and a cosine
    learning-rate decay to zero over the whole schedule (so a short schedule is a complete
    schedule, as in He et al. 2019), on `train_images` digit scenes of the `"train"` digits
    drawn with `seed`, and is evaluated on `test_images` scenes of the `"test"` digits drawn
    with `test_seed` (the same for every trial, so trials compare on one test set).

    Example:

    ```python
    scratch = run_detection_trial({"block_1": "reinit", "block_2": "reinit"}, None, epochs=5)
    ```

    Args:
        policy: `{block: "reinit" | "frozen" | "tuned"}`; blocks left out are `"reinit"`.
        source: the source `.blocks.h5` file, or `None` when nothing is transferred.
        epochs: passes over the training scenes.
        train_images: number of training scenes.
        seed: seed of the weights' initialisation, the training scenes and their order.
        test_images: number of test scenes.
        test_seed: seed of the test scenes.
        batch_size: scenes per step.
        learning_rate: the peak Adam learning rate.
        width: filters of the detector's neck and heads.
        scene_options: extra `digit_scenes` arguments (`clutter`, `noise`, `scale_range`...),
            used for both training and test scenes.
        test_data: evaluate on these instead of generating test scenes.
        val_data: also evaluate on these after every epoch, reported with a `val_` prefix
            (`val_map_50`...), e.g. for a tuner's early stopping or model selection.
        report_fn: called after every epoch with a metrics dict (`epoch`, `loss`, and the mAP
            keys on evaluated epochs), e.g. `ray.tune.report`.
        eval_every: also evaluate mAP every this many epochs (0: only after the last).
        verbose: Keras `fit` verbosity.

    Returns:
        A dict: `map` (mAP@[.5:.95]), `map_50`, `map_75`, `loss` (last training loss),
        `policy` (its `policy_name`), `loaded` (blocks transferred), `frozen`, `epochs`,
        `train_images`, `seed`, `trainable_params` and `seconds` (training time).
    """
    check_policy(policy, source)
    if epochs < 1 or train_images < 1:
        raise ValueError(
            f"`epochs` and `train_images` must be >= 1; received epochs={epochs}, "
            f"train_images={train_images}."
        )
    scene_options = dict(scene_options or {})
    train = digit_scenes(train_images, split="train", seed=seed, **scene_options)
    if test_data is None:
        test_data = digit_scenes(test_images, split="test", seed=test_seed, **scene_options)

    keras.utils.set_random_seed(seed)
    detector = build_detector(train.num_classes, image_size=train.image_size, width=width)
    transferred = [b for b, p in policy.items() if p in ("frozen", "tuned")]
    frozen = [b for b, p in policy.items() if p == "frozen"]
    if transferred:
        report = detector.load_blocks(os.fspath(source), only=transferred)
        if not report.ok:
            raise ValueError(f"Loading blocks {transferred} from {source!r} failed:\n{report}")
    if frozen:
        detector.freeze_blocks(frozen)

    batches = DetectionBatches(train, batch_size, shuffle=True, seed=seed)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * len(batches))
    detector.compile(
        optimizer=keras.optimizers.Adam(schedule), loss=CenterNetLoss(train.num_classes)
    )
    trainable_params = int(sum(v.numpy().size for v in detector.trainable_weights))

    metrics: dict = {}
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        history = detector.fit(batches, epochs=1, verbose=verbose)
        seconds += time.perf_counter() - start
        metrics = {"epoch": epoch, "loss": float(history.history["loss"][-1])}
        if val_data is not None:
            val = coco_map(val_data, detect(detector, val_data.images))
            metrics.update({f"val_{k}": v for k, v in val.items()})
        if epoch == epochs or (eval_every and epoch % eval_every == 0):
            metrics.update(coco_map(test_data, detect(detector, test_data.images)))
        if report_fn is not None:
            report_fn(dict(metrics))
    metrics.update(
        policy=policy_name(policy),
        loaded=transferred,
        frozen=frozen,
        epochs=epochs,
        train_images=train_images,
        seed=seed,
        trainable_params=trainable_params,
        seconds=seconds,
    )
    return metrics
