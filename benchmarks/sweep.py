"""Sweep overhead: where a trial's time goes, trials per minute, and the cost of starting Ray.

On the default digits sweep settings (`SweepSettings()`: digits, noise shift, 10 shots,
`seed_cnn`, 40 epochs, batch 32), with a policy that transfers both convolutional blocks:

- a trial's phases, in a fresh process as Ray runs it: process start and imports, receiving
  the task's data and the source block file (a pickle round trip, as the object store does),
  model build, `load_blocks`, freezing, compile, and `fit` with the per-epoch evaluations —
  and the share of the trial's wall time spent outside `fit`/`evaluate`;
- trials per minute under Ray Tune with 1 concurrent trial (2 CPUs each) and with 2 (1 CPU
  each) on this machine, with the sweep's own trainable (`keras_blockreuse.sweep.trial`), and
  with 2 and Tune's `reuse_actors=True` (one process runs several trials, importing once);
- the cost of starting (and stopping) a local Ray instance;
- the default sweep itself (`run_sweep(SweepSettings())`, 39 trials) under Ray Tune on this
  machine's CPUs, every trial's phases timed inside its worker process (`timed_trial`):
  the share of all trials' time outside `fit`/`evaluate`, by whether a trial traced its
  steps or took a kept model, and per worker (trials, traces, trainable sets met).

The source model is trained for 2 epochs only: its accuracy does not change the timings.

Example:

```
python benchmarks/sweep.py --trials 4
python -m benchmarks.sweep --default-sweep-only --json times.json   # the default sweep only
```
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

POLICY = "block_1=tuned,block_2=tuned"
"""The policy timed: both convolutional blocks transferred and fine-tuned (prefix 2, tuned)."""
OTHER_POLICY = "block_1=frozen,block_2=frozen"
"""A policy with another trainable set (prefix 2, frozen): in a reused process its first trial
cannot take the kept model of `POLICY` and traces its own steps (a warm miss)."""
SOURCE_EPOCHS = 2


def _settings():
    from keras_blockreuse.sweep.run import SweepSettings

    return SweepSettings()


def _task(settings):
    from keras_blockreuse.sweep.data import make_task

    return make_task(settings.dataset, settings.task, settings.resolved_shift(), settings.shots,
                     seed=settings.data_seed)


def prepare(workdir: str) -> str:
    """Builds the task and trains the source once; returns the path of a pickle of both."""
    from keras_blockreuse.sweep.trial import train_source

    settings = _settings()
    data = _task(settings)
    source, _ = train_source(data, settings.model, epochs=SOURCE_EPOCHS,
                             batch_size=settings.batch_size, seed=0, cpus=None)
    path = os.path.join(workdir, "task.pkl")
    with open(path, "wb") as f:
        pickle.dump((data, source), f)
    return path


# --- one trial's phases, in a fresh process -----------------------------------------------


def trial_phases(task_path: str, epochs: int | None = None) -> dict:
    """Runs one trial in a fresh Python process and returns its phases in seconds."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "benchmarks.sweep", "--child-trial", task_path,
               str(time.time())]
    if epochs:
        command.append(str(epochs))
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=900)
    wall = time.perf_counter() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            phases = json.loads(line)
            phases["process exit"] = max(0.0, wall - sum(phases.values()))
            return phases
    raise RuntimeError(f"trial child failed: {(proc.stderr or proc.stdout)[-2000:]}")


def _timed(phases: dict[str, float], name: str, fn):
    """`fn`, adding the seconds of every call to `phases[name]`."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def _time_trial_phases(phases: dict[str, float], zoo, cls) -> None:
    """Times a trial's model build, `load_blocks`, freezing and compile into `phases`."""
    zoo.build_model = _timed(phases, "model build", zoo.build_model)
    cls.load_blocks = _timed(phases, "load_blocks", cls.load_blocks)
    cls.freeze_blocks = _timed(phases, "freeze", cls.freeze_blocks)
    cls.compile = _timed(phases, "compile", cls.compile)


