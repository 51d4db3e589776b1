"""keras-hub models: block presets for its backbones and tasks, and preset directories as sources.

keras-hub builds a backbone (`ResNetBackbone`, `GPT2Backbone`, ...) as one functional model and
wraps it in a task (`ImageClassifier`, `RetinaNetObjectDetector`, `CausalLM`), where the whole
backbone is a single layer. The presets here group the layers *inside* the backbone, so that a
task's blocks are its backbone's stages plus its own head and neck:

| model                                   | blocks                                                   |
|-----------------------------------------|----------------------------------------------------------|
| `ResNetBackbone`                        | `stem`, `stage_1 ... stage_n`, `post_norm` (v2)          |
| `EfficientNetBackbone`                  | `stem`, `stage_1 ... stage_n`, `top`                     |
| `MobileNetBackbone`                     | `stem`, `stage_1 ... stage_n`, `top`                     |
| ViT, DINOv2, text backbones (BERT, GPT-2, Llama, Gemma, ...) | `embeddings`, `transformer_layer_0 ... _N-1`, `final_norm`, then any other layer by its name (`pooled_dense`) |
| `RetinaNetBackbone`                     | its image encoder's blocks, then `fpn`                   |
| a task                                  | its backbone's blocks, then each of its own weighted layers by name (`predictions`, `box_head`, `classification_head`) |

A layer's path inside a block is relative to the block (`stack0_block0_1_conv`, not
`image_classifier/res_net_backbone/...`), so the stages of an `ImageClassifier` pair by name with
those of a `RetinaNetObjectDetector` built over the same backbone configuration. A model of
another family keeps the generic grouping (one block per top-level layer). keras-hub is imported
only when a preset directory is opened: recognising a keras-hub model reads class names only.

Example:

```python
classifier = keras_hub.models.ImageClassifier(backbone=resnet, num_classes=10)
list(get_blocks(classifier))   # ["stem", "stage_1", "stage_2", "stage_3", "predictions"]
classifier.save_to_preset("classifier_preset")
load_blocks(detector, "classifier_preset", only=["stem", "stage_*"])
```
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from keras_blockreuse.blocks import Block, iter_units
from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.sources import Source, register_file_reader
from keras_blockreuse.store import LayerInfo, VariableInfo

if TYPE_CHECKING:
    import keras

__all__ = ["PresetSource", "hub_blocks", "is_hub_model", "is_preset_dir", "open_preset"]

CONFIG_FILE = "config.json"
TASK_CONFIG_FILE = "task.json"
MODEL_WEIGHTS = ("model.weights.h5", "model.weights.json")
TASK_WEIGHTS = "task.weights.h5"


# --- recognising keras-hub models (no import of keras_hub) ------------------------------------


def _hub_classes(obj) -> list[str]:
    """The names of the keras-hub classes among `obj`'s bases, most derived first."""
    return [cls.__name__ for cls in type(obj).__mro__
            if cls.__module__.split(".", 1)[0] == "keras_hub"]


def is_hub_model(model) -> bool:
    """True when `model` is a keras-hub `Backbone` or `Task`.

    Example:

    ```python
    is_hub_model(keras_hub.models.GPT2Backbone(...))   # True
    is_hub_model(keras.applications.VGG16(weights=None))   # False
    ```
    """
    names = _hub_classes(model)
    return "Backbone" in names or "Task" in names


# --- block presets ----------------------------------------------------------------------------

# Each vision rule maps a backbone's top-level layer (name, class) to its block, or None.
_VisionRule = Callable[[str, str], "str | None"]


def _resnet(name: str, class_name: str) -> str | None:
    if re.fullmatch(r"conv\d+_.+|pool1_.+", name):
        return "stem"
    match = re.fullmatch(r"stack(\d+)_.+", name)
    if match:
        return f"stage_{int(match.group(1)) + 1}"
    if re.fullmatch(r"post_.+", name):
        return "post_norm"
    return None


