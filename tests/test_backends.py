"""A .blocks.h5 file written under TensorFlow loads bit for bit under JAX and PyTorch, and back.

Each other backend runs in a subprocess with KERAS_BACKEND set (Keras picks its backend once
per process). Skipped where that backend is not installed; CI installs JAX's CPU package.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_blockreuse import load_blocks, read_blocks, save_blocks
from tests.helpers import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

L = keras.layers


def mixed_model(name="mixed"):
    """Convolutions, batch norm (non-trainable state), a nested model and a dense head."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, name="block_1_0"),
            L.BatchNormalization(name="block_1_1"),
            keras.Sequential([L.Dense(5, name="inner")], name="block_2_0"),
            L.Flatten(),
            L.Dense(3, name="head"),
        ],
        name=name,
    )


# Runs under the other backend: load the TensorFlow file, compare with the reference values,
# write a file of its own.
CHILD = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from keras_blockreuse import load_blocks, read_blocks, save_blocks
    from tests.test_backends import mixed_model

    source, reference, out, backend = sys.argv[1:5]
    assert keras.backend.backend() == backend, keras.backend.backend()
    model = mixed_model()
    report = load_blocks(model, source)
    assert report.ok and report.variables_loaded == 10, report
    expected = np.load(reference)
    for i, v in enumerate(model.weights):
        got = keras.ops.convert_to_numpy(v)
        want = expected[f"w{i}"]
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), v.path
    assert read_blocks(source).backend == "tensorflow"
    save_blocks(model, out)
    print("ok", backend)
    """
)


@pytest.mark.parametrize("backend, module", [("jax", "jax"), ("torch", "torch")])
def test_round_trip_through_another_backend(tmp_path, backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    assert keras.backend.backend() == "tensorflow"
    model = mixed_model()
    randomize(model, seed=17)
    values = [keras.ops.convert_to_numpy(v) for v in model.weights]
    source = save_blocks(model, tmp_path / "tf.blocks.h5")
    reference = tmp_path / "reference.npz"
    np.savez(reference, **{f"w{i}": value for i, value in enumerate(values)})
    out = tmp_path / f"{backend}.blocks.h5"

    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, env.get("PYTHONPATH", "")] if p)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(reference), str(out), backend],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ok {backend}" in result.stdout

    # And back: the file written under the other backend loads here bit for bit.
    assert read_blocks(out).backend == backend
    back = mixed_model("back")
    assert load_blocks(back, out).ok
    for value, v in zip(values, back.weights, strict=True):
        got = keras.ops.convert_to_numpy(v)
        assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), v.path
