"""Tests for keras_blockreuse.sweep.control: checks, signals, the per-seed target split."""

import dataclasses
import math
import os
import signal

import numpy as np
import pytest

from keras_blockreuse.sweep.control import (
    Interrupts,
    check_address,
    check_resources,
    redraw_target_split,
    resume_command,
)
from keras_blockreuse.sweep.data import make_task
from keras_blockreuse.sweep.options import SweepError, SweepSettings

NODE = {"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9}}


def test_check_resources_names_what_the_cluster_has():
    check_resources([NODE], 1, 0)
    check_resources([NODE, {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}}], 1, 0.5)
    with pytest.raises(SweepError, match=r"--gpus-per-trial 1: the cluster has 1 node\(s\) "
                                         r"\(2 CPUs, 0 GPUs\)"):
        check_resources([NODE], 1, 1)
    with pytest.raises(SweepError, match="--cpus-per-trial 4"):
        check_resources([NODE, {"Alive": False, "Resources": {"CPU": 8.0}}], 4, 0)
    # Each alone fits some node, together none: both named.
    with pytest.raises(SweepError, match="--cpus-per-trial 2 with --gpus-per-trial 1"):
        check_resources([NODE, {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}}], 2, 1)


def test_check_address():
    check_address(None)
    check_address("auto")
    with pytest.raises(SweepError, match="Cannot reach a Ray cluster at --address 127.0.0.1:1"):
        check_address("127.0.0.1:1", timeout=2)
    with pytest.raises(SweepError, match="must be 'auto' or HOST:PORT"):
        check_address("somewhere")


def _started_as(monkeypatch, typed, argv0):
    """This process, as if started with the words `typed` (`sys.orig_argv`), whose program
    Python saw as `argv0` (`sys.argv[0]`)."""
    import sys

    monkeypatch.setattr(sys, "orig_argv", list(typed))
    monkeypatch.setattr(sys, "argv", [argv0, *typed[-3:]])  # the options: the last 3 words


def test_resume_command_is_the_users_own_command(monkeypatch):
    """Found by a user: the resume command printed after an interrupted sweep was always
    `python sweeps/which_blocks.py --resume --out ...`, which fails from any other folder
    than the repository's root, and names another interpreter than a venv's one typed by
    path. It is the interpreter and program as the user typed them (valid from the folder
    they typed them in, where the command is printed), shell-quoted."""
    import sys

    args = ["--smoke", "--seeds", "3"]
    _started_as(monkeypatch, ["python", "../src/sweeps/which_blocks.py", *args],
                "../src/sweeps/which_blocks.py")
    assert resume_command("/runs/a b") == \
        "python ../src/sweeps/which_blocks.py --resume --out '/runs/a b'"
    assert resume_command("/r", "10.0.0.5:6379") == \
        "python ../src/sweeps/which_blocks.py --resume --out /r --address 10.0.0.5:6379"
    _started_as(monkeypatch, ["/my venv/bin/python3", "-u", "/src/sweeps/which_blocks.py",
                              *args], "/src/sweeps/which_blocks.py")
    assert resume_command("/r") == \
        "'/my venv/bin/python3' -u /src/sweeps/which_blocks.py --resume --out /r"
    _started_as(monkeypatch, ["python3", "-m", "keras_blockreuse.sweep", *args],
                "/site-packages/keras_blockreuse/sweep/__main__.py")
    assert resume_command("/r") == "python3 -m keras_blockreuse.sweep --resume --out /r"
    # Not the command line (main() called from Python: here pytest): this interpreter, -m.
    _started_as(monkeypatch, ["python", "-m", "pytest", *args], "/x/pytest/__main__.py")
    assert resume_command("/r") == f"{sys.executable} -m keras_blockreuse.sweep --resume " \
                                   "--out /r"
    _started_as(monkeypatch, ["python", "-c", "import x", *args], "-c")
    assert resume_command("/r").startswith(f"{sys.executable} -m keras_blockreuse.sweep ")
    assert resume_command("/r", api=True) == \
        "which_blocks(<the same arguments>, out='/r', resume=True)"
    # A relative --out is made absolute.
    assert resume_command("runs/x").endswith(f"--out {os.path.abspath('runs/x')}")


