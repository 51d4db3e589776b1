"""Block I/O against Keras's own save and load: time, ratios, and peak memory of a load.

For each model (the seed CNN, ResNet50 with `weights=None`, and VGG16 with 138 M parameters in
the full run), in one process, interleaved, after a warm-up, the median of several repeats of:

- `save_blocks` (all blocks, written to a temporary file, fsynced, renamed) against
  `model.save_weights(".weights.h5")` (no fsync); each save starts after an untimed `os.sync()`;
- `load_blocks` (all blocks, checksums verified) against `model.load_weights(".weights.h5")` and
  against Keras's legacy `model.load_weights(".h5", by_name=True)`;
- `load_blocks(only=[one block])` for the smallest and the largest block, with the block's share
  of the file's bytes beside its share of the full load's time;
- the floor: reading the same number of bytes from the page cache into new memory, plus assigning
  arrays already in memory to the same variables with the cheapest assignment the backend has
  (for TensorFlow the raw `AssignVariableOp`, without Keras's per-call checks).

Peak resident memory of a load is measured in a fresh subprocess per measurement: the child
builds the model, resets the kernel's high-water mark (`/proc/self/clear_refs`), loads once, and
reports `VmHWM - VmRSS before the load`.

Example:

```
python benchmarks/io.py --models seed_cnn resnet50 --repeats 3
```
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
LEGACY_LOAD = "load_weights by_name (Keras legacy .h5)"
BLOCKS_LOAD = "load_blocks (all, verified)"
SMALL_LOAD = "load_blocks only=[smallest block]"
LARGE_LOAD = "load_blocks only=[largest block]"
FLOOR_ALL = "floor: read + assign (all)"
FLOOR_SMALL = "floor: read + assign (smallest block)"
FLOOR_LARGE = "floor: read + assign (largest block)"
TWO_PASS = "two-pass load (prototype: verify, then read+assign)"

RSS_OPS = (BLOCKS_LOAD, LARGE_LOAD, KERAS_LOAD, TWO_PASS)
QUICK_RSS_OPS = (BLOCKS_LOAD, KERAS_LOAD)


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
    file_bytes: dict[str, int]
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    rss: dict[str, dict] = dataclasses.field(default_factory=dict)

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
    # Two children at a time: each measures its own process, so they do not disturb each other.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {op: pool.submit(measure_rss, name, op, workdir) for op in rss_ops}
    result.rss = {op: future.result() for op, future in futures.items()}
    return result


def _time_model(name: str, workdir: str, repeats: int, warmup: int) -> ModelResult:
    model = build_model(name)
    blocks = {b: int(block.nbytes) for b, block in kbr.get_blocks(model).items()}
    weighted = {b: n for b, n in blocks.items() if n}
    small = min(weighted, key=weighted.get)
    large = max(weighted, key=weighted.get)
    paths = _paths(workdir, name)
    model.save_weights(paths["keras"])
    kbr.save_blocks(model, paths["blocks"])
    _write_legacy_h5(model, paths["legacy"])
    result = ModelResult(
        name=name,
        params=int(model.count_params()),
        nbytes=sum(blocks.values()),
        blocks=blocks,
        small=small,
        large=large,
        file_bytes={kind: os.path.getsize(p) for kind, p in paths.items()},
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

    ops = {
        KERAS_SAVE: lambda: model.save_weights(paths["keras"]),
        BLOCKS_SAVE: lambda: kbr.save_blocks(model, paths["blocks"]),
        KERAS_LOAD: lambda: model.load_weights(paths["keras"]),
        LEGACY_LOAD: lambda: model.load_weights(paths["legacy"], by_name=True),
        BLOCKS_LOAD: lambda: kbr.load_blocks(model, paths["blocks"]),
        SMALL_LOAD: lambda: kbr.load_blocks(model, paths["blocks"], only=[small]),
        LARGE_LOAD: lambda: kbr.load_blocks(model, paths["blocks"], only=[large]),
        FLOOR_ALL: floor("all", result.nbytes),
        FLOOR_SMALL: floor("small", blocks[small]),
        FLOOR_LARGE: floor("large", blocks[large]),
    }
    result.samples = _interleave(ops, repeats, warmup)
    return result


def _paths(workdir: str, name: str) -> dict[str, str]:
    return {
        "keras": os.path.join(workdir, f"{name}.weights.h5"),
        "blocks": os.path.join(workdir, f"{name}.blocks.h5"),
        "legacy": os.path.join(workdir, f"{name}.h5"),
    }


# --- peak memory, one subprocess per measurement -------------------------------------------


def measure_rss(name: str, op: str, workdir: str) -> dict:
    """Runs one load in a fresh process and returns its peak extra resident memory."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.io", "--child-rss", name, op, workdir],
        capture_output=True, text=True, env=env, cwd=root, timeout=600,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _child_rss(name: str, op: str, workdir: str) -> None:
    model = build_model(name)
    paths = _paths(workdir, name)
    blocks = {b: int(block.nbytes) for b, block in kbr.get_blocks(model).items() if block.nbytes}
    large = max(blocks, key=blocks.get)
    run = {
        BLOCKS_LOAD: lambda: kbr.load_blocks(model, paths["blocks"]),
        LARGE_LOAD: lambda: kbr.load_blocks(model, paths["blocks"], only=[large]),
        KERAS_LOAD: lambda: model.load_weights(paths["keras"]),
        LEGACY_LOAD: lambda: model.load_weights(paths["legacy"], by_name=True),
        TWO_PASS: lambda: two_pass_load(model, paths["blocks"]),
    }[op]
    gc.collect()
    with contextlib.suppress(OSError, ImportError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        reset = False
    before = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "extra": peak - before, "reset": reset}))


