"""Loading blocks from the files Keras users have: .weights.h5, .keras, sharded, legacy .h5."""

import io
import json
import os
import shutil
import zipfile

import h5py
import keras
import numpy as np
import pytest

from keras_blockreuse import (
    BlockFileError,
    BlockMismatchError,
    load_blocks,
    read_blocks,
    save_blocks,
)
from keras_blockreuse.sources.keras_files import keras_file_kind, open_keras_file
from keras_blockreuse.sources.structure import structural_names
from tests.helpers import UpDown, assert_same, dense_stack, randomize, snapshot

L = keras.layers
VGG_RULE = r"^(block\d+)_"
SHAPE = (32, 32, 3)


def vgg16():
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=SHAPE)


def write_keras2(model, path, whole_model=True):
    """Writes `model` in the Keras 2 layout: groups by layer name, `<layer>/<var>:0` names."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["backend"] = b"tensorflow"
        root = f.create_group("model_weights") if whole_model else f
        if whole_model:
            layers = [{"class_name": type(layer).__name__, "config": {"name": layer.name}}
                      for layer in model.layers]
            f.attrs["model_config"] = json.dumps(
                {"class_name": "Functional", "config": {"layers": layers}}).encode()
        root.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        root.attrs["backend"] = b"tensorflow"
        for layer in model.layers:
            group = root.create_group(layer.name)
            names = []
            for path_, weight in _legacy_weights(layer):
                names.append(path_)
                group.create_dataset(path_, data=keras.ops.convert_to_numpy(weight))
            group.attrs["weight_names"] = [n.encode() for n in names]


def _legacy_weights(layer):
    """`(Keras 2 weight name, variable)`: `layer/kernel:0`, nested `inner/kernel:0`."""
    if isinstance(layer, keras.Model):
        return [(f"{inner.name}/{w.name}:0", w) for inner in layer.layers for w in inner.weights]
    return [(f"{layer.name}/{w.name}:0", w) for w in layer.weights]


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    """A VGG16 with random weights, saved in every Keras format, once per module."""
    folder = tmp_path_factory.mktemp("vgg")
    model = vgg16()
    randomize(model, seed=3)
    files = {
        "weights": str(folder / "vgg.weights.h5"),
        "keras": str(folder / "vgg.keras"),
        "keras2": str(folder / "vgg_keras2.h5"),
        "keras2_weights_only": str(folder / "vgg_keras2_weights.h5"),
    }
    model.save_weights(files["weights"])
    model.save(files["keras"])
    write_keras2(model, files["keras2"])
    write_keras2(model, files["keras2_weights_only"], whole_model=False)
    return model, snapshot(model), files


def detector():
    """Another model: VGG's first two blocks by name, then a new head."""
    inputs = keras.Input(SHAPE)
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="block1_conv1")(inputs)
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="block1_conv2")(x)
    x = L.MaxPooling2D(name="block1_pool")(x)
    x = L.Conv2D(128, 3, padding="same", activation="relu", name="block2_conv1")(x)
    x = L.Conv2D(128, 3, padding="same", activation="relu", name="block2_conv2")(x)
    x = L.Conv2D(16, 3, name="det_conv")(x)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(4, name="det_out")(x)
    return keras.Model(inputs, outputs, name="detector")


def loaded_bit_for_bit(source_values, model, before):
    after = snapshot(model)
    for layer in ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"]:
        for v in model.get_layer(layer).weights:
            source_path = f"{layer}/{v.name}"
            assert after[v.path].tobytes() == source_values[source_path].tobytes(), v.path
    for name in ["det_conv", "det_out"]:
        for v in model.get_layer(name).weights:
            assert after[v.path].tobytes() == before[v.path].tobytes(), v.path


@pytest.mark.parametrize("kind", ["weights", "keras", "keras2", "keras2_weights_only"])
def test_vgg16_blocks_load_into_another_model_bit_for_bit(vgg_files, kind):
    _, values, files = vgg_files
    target = detector()
    randomize(target, seed=9)
    before = snapshot(target)
    report = load_blocks(target, files[kind], only=["block1", "block2"], blocks=VGG_RULE)
    assert report.ok and list(report.loaded) == ["block1", "block2"]
    assert report.variables_loaded == 8
    assert report.bytes_read == 4 * sum(
        int(np.prod(v.shape)) for layer in ["block1_conv1", "block1_conv2", "block2_conv1",
                                            "block2_conv2"]
        for v in target.get_layer(layer).weights
    )
    loaded_bit_for_bit(values, target, before)


def test_keras_file_blocks_follow_the_rule_in_the_file_order(vgg_files):
    _, _, files = vgg_files
    for kind in ["weights", "keras", "keras2"]:
        with open_keras_file(files[kind], rule=VGG_RULE) as source:
            assert source.block_names() == ["block1", "block2", "block3", "block4", "block5"]
            layers = source.block_layers("block3")
            assert [layer.path for layer in layers] == [
                "block3_conv1", "block3_conv2", "block3_conv3"]
            assert layers[0].class_name == "Conv2D"
            assert [(v.key, v.shape, v.dtype) for v in layers[0].variables] == [
                ("0", (3, 3, 128, 256), "float32"), ("1", (256,), "float32")]
            assert source.bytes_read == 0  # described without reading values


def test_preset_detected_from_the_file_names(vgg_files):
    _, _, files = vgg_files
    with open_keras_file(files["keras"]) as source:  # no rule: the names say "vgg"
        assert source.block_names() == ["block1", "block2", "block3", "block4", "block5"]


def strip_name_attributes(path):
    with h5py.File(path, "a") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "name" in obj.attrs:
                del obj.attrs["name"]
        f.visititems(visit)


def test_weights_without_name_attributes_need_source_model(vgg_files, tmp_path):
    _, values, files = vgg_files
    path = str(tmp_path / "old.weights.h5")
    shutil.copy(files["weights"], path)
    strip_name_attributes(path)
    target = detector()
    with pytest.raises(BlockFileError, match=r"holds no layer names.*Pass source_model="):
        load_blocks(target, path, only=["block1", "block2"], blocks=VGG_RULE)
    before = snapshot(target)
    report = load_blocks(target, path, only=["block1", "block2"], blocks=VGG_RULE,
                         source_model=vgg16)  # a builder; a model works too
    assert report.ok and list(report.loaded) == ["block1", "block2"]
    loaded_bit_for_bit(values, target, before)


def test_source_model_of_another_architecture_is_refused(vgg_files, tmp_path):
    _, _, files = vgg_files
    path = str(tmp_path / "old.weights.h5")
    shutil.copy(files["weights"], path)
    strip_name_attributes(path)
    other = keras.Sequential([keras.Input((4,)), L.Dense(2, name="d")])
    with pytest.raises(BlockFileError, match="does not have the structure of source_model"):
        load_blocks(detector(), path, blocks=VGG_RULE, source_model=other)


