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


FREEZE_CHILD = textwrap.dedent(
    """
    import sys, warnings
    import keras
    import numpy as np
    from keras_blockreuse import load_blocks, save_blocks

    def tiny(name="tiny"):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="block_1_0"),
                                 keras.layers.Dense(2, name="head")], name=name)

    assert keras.backend.backend() == "jax"
    path = save_blocks(tiny("source"), sys.argv[1])
    x, y = np.ones((8, 4), "float32"), np.zeros(8, "int32")
    model = tiny()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_blocks(model, path, only=["block_1"], freeze=True)
    print("WARNING", [str(w.message) for w in caught])
    try:
        model.fit(x, y, epochs=1, verbose=0)
    except ValueError as e:
        print("FIT", str(e)[:77])
    try:
        model.get_layer("block_1_0").kernel.numpy()
    except TypeError:
        print("WEIGHTS LOST")
    model = tiny()  # compiled again first: the frozen block stays as loaded
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    load_blocks(model, path, only=["block_1"], freeze=True)
    model.compile("adam", "sparse_categorical_crossentropy")
    kernel = np.array(model.get_layer("block_1_0").kernel.numpy())
    model.fit(x, y, epochs=1, verbose=0)
    print("FROZEN", np.array_equal(kernel, model.get_layer("block_1_0").kernel.numpy()))
    """
)


def test_freeze_after_training_under_jax_warns_that_fit_fails_until_compile(tmp_path):
    """A user's report: under JAX, fit -> load_blocks(freeze=True) -> fit failed with Keras's
    ValueError while the warning said fit() would keep updating the old weights."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, env.get("PYTHONPATH", "")] if p)
    result = subprocess.run([sys.executable, "-c", FREEZE_CHILD, str(tmp_path / "s.blocks.h5")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "WARNING [\"Blocks ['block_1'] of model 'tiny' were frozen after the model was trained "
        "or evaluated (JAX's `evaluate()` builds the optimizer too). Call `model.compile()` "
        "again for the change to take effect in training; under JAX, "
        "until you do, the next `fit()` fails (its optimizer was built for the weights "
        "trainable then) and leaves every variable of the model without a value (Keras's JAX "
        "trainer detaches them for the step), the loaded weights lost with the others.\"]",
        "FIT Argument `optimizer_variables` must be a list of tensors corresponding 1:1 to",
        "WEIGHTS LOST",
        "FROZEN True",
    ]
