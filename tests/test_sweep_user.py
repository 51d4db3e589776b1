"""The sweep on the user's own model, pretrained weights and data (issue 12): the
`which_blocks` API with numpy arrays and with tf.data, the command line with a builder
function, a keras.applications model on an image folder, a regression target, and the
--task split head rule. Real Ray Tune trials on the session's Ray instance."""

import json
import os
import re
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
from ray import tune

from keras_blockreuse import read_blocks, save_blocks
from keras_blockreuse.sweep import SweepError, which_blocks
from keras_blockreuse.sweep.inputs import UserInputs
from keras_blockreuse.sweep.models import Recipe, resolve_builder
from keras_blockreuse.sweep.run import main
from keras_blockreuse.sweep.trial import train_trial
from keras_blockreuse.sweep.user_data import from_arrays, load_data
from tests.sweep_user_model import build, images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDER = os.path.join(ROOT, "tests", "sweep_user_model.py") + ":build"


@pytest.fixture(scope="module")
def arrays():
    x, y = images(90, classes=3)
    return (x[:60], y[:60]), (x[60:75], y[60:75]), (x[75:], y[75:])


@pytest.fixture
def source4(tmp_path):
    """The user's pretrained weights: the same architecture with a 4-class head."""
    keras.utils.set_random_seed(1)
    path = str(tmp_path / "pretrained.blocks.h5")
    save_blocks(build(num_classes=4), path)
    return path


def _report(out) -> tuple[pd.DataFrame, dict, str]:
    return (pd.read_csv(os.path.join(out, "results.csv")),
            json.loads(open(os.path.join(out, "results.json")).read()),
            open(os.path.join(out, "report.md")).read())


def _check_trials(trials, metric, policies, seeds, low=0.0, high=1.0):
    assert len(trials) == len(policies) * seeds
    assert sorted(set(trials["policy"])) == sorted(policies)
    assert (trials["status"] == "ok").all(), trials["error"].tolist()
    assert trials[metric].between(low, high).all() and trials[f"val_{metric[5:]}"].notna().all()
    assert sorted(trials["seed"].unique().tolist()) == list(range(seeds))


@pytest.mark.slow
def test_api_on_numpy_arrays_and_a_block_file(ray_local, arrays, source4, tmp_path):
    out = tmp_path / "sweep"
    lines = []
    result = which_blocks(build, source=source4, train=arrays[0], validation=arrays[1],
                          test=arrays[2], strategy="prefix", seeds=2, epochs=1,
                          out=str(out), print_fn=lines.append)
    assert result.blocks == ["block_1", "block_2"]
    assert list(result.fixed) == ["head"]
    assert "(8, 4)" in result.fixed["head"] and "(8, 3)" in result.fixed["head"]
    assert result.metric == "test_accuracy"
    prefix = ["scratch", "block_1=frozen", "block_1=tuned", "block_1=frozen,block_2=frozen",
              "block_1=tuned,block_2=tuned"]
    trials, document, report = _report(out)
    _check_trials(trials, "test_accuracy", prefix, seeds=2)
    assert len(result.trials) == 10 and list(result.summary["policy"])[0] in prefix
    assert "head=reinit (does not fit the source: head / head / kernel: shape differs" in report
    assert document["info"]["swept blocks"] == "block_1, block_2"
    assert document["mode"] == "max" and result.best.startswith("Best on validation:")
    # The source was snapshotted once, grouped by the model's blocks, into the sweep folder.
    snapshot = read_blocks(str(out / "source.blocks.h5"))
    assert list(snapshot.blocks) == ["block_1", "block_2", "head"]
    assert any("Fixed to reinit in every configuration: head" in line for line in lines)
    assert "not a prefix of the network" not in report  # (head comes after the swept blocks)


