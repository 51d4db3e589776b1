"""Many readers at once, a reader racing a writer, HDF5 file locks and read-only files.

Reader and writer processes are forked from a `forkserver` that has imported TensorFlow, so
they start fast; each builds its own model and TensorFlow runtime, as Ray trials do.
"""

import fcntl
import hashlib
import multiprocessing
import os
import shutil
import stat
import tempfile
import time

import h5py
import keras
import numpy as np
import pytest

from keras_blockreuse import latest_checkpoint, load_blocks, read_blocks, save_blocks
from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.store import BlockFile
from tests.helpers import dense_stack, seeded_values

WIDTH = 600  # 4 Dense layers of 600 x 600: 1.44 M float32 values, 5.8 MB
DEPTH = 4
TIMEOUT = 180


def build_model(name="model"):
    return dense_stack(WIDTH, DEPTH, name)


base_values = seeded_values


def set_state(model, base, counter: int) -> None:
    for variable, value in zip(model.weights, base, strict=True):
        variable.assign(value + np.float32(counter))


def digest(model) -> str:
    h = hashlib.sha256()
    for v in model.weights:
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    return h.hexdigest()


def context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["keras_blockreuse"])
    return ctx


# --- child processes (module level, so the forkserver can import them) --------------------


def load_many(path: str, barrier, results, loads: int) -> None:
    """Waits for every reader, then loads `path` `loads` times; reports each digest."""
    try:
        os.environ.pop("HDF5_USE_FILE_LOCKING", None)
        model = build_model("reader")
        barrier.wait(timeout=TIMEOUT)
        digests = []
        for _ in range(loads):
            for v in model.weights:
                v.assign(np.zeros(v.shape, "float32"))
            load_blocks(model, path)
            digests.append(digest(model))
        results.put(("ok", digests))
    except BaseException as e:  # reported to the test, which fails with it
        results.put(("error", f"{type(e).__name__}: {e}"))


def write_until_stopped(path: str, stop, log: str) -> None:
    """Saves states 1, 2, 3, ... to `path` until `stop` is set; logs each finished save."""
    model = build_model("writer")
    base = base_values(model)
    counter = 0
    while not stop.is_set():
        counter += 1
        set_state(model, base, counter)
        save_blocks(model, path, metadata={"counter": counter})
        with open(log, "a") as fh:
            fh.write(f"{counter}\n")


def read_as_nobody(folder: str, results) -> None:
    """Drops root privileges (where held), then reads the read-only folder's checkpoint."""
    try:
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        try:
            open(os.path.join(folder, "probe"), "w").close()
            writable = True
        except PermissionError:
            writable = False
        path = latest_checkpoint(folder)
        model = build_model("reader")
        report = load_blocks(model, path)
        results.put(("ok", (os.getuid(), writable, path, report.variables_loaded, digest(model))))
    except BaseException as e:
        results.put(("error", f"{type(e).__name__}: {e}"))


def get(results, count: int) -> list:
    out = []
    for _ in range(count):
        status, value = results.get(timeout=TIMEOUT)
        assert status == "ok", value
        out.append(value)
    return out


# --- tests -----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = build_model("source")
    set_state(model, base_values(model), 7)
    path = str(tmp_path / "shared.blocks.h5")
    save_blocks(model, path, metadata={"counter": 7})
    return path, digest(model)


@pytest.mark.slow  # the first process-based test starts the forkserver (imports TF)
def test_several_processes_load_one_file_at_once_even_while_it_is_locked(saved, monkeypatch):
    """Four processes load one file at the same moment while another holds an exclusive lock.

    HDF5's default locking (flock) fails here ("unable to lock file"); readers then open the
    file without locking, which a file never modified in place does not need.
    """
    path, expected = saved
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    ctx = context()
    readers = 4
    barrier = ctx.Barrier(readers)
    results = ctx.Queue()
    with open(path, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OSError, match="lock"):  # a locking reader is refused...
            h5py.File(path, "r", locking=True).close()
        processes = [
            ctx.Process(target=load_many, args=(path, barrier, results, 3)) for _ in range(readers)
        ]
        for p in processes:
            p.start()
        try:
            digests = get(results, readers)  # ... block file readers are not
        finally:
            for p in processes:
                p.join(TIMEOUT)
    assert all(p.exitcode == 0 for p in processes)
    assert [d for ds in digests for d in ds] == [expected] * (readers * 3)


