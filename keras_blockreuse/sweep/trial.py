"""Training inside a sweep: the source model, and one trial (a block policy and a seed).

`train_trial` is the Ray Tune function trainable. It receives its configuration (policy key,
seed, hyperparameters) from Tune, and the task's arrays and the source model's block file from
`tune.with_parameters`. It builds the target model, loads the transferred blocks with
`load_blocks`, freezes the frozen ones, trains, and calls `ray.tune.report` once per epoch with
training and validation metrics (the last report adds the test accuracy). It never calls
`ray.train.*`, which raises inside Tune trials since Ray 2.51. In a process Tune reuses for
several trials, a trial of the same architecture, compile settings and frozen blocks as an
earlier one trains that trial's compiled model, set to the values a model freshly built for
its seed holds (recorded once per seed and process) and to the values `load_blocks` assigned
from the same source before, so TensorFlow does not trace the steps again and nothing is
built (`keras_blockreuse.sweep.reuse`); the metrics are bit-identical to the same trial's in
a new process (each epoch's order depends only on the seed and the epoch: `fit`).

Example (without Ray: `tune.report` replaced by a list):

```python
from ray import tune
from keras_blockreuse.sweep.data import make_task
from keras_blockreuse.sweep.trial import train_source, train_trial

data = make_task()
source, _ = train_source(data, "seed_cnn", epochs=2)
reports = []
tune.report = reports.append
train_trial({"policy": "block_1=tuned", "seed": 0, "epochs": 2}, data=data, source=source)
reports[-1]["test_accuracy"]
```
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time

import numpy as np

from keras_blockreuse.sweep.reuse import (
    MODELS,
    assign,
    build_before_tracing,
    restart,
    seed_model_building,
    snapshot,
)

_BLOCKS: dict = {}
"""The block names of each architecture this process has built, by (model, shape, classes)."""

TRIAL_DEFAULTS = {"model": "seed_cnn", "epochs": 40, "batch_size": 32, "lr": 1e-3, "cpus": 1}
"""Trial settings used when the configuration leaves them out."""


def configure_tensorflow(cpus: int | None = None) -> None:
    """Limit TensorFlow to `cpus` threads and turn on GPU memory growth.

    Must run before TensorFlow executes anything in the process (Ray gives no CPU isolation,
    and TensorFlow otherwise maps nearly all GPU memory, which breaks fractional GPUs). Later
    calls, or other backends, leave the settings as they are.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        if cpus:
            tf.config.threading.set_intra_op_parallelism_threads(int(cpus))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(cpus)))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # TensorFlow is already initialised in this process.


