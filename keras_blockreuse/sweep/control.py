"""Run control of a sweep: checks before anything starts, interrupts, and what ASHA may stop.

- `check_address` and `check_resources`: refuse, before any trial, a Ray address nothing
  answers on (instead of Ray retrying for ever) and a per-trial request no node can satisfy
  (instead of trials PENDING for ever), naming what the cluster has.
- `check_free_space`: refuse, before anything is written, a sweep whose folders lack the room
  it needs (instead of Ray's "Timed out waiting for file" after 47 s on a full disk).
- `Interrupts`: SIGINT and SIGTERM stop the trials cleanly (through Ray Tune's own graceful stop,
  which saves the experiment for `--resume`), and the sweep then writes its report marked as
  interrupted; outside Tune they raise `KeyboardInterrupt`. `exit_code` is 130 or 143.
- `redraw_target_split`: the target's train / validation / test split drawn again for one seed
  (`--data-seeds`), with the same number of images per class in each part.
- `resume_command`: the exact command that continues a sweep, as the user started it.

Example:

```python
from keras_blockreuse.sweep.control import Interrupts, check_address

check_address("127.0.0.1:6379")       # SweepError within seconds when nothing listens there
with Interrupts() as interrupts:
    ...                               # interrupts.signal: None, "SIGINT" or "SIGTERM"
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import socket
from collections.abc import Iterable

import numpy as np

from keras_blockreuse.sweep.options import PROG, SweepError

ADDRESS_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection to --address before refusing it."""
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def check_address(address: str | None, timeout: float = ADDRESS_TIMEOUT) -> None:
    """Refuse a `HOST:PORT` (or `ray://HOST:PORT`) Ray address that accepts no connection.

    `None` (a local Ray) and `"auto"` (Ray finds the running cluster, or says there is none)
    are left to Ray.

    Raises:
        SweepError: naming the address and why it cannot be reached, within `timeout` seconds.
    """
    if not address or address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SweepError(f"--address must be 'auto' or HOST:PORT (e.g. 10.0.0.5:6379), "
                         f"received {address!r}.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise SweepError(f"Cannot reach a Ray cluster at --address {address}: {reason} "
                         f"(within {timeout:g} s). Start one there with `ray start --head "
                         f"--port={port}`, or check the address.") from None


def check_resources(nodes: Iterable[dict], cpus_per_trial: float, gpus_per_trial: float,
                    names: tuple[str, str] = ("--cpus-per-trial", "--gpus-per-trial")) -> None:
    """Refuse a per-trial request that no alive node of the cluster can satisfy.

    Args:
        nodes: `ray.nodes()`.
        cpus_per_trial, gpus_per_trial: what each trial asks for.
        names: how the two are named in the error (`--cpus-per-trial`, or `cpus_per_trial=`).

    Raises:
        SweepError: naming the request and what each node has.
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    for r in alive:
        if r.get("CPU", 0) >= cpus_per_trial and r.get("GPU", 0) >= gpus_per_trial:
            return
    has = "; ".join(f"{r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs" for r in alive) or \
        "no alive node"
    cpus, gpus = (f"{name}{' ' if name.startswith('--') else ''}{value:g}"
                  for name, value in zip(names, (cpus_per_trial, gpus_per_trial), strict=True))
    asked = []
    if not any(r.get("CPU", 0) >= cpus_per_trial for r in alive):
        asked.append(cpus)
    if not any(r.get("GPU", 0) >= gpus_per_trial for r in alive):
        asked.append(gpus)
    asked = asked or [f"{cpus} with {gpus}"]
    raise SweepError(f"No node of the Ray cluster can run a trial with {' and '.join(asked)}: "
                     f"the cluster has {len(alive)} node(s) ({has}). Ask for at most what one "
                     "node has.")


SCRIPT = "which_blocks.py"
"""The command line's script (`sweeps/which_blocks.py`)."""
MODULE = "keras_blockreuse.sweep"
"""`python -m keras_blockreuse.sweep`: the same command line, from any folder."""