@pytest.mark.parametrize("env", [None, "FALSE"])
def test_reads_work_whatever_hdf5_use_file_locking_says_when_unset_or_false(saved, env,
                                                                          monkeypatch):
    path, expected = saved
    if env is None:
        monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    else:
        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", env)
    with open(path, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        model = build_model("reader")
        load_blocks(model, path)
        assert read_blocks(path).metadata == {"counter": 7}
    assert digest(model) == expected


@pytest.mark.slow
def test_a_reader_sees_the_old_or_the_new_file_whole_while_a_writer_replaces_it(tmp_path):
    ctx = context()
    path = str(tmp_path / "live.blocks.h5")
    log = str(tmp_path / "writer.log")
    stop = ctx.Event()
    writer = ctx.Process(target=write_until_stopped, args=(path, stop, log))
    writer.start()
    model = build_model("reader")
    base = base_values(model)

    def finished() -> int:
        return len(open(log).read().split()) if os.path.exists(log) else 0

    def wait_for_saves(count: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while finished() < count:
            assert writer.is_alive() and time.monotonic() < deadline, "the writer stopped"
            time.sleep(0.01)

    try:
        wait_for_saves(1)
        # A file opened before a replacement is read whole, as it was when opened.
        with BlockFile(path) as f:
            counter = f.metadata["counter"]
            wait_for_saves(finished() + 2)  # the path now names a newer file
            values = [f.read_block(name) for name in f.block_names]
        arrays = [a for block in values for layer in block.values() for a in layer.values()]
        for array, b in zip(arrays, base, strict=True):
            assert np.array_equal(array, b + np.float32(counter))
        assert read_blocks(path).metadata["counter"] > counter

        # Loads racing the writer: each sees one whole state, and the states advance.
        seen = []
        while len(seen) < 25 or (len(set(seen)) < 3 and len(seen) < 500):
            load_blocks(model, path)
            first = np.asarray(keras.ops.convert_to_numpy(model.weights[0]))
            state = int(round(float(first.flat[0] - base[0].flat[0])))
            for variable, b in zip(model.weights, base, strict=True):
                assert np.array_equal(keras.ops.convert_to_numpy(variable), b + np.float32(state))
            seen.append(state)
    finally:
        stop.set()
        writer.join(TIMEOUT)
    assert writer.exitcode == 0
    assert seen == sorted(seen) and len(set(seen)) >= 3, seen
    assert [n for n in os.listdir(tmp_path) if ".kbr-tmp-" in n] == []


@pytest.mark.slow
def test_read_only_files_and_folders_can_be_read_by_an_unprivileged_process():
    folder = tempfile.mkdtemp(prefix="kbr-readonly-")
    try:
        model = build_model("source")
        set_state(model, base_values(model), 3)
        path = save_blocks(model, os.path.join(folder, "blocks_001.blocks.h5"))
        os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(folder, 0o555)
        ctx = context()
        results = ctx.Queue()
        child = ctx.Process(target=read_as_nobody, args=(folder, results))
        child.start()
        ((uid, writable, found, loaded, got),) = get(results, 1)
        child.join(TIMEOUT)
        assert uid != 0 and not writable  # the folder really was read-only for the reader
        assert found == path and loaded == len(model.weights)
        assert got == digest(model)
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)


# --- files this process already holds open (HDF5 shares one open file per inode) ----------


@pytest.fixture
def small_files(tmp_path, monkeypatch):
    """A `.weights.h5` (Keras) and a `.blocks.h5` of one model, and the model's digest."""
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    model = dense_stack(16, 3, "source")
    for variable, value in zip(model.weights, seeded_values(model), strict=True):
        variable.assign(value)
    weights = str(tmp_path / "m.weights.h5")
    blocks = str(tmp_path / "m.blocks.h5")
    model.save_weights(weights)
    save_blocks(model, blocks)
    return weights, blocks, digest(model)


@pytest.mark.parametrize("kind", ["weights", "blocks"])
@pytest.mark.parametrize("locking", [None, False, True, "best-effort"])
def test_a_file_the_user_holds_open_with_h5py_loads_whatever_its_locking(small_files, kind,
                                                                          locking):
    """HDF5 refuses a second open of a file with other locking flags ("file locking flag
    values don't match"); a notebook's open `h5py.File` must not make a good file unloadable."""
    weights, blocks, expected = small_files
    path = weights if kind == "weights" else blocks
    with h5py.File(path, "r", locking=locking) as held:
        model = dense_stack(16, 3, "target")
        load_blocks(model, path)
        assert digest(model) == expected
        if kind == "blocks":
            assert sorted(read_blocks(path).blocks) == ["block_1", "block_2", "block_3"]
        assert sorted(held.keys())  # the user's handle still reads
    assert digest(model) == expected


def test_keras_and_h5py_open_a_file_while_a_block_file_reader_holds_it(small_files):
    weights, blocks, expected = small_files
    with BlockFile(blocks) as reader:
        with h5py.File(blocks, "r") as f:  # h5py's default locking, as Keras opens files
            assert sorted(f.keys()) == sorted(reader._file.keys())
        model = dense_stack(16, 3, "target")
        load_blocks(model, reader.path)
    assert digest(model) == expected


def test_keras_load_weights_and_load_blocks_read_one_file_in_two_threads(small_files):
    """Keras's `load_weights` and `load_blocks` on the same `.weights.h5` at once, 40 times
    each: before, each made the other fail with "file locking flag values don't match"."""
    import threading

    weights, _, expected = small_files
    failures, digests = [], {"keras": [], "blocks": []}
    start = threading.Barrier(2)

    def run(kind):
        model = dense_stack(16, 3, f"target_{kind}")
        try:
            start.wait(timeout=TIMEOUT)
            for _ in range(40):
                if kind == "keras":
                    model.load_weights(weights)
                else:
                    load_blocks(model, weights, source_model=dense_stack(16, 3, "source"))
                digests[kind].append(digest(model))
        except BaseException as e:
            failures.append(f"{kind}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(k,)) for k in digests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert failures == []
    assert digests == {"keras": [expected] * 40, "blocks": [expected] * 40}


def load_while_locked(paths: list, results) -> None:
    """In a process started with HDF5_USE_FILE_LOCKING=TRUE (HDF5 reads it once, when it
    starts): loads each path while this process holds an exclusive lock on it elsewhere."""
    try:
        messages = []
        for path in paths:
            with open(path, "rb") as held:
                fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                model = dense_stack(16, 3, "target")
                before = [v.numpy().copy() for v in model.weights]
                try:
                    load_blocks(model, path)
                    messages.append(None)
                except BlockFileError as e:
                    unchanged = all(np.array_equal(b, v.numpy())
                                    for b, v in zip(before, model.weights, strict=True))
                    messages.append((str(e), unchanged))
        results.put(("ok", messages))
    except BaseException as e:
        results.put(("error", f"{type(e).__name__}: {e}"))


@pytest.mark.slow  # a fresh process (imports TensorFlow)
def test_a_file_no_locking_setting_can_open_gets_an_error_that_says_so(small_files,
                                                                       monkeypatch):
    """`HDF5_USE_FILE_LOCKING=TRUE` makes HDF5 lock whatever the reader asks; with an exclusive
    lock held elsewhere every setting is refused, and the message says it is a lock, not
    damage; the model is unchanged."""
    weights, blocks, _ = small_files
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "TRUE")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=load_while_locked, args=([weights, blocks], results))
    process.start()
    [messages] = get(results, 1)
    process.join(TIMEOUT)
    assert len(messages) == 2 and None not in messages
    (weights_text, weights_unchanged), (blocks_text, blocks_unchanged) = messages
    assert weights_unchanged and blocks_unchanged
    # a Keras file is refused at the first refusal: its lock says a writer may be at work
    assert weights_text.startswith(f"Cannot read {weights!r} now: another process holds it "
                                   "open for writing (HDF5: ")
    assert blocks_text.startswith(f"Cannot open block file {blocks}: HDF5 refused each "
                                  "file-locking setting (default: ")
    assert "; locking=False: " in blocks_text and "; locking=True: " in blocks_text
    assert blocks_text.count("unable to lock file") == 3
    assert blocks_text.endswith("no read-only open can share.")


