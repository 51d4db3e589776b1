"""The report of a sweep: the verdict, statistics over seeds, files and a plot.

The verdict is chosen on validation and reported on test (`verdict`): the policy with the best
mean validation metric is compared with every other policy, paired over seeds, and the p-values
of these comparisons are adjusted for multiple comparisons with Holm's step-down method (Holm
1979, "A simple sequentially rejective multiple test procedure"). The policies whose adjusted
p-value is at least `ALPHA` are *tied* (not shown worse than the best). Among the tied policies
whose mean validation metric is within one standard error of the best's (the standard error of
the best's mean over seeds), the one with the fewest trained parameters is recommended: the
one-standard-error rule (Breiman, Friedman, Olshen & Stone 1984, "Classification and Regression
Trees"; Hastie, Tibshirani & Friedman 2009, "The Elements of Statistical Learning", 7.10). A test
of few seeds leaves far worse policies tied; the rule recommends a cheaper policy only where it
is as good as the best within the best's own seed-to-seed noise. Only full-budget finished
trials (status `ok`) count.

For every policy the table also gives the mean, standard deviation and 95% confidence interval
(Student's t, clipped to the metric's range) of the test metric over seeds, and the paired
difference from the from-scratch baseline on test with its Holm-adjusted p-value. Degenerate
cases are shown as such: no interval from fewer than two seeds ("n/a"), and no t-test for
differences with zero variance (an exact sign test instead, or "n/a" when they are all zero).

Written to the output folder: `results.csv` (one row per trial), `summary.csv` and
`results.json` (one row per policy), `plot.png` and `report.md`.

Example:

```python
import pandas as pd
from keras_blockreuse.sweep.report import verdict

trials = pd.DataFrame({
    "policy": ["scratch"] * 3 + ["block_1=tuned"] * 3,
    "seed": [0, 1, 2] * 2,
    "status": ["ok"] * 6,
    "val_accuracy": [0.69, 0.71, 0.73, 0.84, 0.87, 0.85],
    "test_accuracy": [0.70, 0.72, 0.74, 0.85, 0.88, 0.86],
})
v = verdict(trials)
v.best, v.tied, v.recommended      # ('block_1=tuned', ['block_1=tuned'], 'block_1=tuned')
```
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from keras_blockreuse.sweep.space import SCRATCH

CONFIDENCE = 0.95
ALPHA = 0.05
"""The level of the comparisons with the best policy: Holm-adjusted p < ALPHA means worse."""
MIN_SEEDS = 2
"""Full-budget finished seeds a policy needs to enter the verdict."""
TRIAL_COLUMNS = [
    "trial_id", "policy", "label", "code", "trained_params", "seed", "status", "test_accuracy",
    "val_accuracy", "accuracy", "test_loss", "val_loss", "loss", "epochs_done", "train_seconds",
    "node_ip", "node_id", "hostname", "pid", "gpu_ids", "experiment", "error",
]
METRIC_NAMES = {"test_accuracy": "accuracy", "test_map_50": "mAP@0.5", "test_map": "mAP@[.5:.95]"}
"""How the report names a metric (`metric` of `write_report`); others are shown as they are."""
SUMMARY_COLUMNS = [
    "rank", "policy", "label", "code", "trained_params", "n", "failed", "stopped", "unfinished",
    "val_mean", "mean", "std", "ci_low", "ci_high", "vs_best_p", "vs_best_p_holm", "verdict",
    "recommended", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm",
]
"""`summary.csv`: rank by validation; `mean` .. `ci_high` are the test metric; `vs_best_*` the
paired validation comparison with the best policy; `diff` .. `p_holm` the paired test comparison
with scratch; `verdict` is "best", "tied", "worse" or "too few seeds"."""
STATUSES = ("ok", "error", "stopped", "unfinished")
"""A trial's status: finished its full budget (`ok`), raised (`error`), stopped early by the
scheduler (`stopped`, ASHA), or not finished when the sweep ended (`unfinished`, interrupted)."""


def metric_name(metric: str) -> str:
    """`"test_accuracy"` -> `"accuracy"`, `"test_map_50"` -> `"mAP@0.5"`."""
    return METRIC_NAMES.get(metric, metric.removeprefix("test_").replace("_", " "))


def val_metric_of(metric: str) -> str:
    """The validation counterpart of a test metric: `"test_map_50"` -> `"val_map_50"`."""
    return "val_" + metric.removeprefix("test_")


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """The range of a metric: `(0, 1)` for a proportion (accuracy or Keras's `acc`, mAP,
    AUC, ...), `(0, inf)` for an error that cannot be negative (Keras's mean absolute,
    squared and percentage errors, `mae`, `mse`, `rmse`, `mape`, `msle`), None for others
    (a loss, which a custom or cosine loss makes negative), whose intervals are not clipped."""
    name = metric.removeprefix("test_").removeprefix("val_").lower()
    bounded = ("accuracy", "acc", "map", "auc", "precision", "recall", "f1", "iou")
    if any(name == b or name.startswith(b) or name.endswith(b) for b in bounded):
        return (0.0, 1.0)
    errors = {"mae", "mse", "rmse", "mape", "msle", "mean_absolute_error", "mean_squared_error",
              "root_mean_squared_error", "mean_absolute_percentage_error",
              "mean_squared_logarithmic_error"}
    return (0.0, math.inf) if name in errors else None


def _is_error(metric: str) -> bool:
    """True for an error metric, which is better lower (`mae`, `mse`, ...)."""
    return metric_bounds(metric) == (0.0, math.inf)


def diverged(metrics: Mapping[str, object]) -> str:
    """`"the training diverged: val_mae is nan"` for the metrics (name -> value) that are not
    finite numbers (NaN, inf), else `""`."""
    def finite(value) -> bool:
        try:
            return math.isfinite(float(value))
        except (TypeError, ValueError):
            return False

    bad = [f"{name} is {value}" for name, value in metrics.items() if not finite(value)]
    return "the training diverged: " + ", ".join(bad) if bad else ""


def usable(trials: pd.DataFrame, metric: str = "test_accuracy",
           val_metric: str | None = None) -> pd.DataFrame:
    """`trials` with each finished row (status `ok`) whose test or validation metric is NaN or
    inf (a training that diverged) marked `error`, saying which, so that it counts among the
    failed seeds rather than vanishing from the statistics. Returns a copy where any is
    marked."""
    val_metric = val_metric or val_metric_of(metric)
    if "status" not in trials or not len(trials):
        return trials
    columns = [c for c in (metric, val_metric) if c in trials]
    why = {i: diverged({c: trials.loc[i, c] for c in columns})
           for i in trials.index[trials["status"] == "ok"]}
    why = {i: text for i, text in why.items() if text}
    if not why:
        return trials
    trials = trials.copy()
    trials["error"] = trials["error"].astype(object) if "error" in trials else ""
    for i, text in why.items():
        trials.loc[i, ["status", "error"]] = ["error", text]
    return trials


def trial_columns(metric: str = "test_accuracy") -> list[str]:
    """The columns of results.csv for `metric`: TRIAL_COLUMNS, whose accuracy and its losses
    are replaced by `metric` and its validation counterpart for another metric."""
    if metric == "test_accuracy":
        return list(TRIAL_COLUMNS)
    columns = []
    for c in TRIAL_COLUMNS:
        if c == "test_accuracy":
            columns.append(metric)
        elif c == "val_accuracy":
            columns.append(val_metric_of(metric))
        elif c not in ("accuracy", "test_loss", "val_loss"):
            columns.append(c)
    return columns


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE,
            bounds: tuple[float, float] | None = None) -> tuple[float, ...]:
    """Mean, sample standard deviation and t-distribution confidence interval of `values`.

    NaN values are ignored. With fewer than two values the deviation and the interval are NaN
    (shown as "n/a"): one seed says nothing about the spread. Values that do not vary (to
    float32 rounding, as Keras computes metrics) have no interval either: t gives one without
    width, a certainty that a few equal seeds do not give. With `bounds` the interval is
    clipped to that range (a mean accuracy lies in [0, 1], whatever t says).

    Example:

    >>> mean_ci([0.7, 0.8, 0.9])   # t(0.975, 2) = 4.303
    (0.8, 0.1, 0.5515..., 1.0484...)
    >>> mean_ci([0.7, 0.8, 0.9], bounds=(0, 1))[3]
    1.0
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return (math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return (mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    if np.all(np.abs(x - x[0]) <= rounding_tolerance(x)):
        return (mean, std, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return (mean, std, low, high)


def rounding_tolerance(values: Sequence[float]) -> float:
    """How far apart metric values can be and still be equal: Keras computes metrics in
    float32, so values that differ by its rounding (0.16666666 and 0.16666667) are equal, else
    t would be taken on rounding noise (p = 1e-14 from 3 seeds). Relative to the values' own
    size (8 float32 epsilons of the largest): pass only the values being compared, as one
    value far larger (a diverged seed) widens it for all."""
    return 8 * float(np.finfo(np.float32).eps) * float(
        np.max(np.abs(np.asarray(values, dtype=float))))


def rounding_equal(a: float, b: float) -> bool:
    """Whether two metric values are equal to float32 rounding (`rounding_tolerance` of the
    two): 0.65 and 0.6499999999999999 are."""
    return abs(a - b) <= rounding_tolerance([a, b])


def paired_test(values: Sequence[float], baseline: Sequence[float]) -> tuple[float, str]:
    """Two-sided paired test of `values` against `baseline` (same order): `(p, test)`.

    `test` is `"t"` (Student's paired t-test, `scipy.stats.ttest_rel`), `"sign"` (the
    differences are all equal, to float32 rounding, and not zero, so t is undefined or
    measures rounding noise: the exact sign test, whose
    p-value is 2 * 0.5 ** n), `"identical"` (every difference is zero; p is NaN) or `"n<2"`
    (fewer than two pairs; p is NaN). A p-value is never printed as 0.

    Example:

    >>> paired_test([0.8, 0.9, 0.85], [0.7, 0.8, 0.75])   # the same gain on every seed
    (0.25, 'sign')
    """
    from scipy import stats

    a = np.asarray(values, dtype=float)
    b = np.asarray(baseline, dtype=float)
    d = a - b
    if len(d) < 2:
        return (math.nan, "n<2")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"paired_test needs finite values; received {list(a)} and {list(b)} "
                         "(a seed that diverged belongs among the failed: see `usable`).")
    tolerance = rounding_tolerance(np.r_[a, b])
    if np.all(np.abs(d) <= tolerance):
        return (math.nan, "identical")
    if np.all(np.abs(d - d[0]) <= tolerance):
        return (float(stats.binomtest(len(d), len(d), 0.5).pvalue), "sign")
    return (float(stats.ttest_rel(a, b).pvalue), "t")


def paired_difference(
    values: Mapping, baseline: Mapping, confidence: float = CONFIDENCE,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float, float, float, int]:
    """Paired comparison of two policies over their common seeds.

    Args:
        values, baseline: seed -> metric.
        bounds: the metric's range; the interval of the difference is clipped to
            `[lo - hi, hi - lo]`.

    Returns:
        `(mean difference, ci_low, ci_high, p_value, n_pairs)`; the p-value is that of
        `paired_test` (NaN when there is no test: fewer than two pairs, or identical values).
        Differences that do not vary have no t-interval (NaN: it would have no width, and
        exclude 0 where the sign test shows nothing).

    Example:

    >>> paired_difference({0: 0.8, 1: 0.9, 2: 0.85}, {0: 0.7, 1: 0.75, 2: 0.72})[3] < 0.05
    True
    """
    seeds = sorted(s for s in values if s in baseline
                   and math.isfinite(values[s]) and math.isfinite(baseline[s]))
    d = np.array([values[s] - baseline[s] for s in seeds], dtype=float)
    if len(d) == 0:
        return (math.nan, math.nan, math.nan, math.nan, 0)
    span = None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])
    mean, _, low, high = mean_ci(d, confidence, span)
    p, test = paired_test([values[s] for s in seeds], [baseline[s] for s in seeds])
    if test in ("sign", "identical"):
        low = high = math.nan
    return (mean, low, high, p, len(d))


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values (Holm 1979).

    Sorted ascending, the i-th of m p-values (from 0) becomes `max over j <= i of
    min(1, (m - j) * p_j)`; rejecting where the adjusted value is below alpha controls the
    family-wise error rate at alpha. NaN values (no test) are left out of the family and stay NaN.

    Example:

    >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
    {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    tested = sorted((p, k) for k, p in p_values.items() if not math.isnan(p))
    m = len(tested)
    adjusted = {k: math.nan for k in p_values}
    running = 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[k] = running
    return adjusted


@dataclasses.dataclass
class Verdict:
    """Which policy to use, chosen on validation, with the policies not shown worse than it.

    Attributes:
        best: the policy with the best mean validation metric (None: no verdict, see `reason`);
            means equal to float32 rounding are equal, and the cheapest of them is the best.
        tied: the policies not shown worse than `best` by the paired tests (it included), best
            first by validation.
        standard_error: the standard error of `best`'s mean validation metric over seeds
            (standard deviation, ddof 1, over the square root of its seeds).
        near: the policies of `tied` whose mean validation metric is within `standard_error` of
            `best`'s (it included): the one-standard-error rule (Breiman et al. 1984).
        recommended: the policy of `near` with the fewest trained parameters (`best` when the
            counts are unknown), leaving out those `at_chance`.
        at_chance: policies of `near` (not `best`) whose mean validation accuracy is not shown
            above the validation set's majority-class rate (`verdict`'s `chance`): never
            recommended, as a model that always answers one class scores that rate.
        p_values, adjusted: paired validation p-value of each other eligible policy against
            `best`, raw and Holm-adjusted (NaN: no test, see `tests`).
        tests: the test behind each p-value (`paired_test`).
        excluded: policies left out, with why (fewer than `MIN_SEEDS` full-budget seeds).
        costs: trained parameters per policy (None: unknown).
        val_means: mean validation metric per eligible policy.
        labels: readable names of the policies.
        reason: why there is no verdict, when `best` is None.
    """

    metric: str
    val_metric: str
    higher_is_better: bool = True
    alpha: float = ALPHA
    best: str | None = None
    tied: list = dataclasses.field(default_factory=list)
    standard_error: float = math.nan
    near: list = dataclasses.field(default_factory=list)
    recommended: str | None = None
    at_chance: list = dataclasses.field(default_factory=list)
    p_values: dict = dataclasses.field(default_factory=dict)
    adjusted: dict = dataclasses.field(default_factory=dict)
    tests: dict = dataclasses.field(default_factory=dict)
    excluded: dict = dataclasses.field(default_factory=dict)
    costs: dict = dataclasses.field(default_factory=dict)
    val_means: dict = dataclasses.field(default_factory=dict)
    seeds: dict = dataclasses.field(default_factory=dict)
    labels: dict = dataclasses.field(default_factory=dict)
    reason: str = ""

    def name(self, policy: str) -> str:
        return str(self.labels.get(policy, policy))

    def status(self, policy: str) -> str:
        """"best", "tied", "worse" or "too few seeds" ("" for an unknown policy)."""
        if policy == self.best:
            return "best"
        if policy in self.tied:
            return "tied"
        if policy in self.excluded:
            return "too few seeds"
        return "worse" if policy in self.p_values else ""


def verdict(trials: pd.DataFrame, metric: str = "test_accuracy",
            higher_is_better: bool | None = None,
            val_metric: str | None = None, alpha: float = ALPHA,
            require_all: bool = False, chance: tuple[float, int] | None = None) -> Verdict:
    """Choose a policy on validation: the best, the policies tied with it, and the cheapest of
    those within one standard error of it (the one-standard-error rule, Breiman et al. 1984).

    Args:
        trials: one row per trial with `policy`, `seed`, `status` and the validation metric;
            `label` and `trained_params` are used when present. Only rows with status `ok`
            (full budget, finished) count.
        metric: the test metric (reported, never used to choose).
        higher_is_better: the metrics' direction (default: lower is better for an error,
            `mae`, `mse`, ...; else higher).
        val_metric: the validation metric that chooses (default `val_metric_of(metric)`).
        alpha: the family-wise error rate of the comparisons with the best (Holm).
        chance: for a classification, `(rate, images)`: the validation set's majority-class
            rate and size; a policy other than the best whose mean validation accuracy is not
            above it (exact one-sided binomial test at `alpha`) is not recommended. Only for
            an accuracy (`metric` names one, higher is better).
        require_all: give no verdict unless every policy in `trials` has `MIN_SEEDS`
            full-budget seeds (for an interrupted sweep).

    Returns:
        A `Verdict`; its `best` is None when no policy has `MIN_SEEDS` finished seeds (or, with
        `require_all`, when one lacks them), with `reason` saying so.

    Raises:
        ValueError: `chance` is given for a metric that is not an accuracy, or is not a
            `(rate, images)` pair of a proportion and a positive count.
    """
    if higher_is_better is None:
        higher_is_better = not _is_error(metric)
    _check_chance(chance, metric, higher_is_better)
    trials = usable(trials, metric, val_metric)
    val_metric = val_metric or val_metric_of(metric)
    result = Verdict(metric=metric, val_metric=val_metric, higher_is_better=higher_is_better,
                     alpha=alpha)
    if "label" in trials:
        result.labels = {p: (lab if isinstance(lab, str) and lab else p) for p, lab in
                         trials.groupby("policy", sort=False)["label"].first().items()}
    if "trained_params" in trials:
        for p, v in trials.groupby("policy", sort=False)["trained_params"].first().items():
            result.costs[p] = None if v is None or pd.isna(v) else int(v)
    ok = trials[(trials["status"] == "ok")] if len(trials) else trials
    if val_metric not in trials:
        result.reason = f"the trials have no {val_metric!r} column to choose on"
        return result
    ok = ok[np.isfinite(ok[val_metric].astype(float))]  # (a diverged seed's NaN or inf: no value)
    values = {p: dict(zip(g["seed"], g[val_metric].astype(float), strict=True))
              for p, g in ok.groupby("policy", sort=False)}
    for policy in dict.fromkeys(trials["policy"]):
        n = len(values.get(policy, {}))
        if n < MIN_SEEDS:
            result.excluded[policy] = f"{n} finished full-budget seed{'s' if n != 1 else ''}"
    eligible = {p: v for p, v in values.items() if p not in result.excluded}
    if require_all and result.excluded:
        result.reason = (f"{len(result.excluded)} of {trials['policy'].nunique()} configurations "
                         f"have fewer than {MIN_SEEDS} finished seeds")
        return result
    if not eligible:
        result.reason = f"no policy has {MIN_SEEDS} finished full-budget seeds"
        return result
    sign = 1.0 if higher_is_better else -1.0
    result.val_means = {p: float(np.mean(list(v.values()))) for p, v in eligible.items()}
    result.seeds = {p: len(v) for p, v in eligible.items()}

    def cost(p):
        c = result.costs.get(p)
        return math.inf if c is None else c

    # Means equal to float32 rounding (0.65 and 0.6499999999999999: the same seeds' accuracies
    # summed in another order) are equal: the best is the cheapest of those at the top.
    top = max(sign * m for m in result.val_means.values())
    order = sorted(eligible, key=lambda p: (
        -top if rounding_equal(top, sign * result.val_means[p]) else -sign * result.val_means[p],
        cost(p), p))
    best = order[0]
    result.best = best
    for p in order[1:]:
        common = sorted(s for s in eligible[p] if s in eligible[best])
        result.p_values[p], result.tests[p] = paired_test(
            [eligible[best][s] for s in common], [eligible[p][s] for s in common])
    result.adjusted = holm(result.p_values)
    result.tied = [best] + [p for p in order[1:] if result.tests[p] in ("identical", "n<2")
                            or result.adjusted[p] >= alpha]
    seeds = list(eligible[best].values())
    result.standard_error = float(np.std(seeds, ddof=1) / math.sqrt(len(seeds)))
    limit = result.val_means[best] - sign * result.standard_error
    result.near = [p for p in result.tied
                   if (sign * (result.val_means[p] - limit) >= 0
                       or rounding_equal(result.val_means[p], limit))
                   and result.tests.get(p) != "n<2"]  # (never compared: not recommended)
    if chance is not None:
        result.at_chance = [p for p in result.near if p != best and not _above_chance(
            result.val_means[p], *chance, alpha=alpha)]
        result.near = [p for p in result.near if p not in result.at_chance]
    known = all(result.costs.get(p) is not None for p in result.near)
    result.recommended = min(result.near, key=lambda p: (cost(p), order.index(p))) if known \
        else best
    return result


def summarize(trials: pd.DataFrame, metric: str = "test_accuracy",
              higher_is_better: bool | None = None, chosen: Verdict | None = None,
              mode: str | None = None) -> pd.DataFrame:
    """One row per policy with the columns of SUMMARY_COLUMNS, ranked by validation.

    `trials` needs `policy`, `seed`, `status` and `metric` columns (`label`, `code`,
    `trained_params` and the validation metric are used when present). Only trials with status
    `ok` enter the statistics; `failed`, `stopped` and `unfinished` count the others. The
    difference columns compare with the `scratch` policy on the test metric. `chosen` is the
    verdict (computed here when not given). `mode` (`"max"` or `"min"`), when given, sets
    `higher_is_better` (default: lower is better for an error, `mae`, `mse`, ...; else
    higher). A finished trial whose metric is NaN or inf counts as failed (`usable`).
    """
    if mode is not None:
        higher_is_better = mode == "max"
    if higher_is_better is None:
        higher_is_better = not _is_error(metric)
    trials = usable(trials, metric)
    chosen = chosen or verdict(trials, metric, higher_is_better)
    bounds = metric_bounds(metric)
    val_metric = val_metric_of(metric)
    ok = trials[trials["status"] == "ok"]
    ok = ok[np.isfinite(ok[metric].astype(float))]  # (a diverged seed's NaN or inf: no value)
    base = ok[ok["policy"] == SCRATCH]
    baseline = dict(zip(base["seed"], base[metric].astype(float), strict=True))
    rows = []
    for policy, group in trials.groupby("policy", sort=False):
        good = ok[ok["policy"] == policy]
        values = good[metric].astype(float).tolist()
        mean, std, low, high = mean_ci(values, bounds=bounds)
        if policy == SCRATCH:
            diff = (0.0, math.nan, math.nan, math.nan, len(values))
        else:
            diff = paired_difference(dict(zip(good["seed"], good[metric].astype(float),
                                              strict=True)), baseline, bounds=bounds)
        val = good[val_metric].astype(float).mean() if val_metric in good else math.nan
        status = group["status"]
        cost = chosen.costs.get(policy)
        rows.append({
            "policy": policy,
            "label": group["label"].iloc[0] if "label" in group else policy,
            "code": group["code"].iloc[0] if "code" in group else "",
            "trained_params": cost if cost is not None else math.nan,
            "n": len(values),
            "failed": int((status == "error").sum()),
            "stopped": int((status == "stopped").sum()),
            "unfinished": int((~status.isin(["ok", "error", "stopped"])).sum()),
            "val_mean": float(val) if val == val else math.nan,
            "mean": mean, "std": std, "ci_low": low, "ci_high": high,
            "vs_best_p": chosen.p_values.get(policy, math.nan),
            "vs_best_p_holm": chosen.adjusted.get(policy, math.nan),
            "verdict": chosen.status(policy),
            "recommended": policy == chosen.recommended,
            "diff": diff[0], "diff_ci_low": diff[1], "diff_ci_high": diff[2],
            "p_value": diff[3],
        })
    summary = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in ("rank",
                                                                                  "p_holm")])
    adjusted = holm(dict(zip(summary["policy"], summary["p_value"].astype(float), strict=True)))
    summary["p_holm"] = summary["policy"].map(adjusted)
    eligible = summary["verdict"].isin(["best", "tied", "worse"])
    # the best first (the cheapest of means equal to float32 rounding, see `verdict`)
    summary = summary.assign(_eligible=~eligible, _other=summary["verdict"] != "best").sort_values(
        ["_eligible", "_other", "val_mean"], ascending=[True, True, not higher_is_better],
        na_position="last", kind="stable").drop(columns=["_eligible", "_other"])
    summary.insert(0, "rank", range(1, len(summary) + 1))
    return summary.reset_index(drop=True)[SUMMARY_COLUMNS]


