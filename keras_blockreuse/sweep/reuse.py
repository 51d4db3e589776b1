"""Compiled models kept across the trials of one worker process, with their traced steps.

When Ray Tune reuses a worker process for several trials (`reuse_actors`, the sweep's
default), TensorFlow would otherwise trace a new train step and a new predict step for every
trial: on the default digits sweep that was about 43% of a trial's time, more than all its
training steps together. `TracedModels` keeps the compiled model of a finished trial and hands
it to the next trial of the same key (architecture, compile settings and trainable set), with
every value set to what a freshly built model of the new trial's seed holds: each trial trains
exactly as it would on a model of its own (bit for bit: the same graph, the same initial
values, the same seeds).

The values a fresh model starts with are recorded once per (architecture, seed) and process
(`remember`), from a model built after `seed_model_building(seed)`: what
`keras.utils.set_random_seed(seed)` seeds, except TensorFlow's global seed, whose setting (like
`keras.backend.clear_session()`) clears TensorFlow's kernel caches, after which every kept
`tf.function` is instantiated again on its first call (about 0.15 s a trial on the default
sweep). A trial that takes a kept model builds nothing.

Only what the trace cannot see changes between trials: variable values (weights, BatchNorm
statistics, the Dropout layers' seed-generator states), the optimizer's variables (iteration
counter, learning rate, slots) and the metrics. The caller's key must name everything the
trace depends on; `restart` checks that the kept model's variables are the recorded ones in
path, shape and dtype, and raises if not.

Example (one process, two trials of one policy):

```python
models = TracedModels()
for seed in (0, 1):
    kept = models.take(key)
    start = models.start(architecture, seed)
    if kept is None or start is None:
        seed_model_building(seed)
        fresh = build(...)
        start = models.remember(architecture, seed, fresh)
    if kept is None:
        model = fresh
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=..., metrics=[...])
        build_before_tracing(model, x, y)
        optimizer_start = snapshot(model.optimizer.variables)
    else:
        model, optimizer_start = kept
        restart(model, start, optimizer_start)
    model.fit(...)                             # the second time: no tracing
    models.keep(key, model, optimizer_start)
```
"""

from __future__ import annotations

import collections
import math

import numpy as np

__all__ = ["MODELS", "Kept", "TracedModels", "assign", "build_before_tracing", "restart",
           "seed_model_building", "snapshot"]

Kept = collections.namedtuple("Kept", ["model", "optimizer_start"])
"""A kept compiled model and its optimizer's variables as a fresh optimizer holds them."""


class TracedModels:
    """Compiled models of finished trials by key, and fresh models' values by seed.

    Args:
        max_models: the most models kept (least recently used dropped first).
        max_bytes: the most bytes of kept variables (models, optimizers and recorded start
            values, each counted on its own), least recently used dropped first.

    Only the TensorFlow backend reuses models (Keras keeps a model's traced `tf.function`
    until the next `compile`); the caller keeps models only there.
    """

    def __init__(self, max_models: int = 16, max_bytes: int = 256 * 2**20):
        self.max_models = int(max_models)
        self.max_bytes = int(max_bytes)
        self._kept: collections.OrderedDict = collections.OrderedDict()
        self._starts: collections.OrderedDict = collections.OrderedDict()
        self._loaded: collections.OrderedDict = collections.OrderedDict()
        self.hits = 0
        """How many trials were given a kept model (for tests and benchmarks)."""

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        """Drop every kept model and recorded start: the next trials build their own."""
        self._kept.clear()
        self._starts.clear()
        self._loaded.clear()

    def take(self, key) -> Kept | None:
        """The model kept under `key` and its optimizer's start, or None; it is no longer
        kept until given back with `keep` (a model is never shared by two running trials)."""
        kept = self._kept.pop(key, None)
        if kept is not None:
            self.hits += 1
        return kept

    def keep(self, key, model, optimizer_start: list) -> None:
        """Keep a compiled model whose training ended well, for a later trial of `key`."""
        self._kept[key] = Kept(model, optimizer_start)
        self._kept.move_to_end(key)
        self._bound(self._kept, max_items=self.max_models)

    def start(self, architecture, seed: int) -> list | None:
        """The values recorded by `remember` for this architecture and seed, or None."""
        values = self._starts.get((architecture, int(seed)))
        if values is not None:
            self._starts.move_to_end((architecture, int(seed)))
        return values

    def remember(self, architecture, seed: int, model) -> list:
        """Record the values of `model`, freshly built for `seed` (after
        `seed_model_building(seed)`, nothing loaded yet); return them (`snapshot`)."""
        values = snapshot(model.variables)
        self._starts[(architecture, int(seed))] = values
        self._bound(self._starts, max_items=None)
        return values

    def transferred(self, source, blocks) -> list | None:
        """The values `remember_transferred` recorded for every block in `blocks` from
        `source` (the source's key: the architecture and a digest of the block file), or
        None if any is missing."""
        values = [self._loaded.get((source, block)) for block in blocks]
        return None if any(v is None for v in values) else [pair for v in values for pair in v]

    def remember_transferred(self, source, model, blocks) -> None:
        """Record the values of `blocks` in `model` just after `load_blocks` loaded them from
        `source`: the same load into a model of the same architecture assigns exactly
        these."""
        for block in blocks:
            self._loaded[(source, block)] = snapshot(model.blocks[block].variables)
        self._bound(self._loaded, max_items=None)

    def _bound(self, entries: collections.OrderedDict, max_items: int | None) -> None:
        while entries and ((max_items is not None and len(entries) > max_items)
                           or self._nbytes() > self.max_bytes):
            entries.popitem(last=False)

    def _nbytes(self) -> int:
        kept = sum(_nbytes(k.model.variables) + _nbytes(k.model.optimizer.variables)
                   for k in self._kept.values())
        return kept + sum(sum(value.nbytes for _, value in values)
                          for entries in (self._starts, self._loaded)
                          for values in entries.values())