def _efficientnet(name: str, class_name: str) -> str | None:
    if name.startswith("stem_"):
        return "stem"
    match = re.fullmatch(r"block(\d+)[a-z]+_.*", name)
    if match:
        return f"stage_{match.group(1)}"
    if name.startswith("top_"):
        return "top"
    return None


def _mobilenet(name: str, class_name: str) -> str | None:
    if re.fullmatch(r"input_.+|block_0_\d+", name):
        return "stem"
    if class_name == "ConvBnActBlock":  # the last 1x1 convolution, `block_<n+1>_0`
        return "top"
    match = re.fullmatch(r"block_(\d+)_\d+", name)
    return f"stage_{match.group(1)}" if match else None


_VISION: dict[str, _VisionRule] = {
    "ResNetBackbone": _resnet,
    "EfficientNetBackbone": _efficientnet,
    "MobileNetBackbone": _mobilenet,
}

# The repeated layer of a transformer stack, by the names keras-hub gives it.
_TRANSFORMER_LAYER = re.compile(
    r"(?:transformer|decoder|encoder)_(?:layer|block)_\d+|layers_\d+|layer_\d+"
)
_NORM = re.compile(r".*(?:norm|ln).*", re.IGNORECASE)


def _own_variables(layer) -> list:
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _children(layer) -> list:
    return layer._flatten_layers(include_self=False, recursive=False)


def _weighted(layers) -> list:
    return [layer for layer in layers if layer.weights]


def _top_level(model) -> list:
    seen, out = set(), []
    for layer in model.layers:
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def _vision_blocks(backbone, rule: _VisionRule) -> list[tuple[str, list]] | None:
    groups: dict[str, list] = {}
    for layer in _weighted(_top_level(backbone)):
        block = rule(layer.name, type(layer).__name__)
        if block is None:
            return None
        groups.setdefault(block, []).append(layer)
    return list(groups.items())


def _transformer_blocks(backbone) -> list[tuple[str, list]] | None:
    """`embeddings`, `transformer_layer_i`, `final_norm`, other layers by name; or None."""
    sequence = []  # (layer, is a transformer layer), in computation order
    for layer in _weighted(_top_level(backbone)):
        inner = _weighted(_children(layer))
        if not _own_variables(layer) and any(_TRANSFORMER_LAYER.fullmatch(c.name) for c in inner):
            sequence.extend((child, bool(_TRANSFORMER_LAYER.fullmatch(child.name)))
                            for child in inner)  # an encoder holding the stack (ViT, DINOv2)
        else:
            sequence.append((layer, bool(_TRANSFORMER_LAYER.fullmatch(layer.name))))
    flags = [is_layer for _, is_layer in sequence]
    if not any(flags):
        return None
    first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
    if not all(flags[first : last + 1]):
        return None  # two stacks (an encoder-decoder) or layers between them: no preset
    blocks: list[tuple[str, list]] = []
    if first:
        blocks.append(("embeddings", [layer for layer, _ in sequence[:first]]))
    blocks.extend((f"transformer_layer_{i}", [layer])
                  for i, (layer, _) in enumerate(sequence[first : last + 1]))
    after = [layer for layer, _ in sequence[last + 1 :]]
    norms = [layer for layer in after[:1] if _NORM.fullmatch(layer.name)]
    if norms:
        blocks.append(("final_norm", norms))
    blocks.extend((layer.name, [layer]) for layer in after[len(norms):])
    return blocks


def _backbone_blocks(backbone) -> list[tuple[str, list]] | None:
    classes = _hub_classes(backbone)
    encoder = getattr(backbone, "image_encoder", None)
    if encoder is not None and is_hub_model(encoder):
        # A feature-pyramid backbone (RetinaNet's) over an image encoder: the encoder's blocks,
        # then the backbone's own layers (the FPN) that hold other variables.
        inner = _backbone_blocks(encoder)
        if inner is None:
            return None
        return inner + _remaining(backbone, encoder.weights)
    for name in classes:
        if name in _VISION:
            return _vision_blocks(backbone, _VISION[name])
    return _transformer_blocks(backbone)


