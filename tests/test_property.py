"""Property: save then load into a freshly built identical model restores every variable bit for bit."""

import keras
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_blockreuse import load_blocks, read_blocks, save_blocks

L = keras.layers
KINDS = ["dense", "conv", "bn", "ln", "nested"]


def _build(spec, name):
    kinds, use_embedding, policy = spec
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        image = keras.Input((6, 6, 2), name="image")
        x = image
        for i, kind in enumerate(kinds):
            layer_name = f"block_{i % 3}_{i}"
            if kind == "dense":
                x = L.Dense(3, name=layer_name)(x)
            elif kind == "conv":
                x = L.Conv2D(3, 3, padding="same", name=layer_name)(x)
            elif kind == "bn":
                x = L.BatchNormalization(name=layer_name)(x)
            elif kind == "ln":
                x = L.LayerNormalization(name=layer_name)(x)
            else:
                x = keras.Sequential(
                    [L.Conv2D(2, 1, name="inner_conv"), L.BatchNormalization(name="inner_bn")],
                    name=f"nested_{i}",
                )(x)
        x = L.Flatten()(x)
        inputs = [image]
        if use_embedding:
            tokens = keras.Input((5,), dtype="int32", name="tokens")
            e = L.Flatten()(L.Embedding(20, 4, name="embedding")(tokens))
            x = L.Concatenate()([x, e])
            inputs.append(tokens)
        outputs = L.Dense(2, name="head")(x)
        return keras.Model(inputs, outputs, name=name)
    finally:
        keras.config.set_dtype_policy(previous)


def _fill(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        values = rng.normal(size=v.shape).astype("float32")
        if "variance" in v.name:
            values = np.abs(values) + 0.1
        v.assign(values)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    spec=st.tuples(
        st.lists(st.sampled_from(KINDS), min_size=1, max_size=5),
        st.booleans(),
        st.sampled_from(["float32", "float16", "bfloat16"]),
    )
)
def test_save_then_load_restores_every_variable_bit_for_bit(tmp_path_factory, spec):
    keras.backend.clear_session()
    model = _build(spec, "original")
    twin = _build(spec, "twin")
    _fill(model, seed=1)
    _fill(twin, seed=2)
    path = save_blocks(model, tmp_path_factory.mktemp("p") / "m.blocks.h5")
    assert read_blocks(path).num_params == model.count_params()
    report = load_blocks(twin, path)
    assert report.ok and not report.untouched
    assert len(model.weights) == len(twin.weights)
    assert any(not v.trainable for v in model.weights) == ("bn" in spec[0] or "nested" in spec[0])
    for a, b in zip(model.weights, twin.weights, strict=True):
        x = np.asarray(keras.ops.convert_to_numpy(a))
        y = np.asarray(keras.ops.convert_to_numpy(b))
        assert a.dtype == b.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), a.path
