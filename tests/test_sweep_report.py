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
    format_p,
    holm,
    markdown_table,
    mean_ci,
    paired_difference,
    paired_test,
    summarize,
    trial_columns,
    verdict,
    write_report,
)


def test_mean_ci_known_numbers():
    mean, std, low, high = mean_ci([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2)
    assert low == pytest.approx(0.8 - half) and high == pytest.approx(0.8 + half)
    equal = mean_ci([0.5, 0.5])  # no spread: no interval (a t-interval of no width)
    assert equal[:2] == (0.5, 0.0) and math.isnan(equal[2]) and math.isnan(equal[3])
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


def test_summarize_ranks_by_validation_and_compares_with_scratch():
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
    assert best["verdict"] == "best"
    scratch = summary[summary["policy"] == "scratch"].iloc[0]
    assert scratch["diff"] == 0.0 and math.isnan(scratch["p_value"])
    broken = summary.iloc[-1]
    assert broken["n"] == 0 and broken["failed"] == 1 and math.isnan(broken["mean"])
    assert broken["verdict"] == "too few seeds"


# Validation accuracy over seeds 0, 1, 2 (test = validation + 0.01), worked by hand:
# A - B = [0.01, 0.00, 0.02]: t = 0.01 / (0.01 / sqrt 3) = 1.732 on 2 df, p = 0.225;
# A - C = [0.10, 0.09, 0.09]: t = 28.0, p = 0.00127; A - scratch = [0.20, 0.16, 0.21]:
# t = 12.4, p = 0.0064. Holm (m = 3): C 3 x 0.00127, scratch 2 x 0.0064, B 1 x 0.225.
VAL = {"A": [0.90, 0.88, 0.92], "B": [0.89, 0.88, 0.90], "C": [0.80, 0.79, 0.83],
       "scratch": [0.70, 0.72, 0.71]}
COST = {"A": 1000, "B": 500, "C": 10, "scratch": 1200}


def known_frame(val=VAL, cost=COST, extra=()):
    rows = [{"trial_id": f"{p}-{s}", "policy": p, "label": f"tune {p}" if p != "scratch" else p,
             "code": "", "seed": s, "status": "ok", "val_accuracy": v,
             "test_accuracy": round(v + 0.01, 6), "trained_params": cost.get(p), "error": ""}
            for p, values in val.items() for s, v in enumerate(values)]
    return pd.DataFrame(rows + list(extra))


def test_verdict_tied_set_holm_and_cheapest_on_known_numbers():
    v = verdict(known_frame())
    assert v.best == "A"
    p = {k: stats.ttest_rel(VAL["A"], VAL[k]).pvalue for k in ("B", "C", "scratch")}
    assert v.p_values == pytest.approx(p)
    assert p["B"] == pytest.approx(0.2254, abs=1e-4) and p["C"] == pytest.approx(0.00127, abs=1e-5)
    assert v.adjusted == pytest.approx({"C": 3 * p["C"], "scratch": 2 * p["scratch"],
                                        "B": p["B"]})
    assert v.tied == ["A", "B"] and v.status("C") == "worse" and v.status("scratch") == "worse"
    assert v.standard_error == pytest.approx(0.02 / math.sqrt(3))
    assert v.near == ["A", "B"]  # B's 0.890 is within 0.0115 of A's 0.900
    assert v.recommended == "B"  # tied with the best, within its noise, half its parameters
    # C is cheaper still, but worse: never recommended. Without counts, the best is.
    assert verdict(known_frame(cost={})).recommended == "A"
    # Lower is better (e.g. a loss): the lowest validation mean wins.
    assert verdict(known_frame(), higher_is_better=False).best == "scratch"


def test_holm_known_numbers():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx(
        {"a": 0.03, "b": 0.06, "c": 0.06})
    # A NaN (no test) is not part of the family; adjusted values never exceed 1.
    adjusted = holm({"a": 0.5, "b": float("nan"), "c": 0.6})
    assert adjusted["a"] == 1.0 and adjusted["c"] == 1.0 and math.isnan(adjusted["b"])


def test_degenerate_cases_are_not_numbers():
    # Fewer than two seeds: no interval, no test, and the policy is out of the verdict.
    one = {"trial_id": "D-0", "policy": "D", "label": "tune D", "code": "", "seed": 0,
           "status": "ok", "val_accuracy": 0.99, "test_accuracy": 0.99, "trained_params": 1}
    v = verdict(known_frame(extra=[one]))
    assert v.best == "A" and v.excluded == {"D": "1 finished full-budget seed"}
    assert v.status("D") == "too few seeds"
    summary = summarize(known_frame(extra=[one]), chosen=v)
    row = summary[summary["policy"] == "D"].iloc[0]
    assert row["rank"] == 5 and math.isnan(row["ci_low"]) and math.isnan(row["std"])
    assert "| 5 | tune D |  | 1 | 1 | 0.990 | too few seeds | 0.990 ± n/a | n/a |" in \
        markdown_table(summary)
    # Differences without variance: an exact sign test (2 * 0.5 ** 3), never p = 0.
    assert paired_test([0.8, 0.9, 0.85], [0.7, 0.8, 0.75]) == (0.25, "sign")
    p, test = paired_test([0.8, 0.9], [0.8, 0.9])
    assert math.isnan(p) and test == "identical"
    assert paired_test([0.8], [0.7])[1] == "n<2"
    # Found by a fresh-user test: accuracies that Keras computes in float32 (k/6) differ by
    # its rounding, which gave t on rounding noise: p = 1.4e-14 from three seeds.
    a, b = ([float(np.float32(k / 6)) for k in ks] for ks in ((3, 4, 5), (4, 5, 6)))
    assert np.ptp(np.subtract(a, b)) > 0  # the rounding noise is there
    assert paired_test(a, b) == (0.25, "sign")
    assert paired_test(a, a)[1] == "identical"
    assert paired_test([0.5, 0.6, 0.7], [0.6, 0.8, 0.7])[1] == "t"
    mean, low, high, p, n = paired_difference({0: 0.8}, {0: 0.7})
    assert n == 1 and mean == pytest.approx(0.1) and math.isnan(p) and math.isnan(low)
    assert paired_difference({1: 0.8}, {0: 0.7})[4] == 0
    assert format_p(0.0) == "< 1e-300" and format_p(float("nan")) == "n/a"
    assert format_p(0.00184) == "0.00184"
    # Policies identical on every seed are tied (no test needed); equal means go to the cheaper.
    same = dict(VAL, B=VAL["A"])
    v = verdict(known_frame(val=same))
    assert v.best == "B" and v.tests["A"] == "identical" and v.tied == ["B", "A"]


def test_intervals_stay_within_the_metric_range():
    # n = 2, values 0.2 and 0.99: t(0.975, 1) = 12.706 gives [-4.82, 6.01] unclipped.
    mean, std, low, high = mean_ci([0.2, 0.99])
    assert low == pytest.approx(0.595 - 12.7062 * std / math.sqrt(2), abs=1e-3) and low < -4
    assert mean_ci([0.2, 0.99], bounds=(0, 1))[2:] == (0.0, 1.0)
    frame = known_frame(val={"A": [0.2, 0.98], "scratch": [0.1, 0.2]})
    summary = summarize(frame)
    assert (summary["ci_low"] >= 0).all() and (summary["ci_high"] <= 1).all()
    transfer = summary[summary["policy"] == "A"].iloc[0]
    assert transfer["diff_ci_low"] == -1.0 and transfer["diff_ci_high"] == 1.0
    # A metric that is not a proportion (a loss) is not clipped.
    loss = frame.rename(columns={"test_accuracy": "test_loss", "val_accuracy": "val_loss"})
    assert summarize(loss, "test_loss", higher_is_better=False)["ci_low"].min() < 0


def test_report_md_text_on_known_numbers(tmp_path):
    written = write_report(known_frame(), str(tmp_path), {"dataset": "digits"},
                           coverage="training seeds only (the target split is fixed)")
    p = {k: stats.ttest_rel(VAL["A"], VAL[k]).pvalue for k in ("B", "C", "scratch")}
    lines = (tmp_path / "report.md").read_text().splitlines()
    # A: test [0.91, 0.89, 0.93], half-width t(0.975, 2) x 0.02 / sqrt 3 = 0.0497.
    assert lines[2] == ("**Best on validation: tune A (val accuracy 0.900, test 0.910 "
                        "[0.860, 0.960], n=3).**")
    assert lines[3] == ("Not shown worse than it (paired on validation over seeds, "
                        f"Holm-adjusted p >= 0.05): tune B (p={p['B']:.3g}).")
    # A's standard error on validation: 0.02 / sqrt 3 = 0.0115; B (0.890) is within it.
    assert lines[4] == ("Of these, within one standard error of the best's mean on validation "
                        "(±0.0115, the one-standard-error rule, Breiman et al. 1984): tune B.")
    assert lines[5].startswith("Recommended, the cheapest of these (the best included): tune B (val "
                               "accuracy 0.890, test 0.900 [") and \
        lines[5].endswith("n=3), 500 trained parameters.")
    assert lines[6].startswith("tune B: +0.180 test accuracy vs scratch [")
    assert "**Variation covered by the intervals and tests: training seeds only (the target " \
           "split is fixed).**" in lines
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| rank | policy | blocks | trained params | n | val accuracy |")
    assert table[1] == ("| 1 | tune A |  | 1,000 | 3 | 0.900 | **best** | 0.910 ± 0.020 | "
                        "[0.860, 0.960] | +0.190 | " + format_p(
                            written["summary"].loc[0, "p_holm"]) + " |")
    assert table[2].startswith(f"| 2 | tune B |  | 500 | 3 | 0.890 | tied, p={p['B']:.3g}, "
                               "**recommended** | 0.900 ± 0.010 |")
    assert table[3].startswith(f"| 3 | tune C |  | 10 | 3 | 0.807 | worse, p={3 * p['C']:.3g} |")
    assert table[4].startswith("| 4 | scratch |") and "| baseline |  |" in table[4]
    assert written["verdict"].recommended == "B" and "![accuracy per policy](plot.png)" in lines


def test_markdown_table_rows():
    table = markdown_table(summarize(trials_frame()))
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[2].startswith("| 1 | block_1=tuned |") and "+0.143" in lines[2]
    assert "baseline" in lines[4] and "0 (1 failed)" in lines[5]


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
    assert document["verdict"]["best"] == "block_1=tuned"
    assert document["policies"][0]["mean"] == pytest.approx(0.8633333)
    assert document["policies"][-1]["mean"] is None  # NaN becomes null
    assert document["failed_trials"][0]["error"] == "SweepError: no block_9"
    report = (tmp_path / "report.md").read_text()
    assert written["best"].splitlines()[0] in report
    assert "![accuracy per policy](plot.png)" in report
    assert "SweepError: no block_9" in report and "| dataset | digits |" in report
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_when_no_trial_finished(tmp_path):
    frame = trials_frame()
    frame["status"] = "error"
    frame.loc[len(frame)] = {"trial_id": "x", "policy": "", "status": "error"}  # no config
    written = write_report(frame, str(tmp_path), {"dataset": "digits"})
    assert written["best"] == "No trial finished: no verdict."
    assert "plot.png" not in written["paths"] and not (tmp_path / "plot.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2] == "**No trial finished: no verdict.**"
    assert "plot.png" not in report and "10 error" in report
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert sorted(summary["policy"]) == ["block_1=frozen", "block_1=tuned", "block_9=tuned",
                                         "scratch"]
    assert (summary["n"] == 0).all() and summary["mean"].isna().all()


def _interrupted(frame, tmp_path, mark):
    """`write_report` of an interrupted sweep: what it returns, and the report's lines from
    the headline on (after checking that the first is the mark)."""
    written = write_report(frame, str(tmp_path), {}, interrupted=mark)
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[2] == f"**{mark}.**"
    return written, lines[3:]


def test_interrupted_report_gives_no_verdict_without_two_seeds_each(tmp_path):
    frame = known_frame()
    frame.loc[frame["policy"] == "C", "status"] = ["ok", "unfinished", "unfinished"]
    mark = "INTERRUPTED: 10 of 12 trials finished"
    written, lines = _interrupted(frame, tmp_path, mark)
    assert lines[0] == "No verdict: 1 of 4 configurations have fewer than 2 finished seeds."
    assert written["verdict"].best is None
    summary = written["summary"]
    assert summary.loc[summary["policy"] == "C", "unfinished"].item() == 2
    # Every configuration with two seeds: the verdict stands, still marked.
    frame.loc[frame["policy"] == "C", "status"] = ["ok", "ok", "unfinished"]
    written = write_report(frame, str(tmp_path), {}, interrupted=mark)
    assert written["verdict"].best == "A" and written["best"].startswith(mark)


def test_interrupted_report_without_a_complete_configuration_does_not_say_none_finished(
        tmp_path):
    """Found by a fresh-user check: after an interrupted --lrs sweep (every configuration
    with an unfinished trial, its rows all marked unfinished) the report said "No trial
    finished" under a mark counting 5 finished trials."""
    frame = known_frame()
    frame["status"] = "unfinished"
    written, lines = _interrupted(frame, tmp_path, "INTERRUPTED (SIGINT): 5 of 24 trials "
                                  "finished")
    assert lines[0] == "No configuration has all its trials finished: no verdict."
    assert written["verdict"].best is None


def test_write_report_for_detection_names_map(tmp_path):
    frame = trials_frame().rename(columns={"test_accuracy": "test_map_50",
                                           "val_accuracy": "val_map_50"})
    settings = {"dataset": "digits", "task": "detection", "model": "seed_cnn"}
    written = write_report(frame, str(tmp_path), settings, metric="test_map_50")
    assert written["best"].startswith("Best on validation: block_1=tuned (val mAP@0.5 0.853, "
                                      "test 0.863")
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


def test_metric_bounds_names_proportions_only():
    """Found by a fresh-user check: a recipe compiled with metrics=["acc"] got the interval
    [-1.163, 1.906] for a mean accuracy."""
    from keras_blockreuse.sweep.report import metric_bounds

    for name in ("test_accuracy", "test_acc", "val_acc", "test_top5_acc",
                 "test_sparse_categorical_accuracy", "test_map_50", "val_auc", "test_f1"):
        assert metric_bounds(name) == (0.0, 1.0), name
    for name in ("test_loss", "val_loss", "test_cosine_similarity"):
        assert metric_bounds(name) is None, name
    assert mean_ci([0.2, 0.9], bounds=metric_bounds("test_acc"))[2:] == (0.0, 1.0)
    # Found by a fresh-user test: a regression sweep's test MAE had the interval
    # [-90.827, 165.289]; an error that cannot be negative is clipped at 0.
    for name in ("test_mae", "val_mse", "test_rmse", "test_mean_squared_error"):
        assert metric_bounds(name) == (0.0, math.inf), name
    mean, std, low, high = mean_ci([9.0, 65.5], bounds=metric_bounds("test_mae"))
    assert low == 0.0 and high == pytest.approx(37.25 + 12.7062 * std / math.sqrt(2), abs=1e-3)


def test_a_tied_policy_far_from_the_best_is_not_recommended(tmp_path):
    """Found by a fresh-user test (a regression sweep, 2 seeds, val MAE): the cheapest policy
    the paired test could not separate from the best was recommended, though its error was
    twice the best's and higher on every seed than a policy the same verdict called worse:
    with 2 seeds the test leaves almost everything tied. A tied policy is now recommended
    only within one standard error of the best's mean (Breiman et al. 1984); here none is, so
    the best is, and the report says why."""
    val = {  # the run's validation MAE per seed (lower is better)
        "p1f": [39.380966, 44.564457], "p2f": [48.497074, 54.519276],
        "p3f": [48.301491, 48.301491], "p1t": [31.993706, 39.585999],
        "p2t": [27.345728, 51.184132], "p3t": [25.248165, 25.266291],
        "scratch": [35.866554, 46.833073]}
    cost = {"p1f": 8225, "p2f": 17, "p3f": 0, "p1t": 8305, "p2t": 8305, "p3t": 8305,
            "scratch": 8305}
    frame = known_frame(val=val, cost=cost).rename(
        columns={"val_accuracy": "val_mae", "test_accuracy": "test_mae"})
    v = verdict(frame, "test_mae", higher_is_better=False)
    assert v.best == "p3t" and "p2f" in v.tied and v.status("p3f") == "worse"
    assert v.standard_error == pytest.approx(np.std(val["p3t"], ddof=1) / math.sqrt(2))
    assert v.near == ["p3t"] and v.recommended == "p3t"
    written = write_report(frame, str(tmp_path), {}, metric="test_mae", mode="min")
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[4] == ("None of them is within one standard error of the best's mean on "
                        f"validation (±{v.standard_error:.3g}, the one-standard-error rule, "
                        "Breiman et al. 1984): recommended, the best (8,305 trained "
                        "parameters).")
    assert written["verdict"].recommended == "p3t"
    # A tied policy within the best's noise, cheaper, is recommended; a cheaper one beyond it
    # is not.
    near = dict(val, p1f=[25.25, 25.27])
    assert verdict(known_frame(val=near, cost=cost).rename(
        columns={"val_accuracy": "val_mae", "test_accuracy": "test_mae"}), "test_mae",
        higher_is_better=False).recommended == "p1f"


def test_a_validation_part_of_one_class_is_said(tmp_path):
    """Found by a fresh-user test (helper-65): an .npz whose x_val held one class only (the
    last rows of data sorted by class) gave a verdict without a word: the majority-class
    rate was then 1.0, and the check skipped it as nothing to test, so the policy that
    answered that class most often was named best. No accuracy is above always answering
    the one class: the headline says that validation cannot rank the policies, and no tied
    policy is recommended on it."""
    from keras_blockreuse.sweep.run import _majority_rate
    from keras_blockreuse.sweep.user_data import from_arrays

    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    data = from_arrays((x[:8], np.array([0, 1, 2, 3] * 2)), (x[8:12], np.full(4, 3)),
                       (x[12:], np.array([0, 1, 2, 3])))
    assert _majority_rate(data, "test_accuracy") == (1.0, 4)
    written = write_report(known_frame(), str(tmp_path / "a"), {}, chance=(1.0, 30))
    assert written["best"].splitlines()[1] == (
        "The validation labels are all of one class (30 images): a model that always answers "
        "it scores 1.000, so validation accuracy cannot rank the policies, and this verdict "
        "measures how often each answers that class. Give validation samples of every class.")
    tied = verdict(known_frame(), chance=(1.0, 30))
    assert tied.near == [tied.best] and tied.at_chance


def test_a_best_not_above_the_majority_class_rate_is_said(tmp_path):
    """Found by a fresh-user test: every policy of a 4-class sweep sat near chance (0.25) and
    the report recommended one, saying nothing. Where the best's mean validation accuracy is
    not above the validation set's majority-class rate by an exact one-sided binomial test,
    the headline says the ranking may be noise."""
    from scipy import stats

    from keras_blockreuse.sweep.run import _majority_rate
    from keras_blockreuse.sweep.user_data import from_arrays

    # A's mean validation accuracy 0.900: 27 of 30 against a majority rate of 0.85.
    written = write_report(known_frame(), str(tmp_path / "a"), {}, chance=(0.85, 30))
    p = stats.binomtest(27, 30, 0.85, alternative="greater").pvalue
    assert p > 0.05
    lines = written["best"].splitlines()
    assert lines[1] == ("The best is not shown above the majority-class rate on validation "
                        f"(0.850 of 30 images, always answering the most frequent class; "
                        f"one-sided binomial p={format_p(p)}): the models may not have learned "
                        "the task in this budget, and the order of the policies may be noise. "
                        "Train longer (more epochs), or check the data and labels.")
    assert "majority-class" in (tmp_path / "a" / "report.md").read_text()
    # 0.900 of 300 against 0.5 is far above it: nothing said.
    assert "majority-class" not in write_report(known_frame(), str(tmp_path / "b"), {},
                                                chance=(0.5, 300))["best"]
    rng = np.random.default_rng(0)
    x, v = (rng.normal(size=(20, 4)).astype("float32") for _ in range(2))
    y = np.array([0, 1, 2, 2] * 5)
    data = from_arrays((x, y), (v, y))
    assert _majority_rate(data, "test_accuracy") == (0.5, 20)
    assert _majority_rate(data, "test_mae") is None
    # Found by a fresh-user test: a top-5 accuracy was held against the top-1 majority rate
    # (0.1 of 10 balanced classes), which guessing five classes already beats (0.5).
    assert _majority_rate(data, "test_sparse_top_k_categorical_accuracy") is None
    one_hot = np.eye(3)[y]
    assert _majority_rate(from_arrays((x, one_hot), (v, one_hot)), "test_categorical_accuracy") \
        == (0.5, 20)


def test_a_policy_at_the_majority_class_rate_is_not_recommended(tmp_path):
    """Found by a fresh-user test: with 2 seeds the best's standard error (±0.108) reached
    a policy that always answered one class (val accuracy 0.250 on both seeds, 4 balanced
    classes), and it was recommended, as the cheapest within one standard error, with no
    word: the majority-class check looked at the best only. Such a policy is no longer
    recommended, and the headline says why."""
    from scipy import stats

    val = {"best": [0.45, 0.234], "flat": [0.25, 0.25]}
    rows = [{"trial_id": f"{p}-{s}", "policy": p, "label": p, "code": "", "seed": s,
             "status": "ok", "val_accuracy": v, "test_accuracy": v,
             "trained_params": {"best": 1000, "flat": 0}[p], "error": ""}
            for p, values in val.items() for s, v in enumerate(values)]
    frame = pd.DataFrame(rows)
    assert verdict(frame).recommended == "flat"  # without the validation set's rate
    assert stats.binomtest(41, 120, 0.25, alternative="greater").pvalue < 0.05  # best: 0.342
    written = write_report(frame, str(tmp_path), {}, chance=(0.25, 120))
    chosen = written["verdict"]
    assert chosen.recommended == "best" and chosen.at_chance == ["flat"]
    lines = written["best"].splitlines()
    assert lines[1].startswith("Not shown worse than it") and "flat" in lines[1]
    assert lines[2:] == [
        "Recommended: the best (1,000 trained parameters).",
        "Not recommended, though within one standard error of the best's mean on validation "
        "(±0.108): flat: not shown above the majority-class rate on validation (a model that "
        "always answers the most frequent class scores it).",
        "Scratch has no finished full-budget seed: no comparison with it."]
    table = written["summary"].set_index("policy")
    assert table.loc["best", "recommended"] and not table.loc["flat", "recommended"]


def test_a_policy_left_out_that_scored_better_than_the_best_is_said(tmp_path):
    """Found by a fresh-user test: one of scratch's two seeds failed, so scratch (val 0.375
    on the seed it finished) was left out, and the headline named a best at 0.279 and
    recommended a policy at 0.275 without a word about it. Policies left out are listed,
    and those that scored better on the seeds they finished are said to be able to change
    the verdict."""
    extra = [{"trial_id": "S-3", "policy": "S", "label": "tune S", "code": "", "seed": 3,
              "status": "ok", "val_accuracy": 0.95, "test_accuracy": 0.96,
              "trained_params": 5, "error": ""},
             {"trial_id": "S-4", "policy": "S", "label": "tune S", "code": "", "seed": 4,
              "status": "error", "val_accuracy": math.nan, "test_accuracy": math.nan,
              "trained_params": 5, "error": "RuntimeError: boom"},
             {"trial_id": "W-5", "policy": "W", "label": "tune W", "code": "", "seed": 5,
              "status": "error", "val_accuracy": math.nan, "test_accuracy": math.nan,
              "trained_params": 5, "error": "RuntimeError: boom"}]
    written = write_report(known_frame(extra=extra), str(tmp_path), {})
    lines = written["best"].splitlines()
    assert lines[0].startswith("Best on validation: tune A (val accuracy 0.900")
    assert lines[1] == (
        "Not compared, with fewer than 2 finished full-budget seeds: tune S (1 finished "
        "full-budget seed), tune W (0 finished full-budget seeds). On the seeds they finished, "
        "tune S (0.950) scores better on validation than the best: this verdict may change "
        "when their trials are run again (a sweep resumed with --resume runs failed trials "
        "again).")
    # None better: the line lists them only.
    extra[0]["val_accuracy"] = 0.5
    lines = write_report(known_frame(extra=extra), str(tmp_path / "b"), {})["best"].splitlines()
    assert lines[1] == ("Not compared, with fewer than 2 finished full-budget seeds: tune S (1 "
                        "finished full-budget seed), tune W (0 finished full-budget seeds).")


def test_a_policy_never_compared_with_the_best_says_so(tmp_path):
    """Found by a fresh-user test: a policy that shares fewer than 2 seeds with the best
    (after failed trials) was listed as 'Not shown worse than it: tune D (n<2)'."""
    extra = [{"trial_id": f"D-{s}", "policy": "D", "label": "tune D", "code": "", "seed": s,
              "status": "ok", "val_accuracy": 0.5, "test_accuracy": 0.5,
              "trained_params": 5, "error": ""} for s in (5, 6)]
    written = write_report(known_frame(extra=extra), str(tmp_path), {})
    assert written["verdict"].tests["D"] == "n<2"
    assert "tune D (fewer than 2 seeds shared with it: not compared)" in \
        written["best"].splitlines()[1]


def test_a_constant_difference_has_no_interval():
    """Found by a fresh-user test: the same gain on every seed read '+0.050 test accuracy vs
    scratch [0.050, 0.050] (p=0.25)': an interval without width that excludes 0 while the
    sign test shows nothing. Such a difference has no t-interval (n/a)."""
    mean, low, high, p, n = paired_difference({0: 0.8, 1: 0.9, 2: 0.85},
                                              {0: 0.75, 1: 0.85, 2: 0.8})
    assert mean == pytest.approx(0.05) and math.isnan(low) and math.isnan(high)
    assert p == 0.25 and n == 3


def test_seeds_that_all_give_one_value_have_no_interval(tmp_path):
    """Every seed of a policy gave the same test accuracy: its interval was [0.854, 0.854],
    a certainty that three equal seeds do not give. It is n/a, and says why."""
    assert math.isnan(mean_ci([0.16666666, 0.16666667, 0.16666666])[2])  # float32 rounding
    frame = known_frame()
    frame.loc[frame["policy"] == "A", "test_accuracy"] = 0.854
    written = write_report(frame, str(tmp_path), {"dataset": "digits"})
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[2] == ("**Best on validation: tune A (val accuracy 0.900, test 0.854 on every "
                        "seed, n=3).**")
    table = [line for line in lines if line.startswith("| 1 | tune A")]
    assert table[0].startswith("| 1 | tune A |  | 1,000 | 3 | 0.900 | **best** | 0.854 ± 0.000 | "
                               "n/a (every seed equal) | ")
    row = written["summary"].set_index("policy").loc["A"]
    assert row["std"] == 0.0 and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])


