"""ASHA for a sweep: early stopping that never stops the baselines.

`BaselineASHA` is Ray Tune's `ASHAScheduler` (asynchronous successive halving; Li et al. 2020,
"A System for Massively Parallel Hyperparameter Tuning") whose rungs record every trial's
results, but which never stops a trial whose `policy` is a baseline (scratch, all tuned): the
comparisons with the baselines always have their full budget. The report counts the other
trials it stopped as `stopped` (not failed) and leaves them out of the statistics.

Example:

```python
from keras_blockreuse.sweep.asha import BaselineASHA

scheduler = BaselineASHA(["scratch"], time_attr="training_iteration", max_t=40, grace_period=5)
```
"""

from __future__ import annotations

from collections.abc import Sequence

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class BaselineASHA(ASHAScheduler):
    """`ASHAScheduler` that never stops the trials of the `baselines` policies."""

    def __init__(self, baselines: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.baselines = sorted(set(baselines))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if trial.config.get("policy") in self.baselines:
            return TrialScheduler.CONTINUE
        return action
