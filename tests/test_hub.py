"""keras-hub backbones and tasks: block presets, preset directories as sources, the CLI."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

keras_hub = pytest.importorskip(
    "keras_hub", reason="keras-hub is not installed (pip install 'keras-blockreuse[hub]')"
)

import keras  # noqa: E402

from keras_blockreuse import (  # noqa: E402
    BlockFileError,
    BlockMismatchError,
    get_blocks,
    load_blocks,
    save_blocks,
)
from keras_blockreuse.cli import describe, main  # noqa: E402
from tests.helpers import assert_same, snapshot  # noqa: E402

M = keras_hub.models


# --- small models, random weights -------------------------------------------------------------


def resnet(image_shape=(32, 32, 3)):
    return M.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32, 32], stackwise_num_blocks=[2, 1, 1],
        stackwise_num_strides=[1, 2, 2], block_type="basic_block", image_shape=image_shape,
    )


def efficientnet():
    return M.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3, 3], stackwise_num_repeats=[1, 2, 1],
        stackwise_input_filters=[8, 8, 16], stackwise_output_filters=[8, 16, 16],
        stackwise_expansion_ratios=[1, 2, 2], stackwise_squeeze_and_excite_ratios=[0, 0, 0.25],
        stackwise_strides=[1, 2, 2], stackwise_block_types=["fused", "fused", "unfused"],
        width_coefficient=1.0, depth_coefficient=1.0, input_shape=(32, 32, 3), num_features=32,
    )


def mobilenet():
    return M.MobileNetBackbone(
        stackwise_expansion=[[16, 24], [32]], stackwise_num_blocks=[2, 1],
        stackwise_num_filters=[[8, 8], [16]], stackwise_kernel_size=[[3, 3], [3]],
        stackwise_num_strides=[[2, 1], [2]], stackwise_se_ratio=[[None, None], [0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish"]], stackwise_padding=[[1, 1], [1]],
        output_num_filters=32, depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        last_layer_filter=32, squeeze_and_excite=0.5, image_shape=(32, 32, 3),
        input_num_filters=8,
    )


def vit():
    return M.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2,
                         hidden_dim=8, mlp_dim=16)


def dinov2():
    return M.DINOV2Backbone(patch_size=4, num_layers=2, hidden_dim=8, num_heads=2,
                            intermediate_dim=16, image_shape=(16, 16, 3),
                            position_embedding_shape=(16, 16, 3))


def gpt2(num_layers=2):
    return M.GPT2Backbone(vocabulary_size=50, num_layers=num_layers, num_heads=2, hidden_dim=8,
                          intermediate_dim=16, max_sequence_length=16)


def bert():
    return M.BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
                          intermediate_dim=16, max_sequence_length=16)


def detector(num_classes=3):
    backbone = M.RetinaNetBackbone(image_encoder=resnet(), min_level=3, max_level=4,
                                   use_p5=False, image_shape=(32, 32, 3))
    return M.RetinaNetObjectDetector(backbone=backbone, num_classes=num_classes,
                                     pre_logits_num_conv_layers=1)


def randomize(model, seed):
    """Every variable to other random values (moving statistics included), so copies show."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype(v.dtype))


def values(variables):
    return [np.array(v) for v in variables]


def assert_partition(model, blocks):
    """Every variable of the model is in exactly one block."""
    ids = [id(v) for block in blocks.values() for v in block.variables]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(id(v) for v in model.weights)


# --- presets ----------------------------------------------------------------------------------

RESNET_STAGES = ["stem", "stage_1", "stage_2", "stage_3"]


@pytest.mark.parametrize(
    "build, expected",
    [
        (resnet, {"stem": ["conv1_conv", "conv1_bn"],
                  "stage_1": ["stack0_block0_1_conv", "stack0_block0_1_bn", "stack0_block0_2_conv",
                              "stack0_block0_2_bn", "stack0_block1_1_conv", "stack0_block1_1_bn",
                              "stack0_block1_2_conv", "stack0_block1_2_bn"],
                  "stage_2": ["stack1_block0_1_conv", "stack1_block0_1_bn", "stack1_block0_0_conv",
                              "stack1_block0_2_conv", "stack1_block0_0_bn", "stack1_block0_2_bn"],
                  "stage_3": ["stack2_block0_1_conv", "stack2_block0_1_bn", "stack2_block0_0_conv",
                              "stack2_block0_2_conv", "stack2_block0_0_bn", "stack2_block0_2_bn"]}),
        (efficientnet, {"stem": ["stem_conv", "stem_bn"], "stage_1": ["block1a_"],
                        "stage_2": ["block2a_", "block2b_"], "stage_3": ["block3a_"],
                        "top": ["top_conv", "top_bn"]}),
        (mobilenet, {"stem": ["input_conv", "input_batch_norm", "block_0_0"],
                     "stage_1": ["block_1_0", "block_1_1"], "stage_2": ["block_2_0"],
                     "top": ["block_3_0"]}),
        (vit, {"embeddings": ["vit_patching_and_embedding"],
               "transformer_layer_0": ["transformer_block_1"],
               "transformer_layer_1": ["transformer_block_2"], "final_norm": ["ln"]}),
        (dinov2, {"embeddings": ["embeddings"], "transformer_layer_0": ["layers_0"],
                  "transformer_layer_1": ["layers_1"], "final_norm": ["layernorm"]}),
        (gpt2, {"embeddings": ["token_embedding", "position_embedding"],
                "transformer_layer_0": ["transformer_layer_0"],
                "transformer_layer_1": ["transformer_layer_1"], "final_norm": ["layer_norm"]}),
        (bert, {"embeddings": ["token_embedding", "position_embedding", "segment_embedding",
                               "embeddings_layer_norm"],
                "transformer_layer_0": ["transformer_layer_0"],
                "transformer_layer_1": ["transformer_layer_1"], "pooled_dense": ["pooled_dense"]}),
    ],
    ids=["resnet", "efficientnet", "mobilenet", "vit", "dinov2", "gpt2", "bert"],
)
def test_backbone_presets(build, expected):
    model = build()
    blocks = get_blocks(model)
    assert {name: [layer.name for layer in b.layers] for name, b in blocks.items()} == expected
    assert list(blocks) == list(expected)  # the order the model computes them
    assert_partition(model, blocks)


