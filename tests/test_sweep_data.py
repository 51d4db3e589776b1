"""Tests for keras_blockreuse.sweep.data: datasets, task splits, shifts, shots, errors."""

import shutil
import urllib.error

import numpy as np
import pytest

from keras_blockreuse.sweep import data
from keras_blockreuse.sweep.data import DataError, apply_shift, load_dataset, make_task


def _index_of(pool, images):
    """Row indices of `images` inside `pool` (exact matches)."""
    keys = {row.tobytes(): i for i, row in enumerate(pool)}
    return [keys[row.tobytes()] for row in images]


def test_digits_pool():
    x, y = load_dataset("digits")
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert y.dtype == np.int64 and sorted(np.unique(y)) == list(range(10))
    assert x.min() == 0.0 and x.max() == 1.0


def test_default_task_is_noisy_ten_shot_digits():
    d = make_task()
    assert d.settings == {"dataset": "digits", "task": "shift", "shift": "noise", "shots": 10,
                          "seed": 0}
    assert d.input_shape == (8, 8, 1)
    assert d.source_classes == d.target_classes == 10
    np.testing.assert_array_equal(np.bincount(d.y_train), np.full(10, 10))
    total = sum(len(a) for a in (d.x_source, d.x_source_val, d.x_train, d.x_val, d.x_test))
    assert total == 1797
    # Source images are clean digits (values are multiples of 1/16), the target's are noisy.
    assert np.allclose(d.x_source * 16, np.round(d.x_source * 16), atol=1e-5)
    assert not np.allclose(d.x_train * 16, np.round(d.x_train * 16), atol=1e-3)
    for x in (d.x_train, d.x_val, d.x_test):
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert "100 train" in d.summary()


def test_source_and_target_images_are_disjoint():
    x, _ = load_dataset("digits")
    d = make_task(task="shift", shift="invert")
    source = set(_index_of(x, d.x_source)) | set(_index_of(x, d.x_source_val))
    target = set()
    for part in (d.x_train, d.x_val, d.x_test):
        target |= set(_index_of(x, 1.0 - part))
    assert len(source) == len(d.x_source) + len(d.x_source_val)
    assert len(target) == len(d.x_train) + len(d.x_val) + len(d.x_test)
    assert not source & target


def test_deterministic_by_seed():
    a, b, c = make_task(seed=3), make_task(seed=3), make_task(seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.source_fingerprint() == b.source_fingerprint()
    assert a.source_fingerprint() != c.source_fingerprint()
    assert not np.array_equal(a.x_train, c.x_train)


def test_source_does_not_depend_on_the_shift_or_shots():
    fingerprints = {make_task(shift=s, shots=k).source_fingerprint()
                    for s in ("noise", "labels") for k in (5, 10)}
    assert len(fingerprints) == 1


def test_split_task_uses_disjoint_class_halves():
    x, y = load_dataset("digits")
    d = make_task(task="split", shift=None, shots=None)
    assert d.source_classes == d.target_classes == 5
    source_labels = set(y[_index_of(x, d.x_source)].tolist())
    target_labels = set(y[_index_of(x, d.x_test)].tolist())
    assert source_labels == {0, 1, 2, 3, 4} and target_labels == {5, 6, 7, 8, 9}
    assert set(np.unique(d.y_train).tolist()) == set(range(5))
    # Target labels are relabelled from 0: original digit 5 becomes class 0.
    np.testing.assert_array_equal(y[_index_of(x, d.x_test)] - 5, d.y_test)
    counts = np.bincount(d.y_train)
    assert counts.min() >= 80  # half of each class by default


def test_split_with_chosen_source_classes_and_shots():
    x, y = load_dataset("digits")
    d = make_task(task="split", shift=None, shots=3, source_classes=[0, 2, 4])
    assert d.source_classes == 3 and d.target_classes == 7
    assert set(y[_index_of(x, d.x_source)].tolist()) == {0, 2, 4}
    np.testing.assert_array_equal(np.bincount(d.y_train), np.full(7, 3))


@pytest.mark.parametrize("shift", ["noise", "blur", "invert", "rotate"])
def test_input_shifts_change_images_not_labels(shift):
    x = np.zeros((4, 6, 6, 1), np.float32)
    x[:, 1, 2, 0] = 1.0
    y = np.array([0, 1, 2, 1])
    shifted, labels = apply_shift(x, y, shift, np.random.default_rng(0))
    assert shifted.shape == x.shape and shifted.dtype == np.float32
    np.testing.assert_array_equal(labels, y)
    assert not np.allclose(shifted, x)
    assert shifted.min() >= 0.0 and shifted.max() <= 1.0
    if shift == "invert":
        np.testing.assert_array_equal(shifted, 1.0 - x)
    if shift == "rotate":
        np.testing.assert_allclose(shifted, np.rot90(x, 1, axes=(1, 2)), atol=1e-6)
    if shift == "blur":
        np.testing.assert_allclose(shifted.sum(axis=(1, 2, 3)), 1.0, atol=1e-4)


def test_label_shift_is_a_derangement():
    y = np.repeat(np.arange(10), 3)
    x = np.zeros((30, 4, 4, 1), np.float32)
    for seed in range(5):
        _, permuted = apply_shift(x, y, "labels", np.random.default_rng(seed))
        mapping = dict(zip(y.tolist(), permuted.tolist(), strict=True))
        assert sorted(mapping.values()) == list(range(10))
        assert all(k != v for k, v in mapping.items())
        assert all(mapping[a] == b for a, b in zip(y, permuted, strict=True))


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 4, 4, 3), dtype=np.uint8)
    y = np.repeat(np.array([3, 7, 9]), 20).reshape(-1, 1)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    pool_x, pool_y = load_dataset(f"npz:{path}")
    assert pool_x.shape == (60, 4, 4, 3) and pool_x.max() == 1.0
    assert sorted(np.unique(pool_y).tolist()) == [0, 1, 2]
    d = make_task(f"npz:{path}", shots=2)
    assert d.target_classes == 3 and len(d.x_train) == 6


