"""The learning rate as a swept dimension: the best rate per configuration, chosen on validation.

Comparing frozen and tuned blocks at one learning rate favours whichever that rate suits (Lee
et al., ICLR 2023, choose the rate on validation for every method). With several rates, each
configuration keeps the trials of the rate whose mean validation score over seeds is best; the
verdict then compares configurations at their own best rate. Choosing the best of several rates
on validation flatters validation scores a little (the reported test scores do not see the
choice).

Example:

```python
kept, chosen = best_rates(rows, metric="val_accuracy")
chosen["block_1=tuned"]        # {"lr": 0.001, "mean": 0.93, "rates": {0.0001: 0.88, 0.001: 0.93}}
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["best_rates"]


def best_rates(
    rows: Sequence[dict], metric: str = "val_accuracy", mode: str = "max", rate: str = "lr"
) -> tuple[list[dict], dict[str, dict]]:
    """For each configuration (`row["policy"]`), keep the rows of its best learning rate.

    A configuration with an unfinished trial (an interrupted sweep) has no chosen rate, and
    its rows are kept marked `unfinished` (a finished trial of one rate cannot stand for the
    configuration while another rate has not finished). A rate is eligible for a
    configuration only when every one of its trials has a finite
    `metric` (a rate is never ranked on fewer seeds than another). Among eligible rates the
    best mean wins; at equal means, the smaller rate.

    Args:
        rows: one dict per trial with `policy`, `rate` and `metric`.
        metric, mode: the validation score and its direction (`"max"` or `"min"`).
        rate: the rows' learning-rate field.

    Returns:
        `(kept, chosen)`: the rows of each configuration's chosen rate (every row of a
        configuration without an eligible rate, and every row without a rate, so that
        failures and unfinished trials stay visible), and per
        configuration `{"lr": chosen rate or None, "mean": its mean, "rates": {rate: mean or
        None when not eligible}}`.

    Raises:
        ValueError: an unknown mode or a row without `policy` or `rate`.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"Expected mode 'max' or 'min'; received {mode!r}.")
    groups: dict[str, dict[float, list[dict]]] = {}
    kept, chosen = [], {}
    for row in rows:
        if "policy" not in row or rate not in row:
            raise ValueError(f"Every row needs 'policy' and {rate!r}; received {sorted(row)}.")
        if _number(row[rate]) != _number(row[rate]):  # no rate recorded (a trial that never
            kept.append(row)  # started in an interrupted sweep): listed, never ranked
            continue
        groups.setdefault(row["policy"], {}).setdefault(float(row[rate]), []).append(row)
    for key, by_rate in groups.items():
        if any(r.get("status") == "unfinished" for group in by_rate.values() for r in group):
            # An interrupted sweep: a rate that did not finish cannot be compared, so none is
            # chosen, and no trial of the configuration counts (its rates would be pooled).
            chosen[key] = {"lr": None, "mean": None, "rates": {}, "unfinished": True}
            kept.extend(dict(r, status="unfinished") for group in by_rate.values()
                        for r in group)
            continue
        means = {}
        for lr, group in sorted(by_rate.items()):
            values = [_number(r.get(metric)) for r in group]
            means[lr] = (sum(values) / len(values)
                         if all(math.isfinite(v) for v in values) else None)
        eligible = [lr for lr, m in means.items() if m is not None]
        if not eligible:
            chosen[key] = {"lr": None, "mean": None, "rates": means}
            kept.extend(r for group in by_rate.values() for r in group)
            continue
        sign = -1.0 if mode == "max" else 1.0
        best = min(eligible, key=lambda lr: (sign * means[lr], lr))
        chosen[key] = {"lr": best, "mean": means[best], "rates": means}
        kept.extend(by_rate[best])
    return kept, chosen


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
