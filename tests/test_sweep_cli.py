"""Tests for the command line of sweeps/which_blocks.py: help, bad values, offline datasets."""

import os
import re
import subprocess
import sys
import urllib.error

import pytest

from keras_blockreuse.sweep.run import build_parser, main, settings_from_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "sweeps", "which_blocks.py")
OPTIONS = ["--dataset", "--task", "--shots", "--shift", "--model", "--strategy", "--blocks",
           "--seeds", "--epochs", "--source-epochs", "--batch-size", "--lr", "--cpus-per-trial",
           "--gpus-per-trial", "--scheduler", "--address", "--storage", "--out", "--resume",
           "--smoke", "--train-images"]


def test_help_explains_every_option():
    text = build_parser().format_help()
    for option in OPTIONS:
        assert option in text, option
    assert "digits" in text and "surgical" in text and "asha" in text


def test_defaults_are_the_documented_sweep():
    settings = settings_from_args(build_parser().parse_args([]))
    assert (settings.dataset, settings.task, settings.shift, settings.shots) == (
        "digits", "shift", None, 10)
    assert settings.resolved_shift() == "noise" and settings.seeds == 3
    assert settings.scheduler == "fifo" and settings.gpus_per_trial is None
    assert settings_from_args(build_parser().parse_args(["--shots", "all"])).shots is None


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--dataset", "imagenet"], "Unknown dataset 'imagenet'"),
        (["--strategy", "random"], "Unknown strategy 'random'"),
        (["--blocks", "block_9"], "Unknown block 'block_9'"),
        (["--shots", "500"], "Impossible shots=500"),
        (["--shots", "0"], "--shots must be a positive integer"),
        (["--shots", "many"], "--shots must be a positive integer"),
        (["--seeds", "0"], "--seeds must be a positive integer"),
        (["--shift", "fog"], "Unknown shift 'fog'"),
        (["--task", "split", "--shift", "noise"], "--shift applies to --task shift only"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be positive"),
        (["--model", "vgg"], "Unknown model 'vgg'"),
        (["--scheduler", "pbt"], "invalid choice: 'pbt'"),
        (["--epochs", "x"], "invalid int value: 'x'"),
        (["--task", "detect"], "invalid choice: 'detect'"),
        (["--task", "detection", "--model", "small_resnet"],
         "--task detection transfers seed_cnn's blocks"),
        (["--task", "detection", "--dataset", "cifar10"], "--task detection uses the digits"),
        (["--task", "detection", "--shift", "blur"], "--shift applies to --task shift only"),
        (["--task", "detection", "--train-images", "0"],
         "--train-images must be a positive integer"),
        (["--train-images", "50"], "--train-images applies to --task detection only"),
        (["--task", "detection", "--blocks", "block_3"], "Unknown block 'block_3' for --task "
                                                         "detection"),
    ],
)
def test_bad_values_give_one_clear_line(argv, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        code = main([*argv, "--out", str(out)])
    except SystemExit as exit_:
        code = exit_.code
    # Lines a Ray worker of an earlier test forwards to this process's stderr (prefixed
    # "(name pid=N)") are not this command's output.
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not re.match(r"(\x1b\[\d+m)?\([^)]*pid=\d+", line))
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing is left behind


def test_detection_task_options():
    from keras_blockreuse.sweep.options import DETECTION_TRAIN_IMAGES, SMOKE_DETECTION, apply_smoke

    text = build_parser().format_help()
    assert "detection" in text and "mAP@0.5" in text and "--train-images" in text
    settings = settings_from_args(build_parser().parse_args(
        ["--task", "detection", "--train-images", "100", "--epochs", "5"]))
    assert (settings.task, settings.train_images, settings.epochs) == ("detection", 100, 5)
    assert settings.resolved_train_images() == 100 and settings.resolved_shift() is None
    default = settings_from_args(build_parser().parse_args(["--task", "detection"]))
    assert default.train_images is None
    assert default.resolved_train_images() == DETECTION_TRAIN_IMAGES
    assert settings_from_args(build_parser().parse_args([])).resolved_train_images() is None
    smoke = settings_from_args(build_parser().parse_args(["--task", "detection", "--smoke"]))
    apply_smoke(smoke)
    assert smoke.train_images == SMOKE_DETECTION["train_images"]
    given = settings_from_args(build_parser().parse_args(
        ["--task", "detection", "--smoke", "--train-images", "8"]))
    apply_smoke(given)
    assert given.train_images == 8


