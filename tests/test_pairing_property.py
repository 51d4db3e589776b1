"""Property: after rebuilding an architecture in the same process (so automatic names shift),
a load from any format gives every variable its own source's value bit for bit — or raises
and changes nothing. Never a silent swap."""

import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keras_blockreuse import BlockFileError, BlockMismatchError, load_blocks, save_blocks
from tests.helpers import snapshot

L = keras.layers
WIDTH = 4  # every Dense is WIDTH x WIDTH, so a swap between same-class layers fits by shape
NET = {"net": ["*"]}
FORMATS = ["weights", "sharded", "keras", "blocks", "legacy"]


@keras.saving.register_keras_serializable(package="test_pairing_property")
class Pair(L.Layer):
    """Two same-class sub-layers, automatic names, held in attributes named against their order
    of use (`second` runs first)."""

    def __init__(self, norm=False, **kwargs):
        super().__init__(**kwargs)
        self.norm = norm
        make = (lambda: L.LayerNormalization()) if norm else (lambda: L.Dense(WIDTH))
        self.second = make()
        self.first = make()

    def build(self, shape):
        self.second.build(shape)
        self.first.build(shape)

    def call(self, x):
        return self.first(self.second(x))

    def get_config(self):
        return {**super().get_config(), "norm": self.norm}


@keras.saving.register_keras_serializable(package="test_pairing_property")
class Stack(L.Layer):
    """A list of same-class sub-layers with automatic names."""

    def __init__(self, count=3, **kwargs):
        super().__init__(**kwargs)
        self.count = count
        self.items = [L.Dense(WIDTH) for _ in range(count)]

    def build(self, shape):
        for item in self.items:
            item.build(shape)

    def call(self, x):
        for item in self.items:
            x = item(x)
        return x

    def get_config(self):
        return {**super().get_config(), "count": self.count}


PIECES = ["dense", "norm", "bn", "pair_dense", "pair_norm", "stack", "nested"]


def build(spec):
    """A Sequential of the spec's pieces, every name automatic."""
    layers = [keras.Input((WIDTH,))]
    for kind, _ in spec:
        if kind == "dense":
            layers.append(L.Dense(WIDTH))
        elif kind == "norm":
            layers.append(L.LayerNormalization())
        elif kind == "bn":
            layers.append(L.BatchNormalization())
        elif kind == "pair_dense":
            layers.append(Pair())
        elif kind == "pair_norm":
            layers.append(Pair(norm=True))
        elif kind == "stack":
            layers.append(Stack(3))
        else:
            layers.append(keras.Sequential([L.Dense(WIDTH), L.BatchNormalization(),
                                            L.Dense(WIDTH)]))
    model = keras.Sequential(layers)
    for (_, frozen), layer in zip(spec, model.layers, strict=True):
        if frozen:  # the first sub-layer of a composite piece, or the layer itself
            inner = layer._flatten_layers(include_self=False, recursive=False)
            (inner[0] if inner else layer).trainable = False
    return model


def fill(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype(keras.backend.standardize_dtype(v.dtype)))


def save(model, folder, kind):
    if kind == "weights":
        path = os.path.join(folder, "m.weights.h5")
        model.save_weights(path)
    elif kind == "sharded":
        path = os.path.join(folder, "m.weights.json")
        keras.saving.save_weights(model, path, max_shard_size=0.0002)
    elif kind == "keras":
        path = os.path.join(folder, "m.keras")
        model.save(path)
    elif kind == "blocks":
        path = os.path.join(folder, "m.blocks.h5")
        save_blocks(model, path, blocks=NET)
    else:
        path = os.path.join(folder, "m.h5")
        model.save(path)
    return path


def own_values(model):
    """Each object's `save_own_variables` values, in structural order (same architecture, same
    order), as arrays."""
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        store: dict = {}
        layer.save_own_variables(store)
        out.append({k: np.array(keras.ops.convert_to_numpy(v)) for k, v in store.items()})
    return out


