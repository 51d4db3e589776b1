"""The user's model, data and pretrained weights, checked in the driver before any trial runs.

`UserInputs.prepare` builds the target model once, snapshots the source (any file
`load_blocks` reads, or a live `keras.Model`) to one `.blocks.h5` file grouped by the target's
block rule, and finds the blocks that cannot be transferred: those the source lacks, and
those whose shapes differ (a head with another class count). Those are fixed to `reinit` in
every configuration, with the reason, and the report lists them. It also compiles the model
with the recipe's loss and metrics and evaluates it on two validation samples, so that a loss
that does not fit the labels fails here, once, with a clear message, and so that the metric
names the trials will report are known.

`from_settings` builds the inputs of the command line (`--model`, `--data`, `--source`,
`--loss`, `--metric`); `keras_blockreuse.sweep.which_blocks` builds them from Python objects.

Example:

```python
inputs = UserInputs(data, Recipe(build), source="pretrained.blocks.h5")
inputs.prepare()
inputs.blocks, inputs.fixed        # (['block_1', 'block_2'], {'head': 'shapes differ ...'})
```
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import shutil
import tempfile
import warnings
from typing import Any

import numpy as np

from keras_blockreuse.sweep.models import Recipe
from keras_blockreuse.sweep.options import SweepError, metric_direction, model_kind

SOURCE_FILE = "source.blocks.h5"
__all__ = ["SOURCE_FILE", "UserInputs", "from_settings"]


@dataclasses.dataclass
class UserInputs:
    """What the sweep needs from the user, and what `prepare` finds out about it.

    Attributes:
        data: the target data (`user_data.TargetData`, or a built-in task's target).
        recipe: the target model and its training (`models.Recipe`).
        source: the pretrained weights: a path `load_blocks` reads, or a `keras.Model`.
        mode: `"max"` or `"min"` for the first metric; None: known from its name.
        description: how the model was given (for the report).
    """

    data: Any
    recipe: Recipe
    source: Any
    mode: str | None = None
    description: str = ""
    metric: str = ""
    metric_keys: tuple = ()
    blocks: list = dataclasses.field(default_factory=list)
    fixed: dict = dataclasses.field(default_factory=dict)
    order: list = dataclasses.field(default_factory=list)
    """Every block of the model, in the order it computes them."""
    packed: bytes = b""
    snapshot: str = ""
    caveats: list = dataclasses.field(default_factory=list)
    model_caveats: list = dataclasses.field(default_factory=list)
    """What the sweep cannot vary in the model itself (blocks that start from fixed values)."""
    source_info: str = ""
    model_info: str = ""
    training_info: str = ""
    trained_as: dict = dataclasses.field(default_factory=dict)
    """What every trial builds and trains, in words (`model`, `optimizer`, `loss`, `metrics`,
    `mode`): a resumed sweep compares it with the one it was started with."""

    def prepare(self, existing_snapshot: str | None = None) -> UserInputs:
        """Build the model, snapshot the source, find fixed blocks and metric names.

        Args:
            existing_snapshot: a snapshot already taken (a resumed sweep's), used as is.

        Raises:
            SweepError: the model does not fit the data, the source cannot be read, shares
                no block with the model, or the loss and metrics do not fit the labels.
        """
        import keras

        from keras_blockreuse import read_blocks
        from keras_blockreuse.report import format_bytes
        from keras_blockreuse.sweep.models import pack

        keras.backend.clear_session()
        try:
            model = self.recipe.target_model()
        except SweepError:
            raise
        except (ValueError, TypeError) as e:  # (Keras's shape errors, a builder's own)
            shape = tuple(self.data.input_shape)
            channels = (f" An image model takes a channel axis: inputs of shape (N, "
                        f"{', '.join(map(str, shape))}, 1) for greyscale images."
                        if len(shape) == 2 else "")
            raise SweepError(
                f"Building the model failed with input_shape={shape}, the shape of one input "
                f"of the data (its arrays' shape without the first axis): "
                f"{type(e).__name__}: {e}{channels}") from e
        self._check_inputs(model)
        if existing_snapshot and os.path.isfile(existing_snapshot):
            self._refuse_another_source(model, existing_snapshot)
            self.snapshot = existing_snapshot
        else:
            self.snapshot = self._take_snapshot(model)
        info = read_blocks(self.snapshot)
        built = {id(v): np.array(v.numpy(), copy=True)  # before the source's are loaded
                 for v in model.weights}
        self.blocks, self.fixed, self.caveats = _transferable(model, self.snapshot,
                                                              list(info.blocks))
        _refuse_pretrained_builder(model, self.blocks, built)
        self.order = list(model.blocks)
        self._find_metrics(model)
        self.model_caveats = (_fixed_start(model, self.recipe, built) + self._extra_outputs(model)
                              + _frozen_as_built(model, self.blocks))
        self.packed = pack(self.recipe)
        self.source_info = (f"{self._source_name()}, snapshotted to {SOURCE_FILE} "
                            f"({len(info.blocks)} blocks, {format_bytes(info.nbytes)})")
        self.model_info = (f"{self.description or model.name}: {len(model.blocks)} blocks, "
                           f"{model.count_params():,} parameters, input {self.data.input_shape}")
        loss = self.recipe.loss if isinstance(self.recipe.loss, str) else type(
            self.recipe.loss).__name__
        self.training_info = (f"loss {loss}; metrics {', '.join(self.metric_keys)}; "
                              f"{self.metric} ranks the policies ({self.mode})")
        self.trained_as = {
            "model": _structure(model), "optimizer": _described(self.recipe.optimizer),
            "loss": _described(self.recipe.loss),
            "metrics": ", ".join(_described(m) for m in self.recipe.metrics),
            "mode": str(self.mode)}
        keras.backend.clear_session()
        return self

    def source_bytes(self) -> bytes:
        with open(self.snapshot, "rb") as f:
            return f.read()

    def keep(self, out: str) -> str:
        """Move the snapshot into the sweep's folder (once the sweep is valid)."""
        target = os.path.join(out, SOURCE_FILE)
        if os.path.abspath(self.snapshot) != os.path.abspath(target):
            shutil.move(self.snapshot, target)
            shutil.rmtree(os.path.dirname(self.snapshot), ignore_errors=True)
            self.snapshot = target
        return target

    def swept_blocks(self, only=None, smoke: bool = False) -> tuple[list[str], dict[str, str]]:
        """The blocks to sweep (`only`, else every transferable one; the first with `smoke`)
        and every other block with the reason it is reinit."""
        fixed = dict(self.fixed)
        if only is None:
            chosen = self.blocks[:1] if smoke else list(self.blocks)
            unchosen = "not swept (--smoke sweeps the first block)"
        else:
            every = self.blocks + list(self.fixed)
            # names or globs (`block_*`), as load_blocks' only= takes them
            matches = {p: [b for b in every if fnmatch.fnmatchcase(b, p)] for p in only}
            unknown = [p for p, found in matches.items() if not found]
            if unknown:
                raise SweepError(f"Unknown block {', '.join(map(repr, unknown))}. The model's "
                                 f"blocks are: {', '.join(every)}.")
            only = [b for found in matches.values() for b in found]
            refused = {b: self.fixed[b] for b in only if b in self.fixed}
            if refused:
                raise SweepError("Cannot sweep " + "; ".join(
                    f"{b}: {why}" for b, why in refused.items()) + ". Leave them out of the "
                    "swept blocks (they are always reinit).")
            chosen = [b for b in self.blocks if b in only]
            unchosen = "not among the swept blocks"
        fixed.update({b: unchosen for b in self.blocks if b not in chosen})
        return chosen, fixed

    def _check_inputs(self, model) -> None:
        if len(model.inputs) != 1:
            raise SweepError(f"The model has {len(model.inputs)} inputs; the sweep feeds one "
                             "array of inputs.")
        expected = tuple(model.inputs[0].shape[1:])
        given = tuple(self.data.input_shape)
        if len(expected) != len(given) or any(
                e is not None and e != g for e, g in zip(expected, given, strict=True)):
            raise SweepError(f"The model expects inputs of shape {expected} but the data has "
                             f"{given}. Build the model for the data (or resize the images: "
                             "--image-size / image_size).")

    def _extra_outputs(self, model) -> list[str]:
        """A caveat for a classifier with more outputs than the labels have classes (a
        builder that does not take `num_classes=`): those outputs are never a label."""
        classes = getattr(self.data, "target_classes", None)
        loss = self.recipe.loss if isinstance(self.recipe.loss, str) else type(
            self.recipe.loss).__name__
        units = model.outputs[0].shape[-1] if len(model.outputs) == 1 else None
        if classes is None or "sparse" not in loss.lower() or not units or units <= classes:
            return []
        return [f"the model has {units} outputs, and the labels {classes} classes (0.."
                f"{classes - 1}): {units - classes} outputs are never a label (does its "
                "builder take num_classes=?), and a head of the source's shape is transferred "
                "like any block, the source's classes standing for the target's."]

    def _source_name(self) -> str:
        import keras

        if isinstance(self.source, keras.Model):
            return f"keras.Model {self.source.name!r}"
        return str(self.source)

    def _take_snapshot(self, model) -> str:
        import keras

        from keras_blockreuse.convert import convert
        from keras_blockreuse.errors import BlockFileError, BlockMismatchError

        source = self.source
        if not isinstance(source, keras.Model):
            if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
                raise SweepError(f"source: no such file or folder: {os.fspath(source)!r} "
                                 "(expected the pretrained weights: a file load_blocks reads, "
                                 "or a keras.Model).")
            if not isinstance(source, (str, os.PathLike)) or not os.path.isfile(source):
                raise SweepError(f"source: expected a weights file load_blocks reads or a "
                                 f"keras.Model, received {source!r}.")
            source = os.fspath(source)
        own_rule = getattr(source, "_block_rule", None) is not None
        rule = None if own_rule else getattr(model, "_block_rule", None)
        folder = tempfile.mkdtemp(prefix="kbr-source-")
        path = os.path.join(folder, SOURCE_FILE)
        try:
            convert(source, path, blocks=rule, metadata={"sweep_source": self._source_name()})
        except (BlockFileError, BlockMismatchError, ValueError, TypeError, OSError) as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise SweepError(f"source {self._source_name()} could not be read into blocks: "
                             f"{str(error).splitlines()[0]}") from error
        return path

    def _refuse_another_source(self, model, existing: str) -> None:
        """A resumed sweep continues with the source it was started with: refuses a source
        whose blocks hold other values (compared by the snapshots' checksums)."""
        from keras_blockreuse import read_blocks

        fresh = self._take_snapshot(model)
        try:
            then, now = read_blocks(existing).blocks, read_blocks(fresh).blocks
        finally:
            shutil.rmtree(os.path.dirname(fresh), ignore_errors=True)
        changed = [name for name in then if name not in now
                   or now[name].data_checksum != then[name].data_checksum]
        if changed or set(now) - set(then):
            raise SweepError(
                f"resume continues the sweep in {os.path.dirname(existing)} with the source it "
                f"was started with, but the source given now, {self._source_name()}, holds "
                f"other values in blocks {changed or sorted(set(now) - set(then))}. Start a "
                "new sweep in another folder (out=) to sweep this source.")

    def _find_metrics(self, model) -> None:
        data = self.data
        x, y, checked = data.x_val[:2], data.y_val[:2], "2 validation samples"
        top = getattr(data, "target_classes", None)
        if top is not None:  # and one of the largest class: a head with fewer outputs fails
            for name, xs, ys in (("train", data.x_train, data.y_train),
                                 ("validation", data.x_val, data.y_val),
                                 ("test", data.x_test, data.y_test)):
                if len(ys) and int(ys.max()) == top - 1:
                    i = int(np.argmax(ys.reshape(len(ys), -1)[:, 0]))
                    x, y = np.concatenate([x, xs[i:i + 1]]), np.concatenate([y, ys[i:i + 1]])
                    checked += f" and {name} sample {i}, of the largest class label ({top - 1})"
                    break
        try:
            self.recipe.compile(model, 1e-3)
            scores = model.evaluate(x, y, verbose=0, return_dict=True)
        except Exception as error:  # the loss, metrics or labels do not fit: say so, once
            text = _without_traceback(str(error))[:400]
            raise SweepError(f"The model, loss and metrics do not fit the labels (checked on "
                             f"{checked}, labels of shape {data.y_val.shape[1:]} and "
                             f"dtype {data.y_val.dtype}): {type(error).__name__}: {text}") from None
        keys = [k for k in scores if k != "loss"] + ["loss"]
        self.metric_keys = tuple(keys)
        self.metric = keys[0]
        if self.mode is None and _negated_similarity(self.recipe.metrics, self.metric):
            self.mode = "min"
        if self.mode is None:
            try:
                self.mode = metric_direction(self.metric)[1]
            except SweepError:
                raise SweepError(
                    f"Metric {self.metric!r} ranks the policies, and its direction is not "
                    "known: pass mode='max' (higher is better) or mode='min' (which_blocks), "
                    f"or --metric {self.metric}:max / :min (the command line).") from None
        elif self.mode not in ("max", "min"):
            raise SweepError(f"mode must be 'max' or 'min', received {self.mode!r}.")


def _negated_similarity(metrics, name: str) -> bool:
    """Whether the metric `name` ranking the policies is a Keras loss passed as a metric
    (`keras.losses.CosineSimilarity()`, `keras.losses.cosine_similarity`): logged under the
    name of `keras.metrics.CosineSimilarity`, but the negated cosine (-1 for predictions in
    the labels' direction), so lower is better."""
    import keras

    return any((isinstance(metric, keras.losses.CosineSimilarity) and metric.name == name)
               or (metric is keras.losses.cosine_similarity and name == "cosine_similarity")
               for metric in metrics)


def _without_traceback(text: str) -> str:
    """An error's message without the call stack and node names TensorFlow puts in it
    ("Graph execution error: Detected at node ... File ..."): what is left says what was
    wrong ("Received a label value of 3 which is outside the valid range of [0, 3)")."""
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith(
        ("File ", "Detected at node", "Graph execution error", "[[{{node"))]
    return " ".join(" ".join(kept or lines).split())


def _transferable(model, path: str, source_blocks: list[str]
                  ) -> tuple[list[str], dict, list[str]]:
    """The model's blocks that load from the snapshot, the others with the reason, and what
    the load could not check (`LoadReport.caveats`), said with the sweep's report."""
    from keras_blockreuse.errors import BlockMismatchError

    ok, fixed = [], {}
    for name in model.blocks:
        if name not in source_blocks:
            fixed[name] = "not in the source"
            continue
        try:
            model.load_blocks(path, only=[name])
        except BlockMismatchError as error:
            fixed[name] = "does not fit the source: " + _first_mismatch(str(error))
            continue
        ok.append(name)
    if not ok:
        reasons = [f"{b}: {why}" for b, why in fixed.items()]
        more = f"; and {len(reasons) - 4} more" if len(reasons) > 4 else ""
        raise SweepError(f"The source shares no transferable block with the model: source "
                         f"blocks {source_blocks}, model blocks {list(model.blocks)} ("
                         + "; ".join(reasons[:4]) + more + "). "
                         + (_shifted_names(model, path) or
                            "Check the block rule (blocks=) or the source."))
    # Each block above was asked for by name, which load_blocks takes as the caller's word
    # where automatic names cannot say which layer is which (a layer added before others of
    # its class). The sweep's choice of blocks is not that word: the whole source, asked for
    # by no name, must pair the same way.
    try:
        with warnings.catch_warnings():  # the caveats go to the sweep's report instead
            warnings.simplefilter("ignore", UserWarning)
            report = model.load_blocks(path, on_mismatch="skip")
    except BlockMismatchError as error:
        raise SweepError(
            "The source's blocks cannot be paired with the model's by their names, so no "
            f"trial could say which pretrained values it transfers: {error} The sweep pairs "
            "blocks by name: name the layers in the model (Conv2D(8, 3, name='block_1_0')); "
            "or load the pretrained weights into a model of the target's architecture "
            "yourself (load_blocks(model, source, rename={...})) and pass that model as the "
            "source."
        ) from error
    lacking, unused = report.unpaired
    if lacking and unused:  # "not in the source" would hide that the source has others
        offer = (f"; load_blocks pairs them with rename={report.suggested_rename}: "
                 f"{_FRESH_MODEL} with it, and pass that model as the source"
                 if report.suggested_rename else "")
        for name in lacking:
            if fixed.get(name) == "not in the source":
                fixed[name] = (f"not in the source, whose blocks {unused} pair with no block "
                               f"of the model (renamed, or an automatic name shifted?){offer}")
    return ok, fixed, list(report.caveats)


_FRESH_MODEL = ("load the pretrained weights into a model of the target's architecture "
                "built after keras.backend.clear_session() (so that its automatic names are "
                "those the sweep's trials give)")


def _shifted_names(model, path: str) -> str:
    """Where the source's blocks are the model's under automatic names shifted (the source
    built after other models in its session: `conv2d_8` for `conv2d`), what to do: the sweep
    builds the model afresh in each trial, under a fresh session's names, and pairs blocks by
    name. Where a block does not load whole under that `rename=` (a head for other classes),
    no source without it can say which automatically named block it lacks: naming the
    layers is then the way. `""` where `load_blocks` offers no such `rename=`."""
    from keras_blockreuse.errors import BlockMismatchError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.load_blocks(path, on_mismatch="skip")
    except BlockMismatchError as error:
        rename = error.rename
        if not rename:
            return ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                report = model.load_blocks(path, rename=rename, on_mismatch="skip")
        except BlockMismatchError:
            return ""
        partly = {m.block for m in report.skipped}
        whole = {source: target for source, target in rename.items()
                 if report.loaded.get(target) == source and target not in partly}
        said = ("Its blocks pair one to one with the model's by their places in Keras's "
                "saving walk: the same architecture, its automatic layer names shifted (the "
                "source was built after other models in its session). The sweep builds the "
                "model afresh for each trial, under a fresh session's names, and pairs blocks "
                "by name")
        if len(whole) < len(rename):
            return (
                f"{said}; blocks {sorted(set(rename) - set(whole))} do not fit the model whole "
                "(another task's head?), and a source without them cannot say which of the "
                "model's automatically named blocks it lacks. Name the layers "
                "(Conv2D(8, 3, name='block_1_0')) in the model, and in a model of the source's "
                "architecture into which load_blocks(named, source, rename={...}) loads the "
                "pretrained weights; pass that model as the source.")
        return (
            f"{said}, so give the source the model's names: {_FRESH_MODEL} with "
            f"load_blocks(model, source, rename={whole}), and pass that model as the source. "
            "Or name the layers (Conv2D(8, 3, name='block_1_0')).")
    return ""


def _refuse_pretrained_builder(model, blocks: list[str], built: dict) -> None:
    """Refuses a builder whose model already holds the source's values (it loads the
    pretrained weights, or returns a loaded `.keras` model): its `reinit` blocks and scratch
    would start from them. Found by comparing each transferable block's values as built
    with the values loading the source gave it; values that are one constant (zeros, a
    batch normalisation's fresh ones) say nothing and are not counted. A block the builder
    freezes (every layer `trainable=False`: fixed vectors such as a frozen pretrained
    embedding, which the source also kept as built) is the model's own design, not a loaded
    source: the caveat on blocks of fixed values names it."""
    held = []
    for name in blocks:
        if not any(layer.trainable for layer in model.blocks[name].layers):
            continue
        pairs = [(built[id(v)], v.numpy()) for v in model.blocks[name].variables
                 if id(v) in built]
        if pairs and all(np.array_equal(a, b) for a, b in pairs) and any(
                a.size > 1 and not np.all(a == a.reshape(-1)[0]) for a, _ in pairs):
            held.append(name)
    if held:
        raise SweepError(
            f"The model the builder returns already holds the source's values in blocks "
            f"{held} (a builder that loads the pretrained weights, or returns a loaded .keras "
            f"model): 'reinit' blocks and scratch would start from them, and every policy "
            f"would be compared with transfer, not with training from scratch. Return a "
            f"freshly initialised model (keras.models.clone_model(model) builds one with new "
            f"values); the sweep loads the source itself.")


def _frozen_as_built(model, blocks: list[str]) -> list[str]:
    """A caveat naming the transferable blocks the builder freezes (every layer
    `trainable=False`): the trials freeze what a policy freezes and train the rest as built,
    so no policy trains these, and 'tuned' there is the same training as 'frozen'."""
    frozen = [name for name in blocks
              if not any(layer.trainable for layer in model.blocks[name].layers)]
    if not frozen:
        return []
    return [f"blocks {frozen} are frozen as the builder returns them (trainable=False): no "
            "policy trains them, so 'tuned' there is the same training as 'frozen', and "
            "'reinit' keeps them at their built values, untrained. Leave them trainable in "
            "the builder (each policy freezes what it freezes), or leave them out of the "
            "sweep (only=, --blocks)."]


def _fixed_start(model, recipe: Recipe, built: dict) -> list[str]:
    """A caveat naming the blocks whose values are the same in a second build of the model
    (a builder that loads weights other than the source's, or seeds its initializers):
    there `reinit` and scratch are not a new random initialisation per seed. One-constant
    values (zeros, ones) are not counted."""
    import keras

    keras.backend.clear_session()  # (the same automatic names as the first build)
    again = recipe.target_model()
    same = []
    for name, block in model.blocks.items():
        first = [built.get(id(v)) for v in block.variables]
        second = [v.numpy() for v in again.blocks[name].variables] \
            if name in again.blocks else []
        if (first and len(first) == len(second) and all(
                a is not None and a.shape == b.shape and np.array_equal(a, b)
                for a, b in zip(first, second, strict=True))
                and any(a.size > 1 and not np.all(a == a.reshape(-1)[0]) for a in first)):
            same.append(name)
    if not same:
        return []
    return [f"blocks {same} hold the same values in every build of the model (its builder "
            "loads weights, or seeds their initializers): where they are reinit, scratch "
            "included, they start from those values, not from a new random initialisation "
            "per seed, and the seeds vary only the data order and dropout there."]


def _structure(model) -> str:
    """The model's blocks and weights in words, with a digest of its layers (class, variable
    shapes and dtypes, configuration): equal for models built alike, whatever their values."""
    import hashlib
    import json

    layers = []
    for layer in model._flatten_layers(include_self=False):
        try:
            config = layer.get_config()
        except NotImplementedError:
            config = {}
        layers.append([layer.name, type(layer).__name__, json.dumps(config, sort_keys=True,
                                                                    default=_plain),
                       [[list(v.shape), str(v.dtype)] for v in layer.weights]])
    digest = hashlib.sha256(json.dumps(layers).encode()).hexdigest()[:12]
    return (f"{len(model.blocks)} blocks {list(model.blocks)}, {model.count_params():,} "
            f"parameters, layers digest {digest}")


def _plain(obj) -> str:
    """A value of a layer's configuration that JSON does not take, by name, never by its
    `repr` (`<function f at 0x7f...>` differs between processes)."""
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


def _described(obj) -> str:
    """A loss, metric or optimizer in words: its name, its class and configuration, or for a
    function its module and name (`keras.src.losses.losses.mean_squared_error`)."""
    import json

    if isinstance(obj, str):
        return obj
    if callable(obj) and not hasattr(obj, "get_config"):  # a function: by its name
        return f"{getattr(obj, '__module__', None) or '?'}.{_plain(obj)}"
    try:
        config = json.dumps(obj.get_config(), sort_keys=True, default=_plain)
    except (AttributeError, NotImplementedError, TypeError):
        config = "?"
    return f"{type(obj).__name__}({config})"


def _first_mismatch(text: str) -> str:
    lines = [line.strip(" -") for line in text.splitlines() if line.strip(" -")]
    detail = [line for line in lines if "source" in line and "model" in line and "/" in line]
    return (detail or lines or ["?"])[0][:200]


def from_settings(settings) -> UserInputs | None:
    """The command line's user inputs (`--model`, `--data`, `--source`, `--loss`,
    `--metric`), prepared; None for a built-in task with its trained source."""
    kind = model_kind(settings.model)
    if settings.source is None:
        return None
    from keras_blockreuse.sweep.models import (
        Recipe,
        output_activation,
        preprocess_function,
        resolve_builder,
    )

    if settings.data is not None:
        from keras_blockreuse.sweep.user_data import load_data

        data = load_data(settings.data, seed=settings.data_seed, image_size=settings.image_size)
        if kind == "application":
            data = data.as_rgb(f"{settings.model} takes RGB (its ImageNet weights and "
                               "preprocess_input)")
            data = data.preprocessed(preprocess_function(settings.model))
    else:
        from keras_blockreuse.sweep.data import make_task

        data = make_task(settings.dataset, settings.task, settings.resolved_shift(),
                         settings.shots, seed=settings.data_seed, image_size=settings.image_size)
    loss = settings.loss or "sparse_categorical_crossentropy"
    name, mode = metric_direction(settings.metric or "accuracy")
    if "sparse" in loss:
        if hasattr(data, "as_classes"):
            data = data.as_classes()
        outputs = data.target_classes
        if outputs is None:
            what = data.not_classes() if hasattr(data, "not_classes") else (
                f"the labels have shape {data.y_train.shape[1:]} and dtype {data.y_train.dtype}")
            raise SweepError(f"--loss {loss} needs integer class labels; {what}.")
    else:
        outputs = getattr(data, "label_width", 1)
    build = resolve_builder(settings.model, data.input_shape, outputs, output_activation(loss),
                            **(settings.model_args or {}))
    recipe = Recipe(build, loss=loss, metrics=(name,))
    inputs = UserInputs(data, recipe, settings.source, mode=mode, description=settings.model)
    existing = os.path.join(settings.out, SOURCE_FILE) if settings.out else None
    return inputs.prepare(existing if settings.resume else None)
