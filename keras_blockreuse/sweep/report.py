"""The report of a sweep: statistics over seeds, the comparison with scratch, files and a plot.

For every policy: the mean, standard deviation and 95% confidence interval (Student's t) of the
target test metric over seeds (accuracy; mAP@0.5 for the detection task), and the mean paired difference from the from-scratch baseline
(same seeds) with its confidence interval and the p-value of a paired t-test. Written to the
output folder: `results.csv` (one row per trial), `summary.csv` and `results.json` (one row per
policy), `plot.png` and `report.md`.

Example:

```python
import pandas as pd
from keras_blockreuse.sweep.report import summarize

trials = pd.DataFrame({
    "policy": ["scratch"] * 3 + ["block_1=tuned"] * 3,
    "label": ["scratch"] * 3 + ["tune block_1"] * 3,
    "seed": [0, 1, 2] * 2,
    "status": ["ok"] * 6,
    "test_accuracy": [0.70, 0.72, 0.74, 0.85, 0.88, 0.86],
})
summarize(trials)[["policy", "mean", "diff", "p_value"]]
```
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from keras_blockreuse.sweep.space import SCRATCH

CONFIDENCE = 0.95
TRIAL_COLUMNS = [
    "trial_id", "policy", "label", "code", "seed", "status", "test_accuracy", "val_accuracy",
    "accuracy", "test_loss", "val_loss", "loss", "epochs_done", "train_seconds", "node_ip",
    "node_id", "hostname", "pid", "gpu_ids", "experiment", "error",
]
METRIC_NAMES = {"test_accuracy": "accuracy", "test_map_50": "mAP@0.5", "test_map": "mAP@[.5:.95]"}
"""How the report names a metric (`metric` of `write_report`); others are shown as they are."""
SUMMARY_COLUMNS = [
    "rank", "policy", "label", "code", "n", "failed", "mean", "std", "ci_low", "ci_high",
    "diff", "diff_ci_low", "diff_ci_high", "p_value", "val_mean",
]


def metric_name(metric: str) -> str:
    """`"test_accuracy"` -> `"accuracy"`, `"test_map_50"` -> `"mAP@0.5"`."""
    return METRIC_NAMES.get(metric, metric.removeprefix("test_").replace("_", " "))


def val_metric_of(metric: str) -> str:
    """The validation counterpart of a test metric: `"test_map_50"` -> `"val_map_50"`."""
    return "val_" + metric.removeprefix("test_")


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


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, ...]:
    """Mean, sample standard deviation and t-distribution confidence interval of `values`.

    NaN values are ignored. With one value the deviation and interval are NaN.

    Example:

    >>> mean_ci([0.7, 0.8, 0.9])   # t(0.975, 2) = 4.303
    (0.8, 0.1, 0.5515..., 1.0484...)
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
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return (mean, std, mean - half, mean + half)


def paired_difference(
    values: dict, baseline: dict, confidence: float = CONFIDENCE
) -> tuple[float, float, float, float, int]:
    """Paired comparison of two policies over their common seeds.

    Args:
        values, baseline: seed -> accuracy.

    Returns:
        `(mean difference, ci_low, ci_high, p_value, n_pairs)`; the p-value is that of a
        two-sided paired t-test (`scipy.stats.ttest_rel`). With fewer than two pairs everything
        but the mean is NaN; with identical differences the p-value is 0 (or 1 if they are 0).

    Example:

    >>> paired_difference({0: 0.8, 1: 0.9, 2: 0.85}, {0: 0.7, 1: 0.75, 2: 0.72})[3] < 0.05
    True
    """
    from scipy import stats

    seeds = sorted(s for s in values if s in baseline
                   and not math.isnan(values[s]) and not math.isnan(baseline[s]))
    d = np.array([values[s] - baseline[s] for s in seeds], dtype=float)
    if len(d) == 0:
        return (math.nan, math.nan, math.nan, math.nan, 0)
    mean, _, low, high = mean_ci(d, confidence)
    if len(d) < 2:
        p = math.nan
    elif np.allclose(d, d[0]):
        p = 1.0 if abs(d[0]) < 1e-12 else 0.0
    else:
        a = np.array([values[s] for s in seeds])
        b = np.array([baseline[s] for s in seeds])
        p = float(stats.ttest_rel(a, b).pvalue)
    return (mean, low, high, p, len(d))


