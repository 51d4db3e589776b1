"""A full disk: every save succeeds and verifies or raises OSError; nothing else ever happens.

On a small tmpfs (needs root to mount; skipped otherwise, CI runs as root) the free space is
swept across a block file's size in steps of one page: a filler file takes the rest. At each
level a worker process saves new values over the old file — with `save_blocks`, and with
`BlockCheckpoint` inside `fit`. The save either succeeds (the file then holds the new values and
verifies) or raises `OSError` (the file still holds the old values and verifies); no temporary
file remains, and the worker never dies (HDF5 1.14's own writes crashed it with SIGSEGV).
"""

import json
import os
import select
import subprocess
import sys

import pytest

from keras_blockreuse.store import BlockFile
from tests.helpers import small_tmpfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = 4096

WORKER = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
from keras_blockreuse import BlockCheckpoint
from keras_blockreuse.store import save_blocks
L = keras.layers
model = keras.Sequential([keras.Input((32,)), L.Dense(256, name="block_1_0"),
                          L.Dense(64, name="dense_1"), L.Dense(3, name="dense_2")], name="m")
model.compile("sgd", "mse")
x, y = np.zeros((8, 32), "float32"), np.zeros((8, 3), "float32")
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    case = json.loads(line)
    for v in model.weights:
        v.assign(np.full(v.shape, case["counter"], "float32"))
    try:
        if case["how"] == "save_blocks":
            save_blocks(model, case["path"], metadata={"counter": case["counter"]})
        else:
            model.optimizer.learning_rate.assign(0.0)  # the values stay the counter
            checkpoint = BlockCheckpoint(case["path"], metadata={"counter": case["counter"]})
            model.fit(x, y, epochs=1, verbose=0, callbacks=[checkpoint])
        outcome = "saved"
    except OSError as e:
        outcome = "OSError: " + str(e)[:200]
    except Exception as e:
        outcome = "other: " + type(e).__name__ + ": " + str(e)[:300]
    print(json.dumps({"outcome": outcome}), flush=True)
"""


@pytest.fixture
def tmpfs(tmp_path):
    with small_tmpfs(tmp_path / "tmpfs", "2m") as folder:
        yield str(folder)


class Worker:
    def __init__(self):
        self.process = None

    def run(self, case: dict) -> str:
        if self.process is None:
            env = dict(os.environ,
                       PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=env)
            assert json.loads(self.line(300)) == {"ready": True}
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        line = self.line(120)
        if not line:
            self.process.kill()
            self.process.wait()
            died = f"died ({self.process.returncode}): {self.process.stderr.read()[-1000:]}"
            self.process = None
            return died
        return json.loads(line)["outcome"]

    def line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline() if ready else ""

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def leave_free(folder: str, free: int) -> None:
    """Fills the tmpfs so that `free` bytes remain."""
    filler = os.path.join(folder, "filler")
    if os.path.exists(filler):
        os.remove(filler)
    stats = os.statvfs(folder)
    size = stats.f_bavail * stats.f_frsize - free
    if size > 0:
        with open(filler, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)


def counter_of(path: str) -> int:
    with BlockFile(path) as f:
        f.verify()  # every block's layout and values against their checksums
        return f.metadata["counter"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["save_blocks", "BlockCheckpoint"])
def test_every_save_on_a_full_disk_succeeds_or_raises_oserror(tmpfs, how):
    path = os.path.join(tmpfs, "m.blocks.h5")
    worker = Worker()
    outcomes = {}
    try:
        assert worker.run({"how": how, "path": path, "counter": 0}) == "saved"
        size = os.path.getsize(path)
        expected = 0
        step = PAGE if how == "save_blocks" else 2 * PAGE
        levels = list(range(0, size + 3 * PAGE, step))
        for counter, free in enumerate(levels, start=1):
            leave_free(tmpfs, free)
            outcome = worker.run({"how": how, "path": path, "counter": counter})
            outcomes[free] = outcome.split(":")[0]
            assert outcome == "saved" or outcome.startswith("OSError"), (free, outcome)
            if outcome == "saved":
                expected = counter
            assert counter_of(path) == expected, (free, outcome)
            left = sorted(n for n in os.listdir(tmpfs) if n not in ("filler", "m.blocks.h5"))
            assert left == [], (free, left)
    finally:
        worker.close()
    kinds = set(outcomes.values())
    assert kinds == {"saved", "OSError"}, outcomes  # the sweep crossed the boundary
    print(how, outcomes)


def test_convert_on_a_full_disk_names_the_file_and_the_free_space(tmpfs, tmp_path, capsys):
    """A user's report: a full disk during `convert` said only 'keras-blockreuse: error:
    OSError: [Errno 28] No space left on device'. It names the destination, its size and the
    free space; the old destination stays as it was and no temporary file is left."""
    import shutil

    import keras

    from keras_blockreuse.cli import main
    from keras_blockreuse.report import format_bytes

    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(256, name="block_1_0"),
                              keras.layers.Dense(3, name="dense_2")], name="m")
    weights = str(tmp_path / "m.weights.h5")
    model.save_weights(weights)
    destination = os.path.join(tmpfs, "m.blocks.h5")
    assert main(["convert", weights, destination]) == 0
    old = open(destination, "rb").read()
    capsys.readouterr()
    leave_free(tmpfs, 4 * PAGE)  # the file needs about 40 kB
    assert main(["convert", weights, destination]) == 2
    out, err = capsys.readouterr()
    free = format_bytes(shutil.disk_usage(tmpfs).free)
    assert (out, err) == ("", (
        f"keras-blockreuse: error: No space left on device: cannot write {destination!r} "
        f"({format_bytes(len(old))}): {free} free on its disk ({tmpfs}); {destination!r} is "
        "unchanged. Free some space there or write the file to another disk.\n"))
    assert open(destination, "rb").read() == old
    assert sorted(os.listdir(tmpfs)) == ["filler", "m.blocks.h5"]
    os.remove(destination)
    leave_free(tmpfs, 4 * PAGE)
    assert main(["convert", weights, destination]) == 2
    assert "; nothing was written. Free some space" in capsys.readouterr()[1]
    assert sorted(os.listdir(tmpfs)) == ["filler"]
