"""Tests for keras_blockreuse.sweep.report: statistics on known numbers, files, table."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from keras_blockreuse.sweep.report import (
    SUMMARY_COLUMNS,
    TRIAL_COLUMNS,
    best_line,
    markdown_table,
    mean_ci,
    paired_difference,
    summarize,
    trial_columns,
    write_report,
)


def test_mean_ci_known_numbers():
    mean, std, low, high = mean_ci([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2)
    assert low == pytest.approx(0.8 - half) and high == pytest.approx(0.8 + half)
    assert mean_ci([0.5, 0.5]) == (0.5, 0.0, 0.5, 0.5)
    one = mean_ci([0.6])
    assert one[0] == 0.6 and all(math.isnan(v) for v in one[1:])
    assert all(math.isnan(v) for v in mean_ci([]))
    assert mean_ci([0.7, float("nan"), 0.9])[0] == pytest.approx(0.8)


def test_paired_difference_matches_scipy():
    a = {0: 0.81, 1: 0.86, 2: 0.84, 3: 0.90}
    b = {0: 0.70, 1: 0.74, 2: 0.75, 3: 0.73, 9: 0.5}  # seed 9 has no pair: ignored
    mean, low, high, p, n = paired_difference(a, b)
    d = np.array([0.11, 0.12, 0.09, 0.17])
    assert n == 4 and mean == pytest.approx(d.mean())
    assert p == pytest.approx(stats.ttest_rel([0.81, 0.86, 0.84, 0.90],
                                              [0.70, 0.74, 0.75, 0.73]).pvalue)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert low == pytest.approx(d.mean() - half) and high == pytest.approx(d.mean() + half)
    # Hand-checked: t = 0.1225 / (0.03403 / 2) = 7.20 on 3 df -> p = 0.0055
    assert p == pytest.approx(0.0055, abs=2e-4)


def test_paired_difference_edge_cases():
    assert paired_difference({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.8})[3] == 0.0  # constant gain
    assert paired_difference({0: 0.8, 1: 0.9}, {0: 0.8, 1: 0.9})[3] == 1.0  # no change
    mean, low, high, p, n = paired_difference({0: 0.8}, {0: 0.7})
    assert n == 1 and mean == pytest.approx(0.1) and math.isnan(p) and math.isnan(low)
    assert paired_difference({1: 0.8}, {0: 0.7})[4] == 0


def trials_frame():
    rows = []
    accuracy = {"scratch": [0.70, 0.72, 0.74], "block_1=tuned": [0.85, 0.88, 0.86],
                "block_1=frozen": [0.80, 0.70, 0.75]}
    for policy, values in accuracy.items():
        for seed, value in enumerate(values):
            rows.append({"trial_id": f"{policy}-{seed}", "policy": policy, "label": policy,
                         "code": "", "seed": seed, "status": "ok", "test_accuracy": value,
                         "val_accuracy": value - 0.01, "error": ""})
    rows.append({"trial_id": "bad-0", "policy": "block_9=tuned", "label": "broken", "code": "",
                 "seed": 0, "status": "error", "test_accuracy": float("nan"),
                 "val_accuracy": float("nan"), "error": "SweepError: no block_9"})
    return pd.DataFrame(rows)


def test_summarize_sorts_best_first_and_compares_with_scratch():
    summary = summarize(trials_frame())
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary["policy"].tolist() == ["block_1=tuned", "block_1=frozen", "scratch",
                                          "block_9=tuned"]
    assert summary["rank"].tolist() == [1, 2, 3, 4]
    best = summary.iloc[0]
    assert best["n"] == 3 and best["mean"] == pytest.approx(0.8633333)
    assert best["diff"] == pytest.approx(0.8633333 - 0.72)
    assert best["p_value"] == pytest.approx(
        stats.ttest_rel([0.85, 0.88, 0.86], [0.70, 0.72, 0.74]).pvalue)
    assert best["val_mean"] == pytest.approx(0.8533333)
    scratch = summary[summary["policy"] == "scratch"].iloc[0]
    assert scratch["diff"] == 0.0 and math.isnan(scratch["p_value"])
    broken = summary.iloc[-1]
    assert broken["n"] == 0 and broken["failed"] == 1 and math.isnan(broken["mean"])


def test_best_line():
    line = best_line(summarize(trials_frame()))
    assert line.startswith("Best policy: block_1=tuned: test accuracy 0.863")
    assert "+0.143 over scratch" in line and "p=" in line
    only_scratch = trials_frame()
    only_scratch = only_scratch[only_scratch["policy"] == "scratch"]
    assert "no transfer policy beats" in best_line(summarize(only_scratch))


def test_markdown_table_rows():
    table = markdown_table(summarize(trials_frame()))
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[2].startswith("| 1 | block_1=tuned |") and "+0.143" in lines[2]
    assert "baseline" in lines[4] and "(1 failed)" in lines[5]


def test_write_report_files_and_columns(tmp_path):
    settings = {"dataset": "digits", "task": "shift", "shift": "noise", "shots": 10,
                "model": "seed_cnn"}
    written = write_report(trials_frame(), str(tmp_path), settings, {"legend": "R/F/T"})
    for name in ("results.csv", "summary.csv", "results.json", "plot.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results.columns) == TRIAL_COLUMNS and len(results) == 10
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and summary["policy"][0] == "block_1=tuned"
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["best"] == written["best"]
    assert document["policies"][0]["mean"] == pytest.approx(0.8633333)
    assert document["policies"][-1]["mean"] is None  # NaN becomes null
    assert document["failed_trials"][0]["error"] == "SweepError: no block_9"
    report = (tmp_path / "report.md").read_text()
    assert written["best"] in report and "![accuracy per policy](plot.png)" in report
    assert "SweepError: no block_9" in report and "| dataset | digits |" in report
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_for_detection_names_map(tmp_path):
    frame = trials_frame().rename(columns={"test_accuracy": "test_map_50",
                                           "val_accuracy": "val_map_50"})
    settings = {"dataset": "digits", "task": "detection", "model": "seed_cnn"}
    written = write_report(frame, str(tmp_path), settings, metric="test_map_50")
    assert written["best"].startswith("Best policy: block_1=tuned: test mAP@0.5 0.863")
    report = (tmp_path / "report.md").read_text()
    assert "| test mAP@0.5 (mean ± std) |" in report and "accuracy" not in report
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results.columns) == trial_columns("test_map_50")
    assert "test_accuracy" not in results.columns and "test_map_50" in results.columns
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["val_mean"][0] == pytest.approx(0.8533333)  # from val_map_50
    assert json.loads((tmp_path / "results.json").read_text())["metric"] == "test_map_50"
    # The classification report keeps its accuracy header.
    assert "| test accuracy (mean ± std) |" in markdown_table(summarize(trials_frame()))
