"""Run a transfer sweep on Ray Tune, and its command line.

`run_sweep(settings)` builds the task's data, trains the source model once (cached by its
inputs, in a Ray task when the cluster has GPUs), lists the block policies of the chosen
strategies, runs every (policy, seed) trial with `tune.Tuner`, and writes the report.
`main(argv)` is the command line of `sweeps/which_blocks.py`.

With `task="detection"` the task, the source model, the trainable and the metric come from
`keras_blockreuse.detection.sweep` (`make_detection_task`, `train_detection_source`,
`train_detection_trial`, test and validation mAP@0.5); the rest (strategies, seeds, Tune,
cache, resume, report) is shared.

Example:

```python
from keras_blockreuse.sweep.run import SweepSettings, run_sweep

result = run_sweep(SweepSettings(strategy="prefix", seeds=3, out="/tmp/sweep"))
print(result.best)          # e.g. "Best policy: prefix 2 tuned (...): ..., +0.12 over scratch"
```
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from keras_blockreuse.sweep import space
from keras_blockreuse.sweep.data import DataError, make_task
from keras_blockreuse.sweep.options import (
    ALL_TASKS,
    DETECTION,
    PROG,
    SCHEDULERS,
    SMOKE,
    SMOKE_DETECTION,
    SweepSettings,
    apply_smoke,
    build_parser,
    parse_args,
    settings_from_args,
)
from keras_blockreuse.sweep.report import write_report
from keras_blockreuse.sweep.space import Configuration, SweepError

if TYPE_CHECKING:
    from keras_blockreuse.sweep.inputs import UserInputs

SETTINGS_FILE = "settings.json"
SOURCE_FILE = "source.blocks.h5"
__all__ = ["ALL_TASKS", "SCHEDULERS", "SMOKE", "SweepResult", "SweepSettings", "build_parser", "main",
           "parse_args", "run_sweep", "settings_from_args", "source_key"]


@dataclasses.dataclass
class SweepResult:
    """What `run_sweep` returns: the output folder, the tables and the closing line."""

    out: str
    trials: object  # pandas.DataFrame, one row per trial
    summary: object  # pandas.DataFrame, one row per policy, best first
    best: str
    paths: dict
    blocks: list = dataclasses.field(default_factory=list)
    """The swept blocks, in computation order."""
    fixed: dict = dataclasses.field(default_factory=dict)
    """Blocks fixed to reinit in every configuration -> why."""
    metric: str = "test_accuracy"
    """The column of `trials` that ranks the policies (its `val_` twin chose nothing here:
    the ranking is on test, as the report says)."""


def run_sweep(
    settings: SweepSettings,
    extra: Sequence[Configuration] = (),
    print_fn: Callable[[str], None] = print,
    user: UserInputs | None = None,
) -> SweepResult:
    """Run (or resume) a sweep and write its report; see the module docstring.

    Args:
        settings: the sweep's settings. With `resume=True`, `out` names the interrupted sweep
            and its saved settings are used.
        extra: configurations to run besides the strategies' (e.g. a policy of one's own).
        print_fn: where progress lines go.
        user: the user's model, data and source (`which_blocks`); None takes them from
            `settings` (--model, --data, --source) or runs a built-in task.

    Returns:
        A `SweepResult`.

    Raises:
        SweepError, DataError: invalid settings or data, before any trial runs.
    """
    started = time.time()
    settings = _prepare(settings)
    out = settings.out
    user = user if user is not None else _cli_user_inputs(settings)
    if user is None:
        data = _make_data(settings)
        blocks, fixed = _swept_blocks(settings, data)
    else:
        data = user.data
        blocks, fixed = _user_blocks(settings, user, print_fn)
    configurations = _static_configurations(settings, blocks, extra)
    if not settings.resume:  # Only a valid sweep leaves a folder behind.
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, SETTINGS_FILE), "w") as f:
            json.dump(dataclasses.asdict(settings), f, indent=2)
    if user is not None:
        _keep_source(user, out)
    print_fn(f"Sweep folder: {out}")
    print_fn(data.summary())
    if fixed:
        print_fn("Fixed to reinit in every configuration: "
                 + "; ".join(f"{b} ({why})" for b, why in fixed.items()))

    import ray

    own_ray = _start_ray(settings, out)
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        gpus_per_trial = settings.gpus_per_trial
        if gpus_per_trial is None:
            gpus_per_trial = 0.25 if gpus else 0.0
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        print_fn(f"Ray: {nodes} node(s), {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs; each "
                 f"trial takes {settings.cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU.")
        if user is None:
            source, source_info = _source_blocks(settings, data, use_gpu=gpus > 0,
                                                 print_fn=print_fn)
        else:
            source, source_info = user.source_bytes(), user.source_info
        runner = _Runner(settings, data, source, gpus_per_trial, print_fn, user)
        greedy = "greedy" in space.parse_strategies(settings.strategy)
        rows = runner.run("sweep", configurations)
        if greedy:
            rows = _greedy(runner, rows, blocks, configurations)
    finally:
        if own_ray:
            ray.shutdown()
            _drop_temp_link(out)

    import pandas as pd

    rough = any(r.get("_rough_clock") for r in rows)
    concurrency = _max_concurrency(rows)
    if rough:  # some trials reported no clock of their own
        concurrency = f"{concurrency} (from Tune's whole-second timestamps: may overcount)"
    trials = pd.DataFrame(rows)
    wall = time.time() - started
    info = {
        "swept blocks": ", ".join(blocks),
        "fixed blocks": "; ".join(f"{b}=reinit ({why})" for b, why in fixed.items()) or "none",
        "legend": (f"Block letters in the *blocks* column follow {', '.join(blocks)}: "
                   "R = reinit, F = frozen (transferred), T = tuned (transferred, fine-tuned)."),
        "source model": source_info,
        "trials": f"{len(trials)} ({int((trials['status'] == 'ok').sum())} ok)",
        "max concurrent trials": concurrency,
        "machine": _machine(),
        "ray": f"{nodes} node(s), {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs",
        "wall time": f"{wall:.0f} s",
    }
    if user is not None:
        info["model"] = user.model_info
        info["training"] = user.training_info
    metric = _metrics_of(settings, user)[0]
    written = write_report(trials, out, _settings_dict(settings, gpus_per_trial), info,
                           metric=metric, mode=_mode_of(user))
    for name, path in written["paths"].items():
        print_fn(f"wrote {name}: {path}")
    print_fn(f"{len(trials)} trials in {wall:.0f} s.")
    print_fn(written["best"])
    return SweepResult(out=out, trials=trials, summary=written["summary"], best=written["best"],
                       paths=written["paths"], blocks=list(blocks), fixed=dict(fixed),
                       metric=metric)


class _Runner:
    """Runs one Tune experiment per call and turns its results into report rows."""

    def __init__(self, settings: SweepSettings, data, source: bytes, gpus: float, print_fn,
                 user: UserInputs | None = None):
        self.settings = settings
        self.user = user
        self.data = data
        self.source = source
        self.gpus = gpus
        self.print_fn = print_fn
        self.labels: dict[str, Configuration] = {}
        self.storage = settings.storage or os.path.join(settings.out, "tune")

    def trainable(self):
        from ray import tune

        train_trial = _functions(self.settings)["trial"]
        if self.user is not None:  # the user's model: its recipe, by value, once
            trainable = tune.with_parameters(train_trial, data=self.data, source=self.source,
                                             recipe=self.user.packed)
        else:
            trainable = tune.with_parameters(train_trial, data=self.data, source=self.source)
        return tune.with_resources(trainable, {"cpu": self.settings.cpus_per_trial,
                                               "gpu": self.gpus})

    def run(self, name: str, configurations: Sequence[Configuration]) -> list[dict]:
        from ray import tune

        s = self.settings
        for c in configurations:
            self.labels.setdefault(c.key, c)
        path = os.path.join(self.storage, name)
        if s.resume and tune.Tuner.can_restore(path):
            self.print_fn(f"Resuming experiment {path}: finished trials are kept.")
            tuner = tune.Tuner.restore(path, trainable=self.trainable(), resume_unfinished=True,
                                       resume_errored=True)
        else:
            keys = [c.key for c in configurations]
            total = len(keys) * s.seeds
            self.print_fn(f"Experiment {name}: {len(keys)} configurations x {s.seeds} seeds = "
                          f"{total} trials.")
            param_space = {
                "policy": tune.grid_search(keys),
                "seed": tune.grid_search(list(range(s.seeds))),
                "model": s.model, "epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr,
                "cpus": max(1, int(s.cpus_per_trial)),
            }
            if s.task == DETECTION:
                param_space.update(_detection_trial_settings(s))
            scheduler = None
            if s.scheduler == "asha":
                from ray.tune.schedulers import ASHAScheduler

                scheduler = ASHAScheduler(time_attr="training_iteration", max_t=s.epochs,
                                          grace_period=max(1, s.epochs // 8), reduction_factor=3)
            tuner = tune.Tuner(
                self.trainable(),
                param_space=param_space,
                tune_config=tune.TuneConfig(metric=_metrics_of(s, self.user)[1],
                                            mode=_mode_of(self.user),
                                            scheduler=scheduler, reuse_actors=s.reuse_actors,
                                            trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=name, storage_path=self.storage, verbose=1,
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
            )
        grid = tuner.fit()
        if grid.num_errors:
            self.print_fn(f"{grid.num_errors} trial(s) failed; the sweep went on. See the report.")
        return [self._row(result, name) for result in grid]

    def _row(self, result, experiment: str) -> dict:
        metrics = dict(result.metrics or {})
        config = result.config or _read_params(result.path)
        key = config.get("policy", "")
        c = self.labels.get(key)
        done = metrics.get(_metrics_of(self.settings, self.user)[0])
        status = "error" if result.error else ("ok" if done is not None else "stopped")
        row = {
            "trial_id": metrics.get("trial_id") or os.path.basename(result.path or ""),
            "policy": key,
            "label": c.label if c else key,
            "code": c.code if c else "",
            "seed": config.get("seed"),
            "status": status,
            "epochs_done": metrics.get("epoch", 0),
            "experiment": experiment,
            "error": _error_line(result.error) if result.error else "",
        }
        for name in _metric_columns(self.settings, self.user):
            row[name] = metrics.get(name, math.nan)
        for name in ("node_ip", "node_id", "hostname", "pid", "gpu_ids"):
            row[name] = metrics.get(name, "")
        # The trial's own clock when it has one (Tune's `timestamp` is in whole seconds, which
        # makes back-to-back trials on one worker look concurrent).
        if metrics.get("started_at") is not None and metrics.get("train_seconds") is not None:
            row["_seconds"] = metrics["train_seconds"]
            row["_finished"] = metrics["started_at"] + metrics["train_seconds"]
        else:
            row["_finished"] = metrics.get("timestamp")
            row["_seconds"] = metrics.get("time_total_s")
            row["_rough_clock"] = None not in (row["_finished"], row["_seconds"])
        return row


# --- the user's model, data and source (--model, --data, --source; which_blocks) ----------


def _cli_user_inputs(settings: SweepSettings) -> UserInputs | None:
    """The command line's own model, data and source, prepared; None for a built-in task
    whose source the sweep trains."""
    from keras_blockreuse.sweep.inputs import from_settings

    return from_settings(settings)


def _user_blocks(settings: SweepSettings, user: UserInputs, print_fn) -> tuple[list[str], dict]:
    """The swept blocks of the user's model, and the fixed ones with why (prepared once)."""
    if not user.metric:
        existing = os.path.join(settings.out, "source.blocks.h5") if settings.resume else None
        user.prepare(existing)
    return user.swept_blocks(settings.blocks, settings.smoke)


