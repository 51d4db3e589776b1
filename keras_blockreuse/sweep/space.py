"""The search space of a transfer sweep: a policy per block, and strategies that list them.

Each block of the target model gets one policy:

- `reinit`: trained from a fresh initialisation (not transferred);
- `frozen`: transferred from the source model and not trained;
- `tuned`: transferred from the source model, then fine-tuned.

A configuration maps every swept block to a policy. Its key is a short string listing the
transferred blocks in block order, e.g. `"block_1=tuned,block_2=frozen"`; the from-scratch
baseline (everything `reinit`) is `"scratch"`.

Example:

```python
from keras_blockreuse.sweep.space import configurations

for c in configurations("surgical", ["block_1", "block_2", "dense_1", "dense_2"]):
    print(c.key, "|", c.label)
# scratch | scratch
# block_1=tuned,block_2=frozen,dense_1=frozen,dense_2=frozen | surgical: tune block_1
# ...
```
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from keras_blockreuse.sweep.options import STRATEGIES, SweepError, strategy_names

POLICIES = ("reinit", "frozen", "tuned")
SCRATCH = "scratch"
__all__ = ["POLICIES", "SCRATCH", "STRATEGIES", "Configuration", "SweepError", "configuration",
           "configurations", "decode_policy", "encode_policy", "exhaustive", "greedy_step",
           "parse_strategies", "policy_code", "prefix", "scratch", "surgical"]


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One point of the search space.

    Attributes:
        key: the policy key, e.g. `"block_1=tuned,block_2=frozen"` or `"scratch"`.
        label: a readable name saying which strategy produced it (`"prefix 2 frozen"`).
        policy: block name -> `"reinit"`, `"frozen"` or `"tuned"`, for every swept block.
    """

    key: str
    label: str
    policy: dict

    @property
    def code(self) -> str:
        """One letter per block in block order: R(einit), F(rozen), T(uned); e.g. `"TFFF"`."""
        return policy_code(self.policy)

    @property
    def transferred(self) -> list[str]:
        """Blocks loaded from the source model (frozen or tuned), in block order."""
        return [b for b, p in self.policy.items() if p != "reinit"]

    @property
    def frozen(self) -> list[str]:
        """Blocks loaded from the source model and not trained."""
        return [b for b, p in self.policy.items() if p == "frozen"]


def policy_code(policy: dict) -> str:
    """One letter per block, in the dict's order: `{"a": "tuned", "b": "reinit"}` -> `"TR"`."""
    return "".join(p[0].upper() for p in policy.values())


def encode_policy(policy: dict, blocks: Sequence[str]) -> str:
    """The short key of a policy: transferred blocks in `blocks` order, or `"scratch"`.

    Example:

    >>> encode_policy({"block_1": "frozen", "block_2": "reinit"}, ["block_1", "block_2"])
    'block_1=frozen'
    """
    _check_policy(policy, blocks)
    parts = [f"{b}={policy[b]}" for b in blocks if policy.get(b, "reinit") != "reinit"]
    return ",".join(parts) if parts else SCRATCH


def decode_policy(key: str, blocks: Sequence[str]) -> dict:
    """The policy of a key, with every block of `blocks` (those not named are `reinit`).

    Raises:
        SweepError: a malformed key, an unknown block or an unknown policy.

    Example:

    >>> decode_policy("block_2=tuned", ["block_1", "block_2"])
    {'block_1': 'reinit', 'block_2': 'tuned'}
    """
    policy = dict.fromkeys(blocks, "reinit")
    if key == SCRATCH:
        return policy
    for part in key.split(","):
        block, sep, value = part.partition("=")
        if not sep or block not in policy or value not in POLICIES:
            raise SweepError(
                f"Invalid policy key {key!r} at {part!r}: expected 'block=policy' pairs joined by "
                f"commas, blocks among {list(blocks)} and policies among {list(POLICIES)}."
            )
        policy[block] = value
    return policy


def configuration(policy: dict, blocks: Sequence[str], label: str | None = None) -> Configuration:
    """A `Configuration` from a policy dict (missing blocks are `reinit`)."""
    full = {b: policy.get(b, "reinit") for b in blocks}
    key = encode_policy(full, blocks)
    return Configuration(key=key, label=label or key, policy=full)


def scratch(blocks: Sequence[str]) -> Configuration:
    """The from-scratch baseline: every block `reinit`."""
    return configuration({}, blocks, label=SCRATCH)


