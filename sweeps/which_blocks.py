"""Which blocks to transfer? A Ray Tune sweep over block policies (reinit / frozen / tuned).

Run `python sweeps/which_blocks.py --help` for every option. With no arguments it runs the
default sweep: the seed CNN, source = clean handwritten digits, target = the held-out digits
with Gaussian input noise and 10 labels per class; surgical and prefix strategies, 3 seeds;
the report goes to runs/which_blocks/<timestamp>/.

`--help` and bad values are answered before TensorFlow and Ray are imported (seconds): the
options module is loaded from its file, without importing the package (whose `__init__`
imports Keras).
"""

import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _options():
    """`keras_blockreuse.sweep.options`, loaded without running the package's `__init__`."""
    name = "keras_blockreuse.sweep.options"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("keras_blockreuse")  # finds, does not import
    if package is None or not package.submodule_search_locations:
        return None
    path = os.path.join(list(package.submodule_search_locations)[0], "sweep", "options.py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or not os.path.isfile(path):
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the package later imports this very module (one SweepError)
    spec.loader.exec_module(module)
    return module


def precheck(argv=None):
    """Answer --help and reject bad values that need no data; None when the sweep may run."""
    options = _options()
    if options is None:
        return None
    return options.precheck(argv)


def _import_main(verbose: bool):
    """`keras_blockreuse.sweep.run.main`, imported with TensorFlow's C++ start-up lines (absl
    writes them before any log level applies) sent to a temporary file, shown only if the
    import fails; with --verbose, imported as it is."""
    if verbose:
        from keras_blockreuse.sweep.run import main

        return main
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.constant(0)  # the second round of start-up lines comes with the first op
            from keras_blockreuse.sweep.run import main
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return main


if __name__ == "__main__":
    code = precheck()
    if code is not None:
        sys.exit(code)
    try:
        main = _import_main("--verbose" in sys.argv[1:])
    except KeyboardInterrupt:
        print("which_blocks.py: interrupted before any trial started; nothing to resume.",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
