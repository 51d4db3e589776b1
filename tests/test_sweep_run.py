"""Real Ray Tune sweeps (slow): smoke run and report, a failing trial, the source cache,
resume after the driver is killed, and a two-node Ray cluster with fake GPUs."""

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from keras_blockreuse.sweep import run
from keras_blockreuse.sweep.report import SUMMARY_COLUMNS, TRIAL_COLUMNS
from keras_blockreuse.sweep.run import SweepSettings, main, ray_temp_link, run_sweep
from keras_blockreuse.sweep.space import Configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "sweeps", "which_blocks.py")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.slow


def _processes_with(marker: str) -> list[int]:
    """Ids of this machine's processes whose command line contains `marker` (a unique path)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return [pid for pid in found if pid != os.getpid()]


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _end(pids) -> None:
    """Stop the given processes (ours): SIGTERM, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


def test_smoke_sweep_writes_the_report_and_survives_a_failing_trial(ray_local, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    broken = Configuration(key="block_9=tuned", label="broken policy", policy={"block_9": "tuned"})
    lines = []
    result = run_sweep(SweepSettings(smoke=True, out=str(out), cache=str(cache)), extra=[broken],
                       print_fn=lines.append)
    for name in ("results.csv", "summary.csv", "results.json", "report.md", "plot.png",
                 "settings.json"):
        assert (out / name).is_file(), name
    trials = pd.read_csv(out / "results.csv")
    assert list(trials.columns) == TRIAL_COLUMNS
    # prefix on block_1: scratch, frozen, tuned; plus the broken one; 2 seeds each.
    assert len(trials) == 8
    assert sorted(set(trials["policy"])) == ["block_1=frozen", "block_1=tuned", "block_9=tuned",
                                             "scratch"]
    ok = trials[trials["status"] == "ok"]
    assert len(ok) == 6 and ok["test_accuracy"].between(0, 1).all()
    assert (ok["epochs_done"] == 8).all() and ok["node_id"].notna().all()
    failed = trials[trials["status"] == "error"]
    assert len(failed) == 2 and set(failed["policy"]) == {"block_9=tuned"}
    assert failed["error"].str.contains("block_9").all()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary.loc[summary["policy"] == "block_9=tuned", "failed"].item() == 2
    scratch = summary[summary["policy"] == "scratch"].iloc[0]
    assert scratch["n"] == 2 and scratch["ci_low"] <= scratch["mean"] <= scratch["ci_high"]
    report = (out / "report.md").read_text()
    assert "Trials without a full-budget result (2 error)" in report and "block_9" in report
    # Tune recorded every epoch of every finished trial, in order (its results are buffered:
    # `tune_environment`), in result.json and progress.csv, and wrote no TensorBoard files.
    experiment = out / "tune" / "sweep"
    finished = [t for t in experiment.iterdir() if (t / "result.json").is_file()
                and "test_accuracy" in (t / "result.json").read_text()]
    assert len(finished) == 6
    for trial in finished:
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        epochs = [r["epoch"] for r in rows]  # (Tune logs the function's end as a copy of
        assert epochs[:8] == list(range(1, 9)) and epochs[8:] in ([], [8])  # the last result)
        assert [r["training_iteration"] for r in rows] == list(range(1, len(rows) + 1))
        assert list(pd.read_csv(trial / "progress.csv")["epoch"]) == epochs
    assert not list(experiment.rglob("events.out.tfevents*"))
    shown = json.loads((out / "results.json").read_text())["settings"]
    assert shown["blocks"] == "block_1 (--smoke: the first transferable)"
    verdict_lines = result.best.splitlines()
    assert lines[-len(verdict_lines):] == verdict_lines
    assert verdict_lines[0].startswith("Best on validation:")
    assert result.verdict.best in set(trials["policy"]) and result.exit_code == 0
    assert (trials["trained_params"] > 0).all()  # counted in the driver, per policy
    assert len(lines) < 25, lines  # no Ray or TensorFlow output in between
    document = json.loads((out / "results.json").read_text())
    assert len(document["policies"]) == 4 and len(document["failed_trials"]) == 2
    assert any("Training the source model" in line for line in lines)

    # The source model is cached: a second sweep with another task of the same source data
    # (another shift) reuses it.
    lines2 = []
    run_sweep(SweepSettings(smoke=True, shift="invert", out=str(tmp_path / "out2"),
                            cache=str(cache), strategy="surgical", seeds=1, epochs=1),
              print_fn=lines2.append)
    assert any("Source model from cache" in line for line in lines2)
    assert not any("Training the source model" in line for line in lines2)
    assert len(os.listdir(cache)) == 1
    # One swept block: "tune block_1" is also "all tuned", so 2 configurations x 1 seed.
    assert len(pd.read_csv(tmp_path / "out2" / "results.csv")) == 2


def _finished_trials(experiment) -> dict:
    """trial folder -> (lines in result.json, pid, test accuracy) for trials that reported a
    test accuracy."""
    done = {}
    if not experiment.is_dir():
        return done
    for trial in experiment.iterdir():
        path = trial / "result.json"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if rows and "test_accuracy" in rows[-1]:
                done[trial.name] = (len(rows), rows[-1]["pid"], rows[-1]["test_accuracy"])
    return done


def _check_not_rerun(before: dict, after: dict) -> None:
    """Trials that finished before the driver stopped keep their results on resume.

    One race is Tune's own: a trial whose last result was written but whose end Tune had not
    yet recorded when the driver stopped is run again on resume. At most the trials running at
    that moment (2 CPUs: 2) can be in that state, and a rerun of the same seed gives the same
    result, bit for bit.
    """
    rerun = [name for name, entry in before.items() if after[name][:2] != entry[:2]]
    assert len(rerun) <= 2, rerun
    for name, (_, _, accuracy) in before.items():
        assert after[name][2] == accuracy, name


def test_resume_after_the_driver_is_killed(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    # 5 configurations x 8 seeds: three quarters of the trials are left at the first progress
    # line, when the driver is killed.
    args = ["--smoke", "--blocks", "block_1,block_2", "--seeds", "8", "--out", str(out),
            "--cache", str(cache)]
    experiment = out / "tune" / "sweep"
    with _SweepDriver(tmp_path, args) as driver:
        driver.wait_for_progress()
        ours = _descendants(driver.process.pid)
        before = _finished_trials(experiment)  # what Tune had written to the folder by then
        driver.stop(signal.SIGKILL, timeout=30)
    # The killed driver's Ray (its processes name the sweep's Ray folder) is stopped here, as a
    # user would; nothing else on the machine is touched.
    marker = ray_temp_link(str(out)) if len(str(out / "ray")) > 40 else str(out / "ray")
    time.sleep(3)
    _end([pid for pid in ours if os.path.exists(f"/proc/{pid}")])
    assert not _stop_cluster(marker)

    resumed = subprocess.run([sys.executable, SCRIPT, "--resume", "--out", str(out)], cwd=ROOT,
                             env=ENV, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming experiment" in resumed.stdout
    trials = pd.read_csv(out / "results.csv")
    # prefix on two blocks: 5 configurations x 8 seeds, each exactly once, all finished.
    assert len(trials) == 40
    assert not trials.duplicated(["policy", "seed"]).any()
    assert set(trials["policy"]) == {"scratch", "block_1=frozen", "block_1=tuned",
                                     "block_1=frozen,block_2=frozen", "block_1=tuned,block_2=tuned"}
    assert (trials["status"] == "ok").all()
    # Trials finished before the kill were not run again.
    _check_not_rerun(before, _finished_trials(experiment))
    assert "Best on validation" in resumed.stdout
    # The resumed driver stopped its own Ray on the way out.
    deadline = time.time() + 30
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(1)
    left = _processes_with(marker)
    _stop_cluster(marker)
    assert not left, f"Ray processes left running: {left}"


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports that are free on this machine now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _stop_cluster(marker: str, timeout: float = 30) -> list[int]:
    """Stop every process of the cluster whose temporary folder is `marker`: those that name it
    on their command line and all their descendants (workers rename themselves `ray::...`).
    Never `ray stop`, which would also stop a user's own Ray on this machine. Returns the ids
    still alive after SIGTERM, a wait, and SIGKILL (none expected)."""
    seen: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        roots = _processes_with(marker)
        pids = set(roots) | {c for pid in roots for c in _descendants(pid)} | seen
        pids = {pid for pid in pids if os.path.exists(f"/proc/{pid}")}
        seen |= pids
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and any(_alive(pid) for pid in seen):
            time.sleep(0.5)
    return [pid for pid in seen if _alive(pid)]


def _alive(pid: int) -> bool:
    """True for a running process (a zombie, dead but not yet reaped, is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_node_cluster_with_fake_gpus(tmp_path):
    """`ray start --head` plus a second `ray start --address` node on this machine, each with a
    fake GPU: the sweep joins through --address, trains the source model in a Ray GPU task,
    requests fractional GPUs per trial, and its trials run on both nodes.

    The cluster is private to the test, so that it neither disturbs nor joins a Ray the user runs
    on this machine: its own temporary folder (Ray writes its `ray_current_cluster` file there,
    not in /tmp/ray), free ports for everything that has a fixed default (GCS, dashboard, Ray
    Client, dashboard agents), its own auth token in the environment (not ~/.ray/auth_token),
    no RAY_ADDRESS inherited, and at the end exactly its own processes are stopped.
    """
    temp = f"/tmp/kbr-{os.getpid()}-{int(time.time()) % 100000}"
    gcs, dashboard, client, agent_head, agent_worker = _free_ports(5)
    address = f"127.0.0.1:{gcs}"
    common = ["--num-cpus=1", "--num-gpus=1", f"--temp-dir={temp}", "--disable-usage-stats"]
    # conftest hides GPUs with CUDA_VISIBLE_DEVICES="", and Ray refuses --num-gpus=1 then.
    env = {k: v for k, v in ENV.items()
           if not k.startswith("RAY_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        head = subprocess.run(
            [RAY, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", f"--dashboard-port={dashboard}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_head}",
             *common], env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-3000:]
        worker = subprocess.run(
            [RAY, "start", f"--address={address}", "--node-ip-address=127.0.0.1",
             f"--dashboard-agent-listen-port={agent_worker}", *common],
            env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-3000:]
        out = tmp_path / "out"
        run = subprocess.run(
            [sys.executable, SCRIPT, "--smoke", "--seeds", "2", "--address", address,
             "--out", str(out), "--cache", str(tmp_path / "cache")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        assert "2 node(s)" in run.stdout and "in a Ray task on a GPU" in run.stdout
        trials = pd.read_csv(out / "results.csv")
        assert len(trials) == 6 and (trials["status"] == "ok").all()
        assert trials["node_id"].nunique() == 2, trials[["trial_id", "node_id"]]
        assert trials["gpu_ids"].notna().all()  # each trial was given a (fake) GPU id
        settings = json.loads((out / "results.json").read_text())["settings"]
        assert settings["gpus_per_trial"] == 0.25
        info = json.loads((out / "results.json").read_text())["info"]
        assert "Ray task, GPU" in info["source model"]
        assert not (out / "ray").exists() or not os.listdir(out / "ray")  # cluster's temp dir
    finally:
        left = _stop_cluster(temp)
    assert not left, f"cluster processes still running: {left}"
    assert not _processes_with(temp)


class _SweepDriver:
    """`sweeps/which_blocks.py` with `args` in a child process, its stdout read as it comes.

    `wait_for_progress()` returns once the driver printed its first progress line (a quarter of
    the trials ended, by the driver's own count). The trials' `result.json` files are no guide
    to how far a sweep is: Tune writes them to the sweep folder at its periodic experiment
    checkpoints, and on a fast CI machine none had appeared before all 40 trials ended (a
    signal sent on seeing them came after the sweep: "40 of 40 trials finished").
    """

    def __init__(self, tmp_path, args, cwd=ROOT, script=SCRIPT):
        self.stderr_path = tmp_path / "driver-stderr.txt"
        self._errors = open(self.stderr_path, "w")
        self.process = subprocess.Popen([sys.executable, script, *args], cwd=cwd, env=ENV,
                                        stdout=subprocess.PIPE, stderr=self._errors, text=True)
        self.lines: list[str] = []
        self._progress = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("trials: "):
                self._progress.set()

    def wait_for_progress(self, timeout=400):
        deadline = time.time() + timeout
        while (not self._progress.wait(0.5) and self.process.poll() is None
               and time.time() < deadline):
            pass
        assert self._progress.is_set() and self.process.poll() is None, \
            f"no progress line while the sweep ran (exit {self.process.poll()}): " + \
            self.stdout()[-3000:] + self.stderr()[-3000:]

    def stop(self, sig, timeout=180):
        self.process.send_signal(sig)
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=30)

    def stdout(self) -> str:
        return "".join(self.lines)

    def stderr(self) -> str:
        self._errors.flush()
        return self.stderr_path.read_text()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._errors.close()


def _interrupted_smoke_sweep(tmp_path, sig, seeds=8, cwd=ROOT, script=SCRIPT):
    """Runs a smoke sweep in `tmp_path / "out"` (`script` started in `cwd`) and sends `sig`
    once the driver printed its first progress line: 5 configurations x `seeds`, so that
    three quarters of the trials are left. Returns `(planned trials, driver, stdout,
    stderr)`."""
    args = ["--smoke", "--blocks", "block_1,block_2", "--seeds", str(seeds), "--out",
            str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    with _SweepDriver(tmp_path, args, cwd, script) as driver:
        driver.wait_for_progress()
        driver.stop(sig)
        return 5 * seeds, driver.process, driver.stdout(), driver.stderr()


def test_interrupted_sweep_is_marked_and_resumes_every_configuration_once(tmp_path):
    """SIGINT to the driver: the trials stop cleanly, the report says INTERRUPTED, the exit
    status is 130 and the resume command is printed; that command, as printed, run where
    the sweep was started (a folder outside the repository, the script named by a relative
    path, as a user found: the command named sweeps/which_blocks.py whatever the folder),
    finishes the rest."""
    out, experiment = tmp_path / "out", tmp_path / "out" / "tune" / "sweep"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = os.path.relpath(SCRIPT, elsewhere)
    total, driver, stdout, stderr = _interrupted_smoke_sweep(tmp_path, signal.SIGINT,
                                                             cwd=elsewhere, script=script)
    assert driver.returncode == 130, stdout[-3000:] + stderr[-3000:]
    before = _finished_trials(experiment)
    report = (out / "report.md").read_text().splitlines()
    finished = int(report[2].split(": ")[1].split(" of ")[0])
    assert report[2] == f"**INTERRUPTED (SIGINT): {finished} of {total} trials finished.**"
    assert finished == len(before) and 2 <= finished < total
    trials = pd.read_csv(out / "results.csv")
    assert set(trials["status"]) <= {"ok", "unfinished"} and (trials["status"] == "ok").sum() == \
        finished
    # Found by a fresh-user test: trials Tune had not created yet were missing from the report
    # (2 unfinished listed of 8, 3 of 5 configurations): every planned trial is listed.
    assert len(trials) == total and not trials.duplicated(["policy", "seed"]).any(), trials
    # Found by a fresh-user test: a trial Tune created but never started came back without
    # its configuration and was listed twice (the console said "38 trials" of 26; seeds 0.0).
    assert trials["seed"].dtype.kind == "i" and trials["policy"].notna().all()
    assert any(line.startswith(f"{total} trials in ") for line in stdout.splitlines()), stdout
    hint = f"Continue with: {shlex.join([sys.executable, script, '--resume', '--out', str(out)])}"
    assert hint in stdout.splitlines(), stdout
    assert "Traceback" not in stderr, stderr[-3000:]
    # The console: no Ray tables, no TensorFlow start-up lines, every printed path exists.
    assert len((stdout + stderr).splitlines()) < 30, stdout + stderr
    assert "absl" not in stderr and "TensorBoard" not in stdout and "oneDNN" not in stderr
    for word in stdout.replace("(", " ").replace(")", " ").replace(",", " ").split():
        if word.startswith("/"):
            assert os.path.exists(word.rstrip(".;:")), word

    resumed = subprocess.run(hint.removeprefix("Continue with: "), shell=True, cwd=elsewhere,
                             env=ENV, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pd.read_csv(out / "results.csv")
    assert len(trials) == total and not trials.duplicated(["policy", "seed"]).any()
    assert (trials["status"] == "ok").all()
    after = _finished_trials(experiment)
    assert len(after) == total
    _check_not_rerun(before, after)  # finished before the interrupt: not rerun
    report = (out / "report.md").read_text()
    assert "INTERRUPTED" not in report and "**Best on validation:" in report


def test_every_trial_failing_still_writes_the_report(ray_local, tmp_path, monkeypatch, capsys):
    """A real Tune run in which every trial raises: the report says so, the exit status is 1."""
    from keras_blockreuse.sweep.trial import train_source

    def broken(config, data=None, source=None):  # pickled by value into the Ray workers
        raise RuntimeError(f"broken trial {config['policy']} {config['seed']}")

    monkeypatch.setattr(run, "_functions", lambda settings: {"source": train_source,
                                                              "trial": broken})
    out = tmp_path / "out"
    code = main(["--smoke", "--epochs", "1", "--out", str(out), "--cache",
                 str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "no trial finished its full budget" in captured.err
    report = (out / "report.md").read_text()
    assert report.splitlines()[2] == "**No trial finished: no verdict.**"
    assert "Trials without a full-budget result (6 error)" in report
    assert "RuntimeError: broken trial" in report and not (out / "plot.png").exists()
    trials = pd.read_csv(out / "results.csv")
    assert len(trials) == 6 and (trials["status"] == "error").all()
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["policy"]) == ["block_1=frozen", "block_1=tuned", "scratch"]
    assert (summary["failed"] == 2).all() and (summary["n"] == 0).all()
    for line in captured.out.splitlines():  # every path printed exists
        for word in line.replace("(", " ").replace(")", " ").replace(",", " ").split():
            if word.startswith("/"):
                assert os.path.exists(word.rstrip(".;:")), line


def test_unreachable_address_fails_fast_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    started = time.time()
    code = main(["--smoke", "--address", "127.0.0.1:1", "--out", str(out)])
    elapsed = time.time() - started
    err = capsys.readouterr().err.strip()
    assert code == 2 and elapsed < 30, (code, elapsed)  # a hang guard, not a benchmark
    assert len(err.splitlines()) == 1 and "--address 127.0.0.1:1" in err, err
    assert not out.exists()


def test_a_request_no_node_can_satisfy_is_refused_before_any_trial(ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--smoke", "--gpus-per-trial", "1", "--out", str(out),
                 "--cache", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--gpus-per-trial 1" in err and "1 node(s) (2 CPUs, 0 GPUs)" in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()  # refused before the source
    code = main(["--smoke", "--cpus-per-trial", "3", "--out", str(out)])
    assert code == 2 and "--cpus-per-trial 3" in capsys.readouterr().err
    assert not out.exists()


def test_asha_stops_trials_but_never_the_baselines(ray_local, tmp_path):
    out = tmp_path / "out"
    lines = []
    result = run_sweep(SweepSettings(smoke=True, scheduler="asha", blocks=["block_1", "block_2"],
                                     epochs=9, out=str(out), cache=str(tmp_path / "cache")),
                       print_fn=lines.append)
    trials = pd.read_csv(out / "results.csv")
    assert len(trials) == 10 and set(trials["status"]) <= {"ok", "stopped"}
    baselines = trials[trials["policy"].isin(["scratch", "block_1=tuned,block_2=tuned"])]
    assert len(baselines) == 4 and (baselines["status"] == "ok").all()
    assert (baselines["epochs_done"] == 9).all()
    stopped = trials[trials["status"] == "stopped"]
    assert len(stopped) >= 1 and (stopped["epochs_done"] < 9).all()
    assert stopped["test_accuracy"].isna().all()  # no full-budget result, none used
    summary = result.summary.set_index("policy")
    assert summary["stopped"].sum() == len(stopped) and summary["failed"].sum() == 0
    assert (summary["n"] == trials[trials["status"] == "ok"].groupby("policy").size()
            .reindex(summary.index, fill_value=0)).all()
    report = (out / "report.md").read_text()
    assert f"({len(trials) - len(stopped)} ok, {len(stopped)} stopped)" in "\n".join(lines)
    assert f"Trials without a full-budget result ({len(stopped)} stopped)" in report
    assert f"| early stopping | {run.ASHA_CAVEAT} |" in report  # not repeatable: said so


@pytest.mark.slow
def test_sigterm_stops_the_sweep_like_sigint(tmp_path):
    """SIGTERM (a scheduler's stop, `kill`) ends the sweep as SIGINT does: exit 143, the report
    marked INTERRUPTED (SIGTERM), the resume command printed. Ray's driver installs its own
    SIGTERM handler (log and abort, exit 134); the sweep's must win."""
    out, experiment = tmp_path / "out", tmp_path / "out" / "tune" / "sweep"
    total, driver, stdout, stderr = _interrupted_smoke_sweep(tmp_path, signal.SIGTERM, seeds=12)
    assert driver.returncode == 143, stdout[-3000:] + stderr[-3000:]
    report = (out / "report.md").read_text().splitlines()
    finished = len(_finished_trials(experiment))
    assert report[2] == f"**INTERRUPTED (SIGTERM): {finished} of {total} trials finished.**"
    assert finished < total
    assert f"Continue with: {sys.executable} {SCRIPT} --resume --out {out}" in \
        stdout.splitlines(), stdout


@pytest.mark.slow
def test_how_a_folder_dataset_was_read_is_in_the_report(ray_local, tmp_path):
    """Found by a fresh-user test: --dataset folder:PATH printed how it read the images
    (greyscale, 1 channel; resized) on the console only; report.md and results.json did not
    say it. They now hold it as 'data notes'."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "grey"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8), "L").save(
                root / c / f"{i}.png")
    out = tmp_path / "out"
    run_sweep(SweepSettings(smoke=True, dataset=f"folder:{root}", shots=3, seeds=1, epochs=1,
                            strategy="surgical", out=str(out), cache=str(tmp_path / "cache")),
              print_fn=lambda line: None)
    note = "images read as greyscale (1 channel): every image in the folder is greyscale"
    assert json.loads((out / "results.json").read_text())["info"]["data notes"] == note
    assert f"| data notes | {note} |" in (out / "report.md").read_text()


def test_a_trial_that_diverged_is_a_failed_trial(ray_local, tmp_path, monkeypatch, capsys):
    """Found by a fresh-user test: a trial whose metrics came back NaN (a regression that
    diverged) counted as finished, and the verdict dropped its seed unsaid, so its policy was
    ranked, and could win, on the seeds left. Such a trial is now an error that says why,
    counted among the failed in the report."""
    from keras_blockreuse.sweep.trial import train_source

    def diverging(config, data=None, source=None):  # pickled by value into the Ray workers
        from ray import tune

        value = float("nan") if config["seed"] == 0 else 0.5
        tune.report({"epoch": 1, "val_accuracy": value, "test_accuracy": value})

    monkeypatch.setattr(run, "_functions", lambda settings: {"source": train_source,
                                                              "trial": diverging})
    out = tmp_path / "out"
    main(["--smoke", "--epochs", "1", "--out", str(out), "--cache", str(tmp_path / "cache")])
    trials = pd.read_csv(out / "results.csv")
    diverged = trials[trials["seed"] == 0]
    assert len(diverged) == 3 and (diverged["status"] == "error").all()
    assert set(diverged["error"]) == {
        "the training diverged: test_accuracy is nan, val_accuracy is nan"}
    assert (trials[trials["seed"] == 1]["status"] == "ok").all()
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["failed"] == 1).all() and (summary["n"] == 1).all()
    assert "Trials without a full-budget result (3 error)" in (out / "report.md").read_text()
