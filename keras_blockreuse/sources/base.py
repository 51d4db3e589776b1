"""The interface every source implements, and the layer descriptions it yields.

A source lists its blocks, describes each block's layers without reading values, and reads one
block's values when asked. Each layer carries its **pairing keys**: its name path, its Keras
structural path where the format has one, its class, its variables' keys and names, and its
position in computation order where that is known. `load_blocks` pairs target layers with
source layers only through these keys (see `keras_blockreuse.transfer`).

This module imports no Keras, so block-file tools stay light.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from keras_blockreuse.blocks import BlockRule, refuse_unclaimed, resolve_rule
from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.safety import GuardedSource, check_regular_file, not_hdf5, reading


@functools.lru_cache(maxsize=64)
def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype of a Keras dtype string (`bfloat16` and `float8_*` via ml_dtypes)."""
    if dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, dtype))
    return np.dtype(dtype)


@dataclasses.dataclass(frozen=True)
class VariableInfo:
    """One stored variable: its key for `load_own_variables`, name, Keras path, shape, dtype.

    `name` is the variable's own name (`kernel`, `gamma`) where the source knows it, else its
    key. `dataset` is where the source stores it (format-specific).
    """

    key: str
    name: str
    path: str
    shape: tuple[int, ...]
    dtype: str
    dataset: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * numpy_dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a source, with its pairing keys.

    Attributes:
        path: the layer's name path inside the model (`dense_1`, `features/conv`).
        class_name: the layer's class, or `""` where the source cannot tell.
        variables: the layer's variables, in `save_own_variables` key order.
        keras_path: the layer's structural path in Keras's own saving walk
            (`layers/sequential/layers/dense`), or `None` where the format has none.
        order: the layer's position in the source model's computation order (the order of
            `keras_blockreuse.blocks.iter_units` over the model's layers), or `None` where the
            source cannot know it. Storage order is never reported as `order`.
        top_order: where `order` is unknown but the source knows the place of the layer's
            top-level layer among the model's top-level layers in computation order (a legacy
            weights-only `.h5`: its `layer_names` order the top level, not the layers inside
            a nested model), that place; else `None`.
    """

    path: str
    class_name: str
    variables: tuple[VariableInfo, ...]
    keras_path: str | None = None
    order: int | None = None
    top_order: int | None = None

    @property
    def top(self) -> str:
        return self.path.split("/", 1)[0]


class Source:
    """The interface `load_blocks`, `convert` and the CLI read from.

    A source that can be loaded in two passes also has `verify(names, check=None)` (pass 1:
    read every value of the named blocks, call `check(block, layer path, key, array)` on each
    when given, keep no value) and `iter_values(name)` (pass 2: yield one block's values,
    `(layer path, key, array)`, and raise `BlockFileError` when they are not the bytes pass 1
    read). `load_blocks` then assigns each value as it arrives: memory for one variable, not
    the model. Block files and every `LayerSource` have them.

    Attributes:
        description: how the source is named in reports and errors.
        bytes_read: bytes of values read so far.
        info: facts about the source shown by `inspect` (format, Keras version, ...).
        variable_names_pair: True when the source's variable names are reliable, so
            variables pair by name within a layer where both sides' names are the same set
            (legacy `.h5`, which stores trainable variables first; block files written by
            `save_blocks`).
        variable_names_checked: True when the variable names are Keras 3's own (block files
            written by `save_blocks`), so a name that differs from the model's (`gamma` for
            `beta`) is a mismatch. Not for legacy `.h5`: Keras 2 names some variables
            otherwise (`depthwise_kernel`).
        own_blocks: True when the source keeps the blocks it was saved with, whatever block
            rule it is opened with (block files).
        configs_hint: for a source that records no layer config and has nothing that
            gives one (a `.weights.h5` without `source_model=`), what would (said where
            layers are paired by position); "" otherwise.
    """

    description: str = "source"
    bytes_read: int = 0
    info: dict = {}
    variable_names_pair: bool = False
    variable_names_checked: bool = False
    own_blocks: bool = False
    configs_hint: str = ""

    def block_names(self) -> list[str]:
        """The source's blocks, in order."""
        raise NotImplementedError

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        """A block's layers with their pairing keys and variables; no values read."""
        raise NotImplementedError

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        """One block's values as `{layer path: {key: array}}`, verified where possible."""
        raise NotImplementedError

    def layer_paths(self) -> list[str]:
        """The name path of every layer of every block (`backbone/predictions`); a reader
        whose `block_layers` reads each layer's variables lists them without reading."""
        return [layer.path for name in self.block_names() for layer in self.block_layers(name)]

    def layer_config(self, path: str) -> dict | None:
        """The Keras config (`{"class_name": ..., "config": {...}}`, as a `.keras` archive's
        `config.json` holds it) of the layer at name path `path`, where the source records
        one without rebuilding anything; else None."""
        return None

    @property
    def records_configs(self) -> bool:
        """Whether the source records its layers' configs (a `.keras` archive of a Keras
        model), so that a layer it records none for was created by another layer's code."""
        return False

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PathGrouping(dict):
    """`{block: [layer name paths]}`: the blocks of a source's layers by their full name paths
    (`res_net_backbone/conv1_conv`), where blocks reach inside a nested model, as a keras-hub
    task's do inside its backbone. `load_blocks` makes one from the model's own blocks for a
    Keras file saved from the same kind of model. A sub-layer (`bert_backbone/
    transformer_layer_0/self_attention`) goes with the longest path it lists over it; a layer
    with none is grouped under its top-level name.

    `nested`: the name of the model's nested model (a task's backbone), under which the
    paths list its layers, or several names (a detector's backbone, and the image encoder in
    it, under which a classifier's file lists the encoder's layers). A nested model of the
    source whose name differs from one of them only by Keras's automatic counter
    (`res_net_backbone_1` for `res_net_backbone`: the same class of backbone, built second in
    a session) is grouped as that model, where no other nested model of the source carries
    that name too; another nested model keeps its top-level grouping, and the refusal then
    names it as a nested model to load from. Its layers are paired with the model's by name
    or Keras path either way.

    `place`: the family's name rule, `(layer name, class name) -> block | None`, for a layer
    no path lists at the top level of the nested model (or of the source, for a bare
    backbone's file): a deeper source's extra residual units (`stack2_block2_1_conv`) go to
    their stage (`stage_3`), where the model's blocks then refuse or report them, rather
    than to blocks of their own that looked like layers the model merely lacks.

    Example:

    ```python
    PathGrouping({"stem": ["res_net_backbone/conv1_conv", "conv1_conv"]},
                 nested="res_net_backbone")
    ```
    """

    def __init__(self, blocks, nested: str | Sequence[str] | None = None,
                 place: Callable[[str, str], str | None] | None = None):
        super().__init__(blocks)
        self.nested: tuple[str, ...] = (
            () if nested is None else (nested,) if isinstance(nested, str) else tuple(nested))
        self.place = place

    def nested_as(self, layers: Sequence[LayerInfo]) -> dict[str, str]:
        """`{the source's nested model name: the name in `nested` it stands for}` (see the
        class): each name of `nested` that exactly one of the source's nested models carries,
        up to Keras's automatic counter."""
        tops = {layer.top for layer in layers if "/" in layer.path}
        if not self.nested or not tops:
            return {}
        from keras_blockreuse.sources.structure import strip_counter  # imports Keras

        found = {}
        for name in self.nested:
            carrying = [top for top in tops if strip_counter(top) == strip_counter(name)]
            if len(carrying) == 1:
                found[carrying[0]] = name
        return found