def test_keras_archive_without_names_is_rebuilt_from_its_config(vgg_files, tmp_path):
    _, values, files = vgg_files
    path = str(tmp_path / "old.keras")
    with zipfile.ZipFile(files["keras"]) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "a") as f:
                    f.visititems(lambda n, o: o.attrs.pop("name", None)
                                 if isinstance(o, h5py.Group) else None)
                data = buffer.getvalue()
            dst.writestr(info.filename, data)
    target = detector()
    before = snapshot(target)
    report = load_blocks(target, path, only=["block1", "block2"], blocks=VGG_RULE)
    assert report.ok
    loaded_bit_for_bit(values, target, before)


def test_archive_member_is_read_in_place(vgg_files, monkeypatch):
    _, _, files = vgg_files
    monkeypatch.setattr(zipfile.ZipFile, "extract", None)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", None)
    with open_keras_file(files["keras"], rule=VGG_RULE) as source:
        assert source.info["keras_version"] == keras.__version__
        values = source.read_block("block1")
    assert set(values) == {"block1_conv1", "block1_conv2"}


def small_model(name="small"):
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, name="block_1_0"),
            L.BatchNormalization(name="block_1_1"),
            keras.Sequential([L.Dense(3, name="inner")], name="block_2_0"),
            L.Flatten(),
            L.Dense(2, name="head"),
        ],
        name=name,
    )


def test_optimizer_state_is_ignored_and_nested_models_map_by_path(tmp_path):
    model = small_model()
    model.compile("adam", "mse")
    model.fit(np.ones((2, 8, 8, 3)), np.ones((2, 2)), verbose=0)
    path = str(tmp_path / "trained.weights.h5")
    model.save_weights(path)
    with h5py.File(path) as f:
        assert "optimizer" in f
    target = small_model("target")
    report = load_blocks(target, path)
    assert report.ok and list(report.loaded) == ["block_1", "block_2", "head"]
    assert "optimizer" not in report.unexpected
    assert_same(snapshot(model), {k.replace("target/", "small/"): v
                                  for k, v in snapshot(target).items()})


def test_sharded_weights_json(tmp_path):
    model = small_model()
    randomize(model, seed=4)
    path = str(tmp_path / "sharded.weights.json")
    keras.saving.save_weights(model, path, max_shard_size=1e-6)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".weights.h5")]) > 1
    target = small_model("target")
    report = load_blocks(target, path, only=["block_1", "block_2"])
    assert report.ok
    assert_same(snapshot(model), {k.replace("target/", "small/"): v
                                  for k, v in snapshot(target).items()},
                keys=[v.path for n in ["block_1_0", "block_1_1"]
                      for v in model.get_layer(n).weights])


def test_sharded_index_cannot_point_outside_its_folder(tmp_path):
    path = tmp_path / "evil.weights.json"
    path.write_text(json.dumps({"weight_map": {"/layers/dense/vars": ["../../etc/x.h5"]}}))
    with pytest.raises(BlockFileError, match="not a plain file name"):
        open_keras_file(str(path))


def test_legacy_nested_model_weights_are_split_by_their_names(tmp_path):
    model = small_model()
    randomize(model, seed=5)
    path = str(tmp_path / "keras2.h5")
    write_keras2(model, path)
    with open_keras_file(path) as source:
        assert [layer.path for layer in source.layers()] == [
            "block_1_0", "block_1_1", "block_2_0/inner", "head"]
        assert [v.name for v in source.layers()[1].variables] == [
            "gamma", "beta", "moving_mean", "moving_variance"]
    target = small_model("target")
    assert load_blocks(target, path).ok
    assert_same(snapshot(model), {k.replace("target/", "small/"): v
                                  for k, v in snapshot(target).items()})


def test_keras3_legacy_h5_from_model_save(tmp_path):
    model = small_model()
    randomize(model, seed=6)
    path = str(tmp_path / "whole.h5")
    model.save(path)
    target = small_model("target")
    assert load_blocks(target, path).ok
    assert_same(snapshot(model), {k.replace("target/", "small/"): v
                                  for k, v in snapshot(target).items()})


def test_structural_names_follow_keras_saver():
    model = small_model()
    names = structural_names(model)
    assert names["layers/conv2d"] == ("block_1_0", "Conv2D")
    assert names["layers/sequential/layers/dense"] == ("inner", "Dense")


def test_the_structure_walk_asks_keras_for_each_types_skip_set_once(monkeypatch, tmp_path):
    """Keras 3.15 caches `get_attr_skipset` under one key and looks it up under another, so
    its saver built a reference `Layer()` for every object walked (20 ms of a one-block load
    into the seed CNN). `keras_structure` asks once per object type within its two walks,
    finds the very paths Keras writes, and leaves Keras's function as it was."""
    from keras.src.saving import saving_lib

    from keras_blockreuse.sources.structure import keras_structure

    asked: list[str] = []
    compute = saving_lib.get_attr_skipset

    def counted(obj_type):
        asked.append(obj_type)
        return compute(obj_type)

    monkeypatch.setattr(saving_lib, "get_attr_skipset", counted)
    model = small_model()
    units = keras_structure(model)
    assert sorted(asked) == sorted(set(asked)) and set(asked) <= {"Functional", "Layer",
                                                                  "Sequential", "Operation"}
    assert saving_lib.get_attr_skipset is counted
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with h5py.File(path, "r") as f:
        written = set()
        f.visit(lambda name: written.add(name[: -len("/vars")]) if name.endswith("/vars")
                and name != "vars" else None)
    assert {u.keras_path for u in units} == written


