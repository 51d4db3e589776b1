import warnings

import h5py
import keras
import numpy as np
import pytest

from keras_blockreuse import (
    BlockFileError,
    BlockMismatchError,
    BlockModel,
    get_blocks,
    load_blocks,
    save_blocks,
    transfer,
)
from keras_blockreuse.sources import Source, open_source
from tests.helpers import assert_same, dense_stack, randomize, seed_cnn, snapshot

L = keras.layers


def _paths(model, layer_names):
    return [v.path for name in layer_names for v in model.get_layer(name).weights]


@pytest.fixture
def source(tmp_path):
    model = seed_cnn()
    randomize(model, seed=11)
    return model, save_blocks(model, tmp_path / "src.blocks.h5")


def _wide_cnn(num_classes=10):
    """The seed CNN with wider second-block convolutions and a different head."""
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            L.Conv2D(8, 3, padding="same", name="block_1_0"),
            L.Conv2D(8, 3, name="block_1_1"),
            L.AveragePooling2D(2, name="block_1_2"),
            L.Conv2D(24, 3, padding="same", name="block_2_0"),
            L.Conv2D(24, 3, name="block_2_1"),
            L.AveragePooling2D(2, name="block_2_2"),
            L.Flatten(),
            L.Dense(32, name="dense_1"),
            L.Dense(num_classes, name="dense_2"),
        ]
    )


def test_unknown_block_names_list_what_exists(source):
    _, path = source
    target = seed_cnn()
    expected = (r"Unknown block name\(s\) \['block_9'\] in `only`. The source .*src.blocks.h5 has "
                r"blocks \['block_1', 'block_2', 'dense_1', 'dense_2'\]; the model has blocks "
                r"\['block_1', 'block_2', 'dense_1', 'dense_2'\].")
    with pytest.raises(BlockMismatchError, match=expected):
        load_blocks(target, path, only=["block_9"])
    with pytest.raises(BlockMismatchError, match=r"\['nope'\] in `exclude`"):
        load_blocks(target, path, exclude=["nope"])
    with pytest.raises(BlockMismatchError, match=r"\['nope'\] in `rename` keys"):
        load_blocks(target, path, rename={"nope": "block_1"})
    with pytest.raises(BlockMismatchError, match=r"block_1 -> enc_1.*not in model"):
        load_blocks(target, path, only=["block_1"], rename={"block_1": "enc_1"})


def test_every_mismatch_reported_at_once_and_nothing_changes(source):
    _, path = source
    target = _wide_cnn(num_classes=4)
    randomize(target, seed=2)
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as err:
        load_blocks(target, path)
    message = str(err.value)
    assert "7 variable(s)" in message
    for where in ("block_2 / block_2_0 / kernel", "block_2 / block_2_0 / bias",
                  "block_2 / block_2_1 / kernel", "block_2 / block_2_1 / bias",
                  "dense_2 / dense_2 / kernel", "dense_2 / dense_2 / bias"):
        assert where in message
    assert "source (3, 3, 8, 16) float32, model (3, 3, 8, 24) float32" in message
    assert "dense_1 / dense_1 / kernel" in message  # flattened size differs too
    assert_same(before, snapshot(target))


def test_skip_loads_the_rest_and_reports_the_skipped(source):
    model, path = source
    target = _wide_cnn(num_classes=4)
    before = snapshot(target)
    report = load_blocks(target, path, on_mismatch="skip")
    assert list(report.loaded) == ["block_1"]
    assert report.untouched == ["block_2", "dense_1", "dense_2"]
    assert not report.ok
    assert sorted((m.block, m.layer, m.variable) for m in report.skipped) == sorted(
        [("block_2", "block_2_0", "kernel"), ("block_2", "block_2_0", "bias"),
         ("block_2", "block_2_1", "kernel"), ("block_2", "block_2_1", "bias"),
         ("dense_1", "dense_1", "kernel"), ("dense_1", "dense_1", "bias"),
         ("dense_2", "dense_2", "kernel"), ("dense_2", "dense_2", "bias")]
    )
    # dense_1's bias fits, but its kernel does not: the layer is left whole, as Keras's
    # skip_mismatch leaves it, rather than given a bias trained with another kernel.
    assert [m.reason for m in report.skipped if m.layer == "dense_1" and m.variable == "bias"] \
        == ["left with its layer (another of its variables does not fit)"]
    assert report.variables_loaded == 4
    src = snapshot(model)
    after = snapshot(target)
    for name in ("block_1_0", "block_1_1"):
        for v in target.get_layer(name).weights:
            assert after[v.path].tobytes() == src[v.path.replace(target.name, model.name)].tobytes()
    assert_same(before, after, _paths(target, ["block_2_0", "block_2_1", "dense_1", "dense_2"]))
    text = str(report)
    assert "skipped block_2_0/kernel: shape differs" in text


