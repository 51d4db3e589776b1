"""Start-up: how long the command line and `import keras_blockreuse` take in a fresh process.

Each row is the wall time of a new Python process, from start to exit, as a user's shell sees
it: `keras-blockreuse --help`, `--version`, and `inspect` of the seed CNN's block file (the
I/O benchmark's 1.25 M-parameter model), against the interpreter alone. The target for the
command line is 0.5 s on an idle 2-core machine: block-file commands never import Keras or
TensorFlow. Also `import keras_blockreuse` (measured inside the process, and as a process) and,
for contrast, the first use of a name that needs Keras (`keras_blockreuse.BlockModel`), which
is what every command cost before imports became lazy.

Example:

```
python benchmarks/startup.py --repeats 7
```
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

TARGET_S = 0.5
_IMPORT = ("import time; t = time.perf_counter(); import keras_blockreuse; "
           "print(time.perf_counter() - t)")


def cli() -> list[str]:
    """The `keras-blockreuse` command of this interpreter's environment (else `python -m`)."""
    script = os.path.join(os.path.dirname(sys.executable), "keras-blockreuse")
    if os.path.exists(script) or shutil.which("keras-blockreuse") == script:
        return [script]
    return [sys.executable, "-m", "keras_blockreuse"]


def seed_block_file(folder: str) -> str:
    """Saves the I/O benchmark's seed CNN (24x24x3, 1.25 M parameters) as a block file."""
    import keras

    from keras_blockreuse import save_blocks
    from keras_blockreuse.sweep.zoo import seed_cnn

    keras.utils.set_random_seed(0)
    return save_blocks(seed_cnn((24, 24, 3), 10), os.path.join(folder, "seed_cnn.blocks.h5"))


def time_process(argv: list[str], repeats: int, warmup: int = 1) -> dict:
    """Wall seconds of `repeats` runs of a fresh process (after `warmup` runs), and its output."""
    times, cpu, outs = [], [], []
    for i in range(warmup + repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i >= warmup:
            times.append(elapsed)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            outs.append(result.stdout)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "cpu": statistics.median(cpu), "stdout": outs}


def run(repeats: int = 5, log=print) -> tuple[dict, str]:
    """Measures every row; returns the raw numbers and the markdown section."""
    command = cli()
    shown = "keras-blockreuse" if len(command) == 1 else "python -m keras_blockreuse"
    with tempfile.TemporaryDirectory() as folder:
        path = seed_block_file(folder)
        size = os.path.getsize(path)
        rows = [
            ("`python -c pass` (the interpreter alone)", [sys.executable, "-c", "pass"]),
            (f"`{shown} --help`", command + ["--help"]),
            (f"`{shown} --version`", command + ["--version"]),
            (f"`{shown} inspect seed_cnn.blocks.h5` ({size / 1e6:.1f} MB)",
             command + ["inspect", path]),
            ("`python -c \"import keras_blockreuse\"`", [sys.executable, "-c", _IMPORT]),
            ("`python -c \"import keras_blockreuse; keras_blockreuse.BlockModel\"` (loads Keras)",
             [sys.executable, "-c", "import keras_blockreuse; keras_blockreuse.BlockModel"]),
        ]
        results = {}
        for label, argv in rows:
            log(f"start-up: {label}")
            results[label] = time_process(argv, repeats)
    import_s = statistics.median(float(out.split()[-1]) for out in results[rows[4][0]]["stdout"])
    lines = [
        "## Command-line start-up",
        "",
        f"Wall time of a fresh process, start to exit; median (min-max) of {repeats} runs after "
        f"one warm-up, and its CPU time (user + system, median), which a busy machine inflates "
        f"less. Target for the command line: <= {TARGET_S} s on an idle 2-core machine "
        "(block-file commands import neither Keras nor TensorFlow).",
        "",
        "| command | wall, median | wall, min - max | CPU |",
        "|---|---:|---:|---:|",
    ]
    for label, _ in rows:
        r = results[label]
        lines.append(f"| {label} | {r['median']:.2f} s | {r['min']:.2f} - {r['max']:.2f} s | "
                     f"{r['cpu']:.2f} s |")
    lines += [
        "",
        f"`import keras_blockreuse` itself, timed inside those processes (median): "
        f"{import_s * 1000:.0f} ms.",
        "",
    ]
    results["import_keras_blockreuse_s"] = import_s
    return results, "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    _, text = run(args.repeats, log=lambda m: print(m, file=sys.stderr))
    print(text)


if __name__ == "__main__":
    main()
