"""The He, Girshick, Dollár (2019) question on digit scenes: does pre-training still pay off?

Runs transferred-and-tuned, transferred-and-frozen and from-scratch detectors over a grid of
training-set sizes, schedules and seeds, in parallel processes, and writes `results.csv` and
`results.md` (mean, 95% confidence interval, paired difference from scratch).

Example:

```
python -m keras_blockreuse.detection.experiment --out runs/detection \
    --train-images 100 400 --epochs 4 16 --seeds 0 1 2 --workers 2
```
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import multiprocessing
import os
import platform
import time
from collections.abc import Sequence

import numpy as np

from keras_blockreuse.detection.model import BACKBONE_BLOCKS

POLICY_SETS = {
    "tuned": dict.fromkeys(BACKBONE_BLOCKS, "tuned"),
    "frozen": dict.fromkeys(BACKBONE_BLOCKS, "frozen"),
    "scratch": dict.fromkeys(BACKBONE_BLOCKS, "reinit"),
}


def train_source_classifier(
    path: str | os.PathLike,
    *,
    epochs: int = 30,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 1e-3,
    metadata: dict | None = None,
    verbose: int = 0,
) -> dict:
    """Trains `zoo.seed_cnn` on the `"train"` digits and saves its blocks to `path`.

    Only `digit_split("train")` is used, so the detector's test scenes (`"test"` digits) hold
    digits the source never saw. Returns `{"path", "val_accuracy", "val_loss", "seconds"}`;
    they are also stored in the file's metadata, with `metadata`.

    Example:

    ```python
    train_source_classifier("runs/classifier.blocks.h5", epochs=30)
    ```
    """
    import keras

    from keras_blockreuse.detection.data import digit_split
    from keras_blockreuse.sweep.zoo import seed_cnn

    x, y = digit_split("train")
    x_val, y_val = digit_split("val")
    keras.utils.set_random_seed(seed)
    model = seed_cnn((8, 8, 1), num_classes=10)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(x[..., None], y, epochs=epochs, batch_size=batch_size, verbose=verbose)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_val[..., None], y_val, verbose=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    info = {"val_accuracy": float(accuracy), "val_loss": float(loss), "seconds": seconds}
    model.save_blocks(
        path,
        metadata={
            **(metadata or {}),
            "task": "digits",
            "split": "train",
            "epochs": epochs,
            "seed": seed,
            **info,
        },
    )
    return {"path": os.fspath(path), **info}


def _init_worker(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _run_one(job: dict) -> dict:
    from keras_blockreuse.detection.trial import run_detection_trial

    metrics = run_detection_trial(POLICY_SETS[job["policy"]], job["source"], **job["options"])
    return {
        **job["options"],
        "policy": job["policy"],
        **{
            k: metrics[k]
            for k in ("map", "map_50", "map_75", "loss", "seconds", "trainable_params")
        },
    }


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval (NaN half-width for n < 2).

    Example:

    ```python
    mean_ci([0.5, 0.6, 0.7])     # (0.6, 0.248...)
    ```
    """
    from scipy import stats

    values = np.asarray(values, dtype="float64")
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1)
    return float(values.mean()), float(half / math.sqrt(len(values)))


def summarize(rows: list[dict], metric: str = "map_50") -> str:
    """A Markdown table: per (images, epochs, policy) the mean of `metric` with its 95% CI,
    and the paired difference from scratch over the same seeds (mean, 95% CI, p of a paired
    t-test).

    Example:

    ```python
    print(summarize(rows, "map"))
    ```
    """
    from scipy import stats

    lines = [
        f"| train images | epochs | policy | {metric} mean ± 95% CI | minus scratch (95% CI) "
        "| paired p | seeds |",
        "|---:|---:|---|---|---|---:|---:|",
    ]
    keys = sorted({(r["train_images"], r["epochs"]) for r in rows})
    for images, epochs in keys:
        cell = [r for r in rows if (r["train_images"], r["epochs"]) == (images, epochs)]
        scratch = {r["seed"]: r[metric] for r in cell if r["policy"] == "scratch"}
        for policy in POLICY_SETS:
            values = {r["seed"]: r[metric] for r in cell if r["policy"] == policy}
            if not values:
                continue
            mean, half = mean_ci(list(values.values()))
            diff_text, p_text = "—", "—"
            seeds = sorted(set(values) & set(scratch))
            if policy != "scratch" and len(seeds) >= 2:
                diffs = [values[s] - scratch[s] for s in seeds]
                d_mean, d_half = mean_ci(diffs)
                diff_text = f"{d_mean:+.3f} ({d_mean - d_half:+.3f}, {d_mean + d_half:+.3f})"
                if np.std(diffs) > 0:
                    p_text = f"{stats.ttest_rel([values[s] for s in seeds], [scratch[s] for s in seeds]).pvalue:.3f}"
            lines.append(
                f"| {images} | {epochs} | {policy} | {mean:.3f} ± {half:.3f} | {diff_text} "
                f"| {p_text} | {len(values)} |"
            )
    return "\n".join(lines)