RAY_SESSION_BYTES = 4 * 2**20
"""Room a local Ray needs in OUT/ray for one session (its sockets, port files and logs: 0.2 MB
measured right after `ray.init`, 0.4 to 1.2 MB after smoke sweeps of 6 and 40 trials; the
rest is room for a longer run's logs). With none, `ray.init` waited 47 s and ended in
"RuntimeError: Timed out waiting for file .../gcs_server_port_..."."""
TRIAL_BYTES = 64 * 2**10
"""Room per trial for Tune's results (its folder, about 24 KB, and its share of the experiment
state, kept in OUT/tune and copied to Ray's artifacts: about 50 KB a trial measured)."""
REPORT_BYTES = 2**20
"""Room for the report (report.md, results.csv, summary.csv, results.json, plot.png: about
100 KB measured) and settings.json."""


def check_free_space(out: str, trials: int, local_ray: bool, storage: str | None = None,
                     resume: bool = False, api: bool = False) -> None:
    """Refuse, before anything is written, a sweep whose folders have too little free space.

    What the sweep writes: `RAY_SESSION_BYTES` in OUT/ray for a local Ray (`local_ray`),
    `TRIAL_BYTES` per trial where Tune keeps its results (`storage`, default OUT/tune; not
    checked for a remote `scheme://` storage), `REPORT_BYTES` in OUT. Folders on one disk are
    checked together; one that does not exist yet, on the disk of its nearest existing parent.

    Raises:
        SweepError: naming the folder, its free space, what the sweep needs there and for
            what; a resumed sweep's folder is left as it was. `api`: in which_blocks's words.
    """
    out = os.path.abspath(out)
    storage = storage or os.path.join(out, "tune")
    needs: dict[int, list] = {}

    def need(folder: str, amount: int, what: str) -> None:
        existing = folder
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        entry = needs.setdefault(os.stat(existing).st_dev, [folder, existing, 0, []])
        entry[2] += amount
        entry[3].append(what)

    need(out, REPORT_BYTES, f"the report, {_size(REPORT_BYTES)}")
    if local_ray:
        need(os.path.join(out, "ray"), RAY_SESSION_BYTES,
             f"Ray's session files in {os.path.join(out, 'ray')}, {_size(RAY_SESSION_BYTES)}")
    if "://" not in storage:
        need(os.path.abspath(storage), TRIAL_BYTES * trials,
             f"Tune's results of {trials} trials, {_size(TRIAL_BYTES)} each")
    for folder, existing, amount, whats in needs.values():
        free = shutil.disk_usage(existing).free
        if free >= amount:
            continue
        if resume:
            again = "call it again with resume=True" if api else "run the same command again"
            then = f"then {again}: nothing in {out} was changed"
        else:
            then = f"or pass {'out=' if api else '--out'} a folder on another disk; nothing " \
                   "was written"
        raise SweepError(
            f"{folder} has too little free space for the sweep: {_size(free)} free on its "
            f"disk, and the sweep needs about {_size(amount)} there ({'; '.join(whats)}). "
            f"Free some space there, {then}.")