def test_a_layer_that_saves_blocks_while_keras_walks_it_does_not_hang(tmp_path):
    """The structure walk's lock was not re-entrant: a layer whose `save_own_variables` saves
    its inner model as blocks (user code the walk runs) waited on it forever."""
    import threading

    from keras.src.saving import saving_lib

    inner_path = str(tmp_path / "inner.blocks.h5")

    class Wrapper(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.Sequential([keras.layers.Dense(3), keras.layers.Dense(3)])

        def build(self, shape):
            self.inner.build(shape)

        def call(self, x):
            return self.inner(x)

        def save_own_variables(self, store):
            save_blocks(self.inner, inner_path)
            super().save_own_variables(store)

    before = saving_lib.get_attr_skipset
    model = keras.Sequential([keras.Input((3,)), Wrapper(), keras.layers.Dense(2)])
    done: list = []
    worker = threading.Thread(target=lambda: done.append(
        save_blocks(model, str(tmp_path / "outer.blocks.h5"))), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert done and os.path.exists(inner_path), "save_blocks hung inside the walk"
    assert saving_lib.get_attr_skipset is before


# --- a model whose own code makes Keras's saving walk fail ------------------------------------


class Fragile(L.Dense):
    """A Dense whose `fails` (set once built and saved) makes one of the calls Keras's saving
    walk makes on it raise, as a custom layer's own code can."""

    fails = None

    def __dir__(self):
        if self.fails == "__dir__":
            raise RuntimeError("__dir__ failed")
        return super().__dir__()

    def _obj_type(self):
        if self.fails == "_obj_type":
            raise RuntimeError("_obj_type failed")
        if self.fails == "_obj_type unknown to Keras":
            return "Fragile"
        return super()._obj_type()

    def __getattr__(self, name):  # a layer that looks attributes up in a table of its own
        if self.__dict__.get("fails") == "__getattr__":
            raise KeyError("__getattr__ failed")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


WALK = ("The model's own code raised this in Keras's saving walk, which model.save_weights "
        "also runs, and fails the same way; its layers cannot be paired with Keras's "
        "structural paths without it.")
FAILURES = {
    "__dir__": (RuntimeError, "at 'layers/fragile' (Fragile), RuntimeError: __dir__ failed"),
    "_obj_type": (RuntimeError, "at 'layers/fragile' (Fragile), RuntimeError: _obj_type failed"),
    "_obj_type unknown to Keras": (
        ValueError, "at 'layers/fragile' (Fragile), ValueError: get_attr_skipset got invalid "
        "obj_type='Fragile'. Accepted values for `obj_type` are ['Operation', 'Layer', "
        "'Functional', 'Sequential', 'Metric', 'Optimizer', 'Loss', 'Cross', 'Feature']"),
    "__getattr__": (KeyError, "at or after 'layers/fragile', KeyError: '__getattr__ failed'"),
}


def fragile(name):
    return keras.Sequential([keras.Input((4,)), L.Dense(3), Fragile(2)], name=name)


@pytest.mark.parametrize("fails", list(FAILURES))
def test_a_model_whose_own_code_fails_keras_saving_walk_gets_one_chained_error(tmp_path, fails):
    """A custom layer whose `__dir__`, `_obj_type` or `__getattr__` raises made Keras's saving
    walk fail (Keras's own save_weights fails too): the walk's own part of it reached the user
    raw from deep inside (`RuntimeError: __dir__ failed`), its dry run of Keras's saver as a
    `BlockFileError` not chained. Now one `BlockMismatchError` naming the model and the object,
    chained to the original error, from load_blocks (the model, or source_model=) and
    save_blocks; a failed load changes no weight."""
    error, where = FAILURES[fails]
    source = fragile("f")
    randomize(source, seed=3)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    blocks = save_blocks(source, tmp_path / "m.blocks.h5")
    unnamed = str(tmp_path / "unnamed.weights.h5")
    shutil.copy(path, unnamed)
    strip_name_attributes(unnamed)  # pairs through source_model='s structure only
    keras.backend.clear_session(free_memory=False)
    target, other = fragile("t"), fragile("s")  # `dense`, `fragile`; `dense_1`, `fragile_1`
    target.layers[-1].fails = other.layers[-1].fails = fails
    with pytest.raises(error):
        target.save_weights(str(tmp_path / "keras.weights.h5"))  # Keras's own saver fails
    before = snapshot(target)
    for model, load in [("t", lambda: load_blocks(target, path)),
                        ("t", lambda: load_blocks(target, blocks)),
                        ("s", lambda: load_blocks(target, other)),
                        ("s", lambda: load_blocks(target, unnamed, source_model=other)),
                        ("t", lambda: save_blocks(target, tmp_path / "t.blocks.h5"))]:
        with pytest.raises(BlockMismatchError) as e:
            load()
        assert str(e.value) == (
            f"Cannot walk model {model!r} the way Keras saves it: {where}. {WALK}")
        assert isinstance(e.value.__cause__, error)
    assert_same(before, snapshot(target))
    assert not os.path.exists(tmp_path / "t.blocks.h5")


def test_errors_from_inside_keras_saving_walk_are_wrapped_once_or_not_at_all(tmp_path):
    """This library's own errors (user code that loads blocks) and KeyboardInterrupt pass
    through the walk as they are."""

    class Raising(L.Dense):
        raises = None

        def __dir__(self):
            if self.raises is not None:
                raise self.raises
            return super().__dir__()

    model = keras.Sequential([keras.Input((4,)), L.Dense(3), Raising(2)])
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    before = snapshot(model)
    for raised in (BlockFileError("inner.blocks.h5: damaged"), KeyboardInterrupt()):
        model.layers[-1].raises = raised
        with pytest.raises(type(raised)) as e:
            load_blocks(model, path)
        assert e.value is raised
    assert_same(before, snapshot(model))


def test_file_kinds(vgg_files, tmp_path):
    _, _, files = vgg_files
    assert keras_file_kind(files["weights"]) == "weights"
    assert keras_file_kind(files["keras"]) == "keras"
    assert keras_file_kind(files["keras2"]) == "legacy"
    assert keras_file_kind(str(tmp_path / "x.blocks.h5")) is None
    renamed = str(tmp_path / "renamed.h5")
    shutil.copy(files["weights"], renamed)
    assert keras_file_kind(renamed) == "weights"  # recognised by content
    with pytest.raises(BlockFileError, match="No such file"):
        open_keras_file(str(tmp_path / "missing.weights.h5"))
    not_keras = tmp_path / "plain.h5"
    with h5py.File(not_keras, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(BlockFileError, match="not a supported weights file"):
        open_keras_file(str(not_keras))


def test_readme_resnet50_stages_into_a_new_model(tmp_path):
    """The README's worked example: ResNet50's first three stages into a new model."""
    from keras_blockreuse import BlockModel

    resnet = BlockModel.from_model(
        keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10))
    assert list(resnet.blocks) == ["conv1", "conv2", "conv3", "conv4", "conv5", "predictions"]
    randomize(resnet, seed=8)
    resnet.save_blocks(tmp_path / "resnet50.blocks.h5")
    resnet.save_weights(tmp_path / "resnet50.weights.h5")

    backbone = keras.applications.ResNet50(weights=None, include_top=False,
                                           input_shape=(96, 96, 3))
    features = backbone.get_layer("conv3_block4_out").output
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="head_conv")(features)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(5, name="head_out")(x)
    model = BlockModel.from_model(keras.Model(backbone.input, outputs, name="detector"))
    assert list(model.blocks) == ["conv1", "conv2", "conv3", "head_conv", "head_out"]

    for source in ["resnet50.blocks.h5", "resnet50.weights.h5"]:
        randomize(model, seed=1)
        before = snapshot(model)
        report = model.load_blocks(tmp_path / source, only=["conv1", "conv2", "conv3"],
                                   freeze=True)
        assert report.ok and report.frozen == ["conv1", "conv2", "conv3"]
        assert report.untouched == ["head_conv", "head_out"]
        for name in ["conv1", "conv2", "conv3"]:
            for layer in model.blocks[name].layers:
                assert not layer.trainable
                for v, w in zip(layer.weights, resnet.get_layer(layer.name).weights,
                                strict=True):
                    assert keras.ops.convert_to_numpy(v).tobytes() == \
                        keras.ops.convert_to_numpy(w).tobytes()
        for name in ["head_conv", "head_out"]:
            for v in model.get_layer(name).weights:
                assert keras.ops.convert_to_numpy(v).tobytes() == before[v.path].tobytes()
        for name in ["conv1", "conv2", "conv3"]:
            model.unfreeze_blocks([name])


# --- source_model= on a file with names: walked only when a block needs it (issue 16) --------


class Holder(keras.Model):
    """`UpDown` held in an attribute: Keras saves it under `block/...`, not `layers/...`."""

    def __init__(self):
        super().__init__()
        self.block = UpDown()

    def call(self, x):
        return self.block(x)


def up_down_sequential():
    return keras.Sequential([keras.Input((8,)), UpDown(), L.Dense(3, name="head")])


def keras_loaded(build, path):
    """What Keras's own `load_weights` puts into a fresh model of the file's architecture."""
    model = build()
    model.load_weights(path)
    return model


def test_weights_with_source_model_pair_by_name_bit_for_bit_without_the_walk(tmp_path,
                                                                             monkeypatch):
    from keras_blockreuse.sources import structure

    source = up_down_sequential()
    randomize(source, seed=5)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    target = keras.Sequential([keras.Input((8,)), L.Dense(3, name="head")])

    def no_walk(*args, **kwargs):
        raise AssertionError("the structure was walked although every block pairs by name")

    monkeypatch.setattr(structure, "keras_structure", no_walk)
    built = []
    report = load_blocks(target, path, source_model=lambda: built.append(1) or source,
                         only=["head"])
    assert report.ok and report.pairing["head"] == "name" and not built  # never even built
    reference = keras_loaded(up_down_sequential, path).get_layer("head")
    for a, b in zip(target.get_layer("head").weights, reference.weights, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# The source's blocks: its `UpDown` has an automatic name (`up_down_<n>` in this process).
SOURCE_BLOCKS = {"up_down": ["up_down*"], "head": ["head"]}


def test_weights_with_source_model_rebuilt_lazily_pair_by_order_bit_for_bit(tmp_path):
    """Names (`up_down/dense` against `up_down_1/dense_2`) and Keras paths (`layers/up_down`
    against `block`) differ, so the load builds source_model= (a builder: new automatic names
    again) and walks it: the layers pair by computation order, `up` to `up`."""
    source = up_down_sequential()
    randomize(source, seed=6)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    target = Holder()
    target(np.zeros((1, 8), "float32"))
    report = load_blocks(target, path, source_model=up_down_sequential, only=["up_down"],
                         rename={"up_down": "block"}, blocks={"block": ["*"]},
                         source_blocks=SOURCE_BLOCKS)
    assert report.ok and report.pairing["block"] == "order", str(report)
    reference = keras_loaded(up_down_sequential, path).layers[0]
    for mine, keras_own in ((target.block.up, reference.up), (target.block.down, reference.down)):
        for a, b in zip(mine.weights, keras_own.weights, strict=True):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    source_up = np.asarray(source.layers[0].up.kernel)
    assert np.asarray(target.block.up.kernel).tobytes() == source_up.tobytes()  # not `down`


def head_and(block_layer):
    """A target with `head` (pairs by name) and `block_layer` saved under another Keras path
    than the source's `layers/up_down` (it pairs only by order, after the walk)."""
    inputs = keras.Input((8,))
    target = keras.Model(inputs, [L.Dense(3, name="head")(inputs), block_layer(inputs)])
    randomize(target, seed=9)
    return target


@keras.saving.register_keras_serializable(package="test_keras_sources")
class Same(UpDown):
    """`UpDown` under another class name, so Keras saves it under `layers/same`."""


@keras.saving.register_keras_serializable(package="test_keras_sources")
class Wider(UpDown):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.down = L.Dense(9)


def test_wrong_source_model_for_a_named_file_is_refused_when_walked(tmp_path):
    """A block that pairs by name never uses source_model=; one that needs the walk finds
    the wrong model there and refuses, after the first block paired: nothing changes."""
    source = up_down_sequential()
    randomize(source, seed=7)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    other = keras.Sequential([keras.Input((4,)), L.Dense(2, name="d")])
    target = head_and(Same(name="block"))
    options = dict(rename={"up_down": "block"}, blocks=lambda layer: layer.name,
                   source_blocks=SOURCE_BLOCKS)
    report = load_blocks(target, path, source_model=other, only=["head"])  # by name only
    assert report.ok and report.pairing["head"] == "name"
    before = snapshot(target)
    with pytest.raises(BlockFileError, match="does not have the structure of source_model"):
        load_blocks(target, path, source_model=other, **options)
    assert_same(before, snapshot(target))
    report = load_blocks(target, path, source_model=up_down_sequential, **options)
    assert report.ok and report.pairing == {"head": "name", "block": "order"}
    with pytest.raises(TypeError, match="source_model"):
        load_blocks(target, path, source_model="up_down.weights.h5")


def test_mismatch_found_after_the_lazy_walk_changes_nothing(tmp_path):
    """`head` pairs by name at once; `block` pairs only after the walk, and its `down` layer
    has another width: the load refuses both, and no weight changes."""
    source = up_down_sequential()
    randomize(source, seed=8)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    target = head_and(Wider(name="block"))
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match="shape differs"):
        load_blocks(target, path, source_model=up_down_sequential, rename={"up_down": "block"},
                    blocks=lambda layer: layer.name, source_blocks=SOURCE_BLOCKS)
    assert_same(before, snapshot(target))


def test_convert_with_source_model_records_the_computation_order(tmp_path):
    from keras_blockreuse.convert import convert
    from keras_blockreuse.sources.block_file import BlockFileSource

    source = up_down_sequential()
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    orders = {}
    for given in (None, up_down_sequential):
        out = convert(path, str(tmp_path / f"{given is None}.blocks.h5"), blocks=SOURCE_BLOCKS,
                      source_model=given)
        with BlockFileSource(out) as converted:
            orders[given is None] = [x.order for x in converted.block_layers("up_down")]
    assert orders[True] == [None, None]  # names only: the order is unknown
    assert None not in orders[False] and orders[False] == sorted(orders[False])  # up, down


def test_bfloat16_weights_file_loads_bit_for_bit(tmp_path):
    """Keras marks bfloat16 datasets with a `dtype` attribute, found in the file's listing
    (`open_h5`); the values come back as bfloat16, bit for bit."""
    def build(name):
        return keras.Sequential([keras.Input((4,)), L.Dense(3, dtype="bfloat16", name="head"),
                                 L.Dense(2, name="out")], name=name)

    model = build("source")
    randomize(model, seed=4)
    path = str(tmp_path / "bf16.weights.h5")
    model.save_weights(path)
    with h5py.File(path) as f:
        assert f["layers/dense/vars/0"].attrs["dtype"] == "bfloat16"
    target = build("target")
    report = load_blocks(target, path)
    assert report.ok and report.variables_loaded == 4
    assert_same({k.replace("source", "x"): v for k, v in snapshot(model).items()},
                {k.replace("target", "x"): v for k, v in snapshot(target).items()})


def test_the_checked_listing_holds_what_hdf5_reads(vgg_files):
    """`open_h5` lists each object once with its type and its single variable-length
    strings, read by the global-heap check itself: the same types and texts as HDF5's."""
    from keras_blockreuse.safety import text_attribute
    from keras_blockreuse.sources.hdf5 import open_h5

    path = vgg_files[2]["weights"]
    with open_h5(path) as checked, h5py.File(path, "r") as f:
        visited = []
        h5py.h5o.visit(f.id, lambda name, info: visited.append((name, info.type, info.addr)),
                       info=True)
        assert checked.objects == visited
        texts = 0
        for name, _, address in checked.objects:
            attributes = checked.header(address)[1]
            assert sorted(attributes) == sorted(k.encode() for k in f[name.decode()].attrs)
            for key, value in attributes.items():
                if value is not None:
                    texts += 1
                    assert value.decode() == text_attribute(f[name.decode()], key.decode())
        assert texts >= 16  # every layer's `name`


def _damage_attribute(path, dataset):
    """Gives `dataset` a text attribute, then damages its attribute message (an unknown
    version) in the file's bytes: HDF5 still walks and opens the file, the global-heap check
    refuses the attribute."""
    with h5py.File(path, "a") as f:
        f[dataset].attrs["note"] = "x"
    data = bytearray(open(path, "rb").read())
    at = data.index(b"note\x00")
    assert data[at - 8] == 1  # a version 1 attribute message: version, reserved, sizes, name
    data[at - 8] = 9
    open(path, "wb").write(bytes(data))


def test_a_one_block_load_checks_the_headers_of_the_variables_it_reads(tmp_path):
    """A `.weights.h5` variable's header is checked when a load reads it: damage in another
    block's variable does not stop a one-block load (bit-identical), and a load that reads it
    is refused, naming the file and the damage, with no weight changed."""
    source = dense_stack(6, name="source")
    randomize(source, seed=3)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    with h5py.File(path, "r") as f:
        assert f["layers/dense_2/vars"].attrs["name"] == "block_3_0"
    _damage_attribute(path, "layers/dense_2/vars/0")

    target = dense_stack(6, name="target")
    before = snapshot(target)
    report = load_blocks(target, path, only=["block_1", "block_4"])
    assert report.ok and report.loaded == {"block_1": "block_1", "block_4": "block_4"}
    assert report.variables_loaded == 4
    after = snapshot(target)
    for key in after:
        expected = (snapshot(source)[key]
                    if "block_1" in key or "block_4" in key else before[key])
        assert after[key].tobytes() == expected.tobytes(), key

    for only in (["block_3"], None):
        before = snapshot(target)
        with pytest.raises(BlockFileError) as e:
            load_blocks(target, path, only=only)
        assert path in str(e.value) and "unknown version 9" in str(e.value)
        assert "layers/dense_2/vars/0" in str(e.value)
        assert_same(before, snapshot(target))


def test_an_entry_of_a_vars_group_that_is_not_a_dataset_is_refused(tmp_path):
    """Keras writes only datasets inside a `vars` group; a group there is refused when a
    load reads its layer (it was skipped, leaving the layer a variable short)."""
    source = dense_stack(4, name="source")
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    with h5py.File(path, "a") as f:
        f.create_group("layers/dense_1/vars/2")
    target = dense_stack(4, name="target")
    assert load_blocks(target, path, only=["block_1"]).ok
    before = snapshot(target)
    with pytest.raises(BlockFileError,
                       match=r"'/layers/dense_1/vars/2' should be a dataset .* but is not"):
        load_blocks(target, path, only=["block_2"])
    assert_same(before, snapshot(target))


def test_headers_are_checked_in_the_file_hdf5_has_open_when_its_path_is_replaced(tmp_path):
    """A variable's header is checked when it is read, in the file HDF5 has open (through
    HDF5's own descriptor, never by opening the path again): replacing the file at its path
    meanwhile (an atomic save) changes neither the check nor the values read."""
    source = dense_stack(6, name="source")
    randomize(source, seed=4)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    other = dense_stack(6, name="other")
    randomize(other, seed=5)
    replacement = str(tmp_path / "new.weights.h5")
    other.save_weights(replacement)
    _damage_attribute(replacement, "layers/dense_2/vars/0")
    with open_keras_file(path) as opened:
        os.replace(replacement, path)
        values = opened.read_block("block_3")
    expected = snapshot(source)
    assert values["block_3_0"]["0"].tobytes() == expected["block_3_0/kernel"].tobytes()
    assert values["block_3_0"]["1"].tobytes() == expected["block_3_0/bias"].tobytes()


# --- streaming loads from Keras files: pass 1 checks and hashes, pass 2 compares and assigns --


def small_cnn(name, dtype=None):
    """Conv, BatchNormalization (non-trainable variables), Dense: four blocks."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="block_1_0", dtype=dtype)(inputs)
    x = L.BatchNormalization(name="block_1_1", dtype=dtype)(x)
    x = L.Flatten()(x)
    x = L.Dense(5, name="block_2_0", dtype=dtype)(x)
    x = L.Dense(6, name="block_3_0", dtype=dtype)(x)
    outputs = L.Dense(3, name="head", dtype=dtype)(x)
    return keras.Model(inputs, outputs, name=name)


def deflate(source, path):
    """The archive again with every member deflated."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)


def save_as(model, kind, folder, name="m"):
    """`model` saved as a Keras file of `kind`; its path."""
    if kind == "weights":
        path = str(folder / f"{name}.weights.h5")
        model.save_weights(path)
    elif kind in ("keras", "keras_deflated"):
        path = str(folder / f"{name}.keras")
        model.save(path)
        if kind == "keras_deflated":
            deflated = str(folder / f"{name}_deflated.keras")
            deflate(path, deflated)
            with zipfile.ZipFile(deflated) as archive:
                assert archive.getinfo("model.weights.h5").compress_type == zipfile.ZIP_DEFLATED
            path = deflated
    else:
        path = str(folder / f"{name}_keras2.h5")
        write_keras2(model, path)
    return path


@pytest.fixture
def streams_all(monkeypatch):
    """Loads of any size stream (`transfer.HOLD_BYTES` holds a few MiB in one pass)."""
    from keras_blockreuse import transfer

    monkeypatch.setattr(transfer, "HOLD_BYTES", 0)


def streaming_source(path, source_model=None):
    """The file opened as a source whose `read_block` (the path that holds every value)
    fails, so a load that succeeds went through `verify` and `iter_values`."""
    source = open_keras_file(path, source_model=source_model)

    def read_block(name):
        raise AssertionError(f"read_block({name!r}): the load did not stream")

    source.read_block = read_block
    return source


@pytest.mark.usefixtures("streams_all")
@pytest.mark.parametrize("kind", ["weights", "keras", "keras_deflated", "keras2"])
def test_streaming_loads_from_keras_files_are_bit_identical(kind, tmp_path):
    source = small_cnn("source")
    randomize(source, seed=11)
    path = save_as(source, kind, tmp_path)
    target = small_cnn("target")
    report = load_blocks(target, streaming_source(path, source if kind == "weights" else None))
    assert report.ok and list(report.loaded) == ["block_1", "block_2", "block_3", "head"]
    assert report.variables_loaded == len(target.weights) == 12
    assert report.bytes_read == sum(4 * int(np.prod(v.shape)) for v in target.weights)
    assert_same(snapshot(source), snapshot(target))  # the same layer names: same paths


@pytest.mark.usefixtures("streams_all")
@pytest.mark.parametrize("kind", ["weights", "keras", "keras2"])
def test_an_overflow_found_late_in_the_first_pass_changes_no_weight(kind, tmp_path):
    """float32 values into a float16 model: every value is checked for its cast in pass 1;
    the one that does not fit is the last value of the last block, so a load that assigned
    while checking would have changed every other weight."""
    source = small_cnn("source")
    randomize(source, seed=12)
    bias = source.get_layer("head").bias
    bias.assign(np.array([0.5, -1e6, 0.25], dtype="float32"))  # float16 ends at 65504
    path = save_as(source, kind, tmp_path)
    target = small_cnn("target", dtype="float16")
    before = snapshot(target)
    with pytest.raises(BlockMismatchError, match=r"(?s)1 variable\(s\) hold values.*"
                       r"head.*value -1e\+06 does not fit float16"):
        load_blocks(target, streaming_source(path, source if kind == "weights" else None))
    assert_same(before, snapshot(target))
    report = load_blocks(target, streaming_source(path, source if kind == "weights" else None),
                         on_mismatch="skip")  # the rest loads, cast, still streaming
    assert [(m.layer, m.variable) for m in report.skipped] == [("head", "bias"),
                                                               ("head", "kernel")]
    assert_same(before, snapshot(target), ["head/kernel", "head/bias"])  # left whole
    kernel = np.asarray(target.get_layer("block_3_0").kernel)
    assert kernel.dtype == np.float16
    assert kernel.tobytes() == np.asarray(source.get_layer("block_3_0").kernel).astype(
        np.float16).tobytes()


@pytest.mark.usefixtures("streams_all")
@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_a_keras_file_rewritten_in_place_between_the_passes_is_detected(kind, tmp_path):
    """A real byte of block_3's kernel changed in the file after pass 1: pass 2 finds its
    hash differs before using it, and the error names what was loaded. The kernels are
    larger than HDF5's 64 KiB sieve buffer, so pass 2 reads the file again."""
    source = dense_stack(160, depth=4, name="source")
    randomize(source, seed=13)
    path = save_as(source, kind, tmp_path)
    with open(path, "rb") as f:
        data = f.read()
    kernel = np.asarray(source.get_layer("block_3_0").kernel).tobytes()
    offset = data.find(kernel)
    assert offset > 0 and data.find(kernel, offset + 1) == -1  # stored once, in place

    target = dense_stack(160, depth=4, name="target")
    before = snapshot(target)
    src = streaming_source(path)
    verify = src.verify

    def verify_then_rewrite(names, check=None):
        verify(names, check=check)
        with open(path, "r+b") as f:  # in place: same inode, as `os.replace` never does
            f.seek(offset + 70_000)
            byte = f.read(1)
            f.seek(offset + 70_000)
            f.write(bytes([byte[0] ^ 0x01]))

    src.verify = verify_then_rewrite
    with pytest.raises(BlockFileError, match=r"(?s)could not be read again as it was verified.*variable '0' "
                       r"of layer 'block_3_0' \(block 'block_3'\) is not what the first pass "
                       r"read.*Loaded before the error: blocks \['block_1', 'block_2'\], and "
                       r"of block 'block_3' none of its layers; the model's other blocks"):
        load_blocks(target, src)
    after, expected = snapshot(target), snapshot(source)  # the same layer names: same paths
    assert_same(expected, after, [v.path for n in ("block_1_0", "block_2_0")
                                  for v in target.get_layer(n).weights])
    assert_same(before, after, [v.path for n in ("block_3_0", "block_4_0")
                                for v in target.get_layer(n).weights])
    assert expected["block_3_0/kernel"].tobytes() != before["block_3_0/kernel"].tobytes()


def test_a_deflated_archive_is_bounded_from_its_config_without_its_values(tmp_path,
                                                                           monkeypatch):
    """The inflation bound comes from the config's model built with uninitialized variables
    (no second copy of the model in memory), which leave no trace in Keras's global state."""
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    from keras_blockreuse.sources import keras_archive

    source = small_cnn("source")
    randomize(source, seed=14)
    path = save_as(source, "keras_deflated", tmp_path)
    builds = []
    build = keras_archive.model_from_config
    monkeypatch.setattr(keras_archive, "model_from_config",
                        lambda *a: builds.append(in_stateless_scope()) or build(*a))
    pending = list(global_state.get_global_attribute("uninitialized_variables") or [])
    target = small_cnn("target")
    assert load_blocks(target, path).ok
    assert builds == [True]  # once, stateless: no model rebuilt with values for pairing
    assert list(global_state.get_global_attribute("uninitialized_variables") or []) == pending
    assert_same(snapshot(source), snapshot(target))


def test_a_keras_archive_that_is_not_a_zip_file_says_what_it_holds(tmp_path):
    model = dense_stack(4)
    good = tmp_path / "good.keras"
    model.save(good)
    data = good.read_bytes()
    page = tmp_path / "page.keras"
    page.write_bytes(b"<html>404 Not Found</html>")
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])  # the zip directory is at the end: gone
    before = snapshot(model)
    for path, size, start in ((page, 26, b"<html>404 Not Fo"), (cut, len(data) // 2, data[:16])):
        with pytest.raises(BlockFileError) as e:
            load_blocks(model, str(path))
        assert str(e.value).startswith(
            f"{str(path)!r} is not a valid .keras archive: File is not a zip file ({size} "
            f"bytes, starting {start!r}; a .keras archive is a zip file")
        assert "fetch or save it again" in str(e.value)
    assert_same(before, snapshot(model))


def test_a_complete_file_under_another_kind_of_name_is_named_for_what_it_is(tmp_path):
    """Found by a fresh-user test: a Keras weights file named `.keras` was "not a valid
    .keras archive ... a download that saved an error page, or a copy cut short"; a `.keras`
    archive named `.blocks.h5` was "not an HDF5 file ... an error page"; a numpy `.npz`
    (a zip) was "a Keras .keras file?" with advice to run the command that had just failed.
    Each now says what the file is and which name fits it; nothing changes in the model."""
    model = dense_stack(4)
    model.save_weights(tmp_path / "w.weights.h5")
    model.save(tmp_path / "m.keras")
    hdf5 = tmp_path / "hdf5.keras"
    hdf5.write_bytes((tmp_path / "w.weights.h5").read_bytes())
    archive = tmp_path / "archive.blocks.h5"
    archive.write_bytes((tmp_path / "m.keras").read_bytes())
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, a=np.zeros(3))
    before = snapshot(model)
    with pytest.raises(BlockFileError) as e:
        load_blocks(model, str(hdf5))
    assert str(e.value) == (
        f"{str(hdf5)!r} is not a .keras archive but an HDF5 file ({hdf5.stat().st_size} bytes, "
        f"starting {hdf5.read_bytes()[:16]!r}), as a Keras .weights.h5, a Keras 2 .h5 and a "
        ".blocks.h5 file are; a .keras archive is a zip file, starting b'PK\\x03\\x04'. Give it "
        "its name: rename it to end in .weights.h5, .h5 or .blocks.h5, as it was saved.")
    with pytest.raises(BlockFileError) as e:
        load_blocks(model, str(archive))
    assert str(e.value) == (
        f"{str(archive)!r} is not an HDF5 file but a zip archive ({archive.stat().st_size} "
        f"bytes, starting {archive.read_bytes()[:16]!r}), as a Keras .keras archive is: "
        ".blocks.h5 files, and Keras .weights.h5 and .h5 files, start with the HDF5 signature "
        "b'\\x89HDF\\r\\n\\x1a\\n'. If it is a .keras archive, give it its name: rename it to end "
        "in .keras.")
    json_named = tmp_path / "archive.weights.json"
    json_named.write_bytes((tmp_path / "m.keras").read_bytes())
    with pytest.raises(BlockFileError) as e:
        load_blocks(model, str(json_named))
    assert str(e.value) == (
        f"{str(json_named)!r} is not a Keras sharded weights index (a JSON file with a "
        "weight_map) but a zip archive, as a .keras archive is (starting "
        f"{json_named.read_bytes()[:8]!r}): give it its name, ending in .keras.")
    with pytest.raises(BlockFileError) as e:
        read_blocks(arrays)
    assert str(e.value) == (
        f"{arrays} is a zip archive without the config.json of a Keras .keras archive (it "
        "holds ['a.npy']), and not a block file: expected a .blocks.h5 file, or a Keras "
        ".keras, .weights.h5 or .h5 file.")
    assert_same(before, snapshot(model))


def test_a_damaged_weights_file_with_source_model_says_what_is_wrong_with_it(tmp_path):
    """Found by a fresh-user check: with `source_model=`, a `.weights.h5` with a changed
    signature byte, cut to 7 bytes, or an HTML page under its name raised `TypeError: Options
    ['source_model'] do not apply to a block file`, not the `BlockFileError` it gets without
    the option; so did a missing `.blocks.h5` given an option."""
    model = dense_stack(4)
    good = tmp_path / "good.weights.h5"
    model.save_weights(good)
    data = good.read_bytes()
    flipped = tmp_path / "flipped.weights.h5"
    flipped.write_bytes(data[:1] + bytes([data[1] ^ 0xFF]) + data[2:])
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(data[:7])
    page = tmp_path / "page.weights.h5"
    page.write_bytes(b"<html>404 Not Found</html>")
    before = snapshot(model)
    for path in (flipped, cut, page):
        with pytest.raises(BlockFileError, match=r"is not an HDF5 file \(.*\): \.blocks\.h5 "
                           r"files, and Keras \.weights\.h5 and \.h5 files, start with the HDF5"):
            load_blocks(model, str(path), source_model=dense_stack(4))
    with pytest.raises(BlockFileError, match="No such block file"):
        load_blocks(model, str(tmp_path / "missing.blocks.h5"), source_model=dense_stack(4))
    assert_same(before, snapshot(model))
    blocks = save_blocks(model, tmp_path / "m.blocks.h5")  # a good block file: the option
    with pytest.raises(TypeError, match=r"Options \['source_model'\] do not apply to a block"):
        load_blocks(model, str(blocks), source_model=dense_stack(4))


# --- found by a fresh-user break test of the `.weights.h5` reader -------------------------------


def _three_dense(name="m"):
    return keras.Sequential([keras.Input((6,)), L.Dense(6, name="block_1_0"),
                             L.Dense(6, name="block_1_1"), L.Dense(3, name="head")], name=name)


@pytest.mark.parametrize("damage", ["byte", "h5py"])
def test_two_layers_of_one_name_in_a_weights_file_are_refused(tmp_path, damage):
    """One changed byte turned `block_1_1` into `block_1_0`: two groups carried one layer name,
    and the model's `block_1_0` got the values saved for `block_1_1`, with ok=True. A file
    naming two layers the same is refused, naming both groups, with no weight changed."""
    source = _three_dense("source")
    randomize(source, seed=41)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    if damage == "byte":
        data = bytearray(open(path, "rb").read())
        assert data.count(b"block_1_1") == 1
        data[data.index(b"block_1_1") + 8] = ord("0")
        open(path, "wb").write(bytes(data))
    else:
        with h5py.File(path, "r+") as f:
            f["layers/dense_1/vars"].attrs["name"] = "block_1_0"
    target = _three_dense("target")
    before = snapshot(target)
    for only in (None, ["block_1"]):
        with pytest.raises(BlockFileError, match=r"two layers are named 'block_1_0' \(groups "
                           r"'layers/dense(_1)?/vars' and 'layers/dense(_1)?/vars'\)"):
            load_blocks(target, path, only=only)
    assert_same(before, snapshot(target))


def test_a_variable_in_two_shards_is_refused(tmp_path):
    """A stray copy of a layer in another listed shard won over the index's weight_map, with
    ok=True; a variable found in two shards is refused."""
    source = keras.Sequential([keras.Input((8,)), L.Dense(16, name="enc"),
                               L.Dense(16, name="mid"), L.Dense(4, name="head")])
    index = str(tmp_path / "m.weights.json")
    source.save_weights(index, max_shard_size=0.000001)
    weight_map = json.load(open(index))["weight_map"]
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".weights.h5"))
    first = str(tmp_path / weight_map["/layers/dense/vars"][0])
    with h5py.File(first, "r") as fi, h5py.File(str(tmp_path / shards[-1]), "r+") as fo:
        fi.copy("layers/dense", fo.require_group("layers"))
        for key in fo["layers/dense/vars"]:
            fo["layers/dense/vars"][key][...] = 7.0
    target = keras.Sequential([keras.Input((8,)), L.Dense(16, name="enc"),
                               L.Dense(16, name="mid"), L.Dense(4, name="head")])
    before = snapshot(target)
    with pytest.raises(BlockFileError, match=r"'layers/dense/vars/0' is in two shards"):
        load_blocks(target, index, only=["enc"])
    assert_same(before, snapshot(target))