def two_pass_load(model, path: str) -> None:
    """A prototype of the bounded-memory alternative, measured for comparison only.

    Pass 1 reads and verifies every block, keeping nothing; pass 2 reads each block again,
    verifies it and assigns it before reading the next. Peak memory is one block, but a
    failure in pass 2 (the file changed on disk, an I/O error) would leave the earlier blocks
    loaded, so the library does not load this way.
    """
    from keras_blockreuse import transfer
    from keras_blockreuse.sources import open_source

    target_blocks = kbr.get_blocks(model)
    with open_source(path) as src:
        plans, report = transfer._plan(src, target_blocks, None, None, None)
        transfer._validate(plans, report, "error")
        for plan in plans:
            src.read_block(plan.source)
        for plan in plans:
            transfer._assign([plan], {plan.source: src.read_block(plan.source)})


# --- report -------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:,.1f} ms"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def markdown(results: list[ModelResult], repeats: int, warmup: int) -> str:
    """The I/O part of the report, as markdown."""
    lines = [
        "## Block I/O against Keras",
        "",
        f"Median of {repeats} interleaved repeats after {warmup} warm-up round(s), one process; "
        "files in the page cache. `vs Keras`: time / Keras's time for the same job "
        "(save_weights, or load_weights of a `.weights.h5`); `vs floor`: time / (reading the "
        "same bytes from the page cache + assigning arrays already in memory). Targets "
        "(ResNet50 and the 100 M model): full load <= 0.5x Keras and <= 1.5x floor; save <= "
        "0.5x Keras; one block: time share <= byte share + 5 points.",
        "",
    ]
    for r in results:
        full_load = r.median(BLOCKS_LOAD)
        lines += [
            f"### {r.name}: {r.params / 1e6:,.2f} M parameters, {_mb(r.nbytes)}, "
            f"{len(r.blocks)} blocks",
            "",
            "| operation | median | min | vs Keras | vs floor | bytes share | time share |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        rows = [
            (KERAS_SAVE, KERAS_SAVE, None, None),
            (BLOCKS_SAVE, KERAS_SAVE, None, None),
            (KERAS_LOAD, KERAS_LOAD, FLOOR_ALL, None),
            (LEGACY_LOAD, KERAS_LOAD, FLOOR_ALL, None),
            (BLOCKS_LOAD, KERAS_LOAD, FLOOR_ALL, None),
            (SMALL_LOAD, KERAS_LOAD, FLOOR_SMALL, r.small),
            (LARGE_LOAD, KERAS_LOAD, FLOOR_LARGE, r.large),
            (FLOOR_ALL, KERAS_LOAD, None, None),
        ]
        for op, ref, floor, block in rows:
            t = r.median(op)
            label = op.replace("smallest block", f"`{r.small}`").replace(
                "largest block", f"`{r.large}`"
            )
            byte_share = time_share = ""
            if block is not None:
                byte_share = f"{100 * r.blocks[block] / r.nbytes:.1f}%"
                time_share = f"{100 * t / full_load:.1f}%" if t and full_load else "-"
            lines.append(
                f"| {label} | {_ms(t)} | {_ms(min(r.samples.get(op) or [0]) or None)} | "
                f"{_ratio(t, r.median(ref)) if op != ref else '1.00x'} | "
                f"{_ratio(t, r.median(floor)) if floor else ''} | {byte_share} | {time_share} |"
            )
        if r.rss:
            largest = r.blocks[r.large]
            budget = largest + 0.1 * r.nbytes
            lines += [
                "",
                f"Peak extra resident memory of one load (fresh process each; model "
                f"{_mb(r.nbytes)}, largest block `{r.large}` {_mb(largest)}, target <= largest "
                f"block + 10% of the model = {_mb(budget)}):",
                "",
                "| load | peak extra RSS | / model size | / target |",
                "|---|---:|---:|---:|",
            ]
            for op, m in r.rss.items():
                if "extra" not in m:
                    lines.append(f"| {op} | failed: {m.get('error')} | | |")
                    continue
                note = "" if m.get("reset", True) else " (high-water mark not reset)"
                lines.append(
                    f"| {op}{note} | {_mb(m['extra'])} | {m['extra'] / r.nbytes:.2f} | "
                    f"{m['extra'] / budget:.2f} |"
                )
        lines.append("")
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
    return results, markdown(results, repeats, warmup)


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