def _keep_source(user: UserInputs, out: str) -> None:
    user.keep(out)


def _make_data(settings: SweepSettings):
    """The task's data: a classification task (`data.make_task`), or the detection task's
    fixed validation and test scenes (`detection.sweep.make_detection_task`)."""
    if settings.task == DETECTION:
        from keras_blockreuse.detection.sweep import make_detection_task

        sizes = {}
        if settings.smoke:
            sizes = {k: SMOKE_DETECTION[k] for k in ("val_images", "test_images")}
        return make_detection_task(seed=settings.data_seed, **sizes)
    return make_task(settings.dataset, settings.task, settings.resolved_shift(), settings.shots,
                     seed=settings.data_seed)


def _functions(settings: SweepSettings) -> dict:
    """The task's source and trial functions (same signatures for every task)."""
    if settings.task == DETECTION:
        from keras_blockreuse.detection.sweep import train_detection_source, train_detection_trial

        return {"source": train_detection_source, "trial": train_detection_trial}
    from keras_blockreuse.sweep.trial import train_source, train_trial

    return {"source": train_source, "trial": train_trial}


def _metrics_of(settings: SweepSettings, user: UserInputs | None = None) -> tuple[str, str]:
    """The test metric the report ranks by, and the validation metric Tune and greedy use."""
    if user is not None:
        return f"test_{user.metric}", f"val_{user.metric}"
    if settings.task == DETECTION:
        from keras_blockreuse.detection.sweep import DETECTION_METRIC, DETECTION_VAL_METRIC

        return DETECTION_METRIC, DETECTION_VAL_METRIC
    return "test_accuracy", "val_accuracy"


