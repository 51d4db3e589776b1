"""Tests for keras_blockreuse.sweep.predict: LogME, relative gradient norms, cut features, ranks."""

import math

import keras
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from keras_blockreuse.sweep.predict import (
    cut_features,
    evidence_maximization,
    kendall_tau,
    logme,
    rank_configurations,
    relative_gradient_norms,
)
from keras_blockreuse.sweep.space import SweepError


def direct_log_evidence(f, y, alpha, beta):
    """log N(y; 0, I / beta + F F^T / alpha): the marginal likelihood, no SVD, no fixed point."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    return multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y)


@pytest.mark.parametrize("n, dim", [(12, 3), (6, 10)])
def test_evidence_matches_the_marginal_likelihood_at_the_converged_alpha_beta(n, dim):
    rng = np.random.default_rng(3)
    f = rng.normal(size=(n, dim))
    y = np.stack([f @ rng.normal(size=dim) + 0.3 * rng.normal(size=n),
                  rng.normal(size=n)], axis=1)
    result = evidence_maximization(f, y)
    for c in range(2):
        a, b = result.alpha[c], result.beta[c]
        direct = direct_log_evidence(f, y[:, c], a, b)
        assert result.evidence[c] * n == pytest.approx(direct, rel=1e-9, abs=1e-9)
        # The fixed point is a maximum of the evidence over alpha and beta.
        for da, db in ((1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95), (1.05, 1.05)):
            assert direct_log_evidence(f, y[:, c], a * da, b * db) < direct


def test_logme_scores_separating_features_above_noise():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 8)) * 3
    separating = centres[y] + rng.normal(size=(200, 8))
    noise = rng.normal(size=(200, 8))
    half = centres[y] * 0.3 + rng.normal(size=(200, 8))
    good, middle, bad = logme(separating, y), logme(half, y), logme(noise, y)
    assert good > middle > bad
    # One-hot columns, averaged: the same as averaging evidence_maximization per class.
    one_hot = np.eye(4)[y]
    assert good == pytest.approx(float(np.mean(evidence_maximization(separating, one_hot).evidence)))


def test_logme_regression_prefers_the_features_the_targets_come_from():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(150, 6))
    targets = f @ rng.normal(size=(6, 2)) + 0.1 * rng.normal(size=(150, 2))
    assert logme(f, targets, regression=True) > logme(rng.normal(size=(150, 6)), targets,
                                                       regression=True)


def test_logme_refuses_bad_input():
    f = np.zeros((5, 2)) + 1.0
    with pytest.raises(ValueError, match="non-negative integers"):
        logme(f, np.array([0.5, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="to match features"):
        logme(f, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="out of range"):
        logme(f, np.array([0, 1, 0, 1, 3]), num_classes=3)
    with pytest.raises(ValueError, match=r"Classes \[2\] of 3 have no samples"):
        logme(f, np.array([0, 1, 0, 1, 0]), num_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        logme(np.full((5, 2), np.nan), np.array([0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="did not converge in 1 iterations"):
        evidence_maximization(np.random.default_rng(0).normal(size=(20, 3)),
                              np.arange(20.0), max_iter=1)


def linear_two_blocks():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, name="a_1")(inputs)
    out = keras.layers.Dense(1, name="b_1")(h)
    return keras.Model(inputs, out)


def test_relative_gradient_norms_equal_the_analytic_gradients():
    model = linear_two_blocks()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    got = relative_gradient_norms(model, x, y, loss="mse", batch_size=16, batches=1)
    wa, ba, wb, bb = (np.asarray(v, dtype=np.float64) for v in model.weights)
    h = x @ wa + ba
    r = 2 * (h @ wb + bb - y) / len(x)               # d mean((yhat - y)^2) / d yhat
    grads_b = [h.T @ r, r.sum(0)]
    back = r @ wb.T
    grads_a = [x.T @ back, back.sum(0)]

    def ratio(gs, ws):
        return math.sqrt(sum(np.sum(g**2) for g in gs)) / math.sqrt(sum(np.sum(w**2) for w in ws))

    assert list(got) == ["a_1", "b_1"]
    assert got["a_1"] == pytest.approx(ratio(grads_a, [wa, ba]), rel=1e-5)
    assert got["b_1"] == pytest.approx(ratio(grads_b, [wb, bb]), rel=1e-5)


def test_relative_gradient_norms_find_the_dominant_block():
    model = linear_two_blocks()
    model.get_layer("a_1").bias.assign(np.ones(4))
    # Shrinking block b's parameters 1000x shrinks block a's gradient 1000x (it flows through
    # b's weights) and block b's parameter norm 1000x: b's ratio dominates by about 10^6.
    for v in model.get_layer("b_1").weights:
        v.assign(np.asarray(v) * 1e-3 + 1e-3)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(64, 3)), rng.normal(size=(64, 1)) + 5
    got = relative_gradient_norms(model, x, y, loss="mse", batch_size=16, batches=4)
    assert got["b_1"] > 1e4 * got["a_1"]
    assert rank_configurations(["a_1", "b_1"], rgn=got)[0].label == "surgical: tune b_1"


def test_relative_gradient_norms_refuse_a_frozen_block():
    model = linear_two_blocks()
    model.get_layer("a_1").trainable = False
    with pytest.raises(SweepError, match=r"all-tuned model; blocks \['a_1'\] are frozen"):
        relative_gradient_norms(model, np.zeros((4, 3)), np.zeros((4, 1)), loss="mse")


def test_cut_features_are_the_next_blocks_inputs_pooled():
    from keras_blockreuse.sweep.zoo import seed_cnn

    model = seed_cnn((8, 8, 1), num_classes=5)
    x = np.random.default_rng(0).normal(size=(10, 8, 8, 1)).astype("float32")
    features = cut_features(model, x, batch_size=4)
    assert {k: v.shape for k, v in features.items()} == {
        "block_1": (10, 32), "block_2": (10, 2 * 2 * 64), "dense_1": (10, 512), "dense_2": (10, 5)}
    after_block_1 = keras.Model(model.inputs, model.get_layer("block_2_0").input)
    expected = np.asarray(after_block_1.predict_on_batch(x)).mean(axis=(1, 2))
    np.testing.assert_allclose(features["block_1"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features["dense_2"], np.asarray(model.predict_on_batch(x)),
                               rtol=1e-5, atol=1e-7)


def test_rank_configurations_alternates_families_best_first():
    blocks = ["b1", "b2", "b3"]
    ranked = rank_configurations(blocks, logme_scores={"b1": -1.0, "b2": -0.5, "b3": -2.0},
                                 rgn={"b1": 0.1, "b2": 0.01, "b3": 0.3})
    assert [(p.rank, p.label, p.predictor) for p in ranked] == [
        (1, "surgical: tune b3", "rgn"),
        (2, "prefix 2 tuned", "logme"),
        (3, "surgical: tune b1", "rgn"),
        (4, "prefix 2 frozen", "logme"),
        (5, "surgical: tune b2", "rgn"),
        (6, "prefix 1 tuned", "logme"),
        (7, "prefix 1 frozen", "logme"),
        (8, "prefix 3 frozen", "logme"),
    ]
    assert ranked[0].key == "b1=frozen,b2=frozen,b3=tuned"
    assert ranked[1].key == "b1=tuned,b2=tuned"
    with pytest.raises(SweepError, match=r"missing \['b3'\]"):
        rank_configurations(blocks, rgn={"b1": 1.0, "b2": 1.0})
    with pytest.raises(SweepError, match="received neither"):
        rank_configurations(blocks)


def test_kendall_tau_values_and_refusals():
    assert kendall_tau(["a", "b", "c"], {"a": 0.9, "b": 0.8, "c": 0.5}).tau == 1.0
    assert kendall_tau(["a", "b", "c"], {"a": 0.1, "b": 0.8, "c": 0.9}).tau == -1.0
    third = kendall_tau(["a", "b", "c", "x"], {"a": 0.9, "b": 0.5, "c": 0.8})
    assert (third.tau, third.n) == (pytest.approx(1 / 3), 3)
    one = kendall_tau(["a", "b"], {"a": 0.9})
    assert math.isnan(one.tau) and one.reason.startswith("only 1 predicted")
    assert kendall_tau(["a", "b"], {"a": 0.5, "b": 0.5}).reason == "every measured score is equal"


def test_predict_ranking_and_top_configurations_on_a_transferred_model():
    from keras_blockreuse.sweep.predict import predict_ranking, top_configurations
    from keras_blockreuse.sweep.zoo import seed_cnn

    model = seed_cnn((8, 8, 1), num_classes=3, dropout=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = np.arange(64) % 3
    blocks = ["block_1", "block_2", "dense_1"]
    ranking = predict_ranking(model, x, y, blocks, batches=2, max_samples=48)
    assert ranking.samples == 48 and list(ranking.logme) == blocks and list(ranking.rgn) == blocks
    assert len(ranking.predictions) == 3 + 5    # 3 surgical, prefix 1-2 x2, prefix 3 frozen
    chosen = top_configurations(ranking, blocks, top_k=2)
    assert [c.key for c in chosen] == ["scratch", ranking.predictions[0].key,
                                       ranking.predictions[1].key,
                                       "block_1=tuned,block_2=tuned,dense_1=tuned"]
    with pytest.raises(SweepError, match="top_k >= 1"):
        top_configurations(ranking, blocks, top_k=0)
    assert ranking.unranked == {}  # dense_2 (the head) trains in every configuration


def test_a_configuration_that_trains_nothing_is_not_ranked():
    # Every block swept, the head included: "prefix 4 frozen" freezes the whole model. LogME
    # scores features for a new head, so it says nothing about it: it is named, not ranked.
    from keras_blockreuse.sweep.predict import predict_ranking, predicted_vs_measured
    from keras_blockreuse.sweep.zoo import seed_cnn

    model = seed_cnn((8, 8, 1), num_classes=3, dropout=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = np.arange(64) % 3
    blocks = ["block_1", "block_2", "dense_1", "dense_2"]
    ranking = predict_ranking(model, x, y, blocks, batches=2, max_samples=48)
    everything_frozen = "block_1=frozen,block_2=frozen,dense_1=frozen,dense_2=frozen"
    assert ranking.unranked == {everything_frozen: "prefix 4 frozen"}
    assert everything_frozen not in {p.key for p in ranking.predictions}
    assert len(ranking.predictions) == 4 + 6    # 4 surgical, prefix 1-3 x2
    text, _ = predicted_vs_measured(ranking.predictions, {everything_frozen: 0.3},
                                    unranked=ranking.unranked)
    assert "Not ranked: prefix 4 frozen (trains no parameter: LogME scores features for a " \
           "newly trained head, and no predictor scores a configuration that trains " \
           "nothing)." in text
    ranked = rank_configurations(["b1", "b2"], logme_scores={"b1": 0.0, "b2": 1.0},
                                 head_trained=False)
    assert [p.label for p in ranked] == ["prefix 1 tuned", "prefix 1 frozen"]


def test_predicted_vs_measured_table():
    from keras_blockreuse.sweep.predict import predicted_vs_measured

    ranked = rank_configurations(["b1", "b2"], rgn={"b1": 0.2, "b2": 0.1})
    keys = [p.key for p in ranked]
    text, rows = predicted_vs_measured(ranked, {keys[0]: 0.7, keys[1]: 0.9, "scratch": 0.5})
    assert [(r["predicted_rank"], r["measured_rank"]) for r in rows] == [(1, 2), (2, 1)]
    assert "| 1 | surgical: tune b1 | rgn | 0.2 | 2 | 0.7000 |" in text
    assert text.rstrip().endswith("Kendall's tau over 2 measured configurations: -1.00 (p = 1).")
    text, rows = predicted_vs_measured(ranked, {keys[0]: 0.7})
    assert "| 2 | surgical: tune b2 | rgn | 0.1 | - | not run |" in text
    assert "n/a (only 1 predicted configuration(s) measured; tau needs 2)." in text


def test_one_block_has_no_surgical_candidate_besides_all_tuned():
    ranked = rank_configurations(["b1"], logme_scores={"b1": 0.0}, rgn={"b1": 1.0})
    assert [p.label for p in ranked] == ["prefix 1 frozen"]


def test_evidence_converges_where_features_outnumber_samples():
    # Found by a random search: 173 samples, 191 features, weak class signal; the fixed point
    # needs about 2600 iterations here (it gave up at 1000 before).
    rng = np.random.default_rng(0)
    n, d = int(rng.integers(20, 200)), int(rng.integers(2, 300))
    f = rng.normal(size=(n, d)) * rng.uniform(0.01, 10)
    y = np.eye(10)[rng.integers(0, 10, n)]
    f[:, :10] += y * rng.uniform(0, 0.3) * 10
    result = evidence_maximization(f, y)
    assert 1000 < result.iterations < 50_000
    c = 0
    direct = direct_log_evidence(f, y[:, c], result.alpha[c], result.beta[c])
    assert result.evidence[c] * n == pytest.approx(direct, rel=1e-8)
