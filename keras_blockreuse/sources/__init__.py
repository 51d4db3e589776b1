"""Where `load_blocks` reads weights from: one module per kind of source, one interface.

| kind                          | module          | pairing keys of its layers               |
|-------------------------------|-----------------|------------------------------------------|
| `.blocks.h5` block file       | `block_file`    | name path, computation order             |
| live `keras.Model`            | `live_model`    | name path, computation order (Keras path when asked) |
| Keras `.weights.h5` / `.json` | `keras_weights` | name path, Keras path; order and variable names with `source_model=` |
| `.keras` archive              | `keras_archive` | name path, Keras path, order and variable names (config rebuilt) |
| legacy Keras 2 `.h5`          | `legacy_h5`     | name path, computation order (nested: from `model_config`) |
| keras-hub preset directory    | `hub_preset`    | name path (the rebuilt model's blocks, inside its backbone), computation order |

Every source implements `Source` (`base.py`): `block_names()`, `block_layers(name)` (a tuple
of `LayerInfo`: name path, class name, variables with key, name, shape and dtype, plus the
pairing keys `keras_path` and `order`, each `None` where the source cannot know it), and
`read_block(name)` (`{layer path: {key: array}}`), plus `description`, `bytes_read`, `info`
and `close()`. A source whose files carry no block grouping subclasses `LayerSource` and
implements only `layers()` and `read_layer(layer)` (or `iter_layer(layer)`, one value at a
time); a block rule groups its layers. A `LayerSource` is loaded in two passes
(`verify`, `iter_values`: see `LayerSource`), so its values are read twice and must be the
same both times, with the shapes and dtypes its `LayerInfo` declares.

Adding a kind of source (for example a keras-hub preset directory):

```python
from keras_blockreuse.sources import LayerInfo, LayerSource, register_reader

class PresetSource(LayerSource):
    def __init__(self, folder, rule=None):
        super().__init__(rule)
        ...                                   # open the files, once, in one place
    def layers(self):                         # in computation order where known
        return [LayerInfo("dense", "Dense", variables, keras_path=None, order=None), ...]
    def read_layer(self, layer):
        return {"0": kernel, "1": bias}       # keyed like the layer's save_own_variables

register_reader(lambda s: isinstance(s, str) and os.path.isdir(s), PresetSource)
```

Never report a storage order as `order`, nor a guessed path as `keras_path`: `load_blocks`
pairs layers whose names differ only through these keys (see `keras_blockreuse.transfer`).

Example:

```python
with open_source("run/blocks_010.blocks.h5") as source:
    source.block_names()              # ["block_1", "block_2", "dense_1"]
    source.block_layers("block_1")    # LayerInfo: paths, classes, variables, order
    values = source.read_block("block_1")
```

Importing this package imports no Keras; the readers of Keras formats import it when used.
"""

from keras_blockreuse.sources.base import (
    LayerInfo,
    LayerSource,
    PathGrouping,
    Source,
    VariableInfo,
    numpy_dtype,
    open_source,
    register_file_reader,
    register_reader,
)

__all__ = [
    "LayerInfo",
    "LayerSource",
    "PathGrouping",
    "Source",
    "VariableInfo",
    "numpy_dtype",
    "open_source",
    "register_file_reader",
    "register_reader",
]
