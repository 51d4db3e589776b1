"""The seed workflow: train the CIFAR-style CNN, save blocks every epoch, reuse two blocks."""

import keras
import numpy as np

from keras_blockreuse import load_blocks, read_blocks, save_blocks
from tests.helpers import seed_cnn, snapshot


class SaveBlocksEveryEpoch(keras.callbacks.Callback):
    def __init__(self, pattern):
        super().__init__()
        self.pattern = pattern
        self.states = {}

    def on_epoch_end(self, epoch, logs=None):
        path = self.pattern.format(epoch=epoch + 1)
        save_blocks(self.model, path, metadata={"epoch": epoch + 1})
        self.states[path] = snapshot(self.model)


def test_seed_workflow_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((64, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 10, size=64)
    model = seed_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    saver = SaveBlocksEveryEpoch(str(tmp_path / "blocks_{epoch:03d}.blocks.h5"))
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[saver])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["blocks_001.blocks.h5", "blocks_002.blocks.h5", "blocks_003.blocks.h5"]
    assert read_blocks(tmp_path / "blocks_002.blocks.h5").metadata == {"epoch": 2}

    path = str(tmp_path / "blocks_002.blocks.h5")
    saved = saver.states[path]
    assert any(
        not np.array_equal(saved[k], v) for k, v in saver.states[str(tmp_path / "blocks_003.blocks.h5")].items()
    ), "training changed nothing between epochs"

    new_model = seed_cnn(num_classes=4, name="new_head")
    before = snapshot(new_model)
    report = load_blocks(new_model, path, only=["block_1", "block_2"])

    after = snapshot(new_model)
    for layer in ("block_1_0", "block_1_1", "block_2_0", "block_2_1"):
        for var in ("kernel", "bias"):
            assert after[f"new_head/{layer}/{var}"].tobytes() == saved[f"seed_cnn/{layer}/{var}"].tobytes()
    for layer in ("dense_1", "dense_2"):
        for var in ("kernel", "bias"):
            key = f"new_head/{layer}/{var}"
            assert after[key].tobytes() == before[key].tobytes()
    assert report.ok
    assert report.loaded == {"block_1": "block_1", "block_2": "block_2"}
    assert report.untouched == ["dense_1", "dense_2"]
    assert report.unexpected == ["dense_1", "dense_2"]
    assert report.variables_loaded == 8
    text = str(report)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in text.splitlines() if line.startswith("│")}
    assert rows == {"block_1": "loaded", "block_2": "loaded", "dense_1": "untouched", "dense_2": "untouched"}
    # the new model trains from there
    new_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = new_model.fit(x, y % 4, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