def test_skip_that_leaves_every_variable_says_so(source):
    _, path = source
    target = _wide_cnn(num_classes=4)
    before = snapshot(target)
    with pytest.raises(BlockMismatchError) as err:
        load_blocks(target, path, only=["block_2", "dense_2"], on_mismatch="skip")
    message = str(err.value)
    assert message.startswith(f"Nothing would be loaded from {path}: its layers pair with the "
                              "model's, but on_mismatch='skip' left every variable (6 "
                              "mismatched; first: block_2 / block_2_0 / kernel: shape differs")
    assert "rename=" not in message and "on_mismatch='adapt'" in message
    assert_same(before, snapshot(target))


def test_rename_loads_into_differently_named_layers(source):
    model, path = source
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", name="enc_a")(inputs)
    x = L.Conv2D(8, 3, name="enc_b")(x)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(3, name="cls")(x)
    target = BlockModel(inputs, outputs, blocks={"enc_1": ["enc_*"]})
    report = target.load_blocks(path, only=["block_1"], rename={"block_1": "enc_1"})
    assert report.loaded == {"enc_1": "block_1"}
    assert report.matched_by_order == ["enc_1"] and report.pairing == {"enc_1": "order"}
    assert report.layer_pairs["enc_1"] == [("block_1_0", "enc_a"), ("block_1_1", "enc_b")]
    text = str(report)
    assert "from block_1" in text and "enc_a <- block_1_0" in text and "│ order" in text
    np.testing.assert_array_equal(target.get_layer("enc_a").kernel.numpy(),
                                  model.get_layer("block_1_0").kernel.numpy())
    np.testing.assert_array_equal(target.get_layer("enc_b").bias.numpy(),
                                  model.get_layer("block_1_1").bias.numpy())


def test_copy_blocks_from_a_live_model():
    source = seed_cnn(name="src")
    randomize(source, seed=4)
    target = seed_cnn(num_classes=3, name="dst")
    before = snapshot(target)
    report = load_blocks(target, source, exclude=["dense_2"])
    assert report.source == "model 'src'"
    assert list(report.loaded) == ["block_1", "block_2", "dense_1"]
    assert report.unexpected == ["dense_2"]
    for name in ("block_1_0", "block_1_1", "block_2_0", "block_2_1", "dense_1"):
        for a, b in zip(source.get_layer(name).weights, target.get_layer(name).weights, strict=True):
            assert a.numpy().tobytes() == b.numpy().tobytes()
    assert_same(before, snapshot(target), _paths(target, ["dense_2"]))


def test_freeze_freezes_exactly_the_loaded_blocks(source):
    _, path = source
    target = BlockModel.from_model(seed_cnn(num_classes=3))
    report = target.load_blocks(path, only=["block_*"], freeze=True)
    assert report.frozen == ["block_1", "block_2"]
    assert {n: b.trainable for n, b in target.blocks.items()} == {
        "block_1": False, "block_2": False, "dense_1": True, "dense_2": True}
    assert len(target.trainable_weights) == 4
    assert "after model.compile()" in str(report)


def test_values_are_cast_to_the_model_dtype(source):
    model, path = source
    keras.config.set_dtype_policy("bfloat16")
    try:
        target = seed_cnn()
    finally:
        keras.config.set_dtype_policy("float32")
    load_blocks(target, path, only=["block_1"])
    kernel = target.get_layer("block_1_0").kernel
    assert kernel.dtype == "bfloat16"
    expected = model.get_layer("block_1_0").kernel.numpy().astype("bfloat16")
    assert np.asarray(kernel.numpy()).tobytes() == expected.tobytes()


