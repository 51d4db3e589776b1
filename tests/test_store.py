import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from keras_blockreuse import BlockFileError, load_blocks, read_blocks, save_blocks
from keras_blockreuse import store as store_module
from keras_blockreuse.sources import numpy_dtype
from keras_blockreuse.store import FORMAT_VERSION, BlockFile
from tests.helpers import assert_same, randomize, seed_cnn, snapshot


@pytest.fixture
def saved(tmp_path):
    model = seed_cnn()
    randomize(model, seed=3)
    path = save_blocks(model, tmp_path / "cnn.blocks.h5", metadata={"epoch": 7, "note": "x"})
    return model, path


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _data_offset(path, dataset):
    with h5py.File(path, "r") as f:
        return f[dataset].id.get_offset()


def test_file_layout_is_readable(saved):
    model, path = saved
    with h5py.File(path, "r") as f:
        text = {key: f.attrs[key].decode() for key in f.attrs if key != "format_version"}
        assert text["format"] == "keras-blockreuse"
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert text["keras_version"] == keras.__version__
        assert text["backend"] == keras.backend.backend()
        assert text["model_name"] == "seed_cnn"
        assert text["created"].endswith("+00:00")
        assert json.loads(text["blocks"]) == ["block_1", "block_2", "dense_1", "dense_2"]
        assert json.loads(text["metadata"]) == {"epoch": 7, "note": "x"}
        kernel = f["block_1/block_1_0/kernel"]
        assert kernel.shape == (3, 3, 3, 8) and kernel.dtype == np.float32
        assert kernel.attrs["path"] == b"seed_cnn/block_1_0/kernel"
        assert kernel.attrs["dtype"] == b"float32"
        assert f["block_1/block_1_0"].attrs["class_name"] == b"Conv2D"
        np.testing.assert_array_equal(kernel[()], model.get_layer("block_1_0").kernel.numpy())
        layout = json.loads(f["block_1/.layout"][()])
        assert [layer["path"] for layer in layout] == ["block_1_0", "block_1_1"]
        assert layout[0]["variables"][0] == {
            "key": "0", "name": "kernel", "path": "seed_cnn/block_1_0/kernel",
            "shape": [3, 3, 3, 8], "dtype": "float32", "dataset": "kernel"}
        assert f["block_1"].attrs["data_checksum"].startswith(b"xxh3_128:")
        assert f["block_1"].attrs["layout_checksum"].startswith(b"sha256:")


def test_no_variable_length_strings_so_no_global_heap(saved):
    """Variable-length strings live in HDF5's global heap, which damage can make loop forever."""
    _, path = saved
    with open(path, "rb") as fh:
        assert b"GCOL" not in fh.read()


def test_read_blocks_describes_without_values(saved):
    model, path = saved
    info = read_blocks(path)
    assert list(info.blocks) == ["block_1", "block_2", "dense_1", "dense_2"]
    assert info.metadata == {"epoch": 7, "note": "x"}
    assert info.model_name == "seed_cnn"
    block = info.blocks["block_2"]
    assert [layer.path for layer in block.layers] == ["block_2_0", "block_2_1"]
    kernel = block.layers[0].variables[0]
    assert (kernel.key, kernel.name, kernel.shape, kernel.dtype) == ("0", "kernel", (3, 3, 8, 16), "float32")
    assert info.num_params == model.count_params()
    assert info.nbytes == 4 * model.count_params()


def test_only_saves_a_subset(tmp_path):
    model = seed_cnn()
    path = save_blocks(model, tmp_path / "b.blocks.h5", only=["block_*"])
    assert list(read_blocks(path).blocks) == ["block_1", "block_2"]


def test_bad_arguments(tmp_path):
    model = seed_cnn()
    with pytest.raises(ValueError, match=r"must end in '.blocks.h5'. Received: path="):
        save_blocks(model, tmp_path / "x.h5")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_blocks(model, tmp_path / "x.blocks.h5", metadata={"a": object()})
    with pytest.raises(ValueError, match=r"Unknown block name\(s\) \['block_9'\].*Available"):
        save_blocks(model, tmp_path / "x.blocks.h5", only=["block_9"])
    assert os.listdir(tmp_path) == []