def test_detection_dispatch_and_source_key():
    from keras_blockreuse.detection import sweep as detection
    from keras_blockreuse.sweep import run, trial
    from keras_blockreuse.sweep.options import SweepSettings

    det, cls = SweepSettings(task="detection"), SweepSettings()
    assert run._functions(det) == {"source": detection.train_detection_source,
                                   "trial": detection.train_detection_trial}
    assert run._functions(cls) == {"source": trial.train_source, "trial": trial.train_trial}
    assert run._metrics_of(det) == ("test_map_50", "val_map_50")
    assert run._metrics_of(cls) == ("test_accuracy", "val_accuracy")
    assert run._detection_trial_settings(det) == {
        "train_images": 400, "batch_size": detection.DETECTION_TRIAL_DEFAULTS["batch_size"],
        "lr": detection.DETECTION_TRIAL_DEFAULTS["lr"]}
    assert run._detection_trial_settings(SweepSettings(task="detection", batch_size=8,
                                                       lr=0.01, train_images=20)) == {
        "train_images": 20}
    data = detection.make_detection_task(val_images=2, test_images=2)
    assert run.source_key(det, data) != run.source_key(cls, data)
    assert run._swept_blocks(det, data) == (list(detection.DETECTION_BLOCKS), {})
    assert run._swept_blocks(SweepSettings(task="detection", smoke=True), data)[0] == [
        detection.DETECTION_BLOCKS[0]]