def train_trial(config: dict, data=None, source: bytes | str | None = None,
                recipe=None) -> dict:
    """Ray Tune function trainable: train the target model under one block policy.

    Args:
        config: `policy` (a key from `space.encode_policy`), `seed`, and optionally `model`,
            `epochs`, `batch_size`, `lr`, `cpus` (defaults in `TRIAL_DEFAULTS`), and the
            training policy's `training_policy`, `policy_epochs`, `ft_factor`, `block_lr`
            (`keras_blockreuse.sweep.policies.training_callbacks`).
        data: a `keras_blockreuse.sweep.data.TransferData`, or the user's
            `keras_blockreuse.sweep.user_data.TargetData`.
        source: the source model's block file, as bytes or a path. Required unless the policy
            is `scratch`.
        recipe: the user's target model and training (`keras_blockreuse.sweep.models.Recipe`,
            or its `pack`ed bytes); None: the built-in model `config["model"]`, trained with
            Adam on the cross-entropy, scored by accuracy. With a recipe each epoch reports
            the compiled metrics as `NAME`, `val_NAME`, and the last also `test_NAME`.

    Returns:
        The last metrics reported (also what a direct call in a test inspects).

    Raises:
        SweepError: the policy names a block the model lacks; BlockMismatchError: the source
            blocks do not fit.
    """
    if recipe is not None:
        return _recipe_trial(config, data, source, recipe)
    import keras
    from ray import tune

    from keras_blockreuse.sweep.policies import training_callbacks, trains_as_compiled
    from keras_blockreuse.sweep.space import SweepError, decode_policy
    from keras_blockreuse.sweep.zoo import build_model

    settings = {**TRIAL_DEFAULTS, **config}
    configure_tensorflow(settings["cpus"])
    started, started_at = time.perf_counter(), time.time()
    seed = int(settings["seed"])
    architecture = (settings["model"], tuple(data.input_shape), int(data.target_classes))

    def build(seeded: bool = True):
        # Tune may reuse this process for several trials (reuse_actors): a model whose values
        # are this trial's is built from reseeded generators, as in a new process (on
        # TensorFlow without clearing the kernel caches the kept models' steps use:
        # `seed_model_building`). Unseeded: a model only for its structure, its values then
        # set.
        if seeded:
            seed_model_building(seed)
        return build_model(settings["model"], data.input_shape, data.target_classes,
                           name="target")

    # A process's first trial of an architecture builds its model; so does a trial that the
    # process has no kept model for (`keras_blockreuse.sweep.reuse`).
    blocks = _BLOCKS.get(architecture)
    fresh = None
    if blocks is None:
        fresh = build()
        MODELS.remember(architecture, seed, fresh)
        blocks = _BLOCKS[architecture] = list(fresh.blocks)
    try:
        policy = decode_policy(settings["policy"], blocks)
    except SweepError as error:
        raise SweepError(f"Policy {settings['policy']!r} does not fit model "
                         f"{settings['model']!r} (blocks {blocks}): {error}") from None
    transferred = [b for b in blocks if policy[b] != "reinit"]
    frozen = [b for b in blocks if policy[b] == "frozen"]
    if transferred and source is None:
        raise SweepError(f"Policy {settings['policy']!r} transfers blocks but no source "
                         "block file was given.")
    # A kept model trains another trial of its key: the same architecture, trainable set and
    # compile settings (Adam at this learning rate, the cross-entropy, accuracy), with no
    # schedule changing the trainable set or the optimizer during `fit`.
    keep = keras.backend.backend() == "tensorflow" and trains_as_compiled(policy, settings)
    key = (architecture, tuple(frozen), float(settings["lr"])) if keep else None
    kept = MODELS.take(key) if keep and fresh is None else None
    if kept is not None:
        model, optimizer_start = kept
        start = MODELS.start(architecture, seed)
        if start is None:
            start = MODELS.remember(architecture, seed, build())
        restart(model, start, optimizer_start)
        _load(model, source, architecture, transferred)
        schedule = []
    else:
        start = MODELS.start(architecture, seed) if fresh is None and keep else None
        if fresh is not None:
            model = fresh
        elif start is None:  # (other backends' `fit` shuffles with NumPy's global seed)
            model = build()
            MODELS.remember(architecture, seed, model)
        else:
            model = build(seeded=False)
            assign(model.variables, start)
        if transferred:
            _load(model, source, architecture, transferred)
            model.freeze_blocks(frozen)
        model.compile(
            optimizer=keras.optimizers.Adam(float(settings["lr"])),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        schedule = training_callbacks(model, policy, settings)  # --policy, --block-lr
        if keep:
            build_before_tracing(model, data.x_train, data.y_train)
            optimizer_start = snapshot(model.optimizer.variables)
    place = where()
    epochs = int(settings["epochs"])
    last: dict = {}

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            val_loss, val_accuracy = evaluate(self.model, data.x_val, data.y_val)
            metrics = {
                "epoch": epoch + 1,
                "loss": float(logs.get("loss", math.nan)),
                "accuracy": float(logs.get("accuracy", math.nan)),
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
            }
            if epoch + 1 == epochs:
                test_loss, test_accuracy = evaluate(self.model, data.x_test, data.y_test)
                metrics.update(test_loss=test_loss, test_accuracy=test_accuracy,
                               train_seconds=time.perf_counter() - started,
                               started_at=started_at)
            metrics.update(place, policy=settings["policy"], seed=seed)
            last.clear()
            last.update(metrics)
            tune.report(metrics)

    fit(model, data.x_train, data.y_train, epochs, int(settings["batch_size"]), seed,
        callbacks=[*schedule, Report()])
    if keep:  # (a model whose trial raised is not kept: its state is unknown)
        MODELS.keep(key, model, optimizer_start)
    return dict(last)


def _load(model, source, architecture, transferred: list) -> None:
    """`model.load_blocks(source, only=transferred)`; in a process that has loaded these
    blocks from the same source bytes into this architecture before, the values that load
    assigned, assigned again (`TracedModels.transferred`)."""
    if not transferred:
        return
    import xxhash

    key = None
    if isinstance(source, bytes):
        key = (architecture, xxhash.xxh3_128_hexdigest(source))
        values = MODELS.transferred(key, transferred)
        if values is not None:
            assign([v for b in transferred for v in model.blocks[b].variables], values,
                   "transferred blocks'")
            return
    with block_file(source) as path:
        model.load_blocks(path, only=transferred)
    if key is not None:
        MODELS.remember_transferred(key, model, transferred)


def _recipe_trial(config: dict, data, source, recipe) -> dict:
    """`train_trial` for the user's model: the recipe's model, loss, metrics and optimizer;
    validation through `fit`, test after it."""
    import keras
    from ray import tune

    from keras_blockreuse.sweep.models import unpack
    from keras_blockreuse.sweep.policies import training_callbacks
    from keras_blockreuse.sweep.space import SweepError, decode_policy

    recipe = unpack(recipe)
    settings = {**TRIAL_DEFAULTS, **config}
    configure_tensorflow(settings["cpus"])
    started, started_at = time.perf_counter(), time.time()
    seed = int(settings["seed"])
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = recipe.target_model()
    blocks = list(model.blocks)
    try:
        policy = decode_policy(settings["policy"], blocks)
    except SweepError as error:
        raise SweepError(f"Policy {settings['policy']!r} does not fit the model (blocks "
                         f"{blocks}): {error}") from None
    transferred = [b for b in blocks if policy[b] != "reinit"]
    if transferred:
        if source is None:
            raise SweepError(f"Policy {settings['policy']!r} transfers blocks but no source "
                             "block file was given.")
        with block_file(source) as path:
            model.load_blocks(path, only=transferred)
        model.freeze_blocks([b for b in blocks if policy[b] == "frozen"])
    recipe.compile(model, float(settings["lr"]))
    schedule = training_callbacks(model, policy, settings)  # --policy, --block-lr
    place = {**where(), "policy": settings["policy"], "seed": seed}
    epochs, batch_size = int(settings["epochs"]), int(settings["batch_size"])
    final: dict = {}

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            metrics = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                       **place}
            if epoch + 1 == epochs:
                final.update(metrics)  # reported below, with the test metrics
            else:
                tune.report(metrics)

    fit(model, data.x_train, data.y_train, epochs, batch_size, seed,
        callbacks=[*schedule, Report()],
        validation_data=(data.x_val, data.y_val))
    test = model.evaluate(data.x_test, data.y_test, batch_size=batch_size, verbose=0,
                          return_dict=True)
    final.update({f"test_{k}": float(v) for k, v in test.items()},
                 train_seconds=time.perf_counter() - started, started_at=started_at)
    tune.report(final)
    return dict(final)