def _mode_of(user: UserInputs | None) -> str:
    """`"max"` (higher is better), or the user's metric's direction."""
    return "max" if user is None else user.mode


def _metric_columns(settings: SweepSettings, user: UserInputs | None = None
                    ) -> tuple[str, ...]:
    """The metrics a trial reports that go into results.csv."""
    if user is not None:
        return (*(f"{p}{m}" for m in user.metric_keys for p in ("test_", "val_", "")),
                "train_seconds")
    if settings.task == DETECTION:
        return ("test_map_50", "test_map", "test_map_75", "val_map_50", "val_map", "loss",
                "train_seconds")
    return ("test_accuracy", "val_accuracy", "accuracy", "test_loss", "val_loss", "loss",
            "train_seconds")


def _detection_trial_settings(settings: SweepSettings) -> dict:
    """What a detection trial's configuration adds: its training scenes, and the detector's
    own batch size and learning rate unless the sweep's were changed from their defaults."""
    from keras_blockreuse.detection.sweep import DETECTION_TRIAL_DEFAULTS

    default = SweepSettings()
    config = {"train_images": settings.resolved_train_images()}
    if settings.batch_size == default.batch_size:
        config["batch_size"] = DETECTION_TRIAL_DEFAULTS["batch_size"]
    if settings.lr == default.lr:
        config["lr"] = DETECTION_TRIAL_DEFAULTS["lr"]
    return config


