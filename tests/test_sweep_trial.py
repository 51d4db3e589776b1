"""Tests for keras_blockreuse.sweep.trial, called directly (no Ray; tune.report replaced)."""

import numpy as np
import pytest
from ray import tune

from keras_blockreuse import read_blocks
from keras_blockreuse.sweep import zoo as zoo_module
from keras_blockreuse.sweep.data import make_task
from keras_blockreuse.sweep.reuse import MODELS
from keras_blockreuse.sweep.space import SweepError
from keras_blockreuse.sweep.trial import evaluate, train_source, train_trial


@pytest.fixture(scope="module")
def tiny():
    """Few-shot digits and a briefly trained source model (bytes of its block file)."""
    import keras

    keras.backend.clear_session()
    data = make_task("digits", task="shift", shift="noise", shots=3, seed=0)
    blob, metrics = train_source(data, epochs=2, batch_size=64, seed=0)
    return data, blob, metrics


@pytest.fixture
def reports(monkeypatch):
    calls = []
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: calls.append(dict(metrics)))
    return calls


@pytest.fixture
def built(monkeypatch):
    """Capture the model each trial builds."""
    models = []
    original = zoo_module.build_model

    def capture(*args, **kwargs):
        models.append(original(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(zoo_module, "build_model", capture)
    return models


def test_train_source_returns_a_block_file(tiny, tmp_path):
    data, blob, metrics = tiny
    path = tmp_path / "s.blocks.h5"
    path.write_bytes(blob)
    info = read_blocks(str(path))
    assert list(info.blocks) == ["block_1", "block_2", "dense_1", "dense_2"]
    assert info.metadata["source_metrics"]["epochs"] == 2
    assert sorted(metrics) == ["epochs", "seconds", "val_accuracy", "val_loss"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0


def test_trial_reports_every_epoch_and_test_accuracy_last(tiny, reports):
    data, blob, _ = tiny
    last = train_trial({"policy": "scratch", "seed": 1, "epochs": 3, "batch_size": 16},
                       data=data, source=None)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    for r in reports:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "policy", "seed", "pid",
                "hostname", "node_ip"} <= set(r)
        assert 0.0 <= r["val_accuracy"] <= 1.0
    assert "test_accuracy" not in reports[0] and "test_accuracy" in reports[-1]
    assert last == reports[-1] and last["policy"] == "scratch" and last["seed"] == 1
    assert 0.0 <= last["test_accuracy"] <= 1.0 and last["train_seconds"] > 0


def test_policy_is_applied_frozen_tuned_reinit(tiny, reports, built, tmp_path):
    data, blob, _ = tiny
    path = tmp_path / "s.blocks.h5"
    path.write_bytes(blob)
    source = zoo_module.seed_cnn(data.input_shape, data.source_classes, name="src")
    source.load_blocks(str(path))
    policy = "block_1=frozen,block_2=tuned,dense_2=frozen"
    MODELS.clear()  # no kept model from an earlier test: the model built here is trained
    train_trial({"policy": policy, "seed": 0, "epochs": 2}, data=data, source=blob)
    model = built[-1]

    def same(layer):
        return all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(
            model.get_layer(layer).weights, source.get_layer(layer).weights, strict=True))

    assert same("block_1_0") and same("block_1_1") and same("dense_2")  # frozen: unchanged
    assert not same("block_2_0")  # tuned: loaded, then trained
    assert not same("dense_1")  # reinit
    assert not model.get_layer("block_1_0").trainable
    assert model.get_layer("block_2_0").trainable and model.get_layer("dense_1").trainable


def test_same_seed_gives_the_same_trial(tiny, reports):
    data, blob, _ = tiny
    a = train_trial({"policy": "block_1=tuned", "seed": 4, "epochs": 2}, data=data, source=blob)
    b = train_trial({"policy": "block_1=tuned", "seed": 4, "epochs": 2}, data=data, source=blob)
    assert a["test_accuracy"] == pytest.approx(b["test_accuracy"])
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_source_as_path(tiny, reports, tmp_path):
    data, blob, _ = tiny
    path = tmp_path / "s.blocks.h5"
    path.write_bytes(blob)
    last = train_trial({"policy": "block_1=frozen", "seed": 0, "epochs": 1}, data=data,
                       source=str(path))
    assert last["epoch"] == 1


def test_unknown_block_raises(tiny, reports):
    data, blob, _ = tiny
    with pytest.raises(SweepError, match="block_9"):
        train_trial({"policy": "block_9=tuned", "seed": 0, "epochs": 1}, data=data, source=blob)
    assert reports == []


def test_transfer_without_source_raises(tiny, reports):
    data, _, _ = tiny
    with pytest.raises(SweepError, match="no source"):
        train_trial({"policy": "block_1=tuned", "seed": 0, "epochs": 1}, data=data, source=None)


def test_evaluate_matches_keras():
    import keras

    model = zoo_module.seed_cnn((8, 8, 1), 10)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((50, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 50)
    loss, accuracy = evaluate(model, x, y, batch_size=16)
    expected = model.evaluate(x, y, verbose=0)
    assert loss == pytest.approx(expected[0], rel=1e-4)
    assert accuracy == pytest.approx(expected[1])
    del keras


def test_a_reused_process_trains_a_trial_exactly_as_before(tiny, reports):
    """Tune reuses worker processes (reuse_actors): a trial run after other trials in the same
    process reports the very same numbers, because each starts from a cleared Keras session
    and its own seeds."""
    data, blob, _ = tiny
    config = {"policy": "block_1=tuned,block_2=frozen", "seed": 3, "epochs": 3,
              "batch_size": 16}
    train_trial(config, data=data, source=blob)
    first = [dict(r) for r in reports]
    reports.clear()
    train_trial({"policy": "scratch", "seed": 5, "epochs": 2, "batch_size": 8}, data=data,
                source=None)
    reports.clear()
    train_trial(config, data=data, source=blob)
    strip = ("pid", "node_ip", "node_id", "hostname", "gpu_ids", "train_seconds", "started_at")
    assert [{k: v for k, v in r.items() if k not in strip} for r in reports] == [
        {k: v for k, v in r.items() if k not in strip} for r in first]


def test_training_batches_are_each_epoch_a_permutation_fixed_by_seed_and_epoch():
    """Each epoch is a permutation of every sample (the last batch partial), drawn from
    (seed, epoch) alone; the process keeps the pipeline for the same arrays, and the order
    does not depend on TensorFlow's global seed."""
    import tensorflow as tf

    from keras_blockreuse.sweep.trial import training_batches

    x = np.arange(10, dtype="float32").reshape(10, 1) * 10
    y = np.arange(10)

    def epochs(seed):
        batches = [(bx.numpy(), by.numpy()) for bx, by in training_batches(x, y, 3, 4, seed)]
        assert [len(by) for _, by in batches] == [4, 4, 2] * 3
        for bx, by in batches:
            np.testing.assert_array_equal(bx[:, 0], by * 10)  # features stay with labels
        flat = np.concatenate([by for _, by in batches])
        return [flat[i * 10:(i + 1) * 10].tolist() for i in range(3)]

    first = epochs(0)
    assert all(sorted(e) == list(range(10)) for e in first)
    assert first[0] != first[1] != first[2]  # reshuffled every epoch
    pipeline = training_batches(x, y, 3, 4, 0)
    tf.random.set_seed(123)
    assert epochs(0) == first  # the global seed plays no part
    assert epochs(1) != first
    assert training_batches(x.copy(), y.copy(), 3, 4, 5) is pipeline  # same bytes: kept
    other = training_batches(x + 1, y, 3, 4, 0)
    assert other is not pipeline
    assert next(iter(other))[0].numpy()[0, 0] % 10 == 1  # new arrays, new values
