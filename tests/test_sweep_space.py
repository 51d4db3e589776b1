"""Tests for keras_blockreuse.sweep.space: policy keys and each strategy's configurations."""

import pytest

from keras_blockreuse.sweep import space
from keras_blockreuse.sweep.space import (
    SCRATCH,
    SweepError,
    configurations,
    decode_policy,
    encode_policy,
    greedy_step,
)

BLOCKS = ["block_1", "block_2", "dense_1", "dense_2"]


def keys(configs):
    return [c.key for c in configs]


def test_keys_round_trip_and_omit_reinit():
    policy = {"block_1": "tuned", "block_2": "frozen", "dense_1": "reinit", "dense_2": "reinit"}
    key = encode_policy(policy, BLOCKS)
    assert key == "block_1=tuned,block_2=frozen"
    assert decode_policy(key, BLOCKS) == policy
    assert encode_policy(dict.fromkeys(BLOCKS, "reinit"), BLOCKS) == SCRATCH
    assert decode_policy(SCRATCH, BLOCKS) == dict.fromkeys(BLOCKS, "reinit")
    # Block order in the key follows the model, not the dict.
    assert encode_policy({"dense_2": "tuned", "block_1": "frozen"}, BLOCKS) == (
        "block_1=frozen,dense_2=tuned")


@pytest.mark.parametrize("key", ["block_9=tuned", "block_1=melted", "block_1", "block_1=tuned,"])
def test_bad_keys_are_refused(key):
    with pytest.raises(SweepError, match="Invalid policy key"):
        decode_policy(key, BLOCKS)


def test_prefix_is_yosinski_anb():
    configs = configurations("prefix", BLOCKS)
    assert len(configs) == 1 + 2 * len(BLOCKS)
    assert keys(configs) == [
        "scratch",
        "block_1=frozen", "block_1=tuned",
        "block_1=frozen,block_2=frozen", "block_1=tuned,block_2=tuned",
        "block_1=frozen,block_2=frozen,dense_1=frozen", "block_1=tuned,block_2=tuned,dense_1=tuned",
        "block_1=frozen,block_2=frozen,dense_1=frozen,dense_2=frozen",
        "block_1=tuned,block_2=tuned,dense_1=tuned,dense_2=tuned",
    ]
    assert [c.label for c in configs][:3] == ["scratch", "prefix 1 frozen", "prefix 1 tuned"]
    assert configs[4].code == "TTRR"


def test_surgical_tunes_one_block_and_freezes_the_rest():
    configs = configurations("surgical", BLOCKS)
    assert len(configs) == len(BLOCKS) + 2
    assert configs[0].key == SCRATCH
    for block, c in zip(BLOCKS, configs[1:-1], strict=True):
        assert c.policy[block] == "tuned"
        assert all(p == "frozen" for b, p in c.policy.items() if b != block)
        assert c.label == f"surgical: tune {block}"
    assert configs[-1].policy == dict.fromkeys(BLOCKS, "tuned") and configs[-1].label == "all tuned"
    assert [c.code for c in configs] == ["RRRR", "TFFF", "FTFF", "FFTF", "FFFT", "TTTT"]


def test_exhaustive_lists_every_combination_once():
    configs = configurations("exhaustive", BLOCKS)
    assert len(configs) == 3 ** len(BLOCKS) == len(set(keys(configs)))
    assert configs[0].key == SCRATCH and configs[0].label == SCRATCH
    assert {c.code for c in configs} == {
        a + b + c + d for a in "RFT" for b in "RFT" for c in "RFT" for d in "RFT"}


def test_union_of_strategies_has_no_repeats_and_keeps_first_label():
    configs = configurations("surgical,prefix", BLOCKS)
    # prefix: 9, surgical: 6; shared: scratch and all tuned.
    assert len(configs) == 9 + 6 - 2
    assert len(set(keys(configs))) == len(configs)
    all_tuned = [c for c in configs if c.code == "TTTT"]
    assert [c.label for c in all_tuned] == ["all tuned"]
    assert keys(configurations(["prefix", "prefix"], BLOCKS)) == keys(configurations("prefix",
                                                                                    BLOCKS))