def test_a_layer_group_whose_type_is_damaged_is_refused(tmp_path):
    """One byte in a layer group's header made its type unknown (HDF5 cannot open it): the
    layer looked absent, reported "not in source" with ok=True. Now refused."""
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, name="enc"), L.Dense(4, name="head")])
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with h5py.File(path, "r") as f:
        address = h5py.h5o.get_info(f["layers/dense_1"].id).addr
    data = bytearray(open(path, "rb").read())
    data[address + 16] = 66  # the first message's type
    open(path, "wb").write(bytes(data))
    with pytest.raises(BlockFileError, match=r"'layers/dense_1' is neither a group nor a dataset"):
        load_blocks(model, path)


def test_a_vars_entry_linked_to_another_layers_vars_group_is_refused(tmp_path):
    """An entry of a `vars` group that is a hard link to another layer's `vars` group (a group
    the file's check already knows) was skipped, and the layer loaded ok=True; it is refused
    like any entry that is not a dataset."""
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, name="enc"), L.Dense(4, name="head")])
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with h5py.File(path, "r+") as f:
        f["layers/dense_1/vars/2"] = f["layers/dense/vars"]
    assert load_blocks(model, path, only=["enc"]).ok
    with pytest.raises(BlockFileError, match=r"'/layers/dense_1/vars/2' should be a dataset"):
        load_blocks(model, path, only=["head"])