def test_task_presets_group_the_backbone_and_the_head():
    classifier = M.ImageClassifier(backbone=resnet(), num_classes=10)
    blocks = get_blocks(classifier)
    assert list(blocks) == [*RESNET_STAGES, "predictions"]
    assert_partition(classifier, blocks)

    retinanet = detector()
    blocks = get_blocks(retinanet)
    assert list(blocks) == [*RESNET_STAGES, "fpn", "box_head", "classification_head"]
    assert_partition(retinanet, blocks)

    # The language-model head is the backbone's token embedding (tied): no block of its own.
    lm = M.GPT2CausalLM(backbone=gpt2(), preprocessor=None)
    blocks = get_blocks(lm)
    assert list(blocks) == ["embeddings", "transformer_layer_0", "transformer_layer_1",
                            "final_norm"]
    assert_partition(lm, blocks)


def test_an_explicit_rule_still_wins():
    model = gpt2()
    blocks = get_blocks(model, {"everything": ["*"]})
    assert list(blocks) == ["everything"]


# --- classification stages into RetinaNet ------------------------------------------------------


def _check_stages_copied(classifier, retinanet, own_before, report):
    source, target = get_blocks(classifier), get_blocks(retinanet)
    for name in RESNET_STAGES:
        for a, b in zip(values(source[name].variables), values(target[name].variables),
                        strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)  # bit-identical
    own = [v for name in ("fpn", "box_head", "classification_head")
           for v in target[name].variables]
    for before, after in zip(own_before, values(own), strict=True):
        assert np.array_equal(before, after)  # the detector's own layers untouched
    assert report.loaded == {name: name for name in RESNET_STAGES}
    assert report.untouched == ["fpn", "box_head", "classification_head"]
    assert report.unexpected == ["predictions"]
    # No block was named: the detector's own blocks and the classifier's head are unpaired on
    # both sides, which the report says (ok=False); naming the stages makes it the subset asked.
    assert report.unpaired == (["fpn", "box_head", "classification_head"], ["predictions"])
    assert not report.ok


def _classifier_and_detector():
    classifier = M.ImageClassifier(backbone=resnet(), num_classes=10)
    randomize(classifier, seed=1)
    retinanet = detector()
    randomize(retinanet, seed=2)
    target = get_blocks(retinanet)
    own_before = values([v for name in ("fpn", "box_head", "classification_head")
                         for v in target[name].variables])
    first = values(target["stage_1"].variables)
    assert not np.array_equal(first[0], values(get_blocks(classifier)["stage_1"].variables)[0])
    return classifier, retinanet, own_before


def test_classifier_stages_into_retinanet_from_a_block_file(tmp_path):
    classifier, retinanet, own_before = _classifier_and_detector()
    path = save_blocks(classifier, tmp_path / "classifier.blocks.h5")
    report = load_blocks(retinanet, path)
    _check_stages_copied(classifier, retinanet, own_before, report)
    assert load_blocks(retinanet, path, only=RESNET_STAGES).ok


def test_classifier_stages_into_retinanet_from_a_preset_directory(tmp_path):
    classifier, retinanet, own_before = _classifier_and_detector()
    classifier.save_to_preset(str(tmp_path / "classifier"))
    report = load_blocks(retinanet, str(tmp_path / "classifier"))
    _check_stages_copied(classifier, retinanet, own_before, report)
    assert report.bytes_read == sum(
        get_blocks(classifier)[name].nbytes for name in RESNET_STAGES)  # only what it loads