def train_source(
    data,
    model: str = "seed_cnn",
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    cpus: int | None = None,
    metadata: dict | None = None,
) -> tuple[bytes, dict]:
    """Train the source model on the source task; return its block file's bytes and metrics.

    Returned as bytes so that it can run in a Ray task on any node (with a GPU) and the driver
    stores it in its cache.

    Example:

    >>> blob, metrics = train_source(make_task(), epochs=1)
    >>> sorted(metrics)
    ['epochs', 'seconds', 'val_accuracy', 'val_loss']
    """
    import keras

    from keras_blockreuse.sweep.zoo import build_model

    configure_tensorflow(cpus)
    started = time.perf_counter()
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(int(seed))
    net = build_model(model, data.input_shape, data.source_classes, name="source")
    net.compile(optimizer=keras.optimizers.Adam(float(lr)),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit(net, data.x_source, data.y_source, int(epochs), int(batch_size), int(seed))
    val_loss, val_accuracy = evaluate(net, data.x_source_val, data.y_source_val)
    metrics = {"epochs": int(epochs), "val_loss": val_loss, "val_accuracy": val_accuracy,
               "seconds": time.perf_counter() - started}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "source.blocks.h5")
        net.save_blocks(path, metadata={**(metadata or {}), "source_metrics": metrics})
        with open(path, "rb") as f:
            blob = f.read()
    return blob, metrics


