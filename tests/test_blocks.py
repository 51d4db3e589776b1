import keras
import numpy as np
import pytest

from keras_blockreuse import BlockMismatchError, get_blocks
from keras_blockreuse.blocks import resolve_rule
from tests.helpers import seed_cnn

L = keras.layers


def _dense_chain(names):
    model = keras.Sequential([keras.Input((4,))] + [L.Dense(3, name=n) for n in names])
    return model


def test_default_rule_groups_seed_cnn():
    blocks = get_blocks(seed_cnn())
    assert list(blocks) == ["block_1", "block_2", "dense_1", "dense_2"]
    assert [layer.name for layer in blocks["block_1"].layers] == ["block_1_0", "block_1_1"]
    b1 = blocks["block_1"]
    assert b1.num_params == (3 * 3 * 3 * 8 + 8) + (3 * 3 * 8 * 8 + 8)
    assert b1.nbytes == 4 * b1.num_params
    assert len(b1.variables) == 4


def test_default_rule_respects_delimiters():
    model = _dense_chain(["block_1_0", "block_10_0", "block_1_1", "block_10_1", "dense_1"])
    blocks = get_blocks(model)
    assert {k: [x.name for x in b.layers] for k, b in blocks.items()} == {
        "block_1": ["block_1_0", "block_1_1"],
        "block_10": ["block_10_0", "block_10_1"],
        "dense_1": ["dense_1"],
    }


def test_order_is_computation_order():
    inputs = keras.Input((4,))
    a = L.Dense(3, name="z_first")(inputs)
    b = L.Dense(3, name="a_second")(a)
    model = keras.Model(inputs, b)
    assert list(get_blocks(model)) == ["z_first", "a_second"]


def test_regex_rule_with_group_and_named_group():
    model = _dense_chain(["block1_conv1", "block1_conv2", "block2_conv1", "fc1"])
    assert list(get_blocks(model, r"^(block\d+)_")) == ["block1", "block2", "fc1"]
    assert list(get_blocks(model, r"^(?P<block>block\d+)_conv(\d)")) == ["block1", "block2", "fc1"]
    with pytest.raises(ValueError, match="exactly one group"):
        get_blocks(model, r"^block\d+_")


def test_dict_rule_with_globs_and_double_claim():
    model = _dense_chain(["block_1_0", "block_10_0", "head"])
    blocks = get_blocks(model, {"early": ["block_1_*"], "late": ["block_10_*", "head"]})
    assert {k: [x.name for x in b.layers] for k, b in blocks.items()} == {
        "early": ["block_1_0"],
        "late": ["block_10_0", "head"],
    }
    with pytest.raises(BlockMismatchError, match=r"'block_1_0'.*\['a', 'b'\]"):
        get_blocks(model, {"a": ["block_1_*"], "b": ["block_1_0"]})
    with pytest.raises(TypeError, match="did you mean"):
        get_blocks(model, {"a": "block_1_0"})


def test_callable_rule():
    model = _dense_chain(["enc_a", "enc_b", "head"])
    blocks = get_blocks(model, lambda layer: "encoder" if layer.name.startswith("enc") else None)
    assert list(blocks) == ["encoder", "head"]
    with pytest.raises(TypeError, match="non-empty block name"):
        get_blocks(model, lambda layer: 3)


def test_bad_rule_type():
    with pytest.raises(TypeError, match="Received: blocks=3"):
        resolve_rule(3)


def test_nested_model_is_one_block():
    inner = keras.Sequential(
        [keras.Input((4,)), L.Dense(4, name="x"), L.BatchNormalization(name="bn")],
        name="features_1_0",
    )
    inputs = keras.Input((4,))
    outputs = L.Dense(2, name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)
    blocks = get_blocks(model)
    assert list(blocks) == ["features_1", "head"]
    assert blocks["features_1"].layers == (inner,)
    assert blocks["features_1"].num_params == 4 * 4 + 4 + 4 * 4
    assert len(blocks["features_1"].variables) == 6


def test_every_weighted_layer_in_exactly_one_block():
    model = seed_cnn()
    blocks = get_blocks(model)
    grouped = [layer for b in blocks.values() for layer in b.layers]
    weighted = [layer for layer in model.layers if layer.weights]
    assert sorted(id(x) for x in grouped) == sorted(id(x) for x in weighted)
    assert sum(b.num_params for b in blocks.values()) == model.count_params()
    total = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    assert sum(b.nbytes for b in blocks.values()) == total