@pytest.mark.slow
def test_api_on_tf_data_and_a_live_source_model(ray_local, arrays, tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(2)
    source = build(num_classes=3)  # same head shape: the head is swept like any block
    train = tf.data.Dataset.from_tensor_slices(arrays[0]).batch(7)
    validation = tf.data.Dataset.from_tensor_slices(arrays[1])  # unbatched elements
    out = tmp_path / "sweep"
    result = which_blocks(build, source=source, train=train, validation=validation,
                          test=None, only=["block_1", "head"], strategy="surgical", seeds=2,
                          epochs=1, out=str(out), print_fn=lambda line: None)
    assert result.blocks == ["block_1", "head"]
    assert result.fixed == {"block_2": "not among the swept blocks"}
    trials, document, report = _report(out)
    # surgical on 2 blocks: scratch, tune block_1, tune head, all tuned.
    _check_trials(trials, "test_accuracy", ["scratch", "block_1=tuned,head=frozen",
                                            "block_1=frozen,head=tuned",
                                            "block_1=tuned,head=tuned"], seeds=2)
    assert "keras.Model 'user_cnn'" in document["info"]["source model"]
    # No test set given: a seeded stratified fifth of the 60 training images, 4 per class.
    assert "test: 20% of train, split with seed 0" in document["info"]["data"]
    assert "48 train / 15 val / 12 test" in document["info"]["data"]
    snapshot = read_blocks(str(out / "source.blocks.h5"))
    assert list(snapshot.blocks) == ["block_1", "block_2", "head"]


def test_user_data_splits_and_refusals(arrays, tmp_path):
    data = from_arrays(arrays[0], arrays[1], None, seed=0)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (48, 15, 12)
    assert np.bincount(data.y_test).tolist() == [4, 4, 4] and data.target_classes == 3
    with pytest.raises(ValueError, match="validation is required"):
        from_arrays(arrays[0], None)
    with pytest.raises(ValueError, match="x has 60 samples but y has 59"):
        from_arrays((arrays[0][0], arrays[0][1][:-1]), arrays[1])
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=arrays[0][0], y_train=arrays[0][1], x_test=arrays[2][0],
             y_test=arrays[2][1])
    loaded = load_data(f"npz:{npz}", seed=0)
    assert (len(loaded.x_train), len(loaded.x_val), len(loaded.x_test)) == (48, 12, 15)
    np.savez(tmp_path / "bad.npz", x_train=arrays[0][0], y_train=arrays[0][1])
    with pytest.raises(ValueError, match="expected arrays x_train, y_train, x_test, y_test"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


def test_the_data_summary_says_what_targets_that_are_not_classes_hold(arrays, tmp_path):
    """Found by a user: a regression target (float labels, one per sample) was summarised as
    "labels ()" (the shape of one label) on the console and in the report. The summary says
    how many values each sample's target holds and their range, or that they are 0 or 1."""
    x = arrays[0][0]
    y = np.linspace(-1.5, 12.25, len(x)).astype("float32")
    npz = tmp_path / "regression.npz"
    np.savez(npz, x_train=x[:45], y_train=y[:45], x_test=x[45:], y_test=y[45:])
    loaded = load_data(f"npz:{npz}", seed=0)
    assert loaded.summary().splitlines()[-1] == (
        "  target: 36 train / 9 val / 15 test, inputs (8, 8, 1), targets: one value per "
        "sample, -1.5 to 12.25")
    given = from_arrays((x[:45], y[:45]), (x[45:], y[45:]), seed=0)
    assert given.summary().endswith("inputs (8, 8, 1), targets: one value per sample, -1.5 "
                                    "to 12.25")
    several = np.stack([y, y * 2, -y], axis=1)
    assert from_arrays((x[:45], several[:45]), (x[45:], several[45:])).label_kind() == \
        "targets: 3 values per sample, -12.25 to 24.5"
    multi_label = (several > 0).astype("float32")
    assert from_arrays((x[:45], multi_label[:45]), (x[45:], multi_label[45:])).label_kind() \
        == "targets: 3 values per sample, each 0 or 1"
    binary = (y > 3).astype("float32")
    assert from_arrays((x[:45], binary[:45]), (x[45:], binary[45:])).label_kind() == \
        "targets: one value per sample, 0 or 1"
    assert from_arrays(arrays[0], arrays[1]).label_kind() == "3 classes"


def test_a_recipe_trial_loads_freezes_and_reports(arrays, source4, monkeypatch):
    """One trial called directly: the frozen block keeps the source's values exactly, the
    reinit head does not get them, and the last report carries the test metrics."""
    reports, models = [], []
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reports.append(dict(metrics)))
    builder = resolve_builder(build, (8, 8, 1), 3)

    def capture():
        models.append(builder())
        return models[-1]

    data = from_arrays(*arrays)
    train_trial({"policy": "block_1=frozen,block_2=tuned", "seed": 0, "epochs": 2},
                data=data, source=source4, recipe=Recipe(capture))
    model = models[-1]
    source = build(num_classes=4)
    from keras_blockreuse import load_blocks

    load_blocks(source, source4)
    for mine, theirs in zip(model.get_layer("block_1_0").weights,
                            source.get_layer("block_1_0").weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    tuned = model.get_layer("block_2_0").weights[0].numpy()
    assert not np.array_equal(tuned, source.get_layer("block_2_0").weights[0].numpy())
    assert [r["epoch"] for r in reports] == [1, 2]
    assert {"val_accuracy", "accuracy", "loss"} <= set(reports[0])
    assert "test_accuracy" not in reports[0] and 0 <= reports[-1]["test_accuracy"] <= 1


@pytest.mark.slow
def test_cli_builder_function_npz_data_and_block_file_source(ray_local, arrays, source4,
                                                             tmp_path, capsys):
    npz = tmp_path / "target.npz"
    np.savez(npz, x_train=arrays[0][0], y_train=arrays[0][1], x_val=arrays[1][0],
             y_val=arrays[1][1], x_test=arrays[2][0], y_test=arrays[2][1])
    out = tmp_path / "sweep"
    code = main(["--model", BUILDER, "--source", source4, "--data", f"npz:{npz}",
                 "--blocks", "block_1", "--strategy", "prefix", "--seeds", "2", "--epochs", "1",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    trials, document, report = _report(out)
    _check_trials(trials, "test_accuracy", ["scratch", "block_1=frozen", "block_1=tuned"], 2)
    fixed = document["info"]["fixed blocks"]
    assert "block_2=reinit (not among the swept blocks)" in fixed
    assert "head=reinit (does not fit the source" in fixed
    assert document["settings"]["data"] == f"npz:{npz}"
    assert document["settings"]["model"] == BUILDER


def _png_folder(root, classes=3, per_class=8, size=32):
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(root / f"class_{c}", exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
            image[:, c * size // classes:(c + 1) * size // classes] += 150
            keras.utils.save_img(str(root / f"class_{c}" / f"{i}.png"), image)


@pytest.mark.slow
def test_cli_mobilenet_v2_weights_file_and_image_folder(ray_local, tmp_path, capsys):
    # Stands in for ImageNet weights: a randomly initialised MobileNetV2 with a 10-class head.
    keras.utils.set_random_seed(3)
    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                            classes=10)
    weights = str(tmp_path / "mobilenet_v2.weights.h5")
    source.save_weights(weights)
    folder = tmp_path / "images"
    _png_folder(folder)
    out = tmp_path / "sweep"
    code = main(["--model", "mobilenet_v2", "--model-args", "alpha=0.35", "--source", weights,
                 "--data", f"folder:{folder}", "--blocks", "stem", "--strategy", "surgical",
                 "--seeds", "1", "--epochs", "1", "--batch-size", "8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    trials, document, report = _report(out)
    # surgical on one block: scratch and "tune stem" (which is also "all tuned").
    _check_trials(trials, "test_accuracy", ["scratch", "stem=tuned"], 1)
    fixed = document["info"]["fixed blocks"]
    assert "predictions=reinit (does not fit the source: predictions / predictions / kernel: " \
           "shape differs" in fixed and "block_16=reinit (not among the swept blocks)" in fixed
    assert document["info"]["swept blocks"] == "stem"
    snapshot = read_blocks(str(out / "source.blocks.h5"))
    assert list(snapshot.blocks)[:2] == ["stem", "block_1"] and len(snapshot.blocks) == 19
    # 24 images, no train/val/test folders: a 60/20/20 stratified split.
    assert "60/20/20 stratified split with seed 0" in document["info"]["data"]
    assert "14 train / 5 val / 5 test, inputs (32, 32, 3), 3 classes" in document["info"]["data"]


@pytest.mark.slow
def test_regression_target_with_mse_loss_and_mae_metric(ray_local, arrays, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = arrays[0][0]
    target = (x.mean(axis=(1, 2, 3)) * 4 + rng.normal(0, 0.05, len(x))).astype("float32")
    npz = tmp_path / "regression.npz"
    np.savez(npz, x_train=x[:45], y_train=target[:45], x_test=x[45:], y_test=target[45:])
    keras.utils.set_random_seed(4)
    source = str(tmp_path / "source.blocks.h5")
    save_blocks(build(num_classes=5), source)  # a classifier's blocks: the head does not fit
    out = tmp_path / "sweep"
    code = main(["--model", BUILDER, "--source", source, "--data", f"npz:{npz}",
                 "--loss", "mse", "--metric", "mae", "--strategy", "prefix", "--seeds", "2",
                 "--epochs", "1", "--blocks", "block_1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    lo, hi = float(target.min()), float(target.max())
    said = f"target: 36 train / 9 val / 15 test, inputs (8, 8, 1), targets: one value per " \
           f"sample, {lo:.4g} to {hi:.4g}"  # not "labels ()" (a user's report)
    assert f"  {said}" in capsys.readouterr().out.splitlines()
    trials, document, report = _report(out)
    assert said in document["info"]["data"]
    _check_trials(trials, "test_mae", ["scratch", "block_1=frozen", "block_1=tuned"], 2,
                  low=0.0, high=100.0)
    assert document["metric"] == "test_mae" and document["mode"] == "min"
    assert "head=reinit (does not fit the source" in document["info"]["fixed blocks"]
    summary = pd.read_csv(out / "summary.csv")
    assert summary["val_mean"].is_monotonic_increasing  # lower is better: best first
    assert document["best"].startswith(f"Best on validation: {summary['label'][0]} (val mae ")
    assert re.search(r"val mae \d", document["best"]) and summary["verdict"][0] == "best"


def test_split_task_never_transfers_the_head_unless_named():
    from keras_blockreuse.sweep.data import make_task
    from keras_blockreuse.sweep.options import SweepSettings
    from keras_blockreuse.sweep.run import _swept_blocks

    data = make_task("digits", task="split", shift=None, shots=5)
    assert data.source_classes == data.target_classes == 5  # same count, other classes
    blocks, fixed = _swept_blocks(SweepSettings(task="split", shift=None), data)
    assert blocks == ["block_1", "block_2", "dense_1"]
    assert list(fixed) == ["dense_2"] and "other classes (--task split)" in fixed["dense_2"]
    named = SweepSettings(task="split", blocks=["block_1", "dense_2"])
    assert _swept_blocks(named, data)[0] == ["block_1", "dense_2"]  # asked for explicitly
    shift = make_task("digits", task="shift", shots=5)
    assert _swept_blocks(SweepSettings(), shift) == (
        ["block_1", "block_2", "dense_1", "dense_2"], {})


@pytest.mark.parametrize("argv, fragment", [
    (["--model", "nope:build"], "needs --source"),
    (["--model", "missing/file.py:build", "--source", "x"], "no such file 'missing/file.py'"),
    (["--data", "npz:/nonexistent.npz", "--source", __file__], "no such file"),
    (["--data", "csv:x"], "--data must be npz:PATH or folder:PATH"),
    (["--data", f"folder:{ROOT}"], "--data needs --source"),
    (["--data", f"folder:{ROOT}", "--source", __file__, "--task", "split"],
     "--task apply to the built-in tasks"),
    (["--metric", "mae"], "--loss and --metric apply"),
    (["--source", __file__, "--metric", "f1"], "its direction is not known"),
    (["--image-size", "32x32"], "--image-size resizes the images of --data or --dataset "
                                "folder:PATH; --dataset digits is used at its own size."),
    (["--model-args", "alpha=0.35"], "--model-args applies to keras.applications"),
])
def test_bad_user_options_give_one_clear_line(argv, fragment, tmp_path, capsys):
    try:
        code = main([*argv, "--out", str(tmp_path / "out")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_api_refuses_a_model_that_does_not_fit_the_data(arrays, source4, tmp_path):
    with pytest.raises(SweepError, match=r"expects inputs of shape \(16, 16, 1\) but the data "
                                         r"has \(8, 8, 1\)"):
        which_blocks(lambda: build(input_shape=(16, 16, 1)), source=source4, train=arrays[0],
                     validation=arrays[1], out=str(tmp_path / "out"), print_fn=lambda s: None)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SweepError, match="shares no transferable block"):
        other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(3, name="out")])
        which_blocks(build, source=other, train=arrays[0], validation=arrays[1],
                     out=str(tmp_path / "out"), print_fn=lambda s: None)


@pytest.mark.slow
def test_example_sweep_keras_application_runs_at_its_smallest(ray_local, tmp_path, capsys):
    import importlib.util

    path = os.path.join(ROOT, "examples", "sweep_keras_application.py")
    spec = importlib.util.spec_from_file_location("sweep_keras_application", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--per-class", "8", "--epochs", "1", "--blocks", "stem",
                           "--strategy", "surgical", "--seeds", "1", "--out", str(tmp_path)])
    assert result.blocks == ["stem"] and len(result.trials) == 2
    assert (result.trials["status"] == "ok").all()
    assert result.trials["test_accuracy"].between(0, 1).all()
    assert "1000" in result.fixed["predictions"] and "(1280, 3)" in result.fixed["predictions"]
    assert "predictions (does not fit the source" in capsys.readouterr().out


@pytest.mark.slow
def test_the_sweep_package_docstring_example_runs(ray_local, arrays, tmp_path, monkeypatch):
    import keras_blockreuse.sweep as sweep

    code = re.search(r"```python\n(.*?)```", sweep.__doc__, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    save_blocks(build(num_classes=4), "pretrained.blocks.h5")
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = arrays
    namespace = {"build_model": build, "x_train": x_train, "y_train": y_train, "x_val": x_val,
                 "y_val": y_val, "x_test": x_test, "y_test": y_test}
    exec(compile(code, "keras_blockreuse.sweep docstring", "exec"), namespace)
    result, demo = namespace["result"], namespace["demo"]
    assert result.blocks == ["block_1", "block_2"] and list(result.fixed) == ["head"]
    assert len(result.trials) == 10 and (result.trials["status"] == "ok").all()
    assert len(demo.trials) == 6 and demo.blocks == ["block_1"]
    assert (tmp_path / "runs" / "my_sweep" / "report.md").is_file()
    assert (tmp_path / "runs" / "demo" / "report.md").is_file()


def test_help_lists_the_user_options_and_answers_without_tensorflow():
    import subprocess
    import sys

    from keras_blockreuse.sweep.options import build_parser

    text = build_parser().format_help()
    for option in ("--source", "--data", "--image-size", "--loss", "--metric", "--model-args"):
        assert option in text, option
    assert "mobilenet_v2" in text and "module.path:function" in text
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['which_blocks.py', '--model', 'mobilenet_v2']\n"
        "try:\n"
        f"    runpy.run_path({os.path.join(ROOT, 'sweeps', 'which_blocks.py')!r}, "
        "run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print('RESULT', code, sorted(m for m in ('tensorflow', 'keras', 'ray', 'numpy')\n"
        "                             if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert "RESULT 2 []" in run.stdout, run.stdout + run.stderr
    assert "--model mobilenet_v2 needs --source" in run.stderr


def test_a_source_paired_only_by_shifted_automatic_names_is_refused(arrays, tmp_path):
    """Found by a fresh-user test: a pretrained Sequential of two automatically named convs
    and a target with a third conv added before the second. load_blocks refuses it (the
    names cannot say which conv is new), but the sweep asked for each block by name, which
    load_blocks takes as the caller's word, and transferred the second conv's values into
    the new one in every trial. The sweep now refuses before any trial."""
    def convs(n, num_classes=3):
        return keras.Sequential(
            [keras.Input((8, 8, 1))]
            + [keras.layers.Conv2D(4, 3, padding="same") for _ in range(n)]
            + [keras.layers.GlobalAveragePooling2D(),
               keras.layers.Dense(num_classes, activation="softmax")])

    keras.backend.clear_session()
    source = convs(2)
    with pytest.raises(SweepError) as e:
        which_blocks(lambda: convs(3), source=source, train=arrays[0], validation=arrays[1],
                     out=str(tmp_path / "out"), print_fn=lambda s: None)
    message = str(e.value)
    assert message.startswith(
        "The source's blocks cannot be paired with the model's by their names, so no trial "
        "could say which pretrained values it transfers: Blocks named by automatic names "
        "cannot be paired by those names here: Conv2D blocks: the model has ['conv2d', "
        "'conv2d_1', 'conv2d_2'], the source ['conv2d', 'conv2d_1']"), message
    assert message.endswith("pass that model as the source."), message
    assert not (tmp_path / "out").exists()


def test_class_labels_that_would_add_untrained_classes_are_refused(arrays):
    """Found by a fresh-user test: the class count is `max label + 1` over every split, so a
    mistyped test label (4 among 0..2) or labels 1..3 silently gave a model of 5 or 4
    outputs, some never trained, and its source head was reported as not fitting. For a
    sparse categorical loss they are refused, saying which labels and why; labels 0..2
    pass, and so do whole-number float labels, which Keras accepts (they were refused).
    Integer targets of a regression (another loss) are not class labels: not checked."""
    (x, y), (xv, yv), (xt, yt) = arrays
    typo = yt.copy()
    typo[0] = 4
    with pytest.raises(ValueError) as e:
        from_arrays((x, y), (xv, yv), (xt, typo)).as_classes()
    assert str(e.value) == (
        "test: holds class labels [4] that train does not (train has 3 classes, 0..2): a "
        "mistyped label, or a class with no training sample. The model would get 5 outputs, "
        "some never trained. Fix the labels, or give train samples of every class.")
    with pytest.raises(ValueError) as e:
        from_arrays((x, y + 1), (xv, yv + 1), (xt, yt + 1)).as_classes()
    assert str(e.value) == (
        "train: class labels run to 3, so the model would get 4 outputs, but train holds no "
        "sample of classes [0]: they could never be trained. Number the 3 classes 0..2 "
        "(labels starting at 1, or a subset of a larger label set, shifted down).")
    with pytest.raises(ValueError, match=r"train: class labels must be 0 or more; received "
                                          r"\[-1\]"):
        from_arrays((x, y - 1), (xv, yv), (xt, yt)).as_classes()
    assert from_arrays((x, y), (xv, yv), (xt, yt)).as_classes().target_classes == 3
    floats = from_arrays((x, y.astype("float32")), (xv, yv.astype("float32")),
                         (xt, yt.astype("float32"))).as_classes()
    assert floats.y_train.dtype == np.int64 and floats.target_classes == 3
    assert np.array_equal(floats.y_train, y)
    counts = from_arrays((x, y + 1), (xv, yv + 1), (xt, yt + 1))  # a regression's targets
    assert counts.y_train.min() == 1


def test_a_dict_of_inputs_is_refused_clearly(arrays):
    """Found by a fresh-user test: x as a dict of named inputs gave a raw TypeError (arrays)
    or AttributeError (a tf.data.Dataset); the sweep feeds one array of inputs."""
    import tensorflow as tf

    (x, y), validation, _ = arrays
    expected = ("train: x is a dict of inputs ['inp']; the sweep feeds one array of inputs to "
                "a model with one input. Pass x as one array (or a dataset of (x, y) with x "
                "one tensor).")
    for train in (({"inp": x}, y), tf.data.Dataset.from_tensor_slices(({"inp": x}, y)).batch(8)):
        with pytest.raises(ValueError) as e:
            from_arrays(train, validation)
        assert str(e.value) == expected


def test_a_head_narrower_than_the_labels_is_refused_before_any_trial(arrays, tmp_path):
    """Found by a fresh-user test: a build_model without num_classes (a 3-output head) and
    labels 0..3 passed the check on 2 validation samples, then every trial died with a raw
    TensorFlow trace. The check now includes a sample of the largest class, and the message
    keeps TensorFlow's reason without its call stack."""
    (x, y), (xv, yv), _ = arrays
    label = np.where(np.arange(len(y)) % 2 == 0, 3, y)

    def three():
        i = keras.Input((8, 8, 1))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="block_1_0")(i))
        return keras.Model(i, keras.layers.Dense(3, activation="softmax", name="head")(h))

    with pytest.raises(SweepError) as e:
        which_blocks(three, source=three(), train=(x, label), validation=(xv, np.where(
            np.arange(len(yv)) % 2 == 0, 3, yv)), out=str(tmp_path / "out"),
            print_fn=lambda s: None)
    message = str(e.value)
    assert re.search(r"and train sample \d+, of the largest class label \(3\)", message), message
    assert message.endswith("InvalidArgumentError: Received a label value of 3 which is "
                            "outside the valid range of [0, 3). Label values: 3 1 3"), message
    assert not (tmp_path / "out").exists()


def _prepared(build_model, source, arrays):
    from keras_blockreuse.sweep.inputs import UserInputs

    inputs = UserInputs(from_arrays(arrays[0], arrays[1]), Recipe(build_model), source)
    return inputs.prepare()


def test_a_backbone_the_source_holds_under_another_name_is_said_so(arrays):
    """Found by a fresh-user test: an automatically named backbone (`sequential`) whose
    source was built second in its session (`sequential_1`) was fixed to reinit as "not in
    the source", never naming the source's unused block. The reason now names it and the
    rename that pairs them."""
    def build(input_shape=(8, 8, 1), num_classes=3):
        i = keras.Input(input_shape)
        body = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"),
                                 keras.layers.GlobalAveragePooling2D()])
        return keras.Model(i, keras.layers.Dense(num_classes, activation="softmax",
                                                 name="head")(body(i)))

    keras.backend.clear_session()
    build()
    source = build()  # a notebook cell ran before: its backbone is `sequential_1`
    inputs = _prepared(build, source, arrays)
    try:
        assert inputs.blocks == ["head"]
        assert inputs.fixed == {"sequential": (
            "not in the source, whose blocks ['sequential_1'] pair with no block of the model "
            "(renamed, or an automatic name shifted?); load_blocks pairs them with "
            "rename={'sequential_1': 'sequential'}: load the pretrained weights into a model "
            "of the target's architecture built after keras.backend.clear_session() (so that "
            "its automatic names are those the sweep's trials give) with it, and pass that "
            "model as the source")}
    finally:
        shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)


class _Pair(keras.layers.Layer):
    def __init__(self, renamed=False, **kwargs):
        super().__init__(**kwargs)
        if renamed:
            self.a, self.b = keras.layers.Dense(4), keras.layers.Dense(4)
        else:
            self.first, self.second = keras.layers.Dense(4), keras.layers.Dense(4)

    def call(self, x):
        return (self.b(self.a(x)) if hasattr(self, "a") else self.second(self.first(x)))


def _paired(renamed, num_classes=3):
    i = keras.Input((8, 8, 1))
    x = keras.layers.GlobalAveragePooling2D()(i)
    x = keras.layers.Dense(4, name="block_0_0")(x)
    return keras.Model(i, keras.layers.Dense(num_classes, activation="softmax", name="head")(
        _Pair(renamed, name="block_1_0")(x)))


@pytest.mark.slow
def test_the_caveats_of_loading_the_source_are_in_the_sweeps_output(ray_local, arrays,
                                                                   tmp_path):
    """Found by a fresh-user test: load_blocks says plainly what it could not check (a
    custom layer's sub-layers paired by automatic names alone, its attributes renamed since
    the file was saved), but the sweep, which loads the same pairing in every trial, said
    nothing. The caveat is printed before the trials and written to report.md."""
    keras.backend.clear_session()
    path = str(tmp_path / "old.weights.h5")
    _paired(False).save_weights(path)
    keras.backend.clear_session()
    caveat = ("block 'block_1': layers ['block_1_0/dense', 'block_1_0/dense_1'] (Dense) are "
              "paired by their automatic names alone; the source's Keras paths and order do "
              "not confirm them (none recorded, or attributes renamed), so if their creation "
              "order changed since it was saved, their values are swapped. Name these layers "
              "in new code; save_blocks records what checks them.")
    lines = []
    which_blocks(lambda num_classes=3: _paired(True, num_classes), source=path,
                 train=arrays[0], validation=arrays[1], only=["block_1"], strategy="prefix",
                 seeds=1, epochs=1, out=str(tmp_path / "out"), print_fn=lines.append)
    assert f"Caveat (loading the source): {caveat}" in lines, lines
    report = open(tmp_path / "out" / "report.md").read()
    assert f"| caveats of the load | {caveat} |" in report, report


@pytest.mark.slow
def test_resume_with_other_settings_or_another_source_is_refused(ray_local, arrays, tmp_path,
                                                                capsys):
    """Found by a fresh-user test: which_blocks(resume=True) with seeds=2, epochs=3 and
    another source returned the old sweep's 1-seed, 1-epoch results, trained with the old
    source, without a word. The settings must be those the sweep was started with, and the
    source must hold the same values (its snapshot's checksums); the same call resumes."""
    def one(num_classes=3):
        i = keras.Input((8, 8, 1))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="block_1_0")(i))
        return keras.Model(i, keras.layers.Dense(num_classes, activation="softmax",
                                                 name="head")(h))

    first, other = one(), one()
    for v in other.weights:
        v.assign(np.full(v.shape, -5.0, "float32"))
    out = str(tmp_path / "out")
    kw = dict(train=arrays[0], validation=arrays[1], strategy="prefix", only=["block_1"],
              seeds=1, epochs=1, out=out, print_fn=lambda s: None)
    started = which_blocks(one, first, **kw)
    with pytest.raises(SweepError) as e:
        which_blocks(one, first, **{**kw, "seeds": 2, "epochs": 3}, resume=True)
    assert str(e.value) == (
        f"resume=True continues the sweep in {out} as it was started, but these settings "
        "differ: seeds=2 (started with 1); epochs=3 (started with 1). Pass the settings it "
        "was started with, or start a new sweep in another folder (out=).")
    assert main(["--resume", "--out", out, "--seeds", "2"]) == 2  # the command line too
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"which_blocks.py: error: --resume continues the sweep in {out} as it was started, but "
        "these settings differ: --seeds 2 (started with 1). Pass the settings it was started "
        "with, or start a new sweep in another folder (--out).")
    # Found by the fresh-user check of the reused workers: --resume with other learning rates
    # or another training policy exited 0 with the old rate's and policy's results.
    assert main(["--resume", "--out", out, "--lrs", "1e-2,1e-3", "--policy", "gradual"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"which_blocks.py: error: --resume continues the sweep in {out} as it was started, but "
        "these settings differ: --lrs [0.01, 0.001] (started with None); --policy 'gradual' "
        "(started with 'constant'). Pass the settings it was started with, or start a new "
        "sweep in another folder (--out).")
    with pytest.raises(SweepError, match=r"holds other values in blocks \['block_1', 'head'\]"):
        which_blocks(one, other, **kw, resume=True)
    other_data = (arrays[0][0][::-1].copy(), arrays[0][1][::-1].copy())
    with pytest.raises(SweepError) as e:  # found by the second fresh-user test
        which_blocks(one, first, **{**kw, "train": other_data}, resume=True)
    assert str(e.value) == (
        f"resume=True continues the sweep in {out} on the data it was started with, but the "
        "data given now holds other samples or labels (its checksum differs). Start a new "
        "sweep in another folder (out=) for this data.")
    resumed = which_blocks(one, first, **kw, resume=True)
    assert sorted(resumed.trials["label"]) == sorted(started.trials["label"])


@pytest.mark.slow
def test_resume_with_another_optimizer_or_model_is_refused(ray_local, arrays, tmp_path):
    """Found by a fresh-user test (helper-65): which_blocks(resume=True) with
    optimizer="sgd" and a builder that now adds a Dense(64) layer, after a sweep started with
    "adam" and without it was interrupted, ran the remaining trials with SGD on the wider
    model and ranked them with the finished ones, without a word (the trained-parameter
    column gave the new model's counts for every trial). The model's structure, the
    optimizer, loss, metrics and mode are compared on resume, as the settings are."""
    def one(num_classes=3, wide=False):
        i = keras.Input((8, 8, 1))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="block_1_0")(i))
        if wide:
            h = keras.layers.Dense(8, name="extra")(h)
        return keras.Model(i, keras.layers.Dense(num_classes, activation="softmax",
                                                 name="head")(h))

    source = one()
    out = str(tmp_path / "out")
    kw = dict(train=arrays[0], validation=arrays[1], strategy="prefix", only=["block_1"],
              seeds=1, epochs=1, out=out, print_fn=lambda s: None)
    started = which_blocks(one, source, **kw)
    with open(os.path.join(out, "settings.json")) as f:
        model = json.load(f)["trained_as"]["model"]
    assert re.fullmatch(r"2 blocks \['block_1', 'head'\], 55 parameters, layers digest "
                        r"[0-9a-f]{12}", model), model
    with pytest.raises(SweepError) as e:
        which_blocks(one, source, **kw, optimizer="sgd", resume=True)
    assert str(e.value) == (
        f"resume=True continues the sweep in {out} with the model and training it was "
        "started with, but these differ: optimizer: sgd (started with adam). Its finished "
        "trials would be compared with trials trained otherwise. Pass what it was started "
        "with, or start a new sweep in another folder (out=).")

    def wide(num_classes=3):
        return one(num_classes, wide=True)

    wide.__qualname__ = one.__qualname__  # the same function, edited
    now = _prepared(wide, source, arrays)
    shutil.rmtree(os.path.dirname(now.snapshot), ignore_errors=True)
    with pytest.raises(SweepError) as e:
        which_blocks(wide, source, **kw, resume=True)
    assert str(e.value) == (
        f"resume=True continues the sweep in {out} with the model and training it was "
        f"started with, but these differ: model: {now.trained_as['model']} (started with "
        f"{model}). Its finished trials would be compared with trials trained otherwise. Pass "
        "what it was started with, or start a new sweep in another folder (out=).")
    assert now.trained_as["model"].startswith("3 blocks ['block_1', 'extra', 'head'], 107 ")
    resumed = which_blocks(one, source, **kw, resume=True)  # the same call resumes
    assert sorted(resumed.trials["label"]) == sorted(started.trials["label"])


