"""Compiled models kept across the trials of one worker process, with their traced steps.

When Ray Tune reuses a worker process for several trials (`reuse_actors`, the sweep's
default), TensorFlow would otherwise trace a new train step and a new predict step for every
trial: on the default digits sweep that was about 43% of a trial's time, more than all its
training steps together. `TracedModels` keeps the compiled model of a finished trial and hands
it to the next trial of the same architecture, compile settings and trainable set, with every
value replaced by the new trial's freshly built model's: each trial trains exactly as it would
on a model of its own (bit for bit: the same graph, the same initial values, the same seeds).

Only what the trace cannot see changes between trials: variable values (weights, BatchNorm
statistics, the Dropout layers' seed-generator states), the optimizer's variables (iteration
counter, learning rate, slots) and the metrics. What the trace captured is the key: the
model's class and config (layer names, shapes, activations, `trainable` flags), its
variables' paths, shapes, dtypes and trainable flags, and the compile configuration with the
optimizer's class. A trial that differs in any of them gets its own model (and traces); so
does a model whose automatic layer names differ (built without `clear_session` before it).

Example (one process, two trials of one policy):

```python
models = TracedModels()
for seed in (0, 1):
    keras.backend.clear_session(free_memory=False)  # the same automatic names each time
    keras.utils.set_random_seed(seed)
    model = build(...)                    # fresh values for this trial: cheap, no tracing
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=..., metrics=[...])
    with models.reuse(model) as model:    # the second time: the first trial's model, traced
        model.fit(...)                    # and re-initialised with this trial's values
```
"""

from __future__ import annotations

import collections
import contextlib
import json

import numpy as np

__all__ = ["MODELS", "TracedModels", "build_before_tracing", "reinitialise"]


class TracedModels:
    """Compiled models of finished trials, by what their traced steps depend on.

    Args:
        max_models: the most models kept (least recently used dropped first).
        max_bytes: the most bytes of model and optimizer variables kept, all models together.

    Only the TensorFlow backend reuses models (Keras keeps a model's traced `tf.function`
    until the next `compile`); on other backends `reuse` hands back the model it is given.
    """

    def __init__(self, max_models: int = 16, max_bytes: int = 256 * 2**20):
        self.max_models = int(max_models)
        self.max_bytes = int(max_bytes)
        self._kept: collections.OrderedDict = collections.OrderedDict()
        self.hits = 0
        """How many trials were given a kept model (for tests and benchmarks)."""

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        """Drop every kept model: the next trials build, compile and trace their own."""
        self._kept.clear()

    @contextlib.contextmanager
    def reuse(self, model):
        """The model to train in place of `model`, kept for later trials if training ends well.

        Args:
            model: this trial's model, freshly built (with its seeds), its blocks loaded and
                frozen, and compiled; its optimizer not yet used.

        Yields:
            A kept model of the same key with `model`'s variable values and a fresh optimizer
            state; or `model` itself when none is kept. After the block ends without an
            exception the yielded model is kept (an exception drops it: its state is unknown).
        """
        key = _key(model)
        kept = self.take(key, model) if key is not None else None
        if kept is not None:
            self.hits += 1
        trained = kept if kept is not None else model
        yield trained
        if key is not None:
            self._keep(key, trained)

    def take(self, key, model):
        """The kept model under `key`, re-initialised from `model`, or None; it is no longer
        kept until given back (a model is never shared by two running trials)."""
        kept = self._kept.pop(key, None)
        if kept is None:
            return None
        reinitialise(kept, model)
        return kept

    def _keep(self, key, model) -> None:
        self._kept[key] = model
        self._kept.move_to_end(key)
        while self._kept and (len(self._kept) > self.max_models
                              or sum(map(_nbytes, self._kept.values())) > self.max_bytes):
            self._kept.popitem(last=False)


MODELS = TracedModels()
"""The models kept by this process (a Ray worker's, across the trials Tune gives it)."""


def reinitialise(kept, model) -> None:
    """Give `kept` (a compiled, trained model) the state `model` (same key, compiled, not yet
    trained) starts with: every variable's value, the optimizer's variables as a fresh
    optimizer built on `model`'s trainable variables holds them, reset metrics.

    Raises:
        RuntimeError: the two models' variables or optimizer variables do not correspond one
            to one in path, shape and dtype (the key should have kept them apart).
    """
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)  # zeros and a 0 iteration count, no draws
    if not kept.optimizer.built:
        kept.optimizer.build(kept.trainable_variables)
    pairs = (_pairs(kept.variables, model.variables, "model")
             + _pairs(kept.optimizer.variables, optimizer.variables, "optimizer"))
    for target, value in pairs:
        target.assign(value)
    kept.reset_metrics()


def build_before_tracing(model, x, y) -> None:
    """Create a compiled model's optimizer and metric variables now, so that TensorFlow traces
    its train step once instead of twice.

    A `tf.function` whose first call creates variables is traced again for later calls; Keras
    creates the optimizer's slots and the compiled metrics' variables inside the first train
    step's trace. Built here instead (`optimizer.build`, and `compute_metrics` on one example,
    whose state `fit` resets at each epoch), they hold the same initial values, and training
    gives the same numbers (the sweep's reports compared bit for bit before and after). Does
    nothing when the optimizer is already built (a kept model).

    Args:
        model: a compiled model, not yet trained.
        x, y: training arrays; only their first example is used.
    """
    if model.optimizer is None or model.optimizer.built:
        return
    model.optimizer.build(model.trainable_variables)
    model.compute_metrics(x[:1], y[:1], model(x[:1], training=False), sample_weight=None)
    model.reset_metrics()


def _pairs(targets, values, what: str) -> list:
    described = [(v.path, tuple(v.shape), str(v.dtype)) for v in targets]
    expected = [(v.path, tuple(v.shape), str(v.dtype)) for v in values]
    if described != expected:
        raise RuntimeError(f"Cannot re-initialise a kept model: its {what} variables "
                           f"{described} differ from the new trial's {expected}.")
    return list(zip(targets, (v.value for v in values), strict=True))


def _key(model):
    """What the model's traced train and predict steps depend on, or None (no reuse)."""
    import keras

    if keras.backend.backend() != "tensorflow" or not model.compiled:
        return None
    try:
        config = json.dumps(model.get_config(), sort_keys=True)
        compiled = json.dumps(model.get_compile_config(), sort_keys=True)
    except (TypeError, ValueError, NotImplementedError):  # not serializable: no safe key
        return None
    variables = tuple((v.path, tuple(v.shape), str(v.dtype), bool(v.trainable))
                      for v in model.variables)
    return (type(model), config, variables, type(model.optimizer), compiled)


def _nbytes(model) -> int:
    variables = list(model.variables) + list(model.optimizer.variables)
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(v.dtype).itemsize
                   for v in variables))