def test_offline_cifar10_gives_the_clear_message(monkeypatch, tmp_path, capsys):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path / "keras"))
    code = main(["--dataset", "cifar10", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "Could not load dataset 'cifar10'" in err and "--dataset digits" in err


def test_resume_without_a_sweep_folder(tmp_path, capsys):
    assert main(["--resume", "--out", str(tmp_path)]) == 2
    assert "has no settings.json" in capsys.readouterr().err


def test_script_exits_without_traceback():
    run = subprocess.run([sys.executable, SCRIPT, "--strategy", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 2
    assert "Unknown strategy 'nope'" in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("which_blocks.py: error:")


def test_script_help():
    run = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "--cpus-per-trial" in run.stdout


def test_option_names_match_the_data_and_model_modules():
    from keras_blockreuse.sweep import data, options, space, zoo

    assert options.DATASETS == data.DATASETS and options.TASKS == data.TASKS
    assert options.SHIFTS == data.SHIFTS and options.MODELS == tuple(zoo.MODELS)
    assert space.SweepError is options.SweepError and space.STRATEGIES == options.STRATEGIES


@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--strategy", "nope"], 2),
                                        (["--epochs", "x"], 2), (["--seeds", "0"], 2),
                                        (["--task", "detection", "--model", "small_resnet"], 2),
                                        (["--train-images", "5"], 2)])
def test_help_and_bad_values_do_not_import_tensorflow_or_ray(argv, code):
    """The script answers these from the options module alone: no Keras, TensorFlow, Ray or
    NumPy import, so a fraction of a second instead of 10-30 s."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['which_blocks.py', *{argv!r}]\n"
        "try:\n"
        f"    runpy.run_path({SCRIPT!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'ray', 'numpy', 'keras_blockreuse')\n"
        "               if m in sys.modules)\n"
        "print('RESULT', code, heavy)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert f"RESULT {code} []" in run.stdout, run.stdout + run.stderr


def test_precheck_lets_a_valid_sweep_and_resume_through():
    from keras_blockreuse.sweep.options import precheck

    assert precheck([]) is None
    assert precheck(["--resume", "--out", "anywhere"]) is None  # checked against the folder later
    assert precheck(["--blocks", "block_9"]) is None  # needs the model: run.main answers it


def test_smoke_keeps_values_given_explicitly_even_the_default_ones():
    from keras_blockreuse.sweep.options import SMOKE, SweepSettings, apply_smoke

    settings = settings_from_args(build_parser().parse_args(["--smoke", "--seeds", "3"]))
    apply_smoke(settings)
    assert settings.seeds == 3  # given, although it is also the default
    assert (settings.epochs, settings.source_epochs, settings.strategy) == (
        SMOKE["epochs"], SMOKE["source_epochs"], SMOKE["strategy"])
    api = SweepSettings(smoke=True, seeds=1)  # the Python API: fields left at their defaults
    apply_smoke(api)
    assert (api.seeds, api.epochs) == (1, SMOKE["epochs"])
    assert settings_from_args(build_parser().parse_args(["--fresh-process-per-trial"])
                              ).reuse_actors is False
    assert settings_from_args(build_parser().parse_args([])).reuse_actors is True


class _TrainingStarted(Exception):
    """Raised where the sweep would start Ray and train: what was said came before it."""


def test_one_seed_says_before_any_training_that_it_gives_no_verdict(monkeypatch, tmp_path,
                                                                     capsys):
    """Found by a user: --seeds 1 ran every trial and only then said "No verdict" (the
    verdict needs 2 finished seeds per policy). It is said before anything trains (a line on
    the console; a UserWarning too from Python), and the sweep still runs: a one-seed look
    is a fair first step."""
    import warnings

    from keras_blockreuse.sweep import run

    def training(*args, **kwargs):
        raise _TrainingStarted

    monkeypatch.setattr(run, "_run_on_ray", training)
    said = ("--seeds 1 gives no verdict: the verdict compares policies over at least 2 "
            "finished seeds each, so this sweep reports each policy's results without a best, "
            "tied or recommended policy. For a verdict, pass --seeds 2 or more.")
    with warnings.catch_warnings(record=True) as caught, pytest.raises(_TrainingStarted):
        warnings.simplefilter("always")
        main(["--smoke", "--seeds", "1", "--out", str(tmp_path / "cli")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"Warning: {said}", lines  # the last line before training
    assert not [w for w in caught if issubclass(w.category, UserWarning)]  # said once
    with pytest.raises(_TrainingStarted):
        main(["--smoke", "--seeds", "2", "--out", str(tmp_path / "two")])
    assert "Warning" not in capsys.readouterr().out

    lines = []
    with pytest.warns(UserWarning) as warned, pytest.raises(_TrainingStarted):
        run.run_sweep(run.SweepSettings(smoke=True, seeds=1, out=str(tmp_path / "py")),
                      print_fn=lines.append)
    assert [str(w.message) for w in warned] == [said]
    assert warned[0].filename == __file__  # points at the caller's line
    assert lines[-1] == f"Warning: {said}"
    from keras_blockreuse import save_blocks
    from keras_blockreuse.sweep import which_blocks
    from tests.sweep_user_model import build, images

    x, y = images(40, classes=2)
    save_blocks(build(num_classes=2), tmp_path / "source.blocks.h5")
    lines = []
    with pytest.warns(UserWarning) as warned, pytest.raises(_TrainingStarted):
        which_blocks(build, str(tmp_path / "source.blocks.h5"), (x[:30], y[:30]),
                     (x[30:], y[30:]), seeds=1, epochs=1, out=str(tmp_path / "api"),
                     print_fn=lines.append)
    api = said.replace("--seeds 1", "seeds=1").replace("--seeds 2", "seeds=2")
    assert [str(w.message) for w in warned] == [api] and warned[0].filename == __file__
    assert lines[-1] == f"Warning: {api}"