def test_write_report_on_an_error_metric_and_values_that_diverged(tmp_path):
    """Found by a fresh-user test of the report's API: without mode=, an error (test_mae)
    was ranked higher-is-better, so scratch at MAE 30 was 'best' over a policy at 20; a NaN
    seed was dropped from the statistics unsaid (n=2, failed=0); a policy never compared
    with the best (no shared seeds) was recommended; a chance rate given for a non-accuracy
    crashed the report (now refused with a clear error, see
    test_chance_is_refused_where_it_cannot_apply); a NaN in settings wrote an invalid
    results.json."""
    rows = []
    for policy, cost, values in (("scratch", 100, [30.0, 31.0, 29.0]),
                                 ("tune", 100, [20.0, 21.0, float("nan")])):
        for seed, v in enumerate(values):
            rows.append({"policy": policy, "label": policy, "seed": seed, "status": "ok",
                         "val_mae": v, "test_mae": v, "trained_params": cost})
    frame = pd.DataFrame(rows)
    assert verdict(frame, "test_mae").best == "tune"  # lower is better for an error
    written = write_report(frame, str(tmp_path / "a"), {"x": float("nan")}, metric="test_mae")
    assert written["verdict"].best == "tune"
    summary = written["summary"].set_index("policy")
    assert summary.loc["tune", "n"] == 2 and summary.loc["tune", "failed"] == 1
    trials = pd.read_csv(tmp_path / "a" / "results.csv")
    assert trials.loc[trials["val_mae"].isna(), "error"].tolist() == [
        "the training diverged: test_mae is nan, val_mae is nan"]
    document = json.loads((tmp_path / "a" / "results.json").read_text(),
                          parse_constant=lambda token: pytest.fail(token))
    assert document["settings"]["x"] is None
    # A cheaper policy with no seed in common with the best is never recommended.
    extra = [{"trial_id": f"D-{s}", "policy": "D", "label": "tune D", "code": "", "seed": s,
              "status": "ok", "val_accuracy": 0.899, "test_accuracy": 0.5,
              "trained_params": 5, "error": ""} for s in (5, 6)]
    v = verdict(known_frame(extra=extra))
    assert "D" in v.tied and "D" not in v.near and v.recommended == "B"