def test_folder_dataset(tmp_path):
    import keras

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(8):
            image = rng.integers(0, 256, size=(12, 12, 3)).astype("uint8")
            keras.utils.save_img(str(tmp_path / c / f"{i}.png"), image)
    x, y = load_dataset(f"folder:{tmp_path}")
    assert x.shape == (16, 12, 12, 3) and x.max() <= 1.0
    assert np.bincount(y).tolist() == [8, 8]


def test_offline_keras_dataset_gives_one_clear_message(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    def fail(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", fail)
    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path))
    with pytest.raises(DataError) as info:
        make_task("cifar10")
    message = str(info.value)
    assert "'cifar10'" in message and "--dataset digits" in message and "npz:PATH" in message
    assert "Temporary failure in name resolution" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(dataset="imagenet"), "Unknown dataset 'imagenet'"),
        (dict(task="swap"), "Unknown task 'swap'"),
        (dict(shift="fog"), "Unknown shift 'fog'"),
        (dict(task="split", shift="noise"), "applies to task 'shift' only"),
        (dict(shots=0), "positive integer"),
        (dict(shots=500), "Impossible shots=500"),
        (dict(dataset="npz:/nonexistent.npz"), "no such file"),
        (dict(dataset="folder:/nonexistent"), "no such directory"),
        (dict(task="split", shift=None, source_classes=[11]), "subset of"),
    ],
)
def test_errors_say_what_was_received(kwargs, fragment):
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make_task(**kwargs)


def test_impossible_shots_names_the_limit():
    with pytest.raises(DataError) as info:
        make_task(shots=89)
    assert "at most" in str(info.value)


def test_noise_level_is_documented_constant():
    assert 0 < data.NOISE_STDDEV < 1


def test_a_folder_dataset_is_read_as_data_folder_reads_one(tmp_path):
    """Found by a fresh-user check: --dataset folder:PATH read every folder as RGB and resized
    every image to the first image's size, unsaid. It now goes through --data's reader: a
    greyscale folder is 1 channel (the summary says how it was read), images of several sizes
    are refused unless image_size resizes them, and --data's train/ val/ test/ layout is
    refused rather than read as classes named train, val, test."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "grey"
    pixels = {}
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            values = rng.integers(0, 256, size=(6, 6), dtype=np.uint8)
            Image.fromarray(values, "L").save(root / c / f"{i}.png")
            pixels[(c, i)] = values
    x, y = load_dataset(f"folder:{root}")
    assert x.shape == (16, 6, 6, 1) and y.tolist() == [0] * 8 + [1] * 8
    np.testing.assert_array_equal(np.round(x[9, ..., 0] * 255), pixels[("b", 1)])
    d = make_task(f"folder:{root}", shots=2, seed=0)
    assert d.summary() == (
        f"dataset=folder:{root}, task=shift, shift=noise, shots=2, seed=0, images (6, 6, 1)\n"
        "  images read as greyscale (1 channel): every image in the folder is greyscale\n"
        "  source: 6 train / 2 val images, 2 classes\n"
        "  target: 4 train / 2 val / 2 test images, 2 classes")
    Image.fromarray(np.zeros((9, 7), np.uint8), "L").save(root / "b" / "odd.png")
    with pytest.raises(DataError) as info:
        make_task(f"folder:{root}", shots=2)
    assert str(info.value) == (
        f"folder data {str(root)!r} holds images of 2 sizes: 6x6 (a/0.png), 9x7 (b/odd.png). "
        "Pass --image-size HxW (image_size=) to resize them to one.")
    d = make_task(f"folder:{root}", shots=2, image_size=(4, 5))
    assert d.input_shape == (4, 5, 1)
    assert d.notes == ("  resized to 4x5", "  images read as greyscale (1 channel): every "
                       "image in the folder is greyscale")
    with pytest.raises(DataError, match=r"^image_size resizes the images of a folder:PATH "
                                        r"dataset; dataset 'digits' is used at its own size\.$"):
        make_task("digits", image_size=(4, 4))
    parts = tmp_path / "parts"
    for part in ("train", "test"):
        shutil.copytree(root, parts / part)
    with pytest.raises(DataError) as info:
        load_dataset(f"folder:{parts}")
    assert str(info.value) == (
        f"folder dataset {str(parts)!r} holds train/, test/: the layout of --data (your own "
        "target's parts), which --dataset would read as classes named train, test. --dataset "
        "folder:PATH takes one sub-folder of images per class and draws its own source and "
        "target splits; for your own parts use --data with --source.")
