"""Block I/O against Keras's own save and load: time, ratios, and peak memory of a load.

For each model (the seed CNN, ResNet50 with `weights=None`, and VGG16 with 138 M parameters in
the full run), in one process, interleaved, after a warm-up, the median of several repeats of:

- `save_blocks` (all blocks, written to a temporary file, fsynced, renamed) against
  `model.save_weights(".weights.h5")` (no fsync); each save starts after an untimed `os.sync()`;
- `load_blocks` (all blocks, checksums verified) against `model.load_weights(".weights.h5")` and
  against Keras's legacy `model.load_weights(".h5", by_name=True)`; beside Keras's
  `load_weights`, the same with the cache Keras 3.15 means its saving walk to have hitting
  (`keras_skip_sets_cached`): what Keras would take without that bug;
- `load_blocks(only=[one block])` for the smallest and the largest block, with the block's share
  of the file's bytes beside its share of the full load's time;
- from every source kind, the full load and one small "probe" block (ResNet50's `conv2`, 0.9%
  of its bytes): `.blocks.h5`; a Keras `.weights.h5` with `source_model=` against Keras
  `load_weights`; a `.keras` archive against Keras `keras.saving.load_model` of the same file;
- the floor: reading the same number of bytes from the page cache into new memory, plus assigning
  arrays already in memory to the same variables with the cheapest assignment the backend has
  (for TensorFlow the raw `AssignVariableOp`, without Keras's per-call checks).

Peak resident memory of a load is measured in a fresh subprocess per measurement: the child
builds the model and waits; the parent then samples the child's `/proc/<pid>/status` while it
loads, so anonymous (`RssAnon`) and file-backed (`RssFile`) memory are reported separately,
beside the exact peak of the total (`VmHWM`, reset before the load with `/proc/self/clear_refs`).
Only public API of keras_blockreuse is used, except in one table: the parts of the probe
block's load from a `.blocks.h5` and from a `.weights.h5` that its promises require, timed
with each reader's own functions (`blocks_probe_parts`, `weights_probe_parts`), beside the
load.

Example:

```
python benchmarks/io.py --models seed_cnn resnet50 --repeats 3
```
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_blockreuse as kbr  # noqa: E402

MODELS = ("seed_cnn", "resnet50", "vgg16")
QUICK_MODELS = ("seed_cnn", "resnet50")

KERAS_SAVE = "save_weights (Keras)"
BLOCKS_SAVE = "save_blocks"
KERAS_LOAD = "load_weights (Keras)"
KERAS_LOAD_CACHED = "load_weights (Keras), its skip-set cache made to hit"
LEGACY_LOAD = "load_weights by_name (Keras legacy .h5)"
BLOCKS_LOAD = "load_blocks (all, verified)"
SMALL_LOAD = "load_blocks only=[smallest block]"
LARGE_LOAD = "load_blocks only=[largest block]"
FLOOR_ALL = "floor: read + assign (all)"
FLOOR_SMALL = "floor: read + assign (smallest block)"
FLOOR_LARGE = "floor: read + assign (largest block)"
PROBE_LOAD = "load_blocks only=[probe block] (.blocks.h5)"
KERAS_LOAD_MODEL = "load_model (Keras, .keras)"
ARCHIVE_LOAD = "load_blocks from .keras (all)"
DEFLATED_LOAD = "load_blocks from .keras, deflated (all)"
ARCHIVE_PROBE = "load_blocks from .keras only=[probe block]"
WEIGHTS_LOAD = "load_blocks from .weights.h5, source_model= (all)"
WEIGHTS_PROBE = "load_blocks from .weights.h5, source_model= only=[probe block]"

RSS_OPS = (KERAS_LOAD, BLOCKS_LOAD, WEIGHTS_LOAD, ARCHIVE_LOAD, DEFLATED_LOAD, LARGE_LOAD)
QUICK_RSS_OPS = (KERAS_LOAD, BLOCKS_LOAD, WEIGHTS_LOAD, ARCHIVE_LOAD)
MEMORY_ONLY = (DEFLATED_LOAD,)
"""Loads measured for memory only, not timed (inflating the archive would dominate a run)."""
PROBE = "conv2"
"""The small block loaded alone from every source: ResNet50's `conv2` (0.9% of its bytes);
models without a `conv2` block use their smallest block with weights."""


def build_model(name: str) -> keras.Model:
    """Builds a benchmark model with fixed seeds.

    `seed_cnn` is the seed workflow's CNN at 24x24x3 (1.25 M parameters, as the Keras CIFAR-10
    example's valid-padded version has); `resnet50` and `vgg16` are keras.applications models
    with random weights (`weights=None`); VGG16 has 138 M parameters.
    """
    keras.utils.set_random_seed(0)
    if name == "seed_cnn":
        from keras_blockreuse.sweep.zoo import seed_cnn

        return seed_cnn((24, 24, 3), 10)
    if name == "resnet50":
        return keras.applications.ResNet50(weights=None)
    if name == "vgg16":
        return keras.applications.VGG16(weights=None)
    raise ValueError(f"Unknown benchmark model {name!r}; expected one of {MODELS}.")


# --- the floor ----------------------------------------------------------------------------


def cheapest_assign(variables: list, arrays: list[np.ndarray]) -> None:
    """Assigns arrays already in memory to variables with the backend's cheapest call."""
    try:
        from tensorflow.python.ops import gen_resource_variable_ops as ops

        handles = [v.value.handle for v in variables]
    except (ImportError, AttributeError):
        for variable, array in zip(variables, arrays, strict=True):
            variable.assign(array)
        return
    for handle, array in zip(handles, arrays, strict=True):
        ops.assign_variable_op(handle, array)


