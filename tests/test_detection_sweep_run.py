"""`which_blocks.py --task detection --smoke` through Ray writes the report (issue 7).

Skipped until the sweep runner knows the detection task (the hook described in
`keras_blockreuse/detection/sweep.py`).
"""

import pandas as pd
import pytest

run = pytest.importorskip("keras_blockreuse.sweep.run")
pytestmark = pytest.mark.skipif(
    "detection" not in getattr(run, "ALL_TASKS", ()),
    reason="the sweep runner has no --task detection yet",
)


@pytest.mark.slow
def test_detection_smoke_sweep_writes_the_report(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    settings = run.SweepSettings(
        task="detection", smoke=True, train_images=16, epochs=2, out=str(out), cache=str(cache)
    )
    lines = []
    result = run.run_sweep(settings, print_fn=lines.append)
    for name in ("results.csv", "summary.csv", "results.json", "report.md", "plot.png"):
        assert (out / name).is_file(), name
    trials = pd.read_csv(out / "results.csv")
    # prefix on block_1: scratch, frozen, tuned; 2 seeds each.
    assert sorted(set(trials["policy"])) == ["block_1=frozen", "block_1=tuned", "scratch"]
    assert len(trials) == 6 and (trials["status"] == "ok").all()
    assert trials["test_map_50"].between(0, 1).all() and trials["val_map_50"].between(0, 1).all()
    assert (trials["test_map"] <= trials["test_map_50"]).all()
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["policy"]) == set(trials["policy"])
    assert result.best and any("Detection task" in line for line in lines)
