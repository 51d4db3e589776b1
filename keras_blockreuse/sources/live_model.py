"""Source kind: a live `keras.Model`, whose blocks are copied from memory.

Its layers come in computation order (`iter_units` over the model's layers) with their name
paths, so they pair by name or by order; their Keras structural paths are computed only when
asked (`keras_paths=True`, as `save_blocks` does, for blocks holding automatic names).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_blockreuse.blocks import Block, BlockRule, get_blocks, iter_units
from keras_blockreuse.sources.base import LayerInfo, Source, VariableInfo
from keras_blockreuse.sources.structure import automatic_name


def is_model(obj) -> bool:
    return isinstance(obj, keras.Model)


class ModelSource(Source):
    """A live `keras.Model` as a source.

    Args:
        model: a built model.
        rule: its block rule (a `BlockModel` uses its own when `None`).
        keras_paths: give the layers of each block that holds an automatic name (`dense`,
            `dense_1`: creation order, which a refactor can change) their Keras structural
            paths, so a load can tell when those names pair the wrong layers. One walk of the
            whole model as Keras saves it (0.2 s for a ResNet50), only when such a block is
            asked for; no path where the model's saving walk cannot be reproduced.

    Example:

    ```python
    with ModelSource(classifier, keras_paths=True) as source:
        source.block_layers("block_1")[0].keras_path     # "layers/conv2d" (named "conv2d")
    ```
    """

    def __init__(self, model, rule: BlockRule = None, keras_paths: bool = False):
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} is not built, so it has no weights. "
                "Build it (call it on data or pass an Input) first."
            )
        self.description = f"model {model.name!r}"
        self.info = {"format": "live keras.Model"}
        # Keras 3's own variable names, as `save_blocks` records them: variables pair by name
        # where both sides hold the same names, and a name that differs is a mismatch
        self.variable_names_pair = self.variable_names_checked = True
        self._model = model
        self._blocks = get_blocks(model, rule)
        self._with_paths = keras_paths
        self._paths: dict[int, str] | None = None
        self._order: dict[int, int] | None = None
        self._layers: dict[str, tuple[LayerInfo, ...]] = {}
        self._values: dict[str, dict[str, dict]] = {}
        self.bytes_read = 0

    def block_names(self) -> list[str]:
        return list(self._blocks)

    def _positions(self) -> None:
        if self._order is None:
            self._order = {}
            for block in self._blocks.values():
                for _, unit in (pair for layer in block.layers for pair in iter_units(layer)):
                    self._order.setdefault(id(unit), len(self._order))

    def _keras_paths(self) -> dict[int, str]:
        """`id(layer) -> Keras structural path`, from one walk of the model (empty when its
        saving walk cannot be reproduced: its layers then pair by name and order; a walk that
        the model's own code makes fail raises `BlockMismatchError`)."""
        if self._paths is None:
            from keras_blockreuse.errors import BlockFileError
            from keras_blockreuse.sources.structure import keras_structure

            try:
                self._paths = {id(u.obj): u.keras_path for u in keras_structure(self._model)}
            except BlockFileError:
                self._paths = {}
        return self._paths

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        if name not in self._layers:
            self._positions()
            units = list(unit_values_of(self._blocks[name]))
            every = {path: unit for layer in self._blocks[name].layers
                     for path, unit in iter_units(layer)}
            # (a layer inside an automatically named model, `functional_1/a`, is as weakly
            # named as an automatically named layer)
            paths = (self._keras_paths() if self._with_paths and any(
                automatic_name(step, every[step]) for path, _, _ in units
                for step in _prefixes(path) if step in every) else {})
            layers, values = [], {}
            for path, unit, unit_values in units:
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
                        keras_path=paths.get(id(unit)),
                        order=self._order[id(unit)],
                    )
                )
            self._layers[name] = tuple(layers)
            self._values[name] = values
        return self._layers[name]

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        self.block_layers(name)
        out = {}
        for path, unit_values in self._values[name].items():
            out[path] = {key: to_numpy(v) for key, v in unit_values.items()}
            self.bytes_read += sum(int(a.nbytes) for a in out[path].values())
        return out


def _prefixes(path: str) -> list[str]:
    """`a`, `a/b`, `a/b/c` for `a/b/c`."""
    steps = path.split("/")
    return ["/".join(steps[:i]) for i in range(1, len(steps) + 1)]


def unit_values_of(block: Block) -> Iterator[tuple[str, Any, dict]]:
    """Yields `(layer path, layer, {key: value})` for every layer of a block that has state.

    Layers come in computation order: each top-level layer, then its sub-layers depth first.
    """
    for layer in block.layers:
        for path, unit in iter_units(layer):
            values: dict = {}
            unit.save_own_variables(values)
            if values:
                yield path, unit, values


def to_numpy(value) -> np.ndarray:
    """A variable's current value as a NumPy array (read-only where it shares memory).

    For TensorFlow variables this reads the value once and views it (`tf.Variable.value()`),
    ten times faster than `keras.ops.convert_to_numpy`, which reads and then copies.
    """
    if isinstance(value, keras.Variable) and keras.backend.backend() == "tensorflow":
        read = getattr(getattr(value, "value", None), "value", None)
        if callable(read):
            try:
                return np.asarray(read())
            except ValueError:  # a bfloat16 scalar TensorFlow cannot view: converted below
                pass
    return np.asarray(keras.ops.convert_to_numpy(value))