def read_bytes(path: str, nbytes: int) -> bytes:
    """Reads `nbytes` of `path` (from the page cache once warm) into new memory."""
    with open(path, "rb", buffering=0) as f:
        return f.read(nbytes)


@contextlib.contextmanager
def keras_skip_sets_cached(skip_sets: dict[str, set]):
    """Keras's saving walk with its skip-set cache hitting, for one comparison row.

    Keras 3.15's `saving_lib.get_attr_skipset` stores the set of attributes to skip under
    `saving_attr_skipset_<type>` and looks it up under `saving_attr_skiplist_<type>`, so it
    builds a reference `Layer()` for every object its saver walks (178 times in one
    `load_weights` of ResNet50). Inside this context the sets `skip_sets` holds (computed by
    Keras beforehand, by type) are where Keras looks, as its cache intends; afterwards they
    are removed again. Keras internals, used by this benchmark only.
    """
    from keras.src.backend.common import global_state

    for obj_type, skip_set in skip_sets.items():
        global_state.set_global_attribute(f"saving_attr_skiplist_{obj_type}", skip_set)
    try:
        yield
    finally:
        for obj_type in skip_sets:
            global_state.set_global_attribute(f"saving_attr_skiplist_{obj_type}", None)


def keras_skip_sets() -> dict[str, set]:
    """Keras's own skip sets for the types its saver meets in these benchmarks' models."""
    from keras.src.saving import saving_lib

    return {t: saving_lib.get_attr_skipset(t)
            for t in ("Layer", "Functional", "Sequential", "Operation")}


# --- measurements -------------------------------------------------------------------------


@dataclasses.dataclass
class ModelResult:
    """Everything measured for one model."""

    name: str
    params: int
    nbytes: int
    blocks: dict[str, int]  # block -> bytes
    small: str
    large: str
    probe: str
    file_bytes: dict[str, int]
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    rss: dict[str, dict] = dataclasses.field(default_factory=dict)
    parts: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)

    def median(self, op: str) -> float | None:
        values = self.samples.get(op)
        return statistics.median(values) if values else None


def _block_variables(model, name: str) -> list:
    return list(kbr.get_blocks(model)[name].variables)


