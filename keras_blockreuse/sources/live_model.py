"""Source kind: a live `keras.Model`, whose blocks are copied from memory.

Its layers come in computation order (`iter_units` over the model's layers) with their name
paths, so they pair by name or by order; their Keras structural paths are computed only when
asked (`keras_paths=True`): walking a model as Keras saves it costs seconds for a ResNet50.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_blockreuse.blocks import Block, BlockRule, get_blocks, iter_units
from keras_blockreuse.sources.base import LayerInfo, Source, VariableInfo


def is_model(obj) -> bool:
    return isinstance(obj, keras.Model)


class ModelSource(Source):
    """A live `keras.Model` as a source.

    Args:
        model: a built model.
        rule: its block rule (a `BlockModel` uses its own when `None`).
        keras_paths: give each layer its Keras structural path (a walk of the whole model as
            Keras saves it: seconds for a large model; pairing by order does not need it).

    Example:

    ```python
    with ModelSource(classifier, keras_paths=True) as source:
        source.block_layers("block_1")[0].keras_path     # "layers/conv2d"
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
            self._paths = {}
            if self._with_paths:
                from keras_blockreuse.sources.structure import keras_structure

                self._paths = {id(u.obj): u.keras_path for u in keras_structure(self._model)}

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        if name not in self._layers:
            self._positions()
            layers, values = [], {}
            for path, unit, unit_values in unit_values_of(self._blocks[name]):
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
                        keras_path=self._paths.get(id(unit)),
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
            return np.asarray(read())
    return np.asarray(keras.ops.convert_to_numpy(value))
