"""BlockCheckpoint and latest_checkpoint: names, metadata, pruning, best-only, resuming."""

import errno
import os
import shutil
import warnings

import h5py
import keras
import numpy as np
import pytest

from keras_blockreuse import (
    BlockCheckpoint,
    BlockMismatchError,
    latest_checkpoint,
    load_blocks,
    read_blocks,
    save_blocks,
)
from keras_blockreuse.store import is_temporary
from tests.helpers import small_tmpfs

L = keras.layers
BATCH = 8
SAMPLES = 32
STEPS = SAMPLES // BATCH


def small_cnn(name="cnn"):
    """The seed CNN's naming, small and without dropout (so training is deterministic)."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="block_1_0")(inputs)
    x = L.Conv2D(4, 3, activation="relu", name="block_1_1")(x)
    x = L.AveragePooling2D(2, name="block_1_2")(x)
    x = L.Flatten()(x)
    x = L.Dense(8, activation="relu", name="dense_1")(x)
    outputs = L.Dense(3, name="dense_2")(x)
    return keras.Model(inputs, outputs, name=name)


def compiled(model, metrics=("accuracy",)):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
    )
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=(SAMPLES,))
    return x, y


def weights(model) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def assert_weights_equal(a: list[np.ndarray], b: list[np.ndarray]):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), "weights differ"


def loaded_weights(path) -> list[np.ndarray]:
    """The weights of a fresh model after loading `path` into it."""
    model = small_cnn("probe")
    load_blocks(model, path)
    return weights(model)


class Snapshots(keras.callbacks.Callback):
    """Records every variable's value at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.values: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(weights(self.model))