MODELS = TracedModels()
"""The models kept by this process (a Ray worker's, across the trials Tune gives it)."""


def seed_model_building(seed: int) -> None:
    """Seed what building a model draws from, as `keras.utils.set_random_seed(seed)` does in
    a new process, without clearing TensorFlow's kernel caches.

    Keras 3 draws each initializer's and each layer seed generator's seed from Python's
    `random` (`keras.random.SeedGenerator`, initializers with `seed=None`), `keras.random`
    ops without a seed from its global seed generator, and its TensorFlow ops are stateless.
    On TensorFlow this sets those (Python's and NumPy's generators, Keras's global seed and
    seed generator) but not TensorFlow's global seed, which only TensorFlow's stateful random
    ops read (the built-in models and the trial's pipeline use none) and whose setting
    (`tf.random.set_seed`, as `keras.backend.clear_session`) clears the kernel caches: every
    `tf.function` a worker keeps is then instantiated again at its next call. A model built
    after it holds the values one built after `set_random_seed(seed)` in a new process holds
    (`test_sweep_reuse` compares them bit for bit). Other backends: `clear_session()` and
    `set_random_seed(seed)`.

    Example:

    >>> seed_model_building(0)
    >>> model = build_model("seed_cnn", (8, 8, 1), 10)
    """
    import random

    import keras

    seed = int(seed)
    if keras.backend.backend() != "tensorflow":
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def snapshot(variables) -> list:
    """`(path, value)` of each variable, the values copied to NumPy."""
    return [(v.path, np.array(v.numpy(), copy=True)) for v in variables]


def assign(variables, values: list, what: str = "model") -> None:
    """Assign `snapshot` values to `variables`, position by position.

    The two must correspond: at each position the same shape, dtype and path up to Keras's
    automatic-name counters (a model built again in the same Keras session has
    `seed_generator_4/seed_generator_state` where the first had
    `seed_generator/seed_generator_state`; the same builder gives the same order).

    Raises:
        RuntimeError: they differ in number, shape, dtype or path.
    """
    variables = list(variables)
    described = [(_uncounted(v.path), tuple(v.shape), np.dtype(v.dtype).str)
                 for v in variables]
    expected = [(_uncounted(path), value.shape, value.dtype.str) for path, value in values]
    if described != expected:
        raise RuntimeError(f"Cannot restart a kept model: its {what} variables "
                           f"{described} differ from the new trial's {expected}.")
    for variable, (_, value) in zip(variables, values, strict=True):
        variable.assign(value)


def _uncounted(path: str) -> str:
    from keras_blockreuse.sources.structure import strip_counter

    return "/".join(strip_counter(step) for step in path.split("/"))


def restart(model, start: list, optimizer_start: list) -> None:
    """Give a kept compiled model the state a fresh model of the new trial starts with.

    Args:
        model: a compiled model that has trained.
        start: `snapshot` of the model's variables as freshly built for the new trial's seed
            (`TracedModels.remember`).
        optimizer_start: `snapshot` of its optimizer's variables as a fresh optimizer held
            them (after `optimizer.build`, before the first step).

    Raises:
        RuntimeError: the variables do not correspond to the snapshots one to one in path,
            shape and dtype (the key should have kept them apart).
    """
    assign(model.variables, start, "model")
    assign(model.optimizer.variables, optimizer_start, "optimizer")
    model.reset_metrics()


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


def _nbytes(variables) -> int:
    return int(sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))