def test_the_sweep_runs_as_a_module_from_any_folder(tmp_path):
    """`python -m keras_blockreuse.sweep` (the resume command's fallback) is the command
    line: here from a folder outside the repository, refusing a bad value."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "keras_blockreuse.sweep", "--seeds", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == \
        "which_blocks.py: error: --seeds must be a positive integer, received 0."


def test_signals_outside_tune_raise_keyboard_interrupt_and_give_the_exit_code():
    previous = signal.getsignal(signal.SIGTERM)
    with Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.signal == "SIGTERM" and interrupts.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is previous


def test_redraw_target_split_keeps_counts_pairs_seeds_and_source():
    data = make_task("digits", "shift", "noise", shots=5, seed=0)
    a, b, a2 = (redraw_target_split(data, s) for s in (0, 1, 0))
    for part in ("train", "val", "test"):
        y0, y1 = getattr(data, f"y_{part}"), getattr(a, f"y_{part}")
        assert np.array_equal(np.bincount(y0, minlength=10), np.bincount(y1, minlength=10))
        assert np.array_equal(getattr(a, f"x_{part}"), getattr(a2, f"x_{part}"))  # same seed
    assert not np.array_equal(a.x_train, b.x_train)  # another seed, another split
    assert a.x_source is data.x_source and a.y_source_val is data.y_source_val
    pool = lambda d: sorted(map(bytes, np.concatenate([d.x_train, d.x_val, d.x_test])))  # noqa: E731
    assert pool(a) == pool(data)  # the same target images, only re-dealt
    with pytest.raises(SweepError, match="--data-seeds re-draws"):
        redraw_target_split(object(), 0)


def test_data_seeds_option_and_coverage():
    from keras_blockreuse.sweep.options import build_parser, settings_from_args
    from keras_blockreuse.sweep.run import _coverage

    settings = settings_from_args(build_parser().parse_args(["--data-seeds"]))
    assert settings.data_seeds and "re-draws the target's" in _coverage(settings)
    assert _coverage(SweepSettings()).startswith("training seeds only")
    with pytest.raises(SweepError, match="--data-seeds applies to the classification tasks"):
        SweepSettings(task="detection", data_seeds=True).validate()


class FakeTrial:
    def __init__(self, trial_id, policy, status="RUNNING", val=None, test=None, lr=1e-3):
        self.trial_id, self.status, self.path = trial_id, status, f"/nowhere/{trial_id}"
        self.config = {"policy": policy, "seed": 0, "lr": lr}
        self.last_result = {"val_accuracy": val, "test_accuracy": test}


def test_live_view_counts_leader_and_few_lines():
    from keras_blockreuse.sweep.console import LiveView

    key = "block_1=tuned,block_2=frozen,dense_1=frozen,dense_2=frozen"
    lines = []
    view = LiveView(8, "val_accuracy", {key: "surgical: tune block_1"}, print_fn=lines.append,
                    terminal=False, final_metric="test_accuracy")
    with view:
        trials = [FakeTrial(f"t{i}", key if i % 2 else "scratch") for i in range(8)]
        view.step(trials)
        for i, t in enumerate(trials[:6]):
            t.status = "TERMINATED"
            t.last_result = {"val_accuracy": 0.5 + 0.1 * (i % 2), "test_accuracy": 0.5}
            view.complete(t)
        trials[6].status = "TERMINATED"
        view.complete(trials[6])  # no final result: stopped early
        view.step(trials)
    assert view.counts() == {"done": 6, "running": 1, "failed": 0, "stopped": 1, "total": 8}
    assert lines[-1].startswith("trials: 6 done, 1 running, 0 failed, 1 stopped of 8; elapsed ")
    assert lines[-1].endswith(f"leader by val_accuracy: surgical: tune block_1 ({key}) 0.600 "
                              "(n=3)")
    assert len(lines) == 4  # one line at each quarter (2, 4, 6 of 8 ended) and the last


def test_live_leader_is_one_learning_rate_of_a_policy():
    """Found by a fresh-user check: with --lrs the leader's mean and n pooled the rates."""
    from keras_blockreuse.sweep.console import LiveView

    lines = []
    view = LiveView(8, "val_accuracy", {}, print_fn=lines.append, terminal=False,
                    final_metric="test_accuracy")
    with view:
        values = {("a", 1e-3): [0.9, 0.7], ("a", 1e-2): [0.1, 0.1], ("b", 1e-3): [0.6, 0.6],
                  ("b", 1e-2): [0.7, 0.8]}
        trials = [FakeTrial(f"{p}{lr}{i}", p, lr=lr) for (p, lr), v in values.items()
                  for i in range(len(v))]
        view.step(trials)
        for t, value in zip(trials, [v for vs in values.values() for v in vs],
                            strict=True):
            t.status = "TERMINATED"
            t.last_result = {"val_accuracy": value, "test_accuracy": 0.5}
            view.complete(t)
    assert view.leader() == ("a", pytest.approx(0.8), 2, 1e-3)  # pooled: b 0.675 over a 0.45
    assert lines[-1].endswith("leader by val_accuracy: a at lr 0.001 0.800 (n=2)")


