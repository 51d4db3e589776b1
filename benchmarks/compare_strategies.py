"""The full grid against `predicted` and the budgeted sweep: same answer, at what cost?

For one target task, this runs three ways of answering "which blocks to transfer":

1. **full grid**: every `surgical` and `prefix` configuration x every seed at the full budget
   (one Ray Tune experiment);
2. **predicted**: LogME and relative gradient norms on the all-tuned model
   (`sweep.predict.predict_ranking`), then only the top k configurations plus scratch and all
   tuned, for every k from 1 to `--top-k`. Its trials are the full grid's own trials of those
   configurations (same code, seeds and budget: a rerun gives the same numbers), so its cost is
   their trial-seconds plus the predictors' seconds;
3. **budgeted**: successive halving (`sweep.halving`, `--eta`, first rung at least
   `--min-epochs`). Its lower rungs are Tune experiments of their own, every rung re-trained
   from the start and counted; its last rung, at the full budget, is again the full grid's own
   trials of the configurations that reached it (counted with their trial-seconds).

Tasks (`--task`): `shift` (digits, the seed CNN, `--shift noise|labels|...`), `split`
(Yosinski's halves: digits 0-4 -> 5-9, the seed CNN) and `user`: a keras.applications
MobileNet (alpha 0.25, `weights=None`, no top, average pooling, a Dense head) on the bundled
digits upsampled to `--image-size` RGB, grouped by a user's block rule into 4 stages and a
head; its source is the same model trained in this script on digits 0-5 (a 6-class
head), its target digits 6-9 (`--shots` per class). It goes through the sweep's own-model
path: `user_data.from_arrays`, `models.Recipe` / `resolve_builder`, `inputs.UserInputs`
(snapshot of the live source model, the 6-class head fixed to reinit as "does not fit"), and
`trial.train_trial(..., recipe=...)`.

Each way's answer is its best configuration by mean validation accuracy over seeds. The full
grid's verdict is the set of configurations whose validation accuracy a paired t-test over seeds
does not distinguish from the best (p >= 0.05; a simple rule of this script). A way *agrees*
when its answer is in that set. Kendall's tau compares the predicted order of every candidate
with the full grid's measured validation means. The 1-minute load average is sampled every 10 s.

Example (a reduced run; writes `comparison.json` and `comparison.md` to --out):

```
python benchmarks/compare_strategies.py --shift noise --seeds 2 --epochs 9 \
    --source-epochs 10 --min-epochs 3 --out runs/compare_noise
python benchmarks/compare_strategies.py --task user --seeds 2 --epochs 9 \
    --source-epochs 10 --min-epochs 3 --out runs/compare_user
```
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import threading
import time


def _layers(*stages: int) -> list[str]:
    return [f"conv_{kind}_{n}{bn}" for n in stages for kind in ("dw", "pw") for bn in ("", "_bn")]


USER_BLOCKS = {
    "stage_1": ["conv1", "conv1_bn", *_layers(1, 2, 3)],
    "stage_2": _layers(4, 5),
    "stage_3": _layers(6, 7, 8, 9, 10, 11),
    "stage_4": _layers(12, 13),
    "head": ["predictions"],
}
"""The `user` task's block rule (a user's `blocks=`): MobileNet's 13 depthwise-separable
layers in 4 stages (each ends before a stride-2 layer; output strides 4, 8, 16, 32) and the
Dense head."""
USER_SOURCE_CLASSES = [0, 1, 2, 3, 4, 5]


def mobilenet(input_shape=(32, 32, 3), num_classes=4):
    """The `user` task's model: keras.applications MobileNet (alpha 0.25, random weights, no
    top, average pooling; batch-norm momentum 0.9) and a Dense softmax head, one flat
    Functional model."""
    import keras

    backbone = keras.applications.MobileNet(
        input_shape=tuple(input_shape), alpha=0.25, weights=None, include_top=False,
        pooling="avg")
    # Keras's MobileNet keeps batch-norm statistics with momentum 0.99; trained from scratch on
    # these few hundred steps they lag so far behind the weights that inference stays at chance
    # (source validation 0.17 for 17 epochs here, 0.83 after 8 with 0.9). A user's fix: 0.9.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    outputs = keras.layers.Dense(num_classes, activation="softmax",
                                 name="predictions")(backbone.output)
    return keras.Model(backbone.input, outputs, name="mobilenet")


def upsample(x, size: int):
    """Digits `(n, 8, 8, 1)` in [0, 1] as `(n, size, size, 3)` RGB, scaled by MobileNet's own
    `preprocess_input` (through the sweep's `models.preprocess_function`) to [-1, 1]."""
    import numpy as np
    import tensorflow as tf

    from keras_blockreuse.sweep.models import preprocess_function

    resized = tf.image.resize(x.astype(np.float32), (size, size)).numpy()
    pixels = (np.repeat(resized, 3, axis=-1) * 255.0).astype(np.float32)
    return np.asarray(preprocess_function("mobilenet")(pixels), dtype=np.float32)


class LoadSampler:
    """The 1-minute load average, sampled every `every` seconds in a thread."""

    def __init__(self, every: float = 10.0):
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every):
        while not self.stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stop.wait(every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict:
        s = self.samples or [math.nan]
        return {"min": min(s), "mean": sum(s) / len(s), "max": max(s), "samples": len(s)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shift", default="noise", help="target shift (noise, labels, ...)")
    parser.add_argument("--task", default="shift", choices=("shift", "split", "user"))
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--source-epochs", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=3, help="predicted: k = 1 .. top-k")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--min-epochs", type=int, default=1,
                        help="budgeted: the first rung's epochs, at least")
    parser.add_argument("--image-size", type=int, default=32, help="user task: image side")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    with LoadSampler() as load:
        result = compare(args)
    result["load_average"] = load.summary()
    with open(os.path.join(args.out, "comparison.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    with open(os.path.join(args.out, "comparison.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return result


def builtin_task(args) -> dict:
    """The seed CNN on a digits shift or split: data, source, blocks, predicted ranking."""
    import keras

    from keras_blockreuse.sweep.data import make_task
    from keras_blockreuse.sweep.predict import rank_for_sweep
    from keras_blockreuse.sweep.trial import train_source
    from keras_blockreuse.sweep.zoo import build_model

    data = make_task("digits", task=args.task,
                     shift=args.shift if args.task == "shift" else None, shots=args.shots)
    blob, source_metrics = train_source(data, "seed_cnn", epochs=args.source_epochs)
    keras.backend.clear_session()
    names = list(build_model("seed_cnn", data.input_shape, data.target_classes).blocks)
    keras.backend.clear_session()
    # As the sweep (`which_blocks --task split`): a split's source head, trained on the other
    # classes, is not swept (reinit); a shift's head (the same classes) is.
    same = args.task == "shift" and data.source_classes == data.target_classes
    blocks = names if same else names[:-1]
    ranking = rank_for_sweep("seed_cnn", data, blob, blocks)
    return {"data": data, "source": blob, "source_metrics": source_metrics, "blocks": blocks,
            "ranking": ranking, "recipe": None, "model": "seed_cnn", "fixed": {}}


def user_task(args) -> dict:
    """MobileNet through the own-model path: data, source, blocks, predicted ranking."""
    import keras

    from keras_blockreuse.sweep.data import make_task
    from keras_blockreuse.sweep.inputs import UserInputs
    from keras_blockreuse.sweep.models import Recipe, call_builder, resolve_builder
    from keras_blockreuse.sweep.predict import predict_ranking
    from keras_blockreuse.sweep.trial import evaluate, fit
    from keras_blockreuse.sweep.user_data import from_arrays

    digits = make_task("digits", task="split", shift=None, shots=args.shots,
                       source_classes=USER_SOURCE_CLASSES)
    size = args.image_size
    data = from_arrays((upsample(digits.x_train, size), digits.y_train),
                       (upsample(digits.x_val, size), digits.y_val),
                       (upsample(digits.x_test, size), digits.y_test),
                       description=f"data: digits 6-9 upsampled to {size}x{size}x3")
    # The "pretrained" model: the same architecture, trained here on digits 0-5.
    started = time.perf_counter()
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    source = call_builder(mobilenet, data.input_shape, digits.source_classes)
    source.compile(optimizer=keras.optimizers.Adam(1e-3),
                   loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit(source, upsample(digits.x_source, size), digits.y_source, args.source_epochs, 32, 0)
    val_loss, val_accuracy = evaluate(source, upsample(digits.x_source_val, size),
                                      digits.y_source_val)
    source_metrics = {"epochs": args.source_epochs, "val_loss": val_loss,
                      "val_accuracy": val_accuracy, "seconds": time.perf_counter() - started}
    recipe = Recipe(resolve_builder(mobilenet, data.input_shape, data.target_classes),
                    blocks=USER_BLOCKS)
    inputs = UserInputs(data, recipe, source, description="MobileNet (alpha 0.25)")
    inputs.prepare()
    blocks, fixed = inputs.swept_blocks()
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    target = recipe.target_model()
    target.load_blocks(inputs.snapshot, only=blocks)
    ranking = predict_ranking(target, data.x_train, data.y_train, blocks, loss=recipe.loss)
    keras.backend.clear_session()
    return {"data": data, "source": inputs.source_bytes(), "source_metrics": source_metrics,
            "blocks": blocks, "ranking": ranking, "recipe": inputs.packed,
            "model": inputs.model_info, "fixed": fixed}


def compare(args) -> dict:
    import ray
    from ray import tune

    from keras_blockreuse.sweep import space
    from keras_blockreuse.sweep.halving import successive_halving, tune_rung
    from keras_blockreuse.sweep.predict import kendall_tau, top_configurations
    from keras_blockreuse.sweep.trial import train_trial

    started = time.time()
    task = user_task(args) if args.task == "user" else builtin_task(args)
    data, blocks, ranking = task["data"], task["blocks"], task["ranking"]
    prepared = time.time() - started

    configurations = space.configurations("surgical,prefix", blocks)
    labels = {c.key: c.label for c in configurations}
    everything = space.configuration(dict.fromkeys(blocks, "tuned"), blocks).key
    baselines = [space.SCRATCH, everything]
    candidates = [c.key for c in configurations if c.key not in baselines]
    storage = os.path.abspath(os.path.join(args.out, "tune"))
    base = {"model": "seed_cnn" if task["recipe"] is None else "user", "batch_size": 32,
            "lr": 1e-3, "cpus": 1}
    extra = {} if task["recipe"] is None else {"recipe": task["recipe"]}
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
             configure_logging=False, runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    try:
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data=data, source=task["source"], **extra),
            {"cpu": 1})
        grid_started = time.time()
        full = tune_rung(trainable, [c.key for c in configurations], args.seeds, args.epochs,
                         base, storage, "full")
        grid_wall = time.time() - grid_started

        def run_rung(rung, keys, epochs):
            if epochs == args.epochs:  # the full budget: the grid's own trials of these
                return [dict(r) for r in full if r["policy"] in keys]
            return tune_rung(trainable, keys, args.seeds, epochs, base, storage, f"rung_{rung}")

        halving_started = time.time()
        halving = successive_halving(candidates, baselines, args.seeds, args.epochs,
                                     run_rung=run_rung, eta=args.eta, min_epochs=args.min_epochs)
        halving_wall = time.time() - halving_started
    finally:
        ray.shutdown()

    failed = [f"{r['policy']} seed {r['seed']}: {r.get('error')}" for r in full
              if r.get("status") != "ok"]
    grid_means = _means(full, "val_accuracy")
    test_means = _means(full, "test_accuracy")
    best = _best(grid_means)
    tied = _tied(full, best)
    predicted = []
    for k in range(1, args.top_k + 1):
        chosen = [c.key for c in top_configurations(ranking, blocks, k)]
        rows = [r for r in full if r["policy"] in chosen]
        answer = _best(_means(rows, "val_accuracy"))
        predicted.append({"k": k, "ran": chosen, "best": answer, "agrees": answer in tied,
                          "same_best": answer == best,
                          "trial_seconds": _seconds(rows) + ranking.seconds,
                          "trial_epochs": len(rows) * args.epochs, "trials": len(rows)})
    budget_best = _best(_means(halving.final, "val_accuracy"))
    tau = kendall_tau([p.key for p in ranking.predictions],
                      {k: v for k, v in grid_means.items() if k in candidates})
    setting = {**vars(args), "blocks": blocks,
               "fixed": task["fixed"], "model": task["model"], "source": task["source_metrics"],
               "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
               "configurations": len(configurations), "candidates": len(candidates)}
    if args.task != "shift":
        setting["shift"] = None
    return {
        "setting": setting,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "full": {"best": best, "tied": tied, "trial_seconds": _seconds(full),
                 "trial_epochs": len(full) * args.epochs, "failed": failed,
                 "trials": len(full), "wall_seconds": grid_wall,
                 "val_means": grid_means, "test_means": test_means},
        "predicted": predicted,
        "ranking": {"top": [p.key for p in ranking.predictions[: args.top_k]],
                    "predictor_seconds": ranking.seconds,
                    "tau": tau.tau, "tau_p": tau.pvalue, "tau_n": tau.n,
                    "order": [(p.key, p.predictor, p.score) for p in ranking.predictions],
                    "logme": ranking.logme, "rgn": ranking.rgn},
        "budgeted": {"rungs": halving.epochs, "best": budget_best,
                     "agrees": budget_best in tied, "same_best": budget_best == best,
                     "trial_seconds": _seconds(halving.rows),
                     "trial_epochs": sum(r["rung_epochs"] for r in halving.rows),
                     "trials": len(halving.rows), "wall_seconds": halving_wall,
                     "advanced": [d.advanced for d in halving.decisions],
                     "rung_means": [d.means for d in halving.decisions],
                     "final": sorted({r["policy"] for r in halving.final})},
        "labels": labels,
        "prepare_seconds": prepared,
        "wall_seconds": time.time() - started,
    }


def _means(rows, metric) -> dict:
    groups: dict = {}
    for r in rows:
        value = r.get(metric)
        groups.setdefault(r["policy"], []).append(math.nan if value is None else float(value))
    return {k: sum(v) / len(v) for k, v in groups.items() if all(math.isfinite(x) for x in v)}


def _best(means: dict) -> str | None:
    return max(means, key=lambda k: (means[k], k)) if means else None


def _tied(rows, best) -> list[str]:
    from scipy.stats import ttest_rel

    by = {}
    for r in rows:
        by.setdefault(r["policy"], {})[int(r["seed"])] = float(r.get("val_accuracy", math.nan))
    out = [best]
    for key, values in by.items():
        if key == best:
            continue
        seeds = sorted(s for s in values if s in by[best])
        a = [values[s] for s in seeds]
        b = [by[best][s] for s in seeds]
        if len(seeds) < 2 or not all(math.isfinite(x) for x in a + b):
            continue
        diffs = [x - y for x, y in zip(a, b, strict=True)]
        p = 1.0 if all(d == 0 for d in diffs) else float(ttest_rel(a, b).pvalue)
        if not math.isnan(p) and p >= 0.05:
            out.append(key)
    return out


def _seconds(rows) -> float:
    return float(sum(float(r.get("train_seconds") or 0.0) for r in rows))


def markdown(result: dict) -> str:
    s, full, budget, rank = (result["setting"], result["full"], result["budgeted"],
                             result["ranking"])
    label = result["labels"].get
    load = result.get("load_average", {})

    def share(x):
        return f"{x:.0f} s ({100 * x / full['trial_seconds']:.0f}%)"

    def epochs(x):
        return f"{x} ({100 * x / full['trial_epochs']:.0f}%)"

    def yes(x):
        return "yes" if x else "no"

    task = s["task"] + (f" {s['shift']}" if s["task"] == "shift" else "")
    lines = [
        f"**{task}** ({s['model']}; blocks {', '.join(s['blocks'])}), {s['seeds']} seeds, "
        f"{s['epochs']} epochs, {s['shots']} shots, source {s['source_epochs']} epochs "
        f"(source val accuracy {s['source']['val_accuracy']:.3f}); "
        f"{s['configurations']} configurations; {s['machine']}; started "
        f"{result['started_utc']} UTC, {result['wall_seconds']:.0f} s wall (grid "
        f"{full['wall_seconds']:.0f} s, budgeted's own rungs {budget['wall_seconds']:.0f} s); "
        f"1-minute load average {load.get('min', math.nan):.1f}-{load.get('max', math.nan):.1f}"
        f" (mean {load.get('mean', math.nan):.1f}).",
        "",
        "| way | trials | trial-epochs | trial-seconds | answer (best by val) | in the grid's "
        "tied set | the grid's best |",
        "|---|---:|---:|---:|---|---|---|",
        f"| full grid | {full['trials']} | {epochs(full['trial_epochs'])} | "
        f"{share(full['trial_seconds'])} | {label(full['best'])} | tied set: "
        f"{', '.join(label(k) for k in full['tied'])} | — |",
    ]
    for p in result["predicted"]:
        lines.append(
            f"| predicted (top {p['k']}) | {p['trials']} | {epochs(p['trial_epochs'])} | "
            f"{share(p['trial_seconds'])} | {label(p['best'])} | {yes(p['agrees'])} | "
            f"{yes(p['same_best'])} |")
    lines += [
        f"| budgeted (rungs {budget['rungs']}) | {budget['trials']} | "
        f"{epochs(budget['trial_epochs'])} | {share(budget['trial_seconds'])} | "
        f"{label(budget['best'])} | {yes(budget['agrees'])} | {yes(budget['same_best'])} |",
        "",
        f"Kendall's tau, predicted order vs measured validation over {rank['tau_n']} "
        f"candidates: {rank['tau']:.2f} (p = {rank['tau_p']:.2g}). Predictors took "
        f"{rank['predictor_seconds']:.1f} s. Predicted top {s['top_k']}: "
        f"{', '.join(label(k) for k in rank['top'])}. Budgeted advanced after rung 1: "
        f"{', '.join(label(k) for k in (budget['advanced'] or [[]])[0])}.",
    ]
    if full["failed"]:
        lines += ["", f"Failed trials: {'; '.join(full['failed'])}"]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
