"""Where blocks are loaded from: one small reader per kind of source behind one interface.

A source lists its blocks, describes each block's layers and variables (names, shapes,
dtypes) without reading values, and reads one block's values when asked — so a load reads
only the bytes of the blocks it uses. Sources that carry no block grouping of their own (a
live model without a rule, the Keras file formats) are grouped by a block rule applied to
their top-level layer names.

Example:

```python
with open_source("run/blocks_010.blocks.h5") as source:
    source.block_names()              # ["block_1", "block_2", "dense_1", "dense_2"]
    source.block_layers("block_1")    # layer paths, variables, shapes, dtypes
    values = source.read_block("block_1")
```
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable

import numpy as np

from keras_blockreuse.blocks import BlockRule, get_blocks, resolve_rule
from keras_blockreuse.safety import GuardedSource, check_regular_file, reading
from keras_blockreuse.store import (
    BlockFile,
    LayerInfo,
    VariableInfo,
    _block_values,
    _to_numpy,
)


class Source:
    """The interface `load_blocks` reads from.

    Attributes:
        description: how the source is named in reports and errors.
        bytes_read: bytes of values read so far.
    """

    description: str = "source"
    bytes_read: int = 0

    def block_names(self) -> list[str]:
        """The source's blocks, in order."""
        raise NotImplementedError

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        """A block's layers with their variables' names, shapes and dtypes; no values read."""
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


class BlockFileSource(Source):
    """A `.blocks.h5` file: grouped, checksummed, read block by block."""

    def __init__(self, path: str | os.PathLike):
        self._file = BlockFile(path)
        self.description = self._file.path

    @property
    def bytes_read(self) -> int:
        return self._file.bytes_read

    def block_names(self) -> list[str]:
        return self._file.block_names

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        return self._file.block(name).layers

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        return self._file.read_block(name)

    def close(self) -> None:
        self._file.close()


class LayerSource(Source):
    """A source made of named layers with no block grouping of its own.

    Subclasses implement `layers()` and `read_layer()`; the grouping comes from a block rule
    applied to each layer's top-level name.
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
            layers = self.layers()
            tops = list(dict.fromkeys(layer.top for layer in layers))
            rule = resolve_rule(self._rule, tops, tops)
            groups: dict[str, list[LayerInfo]] = {}
            for layer in layers:
                block = rule(_named(layer.top, layer.class_name))
                groups.setdefault(block, []).append(layer)
            self._groups = {name: tuple(group) for name, group in groups.items()}
        return self._groups

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


def _named(name: str, class_name: str):
    """A stand-in for a layer, for block rules applied to a file's layer names."""
    return types.SimpleNamespace(name=name, class_name=class_name)


class ModelSource(Source):
    """A live `keras.Model`: blocks are copied from memory.

    Its grouping is `source_blocks` if given, else the model's own rule (a `BlockModel`), else
    the target model's rule.
    """

    def __init__(self, model, rule: BlockRule = None):
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} is not built, so it has no weights. "
                "Build it (call it on data or pass an Input) first."
            )
        self.description = f"model {model.name!r}"
        self._blocks = get_blocks(model, rule)
        self._layers: dict[str, tuple[LayerInfo, ...]] = {}
        self._values: dict[str, dict[str, dict]] = {}
        self.bytes_read = 0

    def block_names(self) -> list[str]:
        return list(self._blocks)

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        import keras  # a live model: Keras is loaded already

        if name not in self._layers:
            layers, values = [], {}
            for path, unit, unit_values in _block_values(self._blocks[name]):
                values[path] = unit_values
                layers.append(
                    LayerInfo(
                        path=path,
                        class_name=unit.__class__.__name__,
                        variables=tuple(
                            VariableInfo(
                                key=key,
                                name=str(getattr(v, "name", key)),
                                path=str(getattr(v, "path", "")),
                                shape=tuple(int(d) for d in v.shape),
                                dtype=keras.backend.standardize_dtype(v.dtype),
                                dataset=str(getattr(v, "name", key)),
                            )
                            for key, v in unit_values.items()
                        ),
                    )
                )
            self._layers[name] = tuple(layers)
            self._values[name] = values
        return self._layers[name]

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        self.block_layers(name)
        out = {}
        for path, unit_values in self._values[name].items():
            out[path] = {key: _to_numpy(v) for key, v in unit_values.items()}
            self.bytes_read += sum(int(a.nbytes) for a in out[path].values())
        return out


# File readers by name: `(path) -> bool` recognisers paired with `(path, rule, **options) ->
# Source` openers. The Keras formats register themselves in `keras_sources`.
_FILE_READERS: list[tuple[Callable[[str], bool], Callable[..., Source]]] = []


def register_file_reader(recognise: Callable[[str], bool], open_: Callable[..., Source]) -> None:
    """Adds a reader for another kind of weights file, tried before the `.blocks.h5` reader."""
    _FILE_READERS.append((recognise, open_))


def open_source(source, rule: BlockRule = None, **options) -> Source:
    """Opens anything `load_blocks` accepts as a source.

    Args:
        source: a `.blocks.h5` path, a live `keras.Model`, or an open `Source`; other Keras
            files where their readers are installed.
        rule: the block rule that groups a source without blocks of its own.
        **options: reader options, such as `source_model=` for Keras `.weights.h5` files.
    """
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        check_regular_file(path)  # a FIFO would block the first open forever
        _load_keras_readers()
        for recognise, open_ in _FILE_READERS:
            with reading(repr(path)):  # third-party files: every failure is a BlockFileError
                recognised = recognise(path)
            if recognised:
                return GuardedSource(functools.partial(open_, path, rule, **options), repr(path))
        if options:
            raise TypeError(f"Options {sorted(options)} do not apply to a block file: {path!r}")
        return BlockFileSource(path)
    import keras  # not a path: a live model (Keras is loaded already) or an error

    if isinstance(source, keras.Model):
        return ModelSource(source, rule)
    raise TypeError(
        "`source` must be a path to a block file (or a Keras weights file) or a keras.Model. "
        f"Received: {source!r} of type {type(source).__name__}"
    )


def _load_keras_readers() -> None:
    try:
        import keras_blockreuse.hub  # noqa: F401  (keras-hub preset directories; lazy keras_hub)
        import keras_blockreuse.keras_sources  # noqa: F401  (registers its readers)
    except ImportError:
        pass