def test_live_view_counts_a_diverged_trial_as_failed():
    """Found by a fresh-user test (helper-65): a sweep whose every trial ended with val_mae
    NaN printed "trials: 6 done, 0 failed of 6; ... leader by val_mae: prefix 1 frozen
    (block_1=frozen) nan (n=2)", and then the report "6 trials (6 error)", each "the training
    diverged". A trial whose metrics are not finite is failed on the live line too, and never
    the leader."""
    from keras_blockreuse.sweep.console import LiveView

    lines = []
    view = LiveView(4, "val_mae", {}, higher_is_better=False, print_fn=lines.append,
                    terminal=False, final_metric="test_mae")
    with view:
        trials = [FakeTrial(f"t{i}", "a" if i < 2 else "b") for i in range(4)]
        view.step(trials)
        for t, (val, test) in zip(trials, [(math.nan, 1.0), (0.5, 0.5), (0.9, math.inf),
                                           (0.8, 0.8)], strict=True):
            t.status = "TERMINATED"
            t.last_result = {"val_mae": val, "test_mae": test}
            view.complete(t)
    assert view.counts() == {"done": 2, "running": 0, "failed": 2, "stopped": 0, "total": 4}
    assert lines[-1].startswith("trials: 2 done, 0 running, 2 failed of 4; elapsed ")
    assert lines[-1].endswith("leader by val_mae: a 0.500 (n=1)")


def test_live_view_counts_a_trial_whose_loss_is_nan_as_failed():
    """Found by a fresh-user test (helper-67): a classifier whose weights went NaN still
    scores an accuracy (argmax of NaN is 0: the rate of class 0), so a trial with val_loss
    NaN and val_accuracy 0.3 was 'done' and could lead the live line. Its losses not finite,
    it is failed, as the report says."""
    from keras_blockreuse.sweep.console import LiveView

    lines = []
    view = LiveView(3, "val_accuracy", {}, print_fn=lines.append, terminal=False,
                    final_metric="test_accuracy")
    with view:
        trials = [FakeTrial(f"t{i}", "a" if i < 2 else "b") for i in range(3)]
        view.step(trials)
        for t, (val, loss) in zip(trials, [(0.9, math.nan), (0.5, 1.0), (0.7, math.inf)],
                                  strict=True):
            t.status = "TERMINATED"
            t.last_result = {"val_accuracy": val, "test_accuracy": val, "val_loss": loss,
                             "test_loss": 1.0}
            view.complete(t)
    assert view.counts() == {"done": 1, "running": 0, "failed": 2, "stopped": 0, "total": 3}
    assert lines[-1].endswith("leader by val_accuracy: a 0.500 (n=1)")