def _greedy(runner: _Runner, rows: list[dict], blocks: list[str],
            static: Sequence[Configuration]) -> list[dict]:
    """Forward selection: keep adding the single block policy with the best mean validation
    metric (accuracy, or mAP@0.5 for detection) while it beats the current configuration."""
    val_metric = _metrics_of(runner.settings, runner.user)[1]
    sign = 1.0 if _mode_of(runner.user) == "max" else -1.0
    evaluated = {c.key for c in static}
    current = space.scratch(blocks)
    round_ = 1
    while True:
        scores = _val_means(rows, val_metric)
        candidates = space.greedy_step(current, blocks, round_)
        if not candidates:
            break
        missing = [c for c in candidates if c.key not in evaluated]
        if missing:
            rows = rows + runner.run(f"greedy_{round_ + 1}", missing)
            evaluated |= {c.key for c in missing}
            scores = _val_means(rows, val_metric)
        scored = [c for c in candidates if not math.isnan(scores.get(c.key, math.nan))]
        if not scored:
            break
        best = max(scored, key=lambda c: sign * scores[c.key])
        if sign * scores[best.key] <= sign * scores.get(current.key, sign * -math.inf):
            runner.print_fn(f"Greedy: no single change beats {current.key}; stopping.")
            break
        runner.print_fn(f"Greedy round {round_}: {best.key} (val {scores[best.key]:.3f}).")
        current = best
        round_ += 1
    return rows


