"""Tests for keras_blockreuse.sweep.halving: rungs, advancing, baselines, the Ray Tune driver."""

import math

import pytest

from keras_blockreuse.sweep.halving import advance, rung_epochs, successive_halving, tune_rung
from keras_blockreuse.sweep.space import SweepError


def test_rung_epochs():
    assert rung_epochs(40, candidates=81, eta=3) == [1, 4, 13, 40]
    assert rung_epochs(40, candidates=4, eta=3) == [13, 40]
    assert rung_epochs(40, candidates=9, eta=3) == [4, 13, 40]
    assert rung_epochs(40, candidates=81, eta=3, min_epochs=5) == [13, 40]
    assert rung_epochs(40, candidates=2, eta=3) == [40]
    assert rung_epochs(3, candidates=81, eta=2) == [2, 3]   # rounding never repeats a budget
    with pytest.raises(SweepError, match="eta >= 2"):
        rung_epochs(40, 9, eta=1)


def test_advance_keeps_the_best_third_by_mean_over_seeds_ties_included():
    scores = {"a": {0: 0.9, 1: 0.7}, "b": {0: 0.8, 1: 0.8}, "c": {0: 0.5, 1: 0.6},
              "d": {0: 0.1, 1: 0.2}}
    d = advance(scores, seeds=[0, 1], eta=3)
    assert (d.advanced, d.stopped, d.failed) == (["a", "b"], ["c", "d"], {})  # a ties b at 0.8
    assert d.means == pytest.approx({"a": 0.8, "b": 0.8, "c": 0.55, "d": 0.15})
    assert advance(scores, seeds=[0, 1], eta=4).advanced == ["a", "b"]
    assert advance(scores, seeds=[0, 1], eta=3, mode="min").advanced == ["d", "c"]
    # Means equal to float32 rounding tie (0.6 + 0.7 and 0.65 + 0.65 differ in the last bit).
    rounded = {"a": {0: 0.65, 1: 0.65}, "b": {0: 0.6, 1: 0.7}, "c": {0: 0.1, 1: 0.2}}
    assert (0.6 + 0.7) / 2 != (0.65 + 0.65) / 2
    assert advance(rounded, seeds=[0, 1], eta=3).advanced == ["a", "b"]
    # ... relative to the means compared: 8e-7 does not tie 5e-7 (lower is better).
    means = (1e-7, 5e-7, 8e-7, 1e-6, 2e-6, 3e-6)
    tiny = {k: {0: v, 1: v} for k, v in zip("abcdef", means, strict=True)}
    assert advance(tiny, seeds=[0, 1], eta=3, mode="min").advanced == ["a", "b"]


def test_advance_never_ranks_a_configuration_on_fewer_seeds():
    scores = {"a": {0: 0.9}, "b": {0: 0.5, 1: math.nan}, "c": {0: 0.2, 1: 0.3},
              "e": {0: 0.1, 1: 0.1}}
    d = advance(scores, seeds=[0, 1], eta=2)
    assert d.failed == {"a": "no result for seed(s) [1]", "b": "non-finite score for seed(s) [1]"}
    assert (d.advanced, d.stopped) == (["c"], ["e"])


class FakeRungs:
    """run_rung without training: score = quality of the configuration + a little per seed and
    per epoch; records what each rung was asked to run."""

    def __init__(self, quality, broken=()):
        self.quality, self.broken, self.calls = quality, set(broken), []

    def __call__(self, rung, keys, epochs):
        self.calls.append((rung, list(keys), epochs))
        rows = []
        for key in keys:
            for seed in range(3):
                if (key, seed, rung) in self.broken:
                    rows.append({"policy": key, "seed": seed, "status": "error"})
                    continue
                rows.append({"policy": key, "seed": seed, "status": "ok",
                             "val_accuracy": self.quality[key] + 0.01 * seed + 0.001 * epochs,
                             "train_seconds": float(epochs)})
        return rows