def prefix(blocks: Sequence[str]) -> list[Configuration]:
    """Yosinski et al.'s AnB / AnB+: the first n blocks transferred, all frozen or all tuned.

    n = 0 .. len(blocks); n = 0 is scratch. `1 + 2 * len(blocks)` configurations.
    """
    out = [scratch(blocks)]
    for n in range(1, len(blocks) + 1):
        for mode in ("frozen", "tuned"):
            policy = dict.fromkeys(blocks[:n], mode)
            out.append(configuration(policy, blocks, label=f"prefix {n} {mode}"))
    return out


def surgical(blocks: Sequence[str]) -> list[Configuration]:
    """Lee et al.'s surgical fine-tuning: all transferred and frozen but one tuned block.

    Plus scratch and everything tuned: `len(blocks) + 2` configurations.
    """
    out = [scratch(blocks)]
    for block in blocks:
        policy = dict.fromkeys(blocks, "frozen")
        policy[block] = "tuned"
        out.append(configuration(policy, blocks, label=f"surgical: tune {block}"))
    out.append(configuration(dict.fromkeys(blocks, "tuned"), blocks, label="all tuned"))
    return out


def exhaustive(blocks: Sequence[str]) -> list[Configuration]:
    """Every combination of policies: `3 ** len(blocks)` configurations, scratch first."""
    out = []
    for values in itertools.product(POLICIES, repeat=len(blocks)):
        policy = dict(zip(blocks, values, strict=True))
        c = configuration(policy, blocks, label=policy_code(policy))
        out.append(scratch(blocks) if c.key == SCRATCH else c)
    return out


def greedy_step(current: Configuration, blocks: Sequence[str], round_: int) -> list[Configuration]:
    """Forward selection: every configuration that sets one more `reinit` block of `current`
    to `frozen` or `tuned`. Empty when no block is left.

    Example:

    >>> [c.key for c in greedy_step(scratch(["a", "b"]), ["a", "b"], 1)]
    ['a=frozen', 'a=tuned', 'b=frozen', 'b=tuned']
    """
    out = []
    for block in blocks:
        if current.policy[block] != "reinit":
            continue
        for mode in ("frozen", "tuned"):
            policy = dict(current.policy, **{block: mode})
            out.append(configuration(policy, blocks, label=f"greedy {round_}: +{block}={mode}"))
    return out


def configurations(strategies: str | Sequence[str], blocks: Sequence[str]) -> list[Configuration]:
    """The configurations of one or more static strategies, scratch first, without repeats.

    `greedy` is adaptive: its first round is listed here (scratch and every single-block
    change); later rounds come from `greedy_step` once results are known.

    Args:
        strategies: a strategy name, a comma-separated string or a list of names among
            `prefix`, `surgical`, `exhaustive`, `greedy`.
        blocks: the swept blocks, in computation order.

    Returns:
        A list of `Configuration`; a policy produced by two strategies appears once, with the
        first strategy's label.

    Raises:
        SweepError: an unknown strategy, no blocks, or repeated blocks.
    """
    names = _strategy_names(strategies)
    blocks = list(blocks)
    if not blocks:
        raise SweepError("Expected at least one block to sweep, received none.")
    if len(set(blocks)) != len(blocks):
        raise SweepError(f"Blocks must be unique, received {blocks}.")
    builders = {"prefix": prefix, "surgical": surgical, "exhaustive": exhaustive,
                "greedy": lambda b: [scratch(b)] + greedy_step(scratch(b), b, 1)}
    seen: dict[str, Configuration] = {}
    for name in names:
        for c in builders[name](blocks):
            seen.setdefault(c.key, c)
    return list(seen.values())


def parse_strategies(strategies: str | Sequence[str]) -> list[str]:
    """Validate strategy names; `"prefix,surgical"` -> `["prefix", "surgical"]`."""
    return _strategy_names(strategies)


def _strategy_names(strategies) -> list[str]:
    return strategy_names(strategies)


def _check_policy(policy: dict, blocks: Sequence[str]) -> None:
    unknown = [b for b in policy if b not in blocks]
    bad = {b: p for b, p in policy.items() if p not in POLICIES}
    if unknown or bad:
        raise SweepError(
            f"Invalid policy {policy}: blocks must be among {list(blocks)} and policies among "
            f"{list(POLICIES)}."
        )
