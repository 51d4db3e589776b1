"""Block rules for the `keras.applications` families.

A preset maps the name of a model's top-level layer to the name of its block, so that
`get_blocks(model, blocks="resnet")` groups a ResNet50 into its stages. Every preset is a
callable `layer name -> block name | None`; `detect_preset` recognises the family from the
model's layer names, and `assign_blocks` also places the few layers that Keras builds without
an explicit name (Xception's shortcut convolutions), which a name alone cannot place.

Example:

```python
model = keras.applications.ResNet50(weights=None)
detect_preset([layer.name for layer in model.layers])       # "resnet"
PRESETS["resnet"]("conv4_block10_2_conv")                   # "conv4"
```

Blocks are stages, in the order the model computes them; the classifier is always its own
block, `predictions`, so that "everything but the head" is easy to say:

| preset         | blocks                                                                 |
|----------------|------------------------------------------------------------------------|
| `vgg`          | `block1 ... block5`, `fc1`, `fc2`, `predictions`                       |
| `resnet`       | `conv1 ... conv5`, `post_bn` (v2), `predictions`                       |
| `densenet`     | `conv1`, `conv2`, `pool2`, `conv3`, `pool3`, `conv4`, `pool4`, `conv5`, `bn`, `predictions` |
| `mobilenet`    | `stem`, `block_1 ... block_13`, `predictions`                          |
| `mobilenet_v2` | `stem` (with `expanded_conv`), `block_1 ... block_16`, `head`, `predictions` |
| `mobilenet_v3` | `stem` (with `expanded_conv`), `block_1 ... block_N`, `head`, `fc`, `predictions` |
| `efficientnet` | `stem`, `block1 ... block7` (v2: `block6`), `top`, `predictions`       |
| `xception`     | `block1 ... block14`, `predictions`                                    |
| `convnext`     | `stem`, `stage_0`, `downsampling_block_0`, `stage_1`, ..., `stage_3`, `head`, `predictions` |
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable

__all__ = ["PRESETS", "Preset", "assign_blocks", "detect_preset", "explain_unnamed",
           "numbered_from_zero"]


def _first_match(rules: list[tuple[str, str]]) -> Callable[[str], str | None]:
    """Builds `name -> block` from `(regex, template)` pairs; the first full match wins."""
    compiled = [(re.compile(pattern), template) for pattern, template in rules]

    # Cached: a pure function of the name, called for every layer of a model on every load
    # (`Match.expand` parses its template on each call).
    @functools.lru_cache(maxsize=4096)
    def rule(name: str) -> str | None:
        for pattern, template in compiled:
            match = pattern.fullmatch(name)
            if match:
                return match.expand(template)
        return None

    return rule


@dataclasses.dataclass(frozen=True)
class Preset:
    """One family's block rule: a callable `layer name -> block name | None`.

    Args:
        name: the preset's name, as given to `blocks=`.
        rule: maps a top-level layer name to its block, or `None` when the name is not the
            family's.
        detect: tells from the set of a model's layer names whether it is of this family.
        place: optional; places a layer that `rule` cannot (an automatic name such as
            `conv2d_3`) from the blocks of the nearest matched layers before and after it
            in computation order: `place(name, previous_block, next_block) -> block | None`.

    Example:

    ```python
    PRESETS["vgg"]("block3_conv2")   # "block3"
    ```
    """

    name: str
    rule: Callable[[str], str | None]
    detect: Callable[[set[str]], bool]
    place: Callable[[str, str | None, str | None], str | None] | None = None

    def __call__(self, layer_name: str) -> str | None:
        return self.rule(layer_name)


# --- VGG16 / VGG19 -------------------------------------------------------------------------

_vgg = _first_match(
    [
        (r"block(\d+)_(?:conv\d+|pool)", r"block\1"),
        (r"(fc1|fc2|predictions)", r"\1"),
    ]
)


def _is_vgg(names: set[str]) -> bool:
    return {"block1_conv1", "block1_conv2", "block2_conv1"} <= names and (
        "block1_conv1_bn" not in names
    )


# --- ResNet v1 and v2 (50, 101, 152) -------------------------------------------------------
# Stage names end at an underscore, so `conv1_` never takes `conv10_`; inside a stage
# `conv4_block1_` and `conv4_block10_` both belong to `conv4`.

_resnet = _first_match(
    [
        (r"(conv\d+)_.+", r"\1"),
        (r"pool1_(?:pad|pool)", "conv1"),
        (r"post_(?:bn|relu)", "post_bn"),
        (r"predictions", "predictions"),
    ]
)


def _is_resnet(names: set[str]) -> bool:
    # `conv2_block1_0_conv` (the projection shortcut) is ResNet's, not DenseNet's.
    return {"conv1_conv", "conv2_block1_1_conv", "conv2_block1_0_conv"} <= names


# --- DenseNet 121 / 169 / 201 --------------------------------------------------------------
# Dense blocks `conv2 ... conv5`; the transition layers after them keep their Keras names
# `pool2 ... pool4`; `bn` is the final normalisation.

_densenet = _first_match(
    [
        (r"(conv\d+)_.+", r"\1"),
        (r"pool1", "conv1"),
        (r"(pool\d+)_(?:bn|relu|conv|pool)", r"\1"),
        (r"bn|relu", "bn"),
        (r"predictions", "predictions"),
    ]
)


def _is_densenet(names: set[str]) -> bool:
    return {"conv1_conv", "conv2_block1_1_conv", "conv2_block1_0_bn"} <= names


# --- MobileNet (v1) ------------------------------------------------------------------------
# Block n is the depthwise-separable pair `conv_dw_n` + `conv_pw_n`.

_mobilenet = _first_match(
    [
        (r"conv1(?:_bn|_relu|_pad)?", "stem"),
        (r"conv_(?:dw|pw|pad)_(\d+)(?:_bn|_relu)?", r"block_\1"),
        (r"conv_preds", "predictions"),
    ]
)


def _is_mobilenet(names: set[str]) -> bool:
    return {"conv1", "conv_dw_1", "conv_pw_1"} <= names


# --- MobileNetV2 ---------------------------------------------------------------------------
# `block_(\d+)_` ends at an underscore: `block_1` never takes `block_10 ... block_16`.
# The first inverted residual block (`expanded_conv_*`, no expansion) belongs to the stem.

_mobilenet_v2 = _first_match(
    [
        (r"(?:Conv1|bn_Conv1|Conv1_relu|Conv1_pad)", "stem"),
        (r"expanded_conv_.+", "stem"),
        (r"block_(\d+)_.+", r"block_\1"),
        (r"(?:Conv_1|Conv_1_bn|out_relu)", "head"),
        (r"predictions", "predictions"),
    ]
)


def _is_mobilenet_v2(names: set[str]) -> bool:
    return {"Conv1", "bn_Conv1", "block_1_expand"} <= names


# --- MobileNetV3 Small / Large -------------------------------------------------------------
# `conv` + `expanded_conv_*` form the stem, `expanded_conv_<n>_*` block n, `conv_1` the head,
# `conv_2` (a 1x1 convolution after pooling, include_top only) `fc`, and `logits` the classifier.

_mobilenet_v3 = _first_match(
    [
        (r"conv(?:_bn)?", "stem"),
        (r"expanded_conv_(\d+)_.+", r"block_\1"),
        (r"expanded_conv_.+", "stem"),
        (r"conv_1(?:_bn)?", "head"),
        (r"conv_2", "fc"),
        (r"(?:logits|predictions)", "predictions"),
    ]
)


def _is_mobilenet_v3(names: set[str]) -> bool:
    return {"conv", "conv_bn", "expanded_conv_1_expand"} <= names


# --- EfficientNet B0-B7 and EfficientNetV2 -------------------------------------------------
# A stage is `block<n>` plus a letter or letters (`block2b_`); the preprocessing layers Keras
# adds without a name (`rescaling`, `normalization`, the latter holding weights) join the stem.

_efficientnet = _first_match(
    [
        (r"stem_.+", "stem"),
        (r"(?:rescaling|normalization)(?:_\d+)?", "stem"),
        (r"block(\d+)[a-z]+_.+", r"block\1"),
        (r"top_.+", "top"),
        (r"predictions", "predictions"),
    ]
)

_EFFICIENTNET_BLOCK = re.compile(r"block1a_.+")


def _is_efficientnet(names: set[str]) -> bool:
    return {"stem_conv", "stem_bn"} <= names and any(
        _EFFICIENTNET_BLOCK.fullmatch(name) for name in names
    )


# --- Xception ------------------------------------------------------------------------------
# The shortcut convolutions of blocks 2, 3, 4 and 13 and their batch normalisations have
# automatic names (`conv2d`, `batch_normalization_3`, ...); Keras lists each one among the
# layers of its block, so `assign_blocks` gives it the block of the layer before it.

_xception = _first_match(
    [
        (r"block(\d+)_.+", r"block\1"),
        (r"predictions", "predictions"),
    ]
)

_XCEPTION_SHORTCUT = re.compile(r"(?:conv2d|batch_normalization)(?:_\d+)?")


def _place_xception(name: str, previous: str | None, following: str | None) -> str | None:
    if _XCEPTION_SHORTCUT.fullmatch(name) and previous and following:
        return previous
    return None


def _is_xception(names: set[str]) -> bool:
    return {"block1_conv1", "block1_conv1_bn", "block2_sepconv1"} <= names


# --- ConvNeXt Tiny ... XLarge --------------------------------------------------------------
# Every name starts with the model's name (`convnext_tiny_`); the stem and the downsampling
# layers are nested Sequential models, each a top-level layer of its own block. Without the
# top, Keras ends the model with an unnamed `layer_normalization`, which joins the head.

_convnext = _first_match(
    [
        (r".+_(?:prestem_normalization|stem)", "stem"),
        (r".+_stage_(\d+)_block_\d+_.+", r"stage_\1"),
        (r".+_downsampling_block_(\d+)", r"downsampling_block_\1"),
        (r".+_head_(?:gap|layernorm)", "head"),
        (r".+_head_dense", "predictions"),
    ]
)

_CONVNEXT_NORM = re.compile(r"layer_normalization(?:_\d+)?")


def _place_convnext(name: str, previous: str | None, following: str | None) -> str | None:
    if _CONVNEXT_NORM.fullmatch(name) and previous and previous.startswith("stage_"):
        if following is None:
            return "head"
    return None


def _is_convnext(names: set[str]) -> bool:
    return any(name.endswith("_stage_0_block_0_depthwise_conv") for name in names) and any(
        name.endswith("_stem") for name in names
    )


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        Preset("vgg", _vgg, _is_vgg),
        Preset("resnet", _resnet, _is_resnet),
        Preset("densenet", _densenet, _is_densenet),
        Preset("mobilenet", _mobilenet, _is_mobilenet),
        Preset("mobilenet_v2", _mobilenet_v2, _is_mobilenet_v2),
        Preset("mobilenet_v3", _mobilenet_v3, _is_mobilenet_v3),
        Preset("efficientnet", _efficientnet, _is_efficientnet),
        Preset("xception", _xception, _is_xception, _place_xception),
        Preset("convnext", _convnext, _is_convnext, _place_convnext),
    ]
}


def detect_preset(layer_names: Iterable[str]) -> str | None:
    """Recognises a `keras.applications` family from a model's top-level layer names.

    Works with and without the top, on models cut from a family's layers (a backbone ending
    at `conv4_block6_out`), and from the names of the weighted layers alone (all that a
    weights file holds). Returns `None` when no family matches.

    Example:

    ```python
    model = keras.applications.MobileNetV2(weights=None, include_top=False)
    detect_preset([layer.name for layer in model.layers])   # "mobilenet_v2"
    ```
    """
    names = set(layer_names)
    for preset in PRESETS.values():
        if preset.detect(names):
            return preset.name
    return None


def _preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(
            f"Unknown block preset {preset!r}. Expected one of: {', '.join(PRESETS)}."
        )
    return PRESETS[preset]


def assign_blocks(preset: str | Preset, layer_names: list[str]) -> dict[str, str]:
    """Places the layers of a model, given in computation order, into a preset's blocks.

    Unlike calling the preset on each name, this also places the layers a family builds
    with automatic names, from their position (Xception's shortcuts, ConvNeXt's final
    normalisation without the top). Layers the preset does not know are left out.

    Example:

    ```python
    model = keras.applications.Xception(weights=None, input_shape=(71, 71, 3))
    blocks = assign_blocks("xception", [layer.name for layer in model.layers])
    blocks["block13_sepconv2"]   # "block13", and so is the shortcut `conv2d_3` beside it
    ```
    """
    rule = _preset(preset)
    matched = [rule(name) for name in layer_names]
    assigned = {name: block for name, block in zip(layer_names, matched, strict=True) if block is not None}
    if rule.place is None:
        return assigned
    previous: list[str | None] = []
    last = None
    for block in matched:
        previous.append(last)
        last = block if block is not None else last
    following: list[str | None] = [None] * len(matched)
    nxt = None
    for i in range(len(matched) - 1, -1, -1):
        following[i] = nxt
        nxt = matched[i] if matched[i] is not None else nxt
    for i, name in enumerate(layer_names):
        if matched[i] is None:
            block = rule.place(name, previous[i], following[i])
            if block is not None:
                assigned[name] = block
    return assigned


# --- Models whose names cannot name blocks -------------------------------------------------


@functools.cache
def _automatic_prefixes() -> frozenset[str]:
    """The snake-cased class names Keras uses for automatic layer names (`conv2d_3`).

    Computed once per process: it snake-cases every Keras layer class (30 ms a call).
    """
    import keras
    from keras.src.utils.naming import to_snake_case

    prefixes = {"input_layer", "functional", "sequential", "model"}
    for value in vars(keras.layers).values():
        if isinstance(value, type) and issubclass(value, keras.layers.Layer):
            prefixes.add(to_snake_case(value.__name__))
    return frozenset(prefixes)


_AUTOMATIC_SUFFIX = re.compile(r"(.+?)(?:_[1-9]\d*)?")  # (never `_0` or `_01`)
_FROM_ZERO = re.compile(r"(.+)_0\d*")
_INCEPTION = {
    "InceptionV3": {"mixed0", "mixed1", "mixed10"},
    "InceptionResNetV2": {"mixed_5b", "mixed_6a", "conv_7b"},
}


def automatic_names(layer_names: Iterable[str]) -> list[str]:
    """The names among `layer_names` that Keras made up from a class name and a counter.

    Example:

    ```python
    automatic_names(["conv2d", "conv2d_3", "block1_conv1"])   # ["conv2d", "conv2d_3"]
    ```
    """
    prefixes = _automatic_prefixes()
    return [
        name
        for name in layer_names
        if _AUTOMATIC_SUFFIX.fullmatch(name).group(1) in prefixes
    ]


def numbered_from_zero(paths: Iterable[str]) -> set[str]:
    """The name paths among `paths` in a family numbered from zero in its container
    (`head/conv2d_0`, `head/conv2d_1`, ...). Keras's automatic names and the paths of its
    saving walk never count from zero (`conv2d`, `conv2d_1`), so code named `conv2d_0`; its
    siblings may be the code's too, or Keras's own after a shifted counter (a user's
    `dense_0` among automatic `dense_1`, `dense_2`): only a caller that knows the code (a
    keras-hub layer's) may take them as named. A family that also holds the bare name
    (`head/conv2d`) is not listed.

    Example:

    ```python
    numbered_from_zero(["head/conv2d_0", "head/conv2d_1", "conv2d_1"])
    # {"head/conv2d_0", "head/conv2d_1"}
    ```
    """
    paths = list(paths)
    zero = set()
    for path in paths:
        parent, _, last = path.rpartition("/")
        match = _FROM_ZERO.fullmatch(last)
        if match:
            zero.add((parent, match.group(1)))
    zero -= {path.rpartition("/")[::2] for path in paths}  # (`head/conv2d` beside them)
    out = set()
    for path in paths:
        parent, _, last = path.rpartition("/")
        head, _, tail = last.rpartition("_")
        if (parent, head if head and tail.isdigit() else last) in zero:
            out.add(path)
    return out


def explain_unnamed(
    layer_names: list[str], weighted: Iterable[str] | None = None, min_automatic: int = 10
) -> str | None:
    """Explains why a model's layer names cannot name blocks, or returns `None` if they can.

    Keras names a layer built without `name=` from its class and a process-wide counter
    (`conv2d`, `conv2d_17`): the same model built in another session, or after another
    model, gets other names, so a block rule over them would not transfer. This is the case
    of `keras.applications.InceptionV3` and `InceptionResNetV2`. The names are called
    automatic when at least half of the layers that hold weights (`weighted`, default all of
    `layer_names`), and at least `min_automatic` of them, have automatic names; unnamed
    activations, dropouts and poolings do not count when `weighted` is given.

    Example:

    ```python
    model = keras.applications.InceptionV3(weights=None)
    explain_unnamed([layer.name for layer in model.layers],
                    weighted=[layer.name for layer in model.layers if layer.weights])
    # "Most layer names of this model are automatic (... InceptionV3 ...). Pass an explicit ..."
    ```
    """
    names = [name for name in (layer_names if weighted is None else weighted)
             if name != "input_layer"]
    automatic = automatic_names(names)
    if len(automatic) < max(min_automatic, 1) or 2 * len(automatic) < len(names):
        return None
    family = next(
        (family for family, marks in _INCEPTION.items() if marks <= set(layer_names)), None
    )
    shown = ", ".join(automatic[:4])
    return (
        f"Most layer names of this model are automatic ({len(automatic)} of {len(names)}"
        f"{' weighted layers' if weighted is not None else ''}: "
        f"{shown}, ...); Keras numbers them with a process-wide counter, so they change "
        f"from one session or model to the next and cannot name blocks"
        + (f" (this looks like keras.applications.{family})" if family else "")
        + ". Pass an explicit rule instead: blocks={'stem': ['conv2d', 'conv2d_1']} with the "
        f"layer names of this model, or a callable blocks=lambda layer: ..., or build the "
        f"model with named layers. Presets exist for: {', '.join(PRESETS)}."
    )