def _child_trial(task_path: str, spawned: str, epochs: str | None = None) -> None:
    phases: dict[str, float] = {}
    import keras  # noqa: F401  (what a trial process imports first)
    from ray import tune

    import keras_blockreuse.model as model_module
    import keras_blockreuse.sweep.trial as trial_module
    import keras_blockreuse.sweep.zoo as zoo

    phases["process start + imports"] = time.time() - float(spawned)
    with open(task_path, "rb") as f:
        blob = f.read()
    start = time.perf_counter()
    data, source = pickle.loads(blob)
    phases["data + source file in (unpickle)"] = time.perf_counter() - start

    _time_trial_phases(phases, zoo, model_module.BlockModel)
    trial_module.fit = _timed(phases, "fit + per-epoch evaluate", trial_module.fit)
    tune.report = lambda metrics: None
    config = {"policy": POLICY, "seed": 0}
    if epochs:
        config["epochs"] = int(epochs)
    start = time.perf_counter()
    trial_module.train_trial(config, data=data, source=source)
    total = time.perf_counter() - start
    phases["other (inside the trial)"] = total - sum(
        v for k, v in phases.items() if k not in ("process start + imports", "data + source file in (unpickle)")
    )
    print(json.dumps(phases))


# --- several trials in one process, as Ray Tune's reuse_actors runs them ------------------


def reused_trials(task_path: str, trials: int, epochs: int | None = None) -> list[dict]:
    """Runs `trials` trials one after another in one fresh process (as a reused Ray actor
    does) and returns each trial's phases in seconds."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "benchmarks.sweep", "--child-reused", task_path, str(trials)]
    if epochs:
        command.append(str(epochs))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=1800)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("["):
            return json.loads(line)
    raise RuntimeError(f"reused-trial child failed: {(proc.stderr or proc.stdout)[-2000:]}")


def reused_sequence(trials: int) -> list[tuple[str, int]]:
    """The (policy, seed) of each trial run in one process: `POLICY` seed 0 (the process's
    first trial), `OTHER_POLICY` seed 0 (another trainable set: traces its own steps), then
    `POLICY` seeds 1, 2, ... (each takes the kept model: no tracing)."""
    sequence = [(POLICY, 0), (OTHER_POLICY, 0)]
    return (sequence + [(POLICY, seed) for seed in range(1, max(1, trials - 1))])[:max(1, trials)]


class Probe:
    """Times a trial's phases in this process (installed once, by patching the modules a
    trial calls): model build, `load_blocks`, freezing, compile, re-initialising a kept model,
    every epoch of `fit`, every evaluation, and (`reports`) every `tune.report`."""

    def __init__(self, reports: bool = True):
        import keras
        from ray import tune

        import keras_blockreuse.model as model_module
        import keras_blockreuse.sweep.reuse as reuse
        import keras_blockreuse.sweep.trial as trial_module
        import keras_blockreuse.sweep.zoo as zoo

        self.phases: dict[str, float] = {}
        self.epoch_times: list[float] = []
        self.eval_times: list[float] = []
        self.report_times: list[float] = []
        self.fit_times: list[float] = []
        self.reuse = reuse
        probe = self

        class EpochTimer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):  # before the trial's own evaluation
                probe.epoch_times.append(time.perf_counter() - self.start)

        fit, evaluate, report = trial_module.fit, trial_module.evaluate, tune.report

        def timed_fit(*args, callbacks=None, **kwargs):
            start = time.perf_counter()
            try:
                return fit(*args, callbacks=[EpochTimer(), *(callbacks or [])], **kwargs)
            finally:
                probe.fit_times.append(time.perf_counter() - start)

        def timed_calls(times, fn):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    times.append(time.perf_counter() - start)

            return wrapper

        _time_trial_phases(self.phases, zoo, model_module.BlockModel)
        trial_module.restart = _timed(self.phases, "re-initialise the kept model",
                                      trial_module.restart)
        trial_module.fit = timed_fit
        trial_module.evaluate = timed_calls(self.eval_times, evaluate)
        if reports:
            tune.report = timed_calls(self.report_times, report)

    def clear(self) -> None:
        self.phases.clear()
        self.epoch_times.clear()
        self.eval_times.clear()
        self.report_times.clear()
        self.fit_times.clear()

    def row(self, total: float) -> dict:
        """The last trial's phases; training is split into its steady cost (the median epoch
        times the epochs, the median evaluation times the calls) and the excess over it
        (tracing the train and predict steps, first-epoch set-up)."""
        steady_epoch = statistics.median(self.epoch_times)
        steady_eval = statistics.median(self.eval_times)
        row = {"re-initialise the kept model": 0.0, **self.phases}
        row["train steps (median epoch x epochs)"] = steady_epoch * len(self.epoch_times)
        row["evaluate (median call x calls)"] = steady_eval * len(self.eval_times)
        row["first epoch's excess (tracing the train step)"] = self.epoch_times[0] - steady_epoch
        row["first evaluation's excess (tracing predict)"] = self.eval_times[0] - steady_eval
        row["later epochs' and evaluations' excess over the median (contention)"] = (
            sum(self.epoch_times[1:]) - steady_epoch * (len(self.epoch_times) - 1)
            + sum(self.eval_times[1:]) - steady_eval * (len(self.eval_times) - 1))
        if self.report_times:
            row[REPORT] = sum(self.report_times)
        row["other (inside the trial)"] = total - sum(row.values())
        row["total"] = total
        return row


REPORT = "tune.report (until Tune takes the result)"


def _child_reused(task_path: str, trials: str, epochs: str | None = None) -> None:
    """Times each trial's phases (`Probe`), trials run one after another in this process."""
    from ray import tune

    import keras_blockreuse.sweep.trial as trial_module

    with open(task_path, "rb") as f:
        data, source = pickle.load(f)
    tune.report = lambda metrics: None
    probe = Probe(reports=False)  # no Tune here: reports cost nothing
    out = []
    for policy, seed in reused_sequence(int(trials)):
        probe.clear()
        hits = probe.reuse.MODELS.hits
        config = {"policy": policy, "seed": seed}
        if epochs:
            config["epochs"] = int(epochs)
        start = time.perf_counter()
        trial_module.train_trial(config, data=data, source=source)
        row = probe.row(time.perf_counter() - start)
        row["reused"] = probe.reuse.MODELS.hits > hits
        row["policy"] = policy
        row["rss MB"] = _rss_mb()
        out.append(row)
    print(json.dumps(out))