class LayerSource(Source):
    """A source made of layers with no block grouping of its own.

    Subclasses implement `layers()` (every layer, in computation order where known) and
    `read_layer()` (or `iter_layer()`, one value at a time); the grouping comes from a block
    rule applied to each layer's top-level name.

    Its files (Keras weights files, `.keras` archives, legacy `.h5`) carry no checksums, so a
    streaming load verifies against the source itself: `verify` reads every value once, checks
    it against the layout (`block_layers`: shape and dtype) and keeps only a 128-bit hash of
    it (xxh3_128 over dtype, shape and bytes); `iter_values` reads each value again and
    yields it only if its hash is the same. So the values a streaming load assigns are the
    bytes pass 1 read and checked, unless the file is rewritten in place between the passes,
    which is then raised before the changed value is used.
    """

    def __init__(self, rule: BlockRule = None):
        self._rule = rule
        self._groups: dict[str, tuple[LayerInfo, ...]] | None = None
        self._hashes: dict[tuple[str, str, str], bytes] = {}

    def layers(self) -> list[LayerInfo]:
        raise NotImplementedError

    def read_layer(self, layer: LayerInfo) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def iter_layer(self, layer: LayerInfo,
                   scratch: list | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """A layer's values one at a time, `(key, array)`; by default from `read_layer`.

        File readers override it to read one variable at a time and, given `scratch` (a list
        holding one reusable buffer; see `hdf5.read_checked`), may read each value into that
        buffer, valid until the next one is read.
        """
        yield from self.read_layer(layer).items()

    def verify(self, names: Sequence[str],
               check: Callable[[str, str, str, np.ndarray], None] | None = None) -> None:
        """Pass 1 of a streaming load: reads every value of the named blocks once, checks its
        shape and dtype against the layout, passes it to `check(block, layer path, key,
        array)` when given, and keeps only its hash, for `iter_values` to compare.

        Memory: one reusable buffer, the size of the largest variable; each array passed to
        `check` is valid only during the call.

        Raises:
            BlockFileError: a value is not what the layout declares (the file is damaged, or
                the reader inconsistent), or cannot be read.
        """
        hashes = {}
        scratch: list = []
        for name in names:
            for layer in self.block_layers(name):
                declared = {v.key: v for v in layer.variables}
                for key, value in self.iter_layer(layer, scratch):
                    array = _declared_array(value, declared.pop(key, None), layer, key, self)
                    if check is not None:
                        check(name, layer.path, key, array)
                    hashes[name, layer.path, key] = value_digest(array)
                if declared:
                    raise BlockFileError(
                        f"{self.description}: layer {layer.path!r} declares variables "
                        f"{sorted(declared)} that reading it did not give.")
        self._hashes = hashes

    def iter_values(self, name: str) -> Iterator[tuple[str, str, np.ndarray]]:
        """Pass 2: one verified block's values as read again, `(layer path, key, array)`,
        each yielded only after its hash matched the one `verify` kept.

        Raises:
            BlockFileError: a value differs from what `verify` read (the file was rewritten in
                place between the passes); raised before that value is yielded.
            ValueError: the block was not verified first.
        """
        for layer in self.block_layers(name):
            for key, value in self.iter_layer(layer):
                expected = self._hashes.get((name, layer.path, key))
                if expected is None:
                    raise ValueError(f"Block {name!r} of {self.description} was not verified "
                                     "(`verify`) before `iter_values`.")
                array = np.asarray(value)
                if value_digest(array) != expected:
                    raise BlockFileError(
                        f"variable {key!r} of layer {layer.path!r} (block {name!r}) is not "
                        "what the first pass read")
                self.bytes_read += int(array.nbytes)
                yield layer.path, key, array

    def _grouped(self) -> dict[str, tuple[LayerInfo, ...]]:
        if self._groups is None:
            self._groups = self._group(self.layers())
        return self._groups

    def _group(self, layers: list[LayerInfo]) -> dict[str, tuple[LayerInfo, ...]]:
        """The layers grouped into blocks by the rule, from their top-level names and classes
        (or, for a `PathGrouping`, from their name paths)."""
        groups: dict[str, list[LayerInfo]] = {}
        if isinstance(self._rule, PathGrouping):
            owners = {path: block for block, paths in self._rule.items() for path in paths}
            nested = self._rule.nested_as(layers)
            for layer in layers:
                path = layer.path
                if layer.top in nested and "/" in path:
                    path = nested[layer.top] + path[len(layer.top):]
                steps = path.split("/")  # a sub-layer goes with the longest listed path over it
                block = next((owners[p] for p in ("/".join(steps[:i])
                                                  for i in range(len(steps), 0, -1))
                              if p in owners), None)
                if block is None and self._rule.place is not None:
                    inner = steps[1:] if steps[0] in self._rule.nested else steps
                    if len(inner) == 1:
                        block = self._rule.place(inner[0], layer.class_name)
                groups.setdefault(block or layer.top, []).append(layer)
            # the grouping's blocks in its (the model's) order, then the others as found
            rank = {name: i for i, name in enumerate(self._rule)}
            return {name: tuple(groups[name])
                    for name in sorted(groups, key=lambda n: rank.get(n, len(rank)))}
        tops = list(dict.fromkeys(layer.top for layer in layers))
        rule = resolve_rule(self._rule, tops, tops)
        if self._rule is not None:  # (the default grouping is never refused)
            units = {layer.top: types.SimpleNamespace(name=layer.top,
                                                      class_name=layer.class_name)
                     for layer in layers}
            refuse_unclaimed(self._rule, rule, list(units.values()), self.description,
                             lambda: {layer.top for layer in layers if "/" in layer.path})
        for layer in layers:
            block = rule(types.SimpleNamespace(name=layer.top, class_name=layer.class_name))
            groups.setdefault(block, []).append(layer)
        return {name: tuple(group) for name, group in groups.items()}

    def block_names(self) -> list[str]:
        return list(self._grouped())

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        return self._grouped()[name]

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for layer in self.block_layers(name):
            values = self.read_layer(layer)
            self.bytes_read += sum(int(v.nbytes) for v in values.values())
            out[layer.path] = values
        return out


def value_digest(array: np.ndarray) -> bytes:
    """A 128-bit hash (xxh3_128) of an array's dtype, shape and bytes."""
    import xxhash

    digest = xxhash.xxh3_128(f"{array.dtype.str}|{array.dtype.name}|{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return digest.digest()


def _declared_array(value, var: VariableInfo | None, layer: LayerInfo, key: str,
                    source: Source) -> np.ndarray:
    """`value` as an array, refused unless it has the shape and dtype its layout declares."""
    array = np.asarray(value)
    if var is None:
        raise BlockFileError(f"{source.description}: reading layer {layer.path!r} gave a "
                             f"variable {key!r} that its layout does not declare.")
    try:
        same_dtype = array.dtype.newbyteorder("=") == numpy_dtype(var.dtype)
    except TypeError:
        same_dtype = False
    if tuple(array.shape) != var.shape or not same_dtype:
        raise BlockFileError(
            f"{source.description}: variable {key!r} of layer {layer.path!r} is declared "
            f"{var.shape} {var.dtype} but reads as {tuple(array.shape)} {array.dtype}; the "
            "file is damaged or changed while it was read.")
    return array


# Readers of other kinds of sources: `(source) -> bool` recognisers paired with
# `(source, rule, **options) -> Source` openers, tried before the built-in kinds.
_READERS: list[tuple[Callable[[object], bool], Callable[..., Source]]] = []


def register_reader(recognise: Callable[[object], bool], open_: Callable[..., Source]) -> None:
    """Adds a reader for another kind of source (a path, a folder, an object).

    `recognise(source)` must be cheap; `open_(source, rule, **options)` returns a `Source`.
    Registered readers are tried in order, before the built-in kinds. A path (a string, as
    `os.fspath` gives it) is recognised and opened inside `safety.reading`, so every failure
    of a third-party file is a `BlockFileError` naming it.
    """
    _READERS.append((recognise, open_))


def register_file_reader(recognise: Callable[[str], bool], open_: Callable[..., Source]) -> None:
    """`register_reader` for readers of paths only: `recognise(path: str)`."""
    register_reader(lambda source: isinstance(source, str) and recognise(source), open_)


def _load_extensions() -> None:
    """Imports the optional readers that register themselves (keras-hub preset folders)."""
    try:
        import keras_blockreuse.sources.hub_preset  # noqa: F401  (keras-hub preset directories)
    except ImportError:
        pass


def open_source(source, rule: BlockRule = None, **options) -> Source:
    """Opens anything `load_blocks` accepts as a source.

    Args:
        source: a `.blocks.h5` path; a Keras `.weights.h5`, `.weights.json`, `.keras` or legacy
            `.h5` path; a live `keras.Model`; or an open `Source`.
        rule: the block rule that groups a source without blocks of its own.
        **options: reader options, such as `source_model=` for Keras weights files.

    Raises:
        TypeError: `source` is of no supported kind, or an option does not apply to it.
        ValueError: `rule` is no block rule (a regular expression that does not compile).
        BlockFileError: the file is missing, unreadable or unsafe.
        BlockMismatchError: `rule` places none of the source's layers (when it is grouped).
    """
    if isinstance(source, Source):
        return source
    if rule is not None and not isinstance(rule, PathGrouping):
        resolve_rule(rule)  # a rule that is no rule is the caller's error, not the file's
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        from keras_blockreuse.sources.block_file import BlockFileSource, is_block_file

        if not is_block_file(path):
            _load_extensions()
            for recognise, open_ in _READERS:  # folders too (keras-hub preset directories)
                with reading(repr(path)):  # third-party files: every failure a BlockFileError
                    recognised = recognise(path)
                if recognised:
                    return GuardedSource(functools.partial(open_, path, rule, **options),
                                         repr(path))
        check_regular_file(path)  # a FIFO would block the first open forever
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise not_hdf5(path, repr(path))
        if not is_block_file(path):
            from keras_blockreuse.sources.keras_files import open_sniffed, sniff

            with reading(repr(path)):
                kind, file = sniff(path)  # an HDF5 file is opened and checked once, here
            if kind is not None:
                try:
                    return GuardedSource(
                        functools.partial(open_sniffed, path, kind, file, rule, **options),
                        repr(path))
                except BaseException:
                    if file is not None:
                        file.close()  # an option that open_sniffed does not take
                    raise
        if options:  # a file that is no block file either: what is wrong with it, first
            BlockFileSource(path).close()
            raise TypeError(f"Options {sorted(options)} do not apply to a block file: {path!r}")
        return BlockFileSource(path)
    for recognise, open_ in _READERS:
        if recognise(source):
            return open_(source, rule, **options)
    from keras_blockreuse.sources.live_model import ModelSource, is_model

    if is_model(source):
        if options:
            raise TypeError(f"Options {sorted(options)} do not apply to a live model source.")
        # Keras paths for blocks with automatic names: a load pairs those by path.
        return ModelSource(source, rule, keras_paths=True)
    kind = type(source)
    if any(cls.__module__.split(".", 1)[0] == "tf_keras" for cls in kind.__mro__):
        model = hasattr(source, "save_weights")
        # (tf-keras saves only a Functional or Sequential model whole to .h5, and a layer
        # not at all: the model holding it does)
        whole = " (or model.save('x.h5'))" if getattr(source, "_is_graph_network", False) else ""
        raise TypeError(
            "`source` must be a path to a block file (or a Keras weights file) or a Keras 3 "
            f"keras.Model. Received: a tf-keras (Keras 2) {'model' if model else 'layer'}, "
            f"{getattr(source, 'name', None)!r} of type {kind.__module__}.{kind.__name__}. "
            + (f"Save it with its model.save_weights('x.h5'){whole}" if model else
               "Save the tf-keras model holding it with model.save_weights('x.h5')")
            + " and pass that file: a Keras 2 .h5 is read by its layer names.")
    raise TypeError(
        "`source` must be a path to a block file (or a Keras weights file) or a keras.Model. "
        f"Received: {source!r} of type {kind.__name__}"
    )
