"""Tests for keras_blockreuse.sweep.rates: the best learning rate per configuration."""

import math

import pytest

from keras_blockreuse.sweep.rates import best_rates


def rows_of(table):
    return [{"policy": key, "lr": lr, "seed": seed, "val_accuracy": value}
            for (key, lr), values in table.items() for seed, value in enumerate(values)]


def test_best_rate_per_configuration_on_the_mean_over_seeds():
    rows = rows_of({("a", 1e-3): [0.9, 0.7], ("a", 1e-4): [0.85, 0.8],
                    ("b", 1e-3): [0.6, 0.6], ("b", 1e-4): [0.6, 0.6],
                    ("c", 1e-3): [0.99, math.nan], ("c", 1e-4): [0.5, 0.5],
                    ("d", 1e-3): [None, 0.4]})
    kept, chosen = best_rates(rows)
    assert chosen["a"] == {"lr": 1e-4, "mean": pytest.approx(0.825),
                           "rates": {1e-4: pytest.approx(0.825), 1e-3: pytest.approx(0.8)}}
    assert chosen["b"]["lr"] == 1e-4                       # a tie goes to the smaller rate
    assert chosen["c"]["lr"] == 1e-4 and chosen["c"]["rates"][1e-3] is None
    assert chosen["d"] == {"lr": None, "mean": None, "rates": {1e-3: None}}
    assert sorted((r["policy"], r["lr"], r["seed"]) for r in kept) == [
        ("a", 1e-4, 0), ("a", 1e-4, 1), ("b", 1e-4, 0), ("b", 1e-4, 1),
        ("c", 1e-4, 0), ("c", 1e-4, 1), ("d", 1e-3, 0), ("d", 1e-3, 1)]
    assert best_rates(rows, mode="min")[1]["a"]["lr"] == 1e-3


def test_best_rates_refuse_rows_without_a_rate():
    with pytest.raises(ValueError, match="needs 'policy' and 'lr'"):
        best_rates([{"policy": "a", "val_accuracy": 1.0}])


def test_rows_without_a_rate_are_kept_and_never_ranked():
    """An interrupted sweep lists trials that never started; one Tune created but never
    gave its configuration has no rate: it stays in the rows and is not ranked."""
    rows = rows_of({("a", 1e-3): [0.9, 0.8], ("a", 1e-2): [0.5, 0.5]})
    rows.append({"policy": "a", "lr": None, "seed": 2, "val_accuracy": math.nan})
    rows.append({"policy": "b", "lr": math.nan, "seed": 0, "val_accuracy": math.nan})
    kept, chosen = best_rates(rows)
    assert chosen == {"a": {"lr": 1e-3, "mean": pytest.approx(0.85),
                            "rates": {1e-2: pytest.approx(0.5), 1e-3: pytest.approx(0.85)}}}
    assert sorted((r["policy"], r["seed"]) for r in kept) == [("a", 0), ("a", 1), ("a", 2),
                                                              ("b", 0)]


def test_an_interrupted_configuration_chooses_no_rate_and_counts_no_trial():
    """Found by a fresh-user check: an interrupted --lrs sweep chose the rate whose seeds had
    finished (val 0.099) over a better one still running (0.404 finished, one unfinished),
    dropped that rate's finished trial from results.csv, or pooled two rates as two seeds."""
    rows = rows_of({("a", 1e-3): [0.404, math.nan], ("a", 1e-2): [0.099, 0.099],
                    ("b", 1e-3): [0.9, 0.8], ("b", 1e-2): [0.5, 0.5]})
    for r in rows:
        r["status"] = "ok" if math.isfinite(r["val_accuracy"]) else "unfinished"
    kept, chosen = best_rates(rows)
    assert chosen["a"] == {"lr": None, "mean": None, "rates": {}, "unfinished": True}
    assert chosen["b"]["lr"] == 1e-3
    a = [r for r in kept if r["policy"] == "a"]
    assert len(a) == 4 and {r["status"] for r in a} == {"unfinished"}
    assert sorted((r["lr"], r["val_accuracy"]) for r in a if r["seed"] == 0) == [
        (1e-3, 0.404), (1e-2, 0.099)]