def test_exception_during_save_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    model = seed_cnn()
    randomize(model, seed=1)
    path = save_blocks(model, tmp_path / "cnn.blocks.h5")
    before = snapshot(model)
    randomize(model, seed=2)
    calls = {"n": 0}
    real = store_module._write_dataset

    def failing(group, name, array):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (injected)")
        return real(group, name, array)

    monkeypatch.setattr(store_module, "_write_dataset", failing)
    with pytest.raises(OSError, match="injected"):
        save_blocks(model, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["cnn.blocks.h5"]
    fresh = seed_cnn()
    load_blocks(fresh, path)
    assert_same(before, snapshot(fresh))


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path):
    stale = tmp_path / f".cnn.blocks.h5{store_module.TEMP_MARKER}999999999-abcd"
    stale.write_bytes(b"partial")
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    assert store_module.is_temporary(str(stale))
    save_blocks(seed_cnn(), tmp_path / "cnn.blocks.h5")
    assert sorted(os.listdir(tmp_path)) == ["cnn.blocks.h5", "notes.txt"]


def test_flipped_byte_in_block_data_names_the_block_and_spares_other_blocks(saved):
    model, path = saved
    _flip(path, _data_offset(path, "block_2/block_2_1/kernel") + 17)
    target = seed_cnn()
    before = snapshot(target)
    with pytest.raises(BlockFileError, match=r"Block 'block_2' .* is corrupt"):
        load_blocks(target, path)
    assert_same(before, snapshot(target))
    report = load_blocks(target, path, only=["block_1", "dense_1"])
    assert list(report.loaded) == ["block_1", "dense_1"]
    expected = snapshot(model)
    assert_same(expected, snapshot(target), [v.path for v in target.get_layer("block_1_0").weights])


def test_flipped_byte_in_layout_is_detected(saved):
    _, path = saved
    with h5py.File(path, "r+") as f:
        layout = f["block_1/.layout"][()]
        del f["block_1/.layout"]
        f["block_1/.layout"] = np.bytes_(layout.replace(b"[3, 3, 3, 8]", b"[3, 3, 3, 9]"))
    with pytest.raises(BlockFileError, match="layout .* does not match its checksum"):
        load_blocks(seed_cnn(), path, only=["block_1"])


def test_flipped_byte_that_breaks_the_layout_text_is_named(saved):
    _, path = saved
    _flip(path, _data_offset(path, "block_1/.layout"))  # '[' -> 0xa4: not UTF-8
    target = seed_cnn()
    before = snapshot(target)
    with pytest.raises(BlockFileError) as raised:
        load_blocks(target, path, only=["block_1"])
    assert str(raised.value) == (
        f"{path} is corrupt: /block_1/.layout should be UTF-8 text (JSON), but byte 0xa4 at "
        "position 0 is not (invalid start byte). Its bytes changed after it was written; "
        "save it again or use another copy.")
    assert_same(before, snapshot(target))


def test_lazy_read_touches_only_selected_blocks(saved):
    model, path = saved
    with BlockFile(path) as f:
        f.read_block("block_1")
        assert f.bytes_read == read_blocks(path).blocks["block_1"].nbytes
    report = load_blocks(seed_cnn(), path, only=["block_1"])
    assert report.bytes_read == read_blocks(path).blocks["block_1"].nbytes


def test_newer_format_version_is_refused(saved):
    _, path = saved
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(BlockFileError, match=f"version {FORMAT_VERSION + 1}, newer than this reader's version {FORMAT_VERSION}"):
        read_blocks(path)


def test_other_files_are_refused_clearly(tmp_path):
    other = tmp_path / "other.blocks.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(BlockFileError, match="HDF5 file but not a block file"):
        read_blocks(other)
    text = tmp_path / "text.blocks.h5"
    text.write_text("hello")
    with pytest.raises(BlockFileError, match=r"is not an HDF5 file \(5 bytes, starting b'hello'\)"):
        read_blocks(text)
    with pytest.raises(BlockFileError, match="No such block file"):
        read_blocks(tmp_path / "absent.blocks.h5")


def test_low_precision_dtypes_round_trip(tmp_path):
    for policy in ("float16", "bfloat16", "mixed_bfloat16"):
        with _policy(policy):
            model = seed_cnn(input_shape=(16, 16, 1))
            twin = seed_cnn(input_shape=(16, 16, 1))
        randomize(model, seed=5)
        path = save_blocks(model, tmp_path / f"{policy}.blocks.h5")
        stored = {v.dtype for b in read_blocks(path).blocks.values() for x in b.layers for v in x.variables}
        assert stored == {"float32" if policy.startswith("mixed") else policy}
        load_blocks(twin, path)
        assert_same(snapshot(model), snapshot(twin))


class _policy:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.old = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.old)


