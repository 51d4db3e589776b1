"""Third-party files as safe as our own: bounded time, one error type, bounded memory.

Damaged global heaps (HDF5 loops forever on them), named pipes, hard-link cycles, zip bombs,
damaged layer names, raw exceptions of every kind from crafted files; and on the writing
side, symbolic links, very long names and `latest_checkpoint` among other models' files.
"""

import os
import subprocess
import sys
import threading
import time
import zipfile

import h5py
import keras
import numpy as np
import pytest

from keras_blockreuse import BlockFileError, load_blocks, read_blocks
from keras_blockreuse.callbacks import latest_checkpoint
from keras_blockreuse.sources import open_source
from keras_blockreuse.store import save_blocks
from tests.helpers import randomize

L = keras.layers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model(name="m", width=3):
    return keras.Sequential(
        [keras.Input((4,)), L.Dense(width, name="block_1_0"), L.Dense(2, name="dense_2")],
        name=name,
    )


@pytest.fixture
def weights(tmp_path):
    source = model("source")
    randomize(source, 3)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    return path


def values(m) -> list[bytes]:
    """Every variable's bytes, in order (names differ between source and target models)."""
    return [np.array(keras.ops.convert_to_numpy(v)).tobytes() for v in m.weights]


def run_python(code: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env)


def finishes(function, timeout: float = 10.0):
    """Runs `function` in a thread; returns (finished, result or exception)."""
    box = {}

    def target():
        try:
            box["result"] = function()
        except BaseException as e:  # noqa: BLE001
            box["result"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), box.get("result")


# --- 1. the global heap: HDF5's endless loop -------------------------------------------------


def test_a_damaged_global_heap_is_reported_in_bounded_time(weights, tmp_path):
    """Each of these single-byte changes makes HDF5 itself loop forever reading the names
    (measured: the collection's size, each object's size, the free space's size)."""
    data = open(weights, "rb").read()
    heap = data.index(b"GCOL")
    paths = []
    for offset, flip in [(8, 0x80), (9, 0x01), (24, 0x10), (25, 0x02), (48, 0x40), (49, 0x04)]:
        changed = bytearray(data)
        changed[heap + offset] ^= flip
        path = tmp_path / f"heap_{offset}_{flip}.weights.h5"
        path.write_bytes(bytes(changed))
        paths.append(str(path))
    code = f"""
import keras
from keras_blockreuse import BlockFileError, load_blocks
L = keras.layers
m = keras.Sequential([keras.Input((4,)), L.Dense(3, name="block_1_0"), L.Dense(2, name="dense_2")])
for path in {paths!r}:
    try:
        load_blocks(m, path)
        print("LOADED", path)
    except BlockFileError as e:
        print("ERROR", path in str(e), "global heap" in str(e), flush=True)
"""
    result = run_python(code, timeout=240)  # a regression hangs: the timeout fails the test
    lines = result.stdout.strip().splitlines()
    assert lines == ["ERROR True True"] * len(paths), (result.stdout, result.stderr[-2000:])


# --- 3. one error type, chained ----------------------------------------------------------------


def test_a_hard_link_cycle_is_reported(weights):
    with h5py.File(weights, "a") as f:
        f["layers/dense/loop"] = f["layers"]  # a hard link to an enclosing group
    with pytest.raises(BlockFileError, match=r"hard link to one of its own enclosing groups"):
        load_blocks(model("t"), weights)


def test_a_truncated_archive_is_a_block_file_error_chained_to_the_zip_error(tmp_path):
    path = str(tmp_path / "m.keras")
    model().save(path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 40])
    with pytest.raises(BlockFileError, match=r"m\.keras") as info:
        load_blocks(model("t"), path)
    assert info.value.__cause__ is not None


def test_a_legacy_file_naming_a_missing_group_is_a_block_file_error_chained(tmp_path):
    path = str(tmp_path / "legacy.h5")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block_1_0", b"missing"]
        group = f.create_group("block_1_0")
        group.attrs["weight_names"] = [b"block_1_0/kernel:0"]
        group["block_1_0/kernel:0"] = np.zeros((4, 3), "float32")
    with pytest.raises(BlockFileError, match=r"legacy\.h5.*KeyError") as info:
        load_blocks(model("t"), path)
    assert isinstance(info.value.__cause__, KeyError)