def test_means_equal_to_float32_rounding_are_a_tie_broken_by_cost(tmp_path):
    """Found by a fresh-user test: two policies with the same validation accuracy, summed in
    another order (0.6 and 0.7 -> 0.6499999999999999; 0.65 twice -> 0.65), were ranked by the
    last bit: the expensive one was named best, its standard error was 0 (seeds equal), so
    the cheap one fell outside "±0" by 1e-16 and the expensive one was recommended. Means
    equal to float32 rounding are now equal: the cheaper one is the best and recommended."""
    val = {"big": [0.65, 0.65], "small": [0.6, 0.7], "scratch": [0.3, 0.32]}
    assert np.mean(val["small"]) < np.mean(val["big"])  # the last bit, as the run had it
    cost = {"big": 9000, "small": 100, "scratch": 9000}
    v = verdict(known_frame(val=val, cost=cost))
    assert v.best == "small" and v.tied[:2] == ["small", "big"]
    assert v.standard_error == pytest.approx(0.05) and v.near == ["small", "big"]
    assert v.recommended == "small"
    # Lower is better: the same rule at the bottom.
    errors = {"big": [0.15, 0.15], "small": [0.1, 0.2], "scratch": [0.7, 0.68]}
    assert np.mean(errors["small"]) > np.mean(errors["big"])  # worse by the last bit
    lower = verdict(known_frame(val=errors, cost=cost).rename(
        columns={"val_accuracy": "val_mae", "test_accuracy": "test_mae"}), "test_mae",
        higher_is_better=False)
    assert lower.best == "small" and lower.recommended == "small"
    # Within the top, the best is the cheapest; one bit lower, when the best's seeds are all
    # equal (standard error 0), is still near it.
    v = verdict(known_frame(val={"big": [0.6, 0.7], "small": [0.65, 0.65],
                                 "scratch": [0.3, 0.32]}, cost=cost))
    assert v.best == "small" and v.standard_error == 0 and v.near == ["small", "big"]
    assert v.recommended == "small"
    write_report(known_frame(val=val, cost=cost), str(tmp_path), {})
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[2].startswith("**Best on validation: tune small (val accuracy 0.650, ")
    assert "Recommended: the best, the cheapest of them (100 trained parameters)." in lines
    assert [line.split(" | ")[1] for line in lines if line.startswith("| 1 |")
            or line.startswith("| 2 |")] == ["tune small", "tune big"]  # the table agrees


