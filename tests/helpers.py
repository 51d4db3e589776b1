"""Small models and comparisons shared by the core tests."""

import contextlib
import os
import subprocess

import keras
import numpy as np
import pytest

L = keras.layers


@keras.saving.register_keras_serializable(package="tests")
class UpDown(L.Layer):
    """Two same-class sub-layers with automatic names, held as attributes: `up`, then `down`.

    `down_first=True` (a refactor) creates `down` first, so the two automatic names swap.
    """

    def __init__(self, down_first=False, **kwargs):
        super().__init__(**kwargs)
        self.down_first = down_first
        if down_first:
            self.down = L.Dense(8)
            self.up = L.Dense(8)
        else:
            self.up = L.Dense(8)
            self.down = L.Dense(8)

    def build(self, shape):
        self.up.build(shape)
        self.down.build((*shape[:-1], 8))

    def call(self, x):
        return self.down(self.up(x))

    def get_config(self):
        return {**super().get_config(), "down_first": self.down_first}


def seed_cnn(num_classes: int = 10, input_shape=(16, 16, 3), name: str = "seed_cnn"):
    """The seed workflow's CIFAR-10 CNN as a plain Sequential, with its layer names."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            L.Conv2D(8, 3, padding="same", name="block_1_0"),
            L.Activation("relu"),
            L.Conv2D(8, 3, name="block_1_1"),
            L.Activation("relu"),
            L.AveragePooling2D(2, name="block_1_2"),
            L.Dropout(0.25),
            L.Conv2D(16, 3, padding="same", name="block_2_0"),
            L.Activation("relu"),
            L.Conv2D(16, 3, name="block_2_1"),
            L.Activation("relu"),
            L.AveragePooling2D(2, name="block_2_2"),
            L.Dropout(0.25),
            L.Flatten(),
            L.Dense(32, name="dense_1"),
            L.Activation("relu"),
            L.Dropout(0.5),
            L.Dense(num_classes, name="dense_2"),
        ],
        name=name,
    )


def snapshot(model) -> dict:
    """Every variable's value, keyed by its path, copied."""
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.weights}


def assert_same(a: dict, b: dict, keys=None):
    keys = list(a) if keys is None else keys
    for key in keys:
        x, y = a[key], b[key]
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert x.tobytes() == y.tobytes(), f"{key} differs"


def randomize(model, seed: int = 1):
    """Gives every variable new random values (so loads are visible)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = rng.normal(size=v.shape).astype("float32")
        v.assign(value.astype(keras.backend.standardize_dtype(v.dtype))
                 if "float" in v.dtype else np.asarray(value, dtype=v.dtype))


def dense_stack(width: int, depth: int = 4, name: str = "model"):
    """`depth` Dense layers of `width` x `width` named `block_<i>_0`: one block each."""
    inputs = keras.Input((width,))
    x = inputs
    for i in range(depth):
        x = L.Dense(width, name=f"block_{i + 1}_0")(x)
    return keras.Model(inputs, x, name=name)


def seeded_values(model) -> list:
    """The same values in every process: variable `i` draws from seed `i`."""
    return [
        np.random.default_rng(i).random(tuple(v.shape), dtype=np.float32)
        for i, v in enumerate(model.weights)
    ]


@contextlib.contextmanager
def small_tmpfs(folder, size: str):
    """A tmpfs of `size` ("2m") mounted on the new folder `folder` for a real full disk;
    the test is skipped where it cannot be mounted (mounting needs root, as in CI)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
