"""Ray Tune sweeps that measure which blocks to transfer, frozen or fine-tuned.

`which_blocks` asks the question of the user's own model, pretrained weights and data; the
command line `python sweeps/which_blocks.py` asks it too, and runs the built-in demo tasks.
The pieces, each one idea:

- `api`: `which_blocks`, the one call;
- `inputs`: the user's model, data and source checked before any trial (fixed blocks);
- `models`: the target model and its training (`Recipe`; keras.applications by name);
- `user_data`: the user's arrays, `tf.data`, `.npz` files and image folders;
- `data`, `zoo`: the built-in source / target tasks (digits) and small models;
- `space`: block policies (`reinit` / `frozen` / `tuned`), their keys, and the strategies
  (`prefix`, `surgical`, `exhaustive`, `greedy`) that list configurations;
- `trial`: training the source model once, and one trial (a policy and a seed) as a Tune
  function trainable;
- `run`: the sweep itself: data, the cached source model, Ray, `tune.Tuner`, resume;
- `report`: statistics over seeds, the paired comparison with scratch, files and plot.

Example:

```python
from keras_blockreuse.sweep import which_blocks

result = which_blocks(build_model, source="pretrained.blocks.h5",
                      train=(x_train, y_train), validation=(x_val, y_val),
                      test=(x_test, y_test), seeds=3, epochs=20, out="runs/my_sweep")
print(result.best)
result.summary    # pandas DataFrame, one row per policy, best first

# The built-in demo, as the command line runs it:
from keras_blockreuse.sweep import SweepSettings, run_sweep

result = run_sweep(SweepSettings(strategy="surgical", seeds=3, out="runs/demo"))
```
"""

from keras_blockreuse.sweep.api import which_blocks
from keras_blockreuse.sweep.options import SweepSettings
from keras_blockreuse.sweep.run import SweepResult, run_sweep
from keras_blockreuse.sweep.space import POLICIES, STRATEGIES, Configuration, SweepError

__all__ = ["POLICIES", "STRATEGIES", "Configuration", "SweepError", "SweepResult",
           "SweepSettings", "run_sweep", "which_blocks"]
