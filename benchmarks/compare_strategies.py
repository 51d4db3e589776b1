"""The full grid against `predicted` and the budgeted sweep: same answer, at what cost?

For one target task, this runs three ways of answering "which blocks to transfer":

1. **full grid**: every `surgical` and `prefix` configuration x every seed at the full budget
   (one Ray Tune experiment);
2. **predicted**: LogME and relative gradient norms on the all-tuned model
   (`sweep.predict.predict_ranking`), then only the top k configurations plus scratch and all
   tuned. Its trials are the full grid's own trials of those configurations (same code, seeds
   and budget: a rerun gives the same numbers), so its cost is their trial-seconds plus the
   predictors' seconds;
3. **budgeted**: successive halving (`sweep.halving`, eta 3), its own Tune experiments, every
   rung re-trained from the start and counted.

Each way's answer is its best configuration by mean validation accuracy over seeds. The full
grid's verdict is the set of configurations whose validation accuracy a paired t-test over seeds
does not distinguish from the best (p >= 0.05; a simple rule of this script). A way *agrees*
when its answer is in that set. Kendall's tau compares the predicted order of every candidate
with the full grid's measured validation means.

Example (a reduced run; writes `comparison.json` and `comparison.md` to --out):

```
python benchmarks/compare_strategies.py --shift noise --seeds 2 --epochs 10 \
    --source-epochs 10 --out runs/compare_noise
```
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shift", default="noise", help="target shift (noise, labels, ...)")
    parser.add_argument("--task", default="shift", choices=("shift", "split"))
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--source-epochs", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    import keras
    import ray
    from ray import tune

    from keras_blockreuse.sweep import space
    from keras_blockreuse.sweep.data import make_task
    from keras_blockreuse.sweep.halving import successive_halving, tune_rung
    from keras_blockreuse.sweep.predict import kendall_tau, predict_ranking, top_configurations
    from keras_blockreuse.sweep.trial import block_file, train_source, train_trial
    from keras_blockreuse.sweep.zoo import build_model

    started = time.time()
    data = make_task("digits", task=args.task,
                     shift=args.shift if args.task == "shift" else None, shots=args.shots)
    blob, source_metrics = train_source(data, "seed_cnn", epochs=args.source_epochs)
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build_model("seed_cnn", data.input_shape, data.target_classes, name="target")
    names = list(model.blocks)
    blocks = names if data.source_classes == data.target_classes else names[:-1]

    # Predictors on the all-tuned model (before any trial).
    with block_file(blob) as path:
        model.load_blocks(path, only=blocks)
    ranking = predict_ranking(model, data.x_train, data.y_train, blocks)
    keras.backend.clear_session()

    configurations = space.configurations("surgical,prefix", blocks)
    labels = {c.key: c.label for c in configurations}
    everything = space.configuration(dict.fromkeys(blocks, "tuned"), blocks).key
    baselines = [space.SCRATCH, everything]
    candidates = [c.key for c in configurations if c.key not in baselines]
    storage = os.path.abspath(os.path.join(args.out, "tune"))
    base = {"model": "seed_cnn", "batch_size": 32, "lr": 1e-3, "cpus": 1}
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
             configure_logging=False, runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    try:
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data=data, source=blob), {"cpu": 1})
        grid_started = time.time()
        full = tune_rung(trainable, [c.key for c in configurations], args.seeds, args.epochs,
                         base, storage, "full")
        grid_wall = time.time() - grid_started
        halving_started = time.time()
        halving = successive_halving(
            candidates, baselines, args.seeds, args.epochs, eta=args.eta,
            run_rung=lambda rung, keys, epochs: tune_rung(trainable, keys, args.seeds, epochs,
                                                          base, storage, f"rung_{rung}"))
        halving_wall = time.time() - halving_started
    finally:
        ray.shutdown()

    grid_means = _means(full, "val_accuracy")
    test_means = _means(full, "test_accuracy")
    best = _best(grid_means)
    tied = _tied(full, best)
    chosen = [c.key for c in top_configurations(ranking, blocks, args.top_k)]
    predicted_rows = [r for r in full if r["policy"] in chosen]
    predicted_best = _best(_means(predicted_rows, "val_accuracy"))
    budget_best = _best(_means(halving.final, "val_accuracy"))
    tau = kendall_tau([p.key for p in ranking.predictions],
                      {k: v for k, v in grid_means.items() if k in candidates})
    grid_seconds = _seconds(full)
    result = {
        "setting": {**vars(args), "blocks": blocks, "source": source_metrics,
                    "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
                    "configurations": len(configurations), "candidates": len(candidates)},
        "full": {"best": best, "tied": tied, "trial_seconds": grid_seconds,
                 "trial_epochs": len(full) * args.epochs,
                 "trials": len(full), "wall_seconds": grid_wall,
                 "val_means": grid_means, "test_means": test_means},
        "predicted": {"ran": chosen, "top": [p.key for p in ranking.predictions[: args.top_k]],
                      "best": predicted_best, "agrees": predicted_best in tied,
                      "trial_seconds": _seconds(predicted_rows) + ranking.seconds,
                      "trial_epochs": len(predicted_rows) * args.epochs,
                      "predictor_seconds": ranking.seconds, "trials": len(predicted_rows),
                      "tau": tau.tau, "tau_p": tau.pvalue, "tau_n": tau.n,
                      "order": [(p.key, p.predictor, p.score) for p in ranking.predictions],
                      "logme": ranking.logme, "rgn": ranking.rgn},
        "budgeted": {"rungs": halving.epochs, "best": budget_best,
                     "agrees": budget_best in tied, "trial_seconds": _seconds(halving.rows),
                     "trial_epochs": sum(r["rung_epochs"] for r in halving.rows),
                     "trials": len(halving.rows), "wall_seconds": halving_wall,
                     "advanced": [d.advanced for d in halving.decisions],
                     "final": sorted({r["policy"] for r in halving.final})},
        "labels": labels,
        "wall_seconds": time.time() - started,
    }
    with open(os.path.join(args.out, "comparison.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    with open(os.path.join(args.out, "comparison.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return result


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
    s, full, pred, budget = (result["setting"], result["full"], result["predicted"],
                             result["budgeted"])
    label = result["labels"].get

    def share(x):
        return f"{x:.0f} s ({100 * x / full['trial_seconds']:.0f}%)"

    def epochs(x):
        return f"{x} ({100 * x / full['trial_epochs']:.0f}%)"

    lines = [
        f"**{s['task']} {s['shift'] if s['task'] == 'shift' else ''}**, {s['seeds']} seeds, "
        f"{s['epochs']} epochs, {s['shots']} shots, source {s['source_epochs']} epochs; "
        f"{s['configurations']} configurations; {s['machine']}.",
        "",
        "| way | trials | trial-epochs | trial-seconds | answer (best by val) | agrees with "
        "the grid |",
        "|---|---|---|---|---|---|",
        f"| full grid | {full['trials']} | {epochs(full['trial_epochs'])} | "
        f"{share(full['trial_seconds'])} | "
        f"{label(full['best'])} | tied set: {', '.join(label(k) for k in full['tied'])} |",
        f"| predicted (top {s['top_k']}) | {pred['trials']} | {epochs(pred['trial_epochs'])} | "
        f"{share(pred['trial_seconds'])} | "
        f"{label(pred['best'])} | {'yes' if pred['agrees'] else 'no'} |",
        f"| budgeted (rungs {budget['rungs']}) | {budget['trials']} | "
        f"{epochs(budget['trial_epochs'])} | {share(budget['trial_seconds'])} | "
        f"{label(budget['best'])} | "
        f"{'yes' if budget['agrees'] else 'no'} |",
        "",
        f"Kendall's tau, predicted order vs measured validation over {pred['tau_n']} "
        f"candidates: {pred['tau']:.2f} (p = {pred['tau_p']:.2g}). Predictors took "
        f"{pred['predictor_seconds']:.1f} s. Predicted top {s['top_k']}: "
        f"{', '.join(label(k) for k in pred['top'])}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