def test_dtype_kind_mismatch_is_reported(tmp_path):
    inputs = keras.Input((3,), dtype="int32")
    emb = L.Embedding(10, 4, name="emb_1_0")
    model = keras.Model(inputs, emb(inputs))
    path = save_blocks(model, tmp_path / "e.blocks.h5")
    # an integer variable in the model where the file has floats
    class IntLayer(L.Layer):
        def build(self, shape):
            self.table = self.add_weight(shape=(10, 4), dtype="int32", initializer="zeros", name="embeddings")

        def call(self, x):
            return x

    int_layer = IntLayer(name="emb_1_0")
    target = keras.Model(inputs, int_layer(inputs))
    with pytest.raises(BlockMismatchError, match="dtype kind differs"):
        load_blocks(target, path)


def test_missing_and_unexpected_blocks_in_report(source):
    _, path = source
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", name="block_1_0")(inputs)
    x = L.Conv2D(8, 3, name="block_1_1")(x)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(2, name="new_head")(x)
    target = keras.Model(inputs, outputs)
    report = load_blocks(target, path)
    assert list(report.loaded) == ["block_1"]
    assert report.missing == ["new_head"]
    assert report.unexpected == ["block_2", "dense_1", "dense_2"]
    # No block was named, and both sides hold blocks the other lacks: not ok, and said so.
    assert report.unpaired == (["new_head"], ["block_2", "dense_1", "dense_2"])
    assert not report.ok
    text = str(report)
    assert "new_head" in text and "not in source" in text and "in source only" in text
    assert "Unpaired on both sides" in text
    # The same load asked for by name is the subset it is meant to be.
    report = load_blocks(target, path, only=["block_1"])
    assert report.ok and report.unpaired == ([], [])


def test_unbuilt_model_and_bad_option(source):
    _, path = source
    with pytest.raises(ValueError, match="not built"):
        load_blocks(keras.Sequential([L.Dense(2, name="d")]), path)
    with pytest.raises(ValueError, match=r"`on_mismatch` must be one of .* Received: 'ignore'"):
        load_blocks(seed_cnn(), path, on_mismatch="ignore")
    with pytest.raises(TypeError, match="`source` must be"):
        load_blocks(seed_cnn(), 42)


# --- the streaming load of a block file: verified first, then assigned value by value -------


@keras.saving.register_keras_serializable(package="test_transfer")
class _OwnLoader(L.Dense):
    """A layer with its own `load_own_variables`: loaded through it, not assigned directly."""

    def load_own_variables(self, store):
        super().load_own_variables(store)


def _mixed(name):
    return keras.Sequential(
        [keras.Input((6,)), L.Dense(5, name="block_1_0"), L.BatchNormalization(name="block_1_1"),
         _OwnLoader(4, name="block_2_0"), L.Dense(4, name="block_2_1"), L.Dense(3, name="head")],
        name=name,
    )


class _Delegating(Source):
    """An open block file seen through another source: only `block_names`, `block_layers`
    and `read_block` (the plain path), or also `verify` and `iter_values` (streaming)."""

    def __init__(self, path, streaming, after_verify=None):
        self._inner = open_source(path)
        self.description = self._inner.description
        self._after_verify = after_verify
        if streaming:
            self.verify = self._verify
            self.iter_values = self._inner.iter_values

    @property
    def bytes_read(self):
        return self._inner.bytes_read

    def block_names(self):
        return self._inner.block_names()

    def block_layers(self, name):
        return self._inner.block_layers(name)

    def read_block(self, name):
        return self._inner.read_block(name)

    def _verify(self, names, check=None):
        self._inner.verify(names, check=check)
        if self._after_verify is not None:
            self._after_verify()

    def close(self):
        self._inner.close()


def test_streaming_and_plain_loads_are_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "HOLD_BYTES", 0)  # these small blocks stream too
    source = _mixed("source")
    randomize(source, seed=5)
    path = save_blocks(source, tmp_path / "mixed.blocks.h5")
    loaded = {}
    for kind, src in [("path", str(path)), ("plain", _Delegating(path, streaming=False)),
                      ("streaming", _Delegating(path, streaming=True))]:
        target = _mixed(f"target_{kind}")
        report = load_blocks(target, src)
        assert report.loaded == {"block_1": "block_1", "block_2": "block_2", "head": "head"}
        assert report.variables_loaded == len(target.weights) == 12
        loaded[kind] = snapshot(target)
    expected = {k.replace("source", "x"): v for k, v in snapshot(source).items()}
    for kind, values in loaded.items():
        assert_same(expected, {k.replace(f"target_{kind}", "x"): v for k, v in values.items()})


