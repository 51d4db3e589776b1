"""Small image classifiers built as `BlockModel`s, with stable block names.

`seed_cnn` is the CIFAR-10 CNN of the workflow this project grew from (the Keras CIFAR-10
example with the seed's layer names); `small_resnet` is a small residual network with
BatchNormalization. Both take the input shape and the class count as arguments, so the same
architecture serves a source task and a target task with another number of classes.

Example:

```python
from keras_blockreuse.sweep.zoo import seed_cnn

source = seed_cnn(input_shape=(8, 8, 1), num_classes=10)
list(source.blocks)        # ['block_1', 'block_2', 'dense_1', 'dense_2']
target = seed_cnn(input_shape=(8, 8, 1), num_classes=5)
target.load_blocks(source, only=["block_1", "block_2"], freeze=True)
```
"""

from __future__ import annotations

import keras

from keras_blockreuse.model import BlockModel

MODELS = ("seed_cnn", "small_resnet")

SEED_CNN_BLOCKS = ("block_1", "block_2", "dense_1", "dense_2")
"""The blocks of `seed_cnn`, in computation order; `dense_2` is the classifier head."""
SEED_CNN_FEATURE_BLOCKS = ("block_1", "block_2")
"""The convolutional blocks of `seed_cnn`, the part a detector backbone can reuse."""
SMALL_RESNET_BLOCKS = ("stem", "stage_1", "stage_2", "stage_3", "head")
"""The blocks of `small_resnet`, in computation order; `head` is the classifier."""