def test_truncated_keras_weights_files_are_block_file_errors_naming_the_file(weights):
    data = open(weights, "rb").read()
    target = model("t")
    before = values(target)
    for length in range(0, len(data), max(1, len(data) // 40)):
        open(weights, "wb").write(data[:length])
        with pytest.raises(BlockFileError, match=r"m\.weights\.h5"):
            load_blocks(target, weights)
    assert values(target) == before


# --- 4. zip bombs --------------------------------------------------------------------------------


def rezip(source: str, path: str, replace: dict | None = None) -> None:
    """The archive again, every member deflated; `replace` swaps members' bytes."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = (replace or {}).get(info.filename) or src.read(info)
            dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)


def test_a_deflated_archive_loads_identically(tmp_path):
    source = model("source")
    randomize(source, 4)
    plain = str(tmp_path / "plain.keras")
    source.save(plain)
    deflated = str(tmp_path / "deflated.keras")
    rezip(plain, deflated)
    target = model("t")
    assert load_blocks(target, deflated).ok
    assert values(target) == values(source)


def test_a_zip_bomb_is_stopped_at_the_configs_bound_in_bounded_memory(tmp_path):
    plain = str(tmp_path / "plain.keras")
    model().save(plain)
    bomb = str(tmp_path / "bomb.keras")
    rezip(plain, bomb, {"model.weights.h5": b"\0" * (256 << 20)})  # 256 MiB, ~1030:1
    assert os.path.getsize(bomb) < 400_000
    code = f"""
import resource, keras
from keras_blockreuse import BlockFileError, load_blocks
L = keras.layers
m = keras.Sequential([keras.Input((4,)), L.Dense(3, name="block_1_0"), L.Dense(2, name="dense_2")])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_blocks(m, {bomb!r})
    print("LOADED")
except BlockFileError as e:
    print("ERROR", "inflates beyond" in str(e))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    result = run_python(code, timeout=240)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "ERROR True", (result.stdout, result.stderr[-2000:])
    assert int(lines[1]) < 64, f"peak memory grew by {lines[1]} MiB while reading the bomb"


def wide(name="wide"):
    """Weights of 1.2 MB: the optimizer state then outweighs the 1 MiB margin."""
    return keras.Sequential([keras.Input((64,)), L.Dense(512, name="block_1_0"),
                             L.Dense(512, name="block_1_1"), L.Dense(10, name="head")], name=name)


def multi_optimizer():  # every variable under Adam or RMSprop with the most slots each
    from keras.src.optimizers.multi_optimizer import OptimizerMap

    rich = {"use_ema": True, "gradient_accumulation_steps": 2}
    return keras.optimizers.MultiOptimizer(OptimizerMap(
        keras.optimizers.RMSprop(momentum=0.9, centered=True, **rich),
        {"block_1_0.*": keras.optimizers.Adam(amsgrad=True, **rich)}))


@pytest.mark.parametrize("policy, optimizer, copies", [
    # compile() wraps any optimizer of a mixed_float16 model in a LossScaleOptimizer, which
    # saves the inner optimizer's slots twice: optimizer/vars and optimizer/inner_optimizer/vars
    ("mixed_float16", lambda: "adam", 4),
    ("float32", lambda: keras.optimizers.Adam(amsgrad=True, use_ema=True), 4),
    ("mixed_float16", lambda: keras.optimizers.Adam(amsgrad=True, use_ema=True,
                                                    gradient_accumulation_steps=2), 10),
    ("mixed_float16", multi_optimizer, 15),  # the most any Keras 3 optimizer saves
])
def test_a_deflated_archive_with_any_keras_optimizer_state_loads(tmp_path, policy, optimizer,
                                                                  copies):
    keras.config.set_dtype_policy(policy)
    try:
        source = wide()
    finally:
        keras.config.set_dtype_policy("float32")
    source.compile(optimizer(), "sparse_categorical_crossentropy")
    source.fit(np.ones((4, 64), "float32"), np.zeros(4, "int32"), epochs=1, verbose=0)
    plain = str(tmp_path / "plain.keras")
    source.save(plain)
    deflated = str(tmp_path / "deflated.keras")
    rezip(plain, deflated)
    with zipfile.ZipFile(plain) as archive:
        with h5py.File(archive.open("model.weights.h5")) as f:
            sizes = {"layers": 0, "optimizer": 0}
            f.visititems(lambda name, item: sizes.__setitem__(
                name.split("/")[0], sizes.get(name.split("/")[0], 0) + item.nbytes)
                if isinstance(item, h5py.Dataset) and item.ndim else None)
    assert sizes["optimizer"] == copies * sizes["layers"]  # what Keras 3.15 writes
    target = wide("t")
    assert load_blocks(target, deflated).ok
    assert values(target) == values(source)


def test_a_deflated_archive_of_many_weightless_layers_loads(tmp_path):
    """Found by a fresh-user re-check: a deflated `.keras` of a model with 600 Activation
    layers (4 variables) was refused as a zip bomb: Keras writes an HDF5 group for every
    layer, about 2 KB each, which the bound (per variable) did not count. It counts every
    object the config describes."""
    i = keras.Input((8,))
    h = L.Dense(8, name="block_1_0")(i)
    h = L.Add(name="add")([L.Activation("relu", name=f"act{n}")(h) for n in range(600)])
    source = keras.Model(i, L.Dense(2, name="head")(h))
    plain = str(tmp_path / "plain.keras")
    source.save(plain)
    with zipfile.ZipFile(plain) as archive:
        assert archive.getinfo("model.weights.h5").file_size > (1 << 20) + 4096 * 4
    deflated = str(tmp_path / "deflated.keras")
    rezip(plain, deflated)
    target = keras.models.clone_model(source)
    assert load_blocks(target, deflated).ok
    assert values(target) == values(source)


def test_a_config_json_bomb_is_stopped(tmp_path):
    """Found by a fresh-user re-check: a `.keras` whose config.json was the real JSON and
    then 1 GiB of whitespace (valid JSON, 1 MB deflated) loaded in 7 s with 2 GB more memory;
    a larger one would run the process out of memory. A JSON member stops inflating at 64 MiB,
    and a config within it still loads."""
    from keras_blockreuse.sources.keras_archive import JSON_LIMIT

    source = wide()
    plain = str(tmp_path / "plain.keras")
    source.save(plain)
    with zipfile.ZipFile(plain) as archive:
        config = archive.read("config.json")
    padded = str(tmp_path / "padded.keras")
    rezip(plain, padded, {"config.json": config + b" " * (JSON_LIMIT - len(config))})
    target = wide("t")
    assert load_blocks(target, padded).ok and values(target) == values(source)
    bomb = str(tmp_path / "bomb.keras")
    rezip(plain, bomb, {"config.json": config + b" " * (JSON_LIMIT - len(config) + 1)})
    before = values(target)
    with pytest.raises(BlockFileError) as e:
        load_blocks(target, bomb)
    assert str(e.value) == (
        f"{bomb}: archive member 'config.json' inflates beyond 67108864 bytes, more than any "
        "Keras config holds; a zip bomb or a damaged archive. Stopped inflating it.")
    assert values(target) == before


def test_a_zip_bomb_one_byte_past_the_bound_is_stopped_there(tmp_path):
    """The bound: the config's variables (1.2 MB here) 16 times, 1 MiB, 4 KiB per variable
    and per object its config describes (15 here: the model, its layers, their
    initializers and the input layer)."""
    source = wide()
    plain = str(tmp_path / "plain.keras")
    source.save(plain)
    sizes = [int(np.prod(v.shape)) * 4 for v in source.weights]
    with zipfile.ZipFile(plain) as archive:
        objects = archive.read("config.json").decode().count('"class_name"')
    assert objects == 15
    bound = 16 * sum(sizes) + (1 << 20) + 4096 * (len(sizes) + objects)
    assert bound == 20_402_816
    bomb = str(tmp_path / "bomb.keras")
    rezip(plain, bomb, {"model.weights.h5": b"\0" * (bound + 1)})
    with pytest.raises(BlockFileError) as e:
        load_blocks(wide("t"), bomb)
    assert str(e.value) == (
        f"{bomb}: archive member 'model.weights.h5' inflates beyond 20402816 bytes, more than "
        "its model's weights need (from its config, with optimizer state and a margin); a zip "
        "bomb or a damaged archive. Stopped inflating it.")


# --- 5. named pipes ----------------------------------------------------------------------------


def release(fifo: str) -> None:
    """Opens the pipe for writing so that a reader stuck on it (a regression) returns."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


@pytest.mark.parametrize("name", ["pipe.blocks.h5", "pipe.weights.h5", "pipe.h5", "pipe.keras"])
def test_a_named_pipe_is_refused_without_opening_it(tmp_path, name):
    fifo = str(tmp_path / name)
    os.mkfifo(fifo)
    start = time.perf_counter()
    done, result = finishes(lambda: load_blocks(model("t"), fifo))
    release(fifo)
    assert done, f"load_blocks blocked on a named pipe for {time.perf_counter() - start:.1f} s"
    assert isinstance(result, BlockFileError) and "named pipe" in str(result), result
    done, result = finishes(lambda: read_blocks(fifo))
    release(fifo)
    assert done and isinstance(result, BlockFileError), result


def test_a_named_pipe_in_a_checkpoint_folder_is_skipped(tmp_path):
    from keras_blockreuse import BlockCheckpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    fifo = str(folder / "blocks_009.blocks.h5")  # matches the template; never ours to delete
    os.mkfifo(fifo)
    m = model()
    m.compile("sgd", "mse")
    template = str(folder / "blocks_{epoch:03d}.blocks.h5")
    x, y = np.zeros((4, 4), "float32"), np.zeros((4, 2), "float32")

    def train():
        m.fit(x, y, epochs=2, verbose=0, callbacks=[BlockCheckpoint(template, keep_last=1)])

    done, result = finishes(train, timeout=60)
    release(fifo)
    assert done, "fit blocked on a named pipe matching the checkpoint template"
    assert result is None, result
    assert sorted(os.listdir(folder)) == ["blocks_002.blocks.h5", "blocks_009.blocks.h5"]
    done, result = finishes(lambda: latest_checkpoint(str(folder)))
    release(fifo)
    assert done and result == str(folder / "blocks_002.blocks.h5"), result


# --- 6. damaged names ------------------------------------------------------------------------


@pytest.mark.parametrize("damaged", [b"dens\xff_2", b"dense\x01_2"[:7], b"dens/_2"])
def test_a_damaged_layer_name_is_reported(weights, damaged):
    data = open(weights, "rb").read()
    heap = data.index(b"GCOL")
    at = data.index(b"dense_2", heap)
    assert len(damaged) == len(b"dense_2")
    open(weights, "wb").write(data[:at] + damaged + data[at + len(damaged):])
    target = model("t")
    before = values(target)
    with pytest.raises(BlockFileError, match=r"m\.weights\.h5.*(UTF-8|not a valid Keras)"):
        load_blocks(target, weights)
    assert values(target) == before


# --- 7. writing: symbolic links, long names, latest_checkpoint among other models ---------------


def test_saving_to_a_symlink_writes_through_to_its_target(tmp_path):
    real = tmp_path / "store" / "real.blocks.h5"
    real.parent.mkdir()
    link = tmp_path / "link.blocks.h5"
    link.symlink_to(real)
    source = model()
    randomize(source, 5)
    save_blocks(source, str(link))
    assert link.is_symlink() and os.readlink(link) == str(real) and real.is_file()
    target = model("t")
    load_blocks(target, str(real))
    assert values(target) == values(source)
    assert not [n for n in os.listdir(real.parent) if "kbr-tmp" in n]


def test_a_240_byte_file_name_saves(tmp_path):
    name = "b" * (240 - len(".blocks.h5")) + ".blocks.h5"
    assert len(name) == 240
    path = str(tmp_path / name)
    source = model()
    randomize(source, 6)
    save_blocks(source, path)
    target = model("t")
    load_blocks(target, path)
    assert values(target) == values(source)
    assert os.listdir(tmp_path) == [name]


def test_latest_checkpoint_with_a_model_skips_other_architectures(tmp_path):
    ours, other = model("ours"), model("other", width=5)
    save_blocks(ours, str(tmp_path / "ours.blocks.h5"), metadata={"epoch": 3})
    save_blocks(other, str(tmp_path / "other.blocks.h5"), metadata={"epoch": 9})
    assert latest_checkpoint(str(tmp_path)).endswith("other.blocks.h5")  # documented
    with pytest.warns(UserWarning, match=r"other\.blocks\.h5.*another model"):
        assert latest_checkpoint(str(tmp_path), model=ours).endswith("ours.blocks.h5")


def test_open_source_of_a_crafted_file_never_raises_a_raw_exception(tmp_path):
    """A grab bag of crafted files, each a BlockFileError naming the file."""
    cases = {
        "text.keras": b"PK\x03\x04 not really a zip",
        "random.h5": np.random.default_rng(0).bytes(5000),
        "hdf5sig.weights.h5": b"\x89HDF\r\n\x1a\n" + np.random.default_rng(1).bytes(3000),
        "index.weights.json": b'{"weight_map": {"a": ["../../etc/passwd"]}}',
    }
    for name, data in cases.items():
        path = str(tmp_path / name)
        open(path, "wb").write(data)
        with pytest.raises(BlockFileError, match=name.replace(".", r"\.")):
            with open_source(path) as src:
                src.block_names()


def _three_dense(k):
    x = k.Input((3,))
    h = x
    for i in range(3):
        h = k.layers.Dense(4, name=f"block_{i + 1}_0")(h)
    return k.Model(x, h)


def _values_of(model) -> list:
    return [np.array(v.numpy()).tobytes() for v in model.weights]


@pytest.mark.parametrize("kind", ["weights", "legacy"])
def test_a_damaged_float_type_header_is_refused(tmp_path, kind):
    """Found by a fresh-user test: one byte of a float32 dataset's type header (its exponent
    bias 127 -> 128, the values untouched) made HDF5 convert every value (2.0 read as 1.0),
    and the load had ok=True, from a .weights.h5 and a legacy .h5 alike (Keras's own
    load_weights too). Keras writes IEEE layouts only: another is refused, nothing changed."""
    source = _three_dense(keras)
    for j, v in enumerate(source.weights):
        v.assign(np.full(v.shape, j + 2.0, "float32"))
    path = str(tmp_path / ("m.weights.h5" if kind == "weights" else "m.h5"))
    source.save_weights(path) if kind == "weights" else source.save(path)
    raw = bytearray(open(path, "rb").read())
    ieee_f32 = bytes([0x00, 0x00, 0x20, 0x00, 0x17, 0x08, 0x00, 0x17, 0x7F, 0x00, 0x00, 0x00])
    at = raw.find(ieee_f32)  # the fields of the first float32 type: exponent bias at +8
    assert at > 0
    raw[at + 8] = 0x80
    open(path, "wb").write(bytes(raw))
    model = _three_dense(keras)
    before = _values_of(model)
    with pytest.raises(BlockFileError, match="has a floating-point type whose HDF5 header "
                                             "describes no IEEE half, single or double layout"):
        load_blocks(model, path)
    assert _values_of(model) == before


def test_a_legacy_layer_whose_weight_names_are_damaged_is_refused(tmp_path):
    """Found by a fresh-user test: a flipped byte in a Keras 2 .h5 layer's `weight_names`
    attribute header hid the attribute; its weight datasets stayed, and the layer was
    reported "not in source" with ok=True while the other layers loaded (Keras's own
    load_weights refuses the file). Refused, nothing changed."""
    tf_keras = pytest.importorskip("tf_keras")
    source = _three_dense(tf_keras)
    source.set_weights([np.full(w.shape, j + 1.0, "float32")
                        for j, w in enumerate(source.get_weights())])
    path = str(tmp_path / "k2.h5")
    source.save_weights(path)
    raw = bytearray(open(path, "rb").read())
    at = raw.find(b"weight_names") - 16  # the header of block_1_0's weight_names attribute
    raw[at] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with h5py.File(path, "r") as f:  # the damage this test is about
        assert "weight_names" not in f["block_1_0"].attrs and len(f["block_1_0"])
    model = _three_dense(keras)
    before = _values_of(model)
    with pytest.raises(BlockFileError, match=r"layer 'block_1_0' holds weight datasets but no "
                                             r"`weight_names` attribute"):
        load_blocks(model, path)
    assert _values_of(model) == before