def _write_legacy_h5(model, path: str) -> None:
    import h5py

    try:
        from keras.src.legacy.saving import legacy_h5_format
    except ImportError:  # a Keras without the private module: a whole legacy .h5 model
        model.save(path)
        return
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _interleave(ops: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict:
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for round_ in range(warmup + repeats):
        for name, op in ops.items():
            gc.collect()
            if name in (KERAS_SAVE, BLOCKS_SAVE) and hasattr(os, "sync"):
                # Untimed: no save starts behind the previous one's dirty pages (Keras does not
                # fsync, so without this the next writer would pay for its write-back).
                os.sync()
            start = time.perf_counter()
            op()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                samples[name].append(elapsed)
    return samples


def measure_model(name: str, workdir: str, repeats: int, warmup: int, rss_ops) -> ModelResult:
    """Times every operation on one model, then measures peak memory in subprocesses."""
    result = _time_model(name, workdir, repeats, warmup)
    gc.collect()
    if DEFLATED_LOAD in rss_ops:  # only then: deflating ResNet50's archive takes seconds
        paths = _paths(workdir, name)
        _deflate(paths["archive"], paths["deflated"])
    # One child at a time: the parent samples each child's memory while it loads.
    result.rss = {op: measure_rss(name, op, workdir) for op in rss_ops}
    return result


def _pick_blocks(model) -> tuple[dict[str, int], str, str, str]:
    blocks = {b: int(block.nbytes) for b, block in kbr.get_blocks(model).items()}
    weighted = {b: n for b, n in blocks.items() if n}
    small = min(weighted, key=weighted.get)
    large = max(weighted, key=weighted.get)
    probe = PROBE if PROBE in weighted else small
    return blocks, small, large, probe


def _load_ops(model, paths: dict[str, str], small: str, large: str, probe: str) -> dict:
    """Every load measured, by name: what each one runs (public API only)."""
    load = kbr.load_blocks
    return {
        KERAS_LOAD: lambda: model.load_weights(paths["keras"]),
        LEGACY_LOAD: lambda: model.load_weights(paths["legacy"], by_name=True),
        BLOCKS_LOAD: lambda: load(model, paths["blocks"]),
        SMALL_LOAD: lambda: load(model, paths["blocks"], only=[small]),
        LARGE_LOAD: lambda: load(model, paths["blocks"], only=[large]),
        PROBE_LOAD: lambda: load(model, paths["blocks"], only=[probe]),
        KERAS_LOAD_MODEL: lambda: keras.saving.load_model(paths["archive"]),
        ARCHIVE_LOAD: lambda: load(model, paths["archive"]),
        ARCHIVE_PROBE: lambda: load(model, paths["archive"], only=[probe]),
        DEFLATED_LOAD: lambda: load(model, paths["deflated"]),
        WEIGHTS_LOAD: lambda: load(model, paths["keras"], source_model=model),
        WEIGHTS_PROBE: lambda: load(model, paths["keras"], source_model=model, only=[probe]),
    }


def _time_model(name: str, workdir: str, repeats: int, warmup: int) -> ModelResult:
    model = build_model(name)
    blocks, small, large, probe = _pick_blocks(model)
    paths = _paths(workdir, name)
    model.save_weights(paths["keras"])
    kbr.save_blocks(model, paths["blocks"])
    _write_legacy_h5(model, paths["legacy"])
    model.save(paths["archive"])
    result = ModelResult(
        name=name,
        params=int(model.count_params()),
        nbytes=sum(blocks.values()),
        blocks=blocks,
        small=small,
        large=large,
        probe=probe,
        file_bytes={kind: os.path.getsize(p) for kind, p in paths.items() if os.path.exists(p)},
    )
    variables = {
        "all": list(model.weights),
        "small": _block_variables(model, small),
        "large": _block_variables(model, large),
    }
    arrays = {k: [np.array(keras.ops.convert_to_numpy(v)) for v in vs] for k, vs in variables.items()}

    def floor(kind: str, nbytes: int) -> Callable[[], None]:
        def run() -> None:
            read_bytes(paths["blocks"], nbytes)
            cheapest_assign(variables[kind], arrays[kind])

        return run

    skip_sets = keras_skip_sets()

    def keras_load_cached() -> None:
        with keras_skip_sets_cached(skip_sets):
            model.load_weights(paths["keras"])

    ops = {
        KERAS_SAVE: lambda: model.save_weights(paths["keras"]),
        BLOCKS_SAVE: lambda: kbr.save_blocks(model, paths["blocks"]),
        **{op: run for op, run in _load_ops(model, paths, small, large, probe).items()
           if op not in MEMORY_ONLY},
        KERAS_LOAD_CACHED: keras_load_cached,
        FLOOR_ALL: floor("all", result.nbytes),
        FLOOR_SMALL: floor("small", blocks[small]),
        FLOOR_LARGE: floor("large", blocks[large]),
    }
    for load, measure in ((PROBE_LOAD, blocks_probe_parts), (WEIGHTS_PROBE, weights_probe_parts)):
        parts_op, parts = measure(model, paths["blocks" if load == PROBE_LOAD else "keras"], probe)
        if parts_op is not None:  # in each round right after the load it takes apart
            at = list(ops).index(load) + 1
            ops = dict([*list(ops.items())[:at], (f"{load}: its parts", parts_op),
                        *list(ops.items())[at:]])
            result.parts[load] = parts
    result.samples = _interleave(ops, repeats, warmup)
    result.parts = {load: {part: times[warmup:] for part, times in parts.items()}
                    for load, parts in result.parts.items()}
    return result


# --- the parts of a one-block load that its promises require --------------------------------

TARGET_BLOCKS = "the target model's blocks (`get_blocks`)"
ASSIGN = "assign: the backend's cheapest call"
CLOSE = "close the file"
BLOCKS_PARTS = (
    "open the file: its header read and verified",
    "the block's layout read and verified",
    "the block's values: each dataset opened, checked and read; the block's checksum",
    TARGET_BLOCKS, ASSIGN, CLOSE,
)
WEIGHTS_PARTS = (
    "open the file: its links walked (none may lead out of it), every group's header checked "
    "(the layers' names and types)",
    "the block's datasets: headers checked, opened, checked, read",
    TARGET_BLOCKS, ASSIGN, CLOSE,
)


def _timed_pass(names: tuple[str, ...], steps: list[Callable[[], None]]
                ) -> tuple[Callable[[], None], dict[str, list[float]]]:
    """A pass that runs `steps` in order and appends each one's time to its part's list."""
    parts: dict[str, list[float]] = {name: [] for name in names}

    def run() -> None:
        for name, step in zip(names, steps, strict=True):
            start = time.perf_counter()
            step()
            parts[name].append(time.perf_counter() - start)

    return run, parts


def blocks_probe_parts(model, path: str, probe: str
                       ) -> tuple[Callable[[], None], dict[str, list[float]]]:
    """A pass through the parts of `load_blocks(model, path, only=[probe])` from a
    `.blocks.h5` that its promises require, with the file's own reader
    (`keras_blockreuse.store.BlockFile`), and the times of each part (one entry per pass):
    opening the file (its header read and its checksum verified), the block's layout
    (verified), the block's values (every dataset opened, its storage checked, its values
    read, the block's checksum verified), the target model's blocks, the cheapest assignment,
    closing the file. Planning, pairing, validation and the report are not in these parts.
    """
    from keras_blockreuse.store import BlockFile

    state: dict = {}

    def values() -> None:
        state["values"] = state["file"].read_block(probe)

    def target() -> None:
        state["layers"] = {layer.name: layer for layer in kbr.get_blocks(model)[probe].layers}

    def assign() -> None:  # stored key i is the layer's weight i (Keras's own order)
        layers = state.pop("layers")
        pairs = [(layers[layer].weights[int(key)], array)
                 for layer, arrays in state.pop("values").items() for key, array in arrays.items()]
        cheapest_assign([v for v, _ in pairs], [a for _, a in pairs])

    return _timed_pass(BLOCKS_PARTS, [
        lambda: state.update(file=BlockFile(path)),
        lambda: state["file"].block(probe),
        values,
        target,
        assign,
        lambda: state.pop("file").close(),
    ])


def weights_probe_parts(model, path: str, probe: str
                        ) -> tuple[Callable[[], None] | None, dict[str, list[float]]]:
    """A pass through the parts of `load_blocks(model, path, source_model=...,
    only=[probe])` from a Keras `.weights.h5` that its promises require, with the reader's own
    functions, and the times of each part (one entry per pass): opening the file checked as
    every load opens it (no link out of it, the object headers that name the layers checked
    before a name is read; `open_h5`), then for the block's variables only: each dataset's
    header checked, the dataset opened, its storage and size checked and its values read
    (`check_dataset`, `read_checked`); the target model's blocks; the cheapest assignment;
    closing the file. Planning, pairing, validation and the report are not in these parts.
    The pass is None where the block's layers cannot be found by the file's names (a nested
    layer, a file without names).
    """
    import h5py

    from keras_blockreuse.sources.hdf5 import (
        check_dataset,
        direct_descriptor,
        open_h5,
        read_checked,
    )
    from keras_blockreuse.sources.keras_weights import in_vars_group

    layers = [layer for layer in kbr.get_blocks(model)[probe].layers if layer.weights]
    with h5py.File(path, "r") as f:  # each layer's group, by the name Keras records on it
        keys = {f["layers"][key]["vars"].attrs["name"]: key for key in f["layers"]
                if "name" in f["layers"][key]["vars"].attrs}
    if any(layer.name not in keys for layer in layers):
        return None, {}
    datasets = [f"layers/{keys[layer.name]}/vars/{i}".encode()
                for layer in layers for i in range(len(layer.weights))]
    size = os.path.getsize(path)
    state: dict = {}

    def read() -> None:
        f = state["file"]
        addresses = {name: address for name, _, address in f.objects}
        descriptor = direct_descriptor(f)
        arrays = state["arrays"] = []
        for name in datasets:
            marked = b"dtype" in f.header(addresses[name])[1]
            dataset = h5py.h5d.open(f.id, name)
            arrays.append(read_checked(dataset, check_dataset(dataset, size, path, marked),
                                       None, descriptor))

    return _timed_pass(WEIGHTS_PARTS, [
        lambda: state.update(file=open_h5(path, defer=in_vars_group)),
        read,
        lambda: state.update(variables=kbr.get_blocks(model)[probe].variables),
        lambda: cheapest_assign(state.pop("variables"), state.pop("arrays")),
        lambda: state.pop("file").close(),
    ])


def _paths(workdir: str, name: str) -> dict[str, str]:
    return {
        "keras": os.path.join(workdir, f"{name}.weights.h5"),
        "blocks": os.path.join(workdir, f"{name}.blocks.h5"),
        "legacy": os.path.join(workdir, f"{name}.h5"),
        "archive": os.path.join(workdir, f"{name}.keras"),
        "deflated": os.path.join(workdir, f"{name}_deflated.keras"),
    }


def _deflate(source: str, path: str) -> None:
    """The `.keras` archive again with every member deflated (Keras writes them stored)."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)


# --- peak memory, one subprocess per measurement -------------------------------------------

_KINDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def measure_rss(name: str, op: str, workdir: str, interval: float = 0.0005) -> dict:
    """Runs one load in a fresh process and returns its peak extra resident memory, by kind.

    The child builds the model, reports its memory and waits; the parent then tells it to
    load and reads the child's `/proc/<pid>/status` every `interval` seconds until the load
    ends, so anonymous (`RssAnon`: private copies, heap) and file-backed (`RssFile`: mapped
    files, page cache) memory have their own peaks. The child also reports its exact peak of
    the total (`VmHWM`, reset before the load) and `smaps_rollup` before and after.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.io", "--child-rss", name, op, workdir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=root,
    )
    try:
        ready = proc.stdout.readline()
        if not ready.startswith("{"):
            proc.kill()
            _, err = proc.communicate(timeout=60)
            return {"error": (err or ready).strip().splitlines()[-1:] or ["no output"]}
        before = json.loads(ready)
        peaks = dict(before["status"])
        done = threading.Event()

        def sample() -> None:
            status_path = f"/proc/{proc.pid}/status"
            while not done.is_set():
                try:
                    now = _status(status_path)
                except (OSError, KeyError):
                    return
                for kind in _KINDS:
                    peaks[kind] = max(peaks[kind], now[kind])
                time.sleep(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        done.set()
        sampler.join()
        proc.stdin.close()
        proc.wait(timeout=120)
        if not line.startswith("{"):
            err = proc.stderr.read()
            return {"error": (err or line).strip().splitlines()[-1:] or ["no output"]}
        after = json.loads(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for kind in _KINDS:
        peaks[kind] = max(peaks[kind], after["status"][kind])
    extra = {kind: peaks[kind] - before["status"][kind] for kind in _KINDS}
    return {
        "extra": after["hwm"] - before["status"]["VmRSS"] if after["reset"] else extra["VmRSS"],
        "anon": extra["RssAnon"],
        "file": extra["RssFile"],
        "shmem": extra["RssShmem"],
        "sampled_total": extra["VmRSS"],
        "reset": after["reset"],
        "smaps_before": before["smaps"],
        "smaps_after": after["smaps"],
        "seconds": after["seconds"],
    }


def _status(path: str = "/proc/self/status") -> dict[str, int]:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in _KINDS or key == "VmHWM":
                out[key] = int(rest.split()[0]) * 1024
    return out


def _smaps_rollup() -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError), open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss_Anon", "Pss_File", "Anonymous", "Private_Dirty", "Shared_Clean"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _child_rss(name: str, op: str, workdir: str) -> None:
    model = build_model(name)
    paths = _paths(workdir, name)
    _, small, large, probe = _pick_blocks(model)
    run = _load_ops(model, paths, small, large, probe)[op]
    gc.collect()
    with contextlib.suppress(OSError, ImportError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(json.dumps({"status": _status(), "smaps": _smaps_rollup()}), flush=True)
    sys.stdin.readline()
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        reset = False
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    status = _status()
    print(json.dumps({"status": status, "hwm": status["VmHWM"], "reset": reset,
                      "smaps": _smaps_rollup(), "seconds": seconds}), flush=True)


# --- report -------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:,.1f} ms"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def _row_label(r: ModelResult, op: str) -> str:
    return (op.replace("smallest block", f"`{r.small}`").replace("largest block", f"`{r.large}`")
            .replace("probe block", f"`{r.probe}`"))


def markdown(results: list[ModelResult], repeats: int, warmup: int) -> str:
    """The I/O part of the report, as markdown."""
    timed = (
        f"Median of {repeats} interleaved repeats after {warmup} warm-up round(s), one process; "
        "files in the page cache. `vs Keras`: time / Keras's time for the same job "
        "(save_weights; load_weights of a `.weights.h5`; for `.keras` sources, `load_model` of "
        "the same file); `vs floor`: time / (reading the same bytes from the page cache + "
        "assigning arrays already in memory). "
    ) if repeats else "Memory only: nothing timed. "
    lines = [
        "## Block I/O against Keras",
        "",
        timed + "`load_blocks` always verifies and loads all or nothing; the target model is "
        "the same architecture (block rule detected).",
        "",
    ]
    for r in results:
        full_load = r.median(BLOCKS_LOAD)
        lines += [
            f"### {r.name}: {r.params / 1e6:,.2f} M parameters, {_mb(r.nbytes)}, "
            f"{len(r.blocks)} blocks",
            "",
        ]
        if any(r.samples.values()):
            lines += [
                "| operation | median | min | vs Keras | vs floor | bytes share | time share |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
        rows = [
            (KERAS_SAVE, KERAS_SAVE, None, None, full_load),
            (BLOCKS_SAVE, KERAS_SAVE, None, None, full_load),
            (KERAS_LOAD, KERAS_LOAD, FLOOR_ALL, None, full_load),
            (KERAS_LOAD_CACHED, KERAS_LOAD, FLOOR_ALL, None, full_load),
            (LEGACY_LOAD, KERAS_LOAD, FLOOR_ALL, None, full_load),
            (BLOCKS_LOAD, KERAS_LOAD, FLOOR_ALL, None, full_load),
            (SMALL_LOAD, KERAS_LOAD, FLOOR_SMALL, r.small, full_load),
            (LARGE_LOAD, KERAS_LOAD, FLOOR_LARGE, r.large, full_load),
            (PROBE_LOAD, KERAS_LOAD, None, r.probe, full_load),
            (WEIGHTS_LOAD, KERAS_LOAD, FLOOR_ALL, None, None),
            (WEIGHTS_PROBE, KERAS_LOAD, None, r.probe, r.median(WEIGHTS_LOAD)),
            (KERAS_LOAD_MODEL, KERAS_LOAD_MODEL, None, None, None),
            (ARCHIVE_LOAD, KERAS_LOAD_MODEL, None, None, None),
            (ARCHIVE_PROBE, KERAS_LOAD_MODEL, None, r.probe, r.median(ARCHIVE_LOAD)),
            (FLOOR_ALL, KERAS_LOAD, None, None, None),
        ]
        for op, ref, floor, block, whole in rows:
            t = r.median(op)
            if t is None:
                continue
            byte_share = time_share = ""
            if block is not None:
                byte_share = f"{100 * r.blocks[block] / r.nbytes:.1f}%"
                time_share = f"{100 * t / whole:.1f}%" if whole else "-"
            lines.append(
                f"| {_row_label(r, op)} | {_ms(t)} | {_ms(min(r.samples.get(op) or [0]) or None)} | "
                f"{_ratio(t, r.median(ref)) if op != ref else '1.00x'} | "
                f"{_ratio(t, r.median(floor)) if floor else ''} | {byte_share} | {time_share} |"
            )
        if r.rss:
            lines += [
                "",
                f"Peak extra resident memory of one load (a fresh process each; model "
                f"{_mb(r.nbytes)}, largest block `{r.large}` {_mb(r.blocks[r.large])}). "
                "`total`: the kernel's high-water mark (`VmHWM`, reset before the load) minus "
                "the resident memory before it; `anonymous` (`RssAnon`: heap, private copies) "
                "and `file-backed` (`RssFile`: mapped files and libraries) are peaks of the "
                "child's `/proc/<pid>/status` sampled by the parent every 0.5 ms during the "
                "load, minus their values before it:",
                "",
                "| load | total | anonymous | file-backed | total / Keras load_weights | "
                "anonymous / Keras |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            keras_rss = r.rss.get(KERAS_LOAD, {})
            for op, m in r.rss.items():
                if "extra" not in m:
                    lines.append(f"| {_row_label(r, op)} | failed: {m.get('error')} | | | | |")
                    continue
                note = "" if m.get("reset", True) else " (high-water mark not reset)"
                lines.append(
                    f"| {_row_label(r, op)}{note} | {_mb(m['extra'])} | {_mb(m['anon'])} | "
                    f"{_mb(m['file'])} | {_ratio(m['extra'], keras_rss.get('extra'))} | "
                    f"{_ratio(m['anon'], keras_rss.get('anon'))} |"
                )
        if r.parts:
            lines += ["", *_parts_markdown(r)]
        lines.append("")
    return "\n".join(lines)


def _parts_markdown(r: ModelResult) -> list[str]:
    """For each one-block load taken apart: the parts its promises require, beside it."""
    lines = [
        f"What `{r.probe}` costs at least, from each source taken apart: the parts its "
        "promises require, timed in one pass with the reader's own functions, in each round "
        "right after the load (so with the caches it left); medians. What is left is the "
        "load's planning, pairing, validation and report.",
        "",
        "| load | part | median |",
        "|---|---|---:|",
    ]
    for load, parts in r.parts.items():
        label = _row_label(r, load)
        medians = {part: statistics.median(times) for part, times in parts.items() if times}
        required = sum(medians.values())
        lines += [f"| {label} | {part} | {_ms(t)} |" for part, t in medians.items()]
        lines.append(f"| {label} | **these parts together** | **{_ms(required)}** |")
        whole = r.median(load)
        if whole is not None:
            lines += [f"| {label} | the load | {_ms(whole)} |",
                      f"| {label} | the rest: planning, pairing, validation, the report | "
                      f"{_ms(whole - required)} |"]
    return lines


def targets(results: list[ModelResult]) -> str:
    """The load targets of issue 16, one row each, for every model that has the numbers."""
    lines = [
        "### Load targets",
        "",
        "| target | " + " | ".join(r.name for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]

    def cell(r, a, b) -> str:
        ta, tb = r.median(a), r.median(b)
        return "-" if ta is None or not tb else f"{_ms(ta)} / {_ms(tb)} = {ta / tb:.2f}x"

    def mem(r, op=BLOCKS_LOAD) -> str:
        a, k = r.rss.get(op, {}), r.rss.get(KERAS_LOAD, {})
        if "extra" not in a or "extra" not in k:
            return "-"
        return (f"{_mb(a['extra'])} / {_mb(k['extra'])} = {a['extra'] / k['extra']:.2f}x "
                f"(anonymous {_mb(a['anon'])} / {_mb(k['anon'])})")

    def share(r, op, whole) -> str:
        t, w = r.median(op), r.median(whole)
        if t is None or not w:
            return "-"
        return (f"{_ms(t)}: {100 * t / w:.1f}% of the time for "
                f"{100 * r.blocks[r.probe] / r.nbytes:.1f}% of the bytes")

    rows = [
        ("peak extra memory of a full load from `.blocks.h5` / Keras `load_weights` "
         "(target <= 1.0x)", mem),
        ("the same from `.weights.h5`, `source_model=` (target <= 1.0x)",
         lambda r: mem(r, WEIGHTS_LOAD)),
        ("the same from `.keras` (target <= 1.0x)", lambda r: mem(r, ARCHIVE_LOAD)),
        ("the same from a deflated `.keras` (target <= 1.0x)", lambda r: mem(r, DEFLATED_LOAD)),
        ("full load from `.keras` / Keras `load_model` (target <= 1.0x)",
         lambda r: cell(r, ARCHIVE_LOAD, KERAS_LOAD_MODEL)),
        ("probe block from `.keras` / Keras `load_model` (target <= 0.75x)",
         lambda r: cell(r, ARCHIVE_PROBE, KERAS_LOAD_MODEL)),
        ("probe block from `.weights.h5`, `source_model=` (target <= 20 ms)",
         lambda r: _ms(r.median(WEIGHTS_PROBE))),
        ("full load from `.weights.h5`, `source_model=` / Keras `load_weights` "
         "(target <= 0.5x)", lambda r: cell(r, WEIGHTS_LOAD, KERAS_LOAD)),
        ("probe block from `.blocks.h5` (target <= 5 ms; time share <= byte share + 5 points)",
         lambda r: share(r, PROBE_LOAD, BLOCKS_LOAD)),
    ]
    for label, fn in rows:
        cells = [fn(r) for r in results]
        if any(cell != "-" for cell in cells):  # a memory-only run has no times
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    probes = ", ".join(f"{r.name}: `{r.probe}`" for r in results)
    lines += ["", f"Probe blocks: {probes}.", ""]
    return "\n".join(lines)


def run(models=QUICK_MODELS, repeats: int = 3, warmup: int = 1, rss_ops=QUICK_RSS_OPS,
        workdir: str | None = None, log=print) -> tuple[list[ModelResult], str]:
    """Measures every model and returns the results and the markdown section."""
    results = []
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kbr-bench-"))
        for name in models:
            start = time.perf_counter()
            results.append(measure_model(name, workdir, repeats, warmup, rss_ops))
            log(f"[io] {name}: {time.perf_counter() - start:.1f} s")
            keras.backend.clear_session()
            gc.collect()
    return results, markdown(results, repeats, warmup) + "\n" + targets(results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(QUICK_MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rss", nargs="*", default=list(QUICK_RSS_OPS), help="loads to measure memory of")
    parser.add_argument("--data-hash", choices=("xxh3_128", "sha256"), help="checksum for new files")
    parser.add_argument("--child-rss", nargs=3, metavar=("MODEL", "OP", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.data_hash:
        from keras_blockreuse import store

        store.DATA_HASH = args.data_hash
    if args.child_rss:
        _child_rss(*args.child_rss)
        return
    _, text = run(args.models, args.repeats, args.warmup, args.rss, log=lambda m: print(m, file=sys.stderr))
    print(text)


if __name__ == "__main__":
    main()