def test_a_tf_keras_subclassed_model_or_layer_as_the_source_is_told_a_save_that_works(
        tmp_path):
    """Found by a fresh-user re-check of 682aa85: a subclassed tf-keras model passed as the
    source was told "(or model.save('x.h5'))", which tf-keras refuses for a subclassed model
    (NotImplementedError), and a tf-keras layer was called "a tf-keras (Keras 2) model" and
    told to call model.save_weights, which a layer lacks. Each is now told a save that works;
    the subclassed model's, followed, loads bit for bit."""
    tf_keras = pytest.importorskip("tf_keras")

    class Old(tf_keras.Model):
        def __init__(self):
            super().__init__(name="old")
            self.d = tf_keras.layers.Dense(3, name="d")

        def call(self, x):
            return self.d(x)

    old = Old()
    old(np.zeros((1, 4), "float32"))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    before = snapshot(model)
    with pytest.raises(TypeError) as e:
        load_blocks(model, old)
    assert str(e.value) == (
        "`source` must be a path to a block file (or a Keras weights file) or a Keras 3 "
        f"keras.Model. Received: a tf-keras (Keras 2) model, 'old' of type "
        f"{Old.__module__}.Old. Save it with its model.save_weights('x.h5') and pass that "
        "file: a Keras 2 .h5 is read by its layer names.")
    with pytest.raises(TypeError) as e:
        load_blocks(model, old.d)
    assert str(e.value) == (
        "`source` must be a path to a block file (or a Keras weights file) or a Keras 3 "
        "keras.Model. Received: a tf-keras (Keras 2) layer, 'd' of type "
        "tf_keras.src.layers.core.dense.Dense. Save the tf-keras model holding it with "
        "model.save_weights('x.h5') and pass that file: a Keras 2 .h5 is read by its layer "
        "names.")
    assert_same(before, snapshot(model))
    old.save_weights(str(tmp_path / "x.h5"))
    assert load_blocks(model, str(tmp_path / "x.h5")).ok
    assert all(np.array(a.numpy()).tobytes() == np.array(b.numpy()).tobytes()
               for a, b in zip(old.weights, model.weights, strict=True))


