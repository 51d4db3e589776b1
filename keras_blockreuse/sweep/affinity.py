"""FIFO trial scheduling that sends a trial to a worker which already traced its steps.

A Ray worker process that Tune reuses for several trials keeps the compiled model of each
trainable set it has trained (`keras_blockreuse.sweep.reuse`), so a trial of a set the worker
has met trains without tracing, and a trial of a new set traces (about a second). Tune's grid
varies the policy fastest, so under plain FIFO every worker meets every trainable set of the
sweep: the default sweep's 8 sets were traced 16 times on 2 workers. `AffinityFIFO` runs the
same trials, each to its full budget, but picks which pending trial a freed worker runs next:
one of the set it has just trained, else one of a set it has met, else one of a set no other
worker has met, else the first pending one (so no worker waits while trials are pending).
Which worker runs a trial never changes its results (each trial seeds itself, and a kept
model is re-initialised with the trial's own values); only how often TensorFlow traces.

It relies on how Tune 2.x hands out a freed worker: when a trial completes, its actor is
cached and given to the trial `choose_trial_to_run` returns next. Tune reports each result's
`node_ip` and `pid`, which name the worker. Where Tune decides otherwise (two trials
finishing in one step, a failed trial's worker), the choice is only a hint: a trial that lands
elsewhere traces, as under FIFO.

Example:

```python
from ray import tune
from keras_blockreuse.sweep.affinity import AffinityFIFO

groups = {"scratch": (), "block_1=frozen": ("block_1",), "block_1=tuned": ()}
config = tune.TuneConfig(scheduler=AffinityFIFO(groups), reuse_actors=True)
```
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

__all__ = ["AffinityFIFO"]


class AffinityFIFO(FIFOScheduler):
    """FIFO over the same trials, a freed worker preferring trials of the sets it has kept.

    Args:
        groups: policy key -> what a trial's traced steps depend on besides the settings
            every trial of the experiment shares (its frozen blocks). A trial's group is that
            and its configuration's `lr` (the learning rate is part of the compile settings);
            a policy missing from `groups` is a group of its own.
    """

    def __init__(self, groups: Mapping[str, Hashable]):
        super().__init__()
        self.groups = dict(groups)
        self._worker: dict[str, tuple] = {}  # trial id -> (node, pid) of its worker
        self._met: dict[tuple, set] = {}  # worker -> groups it has trained (kept models)
        self._last: dict[tuple, Hashable] = {}  # worker -> group of its latest trial
        self._freed: list[tuple] = []  # workers whose trial completed, in that order

    def group(self, trial) -> Hashable:
        """The group of `trial`: trials of one group share a kept model."""
        config = trial.config or {}
        policy = config.get("policy")
        return (self.groups.get(policy, ("policy", policy)), config.get("lr"))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._seen(trial, result)
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._seen(trial, result)  # a trial's last result comes here, not to on_trial_result
        worker = self._worker.pop(trial.trial_id, None)
        if worker is not None:
            self._freed.append(worker)

    def _seen(self, trial, result: dict) -> None:
        """Note the worker of `trial` (from its first result) and the set it now keeps."""
        if trial.trial_id in self._worker or (result or {}).get("pid") is None:
            return
        worker = (result.get("node_ip"), result["pid"])
        self._worker[trial.trial_id] = worker
        self._met.setdefault(worker, set()).add(self.group(trial))
        self._last[worker] = self.group(trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        worker = self._worker.pop(trial.trial_id, None)
        if worker is not None:  # Tune does not reuse a failed trial's worker
            self._met.pop(worker, None)
            self._last.pop(worker, None)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._worker.pop(trial.trial_id, None)

    def choose_trial_to_run(self, tune_controller):
        pending = [t for t in tune_controller.get_trials() if t.status == Trial.PENDING]
        if not pending or not self._freed:
            return super().choose_trial_to_run(tune_controller)
        worker = self._freed.pop(0)  # Tune gives the earliest cached worker first
        met = self._met.get(worker, set())
        others = set().union(*(g for w, g in self._met.items() if w != worker))
        for wanted in (lambda g: g == self._last.get(worker), met.__contains__,
                       lambda g: g not in others):
            for trial in pending:
                if wanted(self.group(trial)):
                    return trial
        return pending[0]

    def debug_string(self) -> str:
        return "Using FIFO scheduling, a freed worker preferring trials of the sets it kept."