def _val_means(rows: list[dict], val_metric: str = "val_accuracy") -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for r in rows:
        if r["status"] == "ok":
            sums.setdefault(r["policy"], []).append(float(r[val_metric]))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _prepare(settings: SweepSettings) -> SweepSettings:
    """Validate, fill in the output folder, and on resume load the saved settings."""
    if settings.resume:
        out = settings.out or _latest_sweep()
        saved_path = os.path.join(out, SETTINGS_FILE)
        if not os.path.isfile(saved_path):
            raise SweepError(f"--resume needs the folder of an earlier sweep; {out!r} has no "
                             f"{SETTINGS_FILE}.")
        with open(saved_path) as f:
            saved = json.load(f)
        fields = {f.name for f in dataclasses.fields(SweepSettings)}
        saved = SweepSettings(**{k: v for k, v in saved.items() if k in fields})
        saved.resume = True
        saved.out = os.path.abspath(out)
        saved.address = settings.address or saved.address
        return saved.validate()
    settings = dataclasses.replace(settings)
    settings.validate()
    if settings.smoke:
        apply_smoke(settings)
    if settings.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        settings.out = os.path.join("runs", "which_blocks", stamp)
    settings.out = os.path.abspath(settings.out)
    if settings.storage is not None and "://" not in settings.storage:
        settings.storage = os.path.abspath(settings.storage)
    if os.path.isfile(os.path.join(settings.out, SETTINGS_FILE)):
        raise SweepError(f"{settings.out} already holds a sweep: pass --resume to continue it, or "
                         "choose another --out.")
    return settings


def _latest_sweep() -> str:
    root = os.path.join("runs", "which_blocks")
    candidates = sorted(d for d in os.listdir(root) if os.path.isfile(
        os.path.join(root, d, SETTINGS_FILE))) if os.path.isdir(root) else []
    if not candidates:
        raise SweepError("--resume without --out continues the latest sweep under "
                         f"{root}, and there is none; pass --out FOLDER.")
    return os.path.join(root, candidates[-1])


def _swept_blocks(settings: SweepSettings, data) -> tuple[list[str], dict[str, str]]:
    """The blocks whose policy varies, and the others with their fixed policy (`reinit`)."""
    import keras

    from keras_blockreuse.sweep.zoo import build_model

    if settings.task == DETECTION:
        from keras_blockreuse.detection.sweep import DETECTION_BLOCKS

        names = list(DETECTION_BLOCKS)
        unknown = [b for b in settings.blocks or [] if b not in names]
        if unknown:
            raise SweepError(f"Unknown block {', '.join(map(repr, unknown))} for --task "
                             f"detection. The detector's transferable blocks are: "
                             f"{', '.join(names)}.")
        if settings.blocks is None:
            chosen = names[:1] if settings.smoke else names
        else:
            chosen = [b for b in names if b in settings.blocks]
        return chosen, {}
    model = build_model(settings.model, data.input_shape, data.target_classes)
    names = list(model.blocks)
    keras.backend.clear_session()
    head = names[-1]
    # The head maps features to the source's classes: transferable only when the target has
    # the same classes. A split's source was trained on the *other* classes, so its head is
    # swept only when --blocks names it (and the class counts agree).
    why_not_head = None
    if data.source_classes != data.target_classes:
        why_not_head = (f"the head: the source has {data.source_classes} classes, the target "
                        f"{data.target_classes}")
    elif settings.task == "split":
        why_not_head = ("the head, trained on the source's other classes (--task split); "
                        "name it in --blocks to sweep it")
    transferable = names if why_not_head is None else names[:-1]
    if settings.blocks is None:
        chosen = transferable[:1] if settings.smoke else transferable
        unchosen = "not swept (--smoke sweeps the first block)"
    else:
        unknown = [b for b in settings.blocks if b not in names]
        if unknown:
            raise SweepError(f"Unknown block {', '.join(map(repr, unknown))} for model "
                             f"{settings.model!r}. Its blocks are: {', '.join(names)}.")
        if head in settings.blocks and data.source_classes != data.target_classes:
            raise SweepError(
                f"Block {head!r} is the head, and the source has {data.source_classes} classes "
                f"but the target {data.target_classes}: it cannot be transferred. Leave it out "
                "of --blocks (it is always reinit).")
        chosen = [b for b in names if b in settings.blocks]
        unchosen = "not in --blocks"
    fixed = {b: (why_not_head if b == head and why_not_head and settings.blocks is None
                 else unchosen) for b in names if b not in chosen}
    return chosen, fixed