def format_p(p: float) -> str:
    """A p-value for people: 3 significant digits, "n/a" for none, never "0"."""
    if p is None or math.isnan(p):
        return "n/a"
    if p < 1e-300:
        return "< 1e-300"
    return f"{p:.3g}"


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{low:.3f}, {high:.3f}]"


def _equal_seeds(row) -> bool:
    """Whether a summary row's seeds all gave one test value (`mean_ci`: no interval)."""
    return row["n"] >= 2 and not math.isnan(row["std"]) and math.isnan(row["ci_low"])


_UNTESTED = {"identical": "identical to it on every seed",
             "n<2": "fewer than 2 seeds shared with it: not compared"}


def headline(chosen: Verdict, summary: pd.DataFrame,
             chance: tuple[float, int] | None = None) -> str:
    """The verdict in words (report.md's first paragraph and the console's last lines).

    `chance`: for a classification, `(rate, images)`: the validation set's majority-class rate
    and size. Where the best's mean validation accuracy is not above that rate by an exact
    one-sided binomial test at `ALPHA`, a line says the ranking may be noise.
    """
    _check_chance(chance, chosen.metric, chosen.higher_is_better)
    test = metric_name(chosen.metric)
    if chosen.best is None:
        return f"No verdict: {chosen.reason}."
    rows = summary.set_index("policy")

    def described(p: str) -> str:
        r = rows.loc[p]
        text = f"{chosen.name(p)} (val {test} {chosen.val_means[p]:.3f}, test {r['mean']:.3f}"
        if not math.isnan(r["ci_low"]):
            text += f" {_interval(r['ci_low'], r['ci_high'])}"
        elif _equal_seeds(r):
            text += " on every seed"
        return text + f", n={int(r['n'])})"

    lines = [f"Best on validation: {described(chosen.best)}."]
    if chance is not None:
        lines += _at_chance(chosen.val_means[chosen.best], *chance, alpha=chosen.alpha)
    lines += _not_compared(chosen, rows)
    others = [p for p in chosen.tied if p != chosen.best]
    if others:
        shown = ", ".join(f"{chosen.name(p)} (p={format_p(chosen.adjusted[p])})"
                          if chosen.tests[p] not in ("identical", "n<2")
                          else f"{chosen.name(p)} ({_UNTESTED[chosen.tests[p]]})" for p in others)
        lines.append(f"Not shown worse than it (paired on validation over seeds, Holm-adjusted "
                     f"p >= {chosen.alpha:g}): {shown}.")
    elif chosen.p_values:
        lines.append(f"Every other policy is worse on validation (paired over seeds, "
                     f"Holm-adjusted p < {chosen.alpha:g}).")
    elif chosen.excluded:
        lines.append(f"No other policy has {MIN_SEEDS} finished full-budget seeds to compare "
                     "with it: recommended, the best, compared with nothing.")
    else:
        lines.append("It is the only policy: recommended, compared with nothing.")
    rec = chosen.recommended
    cost = chosen.costs.get(rec)
    near = [p for p in chosen.near if p != chosen.best]
    within = "within one standard error of the best's mean on validation"
    rule = (f"{within} (±{chosen.standard_error:.3g}, the one-standard-error rule, Breiman et "
            "al. 1984)")
    known = all(chosen.costs.get(p) is not None for p in chosen.near)
    if others and not near and chosen.at_chance:
        lines.append("Recommended: the best"
                     + (f" ({cost:,} trained parameters)." if cost is not None else "."))
    elif others and not near:
        lines.append(f"None of them is {rule}: recommended, the best"
                     + (f" ({cost:,} trained parameters)." if cost is not None else "."))
    elif others:
        lines.append(f"Of these, {rule}: {', '.join(chosen.name(p) for p in near)}.")
        if not known:
            lines.append("Recommended: the best (trained parameter counts unknown).")
        elif rec == chosen.best:
            lines.append(f"Recommended: the best, the cheapest of them ({cost:,} trained "
                         "parameters).")
        else:
            lines.append(f"Recommended, the cheapest of these (the best included): "
                         f"{described(rec)}, {cost:,} trained parameters.")
    if chosen.at_chance:
        names = ", ".join(chosen.name(p) for p in chosen.at_chance)
        lines.append(f"Not recommended, though {within} (±{chosen.standard_error:.3g}): "
                     f"{names}: not shown above the majority-class rate on validation (a model "
                     "that always answers the most frequent class scores it).")
    r = rows.loc[rec]
    if rec == SCRATCH:
        lines.append("Training from scratch: no transfer policy beats it on validation.")
    elif SCRATCH not in rows.index or rows.loc[SCRATCH, "n"] == 0:
        lines.append("Scratch has no finished full-budget seed: no comparison with it.")
    elif SCRATCH in chosen.excluded:
        lines.append(f"Scratch has fewer than {MIN_SEEDS} finished full-budget seeds: no "
                     "comparison with it.")
    elif not math.isnan(r["diff"]):
        gain = f"{r['diff']:+.3f} test {test} vs scratch"
        if not math.isnan(r["diff_ci_low"]):
            gain += f" {_interval(r['diff_ci_low'], r['diff_ci_high'])}"
        lines.append(f"{chosen.name(rec)}: {gain} (paired, Holm-adjusted p="
                     f"{format_p(r['p_holm'])}).")
    return "\n".join(lines)