def summarize(trials: pd.DataFrame, metric: str = "test_accuracy", mode: str = "max"
              ) -> pd.DataFrame:
    """One row per policy, best first (by mean `metric`, highest first unless `mode` is
    `"min"`), with the columns of SUMMARY_COLUMNS.

    `trials` needs `policy`, `seed`, `status` and `metric` columns (`label`, `code` and the
    validation metric, `val_accuracy` for `test_accuracy`, are used when present). Only trials with status `ok` enter the statistics;
    `failed` counts the others. The difference columns compare with the `scratch` policy.
    """
    ok = trials[trials["status"] == "ok"]
    base = ok[ok["policy"] == SCRATCH]
    baseline = dict(zip(base["seed"], base[metric].astype(float), strict=True))
    rows = []
    for policy, group in trials.groupby("policy", sort=False):
        good = group[group["status"] == "ok"]
        values = good[metric].astype(float).tolist()
        mean, std, low, high = mean_ci(values)
        if policy == SCRATCH:
            diff = (0.0, math.nan, math.nan, math.nan, len(values))
        else:
            diff = paired_difference(
                dict(zip(good["seed"], good[metric].astype(float), strict=True)), baseline)
        val_metric = val_metric_of(metric)
        val = good[val_metric].astype(float).mean() if val_metric in good else math.nan
        rows.append({
            "policy": policy,
            "label": group["label"].iloc[0] if "label" in group else policy,
            "code": group["code"].iloc[0] if "code" in group else "",
            "n": len(good[good[metric].notna()]),
            "failed": int(len(group) - len(good)),
            "mean": mean, "std": std, "ci_low": low, "ci_high": high,
            "diff": diff[0], "diff_ci_low": diff[1], "diff_ci_high": diff[2],
            "p_value": diff[3], "val_mean": float(val) if val == val else math.nan,
        })
    summary = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c != "rank"])
    summary = summary.sort_values("mean", ascending=mode == "min", na_position="last",
                                  kind="stable")
    summary.insert(0, "rank", range(1, len(summary) + 1))
    return summary.reset_index(drop=True)


def best_line(summary: pd.DataFrame, metric: str = "test_accuracy", mode: str = "max") -> str:
    """The closing line: the best policy and its gain over scratch."""
    ranked = summary[summary["n"] > 0]
    if ranked.empty:
        return "No trial finished: no best policy."
    best = ranked.iloc[0]
    name = f"{best['label']} ({best['policy']})" if best["label"] != best["policy"] else best[
        "policy"]
    line = f"Best policy: {name}: test {metric_name(metric)} {best['mean']:.3f}"
    if not math.isnan(best["ci_low"]):
        line += f" (95% CI [{best['ci_low']:.3f}, {best['ci_high']:.3f}], n={best['n']})"
    if best["policy"] == SCRATCH:
        return line + "; no transfer policy beats training from scratch."
    if math.isnan(best["diff"]):
        return line + "; scratch did not finish, so no gain over it."
    line += f", {best['diff']:+.3f} {'over' if mode == 'max' else 'against'} scratch"
    if not math.isnan(best["p_value"]):
        line += f" (paired t-test p={best['p_value']:.3g})"
    return line + "."


