"""Tests for keras_blockreuse.sweep.reuse: trials of one process reuse a compiled model and its
traced steps, and every trial reports exactly what a model of its own would have given."""

import keras
import numpy as np
import pytest
from ray import tune

from keras_blockreuse.sweep.data import make_task
from keras_blockreuse.sweep.reuse import (
    MODELS,
    TracedModels,
    build_before_tracing,
    restart,
    seed_model_building,
    snapshot,
)
from keras_blockreuse.sweep.trial import train_source, train_trial
from keras_blockreuse.sweep.zoo import MODELS as ZOO
from keras_blockreuse.sweep.zoo import build_model, seed_cnn

RUN_SPECIFIC = ("pid", "train_seconds", "started_at")


@pytest.fixture(scope="module")
def tiny():
    """Few-shot digits and a briefly trained source model (bytes of its block file)."""
    keras.backend.clear_session()
    data = make_task("digits", task="shift", shift="noise", shots=3, seed=0)
    blob, _ = train_source(data, epochs=2, batch_size=64, seed=0)
    return data, blob


@pytest.fixture
def reports(monkeypatch):
    calls = []
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: calls.append(dict(metrics)))
    return calls


def _trial(config, data, blob, reports, fresh: bool) -> list[dict]:
    """Every report of one trial, less what depends on the process and the clock. `fresh`:
    with no kept model, so the trial builds, compiles and traces its own (the path of a trial
    in a new process)."""
    if fresh:
        MODELS.clear()
    reports.clear()
    train_trial(config, data=data, source=blob)
    return [{k: v for k, v in r.items() if k not in RUN_SPECIFIC} for r in reports]


@pytest.mark.slow
def test_reused_trials_report_exactly_what_fresh_models_report(tiny, reports):
    """Two seeds of a policy with frozen blocks, two of scratch, and a tuned policy (same
    trainable set as scratch), interleaved as Tune's grid runs them: reused, every epoch's
    metrics and the test accuracy are bit-identical to a trial on a freshly built model."""
    data, blob = tiny
    base = {"epochs": 3, "batch_size": 16}
    configs = [{**base, "policy": policy, "seed": seed}
               for seed in (0, 1)
               for policy in ("block_1=frozen,block_2=tuned", "scratch")]
    configs.append({**base, "policy": "block_1=tuned,block_2=tuned", "seed": 2})
    fresh = [_trial(c, data, blob, reports, fresh=True) for c in configs]
    MODELS.clear()
    hits = MODELS.hits
    reused = [_trial(c, data, blob, reports, fresh=False) for c in configs]
    assert MODELS.hits - hits == 3  # seed 1 of both policies, and the tuned one on scratch's
    for config, got, expected in zip(configs, reused, fresh, strict=True):
        assert [r["epoch"] for r in got] == [1, 2, 3]
        assert got == expected, config  # floats compared exactly
    # and the seeds really differ (a reused model that ignored the new values would not)
    assert fresh[0][-1]["val_loss"] != fresh[2][-1]["val_loss"]


@pytest.mark.slow
def test_another_trainable_set_or_architecture_gets_its_own_traced_model(tiny, reports):
    """A kept model is never handed to a trial whose traced step would differ: another frozen
    set, or another architecture (more classes). Those trials report what fresh models do."""
    data, blob = tiny
    narrower = make_task("digits", task="split", shift=None, shots=3, seed=0)
    assert narrower.target_classes != data.target_classes  # another head: 5 classes, not 10
    base = {"epochs": 2, "batch_size": 16, "seed": 0}
    first = {**base, "policy": "block_1=frozen,block_2=tuned"}
    other_frozen = {**base, "policy": "block_1=tuned,block_2=frozen"}
    expected_frozen = _trial(other_frozen, data, blob, reports, fresh=True)
    MODELS.clear()
    reports.clear()
    train_trial({**base, "policy": "scratch"}, data=narrower, source=None)
    expected_narrower = [{k: v for k, v in r.items() if k not in RUN_SPECIFIC} for r in reports]

    MODELS.clear()
    _trial(first, data, blob, reports, fresh=False)
    hits = MODELS.hits
    assert _trial(other_frozen, data, blob, reports, fresh=False) == expected_frozen
    reports.clear()
    train_trial({**base, "policy": "scratch"}, data=narrower, source=None)
    got_narrower = [{k: v for k, v in r.items() if k not in RUN_SPECIFIC} for r in reports]
    assert got_narrower == expected_narrower
    assert MODELS.hits == hits  # neither reused the first trial's model
    assert len(MODELS) == 3


