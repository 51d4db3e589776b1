"""The classification-to-detection example runs end to end (tiny settings)."""

import importlib.util
import os

import pytest

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "examples", "classification_to_detection.py"
)


@pytest.mark.slow
def test_example_runs_end_to_end(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("classification_to_detection", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(
        [
            "--classifier-epochs",
            "2",
            "--epochs",
            "1",
            "--train-images",
            "16",
            "--test-images",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    assert list(results) == ["transferred, tuned", "transferred, frozen", "scratch"]
    for metrics in results.values():
        assert 0.0 <= metrics["map"] <= metrics["map_50"] <= 1.0
    assert sorted(os.listdir(tmp_path)) == ["classifier_001.blocks.h5", "classifier_002.blocks.h5"]
    out = capsys.readouterr().out
    assert "classifier_002.blocks.h5" in out and "loaded, frozen" in out