@pytest.mark.parametrize("kind", ["weights", "keras", "backbone"])
def test_classifier_stages_into_retinanet_from_a_keras_file(tmp_path, kind):
    """Found by a fresh-user test: a classifier's `.weights.h5` or `.keras` (the format most
    Keras users save) into a RetinaNet over the same encoder was refused ("Unknown block
    name(s) ['stem', 'stage_*']": the file's encoder layers, `res_net_backbone/conv1_conv`,
    were grouped as one block, `res_net_backbone`), while its preset directory and block file
    loaded. The detector's encoder layers are now listed as a classifier's file holds them;
    here the detector's encoder is `res_net_backbone_1` (built second in the session)."""
    classifier, retinanet, own_before = _classifier_and_detector()
    assert retinanet.backbone.image_encoder.name != classifier.backbone.name
    if kind == "backbone":
        path = str(tmp_path / "encoder.weights.h5")
        classifier.backbone.save_weights(path)
    else:
        path = str(tmp_path / f"classifier.{'weights.h5' if kind == 'weights' else 'keras'}")
        classifier.save_weights(path) if kind == "weights" else classifier.save(path)
    report = load_blocks(retinanet, path, only=["stem", "stage_*"])
    source, target = get_blocks(classifier), get_blocks(retinanet)
    assert report.ok and report.variables_loaded == sum(
        len(source[name].variables) for name in RESNET_STAGES), str(report)
    assert report.loaded == {name: name for name in RESNET_STAGES}
    for name in RESNET_STAGES:
        for a, b in zip(values(source[name].variables), values(target[name].variables),
                        strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    own = [v for name in ("fpn", "box_head", "classification_head")
           for v in target[name].variables]
    for before, after in zip(own_before, values(own), strict=True):
        assert before.tobytes() == after.tobytes()


@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_a_detectors_own_file_loads_into_one_built_later_in_the_session(tmp_path, kind):
    """A RetinaNet's own `.weights.h5` / `.keras` into a RetinaNet built after it in the same
    session (`retina_net_backbone_1`, its encoder `res_net_backbone_1`) loaded only the heads,
    the rest reported unpaired (ok=False): the file's nested models were matched to the
    model's only where the file had one (its heads are nested too). Now each nested model
    that alone carries a name up to the counter is matched: every variable bit-identical."""
    source = detector()
    randomize(source, seed=41)
    path = str(tmp_path / f"d.{'weights.h5' if kind == 'weights' else 'keras'}")
    source.save_weights(path) if kind == "weights" else source.save(path)
    target = detector()
    assert target.backbone.name != source.backbone.name
    report = load_blocks(target, path)
    assert report.ok and report.variables_loaded == len(target.weights), str(report)
    for a, b in zip(values(source.weights), values(target.weights), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_the_head_of_a_task_preset_comes_from_task_weights(tmp_path):
    classifier = M.ImageClassifier(backbone=resnet(), num_classes=10)
    randomize(classifier, seed=3)
    classifier.save_to_preset(str(tmp_path / "classifier"))
    copy = M.ImageClassifier(backbone=resnet(), num_classes=10)
    report = load_blocks(copy, str(tmp_path / "classifier"))
    assert list(report.loaded) == [*RESNET_STAGES, "predictions"]
    for a, b in zip(values(classifier.weights), values(copy.weights), strict=True):
        assert np.array_equal(a, b)


def test_a_backbone_preset_directory_and_freezing(tmp_path):
    source = resnet()
    randomize(source, seed=4)
    source.save_to_preset(str(tmp_path / "backbone"))
    retinanet = detector()
    report = load_blocks(retinanet, str(tmp_path / "backbone"), only=["stem", "stage_1"],
                         freeze=True)
    assert list(report.loaded) == ["stem", "stage_1"]
    target = get_blocks(retinanet)
    assert not any(layer.trainable for layer in target["stage_1"].layers)
    assert all(layer.trainable for layer in target["stage_2"].layers)
    for a, b in zip(values(get_blocks(source)["stage_1"].variables),
                    values(target["stage_1"].variables), strict=True):
        assert np.array_equal(a, b)


def test_a_preset_whose_config_was_cut_short_says_so(tmp_path):
    """Found by a fresh-user test: a preset directory whose config.json was cut short (a
    copy or download) was refused as "its config cannot rebuild the model offline
    (JSONDecodeError: ...). Pass source_model=", which reads as a missing network or an
    unknown model, not a damaged file. It now names the file, says it is not valid JSON
    and how it came to be; nothing is loaded."""
    source = resnet()
    preset = str(tmp_path / "backbone")
    source.save_to_preset(preset)
    with open(os.path.join(preset, "config.json"), "r+", encoding="utf-8") as fh:
        fh.truncate(50)
    model = resnet()
    before = snapshot(model)
    with pytest.raises(BlockFileError) as e:
        load_blocks(model, preset)
    assert str(e.value) == (
        f"{preset!r}: config.json is not valid JSON (Unterminated string starting at: line 2 "
        "column 15 (char 16); 50 bytes): the preset is damaged, or a copy or download cut it "
        "short. Write it again (save_to_preset), fetch it again, or pass source_model= (the "
        "model, or a function that builds it).")
    assert_same(before, snapshot(model))


# --- a classifier preset into its bare backbone, and the reverse --------------------------------


def test_a_classifier_preset_directory_loads_into_its_bare_backbone(tmp_path):
    """Found by a fresh-user test: the preset directory was grouped by the backbone's top-level
    names (one block, `res_net_backbone`) and refused; a keras-hub preset directory is grouped
    by its own keras-hub preset, whose stages pair by name with the backbone's."""
    classifier = M.ImageClassifier(backbone=resnet(), num_classes=3)
    randomize(classifier, seed=7)
    classifier.save_to_preset(str(tmp_path / "classifier"))
    backbone = resnet()
    randomize(backbone, seed=8)
    report = load_blocks(backbone, str(tmp_path / "classifier"))
    assert report.ok, str(report)
    assert list(report.loaded) == RESNET_STAGES
    assert report.unpaired == ([], ["predictions"])  # the head: in the source only
    assert report.variables_loaded == len(backbone.weights)
    for a, b in zip(values(classifier.backbone.weights), values(backbone.weights), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["preset", "weights", "keras"])
def test_a_backbone_loads_into_a_classifier_leaving_its_head(tmp_path, kind):
    """The reverse. A backbone's own Keras file (its preset's `model.weights.h5` too) is
    grouped by the names of the task's blocks' layers inside its backbone (was: refused)."""
    source = resnet()
    randomize(source, seed=9)
    path = str(tmp_path / {"preset": "backbone", "weights": "b.weights.h5",
                           "keras": "b.keras"}[kind])
    {"preset": source.save_to_preset, "weights": source.save_weights,
     "keras": source.save}[kind](path)
    classifier = M.ImageClassifier(backbone=resnet(), num_classes=3)
    randomize(classifier, seed=10)
    head = values(get_blocks(classifier)["predictions"].variables)
    report = load_blocks(classifier, path)
    assert report.ok, str(report)
    assert list(report.loaded) == RESNET_STAGES
    assert report.untouched == ["predictions"] and report.unpaired == (["predictions"], [])
    for a, b in zip(values(source.weights), values(classifier.backbone.weights), strict=True):
        assert np.array_equal(a, b)
    for a, b in zip(head, values(get_blocks(classifier)["predictions"].variables), strict=True):
        assert np.array_equal(a, b)


def _offered_load(message: str, source_model) -> dict:
    """The keyword arguments of the `load_blocks(model, source, ...)` a refusal offers, as
    typed in it (`source_model=<the model that wrote the file>`: the model given)."""
    import ast

    match = re.search(r"`load_blocks\(model, source, (.*?)\)`", message)
    assert match, message
    call = ast.parse(f"f({match.group(1).replace('<the model that wrote the file>', 'M')})")
    return {kw.arg: source_model if isinstance(kw.value, ast.Name) else ast.literal_eval(kw.value)
            for kw in call.body[0].value.keywords}


@pytest.mark.parametrize("kind", [".keras", ".weights.h5"])
@pytest.mark.parametrize("build, task", [(resnet, lambda b: M.ImageClassifier(b, num_classes=3)),
                                         (vit, lambda b: M.ViTImageClassifier(
                                             b, num_classes=3, preprocessor=None))],
                         ids=["resnet", "vit"])
def test_a_classifiers_own_file_loads_into_its_bare_backbone(tmp_path, kind, build, task):
    """A keras-hub classifier's own `.keras` / `.weights.h5` into a bare backbone of its
    backbone's config (was refused with a remedy): the file's nested backbone, named as the
    model up to Keras's automatic counter, is grouped by the model's blocks, whose layers
    pair by their names inside it. Every backbone variable loads bit-identically, and the
    head is reported as in the source only."""
    classifier = task(build())
    randomize(classifier, seed=13)
    path = str(tmp_path / f"classifier{kind}")
    save_as(classifier, path)
    backbone = build()
    report = load_blocks(backbone, path)
    assert report.ok, str(report)
    assert list(report.loaded) == list(get_blocks(backbone))
    assert report.unexpected == ["predictions"]
    assert report.variables_loaded == len(backbone.weights)
    for a, b in zip(values(classifier.backbone.weights), values(backbone.weights), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kind", ["preset", "live"])
def test_a_classifier_into_its_bare_backbone_is_offered_a_load_that_works(tmp_path, kind):
    """A preset directory or live keras-hub classifier grouped on purpose by another rule
    (`source_blocks=`) into its bare backbone is refused; the refusal's remedy, applied as
    typed, loads every backbone variable exactly."""
    classifier = M.ImageClassifier(backbone=resnet(), num_classes=3)
    randomize(classifier, seed=11)
    source, options = {
        "preset": (str(tmp_path / "classifier"), {"source_blocks": {"head": ["predictions"]}}),
        "live": (classifier, {"source_blocks": {"head": ["predictions"]}}),
    }[kind]
    if kind == "preset":
        classifier.save_to_preset(source)
    backbone = resnet()
    randomize(backbone, seed=12)
    before = values(backbone.weights)
    with pytest.raises(BlockMismatchError, match=r"inside \['res_net_backbone'\]") as refused:
        load_blocks(backbone, source, **options)
    for a, b in zip(before, values(backbone.weights), strict=True):
        assert np.array_equal(a, b)
    offered = _offered_load(str(refused.value), classifier)
    assert "source_model" not in offered  # the names inside the backbone pair them
    report = load_blocks(backbone, source, **offered)
    assert report.ok and report.pairing == {"res_net_backbone": "name"}, str(report)
    assert report.variables_loaded == len(backbone.weights)
    for a, b in zip(values(classifier.backbone.weights), values(backbone.weights), strict=True):
        assert np.array_equal(a, b)
    if kind == "preset":  # and what the refusal says besides: the preset's own grouping
        assert "pass neither blocks= nor source_blocks=" in str(refused.value)


# --- text: the first transformer layers into a deeper model --------------------------------------


@pytest.mark.parametrize("from_preset", [False, True], ids=["blocks.h5", "preset"])
def test_first_transformer_layers_into_a_deeper_text_backbone(tmp_path, from_preset):
    shallow = gpt2(num_layers=2)
    randomize(shallow, seed=5)
    deep = gpt2(num_layers=4)
    randomize(deep, seed=6)
    untouched = values(get_blocks(deep)["transformer_layer_2"].variables
                       + get_blocks(deep)["transformer_layer_3"].variables
                       + get_blocks(deep)["final_norm"].variables)
    if from_preset:
        shallow.save_to_preset(str(tmp_path / "gpt2"))
        source = str(tmp_path / "gpt2")
    else:
        source = save_blocks(shallow, tmp_path / "gpt2.blocks.h5")
    first = ["embeddings", "transformer_layer_0", "transformer_layer_1"]
    report = load_blocks(deep, source, only=first)
    assert list(report.loaded) == first
    for name in first:
        for a, b in zip(values(get_blocks(shallow)[name].variables),
                        values(get_blocks(deep)[name].variables), strict=True):
            assert np.array_equal(a, b)
    after = values(get_blocks(deep)["transformer_layer_2"].variables
                   + get_blocks(deep)["transformer_layer_3"].variables
                   + get_blocks(deep)["final_norm"].variables)
    for a, b in zip(untouched, after, strict=True):
        assert np.array_equal(a, b)


# --- errors -------------------------------------------------------------------------------------


def test_a_directory_that_is_not_a_preset(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BlockFileError, match="not a keras-hub preset.*config.json"):
        load_blocks(gpt2(), str(tmp_path))


def test_a_preset_whose_weights_do_not_match_its_config(tmp_path):
    gpt2(num_layers=2).save_to_preset(str(tmp_path / "two"))
    gpt2(num_layers=1).save_to_preset(str(tmp_path / "one"))
    os.replace(tmp_path / "one" / "model.weights.h5", tmp_path / "two" / "model.weights.h5")
    target = gpt2(num_layers=2)
    before = values(target.weights)
    with pytest.raises(BlockFileError, match="transformer_layer_1"):
        load_blocks(target, str(tmp_path / "two"))
    for a, b in zip(before, values(target.weights), strict=True):
        assert np.array_equal(a, b)


def test_a_preset_whose_config_cannot_be_rebuilt(tmp_path):
    gpt2().save_to_preset(str(tmp_path / "p"))
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    config["config"]["num_layers"] = "two"
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BlockFileError, match="cannot rebuild the model offline"):
        load_blocks(gpt2(), str(tmp_path / "p"))


# --- the command line and lazy import ----------------------------------------------------------


def test_cli_inspects_a_preset_directory(tmp_path, capsys):
    classifier = M.ImageClassifier(backbone=resnet(), num_classes=10)
    classifier.save_to_preset(str(tmp_path / "classifier"))
    description = describe(str(tmp_path / "classifier"))
    assert description["format"] == "keras-hub preset directory"
    assert description["block rule"] == "keras-hub preset"
    assert [b["name"] for b in description["blocks"]] == [*RESNET_STAGES, "predictions"]
    assert description["num_params"] == classifier.count_params()
    assert main(["inspect", str(tmp_path / "classifier")]) == 0
    out = capsys.readouterr().out
    assert "keras-hub preset directory" in out and "stack0_block0_1_conv" in out


def test_cli_diff_of_a_tasks_block_file_and_its_keras_file(tmp_path, capsys):
    """Found by a fresh-user test: the block file of a task (its backbone's stages as blocks,
    layers by their names in the backbone) against its `.keras` archive (the backbone one
    block, layers by their paths) reported 5 differences though every value is the same.
    `diff` now says that the grouping differs and that the values are identical, pairing
    `conv1_conv` with `res_net_backbone/conv1_conv`."""
    classifier = M.ImageClassifier(backbone=resnet(), num_classes=10)
    randomize(classifier, seed=3)
    blocks = save_blocks(classifier, tmp_path / "c.blocks.h5")
    archive = str(tmp_path / "c.keras")
    classifier.save(archive)
    weights = str(tmp_path / "c.weights.h5")
    classifier.save_weights(weights)
    # the archive's config rebuilds the classifier: grouped by its stages, as the block file
    assert main(["diff", blocks, archive]) == 0
    assert capsys.readouterr().out.strip().endswith(
        "hold the same blocks, variables and values")
    # a .weights.h5 has no config: its backbone is one block
    assert main(["diff", blocks, weights]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:4] == ["The two files group their layers into different blocks:",
                          f"  A: {', '.join(RESNET_STAGES)}, predictions"]
    layers = len([x for x in classifier.backbone.layers if x.weights]) + 1  # + predictions
    assert lines[5:] == [
        f"Compared layer by layer instead ({layers} layers paired by name, or by the last "
        "step of their paths):",
        "the layers, variables and values are identical; only the grouping differs"]


def test_importing_the_package_does_not_import_keras_hub():
    code = ("import sys, keras_blockreuse, keras_blockreuse.sources, keras_blockreuse.cli; "
            "from keras_blockreuse.sources import open_source; "
            "import keras_blockreuse.hub, keras_blockreuse.sources.hub_preset; "
            "print('keras_hub' in sys.modules)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_keras_model_is_not_taken_for_a_keras_hub_one():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense_1")])
    assert list(get_blocks(model)) == ["dense_1"]


