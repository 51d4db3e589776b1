import keras
import numpy as np
import pytest

from keras_blockreuse import BlockModel, block_summary, freeze_blocks, unfreeze_blocks
from tests.helpers import assert_same, randomize, seed_cnn, snapshot

L = keras.layers


def _functional(blocks=None):
    inputs = keras.Input((6,))
    x = L.Dense(4, name="enc_a")(inputs)
    x = L.BatchNormalization(name="enc_b")(x)
    x = L.Dense(4, name="mid")(x)
    outputs = L.Dense(2, name="head")(x)
    return BlockModel(inputs, outputs, blocks=blocks, name="tiny")


@pytest.mark.parametrize(
    "rule, expected",
    [
        (None, ["enc_a", "enc_b", "mid", "head"]),
        (r"^(enc)_", ["enc", "mid", "head"]),
        ({"encoder": ["enc_*"], "top": ["mid", "head"]}, ["encoder", "top"]),
        (lambda layer: "encoder" if layer.name.startswith("enc") else None, ["encoder", "mid", "head"]),
    ],
)
def test_block_model_round_trips_through_keras_file(tmp_path, rule, expected):
    model = _functional(rule)
    randomize(model, seed=9)
    assert list(model.blocks) == expected
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded) is BlockModel
    assert loaded.name == "tiny"
    assert list(loaded.blocks) == expected
    assert {n: [x.name for x in b.layers] for n, b in loaded.blocks.items()} == {
        n: [x.name for x in b.layers] for n, b in model.blocks.items()}
    assert_same(snapshot(model), snapshot(loaded))
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_from_model_shares_layers_and_weights():
    plain = seed_cnn()
    wrapped = BlockModel.from_model(plain)
    assert list(wrapped.blocks) == ["block_1", "block_2", "dense_1", "dense_2"]
    assert wrapped.get_layer("block_1_0") is plain.get_layer("block_1_0")
    plain.get_layer("dense_2").bias.assign(np.full((10,), 3.0, "float32"))
    np.testing.assert_array_equal(wrapped.get_layer("dense_2").bias.numpy(), np.full((10,), 3.0))


def test_from_model_refuses_subclassed_models():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    model = Sub()
    model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="free functions"):
        BlockModel.from_model(model)


def test_freeze_and_unfreeze_blocks():
    model = _functional(r"^(enc)_")
    assert model.freeze_blocks(["enc"]) == ["enc"]
    assert [layer.trainable for layer in model.blocks["enc"].layers] == [False, False]
    assert model.get_layer("mid").trainable
    assert model.unfreeze_blocks("en*") == ["enc"]
    assert model.get_layer("enc_b").trainable
    plain = seed_cnn()
    assert freeze_blocks(plain, ["block_*"]) == ["block_1", "block_2"]
    assert len(plain.trainable_weights) == 4
    assert unfreeze_blocks(plain, ["block_2"]) == ["block_2"]
    assert len(plain.trainable_weights) == 8


def test_block_summary_table():
    model = _functional(r"^(enc)_")
    model.freeze_blocks(["enc"])
    lines = []
    text = model.block_summary(print_fn=lines.append)
    assert lines == [text]
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["enc", "mid", "head"]
    enc = rows[0]
    assert "enc_a, enc_b" in enc and "44" in enc and "176" in enc and "no" in enc
    assert "10" in rows[2] and "yes" in rows[2]
    rows = [r for r in block_summary(seed_cnn(), print_fn=None).splitlines() if r.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["block_1", "block_2", "dense_1", "dense_2"]
