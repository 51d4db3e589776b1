"""What a sweep prints: one compact live view, and nothing from Ray or TensorFlow unless asked.

- `LiveView`: trials done / running / failed / stopped / total, elapsed time, ETA and the
  current leader by mean validation metric (its full policy key, never truncated). On a
  terminal it is one `rich` live panel redrawn in place; elsewhere (a log file, a pipe) it
  prints a line at each quarter of the trials.
- `TuneEvents`: the Ray Tune callback that feeds the view. It holds no state, so that it can be
  pickled with the experiment and still feed the current view when the sweep is resumed.
- `quiet(verbose)`: Ray's and Ray Tune's informational logs and warnings off (errors stay).

Example:

```python
from keras_blockreuse.sweep.console import LiveView

with LiveView(total=39, val_metric="val_accuracy") as view:
    ...   # tune.Tuner(..., run_config=tune.RunConfig(callbacks=[TuneEvents()])).fit()
view.statuses   # trial id -> Tune status ("TERMINATED", "ERROR", ...)
```
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable

from ray import tune

_ACTIVE: list = []
RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "ray.air", "ray._private")


class LiveView:
    """The live progress of one sweep (see the module docstring).

    Args:
        total: trials expected in this experiment.
        val_metric: the metric whose mean over finished trials names the leader.
        labels: policy key -> readable name.
        higher_is_better: the direction of `val_metric`.
        print_fn: where plain lines and trial errors go.
        terminal: draw a live panel (default: when stdout is a terminal).
    """

    def __init__(self, total: int, val_metric: str, labels: dict | None = None,
                 higher_is_better: bool = True, print_fn: Callable[[str], None] = print,
                 terminal: bool | None = None, final_metric: str | None = None):
        self.total = total
        self.val_metric = val_metric
        self.final_metric = final_metric
        self.labels = labels or {}
        self.higher_is_better = higher_is_better
        self.print_fn = print_fn
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.statuses: dict[str, str] = {}
        self.completed: set[str] = set()  # ended by Tune as complete (finished or stopped)
        self.seen_running: set[str] = set()  # pending or running at some step of this run
        self.finished: dict[str, dict] = {}
        self.diverged: set[str] = set()  # ended with a NaN or inf metric: failed, as reported
        self.errors = 0
        self.started = time.time()
        self._live = None
        self._quarter = 0
        self._last = 0.0

    def __enter__(self) -> LiveView:
        self.started = time.time()
        if self.terminal:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.render(), console=Console(), refresh_per_second=2,
                              transient=False)
            self._live.start()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            self._live = None
        else:
            self.print_fn(self.line())

    # ---- what Tune tells us --------------------------------------------------------------
    def step(self, trials) -> None:
        for t in trials:
            self.statuses[t.trial_id] = t.status
            if t.status in ("RUNNING", "PENDING"):
                self.seen_running.add(t.trial_id)
            elif t.status == "TERMINATED" and t.trial_id not in self.finished:
                self._record(t)
        self.refresh()

    def complete(self, trial) -> None:
        self.statuses[trial.trial_id] = "TERMINATED"
        self.completed.add(trial.trial_id)
        self._record(trial)
        self.refresh(force=True)

    def _record(self, trial) -> None:
        """Count a trial that ended with its final result (this run, or restored)."""
        result = dict(trial.last_result or {})
        if self.final_metric is None or result.get(self.final_metric) is not None:
            value = result.get(self.val_metric)
            ends = [result.get(m) for m in (self.val_metric, self.final_metric, "val_loss",
                                            "test_loss") if m]  # (NaN weights score accuracy)
            if value is not None and not all(math.isfinite(float(v)) for v in ends
                                             if v is not None):
                self.diverged.add(trial.trial_id)  # (the report: "the training diverged")
            elif value is not None:
                self.finished[trial.trial_id] = {"policy": trial.config.get("policy", ""),
                                                 "lr": trial.config.get("lr"),
                                                 "value": float(value)}

    def error(self, trial) -> None:
        self.statuses[trial.trial_id] = "ERROR"
        self.errors += 1
        if self.errors <= 3:
            where = trial.path or ""
            first = str(getattr(trial, "error_file", "") or where)
            message = f"trial {trial.trial_id} ({trial.config.get('policy')}, seed " \
                      f"{trial.config.get('seed')}) failed"
            if first:
                message += f"; see {os.path.join(where, 'error.txt') if where else first}"
            self._print(message)
        elif self.errors == 4:
            self._print("more trials failed: see the report")
        self.refresh(force=True)

    # ---- the view ----------------------------------------------------------------------------
    def counts(self) -> dict:
        values = list(self.statuses.values())
        stopped = len(self.completed - set(self.finished) - self.diverged)
        return {"done": len(self.finished), "running": values.count("RUNNING"),
                "failed": values.count("ERROR") + len(self.diverged), "stopped": stopped,
                "total": self.total}

    def leader(self) -> tuple[str, float, int, float | None] | None:
        """`(policy, mean, n, lr)` of the configuration with the best mean so far: a policy at
        one learning rate (`lr` None unless the sweep tries several: --lrs)."""
        groups: dict[tuple, list[float]] = {}
        for r in self.finished.values():
            groups.setdefault((r["policy"], r.get("lr")), []).append(r["value"])
        if not groups:
            return None
        sign = 1 if self.higher_is_better else -1
        best = max(groups, key=lambda g: sign * sum(groups[g]) / len(groups[g]))
        values = groups[best]
        rates = {lr for _, lr in groups}
        return best[0], sum(values) / len(values), len(values), \
            best[1] if len(rates) > 1 else None

    def line(self) -> str:
        c = self.counts()
        elapsed = time.time() - self.started
        ended = c["done"] + c["failed"] + c["stopped"]
        eta = "n/a" if not ended or ended >= c["total"] else \
            _duration(elapsed / ended * (c["total"] - ended))
        text = (f"trials: {c['done']} done, {c['running']} running, {c['failed']} failed"
                + (f", {c['stopped']} stopped" if c["stopped"] else "")
                + f" of {c['total']}; elapsed {_duration(elapsed)}, ETA {eta}")
        lead = self.leader()
        if lead:
            policy, value, n, lr = lead
            label = self.labels.get(policy, policy)
            name = f"{label} ({policy})" if label != policy else policy
            if lr is not None:
                name += f" at lr {lr:g}"
            text += f"; leader by {self.val_metric}: {name} {value:.3f} (n={n})"
        return text

    def render(self):
        from rich.text import Text

        return Text(self.line(), overflow="fold", no_wrap=False)

    def refresh(self, force: bool = False) -> None:
        if self._live is not None:
            now = time.time()
            if force or now - self._last > 0.5:
                self._live.update(self.render())
                self._last = now
            return
        c = self.counts()
        ended = c["done"] + c["failed"] + c["stopped"]
        quarter = math.floor(4 * ended / max(1, c["total"]))
        if 0 < quarter < 4 and quarter > self._quarter:
            self._quarter = quarter
            self.print_fn(self.line())

    def _print(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(message, overflow="fold", highlight=False)
        else:
            self.print_fn(message)


class TuneEvents(tune.Callback):
    """Forwards Ray Tune's events to the active `LiveView` (stateless, so picklable)."""

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        pass

    @staticmethod
    def _view():
        return _ACTIVE[-1] if _ACTIVE else None

    def on_step_end(self, iteration, trials, **info):
        if view := self._view():
            view.step(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if view := self._view():
            view.complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        if view := self._view():
            view.error(trial)

    def on_experiment_end(self, trials, **info):
        if view := self._view():
            view.step(trials)


@contextlib.contextmanager
def quiet(verbose: bool = False):
    """Ray's informational logs and Python warnings off inside (errors still show)."""
    if verbose:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in RAY_LOGGERS}
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Tune's newer output engine prints an experiment header (and a TensorBoard command
    # naming Ray's temporary folder) even at verbose=0; the classic one prints nothing then.
    engine = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            if engine is None:
                os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
            else:
                os.environ["RAY_AIR_NEW_OUTPUT"] = engine


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