HOLD_OPEN_FOR_WRITING = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "a")  # h5py's default locking: an exclusive lock
print("open", flush=True)
time.sleep(120)
"""


def test_a_keras_file_another_process_is_writing_is_refused_a_block_file_is_read(small_files):
    """A process holding a file open for writing (h5py's "a", as Keras's save_weights opens
    "w") holds HDF5's exclusive lock. A `.weights.h5`, written in place and unchecksummed,
    could be half written: refused, the model unchanged, and loadable once the writer is
    gone. A `.blocks.h5` is never written in place and is checksummed: read."""
    import subprocess
    import sys

    weights, blocks, expected = small_files
    for path in (weights, blocks):
        writer = subprocess.Popen([sys.executable, "-c", HOLD_OPEN_FOR_WRITING, path],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline() == "open\n"
            model = dense_stack(16, 3, "target")
            before = [v.numpy().copy() for v in model.weights]
            if path == weights:
                with pytest.raises(BlockFileError) as e:
                    load_blocks(model, path)
                assert str(e.value).startswith(
                    f"Cannot read {weights!r} now: another process holds it open for writing "
                    "(HDF5: [Errno 11] Unable to synchronously open file (unable to lock file, errno = 11")
                assert str(e.value).endswith(
                    "values read now could be half written. Load it once that process has "
                    "closed it.")
                assert all(np.array_equal(b, v.numpy())
                           for b, v in zip(before, model.weights, strict=True))
            else:
                load_blocks(model, path)
                assert digest(model) == expected
        finally:
            writer.kill()
            writer.wait(TIMEOUT)
    model = dense_stack(16, 3, "target")
    load_blocks(model, weights)  # the writer is gone
    assert digest(model) == expected


def test_a_keras_file_this_process_holds_open_for_writing_is_refused(small_files):
    """No lock applies within a process, and HDF5 shares one open file: a load while this
    process writes the file (Keras's save_weights in another thread, an h5py.File(path, "a")
    left open) read it as it was being written and loaded a prefix of its layers, ok=True.
    Refused now, the model unchanged; a block file (checksummed) is read."""
    weights, blocks, expected = small_files
    model = dense_stack(16, 3, "target")
    before = [v.numpy().copy() for v in model.weights]
    with h5py.File(weights, "a"):
        with pytest.raises(BlockFileError) as e:
            load_blocks(model, weights)
    assert str(e.value) == (
        f"Cannot read {weights!r} now: this process holds it open for writing (an h5py.File "
        "opened with 'a', 'r+' or 'w', or Keras's save_weights in another thread). Keras's "
        ".weights.h5 and .h5 files carry no checksums, so values read now could be half "
        "written. Close it, then load it.")
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.weights, strict=True))
    with h5py.File(blocks, "a"):
        load_blocks(model, blocks)
    assert digest(model) == expected
    model = dense_stack(16, 3, "target")
    load_blocks(model, weights)  # closed: loads
    assert digest(model) == expected