def test_chance_is_refused_where_it_cannot_apply(tmp_path):
    """Found by a fresh-user test: `write_report(chance=)` with a regression metric tested
    each policy's validation MAE as if it were an accuracy against the majority-class rate
    (and left policies out of the recommendation for it); a rate given in percent was
    silently ignored. Both are refused, naming what was received."""
    frame = known_frame().rename(columns={"val_accuracy": "val_mae",
                                          "test_accuracy": "test_mae"})
    with pytest.raises(ValueError, match=r"applies to an accuracy over class labels, higher is "
                       r"better; received metric='test_mae', higher_is_better=False"):
        write_report(frame, str(tmp_path), {}, metric="test_mae", mode="min", chance=(0.3, 90))
    with pytest.raises(ValueError, match=r"received \(65, 100\)"):
        verdict(known_frame(), chance=(65, 100))
    for bad in ((0.1, math.inf), ("0.1", 300), (True, 300), (0.1, True), (0.1, 2.5)):
        with pytest.raises(ValueError, match="chance= is"):
            verdict(known_frame(), chance=bad)
    with pytest.raises(ValueError, match="higher_is_better=False"):
        verdict(known_frame(), higher_is_better=False, chance=(0.3, 90))
    assert not (tmp_path / "report.md").exists()  # refused before anything is written
    assert verdict(known_frame(), chance=(0.1, 90)).recommended == "B"  # an accuracy: applies