def run_experiment(
    out: str | os.PathLike,
    *,
    train_images: Sequence[int] = (100, 400),
    epochs: Sequence[int] = (4, 16),
    seeds: Sequence[int] = (0, 1, 2),
    policies: Sequence[str] = tuple(POLICY_SETS),
    test_images: int = 300,
    source_epochs: int = 30,
    workers: int = 2,
    threads_per_worker: int = 1,
    trial_options: dict | None = None,
) -> list[dict]:
    """Trains the source once, runs every (images, epochs, policy, seed) trial, writes reports.

    Example:

    ```python
    rows = run_experiment("runs/detection", train_images=(100, 400), epochs=(4, 16))
    ```

    Returns the rows written to `results.csv`.
    """
    unknown = [p for p in policies if p not in POLICY_SETS]
    if unknown:
        raise ValueError(f"Unknown policies {unknown}; expected some of {list(POLICY_SETS)}.")
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    source = os.path.join(out, "classifier.blocks.h5")
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=context, initializer=_init_worker, initargs=(threads_per_worker * workers,)
    ) as pool:
        source_info = pool.submit(train_source_classifier, source, epochs=source_epochs).result()
    print(f"source classifier: val accuracy {source_info['val_accuracy']:.3f}", flush=True)
    jobs = [
        {
            "policy": policy,
            "source": source,
            "options": {
                "epochs": e,
                "train_images": n,
                "seed": s,
                "test_images": test_images,
                **(trial_options or {}),
            },
        }
        for n in train_images
        for e in epochs
        for s in seeds
        for policy in policies
    ]
    jobs.sort(key=lambda j: -j["options"]["epochs"] * j["options"]["train_images"])
    rows = []
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(threads_per_worker,)
    ) as pool:
        for row in pool.map(_run_one, jobs):
            rows.append(row)
            print(
                f"[{time.perf_counter() - start:7.0f}s] n={row['train_images']} "
                f"epochs={row['epochs']} seed={row['seed']} {row['policy']:<8} "
                f"mAP@.5={row['map_50']:.3f} mAP={row['map']:.3f} ({row['seconds']:.0f}s)",
                flush=True,
            )
    rows.sort(key=lambda r: (r["train_images"], r["epochs"], r["policy"], r["seed"]))
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    total = time.perf_counter() - start
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    report = "\n\n".join(
        [
            f"Source classifier (seed_cnn, 'train' digits): val accuracy "
            f"{source_info['val_accuracy']:.3f}.",
            f"Machine: {machine}. Wall time: {total / 60:.1f} min, {workers} worker(s) x "
            f"{threads_per_worker} thread(s).",
            "mAP@0.5:\n\n" + summarize(rows, "map_50"),
            "mAP@[.5:.95]:\n\n" + summarize(rows, "map"),
        ]
    )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(report + "\n")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(
            {
                "train_images": list(train_images),
                "epochs": list(epochs),
                "seeds": list(seeds),
                "policies": list(policies),
                "test_images": test_images,
                "source_epochs": source_epochs,
                "trial_options": trial_options or {},
                "source": source_info,
            },
            f,
            indent=2,
        )
    print(report, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/detection_experiment")
    parser.add_argument("--train-images", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--epochs", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", default=list(POLICY_SETS))
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--source-epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    options = {
        key: value
        for key, value in (("learning_rate", args.learning_rate), ("batch_size", args.batch_size))
        if value is not None
    }
    run_experiment(
        args.out,
        train_images=args.train_images,
        epochs=args.epochs,
        seeds=args.seeds,
        policies=args.policies,
        test_images=args.test_images,
        source_epochs=args.source_epochs,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        trial_options=options,
    )


if __name__ == "__main__":
    main()
