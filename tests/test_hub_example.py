"""The keras-hub detection example runs end to end at its smallest size."""

import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip(
    "keras_hub", reason="keras-hub is not installed (pip install 'keras-blockreuse[hub]')"
)
pytest.importorskip("pycocotools", reason="mAP needs pycocotools (the [detection] extra)")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "keras_hub_detection.py")


@pytest.mark.slow
def test_keras_hub_example_runs_end_to_end(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("keras_hub_detection", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main([
        "--classifier-epochs", "1", "--classifier-images", "64", "--epochs", "1",
        "--train-images", "16", "--test-images", "8", "--seeds", "0", "--out", str(tmp_path),
    ])
    assert list(results) == ["transferred, tuned", "transferred, frozen", "scratch"]
    rows = {policy: runs[0] for policy, runs in results.items()}
    for row in rows.values():
        assert 0.0 <= row["map"] <= row["map_50"] <= 1.0
        assert np.isfinite(row["loss"])
    tuned, frozen = rows["transferred, tuned"], rows["transferred, frozen"]
    stages = ["stem", "stage_1", "stage_2", "stage_3"]
    assert tuned["report"].loaded == frozen["report"].loaded == {s: s for s in stages}
    assert frozen["report"].frozen == stages
    assert tuned["report"].untouched == ["fpn", "box_head", "classification_head"]
    assert frozen["trainable_params"] < tuned["trainable_params"] == rows["scratch"][
        "trainable_params"]
    assert os.listdir(tmp_path) == ["classifier.blocks.h5"]
    out = capsys.readouterr().out
    assert "| transferred, frozen |" in out and "predictions" in out
