"""Tests for keras_blockreuse.detection.sweep: the detection task's source and trainable."""

import pytest

from keras_blockreuse.detection.sweep import (
    DETECTION_BLOCKS,
    make_detection_task,
    train_detection_source,
    train_detection_trial,
)
from keras_blockreuse.store import read_blocks


def test_detection_task_is_fixed_and_describes_itself():
    a, b = make_detection_task(val_images=3, test_images=5), make_detection_task(3, 5)
    assert (len(a.val), len(a.test)) == (3, 5)
    assert (a.val.images == b.val.images).all() and (a.test.images == b.test.images).all()
    assert "3 validation scenes" in a.summary() and "5 test scenes" in a.summary()
    assert a.source_fingerprint() == b.source_fingerprint()
    assert (a.source_classes, a.target_classes, a.input_shape) == (10, 10, (8, 8, 1))


def test_source_must_be_the_seed_cnn():
    with pytest.raises(ValueError, match="received model='small_resnet'"):
        train_detection_source(model="small_resnet")


@pytest.mark.slow
def test_detection_source_and_trial_report_map(tmp_path, monkeypatch):
    from ray import tune

    blob, metrics = train_detection_source(epochs=1, metadata={"run": "test"})
    assert set(metrics) == {"epochs", "val_accuracy", "val_loss", "seconds"}
    path = tmp_path / "source.blocks.h5"
    path.write_bytes(blob)
    info = read_blocks(str(path))
    assert set(DETECTION_BLOCKS) <= set(info.blocks)
    assert info.metadata["run"] == "test" and info.metadata["split"] == "train"

    reports = []
    monkeypatch.setattr(tune, "report", reports.append)
    config = {
        "policy": "block_1=tuned,block_2=frozen",
        "seed": 0,
        "epochs": 2,
        "train_images": 8,
        "test_images": 4,
        "batch_size": 8,
        "width": 4,
    }
    task = make_detection_task(val_images=4, test_images=4)
    last = train_detection_trial(config, data=task, source=blob)
    assert [r["epoch"] for r in reports] == [1, 2]
    assert "test_map_50" not in reports[0] and "val_map_50" in reports[0]
    assert last == reports[-1]
    assert 0.0 <= last["test_map"] <= last["test_map_50"] <= 1.0
    assert 0.0 <= last["val_map"] <= last["val_map_50"] <= 1.0
    assert last["policy"] == "block_1=tuned,block_2=frozen" and last["train_images"] == 8

    # The scratch baseline needs no source; a transferring policy without one is refused.
    scratch = train_detection_trial({**config, "policy": "scratch", "epochs": 1})
    assert "test_map_50" in scratch
    with pytest.raises(ValueError, match="no source was given"):
        train_detection_trial({**config, "policy": "block_1=frozen"})