def _static_configurations(settings, blocks, extra) -> list[Configuration]:
    configurations = space.configurations(settings.strategy, blocks)
    keys = {c.key for c in configurations}
    for c in extra:
        if c.key not in keys:
            configurations.append(c)
            keys.add(c.key)
    return configurations


def source_key(settings: SweepSettings, data) -> str:
    """The cache key of a source model: a hash of everything that determines it.

    The source task enters through a digest of its arrays, so tasks with the same source data
    (e.g. different shifts or shots of the same dataset and data seed) share one source model;
    the detection task's source (trained by another function) has a key of its own.
    """
    import keras

    inputs = {
        "format": 1,
        "source_data": data.source_fingerprint(),
        "dataset": settings.dataset,
        "model": settings.model,
        "input_shape": list(data.input_shape),
        "classes": data.source_classes,
        "epochs": settings.source_epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "seed": settings.data_seed,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }
    if settings.task == DETECTION:  # classification keys stay those of earlier versions
        inputs["task"] = DETECTION
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def default_cache() -> str:
    """`$XDG_CACHE_HOME/keras-blockreuse/sources` (default `~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "keras-blockreuse", "sources")


def _source_blocks(settings: SweepSettings, data, use_gpu: bool, print_fn) -> tuple[bytes, str]:
    """The source model's block file: from the cache, or trained now and cached."""
    train_source = _functions(settings)["source"]
    key = source_key(settings, data)
    folder = os.path.join(settings.cache or default_cache(), key)
    path = os.path.join(folder, SOURCE_FILE)
    facts_path = os.path.join(folder, "source.json")
    if os.path.isfile(path) and os.path.isfile(facts_path):
        with open(facts_path) as f:
            facts = json.load(f)
        print_fn(f"Source model from cache: {path}")
        with open(path, "rb") as f:
            return f.read(), _source_text(facts, cached=True)
    args = dict(model=settings.model, epochs=settings.source_epochs,
                batch_size=settings.batch_size, lr=settings.lr, seed=settings.data_seed,
                metadata={"dataset": settings.dataset, "task": settings.task,
                          "cache_key": key})
    if use_gpu:
        import ray

        print_fn(f"Training the source model ({settings.source_epochs} epochs) in a Ray task "
                 "on a GPU ...")
        task = ray.remote(num_gpus=1, num_cpus=1)(_train_source_task)
        blob, metrics, where = ray.get(task.remote(data, args, settings.task))
        where = f"Ray task, GPU {where['gpu_ids'] or '?'} on {where['node_ip']}"
    else:
        print_fn(f"Training the source model ({settings.source_epochs} epochs) in the driver ...")
        blob, metrics = train_source(data, **args)
        where = "driver (no GPU)"
    facts = {"key": key, "model": settings.model, "epochs": settings.source_epochs,
             "trained_in": where, **metrics}
    os.makedirs(folder, exist_ok=True)
    for target, payload in ((path, blob), (facts_path, json.dumps(facts, indent=2).encode())):
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(handle, "wb") as f:
            f.write(payload)
        os.replace(temporary, target)
    print_fn(f"Source model cached: {path}")
    return blob, _source_text(facts, cached=False)


def _train_source_task(data, args: dict, task: str = "shift"):
    """The Ray task body: train the source model where Ray placed it (a GPU worker)."""
    from keras_blockreuse.sweep.options import SweepSettings
    from keras_blockreuse.sweep.trial import where

    train_source = _functions(SweepSettings(task=task))["source"]
    blob, metrics = train_source(data, cpus=1, **args)
    return blob, metrics, where()