def test_a_small_selection_is_read_once_and_held(tmp_path):
    """Up to `HOLD_BYTES`, blocks are read once, verified and held, then assigned: the
    source's streaming pair (`verify`, then `iter_values`) is not used."""
    source = dense_stack(160, depth=4, name="source")
    randomize(source, seed=3)
    path = save_blocks(source, tmp_path / "stack.blocks.h5")
    verified = []
    target = dense_stack(160, depth=4, name="target")
    report = load_blocks(target, _Delegating(path, streaming=True,
                                             after_verify=lambda: verified.append(True)))
    assert verified == []
    nbytes = sum(int(np.prod(v.shape)) * 4 for v in source.weights)
    assert nbytes <= transfer.HOLD_BYTES
    assert report.bytes_read == nbytes
    assert_same({k.replace("source", "x"): v for k, v in snapshot(source).items()},
                {k.replace("target", "x"): v for k, v in snapshot(target).items()})


def test_corrupt_block_in_the_middle_of_the_file_changes_no_weight(source, tmp_path):
    _, path = source
    with h5py.File(path, "r") as f:
        offset = f["block_2/block_2_1/kernel"].id.get_offset()
    with open(path, "r+b") as f:  # a real byte flipped in the second of four blocks
        f.seek(offset + 101)
        byte = f.read(1)
        f.seek(offset + 101)
        f.write(bytes([byte[0] ^ 0x5A]))
    target = seed_cnn()
    before = snapshot(target)
    with pytest.raises(BlockFileError, match=r"Block 'block_2' .* corrupt"):
        load_blocks(target, path)
    assert_same(before, snapshot(target))
    load_blocks(target, path, only=["block_1", "dense_1", "dense_2"])  # the others still load


def test_a_file_rewritten_in_place_during_the_load_is_reported(tmp_path, monkeypatch):
    """Blocks are verified before the first assignment; a file changed in place after that
    (not how block files are written) is caught and the error says what was loaded. The
    kernels are larger than HDF5's 64 KiB sieve buffer, so the second read goes to the file."""
    monkeypatch.setattr(transfer, "HOLD_BYTES", 0)  # stream these 0.4 MB, as larger loads do
    source = dense_stack(160, depth=4, name="source")
    randomize(source, seed=2)
    path = save_blocks(source, tmp_path / "stack.blocks.h5")
    with h5py.File(path, "r") as f:
        offset = f["block_3/block_3_0/kernel"].id.get_offset()

    def rewrite():
        with open(path, "r+b") as f:
            f.seek(offset + 70_000)
            byte = f.read(1)
            f.seek(offset + 70_000)
            f.write(bytes([byte[0] ^ 0x01]))

    target = dense_stack(160, depth=4, name="target")
    with pytest.raises(BlockFileError, match=r"could not be read again as it was verified.*"
                       r"Loaded before the error: blocks \['block_1', 'block_2'\], and of "
                       r"block 'block_3' all of its layers; the model's other blocks"):
        load_blocks(target, _Delegating(path, streaming=True, after_verify=rewrite))


def test_a_read_failing_in_the_second_pass_says_what_was_loaded(tmp_path, monkeypatch):
    """An I/O error while the second pass reads again (a flaky network file system) is raised
    as such, naming the blocks already assigned; the blocks after it keep their values."""
    monkeypatch.setattr(transfer, "HOLD_BYTES", 0)
    source = dense_stack(160, depth=4, name="source")
    randomize(source, seed=2)
    path = save_blocks(source, tmp_path / "stack.blocks.h5")
    import os

    preadv, calls = os.preadv, []

    def flaky(fd, buffers, offset):
        calls.append(offset)
        if len(calls) == failing:
            raise OSError(5, "Input/output error")
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", flaky)
    failing = 0
    load_blocks(dense_stack(160, depth=4, name="probe"), path)
    per_pass = len(calls) // 2
    calls.clear()
    failing = per_pass + per_pass // 2 + 1  # in the second pass, half way
    target = dense_stack(160, depth=4, name="target")
    before = snapshot(target)
    with pytest.raises(BlockFileError, match=r"reading it again failed or differed.*"
                       r"Input/output error.*Loaded before the error: blocks \[.*\], and of "
                       r"block '\w+' .*"
                       r"rewritten in place during the load, or reading it failed"):
        load_blocks(target, path)
    after = snapshot(target)
    changed = {k.split("/")[1] for k in before if before[k].tobytes() != after[k].tobytes()}
    assert changed and "block_4" not in changed  # the blocks after the failure are untouched