def _small(seed, frozen=False):
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)
    model = seed_cnn((8, 8, 1), 3)
    if frozen:
        model.freeze_blocks(["block_1"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_a_kept_model_keeps_its_traced_step_and_takes_the_new_values():
    """The reuse rests on Keras keeping a model's train function across `fit` calls until
    the next `compile` (keras/src/backend/tensorflow/trainer.py, `make_train_function`): this
    fails if Keras retraces (`train_step` runs again) or hands back stale values."""
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 32)
    models = TracedModels()
    traces = []
    first = _small(0)
    models.remember("small", 0, first)
    step = first.train_step
    first.train_step = lambda data: (traces.append(1), step(data))[1]  # runs only when tracing
    build_before_tracing(first, x, y)
    optimizer_start = snapshot(first.optimizer.variables)
    first.fit(x, y, epochs=2, batch_size=16, verbose=0)
    models.keep("key", first, optimizer_start)
    traced = len(traces)
    assert traced >= 1 and len(models) == 1
    function = first.train_function

    second = _small(1)
    expected = [np.array(v.numpy()) for v in second.variables]
    start = models.remember("small", 1, second)
    assert models.start("small", 1) is start and models.start("small", 2) is None
    model, kept_start = models.take("key")
    assert model is first and models.hits == 1 and len(models) == 0  # taken, not shared
    assert models.take("key") is None
    restart(model, start, kept_start)
    for v, value in zip(model.variables, expected, strict=True):
        np.testing.assert_array_equal(v.numpy(), value)
    assert int(model.optimizer.iterations.numpy()) == 0
    slots = [v for v in model.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    assert slots and all(not np.any(v.numpy()) for v in slots)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert len(traces) == traced and first.train_function is function
    models.keep("key", model, kept_start)
    assert len(models) == 1


def test_a_failed_trial_does_not_give_back_the_model_it_took(tiny, monkeypatch):
    """A trial that raises during `fit` leaves its model's state unknown: it is not kept."""
    data, blob = tiny
    config = {"policy": "block_1=frozen,block_2=tuned", "seed": 0, "epochs": 3,
              "batch_size": 16}
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: None)
    MODELS.clear()
    train_trial(config, data=data, source=blob)
    assert len(MODELS) == 1

    def fail(metrics, **kw):
        raise ValueError("boom")

    monkeypatch.setattr(tune, "report", fail)
    with pytest.raises(ValueError, match="boom"):
        train_trial({**config, "seed": 1}, data=data, source=blob)
    assert len(MODELS) == 0


def test_restart_refuses_models_that_do_not_correspond():
    kept = _small(0)
    build_before_tracing(kept, np.zeros((1, 8, 8, 1), "float32"), np.zeros(1, int))
    optimizer_start = snapshot(kept.optimizer.variables)
    frozen = _small(1, frozen=True)
    build_before_tracing(frozen, np.zeros((1, 8, 8, 1), "float32"), np.zeros(1, int))
    with pytest.raises(RuntimeError, match="optimizer variables"):
        restart(kept, snapshot(kept.variables), snapshot(frozen.optimizer.variables))
    wider = seed_cnn((8, 8, 1), 4)
    with pytest.raises(RuntimeError, match="model variables"):
        restart(kept, snapshot(wider.variables), optimizer_start)


def test_the_cache_is_bounded():
    models = TracedModels(max_models=1)
    models.keep("a", _small(0), [])
    model = _small(1, frozen=True)
    models.keep("b", model, [])
    assert len(models) == 1 and models.take("a") is None
    assert models.take("b").model is model
    small = _small(2)
    one = sum(value.nbytes for _, value in snapshot(small.variables))
    models = TracedModels(max_bytes=int(2.5 * one))
    for seed in range(3):
        models.remember("small", seed, small)
    assert models.start("small", 0) is None and models.start("small", 2) is not None


def test_building_before_tracing_traces_once_and_trains_the_same():
    """A `tf.function` whose first call creates variables is traced again; built before
    `fit`, the optimizer and metrics leave one trace, and the same weights after training.
    Fails if Keras or TensorFlow change either."""
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 32)
    trained = {}
    for prebuilt in (False, True):
        model = _small(0)
        traces = []
        step = model.train_step
        model.train_step = lambda data, step=step, traces=traces: (traces.append(1),
                                                                    step(data))[1]
        if prebuilt:
            build_before_tracing(model, x, y)
            assert model.optimizer.built
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
        assert len(traces) == (1 if prebuilt else 2)
        trained[prebuilt] = ([v.numpy() for v in model.variables], history.history)
    for a, b in zip(trained[False][0], trained[True][0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert trained[False][1] == trained[True][1]


def _architecture(data):  # the key train_trial records start values under
    return ("seed_cnn", tuple(data.input_shape), int(data.target_classes))


_FRESH_PROCESS_TRIAL = """
import json, sys
from ray import tune
from keras_blockreuse.sweep.data import make_task
from keras_blockreuse.sweep.trial import train_trial
reports = []
tune.report = lambda metrics, **kw: reports.append(dict(metrics))
data = make_task("digits", task="shift", shift="noise", shots=3, seed=0)
out = []
for config in json.loads(sys.argv[1]):
    reports.clear()
    train_trial(config, data=data, source=sys.argv[2])
    out.append(list(reports))
print(json.dumps(out))
"""


def _in_new_processes(configs, source, tmp_path) -> list[list[dict]]:
    """Each trial's reports as the only trial of a new process."""
    import json
    import os
    import subprocess
    import sys

    path = tmp_path / "source.blocks.h5"
    path.write_bytes(source)
    out = []
    for config in configs:
        run = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_TRIAL, json.dumps([config]),
                              str(path)], capture_output=True, text=True, check=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        out.append(json.loads(run.stdout.strip().splitlines()[-1])[0])
    return out


_STRIP = (*RUN_SPECIFIC, "node_ip", "node_id", "hostname", "gpu_ids")


def _stripped(reports) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _STRIP} for r in reports]