def seed_cnn(
    input_shape: tuple[int, int, int] = (8, 8, 1),
    num_classes: int = 10,
    name: str = "seed_cnn",
    dropout: bool = True,
) -> BlockModel:
    """The seed workflow's CIFAR-10 CNN as a `BlockModel`.

    Layer names (stable: other models reuse these blocks by name, e.g. a detector backbone
    built from `block_1` and `block_2`):

    | block     | layers                                                              |
    |-----------|---------------------------------------------------------------------|
    | `block_1` | `block_1_0` Conv2D(32, 3, same), `block_1_1` Conv2D(32, 3, same),    |
    |           | `block_1_2` AveragePooling2D(2)                                      |
    | `block_2` | `block_2_0` Conv2D(64, 3, same), `block_2_1` Conv2D(64, 3, same),    |
    |           | `block_2_2` AveragePooling2D(2)                                      |
    | `dense_1` | `dense_1` Dense(512)                                                 |
    | `dense_2` | `dense_2` Dense(num_classes), the head (softmax output)             |

    ReLU activations follow every convolution and `dense_1`; Dropout (0.25 after each
    convolutional block, 0.5 after `dense_1`) and a Flatten sit between, unnamed, as in the
    Keras CIFAR-10 example. The pooling layers hold no weights, so each block's weights are its
    two convolutions. Height and width must be divisible by 4 (8x8 digits: 8 -> 4 -> 2).

    Args:
        input_shape: `(height, width, channels)` of one image.
        num_classes: number of classes of the head `dense_2`.
        name: the model's name.
        dropout: False leaves out the Dropout layers (same blocks and weights).

    Returns:
        An uncompiled `BlockModel` whose output is class probabilities.

    Example:

    >>> model = seed_cnn((32, 32, 3), num_classes=10)
    >>> [layer.name for layer in model.layers if layer.weights][:2]
    ['block_1_0', 'block_1_1']
    """
    height, width, _ = _check_shape(input_shape, num_classes)
    if height % 4 or width % 4:
        raise ValueError(
            f"seed_cnn pools twice by 2, so height and width must be divisible by 4; received "
            f"input_shape={tuple(input_shape)}."
        )
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for block, filters in ((1, 32), (2, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block_{block}_0")(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block_{block}_1")(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.AveragePooling2D(2, name=f"block_{block}_2")(x)
        if dropout:
            x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(512, name="dense_1")(x)
    x = keras.layers.Activation("relu")(x)
    if dropout:
        x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(num_classes, name="dense_2")(x)
    outputs = keras.layers.Activation("softmax", name="probabilities")(x)
    return BlockModel(inputs, outputs, name=name)


def small_resnet(
    input_shape: tuple[int, int, int] = (8, 8, 1),
    num_classes: int = 10,
    name: str = "small_resnet",
    filters: tuple[int, int, int] = (16, 32, 64),
) -> BlockModel:
    """A small residual network with BatchNormalization, as a `BlockModel`.

    Blocks and layer names:

    | block     | layers                                                                  |
    |-----------|-------------------------------------------------------------------------|
    | `stem`    | `stem_conv` Conv2D(filters[0], 3), `stem_bn` BatchNormalization         |
    | `stage_i` | shortcut `stage_i_0` Conv2D(1x1), `stage_i_1` BN; then `stage_i_2`      |
    |           | Conv2D(3x3), `stage_i_3` BN, `stage_i_4` Conv2D(3x3), `stage_i_5` BN     |
    | `head`    | `head` Dense(num_classes) after global average pooling                   |

    Each stage is one residual unit, `relu(bn(conv(relu(bn(conv(x))))) + bn(conv1x1(x)))`;
    stages 2 and 3 halve the resolution (stride 2).
    The block rule is explicit (a dict), so `stem` groups two layers.

    Args:
        input_shape: `(height, width, channels)` of one image.
        num_classes: number of classes of `head`.
        name: the model's name.
        filters: the width of the three stages.

    Returns:
        An uncompiled `BlockModel` whose output is class probabilities.

    Example:

    >>> list(small_resnet((8, 8, 1), 10).blocks)
    ['stem', 'stage_1', 'stage_2', 'stage_3', 'head']
    """
    _check_shape(input_shape, num_classes)
    if len(filters) != 3:
        raise ValueError(f"Expected 3 stage widths, received filters={filters!r}.")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Conv2D(filters[0], 3, padding="same", use_bias=False, name="stem_conv")(
        inputs
    )
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("relu")(x)
    for stage, width in enumerate(filters, start=1):
        strides = 1 if stage == 1 else 2
        prefix = f"stage_{stage}_"
        shortcut = keras.layers.Conv2D(width, 1, strides=strides, use_bias=False,
                                       name=prefix + "0")(x)
        shortcut = keras.layers.BatchNormalization(name=prefix + "1")(shortcut)
        y = keras.layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False,
                                name=prefix + "2")(x)
        y = keras.layers.BatchNormalization(name=prefix + "3")(y)
        y = keras.layers.Activation("relu")(y)
        y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=prefix + "4")(y)
        y = keras.layers.BatchNormalization(name=prefix + "5")(y)
        x = keras.layers.Activation("relu")(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(num_classes, name="head")(x)
    outputs = keras.layers.Activation("softmax", name="probabilities")(x)
    rule = {"stem": ["stem_*"], "head": ["head"]}
    rule.update({f"stage_{i}": [f"stage_{i}_*"] for i in (1, 2, 3)})
    return BlockModel(inputs, outputs, blocks=rule, name=name)


def build_model(
    model: str, input_shape: tuple[int, int, int], num_classes: int, name: str | None = None
) -> BlockModel:
    """Build a zoo model by name (`"seed_cnn"` or `"small_resnet"`).

    Example:

    >>> build_model("seed_cnn", (8, 8, 1), 10).name
    'seed_cnn'
    """
    builders = {"seed_cnn": seed_cnn, "small_resnet": small_resnet}
    if model not in builders:
        raise ValueError(f"Unknown model {model!r}. Expected one of: {', '.join(MODELS)}.")
    kwargs = {} if name is None else {"name": name}
    return builders[model](tuple(input_shape), num_classes, **kwargs)


def _check_shape(input_shape, num_classes) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"Expected input_shape (height, width, channels) of positive integers, received "
            f"{input_shape!r}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Expected num_classes to be an integer >= 2, received {num_classes!r}.")
    return shape
