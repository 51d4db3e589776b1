"""Ray Tune sweeps that measure which blocks to transfer, frozen or fine-tuned.

The command line is `python sweeps/which_blocks.py`; the pieces, each one idea:

- `space`: block policies (`reinit` / `frozen` / `tuned`), their keys, and the strategies
  (`prefix`, `surgical`, `exhaustive`, `greedy`) that list configurations;
- `trial`: training the source model once, and one trial (a policy and a seed) as a Tune
  function trainable;
- `run`: the sweep itself: data, the cached source model, Ray, `tune.Tuner`, resume;
- `report`: statistics over seeds, the paired comparison with scratch, files and plot.

Example:

```python
from keras_blockreuse.sweep import SweepSettings, run_sweep

result = run_sweep(SweepSettings(strategy="surgical", seeds=3, out="runs/my_sweep"))
print(result.best)
```
"""

from keras_blockreuse.sweep.space import POLICIES, STRATEGIES, Configuration, SweepError

__all__ = ["POLICIES", "STRATEGIES", "Configuration", "SweepError"]