def _source_text(facts: dict, cached: bool) -> str:
    return (f"{facts['model']}, {facts['epochs']} epochs, source val accuracy "
            f"{facts['val_accuracy']:.3f}, trained in {facts['trained_in']} in "
            f"{facts['seconds']:.0f} s{' (cached)' if cached else ''}, key {facts['key']}")


def _start_ray(settings: SweepSettings, out: str) -> bool:
    """Start or join Ray; False when Ray was already initialised by the caller."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}}
    if settings.address:
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=settings.address, runtime_env=runtime_env, log_to_driver=True)
        except AuthenticationError as error:
            raise SweepError(
                f"Could not join the Ray cluster at --address {settings.address}: it uses token "
                "authentication. Set RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN to the cluster's "
                "token when it is not in ~/.ray/auth_token.") from error
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise SweepError(f"Could not join the Ray cluster at --address {settings.address}: "
                             f"{str(error).splitlines()[0]}") from error
        return True
    ray.init(address="local", include_dashboard=False, _temp_dir=_ray_temp_dir(out),
             runtime_env=runtime_env, configure_logging=False)
    return True


def _ray_temp_dir(out: str) -> str:
    """`<out>/ray`, reached through a short link when its path would make Ray's socket paths
    longer than Unix allows (107 bytes)."""
    folder = os.path.join(out, "ray")
    os.makedirs(folder, exist_ok=True)
    if len(folder) <= 40:
        return folder
    link = ray_temp_link(out)
    if os.path.islink(link) and os.readlink(link) != folder:
        os.unlink(link)
    if not os.path.islink(link):
        os.symlink(folder, link)
    return link


def ray_temp_link(out: str) -> str:
    """The short link to `<out>/ray` that a local Ray of this sweep uses as its temporary
    folder when `<out>` is long (`/tmp/kbr-ray-<digest>`); every process of that Ray names it
    on its command line."""
    folder = os.path.join(os.path.abspath(out), "ray")
    digest = hashlib.sha1(folder.encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"kbr-ray-{digest}")


def _drop_temp_link(out: str) -> None:
    link = ray_temp_link(out)
    if os.path.islink(link):
        os.unlink(link)


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _read_params(path: str | None) -> dict:
    try:
        with open(os.path.join(path, "params.json")) as f:
            return json.load(f)
    except (OSError, TypeError, ValueError):
        return {}


def _error_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line
    return lines[-1] if lines else type(error).__name__


def _max_concurrency(rows: list[dict]) -> int:
    spans = []
    for r in rows:
        end, seconds = r.pop("_finished", None), r.pop("_seconds", None)
        r.pop("_rough_clock", None)
        if end is not None and seconds is not None:
            spans.append((end - seconds, end))
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def _machine() -> str:
    try:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    except Exception:
        gpus = 0
    return f"{os.cpu_count()} CPU cores, {gpus or 'no'} GPU{'s' if gpus != 1 else ''} (driver)"


def _settings_dict(settings: SweepSettings, gpus_per_trial: float) -> dict:
    d = dataclasses.asdict(settings)
    d.pop("explicit", None)
    d["shift"] = settings.resolved_shift()
    d["train_images"] = settings.resolved_train_images()
    if settings.task == DETECTION:
        d["shots"] = None  # the detection task has no shots
        trial = _detection_trial_settings(settings)
        d["detector_batch_size"] = trial.get("batch_size", settings.batch_size)
        d["detector_lr"] = trial.get("lr", settings.lr)
    d["gpus_per_trial"] = gpus_per_trial
    d["blocks"] = ",".join(settings.blocks) if settings.blocks else "all transferable"
    return d


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for bad values)."""
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        run_sweep(settings, print_fn=lambda line: print(line, flush=True))
    except (SweepError, DataError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = args.out or "<the sweep's folder>"
        print(f"{PROG}: interrupted; continue with: python sweeps/which_blocks.py --resume "
              f"--out {out}", file=sys.stderr)
        return 130
    return 0
