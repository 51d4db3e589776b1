"""A damaged file is always reported, never silently used; a failed load changes nothing.

Real files are saved, then damaged: single-byte changes anywhere (hypothesis, seeded,
at least 300 per run), truncation at many lengths, and files that are empty, random, text,
HDF5 of another kind, or block files with a dataset missing, added, of strings, or declared
with 10^12 elements. Every load either gives weights bit-identical to the saved ones or raises
`BlockFileError` (`BlockMismatchError` where the crafted file is well-formed but does not fit),
with a message naming the problem, without allocating what a crafted file declares, and
without changing a single weight of the model.
"""

import json
import os
import re
import resource
import shutil
import tracemalloc

import h5py
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_blockreuse import BlockFileError, BlockMismatchError, load_blocks, read_blocks
from keras_blockreuse.store import BlockFile, _checksum, save_blocks

L = keras.layers
FUZZ_CASES = int(os.environ.get("KBR_FUZZ_CASES", "300"))  # raise it for a longer hunt


def cnn(name):
    """The seed CNN's naming; the dense layers make the values about half of the file."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="block_1_0")(inputs)
    x = L.Conv2D(4, 3, activation="relu", name="block_1_1")(x)
    x = L.AveragePooling2D(2, name="block_1_2")(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu", name="dense_1")(x)
    outputs = L.Dense(3, name="dense_2")(x)
    return keras.Model(inputs, outputs, name=name)


def weights(model) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


class Fixture:
    """A saved file, its bytes and values, and a model holding other values to load into."""

    def __init__(self, folder):
        source = cnn("source")
        rng = np.random.default_rng(0)
        for v in source.weights:
            v.assign(rng.normal(size=v.shape).astype("float32"))
        self.folder = folder
        self.path = str(folder / "saved.blocks.h5")
        save_blocks(source, self.path, metadata={"epoch": 3, "note": "fuzz"})
        self.bytes = open(self.path, "rb").read()
        self.saved = weights(source)
        self.model = cnn("target")
        self.before = weights(self.model)
        assert not same(self.before, self.saved)
        self.damaged = str(folder / "damaged.blocks.h5")

    def reset(self):
        for v, value in zip(self.model.weights, self.before, strict=True):
            v.assign(value)

    def write(self, data: bytes) -> str:
        with open(self.damaged, "wb") as fh:
            fh.write(data)
        return self.damaged

    def copy(self) -> str:
        shutil.copyfile(self.path, self.damaged)
        return self.damaged

    def load(self, path) -> str:
        """Loads `path` into the model: 'identical', or the error (model checked unchanged)."""
        try:
            load_blocks(self.model, path)
        except (BlockFileError, BlockMismatchError) as e:
            assert same(weights(self.model), self.before), "a failed load changed weights"
            return f"{type(e).__name__}: {e}"
        assert same(weights(self.model), self.saved), "a load gave different weights"
        self.reset()
        return "identical"


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    keras.backend.clear_session()
    return Fixture(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.slow
def test_single_byte_changes_load_identically_or_raise_block_file_error(fx):
    outcomes: dict[tuple[int, int], str] = {}

    @settings(max_examples=FUZZ_CASES + 50, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(position=st.integers(0, len(fx.bytes) - 1), flip=st.integers(1, 255))
    def change_one_byte(position, flip):
        data = bytearray(fx.bytes)
        data[position] ^= flip
        path = fx.write(bytes(data))
        try:
            info = read_blocks(path)  # describing the file: also all or BlockFileError
            assert list(info.blocks) == ["block_1", "dense_1", "dense_2"]
        except BlockFileError:
            pass
        outcome = fx.load(path)
        assert outcome == "identical" or outcome.startswith("BlockFileError: "), outcome
        outcomes[position, flip] = outcome

    change_one_byte()
    assert len(outcomes) >= FUZZ_CASES
    errors = [o for o in outcomes.values() if o != "identical"]
    # Both outcomes occur: the changes really reach checked bytes and unused ones.
    assert len(errors) >= FUZZ_CASES // 10 and len(outcomes) - len(errors) >= 10
    positions = sorted(p for p, _ in outcomes)
    assert positions[0] < len(fx.bytes) // 10 and positions[-1] > len(fx.bytes) * 9 // 10


def test_every_byte_of_the_values_is_protected(fx):
    """Each stored value's bytes: a change anywhere in them is reported, never loaded."""
    with h5py.File(fx.path, "r") as f:
        spans, names = [], []

        def note(name, obj):
            if isinstance(obj, h5py.Dataset):
                spans.append((obj.id.get_offset(), obj.id.get_storage_size()))
                names.append(name)

        f.visititems(note)
    layouts = [size for (_, size), name in zip(spans, names, strict=True) if name.endswith(".layout")]
    assert len(layouts) == 3  # each block's layout is checksummed too: its bytes are in the spans
    assert sum(size for _, size in spans) - sum(layouts) == sum(w.nbytes for w in fx.saved)
    rng = np.random.default_rng(1)
    for (offset, size), name in zip(spans, names, strict=True):
        damage = "layout (layer names" if name.endswith(".layout") else "values do not match"
        for position in {offset, offset + size - 1, offset + int(rng.integers(size))}:
            data = bytearray(fx.bytes)
            data[position] ^= 0x01  # the lowest bit: the smallest change a value can get
            outcome = fx.load(fx.write(bytes(data)))
            assert damage in outcome and "match" in outcome, outcome