def _rss_mb() -> float:
    """This process's resident memory (Linux), to watch it across reused trials."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# --- Ray ----------------------------------------------------------------------------------


def ray_trials(task_path: str, workdir: str, trials: int, levels: list[tuple[int, bool]],
               epochs: int | None = None) -> dict:
    """Starts Ray (timed), runs `trials` trials through Ray Tune per (concurrency, reuse_actors)
    level, and stops Ray (timed). Returns the costs and the trials per minute of each level."""
    import ray
    from ray import tune

    from keras_blockreuse.sweep.trial import train_trial

    with open(task_path, "rb") as f:
        data, source = pickle.load(f)
    cpus = os.cpu_count() or 2
    out: dict = {"rates": {}}
    start = time.perf_counter()
    # address="local": always a new instance of our own, never another user's running cluster.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, configure_logging=False,
             log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="kbr-ray-", dir="/tmp"),
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}})
    out["ray start"] = time.perf_counter() - start
    try:
        for k, reuse in levels:
            per_trial = max(1, cpus // k)
            trainable = tune.with_resources(
                tune.with_parameters(train_trial, data=data, source=source), {"cpu": per_trial}
            )
            space = {"policy": POLICY, "seed": tune.grid_search(list(range(trials))),
                     "cpus": per_trial}
            if epochs:
                space["epochs"] = epochs
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(max_concurrent_trials=k, reuse_actors=reuse),
                run_config=tune.RunConfig(name=f"c{k}-{reuse}", verbose=0,
                                          storage_path=os.path.join(workdir, "tune")),
            )
            start = time.perf_counter()
            grid = tuner.fit()
            wall = time.perf_counter() - start
            train = [r.metrics.get("train_seconds") for r in grid if r.metrics]
            out["rates"][f"{k}{' (reuse_actors)' if reuse else ''}"] = {
                "cpus per trial": per_trial,
                "trials": trials,
                "errors": grid.num_errors,
                "wall": wall,
                "per minute": 60 * trials / wall,
                "median train_seconds": statistics.median([t for t in train if t] or [0]),
            }
    finally:
        start = time.perf_counter()
        ray.shutdown()
        out["ray stop"] = time.perf_counter() - start
    return out


# --- the default sweep under Ray Tune, every trial timed ----------------------------------

TRIALS_DIR = "KBR_BENCH_TRIALS"
"""Environment variable of the Ray workers: the folder `timed_trial` writes its rows to."""
_PROBE: list = []


def timed_trial(config: dict, data=None, source=None, recipe=None) -> dict:
    """The sweep's trainable (`keras_blockreuse.sweep.trial.train_trial`) timed by a `Probe`
    of its worker process; writes the trial's row (phases, whether it took a kept model, its
    process and clock times) as one JSON file to the folder `$KBR_BENCH_TRIALS`."""
    import keras_blockreuse.sweep.trial as trial_module

    train = trial_module.train_trial
    if train is timed_trial:
        raise RuntimeError("timed_trial runs in Ray workers, which import the real trainable")
    if not _PROBE:
        _PROBE.append(Probe())
    probe = _PROBE[0]
    probe.clear()
    hits = probe.reuse.MODELS.hits
    began, start = time.time(), time.perf_counter()
    result = train(config, data=data, source=source, recipe=recipe)
    row = probe.row(time.perf_counter() - start)
    row.update(reused=probe.reuse.MODELS.hits > hits, policy=config["policy"],
               seed=config["seed"], pid=os.getpid(), began=began, ended=time.time(),
               raw={"epochs": probe.epoch_times, "evaluations": probe.eval_times,
                    "reports": probe.report_times, "fit": probe.fit_times})
    with open(os.path.join(os.environ[TRIALS_DIR], f"{os.getpid()}-{began:.6f}.json"), "w") as f:
        json.dump(row, f)
    return result


def default_sweep(workdir: str, epochs: int | None = None) -> dict:
    """Runs the default sweep (`SweepSettings()`; its source model trained `SOURCE_EPOCHS`
    epochs) through `run_sweep` on a local Ray of this machine's CPUs, with every trial timed
    (`timed_trial`). Returns the trials' rows and the sweep's facts."""
    import ray

    import keras_blockreuse.sweep.trial as trial_module
    from keras_blockreuse.sweep.run import SweepSettings, run_sweep

    folder = os.path.join(workdir, "trials")
    os.makedirs(folder)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The workers import this module (`benchmarks.sweep.timed_trial`) by name.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    settings = SweepSettings(out=os.path.join(workdir, "sweep"), source_epochs=SOURCE_EPOCHS,
                             cache=os.path.join(workdir, "cache"))
    if epochs:
        settings.epochs = epochs
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
             configure_logging=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="kbr-ray-", dir="/tmp"),
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore",
                                       TRIALS_DIR: folder}})
    if root not in sys.path:
        sys.path.insert(0, root)
    # By name, also when this file runs as __main__: the workers import the same function.
    trainable = importlib.import_module("benchmarks.sweep").timed_trial
    original, trial_module.train_trial = trial_module.train_trial, trainable
    try:
        start = time.perf_counter()
        result = run_sweep(settings, print_fn=lambda line: None)
        wall = time.perf_counter() - start
    finally:
        trial_module.train_trial = original
        ray.shutdown()
    rows = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            rows.append(json.load(f))
    return {"trials": rows, "wall": wall, "planned": len(result.trials),
            "ok": int((result.trials["status"] == "ok").sum()), "epochs": settings.epochs,
            "configurations": len(set(result.trials["policy"])), "seeds": settings.seeds,
            "strategy": settings.strategy}


# --- report -------------------------------------------------------------------------------


STEADY = ("train steps (median epoch x epochs)", "evaluate (median call x calls)")
"""The phases that are `fit`/`evaluate` at their steady cost; everything else is overhead."""


def _outside(row: dict) -> float:
    return row["total"] - sum(row[k] for k in STEADY)


def reused_markdown(rows: list[dict], epochs: int) -> list[str]:
    """The table of trials run one after another in one process (Tune's reuse_actors)."""
    first, warm = rows[0], rows[1] if len(rows) > 1 else None
    hits = [r for r in rows[2:] if r["reused"]] or rows[-1:]
    # A phase a trial did not pass through (a kept model builds nothing; loaded values are
    # kept per source) counts as 0 s in that trial.
    keys = sorted(dict.fromkeys(k for r in rows for k in r
                                if k not in ("total", "reused", "policy", "rss MB")),
                  key=lambda k: PHASES.index(k) if k in PHASES else len(PHASES))
    median = {k: statistics.median(r.get(k, 0.0) for r in hits) for k in keys + ["total"]}
    columns = [("first trial", first)] + ([("another trainable set", warm)] if warm else [])
    lines = [
        f"Trials one after another in one process, as the default sweep runs them (Ray Tune's "
        f"`reuse_actors=True`; {len(rows)} trials, {epochs} epochs): the process's first trial "
        f"(`{first['policy']}` seed 0), "
        + (f"a trial of another trainable set (`{warm['policy']}`, which cannot take the kept "
           "model and traces its own steps), " if warm else "")
        + f"and the median of {len(hits)} later trials of `{POLICY}` (other seeds), which take "
        "the kept model (`keras_blockreuse.sweep.reuse`). `fit`/`evaluate` count at their "
        "steady cost (median epoch x epochs, median evaluation x calls); their excess over it "
        "(TensorFlow tracing the train and predict steps, first-epoch set-up) is overhead:",
        "",
        "| phase | " + " | ".join(f"{name} (s)" for name, _ in columns)
        + " | reused trials, median (s) | share (reused) |",
        "|---|" + "---:|" * (len(columns) + 2),
    ]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{row.get(k, 0.0):.2f}" for _, row in columns)
                     + f" | {median[k]:.2f} | {100 * median[k] / median['total']:.1f}% |")
    lines.append("| **total** | " + " | ".join(f"{row['total']:.2f}" for _, row in columns)
                 + f" | {median['total']:.2f} | 100% |")
    share = {name: 100 * _outside(row) / row["total"] for name, row in columns}
    reused = 100 * (median["total"] - sum(median[k] for k in STEADY)) / median["total"]
    lines += [
        "",
        f"Share of a trial's time outside `fit`/`evaluate`: **{reused:.1f}%** for a trial that "
        f"takes the kept model (target <= 15%); "
        + "; ".join(f"{name}: {value:.1f}%" for name, value in share.items()) + ".",
        "",
        "Resident memory of the process after each trial: "
        + ", ".join(f"{r['rss MB']:.0f}" for r in rows) + " MB.",
        "",
    ]
    return lines