def _size(n: float) -> str:
    """`0 bytes`, `64 KiB`, `4.8 MiB`, `1.2 GiB`."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
    return ""


def resume_command(out: str, address: str | None = None, api: bool = False) -> str:
    """The command that continues the sweep in `out`, to run from the folder the sweep was
    started in: the interpreter and the program as the user started them (`python
    ../sweeps/which_blocks.py`, `/venv/bin/python /src/sweeps/which_blocks.py`, `python -m
    keras_blockreuse.sweep`), shell-quoted, then `--resume --out OUT` (absolute). Where this
    process is not the command line (its `main` called from Python code), `python -m
    keras_blockreuse.sweep` with this interpreter's path. `api`: the call, for `which_blocks`.
    """
    out = os.path.abspath(out)
    if api:
        return f"which_blocks(<the same arguments>, out={out!r}, resume=True)"
    words = [*invocation(), "--resume", "--out", out]
    if address:
        words += ["--address", address]
    return shlex.join(words)


def invocation() -> list[str]:
    """The words that started this sweep's command line, as the user typed them (relative
    paths stay valid from the folder they typed them in): the interpreter with its options,
    and the script or `-m` module. Else (`main` called from other Python code: a test, a
    notebook) `[sys.executable, "-m", MODULE]`."""
    import sys

    typed = list(getattr(sys, "orig_argv", None) or [])
    argv = list(sys.argv)
    n = len(typed) - len(argv)  # the interpreter's own words (and "-m" before a module)
    if argv and n >= 1 and typed[n + 1:] == argv[1:]:
        program = typed[n]
        script = typed[n - 1] != "-m" and argv[0] not in ("-c", "-") and \
            os.path.basename(program) == SCRIPT
        module = typed[n - 1] == "-m" and program == MODULE
        if script or module:
            return typed[:n + 1]
    return [sys.executable, "-m", MODULE]


class Interrupts:
    """SIGINT / SIGTERM handling for a sweep (a context manager; main thread only).

    Inside `tuning()`, a signal asks Ray Tune to stop: Tune ends its trials, saves the
    experiment and `Tuner.fit` returns. After `defer()` (the sweep has started: its report must
    be written) a signal outside Tune is only recorded; before, it raises `KeyboardInterrupt`.
    A second signal always raises `KeyboardInterrupt` (stop at once). `signal` names the first
    signal received.
    """

    def __init__(self):
        self.signal: str | None = None
        self._tuning = False
        self._defer = False
        self._previous: dict = {}
        self._active = False

    def defer(self) -> None:
        """From now on a first signal outside Tune is recorded, not raised."""
        self._defer = True

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal or "", 0)

    def __enter__(self) -> Interrupts:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
            self._active = True
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        first = self.signal is None
        if first:
            self.signal = signal.Signals(signum).name
        if first and self._tuning and hasattr(signal, "SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's own graceful stop
            return
        if first and self._defer:
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def tuning(self):
        """A context for `Tuner.fit()`: signals reach Tune as its graceful stop (SIGUSR1);
        Tune's own SIGINT handler is switched off so that ours keeps count."""
        interrupts = self

        class _Tuning:
            def __enter__(self):
                self.saved = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
                if interrupts._active:
                    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
                    # ray.init() installs Ray's C++ SIGTERM handler (it logs and aborts the
                    # driver, exit 134): ours goes back on top, so SIGTERM stops Tune cleanly.
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        signal.signal(sig, interrupts._handle)
                interrupts._tuning = True

            def __exit__(self, *exc):
                interrupts._tuning = False
                if self.saved is None:
                    os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
                else:
                    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self.saved

        return _Tuning()


def redraw_target_split(data, seed: int):
    """`data` with its target train / validation / test images drawn again from their union.

    Each class keeps its number of images in each part (so `--shots` holds); the source task is
    untouched. Every policy run with the same `seed` gets the same split, so comparisons stay
    paired by seed.

    Raises:
        SweepError: `data` has no target arrays to re-draw (not a `TransferData`-like dataclass).
    """
    parts = ("train", "val", "test")
    if not dataclasses.is_dataclass(data) or not all(
            hasattr(data, f"{a}_{p}") for a in "xy" for p in parts):
        raise SweepError(f"--data-seeds re-draws the target's train/val/test split, and "
                         f"{type(data).__name__} has no such arrays.")
    x = np.concatenate([getattr(data, f"x_{p}") for p in parts])
    y = np.concatenate([getattr(data, f"y_{p}") for p in parts])
    part = np.concatenate([np.full(len(getattr(data, f"y_{p}")), i) for i, p in enumerate(parts)])
    rng = np.random.default_rng([int(seed), 7919])
    chosen: dict[int, list] = {i: [] for i in range(len(parts))}
    for c in np.unique(y):
        index = np.flatnonzero(y == c)
        counts = [int(np.sum(part[index] == i)) for i in range(len(parts))]
        shuffled = rng.permutation(index)
        start = 0
        for i, n in enumerate(counts):
            chosen[i].append(shuffled[start:start + n])
            start += n
    fields = {}
    for i, p in enumerate(parts):
        index = np.concatenate(chosen[i])
        index = rng.permutation(index) if p == "train" else np.sort(index)
        fields[f"x_{p}"], fields[f"y_{p}"] = x[index], y[index]
    return dataclasses.replace(data, **fields)