class _Picky(keras.layers.Layer):
    """A layer with its own `load_own_variables`: it counts its calls, records the kernel of
    the layer after it as it finds it, and refuses values while `refuse` is set."""

    refuse = False
    calls = 0
    seen_after: list = []

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 4), name="w", initializer="ones")

    def call(self, x):
        return x @ self.w

    def load_own_variables(self, store):
        _Picky.calls += 1
        after = getattr(self, "after", None)
        if after is not None:
            _Picky.seen_after.append(np.array(keras.ops.convert_to_numpy(after.kernel)))
        if _Picky.refuse:
            raise ValueError("these values are not for me")
        super().load_own_variables(store)


def _with_picky(seed, width):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((width,)), L.Dense(width, name="first"),
                              _Picky(name="picky"), L.Dense(3, name="last")])
    object.__setattr__(model.get_layer("picky"), "after", model.get_layer("last"))
    return model


@pytest.mark.parametrize("kind", ["held", "large", "live"])
def test_a_layer_refusing_its_values_in_its_own_loading_changes_no_weight(
        tmp_path, monkeypatch, kind):
    """Found by fresh-user tests. A layer with its own `load_own_variables` (custom, LoRA,
    quantized) may fail on its values, which nothing before it can know. Its selection is held
    (also above `HOLD_BYTES`, "large"), assigned in the model's order with one call of that
    method per layer (as Keras's `load_weights` does: a layer that keeps state between calls,
    or reads a later layer, gets what Keras gives it), and when it fails, every variable
    assigned before it is given back its value: the load is refused and no weight changed."""
    if kind == "large":
        monkeypatch.setattr(transfer, "HOLD_BYTES", 0)
    source = _with_picky(0, 64)
    path = save_blocks(source, tmp_path / "picky.blocks.h5")
    target = _with_picky(1, 64)
    before = snapshot(target)
    monkeypatch.setattr(_Picky, "refuse", True)
    monkeypatch.setattr(_Picky, "calls", 0)
    with pytest.raises(BlockMismatchError, match=r"Layer 'picky' \(_Picky\) of block 'picky' "
                       r"refused its values in its own load_own_variables \(ValueError: these "
                       r"values are not for me\); every variable assigned before it was given "
                       r"back its value: nothing was loaded"):
        load_blocks(target, source if kind == "live" else path)
    assert _Picky.calls == 1
    assert_same(before, snapshot(target))  # `first`, assigned before it, is back
    monkeypatch.setattr(_Picky, "refuse", False)
    monkeypatch.setattr(_Picky, "calls", 0)
    monkeypatch.setattr(_Picky, "seen_after", [])
    assert load_blocks(target, source if kind == "live" else path).ok
    assert _Picky.calls == 1  # once, not tried first and then called again
    # in the model's order: `last` had not been assigned yet when `picky` loaded
    last = next(value for path, value in before.items() if path.endswith("/last/kernel"))
    assert _Picky.seen_after[0].tobytes() == last.tobytes()
    assert [v.tobytes() for v in snapshot(source).values()] == [
        v.tobytes() for v in snapshot(target).values()]


class _Interrupting(_Picky):
    """`_Picky` that, as it loads, sends this process SIGINT (Ctrl-C) or raises
    KeyboardInterrupt itself."""

    how = "signal"

    def load_own_variables(self, store):
        import os
        import signal

        if _Interrupting.how == "signal":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise KeyboardInterrupt
        super().load_own_variables(store)


def _with_interrupting(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), L.Dense(8, name="first"),
                             _Interrupting(name="picky"), L.Dense(3, name="last")])