@pytest.mark.slow
def test_truncation_at_many_lengths_is_reported(fx):
    size = len(fx.bytes)
    lengths = sorted(
        {0, 1, 7, 8, 9, 511, 512, 513, size - 1, size - 2, size - 8, size - 512}
        | set(range(16, size, max(1, size // 80)))
    )
    for length in lengths:
        outcome = fx.load(fx.write(fx.bytes[:length]))
        assert outcome.startswith("BlockFileError: "), (length, outcome)
        assert "damaged.blocks.h5" in outcome, outcome


def another_hdf5(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(10.0))
        f.attrs["format"] = "something-else"


def keras_weights(path):
    model = cnn("keras")
    model.save_weights(str(path) + ".weights.h5")
    shutil.move(str(path) + ".weights.h5", path)


BAD_FILES = {
    "empty": (lambda p: open(p, "wb").close(), r"damaged.* is empty \(0 bytes\), so it holds no weights"),
    "random bytes": (
        lambda p: open(p, "wb").write(np.random.default_rng(0).bytes(64_000)),
        r"damaged.* is not an HDF5 file \(64000 bytes, starting b.*HDF5 signature",
    ),
    "random bytes after an HDF5 signature": (
        lambda p: open(p, "wb").write(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(1).bytes(9000)),
        r"damaged\.blocks\.h5' is a damaged HDF5 file \(9008 bytes, starting b'\\x89HDF.*; "
        r"HDF5: Unable to synchronously open file \(bad superblock version number\)\): "
        r"\.blocks\.h5 files, and Keras \.weights\.h5 and \.h5 files, are complete HDF5 files",
    ),
    "text": (
        lambda p: open(p, "w").write("block_1_0,0.25,0.5\n" * 500),
        r"damaged.* is not an HDF5 file \(9500 bytes, starting b'block_1_0,0.25,0'\)",
    ),
    "HDF5 of another kind": (
        another_hdf5, r"is an HDF5 file but not a block file.*received 'a variable-length string'"
    ),
    "a Keras .weights.h5 file": (
        keras_weights, r"is an HDF5 file but not a block file.*received None. A Keras weights "
        r"file is read as one by any name but \*\.blocks\.h5"
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_files_that_are_not_block_files_are_reported(fx, kind):
    make, message = BAD_FILES[kind]
    make(fx.damaged)
    outcome = fx.load(fx.damaged)
    assert outcome.startswith("BlockFileError: "), outcome
    assert re.search(message, outcome, flags=re.DOTALL), outcome


EXPECTED = (".blocks.h5 files, and Keras .weights.h5 and .h5 files, are complete HDF5 files, "
            "starting with the HDF5 signature b'\\x89HDF\\r\\n\\x1a\\n'.")
CUT = "A download or copy cut short looks like this: fetch or save it again."
SHORT_FILES = {
    "empty": (lambda data: b"", "is empty (0 bytes), so it holds no weights; expected a "
              ".blocks.h5 file or a Keras .weights.h5, .keras or .h5 file. An interrupted "
              "download or copy leaves an empty file: fetch or save it again."),
    "the bare HDF5 signature": (
        lambda data: data[:8], "is truncated (8 bytes, starting b'\\x89HDF\\r\\n\\x1a\\n', "
        f"fewer than the 48 bytes of the smallest HDF5 header): {EXPECTED} {CUT}"),
    "the signature and 4 bytes": (
        lambda data: data[:12], "is truncated (12 bytes, starting b'\\x89HDF\\r\\n\\x1a\\n"
        "\\x00\\x00\\x00\\x00', fewer than the 48 bytes of the smallest HDF5 header): "
        f"{EXPECTED} {CUT}"),
    "the first half": (
        lambda data: data[:len(data) // 2], "is truncated ({half} bytes, starting {start!r}, "
        f"where its HDF5 header records {{size}} bytes): {EXPECTED} {CUT}"),
}


@pytest.mark.parametrize("kind", list(SHORT_FILES))
def test_an_empty_or_cut_hdf5_file_says_what_it_holds_everywhere(fx, tmp_path, capsys, kind):
    """An empty `.blocks.h5` got one message from `read_blocks` ("is not an HDF5 file (0
    bytes, ...) ... an error page") and another from `load_blocks` ("is empty"); a file cut to
    the HDF5 signature, or a few bytes more, got HDF5's own words ("Unable to synchronously
    open file (bad byte number in an address)"), and one cut later "(truncated file: eof =
    ...)". Now one text, saying its size, its first bytes and what a complete file is, from
    read_blocks, load_blocks (of a .blocks.h5 and of a .weights.h5) and `inspect`."""
    from keras_blockreuse.cli import main

    weights = tmp_path / "m.weights.h5"
    keras_weights(weights)
    for original in (fx.bytes, weights.read_bytes()):
        cut, text = SHORT_FILES[kind]
        data = cut(original)
        text = text.format(half=len(data), start=data[:16], size=len(original))
        for path in (tmp_path / "cut.blocks.h5", tmp_path / "cut.weights.h5"):
            path.write_bytes(data)
            message = f"{str(path)!r} {text}"
            fx.reset()
            assert fx.load(str(path)) == f"BlockFileError: {message}"  # weights unchanged
            if path.name.endswith(".blocks.h5"):
                with pytest.raises(BlockFileError) as e:
                    read_blocks(path)
                assert str(e.value) == message
                assert main(["inspect", str(path)]) == 2
                out, err = capsys.readouterr()
                assert (out, err) == ("", f"keras-blockreuse: error: {message}\n")


def test_a_file_that_grew_while_hdf5_read_it_is_not_called_truncated(tmp_path):
    """HDF5 reports the size it saw when it opened the file ("truncated file: eof = ..."); a
    file that has grown since (a writer still at work) said "is truncated (46104 bytes, ...,
    where its HDF5 header records 46104 bytes)": two equal sizes, and "fetch it again"."""
    from keras_blockreuse.safety import not_hdf5

    path = tmp_path / "growing.weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4992))
    hdf5 = OSError("Unable to synchronously open file (truncated file: eof = 3000, "
                   "sblock->base_addr = 0, stored_eof = 5000)")
    assert str(not_hdf5(path, repr(str(path)), hdf5)) == (
        f"{str(path)!r} changed while it was read: 3000 bytes when HDF5 opened it (its header "
        "records 5000), 5000 now. Another process is probably writing it; load it once that "
        "process has finished.")


def test_read_blocks_of_a_keras_file_says_where_keras_files_are_read(tmp_path):
    """read_blocks of a good `.weights.h5` told the user to name it `.weights.h5`, and of a
    good `.keras` called it "not an HDF5 file ... an error page": neither file is damaged."""
    weights = tmp_path / "m.weights.h5"
    keras_weights(weights)
    archive = tmp_path / "m.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(archive)
    elsewhere = ("read_blocks and BlockFile read .blocks.h5 files only; load a Keras file with "
                 "load_blocks, describe it with `keras-blockreuse inspect`, or convert it with "
                 "`keras-blockreuse convert`.")
    with pytest.raises(BlockFileError) as e:
        read_blocks(weights)
    assert str(e.value) == (
        f"{weights} is an HDF5 file but not a block file: expected a root attribute "
        f"format='keras-blockreuse', received None. {elsewhere}")
    with pytest.raises(BlockFileError) as e:
        read_blocks(archive)
    assert str(e.value) == (
        f"{archive} is a zip archive (a Keras .keras file?), not a block file. {elsewhere}")


def edit(path, change):
    with h5py.File(path, "r+") as f:
        change(f)


def missing_dataset(f):
    del f["dense_1/dense_1/bias"]


def extra_dataset(f):
    f["dense_1/dense_1"].create_dataset("kernel_2", data=np.zeros((64, 3), "float32"))


def string_dataset(f):
    del f["dense_2/dense_2/kernel"]
    f["dense_2/dense_2"].create_dataset(
        "kernel", data=np.full((64, 3), "0.5", dtype=object), dtype=h5py.string_dtype()
    )


def int_dataset(f):
    del f["dense_2/dense_2/kernel"]
    f["dense_2/dense_2"].create_dataset("kernel", data=np.ones((64, 3), "int32"))


def huge_dataset(f):
    """A chunked dataset of 10^12 float32 (4 TB) that is never written: a tiny file."""
    del f["dense_2/dense_2/kernel"]
    f["dense_2/dense_2"].create_dataset(
        "kernel", shape=(10**6, 10**6), dtype="float32", chunks=(1000, 1000)
    )


def huge_dataset_and_layout(f):
    """The same, with the layout rewritten to declare it and its checksum recomputed."""
    huge_dataset(f)
    group = f["dense_2"]
    layout = json.loads(group[".layout"][()])
    layout[0]["variables"][0]["shape"] = [10**6, 10**6]
    text = json.dumps(layout)
    del group[".layout"]
    group[".layout"] = np.bytes_(text.encode())
    group.attrs["layout_checksum"] = np.bytes_(_checksum(text.encode()).encode())


BAD_BLOCK_FILES = {
    "missing dataset": (
        missing_dataset, BlockFileError, r"block 'dense_1'.*damaged or incomplete.*bias"
    ),
    "extra dataset": (
        extra_dataset, BlockFileError, r"layer 'dense_1' holds unexpected entries \['kernel_2'\]"
    ),
    "string dataset": (
        string_dataset, BlockFileError,
        r"dataset '/dense_2/dense_2/kernel' has shape \(64, 3\) and dtype object, but the "
        r"block's layout records \(64, 3\) and float32",
    ),
    "int dataset": (
        int_dataset, BlockFileError, r"dtype int32, but the block's layout records .* float32"
    ),
    "declared 10^12 elements": (
        huge_dataset, BlockFileError,
        r"has shape \(1000000, 1000000\) .* layout records \(64, 3\)",
    ),
    "declared 10^12 elements in the layout too": (
        huge_dataset_and_layout, BlockMismatchError,
        r"dense_2 .*kernel.*shape differs.*\(1000000, 1000000\) float32.*\(64, 3\) float32",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_BLOCK_FILES))
def test_damaged_block_files_are_reported_in_bounded_memory(fx, kind):
    change, error, message = BAD_BLOCK_FILES[kind]
    edit(fx.copy(), change)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        outcome = fx.load(fx.damaged)
        with pytest.raises(BlockFileError):  # reading the file alone: reported too
            with BlockFile(fx.damaged) as f:
                f.verify()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert outcome.startswith(f"{error.__name__}: "), outcome
    assert re.search(message, outcome, flags=re.DOTALL), outcome
    assert peak < 32 * 2**20, f"{peak} bytes allocated"
    assert grown < 128 * 2**10, f"peak memory grew by {grown} KiB"


def test_a_declared_size_larger_than_the_file_is_never_allocated(fx):
    edit(fx.copy(), huge_dataset_and_layout)
    info = read_blocks(fx.damaged)  # the description alone is fine: nothing is read
    assert info.blocks["dense_2"].num_params == 10**12 + 3
    tracemalloc.start()
    try:
        with pytest.raises(BlockFileError, match=r"declares 4000000000000 bytes but the whole "
                                                 r"file holds \d+; the file is truncated"):
            with BlockFile(fx.damaged) as f:
                f.read_block("dense_2")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20


def test_a_variable_length_string_is_refused_before_it_is_read(fx):
    """Block files hold fixed-length strings only. Variable-length strings live in HDF5's
    global heap: h5py crashes the process (SIGSEGV) on one whose type was damaged into a
    sequence, and HDF5 loops forever on a damaged heap collection. Each attribute's type is
    checked before it is read, so such an attribute gives `BlockFileError`, unread."""
    for owner, name in [("/", "model_name"), ("/", "blocks"), ("/block_1", "layout_checksum"),
                        ("/dense_1", "data_checksum")]:
        path = fx.copy()
        with h5py.File(path, "r+") as f:
            value = f[owner].attrs[name].decode()
            del f[owner].attrs[name]
            f[owner].attrs[name] = value  # h5py writes a str as a variable-length string
        outcome = fx.load(path)
        assert outcome.startswith("BlockFileError: "), outcome
        assert f"attribute {name!r}" in outcome and "TypeStringID" in outcome, outcome