def test_what_a_resume_compares_is_the_same_for_the_same_model_built_again(arrays, tmp_path):
    """A layer whose configuration holds a function (a custom layer's `{"fn": self.fn}`)
    describes it by name, not by its repr, whose address differs between processes and
    builds: the same model, built again for a resume, must compare equal."""
    class Scaled(keras.layers.Layer):
        def __init__(self, fn=None, **kwargs):
            super().__init__(**kwargs)
            self.fn = fn

        def call(self, x):
            return self.fn(x)

        def get_config(self):
            return {**super().get_config(), "fn": self.fn}

    def build_scaled(num_classes=3):
        def double(x):  # a new function object each build
            return 2 * x

        i = keras.Input((8, 8, 1))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="block_1_0")(i))
        return keras.Model(i, keras.layers.Dense(num_classes, name="head")(
            Scaled(double, name="scaled")(h)))

    keras.utils.set_random_seed(4)
    path = str(tmp_path / "pretrained.blocks.h5")
    save_blocks(build_scaled(), path)
    first, again = (_prepared(build_scaled, path, arrays) for _ in range(2))
    for inputs in (first, again):
        shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)
    assert first.trained_as == again.trained_as


def test_the_python_api_speaks_its_own_names_and_takes_globs(arrays, source4, tmp_path):
    """Found by a fresh-user test: which_blocks' errors named command-line flags
    (`--seeds must be ...`, `pass --resume`, `write NAME:max`), a mistyped source path was
    not said to be missing, and only=["block_*"] was an unknown block, though load_blocks'
    only= takes globs."""
    kw = dict(train=arrays[0], validation=arrays[1], out=str(tmp_path / "o"),
              print_fn=lambda s: None)
    with pytest.raises(SweepError, match=r"^seeds= must be a positive integer, received 0\.$"):
        which_blocks(build, source4, seeds=0, **kw)
    missing = str(tmp_path / "pretrainde.weights.h5")
    with pytest.raises(SweepError) as e:
        which_blocks(build, missing, **kw)
    assert str(e.value) == (f"source: no such file or folder: {missing!r} (expected the "
                            "pretrained weights: a file load_blocks reads, or a keras.Model).")
    inputs = _prepared(build, source4, arrays)
    try:
        every = inputs.blocks + list(inputs.fixed)
        assert inputs.swept_blocks(["block_*"])[0] == [b for b in inputs.blocks
                                                       if b.startswith("block_")]
        with pytest.raises(SweepError, match=r"^Unknown block 'nope\*'\. The model's blocks "
                                             rf"are: {', '.join(every)}\.$"):
            inputs.swept_blocks(["nope*"])
    finally:
        shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)