@pytest.mark.parametrize("kind", ["held", "streamed"])
def test_ctrl_c_during_a_load_never_leaves_the_model_half_loaded(tmp_path, monkeypatch, kind):
    """Found by a fresh-user check: SIGINT during the assignment left 1 to 10 of 12 variables
    loaded. Ctrl-C is held while a load assigns and raised once every value is assigned; a
    KeyboardInterrupt raised inside a layer's own loading puts back what was assigned."""
    import os
    import signal

    def everything(model):
        return [v.tobytes() for v in snapshot(model).values()]

    if kind == "held":
        source = _with_interrupting(0)
        path = save_blocks(source, tmp_path / "interrupting.blocks.h5")
        target = _with_interrupting(1)
        monkeypatch.setattr(_Interrupting, "how", "signal")
    else:  # a plain model, streamed value by value: the signal arrives at the second value
        monkeypatch.setattr(transfer, "HOLD_BYTES", 0)
        source, target = seed_cnn(), seed_cnn()
        randomize(source, seed=3)
        path = save_blocks(source, tmp_path / "plain.blocks.h5")
        assign, calls = transfer._assign_variable, []

        def interrupting(variable, array):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGINT)
            assign(variable, array)

        monkeypatch.setattr(transfer, "_assign_variable", interrupting)
    assert everything(target) != everything(source)
    # Python's own handler (an earlier test may have left Ray Tune's): Ctrl-C raises
    # KeyboardInterrupt; the held signal goes to whichever handler was in place.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            load_blocks(target, path)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    assert everything(target) == everything(source)  # all loaded, then interrupted
    if kind == "held":  # raised by the layer itself: what was assigned is put back
        target = _with_interrupting(1)
        before = everything(target)
        monkeypatch.setattr(_Interrupting, "how", "raise")
        with pytest.raises(KeyboardInterrupt):
            load_blocks(target, path)
        assert everything(target) == before


def test_freeze_leaves_a_partly_loaded_block_trainable(tmp_path):
    """A block whose skipped layers keep untrained values must not be frozen with them."""
    def build(units):
        inputs = keras.Input((3,))
        x = keras.layers.Dense(4, name="a_0")(inputs)
        x = keras.layers.Dense(units, name="a_1")(x)
        return keras.Model(inputs, keras.layers.Dense(2, name="b_0")(x))

    rule = {"a": ["a_*"], "b": ["b_*"]}
    source = build(4)
    randomize(source, seed=5)
    path = str(tmp_path / "m.blocks.h5")
    save_blocks(source, path, blocks=rule)
    target = build(5)
    with pytest.warns(UserWarning, match=r"freeze=True left blocks \['a'\] trainable"):
        report = load_blocks(target, path, blocks=rule, on_mismatch="skip", only=["a"],
                             freeze=True)
    assert list(report.loaded) == ["a"] and report.frozen == []
    assert [layer.trainable for layer in target.layers[1:]] == [True, True, True]
    assert target.get_layer("a_0").kernel.numpy().tobytes() == \
        source.get_layer("a_0").kernel.numpy().tobytes()


def test_source_blocks_with_a_block_file_is_refused_not_ignored(tmp_path):
    """Found by a fresh-user test: `source_blocks=` with a `.blocks.h5` was ignored without a
    word (a block file keeps the blocks it was saved with). It is refused, naming them, and
    no weight changes."""
    model = seed_cnn()
    randomize(model, seed=3)
    path = save_blocks(model, str(tmp_path / "m.blocks.h5"))
    target = seed_cnn()
    before = snapshot(target)
    with pytest.raises(TypeError) as e:
        load_blocks(target, path, source_blocks={"all": ["*"]})
    assert str(e.value) == (
        f"source_blocks= groups the layers of a source without blocks of its own; {path} "
        f"keeps the blocks it was saved with, {list(get_blocks(model))}, so it would be "
        "ignored. Received: source_blocks={'all': ['*']}. Select source blocks with only= / "
        "exclude=, and pair them with rename=.")
    assert_same(snapshot(target), before)


def _tiny(name="tiny"):
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((4,)), L.Dense(3, name="block_1_0"),
                             L.Dense(2, name="head")], name=name)