def test_data_from_outside_the_file_is_refused(saved, tmp_path):
    _, path = saved
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["kernel"] = np.zeros((3, 3, 3, 8), "float32")
    with h5py.File(path, "r+") as f:
        del f["block_1/block_1_0/kernel"]
        f["block_1/block_1_0/kernel"] = h5py.ExternalLink(str(outside), "/kernel")
    with pytest.raises(BlockFileError, match="external link"):
        load_blocks(seed_cnn(), path, only=["block_1"])
    with h5py.File(path, "r+") as f:
        del f["block_1/block_1_0/kernel"]
        f.create_dataset("block_1/block_1_0/kernel", shape=(3, 3, 3, 8), dtype="f4", chunks=(1, 3, 3, 8))
    with pytest.raises(BlockFileError, match="chunked, virtual or stored in external files"):
        load_blocks(seed_cnn(), path, only=["block_1"])


def test_values_stored_without_a_file_offset_are_read_through_hdf5(saved, monkeypatch):
    """Values are read directly at the offset HDF5 gives this open dataset only where HDF5
    gives one (contiguous storage, in this file, stored as exactly the type read); a block file
    whose datasets another tool rewrote as compact datasets (values inside the dataset's
    header) loads the same values through HDF5's own read."""
    model, path = saved
    layer = "block_1/block_1_0"
    with h5py.File(path, "r+") as f:
        for name in ("kernel", "bias"):
            values, attrs = f[layer][name][()], dict(f[layer][name].attrs)
            del f[layer][name]
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_layout(h5py.h5d.COMPACT)
            h5py.h5d.create(f[layer].id, name.encode(), h5py.h5t.IEEE_F32LE,
                            h5py.h5s.create_simple(values.shape), dcpl=plist,
                            ).write(h5py.h5s.ALL, h5py.h5s.ALL, values)
            f[layer][name].attrs.update(attrs)
            assert f[layer][name].id.get_offset() is None
    direct = []
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda *a: direct.append(a[2]) or preadv(*a))
    target = seed_cnn()
    report = load_blocks(target, path, only=["block_1"])
    assert report.ok and report.variables_loaded == len(direct) + 2 > 2
    expected = snapshot(model)
    assert_same(expected, snapshot(target), [v.path for v in target.get_layer("block_1_0").weights])
    assert_same(expected, snapshot(target), [v.path for v in target.get_layer("block_1_1").weights])


def test_a_dataset_reshaped_against_its_layout_is_refused(saved):
    """docs/FORMAT.md: every dataset's shape must agree with the layout. A dataset rewritten
    in another shape with the same bytes (flattened) would pass its checksum; it is refused
    as a file that disagrees with its own layout, before any value is used."""
    _, path = saved
    with h5py.File(path, "r+") as f:
        layer = f["block_1/block_1_0"]
        values, attrs = layer["kernel"][()], dict(layer["kernel"].attrs)
        del layer["kernel"]
        layer["kernel"] = values.reshape(-1)
        layer["kernel"].attrs.update(attrs)
    target = seed_cnn()
    before = snapshot(target)
    with pytest.raises(BlockFileError, match=r"has shape \(216,\) .* layout records \(3, 3, 3, 8\)"):
        load_blocks(target, path, only=["block_1"])
    assert_same(before, snapshot(target))


def test_damaged_dataset_headers_are_named_in_the_error(saved):
    """A dataset with an empty dataspace, or whose header's data address is damaged (a real
    flipped bit: HDF5 then refuses to open it), is refused with a message naming the dataset
    and what is wrong, not an internal error or "missing"."""
    import struct

    _, path = saved
    with h5py.File(path, "r+") as f:
        layer = f["block_1/block_1_0"]
        attrs = dict(layer["bias"].attrs)
        del layer["bias"]
        layer.create_dataset("bias", data=h5py.Empty("f4")).attrs.update(attrs)
        kernel = f["block_2/block_2_0/kernel"]
        offset, header = kernel.id.get_offset(), h5py.h5o.get_info(kernel.id).addr
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = data.find(struct.pack("<Q", offset), header, header + 1000)
    assert at > 0
    data[at + 3] ^= 0x01  # the address's fourth byte: far past the end of the file
    with open(path, "wb") as f:
        f.write(bytes(data))
    target = seed_cnn()
    before = snapshot(target)
    with pytest.raises(BlockFileError, match=r"dataset '/block_1/block_1_0/bias' has shape none "
                       r"\(an empty dataspace\) .* layout records \(8,\)"):
        load_blocks(target, path, only=["block_1"])
    with pytest.raises(BlockFileError, match=r"dataset /block_2/block_2_0/kernel is damaged: "
                       r"HDF5 cannot open it \(Unable to"):
        load_blocks(target, path, only=["block_2"])
    assert_same(before, snapshot(target))