def test_successive_halving_advances_whole_configurations_and_baselines_finish():
    quality = {f"c{i}": i / 10 for i in range(9)} | {"scratch": 0.0, "all": 0.05}
    fake = FakeRungs(quality, broken={("c8", 2, 0)})    # the best one loses a seed at rung 0
    result = successive_halving([f"c{i}" for i in range(9)], ["scratch", "all"], seeds=3,
                                max_epochs=40, run_rung=fake, eta=3, print_fn=None)
    assert result.epochs == [4, 13, 40]
    assert fake.calls == [
        (0, [f"c{i}" for i in range(9)], 4),
        (1, ["c7", "c6", "c5"], 13),                 # ceil(8 ranked / 3) = 3; c8 not ranked
        (2, ["c7", "scratch", "all"], 40),           # baselines only at the full budget
    ]
    assert result.decisions[0].failed == {"c8": "non-finite score for seed(s) [2]"}
    assert [d.advanced for d in result.decisions] == [["c7", "c6", "c5"], ["c7"]]
    # Every configuration that ran at a rung ran with all its seeds.
    for rung, keys, _ in fake.calls:
        for key in keys:
            assert sorted(r["seed"] for r in result.rows
                          if r["rung"] == rung and r["policy"] == key) == [0, 1, 2]
    assert {(r["policy"], r["rung_epochs"]) for r in result.final} == {
        ("c7", 40), ("scratch", 40), ("all", 40)}
    assert len(result.final) == 9
    assert sum(r.get("train_seconds", 0) for r in result.rows) == 9 * 3 * 4 - 4 + 3 * 3 * 13 + 9 * 40


def test_a_rung_never_advances_a_configuration_on_a_failed_trials_metric():
    """Found by a fresh-user re-check: a trial whose weights went NaN still scores an
    accuracy (argmax of NaN is 0: the rate of class 0), and the sweep marks it failed
    ("the training diverged: val_loss is nan"); a rung ranked it by that accuracy all the
    same, so a diverged configuration could take a place a working one should have. A
    failed row's metric is now not a score: the configuration is failed at that rung."""
    quality = {f"c{i}": i / 10 for i in range(9)} | {"scratch": 0.0, "all": 0.05}
    fake = FakeRungs(quality)

    def rungs(rung, keys, epochs):
        rows = fake(rung, keys, epochs)
        for row in rows:
            if (row["policy"], rung) == ("c0", 0):  # the worst, diverged on every seed
                row.update(status="error", val_accuracy=0.99,
                           error="the training diverged: val_loss is nan")
        return rows

    result = successive_halving([f"c{i}" for i in range(9)], ["scratch", "all"], seeds=3,
                                max_epochs=40, run_rung=rungs, eta=3, print_fn=None)
    assert result.decisions[0].failed == {"c0": "non-finite score for seed(s) [0, 1, 2]"}
    assert result.decisions[0].advanced == ["c8", "c7", "c6"]  # (was c0, c8, c7)


def test_successive_halving_refuses_overlapping_roles_and_strange_rows():
    with pytest.raises(SweepError, match="disjoint"):
        successive_halving(["a"], ["a"], 1, 4, FakeRungs({"a": 1}), print_fn=None)

    def wrong(rung, keys, epochs):
        return [{"policy": "zzz", "seed": 0, "val_accuracy": 1.0}]

    with pytest.raises(SweepError, match=r"configurations \['zzz'\] it did not run"):
        successive_halving(["a", "b", "c"], [], 1, 9, wrong, print_fn=None)


def scored_trainable(config):
    from ray import tune

    quality = {"good": 0.9, "fair": 0.6, "poor": 0.3, "bad": 0.1, "base": 0.5}[config["policy"]]
    if config["policy"] == "bad" and config["seed"] == 1:
        raise RuntimeError("trial failed on purpose")
    for epoch in range(1, config["epochs"] + 1):
        tune.report({"epoch": epoch, "val_accuracy": quality + 0.01 * config["seed"],
                     "train_seconds": 0.0})


@pytest.mark.slow
def test_successive_halving_through_ray_tune(ray_local, tmp_path):
    def run_rung(rung, keys, epochs):
        return tune_rung(scored_trainable, keys, seeds=2, epochs=epochs, config={},
                         storage_path=str(tmp_path), name=f"rung_{rung}")

    result = successive_halving(["good", "fair", "poor", "bad"], ["base"], seeds=2,
                                max_epochs=6, run_rung=run_rung, eta=3, print_fn=None)
    assert result.epochs == [2, 6]
    assert result.decisions[0].failed == {"bad": "non-finite score for seed(s) [1]"}
    assert result.decisions[0].advanced == ["good"]
    assert sorted((r["policy"], r["seed"], r["epoch"]) for r in result.final) == [
        ("base", 0, 6), ("base", 1, 6), ("good", 0, 6), ("good", 1, 6)]
    errors = [r for r in result.rows if r["status"] == "error"]
    assert [(r["policy"], r["seed"]) for r in errors] == [("bad", 1)]
    assert "trial failed on purpose" in errors[0]["error"]
