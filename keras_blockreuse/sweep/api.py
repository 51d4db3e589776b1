"""`which_blocks`: the sweep on the user's own model, pretrained weights and data, in one call.

Example:

```python
from keras_blockreuse.sweep import which_blocks

result = which_blocks(build_model, source="pretrained.blocks.h5",
                      train=(x_train, y_train), validation=(x_val, y_val),
                      test=(x_test, y_test), seeds=3, epochs=20, out="runs/my_sweep")
print(result.best)
result.summary            # one row per policy, ranked by validation (pandas)
```
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from keras_blockreuse.sweep.inputs import UserInputs
from keras_blockreuse.sweep.models import Recipe, resolve_builder
from keras_blockreuse.sweep.options import SweepSettings
from keras_blockreuse.sweep.run import SweepResult, run_sweep
from keras_blockreuse.sweep.user_data import from_arrays

__all__ = ["which_blocks"]


def which_blocks(
    build_model: Callable[..., Any],
    source,
    train,
    validation,
    test=None,
    *,
    blocks=None,
    only: Sequence[str] | None = None,
    strategy: str | Sequence[str] = "surgical,prefix",
    seeds: int = 3,
    epochs: int = 20,
    batch_size: int = 32,
    optimizer: Any = "adam",
    learning_rate: float = 1e-3,
    loss: Any = "sparse_categorical_crossentropy",
    metrics: Sequence[Any] = ("accuracy",),
    mode: str | None = None,
    out: str | os.PathLike | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float | None = None,
    scheduler: str = "fifo",
    resume: bool = False,
    seed: int = 0,
    print_fn: Callable[[str], None] = print,
) -> SweepResult:
    """Which blocks of a pretrained model to transfer, frozen or tuned, for the user's data.

    Runs every block policy of the chosen strategies (each block `reinit`, `frozen` or
    `tuned`; always with the from-scratch baseline) for `seeds` seeds as Ray Tune trials, and
    writes the report (results.csv, summary.csv, results.json, report.md, plot.png) to `out`.
    Before any trial runs, the model is built once, the source is snapshotted to
    `out/source.blocks.h5` grouped by the model's block rule, and the blocks that cannot be
    transferred (missing from the source, or of other shapes: a head with another class
    count) are fixed to `reinit` in every configuration; the report lists them with why.

    A head of the same shape is swept like any block: when the source was trained on other
    classes than the target's, leave it out with `only=`.

    Args:
        build_model: returns the target `keras.Model`, its head sized for the target task;
            called inside each trial after the trial's seed is set (with `input_shape=` and
            `num_classes=` when it takes them). It travels to the workers by value, so a
            function of a script, a test or a notebook works.
        source: the pretrained weights: a `.blocks.h5`, `.weights.h5`, `.keras` or legacy
            Keras 2 `.h5` path, or a `keras.Model` (its weights are copied once, now).
        train, validation: `(x, y)` arrays or finite `tf.data.Dataset`s of `(x, y)` (read
            once into arrays, which go to the trials through Ray's object store once).
            Validation is required; Tune and the greedy strategy choose on it.
        test: like `train`; reported. None: a seeded, stratified fifth of `train`.
        blocks: the model's block rule (see `BlockModel`); None: a `BlockModel`'s own rule,
            else the naming convention or the detected keras.applications preset.
        only: the blocks whose policy is swept (default every transferable one).
        strategy: `prefix`, `surgical`, `exhaustive`, `greedy`, or several, comma-separated.
        seeds, epochs, batch_size: trials per configuration, and their training. The
            verdict compares policies over 2 or more finished seeds each: `seeds=1` runs (a
            first look), with a `UserWarning` and a printed line before any training that it
            gives no verdict.
        optimizer: a Keras optimizer name (built with `learning_rate`) or an optimizer (a
            fresh copy per trial, with its own learning rate).
        loss, metrics: for `compile`; the first metric ranks the policies.
        mode: `"max"` or `"min"` for the first metric; None: known from its name
            (accuracy, auc: max; mae, mse: min), else an error asks for it.
        out: the output folder (default `runs/which_blocks/<timestamp>`).
        address, cpus_per_trial, gpus_per_trial, scheduler, resume: as the command line's
            `--address`, `--cpus-per-trial`, `--gpus-per-trial`, `--scheduler`, `--resume`
            (resume needs the same arguments again).
        seed: fixes the splits of parts not given.
        print_fn: where progress lines go.

    Returns:
        A `SweepResult`: `best` (the closing line), `summary` and `trials` (pandas
        DataFrames), `blocks` (swept), `fixed` (block -> why it is reinit), `metric`, `out`,
        `paths`.

    Raises:
        SweepError, DataError: invalid settings, data, model or source, before any trial.
    """
    from keras_blockreuse.sweep.options import strategy_names

    data = from_arrays(train, validation, test, seed=seed,
                       description=f"data: {_kind(train)} given to which_blocks")
    if _is_sparse(loss):
        data = data.as_classes()
    outputs = data.target_classes if _is_sparse(loss) else data.label_width
    if outputs is None:
        from keras_blockreuse.sweep.space import SweepError

        raise SweepError(f"loss {loss!r} needs integer class labels; {data.not_classes()}.")
    build = resolve_builder(build_model, data.input_shape, outputs)
    recipe = Recipe(build, blocks=blocks, loss=loss, metrics=tuple(metrics),
                    optimizer=optimizer)
    name = getattr(build_model, "__qualname__", type(build_model).__name__)
    inputs = UserInputs(data, recipe, source, mode=mode, description=name)
    settings = SweepSettings(
        api=True, model=name, data=_kind(train), source=_describe_source(source),
        loss=_name(loss),
        strategy=",".join(strategy_names(strategy)), blocks=list(only) if only else None,
        seeds=seeds, epochs=epochs, batch_size=batch_size, lr=learning_rate, data_seed=seed,
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, scheduler=scheduler,
        address=address, out=os.fspath(out) if out is not None else None, resume=resume,
        dataset=_kind(train), task="user", shots=None)
    return run_sweep(settings, print_fn=print_fn, user=inputs)


def _is_sparse(loss) -> bool:
    return "sparse" in _name(loss).lower()


def _name(obj) -> str:
    if isinstance(obj, str):
        return obj
    return getattr(obj, "name", None) or type(obj).__name__


def _kind(part) -> str:
    return "tf.data.Dataset" if hasattr(part, "element_spec") else "arrays"


def _describe_source(source) -> str:
    import keras

    if isinstance(source, keras.Model):
        return f"keras.Model {source.name!r}"
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)
