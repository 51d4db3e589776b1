"""keras-hub models: block presets for its backbones and tasks.

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
another family keeps the generic grouping (one block per top-level layer). Recognising a keras-hub
model reads class names only and imports nothing; preset directories (`save_to_preset`) are read
by `keras_blockreuse.sources.hub_preset`.

Example:

```python
classifier = keras_hub.models.ImageClassifier(backbone=resnet, num_classes=10)
list(get_blocks(classifier))   # ["stem", "stage_1", "stage_2", "stage_3", "predictions"]
classifier.save_to_preset("classifier_preset")
load_blocks(detector, "classifier_preset", only=["stem", "stage_*"])
```
"""

from __future__ import annotations

import re
from collections.abc import Callable

from keras_blockreuse.blocks import Block

__all__ = ["hub_blocks", "hub_file_grouping", "hub_layer_rule", "is_hub_model",
           "is_hub_object", "is_hub_task"]


# --- recognising keras-hub models (no import of keras_hub) ------------------------------------


def _hub_classes(obj) -> list[str]:
    """The names of the keras-hub classes among `obj`'s bases, most derived first."""
    return [cls.__name__ for cls in type(obj).__mro__
            if cls.__module__.split(".", 1)[0] == "keras_hub"]


def is_hub_object(obj) -> bool:
    """True when `obj` is of a keras-hub class (a model, or a layer such as RetinaNet's
    `PredictionHead`), or of a subclass of one."""
    return bool(_hub_classes(obj))


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


def is_hub_task(model) -> bool:
    """True when `model` is a keras-hub `Task` (`ImageClassifier`, `CausalLM`, ...)."""
    return "Task" in _hub_classes(model)


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


def hub_layer_rule(model) -> Callable[[str, str], str | None] | None:
    """The name rule of a keras-hub vision model's blocks: `(layer name, class name) -> block`
    for a top-level layer of its backbone (or image encoder), or `None` for another model.

    It places layers the model lacks by the names the family gives them, as `hub_blocks`
    places the model's own: a file saved from a deeper ResNet holds `stack2_block2_1_conv`,
    which belongs to `stage_3` whether or not the model has that unit.

    Example:

    ```python
    rule = hub_layer_rule(keras_hub.models.ImageClassifier(backbone=resnet, num_classes=10))
    rule("stack2_block2_1_conv", "Conv2D")   # "stage_3"
    ```
    """
    if not is_hub_model(model):
        return None
    backbone = getattr(model, "backbone", None) if is_hub_task(model) else model
    while backbone is not None:
        for name in _hub_classes(backbone):
            if name in _VISION:
                return _VISION[name]
        encoder = getattr(backbone, "image_encoder", None)
        backbone = encoder if encoder is not None and is_hub_model(encoder) else None
    return None


def hub_file_grouping(model, blocks: dict[str, Block] | None = None,
                      structure: Callable[[], list] | None = None):
    """How a Keras file (`.weights.h5`, `.keras`) saved from a keras-hub model like `model`,
    its task or its backbone, groups into `model`'s blocks: a `PathGrouping`, or `None` for a
    model that is not a keras-hub one (or whose blocks one name cannot tell apart).

    It lists each layer by its name path in the model (Keras's saving walk:
    `vi_t_backbone/vit_encoder/transformer_block_1`), by its name where it is a top-level layer
    of the model or of a task's backbone, and, for a task, by its path inside the backbone (the
    backbone's own file) and under the backbone's name (a layer the task also tracks itself,
    as a causal LM its token embedding, which a file holds once, under the backbone). A
    detector's image encoder's layers are listed by their names and under the encoder's name
    too: a classifier over the same encoder holds them there, its bare encoder by name. A
    layer no path lists goes to the block the family's name rule gives (`hub_layer_rule`).

    Args:
        model: a built keras-hub backbone or task.
        blocks: `get_blocks(model)`, when already computed.
        structure: gives the model's `keras_structure` units; walked (a tenth of a second for
            a ResNet50) only where a block holds a layer nested deeper than a task's backbone.

    Example:

    ```python
    grouping = hub_file_grouping(classifier)
    grouping["stem"]   # ["conv1_conv", "res_net_backbone/conv1_conv", ...]
    ```
    """
    import keras

    from keras_blockreuse.sources.base import PathGrouping

    if not is_hub_object(model):
        return None
    if blocks is None:
        from keras_blockreuse.blocks import get_blocks

        blocks = get_blocks(model)
    if structure is None:
        from keras_blockreuse.sources.structure import keras_structure

        def structure():
            return keras_structure(model)
    backbone = getattr(model, "backbone", None)
    task = is_hub_task(model) and isinstance(backbone, keras.Model)
    top = {id(layer) for layer in model.layers}
    inside = {id(layer) for layer in backbone.layers} if task else set()
    prefix = f"{backbone.name}/" if task else ""
    # (a bare backbone's layers are listed under its own name too: a task's file holds them
    # there, inside the task's backbone)
    outer = "" if task else f"{model.name}/"
    # (a detector's image encoder: its layers are listed by their names and under the
    # encoder's name too, as a classifier's file or the bare encoder's own file holds them)
    encoder = getattr(backbone if task else model, "image_encoder", None)
    encoder = encoder if isinstance(encoder, keras.Model) and is_hub_model(encoder) else None
    encoded = {id(layer) for layer in encoder.layers} if encoder is not None else set()
    # (a layer of the model or of its backbone is listed by its names below, its name path
    # being one of them: the walk is needed only for a layer nested deeper)
    listed = top | inside
    deeper = any(id(layer) not in listed for block in blocks.values() for layer in block.layers)
    paths = {id(unit.obj): unit.path for unit in structure()} if deeper else {}
    grouping: dict[str, list[str]] = {}
    owners: dict[str, str] = {}
    for name, block in blocks.items():
        entries: list[str] = []
        for layer in block.layers:
            path = paths.get(id(layer))
            found = {path} if path else set()
            if id(layer) in listed:
                found.add(layer.name)
            if id(layer) in inside:
                found.add(prefix + layer.name)
            if task and path and path.startswith(prefix):
                found.add(path[len(prefix):])
            if outer:
                found.update(outer + entry for entry in list(found))
            if id(layer) in encoded:
                found.update((layer.name, f"{encoder.name}/{layer.name}"))
            for entry in sorted(found):
                if owners.setdefault(entry, name) != name:
                    return None  # one name claimed by two blocks: the names cannot tell
                entries.append(entry)
        grouping[name] = entries
    nested = [backbone.name if task else model.name] + ([encoder.name] if encoder else [])
    return PathGrouping(grouping, nested=nested, place=hub_layer_rule(model))


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