@pytest.mark.slow
def test_greedy_rounds_carry_their_trained_parameter_counts(ray_local, arrays, tmp_path):
    """Found by a fresh-user test: a greedy sweep's configurations of round 2 and later had
    no trained-parameter count (NaN, "?" in report.md), so the recommendation could not take
    the cheapest of the tied. Every trial's count is now the model's trainable parameters
    less its frozen blocks', whatever its round."""
    from keras_blockreuse import get_blocks

    keras.utils.set_random_seed(3)
    trained = build(num_classes=3)  # trained on the task itself: transfer beats scratch
    trained.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    trained.fit(*arrays[0], epochs=30, verbose=0)
    result = which_blocks(build, trained, train=arrays[0], validation=arrays[1],
                          strategy="greedy", seeds=1, epochs=3, learning_rate=0.01,
                          out=str(tmp_path / "g"),
                          print_fn=lambda s: None)
    trials = result.trials
    assert (trials["status"] == "ok").all() and trials["experiment"].nunique() >= 2, trials
    model = build(num_classes=3)
    count = lambda variables: sum(int(np.prod(v.shape)) for v in variables if v.trainable)  # noqa: E731
    per_block = {name: count(block.variables) for name, block in get_blocks(model).items()}
    total = count(model.trainable_variables)
    for _, row in trials.iterrows():
        frozen = [b for b, letter in zip(result.blocks, row["code"], strict=True) if letter == "F"]
        assert row["trained_params"] == total - sum(per_block[b] for b in frozen), row


def test_a_builder_that_returns_the_pretrained_model_is_refused(arrays, tmp_path):
    """Found by a fresh-user test (helper-65): --model file.py:build whose build() returned
    keras.saving.load_model("pretrained.keras") ran; 'scratch' then started from the
    pretrained values (0.44 validation accuracy after one epoch on 10-shot digits, bit for bit
    the same as 'prefix 1 tuned'), and the report said 'prefix 1 frozen: -0.002 test accuracy
    vs scratch'. A model that already holds the source's values in a block is refused; a
    freshly built one (its constant values, zeros and ones, equal to the source's) is not."""
    keras.utils.set_random_seed(3)
    pretrained = build()
    path = str(tmp_path / "pretrained.keras")
    pretrained.save(path)
    message = (
        "The model the builder returns already holds the source's values in blocks "
        "['block_1', 'block_2', 'head'] (a builder that loads the pretrained weights, or "
        "returns a loaded .keras model): 'reinit' blocks and scratch would start from them, "
        "and every policy would be compared with transfer, not with training from scratch. "
        "Return a freshly initialised model (keras.models.clone_model(model) builds one with "
        "new values); the sweep loads the source itself.")
    with pytest.raises(SweepError) as e:
        _prepared(lambda: keras.saving.load_model(path), path, arrays)
    assert str(e.value) == message

    def loads_weights(input_shape=(8, 8, 1), num_classes=3):
        model = build(input_shape, num_classes)
        model.load_weights(path)
        return model

    with pytest.raises(SweepError) as e:
        which_blocks(loads_weights, path, train=arrays[0], validation=arrays[1],
                     out=str(tmp_path / "out"), print_fn=lambda s: None)
    assert str(e.value) == message
    assert not os.path.exists(tmp_path / "out")
    fresh = _prepared(build, path, arrays)  # zero biases, as the source's never trained
    shutil.rmtree(os.path.dirname(fresh.snapshot), ignore_errors=True)
    assert fresh.blocks == ["block_1", "block_2", "head"]


