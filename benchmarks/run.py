"""Runs the benchmarks and prints one markdown report (and writes it where --out says).

Both runs start with the command line's start-up (`--help`, `--version`, `inspect` of the
seed CNN's block file) and the import time of `keras_blockreuse` (benchmarks/startup.py;
3 runs each quick, 11 full).
`--quick` (CI, under 3 minutes on 2 cores): the seed CNN and ResNet50, 3 repeats, memory of
the full loads from every source; one trial's phases (default 40 epochs), two trials in one
reused process, and Ray with one trial per concurrency level at 10 epochs.
The full run adds VGG16 (138 M parameters), 5 repeats, memory of more loads, the default 40
epochs and more trials. `--memory-only`: the peak memory of the loads alone (a fresh
process per figure; nothing timed, no start-up or sweep section), for a busy machine, where
times mean little. Numbers are measurements, never assertions.

Example:

```
python benchmarks/run.py --quick --out .ci-benchmarks.md
python benchmarks/run.py --out benchmarks/latest.md
python benchmarks/run.py --memory-only --models resnet50
```
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
# Run as a script, this folder would come first on sys.path and its io.py would shadow nothing
# only because the standard io is already imported; import the benchmarks as a package instead.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, _ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def machine() -> str:
    """Cores, memory, load, and the versions that matter, as one markdown line."""
    import h5py
    import keras
    import numpy as np

    import keras_blockreuse
    from keras_blockreuse import store

    versions = [f"Python {platform.python_version()}", f"keras {keras.__version__}",
                f"keras-blockreuse {keras_blockreuse.__version__}", f"h5py {h5py.__version__} "
                f"(HDF5 {h5py.version.hdf5_version})", f"numpy {np.__version__}"]
    for name in ("tensorflow", "ray", "xxhash"):
        try:
            module = __import__(name)
            versions.append(f"{name} {getattr(module, '__version__', getattr(module, 'VERSION', '?'))}")
        except ImportError:
            pass
    memory = "?"
    try:
        with open("/proc/meminfo") as f:
            memory = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{os.cpu_count()} cores ({cpu}), {memory} memory, load average {load} at start; "
            f"{platform.system()} {platform.release()}; " + ", ".join(versions)
            + f"; Keras backend {keras.backend.backend()}; new block files checksummed with "
            f"{store.DATA_HASH}.")


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI report (< 3 minutes)")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--skip-sweep", action="store_true", help="block I/O only")
    parser.add_argument("--skip-io", action="store_true", help="sweep overhead only")
    parser.add_argument("--models", nargs="+", help="I/O models (default: the run's)")
    parser.add_argument("--repeats", type=int, help="I/O repeats (default: the run's)")
    parser.add_argument("--memory-only", action="store_true",
                        help="peak memory of the loads only: nothing timed, no sweep")
    args = parser.parse_args(argv)

    from benchmarks import io as io_bench

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    header = [
        f"# keras-blockreuse benchmarks "
        f"({'memory-only' if args.memory_only else 'quick' if args.quick else 'full'} run)",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: "
        f"{machine()}",
        "",
    ]
    sections = []
    if args.memory_only:
        _, text = io_bench.run(args.models or io_bench.QUICK_MODELS, repeats=0, warmup=0,
                               rss_ops=io_bench.RSS_OPS, log=log)
        sections.append(text)
    else:
        from benchmarks import startup as startup_bench

        _, text = startup_bench.run(repeats=3 if args.quick else 11, log=log)
        sections.append(text)
    if not args.skip_io and not args.memory_only:
        if args.quick:
            _, text = io_bench.run(args.models or io_bench.QUICK_MODELS, repeats=args.repeats or 3,
                                   warmup=1, rss_ops=io_bench.QUICK_RSS_OPS, log=log)
        else:
            _, text = io_bench.run(args.models or io_bench.MODELS, repeats=args.repeats or 7,
                                   warmup=1, rss_ops=io_bench.RSS_OPS, log=log)
        sections.append(text)
    if not args.skip_sweep and not args.memory_only:
        from benchmarks import sweep as sweep_bench

        if args.quick:
            _, text = sweep_bench.run(trials=1, phase_runs=1, levels=((1, False), (2, False)),
                                      ray_epochs=10, log=log, reused=3, sweep=False)
        else:
            _, text = sweep_bench.run(trials=4, phase_runs=3,
                                      levels=((1, False), (2, False), (2, True)), log=log,
                                      reused=5)
        sections.append(text)
    footer = [f"Total benchmark time: {time.perf_counter() - started:.0f} s.", ""]
    report = "\n".join(header) + "\n".join(sections) + "\n" + "\n".join(footer)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return report


if __name__ == "__main__":
    main()