RESULT_BUFFER = (1000, 10.0)
"""With FIFO scheduling, a worker hands Tune a trial's results when the trial ends, or those it
has every 10 seconds, up to 1000 at once (`tune_environment`)."""


@contextlib.contextmanager
def tune_environment(buffered: bool = True):
    """A context for `Tuner.fit()` in which a trial's `tune.report` costs little: Tune's
    workers buffer results, and Tune writes no TensorBoard event files (Ray Tune's
    `TUNE_RESULT_BUFFER_LENGTH`, `TUNE_RESULT_BUFFER_MIN_TIME_S` and
    `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`, read by Tune when `fit` starts; `tune_loggers` are
    Tune's JSON and CSV loggers, to pass in `RunConfig(callbacks=...)`).

    A function trainable's `tune.report` waits for the driver's next `train` call: 4.6 ms a
    report (median) on the default sweep on 2 cores, 10% of its trial time (one report an
    epoch of about 25 ms). Buffered, the worker's own loop takes each result and the report
    returns in 0.3 ms; the report that fills a batch waits while the driver processes it,
    most of which was Tune's TensorBoard logger (about 1.2 ms a result). The driver still gets
    every result, in order. Ray 2.60 passes the two buffer settings to
    `Trainable.train_buffered` in swapped order (the length as the time, the time as the
    length); they are set for that order: a batch is what the trial reported when it ends, or
    after 10 s, at most 1000 results (were the order fixed, 10 results or 1000 s). So no
    report of a short trial waits for the driver (a batch of 40 had cost the report that
    filled it about 25 ms), and the live view is at most about 10 s behind a long trial.
    Buffering is off (`buffered` False) for ASHA, which should see each result before the
    trial trains on. A variable the user set stands.
    """
    values = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    if buffered:
        results, seconds = RESULT_BUFFER  # (in the order Ray 2.60 reads them: see above)
        values.update(TUNE_RESULT_BUFFER_LENGTH=str(int(seconds)),
                      TUNE_RESULT_BUFFER_MIN_TIME_S=str(results))
    if buffered and ("TUNE_RESULT_BUFFER_LENGTH" in os.environ
                     or "TUNE_RESULT_BUFFER_MIN_TIME_S" in os.environ):
        del values["TUNE_RESULT_BUFFER_LENGTH"], values["TUNE_RESULT_BUFFER_MIN_TIME_S"]
    values = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)


def tune_loggers() -> list:
    """Tune's JSON and CSV loggers (each trial's `result.json` and `progress.csv`), for
    `tune.RunConfig(callbacks=...)` under `tune_environment`, which turns off Tune's automatic
    loggers (the TensorBoard one is most of the driver's time per result)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def split_per_seed_trial(config: dict, data=None, source=None, trial=None):
    """A trainable that runs `trial` on `data` whose target split is re-drawn for the trial's
    seed (`redraw_target_split`): what `--data-seeds` runs."""
    return trial(config, data=redraw_target_split(data, int(config["seed"])), source=source)


__all__ = ["ADDRESS_TIMEOUT", "EXIT_CODES", "Interrupts", "MODULE", "PROG", "RAY_SESSION_BYTES",
           "REPORT_BYTES", "SCRIPT", "TRIAL_BYTES", "check_address", "check_free_space",
           "check_resources", "invocation", "redraw_target_split",
           "resume_command", "split_per_seed_trial", "tune_environment", "tune_loggers"]