def own_values_of(model, values: dict) -> list:
    """`own_values(model)` as it was when `values` (a `snapshot`) was taken."""
    now = snapshot(model)
    try:
        for v in model.weights:
            v.assign(values[v.path])
        return own_values(model)
    finally:
        for v in model.weights:
            v.assign(now[v.path])


specs = st.lists(st.tuples(st.sampled_from(PIECES), st.booleans()), min_size=1, max_size=4)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=specs, kind=st.sampled_from(FORMATS), shift=st.integers(0, 3))
def test_rebuilt_architecture_gets_its_own_values_or_nothing(tmp_path_factory, spec, kind, shift):
    keras.backend.clear_session()
    folder = str(tmp_path_factory.mktemp("prop"))
    source = build(spec)
    fill(source, seed=1)
    path = save(source, folder, kind)
    expected = own_values(source)

    [L.Dense(1) for _ in range(shift)], [L.LayerNormalization() for _ in range(shift)]
    target = build(spec)  # same architecture, other automatic names
    fill(target, seed=2)
    before = snapshot(target)
    try:
        report = load_blocks(target, path, blocks=NET)
    except (BlockMismatchError, BlockFileError):
        after = snapshot(target)
        assert all(before[k].tobytes() == after[k].tobytes() for k in before), "changed"
        event(f"{kind}: refused")
        return
    event(f"{kind}: loaded by {getattr(report, 'pairing', {}).get('net')}")
    assert report.ok, str(report)
    got = own_values(target)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.keys() == b.keys(), i
        for key in a:
            assert a[key].tobytes() == b[key].tobytes(), (i, key, kind, spec)
    if kind in ("weights", "sharded", "keras", "blocks"):
        assert report.pairing["net"] in ("name", "path", "order")


def build_created_in(spec, creation):
    """`build(spec)`, its top-level layers created in the order `creation` (a permutation of
    their positions) — a refactor that keeps the architecture but not the automatic names."""
    made: dict[int, object] = {}
    for i in creation:
        made[i] = build([spec[i]]).layers[0]  # created now; taken out of its one-layer model
    model = keras.Sequential([keras.Input((WIDTH,)), *(made[i] for i in range(len(spec)))])
    return model


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=specs, kind=st.sampled_from(FORMATS), data=st.data())
def test_layers_created_in_another_order_in_a_fresh_process_get_their_own_or_nothing(
        tmp_path_factory, spec, kind, data):
    """Saved today, loaded tomorrow (the automatic names start again) into the same
    architecture whose top-level layers the code now creates in another order: every layer
    gets the values of the source layer at its place in the model, or the load raises and
    changes nothing, or it says plainly what it could not check (`report.caveats`)."""
    creation = data.draw(st.permutations(range(len(spec))))
    keras.backend.clear_session(free_memory=False)
    folder = str(tmp_path_factory.mktemp("refactor"))
    source = build(spec)
    fill(source, seed=1)
    path = save(source, folder, kind)
    expected = own_values(source)

    keras.backend.clear_session(free_memory=False)  # as a fresh process
    target = build_created_in(spec, creation)
    fill(target, seed=2)
    before = snapshot(target)
    try:
        report = load_blocks(target, path)
    except (BlockMismatchError, BlockFileError):
        after = snapshot(target)
        assert all(before[k].tobytes() == after[k].tobytes() for k in before), "changed"
        event(f"{kind}: refused")
        return
    if report.caveats:
        event(f"{kind}: loaded with a caveat")
        return
    event(f"{kind}: loaded" if report.ok else f"{kind}: loaded, not ok")
    got = own_values(target)
    untouched = own_values_of(target, before)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.keys() == b.keys(), i
        for key in a:  # its own value; or, where the report is not ok, left as it was
            assert a[key].tobytes() == b[key].tobytes() or (
                not report.ok and a[key].tobytes() == untouched[i][key].tobytes()), (
                i, key, kind, spec, creation)
