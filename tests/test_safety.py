"""Third-party files: links and archives that leave the file, zip bombs, huge declared shapes."""

import io
import zipfile

import h5py
import keras
import numpy as np
import pytest

from keras_blockreuse import BlockFileError, BlockMismatchError, load_blocks
from keras_blockreuse.safety import GuardedSource, check_zip
from keras_blockreuse.sources.keras_files import open_keras_file
from keras_blockreuse.zip_member import StoredMember

L = keras.layers


def model(name="m"):
    return keras.Sequential(
        [keras.Input((4,)), L.Dense(3, name="block_1_0"), L.Dense(2, name="head")], name=name
    )


@pytest.fixture
def weights(tmp_path):
    path = str(tmp_path / "m.weights.h5")
    model().save_weights(path)
    return path


@pytest.fixture
def archive(tmp_path):
    path = str(tmp_path / "m.keras")
    model().save(path)
    return path


def test_hdf5_external_link_is_refused(weights, tmp_path):
    with h5py.File(tmp_path / "elsewhere.h5", "w") as f:
        f["secret"] = np.arange(3.0)
    with h5py.File(weights, "a") as f:
        f["layers/dense/vars/0_link"] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "/secret")
    with pytest.raises(BlockFileError, match=r"external link to .*elsewhere.h5.*refusing"):
        load_blocks(model("t"), weights)


def test_hdf5_soft_link_is_refused(weights):
    with h5py.File(weights, "a") as f:
        f["layers/alias"] = h5py.SoftLink("/layers/dense")
    with pytest.raises(BlockFileError, match=r"'/layers/alias' is an HDF5 soft link"):
        open_keras_file(weights)


def test_dataset_stored_in_an_external_file_is_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(12, dtype="float32").tobytes())
    path = str(tmp_path / "legacy.h5")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block_1_0"]
        group = f.create_group("block_1_0")
        group.attrs["weight_names"] = [b"block_1_0/kernel:0"]
        group.create_dataset("block_1_0/kernel:0", shape=(4, 3), dtype="float32",
                             external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(BlockFileError, match=r"stores its values in external files"):
        open_keras_file(path)


@pytest.mark.parametrize("storage", ["external", "virtual"])
def test_weights_dataset_stored_outside_the_file_is_refused_when_its_block_is_read(
        weights, tmp_path, storage):
    """A `.weights.h5` reader checks each dataset's storage before reading its values: the
    block holding it is refused with the model unchanged; a load of another block, which
    never reads it, is not."""
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(12, dtype="float32").tobytes())
    (tmp_path / "source.h5").unlink(missing_ok=True)
    with h5py.File(tmp_path / "source.h5", "w") as f:
        f["data"] = np.arange(12, dtype="float32").reshape(4, 3)
    with h5py.File(weights, "a") as f:
        del f["layers/dense/vars/0"]  # block_1_0's kernel, (4, 3)
        group = f["layers/dense/vars"]
        if storage == "external":
            group.create_dataset("0", shape=(4, 3), dtype="float32",
                                 external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
        else:
            layout = h5py.VirtualLayout(shape=(4, 3), dtype="float32")
            layout[...] = h5py.VirtualSource(str(tmp_path / "source.h5"), "data", shape=(4, 3))
            group.create_virtual_dataset("0", layout)
    target = model("t")
    before = [np.array(v) for v in target.weights]
    with pytest.raises(BlockFileError, match="external files" if storage == "external"
                       else "virtual dataset"):
        load_blocks(target, weights)
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, target.weights,
                                                                strict=True))
    assert load_blocks(target, weights, only=["head"]).ok


def rewrite_with_member(source, path, name, data, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(zipfile.ZipInfo(name), data, compress_type=compress)


@pytest.mark.parametrize("member", ["/etc/evil", "../evil.txt", "assets/../../evil",
                                    "C:\\evil", "..\\evil"])
def test_zip_members_leaving_the_archive_are_refused(archive, tmp_path, member):
    path = str(tmp_path / "evil.keras")
    rewrite_with_member(archive, path, member, b"x")
    with pytest.raises(BlockFileError, match=r"absolute path or '\.\.'"):
        load_blocks(model("t"), path)


def test_zip_bomb_is_refused_before_reading(archive, tmp_path):
    path = str(tmp_path / "bomb.keras")
    rewrite_with_member(archive, path, "assets/zeros.bin", b"\0" * 50_000_000,
                        compress=zipfile.ZIP_BZIP2)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("assets/zeros.bin")
        assert info.file_size > 1000 * info.compress_size
    with pytest.raises(BlockFileError, match=r"declares 50000000 bytes.*zip bomb"):
        open_keras_file(path)


def test_stored_member_larger_than_the_archive_is_refused(tmp_path):
    path = tmp_path / "liar.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", b"{}")
    data = bytearray(path.read_bytes())
    # Patch the central directory's uncompressed size of the member to 1 GB.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10**9).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as z, pytest.raises(BlockFileError, match="zip bomb"):
        check_zip(z, str(path))


