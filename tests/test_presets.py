"""Block presets for keras.applications: detection, stage names and order, full coverage."""

import functools
import re

import keras
import numpy as np
import pytest

from keras_blockreuse.presets import (
    PRESETS,
    assign_blocks,
    automatic_names,
    detect_preset,
    explain_unnamed,
    numbered_from_zero,
)

A = keras.applications
SMALL = {"input_shape": (32, 32, 3), "classes": 5, "weights": None}

# name -> (builder, keyword arguments, expected preset, expected blocks in order)
FAMILIES = {
    "VGG16": (A.VGG16, SMALL, "vgg", ["block1", "block2", "block3", "block4", "block5",
                                      "fc1", "fc2", "predictions"]),
    "VGG19": (A.VGG19, SMALL, "vgg", ["block1", "block2", "block3", "block4", "block5",
                                      "fc1", "fc2", "predictions"]),
    "ResNet50": (A.ResNet50, SMALL, "resnet",
                 ["conv1", "conv2", "conv3", "conv4", "conv5", "predictions"]),
    "ResNet101": (A.ResNet101, SMALL, "resnet",
                  ["conv1", "conv2", "conv3", "conv4", "conv5", "predictions"]),
    "ResNet152": (A.ResNet152, SMALL, "resnet",
                  ["conv1", "conv2", "conv3", "conv4", "conv5", "predictions"]),
    "ResNet50V2": (A.ResNet50V2, SMALL, "resnet",
                   ["conv1", "conv2", "conv3", "conv4", "conv5", "post_bn", "predictions"]),
    "ResNet101V2": (A.ResNet101V2, {**SMALL, "include_top": False}, "resnet",
                    ["conv1", "conv2", "conv3", "conv4", "conv5", "post_bn"]),
    "DenseNet121": (A.DenseNet121, SMALL, "densenet",
                    ["conv1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "conv5",
                     "bn", "predictions"]),
    "MobileNet": (A.MobileNet, SMALL, "mobilenet",
                  ["stem"] + [f"block_{i}" for i in range(1, 14)] + ["predictions"]),
    "MobileNetV2": (A.MobileNetV2, SMALL, "mobilenet_v2",
                    ["stem"] + [f"block_{i}" for i in range(1, 17)] + ["head", "predictions"]),
    "MobileNetV2_notop": (A.MobileNetV2, {**SMALL, "include_top": False}, "mobilenet_v2",
                          ["stem"] + [f"block_{i}" for i in range(1, 17)] + ["head"]),
    "MobileNetV3Small": (A.MobileNetV3Small, SMALL, "mobilenet_v3",
                         ["stem"] + [f"block_{i}" for i in range(1, 11)]
                         + ["head", "fc", "predictions"]),
    "MobileNetV3Large": (A.MobileNetV3Large, {**SMALL, "include_top": False}, "mobilenet_v3",
                         ["stem"] + [f"block_{i}" for i in range(1, 15)] + ["head"]),
    "EfficientNetB0": (A.EfficientNetB0, SMALL, "efficientnet",
                       ["stem"] + [f"block{i}" for i in range(1, 8)] + ["top", "predictions"]),
    "EfficientNetV2B0": (A.EfficientNetV2B0, SMALL, "efficientnet",
                         ["stem"] + [f"block{i}" for i in range(1, 7)]
                         + ["top", "predictions"]),
    "EfficientNetV2S": (A.EfficientNetV2S, {**SMALL, "include_top": False}, "efficientnet",
                        ["stem"] + [f"block{i}" for i in range(1, 7)] + ["top"]),
    "Xception": (A.Xception, {**SMALL, "input_shape": (71, 71, 3)}, "xception",
                 [f"block{i}" for i in range(1, 15)] + ["predictions"]),
    "ConvNeXtTiny": (A.ConvNeXtTiny, SMALL, "convnext",
                     ["stem", "stage_0", "downsampling_block_0", "stage_1",
                      "downsampling_block_1", "stage_2", "downsampling_block_2", "stage_3",
                      "head", "predictions"]),
    "ConvNeXtTiny_notop": (A.ConvNeXtTiny, {**SMALL, "include_top": False, "name": "backbone"},
                           "convnext",
                           ["stem", "stage_0", "downsampling_block_0", "stage_1",
                            "downsampling_block_1", "stage_2", "downsampling_block_2",
                            "stage_3", "head"]),
}


@functools.cache
def build(key):
    """Builds each model once per test session (weights=None: offline, never trained)."""
    if key == "InceptionV3":
        return A.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=5)
    builder, kwargs, _, _ = FAMILIES[key]
    return builder(**kwargs)


