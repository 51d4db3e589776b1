"""Every layer pairing is justified, checked and reported: the seven situations of issue 10.

Each test rebuilds the source's architecture in the same process (so automatic names shift)
and checks values bit for bit: each layer holds its own source layer's values, or the load
raised `BlockMismatchError` and no weight changed.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from keras_blockreuse import BlockMismatchError, load_blocks, save_blocks
from keras_blockreuse.store import BlockFile
from tests.helpers import UpDown, snapshot

L = keras.layers
NET = {"net": ["*"]}  # one block of every layer: names are automatic, so no name rule fits


@keras.saving.register_keras_serializable(package="test_pairing")
class FourNorms(L.Layer):
    """Four automatic-named LayerNormalizations in a list, applied in order."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norms = [L.LayerNormalization() for _ in range(4)]

    def build(self, shape):
        for norm in self.norms:
            norm.build(shape)

    def call(self, x):
        for norm in self.norms:
            x = norm(x)
        return x


def distinct(model, seed=0):
    """Gives every variable distinct random values, so any swap is visible."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype(keras.backend.standardize_dtype(v.dtype)))


def values(variables):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def assert_bits(got, expected):
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), i


def save_all(model, folder, formats=("weights", "keras", "blocks", "legacy")):
    paths = {}
    for kind in formats:
        path = os.path.join(folder, {"weights": "m.weights.h5", "keras": "m.keras",
                                     "blocks": "m.blocks.h5", "legacy": "m.h5"}[kind])
        if kind == "weights":
            model.save_weights(path)
        elif kind == "blocks":
            save_blocks(model, path, blocks=NET)
        else:
            model.save(path)
        paths[kind] = path
    return paths


def _saved(model, tmp_path, kind: str) -> str:
    """The model saved as `kind`: `blocks` by `save_blocks` with the default block rule, else
    as `save_all` writes it."""
    if kind == "blocks":
        return save_blocks(model, str(tmp_path / "m.blocks.h5"))
    return save_all(model, str(tmp_path), [kind])[kind]


def load_or_refuse(target, path, expected_pairs, **options):
    """Loads; each target variable must equal its own source's, else a refusal that changed
    nothing. Returns the report, or None when refused."""
    before = snapshot(target)
    try:
        report = load_blocks(target, path, **options)
    except BlockMismatchError as e:
        assert "could not be paired" in str(e) or "do not fit" in str(e), str(e)
        after = snapshot(target)
        assert all(before[k].tobytes() == after[k].tobytes() for k in before)
        return None
    assert report.ok, str(report)
    for target_vars, source_values in expected_pairs:
        assert_bits(values(target_vars), source_values)
    return report


# 1 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["weights", "keras", "blocks", "legacy"])
def test_same_class_sub_layers_with_automatic_names_keep_their_own_values(tmp_path, kind):
    source = keras.Sequential([keras.Input((8,)), UpDown()])
    distinct(source)
    path = save_all(source, str(tmp_path), [kind])[kind]
    up, down = values(source.layers[0].up.weights), values(source.layers[0].down.weights)

    target = keras.Sequential([keras.Input((8,)), UpDown()])  # names shift: up_down_1, dense_2
    assert target.layers[0].up.name != source.layers[0].up.name
    report = load_or_refuse(target, path, [(target.layers[0].up.weights, up),
                                           (target.layers[0].down.weights, down)], blocks=NET)
    if kind in ("weights", "keras", "blocks"):
        assert report is not None  # these formats know enough to pair them
        assert report.pairing["net"] == "path"  # block files record the paths of automatic names
        assert "│ path" in str(report)


@pytest.mark.parametrize("kind", ["weights", "keras", "blocks"])
def test_automatic_names_that_swap_with_creation_order_pair_by_path(tmp_path, kind):
    # Found by a fresh-user test: a fresh process, the sub-layers created in the other order.
    # The names `dense` / `dense_1` then match crosswise; the Keras paths (`.../up`) do not.
    def build(down_first):
        inputs = keras.Input((8,))
        block = UpDown(down_first=down_first, name="enc")
        return keras.Model(inputs, L.Dense(2, name="head")(block(inputs)))

    source = build(False)
    distinct(source)
    up, down = values(source.get_layer("enc").up.weights), \
        values(source.get_layer("enc").down.weights)
    path = save_all(source, str(tmp_path), [kind])[kind]
    keras.backend.clear_session(free_memory=False)  # as a fresh process: names start again
    target = build(True)
    enc = target.get_layer("enc")
    assert (enc.up.name, enc.down.name) == ("dense_1", "dense")  # the source's, crosswise
    block, options = ("net", {"blocks": NET}) if kind == "blocks" else ("enc", {})
    report = load_blocks(target, path, **options)
    assert report.ok and report.pairing[block] == "path"
    assert sorted(report.layer_pairs[block]) == [("enc/dense", "enc/dense_1"),
                                                 ("enc/dense_1", "enc/dense")] + (
        [("head", "head")] if kind == "blocks" else [])
    assert_bits(values(enc.up.weights), up)
    assert_bits(values(enc.down.weights), down)


# 2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["weights", "keras", "blocks", "legacy"])
def test_four_layer_norms_in_a_list_each_get_their_own(tmp_path, kind):
    source = keras.Sequential([keras.Input((6,)), FourNorms()])
    distinct(source, seed=2)
    path = save_all(source, str(tmp_path), [kind])[kind]
    expected = [values(norm.weights) for norm in source.layers[0].norms]
    target = keras.Sequential([keras.Input((6,)), FourNorms()])
    report = load_or_refuse(target, path, list(zip([n.weights for n in target.layers[0].norms],
                                                   expected, strict=True)), blocks=NET)
    if kind != "legacy":
        assert report is not None and report.variables_loaded == 8


# 3 ---------------------------------------------------------------------------------------


def conv_chain():
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(4, 3, padding="same")(inputs)
    x = L.Conv2DTranspose(4, 3, padding="same")(x)
    x = L.Conv2DTranspose(4, 3, padding="same")(x)
    outputs = L.Conv2D(4, 3, padding="same")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("kind", ["weights", "keras", "blocks", "legacy"])
def test_functional_conv_chain_with_automatic_names(tmp_path, kind):
    source = conv_chain()
    distinct(source, seed=3)
    path = save_all(source, str(tmp_path), [kind])[kind]
    expected = [values(layer.weights) for layer in source.layers[1:]]
    target = conv_chain()
    assert [layer.name for layer in target.layers[1:]] != [layer.name for layer in source.layers[1:]]
    report = load_or_refuse(target, path, list(zip([layer.weights for layer in target.layers[1:]],
                                                   expected, strict=True)), blocks=NET)
    assert report is not None, "every format records this model's order or structure"
    assert report.variables_loaded == 8


def test_order_pairing_checks_the_layer_class(tmp_path):
    """Same shapes, other classes: a Conv2D never takes a Conv2DTranspose's kernel by order."""
    inputs = keras.Input((8, 8, 4))
    x = inputs
    for i, cls in enumerate((L.Conv2D, L.Conv2DTranspose, L.Conv2DTranspose, L.Conv2D)):
        x = cls(4, 3, padding="same", name=f"src_{i}")(x)  # named: no Keras path is recorded
    source = keras.Model(inputs, x)
    path = str(tmp_path / "chain.blocks.h5")
    save_blocks(source, path, blocks=NET)
    with BlockFile(path) as file:
        assert [layer.keras_path for layer in file.block("net").layers] == [None] * 4
    inputs = keras.Input((8, 8, 4))
    x = inputs
    for cls in (L.Conv2D, L.Conv2D, L.Conv2DTranspose, L.Conv2DTranspose):
        x = cls(4, 3, padding="same")(x)
    target = keras.Model(inputs, x)
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match="class differs"):
        load_blocks(target, path, blocks=NET)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


# 4 ---------------------------------------------------------------------------------------

KERAS2_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tf_keras as K

    folder = sys.argv[1]
    inner = K.Sequential([K.layers.Dense(8, input_shape=(8,)), K.layers.Dense(8),
                          K.layers.Dense(8)])
    model = K.Sequential([K.layers.InputLayer((8,)), inner])
    rng = np.random.default_rng(4)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    inner.layers[0].trainable = False
    model.save(folder + "/keras2.h5")
    model.save_weights(folder + "/keras2_weights.h5")
    np.savez(folder + "/keras2_values.npz",
             *[w.numpy() for layer in inner.layers for w in layer.weights])
    flat = K.Sequential([K.layers.Dense(4, input_shape=(4,)), K.layers.Dense(4),
                         K.layers.Dense(2)])  # dense_3, dense_4, dense_5
    for w in flat.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    flat.save_weights(folder + "/flat_weights.h5")  # layer_names only: no model_config
    np.savez(folder + "/flat_values.npz", *[w.numpy() for w in flat.weights])
    import h5py
    with h5py.File(folder + "/keras2.h5", "r") as f:
        group = f["model_weights"][inner.name]
        print(json.dumps([n.decode() if isinstance(n, bytes) else str(n)
                          for n in group.attrs["weight_names"]]))