@pytest.mark.parametrize("build", [bert, gpt2], ids=["bert", "gpt2"])
@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_a_backbones_own_keras_file_loads_whole_by_its_preset_blocks(tmp_path, build, kind):
    """Found by a fresh-user test: the `embeddings` block (token, position, segment
    embeddings and their norm) did not load from the backbone's own `.weights.h5`; the file is
    now grouped by the model's preset blocks."""
    assert_own_file_loads_whole(build, str(tmp_path / ("b.weights.h5" if kind == "weights"
                                                       else "b.keras")), seed=3)


def assert_own_file_loads_whole(build, path: str, seed: int) -> None:
    """`build()`'s own file (`.weights.h5` or `.keras`, by `path`) loads whole into another
    `build()`: every block, every variable bit-identical."""
    source = build()
    randomize(source, seed=seed)
    source.save(path) if path.endswith(".keras") else source.save_weights(path)
    target = build()
    report = load_blocks(target, path)
    assert report.ok, str(report)
    assert list(report.loaded) == list(get_blocks(target))
    assert report.variables_loaded == len(target.weights)
    for a, b in zip(values(target.weights), values(source.weights), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _two_stages(blocks):
    return M.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=list(blocks), stackwise_num_strides=[1, 1],
        block_type="basic_block", image_shape=(None, None, 1))