def names_of(model):
    return [layer.name for layer in model.layers]


def weighted(model):
    return [layer.name for layer in model.layers if len(layer.weights) > 0]


def block_order(assigned, model):
    order = []
    for name in weighted(model):
        if assigned[name] not in order:
            order.append(assigned[name])
    return order


def members(assigned, model, block):
    return [name for name in weighted(model) if assigned[name] == block]


SLOW = {"ResNet152", "EfficientNetV2S"}  # big to build; never trained


def params(keys):
    return [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in keys]


@pytest.mark.parametrize("key", params(FAMILIES))
def test_family_detected_from_weighted_layers_alone(key):
    # A weights file names only the layers that hold weights.
    assert detect_preset(weighted(build(key))) == FAMILIES[key][2]


@pytest.mark.parametrize("key", params(FAMILIES))
def test_family_detected_with_stages_in_order(key):
    model = build(key)
    _, _, preset, expected = FAMILIES[key]
    assert detect_preset(names_of(model)) == preset
    assigned = assign_blocks(preset, names_of(model))
    missing = [name for name in weighted(model) if name not in assigned]
    assert missing == []
    assert block_order(assigned, model) == expected
    # A block's weighted layers are contiguous in computation order: stages do not interleave.
    runs = [assigned[name] for name in weighted(model)]
    collapsed = [block for i, block in enumerate(runs) if i == 0 or runs[i - 1] != block]
    assert collapsed == expected
    # Every variable of the model lies in exactly one block.
    per_block = sum(
        len(layer.weights) for layer in model.layers if layer.name in assigned
    )
    assert per_block == len(model.weights)


@pytest.mark.parametrize(
    "key", params(k for k in FAMILIES if not k.startswith(("Xception", "ConvNeXt")))
)
def test_name_rule_alone_places_every_weighted_layer(key):
    model = build(key)
    rule = PRESETS[FAMILIES[key][2]]
    assigned = assign_blocks(rule, names_of(model))
    for name in weighted(model):
        assert rule(name) == assigned[name]


def test_resnet101_conv4_block1_never_takes_conv4_block10():
    model = build("ResNet101")
    assigned = assign_blocks("resnet", names_of(model))
    for stage in ["conv1", "conv2", "conv3", "conv4", "conv5"]:
        assert members(assigned, model, stage) == [
            n for n in weighted(model) if n.startswith(stage + "_")
        ]
    conv4 = members(assigned, model, "conv4")
    assert "conv4_block1_1_conv" in conv4 and "conv4_block10_1_conv" in conv4
    assert len(conv4) == 23 * 6 + 2  # 23 bottlenecks of 3 conv + 3 bn; one projection pair
    assert members(assigned, model, "conv1") == ["conv1_conv", "conv1_bn"]
    assert PRESETS["resnet"]("conv4_block10_3_bn") == "conv4"
    # No stage is named after a unit: a rule over units would have to stop at the underscore.
    assert not any(re.fullmatch(r"conv\d+_block\d+", b) for b in set(assigned.values()))


@pytest.mark.slow
def test_resnet152_has_36_units_in_conv4():
    model = build("ResNet152")
    assigned = assign_blocks("resnet", names_of(model))
    units = {re.match(r"conv4_(block\d+)_", n).group(1) for n in members(assigned, model, "conv4")}
    assert units == {f"block{i}" for i in range(1, 37)}


def test_mobilenet_v2_block_1_never_takes_block_10():
    model = build("MobileNetV2")
    assigned = assign_blocks("mobilenet_v2", names_of(model))
    assert members(assigned, model, "block_1") == [
        "block_1_expand", "block_1_expand_BN", "block_1_depthwise", "block_1_depthwise_BN",
        "block_1_project", "block_1_project_BN",
    ]
    for i in range(10, 17):
        assert all(n.startswith(f"block_{i}_") for n in members(assigned, model, f"block_{i}"))
        assert len(members(assigned, model, f"block_{i}")) == 6
    assert members(assigned, model, "stem") == [
        "Conv1", "bn_Conv1", "expanded_conv_depthwise", "expanded_conv_depthwise_BN",
        "expanded_conv_project", "expanded_conv_project_BN",
    ]
    assert members(assigned, model, "head") == ["Conv_1", "Conv_1_bn"]
    assert members(assigned, model, "predictions") == ["predictions"]