""")


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory):
    """Genuine Keras 2 files, written by tf-keras in a subprocess (Keras 3 stays untouched)."""
    pytest.importorskip("tf_keras")
    folder = str(tmp_path_factory.mktemp("keras2"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", KERAS2_SCRIPT, folder], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(os.path.join(folder, "keras2_values.npz")) as data:
        arrays = [data[f"arr_{i}"] for i in range(6)]
    return folder, names, [arrays[0:2], arrays[2:4], arrays[4:6]]


def nested_dense():
    [L.Dense(1) for _ in range(3)], keras.Sequential()  # shift the automatic names
    return keras.Sequential([keras.Input((8,)),
                             keras.Sequential([L.Dense(8), L.Dense(8), L.Dense(8)])])


def test_keras2_nested_model_with_a_frozen_layer_loads_in_order(keras2_files):
    folder, names, expected = keras2_files
    # Keras 2 lists the nested model's trainable weights first: the frozen layer comes last.
    assert names[-1].endswith("dense/bias:0") and names[0].endswith("dense_1/kernel:0"), names
    target = nested_dense()
    report = load_or_refuse(target, os.path.join(folder, "keras2.h5"),
                            list(zip([layer.weights for layer in target.layers[0].layers],
                                     expected, strict=True)), blocks=NET)
    assert report is not None and report.pairing["net"] == "order"


def test_keras2_weights_only_nested_order_unknown_is_refused(keras2_files):
    folder, _, _ = keras2_files
    target = nested_dense()
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match="could not be paired") as e:
        load_blocks(target, os.path.join(folder, "keras2_weights.h5"), blocks=NET)
    table = str(e.value).split("model layers (unpaired)")[1]
    assert "sequential/dense_1        sequential_1/dense_3" in table  # side by side
    assert "model_config" in str(e.value)
    assert "load from a source whose layer order is known" in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


def test_keras2_nested_layers_with_shifted_names_are_refused_without_offering_rename(
        keras2_files):
    """Found in review: a Keras 2 file of a nested Sequential (`sequential`: dense, dense_1,
    dense_2) into a Keras 3 model whose nested Sequential has the same name but its Dense
    layers numbered from dense_1 (a Dense created before them) was refused, advising "or pair
    the blocks with rename=": the blocks already pair, and rename= cannot pair the layers
    inside one. The refusal now advises naming the layers, or a whole-model file, whose
    order pairs them; no weight changes."""
    folder, _, expected = keras2_files
    keras.backend.clear_session(free_memory=False)
    L.Dense(1)  # takes `dense`
    inner = keras.Sequential([L.Dense(8), L.Dense(8), L.Dense(8)])
    target = keras.Sequential([keras.Input((8,)), inner])
    assert inner.name == "sequential"
    assert [layer.name for layer in inner.layers] == ["dense_1", "dense_2", "dense_3"]
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, os.path.join(folder, "keras2_weights.h5"))
    assert ("sequential / sequential/dense_1 / *: its automatic name pairs it with source "
            "layer 'sequential/dense_1', but ") in str(e.value), str(e.value)
    assert ("Name the layers when building the model (rename= pairs whole blocks, not the "
            "layers inside one)") in str(e.value)
    assert "rename=" not in str(e.value).replace("(rename= pairs whole blocks", "")
    assert "use a whole-model file (Keras 2 `model.save('model.h5')`)" in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    report = load_blocks(target, os.path.join(folder, "keras2.h5"))  # the advice, followed
    assert report.ok and report.pairing == {"sequential": "order"}
    for layer, arrays in zip(inner.layers, expected, strict=True):
        assert_bits([np.array(v.numpy()) for v in layer.weights], arrays)


def test_a_block_file_whose_layers_do_not_correspond_is_refused_with_a_fitting_hint(tmp_path):
    def dense_net(widths, prefix):
        inputs = keras.Input((4,))
        x = inputs
        for i, width in enumerate(widths):
            x = L.Dense(width, name=f"{prefix}{i}")(x)
        return keras.Model(inputs, x)

    path = str(tmp_path / "two.blocks.h5")
    save_blocks(dense_net([4, 4], "a"), path, blocks=NET)
    target = dense_net([4, 4, 4], "b")
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match="could not be paired") as e:
        load_blocks(target, path, blocks=NET)
    message = str(e.value)
    assert "select blocks whose layers correspond one to one" in message
    assert ".blocks.h5 file" not in message  # the user is loading one: its order is known
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


# 5 ---------------------------------------------------------------------------------------


def test_a_load_that_would_assign_nothing_raises_with_both_block_lists(tmp_path):
    first = keras.Sequential([keras.Input((2,)), L.Dense(1)])
    second = keras.Sequential([keras.Input((2,)), L.Dense(1)])
    distinct(first, seed=5)
    path = str(tmp_path / "first.weights.h5")
    first.save_weights(path)
    before = snapshot(second)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(second, path)
    message = str(e.value)
    assert "source blocks: ['dense']" in message and "model blocks:  ['dense_1']" in message
    assert "rename=" in message
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(second).items())
    assert load_blocks(second, path, only=[]).variables_loaded == 0  # asked for nothing
    report = load_blocks(second, path, rename={"dense": "dense_1"})
    assert report.ok and report.pairing == {"dense_1": "path"}
    assert_bits(values(second.weights), values(first.weights))


# 6 ---------------------------------------------------------------------------------------


def test_a_value_that_overflows_the_target_dtype_is_a_mismatch(tmp_path):
    source = keras.Sequential([keras.Input((2,)), L.Dense(2, name="d")], name="s")
    source.layers[0].kernel.assign(np.array([[1e5, 1.0], [2.0, 3.0]], "float32"))
    source.layers[0].bias.assign(np.array([0.5, -0.25], "float32"))
    path = str(tmp_path / "s.blocks.h5")
    save_blocks(source, path)
    target = keras.Sequential([keras.Input((2,)), L.Dense(2, name="d", dtype="float16")],
                              name="t")
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match=r"100000 does not fit float16") as e:
        load_blocks(target, path)
    assert "d / d / kernel" in str(e.value) and "float32" in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    target2 = keras.Sequential([keras.Input((2,)), L.Dense(2, name="d", dtype="float16"),
                                L.Dense(1, name="e", dtype="float16")], name="t2")
    source2 = keras.Sequential([keras.Input((2,)), L.Dense(2, name="d"), L.Dense(1, name="e")],
                               name="s2")
    source2.set_weights([*(w.numpy() for w in source.layers[0].weights),
                         np.array([[0.75], [1.5]], "float32"), np.array([-2.0], "float32")])
    save_blocks(source2, path)
    before = snapshot(target2)
    report = load_blocks(target2, path, on_mismatch="skip")
    # The whole layer `d` is left (its bias fits, its kernel does not); `e` loads.
    assert not report.ok and [m.variable for m in report.skipped] == ["kernel", "bias"]
    assert list(report.loaded) == ["e"] and report.variables_loaded == 2
    assert all(before[f"t2/d/{k}"].tobytes() == values([getattr(target2.layers[0], k)])[0]
               .tobytes() for k in ("kernel", "bias"))
    assert values(target2.layers[1].weights)[0].tobytes() == \
        np.array([[0.75], [1.5]], "float16").tobytes()
    save_blocks(source, path)
    # A negative value is named with its sign.
    source.layers[0].kernel.assign(np.array([[1.0, -65520.0], [2.0, 3.0]], "float32"))
    save_blocks(source, path)
    with pytest.raises(BlockMismatchError, match=r"value -65520 does not fit float16"):
        load_blocks(target, path)


@pytest.mark.parametrize("kind", ["blocks", "weights"])
def test_values_a_cast_rounds_or_zeroes_are_said(tmp_path, kind):
    """Found by a fresh-user test: float32 values loaded into a bfloat16 or float16 model
    were rounded, and 1e-8 became 0 in float16, with ok=True and nothing said. The cast is
    Keras's (load_weights does it too) and the load still makes it, bit for bit as a numpy
    cast; the report now says how many values it rounded and by how much at most, and warns
    where nonzero values became 0."""
    kernel = np.array([[0.1, 1e-8], [1.2345678, 3.0]], "float32")
    source = keras.Sequential([keras.Input((2,)), L.Dense(2, name="d")], name="s")
    source.layers[0].kernel.assign(kernel)
    path = str(tmp_path / ("s.blocks.h5" if kind == "blocks" else "s.weights.h5"))
    save_blocks(source, path) if kind == "blocks" else source.save_weights(path)
    for dtype, relative in (("bfloat16", 0.00117), ("float16", 0.000244)):
        target = keras.Sequential([keras.Input((2,)), L.Dense(2, name="d", dtype=dtype)],
                                  name="t")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = load_blocks(target, path)
        said = ("3 of 4 values in 1 variable(s) were rounded to the model's dtype (float32 -> "
                f"{dtype}; the largest relative change {relative:.3g}), as Keras's load_weights "
                "casts them.")
        if dtype == "float16":
            said += " 1 nonzero values became 0, too small for the model's dtype: d/kernel (1)."
        assert report.ok and report.caveats == [said]
        assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == (
            [f"load_blocks: {said}"] if dtype == "float16" else [])
        got = keras.ops.convert_to_numpy(target.layers[0].kernel)
        assert got.tobytes() == kernel.astype(got.dtype).tobytes()
    # Values the cast keeps exactly: nothing to say.
    source.layers[0].kernel.assign(np.array([[0.5, 1.0], [2.0, -3.0]], "float32"))
    save_blocks(source, path) if kind == "blocks" else source.save_weights(path)
    target = keras.Sequential([keras.Input((2,)), L.Dense(2, name="d", dtype="float16")],
                              name="t")
    assert load_blocks(target, path).caveats == []


# 7 ---------------------------------------------------------------------------------------


def bn_model(name):
    return keras.Sequential([keras.Input((4,)), L.Dense(4, name="block_1_0"),
                             L.BatchNormalization(name="block_1_1"), L.Dense(1, name="head")],
                            name=name)


def test_freezing_a_compiled_model_warns_that_compile_must_run_again(tmp_path):
    x, y = np.random.default_rng(7).normal(size=(16, 4)), np.ones((16, 1))
    source = bn_model("source")
    distinct(source, seed=7)
    path = str(tmp_path / "source.blocks.h5")
    save_blocks(source, path)
    target = bn_model("target")
    target.compile("sgd", "mse")
    target.fit(x, y, epochs=1, verbose=0)
    with pytest.warns(UserWarning, match=r"Call `model.compile\(\)` again") as caught:
        report = load_blocks(target, path, only=["block_1"], freeze=True)
    assert len([w for w in caught if "compile" in str(w.message)]) == 1  # once per call
    assert report.frozen == ["block_1"]
    target.compile("sgd", "mse")
    loaded = snapshot(target)
    target.fit(x, y, epochs=2, verbose=0)
    after = snapshot(target)
    for name in ("block_1_0", "block_1_1"):  # kernels and BatchNormalization statistics
        for v in target.get_layer(name).weights:
            assert after[v.path].tobytes() == loaded[v.path].tobytes(), v.path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_blocks(bn_model("fresh"), path, only=["block_1"], freeze=True)  # not compiled
    from keras_blockreuse import unfreeze_blocks

    with pytest.warns(UserWarning, match=r"were unfrozen after the model was trained"):
        unfreeze_blocks(target, ["block_1"])


# refusals that say how to resolve them ------------------------------------------------------


def test_first_conv_channel_refusal_mentions_adapt(tmp_path):
    rgb = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="block_1_0")])
    path = str(tmp_path / "rgb.blocks.h5")
    save_blocks(rgb, path)
    grey = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, name="block_1_0")])
    with pytest.raises(BlockMismatchError, match="on_mismatch='adapt'"):
        load_blocks(grey, path)


def test_classifier_file_into_its_bare_backbone_explains_how(tmp_path):
    def backbone(name):
        return keras.Sequential([keras.Input((4,)), L.Dense(4, name="block_1_0"),
                                 L.Dense(4, name="block_2_0")], name=name)

    classifier = keras.Sequential([keras.Input((4,)), backbone("features"),
                                   L.Dense(2, name="head")], name="classifier")
    path = str(tmp_path / "classifier.blocks.h5")
    save_blocks(classifier, path)
    bare = backbone("bare")
    with pytest.raises(BlockMismatchError, match=r"inside \['features'\]") as refused:
        load_blocks(bare, path)
    # What the hint offers, as typed (a block file keeps its blocks: no source_blocks=).
    assert "`load_blocks(model, source, blocks={'features': ['*']})`" in str(refused.value)
    report = load_blocks(bare, path, blocks={"features": ["*"]})
    assert report.ok and report.pairing == {"features": "name"}  # below `features/`
    for a, b in zip(classifier.get_layer("features").weights, bare.weights, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    bare_path = str(tmp_path / "bare.blocks.h5")
    save_blocks(bare, bare_path)
    with pytest.raises(BlockMismatchError, match=r"inside \['features'\].*get_layer\('features'\)"):
        load_blocks(classifier, bare_path)  # the reverse: a backbone file into the classifier
    report = load_blocks(classifier.get_layer("features"), bare_path)  # what the hint says
    assert report.ok and report.variables_loaded == 4


# what the readers yield -------------------------------------------------------------------


def test_keras_files_yield_pairing_keys_and_real_variable_names(tmp_path):
    from keras_blockreuse.sources.keras_files import open_keras_file

    model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="block_1_0"),
                              L.BatchNormalization(name="bn")])
    model.save(str(tmp_path / "m.keras"))
    model.save_weights(str(tmp_path / "m.weights.h5"))
    with open_keras_file(str(tmp_path / "m.keras")) as source:
        assert {(x.keras_path, x.order) for x in source.layers()} == {
            ("layers/dense", None), ("layers/batch_normalization", None)}  # names and paths
        assert source.rebuild_structure()  # the structure, from config.json
        layers = source.layers()
        assert [(x.path, x.keras_path, x.order, x.class_name) for x in layers] == [
            ("block_1_0", "layers/dense", 0, "Dense"),
            ("bn", "layers/batch_normalization", 1, "BatchNormalization")]
        assert [v.name for v in layers[1].variables] == [
            "gamma", "beta", "moving_mean", "moving_variance"]
    with open_keras_file(str(tmp_path / "m.weights.h5")) as source:  # names only
        assert {(x.path, x.keras_path, x.order) for x in source.layers()} == {
            ("block_1_0", "layers/dense", None), ("bn", "layers/batch_normalization", None)}
    with open_keras_file(str(tmp_path / "m.weights.h5"), source_model=model) as source:
        # A named file is read by its names; source_model= is walked only when asked to.
        assert {(x.path, x.order) for x in source.layers()} == {("block_1_0", None), ("bn", None)}
        assert source.rebuild_structure() and not source.rebuild_structure()  # once
        assert [v.name for v in source.layers()[0].variables] == ["kernel", "bias"]
        assert [x.order for x in source.layers()] == [0, 1]


def test_keras_archive_rebuilds_its_structure_when_names_and_paths_do_not_pair(tmp_path):
    """A Sequential's `.keras` into a subclassed model of the same layers: Keras paths differ
    (`layers/dense` against `a`), so the config is rebuilt and the layers pair by order."""
    source = keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4)])
    distinct(source, seed=8)
    path = str(tmp_path / "seq.keras")
    source.save(path)

    class Two(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = L.Dense(4)
            self.b = L.Dense(4)

        def call(self, x):
            return self.b(self.a(x))

    target = Two()
    target(np.zeros((1, 4), "float32"))
    report = load_blocks(target, path, blocks=NET)
    assert report.ok and report.pairing == {"net": "order"}
    assert_bits(values(target.a.weights + target.b.weights),
                values(source.layers[0].weights + source.layers[1].weights))


def _three_dense():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, name="fc1")(inputs)
    x = keras.layers.Dense(4, name="fc2")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def test_a_damaged_layer_name_is_not_ok(tmp_path):
    """One byte of a `.weights.h5` global heap turns `fc1` into `fb1` (another valid name): the
    load cannot pair `fc1`, and says so with ok=False instead of leaving it silently."""
    source = _three_dense()
    path = str(tmp_path / "a.weights.h5")
    source.save_weights(path)
    data = bytearray(open(path, "rb").read())
    at = data.find(b"fc1\x00", data.find(b"GCOL"))
    assert at > 0
    data[at + 1] = ord("b")
    damaged = str(tmp_path / "damaged.weights.h5")
    open(damaged, "wb").write(bytes(data))

    target = _three_dense()
    before = [np.array(v) for v in target.get_layer("fc1").weights]
    report = load_blocks(target, damaged)
    assert report.ok is False
    assert report.unpaired == (["fc1"], ["fb1"])
    assert sorted(report.loaded) == ["fc2", "out"]
    for old, now in zip(before, target.get_layer("fc1").weights, strict=True):
        assert np.array_equal(old, np.array(now))  # untouched, and reported as such
    for name in ("fc2", "out"):
        for a, b in zip(source.get_layer(name).weights, target.get_layer(name).weights,
                        strict=True):
            assert np.array_equal(np.array(a), np.array(b))
    text = str(report)
    assert "ok=False" in text
    assert ("Unpaired on both sides: model blocks ['fc1'] are not in the source and source "
            "blocks ['fb1'] are not in the model.") in text

    # Naming the blocks resolves it either way: a subset on purpose, or the rename.
    assert load_blocks(_three_dense(), damaged, only=["fc2", "out"]).ok is True
    renamed = _three_dense()
    report = load_blocks(renamed, damaged, rename={"fb1": "fc1"})
    assert report.ok is True and report.loaded["fc1"] == "fb1"
    for a, b in zip(source.get_layer("fc1").weights, renamed.get_layer("fc1").weights,
                    strict=True):
        assert np.array_equal(np.array(a), np.array(b))


@pytest.mark.parametrize("kind", ["weights", "keras", "blocks"])
def test_a_layer_replaced_by_another_class_under_its_name_is_refused(tmp_path, kind):
    """Found by a fresh-user test: a square Conv2D kernel fits a Conv2DTranspose of the same
    name, with its channels transposed in meaning; it loaded by name with ok=True."""
    def build(cls):
        inputs = keras.Input((8, 8, 4))
        return keras.Model(inputs, cls(4, 3, padding="same", name="block_1_0")(inputs))

    source = build(L.Conv2D)
    distinct(source, seed=6)
    path = save_all(source, str(tmp_path), [kind])[kind]
    target = build(L.Conv2DTranspose)
    before = snapshot(target)
    block, options = ("net", {"blocks": NET}) if kind == "blocks" else ("block_1", {})
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path, **options)
    assert f"{block} / block_1_0 / *: class differs (paired by name with 'block_1_0') " \
           "(source Conv2D, model Conv2DTranspose)" in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


def test_a_subclass_or_base_class_under_the_same_name_loads(tmp_path):
    class ScaledDense(L.Dense):
        pass

    def build(cls):
        inputs = keras.Input((3,))
        return keras.Model(inputs, cls(2, name="block_1_0")(inputs))

    for source_cls, target_cls in ((L.Dense, ScaledDense), (ScaledDense, L.Dense)):
        source = build(source_cls)
        distinct(source, seed=7)
        path = str(tmp_path / "d.blocks.h5")
        save_blocks(source, path)
        target = build(target_cls)
        assert load_blocks(target, path).ok
        assert_bits(values(target.weights), values(source.weights))


def enc_dec(decoder_first):
    """`dec` computes first; `decoder_first` (a refactor) also creates it first, so in a fresh
    process the two automatic names swap."""
    inputs = keras.Input((4,))
    if decoder_first:
        dec, enc = L.Dense(4), L.Dense(4)
    else:
        enc, dec = L.Dense(4), L.Dense(4)
    return keras.Model(inputs, enc(dec(inputs))), enc, dec


@pytest.mark.parametrize("kind", ["weights", "keras", "blocks"])
def test_blocks_named_by_automatic_names_that_keras_paths_contradict_are_refused(tmp_path, kind):
    """Found by a fresh-user test: top-level layers created in another order after a refactor
    (a fresh process, so the automatic names restart) swapped whole blocks with ok=True."""
    source, enc, dec = enc_dec(False)
    distinct(source, seed=8)
    expected = {"enc": values(enc.weights), "dec": values(dec.weights)}
    path = _saved(source, tmp_path, kind)  # one block per layer
    keras.backend.clear_session(free_memory=False)  # as a fresh process: names start again
    target, enc, dec = enc_dec(True)
    assert (enc.name, dec.name) == ("dense_1", "dense")  # the source's names, crosswise
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path)
    assert ("dense / dense / *: its automatic name pairs it with source layer 'dense', but "
            "Keras's saving walk places them differently (source layers/dense_1, model "
            "layers/dense): created in another order, or moved in a list?") in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    # The blocks paired by hand then pair their layers by Keras path.
    report = load_blocks(target, path, rename={"dense": "dense_1", "dense_1": "dense"})
    assert report.ok and report.pairing == {"dense": "path", "dense_1": "path"}
    assert_bits(values(enc.weights), expected["enc"])
    assert_bits(values(dec.weights), expected["dec"])


class ScaleShift(L.Layer):
    """Two same-shape variables; `shift_first` (a refactor) creates them in the other order."""

    def __init__(self, shift_first=False, **kwargs):
        super().__init__(**kwargs)
        self.shift_first = shift_first

    def build(self, shape):
        names = ("shift", "scale") if self.shift_first else ("scale", "shift")
        for name in names:
            setattr(self, name, self.add_weight(name=name, shape=(shape[-1],)))

    def call(self, x):
        return x * self.scale + self.shift


def test_variables_of_a_block_file_pair_by_their_recorded_names(tmp_path):
    """Found by a fresh-user test: variables created in another order swapped (ok=True)."""
    def build(shift_first, center):
        inputs = keras.Input((3,))
        x = ScaleShift(shift_first, name="block_1_0")(inputs)
        return keras.Model(inputs, L.LayerNormalization(center=center, scale=not center,
                                                        name="block_2_0")(x))

    source = build(False, center=False)
    distinct(source, seed=9)
    layer = source.get_layer("block_1_0")
    scale, shift = values([layer.scale])[0], values([layer.shift])[0]
    path = save_blocks(source, str(tmp_path / "s.blocks.h5"))
    target = build(True, center=True)
    report = load_blocks(target, path, only=["block_1"])
    assert report.ok
    assert_bits(values([target.get_layer("block_1_0").scale]), [scale])
    assert_bits(values([target.get_layer("block_1_0").shift]), [shift])
    # LayerNormalization with only `gamma` saved, only `beta` in the model: same shape, other
    # meaning. Refused, naming both.
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path, only=["block_2"])
    assert "block_2 / block_2_0 / beta: name differs (source 'gamma') (source (3,) float32, " \
           "model (3,) float32)" in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras", "legacy"])
def test_automatic_names_with_another_count_of_their_class_are_refused(tmp_path, kind):
    """A layer added before the others of its class shifts their automatic names (and Keras
    paths) alike, which an appended head does not: the names cannot tell the two apart, so
    the load is refused until the user says which (only= or rename=)."""
    def build(new):  # new: None, "before" or "after" the two source layers
        inputs = keras.Input((4,))
        added = L.Dense(4) if new == "before" else None
        a, b = L.Dense(4), L.Dense(4)
        added = L.Dense(4) if new == "after" else added
        x = added(inputs) if new == "before" else inputs
        x = b(a(x))
        return keras.Model(inputs, added(x) if new == "after" else x), a, b

    source, a, b = build(None)
    distinct(source, seed=11)
    expected = {"a": values(a.weights), "b": values(b.weights)}
    path = _saved(source, tmp_path, kind)
    for new in ("before", "after"):
        keras.backend.clear_session(free_memory=False)  # as a fresh process: names start again
        target, a, b = build(new)
        assert [layer.name for layer in target.layers[1:]] == ["dense", "dense_1", "dense_2"]
        before = snapshot(target)
        with pytest.raises(BlockMismatchError) as e:
            load_blocks(target, path)
        assert ("Dense blocks: the model has ['dense', 'dense_1', 'dense_2'], the source "
                "['dense', 'dense_1']; only their names pair ['dense', 'dense_1']") in str(e.value)
        assert "load with only=['dense', 'dense_1']" in str(e.value)
        assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
        with pytest.raises(BlockMismatchError):  # a glob is not an answer
            load_blocks(target, path, only=["dense*"])
        if new == "after":  # the user's answer: the blocks as named
            report = load_blocks(target, path, only=["dense", "dense_1"])
        else:  # the user's answer: shifted by the layer added before them
            report = load_blocks(target, path, rename={"dense": "dense_1", "dense_1": "dense_2"})
        assert report.ok, str(report)
        assert_bits(values(a.weights), expected["a"])
        assert_bits(values(b.weights), expected["b"])


@keras.saving.register_keras_serializable(package="test_pairing")
class Listed(L.Layer):
    """Two Dense in a list; `swapped` (a refactor) lists them in the other order, created
    in the same order, so their automatic names stay and their Keras paths (list keys) swap."""

    def __init__(self, swapped=False, **kwargs):
        super().__init__(**kwargs)
        self.swapped = swapped
        first, second = L.Dense(4), L.Dense(4)
        self.items = [second, first] if swapped else [first, second]

    def build(self, shape):
        for item in self.items:
            item.build(shape)

    def call(self, x):
        for item in self.items:
            x = item(x)
        return x

    def get_config(self):
        return {**super().get_config(), "swapped": self.swapped}


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_list_keys_that_disagree_with_automatic_names_are_refused(tmp_path, kind):
    """Items of a list reordered, their creation order kept: the names say one pairing, the
    Keras paths (class and position in the list) the other; neither can be believed."""
    def build(swapped):
        inputs = keras.Input((4,))
        layer = Listed(swapped=swapped, name="listed")
        return keras.Model(inputs, layer(inputs)), layer

    source, layer = build(False)
    distinct(source, seed=12)
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    target, layer = build(True)
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path)
    assert ("listed / listed/dense / *: its automatic name pairs it with source layer "
            "'listed/dense', but Keras's saving walk places them differently (source "
            "layers/listed/items/dense, model layers/listed/items/dense_1): created in another "
            "order, or moved in a list?") in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


def test_legacy_h5_blocks_whose_automatic_names_contradict_computation_order_are_refused(tmp_path):
    """Found this session: a legacy `.h5` records no Keras path, so top-level layers created
    in another order than they compute (a fresh process) swapped whole blocks with ok=True.
    Its layer list gives the computation order, which the names must agree with."""
    source, enc, dec = enc_dec(False)
    distinct(source, seed=13)
    expected = {"enc": values(enc.weights), "dec": values(dec.weights)}
    path = save_all(source, str(tmp_path), ["legacy"])["legacy"]
    keras.backend.clear_session(free_memory=False)  # as a fresh process: names start again
    target, enc, dec = enc_dec(True)
    assert (enc.name, dec.name) == ("dense_1", "dense")
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path)
    assert ("dense / dense / *: its automatic name pairs it with source layer 'dense', but "
            "they compute at different places among the Dense layers (source: number 2, "
            "model: number 1)") in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    report = load_blocks(target, path, rename={"dense": "dense_1", "dense_1": "dense"})
    assert report.ok and report.pairing == {"dense": "order", "dense_1": "order"}
    assert_bits(values(enc.weights), expected["enc"])
    assert_bits(values(dec.weights), expected["dec"])


def test_legacy_h5_sub_layers_paired_by_automatic_names_alone_are_said_plainly(tmp_path):
    """A legacy `.h5` records a custom layer's sub-layers by name only (no Keras path, no
    order): a refactor that swaps their creation order cannot be seen, so the load says so."""
    def build():
        inputs = keras.Input((8,))
        return keras.Model(inputs, UpDown(name="enc")(inputs))

    source = build()
    distinct(source, seed=14)
    path = save_all(source, str(tmp_path), ["legacy"])["legacy"]
    keras.backend.clear_session(free_memory=False)
    target = build()
    with pytest.warns(UserWarning, match="paired by their automatic names alone"):
        report = load_blocks(target, path)
    assert report.caveats == [
        "block 'enc': layers ['enc/dense', 'enc/dense_1'] (Dense) are paired by their automatic "
        "names alone; the source's Keras paths and order do not confirm them (none recorded, "
        "or attributes renamed), so if their creation order changed since it was saved, their "
        "values are swapped. Name these layers in new code; save_blocks records what checks "
        "them."]
    assert "Caveat: block 'enc'" in str(report)
    assert_bits(values(target.weights), values(source.weights))


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras", "legacy"])
def test_skip_never_pairs_a_shifted_family_by_its_names(tmp_path, kind):
    """Found by a fresh-user test: a Dense inserted first in a nested Sequential shifts the
    automatic names of the Dense after it; `on_mismatch="skip"` (which the refusal suggests)
    then gave each layer its neighbour's values. The family is left whole instead. The
    refusal advises naming the layers, not rename= (it said "or pair the blocks with
    rename=", which pairs whole blocks and cannot pair layers inside one)."""
    def build(insert):
        inner = keras.Sequential(([L.Dense(4)] if insert else []) + [L.Dense(4), L.Dense(4)])
        inputs = keras.Input((4,))
        return keras.Model(inputs, L.Dense(2, name="head")(inner(inputs))), inner

    source, _ = build(False)
    distinct(source, seed=15)
    path = save_all(source, str(tmp_path), [kind])[kind]
    head = values(source.get_layer("head").weights)
    keras.backend.clear_session(free_memory=False)
    target, inner = build(True)
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match="layers of its class beside it did not pair"
                       ) as e:
        load_blocks(target, path, **({"blocks": NET} if kind == "blocks" else {}))
    assert ("automatic names shift. Name the layers when building the model (rename= pairs "
            "whole blocks, not the layers inside one) (source present, model present)"
            ) in str(e.value), str(e.value)
    assert "or pair the blocks with rename=" not in str(e.value)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    report = load_blocks(target, path, on_mismatch="skip",
                         **({"blocks": NET} if kind == "blocks" else {}))
    assert not report.ok
    after = snapshot(target)
    for v in inner.weights:  # none of the shifted family took a neighbour's values
        assert after[v.path].tobytes() == before[v.path].tobytes(), v.path
    if kind == "blocks":  # one block: the head is in it, and loads
        assert_bits(values(target.get_layer("head").weights), head)