def test_a_preset_whose_weights_another_config_wrote_is_refused(tmp_path):
    """Found by a fresh-user test: a preset directory whose model.weights.h5 was written by
    another configuration ([1, 2] blocks per stage) than its config.json ([2, 1]). Its files
    are placed by where the config's model keeps each variable, so the values would go to the
    wrong layers (the suggested on_mismatch='skip' loaded them one place off). Any variable
    whose shape differs from the config's model at its place refuses the whole directory."""
    import shutil

    written, other = _two_stages((2, 1)), _two_stages((1, 2))
    written.save_to_preset(str(tmp_path / "a"))
    other.save_to_preset(str(tmp_path / "b"))
    mixed = tmp_path / "a_with_b"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copy(tmp_path / "b" / "model.weights.h5", mixed / "model.weights.h5")
    target = _two_stages((2, 1))
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in target.weights]
    for on_mismatch in ("error", "skip"):
        with pytest.raises(BlockFileError, match=r"its weights files do not match the model "
                           r"rebuilt from its config: variable .* is \(3, 3, 64, 64\) in the "
                           r"model and \(1, 1, 64, 64\) in the file"):
            load_blocks(target, str(mixed), on_mismatch=on_mismatch)
    assert all(np.array_equal(a, np.array(keras.ops.convert_to_numpy(v)))
               for a, v in zip(before, target.weights, strict=True))


