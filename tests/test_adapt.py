"""on_mismatch="adapt": a first convolution's input channels, as timm's adapt_input_conv."""

import keras
import numpy as np
import pytest

from keras_blockreuse import BlockMismatchError, load_blocks, save_blocks
from keras_blockreuse.adapt import adapt_input_channels, adapter_for
from keras_blockreuse.sources import VariableInfo
from tests.helpers import randomize, snapshot

L = keras.layers


def cnn(channels, name="cnn", width=8):
    return keras.Sequential(
        [
            keras.Input((12, 12, channels)),
            L.Conv2D(8, 3, name="block_1_0"),
            L.Conv2D(width, 3, name="block_1_1"),
            L.GlobalAveragePooling2D(),
            L.Dense(3, name="head"),
        ],
        name=name,
    )


@pytest.fixture
def rgb(tmp_path):
    model = cnn(3, "rgb")
    randomize(model, seed=21)
    kernel = keras.ops.convert_to_numpy(model.get_layer("block_1_0").kernel)
    return model, kernel, save_blocks(model, tmp_path / "rgb.blocks.h5")


def test_rgb_into_greyscale_sums_over_input_channels(rgb):
    model, kernel, path = rgb
    target = cnn(1, "grey")
    with pytest.raises(BlockMismatchError, match="block_1_0 / kernel: shape differs"):
        load_blocks(target, path, only=["block_1"])
    report = load_blocks(target, path, only=["block_1"], on_mismatch="adapt")
    adapted = keras.ops.convert_to_numpy(target.get_layer("block_1_0").kernel)
    assert adapted.shape == (3, 3, 1, 8)
    np.testing.assert_array_equal(adapted, kernel.sum(axis=2, keepdims=True))
    assert [(m.layer, m.variable) for m in report.adapted] == [("block_1_0", "kernel")]
    assert report.ok and list(report.loaded) == ["block_1"]
    # Everything else of the block is loaded as it was.
    for v in ["bias"]:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(getattr(target.get_layer("block_1_0"), v)),
            keras.ops.convert_to_numpy(getattr(model.get_layer("block_1_0"), v)),
        )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(target.get_layer("block_1_1").kernel),
        keras.ops.convert_to_numpy(model.get_layer("block_1_1").kernel),
    )
    assert "adapted: block_1_0/kernel" in str(report)


def test_rgb_into_four_channels_repeats_and_rescales(rgb):
    _, kernel, path = rgb
    target = cnn(4, "rgbd")
    report = load_blocks(target, path, only=["block_1"], on_mismatch="adapt")
    adapted = keras.ops.convert_to_numpy(target.get_layer("block_1_0").kernel)
    assert adapted.shape == (3, 3, 4, 8)
    expected = np.concatenate([kernel, kernel[:, :, :1, :]], axis=2) * np.float32(3 / 4)
    np.testing.assert_array_equal(adapted, expected)
    # Channel 3 (the fourth) repeats channel 0 (red), both scaled by 3/4.
    np.testing.assert_array_equal(adapted[:, :, 3], adapted[:, :, 0])
    assert len(report.adapted) == 1


def test_other_mismatches_still_fail_under_adapt(rgb):
    _, _, path = rgb
    target = cnn(1, "grey_wide", width=16)  # block_1_1 has 16 filters: not adaptable
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as err:
        load_blocks(target, path, only=["block_1"], on_mismatch="adapt")
    assert "block_1_1 / kernel: shape differs" in str(err.value)
    assert "block_1_0 / kernel" not in str(err.value)  # that one was adaptable
    after = snapshot(target)
    for key in before:
        assert before[key].tobytes() == after[key].tobytes()


def test_an_unsupported_channel_adaptation_is_named_under_adapt(tmp_path):
    """Found by a fresh-user test: a greyscale classifier's first convolution into an RGB
    model under on_mismatch="adapt" was refused with "shape differs ... Pass
    on_mismatch='skip'", as if adapt had not been asked. The refusal is right (1 -> 3 is not
    an adaptation there is); it now says that 1 -> 3 is none of the supported ones, and lists
    them. Nothing is loaded."""
    grey = cnn(1, "grey")
    randomize(grey, seed=3)
    path = save_blocks(grey, tmp_path / "grey.blocks.h5")
    target = cnn(3, "rgb")
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as err:
        load_blocks(target, path, on_mismatch="adapt")
    assert str(err.value) == (
        "1 variable(s) or layer(s) of the selected blocks do not fit the model; nothing was "
        "loaded:\n  - block_1 / block_1_0 / kernel: shape differs: 1 -> 3 input channels, "
        "which on_mismatch='adapt' does not adapt (source (3, 3, 1, 8) float32, model "
        "(3, 3, 3, 8) float32)\n"
        "on_mismatch='adapt' adapts a convolution kernel's input channels only, and only "
        "3 -> 1 (sum), 3k -> k (sum of each group of 3) and 3 -> C (repeat, times 3 / C); "
        "1 -> 3 is not one of these.\n"
        "Pass on_mismatch='skip' to load the rest, or only=/exclude= to select fewer blocks.")
    after = snapshot(target)
    assert all(before[key].tobytes() == after[key].tobytes() for key in before)
    # Without adapt, the refusal is as it was: no word of adaptation it did not ask for.
    with pytest.raises(BlockMismatchError) as err:
        load_blocks(target, path)
    assert "block_1_0 / kernel: shape differs (source" in str(err.value)
    assert "adapt" not in str(err.value)