def test_top_level_custom_layers_created_in_another_order_are_refused(tmp_path):
    """Found by the fresh-process property test: two top-level custom layers with automatic
    names (`pair`, `pair_1`), created in the other order, swapped whole blocks from a
    `.weights.h5` with ok=True: their sub-layers' last path steps agree, their own do not."""
    def build(second_first):
        inputs = keras.Input((8,))
        if second_first:
            b, a = UpDown(), UpDown()
        else:
            a, b = UpDown(), UpDown()
        return keras.Model(inputs, b(a(inputs))), a, b

    source, a, b = build(False)
    distinct(source, seed=16)
    expected = {"a": values(a.weights), "b": values(b.weights)}
    path = save_all(source, str(tmp_path), ["weights"])["weights"]
    keras.backend.clear_session(free_memory=False)
    target, a, b = build(True)
    assert (a.name, b.name) == ("up_down_1", "up_down")
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match="Keras's saving walk places them differently"):
        load_blocks(target, path)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    report = load_blocks(target, path, rename={"up_down": "up_down_1", "up_down_1": "up_down"})
    assert report.ok, str(report)
    assert_bits(values(a.weights), expected["a"])
    assert_bits(values(b.weights), expected["b"])


@keras.saving.register_keras_serializable(package="test_pairing")
class FirstSecond(L.Layer):
    """`UpDown` after a refactor that renamed its attributes (`up` -> `first`, `down` ->
    `second`), creation and call order kept."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = L.Dense(8)
        self.second = L.Dense(8)

    def build(self, shape):
        self.first.build(shape)
        self.second.build((*shape[:-1], 8))

    def call(self, x):
        return self.second(self.first(x))


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_attributes_renamed_load_by_name_and_say_what_was_not_checked(tmp_path, kind):
    """Found by a fresh-user test: renaming a custom layer's attributes (nothing else) was
    refused with no remedy. The Keras paths no longer correspond, so they neither confirm nor
    contradict the names: the layers pair by name, and the load says so."""
    inputs = keras.Input((8,))
    source = keras.Model(inputs, UpDown(name="blk")(inputs))
    distinct(source, seed=17)
    path = (save_blocks(source, str(tmp_path / "m.blocks.h5"), blocks=NET) if kind == "blocks"
            else save_all(source, str(tmp_path), [kind])[kind])
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((8,))
    target = keras.Model(inputs, FirstSecond(name="blk")(inputs))
    with pytest.warns(UserWarning, match="paired by their automatic names alone"):
        report = load_blocks(target, path, **({"blocks": NET} if kind == "blocks" else {}))
    assert report.ok and report.caveats
    assert_bits(values(target.weights), values(source.weights))


def test_a_live_source_pairs_refactored_sub_layers_by_keras_path():
    """Found by a fresh-user test: copying from a live model whose custom layer's sub-layers
    the target creates in another order paired them by order (the order a custom layer
    assigns them in), swapping them with ok=True. Live sources now give Keras paths."""
    def build(down_first):
        inputs = keras.Input((8,))
        layer = UpDown(down_first=down_first, name="blk")
        return keras.Model(inputs, layer(inputs)), layer

    source, up_down = build(False)
    distinct(source, seed=18)
    target, refactored = build(True)
    report = load_blocks(target, source)
    assert report.ok and report.pairing == {"blk": "path"}
    assert_bits(values(refactored.up.weights), values(up_down.up.weights))
    assert_bits(values(refactored.down.weights), values(up_down.down.weights))


def test_order_inside_a_custom_layer_is_said_to_be_unchecked(tmp_path):
    """Names shifted (same process) and attributes renamed: only the order pairs the
    sub-layers, and inside a custom layer that is the order it assigns them in."""
    keras.backend.clear_session(free_memory=False)  # the names below: dense, ..., dense_3
    inputs = keras.Input((8,))
    source = keras.Model(inputs, UpDown(name="blk")(inputs))
    distinct(source, seed=19)
    path = save_blocks(source, str(tmp_path / "m.blocks.h5"), blocks=NET)
    inputs = keras.Input((8,))
    target = keras.Model(inputs, FirstSecond(name="blk")(inputs))
    with pytest.warns(UserWarning, match="paired by their order alone"):
        report = load_blocks(target, path, blocks=NET)
    assert report.pairing == {"net": "order"}
    assert report.caveats == [
        "block 'net': layers ['blk/dense_2', 'blk/dense_3'] (Dense) are paired by their order "
        "alone, which inside a custom layer is the order it assigns them in, not the order it "
        "calls them in; if that changed since the source was saved, their values are swapped. "
        "Name these layers in new code."]
    assert_bits(values(target.weights), values(source.weights))


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_the_same_model_rebuilt_in_the_session_is_offered_the_rename_by_keras_path(
        tmp_path, kind):
    """Found by a fresh-user test: a notebook cell run again rebuilds the model with shifted
    automatic names, so no block pairs by name; the refusal now gives the `rename=` that pairs
    the blocks by their places in Keras's saving walk, and that rename loads exactly."""
    def build():
        return keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4), L.Dense(2)])

    keras.backend.clear_session(free_memory=False)
    source = build()
    distinct(source, seed=20)
    path = _saved(source, tmp_path, kind)
    target = build()  # dense_3, dense_4, dense_5
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path)
    rename = {"dense": "dense_3", "dense_1": "dense_4", "dense_2": "dense_5"}
    assert str(e.value).endswith(f"as Keras's load_weights pairs them: rename={rename}")
    assert e.value.rename == rename  # the same, as a dict (the sweep reads it)
    assert load_blocks(target, path, rename=rename).ok
    assert_bits(values(target.weights), values(source.weights))


def _offered_rename(message: str) -> dict:
    import ast

    assert "as Keras's legacy load_weights pairs them: rename=" in message, message
    return ast.literal_eval(message.rsplit("rename=", 1)[1])


def test_a_legacy_h5_of_the_same_model_rebuilt_in_the_session_is_offered_the_rename_by_order(
        tmp_path):
    """Found by a fresh-user test: a legacy `.h5` records no Keras paths, so the refusal gave
    no `rename=`; its layers are in computation order, so where both sides hold automatic
    names of the same classes with the same shapes, place by place, the rename is offered,
    and it loads exactly."""
    def build():
        return keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4), L.Dense(2)])

    keras.backend.clear_session(free_memory=False)
    source = build()
    distinct(source, seed=21)
    path = save_all(source, str(tmp_path), ["legacy"])["legacy"]  # model.save("m.h5")
    target = build()  # dense_3, dense_4, dense_5
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    rename = _offered_rename(str(e.value))
    assert rename == {"dense": "dense_3", "dense_1": "dense_4", "dense_2": "dense_5"}
    assert e.value.rename == rename
    assert load_blocks(target, path, rename=rename).ok
    assert_bits(values(target.weights), values(source.weights))


def test_genuine_keras2_files_of_a_model_rebuilt_are_offered_the_rename_by_order(keras2_files):
    """The same for real Keras 2 files: a weights-only file (no classes recorded: the
    automatic names stand for them) and a whole-model file with a nested model, whose
    `model_config` gives the order of its layers; a weights-only file cannot give that
    order, so it is offered no rename, and says why."""
    folder, _, nested_values = keras2_files
    keras.backend.clear_session(free_memory=False)
    [L.Dense(1) for _ in range(6)]  # noqa: B018 - shift the automatic names past the file's
    flat = keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4), L.Dense(2)])
    path = os.path.join(folder, "flat_weights.h5")
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(flat, path)
    rename = _offered_rename(str(e.value))
    assert rename == {"dense_3": "dense_6", "dense_4": "dense_7", "dense_5": "dense_8"}
    assert load_blocks(flat, path, rename=rename).ok
    with np.load(os.path.join(folder, "flat_values.npz")) as data:
        assert_bits(values(flat.weights), [data[f"arr_{i}"] for i in range(6)])

    target = nested_dense()
    inner = target.layers[0]
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, os.path.join(folder, "keras2.h5"))
    rename = _offered_rename(str(e.value))
    assert rename == {"sequential": inner.name}
    report = load_blocks(target, os.path.join(folder, "keras2.h5"), rename=rename)
    assert report.ok and report.pairing == {inner.name: "order"}
    for layer, expected in zip(inner.layers, nested_values, strict=True):
        assert_bits(values(layer.weights), expected)

    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, os.path.join(folder, "keras2_weights.h5"))
    assert "No rename= is offered" in str(e.value) and "load_weights pairs them" not in str(e.value)
    assert "does not record the order of every layer" in str(e.value) and e.value.rename is None
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