@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_a_tasks_own_keras_file_loads_into_the_same_task(tmp_path, kind):
    """A keras-hub classifier's own `.weights.h5` / `.keras` (its backbone nested in the file)
    into a classifier of the same config, built later in the same session (its backbone
    named `res_net_backbone_1`): every block loads bit-identically (was: only the head, the
    backbone reported as one unpaired block, ok=False). Into one with another number of
    classes, exclude=["predictions"] loads the backbone and leaves the head."""
    source = M.ImageClassifier(backbone=resnet(), num_classes=3)
    randomize(source, seed=21)
    path = str(tmp_path / ("c.weights.h5" if kind == "weights" else "c.keras"))
    source.save_weights(path) if kind == "weights" else source.save(path)

    same = M.ImageClassifier(backbone=resnet(), num_classes=3)
    assert same.backbone.name != source.backbone.name  # the automatic counter
    report = load_blocks(same, path)
    assert report.ok, str(report)
    assert list(report.loaded) == [*RESNET_STAGES, "predictions"]
    assert report.variables_loaded == len(same.weights)
    for a, b in zip(values(source.weights), values(same.weights), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()

    other = M.ImageClassifier(backbone=resnet(), num_classes=5)
    randomize(other, seed=22)
    head = values(get_blocks(other)["predictions"].variables)
    report = load_blocks(other, path, exclude=["predictions"])
    assert report.ok and list(report.loaded) == RESNET_STAGES, str(report)
    for a, b in zip(values(source.backbone.weights), values(other.backbone.weights),
                    strict=True):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(head, values(get_blocks(other)["predictions"].variables), strict=True):
        assert a.tobytes() == b.tobytes()


def test_a_file_nesting_the_layers_in_another_model_is_named_as_such(tmp_path):
    """Only a nested model named as the task's backbone (up to Keras's automatic counter) is
    grouped as that backbone. A file nesting the backbone's layers in another model (a
    Sequential around a functional named `features`) keeps its top-level grouping: nothing
    loads, no weight changes, and the refusal names the nested model to load from."""
    task = M.ImageClassifier(backbone=resnet(), num_classes=3)
    inner = keras.Model(task.backbone.inputs, task.backbone.outputs, name="features")
    randomize(inner, seed=23)
    wrapper = keras.Sequential([keras.Input((32, 32, 3)), inner], name="wrapper")
    path = str(tmp_path / "w.weights.h5")
    wrapper.save_weights(path)
    target = M.ImageClassifier(backbone=resnet(), num_classes=3)
    before = values(target.weights)
    with pytest.raises(BlockMismatchError, match=r"(?s)Nothing would be loaded.*inside "
                       r"\['features'\] \(a nested model"):
        load_blocks(target, path)
    for a, b in zip(before, values(target.weights), strict=True):
        assert a.tobytes() == b.tobytes()


def bert_classifier():
    return M.BertTextClassifier(backbone=bert(), num_classes=2, preprocessor=None)


def gpt2_causal_lm():
    return M.GPT2CausalLM(backbone=gpt2(), preprocessor=None)


def vit_classifier():
    return M.ViTImageClassifier(backbone=vit(), num_classes=3, preprocessor=None)


def detector_in_a_new_session():
    """A RetinaNet built as in a new process: its nested backbones' automatic names are the
    source's (`retina_net_backbone`, `res_net_backbone`), which a second build in one session
    would number."""
    keras.backend.clear_session()
    return detector()


@pytest.mark.parametrize("build", [bert_classifier, gpt2_causal_lm, vit_classifier,
                                   detector_in_a_new_session],
                         ids=["bert", "gpt2", "vit", "retinanet"])
def test_a_tasks_own_weights_file_loads_whole_into_the_same_task(tmp_path, build):
    """Found by a fresh-user test: a text task's, a ViT classifier's and a RetinaNet's own
    `.weights.h5` loaded only their heads. Each layer is listed by its name path in the task
    (`vi_t_backbone/vit_encoder/transformer_block_1`), its sub-layers go with it, and a causal
    LM's token embedding (tracked by the task and its backbone, saved once under the
    backbone) goes with `embeddings`: all of it loads bit-identically."""
    assert_own_file_loads_whole(build, str(tmp_path / "t.weights.h5"), seed=31)


def backbone_with_a_layer_named_like_the_head():
    """A user's keras-hub `Backbone` with a layer named like its task's head."""
    inputs = keras.Input((4, 4, 8))
    x = keras.layers.Dense(3, name="predictions")(inputs)
    x = keras.layers.Dense(8, name="proj")(x)
    return M.Backbone(inputs=inputs, outputs=x)


def task_around(backbone):
    return M.ImageClassifier(backbone=backbone, num_classes=3, preprocessor=None)


def keras_base_with_a_layer_named_like_the_head():
    """The same in plain Keras: a functional base nested in a transfer model whose head has
    the name of one of the base's layers (as Keras 2 users built them)."""
    inputs = keras.Input((4, 4, 8))
    x = keras.layers.Dense(3, name="predictions")(inputs)
    x = keras.layers.Dense(8, name="proj")(x)
    return keras.Model(inputs, x, name="base")


def keras_model_around(base):
    inputs = keras.Input((4, 4, 8))
    x = keras.layers.Flatten()(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="predictions")(x))


def save_as(model, path: str) -> None:
    if path.endswith(".blocks.h5"):
        save_blocks(model, path)
    elif path.endswith(".keras"):
        model.save(path)
    else:
        model.save_weights(path)