def test_mobilenet_v1_pairs_depthwise_and_pointwise():
    model = build("MobileNet")
    assigned = assign_blocks("mobilenet", names_of(model))
    assert members(assigned, model, "block_1") == [
        "conv_dw_1", "conv_dw_1_bn", "conv_pw_1", "conv_pw_1_bn"
    ]
    assert members(assigned, model, "block_13") == [
        "conv_dw_13", "conv_dw_13_bn", "conv_pw_13", "conv_pw_13_bn"
    ]
    assert members(assigned, model, "predictions") == ["conv_preds"]


def test_mobilenet_v3_block_1_never_takes_block_10():
    model = build("MobileNetV3Small")
    assigned = assign_blocks("mobilenet_v3", names_of(model))
    assert all(n.startswith("expanded_conv_1_") for n in members(assigned, model, "block_1"))
    assert all(n.startswith("expanded_conv_10_") for n in members(assigned, model, "block_10"))
    stem = members(assigned, model, "stem")
    assert stem[:2] == ["conv", "conv_bn"]
    assert "expanded_conv_squeeze_excite_conv" in stem
    assert members(assigned, model, "fc") == ["conv_2"]
    assert members(assigned, model, "predictions") == ["logits"]


def test_efficientnet_stage_is_block_number_plus_letters():
    model = build("EfficientNetB0")
    assigned = assign_blocks("efficientnet", names_of(model))
    block2 = members(assigned, model, "block2")
    assert {re.match(r"block2([a-z]+)_", n).group(1) for n in block2} == {"a", "b"}
    # The weighted Normalization layer Keras builds unnamed joins the stem, whatever its counter.
    normalization = [n for n in weighted(model) if n.startswith("normalization")]
    assert len(normalization) == 1
    assert assigned[normalization[0]] == "stem"
    assert PRESETS["efficientnet"]("block12aa_dwconv") == "block12"
    assert PRESETS["efficientnet"]("block1_dwconv") is None


def test_xception_unnamed_shortcuts_join_their_blocks():
    model = build("Xception")
    names = names_of(model)
    assigned = assign_blocks("xception", names)
    # Shortcut 1x1 convolutions: 128, 256, 728 and 1024 filters for blocks 2, 3, 4 and 13.
    shortcuts = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"
                 and not layer.name.startswith("block")]
    assert {layer.filters: assigned[layer.name] for layer in shortcuts} == {
        128: "block2", 256: "block3", 728: "block4", 1024: "block13"
    }
    norms = [n for n in weighted(model) if n.startswith("batch_normalization")]
    assert [assigned[n] for n in norms] == ["block2", "block3", "block4", "block13"]
    # block1 never takes block10 ... block14.
    assert all(n.startswith("block1_") for n in members(assigned, model, "block1"))
    # The name alone cannot place an automatic name.
    assert PRESETS["xception"](shortcuts[0].name) is None


def test_convnext_nested_sequential_submodels_are_blocks():
    model = build("ConvNeXtTiny")
    assigned = assign_blocks("convnext", names_of(model))
    assert members(assigned, model, "stem") == ["convnext_tiny_stem"]
    assert isinstance(model.get_layer("convnext_tiny_stem"), keras.Sequential)
    for i in range(3):
        assert members(assigned, model, f"downsampling_block_{i}") == [
            f"convnext_tiny_downsampling_block_{i}"
        ]
    assert len(members(assigned, model, "stage_2")) == 9 * 5  # 9 blocks, 5 weighted layers
    assert members(assigned, model, "head") == ["convnext_tiny_head_layernorm"]
    assert members(assigned, model, "predictions") == ["convnext_tiny_head_dense"]


def test_convnext_without_top_places_its_unnamed_final_norm():
    model = build("ConvNeXtTiny_notop")
    assigned = assign_blocks("convnext", names_of(model))
    head = members(assigned, model, "head")
    assert len(head) == 1 and re.fullmatch(r"layer_normalization(_\d+)?", head[0])
    assert PRESETS["convnext"](head[0]) is None


def test_truncated_backbone_is_still_detected():
    base = build("ResNet50")
    backbone = keras.Model(base.input, base.get_layer("conv4_block6_out").output)
    assert detect_preset(names_of(backbone)) == "resnet"
    assigned = assign_blocks("resnet", names_of(backbone))
    assert block_order(assigned, backbone) == ["conv1", "conv2", "conv3", "conv4"]


def test_foreign_layers_are_left_to_other_rules():
    assert PRESETS["resnet"]("my_head") is None
    assert PRESETS["vgg"]("block1_conv1_bn") is None
    assigned = assign_blocks("xception", ["block14_sepconv2", "conv2d_99"])
    assert "conv2d_99" not in assigned  # after the family's last layer: not a shortcut


