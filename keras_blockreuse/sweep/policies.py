"""Fine-tuning policies practitioners use: LP-FT, gradual unfreezing, per-block learning rates.

A block policy (`keras_blockreuse.sweep.space`) says which blocks are transferred, frozen or
tuned; a *training policy* says how the trainable blocks train over the epochs:

- `constant`: every trainable block from the first epoch at one learning rate;
- `lp-ft` (Kumar, Raghunathan, Jones, Ma, Liang, "Fine-Tuning can Distort Pretrained Features
  and Underperform Out-of-Distribution", ICLR 2022): a linear probe first (only the fresh
  blocks, or the head when every block is transferred, train for `k` epochs with the transferred
  body frozen), then every trainable block at a lower rate (`ft_factor` x);
- `gradual` (Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification",
  ACL 2018): the fresh blocks (or the head) first, then one more tuned block every `k` epochs,
  from the top;
- per-block learning-rate multipliers (the discriminative rates of the same paper):
  `with_block_learning_rates` scales each block's step inside the optimizer.

A policy is a list of `Stage`s, one per epoch, and the `BlockSchedule` callback applies it:
at the start of each epoch it sets the blocks' `trainable` flags and the optimizer's learning
rate, and rebuilds the train function when the flags change (Keras traces the trainable
variables into it). A configuration without a tuned block (scratch, all frozen) trains the same
under every policy: there is nothing to probe first or to unfreeze.

Example:

```python
policy = {"block_1": "tuned", "block_2": "tuned", "dense_1": "reinit", "dense_2": "reinit"}
stages = schedule("lp-ft", policy, epochs=10, learning_rate=1e-3, k=3)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=...)
model.fit(x, y, epochs=10, callbacks=[BlockSchedule(stages)])
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import keras

from keras_blockreuse.blocks import get_blocks
from keras_blockreuse.sweep.options import TRAINING_POLICIES, parse_block_lr
from keras_blockreuse.sweep.space import SweepError

__all__ = ["TRAINING_POLICIES", "BlockSchedule", "Stage", "parse_block_lr", "schedule",
           "trains_as_compiled", "training_callbacks", "with_block_learning_rates"]


@dataclasses.dataclass(frozen=True)
class Stage:
    """What holds during one epoch.

    Attributes:
        trainable: the blocks that train, in block order; every other block is frozen.
        learning_rate: the optimizer's learning rate.
    """

    trainable: tuple[str, ...]
    learning_rate: float


def schedule(
    name: str,
    policy: Mapping[str, str],
    epochs: int,
    learning_rate: float,
    k: int = 1,
    ft_factor: float = 0.1,
) -> list[Stage]:
    """The stages of a training policy for one block policy, one per epoch.

    Args:
        name: `"constant"`, `"lp-ft"` or `"gradual"`.
        policy: block -> `"reinit"`, `"frozen"` or `"tuned"`, every block in computation order
            (a `Configuration.policy`).
        epochs: epochs in all.
        learning_rate: the base rate.
        k: `lp-ft`: epochs of linear probing; `gradual`: epochs between two unfreezings.
        ft_factor: `lp-ft`: the fine-tuning rate is `ft_factor * learning_rate`.

    Returns:
        `epochs` stages. The first trains the *probe*: the `reinit` blocks, or the last block
        when every block is transferred (and not frozen). `lp-ft` trains every non-frozen block
        from epoch `k` at `ft_factor * learning_rate`; `gradual` adds the tuned blocks one at a
        time from the top, one every `k` epochs, at `learning_rate`. Without tuned blocks every
        policy is `constant`.

    Raises:
        SweepError: an unknown name or block policy, `k < 1`, `epochs < 1`, or a non-positive
            rate or factor.

    Example:

    >>> [s.trainable for s in schedule("gradual", {"a": "tuned", "b": "tuned", "c": "reinit"},
    ...                                 epochs=3, learning_rate=0.1, k=1)]
    [('c',), ('b', 'c'), ('a', 'b', 'c')]
    """
    if name not in TRAINING_POLICIES:
        raise SweepError(f"Unknown training policy {name!r}; expected one of "
                         f"{list(TRAINING_POLICIES)}.")
    bad = {b: p for b, p in policy.items() if p not in ("reinit", "frozen", "tuned")}
    if bad:
        raise SweepError(f"Block policies must be 'reinit', 'frozen' or 'tuned'; received {bad}.")
    if int(epochs) < 1 or int(k) < 1:
        raise SweepError(f"Expected epochs >= 1 and k >= 1; received epochs={epochs}, k={k}.")
    if not learning_rate > 0 or not ft_factor > 0:
        raise SweepError(f"Expected a positive learning rate and ft_factor; received "
                         f"learning_rate={learning_rate}, ft_factor={ft_factor}.")
    blocks = list(policy)
    trainable = [b for b in blocks if policy[b] != "frozen"]
    tuned = [b for b in blocks if policy[b] == "tuned"]
    lr = float(learning_rate)
    if name == "constant" or not tuned:
        return [Stage(tuple(trainable), lr)] * int(epochs)
    probe = [b for b in blocks if policy[b] == "reinit"] or [trainable[-1]]
    out = []
    for epoch in range(int(epochs)):
        if name == "lp-ft":
            stage = (Stage(tuple(probe), lr) if epoch < k
                     else Stage(tuple(trainable), lr * float(ft_factor)))
        else:
            waiting = [b for b in reversed(tuned) if b not in probe]
            unfrozen = set(probe) | set(waiting[: epoch // int(k)])
            stage = Stage(tuple(b for b in blocks if b in unfrozen), lr)
        out.append(stage)
    return out


def with_block_learning_rates(optimizer, model, multipliers: Mapping[str, float], blocks=None):
    """A copy of `optimizer` whose step for each block's variables is scaled by its multiplier.

    The discriminative learning rates of Howard and Ruder (2018): a variable of block `b` steps
    with `learning_rate * multipliers[b]` (1 for blocks not named). The rate itself is scaled,
    not the gradient, so it works for Adam, whose step does not depend on the gradient's scale.
    Weight decay, where the optimizer has it, still uses the unscaled rate. Implemented as a
    subclass of the optimizer's class overriding `update_step`; the copy is made from
    `optimizer.get_config()` and must be built (by `compile` and `fit`) on this model.

    Args:
        optimizer: a Keras optimizer instance (not yet used).
        model: the model whose blocks the multipliers name.
        multipliers: block name -> non-negative factor.
        blocks: the block rule (see `keras_blockreuse.blocks.get_blocks`).

    Returns:
        A new optimizer of a subclass of `type(optimizer)`.

    Raises:
        SweepError: an unknown block (the message lists the model's blocks) or a negative or
            non-finite multiplier.

    Example:

    >>> opt = with_block_learning_rates(keras.optimizers.Adam(1e-3), model, {"block_1": 0.1})
    >>> model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    """
    found = get_blocks(model, blocks)
    unknown = [b for b in multipliers if b not in found]
    bad = {b: m for b, m in multipliers.items()
           if not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0}
    if unknown or bad:
        raise SweepError(f"Block learning-rate multipliers must name blocks of the model "
                         f"{list(found)} with finite factors >= 0; unknown {unknown}, bad {bad}.")
    scale_of = {id(v): float(multipliers[name])
                for name, block in found.items() if name in multipliers
                for v in block.variables}
    base = type(optimizer)

    class BlockScaled(base):
        def build(self, variables):
            super().build(variables)
            self.block_scales = [scale_of.get(id(v), 1.0) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            scale = self.block_scales[self._get_variable_index(variable)]
            if scale != 1.0:
                learning_rate = learning_rate * scale
            return super().update_step(gradient, variable, learning_rate)

    BlockScaled.__name__ = BlockScaled.__qualname__ = f"BlockScaled{base.__name__}"
    return BlockScaled.from_config(optimizer.get_config())


class BlockSchedule(keras.callbacks.Callback):
    """Keras callback applying a list of `Stage`s: trainable blocks and learning rate per epoch.

    At the start of epoch `e` it applies `stages[e]` (the last stage once the list runs out):
    the blocks of the stage are trainable, every other block frozen, and the optimizer's learning
    rate set. When the trainable set changes it rebuilds the train function
    (`model.make_train_function(force=True)`: Keras traced the old set of trainable variables
    into it). At the end of training every block is as it was at the start.

    The optimizer must know every variable the schedule trains: the callback builds it (when
    not yet built) on the variables trainable when training starts, so every block of any stage
    must be trainable then (freeze only what the block policy freezes). Needs the TensorFlow backend when the trainable set
    changes (JAX's `fit` fixes the trainable variables for its whole run).

    Attributes:
        applied: one dict per epoch begun: `epoch`, `trainable` (tuple of blocks) and
            `learning_rate` (the optimizer's, read back as a float).

    Example:

    >>> model.fit(x, y, epochs=6, callbacks=[BlockSchedule(schedule("gradual", policy, 6,
    ...                                                                1e-3, k=2))])
    """

    def __init__(self, stages: Sequence[Stage], blocks=None):
        super().__init__()
        if not stages:
            raise SweepError("BlockSchedule needs at least one stage; received none.")
        self.stages = list(stages)
        self.rule = blocks
        self.applied: list[dict] = []
        self._blocks: dict = {}
        self._initial: dict = {}
        self._traced: tuple = ()

    def on_train_begin(self, logs=None):
        found = get_blocks(self.model, self.rule)
        named = sorted({b for s in self.stages for b in s.trainable})
        unknown = [b for b in named if b not in found]
        if unknown:
            raise SweepError(f"The schedule names blocks {unknown} the model lacks; it has "
                             f"{list(found)}.")
        frozen_now = [b for b in named if not found[b].trainable]
        if frozen_now:
            raise SweepError(f"Blocks {frozen_now} train in some stage but were frozen when "
                             "training started, so the optimizer does not know their variables. "
                             "Leave them trainable before compile/fit; the schedule freezes them.")
        if (len({s.trainable for s in self.stages}) > 1
                and keras.backend.backend() != "tensorflow"):
            raise SweepError("A schedule that changes the trainable blocks needs the TensorFlow "
                             f"backend; received {keras.backend.backend()!r}.")
        if not self.model.optimizer.built:
            # Keras builds it lazily on the first step's trainable variables (stage 0's only).
            self.model.optimizer.build(self.model.trainable_variables)
        self._blocks = found
        self._initial = {name: block.trainable for name, block in found.items()}
        self._traced = tuple(name for name, on in self._initial.items() if on)

    def on_epoch_begin(self, epoch, logs=None):
        stage = self.stages[min(epoch, len(self.stages) - 1)]
        if stage.trainable != self._traced:
            for name, block in self._blocks.items():
                for layer in block.layers:
                    layer.trainable = name in stage.trainable
            self.model.make_train_function(force=True)
            self._traced = stage.trainable
        self.model.optimizer.learning_rate = stage.learning_rate
        self.applied.append({"epoch": epoch, "trainable": stage.trainable,
                             "learning_rate": float(self.model.optimizer.learning_rate)})

    def on_train_end(self, logs=None):
        for name, block in self._blocks.items():
            for layer in block.layers:
                layer.trainable = self._initial[name]
        if self._traced != tuple(name for name, on in self._initial.items() if on):
            self.model.make_train_function(force=True)  # a later fit traces the restored set


def trains_as_compiled(policy: Mapping[str, str], config: Mapping) -> bool:
    """Whether `training_callbacks` would leave a compiled model as it is: no block learning
    rates and one stage for every epoch (a model traced for such a trial can train another).
    Raises what `training_callbacks` raises for an invalid policy."""
    return not parse_block_lr(config.get("block_lr")) and _stages(policy, config) is None


def _stages(policy: Mapping[str, str], config: Mapping) -> list | None:
    """The trial's `schedule` from `config`, or None when every epoch has the same stage."""
    stages = schedule(config.get("training_policy") or "constant", policy, int(config["epochs"]),
                      float(config["lr"]), k=int(config.get("policy_epochs") or 1),
                      ft_factor=float(config.get("ft_factor") or 0.1))
    return None if all(stage == stages[0] for stage in stages) else stages


def training_callbacks(model, policy: Mapping[str, str], config: Mapping) -> list:
    """Apply a trial's training policy to a compiled model; return the callbacks for `fit`.

    Reads from `config`: `training_policy` (default `"constant"`), `policy_epochs` (the `k` of
    `schedule`, default 1), `ft_factor` (default 0.1), `block_lr` (multipliers, see
    `parse_block_lr`), `epochs` and `lr`. With multipliers, `model.optimizer` is replaced by
    `with_block_learning_rates` of it (call before the first step).

    Raises:
        SweepError: an invalid policy, multipliers naming unknown blocks, or a compiled
            optimizer that is wrapped for loss scaling (mixed precision).
    """
    multipliers = parse_block_lr(config.get("block_lr"))
    if multipliers:
        if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
            raise SweepError("Block learning rates do not support a loss-scaled (mixed "
                             "precision) optimizer.")
        model.optimizer = with_block_learning_rates(model.optimizer, model, multipliers)
    stages = _stages(policy, config)
    # (None: nothing changes over the epochs, compile already set it all)
    return [] if stages is None else [BlockSchedule(stages)]
