"""`BlockModel`: a functional `keras.Model` whose weights are grouped into named blocks.

Example:

```python
inputs = keras.Input((32, 32, 3))
x = keras.layers.Conv2D(32, 3, activation="relu", name="block_1_0")(inputs)
x = keras.layers.Conv2D(32, 3, activation="relu", name="block_1_1")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
outputs = keras.layers.Dense(10, name="dense_1")(x)
model = BlockModel(inputs, outputs)
list(model.blocks)                      # ["block_1", "dense_1"]
model.save_blocks("cnn.blocks.h5")
other.load_blocks("cnn.blocks.h5", only=["block_1"], freeze=True)
```
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from keras_blockreuse.blocks import (
    Block,
    BlockRule,
    get_blocks,
    select,
    serializable_rule,
    warn_if_compiled,
)
from keras_blockreuse.report import LoadReport
from keras_blockreuse.store import save_blocks as _save_blocks
from keras_blockreuse.transfer import load_blocks as _load_blocks


@keras.saving.register_keras_serializable(package="keras_blockreuse")
class BlockModel(keras.Model):
    """A functional `keras.Model` with named blocks that save and load by name.

    Args:
        inputs: the model's inputs, as for `keras.Model`.
        outputs: the model's outputs, as for `keras.Model`.
        blocks: the block rule: `None` (the naming convention `block_1_0` -> `block_1`, or a
            keras.applications family's stages when the names follow one), a regular
            expression with one group or a group named `block`, a preset name, a dict
            `{block: [layer names or globs]}`, or a callable `layer -> block name | None`.
        name: the model's name.

    Example:

    >>> model = BlockModel(inputs, outputs, blocks=r"^(block\\d+)_")
    >>> model.block_summary()
    """

    def __init__(self, inputs, outputs, blocks: BlockRule = None, name: str | None = None,
                 **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self._block_rule = blocks
        get_blocks(self)  # a rule that cannot group this model fails here, not at save time

    @classmethod
    def from_model(cls, model: keras.Model, blocks: BlockRule = None) -> BlockModel:
        """Wraps a built Sequential or Functional model, sharing its layers and weights.

        Example:

        >>> vgg = BlockModel.from_model(keras.applications.VGG16(weights=None))
        >>> list(vgg.blocks)[:2]
        ['block1', 'block2']
        """
        if not isinstance(model, keras.Model):
            raise TypeError(f"Expected a keras.Model. Received: {model!r}")
        inputs, outputs = _symbolic_io(model)
        if inputs is None:
            raise ValueError(
                f"BlockModel.from_model needs a built Sequential or Functional model; "
                f"{model.name!r} ({type(model).__name__}) has no symbolic inputs and outputs. "
                "Build it with a keras.Input, or use the free functions "
                "save_blocks(model, ...) / load_blocks(model, ...) for subclassed models."
            )
        return cls(inputs, outputs, blocks=blocks, name=model.name)

    @property
    def blocks(self) -> dict[str, Block]:
        """The model's blocks, `name -> Block`, in the order the model computes them."""
        return get_blocks(self)

    def save_blocks(
        self,
        path: str | os.PathLike,
        only: Sequence[str] | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Saves the model's blocks to a `.blocks.h5` file, atomically. See `save_blocks`."""
        return _save_blocks(self, path, only=only, metadata=metadata)

    def load_blocks(
        self,
        source,
        only: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        rename: Mapping[str, str] | None = None,
        on_mismatch: str = "error",
        freeze: bool = False,
        **source_options,
    ) -> LoadReport:
        """Loads blocks from a file or model, all or nothing. See `load_blocks`."""
        return _load_blocks(
            self, source, only=only, exclude=exclude, rename=rename,
            on_mismatch=on_mismatch, freeze=freeze, **source_options,
        )

    def freeze_blocks(self, names: Sequence[str] | str) -> list[str]:
        """Sets `trainable=False` on the named blocks' layers; returns the blocks frozen."""
        return freeze_blocks(self, names)

    def unfreeze_blocks(self, names: Sequence[str] | str) -> list[str]:
        """Sets `trainable=True` on the named blocks' layers; returns the blocks unfrozen."""
        return unfreeze_blocks(self, names)

    def block_summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """Prints and returns a table of the blocks: layers, parameters, bytes, trainable."""
        return block_summary(self, print_fn=print_fn)

    def get_config(self) -> dict:
        graph = keras.Model(self.input, self.output, name=self.name).get_config()
        graph["blocks"] = serializable_rule(self._block_rule, self)
        graph["trainable"] = self.trainable
        return graph

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> BlockModel:
        config = dict(config)
        blocks = config.pop("blocks", None)
        trainable = config.pop("trainable", True)
        name = config.get("name")
        graph = keras.Model.from_config(config, custom_objects=custom_objects)
        model = cls(graph.input, graph.output, blocks=blocks, name=name)
        model.trainable = trainable
        return model


def _symbolic_io(model):
    """The model's symbolic inputs and outputs, keeping their structure, or `(None, None)`."""
    try:
        return model.input, model.output
    except (AttributeError, ValueError):
        pass
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None, None
    if not inputs or not outputs:
        return None, None
    unpack = lambda x: x[0] if len(x) == 1 else x  # noqa: E731
    return unpack(inputs), unpack(outputs)


def _set_trainable(model, names, trainable: bool, blocks: BlockRule) -> list[str]:
    all_blocks = get_blocks(model, blocks)
    chosen = select(list(all_blocks), names, "freeze/unfreeze")
    changed = []
    for name in chosen:
        if any(layer.trainable != trainable for layer in all_blocks[name].layers):
            changed.append(name)
        for layer in all_blocks[name].layers:
            layer.trainable = trainable
    warn_if_compiled(model, changed, "unfrozen" if trainable else "frozen")
    return chosen


def freeze_blocks(model, names: Sequence[str] | str, blocks: BlockRule = None) -> list[str]:
    """Sets `trainable=False` on the named blocks' layers (names or globs).

    On a model trained since it was compiled, compile it again before the next `fit()` (a
    warning says why, per backend); a compiled model not trained yet needs nothing more.

    Example:

    >>> freeze_blocks(model, ["block_1", "block_2"])
    ['block_1', 'block_2']
    """
    return _set_trainable(model, names, False, blocks)


def unfreeze_blocks(model, names: Sequence[str] | str, blocks: BlockRule = None) -> list[str]:
    """Sets `trainable=True` on the named blocks' layers (names or globs)."""
    return _set_trainable(model, names, True, blocks)


def block_summary(
    model, blocks: BlockRule = None, print_fn: Callable[[str], Any] | None = print
) -> str:
    """A table of a model's blocks: layers, parameters, bytes, trainable.

    Example:

    >>> text = block_summary(model, print_fn=None)
    """
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Blocks of {model.name}", title_justify="left")
    for column in ("block", "layers", "parameters", "bytes", "trainable"):
        table.add_column(column, justify="right" if column in ("parameters", "bytes") else "left")
    for name, block in get_blocks(model, blocks).items():
        table.add_row(
            name,
            ", ".join(layer.name for layer in block.layers),
            f"{block.num_params:,}",
            f"{block.nbytes:,}",
            "yes" if block.trainable else "no",
        )
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None).print(table)
    text = buffer.getvalue().rstrip()
    if print_fn is not None:
        print_fn(text)
    return text