@pytest.mark.parametrize("kind", [".weights.h5", ".keras", ".blocks.h5"])
@pytest.mark.parametrize("inner, outer", [
    (backbone_with_a_layer_named_like_the_head, task_around),
    (keras_base_with_a_layer_named_like_the_head, keras_model_around),
], ids=["keras_hub", "keras"])
def test_a_name_held_at_more_places_on_one_side_pairs_nothing(tmp_path, kind, inner, outer):
    """Found by a fresh-user test: a backbone with a layer named like its task's head
    (`predictions`). The backbone's own file into the task put that layer's values into the
    head, and the task's file into a bare backbone put the head's values into the backbone's
    layer, both with ok=True. One side holds the name at two places, the other at one, so the
    name cannot tell which layer is which: both are refused, with or without only=, and change
    no weight; the loads the refusals offer work, bit-identically."""
    source = outer(inner())
    randomize(source, seed=41)
    nested = next(layer for layer in source.layers if isinstance(layer, keras.Model))
    inner_path, outer_path = str(tmp_path / f"inner{kind}"), str(tmp_path / f"outer{kind}")
    save_as(nested, inner_path)
    save_as(source, outer_path)

    target = outer(inner())
    before = values(target.weights)
    for only in (["predictions"], None):
        with pytest.raises(BlockMismatchError, match=(
                r"the model holds layers named 'predictions' at 2 places \['\w+/predictions', "
                r"'predictions'\] and the source at 1 \['predictions'\]")) as raised:
            load_blocks(target, inner_path, only=only)
        for a, b in zip(before, values(target.weights), strict=True):
            assert a.tobytes() == b.tobytes()
    offered = re.search(r"`load_blocks\(model\.get_layer\('(\w+)'\), source\)`",
                        str(raised.value))
    assert offered, str(raised.value)
    report = load_blocks(target.get_layer(offered.group(1)), inner_path)
    assert report.ok, str(report)
    for a, b in zip(values(nested.weights), values(target.get_layer(offered.group(1)).weights),
                    strict=True):
        assert a.tobytes() == b.tobytes()

    bare = inner()
    before = values(bare.weights)
    for only in (["predictions"], None):
        with pytest.raises(BlockMismatchError, match=(
                r"the source holds layers named 'predictions' at 2 places \['\w+/predictions', "
                r"'predictions'\] and the model at 1 \['predictions'\]")):
            load_blocks(bare, outer_path, only=only)
        for a, b in zip(before, values(bare.weights), strict=True):
            assert a.tobytes() == b.tobytes()
    built = outer(inner())
    built_nested = next(layer for layer in built.layers if isinstance(layer, keras.Model))
    # (a block file keeps its blocks: the nested model's, named by Keras's automatic counter
    # in another build, is paired by rename=)
    rename = ({nested.name: built_nested.name}
              if kind == ".blocks.h5" and nested.name != built_nested.name else None)
    assert load_blocks(built, outer_path, rename=rename).ok
    report = load_blocks(bare, built_nested)
    assert report.ok, str(report)
    for a, b in zip(values(nested.weights), values(bare.weights), strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kind", [".weights.h5", ".keras", ".blocks.h5"])
def test_a_head_named_like_a_layer_of_the_sources_backbone_still_pairs_head_to_head(
        tmp_path, kind):
    """The same name at two places in the source (its head and its backbone's layer) and at
    one in the model (a task whose backbone lacks that layer) is not ambiguous: both top
    levels hold a backbone and a head, so the head loads into the head, bit-identically."""
    source = task_around(backbone_with_a_layer_named_like_the_head())
    randomize(source, seed=43)
    path = str(tmp_path / f"task{kind}")
    save_as(source, path)
    inputs = keras.Input((4, 4, 8))
    other = task_around(M.Backbone(inputs=inputs,
                                   outputs=keras.layers.Dense(8, name="proj")(inputs)))
    report = load_blocks(other, path, only=["predictions"])
    assert report.ok and list(report.loaded) == ["predictions"], str(report)
    for a, b in zip(values(get_blocks(source)["predictions"].variables),
                    values(get_blocks(other)["predictions"].variables), strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kind", [".weights.h5", ".keras"])
def test_a_vit_backbones_own_file_loads_into_its_classifier(tmp_path, kind):
    """Found by a fresh-user test: a ViT backbone's own `.weights.h5` into a ViT classifier
    was refused (its transformer blocks sit inside `vit_encoder`, so the file's layer paths
    are `vit_encoder/transformer_block_1/ln_1` where the block's are
    `transformer_block_1/ln_1`). A block whose source layers are all one prefix followed by
    the model's layer paths, one to one, pairs by those paths: every backbone block loads
    bit-identically, and the head is left as it was."""
    source = vit()
    randomize(source, seed=45)
    path = str(tmp_path / f"b{kind}")
    save_as(source, path)
    classifier = vit_classifier()
    randomize(classifier, seed=46)
    head = values(get_blocks(classifier)["predictions"].variables)
    report = load_blocks(classifier, path)
    assert report.ok, str(report)
    assert list(report.loaded) == [b for b in get_blocks(classifier) if b != "predictions"]
    assert report.variables_loaded == len(source.weights)
    for a, b in zip(values(source.weights), values(classifier.backbone.weights), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    for a, b in zip(head, values(get_blocks(classifier)["predictions"].variables), strict=True):
        assert a.tobytes() == b.tobytes()


def test_a_tasks_file_into_a_task_built_second_pairs_backbone_layers_by_their_names(tmp_path):
    """Found by a fresh-user test: a task (a user Backbone computing named layers `a`, `b`)
    saved, and a task built later in the same session whose backbone (`backbone_1`) computes
    `b`, `a`: the backbone paired by Keras path, against the names, and `a` took `b`'s values
    with ok=True. The layers of a nested model named as the file's up to Keras's automatic
    counter pair by their names below it: bit-identical. One layer fewer is refused, naming
    the file's layer left over."""
    def task(order):
        inputs = keras.Input((8, 8, 3))
        x = inputs
        for name in order:
            x = keras.layers.Dense(3, name=name)(x)
        return task_around(M.Backbone(inputs=inputs, outputs=x))

    source = task(["a", "b"])
    randomize(source, seed=47)
    path = str(tmp_path / "t.weights.h5")
    source.save_weights(path)
    target = task(["b", "a"])
    assert target.backbone.name != source.backbone.name
    report = load_blocks(target, path)
    assert report.ok and set(report.pairing.values()) == {"name"}, str(report)
    for name in ("a", "b"):
        for x, y in zip(values(source.backbone.get_layer(name).weights),
                        values(target.backbone.get_layer(name).weights), strict=True):
            assert x.tobytes() == y.tobytes()
    fewer = task(["b"])
    before = values(fewer.weights)
    with pytest.raises(BlockMismatchError, match=r"backbone/a / \*: no model layer pairs"):
        load_blocks(fewer, path)
    for x, y in zip(before, values(fewer.weights), strict=True):
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("kind", ["weights", "keras"])
@pytest.mark.parametrize("task", [False, True], ids=["backbone", "classifier"])
def test_a_deeper_stage_in_a_keras_file_is_refused_like_in_a_preset(tmp_path, kind, task):
    """Found by a fresh-user test: a `.weights.h5` / `.keras` of a ResNet with two residual
    units in its first stage, into one with one unit, reported `stage_1 | loaded`, ok=True:
    the file's second unit was grouped as blocks of its own (`stack0_block1_1_conv`, or the
    task's whole `res_net_backbone`) that looked like layers the model merely lacks, and only
    half the stage was copied. The file's layers now go to the stage their names give, and
    the stage is refused as from a preset directory or a block file; no weight changes."""
    def build(blocks):
        backbone = _two_stages(blocks)
        return M.ImageClassifier(backbone=backbone, num_classes=3) if task else backbone

    source = build((2, 1))
    randomize(source, seed=31)
    path = str(tmp_path / ("d.weights.h5" if kind == "weights" else "d.keras"))
    source.save_weights(path) if kind == "weights" else source.save(path)
    target = build((1, 1))
    before = values(target.weights)
    prefix = "res_net_backbone/" if task else ""
    for only in (None, ["stage_1"]):
        with pytest.raises(BlockMismatchError) as raised:
            load_blocks(target, path, only=only)
        unpaired = sorted(re.findall(r"- stage_1 / (\S+) / \*: no model layer pairs with it",
                                     str(raised.value)))
        assert unpaired == [f"{prefix}stack0_block1_{i}_{k}" for i in (1, 2)
                            for k in ("bn", "conv")], str(raised.value)
    for a, b in zip(before, values(target.weights), strict=True):
        assert a.tobytes() == b.tobytes()
    report = load_blocks(target, path, on_mismatch="skip")
    assert not report.ok and "stage_1" in report.loaded, str(report)
    assert sorted(m.layer for m in report.skipped if m.block == "stage_1") == unpaired


def test_convert_of_a_tasks_keras_file_groups_it_by_its_stages(tmp_path, capsys):
    """Found by two fresh-user tests: `convert` (and `inspect`) of a keras-hub classifier's
    `.keras` wrote two blocks, `predictions` and `res_net_backbone`, where its preset directory
    and `save_blocks` give the stages, so the converted file could not feed a detector. The
    archive's config rebuilds the classifier, whose own blocks now group it."""
    classifier, retinanet, own_before = _classifier_and_detector()
    archive = str(tmp_path / "c.keras")
    classifier.save(archive)
    converted = str(tmp_path / "c.blocks.h5")
    assert main(["convert", archive, converted]) == 0
    assert capsys.readouterr().out.startswith(
        f"wrote {converted}: 5 blocks (stem, stage_1, stage_2, stage_3, predictions)")
    assert describe(archive)["block rule"] == (
        "the keras-hub ImageClassifier's blocks, rebuilt from config.json")
    report = load_blocks(retinanet, converted, only=["stem", "stage_*"])
    assert report.ok and report.loaded == {name: name for name in RESNET_STAGES}, str(report)
    source, target = get_blocks(classifier), get_blocks(retinanet)
    for name in RESNET_STAGES:
        for a, b in zip(values(source[name].variables), values(target[name].variables),
                        strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kind", ["blocks", "weights"])
def test_a_detectors_heads_named_by_keras_hub_load_without_a_caveat(tmp_path, kind):
    """Found in review: RetinaNet's prediction heads hold their convs in a list, named by
    keras-hub `conv2d_0`, `conv2d_1`, ...; those names were taken for automatic ones, so
    every load of a detector's heads warned that list order alone paired them and told the
    user to name layers keras-hub had named. Names numbered from zero are code's: no caveat,
    every variable bit-identical."""
    def build():
        backbone = M.RetinaNetBackbone(image_encoder=resnet(), min_level=3, max_level=4,
                                       use_p5=False, image_shape=(32, 32, 3))
        return M.RetinaNetObjectDetector(backbone=backbone, num_classes=3,
                                         pre_logits_num_conv_layers=3)

    source = build()
    randomize(source, seed=43)
    path = str(tmp_path / ("d.blocks.h5" if kind == "blocks" else "d.weights.h5"))
    save_blocks(source, path) if kind == "blocks" else source.save_weights(path)
    target = build()
    report = load_blocks(target, path, only=["box_head", "classification_head"])
    assert report.ok and report.caveats == [], report.caveats
    for name in ("box_head", "classification_head"):
        got, expected = values(target.get_layer(name).weights), \
            values(source.get_layer(name).weights)
        assert len(got) == 8 and all(a.tobytes() == b.tobytes()
                                     for a, b in zip(got, expected, strict=True))
