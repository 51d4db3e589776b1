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
print(result.best)          # "Best on validation: ...", the policies tied with it, the cheapest
```
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from keras_blockreuse.sweep import space
from keras_blockreuse.sweep.control import (
    Interrupts,
    check_address,
    check_free_space,
    check_resources,
    redraw_target_split,
    resume_command,
    split_per_seed_trial,
    tune_environment,
    tune_loggers,
)
from keras_blockreuse.sweep.data import DataError, make_task
from keras_blockreuse.sweep.options import (
    ALL_TASKS,
    DETECTION,
    PREDICTED,
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
from keras_blockreuse.sweep.report import MIN_SEEDS, diverged, rounding_equal, write_report
from keras_blockreuse.sweep.space import SCRATCH, Configuration, SweepError

if TYPE_CHECKING:
    from keras_blockreuse.sweep.inputs import UserInputs

SETTINGS_FILE = "settings.json"
SOURCE_FILE = "source.blocks.h5"
__all__ = ["ALL_TASKS", "SCHEDULERS", "SMOKE", "SweepResult", "SweepSettings", "build_parser", "main",
           "parse_args", "run_sweep", "settings_from_args", "source_key", "too_few_seeds"]


@dataclasses.dataclass
class SweepResult:
    """What `run_sweep` returns: the output folder, the tables and the closing line."""

    out: str
    trials: object  # pandas.DataFrame, one row per trial
    summary: object  # pandas.DataFrame, one row per policy, ranked by validation
    best: str  # the verdict in words
    paths: dict
    blocks: list = dataclasses.field(default_factory=list)
    """The swept blocks, in computation order."""
    fixed: dict = dataclasses.field(default_factory=dict)
    """Blocks fixed to reinit in every configuration -> why."""
    metric: str = "test_accuracy"
    """The test metric reported per policy (its `val_` twin chooses the verdict)."""
    verdict: object = None
    """`report.Verdict`: the best policy on validation, those tied with it, the recommended."""
    interrupted: str | None = None
    """"SIGINT" or "SIGTERM" when the sweep was interrupted (its report is marked)."""

    @property
    def exit_code(self) -> int:
        """0; 130 / 143 after SIGINT / SIGTERM; 1 when no trial finished its full budget."""
        if self.interrupted:
            return {"SIGINT": 130, "SIGTERM": 143}.get(self.interrupted, 130)
        finished = 0 if self.trials is None or not len(self.trials) else int(
            (self.trials["status"] == "ok").sum())
        return 0 if finished else 1


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
    check_address(settings.address)  # before anything else: seconds, not a hang
    out = settings.out
    user = user if user is not None else _cli_user_inputs(settings)
    if user is not None and settings.strategy == PREDICTED:
        raise SweepError("--strategy predicted ranks the built-in models' blocks only so far; "
                         "with your own model use prefix or surgical (the predictors are in "
                         "keras_blockreuse.sweep.predict).")
    if user is None:
        data = _make_data(settings)
        blocks, fixed = _swept_blocks(settings, data)
    else:
        data = user.data
        digest = data.digest() if hasattr(data, "digest") else None
        if settings.resume and settings.data_digest and digest != settings.data_digest:
            raise SweepError(
                f"{'resume=True' if settings.api else '--resume'} continues the sweep in "
                f"{settings.out} on the data it was started with, but the data given now holds "
                "other samples or labels (its checksum differs). Start a new sweep in another "
                f"folder ({'out=' if settings.api else '--out'}) for this data.")
        settings.data_digest = digest
        blocks, fixed = _user_blocks(settings, user, print_fn)
        if settings.resume and settings.trained_as:
            _refuse_other_training(settings, user.trained_as)
        settings.trained_as = user.trained_as
    configurations = _static_configurations(settings, blocks, extra)
    _check_free_space(settings, len(configurations))  # before anything is written
    order = user.order if user is not None else _model_blocks(settings, data)
    if settings.data_seeds:
        redraw_target_split(data, 0)  # refuses data it cannot re-draw, before anything starts
    costs = _trained_parameters(settings, data, configurations, user)
    few = too_few_seeds(settings)
    if few and (settings.api or settings.explicit is None):  # Python, not the command line
        import warnings  # (here: the sweep's quiet console turns Python's warnings off)

        warnings.warn(few, UserWarning, stacklevel=3 if settings.api else 2)
    with _quiet(settings.verbose), Interrupts() as interrupts:
        begun = _Begun(out, settings.resume)
        try:
            print_fn(f"Sweep folder: {out}")
            print_fn(data.summary())
            if fixed:
                print_fn("Fixed to reinit in every configuration: "
                         + "; ".join(f"{b} ({why})" for b, why in fixed.items()))
            prefix = _prefix_caveat(order, blocks, fixed, [c.label for c in configurations])
            if prefix:
                print_fn(prefix)
            for caveat in user.caveats if user is not None else []:
                print_fn(f"Caveat (loading the source): {caveat}")
            for caveat in user.model_caveats if user is not None else []:
                print_fn(f"Caveat (the model): {caveat}")
            if few:  # before any training: a one-seed look runs, but says what it will lack
                print_fn(f"Warning: {few}")
            ray_run = _run_on_ray(settings, data, blocks, configurations, costs, begun,
                                  interrupts, print_fn, user)
        except BaseException:
            begun.undo()
            raise
    return _finish(settings, ray_run, blocks, fixed, started, interrupts.signal, print_fn, user,
                   data_summary=data.summary(), order=order, notes=getattr(data, "notes", ()),
                   chance=(_majority_rate(data, _metrics_of(settings, user)[0])
                           if _mode_of(user) == "max" else None))


def too_few_seeds(settings: SweepSettings) -> str:
    """Why a sweep of fewer than `MIN_SEEDS` seeds can give no verdict, in words (`""` when
    it has enough): the verdict compares policies over `MIN_SEEDS` finished seeds each. Said
    before any training; the sweep still runs (a one-seed look is a fair first step)."""
    if settings.seeds >= MIN_SEEDS:
        return ""
    option = settings.option_name("seeds")
    given, enough = (f"{option}{'' if settings.api else ' '}{n}"
                     for n in (settings.seeds, MIN_SEEDS))
    return (f"{given} gives no verdict: the verdict compares policies over at least "
            f"{MIN_SEEDS} finished seeds each, so this sweep reports each policy's results "
            f"without a best, tied or recommended policy. For a verdict, pass {enough} or "
            "more.")


def _check_free_space(settings: SweepSettings, configurations: int) -> None:
    """`check_free_space` for this sweep: its trials (every configuration, seed and rate), a
    local Ray's session files in OUT/ray (not when joining a cluster, or in a Ray the caller
    started)."""
    import ray

    rates = len(settings.lrs) if settings.lrs and len(settings.lrs) > 1 else 1
    check_free_space(settings.out, configurations * settings.seeds * rates,
                     local_ray=not settings.address and not ray.is_initialized(),
                     storage=settings.storage, resume=settings.resume, api=settings.api)


class _Begun:
    """What a sweep has written so far, so that one that never started leaves nothing."""

    def __init__(self, out: str, resume: bool):
        self.out = out
        self.existed = resume or os.path.exists(out)
        self.started = resume  # a resumed sweep had started

    def start(self, settings: SweepSettings) -> None:
        """The first trial is about to run: from now on the folder is the sweep's."""
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, SETTINGS_FILE), "w") as f:
            json.dump(dataclasses.asdict(settings), f, indent=2)
        self.started = True

    def undo(self) -> None:
        if self.started:
            return
        if not self.existed:
            shutil.rmtree(self.out, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(self.out, "ray"), ignore_errors=True)
        _drop_temp_link(self.out)


def _run_on_ray(settings, data, blocks, configurations, costs, begun, interrupts,
                print_fn, user=None) -> dict:
    """Start or join Ray, check the request fits a node, get the source model, run the trials.

    Returns the trial rows and facts about the cluster; a signal during the trials ends them
    cleanly (the rows then include unfinished trials).
    """
    import ray

    own_ray = _start_ray(settings, settings.out)
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        gpus_per_trial = settings.gpus_per_trial
        if gpus_per_trial is None:
            gpus_per_trial = 0.25 if gpus else 0.0
        alive = [n for n in ray.nodes() if n.get("Alive")]
        check_resources(alive, settings.cpus_per_trial, gpus_per_trial,
                        (settings.option_name("cpus_per_trial"),
                         settings.option_name("gpus_per_trial")))
        print_fn(f"Ray: {len(alive)} node(s), {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs; "
                 f"each trial takes {settings.cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU.")
        if user is None:
            source, source_info = _source_blocks(settings, data, use_gpu=gpus > 0,
                                                 print_fn=print_fn)
        else:
            source, source_info = user.source_bytes(), user.source_info
        ranking, no_ranking = None, ""
        if settings.task != DETECTION and user is None:  # predictors: cheap, before any trial
            from keras_blockreuse.sweep.predict import rank_for_sweep, top_configurations

            try:
                ranking = rank_for_sweep(settings.model, data, source, blocks)
            except SweepError as error:
                if settings.strategy == PREDICTED:
                    raise
                no_ranking = str(error)
                print_fn(f"No predicted ranking: {error}")
            else:
                print_fn(f"Predicted ranking ({ranking.seconds:.1f} s): " + "; ".join(
                    f"{p.rank}. {p.label}" for p in ranking.predictions[:max(3, settings.top_k)]))
            if settings.strategy == PREDICTED:
                configurations = _static_configurations(
                    settings, blocks, [*top_configurations(ranking, blocks, settings.top_k),
                                       *configurations])
                costs.update(_trained_parameters(settings, data, configurations, user))
        if not begun.started:
            begun.start(settings)
        if user is not None:
            _keep_source(user, settings.out)
        interrupts.defer()  # from here on, a signal ends the trials and the report is written
        runner = _Runner(settings, data, source, gpus_per_trial, print_fn, user, interrupts,
                         costs)
        all_rows, budget = None, ""
        if settings.scheduler == "halving":
            rows, all_rows, budget = _halving(runner, settings, configurations, blocks, user)
        else:
            rows = runner.run("sweep", configurations)
        if (settings.strategy != PREDICTED and "greedy" in space.parse_strategies(
                settings.strategy) and not interrupts.signal):
            rows = _greedy(runner, rows, blocks, configurations)
    finally:
        if own_ray:
            ray.shutdown()
            _drop_temp_link(settings.out)
    return {"rows": rows, "planned": runner.planned, "source_info": source_info,
            "ranking": ranking, "no_ranking": no_ranking, "all_rows": all_rows,
            "budget": budget,
            "gpus_per_trial": gpus_per_trial, "gpus": gpus, "nodes": len(alive),
            "cpus": resources.get("CPU", 0)}


def _finish(settings, ray_run, blocks, fixed, started, signal_name, print_fn,
            user=None, data_summary: str = "", order: Sequence[str] = (),
            chance: tuple[float, int] | None = None, notes: Sequence[str] = ()
            ) -> SweepResult:
    """Write the report (whatever happened) and print the verdict."""
    import pandas as pd

    out, rows = settings.out, ray_run["rows"]
    all_rows, chosen_rates = ray_run["all_rows"], None
    if settings.lrs and len(settings.lrs) > 1:
        from keras_blockreuse.sweep.rates import best_rates

        all_rows = rows
        rows, chosen_rates = best_rates(rows, metric=_metrics_of(settings, user)[1],
                                        mode=_mode_of(user))
    rough = any(r.get("_rough_clock") for r in rows)
    concurrency = _max_concurrency(rows)
    if rough:  # some trials reported no clock of their own
        concurrency = f"{concurrency} (from Tune's whole-second timestamps: may overcount)"
    trials = pd.DataFrame(rows, columns=None if rows else ["policy", "seed", "status"])
    wall = time.time() - started
    ran = trials if all_rows is None else pd.DataFrame(all_rows)  # (every rate's trials)
    counts = ran["status"].value_counts() if len(ran) else {}
    said = ", ".join(f"{counts[k]} {k}" for k in ("ok", "error", "stopped", "unfinished")
                     if k in counts)
    prefix = _prefix_caveat(order, blocks, fixed, trials["label"] if "label" in trials else [])
    info = {
        "swept blocks": ", ".join(blocks),
        "fixed blocks": "; ".join(f"{b}=reinit ({why})" for b, why in fixed.items()) or "none",
        "legend": (f"Block letters in the *blocks* column follow {', '.join(blocks)}: "
                   "R = reinit, F = frozen (transferred), T = tuned (transferred, fine-tuned)."
                   + (f" {prefix}" if prefix else "")),
        "source model": ray_run["source_info"],
        **({"caveats of the load": " ".join(user.caveats)} if user and user.caveats else {}),
        **({"caveats of the model": " ".join(user.model_caveats)}
           if user and user.model_caveats else {}),
        "trials": f"{len(ran)} planned {ray_run['planned']} ({said or 'none ran'})",
        "max concurrent trials": concurrency,
        "machine": _machine(),
        "ray": f"{ray_run['nodes']} node(s), {ray_run['cpus']:g} CPUs, {ray_run['gpus']:g} GPUs",
        "wall time": f"{wall:.0f} s",
    }
    if settings.training_policy != "constant" or settings.block_lr:
        info["training policy"] = (f"{settings.training_policy} (k = {settings.policy_epochs}"
                                   f", fine-tuning factor {settings.ft_factor:g}); block "
                                   f"learning rates: {settings.block_lr or 'none'}")
    if ray_run["no_ranking"]:
        info["predicted ranking"] = f"not available: {ray_run['no_ranking']}"
    if settings.scheduler == "halving":
        info["budget"] = ray_run["budget"]
    if settings.scheduler == "asha":
        info["early stopping"] = ASHA_CAVEAT
    if chosen_rates is not None:
        info["learning rate"] = ("chosen per configuration on validation among "
                                 f"{settings.lrs}: " + ", ".join(
                                     f"{k} {v['lr']:g}" if v["lr"] is not None
                                     else f"{k} none (unfinished trials)"
                                     if v.get("unfinished") else f"{k} none (failed trials)"
                                     for k, v in chosen_rates.items()))
    if notes:  # how a --dataset folder:PATH was read (channels, resizing)
        info["data notes"] = "; ".join(note.strip() for note in notes)
    if user is not None:
        info["model"] = user.model_info
        info["training"] = user.training_info
        info["data"] = "; ".join(line.strip() for line in data_summary.splitlines())
    metric = _metrics_of(settings, user)[0]
    finished = int(counts.get("ok", 0)) if len(ran) else 0
    mark = None
    if signal_name:
        mark = f"INTERRUPTED ({signal_name}): {finished} of {ray_run['planned']} trials finished"
    shown = _settings_dict(settings, ray_run["gpus_per_trial"], blocks, user)
    written = write_report(trials, out, shown, info, metric=metric, mode=_mode_of(user),
                           coverage=_coverage(settings), interrupted=mark, chance=chance)
    ranking = ray_run["ranking"]
    if all_rows is not None:
        written["paths"]["all trials"] = os.path.join(out, "results_all.csv")
        pd.DataFrame(all_rows).to_csv(written["paths"]["all trials"], index=False)
    if ranking is not None:
        from keras_blockreuse.sweep.predict import predicted_vs_measured

        val = _metrics_of(settings)[1]
        ok = trials[trials["status"] == "ok"] if "status" in trials else trials.iloc[:0]
        measured = ok.groupby("policy")[val].mean().to_dict() if val in ok else {}
        text, predicted_rows = predicted_vs_measured(ranking.predictions, measured, val,
                                                    ranking.unranked)
        with open(os.path.join(out, "report.md"), "a") as f:
            f.write("\n" + text)
        written["paths"]["predicted"] = os.path.join(out, "predicted.csv")
        pd.DataFrame(predicted_rows).to_csv(written["paths"]["predicted"], index=False)
    others = [name for name in written["paths"] if name != "report.md"]
    print_fn(f"Report: {written['paths']['report.md']} (with {', '.join(others)})")
    print_fn(f"{len(ran)} trials in {wall:.0f} s ({said or 'none ran'}).")
    for line in written["best"].splitlines():
        print_fn(line)
    if signal_name:
        print_fn(f"Continue with: {resume_command(out, settings.address, api=settings.api)}")
    return SweepResult(out=out, trials=trials, summary=written["summary"], best=written["best"],
                       paths=written["paths"], blocks=list(blocks), fixed=dict(fixed),
                       metric=metric, verdict=written["verdict"], interrupted=signal_name)


def _coverage(settings: SweepSettings) -> str:
    """What the intervals' variation covers, in words."""
    if settings.task == DETECTION:
        return ("training seeds, each with its own training scenes (initialisation, data order, "
                "scenes); the validation and test scenes and the source model are fixed")
    if settings.data_seeds:
        return ("training seeds and target splits: each seed re-draws the target's "
                "train/validation/test images (--data-seeds); the source model is fixed")
    if settings.api or settings.source is not None:  # the user's own data and source
        return ("training seeds only (initialisation of re-initialised blocks, data order, "
                "dropout); the target split (as given, or held out of train with seed "
                f"{settings.data_seed}) and the source model are fixed")
    return (f"training seeds only (initialisation of re-initialised blocks, data order, "
            f"dropout); the target split and the source model are fixed by --data-seed "
            f"{settings.data_seed} (pass --data-seeds to re-draw the split per seed)")


def _quiet(verbose: bool):
    from keras_blockreuse.sweep.console import quiet

    return quiet(verbose)


def _trained_parameters(settings: SweepSettings, data, configurations,
                        user: UserInputs | None = None) -> dict[str, int]:
    """Trained parameters of each configuration: the target model's trainable parameters
    less those of its frozen blocks (the cost the verdict's recommendation minimises)."""
    import keras
    import numpy as np

    try:
        if user is not None:
            model = user.recipe.target_model()
        elif settings.task == DETECTION:
            from keras_blockreuse.detection.model import build_detector
            from keras_blockreuse.detection.sweep import DETECTION_TRIAL_DEFAULTS

            model = build_detector(10, width=DETECTION_TRIAL_DEFAULTS["width"])
        else:
            from keras_blockreuse.sweep.zoo import build_model

            model = build_model(settings.model, data.input_shape, data.target_classes)
        count = lambda variables: int(sum(np.prod(v.shape, dtype=np.int64)  # noqa: E731
                                          for v in variables if v.trainable))
        total = count(model.trainable_variables)
        per_block = {name: count(block.variables) for name, block in model.blocks.items()}
    except Exception:  # the counts are a convenience: without them the best is recommended
        return {}
    finally:
        keras.backend.clear_session(free_memory=False)
    return {c.key: total - sum(per_block.get(b, 0) for b in c.frozen) for c in configurations}


class _Runner:
    """Runs one Tune experiment per call and turns its results into report rows."""

    def __init__(self, settings: SweepSettings, data, source: bytes, gpus: float, print_fn,
                 user: UserInputs | None = None, interrupts: Interrupts | None = None,
                 costs: dict | None = None):
        self.settings = settings
        self.user = user
        self.data = data
        self.source = source
        self.gpus = gpus
        self.print_fn = print_fn
        self.labels: dict[str, Configuration] = {}
        self.storage = settings.storage or os.path.join(settings.out, "tune")
        self.interrupts = interrupts or Interrupts()
        self.costs = costs or {}
        self.planned = 0
        self.statuses: dict[str, str] = {}
        self.completed: set[str] = set()
        self.seen_running: set[str] = set()

    def trainable(self):
        from ray import tune

        train_trial = _functions(self.settings)["trial"]
        extra = {}
        if self.user is not None:  # the user's model: its recipe, by value, once
            extra["recipe"] = self.user.packed
        if self.settings.data_seeds:  # the target split re-drawn for each trial's seed
            trainable = tune.with_parameters(split_per_seed_trial, data=self.data,
                                             source=self.source, trial=train_trial, **extra)
        else:
            trainable = tune.with_parameters(train_trial, data=self.data, source=self.source,
                                             **extra)
        return tune.with_resources(trainable, {"cpu": self.settings.cpus_per_trial,
                                               "gpu": self.gpus})

    def run(self, name: str, configurations: Sequence[Configuration],
            epochs: int | None = None) -> list[dict]:
        from ray import tune

        s = self.settings
        for c in configurations:
            self.labels.setdefault(c.key, c)
        if self.interrupts.signal:  # interrupted before this experiment began
            return []
        path = os.path.join(self.storage, name)
        rates = len(s.lrs) if s.lrs and len(s.lrs) > 1 else 1  # learning rates swept (--lrs)
        if s.resume and tune.Tuner.can_restore(path):
            self.print_fn(f"Resuming experiment {path}: finished trials are kept.")
            tuner = tune.Tuner.restore(path, trainable=self.trainable(), resume_unfinished=True,
                                       resume_errored=True)
        else:
            keys = [c.key for c in configurations]
            total = len(keys) * s.seeds * rates
            each_rate = f" x {rates} learning rates" if rates > 1 else ""
            self.print_fn(f"Experiment {name}: {len(keys)} configurations x {s.seeds} seeds"
                          f"{each_rate} = {total} trials.")
            param_space = {
                "policy": tune.grid_search(keys),
                "seed": tune.grid_search(list(range(s.seeds))),
                "model": s.model, "epochs": epochs or s.epochs, "batch_size": s.batch_size,
                "lr": tune.grid_search(s.lrs) if rates > 1 else
                (s.lrs[0] if s.lrs else s.lr),
                "cpus": max(1, int(s.cpus_per_trial)),
                "training_policy": s.training_policy, "policy_epochs": s.policy_epochs,
                "ft_factor": s.ft_factor, "block_lr": s.block_lr or "",
            }
            if s.task == DETECTION:
                param_space.update(_detection_trial_settings(s))
            tuner = tune.Tuner(
                self.trainable(),
                param_space=param_space,
                tune_config=tune.TuneConfig(metric=_metrics_of(s, self.user)[1],
                                            mode=_mode_of(self.user),
                                            scheduler=self.scheduler(configurations),
                                            reuse_actors=self.reuse_actors(),
                                            trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=name, storage_path=self.storage, verbose=2 if s.verbose else 0,
                    callbacks=self.callbacks(),
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
            )
        grid = self.fit(tuner, len(configurations) * s.seeds * rates)
        if grid.num_errors:
            self.print_fn(f"{grid.num_errors} trial(s) failed; the sweep went on. See the report.")
        # A trial Tune created but never started (an interrupted sweep) comes back with no
        # configuration and no result: it is listed once, by `_never_started`.
        rows = [row for row in (self._row(result, name) for result in grid)
                if row["policy"] or row["error"] or row["status"] != "unfinished"]
        return rows + self._never_started(rows, configurations, name)

    def _never_started(self, rows: list[dict], configurations: Sequence[Configuration],
                       experiment: str) -> list[dict]:
        """`unfinished` rows for the planned trials Tune never created (a sweep interrupted
        before it reached them), so that the report lists every planned trial."""
        s = self.settings
        rates = s.lrs if s.lrs and len(s.lrs) > 1 else [None]
        seen = {(r["policy"], r["seed"], r.get("lr") if rates != [None] else None)
                for r in rows}
        out = []
        for c in configurations:
            for seed in range(s.seeds):
                for rate in rates:
                    if (c.key, seed, rate) in seen:
                        continue
                    row = {"trial_id": "", "policy": c.key, "label": c.label, "code": c.code,
                           "trained_params": self.costs.get(c.key), "seed": seed,
                           "status": "unfinished", "epochs_done": 0,
                           "experiment": experiment, "error": ""}
                    for column in _metric_columns(s, self.user):
                        row[column] = math.nan
                    if s.lrs:
                        row["lr"] = rate if rate is not None else s.lrs[0]
                    for column in ("node_ip", "node_id", "hostname", "pid", "gpu_ids"):
                        row[column] = ""
                    row.update({"_finished": None, "_seconds": None})
                    out.append(row)
        return out

    # ---- run control (issue 13) ----------------------------------------------------------
    def scheduler(self, configurations: Sequence[Configuration]):
        """FIFO (every trial runs its full budget), a freed reused worker preferring trials
        of the trainable sets it has kept (`AffinityFIFO`: fewer traces, same trials); or
        ASHA that never stops the baselines (scratch and all tuned)."""
        s = self.settings
        if s.scheduler != "asha":
            if not self.reuse_actors():
                return None
            from keras_blockreuse.sweep.affinity import AffinityFIFO

            return AffinityFIFO({c.key: tuple(c.frozen) for c in configurations})
        from keras_blockreuse.sweep.asha import BaselineASHA

        baselines = {SCRATCH} | {c.key for c in configurations
                                 if c.policy and set(c.policy.values()) == {"tuned"}}
        return BaselineASHA(sorted(baselines), time_attr="training_iteration", max_t=s.epochs,
                            grace_period=max(1, s.epochs // 8), reduction_factor=3)

    def reuse_actors(self) -> bool:
        """Reuse worker processes across trials, unless ASHA may stop a trial mid-run: Tune
        cannot reuse the worker of a stopped function trainable, and the next trial on it
        fails ("Trainable runner reuse requires reset_config()")."""
        return self.settings.reuse_actors and self.settings.scheduler != "asha"

    def callbacks(self) -> list:
        from keras_blockreuse.sweep.console import TuneEvents

        return [TuneEvents(), *tune_loggers()]

    def fit(self, tuner, total: int):
        """`tuner.fit()` under the live view; a signal stops the trials cleanly."""
        from keras_blockreuse.sweep.console import LiveView

        self.planned += total
        labels = {k: c.label for k, c in self.labels.items()}
        metric, val_metric = _metrics_of(self.settings, self.user)
        view = LiveView(total, val_metric, labels, higher_is_better=_mode_of(self.user) == "max",
                        print_fn=self.print_fn, final_metric=metric,
                        terminal=None if not self.settings.verbose else False)
        with self.interrupts.tuning(), view, tune_environment(self.settings.scheduler != "asha"):
            grid = tuner.fit()
        self.statuses.update(view.statuses)
        self.completed |= view.completed
        self.seen_running |= view.seen_running
        return grid

    def _status(self, result, trial_id: str, done: bool) -> str:
        """ok (full budget), error, stopped (by ASHA) or unfinished (the sweep ended first)."""
        if result.error:
            return "error"
        if done:
            return "ok"
        if trial_id in self.completed:  # completed without its final result: stopped early
            return "stopped"
        # A trial restored as ended by an earlier run (only the scheduler ends one early; an
        # interrupt leaves it to be run again), or one the sweep's end caught unfinished.
        ended = self.statuses.get(trial_id) == "TERMINATED" and trial_id not in self.seen_running
        return "stopped" if ended and self.settings.scheduler == "asha" else "unfinished"

    def _row(self, result, experiment: str) -> dict:
        metrics = dict(result.metrics or {})
        config = result.config or _read_params(result.path)
        key = config.get("policy", "")
        c = self.labels.get(key)
        done = metrics.get(_metrics_of(self.settings, self.user)[0])
        trial_id = metrics.get("trial_id") or os.path.basename(result.path or "")
        row = {
            "trial_id": trial_id,
            "policy": key,
            "label": c.label if c else key,
            "code": c.code if c else "",
            "trained_params": self.costs.get(key),
            "seed": config.get("seed"),
            "status": self._status(result, trial_id, done is not None),
            "epochs_done": metrics.get("epoch", 0),
            "experiment": experiment,
            "error": _error_line(result.error) if result.error else "",
        }
        for name in _metric_columns(self.settings, self.user):
            row[name] = metrics.get(name, math.nan)
        # (and its losses: weights gone NaN still score an accuracy, argmax of NaN being 0)
        ends = [*_metrics_of(self.settings, self.user),
                *(name for name in LOSSES if name in metrics)]
        why = diverged({name: row.get(name, metrics.get(name)) for name in ends})
        if row["status"] == "ok" and why:  # a trial that diverged reports NaN or inf: failed
            row["status"], row["error"] = "error", why
        if self.settings.lrs:
            row["lr"] = config.get("lr")
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
                     seed=settings.data_seed, image_size=settings.image_size)


def _functions(settings: SweepSettings) -> dict:
    """The task's source and trial functions (same signatures for every task)."""
    if settings.task == DETECTION:
        from keras_blockreuse.detection.sweep import train_detection_source, train_detection_trial

        return {"source": train_detection_source, "trial": train_detection_trial}
    from keras_blockreuse.sweep.trial import train_source, train_trial

    return {"source": train_source, "trial": train_trial}


LOSSES = ("test_loss", "val_loss")
"""The final losses a trial reports (where it does): NaN or inf there is a diverged training,
whatever the metric scored."""


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
            runner.costs.update(_trained_parameters(runner.settings, runner.data, missing,
                                                    runner.user))
            rows = rows + runner.run(f"greedy_{round_ + 1}", missing)
            evaluated |= {c.key for c in missing}
            scores = _val_means(rows, val_metric)
        scored = [c for c in candidates if not math.isnan(scores.get(c.key, math.nan))]
        if not scored:
            break
        top = max(sign * scores[c.key] for c in scored)  # ties (float32 rounding): cheapest
        best = min((c for c in scored if rounding_equal(sign * scores[c.key], top)),
                   key=lambda c: runner.costs.get(c.key, math.inf))
        now = scores.get(current.key, math.nan)  # a gain within float32 rounding is none
        if not math.isnan(now) and (sign * (scores[best.key] - now) <= 0
                                    or rounding_equal(scores[best.key], now)):
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
        out = settings.out or _latest_sweep(settings.api)
        saved_path = os.path.join(out, SETTINGS_FILE)
        if not os.path.isfile(saved_path):
            raise SweepError(f"{'resume=True' if settings.api else '--resume'} needs the "
                             f"folder of an earlier sweep; {out!r} has no {SETTINGS_FILE}.")
        with open(saved_path) as f:
            saved = json.load(f)
        fields = {f.name for f in dataclasses.fields(SweepSettings)}
        saved = SweepSettings(**{k: v for k, v in saved.items() if k in fields})
        if settings.api:  # which_blocks is given every setting again: they must be the same
            _refuse_other_settings(saved, settings, out, _RESUMED_AS_STARTED + _TRAINING_SETTINGS)
        elif settings.explicit is not None:  # the command line: options given with --resume
            defaults = SweepSettings()
            given = set(settings.explicit) | {
                name for name in _RESUMED_AS_STARTED + _TRAINING_SETTINGS
                if getattr(settings, name) is not None
                and getattr(settings, name) != getattr(defaults, name)}
            _refuse_other_settings(saved, settings, out, sorted(given))
        saved.resume = True
        saved.out = os.path.abspath(out)
        saved.address = settings.address or saved.address
        saved.verbose = settings.verbose
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
        raise SweepError(f"{settings.out} already holds a sweep: pass "
                         f"{'resume=True' if settings.api else '--resume'} to continue it, or "
                         f"choose another {'out=' if settings.api else '--out'}.")
    return settings


ASHA_CAVEAT = ("ASHA (asynchronous successive halving, Li et al. 2020) decides from results "
               "in the order they arrive: which trials it stops, and so the verdict, can "
               "differ between runs of the same sweep and after --resume; --scheduler fifo "
               "or halving give the same results every time")
"""The report's note on an ASHA sweep (a fresh-user check saw a resumed sweep let two trials
finish that the uninterrupted one had stopped, and name another best configuration)."""

_RESUMED_AS_STARTED = ("model", "data", "loss", "strategy", "blocks", "seeds", "epochs",
                       "batch_size", "lr", "data_seed", "scheduler")
_TRAINING_SETTINGS = ("lrs", "training_policy", "policy_epochs", "ft_factor", "block_lr",
                      "data_seeds")
"""Also compared on resume (found by a fresh-user test: `--resume --lrs 1e-2` kept the old
rate's results without a word). On the command line, an option left at its default is not
compared: the saved setting stands."""


def _refuse_other_settings(saved: SweepSettings, given: SweepSettings, out: str,
                           names: Sequence[str]) -> None:
    """Refuses a resume with settings other than the sweep was started with: its trials and
    report would mix them, or keep the old ones without a word."""
    differ = [f"{given.option_name(name)}{' ' if not given.api else ''}"
              f"{getattr(given, name)!r} (started with {getattr(saved, name)!r})"
              for name in names if getattr(given, name) != getattr(saved, name)]
    if differ:
        resume, where = ("resume=True", "out=") if given.api else ("--resume", "--out")
        raise SweepError(f"{resume} continues the sweep in {out} as it was started, but "
                         f"these settings differ: {'; '.join(differ)}. Pass the settings it "
                         f"was started with, or start a new sweep in another folder ({where}).")


def _refuse_other_training(saved: SweepSettings, now: dict) -> None:
    """Refuses a resume whose model or training differ from the sweep's start (another
    optimizer, loss or metric, a builder that now builds other layers): its finished trials
    and the rest would be compared as if trained alike."""
    differ = [f"{what}: {now.get(what)} (started with {was})"
              for what, was in saved.trained_as.items() if now.get(what) != was]
    if differ:
        resume, where = ("resume=True", "out=") if saved.api else ("--resume", "--out")
        raise SweepError(f"{resume} continues the sweep in {saved.out} with the model and "
                         f"training it was started with, but these differ: "
                         f"{'; '.join(differ)}. Its finished trials would be compared with "
                         f"trials trained otherwise. Pass what it was started with, or start "
                         f"a new sweep in another folder ({where}).")


def _latest_sweep(api: bool = False) -> str:
    root = os.path.join("runs", "which_blocks")
    candidates = sorted(d for d in os.listdir(root) if os.path.isfile(
        os.path.join(root, d, SETTINGS_FILE))) if os.path.isdir(root) else []
    if not candidates:
        resume, out = ("resume=True", "out=FOLDER") if api else ("--resume", "--out FOLDER")
        raise SweepError(f"{resume} without {out.split('=')[0].split()[0]} continues the latest "
                         f"sweep under {root}, and there is none; pass {out}.")
    return os.path.join(root, candidates[-1])


def _majority_rate(data, metric: str) -> tuple[float, int] | None:
    """`(rate, images)` of the validation set's most frequent class, for an accuracy over
    class labels (integers, or one-hot rows); None otherwise (a regression, detection, a
    top-k accuracy, which guessing scores higher)."""
    import numpy as np

    name = metric.removeprefix("test_")
    labels = getattr(data, "y_val", None)
    if ("acc" not in name or "top" in name or not isinstance(labels, np.ndarray)
            or not len(labels)
            or labels.dtype.kind not in "biuf"):
        return None
    if labels.ndim == 2 and labels.shape[1] > 1:
        if not np.allclose(labels.sum(axis=1), 1):  # (several labels a row: no single class)
            return None
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.ndim != 1 or not np.all(np.equal(np.mod(labels, 1), 0)) or labels.min() < 0:
        return None
    counts = np.bincount(labels.astype(np.int64))
    return float(counts.max() / len(labels)), int(len(labels))


def _model_blocks(settings: SweepSettings, data) -> list[str]:
    """The blocks of the built-in task's model, in the order it computes them."""
    if settings.task == DETECTION:
        from keras_blockreuse.detection.sweep import DETECTION_BLOCKS

        return list(DETECTION_BLOCKS)
    return list(_zoo_blocks(settings.model, tuple(data.input_shape), data.target_classes))


@functools.lru_cache(maxsize=8)
def _zoo_blocks(model: str, input_shape: tuple, classes: int) -> tuple[str, ...]:
    import keras

    from keras_blockreuse.sweep.zoo import build_model

    names = tuple(build_model(model, input_shape, classes).blocks)
    keras.backend.clear_session(free_memory=False)
    return names


def _prefix_caveat(order: Sequence[str], blocks: Sequence[str], fixed: Mapping[str, str],
                   labels: Iterable[str]) -> str:
    """What a *prefix n* configuration is where blocks fixed to reinit come before swept ones
    (a first conv that does not fit the source): the first n swept blocks transferred above
    re-initialised ones, not the first n blocks of the network (Yosinski et al. 2014's AnB).
    `""` where no such block precedes a swept one, or no prefix configuration (`labels`) ran."""
    if not any(str(label).startswith("prefix ") for label in labels):
        return ""
    places = [order.index(b) for b in blocks if b in order]
    ahead = [b for b in order[:max(places, default=0)] if b in fixed]
    if not ahead:
        return ""
    first = order.index(ahead[0])
    beyond = next(i for i, b in enumerate(blocks) if b in order and order.index(b) > first)
    if beyond:  # the first prefixes end before it: true prefixes
        return (f"{', '.join(ahead)} {'sits' if len(ahead) == 1 else 'sit'} among the swept "
                f"blocks and {'is' if len(ahead) == 1 else 'are'} re-initialised in every "
                f"configuration: from *prefix {beyond + 1}* on, the transferred blocks "
                f"include {blocks[beyond]}, above re-initialised {ahead[0]}, so those are not "
                "prefixes of the network as in Yosinski et al. 2014's AnB.")
    return (f"{', '.join(ahead)} {'comes' if len(ahead) == 1 else 'come'} before swept blocks "
            f"and {'is' if len(ahead) == 1 else 'are'} re-initialised in every configuration: "
            f"*prefix n* transfers the first n swept blocks ({', '.join(blocks)}), above "
            f"re-initialised {', '.join(ahead)}, so it is not a prefix of the network as in "
            "Yosinski et al. 2014's AnB.")


def _swept_blocks(settings: SweepSettings, data) -> tuple[list[str], dict[str, str]]:
    """The blocks whose policy varies, and the others with their fixed policy (`reinit`)."""
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
    names = _model_blocks(settings, data)
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


def _halving(runner: _Runner, settings: SweepSettings, configurations, blocks, user=None):
    """--scheduler halving: successive halving over the configurations (seeds together),
    scratch and all tuned at the full budget. Returns the full-budget rows, every row, and a
    line on the cost."""
    from keras_blockreuse.sweep.halving import successive_halving

    by_key = {c.key: c for c in configurations}
    everything = space.configuration(dict.fromkeys(blocks, "tuned"), blocks).key
    baselines = [k for k in (space.SCRATCH, everything) if k in by_key]
    candidates = [k for k in by_key if k not in baselines]
    result = successive_halving(
        candidates, baselines, settings.seeds, settings.epochs,
        run_rung=lambda rung, keys, epochs: runner.run(f"rung_{rung}",
                                                       [by_key[k] for k in keys], epochs),
        eta=settings.eta, metric=_metrics_of(settings, user)[1], mode=_mode_of(user),
        print_fn=runner.print_fn)
    spent = sum(r.get("_seconds") or 0.0 for r in result.rows)
    final = sum(r.get("_seconds") or 0.0 for r in result.final)
    budget = (f"successive halving (eta {settings.eta}), rungs of {result.epochs} epochs: "
              f"{len(result.rows)} trials, {spent:.0f} trial-seconds in all; the report uses "
              f"the {len(result.final)} full-budget trials ({final:.0f} s)")
    return result.final, result.rows, budget


def _static_configurations(settings, blocks, extra) -> list[Configuration]:
    if settings.strategy == PREDICTED:  # chosen once the source model exists
        return list({c.key: c for c in extra}.values())
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
        "format": 2,  # 2: sources trained with the stateless per-epoch shuffle (`trial.fit`)
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
    # TensorFlow's C++ start-up lines come before any log level applies: unless --verbose,
    # the workers' output stays in Ray's log files (OUT/ray/session_*/logs), not the console.
    runtime_env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "1" if settings.verbose else "3",
                                "PYTHONWARNINGS": "ignore"}}
    quiet = {"log_to_driver": settings.verbose,
             "logging_level": logging.INFO if settings.verbose else logging.ERROR}
    if settings.address:
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=settings.address, runtime_env=runtime_env, **quiet)
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
             runtime_env=runtime_env, configure_logging=settings.verbose, **quiet)
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


USER_DATA_UNUSED = ("dataset", "task", "shift", "shots", "train_images", "data_seeds")
"""Settings of the built-in tasks, left out of the report of a sweep on the user's own data."""
SOURCE_GIVEN_UNUSED = ("source_epochs", "cache")
"""Settings of the trained source, left out of the report of a sweep given its source."""


def _settings_dict(settings: SweepSettings, gpus_per_trial: float, blocks,
                   user: UserInputs | None = None) -> dict:
    """The settings the report shows: those the sweep used. On the user's own data (--data,
    which_blocks) `data` is its description (where it came from, how it was read and split)
    and the built-in task's settings are left out; with --source, the source training's."""
    d = dataclasses.asdict(settings)
    d.pop("explicit", None)
    d["shift"] = settings.resolved_shift()
    d["train_images"] = settings.resolved_train_images()
    description = getattr(getattr(user, "data", None), "description", None)
    if isinstance(description, str):  # the user's own data (a built-in task has none)
        for key in USER_DATA_UNUSED:
            d.pop(key, None)
        lines = [line.strip() for line in description.splitlines() if line.strip()]
        if lines and lines[0].startswith("data: "):
            lines[0] = lines[0][len("data: "):]
        d["data"] = "; ".join(lines)
    if settings.source is not None:
        for key in SOURCE_GIVEN_UNUSED:
            d.pop(key, None)
    if settings.task == DETECTION:
        d["shots"] = None  # the detection task has no shots
        trial = _detection_trial_settings(settings)
        d["detector_batch_size"] = trial.get("batch_size", settings.batch_size)
        d["detector_lr"] = trial.get("lr", settings.lr)
    d["gpus_per_trial"] = gpus_per_trial
    # The metric that ranked the policies, whoever chose it (--metric, the first of the
    # recipe's metrics=, or the task's own), not the option's None.
    if getattr(user, "metric", ""):
        d["metric"] = f"{user.metric} ({user.mode})"
    elif settings.metric is None:
        d["metric"] = f"{_metrics_of(settings)[0].removeprefix('test_')} (max)"
    if settings.blocks:
        d["blocks"] = ",".join(settings.blocks)
    else:  # the blocks the sweep chose, and why
        why = "--smoke: the first transferable" if settings.smoke else "all transferable"
        d["blocks"] = f"{','.join(blocks)} ({why})"
    return d


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0; 2 for bad values or a cluster that
    cannot run the sweep (nothing started); 1 when no trial finished its full budget; 130 / 143
    after SIGINT / SIGTERM (the report is marked and the resume command printed)."""
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        result = run_sweep(settings, print_fn=lambda line: print(line, flush=True))
    except (SweepError, DataError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        name = str(interrupt) if str(interrupt) in ("SIGINT", "SIGTERM") else "SIGINT"
        out = os.path.abspath(args.out) if args.out else None
        if out and os.path.isfile(os.path.join(out, SETTINGS_FILE)):
            print(f"{PROG}: interrupted ({name}); continue with: "
                  f"{resume_command(out, args.address)}", file=sys.stderr)
        else:
            print(f"{PROG}: interrupted ({name}) before any trial started; nothing to resume.",
                  file=sys.stderr)
        return {"SIGINT": 130, "SIGTERM": 143}[name]
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        out = os.path.abspath(args.out) if args.out else None
        resume = (f" Free some space there, then continue with: "
                  f"{resume_command(out, args.address)}"
                  if out and os.path.isfile(os.path.join(out, SETTINGS_FILE)) else "")
        print(f"{PROG}: error: the disk filled during the sweep ({error}); the trials "
              f"finished so far are kept in {out or 'the output folder'}.{resume}",
              file=sys.stderr)
        return 1
    if result.exit_code == 1:
        print(f"{PROG}: no trial finished its full budget; see {result.paths['report.md']}",
              file=sys.stderr)
    return result.exit_code