def test_a_best_compared_with_nothing_says_so_and_no_single_seed_scratch_gain(tmp_path):
    """Found by a fresh-user test: when every policy but the best had fewer than 2 finished
    seeds, the headline had no recommendation line, and compared the best with scratch's one
    finished seed ("+0.200 test accuracy vs scratch (paired, Holm-adjusted p=n/a)") though
    scratch was listed as not compared."""
    rows = []
    for policy, values, cost in (("scratch", [0.5, None], 100), ("A", [0.7, 0.72], 50),
                                 ("B", [0.9, None], 10)):
        for seed, v in enumerate(values):
            rows.append({"policy": policy, "label": policy, "seed": seed,
                         "status": "ok" if v is not None else "error", "val_accuracy": v,
                         "test_accuracy": v, "trained_params": cost,
                         "error": "" if v is not None else "boom"})
    written = write_report(pd.DataFrame(rows), str(tmp_path), {})
    lines = written["best"].splitlines()
    assert lines[0] == "Best on validation: A (val accuracy 0.710, test 0.710 [0.583, 0.837], n=2)."
    assert lines[1].startswith("Not compared, with fewer than 2 finished full-budget seeds: "
                               "B (1 finished full-budget seed), scratch (1 finished")
    assert lines[2:] == [
        "No other policy has 2 finished full-budget seeds to compare with it: recommended, the "
        "best, compared with nothing.",
        "Scratch has fewer than 2 finished full-budget seeds: no comparison with it."]
    alone = [r for r in rows if r["policy"] == "A"]
    assert write_report(pd.DataFrame(alone), str(tmp_path / "alone"), {})["best"].splitlines()[
        1:] == ["It is the only policy: recommended, compared with nothing.",
                "Scratch has no finished full-budget seed: no comparison with it."]


