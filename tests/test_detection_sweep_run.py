"""`which_blocks.py --task detection --smoke` through Ray writes the report (issue 7).

Tiny settings (16 training scenes, 2 epochs, the smoke strategy and 2 seeds, on the session's
shared local Ray), so the whole sweep takes well under a minute on 2 cores.
"""

import json

import pandas as pd
import pytest

from keras_blockreuse.sweep import run


@pytest.mark.slow
def test_detection_smoke_sweep_writes_the_report(ray_local, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    settings = run.SweepSettings(
        task="detection", smoke=True, train_images=16, epochs=2, source_epochs=2,
        out=str(out), cache=str(cache)
    )
    lines = []
    result = run.run_sweep(settings, print_fn=lines.append)
    for name in ("results.csv", "summary.csv", "results.json", "report.md", "plot.png"):
        assert (out / name).is_file(), name
    trials = pd.read_csv(out / "results.csv")
    # prefix on block_1: scratch, frozen, tuned; 2 seeds each.
    assert sorted(set(trials["policy"])) == ["block_1=frozen", "block_1=tuned", "scratch"]
    assert len(trials) == 6 and (trials["status"] == "ok").all(), trials["error"].tolist()
    assert trials["test_map_50"].between(0, 1).all() and trials["val_map_50"].between(0, 1).all()
    assert (trials["test_map"] <= trials["test_map_50"]).all()
    assert (trials["epochs_done"] == 2).all()
    assert "test_accuracy" not in trials.columns  # a detection report has no accuracy column
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["policy"]) == set(trials["policy"])
    assert summary["val_mean"].notna().all()  # the validation mAP
    assert result.best.startswith("Best on validation:") and "val mAP@0.5" in result.best
    assert any("Detection task" in line for line in lines)
    assert any("16 training" in line or "50 validation scenes" in line for line in lines)
    report = (out / "report.md").read_text()
    assert "test mAP@0.5 (mean ± std)" in report and "test accuracy" not in report
    document = json.loads((out / "results.json").read_text())
    assert document["metric"] == "test_map_50"
    assert document["settings"]["task"] == "detection"
    assert document["settings"]["train_images"] == 16
    saved = json.loads((out / "settings.json").read_text())
    assert saved["task"] == "detection" and saved["train_images"] == 16

    # The detection source has a cache key of its own, distinct from a classification
    # source of the same settings.
    data = run._make_data(run.SweepSettings())
    assert run.source_key(run.SweepSettings(source_epochs=2), data) != run.source_key(
        run.SweepSettings(task="detection", source_epochs=2), data)
    assert len(list(cache.iterdir())) == 1