PHASES = ("re-initialise the kept model", "model build", "load_blocks", "freeze", "compile",
          *STEADY, "first epoch's excess (tracing the train step)",
          "first evaluation's excess (tracing predict)",
          "later epochs' and evaluations' excess over the median (contention)", REPORT,
          "other (inside the trial)")
"""The order of the phases in the tables."""
META = ("total", "reused", "policy", "seed", "pid", "began", "ended", "rss MB", "raw")


def _trainable_set(policy: str) -> tuple:
    """The frozen blocks of a policy key: what (besides the architecture) keys a kept model."""
    return tuple(sorted(p.split("=")[0] for p in policy.split(",") if p.endswith("=frozen")))


def sweep_markdown(run: dict) -> list[str]:
    """The default sweep under Ray Tune: every trial's phases summed, by whether the trial
    traced or took a kept model, and per worker process."""
    rows = sorted(run["trials"], key=lambda r: r["began"])
    keys = sorted(dict.fromkeys(k for r in rows for k in r if k not in META),
                  key=lambda k: PHASES.index(k) if k in PHASES else len(PHASES))
    traced = [r for r in rows if not r["reused"]]
    reused = [r for r in rows if r["reused"]]

    def total(group, key):
        return sum(r.get(key, 0.0) for r in group)

    everything = total(rows, "total")
    outside = everything - sum(total(rows, k) for k in STEADY)
    workers: dict[int, list[dict]] = {}
    for r in rows:
        workers.setdefault(r["pid"], []).append(r)
    gaps = {pid: sum(max(0.0, b["began"] - a["ended"]) for a, b in itertools.pairwise(w))
            for pid, w in workers.items()}
    span = max(r["ended"] for r in rows) - min(r["began"] for r in rows)
    lines = [
        f"The default sweep under Ray Tune (`run_sweep(SweepSettings())`: {run['strategy']}, "
        f"{run['configurations']} configurations x {run['seeds']} seeds, {run['epochs']} "
        f"epochs, source trained {SOURCE_EPOCHS} epochs; {run['ok']} of {run['planned']} trials "
        f"ok; {len(workers)} reused worker processes; {run['wall']:.0f} s in all, "
        f"{span:.0f} s from the first trial's start to the last one's end). Every trial timed "
        "inside its worker; `fit`/`evaluate` count at their steady cost (median epoch x epochs, "
        "median evaluation x calls), the rest is overhead:",
        "",
        f"| phase | {len(traced)} trials that traced (s) | {len(reused)} that took a kept model "
        f"(s) | all {len(rows)} trials (s) | share |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in keys:
        lines.append(f"| {k} | {total(traced, k):.2f} | {total(reused, k):.2f} | "
                     f"{total(rows, k):.2f} | {100 * total(rows, k) / everything:.1f}% |")
    lines.append(f"| **total** | {total(traced, 'total'):.2f} | {total(reused, 'total'):.2f} | "
                 f"{everything:.2f} | 100% |")
    lines += [
        "",
        "| worker process | trials | traced | trainable sets met | idle between its trials (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for n, (pid, w) in enumerate(workers.items(), 1):
        lines.append(f"| {n} | {len(w)} | {sum(not r['reused'] for r in w)} | "
                     f"{len({_trainable_set(r['policy']) for r in w})} | {gaps[pid]:.2f} |")
    handoffs = sum(gaps.values())
    lines += [
        "",
        f"Share of the trials' time outside `fit`/`evaluate`, over all {len(rows)} trials: "
        f"**{100 * outside / everything:.1f}%** (target <= 15%); a trial that traced "
        f"{_share(traced):.1f}%, one that took a kept model {_share(reused):.1f}%. With the "
        f"workers' idle time between their trials (Tune handing the next trial over) counted "
        f"as overhead too: {100 * (outside + handoffs) / (everything + handoffs):.1f}%.",
    ]
    if all("fit" in r.get("raw", {}) for r in rows):
        in_fit = sum(sum(r["raw"]["fit"]) for r in rows)
        lines.append(
            f"Measured the other way, as the wall time outside the trial's `fit` call (which "
            f"makes every evaluation and `tune.report` of the trial; tracing counted inside): "
            f"{100 * (everything - in_fit) / everything:.1f}%.")
    lines.append("")
    return lines


def _share(rows: list[dict]) -> float:
    whole = sum(r["total"] for r in rows)
    return 100 * sum(_outside(r) for r in rows) / whole if whole else math.nan


def _phases_markdown(phases: list[dict], epochs: int) -> list[str]:
    """One trial in a fresh process: its phases' medians."""
    lines = [
        f"Default digits sweep settings (10 shots, `seed_cnn`, {epochs} epochs, batch 32), "
        f"policy `{POLICY}`, source trained {SOURCE_EPOCHS} epochs. One trial in a fresh "
        f"process ({len(phases)} run(s), median):",
        "",
        "| phase | seconds | share |",
        "|---|---:|---:|",
    ]
    keys = list(phases[0])
    median = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in keys}
    total = sum(median.values())
    inside = median.get("fit + per-epoch evaluate", 0.0)
    for k in keys:
        lines.append(f"| {k} | {median[k]:.2f} | {100 * median[k] / total:.1f}% |")
    lines += [
        f"| **total** | {total:.2f} | 100% |",
        "",
        f"Outside `fit`/`evaluate`: **{100 * (total - inside) / total:.1f}%** of the trial's "
        f"wall time (target <= 15%); without process start and imports: "
        f"{100 * (total - inside - median.get('process start + imports', 0.0) - median.get('process exit', 0.0)) / total:.1f}%.",
        "",
    ]
    return lines


def markdown(phases: list[dict], ray: dict | None, epochs: int, ray_epochs: int,
             reused: list[dict] | None = None, sweep: dict | None = None) -> str:
    lines = ["## Sweep overhead", ""]
    if sweep:
        lines += sweep_markdown(sweep)
    if phases:
        lines += _phases_markdown(phases, epochs)
    if reused:
        lines += reused_markdown(reused, epochs)
    if ray:
        lines.append(
            f"Starting a local Ray instance: {ray['ray start']:.1f} s (stopping it: "
            f"{ray['ray stop']:.1f} s)."
        )
        lines.append("")
    rates = (ray or {}).get("rates")
    if rates:
        lines += [
            f"Trials per minute under Ray Tune ({ray_epochs} epochs; the sweep's trainable; one "
            "process per trial unless `reuse_actors`):",
            "",
            "| concurrent trials | CPUs per trial | trials | wall | trials / minute | median trial train_seconds |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for k, r in rates.items():
            errors = f" ({r['errors']} failed)" if r["errors"] else ""
            lines.append(
                f"| {k} | {r['cpus per trial']} | {r['trials']}{errors} | {r['wall']:.1f} s | "
                f"{r['per minute']:.2f} | {r['median train_seconds']:.1f} s |"
            )
        lines.append("")
    return "\n".join(lines)


def run(trials: int = 2, phase_runs: int = 1, levels=((1, False), (2, False)),
        epochs: int | None = None, ray_epochs: int | None = None, log=print,
        reused: int = 3, sweep: bool = True) -> tuple[dict, str]:
    """Measures everything (`phase_runs=0, reused=0, trials=0`: the default sweep only);
    returns the raw numbers and the markdown section."""
    results: dict = {"phases": []}
    if reused:
        reused = max(3, reused)  # a first trial, another trainable set, a reused trial
    with tempfile.TemporaryDirectory(prefix="kbr-sweep-bench-") as workdir:
        start = time.perf_counter()
        if sweep:
            results["sweep"] = default_sweep(workdir, epochs)
            log(f"[sweep] default sweep under Ray Tune: {time.perf_counter() - start:.1f} s")
        if not (phase_runs or reused or trials):
            return results, markdown([], None, 0, 0, sweep=results.get("sweep"))
        task = prepare(workdir)
        log(f"[sweep] task and source: {time.perf_counter() - start:.1f} s")
        results["phases"] = [trial_phases(task, epochs) for _ in range(phase_runs)]
        log(f"[sweep] trial phases: {time.perf_counter() - start:.1f} s")
        if reused:
            results["reused"] = reused_trials(task, reused, epochs)
            log(f"[sweep] reused trials: {time.perf_counter() - start:.1f} s")
        if trials:
            results["ray"] = ray_trials(task, workdir, trials, list(levels), ray_epochs or epochs)
            log(f"[sweep] ray: {time.perf_counter() - start:.1f} s")
    default = _settings().epochs
    text = markdown(results["phases"], results.get("ray"), epochs or default,
                    ray_epochs or epochs or default, results.get("reused"), results.get("sweep"))
    return results, text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per concurrency level")
    parser.add_argument("--phase-runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    parser.add_argument("--reused", type=int, default=4, help="trials run in one process")
    parser.add_argument("--default-sweep-only", action="store_true",
                        help="only the default sweep under Ray Tune, every trial timed")
    parser.add_argument("--json", help="also write every measured time to this file")
    parser.add_argument("--child-trial", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--child-reused", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_trial:
        _child_trial(*args.child_trial)
        return
    if args.child_reused:
        _child_reused(*args.child_reused)
        return
    levels = [(1, False), (2, False), (2, True)]
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.default_sweep_only:
        results, text = run(0, 0, (), epochs=args.epochs, log=log, reused=0)
    else:
        results, text = run(args.trials, args.phase_runs, levels, epochs=args.epochs, log=log,
                            reused=args.reused)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    print(text)


if __name__ == "__main__":
    main()