def test_cosine_similarity_ranks_higher_as_better(arrays):
    """Found by a fresh-user test (helper-65): metrics=["cosine_similarity"] (or --metric
    cosine_similarity) ranked the policies lower-is-better, so the policy whose predictions
    pointed furthest from the labels was named best. Keras's metric of that name is
    CosineSimilarity: 1 for predictions in the labels' direction, -1 for the opposite one."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        3, use_bias=False, kernel_initializer="identity")])
    model.compile(loss="cosine_similarity", metrics=["cosine_similarity"])
    y = np.arange(1, 13, dtype="float32").reshape(4, 3)
    assert model.evaluate(y, y, verbose=0, return_dict=True)["cosine_similarity"] == \
        pytest.approx(1.0)
    assert model.evaluate(y, -y, verbose=0, return_dict=True)["cosine_similarity"] == \
        pytest.approx(-1.0)
    (x, _), (xv, _) = arrays[:2]
    targets = (x, np.ones((len(x), 3), "float32")), (xv, np.ones((len(xv), 3), "float32"))
    inputs = UserInputs(from_arrays(*targets), Recipe(
        resolve_builder(build, x.shape[1:], 3, activation=None), loss="cosine_similarity",
        metrics=("cosine_similarity",)), source=build(num_classes=3))
    inputs.prepare()
    shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)
    assert (inputs.metric, inputs.mode) == ("cosine_similarity", "max")


def test_labels_that_are_not_class_indices_say_what_they_are(arrays, tmp_path):
    """Found by a fresh-user test (helper-65): class names, one-hot rows and booleans were
    refused as "needs integer class labels; the labels have shape () and dtype <U5" (or
    shape (3,), dtype float64), which says what they are not. The refusal now says what they
    are and what to do."""
    (x, y), (xv, yv), (xt, yt) = arrays
    names = np.array(["cat", "dog", "eel"])
    kw = dict(out=str(tmp_path / "out"), print_fn=lambda s: None)
    cases = {
        "the labels have shape () and dtype <U3: class names ('cat', 'dog', 'eel'); number "
        "the classes 0..k-1 (for example np.unique(y, return_inverse=True)[1], with the same "
        "numbering for every part)": names,
        "the labels have shape (3,) and dtype float32: one-hot rows; use the "
        "categorical_crossentropy loss, or pass their class indices (y.argmax(axis=1))":
            np.eye(3, dtype="float32"),
        "the labels have shape () and dtype bool: booleans; pass them as integers "
        "(y.astype(int))": np.array([False, True, True]),
    }
    for what, table in cases.items():
        with pytest.raises(SweepError) as e:
            which_blocks(build, build(), train=(x, table[y]), validation=(xv, table[yv]),
                         test=(xt, table[yt]), **kw)
        assert str(e.value) == ("loss 'sparse_categorical_crossentropy' needs integer class "
                                f"labels; {what}.")
    assert not os.path.exists(tmp_path / "out")


def test_blocks_that_start_from_fixed_values_are_said(arrays, tmp_path):
    """Found by a fresh-user test (helper-65): a builder that loads weights other than the
    source's (ImageNet's, an earlier run's) or seeds its initializers gives 'reinit' blocks,
    and scratch, the same values for every seed, and nothing said so: scratch was not
    training from scratch, and the seeds' spread left that out. Blocks whose values are the
    same in a second build of the model are named in a caveat (printed, and in the report)."""
    def seeded(num_classes=3, seed=1):
        i = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(4, 3, name="block_1_0",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(i)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(i, keras.layers.Dense(num_classes, name="head")(h))

    source = seeded()
    for v in source.weights:
        v.assign(v.numpy() + 0.5)  # trained: other values than the builder's
    caveats = []
    for builder in (seeded, lambda num_classes=3: seeded(num_classes, seed=None)):
        inputs = UserInputs(from_arrays(*arrays[:2]), Recipe(builder), source)
        inputs.prepare()
        shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)
        caveats.append(inputs.model_caveats)
    assert caveats == [[
        "blocks ['block_1'] hold the same values in every build of the model (its builder "
        "loads weights, or seeds their initializers): where they are reinit, scratch "
        "included, they start from those values, not from a new random initialisation per "
        "seed, and the seeds vary only the data order and dropout there."], []]


def test_a_classifier_with_more_outputs_than_classes_is_said(arrays):
    """Found by a fresh-user test (helper-65): a builder that ignores num_classes= (10
    outputs for 3 classes) ran without a word, its head, of the source's shape, swept like
    any block. The extra outputs are named in a caveat."""
    inputs = UserInputs(from_arrays(*arrays[:2]), Recipe(lambda: build(num_classes=10)),
                        build(num_classes=10))
    inputs.prepare()
    shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)
    assert "head" in inputs.blocks and inputs.model_caveats == [
        "the model has 10 outputs, and the labels 3 classes (0..2): 7 outputs are never a "
        "label (does its builder take num_classes=?), and a head of the source's shape is "
        "transferred like any block, the source's classes standing for the target's."]


def test_a_block_the_builder_freezes_at_fixed_values_is_not_refused(arrays, tmp_path):
    """Found by a fresh-user test (helper-67): a model whose first block holds fixed vectors
    (Constant initializer, trainable=False: a frozen pretrained embedding), kept frozen when
    the source was trained, was refused as 'already holds the source's values in blocks
    ['block_1']', even with only=['block_2']; the advice, clone_model, builds the same
    constant. A block the builder freezes is its own design: the sweep runs, and the caveat on
    blocks of fixed values names it."""
    fixed = np.random.default_rng(5).normal(size=(3, 3, 1, 8)).astype("float32")

    def frozen_first(input_shape=(8, 8, 1), num_classes=3):
        inputs = keras.Input(shape=tuple(input_shape))
        x = keras.layers.Conv2D(8, 3, padding="same", name="block_1_0", trainable=False,
                                kernel_initializer=keras.initializers.Constant(fixed))(inputs)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block_2_0")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(x))

    keras.utils.set_random_seed(3)
    source = frozen_first()
    for v in source.get_layer("block_2_0").weights + source.get_layer("head").weights:
        v.assign(v.numpy() + 0.5)  # trained: the frozen block_1 keeps its built values
    path = str(tmp_path / "pretrained.blocks.h5")
    save_blocks(source, path)
    inputs = _prepared(frozen_first, path, arrays)
    shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)
    assert inputs.blocks == ["block_1", "block_2", "head"]
    assert inputs.model_caveats == [
        "blocks ['block_1'] hold the same values in every build of the model (its builder "
        "loads weights, or seeds their initializers): where they are reinit, scratch included, "
        "they start from those values, not from a new random initialisation per seed, and the "
        "seeds vary only the data order and dropout there.", FROZEN_AS_BUILT]


FROZEN_AS_BUILT = (
    "blocks ['block_1'] are frozen as the builder returns them (trainable=False): no policy "
    "trains them, so 'tuned' there is the same training as 'frozen', and 'reinit' keeps them at "
    "their built values, untrained. Leave them trainable in the builder (each policy freezes "
    "what it freezes), or leave them out of the sweep (only=, --blocks).")


def test_a_block_the_builder_freezes_is_said_to_train_under_no_policy(arrays, source4):
    """Found by a fresh-user test (helper-67): a builder that returns a block frozen
    (trainable=False) had it swept like any block; the trials freeze what a policy freezes and
    train the rest as built, so 'prefix 1 tuned' trained exactly what 'prefix 1 frozen' did
    (the same trained-parameter count), under another name, without a word. A caveat names
    such blocks."""
    def frozen_first(input_shape=(8, 8, 1), num_classes=3):
        model = build(input_shape, num_classes)
        model.get_layer("block_1_0").trainable = False
        return model

    inputs = _prepared(frozen_first, source4, arrays)
    shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)
    assert inputs.model_caveats == [FROZEN_AS_BUILT]
    plain = _prepared(build, source4, arrays)
    shutil.rmtree(os.path.dirname(plain.snapshot), ignore_errors=True)
    assert plain.model_caveats == []


def test_a_cosine_similarity_loss_as_the_metric_ranks_lower_as_better(arrays):
    """Found by a fresh-user test (helper-67): metrics=[keras.losses.CosineSimilarity()] or
    [keras.losses.cosine_similarity] is logged as 'cosine_similarity', the name of
    keras.metrics.CosineSimilarity, but holds the negated cosine (-1 for predictions in the
    labels' direction); it was ranked higher-is-better, so the policy whose predictions
    pointed furthest from the labels was named best. It ranks lower as better; the metric of
    that name still ranks higher as better."""
    y = np.arange(1, 13, dtype="float32").reshape(4, 3)
    (x, _), (xv, _) = arrays[:2]
    targets = (x, np.ones((len(x), 3), "float32")), (xv, np.ones((len(xv), 3), "float32"))
    for metric, mode in ((keras.losses.CosineSimilarity(), "min"),
                         (keras.losses.cosine_similarity, "min"),
                         (keras.metrics.CosineSimilarity(), "max")):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Identity()])
        model.compile(loss="mse", metrics=[metric])
        assert model.evaluate(y, y, verbose=0, return_dict=True)["cosine_similarity"] == \
            pytest.approx(-1.0 if mode == "min" else 1.0)
        inputs = UserInputs(from_arrays(*targets), Recipe(
            resolve_builder(build, x.shape[1:], 3, activation=None), loss="mse",
            metrics=(metric,)), source=build(num_classes=3))
        inputs.prepare()
        shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)
        assert (inputs.metric, inputs.mode) == ("cosine_similarity", mode), metric


def test_a_resume_tells_loss_and_metric_functions_apart(arrays):
    """Found by a fresh-user test (helper-67): a sweep started with
    loss=keras.losses.mean_squared_error (a function), resumed with
    loss=keras.losses.mean_absolute_error, ran on without a word: every function was recorded
    for the resume's comparison as 'function(?)'. A function is recorded by its module and
    name, so the resume names the other loss and is refused."""
    (x, y), (xv, yv) = arrays[:2]
    targets = (x, y.astype("float32")), (xv, yv.astype("float32"))

    def trained_as(loss, metric):
        inputs = UserInputs(from_arrays(*targets), Recipe(
            resolve_builder(build, x.shape[1:], 1, activation=None), loss=loss,
            metrics=(metric,)), source=build(num_classes=1), mode="min")
        inputs.prepare()
        shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)
        return inputs.trained_as

    mse = trained_as(keras.losses.mean_squared_error, keras.metrics.mean_absolute_error)
    mae = trained_as(keras.losses.mean_absolute_error, keras.metrics.mean_squared_error)
    assert (mse["loss"], mse["metrics"]) == (
        f"{keras.losses.mean_squared_error.__module__}.mean_squared_error",
        f"{keras.metrics.mean_absolute_error.__module__}.mean_absolute_error")
    assert mae["loss"] != mse["loss"] and mae["metrics"] != mse["metrics"]


@pytest.mark.slow
def test_a_trial_whose_loss_is_nan_is_failed_though_its_accuracy_is_a_number(ray_local, arrays,
                                                                               tmp_path):
    """Found by a fresh-user test (helper-67): a classifier whose weights went NaN scores an
    accuracy all the same (argmax of NaN is 0: the rate of class 0). A sweep whose every
    trial ended with val_loss NaN reported each 'ok', at 0.3 validation accuracy, and
    'Recommended: the best'. Such a trial is failed, 'the training diverged', naming the
    losses, and there is no verdict."""
    def diverged(input_shape=(8, 8, 1), num_classes=3):
        i = keras.Input(input_shape)
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="block_1_0")(i))
        return keras.Model(i, keras.layers.Dense(
            num_classes, activation="softmax", name="head",
            kernel_initializer=keras.initializers.Constant(float("nan")))(h))

    out = str(tmp_path / "out")
    result = which_blocks(diverged, diverged(), train=arrays[0], validation=arrays[1],
                          strategy="prefix", only=["block_1"], seeds=1, epochs=1, out=out,
                          print_fn=lambda s: None)
    trials = pd.read_csv(os.path.join(out, "results.csv"))
    assert trials["val_accuracy"].notna().all()  # a number, on NaN weights
    assert trials["status"].tolist() == ["error"] * 3
    assert trials["error"].tolist() == [
        "the training diverged: test_loss is nan, val_loss is nan"] * 3
    assert result.best == "No trial finished: no verdict."


def test_labels_that_hold_nan_are_refused_by_part_and_sample(arrays, tmp_path):
    """Found by a fresh-user test (helper-65): a regression target with one NaN among its
    validation labels was accepted (the data summary said "(1 not finite)"); every trial
    ran, and every one was reported as "the training diverged: val_mae is nan", with no
    verdict. NaN inputs were refused; NaN or infinite labels now are too, naming the part
    and the samples as given (before any part is split off)."""
    (x, y), (xv, yv), (xt, yt) = arrays
    y_val = yv.astype("float32")
    y_val[[3, 5]] = [np.nan, np.inf]
    with pytest.raises(ValueError) as e:
        from_arrays((x, y.astype("float32")), (xv, y_val), (xt, yt.astype("float32")))
    assert str(e.value) == (
        "The validation labels hold 2 NaN or infinite values (samples [3, 5]): every trial "
        "would train or score on them, and its loss and metrics would be NaN, read as a "
        "diverged training. Drop those samples, or fill in their labels.")
    y_train = y.astype("float32")
    y_train[len(y_train) - 1] = np.nan  # test=None splits train: the index is the given one
    with pytest.raises(ValueError, match=rf"^The train labels hold 1 NaN or infinite values "
                                         rf"\(samples \[{len(y_train) - 1}\]\)"):
        from_arrays((x, y_train), (xv, yv.astype("float32")))
    path = str(tmp_path / "nan.npz")
    np.savez(path, x_train=x, y_train=y_train, x_test=xt, y_test=yt.astype("float32"))
    with pytest.raises(ValueError, match=rf"^The y_train labels hold 1 NaN or infinite values "
                                         rf"\(samples \[{len(y_train) - 1}\]\)"):
        load_data(f"npz:{path}")


def test_data_that_cannot_give_an_honest_verdict_is_refused(arrays, tmp_path):
    """Found by the second fresh-user test: NaN inputs, test identical to validation (the
    verdict chosen and reported on the same samples), train identical to validation, labels
    shaped (n, 1) in one part and (n,) in another (every trial then died), and an .npz whose
    x_valid / y_valid were silently ignored were all accepted."""
    (x, y), (xv, yv), (xt, yt) = arrays
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^The train inputs hold 1 NaN or infinite values"):
        from_arrays((nan, y), (xv, yv), (xt, yt))
    with pytest.raises(ValueError) as e:
        from_arrays((x, y), (xv, yv), (xv, yv))
    assert str(e.value) == ("The validation and test parts are the same samples: the verdict "
                            "would be chosen and reported on the same data. Pass distinct "
                            "parts (or test=None to hold a fifth of train out).")
    with pytest.raises(ValueError, match="^The train and validation parts are the same samples"):
        from_arrays((x, y), (x, y), (xt, yt))
    with pytest.raises(ValueError, match=r"^Labels of different shapes across the parts: "
                                         r"\{'train': \(1,\), 'validation': \(1,\), 'test': \(\)\}"):
        from_arrays((x, y[:, None]), (xv, yv[:, None]), (xt, yt))
    npz = tmp_path / "valid.npz"
    np.savez(npz, x_train=x, y_train=y, x_valid=xv, y_valid=yv, x_test=xt, y_test=yt)
    with pytest.raises(ValueError, match=r"expected arrays x_train, y_train, x_test, y_test and "
                                         r"optionally x_val with y_val; found x_test, x_train, "
                                         r"x_valid, y_test, y_train, y_valid"):
        load_data(f"npz:{npz}")


def test_samples_shared_by_two_parts_are_refused(arrays):
    """A validation or test sample that is also a training sample (test copied from train,
    a split made after augmenting) scores memory; one shared by validation and test is chosen
    on and reported on. Only identical parts were refused: a partial overlap gave a verdict
    measured partly on training samples, silently. A copy under another label is a copy."""
    (x, y), (xv, yv), (xt, yt) = arrays
    leaked_x, leaked_y = xt.copy(), yt.copy()
    leaked_x[[1, 4, 6, 9]] = x[[10, 20, 30, 40]]
    leaked_y[[1, 4, 6]] = y[[10, 20, 30]]
    leaked_y[9] = (y[40] + 1) % 3
    with pytest.raises(ValueError) as e:
        from_arrays((x, y), (xv, yv), (leaked_x, leaked_y))
    assert str(e.value) == (
        "Samples appear in more than one part (inputs equal byte for byte): 4 of the 15 test "
        "samples are copies of train samples (test [1, 4, 6, ...] = train [10, 20, 30, ...]), "
        "1 of them under another label. Scores on copies of training samples measure memory, "
        "not transfer; an input under another label is still the same input. Remove the "
        "copies from all parts but one (copies within one part are fine); where this library "
        "splits a part off (test=None, no x_val, no val/ folder), it keeps each input's copies "
        "in one part.")
    shared = xv.copy()
    shared[2] = xt[5]
    with pytest.raises(ValueError) as e:
        from_arrays((x, y), (shared, yv), (xt, yt))
    assert str(e.value) == (
        "Samples appear in more than one part (inputs equal byte for byte): 1 of the 15 test "
        "samples is a copy of a validation sample (test [5] = validation [2]). The verdict "
        "would be chosen and reported partly on the same samples. Remove the copies from all "
        "parts but one (copies within one part are fine); where this library splits a part "
        "off (test=None, no x_val, no val/ folder), it keeps each input's copies in one part.")
    # The same values in another dtype are the same input (uint8 train, float32 test).
    pixels = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    as_float = np.round(np.clip(xt, 0, 1) * 255).astype(np.float32)
    as_float[0], float_y = pixels[7], yt.copy()
    float_y[0] = y[7]
    with pytest.raises(ValueError, match=r"^Samples appear in more than one part \(inputs "
                                         r"equal byte for byte\): 1 of the 15 test samples is "
                                         r"a copy of a train sample \(test \[0\] = train "
                                         r"\[7\]\)\. Scores"):
        from_arrays((pixels, y), (np.round(np.clip(xv, 0, 1) * 255), yv), (as_float, float_y))
    # Copies within one part are fine.
    data = from_arrays((np.concatenate([x, x[:5]]), np.concatenate([y, y[:5]])), (xv, yv),
                       (xt, yt))
    assert len(data.x_train) == 65


def test_copies_within_train_stay_in_one_part_when_a_part_is_split_off(arrays, tmp_path):
    """Where this module splits a part off train, an input and its exact copies go to the same
    part (a held-out copy of a kept sample would be scored as unseen), and the description
    says so. Without copies the split is sklearn's, as before (same seeds, same parts)."""
    from sklearn.model_selection import train_test_split

    (x, y), (xv, yv), _ = arrays
    plain = from_arrays((x, y), (xv, yv), None, seed=0)
    kept, held, _, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    assert np.array_equal(plain.x_train, kept) and np.array_equal(plain.x_test, held)
    copies_x = np.concatenate([x, x[:10], x[:2]])
    copies_y = np.concatenate([y, y[:10], y[:2]])
    data = from_arrays((copies_x, copies_y), (xv, yv), None, seed=0)
    assert data.description == (
        "data: arrays\n  test: 20% of train, split with seed 0\n  train: 12 samples are exact "
        "copies of others; each input's copies were kept in one part")
    train_keys = {row.tobytes() for row in data.x_train}
    assert not any(row.tobytes() in train_keys for row in data.x_test)
    assert len(data.x_train) + len(data.x_test) == 72 and len(np.unique(
        data.x_test.reshape(len(data.x_test), -1), axis=0)) == 12
    # A folder holding the same image file twice (or more): split 60/20/20 without a fault.
    _png_folder(tmp_path / "images", classes=3, per_class=10, size=8)
    for c in range(3):
        for i in range(4):
            shutil.copy(tmp_path / "images" / f"class_{c}" / "0.png",
                        tmp_path / "images" / f"class_{c}" / f"copy_{i}.png")
    folder = load_data(f"folder:{tmp_path / 'images'}", seed=0)
    assert folder.description.splitlines()[-1] == (
        "  the folder: 12 samples are exact copies of others; each input's copies were kept "
        "in one part")
    train_keys = {row.tobytes() for row in folder.x_train}
    assert not any(row.tobytes() in train_keys
                   for row in np.concatenate([folder.x_val, folder.x_test]))


def _image_folder(root, modes, size=8):
    """train/, val/, test/ folders of 2 classes, one PNG each per mode; returns the pixels
    of each file in the order the folder is read (part, class, file name)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {}
    for part in ("train", "val", "test"):
        for c in range(2):
            os.makedirs(root / part / f"class_{c}")
            for i, mode in enumerate(modes):
                bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
                values = rng.integers(0, 256, size=(size, size, bands), dtype=np.uint8)
                Image.fromarray(values[..., 0] if bands == 1 else values, mode).save(
                    root / part / f"class_{c}" / f"{i}.png")
                pixels.setdefault(part, []).append(values)
    return pixels


def test_an_image_folder_is_read_with_the_channels_its_images_have(tmp_path):
    """Found by a fresh-user check: keras reads every folder as RGB, so a folder of greyscale
    PNGs became 3-channel data, and a pretrained model taking 1 channel failed with a kernel
    shape error that blamed a block. Greyscale folders are read as 1 channel, colour ones as 3
    (an alpha channel dropped), a mix as 3; the description says which and why."""
    grey = _image_folder(tmp_path / "grey", ["L", "L"])
    data = load_data(f"folder:{tmp_path / 'grey'}")
    assert data.input_shape == (8, 8, 1)
    assert data.description.splitlines()[1] == (
        "  images read as greyscale (1 channel): every image in the folder is greyscale")
    for part, x in (("train", data.x_train), ("val", data.x_val), ("test", data.x_test)):
        np.testing.assert_array_equal(x, np.stack(grey[part]).astype(np.float32))
    colour = _image_folder(tmp_path / "colour", ["RGB", "RGBA"])
    data = load_data(f"folder:{tmp_path / 'colour'}")
    assert data.input_shape == (8, 8, 3)
    assert data.description.splitlines()[1] == (
        "  images read as RGB (3 channels): every image in the folder is in colour; 6 of the "
        "12 images carry an alpha channel, dropped")
    np.testing.assert_array_equal(data.x_val, np.stack([v[..., :3] for v in colour["val"]]))
    mixed = _image_folder(tmp_path / "mixed", ["L", "RGB", "LA"])
    data = load_data(f"folder:{tmp_path / 'mixed'}")
    assert data.input_shape == (8, 8, 3)
    assert data.description.splitlines()[1] == (
        "  images read as RGB (3 channels): the folder mixes 12 greyscale images (such as "
        "train/class_0/0.png) with 6 in colour; the greyscale ones are repeated to 3 channels; "
        "6 of the 18 images carry an alpha channel, dropped")
    first, second, third = mixed["test"][:3]
    np.testing.assert_array_equal(data.x_test[0], np.repeat(first, 3, axis=-1))
    np.testing.assert_array_equal(data.x_test[1], second)
    np.testing.assert_array_equal(data.x_test[2], np.repeat(third[..., :1], 3, axis=-1))


def test_a_greyscale_folder_reaches_a_one_channel_model_and_its_source(source4, tmp_path):
    """Through the command line's path (--data folder:..., --model, --source): the greyscale
    images make a 1-channel model, into which the 1-channel source's block_1 transfers (read
    as RGB, block_1 was fixed to reinit: 'does not fit the source'), and a trial trains."""
    from keras_blockreuse.sweep.inputs import from_settings
    from keras_blockreuse.sweep.options import build_parser, settings_from_args

    _image_folder(tmp_path / "grey", ["L"] * 4)
    settings = settings_from_args(build_parser().parse_args(
        ["--model", BUILDER, "--source", source4, "--data", f"folder:{tmp_path / 'grey'}",
         "--out", str(tmp_path / "out")]))
    inputs = from_settings(settings)
    assert inputs.data.input_shape == (8, 8, 1)
    assert inputs.blocks == ["block_1", "block_2"] and list(inputs.fixed) == ["head"]
    reports = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune, "report", lambda metrics, **kw: reports.append(dict(metrics)))
        train_trial({"policy": "block_1=frozen,block_2=tuned", "seed": 0, "epochs": 1},
                    data=inputs.data, source=inputs.snapshot, recipe=inputs.recipe)
    assert [r["epoch"] for r in reports] == [1] and 0 <= reports[-1]["test_accuracy"] <= 1


def test_a_greyscale_folder_is_repeated_to_rgb_for_a_keras_application(tmp_path):
    """A keras.applications family takes RGB: its ImageNet stem has 3 input channels and
    ResNet's or VGG's preprocess_input indexes 3 channels (IndexError on 1). Greyscale folder
    images are repeated to 3 channels for it, so the stem still transfers, and the data's
    description says so."""
    from keras_blockreuse.sweep.inputs import from_settings
    from keras_blockreuse.sweep.options import build_parser, settings_from_args

    grey = _image_folder(tmp_path / "grey", ["L"] * 3, size=32)
    keras.utils.set_random_seed(3)
    weights = str(tmp_path / "mobilenet_v2.weights.h5")
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                   classes=10).save_weights(weights)
    settings = settings_from_args(build_parser().parse_args(
        ["--model", "mobilenet_v2", "--model-args", "alpha=0.35", "--source", weights,
         "--data", f"folder:{tmp_path / 'grey'}", "--blocks", "stem", "--out",
         str(tmp_path / "out")]))
    inputs = from_settings(settings)
    assert inputs.data.input_shape == (32, 32, 3)
    assert inputs.blocks[0] == "stem" and "stem" not in inputs.fixed
    assert inputs.data.description.splitlines()[1:] == [
        "  images read as greyscale (1 channel): every image in the folder is greyscale",
        "  greyscale repeated to 3 channels: mobilenet_v2 takes RGB (its ImageNet weights and "
        "preprocess_input)"]
    expected = keras.applications.mobilenet_v2.preprocess_input(
        np.repeat(np.stack(grey["val"]).astype(np.float32), 3, axis=-1))
    np.testing.assert_array_equal(inputs.data.x_val, expected)


def test_python_api_errors_name_its_arguments_and_data_seeds_needs_a_built_in_split(
        arrays, source4, tmp_path, capsys):
    """Found by the second fresh-user test: which_blocks' resume and resource errors named
    --resume / --out / --cpus-per-trial, and --data-seeds with the user's own data started
    the sweep and failed every trial with a TypeError."""
    kw = dict(train=arrays[0], validation=arrays[1], print_fn=lambda s: None)
    with pytest.raises(SweepError, match=r"^resume=True needs the folder of an earlier sweep"):
        which_blocks(build, source4, out=str(tmp_path / "none"), resume=True, **kw)
    from keras_blockreuse.sweep.control import check_resources

    node = {"Alive": True, "Resources": {"CPU": 2.0}}
    with pytest.raises(SweepError, match=r"with cpus_per_trial=64: the cluster has 1 node"):
        check_resources([node], 64, 0, ("cpus_per_trial=", "gpus_per_trial="))
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=arrays[0][0], y_train=arrays[0][1], x_test=arrays[2][0],
             y_test=arrays[2][1])
    assert main(["--model", BUILDER, "--source", source4, "--data", f"npz:{npz}",
                 "--data-seeds", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "which_blocks.py: error: --data-seeds re-draws the split of a built-in dataset for "
        "each seed; with your own --source and --data the split is yours (run the sweep once "
        "per split, or drop --data-seeds).")


def test_shared_samples_are_named_in_the_parts_the_user_gave(arrays, tmp_path):
    """The copies are found in the parts as given, before this module splits any off, so the
    message's indices are the user's (and a folder's, its files): found after a split, they
    pointed at the split's parts, and a copy shared with a part the user never gave."""
    from PIL import Image

    (x, y), (xv, yv), (xt, yt) = arrays
    leaked, leaked_y = xv.copy(), yv.copy()
    leaked[[0, 3]], leaked_y[[0, 3]] = x[[40, 41]], y[[40, 41]]
    with pytest.raises(ValueError) as e:
        from_arrays((x, y), (leaked, leaked_y), None, seed=0)
    assert str(e.value).startswith(
        "Samples appear in more than one part (inputs equal byte for byte): 2 of the 15 "
        "validation samples are copies of train samples (validation [0, 3] = train [40, 41]). "
        "Scores on copies of training samples measure memory, not transfer. Remove")
    npz = str(tmp_path / "leak.npz")
    x_test = np.concatenate([x[57:60], xt])
    np.savez(npz, x_train=x, y_train=y, x_test=x_test, y_test=np.concatenate([y[57:60], yt]))
    with pytest.raises(ValueError) as e:
        load_data(f"npz:{npz}", seed=0)  # no x_val: validation is split off x_train
    assert str(e.value).startswith(
        "Samples appear in more than one part (inputs equal byte for byte): 3 of the 18 x_test "
        "samples are copies of x_train samples (x_test [0, 1, 2] = x_train [57, 58, 59]). ")
    root = tmp_path / "parts"
    _png_folder(root / "train", classes=2, per_class=6, size=8)
    _png_folder(root / "test", classes=2, per_class=2, size=8)
    for i in range(2):  # test images unlike any of train's
        image = Image.fromarray(np.full((8, 8, 3), 7 * i + 1, np.uint8))
        image.save(root / "test" / "class_0" / f"{i}.png")
        Image.fromarray(np.full((8, 8, 3), 7 * i + 101, np.uint8)).save(
            root / "test" / "class_1" / f"{i}.png")
    shutil.copy(root / "train" / "class_1" / "5.png", root / "test" / "class_0" / "zz.png")
    with pytest.raises(ValueError) as e:
        load_data(f"folder:{root}", seed=0)
    assert str(e.value).startswith(
        "Samples appear in more than one part (inputs equal byte for byte): 1 of the 5 test/ "
        "samples is a copy of a train/ sample (test/ ['test/class_0/zz.png'] = train/ "
        "['train/class_1/5.png']), 1 of them under another label. ")


def test_folder_parts_are_checked_and_read_as_the_user_laid_them_out(tmp_path):
    """A sibling of train/ that is not val/ or test/ (validation/) would have been ignored:
    refused. A test/ lacking a class is read, its labels those of train/'s classes."""
    from PIL import Image

    root = tmp_path / "data"
    _png_folder(root / "train", classes=3, per_class=6, size=8)
    _png_folder(root / "validation", classes=3, per_class=2, size=8)
    with pytest.raises(ValueError) as e:
        load_data(f"folder:{root}", seed=0)
    assert str(e.value) == (
        f"folder data {str(root)!r} has train/ and also validation/, which would not be read: "
        "the parts are named train/, val/ and test/. Rename it (validation/ -> val/), or move "
        "it out of the folder.")
    shutil.rmtree(root / "validation")
    os.makedirs(root / "test" / "class_0")
    os.makedirs(root / "test" / "class_2")
    Image.fromarray(np.full((8, 8, 3), 3, np.uint8)).save(root / "test" / "class_0" / "a.png")
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(root / "test" / "class_2" / "b.png")
    data = load_data(f"folder:{root}", seed=0)
    assert data.y_test.tolist() == [0, 2]
    assert data.x_test[:, 0, 0, 0].tolist() == [3.0, 9.0]
    assert data.class_names == ("class_0", "class_1", "class_2")


def test_16_bit_pngs_and_object_arrays_are_refused_not_changed(arrays, tmp_path):
    """Keras's image reader scales 16-bit PNGs to 8 bits (4095 -> 15): refused, not read
    changed. Object arrays hold references, not bytes: copies could not be found."""
    from PIL import Image

    root = tmp_path / "deep"
    for c in ("a", "b"):
        os.makedirs(root / c)
        for i in range(5):
            values = np.full((6, 6), 800 * i + (c == "b") * 7, np.uint16)
            Image.fromarray(values).save(root / c / f"{i}.png")
    with pytest.raises(ValueError) as e:
        load_data(f"folder:{root}", seed=0)
    assert str(e.value) == (
        f"folder data {str(root)!r}: 10 PNG images hold 16 bits per channel (such as "
        "a/0.png). Keras's image reader (image_dataset_from_directory) scales them to 8 bits, "
        "dividing each value by about 257 (12-bit values 0..4095 would become 0..15), which "
        "would change the data silently. Convert them to 8 bits yourself if that is what you "
        "want, or pass the values as arrays (npz:PATH).")
    (x, y), (xv, yv), (xt, yt) = arrays
    words = np.array([f"w{i}" for i in range(len(x))], dtype=object)
    with pytest.raises(ValueError) as e:
        from_arrays((words, y), (words[:15].astype(str), yv), (words[:15], yt))
    assert str(e.value) == (
        "train: inputs of dtype object (Python objects, such as str); expected a numeric or "
        "string array. For text pass np.array(texts, dtype=str); for numbers, an array of their "
        "numeric dtype.")
    with pytest.raises(ValueError, match=r"^test: labels of dtype object \(Python objects, "
                                         r"such as int\)"):
        from_arrays((x, y), (xv, yv), (xt, yt.astype(object)))


def test_a_part_too_small_to_split_says_how_to_give_it():
    """Three distinct inputs, four copies each: a stratified fifth cannot be held out. The
    message mixed scikit-learn's words with "Give that part explicitly"."""
    x = np.repeat(np.arange(3, dtype=np.float32).reshape(3, 1), 4, axis=0)
    y = np.repeat(np.array([0, 1, 1]), 4)
    with pytest.raises(ValueError) as e:
        from_arrays((x, y), (np.full((2, 1), 9.0, np.float32), np.array([0, 1])), None)
    assert str(e.value) == (
        "Cannot split 20% of train (12 samples; 3 distinct inputs, each with its copies) off, "
        "stratified by class (scikit-learn: The least populated classes in y have only 1 "
        "member, which is too few. The minimum number of groups for any class cannot be less "
        "than 2. Classes with too few members are: [0]). Give that part yourself: a val/ or "
        "test/ folder, x_val in the npz file, or test= in the Python API.")


def test_hidden_or_empty_folders_are_no_class_and_stray_images_are_refused(tmp_path):
    """Jupyter's empty `.ipynb_checkpoints/` in train/ (or in a folder without parts) was
    counted as class 0, and every real label moved up by one, silently (helper-45). A test/
    of one class was refused; an image outside any class folder was dropped unsaid."""
    from PIL import Image

    root = tmp_path / "parts"
    _png_folder(root / "train", classes=2, per_class=6, size=8)
    os.makedirs(root / "train" / ".ipynb_checkpoints")
    os.makedirs(root / "train" / "empty")
    os.makedirs(root / "test" / "class_1")
    Image.fromarray(np.full((8, 8, 3), 5, np.uint8)).save(root / "test" / "class_1" / "a.png")
    data = load_data(f"folder:{root}", seed=0)
    assert data.class_names == ("class_0", "class_1")
    assert sorted(np.unique(data.y_train).tolist()) == [0, 1] and data.y_test.tolist() == [1]
    flat = tmp_path / "flat"
    _png_folder(flat, classes=2, per_class=10, size=8)
    os.makedirs(flat / ".ipynb_checkpoints")
    assert load_data(f"folder:{flat}", seed=0).class_names == ("class_0", "class_1")
    Image.fromarray(np.full((8, 8, 3), 5, np.uint8)).save(root / "test" / "stray.png")
    with pytest.raises(ValueError) as e:
        load_data(f"folder:{root}", seed=0)
    assert str(e.value) == (
        f"folder data {str(root / 'test')!r} holds 1 images outside any class folder (such as "
        "stray.png), which would not be read: move each into the sub-folder of its class.")


def test_a_damaged_image_in_a_folder_is_named(tmp_path):
    """Found by a fresh-user test: a truncated PNG among a folder's images ended the sweep
    with Pillow's traceback ("OSError: Truncated File Read"), naming no file. It is refused
    by name; so is a PNG whose header is whole and whose image data was cut short."""
    flat = tmp_path / "flat"
    _png_folder(flat, classes=2, per_class=6, size=8)
    broken = flat / "class_1" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ValueError) as e:
        load_data(f"folder:{flat}", seed=0)
    assert str(e.value).startswith(f"folder data: cannot read the image {str(broken)!r} (")
    assert str(e.value).endswith("): it is damaged or not an image. Replace or remove it.")
    whole = (flat / "class_1" / sorted(os.listdir(flat / "class_1"))[0]).read_bytes()
    broken.write_bytes(whole[:-20])  # the last chunks cut off
    with pytest.raises(ValueError, match="cannot read the image .*broken.png"):
        load_data(f"folder:{flat}", seed=0)
    broken.unlink()
    assert load_data(f"folder:{flat}", seed=0).class_names == ("class_0", "class_1")


