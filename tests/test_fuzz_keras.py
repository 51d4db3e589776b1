"""Damaged Keras files — `.weights.h5`, `.keras` and legacy Keras 2 `.h5` — never hang, crash or
raise a raw exception, and never change the model silently.

Real files are saved (the legacy one with tf-keras, in its own process), then damaged: seeded
single-byte changes anywhere, a third of them inside the HDF5 global heap that holds the layer
names (where HDF5 itself loops forever on a bad size), at least 300 per format
(`KBR_FUZZ_CASES` for more). Each damaged file is loaded by a worker process with a per-load
deadline (tests/fuzz_worker.py), so a hang or a crash fails the test instead of stopping it.

Every outcome must be one of: weights bit-identical to the saved ones; `BlockFileError` naming
the file (or `BlockMismatchError` for damage that leaves a well-formed file that does not fit,
such as a changed shape), with the model unchanged; a load that reports itself not ok (a
damaged name that is still a valid name: that block is reported missing and unexpected), every
other block bit-identical; or a changed value where the change hit a value's own bytes —
damage these formats cannot detect, having no checksums (docs/GUARANTEES.md).
"""

import json
import os
import select
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest

from tests.fuzz_worker import cnn

FUZZ_CASES = int(os.environ.get("KBR_FUZZ_CASES", "300"))
WORKER = os.path.join(os.path.dirname(__file__), "fuzz_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LEGACY = r"""
import sys, numpy as np, tf_keras as K
L = K.layers
model = K.Sequential([
    K.Input((8, 8, 3)),
    L.Conv2D(4, 3, padding="same", activation="relu", name="block_1_0"),
    L.Conv2D(4, 3, activation="relu", name="block_1_1"),
    L.AveragePooling2D(2, name="block_1_2"),
    L.Flatten(name="flatten"),
    L.Dense(16, activation="relu", name="dense_1"),
    L.Dense(3, name="dense_2"),
], name="source")
rng = np.random.default_rng(3)
model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
model.save(sys.argv[1], save_format="h5")
"""


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def make_files(folder) -> dict[str, str]:
    source = cnn("source")
    rng = np.random.default_rng(5)
    for v in source.weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    files = {"weights": str(folder / "clean.weights.h5"), "keras": str(folder / "clean.keras"),
             "legacy": str(folder / "clean.h5")}
    source.save_weights(files["weights"])
    source.save(files["keras"])
    subprocess.run([sys.executable, "-c", LEGACY, files["legacy"]], check=True,
                   env=environment(), timeout=300, capture_output=True)
    return files


def hdf5_regions(data: bytes, offset: int = 0) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """`(value spans, global heap span)` of an HDF5 image that starts at `offset` in a file."""
    import io

    spans = []
    with h5py.File(io.BytesIO(data), "r") as f:

        def note(_, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                spans.append((offset + obj.id.get_offset(), obj.id.get_storage_size()))

        f.visititems(note)
    heap = data.index(b"GCOL")
    size = int.from_bytes(data[heap + 8 : heap + 16], "little")
    return spans, (offset + heap, size)


def regions(path: str, kind: str):
    data = open(path, "rb").read()
    if kind != "keras":
        return hdf5_regions(data)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model.weights.h5")
        assert info.compress_type == zipfile.ZIP_STORED  # read in place: offsets are the file's
        header = data[info.header_offset : info.header_offset + 30]
        start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(
            header[28:30], "little")
        return hdf5_regions(data[start : start + info.file_size], start)


def mutations(size: int, heap: tuple[int, int], count: int, seed: int):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        if i % 3 == 0:  # the global heap: names, and HDF5's endless loop
            position = heap[0] + int(rng.integers(min(heap[1], 512)))
        else:
            position = int(rng.integers(size))
        cases.append((position, int(rng.integers(1, 256))))
    return cases


class Worker:
    """One worker process; restarted after it dies (each death is recorded as a failure)."""

    def __init__(self, clean: str):
        self.clean = clean
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, WORKER, self.clean], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=environment())
        assert json.loads(self.line(300)) == {"ready": True}

    def line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.process.kill()
            return ""
        return self.process.stdout.readline()

    def load(self, case: dict, timeout: float) -> dict | None:
        if self.process is None:
            self.start()
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        line = self.line(timeout)
        if not line:
            self.process.kill()
            self.process.wait()
            error = self.process.stderr.read()[-2000:]
            self.process = None
            return {"outcome": "died", "message": error}
        return json.loads(line)

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    keras.backend.clear_session()
    return make_files(tmp_path_factory.mktemp("fuzz_keras"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["weights", "keras", "legacy"])
def test_damaged_keras_files_load_identically_or_are_reported(files, kind, tmp_path):
    clean = files[kind]
    data = open(clean, "rb").read()
    spans, heap = regions(clean, kind)
    damaged = str(tmp_path / os.path.basename(clean).replace("clean", "damaged"))
    worker = Worker(clean)
    counts: dict[str, int] = {}
    failures = []
    try:
        for i, (position, flip) in enumerate(mutations(len(data), heap, FUZZ_CASES, seed=11)):
            changed = bytearray(data)
            changed[position] ^= flip
            with open(damaged, "wb") as fh:
                fh.write(changed)
            result = worker.load({"id": i, "path": damaged}, timeout=60)
            kind_of = _classify(result, position, spans, damaged)
            counts[kind_of] = counts.get(kind_of, 0) + 1
            if kind_of.startswith("FAIL"):
                failures.append((position, flip, kind_of, result))
    finally:
        worker.close()
    print(kind, counts)
    assert not failures, failures[:5]
    assert sum(counts.values()) == FUZZ_CASES
    # The changes reach both checked and unchecked bytes: both outcomes occur. (In a `.keras`
    # archive nearly every byte is covered by a member's CRC-32, which the reader verifies.)
    least = max(3, FUZZ_CASES // 30)
    assert counts.get("identical", 0) >= 1 and counts.get("BlockFileError", 0) >= least, counts


def _classify(result: dict, position: int, spans, damaged: str) -> str:
    outcome = result["outcome"]
    if outcome == "died":
        return "FAIL: the worker died (a hang past the deadline, or a crash)"
    if outcome == "raw":
        return "FAIL: a raw exception"
    variables = result["variables"]
    if outcome in ("BlockFileError", "BlockMismatchError"):
        if any(v != "before" for v in variables):
            return "FAIL: a failed load changed the model"
        if outcome == "BlockFileError" and not result["names_path"]:
            return "FAIL: BlockFileError does not name the file"
        return outcome
    if all(v == "saved" for v in variables):
        return "identical"
    in_values = any(start <= position < start + size for start, size in spans)
    if "other" in variables and not in_values:
        return "FAIL: a value changed, but the change was not in a value's bytes"
    if "before" in variables and result["ok"]:
        return "FAIL: a block was left unloaded with report.ok True"
    return "undetectable value damage" if "other" in variables else "reported partial load"


def test_a_datatype_damaged_into_a_string_type_is_reported_as_damage(tmp_path):
    """Found by a fresh-user test: one bit of a float32 datatype message turns it into a
    string type with an unknown encoding, and h5py raises `TypeError` for it; that is damage
    (`BlockFileError` naming the file), not a wrong argument."""
    from keras_blockreuse import BlockFileError, load_blocks

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with h5py.File(path, "r") as f:
        header = h5py.h5o.get_info(f["layers/dense/vars/0"].id).addr
    data = bytearray(open(path, "rb").read())
    float32 = bytes([0x11, 0x20, 0x1F, 0x00, 0x04, 0x00, 0x00, 0x00])  # class 1, version 1
    at = data.index(float32, header)
    data[at] ^= 0b10  # class 1 (floating point) -> class 3 (string), charset 2 (none such)
    open(path, "wb").write(bytes(data))
    before = [v.numpy().tobytes() for v in model.weights]
    with pytest.raises(BlockFileError, match=r"m\.weights\.h5.*damaged.*Unknown string "
                                             r"encoding"):
        load_blocks(model, path)
    assert [v.numpy().tobytes() for v in model.weights] == before