@pytest.mark.parametrize(
    "source, target, expected",
    [
        ((3, 3, 3, 8), (3, 3, 1, 8), True),
        ((3, 3, 3, 8), (3, 3, 4, 8), True),
        ((3, 3, 3, 8), (3, 3, 7, 8), True),
        ((3, 3, 12, 8), (3, 3, 4, 8), True),  # space-to-depth stem: groups of 3 summed
        ((3, 3, 4, 8), (3, 3, 1, 8), False),  # not RGB
        ((3, 3, 8, 8), (3, 3, 16, 8), False),  # a middle convolution
        ((3, 3, 3, 8), (3, 3, 1, 16), False),  # filters differ
        ((5, 5, 3, 8), (3, 3, 1, 8), False),  # kernel size differs
    ],
)
def test_which_kernels_are_adapted(source, target, expected):
    conv = L.Conv2D(target[-1], target[:2])
    conv.build((None, 8, 8, target[2]))
    var = VariableInfo("0", "kernel", "conv/kernel", source, "float32", "kernel")
    assert (adapter_for(var, target, conv) is not None) == expected
    bias = VariableInfo("1", "bias", "conv/bias", (source[-1],), "float32", "bias")
    assert adapter_for(bias, (target[-1],), conv) is None
    dense = L.Dense(4)
    dense.build((None, 3))
    assert adapter_for(var, target, dense) is None


def test_documented_values():
    kernel = np.arange(2 * 2 * 3 * 2, dtype="float32").reshape(2, 2, 3, 2)
    np.testing.assert_array_equal(adapt_input_channels(kernel, 1)[..., 0, :],
                                  kernel[..., 0, :] + kernel[..., 1, :] + kernel[..., 2, :])
    five = adapt_input_channels(kernel, 5)
    np.testing.assert_array_equal(five[..., [0, 1, 2, 3, 4], :],
                                  kernel[..., [0, 1, 2, 0, 1], :] * np.float32(3 / 5))
    twelve = np.arange(12, dtype="float64").reshape(1, 1, 12, 1)
    np.testing.assert_array_equal(adapt_input_channels(twelve, 4)[0, 0, :, 0],
                                  [0 + 1 + 2, 3 + 4 + 5, 6 + 7 + 8, 9 + 10 + 11])
    assert adapt_input_channels(kernel.astype("float16"), 1).dtype == np.float16
    with pytest.raises(ValueError, match="Cannot adapt a kernel with 4 input channels to 2"):
        adapt_input_channels(np.zeros((1, 1, 4, 1)), 2)


def test_adapting_a_convolution_inside_the_model_is_said(tmp_path):
    """Found in review: on_mismatch='adapt' summed or repeated the input channels of any
    plain convolution whose kernel differed in that axis only, a middle one too, unsaid: its
    inputs are the features of the layer before, not image channels. A first convolution's
    adaptation says nothing more; one inside the model gets a caveat and a warning."""
    def model(width):
        return keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(width, 3, name="a"),
                                 L.Conv2D(4, 3, name="b"), L.GlobalAveragePooling2D()])

    source = model(6)
    randomize(source, seed=22)
    path = save_blocks(source, tmp_path / "six.blocks.h5")
    target = model(2)  # b's kernel: (3, 3, 6, 4) in the source, (3, 3, 2, 4) here
    with pytest.warns(UserWarning) as caught:
        report = load_blocks(target, path, only=["b"], on_mismatch="adapt")
    caveat = ("on_mismatch='adapt' adapted the input channels of ['b'], not the model's first "
              "weighted layer (a): its inputs are likely features of the layers before, not "
              "image channels, and summed or repeated kernels there carry nothing of what was "
              "learned. Adapt a first convolution only: leave these out (exclude= their "
              "blocks, or on_mismatch='skip').")
    assert report.caveats == [caveat]
    assert [str(w.message) for w in caught] == [f"load_blocks: {caveat}"]


def test_adapting_the_first_convolution_adds_no_caveat(rgb):
    _, _, path = rgb
    report = load_blocks(cnn(1, "grey"), path, only=["block_1"], on_mismatch="adapt")
    assert report.caveats == [] and len(report.adapted) == 1