@pytest.mark.parametrize("change, why", [
    ("added", "the model has 4 blocks and the file 3"),
    ("widths", "holds variables of shapes [(4,), (4, 4)] and the file's 'dense', at its place, "
               "[(4, 8), (8,)]"),
    ("named", "are not both automatic names of class Dense"),
    ("class", "is of class EinsumDense and the file's 'dense_1', at its place, of class Dense"),
], ids=["added", "widths", "named", "class"])
def test_a_legacy_h5_whose_places_do_not_correspond_is_offered_no_rename(tmp_path, change, why):
    """A layer added before the others of its class, or after them, shifts names alike: no
    place can tell which, so no rename is offered; nor where shapes, classes or given names
    differ at a place. The refusal says why, and changes nothing."""
    keras.backend.clear_session(free_memory=False)
    source = keras.Sequential([keras.Input((4,)), L.Dense(8 if change == "widths" else 4),
                               L.Dense(4), L.Dense(4)])
    path = save_all(source, str(tmp_path), ["legacy"])["legacy"]
    layers = {
        "added": [L.Dense(4), L.Dense(4), L.Dense(4), L.Dense(4)],
        "widths": [L.Dense(4), L.Dense(4), L.Dense(4)],
        "named": [L.Dense(4, name="a"), L.Dense(4, name="b"), L.Dense(4, name="c")],
        "class": [L.Dense(4), L.EinsumDense("ab,bc->ac", (4,)), L.Dense(4)],
    }[change]
    target = keras.Sequential([keras.Input((4,)), *layers])
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path)
    message = str(e.value)
    assert "No rename= is offered" in message and why in message, message
    assert "load_weights pairs them" not in message and e.value.rename is None
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


@keras.saving.register_keras_serializable(package="test_pairing")
class Heads(L.Layer):
    """Two Dense in a dict, created in the order of `keys`."""

    def __init__(self, keys=("q", "k"), **kwargs):
        super().__init__(**kwargs)
        self.keys_ = list(keys)
        self.proj = {key: L.Dense(4) for key in keys}

    def call(self, x):
        return self.proj["k"](self.proj["q"](x))

    def get_config(self):
        return {**super().get_config(), "keys": self.keys_}


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_layers_held_by_position_in_a_dict_or_list_are_said_to_be_unchecked(tmp_path, kind):
    """Found by a fresh-user test: Keras saves a custom layer's dict and list items by class
    and position, not by key, so dict keys inserted in another order (names and paths alike)
    or list items moved where the names shifted swap unseen, as in Keras's own load_weights.
    The load says so."""
    def build(keys, listed):
        inputs = keras.Input((4,))
        layer = Listed(swapped=False, name="listed") if listed else Heads(keys, name="heads")
        return keras.Model(inputs, layer(inputs))

    for listed in (False, True):
        keras.backend.clear_session(free_memory=False)
        source = build(("q", "k"), listed)
        distinct(source, seed=21)
        path = _saved(source, tmp_path, kind)
        if listed:
            L.Dense(1)  # a notebook cell run again: the names shift, the list keys pair
        else:
            keras.backend.clear_session(free_memory=False)  # a fresh process: names pair
        target = build(("q", "k"), listed)
        with pytest.warns(UserWarning, match="held in a list or dict of a custom layer"):
            report = load_blocks(target, path)
        where = "'listed': layers ['listed/dense_3', 'listed/dense_4']" if listed else \
            "'heads': layers ['heads/dense', 'heads/dense_1']"
        assert report.caveats == [
            f"block {where} (Dense) are held in a list or dict of a custom layer, which Keras "
            "saves by position (not by key), and only that position (or automatic names, which "
            "follow the same creation order) pairs them; if their order there changed since "
            "the source was saved (dict keys inserted in another order, list items created or "
            "moved in another order), their values are swapped. Name these layers in new code."]
        assert_bits(values(target.weights), values(source.weights))
        keras.backend.clear_session(free_memory=False)


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_an_ordinary_load_of_attribute_held_sub_layers_says_nothing_more(tmp_path, kind):
    """Found by a second fresh-user test: sub-layers held as plain attributes, same
    architecture, a fresh process, got a caveat about lists and dicts (an internal dict of
    TensorFlow's was taken for the user's). Their names and paths agree: no caveat."""
    def build():
        inputs = keras.Input((8,))
        return keras.Model(inputs, UpDown(name="blk")(inputs))

    keras.backend.clear_session(free_memory=False)
    source = build()
    distinct(source, seed=22)
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    target = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_blocks(target, path)
    assert report.ok and report.caveats == []
    assert [str(w.message) for w in caught if "load_blocks" in str(w.message)] == []
    assert_bits(values(target.weights), values(source.weights))


# --- found by a fresh-user test of the refusals' remedies (each remedy typed literally) ---


@pytest.mark.parametrize("kind", ["weights", "keras", "blocks", "legacy", "live"])
def test_no_rename_is_offered_where_places_reverse_the_automatic_names_order(tmp_path, kind):
    """Two hidden Dense layers created in one order and computed in the other, rebuilt with
    shifted names: pairing by place would give the relu layer the tanh layer's values. A
    shift keeps a class's counters in order; places that reverse it are not a shift, so no
    rename is offered (it was, and typed literally it swapped the two layers)."""
    def source():
        x = keras.Input((4,))
        h = L.Dense(4, activation="relu")(x)  # dense
        h = L.Dense(4, activation="tanh")(h)  # dense_1
        return keras.Model(x, L.Dense(2)(h))  # dense_2

    def target():
        relu, tanh = L.Dense(4, activation="relu"), L.Dense(4, activation="tanh")
        x = keras.Input((4,))
        return keras.Model(x, L.Dense(2)(relu(tanh(x))))  # tanh computed first

    keras.backend.clear_session(free_memory=False)
    model = source()
    distinct(model, seed=3)
    path = (model if kind == "live" else save_all(model, str(tmp_path), [kind])[kind]
            if kind != "blocks" else save_blocks(model, str(tmp_path / "m.blocks.h5"),
                                                 blocks=lambda layer: layer.name))
    rebuilt = target()  # dense_3 (relu), dense_4 (tanh), dense_5
    before = snapshot(rebuilt)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(rebuilt, path)
    message = str(e.value)
    assert "No rename= is offered" in message and "rename={'" not in message, message
    assert "'dense -> dense_4', 'dense_1 -> dense_3'" in message
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(rebuilt).items())


@pytest.mark.parametrize("kind", ["legacy", "weights"])
def test_equal_counts_with_other_names_are_offered_no_only(tmp_path, kind):
    """A Dense created and not used while rebuilding shifts the later names (the model has
    dense, dense_2, dense_3; the source dense, dense_1, dense_2). There are no extra layers,
    so the counts refusal offers no only= (it offered ['dense', 'dense_2'], which from a
    legacy .h5 loaded the source's third layer into the model's second)."""
    def build(unused):
        x = keras.Input((4,))
        h = L.Dense(4)(x)
        if unused:
            L.Dense(4)  # created, never called: takes the name dense_1
        h = L.Dense(4)(h)
        return keras.Model(x, L.Dense(4)(h))

    keras.backend.clear_session(free_memory=False)
    model = build(False)
    distinct(model, seed=4)
    path = save_all(model, str(tmp_path), [kind])[kind]
    keras.backend.clear_session(free_memory=False)
    rebuilt = build(True)
    assert [layer.name for layer in rebuilt.layers[1:]] == ["dense", "dense_2", "dense_3"]
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(rebuilt, path)
    message = str(e.value)
    assert "only their names pair ['dense', 'dense_2']" in message
    assert "only=" not in message.split("cannot tell which happened.")[1], message
    assert "pair the blocks with rename=" in message


def test_the_counts_refusal_offers_only_blocks_that_fit(tmp_path):
    """Source: two hidden Dense(4) and a Dense(2) head; model: three hidden Dense(4) and the
    head. The offered only= holds the names whose shapes fit (it held the source's head
    against a hidden layer, and typed literally it was refused); typed literally it loads."""
    def build(hidden):
        return keras.Sequential([keras.Input((4,)), *[L.Dense(4) for _ in range(hidden)],
                                 L.Dense(2)])

    keras.backend.clear_session(free_memory=False)
    model = build(2)
    distinct(model, seed=5)
    path = save_blocks(model, str(tmp_path / "m.blocks.h5"))
    keras.backend.clear_session(free_memory=False)
    rebuilt = build(3)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(rebuilt, path)
    assert "load with only=['dense', 'dense_1']; if" in str(e.value), str(e.value)
    assert load_blocks(rebuilt, path, only=["dense", "dense_1"]).ok
    assert_bits(values(rebuilt.layers[0].weights + rebuilt.layers[1].weights),
                values(model.layers[0].weights + model.layers[1].weights))


def test_a_rename_that_only_leaves_out_is_refused(tmp_path):
    """only= names source blocks before rename= maps them, so rename={'a': 'c'} with
    only=['c'] would load model block c from source c and drop the mapping without a word."""
    def build():
        return keras.Sequential([keras.Input((4,)), L.Dense(4, name="a"), L.Dense(4, name="b"),
                                 L.Dense(4, name="c")])

    model = build()
    distinct(model, seed=6)
    path = save_blocks(model, str(tmp_path / "m.blocks.h5"))
    target = build()
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match=r"rename= maps source block\(s\) \['a'\], which "
                       r"only=/exclude= leave out.*only=\['a'\] loads source \['a'\] into model "
                       r"\['c'\]"):
        load_blocks(target, path, only=["c"], rename={"a": "c"})
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    assert load_blocks(target, path, only=["a"], rename={"a": "c"}).ok
    assert_bits(values(target.get_layer("c").weights), values(model.get_layer("a").weights))


# a name one side also holds inside a nested model --------------------------------------------


def _filled(model):
    """Every variable to its own constant (1.0, 2.0, ...), so a copy into another layer shows."""
    for j, v in enumerate(model.weights):
        v.assign(np.full(v.shape, j + 1.0, keras.backend.standardize_dtype(v.dtype)))
    return model


def _values(model) -> list:
    """Every variable's value in `model.weights` order (paths repeat across nested models)."""
    return [np.array(v.numpy()) for v in model.weights]


def _assert_unchanged(before: list, model) -> None:
    after = _values(model)
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert a.tobytes() == b.tobytes()


def _deep_base():
    i = keras.Input((4,))
    x = L.Dense(3, name="conv1")(i)
    return keras.Model(i, L.Dense(3, name="predictions")(x), name="base")


def _deep_model():
    i = keras.Input((4,))
    features = keras.Model(i, _deep_base()(i), name="features")
    j = keras.Input((4,))
    return keras.Model(j, L.Dense(3, name="predictions")(features(j)))


def test_a_name_inside_a_model_nested_two_levels_deep_pairs_nothing(tmp_path):
    """Found by a fresh-user test: a base (`conv1`, `predictions`) nested two levels deep
    (`features/base`) under a head also named `predictions` got around the level check: the
    base's file put the base's classifier into the head, and the deep model's file put the
    head into the bare base's `predictions`, with ok=True. Both are refused, change no
    weight, and the load offered into the nested model (`.get_layer('features')
    .get_layer('base')`) is exact."""
    base_path, deep_path = str(tmp_path / "base.weights.h5"), str(tmp_path / "deep.weights.h5")
    base = _filled(_deep_base())
    base.save_weights(base_path)
    deep = _filled(_deep_model())
    deep.save_weights(deep_path)

    target = _deep_model()
    before = _values(target)
    with pytest.raises(BlockMismatchError, match=(
            r"the model holds layers named 'predictions' at 2 places \['features/base/"
            r"predictions', 'predictions'\] and the source at 1 \['predictions'\].*"
            r"`load_blocks\(model\.get_layer\('features'\)\.get_layer\('base'\), source\)`")):
        load_blocks(target, base_path, only=["predictions"])
    _assert_unchanged(before, target)
    report = load_blocks(target.get_layer("features").get_layer("base"), base_path)
    assert report.ok and report.variables_loaded == 4, str(report)
    for a, b in zip(base.weights, target.get_layer("features").get_layer("base").weights,
                    strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    bare = _deep_base()
    before = _values(bare)
    with pytest.raises(BlockMismatchError, match=(
            r"the source holds layers named 'predictions' at 2 places \['features/base/"
            r"predictions', 'predictions'\] and the model at 1")):
        load_blocks(bare, deep_path, only=["predictions"])
    _assert_unchanged(before, bare)


def test_an_automatic_name_another_build_shifted_into_a_nested_model_pairs_nothing(tmp_path):
    """Found by a fresh-user test: a transfer model (a base with one Dense, then a head
    Dense, all automatic names) saved in one session holds `functional_1/dense_1` and the
    head `dense_2`; in another session a bare base built after such a model holds `dense_2`.
    Its name paired it with the head, with ok=True, and the head's values went into the
    base's layer (and the reverse). The `dense` family is at 2 places in one file and 1 in
    the other model: both directions are refused and change no weight."""
    def base():
        i = keras.Input((4,))
        return keras.Model(i, L.Dense(4)(i))

    def transfer():
        b = base()
        i = keras.Input((4,))
        return keras.Model(i, L.Dense(4)(b(i)))

    keras.backend.clear_session()
    base()
    saved = _filled(transfer())  # functional_1/dense_1, head dense_2
    assert [w.path for w in saved.weights][2:] == ["dense_2/kernel", "dense_2/bias"]
    path = str(tmp_path / "t.weights.h5")
    saved.save_weights(path)
    keras.backend.clear_session()
    transfer()
    bare = base()  # dense_2
    assert bare.layers[1].name == "dense_2"
    before = _values(bare)
    with pytest.raises(BlockMismatchError, match=(
            r"the source holds layers of 'dense_2''s family of automatic names \('dense', "
            r"which shift with what was built before them\) at 2 places \['dense_2', "
            r"'functional_1/dense_1'\] and the model at 1 \['dense_2'\]")):
        load_blocks(bare, path)
    _assert_unchanged(before, bare)

    bare_path = str(tmp_path / "b.weights.h5")
    _filled(bare).save_weights(bare_path)
    keras.backend.clear_session()
    base()
    model = transfer()  # functional_1/dense_1 and the head dense_2, as saved above
    before = _values(model)
    with pytest.raises(BlockMismatchError, match=r"the model holds layers of 'dense_2''s family"):
        load_blocks(model, bare_path)
    _assert_unchanged(before, model)


def test_a_live_sources_variables_pair_by_their_names(tmp_path):
    """Found by a fresh-user test: a custom layer creating `scale` then `shift`, loaded from
    the live model into the same layer creating them in the other order, paired them by
    position (`scale` took `shift`'s values), ok=True; its `.blocks.h5` paired them by name.
    A live model's variable names are Keras's own, as a block file records them: the same."""
    def build(order):
        class ScaleShift(L.Layer):
            def build(self, shape):
                for name in order:
                    setattr(self, name, self.add_weight(name=name, shape=(4,)))

            def call(self, x):
                return x * self.scale + self.shift

        i = keras.Input((4,))
        return keras.Model(i, ScaleShift(name="sc")(i))

    source = build(["scale", "shift"])
    source.get_layer("sc").scale.assign(np.full(4, 2.0))
    source.get_layer("sc").shift.assign(np.full(4, 5.0))
    save_blocks(source, str(tmp_path / "s.blocks.h5"))
    for src in (source, str(tmp_path / "s.blocks.h5")):
        model = build(["shift", "scale"])
        assert load_blocks(model, src).ok
        assert model.get_layer("sc").scale.numpy().tolist() == [2.0] * 4
        assert model.get_layer("sc").shift.numpy().tolist() == [5.0] * 4


def test_a_gamma_paired_by_position_with_a_beta_is_refused(tmp_path):
    """Found by a fresh-user test: `BatchNormalization(center=False)` (`gamma`) into
    `BatchNormalization(scale=False)` (`beta`), same shapes: from a Keras 2 `.h5` and from a
    live model the `gamma` went into `beta`, ok=True. Both record the names, and `gamma` and
    `beta` mean the same in Keras 2 and 3: refused, no weight changed."""
    tf_keras = pytest.importorskip("tf_keras")

    def build(k, center, scale):
        i = k.Input((6,))
        return k.Model(i, k.layers.BatchNormalization(center=center, scale=scale, name="bn")(i))

    old = build(tf_keras, False, True)
    old.get_layer("bn").gamma.assign(np.full(6, 7.0))
    old.save_weights(str(tmp_path / "k2.h5"))
    live = build(keras, False, True)
    live.get_layer("bn").gamma.assign(np.full(6, 7.0))
    for src in (str(tmp_path / "k2.h5"), live):
        model = build(keras, True, False)
        before = _values(model)
        with pytest.raises(BlockMismatchError, match=r"bn / bn / beta: name differs \(source "
                                                     r"'gamma'\)"):
            load_blocks(model, src)
        _assert_unchanged(before, model)


def test_no_only_is_offered_for_automatic_names_the_model_also_holds_nested(tmp_path):
    """Found by a fresh-user test: a base saved alone (`dense`, `dense_1`) into a model whose
    head was built before the base (head `dense`; the nested base's `dense_1`, `dense_2`).
    The refusal offered `only=['dense']`, which put the base's first layer into the head,
    ok=True. The refusal now says the model holds more of them inside `sequential` and offers
    the load into it; `only=['dense']` is refused; no weight changes."""
    keras.backend.clear_session()
    base = _filled(keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4)]))
    path = str(tmp_path / "base.weights.h5")
    base.save_weights(path)
    keras.backend.clear_session()
    head = L.Dense(4)
    nested = keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4)])
    i = keras.Input((4,))
    model = keras.Model(i, head(nested(i)))
    assert head.name == "dense" and nested.name == "sequential"
    before = _values(model)
    with pytest.raises(BlockMismatchError) as refused:
        load_blocks(model, path)
    message = str(refused.value)
    assert "only=" not in message.split("Keras numbers automatic names")[1].split("If a layer")[0]
    assert ("The model holds more of them inside ['sequential']: if the source is a file of "
            "that nested model, load into it: `load_blocks(model.get_layer('sequential'), "
            "source)`") in message
    with pytest.raises(BlockMismatchError, match=r"family of automatic names"):
        load_blocks(model, path, only=["dense"])
    _assert_unchanged(before, model)