def _not_compared(chosen: Verdict, rows: pd.DataFrame) -> list[str]:
    """The line for policies left out of the verdict (fewer than `MIN_SEEDS` finished
    full-budget seeds: failed, diverged or stopped trials), saying which of them scored better
    on validation than the best, on the seeds they finished; or none."""
    if not chosen.excluded:
        return []
    sign = 1.0 if chosen.higher_is_better else -1.0
    best = chosen.val_means[chosen.best]
    listed, above = [], []
    for p, why in chosen.excluded.items():
        value = rows.loc[p, "val_mean"] if p in rows.index else math.nan
        listed.append(f"{chosen.name(p)} ({why})")
        if (not math.isnan(value) and sign * (value - best) > 0
                and not rounding_equal(value, best)):
            above.append(f"{chosen.name(p)} ({value:.3f})")
    line = (f"Not compared, with fewer than {MIN_SEEDS} finished full-budget seeds: "
            f"{', '.join(listed)}.")
    if above:
        line += (f" On the seeds they finished, {', '.join(above)} "
                 f"{'scores' if len(above) == 1 else 'score'} better on validation than the "
                 "best: this verdict may change when their trials are run again (a sweep "
                 "resumed with --resume runs failed trials again).")
    return [line]


def plot(summary: pd.DataFrame, trials: pd.DataFrame, path: str, title: str = "",
         metric: str = "test_accuracy") -> str | None:
    """Horizontal bars: mean test `metric` per policy with 95% CIs, seeds as dots, scratch and
    the verdict marked. Policies in validation order. None (no file) when no trial finished."""
    shown = summary[summary["n"] > 0].iloc[::-1]
    if shown.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(2.5, 0.38 * len(shown) + 1.4)
    fig, ax = plt.subplots(figsize=(9, height))
    y = np.arange(len(shown))
    colors = ["#d62728" if p == SCRATCH else "#2ca02c" if v in ("best", "tied") else "#1f77b4"
              for p, v in zip(shown["policy"], shown["verdict"], strict=True)]
    low = (shown["mean"] - shown["ci_low"]).fillna(0).clip(lower=0)
    high = (shown["ci_high"] - shown["mean"]).fillna(0).clip(lower=0)
    ax.barh(y, shown["mean"], color=colors, alpha=0.55, xerr=[low, high], capsize=3,
            error_kw={"elinewidth": 1})
    ok = trials[trials["status"] == "ok"]
    for i, policy in enumerate(shown["policy"]):
        points = ok.loc[ok["policy"] == policy, metric].astype(float)
        ax.plot(points, np.full(len(points), i), "k.", markersize=4)
    scratch = summary.loc[summary["policy"] == SCRATCH, "mean"]
    if len(scratch) and not math.isnan(scratch.iloc[0]):
        ax.axvline(scratch.iloc[0], color="#d62728", linestyle="--", linewidth=1,
                   label=f"scratch {scratch.iloc[0]:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    labels = []
    for lab, code, v, rec in zip(shown["label"], shown["code"], shown["verdict"],
                                 shown["recommended"], strict=True):
        text = f"{lab} [{code}]" if isinstance(code, str) and code and lab != code else str(lab)
        mark = " (recommended)" if rec else " (best)" if v == "best" else \
            " (tied)" if v == "tied" else ""
        labels.append(text + mark)
    ax.set_yticks(y, labels, fontsize=8)
    values = np.r_[shown["ci_low"].fillna(shown["mean"]), shown["ci_high"].fillna(shown["mean"]),
                   ok[metric].astype(float)]
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max(0.02, 0.05 * (hi - lo))
    bounds = metric_bounds(metric)
    left, right = lo - pad, hi + pad
    if bounds is not None:
        left, right = max(bounds[0], left), min(bounds[1], right)
    ax.set_xlim(left, right)
    ax.set_xlabel(f"target test {metric_name(metric)} (mean over seeds, 95% CI); rows ranked "
                  "by validation; green: best and tied with it")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _chance_p(accuracy: float, rate: float, images: int) -> float | None:
    """The exact one-sided binomial p-value of a validation accuracy (its count of correct
    images, rounded) against the majority-class rate; None where the accuracy or the rate is
    not a proportion of images (nothing to test)."""
    from scipy import stats

    if not (images > 0 and 0 < rate <= 1 and 0 <= accuracy <= 1):
        return None
    if rate == 1:  # validation of one class: no accuracy is above always answering it
        return 1.0
    return float(stats.binomtest(int(round(accuracy * images)), images, rate,
                                 alternative="greater").pvalue)


def _check_chance(chance, metric: str, higher_is_better: bool) -> None:
    """Refuses a `chance` that cannot apply: it is the majority-class rate of an accuracy
    over class labels (a proportion of images, higher is better), as `_majority_rate` gives.
    """
    if chance is None:
        return
    name = metric.removeprefix("test_")
    try:
        rate, images = chance
        number = (int, float, np.integer, np.floating)
        proportion = (isinstance(rate, number) and isinstance(images, number)
                      and not isinstance(rate, bool) and not isinstance(images, bool)
                      and 0 < rate <= 1 and math.isfinite(images) and images == int(images)
                      and images > 0)
    except (TypeError, ValueError):
        proportion = False
    if not proportion:
        raise ValueError(f"chance= is (majority-class rate in (0, 1], number of validation "
                         f"images); received {chance!r}.")
    if "acc" not in name or "top" in name or not higher_is_better:
        raise ValueError(f"chance= (the validation set's majority-class rate) applies to an "
                         f"accuracy over class labels, higher is better; received metric="
                         f"{metric!r}, higher_is_better={higher_is_better}. Pass chance=None.")


def _above_chance(accuracy: float, rate: float, images: int, alpha: float) -> bool:
    p = _chance_p(accuracy, rate, images)
    return p is None or p < alpha


def _at_chance(accuracy: float, rate: float, images: int, alpha: float) -> list[str]:
    """The line for a best validation accuracy not shown above the majority-class rate (an
    exact one-sided binomial test of its count of correct images, rounded), or none."""
    p = _chance_p(accuracy, rate, images)
    if p is None or p < alpha:
        return []
    if rate == 1:
        return [f"The validation labels are all of one class ({images} images): a model that "
                "always answers it scores 1.000, so validation accuracy cannot rank the "
                "policies, and this verdict measures how often each answers that class. Give "
                "validation samples of every class."]
    return [f"The best is not shown above the majority-class rate on validation ({rate:.3f} "
            f"of {images} images, always answering the most frequent class; one-sided "
            f"binomial p={format_p(p)}): the models may not have learned the task in this "
            "budget, and the order of the policies may be noise. Train longer (more epochs), "
            "or check the data and labels."]


def write_report(trials: pd.DataFrame, out: str, settings: dict, info: dict | None = None,
                 metric: str = "test_accuracy", higher_is_better: bool | None = None,
                 coverage: str = "training seeds only", interrupted: str | None = None,
                 mode: str | None = None, chance: tuple[float, int] | None = None) -> dict:
    """Write results.csv, summary.csv, results.json, plot.png and report.md into `out`.

    Whatever happened, a report is written: with no finished trial it says so (and there is
    no plot); for an interrupted sweep it is marked as such and gives no verdict unless every
    configuration has `MIN_SEEDS` finished seeds.

    Args:
        trials: one row per trial (columns of `trial_columns(metric)`; missing ones are added
            empty). Rows without a policy are dropped.
        out: the output folder.
        settings: the sweep's settings, shown in the report.
        info: extra facts for the report (source model metrics, blocks, timings, legend).
        metric: the test metric reported per policy: `"test_accuracy"`, or `"test_map_50"`
            for the detection task; its validation counterpart chooses.
        higher_is_better: the metric's direction (default: lower is better for an error,
            `mae`, `mse`, ...; else higher).
        coverage: the variation the intervals and tests cover (e.g. "training seeds only").
        interrupted: the mark of an interrupted sweep ("INTERRUPTED: k of n trials finished").
        mode: `"max"` or `"min"` (an error such as `test_mae`); sets `higher_is_better`.
        chance: for a classification, the validation set's majority-class rate and size
            (`headline`).

    Returns:
        `{"summary": DataFrame, "verdict": Verdict, "best": str (the headline), "paths":
        {name: path}}`.

    Raises:
        ValueError: `chance` does not apply (see `verdict`).
    """
    info = info or {}
    if mode is not None:
        higher_is_better = mode == "max"
    os.makedirs(out, exist_ok=True)
    columns = trial_columns(metric)
    trials = trials.reindex(columns=columns + [c for c in trials.columns if c not in columns])
    trials = trials[trials["policy"].notna() & (trials["policy"].astype(str) != "")]
    trials = trials.sort_values(["policy", "seed"], kind="stable").reset_index(drop=True)
    if higher_is_better is None:
        higher_is_better = not _is_error(metric)
    trials = usable(trials, metric)
    chosen = verdict(trials, metric, higher_is_better, require_all=interrupted is not None,
                     chance=chance)
    summary = summarize(trials, metric, higher_is_better, chosen)
    finished = int((trials["status"] == "ok").sum())
    if not finished:
        # (interrupted: the mark counts the trials that finished, of every learning rate;
        # a configuration with one unfinished trial has none to rank)
        best = ("No configuration has all its trials finished: no verdict." if interrupted
                else "No trial finished: no verdict.")
    else:
        best = headline(chosen, summary, chance)
    if interrupted:
        best = f"{interrupted}.\n{best}"
    paths = {name: os.path.join(out, name) for name in
             ("results.csv", "summary.csv", "results.json", "plot.png", "report.md")}
    trials.to_csv(paths["results.csv"], index=False)
    summary.to_csv(paths["summary.csv"], index=False)
    others = trials[trials["status"] != "ok"]
    document = {
        "settings": settings,
        "info": info,
        "best": best,
        "interrupted": interrupted,
        "metric": metric,
        "mode": "max" if higher_is_better else "min",
        "confidence": CONFIDENCE,
        "coverage": coverage,
        "verdict": {"best": chosen.best, "tied": chosen.tied, "near": chosen.near,
                    "standard_error": _json_default(chosen.standard_error),
                    "recommended": chosen.recommended,
                    "alpha": chosen.alpha, "reason": chosen.reason,
                    "excluded": chosen.excluded},
        "policies": _records(summary),
        "failed_trials": _records(others[["trial_id", "policy", "seed", "status", "error"]]),
    }
    with open(paths["results.json"], "w") as f:
        json.dump(_finite_json(document), f, indent=2, default=_json_default, allow_nan=False)
    title = ", ".join(f"{k}={settings[k]}" for k in ("dataset", "task", "shift", "shots", "model")
                      if settings.get(k) is not None)
    if os.path.exists(paths["plot.png"]):
        os.remove(paths["plot.png"])  # a resumed sweep's old plot is not this report's
    if plot(summary, trials, paths["plot.png"], title=title, metric=metric) is None:
        del paths["plot.png"]
    with open(paths["report.md"], "w") as f:
        f.write(markdown(summary, others, settings, info, best, metric, coverage=coverage,
                         plotted="plot.png" in paths, alpha=chosen.alpha))
    return {"summary": summary, "verdict": chosen, "best": best, "paths": paths}


def markdown_table(summary: pd.DataFrame, metric: str = "test_accuracy") -> str:
    """The summary as a Markdown table in validation order; its headers name `metric`."""
    name = metric_name(metric)
    lines = [f"| rank | policy | blocks | trained params | n | val {name} | vs best (val) "
             f"| test {name} (mean ± std) | 95% CI | vs scratch (test) | p vs scratch |",
             "|---:|---|---|---:|---:|---:|---|---|---|---:|---:|"]
    for _, r in summary.iterrows():
        acc = "n/a" if math.isnan(r["mean"]) else f"{r['mean']:.3f}"
        if not math.isnan(r["mean"]):
            acc += " ± n/a" if math.isnan(r["std"]) else f" ± {r['std']:.3f}"
        ci = _interval(r["ci_low"], r["ci_high"])
        if _equal_seeds(r):
            ci = "n/a (every seed equal)"
        if r["policy"] == SCRATCH:
            diff, p = "baseline", ""
        else:
            diff = "n/a" if math.isnan(r["diff"]) else f"{r['diff']:+.3f}"
            p = format_p(r["p_holm"])
        v = r["verdict"]
        if v == "best":
            versus = "**best**"
        elif v in ("tied", "worse"):
            versus = f"{v}, p={format_p(r['vs_best_p_holm'])}"
            if math.isnan(r["vs_best_p_holm"]):
                versus = f"{v} (no test)"
        else:
            versus = v or "—"
        if r["recommended"]:
            versus += ", **recommended**"
        counts = [f"{r[k]} {k}" for k in ("failed", "stopped", "unfinished") if r[k]]
        n = f"{r['n']}" + (f" ({', '.join(counts)})" if counts else "")
        cost = "?" if math.isnan(r["trained_params"]) else f"{int(r['trained_params']):,}"
        val = "n/a" if math.isnan(r["val_mean"]) else f"{r['val_mean']:.3f}"
        code = f"`{r['code']}`" if isinstance(r["code"], str) and r["code"] else ""
        lines.append(f"| {r['rank']} | {r['label']} | {code} | {cost} | {n} | {val} | {versus} "
                     f"| {acc} | {ci} | {diff} | {p} |")
    return "\n".join(lines)


def markdown(summary: pd.DataFrame, failed: pd.DataFrame, settings: dict, info: dict,
             best: str, metric: str = "test_accuracy", coverage: str = "training seeds only",
             plotted: bool = True, alpha: float = ALPHA) -> str:
    """The text of report.md."""
    name = metric_name(metric)
    head = best.splitlines()
    parts = ["# Which blocks to transfer", ""]
    parts += [f"**{line}**" if i == 0 else line for i, line in enumerate(head)]
    parts += ["", f"Chosen on validation, reported on test. Policies are ranked by mean "
              f"validation {name} over seeds; the best is compared with each other policy "
              "on validation, paired by seed (Student's paired t-test; an exact sign test when "
              "the differences do not vary), with Holm's correction for the multiple "
              f"comparisons (Holm 1979): adjusted p >= {alpha:g} is *tied* (not shown worse "
              "than the best), below is *worse*. A test of few seeds leaves far worse policies "
              "tied, so the recommended policy is the one with the fewest trained parameters "
              f"among the tied policies whose mean validation {name} is within one standard "
              "error of the best's (the standard error of the best's mean over seeds): the "
              "one-standard-error rule (Breiman et al. 1984; Hastie et al. 2009, 7.10). Only "
              "trials that finished their full "
              f"budget count; a policy needs {MIN_SEEDS} such seeds. Test {name}: mean ± "
              "standard deviation over seeds and 95% confidence interval (Student's t"
              + {(0.0, 1.0): ", clipped to [0, 1]", (0.0, math.inf): ", clipped at 0"}.get(
                  metric_bounds(metric), "") + "; n/a from one seed, or from seeds that all "
              "gave one value). *vs scratch*: mean paired difference from training from "
              "scratch on test, with its Holm-adjusted p-value.", "",
              f"**Variation covered by the intervals and tests: {coverage}.**", ""]
    if info.get("legend"):
        parts += [info["legend"], ""]
    parts += [markdown_table(summary, metric), ""]
    if plotted:
        parts += [f"![{name} per policy](plot.png)", ""]
    if len(failed):
        counts = failed["status"].value_counts()
        said = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)
        parts += [f"## Trials without a full-budget result ({said})", "",
                  "*stopped*: stopped early by the scheduler (ASHA); *unfinished*: not finished "
                  "when the sweep ended; *error*: the trial raised.", "",
                  "| trial | policy | seed | status | error |", "|---|---|---:|---|---|"]
        for _, r in failed.iterrows():
            error = str(r["error"] if isinstance(r["error"], str) else "").replace("|", "/")
            seed = "" if pd.isna(r["seed"]) else int(r["seed"])
            parts.append(f"| {r['trial_id']} | `{r['policy']}` | {seed} | {r['status']} "
                         f"| {error[:200]} |")
        parts.append("")
    parts += ["## Settings", "", "| setting | value |", "|---|---|"]
    parts += [f"| {k} | {v} |" for k, v in settings.items()]
    facts = {k: v for k, v in info.items() if k != "legend"}
    if facts:
        parts += ["", "## Run", "", "| fact | value |", "|---|---|"]
        parts += [f"| {k} | {v} |" for k, v in facts.items()]
    return "\n".join(parts) + "\n"


def _finite_json(value):
    """`value` with every NaN or inf float (in dicts and lists) as None: JSON has neither."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _json_default(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _json_default(value):
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None  # (JSON has no NaN, no inf)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)
