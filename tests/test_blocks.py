import warnings

import keras
import numpy as np
import pytest

from keras_blockreuse import BlockMismatchError, get_blocks, load_blocks
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


def test_a_word_that_is_no_preset_is_said_to_be_none(tmp_path):
    """Found by a fresh-user test: `source_blocks="keras_hub"` (meant as a preset) was told
    that a block regular expression needs one group, not that there is no such preset."""
    model = _dense_chain(["enc_a", "head"])
    with pytest.raises(ValueError, match=r"^`blocks='keras_hub'` is not a preset name: the "
                                         r"presets are \['convnext', .*'xception'\] \(keras-hub "
                                         r"models are grouped by their own presets"):
        get_blocks(model, "keras_hub")
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with pytest.raises(ValueError, match="is not a preset name"):
        load_blocks(model, path, source_blocks="resnet_hub")


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


def test_a_rule_that_places_no_layer_is_refused_everywhere(tmp_path):
    """Found by a fresh-user test: a rule that claims no layer (written for the layers inside
    a nested model, which a rule never reaches) was ignored unsaid: every layer became a
    block of its own and the file was written grouped otherwise. `get_blocks` /
    `save_blocks`, `convert` and `load_blocks(source_blocks=)` now refuse it alike, and a
    rule that is no rule is the rule's error, not the file's ("damaged")."""
    from keras_blockreuse import load_blocks, save_blocks
    from keras_blockreuse.convert import convert

    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="stack0_a")], name="backbone")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, name="head")(inner(inputs)), name="task")
    weights = str(tmp_path / "task.weights.h5")
    model.save_weights(weights)
    rule = r"^(stack\d)_"
    nested = ("A rule is matched against top-level layers only: backbone is a nested model, "
              "whose layers it does not reach (a nested model belongs to one block as a "
              "whole). Give a rule that names some of these layers, or none for the default "
              "grouping.")
    said = ("The block rule '^(stack\\d)_' places none of the weighted top-level layers of "
            "{where} ({names}): each would be a block of its own, as if no rule were given. ")
    for call, where, names in [
        (lambda r: get_blocks(model, r), "model 'task'", "backbone, head"),
        (lambda r: save_blocks(model, tmp_path / "t.blocks.h5", blocks=r), "model 'task'",
         "backbone, head"),
        (lambda r: convert(weights, tmp_path / "c.blocks.h5", blocks=r), weights,
         "head, backbone"),  # (the file's order: it knows no computation order)
        (lambda r: load_blocks(model, weights, source_blocks=r), weights,
         "head, backbone"),
    ]:
        with pytest.raises(BlockMismatchError) as raised:
            call(rule)
        assert str(raised.value) == said.format(where=where, names=names) + nested
        with pytest.raises(ValueError, match=r"^`blocks='\('` is neither a preset name"):
            call("(")
    assert not (tmp_path / "t.blocks.h5").exists() and not (tmp_path / "c.blocks.h5").exists()
    # A rule that places one layer is a rule; the rest are blocks of their own, as always.
    assert list(get_blocks(model, r"^(he)ad")) == ["backbone", "he"]
    with pytest.raises(BlockMismatchError, match=r"rule 'vgg' places none .* \(x, y\)"):
        get_blocks(_dense_chain(["x", "y"]), "vgg")
    with pytest.raises(BlockMismatchError, match=r"rule \{'a': \['z\*'\]\} places none"):
        get_blocks(_dense_chain(["x", "y"]), {"a": ["z*"]})


def test_save_blocks_says_which_dict_entries_place_no_layer(tmp_path):
    """A dict rule entry whose globs match no layer (a typo: "dnse*") was accepted unsaid: the
    file held no block "head", and the two Dense layers were saved as blocks of their own.
    save_blocks now warns, naming the entry, its globs and the layers saved on their own; a
    rule whose entries all place layers saves without a warning."""

    from keras_blockreuse import read_blocks, save_blocks

    model = _dense_chain(["block_1_0", "block_1_1", "dense", "dense_1"])
    path = str(tmp_path / "m.blocks.h5")
    with pytest.warns(UserWarning) as caught:
        save_blocks(model, path, blocks={"block_1": ["block_1_*"], "head": ["dnse*"]})
    assert [str(w.message) for w in caught] == [
        "save_blocks: the block rule's layer names or globs {'head': ['dnse*']} match no "
        f"layer of model {model.name!r}; its entries ['head'] place no weighted layer, so the "
        "file holds no such block; the layers no entry places are saved as blocks of their "
        "own: ['dense', 'dense_1']. Check them against the model's layer names (case counts; "
        "get_blocks(model) lists its layers by block)."]
    assert list(read_blocks(path).blocks) == ["block_1", "dense", "dense_1"]
    # Found by a fresh-user test: one mistyped name of several (or the wrong case) left its
    # layer out of the block unsaid.
    with pytest.warns(UserWarning) as caught:
        save_blocks(model, path, blocks={"block_1": ["block_1_0", "Block_1_1"],
                                         "head": ["dense*"]})
    assert [str(w.message) for w in caught] == [
        "save_blocks: the block rule's layer names or globs {'block_1': ['Block_1_1']} match "
        f"no layer of model {model.name!r}; the layers no entry places are saved as blocks of "
        "their own: ['block_1_1']. Check them against the model's layer names (case counts; "
        "get_blocks(model) lists its layers by block)."]
    # Found by a fresh-user test: a layer without weights named by the rule, or a name with
    # glob characters matched exactly, is no typo: no warning.
    odd = keras.Sequential([keras.Input((4,)), L.Dense(3, name="fc[1]"), L.Dropout(0.1,
                                                                                 name="drop"),
                            L.Dense(3, name="head")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_blocks(odd, path, blocks={"feat": ["fc[1]", "drop"], "head": ["head"]})
    assert list(read_blocks(path).blocks) == ["feat", "head"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_blocks(model, path, blocks={"block_1": ["block_1_*"], "head": ["dense*"]})
    assert list(read_blocks(path).blocks) == ["block_1", "head"]