@pytest.mark.parametrize("kind", ["nested", "attention"])
def test_renamed_blocks_of_a_keras_2_file_pair_their_layers_below_them(tmp_path, kind):
    """Found by a fresh-user test: from a Keras 2 weights-only `.h5`, the `rename=` its
    refusal offers was refused again: a nested model Keras 2 named `model` (Keras 3:
    `functional`), or a MultiHeadAttention renamed `att` -> `attn`, keeps its sub-layers'
    names (`model/conv` for `functional/conv`, `att/query` for `attn/query`), which did not
    pair. Below two blocks the user paired, their layers pair by their names: exact values."""
    tf_keras = pytest.importorskip("tf_keras")

    def build(k, name):
        i = k.Input((8,) if kind == "nested" else (6, 5))
        if kind == "nested":
            x = k.layers.Dense(4, name="conv")(i)
            inner = k.Model(i, k.layers.Dense(4, name="fc")(x))  # automatic name
            j = k.Input((8,))
            return k.Model(j, k.layers.Dense(2, name="head")(inner(j)))
        x = k.layers.MultiHeadAttention(2, 3, name=name)(i, i)
        return k.Model(i, k.layers.Dense(2, name="out")(x))

    source = _filled(build(tf_keras, "att"))
    path = str(tmp_path / "k2.h5")
    source.save_weights(path)
    model = build(keras, "attn")
    old, new = ("model", model.layers[1].name) if kind == "nested" else ("att", "attn")
    report = load_blocks(model, path, rename={old: new})
    assert report.ok and report.variables_loaded == len(model.weights), str(report)
    mine = sorted(float(np.asarray(v).flat[0]) for v in model.weights)
    assert mine == sorted(float(np.asarray(v).flat[0]) for v in source.weights)
    for a, b in zip(_values(source), _values(model), strict=True):
        assert a.tobytes() == b.tobytes()


def test_a_pattern_as_a_rename_key_is_refused_as_such(tmp_path):
    """Found by a fresh-user test: `rename={'block_*': 'block_1'}` was refused as left out by
    only=/exclude= (there were none), and the `only=` it offered was refused the same way."""
    model = keras.Sequential([keras.Input((4,)), L.Dense(4, name="block_1"),
                              L.Dense(4, name="block_2")])
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with pytest.raises(BlockMismatchError, match=r"rename= keys are exact source block names, "
                                                 r"not patterns: received \['block_\*'\]"):
        load_blocks(model, path, rename={"block_*": "block_1"})


def _tower():
    i = keras.Input((3,))
    return keras.Model(i, L.Dense(3, name="a")(i))  # the model's name is automatic


class _Two(L.Layer):
    """Two towers held as attributes, created in either order."""

    def __init__(self, y_first=False, **kwargs):
        super().__init__(**kwargs)
        if y_first:
            self.ty = _tower()
            self.tx = _tower()
        else:
            self.tx = _tower()
            self.ty = _tower()

    def call(self, x):
        return self.tx(x) + self.ty(x)


def _towers(where: str, y_first: bool):
    """A model with towers X and Y (automatically named models computing a Dense named `a`),
    created in the given order: at its top (`top`), inside a named model (`encoder`), or as
    attributes of a custom layer (`attributes`). Returns the model, X and Y."""
    i = keras.Input((3,))
    if where == "attributes":
        two = _Two(y_first, name="two")
        return keras.Model(i, two(i)), two.tx, two.ty
    y = _tower() if y_first else None
    x = _tower()
    y = y or _tower()
    out = L.Add()([x(i), y(i)])
    if where == "encoder":
        j = keras.Input((3,))
        encoder = keras.Model(i, out, name="encoder")
        return keras.Model(j, L.Dense(3, name="head")(encoder(j))), x, y
    return keras.Model(i, out), x, y


@pytest.mark.parametrize("kind", [".weights.h5", ".blocks.h5", ".keras"])
@pytest.mark.parametrize("where", ["top", "encoder", "attributes"])
def test_automatically_named_models_created_in_another_order_pair_nothing(tmp_path, kind,
                                                                          where):
    """Found by a fresh-user test: two automatically named models (`functional`,
    `functional_1`), at a model's top, inside a named model or held as a custom layer's
    attributes, built in another session the other way round, were loaded swapped with
    ok=True: only the last step of a path was checked against Keras's saving walk (and, for a
    block file, against computation order). Every automatically named model holding a layer
    is checked too: refused, no weight changed."""
    if kind == ".keras" and where == "attributes":
        pytest.skip("a custom layer without get_config: no .keras")
    keras.backend.clear_session()
    source, x, y = _towers(where, y_first=False)
    x.weights[0].assign(np.full((3, 3), 1.0))
    y.weights[0].assign(np.full((3, 3), 2.0))
    path = str(tmp_path / f"s{kind}")
    if kind == ".blocks.h5":
        save_blocks(source, path)
    else:
        source.save(path) if kind == ".keras" else source.save_weights(path)
    keras.backend.clear_session()
    model, _, _ = _towers(where, y_first=True)
    before = _values(model)
    with pytest.raises(BlockMismatchError, match=r"Keras's saving walk places them differently|"
                                                 r"compute at different places among the 'a' "
                                                 r"layers of the 'functional' models"):
        load_blocks(model, path)
    _assert_unchanged(before, model)


def test_a_model_created_before_its_automatically_named_sibling_is_left_by_skip(tmp_path):
    """Found by a fresh-user test: inside a named model, a new tower created before the old
    one took the old one's automatic name (`functional`), and on_mismatch='skip' loaded the
    old tower's values into it. A name pair beside an unpaired layer in a tower of its
    family is left, as for layers of one class: the new tower keeps its values."""
    def build(new: bool):
        n = _tower() if new else None
        t = _tower()
        i = keras.Input((3,))
        encoder = keras.Model(i, t(n(i) if new else i), name="encoder")
        j = keras.Input((3,))
        return keras.Model(j, L.Dense(3, name="head")(encoder(j))), t, n

    keras.backend.clear_session()
    source, t, _ = build(False)
    t.weights[0].assign(np.full((3, 3), 7.0))
    path = str(tmp_path / "s.weights.h5")
    source.save_weights(path)
    keras.backend.clear_session()
    model, _, new = build(True)
    assert new.name == "functional"
    before = _values(new)
    report = load_blocks(model, path, on_mismatch="skip")
    assert not report.ok
    assert any(m.layer == "encoder/functional/a" and "did not pair" in m.reason
               for m in report.skipped), str(report)
    _assert_unchanged(before, new)


