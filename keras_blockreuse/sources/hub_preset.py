"""A keras-hub preset directory (`save_to_preset`) as a source of blocks.

The directory's config rebuilds the model offline, with random weights (`task.json` for a
task, `config.json` for a backbone); its blocks are the rebuilt model's (the keras-hub presets
of `keras_blockreuse.hub`), and their values are read from `model.weights.h5` (the backbone)
and `task.weights.h5` (the task's own layers) by the Keras weights reader, with the rebuilt
model as `source_model`. keras-hub is imported only when a directory is opened.

Layers pair by name path, or by their `order` in the rebuilt model's computation order (known
on both sides, as for a `.keras` archive's rebuilt structure); `keras_path` is left `None`,
since a block's layers are given relative to the block (inside the backbone), not to the model.

Example:

```python
classifier.save_to_preset("classifier_preset")
load_blocks(detector, "classifier_preset", only=["stem", "stage_*"])
```
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

from keras_blockreuse.blocks import Block, get_blocks, iter_units
from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.hub import hub_blocks, is_hub_task
from keras_blockreuse.sources.base import LayerInfo, Source, VariableInfo, register_file_reader

if TYPE_CHECKING:
    import keras

__all__ = ["PresetSource", "is_preset_dir", "open_preset"]

CONFIG_FILE = "config.json"
TASK_CONFIG_FILE = "task.json"
MODEL_WEIGHTS = ("model.weights.h5", "model.weights.json")
TASK_WEIGHTS = "task.weights.h5"



def is_preset_dir(path: str) -> bool:
    """True for a directory, which only a keras-hub preset can be among the sources."""
    return os.path.isdir(path)


def open_preset(path: str | os.PathLike, rule=None, source_model=None) -> PresetSource:
    """Opens a keras-hub preset directory saved with `save_to_preset` as a source of blocks.

    Args:
        path: the directory (with `config.json` and `model.weights.h5`, and for a task
            `task.json` and `task.weights.h5`).
        rule: a block rule for the rebuilt model; default its keras-hub preset.
        source_model: the model the preset was saved from (or a function building it), to
            use instead of rebuilding it from the directory's config.

    Example:

    ```python
    with open_preset("classifier_preset") as source:
        source.block_names()   # ["stem", "stage_1", ..., "predictions"]
    ```
    """
    return PresetSource(path, rule, source_model)


class PresetSource(Source):
    """A keras-hub preset directory: its config rebuilds the model, its weights files are read.

    The model is rebuilt offline from `task.json` (a task) or `config.json` (a backbone) with
    random weights; its blocks are grouped as a live model's would be. Values are read from
    `model.weights.h5` (the backbone) and `task.weights.h5` (the task's own layers) by the
    Keras weights reader, with the rebuilt model as `source_model`: each variable is found at
    the group path where Keras's saver writes it, so nothing is paired by storage order.

    Raises:
        BlockFileError: the directory is not a keras-hub preset, its config cannot rebuild
            the model, or its weights files do not hold the model's variables.
    """

    def __init__(self, path: str | os.PathLike, rule=None, source_model=None):
        from keras_blockreuse.sources.keras_files import open_keras_file

        self.path = os.fspath(path)
        self.description = self.path
        self.bytes_read = 0
        weights = [name for name in MODEL_WEIGHTS
                   if os.path.isfile(os.path.join(self.path, name))]
        if not os.path.isfile(os.path.join(self.path, CONFIG_FILE)) or not weights:
            raise BlockFileError(
                f"{self.path!r} is a directory but not a keras-hub preset: expected "
                f"{CONFIG_FILE} and {MODEL_WEIGHTS[0]} (as written by save_to_preset); it holds "
                f"{sorted(os.listdir(self.path))[:10]}."
            )
        model = self._model(source_model)
        self.model = model
        self.info = {
            "format": "keras-hub preset directory",
            "model": f"{type(model).__name__} {model.name!r} (rebuilt from its config)",
            "block rule": "keras-hub preset" if rule is None and hub_blocks(model) else (
                str(rule) if rule is not None else "generic (no keras-hub preset for it)"),
        }
        self._blocks = get_blocks(model, rule)
        self._sources = []
        self._where: dict[int, tuple[int, LayerInfo, str]] = {}
        try:
            backbone = getattr(model, "backbone", None) if is_hub_task(model) else None
            parts = [(weights[0], backbone or model, ())]
            if backbone is not None:
                skip = tuple(backbone._flatten_layers())
                if os.path.isfile(os.path.join(self.path, TASK_WEIGHTS)):
                    parts.append((TASK_WEIGHTS, model, skip))
            for file_name, root, skip in parts:
                source = open_keras_file(os.path.join(self.path, file_name), source_model=root)
                self._sources.append(source)
                self._index(len(self._sources) - 1, source, root, skip)
            self._order: dict[int, int] = {}  # id(layer) -> its place in computation order
            self._layers = {name: self._describe(block) for name, block in self._blocks.items()}
        except BaseException:
            self.close()
            raise

    def _model(self, source_model) -> keras.Model:
        import keras  # a preset directory is read: Keras loads only now

        if source_model is not None:
            model = source_model() if not isinstance(source_model, keras.Model) else source_model
            if not isinstance(model, keras.Model):
                raise TypeError(
                    "`source_model` must be a keras.Model or a function returning one. "
                    f"Received: {source_model!r}, which gave {type(model).__name__}"
                )
            return model
        try:
            import keras_hub
        except ImportError:
            raise ImportError(
                f"Reading the keras-hub preset {self.path!r} needs keras-hub: "
                "pip install 'keras-blockreuse[hub]'."
            ) from None
        task_config = os.path.join(self.path, TASK_CONFIG_FILE)
        try:
            if os.path.isfile(task_config):
                with open(task_config, encoding="utf-8") as fh:
                    config = json.load(fh)
                # The structure only: a preprocessor would need the preset's assets.
                if isinstance(config.get("config"), dict):
                    config["config"]["preprocessor"] = None
                return keras.saving.deserialize_keras_object(config, safe_mode=True)
            return keras_hub.models.Backbone.from_preset(self.path, load_weights=False)
        except json.JSONDecodeError as e:  # (a config file damaged or cut short)
            damaged = _json_file_of(self.path, e.doc)
            if damaged is None:
                raise BlockFileError(
                    f"{self.path!r}: its config cannot rebuild the model offline "
                    f"({type(e).__name__}: {e}). Pass source_model= (the model, or a function "
                    "that builds it).") from None
            raise BlockFileError(
                f"{self.path!r}: {os.path.basename(damaged)} is not valid JSON ({e}; "
                f"{os.path.getsize(damaged)} bytes): the preset is damaged, or a copy or "
                "download cut it short. Write it again (save_to_preset), fetch it again, or "
                "pass source_model= (the model, or a function that builds it)."
            ) from None
        except Exception as e:
            raise BlockFileError(
                f"{self.path!r}: its config cannot rebuild the model offline "
                f"({type(e).__name__}: {e}). Pass source_model= (the model, or a function "
                "that builds it)."
            ) from None

    def _index(self, index: int, source, root, skip) -> None:
        """Finds where Keras wrote each variable of `root`, and that file's description of it."""
        by_path = {v.path: (layer, v.key) for layer in source.layers() for v in layer.variables}
        for value_id, path in _where_keras_writes(root, skip).items():
            if path in by_path and value_id not in self._where:
                layer, key = by_path[path]
                self._where[value_id] = (index, layer, key)

    def _describe(self, block: Block) -> tuple[LayerInfo, ...]:
        layers = []
        for path, unit in _units(block):
            order = self._order.setdefault(id(unit), len(self._order))
            values: dict = {}
            unit.save_own_variables(values)
            if not values:
                continue
            variables = []
            for key, value in values.items():
                found = self._where.get(id(value))
                if found is None:
                    raise BlockFileError(
                        f"{self.path!r} holds no value for variable {key} of layer {path!r} "
                        f"({type(unit).__name__}) of block {block.name!r}: its weights files do "
                        "not match the model rebuilt from its config."
                    )
                stored = next(v for v in found[1].variables if v.key == found[2])
                if tuple(stored.shape) != tuple(int(d) for d in value.shape):
                    # Its files are read by where the rebuilt model keeps each variable: a
                    # place holding another shape means another model wrote them.
                    raise BlockFileError(
                        f"{self.path!r}: its weights files do not match the model rebuilt from "
                        f"its config: variable {key} of layer {path!r} ({type(unit).__name__}) "
                        f"of block {block.name!r} is {tuple(value.shape)} in the model and "
                        f"{tuple(stored.shape)} in the file, so the files' values cannot be "
                        "placed by the config. Write the preset again (save_to_preset) or pass "
                        "source_model= (the model that wrote the weights)."
                    )
                variables.append(VariableInfo(
                    key=key, name=str(getattr(value, "name", key)), path=stored.path,
                    shape=stored.shape, dtype=stored.dtype, dataset=stored.dataset,
                ))
            layers.append(LayerInfo(path, type(unit).__name__, tuple(variables), order=order))
        return tuple(layers)

    def block_names(self) -> list[str]:
        return list(self._layers)

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        return self._layers[name]

    def layers(self) -> list[LayerInfo]:
        """Every layer of the preset, block by block, in computation order."""
        return [layer for block in self._layers.values() for layer in block]

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for path, unit in _units(self._blocks[name]):
            values: dict = {}
            unit.save_own_variables(values)
            if not values:
                continue
            stored: dict = {}  # one read per stored layer
            arrays = {}
            for key, value in values.items():
                index, layer, stored_key = self._where[id(value)]
                if (index, layer.keras_path) not in stored:
                    stored[index, layer.keras_path] = self._sources[index].read_layer(layer)
                arrays[key] = stored[index, layer.keras_path][stored_key]
                self.bytes_read += int(arrays[key].nbytes)
            out[path] = arrays
        return out

    def close(self) -> None:
        for source in getattr(self, "_sources", []):
            source.close()
        self._sources = []


def _units(block: Block):
    for layer in block.layers:
        yield from iter_units(layer)


def _where_keras_writes(root, skip=()) -> dict[int, str]:
    """`id(value) -> "inner/path/vars/<key>"` for every value Keras's saver writes for `root`.

    Walks `root` with Keras's own saver, writing nowhere; `skip` are objects left out, as
    `keras.saving.save_weights(..., objects_to_skip=...)` leaves them (keras-hub's task file).
    """
    from keras.src.saving import saving_lib

    class _Recorder(saving_lib.H5IOStore):
        def __init__(self):  # no file
            self.found: dict[int, str] = {}
            self.inner = ""

        def __bool__(self):
            return True

        def make(self, path, metadata=None):
            self.inner = path
            return self

        def __setitem__(self, key, value):
            self.found.setdefault(id(value), f"{self.inner}/vars/{key}".lstrip("/"))

    recorder = _Recorder()
    saving_lib._save_state(root, recorder, None, "", {id(obj) for obj in skip})
    return recorder.found


register_file_reader(is_preset_dir, open_preset)


def _json_file_of(folder: str, text: str) -> str | None:
    """The JSON file of a preset folder whose text is `text` (what a JSONDecodeError parsed),
    or None where none is."""
    for name in (TASK_CONFIG_FILE, CONFIG_FILE, "metadata.json"):
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                if fh.read() == text:
                    return path
        except OSError:
            continue
    return None