def _remaining(model, covered) -> list[tuple[str, list]]:
    """Each top-level weighted layer of `model` whose variables are not in `covered`.

    A layer that is the backbone itself or holds none but covered variables (a task's
    embedding tied to its backbone's) is left out; a wrapper model that shares the covered
    layers (RetinaNet's feature extractor) too.
    """
    seen = {id(v) for v in covered}
    blocks = []
    for layer in _weighted(_top_level(model)):
        own = [v for v in layer.weights if id(v) not in seen]
        if own:
            blocks.append((layer.name, [layer]))
            seen.update(id(v) for v in layer.weights)
    return blocks


def hub_blocks(model) -> dict[str, Block] | None:
    """The blocks of a keras-hub backbone or task, or `None` for a family without a preset.

    The grouping is used only when it holds every variable of the model exactly once;
    otherwise `None` (the caller keeps the generic grouping, one block per top-level layer).

    Example:

    ```python
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=50, num_layers=2, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16)
    list(hub_blocks(backbone))
    # ["embeddings", "transformer_layer_0", "transformer_layer_1", "final_norm"]
    ```
    """
    classes = _hub_classes(model)
    if "Task" in classes:
        backbone = getattr(model, "backbone", None)
        if backbone is None:
            return None
        blocks = _backbone_blocks(backbone)
        if blocks is None:
            blocks = [(backbone.name, [backbone])]
        blocks = blocks + _remaining(model, backbone.weights)
    elif "Backbone" in classes:
        blocks = _backbone_blocks(model)
    else:
        return None
    if blocks is None or not _covers_exactly(model, blocks):
        return None
    return {name: Block(name, tuple(layers)) for name, layers in blocks}


def _covers_exactly(model, blocks: list[tuple[str, list]]) -> bool:
    names = [name for name, _ in blocks]
    if len(set(names)) != len(names):
        return False
    counted: dict[int, int] = {}
    for _, layers in blocks:
        for layer in layers:
            for v in layer.weights:
                counted[id(v)] = counted.get(id(v), 0) + 1
    return set(counted) == {id(v) for v in model.weights} and set(counted.values()) == {1}


# --- preset directories -----------------------------------------------------------------------


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
        from keras_blockreuse.blocks import get_blocks
        from keras_blockreuse.keras_sources import open_keras_file

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
            backbone = getattr(model, "backbone", None) if "Task" in _hub_classes(model) else None
            parts = [(weights[0], backbone or model, ())]
            if backbone is not None:
                skip = tuple(backbone._flatten_layers())
                if os.path.isfile(os.path.join(self.path, TASK_WEIGHTS)):
                    parts.append((TASK_WEIGHTS, model, skip))
            for file_name, root, skip in parts:
                source = open_keras_file(os.path.join(self.path, file_name), source_model=root)
                self._sources.append(source)
                self._index(len(self._sources) - 1, source, root, skip)
            self._layers = {name: self._describe(block) for name, block in self._blocks.items()}
        except BaseException:
            self.close()
            raise

    def _model(self, source_model) -> keras.Model:
        import keras  # only when a preset is read: recognising a path needs no Keras

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
                variables.append(VariableInfo(
                    key=key, name=str(getattr(value, "name", key)), path=stored.path,
                    shape=stored.shape, dtype=stored.dtype, dataset=stored.dataset,
                ))
            layers.append(LayerInfo(path, type(unit).__name__, tuple(variables)))
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
                if (index, layer.path) not in stored:
                    stored[index, layer.path] = self._sources[index].read_layer(layer)
                arrays[key] = stored[index, layer.path][stored_key]
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