def test_declared_shape_far_larger_than_the_file_is_refused_unread(tmp_path):
    path = str(tmp_path / "huge.weights.h5")
    keras_model = model()
    keras_model.save_weights(path)
    with h5py.File(path, "a") as f:
        del f["layers/dense/vars/0"]
        # 40 GB declared, nothing written: the file stays a few kilobytes.
        f["layers/dense/vars"].create_dataset("0", shape=(100_000, 100_000), dtype="float32")
    target = model("t")
    with open_keras_file(path) as source:  # describing it allocates nothing
        [layer] = source.block_layers("block_1")
        assert layer.variables[0].shape == (100_000, 100_000)
    with pytest.raises(BlockMismatchError, match=r"source \(100000, 100000\) float32"):
        load_blocks(target, path)  # validated against the model before any read
    report = load_blocks(target, path, on_mismatch="skip")  # the whole layer is left, unread
    assert report.not_loaded == ["block_1"] and list(report.loaded) == ["head"]
    assert report.bytes_read == (3 * 2 + 2) * 4  # the head's kernel and bias only
    with open_keras_file(path) as source, pytest.raises(
            BlockFileError, match=r"declares shape \(100000, 100000\).*Nothing was read"):
        source.read_block("block_1")  # a reader asked for it anyway refuses before reading


def test_a_name_attribute_that_is_not_text_is_refused_unread(weights):
    """h5py crashes reading a string attribute whose type was damaged into a sequence."""
    with h5py.File(weights, "a") as f:
        group = next(f["layers"][key]["vars"] for key in f["layers"])
        del group.attrs["name"]
        sequence = np.empty(1, dtype=object)
        sequence[0] = np.arange(3, dtype=np.int32)
        group.attrs.create("name", data=sequence, dtype=h5py.vlen_dtype(np.int32))
    with pytest.raises(BlockFileError, match=r"attribute 'name' of .* should be text, but is "
                                             r"stored as TypeVlenID; the file is damaged"):
        load_blocks(model("t"), weights)


def test_legacy_layer_names_that_are_not_text_are_refused_unread(tmp_path):
    path = str(tmp_path / "legacy.h5")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.arange(3)
    with pytest.raises(BlockFileError, match=r"attribute 'layer_names' .* should be text, but "
                                             r"is stored as TypeIntegerID"):
        load_blocks(model("t"), path)


def test_virtual_dataset_is_refused(tmp_path):
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["data"] = np.arange(12.0).reshape(4, 3)
    path = str(tmp_path / "legacy.h5")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block_1_0"]
        group = f.create_group("block_1_0")
        group.attrs["weight_names"] = [b"block_1_0/kernel:0"]
        layout = h5py.VirtualLayout(shape=(4, 3), dtype="float64")
        layout[...] = h5py.VirtualSource(str(source), "data", shape=(4, 3))
        group.create_virtual_dataset("block_1_0/kernel:0", layout)
    with pytest.raises(BlockFileError, match=r"'/block_1_0/block_1_0/kernel:0' is a virtual"):
        open_keras_file(path)


def test_archive_weights_read_in_place_are_the_zipped_bytes(archive, tmp_path):
    """The stored member read at its offset gives exactly what zipfile extracts."""
    extracted = tmp_path / "extracted.h5"
    with zipfile.ZipFile(archive) as z:
        extracted.write_bytes(z.read("model.weights.h5"))
        member = z.getinfo("model.weights.h5")
    with StoredMember(archive, member) as stream:
        assert stream.read() == extracted.read_bytes()
        stream.seek(-10, io.SEEK_END)
        assert stream.read(100) == extracted.read_bytes()[-10:]
    target = model("t")
    load_blocks(target, archive)
    expected = model("e")
    expected.load_weights(archive)
    for a, b in zip(target.weights, expected.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_archive_with_a_damaged_local_header_is_refused(archive, tmp_path):
    with zipfile.ZipFile(archive) as z:
        offset = z.getinfo("model.weights.h5").header_offset
    damaged = tmp_path / "damaged.keras"
    data = bytearray(open(archive, "rb").read())
    data[offset:offset + 4] = b"XXXX"
    damaged.write_bytes(bytes(data))
    target = model("t")
    before = [np.asarray(w).copy() for w in target.weights]
    with pytest.raises(BlockFileError, match=r"no local file header"):
        load_blocks(target, str(damaged))
    for w, b in zip(target.weights, before, strict=True):
        np.testing.assert_array_equal(np.asarray(w), b)


def test_hard_link_cycle_is_refused(weights):
    with h5py.File(weights, "a") as f:
        f["layers/dense/loop"] = f["layers"]
    with pytest.raises(BlockFileError, match=r"'/layers/dense/loop'|/layers/dense/loop is a "
                       r"hard link to one of its own enclosing groups"):
        open_keras_file(weights)


def test_a_guarded_source_guards_the_values_it_yields():
    """A streaming load's second pass reads through a generator; a failure inside it (a file
    truncated between the passes) is a BlockFileError naming the file, like any other call."""

    class Truncated:
        def iter_values(self, name):
            yield "dense", "0", np.zeros(2, "float32")
            raise OSError("Can't read data (addr overflow)")

    values = GuardedSource(Truncated, "'m.weights.h5'").iter_values("block_1")
    assert next(values)[:2] == ("dense", "0")
    with pytest.raises(BlockFileError, match=r"Cannot read 'm.weights.h5'.*OSError: Can't read"):
        next(values)