def test_the_load_offered_into_a_model_a_custom_layer_holds_is_not_a_get_layer_chain(tmp_path):
    """Found by a fresh-user test: a backbone held by a custom layer was offered as
    `model.get_layer('holder').get_layer('bb')`, which raises AttributeError (a layer has no
    get_layer). The refusal names the layer by its path instead."""
    class Holder(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.body = _deep_base()

        def call(self, x):
            return self.body(x)

    i = keras.Input((4,))
    model = keras.Model(i, L.Dense(3, name="predictions")(Holder(name="holder")(i)))
    path = str(tmp_path / "b.weights.h5")
    _deep_base().save_weights(path)
    with pytest.raises(BlockMismatchError, match=r"`load_blocks\(<the layer at 'holder/base' in "
                                                 r"model>, source\)`"):
        load_blocks(model, path)


def test_automatically_named_models_of_a_keras_2_weights_file_created_in_another_order(
        tmp_path):
    """Found by a fresh-user test: a Keras 2 weights-only `.h5` (no model_config) of two
    automatically named Sequential towers, loaded into the same model creating them the
    other way round, swapped them with ok=True and no caveat: a nested model's layer order
    was unknown without the config. A nested model of one layer takes its place from the
    file's top-level order, which contradicts the names: refused, no weight changed."""
    tf_keras = pytest.importorskip("tf_keras")

    def build(k, swap):
        def tower():
            return k.Sequential([k.Input((3,)), k.layers.Dense(3, name="conv")])

        b = tower() if swap else None
        a = tower()
        b = b or tower()
        i = k.Input((3,))
        return k.Model(i, b(a(i)))  # a computes first

    path = str(tmp_path / "k2.h5")
    _filled(build(tf_keras, False)).save_weights(path)
    model = build(keras, True)
    before = _values(model)
    with pytest.raises(BlockMismatchError, match=r"compute at different places among the "
                                                 r"'conv' layers of the 'sequential' models"):
        load_blocks(model, path)
    _assert_unchanged(before, model)


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_a_shifted_automatically_named_block_beside_a_named_one_is_offered_its_rename(
        tmp_path, kind):
    """Found by a fresh-user test: the same model built in another session, its
    automatically named Sequential `sequential` now `sequential_3`, beside a named head. The
    head loaded, the Sequential was "in source only" (ok=False) and no rename was offered,
    while Keras's own load_weights pairs them by place. The report now offers the exact
    rename (`report.suggested_rename`, printed), which loads every value; it is not applied
    on its own, and nothing is offered where the shapes differ."""
    def build(units=3):
        i = keras.Input((4,))
        base = keras.Sequential([L.Dense(units), L.Dense(3)])
        return keras.Model(i, L.Dense(2, name="head")(base(i)))

    keras.backend.clear_session(free_memory=False)
    source = _filled(build())
    path = _saved(source, tmp_path, kind)
    [keras.Sequential([L.Dense(1)]) for _ in range(2)]  # noqa: B018 - another session's counters
    target = build()
    assert target.layers[1].name == "sequential_3"
    before = _values(target)
    report = load_blocks(target, path)
    assert not report.ok and report.unpaired == (["sequential_3"], ["sequential"])
    assert report.suggested_rename == {"sequential": "sequential_3"}
    assert ("They pair one to one by their places in the two models, as Keras's "
            "load_weights pairs them (the same model with its automatic names shifted?): "
            "rename={'sequential': 'sequential_3'} loads them (report.suggested_rename)."
            in str(report)), str(report)
    after = _values(target)  # the head loaded, the Sequential not: the rename is not applied
    assert_bits(after[:4], before[:4])
    assert_bits(after[4:], _values(source)[4:])
    report = load_blocks(target, path, rename=report.suggested_rename)
    assert report.ok and report.pairing == {"sequential_3": "path", "head": "name"}
    assert_bits(_values(target), _values(source))
    other = build(units=5)  # another model's Sequential: same place, other shapes
    report = load_blocks(other, path)
    assert not report.ok and report.suggested_rename == {}
    assert "suggested_rename" not in str(report)


def test_a_keras_2_file_with_a_shifted_automatically_named_model_is_offered_its_rename(
        tmp_path):
    """The same for a Keras 2 file: its nested `sequential` is `sequential_1` in the Keras 3
    model beside a named head. A whole-model `.h5` records the nested model's layer order
    (`model_config`), so the rename by computation order is offered and loads every value;
    a weights-only `.h5` does not, and nothing is offered (that rename would be refused)."""
    tf_keras = pytest.importorskip("tf_keras")

    def build(k):
        i = k.Input((4,))
        base = k.Sequential([k.layers.Dense(3), k.layers.Dense(3)])
        return k.Model(i, k.layers.Dense(2, name="head")(base(i)))

    source = _filled(build(tf_keras))
    assert source.layers[1].name == "sequential"
    whole, weights = str(tmp_path / "k2.h5"), str(tmp_path / "k2w.h5")
    source.save(whole)
    source.save_weights(weights)
    keras.backend.clear_session(free_memory=False)
    keras.Sequential([L.Dense(1)])  # another session's counter
    target = build(keras)
    assert target.layers[1].name == "sequential_1"
    report = load_blocks(target, whole)
    assert not report.ok and report.suggested_rename == {"sequential": "sequential_1"}
    assert "rename={'sequential': 'sequential_1'} loads them" in str(report), str(report)
    report = load_blocks(target, whole, rename=report.suggested_rename)
    assert report.ok and report.pairing == {"sequential_1": "order", "head": "name"}
    assert_bits(_values(target), [np.array(v.numpy()) for v in source.weights])
    report = load_blocks(target, weights)
    assert not report.ok and report.suggested_rename == {}


def _bn_model(lam=False, **options):
    i = keras.Input((4,))
    x = L.Dense(4, name="d")(i)
    if lam:
        x = L.Lambda(lambda t: t * 2.0, name="twice")(x)
    return keras.Model(i, L.BatchNormalization(name="bn", **options)(x))


def test_a_keras_archives_layer_configured_to_hold_other_variables_is_refused(tmp_path):
    """Found in review: a `.keras` archive records a layer's variables by position only
    (`vars/0`), so a `BatchNormalization(center=False)` (gamma, moving mean, moving variance)
    loaded into one with `scale=False` (beta, ...) put gamma into beta with ok=True, as
    Keras's own load_weights does. A layer whose config differs from the archive's, holding
    variables of one shape, now has the archive's structure rebuilt, which names them: the
    differing name is refused, no weight changed; a config that differs in what does not
    change the variables (momentum) loads bit-identically."""
    source = _filled(_bn_model(center=False))
    path = str(tmp_path / "bn.keras")
    source.save(path)
    model = _bn_model(scale=False)
    before = _values(model)
    with pytest.raises(BlockMismatchError, match=r"bn / bn / beta: name differs \(source "
                                                 r"'gamma'\)"):
        load_blocks(model, path)
    _assert_unchanged(before, model)
    other = _bn_model(center=False, momentum=0.5)
    report = load_blocks(other, path)
    assert report.ok and not report.caveats
    assert_bits(_values(other), _values(source))


@pytest.mark.parametrize("kind", ["weights", "keras", "blocks", "live"])
@pytest.mark.parametrize("source_center", [False, True])
def test_a_normalization_holding_fewer_variables_names_the_one_missing(tmp_path, kind,
                                                                       source_center):
    """Found in review: a `BatchNormalization(center=False)` (gamma, moving mean, moving
    variance) loaded into a full one was refused, but the message paired the named variables
    by position: `beta: name differs (source 'moving_mean')`, `moving_mean: name differs
    (source 'moving_variance')`, `moving_variance: missing in source`, as if three variables
    were wrong. Where the source names its variables (`source_model=`, a `.keras` config, a
    block file, a live model), the names now pair and the one variable missing is named, in
    both directions; the load is still refused and changes no weight."""
    source = _filled(_bn_model(center=source_center))
    paths = {"weights": str(tmp_path / "bn.weights.h5"), "keras": str(tmp_path / "bn.keras"),
             "blocks": str(tmp_path / "bn.blocks.h5")}
    source.save_weights(paths["weights"])
    source.save(paths["keras"])
    save_blocks(source, paths["blocks"])
    options = {"source_model": _bn_model(center=source_center)} if kind == "weights" else {}
    model = _bn_model(center=not source_center)
    before = _values(model)
    with pytest.raises(BlockMismatchError) as raised:
        load_blocks(model, source if kind == "live" else paths[kind], **options)
    lines = [line for line in str(raised.value).splitlines() if line.startswith("  - ")]
    assert lines == (
        ["  - bn / bn / beta: missing in source (source -, model (4,) float32)"]
        if not source_center else
        ["  - bn / bn / beta: not in model (source (4,) float32, model -)"])
    _assert_unchanged(before, model)


def test_a_layer_configured_otherwise_is_said_to_pair_by_position_when_no_rebuild_names_it(
        tmp_path):
    """Where the archive's config cannot be rebuilt (a Lambda layer, refused by safe_mode),
    nothing names the variables: the load pairs them by position, as Keras does, and says
    so plainly (a UserWarning and report.caveats naming the layer and the options)."""
    source = _filled(_bn_model(lam=True, center=False))
    path = str(tmp_path / "bn.keras")
    source.save(path)
    model = _bn_model(lam=True, scale=False)
    with pytest.warns(UserWarning, match="configured otherwise than the source's"):
        report = load_blocks(model, path)
    assert report.caveats == [
        "layers 'bn' (center, scale) are configured otherwise than the source's, and the "
        "source records their variables by position only (its structure could not be rebuilt "
        "to name them), so they are paired by position, as Keras's load_weights pairs them; "
        "where that config changes which variables the layer holds (BatchNormalization "
        "center= / scale=), values go to variables of another meaning."]
    assert "Caveat: layers 'bn' (center, scale)" in str(report)


@keras.saving.register_keras_serializable(package="test_pairing")
class _NormedNet(keras.Model):
    """A subclassed model whose BatchNormalization its own code creates (`center=` /
    `scale=` from the module's code, not its config)."""

    def __init__(self, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.fc = L.Dense(4, name="fc")
        self.bn = L.BatchNormalization(center=center, scale=scale, name="bn")

    def call(self, x):
        return self.bn(self.fc(x))


def test_a_layer_whose_config_an_archive_does_not_record_is_said_to_pair_by_position(
        tmp_path):
    """Found by a fresh-user test: a subclassed model's BatchNormalization, built with
    center=False (gamma) when its `.keras` was saved and scale=False (beta) by the code that
    loads it, received gamma's values in beta with ok=True, no caveat: the archive records
    no config of a layer its model's code creates, so the check of configs never ran. Such a
    layer pairs by position, as Keras pairs it, and the load now says so; layers of distinct
    shapes (the Dense) say nothing; a `.weights.h5`, see the test after this one."""
    source = _NormedNet(center=False)
    source(np.zeros((1, 4), "float32"))
    _filled(source)
    path = str(tmp_path / "net.keras")
    source.save(path)
    model = _NormedNet(scale=False)  # (as if its code had changed since the save)
    model(np.zeros((1, 4), "float32"))
    assert [v.name for v in model.layers[1].weights] == ["beta", "moving_mean",
                                                         "moving_variance"]
    with pytest.warns(UserWarning, match="hold variables of one shape"):
        report = load_blocks(model, path)
    assert report.caveats == [
        "layers ['bn'] hold variables of one shape that the source records by position only, "
        "and it records no config of theirs (a custom layer's or subclassed model's code "
        "creates them): they are paired by position, as Keras's load_weights pairs them. If "
        "that code built them with other options when the file was saved (BatchNormalization "
        "center= / scale=), values go to variables of another meaning."]
    assert_bits(_values(model), _values(source))  # by position, as said
    # Holding gamma and beta, a BatchNormalization pairs only with one holding as many
    # variables, so the same ones in the same order: nothing to say, from either file.
    full = _NormedNet()
    full(np.zeros((1, 4), "float32"))
    _filled(full)
    full.save(str(tmp_path / "full.keras"))
    full.save_weights(str(tmp_path / "full.weights.h5"))
    for name in ("full.keras", "full.weights.h5"):
        into = _NormedNet()
        into(np.zeros((1, 4), "float32"))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            assert not load_blocks(into, str(tmp_path / name)).caveats
        assert_bits(_values(into), _values(full))


def test_a_weights_file_layer_known_by_position_is_checked_with_source_model_or_said(
        tmp_path):
    """Found by a fresh-user test: from a `.weights.h5`, a BatchNormalization saved with
    center=False (gamma) received gamma's values in beta (scale=False) with ok=True and no
    caveat, even with `source_model=` given, whose layer says center=False. With
    `source_model=`, its layers' configs are compared as a `.keras` archive's are: the
    options differ, its structure is walked, which names the variables, and the load is
    refused with no weight changed. Without it the file records no config: the load pairs
    by position, as Keras does, and says so, naming `source_model=`."""
    source = _NormedNet(center=False)
    source(np.zeros((1, 4), "float32"))
    _filled(source)
    weights = str(tmp_path / "net.weights.h5")
    source.save_weights(weights)
    model = _NormedNet(scale=False)
    model(np.zeros((1, 4), "float32"))
    before = _values(model)

    def built():
        net = _NormedNet(center=False)
        net(np.zeros((1, 4), "float32"))
        return net

    for given in (source, built):
        with pytest.raises(BlockMismatchError, match=r"bn / beta: name differs \(source "
                           r"'gamma'\)"):
            load_blocks(model, weights, source_model=given)
        assert_bits(_values(model), before)
    same = _NormedNet(center=False)  # a model configured as the source: nothing to say
    same(np.zeros((1, 4), "float32"))
    assert not load_blocks(same, weights, source_model=source).caveats
    assert_bits(_values(same), _values(source))
    with pytest.warns(UserWarning, match="hold variables of one shape"):
        report = load_blocks(model, weights)
    assert report.caveats == [
        "layers ['bn'] hold variables of one shape that the source records by position only, "
        "and it records no layer config, so they are paired by position, as Keras's "
        "load_weights pairs them: if the model that wrote the file built them with other "
        "options (BatchNormalization center= / scale=), values go to variables of another "
        "meaning. To check them, pass source_model= (the model that wrote the file, or a "
        "function building it), whose layers' options are then compared with the model's."]
    assert_bits(_values(model), _values(source))  # by position, as said


class _TwoMaps(L.Layer):
    """A custom layer holding two variables of one shape, created in `names` order (another
    order stands for its `build()` edited since the save)."""

    names = ("scale", "shift")

    def build(self, shape):
        for name in self.names:
            setattr(self, name, self.add_weight(shape=(shape[-1], 4), name=name))

    def call(self, x):
        return x @ self.scale + x @ self.shift


def _two_maps_model(swapped=False, layer=None):
    maps = (layer or _TwoMaps)(name="maps")
    if swapped:
        maps.names = ("shift", "scale")
    i = keras.Input((4,))
    return keras.Model(i, L.Dense(2, name="head")(maps(i)))


def test_a_custom_layers_variables_of_one_shape_are_said_to_pair_by_position(tmp_path):
    """Found by a fresh-user test: a custom layer whose `build()` now creates its two
    variables of one shape in the other order received each one's values in the other from
    a `.keras` or `.weights.h5` (which record variables by position, `vars/0`), with ok=True
    and nothing said; Keras's load_weights swaps them the same way. Nothing in those files
    can tell, so the load says so (a UserWarning and report.caveats naming the layer and its
    class); a block file records the variables' names, which pair them right, unsaid; a
    Keras layer's variables (created by Keras's code, in its order) say nothing."""
    source = _filled(_two_maps_model())
    maps = source.get_layer("maps")
    scale, shift = np.array(maps.scale.numpy()), np.array(maps.shift.numpy())
    for name in ("m.keras", "m.weights.h5", "m.blocks.h5"):
        path = str(tmp_path / name)
        save_blocks(source, path) if name.endswith(".blocks.h5") else (
            source.save(path) if name.endswith(".keras") else source.save_weights(path))
    model = _two_maps_model(swapped=True)
    for name in ("m.keras", "m.weights.h5"):
        with pytest.warns(UserWarning, match="in the order their own code creates them"):
            report = load_blocks(model, str(tmp_path / name))
        assert report.caveats == [
            "layers ['maps'] (_TwoMaps) hold variables of one shape that the source records "
            "by position only (or by Keras's automatic names, `variable_1`, which follow the "
            "same order), in the order their own code creates them, not Keras's: they are "
            "paired by position, as Keras's load_weights pairs them. If that code created "
            "them in another order when the file was saved, values went to other variables; "
            "add_weight(name=...) names them, and a block file written by save_blocks records "
            "those names, which pair them."]
        assert "Caveat: layers ['maps'] (_TwoMaps)" in str(report)
        got = model.get_layer("maps")  # by position, as said
        assert_bits(values([got.shift, got.scale]), [scale, shift])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        report = load_blocks(model, str(tmp_path / "m.blocks.h5"))
    assert report.ok and not report.caveats
    got = model.get_layer("maps")
    assert_bits(values([got.scale, got.shift]), [scale, shift])


class _TwoUnnamed(_TwoMaps):
    """`_TwoMaps` with variables made without `name=`: Keras names them `variable`,
    `variable_1`, ... in creation order, counted per session."""

    def build(self, shape):
        for name in self.names:
            setattr(self, name, self.add_weight(shape=(shape[-1], 4)))


def _two_unnamed_model(swapped=False):
    return _two_maps_model(swapped, layer=_TwoUnnamed)


def test_automatic_variable_names_pair_nothing_and_are_said_to_follow_positions(tmp_path):
    """Found by a fresh-user re-check: a custom layer's variables made by add_weight without
    name= carry Keras's automatic names, counted per session (`variable`, `variable_1`, then
    `variable_2`, ... for the same model built again). A block file or live model of it was
    refused into the same model built again in the session ('name differs (source
    'variable')'), and, from another session, its names (each side's creation order) paired
    the variables of a build() that now creates them in the other order with each other's
    values, ok=True, nothing said. They pair by position now, as Keras's load_weights pairs
    them, and the load says so."""
    source = _filled(_two_unnamed_model())
    maps = source.get_layer("maps")
    scale, shift = np.array(maps.scale.numpy()), np.array(maps.shift.numpy())
    path = str(tmp_path / "m.blocks.h5")
    save_blocks(source, path)
    model = _two_unnamed_model()  # built again: `variable_2`, `variable_3`
    assert [v.name for v in model.get_layer("maps").weights] != [v.name for v in maps.weights]
    for src in (path, source):
        with pytest.warns(UserWarning, match="Keras's automatic names"):
            report = load_blocks(model, src)
        assert report.ok
        assert "layers ['maps'] (_TwoUnnamed) hold variables of one shape" in report.caveats[0]
        got = model.get_layer("maps")
        assert_bits(values([got.scale, got.shift]), [scale, shift])
    swapped = _two_unnamed_model(swapped=True)
    with pytest.warns(UserWarning, match="Keras's automatic names"):
        report = load_blocks(swapped, path)
    got = swapped.get_layer("maps")  # by position, as said
    assert_bits(values([got.shift, got.scale]), [scale, shift])


def test_a_layer_known_by_position_with_fewer_variables_says_which_is_not_known(tmp_path):
    """Found by a fresh-user re-check: a `.weights.h5` BatchNormalization saved with
    center=False (gamma and the moving statistics) loaded into a full one was refused naming
    `moving_variance` as missing in source, though it is beta the file lacks; with
    `source_model=` too. The file records variables by position: without `source_model=` the
    refusal says which one it lacks is not known; with it the model is walked, which names
    the source's variables, and the refusal names beta alone. No weight changes either
    way."""
    def build(**options):
        def model():
            i = keras.Input((4,))
            x = L.BatchNormalization(name="block_1_1", **options)(L.Dense(4, name="block_1_0")(i))
            return keras.Model(i, L.Dense(2, name="head")(x))
        return model

    source = _filled(build(center=False)())
    path = str(tmp_path / "bn.weights.h5")
    source.save_weights(path)
    target = build()()
    before = _values(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path)
    assert ("block_1 / block_1_1 / moving_variance: missing in source (the source records this "
            "layer's variables by position only and holds 3 of the model's 4, so which one it "
            "lacks is not known; pass source_model= (the model that wrote the file, or a "
            "function building it), whose layers' options are then compared with the model's)"
            in str(e.value))
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path, source_model=build(center=False))
    lines = [line for line in str(e.value).splitlines() if line.startswith("  - ")]
    assert lines == ["  - block_1 / block_1_1 / beta: missing in source (source -, model (4,) "
                     "float32)"]  # (named: not its neighbours paired by position)
    assert_bits(_values(target), before)


@pytest.mark.parametrize("kind", ["layer", "group"])
def test_a_normalization_holding_one_variable_configured_otherwise_is_refused(tmp_path, kind):
    """Found by a fresh-user test: a LayerNormalization (or GroupNormalization) saved with
    center=False holds gamma alone, one built with scale=False beta alone, so no two of its
    variables share a shape and the config check passed it by: gamma's values went into
    beta with ok=True. center=/scale= decide which variable it holds: the archive's structure
    is rebuilt, which names them, and the load is refused with no weight changed."""
    def norm(**options):
        i = keras.Input((4,))
        layer = (L.LayerNormalization(name="ln", **options) if kind == "layer"
                 else L.GroupNormalization(groups=2, name="ln", **options))
        return keras.Model(i, layer(L.Dense(4, name="d")(i)))

    source = _filled(norm(center=False))
    path = str(tmp_path / "ln.keras")
    source.save(path)
    model = norm(scale=False)
    before = _values(model)
    with pytest.raises(BlockMismatchError, match=r"ln / ln / beta: name differs \(source "
                                                 r"'gamma'\)"):
        load_blocks(model, path)
    _assert_unchanged(before, model)


def test_skip_is_offered_only_where_it_would_load_something(tmp_path):
    """Found by a fresh-user test: the refusal of a backbone's file into its task (a name
    held at more places in the model) closed with "Pass on_mismatch='skip' to load the
    rest", and typing it gave a second refusal: every paired layer was refused, so nothing
    was left to load. The hint is given only where a paired layer fits."""
    path = str(tmp_path / "base.weights.h5")
    _filled(_deep_base()).save_weights(path)
    i = keras.Input((4,))
    task = keras.Model(i, L.Dense(3, name="predictions")(_deep_base()(i)))
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(task, path)
    assert str(e.value).endswith("\nPass only=/exclude= to select fewer blocks."), str(e.value)
    with pytest.raises(BlockMismatchError, match="Nothing would be loaded"):
        load_blocks(task, path, on_mismatch="skip")
    i = keras.Input((4,))
    wider = keras.Model(i, L.Dense(5, name="predictions")(L.Dense(3, name="conv1")(i)))
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(wider, path)
    assert str(e.value).endswith(
        "\nPass on_mismatch='skip' to load the rest, or only=/exclude= to select fewer "
        "blocks."), str(e.value)
    assert not load_blocks(wider, path, on_mismatch="skip").ok


class _Heads(keras.Model):
    """A subclassed model whose two automatically named Dense attributes are created in the
    given order; `extra` adds a third, created first."""

    def __init__(self, b_first=False, extra=False, **kwargs):
        super().__init__(**kwargs)
        if extra:
            self.proj = L.Dense(4)
        if b_first:
            self.b = L.Dense(4)
            self.a = L.Dense(4)
        else:
            self.a = L.Dense(4)
            self.b = L.Dense(4)
        self.body = [L.Dense(4)]

    def call(self, x):
        x = self.proj(x) if hasattr(self, "proj") else x
        return self.body[0](self.b(self.a(x)))


def _heads(**options):
    model = _Heads(**options)
    model(np.zeros((1, 4), "float32"))
    return model


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_a_subclassed_models_attributes_created_in_another_order_pair_nothing(tmp_path, kind):
    """Found by a fresh-user test: a subclassed model's automatically named attributes
    (`self.a`, `self.b`) created the other way round in another process (a refactor, or a
    loop over a set) swapped with ok=True: their Keras paths (`a`, `b`) have no parent step,
    and the check looked for the model's place under the source's parent. Refused, no
    weight changed, also with `only=` naming the blocks; a third attribute created first
    (`proj`), with every Dense block named in only=, is refused too: the source's `a` sits
    where the model's `a` is `dense_2`."""
    keras.backend.clear_session(free_memory=False)
    source = _filled(_heads())
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    model = _heads(b_first=True)
    assert (model.b.name, model.a.name) == ("dense", "dense_1")
    before = _values(model)
    for only in (None, ["dense"]):
        with pytest.raises(BlockMismatchError, match=r"dense / dense / \*: its automatic name "
                                                     r"pairs it with source layer 'dense', but "
                                                     r"Keras's saving walk places them "
                                                     r"differently \(source a, model b\)"):
            load_blocks(model, path, only=only)
        _assert_unchanged(before, model)
    keras.backend.clear_session(free_memory=False)
    model = _heads(extra=True)
    before = _values(model)
    with pytest.raises(BlockMismatchError, match="places them differently"):
        load_blocks(model, path, only=["dense", "dense_1", "dense_2"])
    _assert_unchanged(before, model)


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras", "legacy"])
def test_nested_models_paired_by_their_automatic_names_are_checked_as_layers_are(tmp_path,
                                                                                kind):
    """Found by a fresh-user test: two automatically named Sequential towers created the
    other way round (same computation), their layers' names shifted by layers built before
    them: the blocks paired by their own names (`sequential` with `sequential`), their
    layers by order, and the towers swapped with ok=True from every format (a Keras 2 file
    too). Such a block's name is checked at its step (Keras path; computation order for a
    legacy .h5), as a layer's is; a rename= of the user's is the user's word and loads."""
    def build(k, second_first):
        def tower():
            return k.Sequential([k.Input((4,)), k.layers.Dense(4)])

        t2 = tower() if second_first else None
        t1 = tower()
        t2 = t2 or tower()
        i = k.Input((4,))
        return k.Model(i, k.layers.Concatenate()([t1(i), t2(i)])), t1, t2

    if kind == "legacy":
        tf_keras = pytest.importorskip("tf_keras")
        source, s1, s2 = build(tf_keras, False)
        path = str(tmp_path / "k2.h5")
        _filled(source).save(path)
    else:
        keras.backend.clear_session(free_memory=False)
        source, s1, s2 = build(keras, False)
        _filled(source)
        path = _saved(source, tmp_path, kind)
    expected = [np.array(v.numpy()) for v in [*s1.weights, *s2.weights]]
    keras.backend.clear_session(free_memory=False)
    L.Dense(1), L.Dense(1)  # another process's counters
    model, t1, t2 = build(keras, True)
    assert (t1.name, t2.name) == ("sequential_1", "sequential")
    before = _values(model)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(model, path)
    assert "sequential_1 / sequential_1/dense_3 / *: its automatic name pairs it with source " \
           "layer 'sequential_1/dense_1', but " in str(e.value), str(e.value)
    assert "Name the layers, or pair the blocks with rename= (source" in str(e.value)
    _assert_unchanged(before, model)
    report = load_blocks(model, path, rename={"sequential": "sequential_1",
                                              "sequential_1": "sequential"})
    assert report.ok
    assert_bits([np.array(v.numpy()) for v in [*t1.weights, *t2.weights]], expected)


@pytest.mark.parametrize("kind", ["blocks", "keras", "legacy"])
def test_a_transfer_models_file_into_its_bare_backbone_built_later_is_offered_a_load(
        tmp_path, kind):
    """Found by a fresh-user test: a transfer model's file (an automatically named backbone
    of three Dense layers, and a Dense head) into the bare backbone built after another
    Dense was created: the Counts refusal offered only rename=, which cannot pair a nested
    source block with three blocks of one layer, and did not mention the nested model. It
    now names it and offers the one-block load (its layers paired by computation order,
    which these sources know), which loads every backbone value bit-identically."""
    import ast
    import re

    def backbone():
        i = keras.Input((4,))
        x = i
        for _ in range(3):
            x = L.Dense(4)(x)
        return keras.Model(i, x)

    keras.backend.clear_session(free_memory=False)
    base = backbone()
    i = keras.Input((4,))
    source = _filled(keras.Model(i, L.Dense(4)(base(i))))
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    L.Dense(1)  # another process's counter
    model = backbone()
    before = _values(model)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(model, path)
    message = str(e.value)
    assert "The source holds these layers inside ['functional']" in message, message
    _assert_unchanged(before, model)
    offered = re.search(r"`load_blocks\(model, source, (.*?)\)`", message).group(1)
    call = ast.parse(f"f({offered})").body[0].value
    options = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert set(options) == ({"blocks"} if kind == "blocks" else {"blocks", "source_blocks"})
    assert load_blocks(model, path, **options).ok
    assert_bits(_values(model), [np.array(v.numpy()) for v in base.weights])


@pytest.mark.parametrize("kind", ["blocks", "keras"])
def test_a_classifiers_file_into_its_named_backbone_with_other_names_is_offered_a_load(
        tmp_path, kind):
    """Found by a fresh-user test: a classifier's file (a Sequential named `backbone` of
    automatic Dense layers, and a head) into that bare backbone built in another session,
    its layers' names sharing none of the file's (`dense_2`, `dense_3` against
    `backbone/dense`, `backbone/dense_1`): the refusal ("Nothing would be loaded") offered
    no way, though the one-block load it offers when a name is shared loads every value.
    A source's nested model of the model's own name now gets that offer too."""
    import ast
    import re

    def backbone():
        return keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4)], name="backbone")

    keras.backend.clear_session(free_memory=False)
    base = backbone()
    i = keras.Input((4,))
    source = _filled(keras.Model(i, L.Dense(3, name="head")(base(i))))
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    L.Dense(1), L.Dense(1)  # another process's counter
    model = backbone()
    assert [layer.name for layer in model.layers] == ["dense_2", "dense_3"]
    before = _values(model)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(model, path)
    message = str(e.value)
    assert "The source holds these layers inside ['backbone']" in message, message
    _assert_unchanged(before, model)
    offered = re.search(r"`load_blocks\(model, source, (.*?)\)`", message).group(1)
    call = ast.parse(f"f({offered})").body[0].value
    options = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert options == ({"blocks": {"backbone": ["*"]}} if kind == "blocks" else
                       {"blocks": {"backbone": ["*"]}, "source_blocks": {"backbone": ["backbone"]}})
    assert load_blocks(model, path, **options).ok
    assert_bits(_values(model), [np.array(v.numpy()) for v in base.weights])


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_a_backbones_file_into_its_classifier_with_other_names_is_pointed_at_the_backbone(
        tmp_path, kind):
    """Found by a fresh-user test: a bare backbone's file (automatic Dense layers) into a
    classifier built around that backbone in another session, its layers' names sharing
    none of the file's: the refusal named no nested model (it does where a name is
    shared). A nested model holding as many weighted layers, of the file's classes, is now
    named; loading into it, as offered, gives the rename by place, which loads bit for bit."""
    import ast
    import re

    def backbone():
        return keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4)], name="backbone")

    keras.backend.clear_session(free_memory=False)
    source = _filled(backbone())
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    L.Dense(1), L.Dense(1)  # another process's counter
    base = backbone()
    i = keras.Input((4,))
    model = keras.Model(i, L.Dense(3, name="head")(base(i)))
    before = _values(model)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(model, path)
    assert ("The model holds these layers inside ['backbone'] (a nested backbone): load into "
            "it, `load_blocks(model.get_layer('backbone'), source)`") in str(e.value), str(e.value)
    _assert_unchanged(before, model)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(model.get_layer("backbone"), path)
    rename = ast.literal_eval(re.search(r"rename=(\{'[^}]*\})", str(e.value)).group(1))
    assert rename == {"dense": "dense_2", "dense_1": "dense_3"}
    assert load_blocks(model.get_layer("backbone"), path, rename=rename).ok
    assert_bits([np.array(v.numpy()) for v in base.weights], _values(source))


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_a_backbone_of_mixed_classes_into_its_classifier_is_pointed_at_the_backbone(
        tmp_path, kind):
    """Found by a fresh-user re-check of 3e3de62: a bare backbone's file of automatic
    Conv2D, BatchNormalization, Conv2D into its classifier built in another session named
    the nested backbone from a block file only: a `.weights.h5` or `.keras` lists its blocks
    by name (batch_normalization, conv2d, conv2d_1), and the classes were compared in that
    order with the backbone's computation order. They are counted now; followed, the
    offered loads give every value bit for bit."""
    import ast
    import re

    def backbone():
        i = keras.Input((6, 6, 1))
        x = L.Conv2D(2, 3)(L.BatchNormalization()(L.Conv2D(1, 1)(i)))
        return keras.Model(i, L.GlobalAveragePooling2D()(x), name="backbone")

    keras.backend.clear_session(free_memory=False)
    source = _filled(backbone())
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    L.Conv2D(1, 1), L.BatchNormalization(), L.Conv2D(1, 1)  # another process's counters
    base = backbone()
    i = keras.Input((6, 6, 1))
    model = keras.Model(i, L.Dense(3, name="head")(base(i)))
    before = _values(model)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(model, path)
    assert ("The model holds these layers inside ['backbone'] (a nested backbone): load into "
            "it, `load_blocks(model.get_layer('backbone'), source)`") in str(e.value), str(e.value)
    _assert_unchanged(before, model)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(model.get_layer("backbone"), path)
    rename = ast.literal_eval(re.search(r"rename=(\{'[^}]*\})", str(e.value)).group(1))
    assert load_blocks(model.get_layer("backbone"), path, rename=rename).ok
    assert_bits([np.array(v.numpy()) for v in base.weights], _values(source))


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_names_shifted_by_one_are_offered_the_rename_by_place(tmp_path, kind):
    """Found by a fresh-user test: the same Sequential built after one more Dense (names
    `dense_1..3` against the file's `dense..dense_2`, two of them pairing) was refused with
    no concrete rename, though one pairs every block by its place in Keras's saving walk.
    The refusal now gives it, and it loads every value."""
    def build():
        return keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(4), L.Dense(4)])

    keras.backend.clear_session(free_memory=False)
    source = _filled(build())
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    L.Dense(1)
    model = build()
    _the_offered_rename_loads(model, path, "only their names pair",
                              {"dense": "dense_1", "dense_1": "dense_2", "dense_2": "dense_3"},
                              _values(source))


