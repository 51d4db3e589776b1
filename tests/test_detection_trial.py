"""Tests for keras_blockreuse.detection.trial and the experiment's statistics."""

import math

import numpy as np
import pytest

from keras_blockreuse.detection.experiment import mean_ci, summarize
from keras_blockreuse.detection.trial import check_policy, policy_name, run_detection_trial
from keras_blockreuse.sweep.zoo import seed_cnn

# Parameters of seed_cnn's block_1 and block_2 (1 input channel): 3*3*1*32+32 + 3*3*32*32+32
# + 3*3*32*64+64 + 3*3*64*64+64.
BACKBONE_PARAMS = 320 + 9248 + 18496 + 36928


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "classifier.blocks.h5"
    return seed_cnn((8, 8, 1), num_classes=10).save_blocks(str(path))


def _tiny(policy, source, **kwargs):
    options = dict(epochs=1, train_images=8, test_images=4, batch_size=8, width=4, seed=0)
    options.update(kwargs)
    return run_detection_trial(policy, source, **options)


@pytest.mark.slow
def test_trial_policies_transfer_and_freeze(source):
    tuned = _tiny({"block_1": "tuned", "block_2": "tuned"}, source)
    frozen = _tiny({"block_1": "frozen", "block_2": "frozen"}, source)
    mixed = _tiny({"block_1": "frozen", "block_2": "reinit"}, source)
    scratch = _tiny({}, None)
    assert tuned["loaded"] == ["block_1", "block_2"] and tuned["frozen"] == []
    assert frozen["frozen"] == ["block_1", "block_2"]
    assert tuned["trainable_params"] == scratch["trainable_params"]
    assert tuned["trainable_params"] - frozen["trainable_params"] == BACKBONE_PARAMS
    assert tuned["trainable_params"] - mixed["trainable_params"] == 320 + 9248
    assert (tuned["policy"], frozen["policy"], scratch["policy"]) == ("tuned", "frozen", "scratch")
    assert mixed["policy"] == "block_1=frozen,block_2=reinit"
    for metrics in (tuned, frozen, mixed, scratch):
        assert 0.0 <= metrics["map"] <= metrics["map_50"] <= 1.0
        assert np.isfinite(metrics["loss"]) and metrics["epochs"] == 1


@pytest.mark.slow
def test_trial_reports_every_epoch(source):
    reports = []
    result = _tiny({"block_1": "tuned"}, source, epochs=2, eval_every=1, report_fn=reports.append)
    assert [r["epoch"] for r in reports] == [1, 2]
    assert all("map_50" in r for r in reports)
    assert reports[-1]["map_50"] == result["map_50"]


@pytest.mark.slow
def test_trial_is_deterministic(source):
    a = _tiny({"block_1": "tuned", "block_2": "frozen"}, source)
    b = _tiny({"block_1": "tuned", "block_2": "frozen"}, source)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_policy_errors():
    with pytest.raises(ValueError, match="Unknown block policies \\{'block_1': 'thawed'\\}"):
        check_policy({"block_1": "thawed"}, "x.blocks.h5")
    with pytest.raises(ValueError, match="\\['block_2'\\] are to be transferred but no source"):
        check_policy({"block_1": "reinit", "block_2": "tuned"}, None)
    with pytest.raises(ValueError, match="epochs=0"):
        run_detection_trial({}, None, epochs=0)
    assert policy_name({"block_1": "reinit", "block_2": "reinit"}) == "scratch"


def test_mean_ci_and_summary_table():
    mean, half = mean_ci([0.5, 0.6, 0.7])
    # t(0.975, 2) = 4.302653; sd = 0.1.
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci([0.3])[1])
    values = {"scratch": (0.2, 0.3, 0.25), "tuned": (0.5, 0.5, 0.65)}
    rows = [
        {"train_images": 10, "epochs": 2, "policy": p, "seed": s, "map_50": v}
        for p, vs in values.items()
        for s, v in enumerate(vs)
    ]
    table = summarize(rows, "map_50")
    # Differences 0.3, 0.2, 0.4: mean 0.3, sd 0.1, t = 0.3 / (0.1 / sqrt(3)) = 5.196, p = 0.035.
    assert "| 10 | 2 | tuned | 0.550 ± 0.215 | +0.300 (+0.052, +0.548) | 0.035 | 3 |" in table
    assert "| 10 | 2 | scratch | 0.250 ± 0.124 | — | — | 3 |" in table
    assert "frozen" not in table