def test_a_tf_keras_model_as_the_source_is_refused_with_the_file_to_save(tmp_path):
    """Found by a fresh-user test: a tf-keras (Keras 2) model passed as the source was
    refused as "must be ... a keras.Model. Received: <tf_keras...Sequential object ...> of
    type Sequential", which reads as if a Sequential were not a model. It now says it is a
    Keras 2 model and which file to save; that file, followed, loads bit for bit."""
    tf_keras = pytest.importorskip("tf_keras")
    old = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3, name="d")],
                              name="old")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    before = snapshot(model)
    with pytest.raises(TypeError) as e:
        load_blocks(model, old)
    assert str(e.value) == (
        "`source` must be a path to a block file (or a Keras weights file) or a Keras 3 "
        "keras.Model. Received: a tf-keras (Keras 2) model, 'old' of type "
        "tf_keras.src.engine.sequential.Sequential. Save it with its "
        "model.save_weights('x.h5') (or model.save('x.h5')) and pass that file: a Keras 2 "
        ".h5 is read by its layer names.")
    assert_same(before, snapshot(model))
    old.save_weights(str(tmp_path / "x.h5"))
    assert load_blocks(model, str(tmp_path / "x.h5")).ok
    assert all(np.array(a.numpy()).tobytes() == np.array(b.numpy()).tobytes()
               for a, b in zip(old.weights, model.weights, strict=True))


def test_a_keras_archive_whose_directory_names_its_weights_otherwise_says_it_is_damaged(
        tmp_path):
    """Found by a fresh-user test: one flipped bit in a `.keras` archive's zip directory
    (the weights member's name) was refused as "holds no model.weights.h5; members: [...,
    'model.wehghts.h5']", which reads as an archive of another layout. A member whose name
    differs from model.weights.h5 by one character is now said to look damaged, with what
    to do; nothing is loaded."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    path = str(tmp_path / "m.keras")
    model.save(path)
    data = bytearray(open(path, "rb").read())
    at = data.rfind(b"model.weights.h5")  # the directory's copy of the name, at the end
    data[at + 8] = ord("h")  # "model.weights" -> "model.wehghts"
    open(path, "wb").write(bytes(data))
    before = snapshot(model)
    with pytest.raises(BlockFileError) as e:
        load_blocks(model, path)
    assert str(e.value) == (
        f"{path!r} holds no model.weights.h5; members: ['config.json', 'metadata.json', "
        "'model.wehghts.h5']: its member 'model.wehghts.h5' differs from that name by one "
        "character, as a damaged archive directory's does; fetch or save it again")
    assert_same(before, snapshot(model))
