"""A user's own model for the sweep tests: a plain Functional keras.Model with named blocks,
and tiny learnable data (no network, no download)."""

import keras
import numpy as np


def build(input_shape=(8, 8, 1), num_classes=3):
    """Blocks by the naming convention: `block_1` (conv), `block_2` (conv), `head` (Dense;
    softmax for classes, linear for one regression output)."""
    inputs = keras.Input(shape=tuple(input_shape))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block_1_0")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block_2_0")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    activation = "softmax" if num_classes > 1 else None
    outputs = keras.layers.Dense(num_classes, activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name="user_cnn")


def images(n, classes=3, size=8, channels=1, seed=0):
    """`n` images whose class is the bright quadrant (plus noise), and their labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0.0, 0.2, size=(n, size, size, channels)).astype("float32")
    half = size // 2
    for i, c in enumerate(y):
        r, col = divmod(int(c) % 4, 2)
        x[i, r * half:(r + 1) * half, col * half:(col + 1) * half] += 1.0
    return x, y.astype("int64")
