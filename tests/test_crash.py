"""A save is all or nothing: a writer killed with SIGKILL at random moments never tears a file.

A real writer process saves a model of about 17 MB to one path over and over, each state's
values derived from a counter (`base + counter`), and logs `start k` / `done k` around each
save. The test kills it with SIGKILL at random moments, at least 20 times, and after every kill
checks that the file at the path is either absent (no save has finished yet) or verifies and
loads bit-identical to one saved state - the newest finished one, or the one being saved when
the writer died (its `os.replace` may have run just before the kill) - and that the only other
files are recognisable temporaries, cleaned up by the next save.

Writers are forked from a `forkserver` that has already imported TensorFlow, so each one
starts in well under a second; each builds its own model (its own TensorFlow runtime).
"""

import multiprocessing
import os
import random
import signal
import time

import keras
import numpy as np
import pytest

from keras_blockreuse import latest_checkpoint, load_blocks, save_blocks
from keras_blockreuse.store import BlockFile, is_temporary
from tests.helpers import dense_stack, seeded_values

pytestmark = pytest.mark.slow

KILLS = 20
WIDTH = 1024  # 4 Dense layers of 1024 x 1024 (+ bias): 4.20 M float32 values, 16.8 MB
DEPTH = 4


def build_model(name="writer"):
    return dense_stack(WIDTH, DEPTH, name)


base_values = seeded_values


def state(base: list[np.ndarray], counter: int) -> list[np.ndarray]:
    return [b + np.float32(counter) for b in base]


def writer(path: str, log: str, first_counter: int) -> None:
    """Saves states `first_counter`, `first_counter + 1`, ... to `path` until killed."""
    model = build_model()
    base = base_values(model)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b"ready\n")
    counter = first_counter
    while True:
        for variable, value in zip(model.weights, state(base, counter), strict=True):
            variable.assign(value)
        os.write(fd, f"start {counter}\n".encode())
        save_blocks(model, path, metadata={"counter": counter})
        os.write(fd, f"done {counter}\n".encode())
        counter += 1


def read_log(log: str) -> tuple[list[int], list[int]]:
    started, done = [], []
    with open(log) as fh:
        for line in fh:
            kind, _, value = line.strip().partition(" ")
            if kind == "start":
                started.append(int(value))
            elif kind == "done":
                done.append(int(value))
    return started, done


def wait_ready(log: str, process, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(log) and "ready" in open(log).read():
            return
        assert process.is_alive(), f"the writer died on its own (exit code {process.exitcode})"
        time.sleep(0.02)
    raise AssertionError("the writer did not start")


def temp_pid(name: str) -> int:
    return int(name.rsplit(".kbr-tmp-", 1)[1].split("-", 1)[0])


def test_sigkilled_writer_never_leaves_a_torn_or_mixed_file(tmp_path):
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["keras_blockreuse"])
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = str(folder / "model.blocks.h5")
    reader = build_model("reader")
    base = base_values(reader)
    rng = random.Random(20240611)

    file_counter = None  # the state the file held after the previous kill
    ever_done = False
    previous_temporaries: list[str] = []
    seen = {"absent": 0, "loaded": 0, "killed mid-save": 0, "temporaries cleaned": 0}
    for round_ in range(KILLS):
        log = str(tmp_path / f"writer_{round_}.log")
        process = context.Process(target=writer, args=(path, log, 1000 * (round_ + 1)))
        process.start()
        wait_ready(log, process)
        # About three saves' worth of random delay; the first round kills early, so that the
        # file may not exist yet.
        time.sleep(rng.uniform(0.0, 0.3 if round_ == 0 else 1.5))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        assert process.exitcode == -signal.SIGKILL

        started, done = read_log(log)
        ever_done = ever_done or bool(done)
        others = sorted(n for n in os.listdir(folder) if n != "model.blocks.h5")
        assert all(is_temporary(n) for n in others), others
        if others:
            seen["killed mid-save"] += 1
        if done:
            # The writer's first finished save removed every temporary of earlier writers.
            assert all(temp_pid(n) == process.pid for n in others), others
            if round_ and previous_temporaries:
                seen["temporaries cleaned"] += 1
        previous_temporaries = others

        if not os.path.exists(path):
            assert not ever_done, "a finished save was lost"
            seen["absent"] += 1
            continue
        # Allowed: the newest finished save, or a save whose `os.replace` ran before the kill
        # but whose `done` line was not written; before any finished save of this writer, the
        # state the file held after the previous kill.
        allowed = {c for c in started if not done or c >= done[-1]}
        if not done:
            allowed.add(file_counter)
        with BlockFile(path) as f:
            f.verify()  # every block's layout and values against their checksums
            counter = f.metadata["counter"]
        assert counter in allowed, (counter, sorted(allowed, key=str), done[-1:])
        report = load_blocks(reader, path)
        assert report.variables_loaded == len(reader.weights)
        for variable, expected in zip(reader.weights, state(base, counter), strict=True):
            assert np.array_equal(keras.ops.convert_to_numpy(variable), expected)
        assert latest_checkpoint(folder) == path
        file_counter = counter
        seen["loaded"] += 1

    assert seen["loaded"] >= KILLS // 2, seen
    assert seen["killed mid-save"] >= 1, seen
    # The next save into the folder cleans up the temporaries of the killed writers.
    save_blocks(reader, path, metadata={"counter": -1})
    assert os.listdir(folder) == ["model.blocks.h5"]
    print(seen)