def plot(summary: pd.DataFrame, trials: pd.DataFrame, path: str, title: str = "",
         metric: str = "test_accuracy", mode: str = "max") -> str:
    """Horizontal bars: mean `metric` per policy with 95% CIs, seeds as dots, scratch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = summary[summary["n"] > 0].iloc[::-1]
    height = max(2.5, 0.38 * len(shown) + 1.4)
    fig, ax = plt.subplots(figsize=(9, height))
    y = np.arange(len(shown))
    colors = ["#d62728" if p == SCRATCH else "#1f77b4" for p in shown["policy"]]
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
    labels = [f"{lab} [{code}]" if code and lab != code else str(lab)
              for lab, code in zip(shown["label"], shown["code"], strict=True)]
    ax.set_yticks(y, labels, fontsize=8)
    points = ok[metric].astype(float)
    lo = float(np.nanmin(np.r_[shown["ci_low"].fillna(shown["mean"]), points]))
    if mode == "max" and points.between(0.0, 1.0).all():  # a rate: accuracy, mAP
        ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    else:  # an error or a score of another range
        hi = float(np.nanmax(np.r_[shown["ci_high"].fillna(shown["mean"]), points]))
        pad = 0.05 * ((hi - lo) or abs(hi) or 1.0)
        ax.set_xlim(lo - pad if lo < 0 else max(0.0, lo - pad), hi + pad)
    better = "higher" if mode == "max" else "lower"
    ax.set_xlabel(f"target test {metric_name(metric)} (mean over seeds, 95% CI; {better} is "
                  "better)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(trials: pd.DataFrame, out: str, settings: dict, info: dict | None = None,
                 metric: str = "test_accuracy", mode: str = "max") -> dict:
    """Write results.csv, summary.csv, results.json, plot.png and report.md into `out`.

    Args:
        trials: one row per trial (columns of `trial_columns(metric)`; missing ones are added
            empty).
        out: the output folder.
        settings: the sweep's settings, shown in the report.
        info: extra facts for the report (source model metrics, blocks, timings, legend).
        metric: the test metric policies are ranked by (higher is better): `"test_accuracy"`,
            or `"test_map_50"` for the detection task (its validation counterpart,
            `"val_map_50"`, gives the summary's `val_mean`).
        mode: `"max"` (higher is better) or `"min"` (an error such as `test_mae`).

    Returns:
        `{"summary": DataFrame, "best": str, "paths": {name: path}}`.
    """
    info = info or {}
    os.makedirs(out, exist_ok=True)
    columns = trial_columns(metric)
    trials = trials.reindex(columns=columns + [c for c in trials.columns if c not in columns])
    trials = trials.sort_values(["policy", "seed"], kind="stable").reset_index(drop=True)
    summary = summarize(trials, metric, mode)
    best = best_line(summary, metric, mode)
    paths = {name: os.path.join(out, name) for name in
             ("results.csv", "summary.csv", "results.json", "plot.png", "report.md")}
    trials.to_csv(paths["results.csv"], index=False)
    summary.to_csv(paths["summary.csv"], index=False)
    failed = trials[trials["status"] != "ok"]
    document = {
        "settings": settings,
        "info": info,
        "best": best,
        "metric": metric,
        "mode": mode,
        "confidence": CONFIDENCE,
        "policies": _records(summary),
        "failed_trials": _records(failed[["trial_id", "policy", "seed", "status", "error"]]),
    }
    with open(paths["results.json"], "w") as f:
        json.dump(document, f, indent=2, default=_json_default)
    title = ", ".join(f"{k}={settings[k]}" for k in ("dataset", "task", "shift", "shots", "model")
                      if settings.get(k) is not None)
    plot(summary, trials, paths["plot.png"], title=title, metric=metric, mode=mode)
    with open(paths["report.md"], "w") as f:
        f.write(markdown(summary, failed, settings, info, best, metric))
    return {"summary": summary, "best": best, "paths": paths}


def markdown_table(summary: pd.DataFrame, metric: str = "test_accuracy") -> str:
    """The summary as a Markdown table, best first; its column header names `metric`."""
    lines = [f"| rank | policy | blocks | n | test {metric_name(metric)} (mean ± std) | 95% CI "
             "| vs scratch | p (paired t) |", "|---:|---|---|---:|---|---|---:|---:|"]
    for _, r in summary.iterrows():
        acc = "—" if math.isnan(r["mean"]) else f"{r['mean']:.3f}"
        if not math.isnan(r["std"]):
            acc += f" ± {r['std']:.3f}"
        ci = "—" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        if r["policy"] == SCRATCH:
            diff, p = "baseline", ""
        else:
            diff = "—" if math.isnan(r["diff"]) else f"{r['diff']:+.3f}"
            p = "—" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}"
        name = r["label"] if r["label"] == r["policy"] else f"{r['label']}"
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        lines.append(f"| {r['rank']} | {name} | `{r['code']}` | {r['n']}{failed} | {acc} | {ci} "
                     f"| {diff} | {p} |")
    return "\n".join(lines)


def markdown(summary: pd.DataFrame, failed: pd.DataFrame, settings: dict, info: dict,
             best: str, metric: str = "test_accuracy") -> str:
    """The text of report.md."""
    name = metric_name(metric)
    parts = ["# Which blocks to transfer", "", f"**{best}**", "",
             f"Target test {name} over seeds for each block policy, best first. The 95% "
             "confidence interval uses Student's t; *vs scratch* is the mean paired difference "
             "from the from-scratch baseline over the same seeds, with the p-value of a paired "
             "t-test.", ""]
    if info.get("legend"):
        parts += [info["legend"], ""]
    parts += [markdown_table(summary, metric), "", f"![{name} per policy](plot.png)", ""]
    if len(failed):
        parts += ["## Failed or stopped trials", "", "| trial | policy | seed | status | error |",
                  "|---|---|---:|---|---|"]
        for _, r in failed.iterrows():
            error = str(r["error"] if isinstance(r["error"], str) else "").replace("|", "/")
            parts.append(f"| {r['trial_id']} | `{r['policy']}` | {r['seed']} | {r['status']} "
                         f"| {error[:200]} |")
        parts.append("")
    parts += ["## Settings", "", "| setting | value |", "|---|---|"]
    parts += [f"| {k} | {v} |" for k, v in settings.items()]
    facts = {k: v for k, v in info.items() if k != "legend"}
    if facts:
        parts += ["", "## Run", "", "| fact | value |", "|---|---|"]
        parts += [f"| {k} | {v} |" for k, v in facts.items()]
    return "\n".join(parts) + "\n"


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _json_default(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)
