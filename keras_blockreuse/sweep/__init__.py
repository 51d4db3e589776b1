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
- `predict`: LogME and relative gradient norms, the predicted order of configurations,
  Kendall's tau against measured results (`--strategy predicted`);
- `halving`: successive halving over whole configurations (`--scheduler halving`);
- `policies`: LP-FT, gradual unfreezing, per-block learning rates (`--policy`, `--block-lr`);
- `rates`: the best learning rate per configuration on validation (`--lrs`);
- `run`: the sweep itself: data, the cached source model, Ray, `tune.Tuner`, resume;
- `control`: checks before anything starts (address, resources), SIGINT / SIGTERM, the
  per-seed target split (`--data-seeds`); `asha`: ASHA that never stops the baselines;
- `console`: the compact live view, Ray and TensorFlow kept quiet;
- `report`: the verdict (chosen on validation; the policies tied with the best, Holm-corrected;
  the cheapest of them), statistics over seeds, the comparison with scratch, files and plot.

Example:

```python
from keras_blockreuse.sweep import which_blocks

# A first look (more seeds and epochs for a verdict): build_model() returns the target
# keras.Model; the source is any weights file load_blocks reads, or a keras.Model.
result = which_blocks(build_model, source="pretrained.blocks.h5",
                      train=(x_train, y_train), validation=(x_val, y_val),
                      test=(x_test, y_test), strategy="prefix", seeds=2, epochs=2,
                      out="runs/my_sweep")
print(result.best)        # the verdict: best on validation, tied with it, recommended
print(result.fixed)       # blocks reinit in every configuration, and why
result.summary            # pandas DataFrame, one row per policy, ranked by validation

# The built-in demo (digits), as the command line runs it; here its smoke size:
from keras_blockreuse.sweep import SweepSettings, run_sweep

demo = run_sweep(SweepSettings(smoke=True, out="runs/demo"))
```
"""

from keras_blockreuse.sweep.api import which_blocks
from keras_blockreuse.sweep.options import SweepSettings
from keras_blockreuse.sweep.run import SweepResult, run_sweep
from keras_blockreuse.sweep.space import POLICIES, STRATEGIES, Configuration, SweepError

__all__ = ["POLICIES", "STRATEGIES", "Configuration", "SweepError", "SweepResult",
           "SweepSettings", "run_sweep", "which_blocks"]
