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
from collections.abc import Callable

import numpy as np

from keras_blockreuse.blocks import BlockRule, resolve_rule
from keras_blockreuse.safety import GuardedSource, check_regular_file, reading


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
    """

    path: str
    class_name: str
    variables: tuple[VariableInfo, ...]
    keras_path: str | None = None
    order: int | None = None

    @property
    def top(self) -> str:
        return self.path.split("/", 1)[0]


class Source:
    """The interface `load_blocks`, `convert` and the CLI read from.

    Attributes:
        description: how the source is named in reports and errors.
        bytes_read: bytes of values read so far.
        info: facts about the source shown by `inspect` (format, Keras version, ...).
        variable_names_pair: True when the source's variable keys are its writer's storage
            order and its variable names are reliable, so variables pair by name within a
            layer (legacy `.h5`, which stores trainable variables first).
    """

    description: str = "source"
    bytes_read: int = 0
    info: dict = {}
    variable_names_pair: bool = False

    def block_names(self) -> list[str]:
        """The source's blocks, in order."""
        raise NotImplementedError

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        """A block's layers with their pairing keys and variables; no values read."""
        raise NotImplementedError

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        """One block's values as `{layer path: {key: array}}`, verified where possible."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LayerSource(Source):
    """A source made of layers with no block grouping of its own.

    Subclasses implement `layers()` (every layer, in computation order where known) and
    `read_layer()`; the grouping comes from a block rule applied to each layer's top-level
    name.
    """

    def __init__(self, rule: BlockRule = None):
        self._rule = rule
        self._groups: dict[str, tuple[LayerInfo, ...]] | None = None

    def layers(self) -> list[LayerInfo]:
        raise NotImplementedError

    def read_layer(self, layer: LayerInfo) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _grouped(self) -> dict[str, tuple[LayerInfo, ...]]:
        if self._groups is None:
            self._groups = self._group(self.layers())
        return self._groups

    def _group(self, layers: list[LayerInfo]) -> dict[str, tuple[LayerInfo, ...]]:
        """The layers grouped into blocks by the rule, from their top-level names and classes."""
        tops = list(dict.fromkeys(layer.top for layer in layers))
        rule = resolve_rule(self._rule, tops, tops)
        groups: dict[str, list[LayerInfo]] = {}
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
        BlockFileError: the file is missing, unreadable or unsafe.
    """
    if isinstance(source, Source):
        return source
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
        if options:
            raise TypeError(f"Options {sorted(options)} do not apply to a block file: {path!r}")
        return BlockFileSource(path)
    for recognise, open_ in _READERS:
        if recognise(source):
            return open_(source, rule, **options)
    from keras_blockreuse.sources.live_model import ModelSource, is_model

    if is_model(source):
        if options:
            raise TypeError(f"Options {sorted(options)} do not apply to a live model source.")
        return ModelSource(source, rule)
    raise TypeError(
        "`source` must be a path to a block file (or a Keras weights file) or a keras.Model. "
        f"Received: {source!r} of type {type(source).__name__}"
    )