def fit(model, x, y, epochs: int, batch_size: int, seed: int, callbacks=None,
        validation_data=None) -> None:
    """Train for `epochs` epochs of `ceil(len(x) / batch_size)` shuffled batches.

    On TensorFlow each epoch's order is a permutation drawn by a stateless random op from
    `(seed, epoch)` alone (`tf.random.experimental.stateless_shuffle`, Philox), so the order
    does not depend on TensorFlow's global seed or on what ran before in the process, and a
    trial needs no `tf.random.set_seed` (which clears TensorFlow's kernel caches). The
    batches are gathered from the arrays through one `tf.data` pipeline, so an epoch costs no
    iterator set-up: for the few-shot targets of a sweep this is about 3x faster than
    `fit(x, y)`. The pipeline runs without tf.data's autotuning: it has nothing to tune (no
    parallel map, no prefetch), and with it, deleting the iterator at the end of `fit` waited
    about 1.1 s for the tuning thread in about half the trials. The pipeline is kept for the
    process's next trial on the same arrays (`training_batches`).
    """
    import keras

    steps = math.ceil(len(x) / batch_size)
    if keras.backend.backend() == "tensorflow":
        dataset = training_batches(x, y, epochs, batch_size, seed)
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0,
                  callbacks=callbacks, validation_data=validation_data,
                  validation_batch_size=batch_size if validation_data else None)
    else:
        model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
                  callbacks=callbacks, validation_data=validation_data)


_PIPELINE: list = []
"""The last pipeline `training_batches` built in this process: [(key, dataset, seed variable)]."""


def training_batches(x, y, epochs: int, batch_size: int, seed: int):
    """`fit`'s tf.data pipeline: `epochs` epochs of batches of `(x, y)`, each epoch in the
    order `stateless_shuffle` draws from `(seed, epoch)`.

    Tracing the pipeline's functions costs about 40 ms, so the last pipeline is kept and
    used again for the same arrays (compared by shape, dtype and an xxh3-128 digest of their
    bytes), epochs and batch size; the seed is a variable it reads as each epoch begins.
    """
    import tensorflow as tf
    import xxhash

    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    key = (x.shape, x.dtype.str, y.shape, y.dtype.str, int(epochs), int(batch_size),
           xxhash.xxh3_128_hexdigest(memoryview(x).cast("B")),
           xxhash.xxh3_128_hexdigest(memoryview(y).cast("B")))
    if not _PIPELINE or _PIPELINE[0][0] != key:
        n = len(x)
        features, labels = tf.constant(x), tf.constant(y)
        seed_variable = tf.Variable(0, dtype=tf.int64, trainable=False)

        def epoch_order(epoch):
            seeds = tf.stack([seed_variable.read_value(), epoch])
            order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=seeds,
                                                             alg="philox")
            return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

        dataset = (
            tf.data.Dataset.range(epochs)
            .flat_map(epoch_order)
            .map(lambda i: (tf.gather(features, i), tf.gather(labels, i)))
        )
        options = tf.data.Options()
        options.autotune.enabled = False
        _PIPELINE[:] = [(key, dataset.with_options(options), seed_variable)]
    _, dataset, seed_variable = _PIPELINE[0]
    seed_variable.assign(int(seed))
    return dataset


def evaluate(model, x, y, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a softmax classifier on `(x, y)`."""
    probabilities = np.concatenate([
        np.asarray(model.predict_on_batch(x[i: i + batch_size]))
        for i in range(0, len(x), batch_size)
    ])
    picked = probabilities[np.arange(len(y)), y]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y))
    return loss, accuracy


def where() -> dict:
    """Where this code runs: node IP and id (under Ray), host name, process id, GPU ids."""
    info = {"hostname": socket.gethostname(), "pid": os.getpid(), "node_ip": "",
            "node_id": "", "gpu_ids": ""}
    try:
        import ray

        if ray.is_initialized():
            info["node_ip"] = ray.util.get_node_ip_address()
            info["node_id"] = ray.get_runtime_context().get_node_id()
            info["gpu_ids"] = ",".join(str(g) for g in ray.get_gpu_ids())
    except Exception:  # Outside Ray, or an older runtime context: the host name says enough.
        pass
    return info


class block_file:
    """A path to the source block file: the given path, the bytes written to a temp file, or
    None when there is no source."""

    def __init__(self, source: bytes | str | os.PathLike | None):
        self.source = source
        self.folder = None

    def __enter__(self) -> str | None:
        if self.source is None or isinstance(self.source, (str, os.PathLike)):
            return None if self.source is None else os.fspath(self.source)
        self.folder = tempfile.TemporaryDirectory()
        path = os.path.join(self.folder.name, "source.blocks.h5")
        with open(path, "wb") as f:
            f.write(self.source)
        return path

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            self.folder.cleanup()
