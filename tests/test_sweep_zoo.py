"""Tests for keras_blockreuse.sweep.zoo: block names, shapes, transfer between class counts."""

import keras
import numpy as np
import pytest

from keras_blockreuse import BlockModel
from keras_blockreuse.sweep.zoo import (
    SEED_CNN_BLOCKS,
    SMALL_RESNET_BLOCKS,
    build_model,
    seed_cnn,
    small_resnet,
)


def test_seed_cnn_layers_and_blocks():
    model = seed_cnn((8, 8, 1), num_classes=10)
    assert isinstance(model, BlockModel)
    assert tuple(model.blocks) == SEED_CNN_BLOCKS
    layers = {name: [layer.name for layer in block.layers] for name, block in model.blocks.items()}
    assert layers == {"block_1": ["block_1_0", "block_1_1"], "block_2": ["block_2_0", "block_2_1"],
                      "dense_1": ["dense_1"], "dense_2": ["dense_2"]}
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    assert kinds["block_1_2"] == kinds["block_2_2"] == "AveragePooling2D"
    assert model.get_layer("block_1_0").filters == 32 and model.get_layer("block_2_1").filters == 64
    assert model.get_layer("block_1_1").padding == "same"
    assert model.get_layer("dense_1").units == 512 and model.get_layer("dense_2").units == 10
    assert sum(type(layer).__name__ == "Dropout" for layer in model.layers) == 3
    assert model.output_shape == (None, 10)
    # 8x8 input: 8 -> 4 -> 2 after the two poolings, so dense_1 sees 2 * 2 * 64 features.
    assert model.get_layer("dense_1").kernel.shape == (256, 512)
    probabilities = model.predict(np.zeros((2, 8, 8, 1), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_seed_cnn_cifar_shape_and_without_dropout():
    model = seed_cnn((32, 32, 3), num_classes=7, dropout=False)
    assert model.get_layer("dense_1").kernel.shape == (8 * 8 * 64, 512)
    assert not any(type(layer).__name__ == "Dropout" for layer in model.layers)
    assert model.output_shape == (None, 7)


def test_seed_cnn_transfers_features_across_class_counts():
    source = seed_cnn((8, 8, 1), 10, name="source")
    target = seed_cnn((8, 8, 1), 5, name="target")
    report = target.load_blocks(source, only=["block_1", "block_2", "dense_1"], freeze=True)
    assert report.ok
    for name in ("block_1_0", "block_2_1", "dense_1"):
        for a, b in zip(source.get_layer(name).weights, target.get_layer(name).weights,
                        strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not target.get_layer("block_1_0").trainable
    assert target.get_layer("dense_2").trainable


def test_small_resnet_blocks_and_batchnorm():
    model = small_resnet((8, 8, 1), num_classes=4)
    assert tuple(model.blocks) == SMALL_RESNET_BLOCKS
    stage = sorted(layer.name for layer in model.blocks["stage_2"].layers)
    assert stage == [f"stage_2_{i}" for i in range(6)]
    kinds = [type(layer).__name__ for layer in model.blocks["stage_2"].layers]
    assert kinds.count("BatchNormalization") == 3 and kinds.count("Conv2D") == 3
    assert sorted(layer.name for layer in model.blocks["stem"].layers) == ["stem_bn", "stem_conv"]
    assert model.output_shape == (None, 4)
    assert any(type(layer).__name__ == "Add" for layer in model.layers)
    # BatchNormalization statistics travel with the block.
    names = [v.path for v in model.blocks["stem"].variables]
    assert any("moving_mean" in n for n in names)


def test_small_resnet_round_trips_through_keras_file(tmp_path):
    model = small_resnet((8, 8, 1), num_classes=3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert list(loaded.blocks) == list(SMALL_RESNET_BLOCKS)
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_build_model_by_name():
    assert build_model("seed_cnn", (8, 8, 1), 10).name == "seed_cnn"
    assert build_model("small_resnet", (8, 8, 1), 10, name="r").name == "r"
    with pytest.raises(ValueError, match="Unknown model 'vgg'"):
        build_model("vgg", (8, 8, 1), 10)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(input_shape=(10, 10, 1)), "divisible by 4"),
        (dict(input_shape=(8, 8)), "input_shape"),
        (dict(num_classes=1), "num_classes"),
    ],
)
def test_seed_cnn_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        seed_cnn(**kwargs)