def test_reads_the_system_returns_short_are_continued(saved, monkeypatch):
    """One `preadv` reads at most 2 GiB on Linux (a keras-hub embedding can be larger); a
    read that returns fewer bytes is continued where it stopped, so values load whole."""
    model, path = saved
    preadv, calls = os.preadv, []

    def short(fd, buffers, offset):  # at most 1000 bytes per call, as a kernel may return
        calls.append(len(buffers[0]))
        return preadv(fd, [memoryview(buffers[0])[:1000]], offset)

    monkeypatch.setattr(os, "preadv", short)
    target = seed_cnn()
    assert load_blocks(target, path).ok
    assert max(calls) > 1000  # some value took several reads
    assert_same(snapshot(model), snapshot(target))


def test_another_hdf5_driver_reads_through_hdf5(saved, tmp_path):
    """Under another HDF5 file driver (`HDF5_DRIVER=core`: the file in memory) there is no
    file descriptor to read values at; they are read through HDF5, bit-identical."""
    model, path = saved
    expected = tmp_path / "expected.npz"
    np.savez(expected, *[np.asarray(v) for v in snapshot(model).values()])
    code = (
        "import numpy as np, keras_blockreuse as kb\n"
        "from tests.helpers import seed_cnn, snapshot\n"
        "import h5py\n"
        f"with h5py.File({str(path)!r}, 'r') as f:\n"
        "    assert f.driver == 'core', f.driver\n"
        "target = seed_cnn()\n"
        f"assert kb.load_blocks(target, {str(path)!r}).ok\n"
        f"stored = np.load({str(expected)!r})\n"
        "got = list(snapshot(target).values())\n"
        "assert len(got) == len(stored.files)\n"
        "assert all(a.tobytes() == stored[k].tobytes() and a.dtype == stored[k].dtype\n"
        "           for a, k in zip(got, stored.files))\n"
        "print('identical')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, HDF5_DRIVER="core", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("identical"), done.stderr[-3000:]


@pytest.mark.parametrize("dtype", ["float32", "int32", "int64", "float16", "bfloat16"])
def test_scalar_variables_round_trip(tmp_path, dtype):
    """A learned scalar (`add_weight(shape=())`, a temperature) keeps its shape `()`, in every
    dtype (TensorFlow cannot view a bfloat16 scalar as NumPy: it is converted)."""

    class Temperature(keras.layers.Layer):
        def build(self, shape):
            self.t = self.add_weight(name="t", shape=(), dtype=dtype, initializer="ones")

        def call(self, x):
            return x * keras.ops.cast(self.t, x.dtype)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Temperature(name="block_1_0")(inputs))
    model.get_layer("block_1_0").t.assign(5)
    path = save_blocks(model, tmp_path / "t.blocks.h5")
    with h5py.File(path, "r") as f:
        assert f["block_1/block_1_0/t"].shape == ()
    target = keras.Model(inputs, Temperature(name="block_1_0")(inputs))
    report = load_blocks(target, path)
    assert report.ok and report.variables_loaded == 1
    value = keras.ops.convert_to_numpy(target.get_layer("block_1_0").t)
    assert value.shape == () and value.dtype == numpy_dtype(dtype) and value == 5


def test_a_file_rewritten_in_place_during_a_load_is_refused(tmp_path):
    """`cp new.blocks.h5 old.blocks.h5` while a reader has old open (same inode, same
    layout offsets): each block matches its own checksums, so only the save id recorded in
    the header and in every block shows a load that would mix two saves."""
    model = seed_cnn()
    old, new = str(tmp_path / "m.blocks.h5"), str(tmp_path / "new.blocks.h5")
    randomize(model, seed=1)
    save_blocks(model, old)
    randomize(model, seed=2)
    save_blocks(model, new)
    assert os.path.getsize(old) == os.path.getsize(new)
    with BlockFile(old) as f:
        first = f.read_block("block_1")
        with open(new, "rb") as src, open(old, "r+b") as dst:  # cp: same inode, in place
            dst.write(src.read())
        with pytest.raises(BlockFileError, match=r"Block 'block_2' in .* is not from the save "
                                                  r"its header is from"):
            f.block("block_2")
    with BlockFile(new) as f:  # each file alone reads
        assert f.read_block("block_2")
    assert first