def test_a_jpeg_cut_short_is_named(tmp_path):
    """Found by a user: a JPEG cut short near its end passed the check of every image
    (Pillow's `verify`, which checks a JPEG's header only) and failed inside TensorFlow's
    decoder, the error naming the folder and tf.data's nodes, not the file. It is refused by
    name, in the words of the other damaged images, where TensorFlow decodes it (no second
    decoding: that cost 20-25% of reading a folder of small JPEGs)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    for c in ("cats", "dogs"):
        (photos / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                photos / c / f"{i}.jpg", quality=90)
    broken = photos / "dogs" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[:-30])
    with Image.open(broken) as image:
        image.verify()  # Pillow's check finds nothing wrong
    said = (f"folder data: cannot read the image {str(broken)!r} (InvalidArgumentError: "
            "jpeg::Uncompress failed. Invalid JPEG data or crop window): it is damaged or not "
            "an image. Replace or remove it.")
    for image_size in (None, (4, 4)):
        with pytest.raises(ValueError) as e:
            load_data(f"folder:{photos}", seed=0, image_size=image_size)
        assert str(e.value) == said
    parts = tmp_path / "parts"
    shutil.copytree(photos, parts / "train")
    (parts / "test" / "cats").mkdir(parents=True)
    moved = parts / "test" / "cats" / "0.jpg"
    (parts / "train" / "cats" / "0.jpg").rename(moved)
    whole = moved.read_bytes()
    moved.write_bytes(whole[:-2])  # no more than its end marker cut off
    (parts / "train" / "dogs" / "3.jpg").unlink()
    with pytest.raises(ValueError) as e:
        load_data(f"folder:{parts}", seed=0)
    assert str(e.value) == said.replace(repr(str(broken)), repr(str(moved)))
    moved.write_bytes(whole)
    assert len(load_data(f"folder:{parts}", seed=0).x_test) == 1


def test_the_reports_settings_are_those_the_sweep_used(arrays, source4, tmp_path):
    """Found by a fresh-user check: a sweep on the user's own data (--data, which_blocks)
    reported `dataset | digits`, `task | shift`, `shift | noise`, `shots | 10` (the built-in
    task's defaults, which did not apply) and `data | npz:PATH` without how it was split. The
    settings table now shows the data's description instead; with --source, not the source
    training's settings either. A built-in task's run keeps its own."""
    from types import SimpleNamespace

    from keras_blockreuse.sweep.options import build_parser, settings_from_args
    from keras_blockreuse.sweep.report import write_report
    from keras_blockreuse.sweep.run import _settings_dict

    (x, y), _, (xt, yt) = arrays
    npz = tmp_path / "target.npz"
    np.savez(npz, x_train=x, y_train=y, x_test=xt, y_test=yt)

    def shown(*argv):
        settings = settings_from_args(build_parser().parse_args(
            [*argv, "--out", str(tmp_path / "out")]))
        user = None
        if settings.data:
            user = SimpleNamespace(data=load_data(settings.data, seed=0))
        elif settings.source:  # --source on a built-in task: its target arrays, no description
            user = SimpleNamespace(data=SimpleNamespace(x_train=x))
        return _settings_dict(settings, 0.0, ["block_1"], user)

    own = shown("--model", BUILDER, "--source", source4, "--data", f"npz:{npz}")
    assert own["data"] == (f"npz:{npz}; validation: 20% of train, split with seed 0")
    for key in ("dataset", "task", "shift", "shots", "train_images", "data_seeds",
                "source_epochs", "cache"):
        assert key not in own, key
    frame = pd.DataFrame({"policy": ["scratch"] * 3, "seed": [0, 1, 2], "status": ["ok"] * 3,
                          "test_accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.5, 0.6, 0.7]})
    write_report(frame, str(tmp_path / "report"), own)
    report = (tmp_path / "report" / "report.md").read_text()
    rows = report.split("## Settings")[1].splitlines()
    assert f"| data | npz:{npz}; validation: 20% of train, split with seed 0 |" in rows
    assert not any(r.startswith(("| dataset |", "| task |", "| shots |")) for r in rows)
    builtin_target = shown("--model", BUILDER, "--source", source4, "--shots", "5")
    assert (builtin_target["dataset"], builtin_target["task"], builtin_target["shift"],
            builtin_target["shots"], builtin_target["data"]) == ("digits", "shift", "noise",
                                                                 5, None)
    assert "source_epochs" not in builtin_target
    builtin = shown()
    assert (builtin["dataset"], builtin["shots"], builtin["source_epochs"]) == ("digits", 10, 30)


def test_copies_of_one_input_under_different_labels_are_said(arrays, tmp_path):
    """Found by a fresh-user check: copies of one input under different labels within one
    part were accepted unsaid (copies across parts are refused), though no model is right on
    every such copy. The description now says how many and gives one example, in the
    user's indices (a folder's, its files)."""
    (x, y), (xv, yv), (xt, yt) = arrays
    x2 = np.concatenate([x, x[[3, 5, 5]]])
    y2 = np.concatenate([y, [(y[3] + 1) % 3, y[5], (y[5] + 2) % 3]])
    data = from_arrays((x2, y2), (xv, yv), (xt, yt))
    assert data.description == (
        "data: arrays\n  train: 2 inputs appear more than once under different labels "
        f"(5 samples; such as train [3] labelled {int(y[3])} and [60] labelled "
        f"{(int(y[3]) + 1) % 3}): no model is right on every copy, which caps the score any "
        "policy can reach")
    same = from_arrays((np.concatenate([x, x[:2]]), np.concatenate([y, y[:2]])), (xv, yv),
                       (xt, yt))
    assert same.description == "data: arrays"  # copies under one label: nothing to say
    root = tmp_path / "images"
    _png_folder(root, classes=2, per_class=10, size=8)
    shutil.copy(root / "class_0" / "4.png", root / "class_1" / "copy.png")
    folder = load_data(f"folder:{root}", seed=0)
    assert folder.description.splitlines()[2] == (
        "  the folder: 1 input appears more than once under different labels (2 samples; "
        "such as the folder ['class_0/4.png'] labelled 0 and ['class_1/copy.png'] labelled 1): "
        "no model is right on every copy, which caps the score any policy can reach")


def test_a_part_split_off_far_from_its_share_says_its_size(arrays, tmp_path):
    """Found by a fresh-user check: keeping an input's copies in one part can move a part
    split off far from its stated 20% (12 copies of one row made test 32% of train here),
    unsaid. The description now gives the actual size where it is more than 5 points off;
    near it (the copies kept in train: 12 of 71, 17%) nothing more is said."""
    (x, y), (xv, yv), (xt, yt) = arrays
    x2 = np.concatenate([x, np.repeat(x[:1], 11, axis=0)])
    y2 = np.concatenate([y, np.repeat(y[:1], 11)])
    copies = ("  train: 11 samples are exact copies of others; each input's copies were kept "
              "in one part")
    far = from_arrays((x2, y2), (xv, yv), None, seed=0)
    assert (len(far.x_train), len(far.x_test)) == (48, 23)
    assert far.description.splitlines()[1:] == [
        "  test: 20% of train, split with seed 0", copies,
        "  test: 23 of the 71 samples of train (32%), not 20%: each input's copies were kept "
        "in one part (one input alone has 12 samples)"]
    near = from_arrays((x2, y2), (xv, yv), None, seed=1)
    assert len(near.x_test) == 12
    assert near.description.splitlines()[1:] == ["  test: 20% of train, split with seed 1", copies]
    npz = tmp_path / "copies.npz"
    np.savez(npz, x_train=x2, y_train=y2, x_test=xt, y_test=yt)
    assert load_data(f"npz:{npz}", seed=0).description.splitlines()[-1] == (
        "  validation: 23 of the 71 samples of x_train (32%), not 20%: each input's copies "
        "were kept in one part (one input alone has 12 samples)")
    root = tmp_path / "images"  # 60/20/20: both shares are of the whole folder
    _png_folder(root, classes=3, per_class=10, size=8)
    for i in range(11):
        shutil.copy(root / "class_0" / "0.png", root / "class_0" / f"copy_{i}.png")
    folder = load_data(f"folder:{root}", seed=1)
    assert [len(folder.x_train), len(folder.x_val), len(folder.x_test)] == [29, 6, 6]
    assert folder.description.splitlines()[-2:] == [
        "  test: 6 of the 41 samples of the folder (15%), not 20%: each input's copies were "
        "kept in one part (one input alone has 12 samples)",
        "  validation: 6 of the 41 samples of the folder (15%), not 20%: each input's copies "
        "were kept in one part (one input alone has 12 samples)"]


def test_a_source_whose_automatic_names_shifted_says_how_to_sweep_it(arrays, tmp_path):
    """Found by fresh-user tests: a source built after other models in its session (a
    notebook: `conv2d_4`, `dense_6`) shares no block name with the model the sweep builds, and
    the refusal said only "Check the block rule (blocks=) or the source", listing 4 of the 5
    model blocks. It now names every block, says the names shifted, and gives a way that
    works as written: following it, the sweep takes the source. Where a block does not fit
    whole (another task's head), a source without it could not say which automatically named
    block it lacks (the recipe's first version led to a sweep that took a freshly built head
    for a pretrained one): naming the layers is said to be the way."""
    def auto(input_shape=(8, 8, 1), num_classes=3):
        i = keras.Input(input_shape)
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(i)
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dense(8, activation="relu")(x)
        x = keras.layers.Dense(4, activation="relu")(x)
        return keras.Model(i, keras.layers.Dense(num_classes, activation="softmax")(x))

    keras.backend.clear_session()
    auto(), auto()
    pretrained = auto()
    path = str(tmp_path / "pretrained.weights.h5")
    pretrained.save_weights(path)
    other_task = str(tmp_path / "other_task.weights.h5")
    auto(num_classes=6).save_weights(other_task)
    with pytest.raises(SweepError) as e:
        _prepared(auto, path, arrays)
    rename = ("{'conv2d_4': 'conv2d', 'conv2d_5': 'conv2d_1', 'dense_6': 'dense', 'dense_7': "
              "'dense_1', 'dense_8': 'dense_2'}")
    message = str(e.value)
    assert "model blocks ['conv2d', 'conv2d_1', 'dense', 'dense_1', 'dense_2'] (" in message
    assert "; and 1 more). Its blocks pair one to one with the model's by their places in " \
           "Keras's saving walk: the same architecture, its automatic layer names shifted" \
           in message, message
    assert message.endswith(
        "pairs blocks by name, so give the source the model's names: load the pretrained "
        "weights into a model of the target's architecture built after "
        "keras.backend.clear_session() (so that its automatic names are those the sweep's "
        f"trials give) with load_blocks(model, source, rename={rename}), and pass that model "
        "as the source. Or name the layers (Conv2D(8, 3, name='block_1_0')).") , message
    with pytest.raises(SweepError) as e:
        _prepared(auto, other_task, arrays)
    assert "; blocks ['dense_11'] do not fit the model whole (another task's head?), and a " \
           "source without them cannot say which of the model's automatically named blocks " \
           "it lacks. Name the layers" in str(e.value), str(e.value)

    keras.backend.clear_session()
    fresh = auto()
    from keras_blockreuse import load_blocks
    assert load_blocks(fresh, path, rename=eval(rename)).ok
    inputs = _prepared(auto, fresh, arrays)
    try:
        assert inputs.blocks == ["conv2d", "conv2d_1", "dense", "dense_1", "dense_2"]
        assert inputs.fixed == {}
    finally:
        shutil.rmtree(os.path.dirname(inputs.snapshot), ignore_errors=True)


def test_the_report_names_the_ranking_metric_and_a_small_sources_size(arrays, source4):
    """Found by a fresh-user test: the settings table said `| metric | None |` when the
    recipe's own metric (categorical_accuracy) ranked the policies, and a 42 kB source was
    "snapshotted to source.blocks.h5 (5 blocks, 0.0 MB)". The table now names the metric that
    ranked, whoever chose it, and sizes below 1 MB are given in kB."""
    from types import SimpleNamespace

    from keras_blockreuse.sweep.options import build_parser, settings_from_args
    from keras_blockreuse.sweep.run import _settings_dict

    inputs = UserInputs(from_arrays(*arrays[:2]), Recipe(build), source4).prepare()
    nbytes = read_blocks(inputs.snapshot).nbytes
    assert nbytes < 1e6
    assert inputs.source_info.endswith(
        f"snapshotted to source.blocks.h5 ({len(read_blocks(inputs.snapshot).blocks)} blocks, "
        f"{nbytes / 1000:.1f} kB)")
    settings = settings_from_args(build_parser().parse_args(["--out", "unused"]))
    assert _settings_dict(settings, 0.0, ["b"], inputs)["metric"] == "accuracy (max)"
    own = SimpleNamespace(metric="categorical_accuracy", mode="max", data=None)
    assert _settings_dict(settings, 0.0, ["b"], own)["metric"] == "categorical_accuracy (max)"
    assert _settings_dict(settings, 0.0, ["b"])["metric"] == "accuracy (max)"  # built-in task


def test_a_model_that_cannot_be_built_for_the_data_says_with_what_shape(arrays, source4):
    """Found by a fresh-user test: inputs without a channel axis (N, 8, 8) ended the sweep
    with Keras's traceback from inside the user's builder ("expected min_ndim=4, found
    ndim=3"). The error now says which input_shape the builder got and where it came from."""
    (x, y), (xv, yv) = arrays[:2]
    flat = UserInputs(from_arrays((x[..., 0], y), (xv[..., 0], yv)),
                      Recipe(resolve_builder(build, (8, 8), 3)), source4)
    with pytest.raises(SweepError) as e:
        flat.prepare()
    assert str(e.value).startswith(
        "Building the model failed with input_shape=(8, 8), the shape of one input of the data "
        "(its arrays' shape without the first axis): ValueError: ")
    assert str(e.value).endswith(
        "An image model takes a channel axis: inputs of shape (N, 8, 8, 1) for greyscale "
        "images.")


def test_prefix_configurations_above_a_fixed_first_block_say_what_they_are(source4, tmp_path):
    """Found by a fresh-user test: RGB images and a greyscale source fix block_1 to reinit,
    and the prefix strategy's "prefix 1 frozen" transferred block_2 above a re-initialised
    block_1: not the first block of the network, as the label and Yosinski et al.'s AnB
    read. The console and the report's legend now say so; where the fixed blocks come after
    the swept ones (a head), nothing is said."""
    from keras_blockreuse.sweep import space
    from keras_blockreuse.sweep.inputs import from_settings
    from keras_blockreuse.sweep.options import build_parser, settings_from_args
    from keras_blockreuse.sweep.run import _prefix_caveat

    _image_folder(tmp_path / "rgb", ["RGB"] * 4)
    settings = settings_from_args(build_parser().parse_args(
        ["--model", BUILDER, "--source", source4, "--data", f"folder:{tmp_path / 'rgb'}",
         "--out", str(tmp_path / "out")]))
    inputs = from_settings(settings)
    assert inputs.order == ["block_1", "block_2", "head"]
    blocks, fixed = inputs.swept_blocks()
    assert blocks == ["block_2"] and list(fixed) == ["block_1", "head"]
    labels = [c.label for c in space.prefix(blocks)]
    assert _prefix_caveat(inputs.order, blocks, fixed, labels) == (
        "block_1 comes before swept blocks and is re-initialised in every configuration: "
        "*prefix n* transfers the first n swept blocks (block_2), above re-initialised "
        "block_1, so it is not a prefix of the network as in Yosinski et al. 2014's AnB.")
    assert _prefix_caveat(inputs.order, blocks, fixed,
                          [c.label for c in space.surgical(blocks)]) == ""
    assert _prefix_caveat(inputs.order, ["block_1", "block_2"], {"head": "x"}, labels) == ""
    # Found by a fresh-user test: a fixed block between swept ones (prefix 1 is a true prefix).
    assert _prefix_caveat(["block_1", "block_2", "dense_1", "head"], ["block_1", "dense_1"],
                          {"block_2": "x", "head": "y"},
                          [c.label for c in space.prefix(["block_1", "dense_1"])]) == (
        "block_2 sits among the swept blocks and is re-initialised in every configuration: "
        "from *prefix 2* on, the transferred blocks include dense_1, above re-initialised "
        "block_2, so those are not prefixes of the network as in Yosinski et al. 2014's AnB.")