@pytest.mark.parametrize("whole", [False, True], ids=["weights-only", "whole-model"])
def test_keras_2_towers_named_alike_but_created_in_another_order_are_refused(tmp_path, whole):
    """Found by the second fresh-user test: a Keras 2 .h5 of two automatically named
    Sequential towers created second-first and computed first-second, loaded into the same
    model created first-second: the names pair (`sequential` with `sequential`) and the towers
    swapped with ok=True. The order check compared a tower's layers only with the same path
    below (`dense` against `dense_1`, never equal across towers); it now compares them by
    their families below, and refuses."""
    tf_keras = pytest.importorskip("tf_keras")

    def build(k, second_first):
        def tower():
            return k.Sequential([k.Input((4,)), k.layers.Dense(4)])

        t2 = tower() if second_first else None
        t1 = tower()
        t2 = t2 or tower()
        i = k.Input((4,))
        return k.Model(i, k.layers.Add()([t1(i), t2(k.layers.Dense(4)(i))])), t1, t2

    source, _, _ = build(tf_keras, True)
    path = str(tmp_path / "k2.h5")
    _filled(source)
    source.save(path) if whole else source.save_weights(path)
    keras.backend.clear_session(free_memory=False)
    model, t1, t2 = build(keras, False)
    before = _values(model)
    with pytest.raises(BlockMismatchError, match=r"compute at different places among the "
                                                 r"'dense' layers of the 'sequential' models"):
        load_blocks(model, path)
    _assert_unchanged(before, model)


class _Heads2(keras.Model):
    def __init__(self, q_first=False, **kwargs):
        super().__init__(**kwargs)
        if q_first:
            q = L.Dense(4)
            p = L.Dense(4)
            self.d = {"q": q, "p": p}
        else:
            self.d = {"p": L.Dense(4), "q": L.Dense(4)}

    def call(self, x):
        return self.d["q"](self.d["p"](x))


@pytest.mark.parametrize("kind", ["blocks", "weights"])
def test_a_dict_of_a_subclassed_model_pairing_by_automatic_names_is_said_plainly(tmp_path,
                                                                                 kind):
    """Found by the second fresh-user test: layers held in a subclassed model's own dict,
    their keys inserted (and the layers created) in another order, swapped with ok=True and
    no caveat (the same dict inside a custom layer had one). Nothing can tell: Keras saves a
    dict by position and the names follow creation order, as its own load_weights swaps
    them. The load says so plainly (UserWarning and report.caveats)."""
    keras.backend.clear_session(free_memory=False)
    source = _Heads2()
    source(np.zeros((1, 4), "float32"))
    _filled(source)
    path = (save_blocks(source, str(tmp_path / "m.blocks.h5")) if kind == "blocks"
            else str(tmp_path / "m.weights.h5"))
    if kind == "weights":
        source.save_weights(path)
    keras.backend.clear_session(free_memory=False)
    model = _Heads2(q_first=True)
    model(np.zeros((1, 4), "float32"))
    with pytest.warns(UserWarning, match="held in a dict of the model"):
        report = load_blocks(model, path)
    assert report.caveats == [
        "layers ['dense', 'dense_1'] (Dense) are held in a dict of the model, which Keras "
        "saves by position (not by key), and are paired by their automatic names, which "
        "follow creation order; if the dict's keys were inserted or the layers created in "
        "another order since the source was saved, their values are swapped. Name these "
        "layers in new code."]


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_a_subclassed_model_with_every_name_shifted_is_offered_the_rename_by_place(tmp_path,
                                                                                  kind):
    """Found by the second fresh-user test: a subclassed model saved after other layers were
    built (its names dense_8, ...) into the same model (dense, ...): no block pairs, and no
    rename was offered, as it is for a Sequential: its Keras paths are attribute names
    (`a`, `b`), not `layers/...`. The rename by those places is offered and loads."""
    keras.backend.clear_session(free_memory=False)
    [L.Dense(1) for _ in range(5)]  # noqa: B018 - the saving process built other layers first
    source = _filled(_heads())
    path = _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    model = _heads()
    _the_offered_rename_loads(model, path, "Nothing would be loaded",
                              {"dense_5": "dense", "dense_6": "dense_1", "dense_7": "dense_2"},
                              _values(source))