@pytest.mark.slow
def test_trials_in_a_reused_process_report_what_they_report_in_a_new_process(tiny, reports,
                                                                           tmp_path):
    """The property the reuse must keep, checked against real new processes: after trials
    of other seeds and policies have run in this process (setting TensorFlow's global seed,
    Keras's names and state), each of these trials reports bit for bit what it reports as
    the only trial of a new process:

    - `kept_new_seed`: takes a kept model; its seed's start values are built here;
    - `kept`: takes a kept model; its seed's start values were recorded before (nothing is
      built or seeded);
    - `traced`: a trainable set not kept yet, with its seed's start values recorded: its
      model is built without clearing the session (automatic names counted on) and takes
      the recorded values."""
    data, blob = tiny
    base = {"policy": "block_1=frozen,block_2=tuned", "epochs": 3, "batch_size": 16}
    kept_new_seed, kept = {**base, "seed": 4}, {**base, "seed": 7}
    traced = {**base, "policy": "block_1=tuned,block_2=frozen", "seed": 7}
    expected = _in_new_processes([kept_new_seed, kept, traced], blob, tmp_path)

    MODELS.clear()
    for before in ({**base, "seed": 7}, {**base, "policy": "scratch", "seed": 2},
                   {**base, "seed": 9, "epochs": 2}):
        train_trial(before, data=data, source=blob)
    for config, want, reused in ((kept_new_seed, expected[0], True),
                                 (kept, expected[1], True), (traced, expected[2], False)):
        hits = MODELS.hits
        recorded = MODELS.start(_architecture(data), config["seed"]) is not None
        reports.clear()
        train_trial(config, data=data, source=blob)
        assert MODELS.hits == hits + reused, config
        assert recorded == (config is not kept_new_seed)
        assert [r["epoch"] for r in reports] == [1, 2, 3]
        assert _stripped(reports) == _stripped(want), config  # floats compared exactly
    assert _stripped(expected[1]) != _stripped(expected[2])  # the policies really differ


@pytest.mark.parametrize("name", ZOO)
def test_seed_model_building_gives_the_values_of_set_random_seed_and_keeps_kernel_caches(name):
    """A model built after `seed_model_building(s)`, in a process that has built and run other
    models, holds bit for bit the values one built after `clear_session()` and
    `set_random_seed(s)` holds; and it leaves TensorFlow's global seed (and so its kernel
    caches, which setting it clears) alone."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(7)
    expected = snapshot(build_model(name, (8, 8, 1), 3).variables)
    build_model(name, (8, 8, 1), 5).predict_on_batch(np.zeros((2, 8, 8, 1), "float32"))
    tf.random.set_seed(123)
    seed_model_building(7)
    got = snapshot(build_model(name, (8, 8, 1), 3).variables)
    assert len(got) == len(expected) > 4
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert context.global_seed() == 123  # not reset: tf.random.set_seed clears the caches