def test_tune_environment_buffers_results_and_leaves_the_users_settings(monkeypatch):
    from keras_blockreuse.sweep.control import RESULT_BUFFER, tune_environment

    names = ("TUNE_RESULT_BUFFER_LENGTH", "TUNE_RESULT_BUFFER_MIN_TIME_S",
             "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    with tune_environment():
        # Ray 2.60 passes the two to train_buffered swapped: the length is read as seconds
        assert [os.environ[n] for n in names] == ["10", "1000", "1"]
        assert RESULT_BUFFER == (1000, 10.0)
    assert not any(n in os.environ for n in names)
    with tune_environment(buffered=False):  # ASHA
        assert [os.environ.get(n) for n in names] == [None, None, "1"]
    assert not any(n in os.environ for n in names)
    monkeypatch.setenv("TUNE_RESULT_BUFFER_LENGTH", "1")  # the user's: buffering off
    with tune_environment():
        assert [os.environ.get(n) for n in names] == ["1", None, "1"]
    assert os.environ["TUNE_RESULT_BUFFER_LENGTH"] == "1"


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs, room for a smoke sweep (root mounts it; skipped otherwise, CI runs as
    root), as in test_disk_full.py."""
    from tests.helpers import small_tmpfs

    with small_tmpfs(tmp_path / "disk", "8m") as folder:
        yield folder


def _fill(folder) -> None:
    """Takes every free byte of `folder`'s disk with one file, `folder / "filler"`."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    assert os.statvfs(folder).f_bavail == 0


class _TrainingStarted(Exception):
    """Raised where the sweep would start Ray and train."""


def test_resume_on_a_full_disk_says_so_and_changes_nothing(small_disk, monkeypatch, capsys):
    """Found by a user: --resume of a sweep whose folder was on a full disk waited 47 s and
    ended in Ray's traceback "RuntimeError: Timed out waiting for file .../gcs_server_port_..."
    (Ray could not write its session files in OUT/ray). It is refused before anything is
    written, naming the folder, its free space and what the sweep needs there; every file
    already written is left as it was."""
    import json

    import ray

    from keras_blockreuse.sweep import run

    def training(*args, **kwargs):
        raise _TrainingStarted

    monkeypatch.setattr(run, "_run_on_ray", training)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the sweep's own local Ray
    out = small_disk / "out"
    settings = run._prepare(run.SweepSettings(smoke=True, out=str(out)))
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(dataclasses.asdict(settings)))
    (out / "results.csv").write_text("policy,seed,status\nscratch,0,ok\n")
    _fill(small_disk)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = run.main(["--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == (
        f"which_blocks.py: error: {out} has too little free space for the sweep: 0 bytes free "
        "on its disk, and the sweep needs about 5.38 MiB there (the report, 1 MiB; Ray's "
        f"session files in {out / 'ray'}, 4 MiB; Tune's results of 6 trials, 64 KiB each). "
        f"Free some space there, then run the same command again: nothing in {out} was "
        "changed.\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # A new sweep there: the same check, in its own words, and nothing left behind.
    with pytest.raises(SweepError, match=r"Free some space there, or pass out= a folder on "
                                         r"another disk; nothing was written\.$"):
        run.run_sweep(run.SweepSettings(smoke=True, out=str(small_disk / "new"), api=True))
    assert not (small_disk / "new").exists()
    (small_disk / "filler").unlink()  # room again: the resume goes on to train
    with pytest.raises(_TrainingStarted):
        run.main(["--resume", "--out", str(out)])
    assert (out / "results.csv").read_bytes() == before[out / "results.csv"]


def test_free_space_is_counted_per_disk_and_a_remote_storage_is_not(tmp_path):
    from keras_blockreuse.sweep.control import check_free_space

    check_free_space(str(tmp_path / "a" / "b"), trials=10, local_ray=True)  # not made yet
    check_free_space(str(tmp_path), trials=10**6, local_ray=False, storage="s3://bucket/x")
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(SweepError, match=rf"^{tmp_path} has too little free space .*Tune's "
                                         rf"results of {free // 65536 + 1} trials"):
        check_free_space(str(tmp_path), trials=free // 65536 + 1, local_ray=False)


def test_a_disk_that_fills_during_the_sweep_is_said_with_the_resume_command(
        monkeypatch, tmp_path, capsys):
    """Found by a fresh-user re-check: a disk that filled during a sweep (after the free
    space check passed) ended in Ray's traceback, with no resume command, though nothing was
    lost and --resume finished it. The command line now says the disk filled, that the
    finished trials are kept, and how to continue (exit 1); other OSErrors still raise."""
    import errno
    import json

    from keras_blockreuse.sweep import run

    out = tmp_path / "out"
    out.mkdir()
    (out / run.SETTINGS_FILE).write_text(json.dumps({}))
    _started_as(monkeypatch, ["python", "sweeps/which_blocks.py", "--smoke", "--out", str(out)],
                "sweeps/which_blocks.py")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "run_sweep", full)
    assert run.main(["--smoke", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (
        f"{run.PROG}: error: the disk filled during the sweep ([Errno 28] No space left on "
        f"device); the trials finished so far are kept in {out}. Free some space there, then "
        f"continue with: python sweeps/which_blocks.py --resume --out {out}\n")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(run, "run_sweep", denied)
    with pytest.raises(PermissionError):
        run.main(["--smoke", "--out", str(out)])
