"""Tests for keras_blockreuse.sweep.affinity: a freed worker is given a trial of a trainable set
whose traced model it keeps; the trials themselves are the same as FIFO's."""

import time

import pytest
from ray import tune
from ray.tune.experiment import Trial

from keras_blockreuse.sweep.affinity import AffinityFIFO

GROUPS = {"scratch": (), "block_1=tuned": (), "block_1=frozen": ("block_1",),
          "block_1=frozen,block_2=frozen": ("block_1", "block_2")}


class FakeTrial:
    def __init__(self, trial_id, policy, seed, lr=None):
        self.trial_id = trial_id
        self.config = {"policy": policy, "seed": seed, **({"lr": lr} if lr else {})}
        self.status = Trial.PENDING

    def __repr__(self):
        return f"{self.config['policy']} seed {self.config['seed']}"


class FakeController:
    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials


def _grid(policies, seeds=2, lrs=(None,)):
    """Trials in the order Tune's grid makes them: lr fastest, then policy, then seed."""
    trials = []
    for seed in range(seeds):
        for policy in policies:
            for lr in lrs:
                trials.append(FakeTrial(f"t{len(trials)}", policy, seed, lr))
    return trials


def _start(scheduler, controller, trial, pid):
    trial.status = Trial.RUNNING
    scheduler.on_trial_result(controller, trial, {"pid": pid, "node_ip": "10.0.0.1"})


def _finish(scheduler, controller, trial):
    trial.status = Trial.TERMINATED
    scheduler.on_trial_complete(controller, trial, {})


def test_a_freed_worker_takes_a_trial_of_the_set_it_just_trained():
    trials = _grid(["scratch", "block_1=frozen", "block_1=frozen,block_2=frozen"])
    controller = FakeController(trials)
    scheduler = AffinityFIFO(GROUPS)
    assert scheduler.choose_trial_to_run(controller) is trials[0]  # nothing freed: FIFO
    _start(scheduler, controller, trials[0], pid=1)
    _start(scheduler, controller, trials[1], pid=2)
    _finish(scheduler, controller, trials[1])  # worker 2 trained block_1=frozen
    # FIFO would give worker 2 the next trial, block_1=frozen,block_2=frozen (another set)
    assert scheduler.choose_trial_to_run(controller) is trials[4]  # block_1=frozen seed 1
    _start(scheduler, controller, trials[4], pid=2)
    _finish(scheduler, controller, trials[0])  # worker 1 trained scratch
    assert scheduler.choose_trial_to_run(controller) is trials[3]  # scratch seed 1
    _start(scheduler, controller, trials[3], pid=1)
    _finish(scheduler, controller, trials[3])
    # No scratch left; worker 2 holds block_1=frozen: worker 1 takes the set nobody has met
    assert scheduler.choose_trial_to_run(controller) is trials[2]


def test_a_set_met_before_comes_next_then_any_pending_trial():
    trials = _grid(["block_1=frozen,block_2=frozen", "scratch", "block_1=frozen"])
    t0, t1, t2, t3, t4, t5 = trials  # ff s0, scratch s0, frozen s0, ff s1, scratch s1, frozen s1
    controller = FakeController(trials)
    scheduler = AffinityFIFO(GROUPS)
    _start(scheduler, controller, t1, pid=1)
    _finish(scheduler, controller, t1)
    _start(scheduler, controller, t2, pid=1)
    _start(scheduler, controller, t0, pid=2)
    _finish(scheduler, controller, t2)
    assert scheduler.choose_trial_to_run(controller) is t5  # its last set, not FIFO's t3
    _start(scheduler, controller, t5, pid=1)
    _finish(scheduler, controller, t5)
    assert scheduler.choose_trial_to_run(controller) is t4  # scratch: it keeps that one too
    _start(scheduler, controller, t4, pid=1)
    _finish(scheduler, controller, t4)
    assert scheduler.choose_trial_to_run(controller) is t3  # only worker 2's set is left


def test_the_learning_rate_is_part_of_the_set_and_unknown_policies_are_their_own():
    scheduler = AffinityFIFO(GROUPS)
    a, b = FakeTrial("a", "scratch", 0, lr=1e-3), FakeTrial("b", "scratch", 0, lr=1e-2)
    assert scheduler.group(a) != scheduler.group(b)
    assert scheduler.group(a) == scheduler.group(FakeTrial("c", "block_1=tuned", 1, lr=1e-3))
    assert scheduler.group(FakeTrial("d", "mine", 0)) != scheduler.group(FakeTrial("e", "x", 0))


def test_a_failed_trials_worker_is_forgotten_and_paused_trials_still_run():
    trials = _grid(["scratch", "block_1=frozen"], seeds=1)
    controller = FakeController(trials)
    scheduler = AffinityFIFO(GROUPS)
    _start(scheduler, controller, trials[0], pid=1)
    trials[0].status = Trial.ERROR
    scheduler.on_trial_error(controller, trials[0])
    assert scheduler.choose_trial_to_run(controller) is trials[1]
    trials[1].status = Trial.PAUSED
    assert scheduler.choose_trial_to_run(controller) is trials[1]  # FIFO's fallback


def _quick(config):
    tune.report({"began": time.time()})


@pytest.mark.slow
def test_under_tune_the_freed_worker_runs_the_trial_the_scheduler_chose(ray_local, tmp_path):
    """One reused worker, two trainable sets in the grid's order (the policy varies fastest):
    FIFO changes set at every trial, and under `AffinityFIFO` the worker runs every trial of
    its first set, then the others: Tune gives the freed worker the trial it chose."""
    policies = ["scratch", "block_1=frozen"]
    runs = {}
    for name, scheduler in (("affinity", AffinityFIFO(GROUPS)), ("fifo", None)):
        tuner = tune.Tuner(
            # every CPU of the test's Ray per trial: one worker, every other trial pending
            tune.with_resources(_quick, {"cpu": ray_local.cluster_resources()["CPU"]}),
            param_space={"policy": tune.grid_search(policies),
                         "seed": tune.grid_search(list(range(4)))},
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0))
        grid = tuner.fit()
        assert grid.num_errors == 0 and len(grid) == 8
        results = sorted(grid, key=lambda r: r.metrics["began"])
        assert len({r.metrics["pid"] for r in results}) == 1  # one reused worker
        runs[name] = [(r.config["policy"], r.config["seed"]) for r in results]
    assert runs["fifo"] == [(p, s) for s in range(4) for p in policies]
    assert runs["affinity"] == [(p, s) for p in policies for s in range(4)]
