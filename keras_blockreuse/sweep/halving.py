"""Budgeted sweeps: successive halving over configurations, every seed of one moving together.

Successive halving (Jamieson and Talwalkar, "Non-stochastic Best Arm Identification and
Hyperparameter Optimization", AISTATS 2016; the inner loop of Li et al.'s Hyperband, JMLR 2018)
trains every candidate for a small budget, keeps the best `1/eta` of them, multiplies the budget
by `eta`, and repeats until the full budget. Here, for a transfer sweep:

- a *configuration* (a block policy) advances or stops as a whole: its rank at a rung is the mean
  validation score over all of its seeds, and a configuration without a result for every seed
  cannot be ranked (it is reported as failed, never ranked on fewer seeds);
- ties at the cut advance together;
- the baselines (scratch, all tuned) skip the lower rungs and always run at the full budget;
- every rung *re-trains* its trials from the start for the rung's budget (no checkpoint to
  resume from): simple, and honest about the cost, which counts every rung's trials;
- the verdict uses the full-budget trials only (`Halving.final`).

Example:

```python
from keras_blockreuse.sweep.halving import successive_halving

def run_rung(rung, keys, epochs):       # one Tune experiment; rows with policy, seed, metric
    return tune_rung(trainable, keys, seeds=3, epochs=epochs, config=base, storage_path=...,
                     name=f"rung_{rung}")

result = successive_halving(candidates, ["scratch", all_tuned], seeds=3, max_epochs=40,
                            run_rung=run_rung)
result.final          # the full-budget rows: the verdict's input
```
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence

from keras_blockreuse.sweep.report import rounding_equal
from keras_blockreuse.sweep.space import SweepError

__all__ = ["Decision", "Halving", "advance", "rung_epochs", "successive_halving", "tune_rung"]


def rung_epochs(max_epochs: int, candidates: int, eta: int = 3, min_epochs: int = 1) -> list[int]:
    """The epochs of each rung, ending at `max_epochs`.

    As many rungs as halving needs to narrow `candidates` down (`floor(log_eta(candidates)) + 1`)
    and as the budget allows (the first at least `min_epochs`); rung i trains
    `round(max_epochs / eta ** (rungs - 1 - i))` epochs.

    Raises:
        SweepError: `eta < 2`, `max_epochs < 1`, `min_epochs < 1` or `candidates < 0`.

    Example:

    >>> rung_epochs(40, candidates=81, eta=3, min_epochs=1)
    [1, 4, 13, 40]
    """
    if int(eta) < 2 or int(max_epochs) < 1 or int(min_epochs) < 1 or int(candidates) < 0:
        raise SweepError(f"Expected eta >= 2, max_epochs >= 1, min_epochs >= 1 and candidates >= "
                         f"0; received eta={eta}, max_epochs={max_epochs}, "
                         f"min_epochs={min_epochs}, candidates={candidates}.")
    by_candidates = _floor_log(max(1, int(candidates)), int(eta)) + 1
    by_budget = _floor_log(max(1, int(max_epochs) // int(min_epochs)), int(eta)) + 1
    rungs = min(by_candidates, by_budget)
    out: list[int] = []
    for i in range(rungs):
        epochs = max(int(min_epochs), round(int(max_epochs) / int(eta) ** (rungs - 1 - i)))
        if not out or epochs > out[-1]:
            out.append(epochs)
    return out


def _floor_log(value: int, base: int) -> int:
    power, count = base, 0
    while power <= value:
        power, count = power * base, count + 1
    return count


@dataclasses.dataclass(frozen=True)
class Decision:
    """What one rung decided.

    Attributes:
        rung: the rung's index; epochs: its budget.
        means: configuration -> mean validation score over its seeds (ranked ones only).
        advanced: the configurations that go on, best first.
        stopped: ranked configurations that stop here.
        failed: configuration -> why it could not be ranked (missing or non-finite seeds).
    """

    rung: int
    epochs: int
    means: dict
    advanced: list
    stopped: list
    failed: dict


def advance(
    scores: Mapping[str, Mapping[int, float]],
    seeds: Sequence[int],
    eta: int = 3,
    mode: str = "max",
    rung: int = 0,
    epochs: int = 0,
) -> Decision:
    """Which configurations advance: the best `ceil(n / eta)` by mean over seeds, ties included.

    Args:
        scores: configuration -> {seed: validation score} at this rung.
        seeds: every seed each configuration must have.
        eta: the reduction factor.
        mode: `"max"` (higher is better) or `"min"`.
        rung, epochs: recorded in the decision.

    Returns:
        A `Decision`. A configuration missing a seed, or with a non-finite score, is `failed`
        and does not advance: its mean would rest on fewer seeds than the others'.

    Raises:
        SweepError: an unknown mode or `eta < 2`.

    Example:

    >>> advance({"a": {0: .9, 1: .8}, "b": {0: .5, 1: .6}, "c": {0: .7}}, seeds=[0, 1]).advanced
    ['a']
    """
    if mode not in ("max", "min") or int(eta) < 2:
        raise SweepError(f"Expected mode 'max' or 'min' and eta >= 2; received mode={mode!r}, "
                         f"eta={eta}.")
    means, failed = {}, {}
    for key, by_seed in scores.items():
        missing = [s for s in seeds if s not in by_seed]
        bad = [s for s in seeds if s in by_seed and not math.isfinite(float(by_seed[s]))]
        if missing or bad:
            failed[key] = (f"no result for seed(s) {missing}" if missing else
                           f"non-finite score for seed(s) {bad}")
            continue
        means[key] = sum(float(by_seed[s]) for s in seeds) / len(seeds)
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(means, key=lambda k: (sign * means[k], k))
    keep = math.ceil(len(ranked) / int(eta)) if ranked else 0
    if keep:
        cut = means[ranked[keep - 1]]  # equal to float32 rounding is equal (a tie)
        while keep < len(ranked) and rounding_equal(means[ranked[keep]], cut):
            keep += 1
    return Decision(rung=rung, epochs=epochs, means=means, advanced=ranked[:keep],
                    stopped=ranked[keep:], failed=failed)


@dataclasses.dataclass(frozen=True)
class Halving:
    """The outcome of a successive-halving sweep.

    Attributes:
        epochs: the budget of each rung.
        decisions: one `Decision` per rung but the last.
        rows: every trial's row, each with `rung` and `rung_epochs` added (the cost).
        final: the rows of the last rung, at the full budget: the verdict's input.
    """

    epochs: list
    decisions: list
    rows: list
    final: list


def successive_halving(
    candidates: Sequence[str],
    baselines: Sequence[str],
    seeds: int,
    max_epochs: int,
    run_rung: Callable[[int, list[str], int], list[dict]],
    eta: int = 3,
    min_epochs: int = 1,
    metric: str = "val_accuracy",
    mode: str = "max",
    print_fn: Callable[[str], object] | None = print,
) -> Halving:
    """Run successive halving over `candidates`; `baselines` run once, at the full budget.

    Args:
        candidates: configuration keys that compete.
        baselines: configuration keys that always finish (not ranked, not stopped).
        seeds: seeds per configuration (`0 .. seeds - 1`).
        max_epochs: the full budget.
        run_rung: `(rung, keys, epochs) -> rows`, training every `key x seed` for `epochs`
            epochs from the start (e.g. `tune_rung`); each row has `policy`, `seed` and `metric`.
        eta, min_epochs: see `rung_epochs`.
        metric, mode: the validation score that ranks, and its direction.
        print_fn: progress lines (None for silence).

    Returns:
        A `Halving`.

    Raises:
        SweepError: a key both candidate and baseline, no configuration, or a rung whose rows
            name configurations it was not asked to run.
    """
    candidates, baselines = list(dict.fromkeys(candidates)), list(dict.fromkeys(baselines))
    both = sorted(set(candidates) & set(baselines))
    if both or not (candidates or baselines):
        raise SweepError(f"Expected candidates and baselines, disjoint; received candidates="
                         f"{candidates}, baselines={baselines}.")
    say = print_fn or (lambda _: None)
    budgets = rung_epochs(max_epochs, len(candidates), eta, min_epochs)
    alive, rows, decisions, final = candidates, [], [], []
    for rung, epochs in enumerate(budgets):
        last = rung == len(budgets) - 1
        keys = alive + baselines if last else alive
        say(f"Rung {rung + 1}/{len(budgets)}: {len(keys)} configurations x {seeds} seeds for "
            f"{epochs} epochs.")
        got = [dict(r, rung=rung, rung_epochs=epochs) for r in run_rung(rung, keys, epochs)]
        strange = sorted({str(r.get("policy")) for r in got} - set(keys))
        if strange:
            raise SweepError(f"Rung {rung} returned configurations {strange} it did not run.")
        rows.extend(got)
        if last:
            final = got
            break
        scores: dict[str, dict[int, float]] = {key: {} for key in keys}
        for r in got:  # a failed trial's metric ranks nothing, finite or not (weights gone
            value = r.get(metric)  # NaN still score an accuracy: the rate of class 0)
            failed = value is None or r.get("status", "ok") != "ok"
            scores[r["policy"]][int(r["seed"])] = math.nan if failed else float(value)
        decision = advance(scores, list(range(seeds)), eta, mode, rung, epochs)
        decisions.append(decision)
        for key, why in decision.failed.items():
            say(f"  {key}: stopped, cannot be ranked ({why}).")
        say(f"  {len(decision.advanced)} advance, {len(decision.stopped)} stop.")
        alive = decision.advanced
    return Halving(epochs=budgets, decisions=decisions, rows=rows, final=final)


def tune_rung(
    trainable,
    keys: Sequence[str],
    seeds: int,
    epochs: int,
    config: Mapping,
    storage_path: str,
    name: str,
    metric: str = "val_accuracy",
    mode: str = "max",
    reuse_actors: bool = True,
) -> list[dict]:
    """One rung as one Ray Tune experiment: every `key x seed` trained for `epochs` epochs.

    Args:
        trainable: a Tune function trainable (already `with_parameters` / `with_resources`)
            taking `policy`, `seed` and `epochs` from its configuration and calling
            `tune.report` with `metric` (its last report is the trial's result).
        keys, seeds, epochs: the grid.
        config: the other configuration values, the same for every trial.
        storage_path: an absolute folder for Tune's results; name: the experiment's name.
        metric, mode, reuse_actors: passed to `tune.TuneConfig`.

    Returns:
        One row per trial: its last reported metrics plus `policy`, `seed` and `status`
        (`"ok"`, or `"error"` with `error` holding the message's last line).
    """
    from ray import tune

    from keras_blockreuse.sweep.control import tune_environment, tune_loggers

    tuner = tune.Tuner(
        trainable,
        param_space={**config, "policy": tune.grid_search(list(keys)),
                     "seed": tune.grid_search(list(range(seeds))), "epochs": int(epochs)},
        tune_config=tune.TuneConfig(metric=metric, mode=mode, reuse_actors=reuse_actors,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(name=name, storage_path=os.path.abspath(storage_path),
                                  verbose=0, callbacks=tune_loggers(),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    with tune_environment():
        grid = tuner.fit()
    rows = []
    for result in grid:
        row = dict(result.metrics or {})
        row.update(policy=result.config["policy"], seed=result.config["seed"],
                   status="error" if result.error else "ok")
        if result.error:
            lines = str(result.error).strip().splitlines()
            row["error"] = lines[-1] if lines else type(result.error).__name__
        rows.append(row)
    return rows