def test_freeze_after_compile_needs_no_compile_and_after_training_says_what_happens(tmp_path):
    """A user's report: the warning said `fit()` keeps updating the frozen weights until
    compile() runs again, though before any training the first fit() already left them
    unchanged. Before training there is no warning; after it, what this backend does."""
    import warnings

    path = save_blocks(_tiny("source"), str(tmp_path / "s.blocks.h5"))
    x, y = np.ones((8, 4), "float32"), np.zeros(8, "int32")
    model = _tiny()
    model.compile("adam", "sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: nothing was built for the old weights
        load_blocks(model, path, only=["block_1"], freeze=True)
    frozen = snapshot(model)
    model.fit(x, y, epochs=1, verbose=0)
    assert_same({k: v for k, v in snapshot(model).items() if "block_1_0" in k},
                {k: v for k, v in frozen.items() if "block_1_0" in k})

    trained = _tiny()
    trained.compile("adam", "sparse_categorical_crossentropy")
    trained.fit(x, y, epochs=1, verbose=0)
    with pytest.warns(UserWarning) as caught:
        load_blocks(trained, path, only=["block_1"], freeze=True)
    assert [str(w.message) for w in caught] == [
        "Blocks ['block_1'] of model 'tiny' were frozen after the model was trained. Call "
        "`model.compile()` again for the change to take effect in training; until then "
        "`fit()` (tensorflow) may keep training the weights that were trainable then, with "
        "its training step traced for them, the frozen blocks included."]
    loaded = snapshot(trained)
    trained.fit(x, y, epochs=1, verbose=0)  # as the warning says: the block trains on
    assert snapshot(trained)["tiny/block_1_0/kernel"].tobytes() != \
        loaded["tiny/block_1_0/kernel"].tobytes()
    trained.compile("adam", "sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_blocks(trained, path, only=["block_1"], freeze=True)
    loaded = snapshot(trained)
    trained.fit(x, y, epochs=1, verbose=0)
    assert snapshot(trained)["tiny/block_1_0/kernel"].tobytes() == \
        loaded["tiny/block_1_0/kernel"].tobytes()


class _Tempered(keras.Model):
    """A subclassed model holding a variable of its own (a learned temperature)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.features = keras.layers.Dense(4, name="features")
        self.head = keras.layers.Dense(2, name="head")

    def build(self, shape):
        self.temperature = self.add_weight(shape=(), name="temperature", initializer="ones")
        super().build(shape)

    def call(self, x):
        return self.head(self.features(x)) / self.temperature


def test_a_models_own_variables_are_said_to_be_in_no_block(tmp_path):
    """Found by a fresh-user test: a subclassed model's own variable (`self.add_weight` in
    its `build`, a learned temperature) is held by no layer, so by no block: save_blocks left
    it out of the file and load_blocks, from that file or from the model's `.keras` and
    `.weights.h5` (which hold it), left it at its value with ok=True, and nothing said so.
    save_blocks now warns, and the load says it (a caveat and a UserWarning naming it); the
    layers load bit for bit, the variable keeps its value."""
    source = _Tempered(name="net")
    source(np.zeros((1, 3), "float32"))
    randomize(source, seed=5)
    source.save(str(tmp_path / "net.keras"))
    source.save_weights(str(tmp_path / "net.weights.h5"))
    blocks = str(tmp_path / "net.blocks.h5")
    with pytest.warns(UserWarning) as said:
        save_blocks(source, blocks)
    assert [str(w.message) for w in said] == [
        "save_blocks: the model's own variables ['net/temperature'] (created by model 'net' "
        "itself, not by one of its layers) belong to no block, so the block file does not "
        "hold them, and load_blocks leaves them as they are. Keras's model.save_weights saves "
        "them."]
    with warnings.catch_warnings():  # a subset asked for: nothing to say
        warnings.simplefilter("error", UserWarning)
        save_blocks(source, str(tmp_path / "head.blocks.h5"), only=["head"])
    for name in ("net.blocks.h5", "net.keras", "net.weights.h5"):
        model = _Tempered(name="net")
        model(np.zeros((1, 3), "float32"))
        model.temperature.assign(7.0)
        with pytest.warns(UserWarning, match="the model's own variables"):
            report = load_blocks(model, str(tmp_path / name))
        assert report.ok and list(report.loaded) == ["features", "head"], name
        assert report.caveats == [
            "the model's own variables ['net/temperature'] (created by model 'net' itself, not "
            "by one of its layers) belong to no block: they were not loaded and keep their "
            "values (save_blocks does not save them either; Keras's load_weights loads them "
            "from a .weights.h5 or .keras file)."], name
        assert float(model.temperature.numpy()) == 7.0
        with warnings.catch_warnings():  # a subset asked for: nothing to say
            warnings.simplefilter("error", UserWarning)
            assert not load_blocks(model, str(tmp_path / name), only=["head"]).caveats
            assert not load_blocks(model, str(tmp_path / name), exclude=["head"]).caveats
        for layer in ("features", "head"):
            for a, b in zip(source.get_layer(layer).weights, model.get_layer(layer).weights,
                            strict=True):
                assert np.array(a.numpy()).tobytes() == np.array(b.numpy()).tobytes()


def test_a_quantized_side_is_told_the_order_of_steps_that_loads_it(tmp_path):
    """Found by a fresh-user test: float weights into a model after `model.quantize("int8")`
    (and a quantized model's file into a float model) were refused, rightly ('dtype kind
    differs (source (8, 8) float32, model (8, 8) int8)'), with 'Pass only=/exclude= to
    select fewer blocks.' as the only advice. The refusal now says which side is quantized
    and the order of steps that loads it; both, followed, load."""
    def build():
        return keras.Sequential([keras.Input((8,)), L.Dense(8, name="a"), L.Dense(4, name="b")])

    source = build()
    randomize(source, seed=3)
    floats = save_blocks(source, tmp_path / "f.blocks.h5")
    quantized = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Keras: the InputLayer has no quantize method)
        quantized.quantize("int8")
    before = snapshot(quantized)
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(quantized, floats)
    assert ("The model's layers ['a', 'b'] are quantized and the source's are not: load the "
            "source into the model before model.quantize(...), then quantize it.\n") in str(e.value)
    assert_same(before, snapshot(quantized))
    float_model = build()
    assert load_blocks(float_model, floats).ok  # as advised: load, then quantize
    quantized.save(str(tmp_path / "q.keras"))
    target = build()
    with pytest.raises(BlockMismatchError) as e:
        load_blocks(target, str(tmp_path / "q.keras"))
    assert ("The source's layers paired with the model's ['a', 'b'] hold quantized values "
            "(integer kernels and their scales), the model's float ones: quantize the model "
            "the same way (model.quantize(...)) before loading, or load from the model's file "
            "saved before it was quantized.\n") in str(e.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target.quantize("int8")
    assert load_blocks(target, str(tmp_path / "q.keras")).ok  # as advised
    for a, b in zip(quantized.weights, target.weights, strict=True):
        assert np.array(a.numpy()).tobytes() == np.array(b.numpy()).tobytes()


def test_int4_and_mixed_quantization_modes_are_told_their_steps_and_no_wrong_side(tmp_path):
    """Found by a fresh-user re-check of 5d4f4b8: float weights into a model after
    `model.quantize("int4")` (a packed int8 kernel of another shape, its scale, zero point
    and g_idx) or "float8" were refused with no word of quantization, since only an int8
    kernel's differing dtype kind was seen; an int4 model's file into an int8 model was told
    'the model's float ones', and a float8 model's file into an int8 one that the source is
    not quantized. Each side is now told by its own layer: the model's by its
    quantization mode, the source's by Keras's quantization variables or an integer one."""
    def build(mode=None, units=4):
        model = keras.Sequential([keras.Input((8,)), L.Dense(8, name="a"),
                                  L.Dense(units, name="b")])
        if mode:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (Keras: the InputLayer has no quantize method)
                model.quantize(mode)
        return model

    source = build()
    randomize(source, seed=3)
    floats = save_blocks(source, tmp_path / "f.blocks.h5")
    said = ("The model's layers ['a', 'b'] are quantized and the source's are not: load the "
            "source into the model before model.quantize(...), then quantize it.\n")
    for mode in ("int4", "float8"):
        model = build(mode)
        before = snapshot(model)
        with pytest.raises(BlockMismatchError) as e:
            load_blocks(model, floats)
        assert said in str(e.value)
        assert_same(before, snapshot(model))
    int4 = build("int4")
    randomize(int4, seed=4)
    int4.save(str(tmp_path / "q4.keras"))
    for name, model in (("int8 model", build("int8")), ("float model", build())):
        with pytest.raises(BlockMismatchError) as e:
            load_blocks(model, str(tmp_path / "q4.keras"))
        if name == "int8 model":
            assert ("The model's layers ['a', 'b'] and the source's paired with them are "
                    "quantized, the variables above say in other modes: quantize the model "
                    "the way the source's was, or load the float weights before "
                    "model.quantize(...).\n") in str(e.value)
            assert "the model's float ones" not in str(e.value)
        else:
            assert "hold quantized values (integer kernels and their scales), the model's " \
                   "float ones" in str(e.value)
    target = build("int4")
    assert load_blocks(target, str(tmp_path / "q4.keras")).ok  # as advised
    for a, b in zip(int4.weights, target.weights, strict=True):
        assert np.array(a.numpy()).tobytes() == np.array(b.numpy()).tobytes()
    with pytest.raises(BlockMismatchError) as e:  # the same mode, another width
        load_blocks(build("int4", units=2), str(tmp_path / "q4.keras"))
    assert "quantiz" not in str(e.value)