def test_detection_tells_close_families_apart():
    assert detect_preset(["block1_conv1", "block1_conv2", "block2_conv1"]) == "vgg"
    assert detect_preset(["block1_conv1", "block1_conv1_bn", "block2_sepconv1"]) == "xception"
    assert detect_preset(["conv1_conv", "conv2_block1_1_conv", "conv2_block1_0_bn"]) == "densenet"
    assert detect_preset(["conv1_conv", "conv2_block1_1_conv", "conv2_block1_0_conv"]) == "resnet"
    assert detect_preset(["block_1_0", "block_1_1", "dense_1"]) is None
    assert detect_preset([]) is None


def test_inception_v3_names_are_explained():
    model = build("InceptionV3")
    names = names_of(model)
    assert detect_preset(names) is None
    message = explain_unnamed(names)
    assert message is not None
    assert "automatic" in message and "InceptionV3" in message and "blocks=" in message
    message = explain_unnamed(names, weighted=weighted(model))
    assert "of 189 weighted layers" in message and "InceptionV3" in message


@pytest.mark.parametrize("key", ["VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0"])
def test_named_families_are_not_flagged(key):
    assert explain_unnamed(names_of(build(key))) is None


def test_small_automatic_models_are_not_flagged():
    assert explain_unnamed(["input_layer", "dense", "dense_1", "dropout"]) is None
    # Named weighted layers between many unnamed activations and dropouts are fine.
    names = [f"block_{i}_0" for i in range(12)] + ["activation"] + [
        f"activation_{i}" for i in range(1, 24)]  # (as Keras names them: never `_0`)
    assert explain_unnamed(names) is not None
    assert explain_unnamed(names, weighted=names[:12]) is None
    assert automatic_names(["conv2d", "conv2d_3", "block1_conv1", "mixed0"]) == [
        "conv2d", "conv2d_3"
    ]


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown block preset 'inception'.*resnet"):
        assign_blocks("inception", ["conv2d"])


# --- through the core API ---------------------------------------------------------------

def test_get_blocks_with_a_preset_name():
    from keras_blockreuse import get_blocks

    model = build("ResNet101")
    blocks = get_blocks(model, blocks="resnet")
    assert list(blocks) == ["conv1", "conv2", "conv3", "conv4", "conv5", "predictions"]
    assert sum(len(b.layers) for b in blocks.values()) == len(weighted(model))
    conv4 = [layer.name for layer in blocks["conv4"].layers]
    assert "conv4_block1_1_conv" in conv4 and "conv4_block10_1_conv" in conv4
    assert blocks["conv1"].num_params == sum(
        int(np.prod(v.shape)) for n in ["conv1_conv", "conv1_bn"]
        for v in model.get_layer(n).weights)


def test_block_model_detects_the_family():
    from keras_blockreuse import BlockModel

    model = BlockModel.from_model(build("MobileNetV2"))
    assert list(model.blocks) == FAMILIES["MobileNetV2"][3]
    assert [layer.name for layer in model.blocks["block_1"].layers][0] == "block_1_expand"


def test_block_model_of_a_backbone_with_a_new_head():
    from keras_blockreuse import BlockModel

    base = build("ResNet50")
    features = base.get_layer("conv3_block4_out").output
    x = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(3, name="head_out")(x)
    model = BlockModel.from_model(keras.Model(base.input, outputs))
    assert list(model.blocks) == ["conv1", "conv2", "conv3", "head_out"]


def test_get_blocks_places_xception_shortcuts():
    from keras_blockreuse import get_blocks

    model = build("Xception")
    blocks = get_blocks(model)
    assert list(blocks) == FAMILIES["Xception"][3]
    names = [layer.name for layer in blocks["block2"].layers]
    assert any(n.startswith("conv2d") for n in names)


def test_block_model_refuses_automatic_names():
    from keras_blockreuse import BlockModel

    with pytest.raises(ValueError, match="automatic.*InceptionV3"):
        BlockModel.from_model(build("InceptionV3"))


def test_names_numbered_from_zero_are_not_automatic():
    """Keras never counts an automatic name from zero (`dense`, `dense_1`): `dense_0` was
    named by code; the `dense_1` beside it may be Keras's own (a shifted counter), so it
    stays automatic. `numbered_from_zero` lists such families (not one holding `dense`)."""
    assert automatic_names(["dense_0", "dense_1", "conv2d", "conv2d_1", "conv2d_01"]) == [
        "dense_1", "conv2d", "conv2d_1"]
    assert numbered_from_zero(["head/conv2d_0", "head/conv2d_1", "conv2d_1", "x/dense_2"]) == {
        "head/conv2d_0", "head/conv2d_1"}
    assert numbered_from_zero(["dense", "dense_0", "dense_1"]) == set()