def test_greedy_first_round_and_steps():
    first = configurations("greedy", BLOCKS)
    assert len(first) == 1 + 2 * len(BLOCKS)
    assert set(keys(first)) == set(keys(configurations("prefix", BLOCKS)[:1])) | {
        f"{b}={m}" for b in BLOCKS for m in ("frozen", "tuned")}
    current = space.configuration({"block_2": "tuned"}, BLOCKS)
    step = greedy_step(current, BLOCKS, 2)
    assert len(step) == 2 * (len(BLOCKS) - 1)
    assert all(c.policy["block_2"] == "tuned" for c in step)
    assert "block_1=frozen,block_2=tuned" in keys(step)
    assert step[0].label == "greedy 2: +block_1=frozen"
    assert greedy_step(space.configuration(dict.fromkeys(BLOCKS, "tuned"), BLOCKS), BLOCKS,
                       5) == []


def test_configuration_properties():
    c = space.configuration({"block_1": "frozen", "dense_1": "tuned"}, BLOCKS)
    assert c.transferred == ["block_1", "dense_1"] and c.frozen == ["block_1"]
    assert c.code == "FRTR"


@pytest.mark.parametrize(
    "strategy, blocks, fragment",
    [
        ("random", BLOCKS, "Unknown strategy 'random'"),
        ("", BLOCKS, "Unknown strategy"),
        ("prefix", [], "at least one block"),
        ("prefix", ["a", "a"], "unique"),
    ],
)
def test_errors(strategy, blocks, fragment):
    with pytest.raises(SweepError, match=fragment):
        configurations(strategy, blocks)


def test_greedy_stops_when_the_gain_is_float32_rounding():
    """A greedy round whose best change scores the same validation accuracy as the current
    configuration, summed in another order (0.6 + 0.7 against 0.65 + 0.65: one bit apart),
    is no gain: the selection stops there instead of adding a block for the last bit."""
    import types

    from keras_blockreuse.sweep.run import SweepSettings, _greedy

    blocks = ["block_1", "block_2"]
    static = configurations("greedy", blocks)
    val = {"scratch": [0.6, 0.7], "block_1=frozen": [0.65, 0.65], "block_1=tuned": [0.5, 0.5],
           "block_2=frozen": [0.4, 0.4], "block_2=tuned": [0.3, 0.3]}
    assert (0.65 + 0.65) / 2 > (0.6 + 0.7) / 2  # the last bit
    rows = [{"policy": p, "status": "ok", "val_accuracy": v, "seed": s}
            for p, values in val.items() for s, v in enumerate(values)]
    printed, ran = [], []
    runner = types.SimpleNamespace(settings=SweepSettings(), user=None, costs={}, data=None,
                                   print_fn=printed.append,
                                   run=lambda name, configs: ran.append(name) or [])
    assert {c.key for c in static} == set(val)
    assert _greedy(runner, rows, blocks, static) == rows
    assert printed == ["Greedy: no single change beats scratch; stopping."] and ran == []
    # A real gain is taken (then the next round's configurations are run).
    better = [dict(r, val_accuracy=0.66) if r["policy"] == "block_1=frozen" else r for r in rows]
    _greedy(runner, better, blocks, static)
    assert printed[1] == "Greedy round 1: block_1=frozen (val 0.660)." and ran == ["greedy_3"]
    # A tie (float32 rounding) between two changes goes to the one with fewer trained
    # parameters, as in the verdict, not to the last bit.
    tie = {"scratch": [0.3, 0.3], "block_1=frozen": [0.6, 0.7], "block_1=tuned": [0.65, 0.65],
           "block_2=frozen": [0.4, 0.4], "block_2=tuned": [0.3, 0.3]}
    rows = [{"policy": p, "status": "ok", "val_accuracy": v, "seed": s}
            for p, values in tie.items() for s, v in enumerate(values)]
    runner.costs = {"block_1=frozen": 10, "block_1=tuned": 500}
    printed.clear()
    _greedy(runner, rows, blocks, static)
    assert printed[0] == "Greedy round 1: block_1=frozen (val 0.650)."