def _the_offered_rename_loads(model, path, match: str, rename: dict, expected: list) -> None:
    """The load is refused (`match`), its message ends with the rename by place, and that
    rename, typed as shown, loads `expected` bit for bit."""
    import ast

    with pytest.raises(BlockMismatchError, match=match) as e:
        load_blocks(model, path)
    message = str(e.value)
    assert message.endswith(f"as Keras's load_weights pairs them: rename={rename}"), message
    assert ast.literal_eval(message.rsplit("rename=", 1)[1]) == rename == e.value.rename
    assert load_blocks(model, path, rename=rename).ok
    assert_bits(_values(model), expected)


KERAS2_TOWERS = textwrap.dedent("""
    import sys
    import numpy as np
    import tf_keras as K

    folder, order, named = sys.argv[1], sys.argv[2], sys.argv[3] == "named"
    def tower(tag):
        return K.Sequential([K.layers.Dense(8, name=f"{tag}0" if named else None),
                             K.layers.Dense(8, name=f"{tag}1" if named else None)])
    if order == "AB":
        a = tower("a"); b = tower("b")
    else:  # B created first: `sequential` is B, though A computes first
        b = tower("b"); a = tower("a")
    i = K.Input((8,))
    model = K.Model(i, K.layers.Dense(2, name="head")(b(a(i))))
    rng = np.random.default_rng(7)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    model.save_weights(folder + "/towers.h5")
    np.savez(folder + "/towers.npz", *[w.numpy() for layer in (a, b) for w in layer.weights])
""")


def _keras2_towers(folder, order, named):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", KERAS2_TOWERS, folder, order, named],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(os.path.join(folder, "towers.npz")) as data:
        arrays = [data[f"arr_{i}"] for i in range(8)]
    return os.path.join(folder, "towers.h5"), arrays[:4], arrays[4:]


def _keras3_towers(named):
    def tower(tag):
        return keras.Sequential([L.Dense(8, name=f"{tag}0" if named else None),
                                 L.Dense(8, name=f"{tag}1" if named else None)])
    keras.backend.clear_session()
    a, b = tower("a"), tower("b")
    i = keras.Input((8,))
    return keras.Model(i, L.Dense(2, name="head")(b(a(i)))), a, b


@pytest.mark.parametrize("named", ["auto", "named"])
def test_keras2_weights_only_towers_created_in_another_order_are_refused(tmp_path, named):
    """Found by a fresh-user test: a Keras 2 weights-only `.h5` of two automatically named
    Sequential towers, the second created first (`sequential` computes second), into the same
    model built in order: each tower got the other's values, ok=True, with only a caveat about
    the Dense layers inside them. The file's `layer_names` give the towers' order, which the
    load now checks, from the file and from a block file `convert` made of it; no weight
    changes. Built in order, it loads bit for bit, and inner layers with explicit names get
    no caveat (their towers' places are checked)."""
    pytest.importorskip("tf_keras")
    from keras_blockreuse.convert import convert

    path, a_values, b_values = _keras2_towers(str(tmp_path), "BA", named)
    converted = convert(path, str(tmp_path / "towers.blocks.h5"))
    for source in (path, converted):
        target, _, _ = _keras3_towers(named == "named")
        before = snapshot(target)
        why = (r"sequential/a0 / \*: no source layer pairs with it" if named == "named" else
               r"they compute at different places among the 'dense' layers of the "
               r"'sequential' models")
        with pytest.raises(BlockMismatchError, match=why):
            load_blocks(target, source)
        assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())

    path, a_values, b_values = _keras2_towers(str(tmp_path), "AB", named)
    target, a, b = _keras3_towers(named == "named")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_blocks(target, path)
    assert report.ok and report.variables_loaded == 10, str(report)
    assert_bits(values(a.weights), a_values)
    assert_bits(values(b.weights), b_values)
    if named == "named":
        assert report.caveats == [] and not caught, report.caveats
    else:  # the order inside a tower is unknown: said
        assert [c.split(":")[0] for c in report.caveats] == [
            "block 'sequential'", "block 'sequential_1'"], report.caveats


@keras.saving.register_keras_serializable(package="test_pairing")
class CalledAside(L.Layer):
    """Two Dense in a list, in the order they are created (`order`), called through private
    attributes as `b(a(x))`: Keras saves the list, whose positions and automatic names both
    follow creation order, and neither says which is `a`."""

    def __init__(self, order="ab", **kwargs):
        super().__init__(**kwargs)
        self.order = order
        made = {key: L.Dense(4) for key in order}
        self.items = [made[key] for key in order]
        self._a, self._b = made["a"], made["b"]

    def call(self, x):
        return self._b(self._a(x))

    def get_config(self):
        return {**super().get_config(), "order": self.order}


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras", "live"])
def test_list_items_created_in_another_order_are_said_to_be_unchecked(tmp_path, kind):
    """Found by a fresh-user test: a custom layer's list of two Dense, created `a, b` in the
    source and `b, a` in the model, each called by its role: names and positions agree on
    both sides, so each got the other's values with no caveat and no warning (the README said
    such lists are reported). Now said, as for a dict."""
    def build(order):
        inputs = keras.Input((4,))
        return keras.Model(inputs, CalledAside(order, name="aside")(inputs))

    keras.backend.clear_session(free_memory=False)
    source = build("ab")
    distinct(source, seed=23)
    path = source if kind == "live" else _saved(source, tmp_path, kind)
    keras.backend.clear_session(free_memory=False)
    target = build("ba")
    with pytest.warns(UserWarning, match="held in a list or dict of a custom layer"):
        report = load_blocks(target, path)
    assert report.caveats == [
        "block 'aside': layers ['aside/dense', 'aside/dense_1'] (Dense) are held in a list or "
        "dict of a custom layer, which Keras saves by position (not by key), and only that "
        "position (or automatic names, which follow the same creation order) pairs them; if "
        "their order there changed since the source was saved (dict keys inserted in another "
        "order, list items created or moved in another order), their values are swapped. Name "
        "these layers in new code."], report.caveats


@pytest.mark.parametrize("kind", ["blocks", "weights", "keras"])
def test_a_user_named_dense_0_among_shifted_automatic_names_is_refused(tmp_path, kind):
    """Found by a fresh-user test: a layer the code named `dense_0` beside automatic Dense
    layers whose counter a cell before had moved on (`dense_1`, `dense_2`), then one more
    automatic Dense inserted before them. Taking every `dense_N` beside a `dense_0` for a
    name the code gave loaded the new layer with the source's dense_1, ok=True. Keras never
    makes `dense_0`, but the names beside it may be Keras's: the count refusal stands, as
    for any other name, and its only= (typed literally, for a head added after the others)
    holds every block that pairs, `dense_0` and the head included."""
    def build(automatic):
        keras.backend.clear_session(free_memory=False)
        L.Dense(1)  # a cell run before: takes `dense`
        inputs = keras.Input((8,))
        x = L.Dense(8, name="dense_0")(inputs)
        for _ in range(automatic):
            x = L.Dense(8)(x)
        return keras.Model(inputs, L.Dense(3, name="head")(x))

    source = build(2)
    distinct(source, seed=31)
    path = _saved(source, tmp_path, kind)
    target = build(3)
    assert [layer.name for layer in target.layers[1:]] == [
        "dense_0", "dense_1", "dense_2", "dense_3", "head"]
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, path)
    message = str(e.value)
    assert ("Dense blocks: the model has ['dense_1', 'dense_2', 'dense_3'], the source "
            "['dense_1', 'dense_2']; only their names pair ['dense_1', 'dense_2']") in message
    assert "load with only=['dense_0', 'dense_1', 'dense_2', 'head']; if" in message, message
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())
    # Had the new layer come after the others, the offered only= loads every block that pairs.
    report = load_blocks(target, path, only=["dense_0", "dense_1", "dense_2", "head"])
    assert report.ok and report.missing == ["dense_3"]
    assert_bits(values(target.get_layer("dense_0").weights + target.get_layer("dense_1").weights
                       + target.get_layer("dense_2").weights + target.get_layer("head").weights),
                values(source.weights))


def test_a_family_with_its_bare_name_is_still_automatic(tmp_path):
    """`dense` beside `dense_0` and `dense_1`: Keras made `dense` (and may have made the
    others' numbers), so the names do not show who numbered them, and a shifted family is
    refused as before."""
    source = keras.Sequential([keras.Input((4,)), L.Dense(4, name="dense"),
                               L.Dense(4, name="dense_0"), L.Dense(4, name="dense_1")])
    path = _saved(source, tmp_path, "blocks")
    target = keras.Sequential([keras.Input((4,)), L.Dense(4, name="dense"),
                               L.Dense(4, name="dense_0"), L.Dense(4, name="dense_1"),
                               L.Dense(4, name="dense_2")])
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match="Blocks named by automatic names cannot be "
                                                 "paired by those names here: Dense blocks"):
        load_blocks(target, path)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(target).items())


def test_a_keras2_model_file_with_a_wrapped_layer_loads_like_its_weights_file(tmp_path):
    """Found by a fresh-user test: a Keras 2 whole-model `.h5` (tf-keras `model.save`) of
    `TimeDistributed(Dense(3))` was refused ("class differs ... source TimeDistributed, model
    Dense"): the file records the wrapper's class for the weights of the layer it wraps, and
    the model's layer that owns them is the wrapped `Dense`. Its weights-only file loaded. A
    class recorded for a layer that holds the model's layer now passes (shapes still
    checked); both files load bit for bit."""
    tf_keras = pytest.importorskip("tf_keras")

    def build(k):
        return k.Sequential([k.layers.Input((5, 4)), k.layers.TimeDistributed(k.layers.Dense(3)),
                             k.layers.Flatten(), k.layers.Dense(2, name="head")])

    old = build(tf_keras)
    rng = np.random.default_rng(44)
    for w in old.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    expected = [w.numpy() for w in old.weights]
    old.save(str(tmp_path / "k2.h5"))
    old.save_weights(str(tmp_path / "k2_weights.h5"))
    for name in ("k2.h5", "k2_weights.h5"):
        keras.backend.clear_session(free_memory=False)
        model = build(keras)
        report = load_blocks(model, str(tmp_path / name))
        assert report.ok and report.variables_loaded == 4, str(report)
        assert_bits(values(model.weights), expected)


def test_a_keras2_bidirectional_layer_pairs_its_two_layers_when_renamed(tmp_path):
    """Found by a fresh-user test: a Keras 2 whole-model `.h5` of `Bidirectional(GRU)` loaded
    into the same model built after other recurrent layers (`bidirectional_1`, its layers
    `forward_gru_1` and `backward_gru_1`) was refused, as automatic names should be; with the
    `rename=` the refusal asks for, its two layers still could not be paired ("give the
    layers the same names", "or use a whole-model file", which it was): the file records
    no order inside a Bidirectional. Its `model_config` says which is which (Keras names
    them `forward_<layer>` and `backward_<layer>`, computed in that order): they now pair
    by that order, bit for bit; the weights-only file, which records no config, is still
    refused."""
    tf_keras = pytest.importorskip("tf_keras")

    def build(k):
        i = k.Input((5, 4))
        x = k.layers.Bidirectional(k.layers.GRU(4, return_sequences=True))(i)
        x = k.layers.Bidirectional(k.layers.LSTM(2), backward_layer=k.layers.LSTM(
            2, go_backwards=True, name="back"))(x)
        return k.Model(i, k.layers.Dense(3, name="head")(x))

    old = build(tf_keras)
    rng = np.random.default_rng(45)
    for w in old.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    expected = [w.numpy() for w in old.weights]
    old.save(str(tmp_path / "k2.h5"))
    old.save_weights(str(tmp_path / "k2_weights.h5"))
    keras.backend.clear_session(free_memory=False)
    _ = [L.Bidirectional(L.GRU(1)), L.LSTM(1), L.GRU(1)]  # another session's counters
    model = build(keras)
    assert [layer.name for layer in model.layers[1:3]] == ["bidirectional_1", "bidirectional_2"]
    rename = {"bidirectional": "bidirectional_1", "bidirectional_1": "bidirectional_2"}
    report = load_blocks(model, str(tmp_path / "k2.h5"), rename=rename)
    assert report.ok and report.variables_loaded == len(expected), str(report)
    assert report.pairing == {"bidirectional_1": "order", "bidirectional_2": "order",
                              "head": "name"}
    assert_bits(values(model.weights), expected)
    distinct(model, seed=1)
    before = snapshot(model)
    with pytest.raises(BlockMismatchError, match="could not be paired by name, Keras path or "
                                                 "computation order"):
        load_blocks(model, str(tmp_path / "k2_weights.h5"), rename=rename)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(model).items())


def test_a_keras2_bidirectional_with_a_damaged_config_is_read_without_its_order(tmp_path):
    """A Keras 2 whole-model `.h5` whose `model_config` gives a Bidirectional's wrapped layer
    a config that is not a mapping (damage) is read without that layer's order, as if the
    config said nothing: it loads by name into the same model, bit for bit, and is refused
    (nothing changed) where only that order would pair it; never an AttributeError."""
    tf_keras = pytest.importorskip("tf_keras")
    import h5py

    def build(k):
        i = k.Input((5, 4))
        x = k.layers.Bidirectional(k.layers.GRU(4), name="bi")(i)
        return k.Model(i, k.layers.Dense(3, name="head")(x))

    old = build(tf_keras)
    distinct(old, seed=2)
    expected = values(old.weights)
    path = str(tmp_path / "k2.h5")
    old.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Bidirectional":
                layer["config"]["layer"]["config"] = 3
        f.attrs["model_config"] = json.dumps(config)
    keras.backend.clear_session(free_memory=False)
    model = build(keras)
    assert load_blocks(model, path).ok
    assert_bits(values(model.weights), expected)
    keras.backend.clear_session(free_memory=False)
    L.GRU(1)  # the wrapped layers' names shift: only their order would pair them
    shifted = build(keras)
    before = snapshot(shifted)
    with pytest.raises(BlockMismatchError, match="could not be paired"):
        load_blocks(shifted, path)
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(shifted).items())


def test_a_keras2_bidirectional_inside_a_nested_model_pairs_its_two_layers(tmp_path):
    """Found by a fresh-user re-check of 70245dc: a Keras 2 whole-model `.h5` whose
    Bidirectional sits inside a nested model (`enc`, every layer named) loaded into the same
    model built after other recurrent layers (its inner layers `forward_lstm_1`, ...) was
    refused, 'no source layer pairs with it', though its model_config names the two layers:
    only a top-level Bidirectional's were ranked. Now a nested one's are too, forward before
    backward, and it loads bit for bit; the weights-only file is still refused."""
    tf_keras = pytest.importorskip("tf_keras")

    def build(k):
        i = k.Input((5, 4))
        bi = k.layers.Bidirectional(k.layers.LSTM(3), name="bidi", backward_layer=k.layers.LSTM(
            3, go_backwards=True, name="back"))
        x = k.Sequential([k.Input((5, 4)), bi], name="enc")(i)
        return k.Model(i, k.layers.Dense(2, name="head")(x))

    old = build(tf_keras)
    rng = np.random.default_rng(46)
    for w in old.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    expected = [w.numpy() for w in old.weights]
    old.save(str(tmp_path / "k2.h5"))
    old.save_weights(str(tmp_path / "k2_weights.h5"))
    keras.backend.clear_session(free_memory=False)
    _ = [L.LSTM(1), L.LSTM(1)]  # another session's counters
    model = build(keras)
    report = load_blocks(model, str(tmp_path / "k2.h5"))
    assert report.ok and report.variables_loaded == len(expected), str(report)
    assert report.pairing == {"enc": "order", "head": "name"}
    assert_bits(values(model.weights), expected)
    distinct(model, seed=1)
    before = snapshot(model)
    with pytest.raises(BlockMismatchError, match="no source layer pairs with it"):
        load_blocks(model, str(tmp_path / "k2_weights.h5"))
    assert all(before[k].tobytes() == v.tobytes() for k, v in snapshot(model).items())