def test_files_per_epoch_with_formatted_names_and_metadata(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    folder = tmp_path / "not" / "yet"
    template = str(folder / "blocks_{epoch:03d}-{val_loss:.3f}.blocks.h5")
    snapshots = Snapshots()
    checkpoint = BlockCheckpoint(template, metadata={"run": "a"})
    history = model.fit(
        x, y, batch_size=BATCH, epochs=3, validation_data=(x, y), shuffle=False, verbose=0,
        callbacks=[checkpoint, snapshots],
    )
    val_losses = history.history["val_loss"]
    expected = [folder / f"blocks_{e + 1:03d}-{val_losses[e]:.3f}.blocks.h5" for e in range(3)]
    assert sorted(os.listdir(folder)) == sorted(p.name for p in expected)
    assert checkpoint.saved == [str(p) for p in expected]
    for epoch, path in enumerate(expected):
        meta = read_blocks(path).metadata
        assert meta["run"] == "a"
        assert meta["checkpoint"] == template
        assert meta["epoch"] == epoch + 1
        assert meta["batch"] is None
        assert meta["step"] == (epoch + 1) * STEPS
        assert meta["monitor"] == "val_loss"
        assert meta["monitor_value"] == val_losses[epoch]
        assert meta["logs"]["loss"] == history.history["loss"][epoch]
        assert_weights_equal(loaded_weights(path), snapshots.values[epoch])


def test_keep_last_keeps_exactly_the_last_two_and_never_other_files(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    save_blocks(model, tmp_path / "other.blocks.h5")
    save_blocks(model, tmp_path / "blocks_099.blocks.h5")  # matches the pattern, not ours
    (tmp_path / "notes.txt").write_text("keep me")
    template = str(tmp_path / "blocks_{epoch:03d}.blocks.h5")
    model.fit(x, y, batch_size=BATCH, epochs=5, verbose=0,
              callbacks=[BlockCheckpoint(template, keep_last=2)])
    assert sorted(os.listdir(tmp_path)) == [
        "blocks_004.blocks.h5", "blocks_005.blocks.h5", "blocks_099.blocks.h5",
        "notes.txt", "other.blocks.h5",
    ]
    # A resumed run with the same template counts the earlier run's files too.
    model.fit(x, y, batch_size=BATCH, initial_epoch=5, epochs=7, verbose=0,
              callbacks=[BlockCheckpoint(template, keep_last=2)])
    assert sorted(os.listdir(tmp_path)) == [
        "blocks_006.blocks.h5", "blocks_007.blocks.h5", "blocks_099.blocks.h5",
        "notes.txt", "other.blocks.h5",
    ]
    assert read_blocks(tmp_path / "blocks_007.blocks.h5").metadata["epoch"] == 7


def test_keep_last_recognises_earlier_files_however_the_template_is_spelled(
    tmp_path, monkeypatch
):
    x, y = data()
    model = compiled(small_cnn())
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run9"
    epoch = 0
    for template in ["run9/b_{epoch:02d}.blocks.h5", "./run9/b_{epoch:02d}.blocks.h5",
                     str(run) + "/b_{epoch:02d}.blocks.h5", "run9//./b_{epoch:02d}.blocks.h5"]:
        model.fit(x, y, batch_size=BATCH, initial_epoch=epoch, epochs=epoch + 2, verbose=0,
                  callbacks=[BlockCheckpoint(template, keep_last=2)])
        epoch += 2
        assert sorted(os.listdir(run)) == [f"b_{epoch - 1:02d}.blocks.h5",
                                           f"b_{epoch:02d}.blocks.h5"]
    # From another working folder, the absolute path recognises a relative template's files.
    monkeypatch.chdir(tmp_path / "run9")
    model.fit(x, y, batch_size=BATCH, initial_epoch=epoch, epochs=epoch + 1, verbose=0,
              callbacks=[BlockCheckpoint(str(run) + "/b_{epoch:02d}.blocks.h5", keep_last=1)])
    assert os.listdir(run) == ["b_09.blocks.h5"]
    assert read_blocks(run / "b_09.blocks.h5").metadata["epoch"] == 9
    assert_weights_equal(loaded_weights(run / "b_09.blocks.h5"), weights(model))


def test_keep_last_never_counts_or_prunes_files_that_monitored_another_value(tmp_path):
    """Found by a fresh-user re-check: a run monitoring val_loss with keep_last=1 deleted
    the best file of an earlier run of the same template that monitored val_accuracy (and
    counted it). Files recording another monitor are another run's: left as they are."""
    x, y = data()
    model = compiled(small_cnn())
    template = str(tmp_path / "b_{epoch:02d}.blocks.h5")
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, validation_data=(x, y),
              callbacks=[BlockCheckpoint(template, monitor="val_accuracy", mode="max")])
    theirs = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert sorted(theirs) == ["b_01.blocks.h5", "b_02.blocks.h5"]
    model.fit(x, y, batch_size=BATCH, initial_epoch=2, epochs=4, verbose=0,
              validation_data=(x, y),
              callbacks=[BlockCheckpoint(template, monitor="val_loss", keep_last=1)])
    assert sorted(os.listdir(tmp_path)) == ["b_01.blocks.h5", "b_02.blocks.h5",
                                            "b_04.blocks.h5"]
    assert all((tmp_path / name).read_bytes() == kept for name, kept in theirs.items())
    assert read_blocks(tmp_path / "b_04.blocks.h5").metadata["monitor"] == "val_loss"


def test_keep_last_with_a_fixed_path_keeps_the_one_file(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    path = tmp_path / "latest.blocks.h5"
    model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0,
              callbacks=[BlockCheckpoint(str(path), keep_last=1)])
    assert os.listdir(tmp_path) == ["latest.blocks.h5"]
    assert read_blocks(path).metadata["epoch"] == 3
    assert_weights_equal(loaded_weights(path), weights(model))


def test_save_best_only_saves_only_on_improvement(tmp_path):
    model = compiled(small_cnn())
    checkpoint = BlockCheckpoint(str(tmp_path / "best_{epoch}.blocks.h5"), save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    saved_weights = {}
    for epoch, val_loss in enumerate([1.0, 0.5, 0.7, 0.5, 0.4, float("nan")]):
        model.get_layer("dense_2").kernel.assign(np.full((8, 3), epoch, "float32"))
        checkpoint.on_epoch_begin(epoch)
        checkpoint.on_epoch_end(epoch, {"loss": 9.0, "val_loss": val_loss})
        saved_weights[epoch + 1] = weights(model)
    assert sorted(os.listdir(tmp_path)) == [
        "best_1.blocks.h5", "best_2.blocks.h5", "best_5.blocks.h5"
    ]
    assert checkpoint.best == 0.4
    for epoch in (1, 2, 5):
        path = tmp_path / f"best_{epoch}.blocks.h5"
        assert read_blocks(path).metadata["monitor_value"] == [1.0, 0.5, 0.4][(1, 2, 5).index(epoch)]
        assert_weights_equal(loaded_weights(path), saved_weights[epoch])


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs (mounting needs root, as in CI; skipped otherwise)."""
    with small_tmpfs(tmp_path / "tmpfs", "1m") as folder:
        yield folder


def fill(folder) -> str:
    """Fills the disk of `folder` with one file; returns its path."""
    filler = os.path.join(folder, "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_a_failed_save_leaves_best_as_it_was(tmpfs):
    """On a full disk the save raises; the next epoch that beats the file on disk is saved."""
    model = compiled(small_cnn())
    checkpoint = BlockCheckpoint(str(tmpfs / "best_{epoch}.blocks.h5"), save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    kernel = model.get_layer("dense_2").kernel
    kernel.assign(np.full((8, 3), 1.0, "float32"))
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    first = weights(model)
    filler = fill(tmpfs)
    kernel.assign(np.full((8, 3), 2.0, "float32"))
    with pytest.raises(OSError):
        checkpoint.on_epoch_end(1, {"val_loss": 0.5})
    assert checkpoint.best == 1.0  # the best file on disk
    os.remove(filler)
    kernel.assign(np.full((8, 3), 3.0, "float32"))
    checkpoint.on_epoch_end(2, {"val_loss": 0.7})  # worse than the failed save, better than disk
    assert sorted(os.listdir(tmpfs)) == ["best_1.blocks.h5", "best_3.blocks.h5"]
    assert checkpoint.best == 0.7
    assert read_blocks(tmpfs / "best_3.blocks.h5").metadata["monitor_value"] == 0.7
    assert_weights_equal(loaded_weights(tmpfs / "best_3.blocks.h5"), weights(model))
    assert_weights_equal(loaded_weights(tmpfs / "best_1.blocks.h5"), first)


def test_verbose_prints_one_line_per_epoch(tmp_path, capsys):
    model = compiled(small_cnn())
    best = BlockCheckpoint(str(tmp_path / "best_{epoch}.blocks.h5"), save_best_only=True,
                           verbose=1)
    every = BlockCheckpoint(str(tmp_path / "every_{epoch}.blocks.h5"), verbose=1)
    for checkpoint in (best, every):
        checkpoint.set_model(model)
        checkpoint.on_train_begin()
        for epoch, val_loss in enumerate([1.0, 0.5, 0.7]):
            checkpoint.on_epoch_end(epoch, {"val_loss": val_loss})
    assert capsys.readouterr().out == (
        f"\nEpoch 1: val_loss improved from inf to 1.00000, saving blocks to "
        f"{tmp_path / 'best_1.blocks.h5'}\n"
        f"\nEpoch 2: val_loss improved from 1.00000 to 0.50000, saving blocks to "
        f"{tmp_path / 'best_2.blocks.h5'}\n"
        "\nEpoch 3: val_loss did not improve from 0.50000\n"
        f"\nEpoch 1: saving blocks to {tmp_path / 'every_1.blocks.h5'}\n"
        f"\nEpoch 2: saving blocks to {tmp_path / 'every_2.blocks.h5'}\n"
        f"\nEpoch 3: saving blocks to {tmp_path / 'every_3.blocks.h5'}\n"
    )
    assert sorted(os.listdir(tmp_path)) == [
        "best_1.blocks.h5", "best_2.blocks.h5",
        "every_1.blocks.h5", "every_2.blocks.h5", "every_3.blocks.h5",
    ]


def epochs_of(checkpoint, model, values, first=0, monitor="val_loss"):
    """Runs `checkpoint` over epochs with the given monitored values; dense_2's kernel is the
    epoch number, so every epoch's weights differ. Returns the weights of each epoch (1-based)."""
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    snapshots = {}
    for epoch, value in enumerate(values, start=first):
        model.get_layer("dense_2").kernel.assign(np.full((8, 3), epoch, "float32"))
        snapshots[epoch + 1] = weights(model)
        checkpoint.on_epoch_begin(epoch)
        checkpoint.on_epoch_end(epoch, {"loss": 9.0, monitor: value})
    return snapshots


def test_a_resumed_run_starts_from_the_earlier_runs_best(tmp_path, capsys):
    """README's recipe with save_best_only: the resumed run never replaces the best file with a
    worse one, and latest_checkpoint still returns the best weights."""
    model = compiled(small_cnn())
    template = str(tmp_path / "best_{epoch}.blocks.h5")
    first = epochs_of(BlockCheckpoint(template, save_best_only=True, keep_last=1), model,
                      [1.0, 0.4, 0.6])
    assert os.listdir(tmp_path) == ["best_2.blocks.h5"]
    capsys.readouterr()

    path = latest_checkpoint(tmp_path)
    resumed = compiled(small_cnn("resumed"))
    load_blocks(resumed, path)
    initial_epoch = read_blocks(path).metadata["epoch"]
    checkpoint = BlockCheckpoint(template, save_best_only=True, keep_last=1, verbose=1)
    epochs_of(checkpoint, resumed, [0.5], first=initial_epoch)  # worse than the file on disk
    assert checkpoint.best == 0.4
    assert os.listdir(tmp_path) == ["best_2.blocks.h5"]
    assert latest_checkpoint(tmp_path) == str(tmp_path / "best_2.blocks.h5")
    assert_weights_equal(loaded_weights(latest_checkpoint(tmp_path)), first[2])
    later = epochs_of(checkpoint, resumed, [0.3], first=initial_epoch + 1)
    assert checkpoint.best == 0.3
    assert os.listdir(tmp_path) == ["best_4.blocks.h5"]
    assert_weights_equal(loaded_weights(tmp_path / "best_4.blocks.h5"), later[4])
    assert capsys.readouterr().out == (
        f"\nEpoch 3: val_loss starts from 0.40000, the best of 1 earlier file(s) of this "
        f"template: {tmp_path / 'best_2.blocks.h5'}\n"
        "\nEpoch 3: val_loss did not improve from 0.40000\n"
        "\nEpoch 4: val_loss improved from 0.40000 to 0.30000, saving blocks to "
        f"{tmp_path / 'best_4.blocks.h5'}\n"
    )


def test_initial_value_threshold_and_the_earlier_files_best(tmp_path):
    model = compiled(small_cnn())
    template = str(tmp_path / "b_{epoch}.blocks.h5")
    # Another monitor's file of the same template: its value (0.99) is not val_accuracy's.
    epochs_of(BlockCheckpoint(template, monitor="val_loss", mode="max", save_best_only=True),
              model, [0.99], first=10)
    checkpoint = BlockCheckpoint(template, monitor="val_accuracy", mode="max",
                                 save_best_only=True, initial_value_threshold=0.5)
    assert checkpoint.best == 0.5
    epochs_of(checkpoint, model, [0.4, 0.5, 0.6, 0.55], monitor="val_accuracy")
    assert sorted(os.listdir(tmp_path)) == ["b_11.blocks.h5", "b_3.blocks.h5"]
    assert checkpoint.best == 0.6
    # The threshold wins when it is better than the files' best (0.6)...
    stricter = BlockCheckpoint(template, monitor="val_accuracy", mode="max",
                               save_best_only=True, initial_value_threshold=0.7)
    epochs_of(stricter, model, [0.65, 0.8], first=4, monitor="val_accuracy")
    assert sorted(os.listdir(tmp_path)) == ["b_11.blocks.h5", "b_3.blocks.h5", "b_6.blocks.h5"]
    # ... and the files' best (0.8) when it is better than the threshold.
    looser = BlockCheckpoint(template, monitor="val_accuracy", mode="max",
                             save_best_only=True, initial_value_threshold=0.1)
    epochs_of(looser, model, [0.75, 0.85], first=6, monitor="val_accuracy")
    assert looser.best == 0.85
    assert sorted(os.listdir(tmp_path)) == [
        "b_11.blocks.h5", "b_3.blocks.h5", "b_6.blocks.h5", "b_8.blocks.h5"
    ]
    assert read_blocks(tmp_path / "b_8.blocks.h5").metadata["monitor_value"] == 0.85


def test_save_best_only_with_an_accuracy_goes_up(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # builds the metrics
    checkpoint = BlockCheckpoint(str(tmp_path / "best_{epoch}.blocks.h5"),
                                 monitor="val_accuracy", save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    for epoch, accuracy in enumerate([0.3, 0.2, 0.6, 0.6, 0.9]):
        checkpoint.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert sorted(os.listdir(tmp_path)) == [
        "best_1.blocks.h5", "best_3.blocks.h5", "best_5.blocks.h5"
    ]
    minimum = BlockCheckpoint(str(tmp_path / "min_{epoch}.blocks.h5"), monitor="val_accuracy",
                              mode="min", save_best_only=True)
    minimum.set_model(model)
    for epoch, accuracy in enumerate([0.3, 0.2, 0.6]):
        minimum.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("min")) == [
        "min_1.blocks.h5", "min_2.blocks.h5"
    ]


def test_save_best_only_without_the_monitor_warns_and_saves(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    checkpoint = BlockCheckpoint(str(tmp_path / "b_{epoch}.blocks.h5"), save_best_only=True)
    with pytest.warns(UserWarning, match=r"'val_loss' is in the logs.*available: \['accuracy', "):
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[checkpoint])
    assert sorted(os.listdir(tmp_path)) == ["b_1.blocks.h5", "b_2.blocks.h5"]


def test_a_missing_log_key_is_a_clear_error(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    checkpoint = BlockCheckpoint(str(tmp_path / "b_{epoch}-{val_acc:.2f}.blocks.h5"))
    with pytest.raises(KeyError) as info:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[checkpoint])
    message = str(info.value)
    assert "'val_acc' is not among this epoch's values" in message
    assert "['accuracy', 'epoch', 'loss']" in message
    assert os.listdir(tmp_path) == []


def test_save_freq_in_batches_records_epoch_batch_and_step(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    template = str(tmp_path / "b_{epoch}-{batch}.blocks.h5")
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False,
              callbacks=[BlockCheckpoint(template, save_freq=3)])
    # 4 batches per epoch, a save every 3 batches: after batch 3 of epoch 1 and batch 2 of 2.
    names = sorted(os.listdir(tmp_path))
    assert names == ["b_1-3.blocks.h5", "b_2-2.blocks.h5"]
    metas = [read_blocks(tmp_path / n).metadata for n in names]
    assert [(m["epoch"], m["batch"], m["step"]) for m in metas] == [(1, 3, 3), (2, 2, 6)]


def test_only_saves_the_selected_blocks_and_unknown_names_fail_early(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[BlockCheckpoint(str(tmp_path / "b_{epoch}.blocks.h5"),
                                         only=["block_*"])])
    assert list(read_blocks(tmp_path / "b_1.blocks.h5").blocks) == ["block_1"]
    with pytest.raises(BlockMismatchError, match=r"\['nope'\].*'block_1', 'dense_1', 'dense_2'"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                  callbacks=[BlockCheckpoint(str(tmp_path / "c.blocks.h5"), only=["nope"])])
    assert not (tmp_path / "c.blocks.h5").exists()


def test_argument_errors_name_what_was_received(tmp_path):
    with pytest.raises(ValueError, match=r"must end in '\.blocks\.h5'.*ckpt\.h5"):
        BlockCheckpoint("ckpt.h5")
    with pytest.raises(ValueError, match="save_freq=0"):
        BlockCheckpoint("a.blocks.h5", save_freq=0)
    with pytest.raises(ValueError, match="keep_last=0"):
        BlockCheckpoint("a.blocks.h5", keep_last=0)
    with pytest.raises(ValueError, match="mode='up'"):
        BlockCheckpoint("a.blocks.h5", mode="up")
    with pytest.raises(ValueError, match=r"\['epoch'\] are written by BlockCheckpoint"):
        BlockCheckpoint("a.blocks.h5", metadata={"epoch": 1})
    with pytest.raises(ValueError, match="initial_value_threshold='0.5'"):
        BlockCheckpoint("a.blocks.h5", initial_value_threshold="0.5")
    with pytest.raises(ValueError, match="initial_value_threshold=nan"):
        BlockCheckpoint("a.blocks.h5", initial_value_threshold=float("nan"))
    with pytest.raises(ValueError, match="not a valid format string"):
        BlockCheckpoint("a_{epoch.blocks.h5")
    model = compiled(small_cnn())
    checkpoint = BlockCheckpoint(str(tmp_path / "a.blocks.h5"), monitor="val_score",
                                 save_best_only=True)
    checkpoint.set_model(model)
    with pytest.raises(ValueError, match="'val_score' should go up or down. Pass mode="):
        checkpoint.on_epoch_end(0, {"val_score": 1.0})


def test_stale_temporaries_are_cleaned_by_the_next_checkpoint(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    stale = tmp_path / ".b_1.blocks.h5.kbr-tmp-999999999-0badf00d"
    stale.write_bytes(b"half a file")
    assert is_temporary(str(stale))
    assert latest_checkpoint(tmp_path) is None
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[BlockCheckpoint(str(tmp_path / "b_{epoch}.blocks.h5"))])
    assert os.listdir(tmp_path) == ["b_1.blocks.h5"]


def _corrupt_values(path):
    """Flips one byte inside the stored values of dense_2's kernel, leaving HDF5 intact."""
    with h5py.File(path, "r") as f:
        offset = f["dense_2/dense_2/kernel"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 5)
        byte = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([byte[0] ^ 0x40]))


def test_latest_checkpoint_skips_a_corrupted_newest_file(tmp_path):
    x, y = data()
    model = compiled(small_cnn())
    snapshots = Snapshots()
    template = str(tmp_path / "blocks_{epoch:03d}.blocks.h5")
    model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0,
              callbacks=[BlockCheckpoint(template), snapshots])
    newest = tmp_path / "blocks_003.blocks.h5"
    assert latest_checkpoint(tmp_path) == str(newest)
    # A temporary copy claiming a later epoch is never a candidate.
    shutil.copy(newest, tmp_path / f".blocks_004.blocks.h5.kbr-tmp-{os.getpid()}-00000000")
    # Nor is a file of another kind with the suffix.
    (tmp_path / "blocks_005.blocks.h5").write_text("not a block file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert latest_checkpoint(tmp_path) == str(newest)
    _corrupt_values(newest)
    with pytest.warns(UserWarning, match=r"skips .*blocks_003.*values do not match"):
        found = latest_checkpoint(template)
    assert found == str(tmp_path / "blocks_002.blocks.h5")
    assert_weights_equal(loaded_weights(found), snapshots.values[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert latest_checkpoint(str(tmp_path / "blocks_00[12].blocks.h5")) == found
    assert latest_checkpoint(tmp_path / "absent") is None


def test_latest_checkpoint_orders_by_recorded_epoch_not_by_name_or_time(tmp_path):
    model = compiled(small_cnn())
    for epoch in (10, 9):  # written newest-epoch first; the name order disagrees too
        checkpoint = BlockCheckpoint(str(tmp_path / f"run_{20 - epoch}.blocks.h5"))
        checkpoint.set_model(model)
        checkpoint.on_epoch_end(epoch - 1, {})
    save_blocks(model, tmp_path / "zzz_plain.blocks.h5")  # no epoch recorded: counts as older
    found = latest_checkpoint(tmp_path)
    assert found == str(tmp_path / "run_10.blocks.h5")
    assert read_blocks(found).metadata["epoch"] == 10


def test_resumed_training_continues_exactly_where_it_stopped(tmp_path):
    """Train 2 epochs, 'crash', resume from the latest block checkpoint: same weights as 4."""
    x, y = data()
    keras.utils.set_random_seed(1)
    reference = compiled(small_cnn("reference"))
    initial = weights(reference)
    reference.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0)

    template = str(tmp_path / "ckpt" / "blocks_{epoch:03d}.blocks.h5")
    first = compiled(small_cnn("first"))
    for variable, value in zip(first.weights, initial, strict=True):
        variable.assign(value)
    first.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[BlockCheckpoint(template, keep_last=2)])
    del first  # the run is gone; only its checkpoints remain

    resumed = compiled(small_cnn("resumed"))  # freshly initialised, different weights
    path = latest_checkpoint(tmp_path / "ckpt")
    assert path == str(tmp_path / "ckpt" / "blocks_002.blocks.h5")
    report = load_blocks(resumed, path)
    assert report.ok and report.variables_loaded == len(resumed.weights)
    initial_epoch = read_blocks(path).metadata["epoch"]
    history = resumed.fit(x, y, batch_size=BATCH, initial_epoch=initial_epoch, epochs=4,
                          shuffle=False, verbose=0,
                          callbacks=[BlockCheckpoint(template, keep_last=2)])
    assert history.epoch == [2, 3]
    assert_weights_equal(weights(resumed), weights(reference))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["blocks_003.blocks.h5", "blocks_004.blocks.h5"]
    assert_weights_equal(loaded_weights(latest_checkpoint(tmp_path / "ckpt")), weights(reference))