def test_a_tie_is_float32_rounding_of_the_two_means_compared_not_of_the_largest():
    """Found by a fresh-user re-check: the tie tolerance was 8 float32 epsilons of the
    largest mean of any policy, at least 1: a diverged scratch (val mse 1e6) made 0.51 and
    1.41 a tie, and the cheaper, far worse policy was named best and recommended; MSEs of
    1.1e-7 and 8.1e-7 tied by the floor of 1. Two means tie only within rounding of their
    own size."""
    val = {"A": [0.50, 0.52, 0.51], "B": [1.40, 1.42, 1.41], "scratch": [1e6, 1.1e6, 0.9e6]}
    cost = {"A": 9000, "B": 100, "scratch": 9000}
    frame = known_frame(val=val, cost=cost).rename(
        columns={"val_accuracy": "val_mse", "test_accuracy": "test_mse"})
    v = verdict(frame, "test_mse", higher_is_better=False)
    assert v.best == "A" and v.recommended == "A"
    small = {"A": [1.0e-7, 1.1e-7, 1.2e-7], "B": [8.0e-7, 8.1e-7, 8.2e-7],
             "scratch": [5e-6, 6e-6, 7e-6]}
    v = verdict(known_frame(val=small, cost=cost).rename(
        columns={"val_accuracy": "val_mse", "test_accuracy": "test_mse"}), "test_mse",
        higher_is_better=False)
    assert v.best == "A" and v.recommended == "A"
