"""Tests for keras_blockreuse.sweep.policies: LP-FT, gradual unfreezing, per-block rates."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_blockreuse.sweep.policies import (
    BlockSchedule,
    Stage,
    schedule,
    with_block_learning_rates,
)
from keras_blockreuse.sweep.space import SweepError

BLOCKS = ("a_1", "b_1", "c_1")


def three_blocks():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, activation="tanh", name="a_1")(inputs)
    x = keras.layers.Dense(4, activation="tanh", name="b_1")(x)
    out = keras.layers.Dense(2, name="c_1")(x)
    return keras.Model(inputs, out)


def data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def block_weights(model):
    return {b: [np.array(v) for v in model.get_layer(b).weights] for b in BLOCKS}


class Steps(keras.callbacks.Callback):
    """Per epoch: trainable flags, the learning rate, and each block's step / full-batch gradient.

    With plain SGD and one full batch per epoch, step = -rate * gradient exactly, so `rates` is
    the effective learning rate of each block (0 when frozen).
    """

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.flags, self.lrs, self.rates = [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.flags.append({b: self.model.get_layer(b).trainable for b in BLOCKS})
        self.lrs.append(float(self.model.optimizer.learning_rate))
        variables = [v for b in BLOCKS for v in self.model.get_layer(b).weights]
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(self.y, self.model(self.x))
        self.grads = [np.asarray(g) for g in tape.gradient(loss, [v.value for v in variables])]
        self.before = block_weights(self.model)

    def on_epoch_end(self, epoch, logs=None):
        after, rates, i = block_weights(self.model), {}, 0
        for b in BLOCKS:
            steps = [w0 - w1 for w0, w1 in zip(self.before[b], after[b], strict=True)]
            grads = self.grads[i: i + len(steps)]
            i += len(steps)
            g = np.concatenate([x.ravel() for x in grads])
            s = np.concatenate([x.ravel() for x in steps])
            rates[b] = float(np.dot(s, g) / np.dot(g, g))
            np.testing.assert_allclose(s, rates[b] * g, rtol=1e-4, atol=1e-8)
        self.rates.append(rates)


def fit_with(stages, optimizer, epochs, multipliers=None):
    model = three_blocks()
    if multipliers:
        optimizer = with_block_learning_rates(optimizer, model, multipliers)
    model.compile(optimizer=optimizer, loss="mse")
    x, y = data()
    steps = Steps(x, y)
    policy = BlockSchedule(stages)
    model.fit(x, y, batch_size=len(x), epochs=epochs, shuffle=False, verbose=0,
              callbacks=[policy, steps])
    return model, policy, steps


def test_lp_ft_stages():
    policy = {"a_1": "tuned", "b_1": "tuned", "c_1": "reinit"}
    stages = schedule("lp-ft", policy, epochs=5, learning_rate=0.01, k=2, ft_factor=0.1)
    assert stages == [Stage(("c_1",), 0.01)] * 2 + [Stage(BLOCKS, 0.01 * 0.1)] * 3
    # Every block transferred: the probe is the head; the frozen block stays frozen.
    surgical = {"a_1": "frozen", "b_1": "tuned", "c_1": "tuned"}
    assert schedule("lp-ft", surgical, 3, 0.01, k=1) == [
        Stage(("c_1",), 0.01), Stage(("b_1", "c_1"), 0.001), Stage(("b_1", "c_1"), 0.001)]


def test_gradual_stages_unfreeze_one_block_every_k_epochs_from_the_top():
    policy = {"a_1": "tuned", "b_1": "tuned", "c_1": "tuned", "head": "reinit"}
    stages = schedule("gradual", policy, epochs=7, learning_rate=0.1, k=2)
    assert [s.trainable for s in stages] == [
        ("head",), ("head",), ("c_1", "head"), ("c_1", "head"),
        ("b_1", "c_1", "head"), ("b_1", "c_1", "head"), ("a_1", "b_1", "c_1", "head")]
    assert {s.learning_rate for s in stages} == {0.1}


def test_policies_without_tuned_blocks_are_constant():
    for name in ("lp-ft", "gradual"):
        assert schedule(name, {"a": "reinit", "b": "reinit"}, 2, 0.1, k=1) == [
            Stage(("a", "b"), 0.1)] * 2
        assert schedule(name, {"a": "frozen", "b": "reinit"}, 1, 0.1) == [Stage(("b",), 0.1)]


def test_schedule_refuses_bad_input():
    with pytest.raises(SweepError, match="Unknown training policy 'slow'"):
        schedule("slow", {"a": "tuned"}, 1, 0.1)
    with pytest.raises(SweepError, match=r"received \{'a': 'warm'\}"):
        schedule("constant", {"a": "warm"}, 1, 0.1)
    with pytest.raises(SweepError, match="k >= 1"):
        schedule("gradual", {"a": "tuned"}, 3, 0.1, k=0)
    with pytest.raises(SweepError, match="positive learning rate"):
        schedule("lp-ft", {"a": "tuned"}, 3, 0.0)


def test_lp_ft_callback_flags_and_effective_rates_over_epochs():
    stages = schedule("lp-ft", {"a_1": "tuned", "b_1": "tuned", "c_1": "reinit"},
                      epochs=4, learning_rate=0.5, k=2, ft_factor=0.1)
    model, policy, steps = fit_with(stages, keras.optimizers.SGD(0.5), epochs=4)
    probe = {"a_1": False, "b_1": False, "c_1": True}
    everything = dict.fromkeys(BLOCKS, True)
    assert steps.flags == [probe, probe, everything, everything]
    lrs = [np.float32(0.5), np.float32(0.5), np.float32(0.05), np.float32(0.05)]
    assert steps.lrs == [float(v) for v in lrs]
    assert [a["learning_rate"] for a in policy.applied] == steps.lrs
    for epoch, rates in enumerate(steps.rates):
        for b in BLOCKS:
            expected = steps.lrs[epoch] if steps.flags[epoch][b] else 0.0
            assert rates[b] == pytest.approx(expected, rel=1e-4, abs=1e-12), (epoch, b)
    assert all(model.get_layer(b).trainable for b in BLOCKS)  # restored at the end


def test_gradual_callback_with_block_multipliers():
    stages = schedule("gradual", dict.fromkeys(BLOCKS, "tuned"), epochs=3, learning_rate=0.2,
                      k=1)
    _, _, steps = fit_with(stages, keras.optimizers.SGD(0.2), epochs=3,
                           multipliers={"a_1": 0.25, "b_1": 0.5})
    assert steps.flags == [{"a_1": False, "b_1": False, "c_1": True},
                           {"a_1": False, "b_1": True, "c_1": True},
                           dict.fromkeys(BLOCKS, True)]
    lr = float(np.float32(0.2))
    expected = [{"a_1": 0.0, "b_1": 0.0, "c_1": lr},
                {"a_1": 0.0, "b_1": lr * 0.5, "c_1": lr},
                {"a_1": lr * 0.25, "b_1": lr * 0.5, "c_1": lr}]
    for got, want in zip(steps.rates, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-12)


def test_block_multipliers_scale_adams_step_not_its_gradient():
    model = three_blocks()
    model.compile(optimizer=with_block_learning_rates(keras.optimizers.Adam(1e-3), model,
                                                      {"a_1": 0.1, "b_1": 0.0}), loss="mse")
    assert type(model.optimizer).__name__ == "BlockScaledAdam"
    before = block_weights(model)
    x, y = data()
    model.train_on_batch(x, y)
    after = block_weights(model)
    # Adam's first step is lr * g / (|g| + eps): about lr per element whatever the gradient.
    step = {b: np.concatenate([(w0 - w1).ravel() for w0, w1 in zip(before[b], after[b],
                                                                     strict=True)])
            for b in BLOCKS}
    np.testing.assert_allclose(np.abs(step["a_1"]), 1e-4, rtol=2e-2)
    np.testing.assert_array_equal(step["b_1"], 0.0)
    np.testing.assert_allclose(np.abs(step["c_1"]), 1e-3, rtol=2e-2)


def test_block_multipliers_refuse_unknown_blocks_and_bad_factors():
    model = three_blocks()
    with pytest.raises(SweepError, match=r"unknown \['block_9'\]"):
        with_block_learning_rates(keras.optimizers.SGD(), model, {"block_9": 0.1})
    with pytest.raises(SweepError, match=r"bad \{'a_1': -1\.0\}"):
        with_block_learning_rates(keras.optimizers.SGD(), model, {"a_1": -1.0})


def test_schedule_refuses_blocks_frozen_before_fit():
    model = three_blocks()
    model.get_layer("a_1").trainable = False
    model.compile(optimizer="sgd", loss="mse")
    x, y = data()
    stages = [Stage(("c_1",), 0.1), Stage(BLOCKS, 0.1)]
    with pytest.raises(SweepError, match=r"Blocks \['a_1'\] train in some stage but were frozen"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[BlockSchedule(stages)])


def test_parse_block_lr():
    from keras_blockreuse.sweep.policies import parse_block_lr

    assert parse_block_lr("a_1=0.1, b_1=2") == {"a_1": 0.1, "b_1": 2.0}
    assert parse_block_lr(None) == {} and parse_block_lr({"a": 1}) == {"a": 1.0}
    for bad in ("a_1", "a_1=x", "a_1=-1", "a_1=1,a_1=2", "=1", "a=nan"):
        with pytest.raises(SweepError, match="Invalid block learning rates"):
            parse_block_lr(bad)


def test_training_callbacks_from_a_trial_config():
    from keras_blockreuse.sweep.policies import training_callbacks

    model = three_blocks()
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    policy = {"a_1": "tuned", "b_1": "tuned", "c_1": "reinit"}
    config = {"training_policy": "lp-ft", "policy_epochs": 1, "ft_factor": 0.5, "epochs": 2,
              "lr": 0.5, "block_lr": "a_1=0.5"}
    callbacks = training_callbacks(model, policy, config)
    assert type(model.optimizer).__name__ == "BlockScaledSGD"
    x, y = data()
    steps = Steps(x, y)
    model.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0,
              callbacks=[*callbacks, steps])
    assert steps.rates == [pytest.approx({"a_1": 0.0, "b_1": 0.0, "c_1": 0.5}, abs=1e-9),
                           pytest.approx({"a_1": 0.125, "b_1": 0.25, "c_1": 0.25}, rel=1e-4)]
    assert training_callbacks(model, policy, {"epochs": 3, "lr": 0.1}) == []
