"""Named blocks: ordered groups of a model's weighted layers.

A block rule turns a model into an ordered mapping `block name -> Block`, in the order in
which the model computes its layers. The unit of grouping is a top-level layer of the model:
a layer that holds sub-layers (a nested model, a composite layer) belongs to one block as a
whole. keras-hub backbones and tasks are grouped by stage or transformer layer inside the
backbone (`keras_blockreuse.hub`).

Example:

```python
model = keras.Sequential([
    keras.Input((32, 32, 3)),
    keras.layers.Conv2D(32, 3, name="block_1_0"),
    keras.layers.Conv2D(32, 3, name="block_1_1"),
    keras.layers.Flatten(),
    keras.layers.Dense(10, name="dense_1"),
])
list(get_blocks(model))  # ["block_1", "dense_1"]
```
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Union

import numpy as np

from keras_blockreuse.errors import BlockMismatchError

BlockRule = Union[None, str, Mapping[str, Sequence[str]], Callable[[Any], Union[str, None]]]  # noqa: UP007

# `block_1_0` -> `block_1`: a prefix that itself ends in a digit, then `_<index>`.
_DEFAULT_PATTERN = re.compile(r"^(?P<block>.*\d)_\d+$")


@dataclasses.dataclass(frozen=True)
class Block:
    """An ordered group of a model's weighted layers.

    Attributes:
        name: the block's name.
        layers: the model's top-level layers in the block, in computation order (for a
            keras-hub model, layers inside its backbone: see `keras_blockreuse.hub`).
    """

    name: str
    layers: tuple

    @property
    def variables(self) -> list:
        """Every variable of the block, trainable and non-trainable, without duplicates."""
        seen, out = set(), []
        for layer in self.layers:
            for v in layer.weights:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        return out

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(v.shape, dtype=np.int64) for v in self.variables))

    @property
    def nbytes(self) -> int:
        return int(
            sum(
                np.prod(v.shape, dtype=np.int64) * np.dtype(_numpy_dtype(v.dtype)).itemsize
                for v in self.variables
            )
        )

    @property
    def trainable(self) -> bool:
        """True when every layer of the block is trainable."""
        return all(layer.trainable for layer in self.layers)

    def __repr__(self) -> str:
        names = ", ".join(layer.name for layer in self.layers)
        return f"Block(name={self.name!r}, layers=[{names}], num_params={self.num_params})"


def _numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def weighted_layers(model) -> list:
    """The model's top-level layers that hold variables, in computation order."""
    return [layer for layer in _top_level_layers(model) if layer.weights]


def model_own_variables(model) -> list:
    """The model's variables that none of its layers holds: those a subclassed model creates
    itself (`self.add_weight` in its `build`, a learned temperature or class token). No block
    holds them, so `save_blocks` does not save them and `load_blocks` does not load them."""
    held = {id(v) for layer in _top_level_layers(model) for v in layer.weights}
    return [v for v in model.weights if id(v) not in held]


def _top_level_layers(model) -> list:
    # `model.layers` is in topological order for Functional and Sequential models.
    seen, out = set(), []
    for layer in model.layers:
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def resolve_rule(
    blocks: BlockRule,
    layer_names: Sequence[str] = (),
    weighted_names: Sequence[str] | None = None,
) -> Callable[[Any], str]:
    """Turns any accepted form of `blocks=` into a function `layer -> block name`.

    Args:
        blocks: `None`, a regular expression (one group or a group named `block`), a preset name
            (see `keras_blockreuse.presets`), a dict `{block: [layer names or globs]}`, or a
            callable `layer -> block name | None`.
        layer_names: the model's top-level layer names in computation order; with
            `blocks=None` they select a keras.applications family's preset when they follow
            one, and presets use them to place layers by position.
        weighted_names: the names of the layers that hold variables (default all).

    Returns:
        A function from a layer to its block name. A layer the rule does not claim is a block
        of its own, named after the layer; the function's `claims(layer)` gives the rule's
        own answer (None for such a layer), for `refuse_unclaimed`.

    Raises:
        ValueError: `blocks=None` on a model whose names are automatic (`conv2d_17`), which
            would not name the same layers in another model; the message suggests a rule.
    """
    claims = _claims(blocks, layer_names, weighted_names)

    def rule(layer):
        return claims(layer) or layer.name

    rule.claims = claims
    return rule


def _claims(blocks: BlockRule, layer_names: Sequence[str],
            weighted_names: Sequence[str] | None) -> Callable[[Any], str | None]:
    """The rule as a function `layer -> block name | None` (None: the rule does not claim it)."""
    if blocks is None:
        preset = _detect_preset(layer_names)
        if preset is not None:
            return _preset_rule(preset, layer_names)
        _refuse_automatic_names(layer_names, weighted_names)
        return _pattern_rule(_DEFAULT_PATTERN)
    if isinstance(blocks, str):
        if blocks in _presets():
            return _preset_rule(blocks, layer_names)
        return _pattern_rule(_compile_pattern(blocks))
    if isinstance(blocks, re.Pattern):
        return _pattern_rule(_check_groups(blocks))
    if isinstance(blocks, Mapping):
        return _mapping_rule(blocks)
    if callable(blocks):
        return _callable_rule(blocks)
    raise TypeError(
        "`blocks` must be None, a regular expression, a preset name, a dict "
        "{block: [layer names or globs]} or a callable layer -> block name. "
        f"Received: blocks={blocks!r} of type {type(blocks).__name__}"
    )


def refuse_unclaimed(blocks: BlockRule, rule, layers: Sequence, where: str,
                     nested: Callable[[], Sequence[str]] = tuple) -> None:
    """Refuses a block rule the user gave that claims none of the layers it groups.

    Every layer would then be a block of its own, as with no rule at all, and the rule would
    be ignored unsaid (a pattern written for layers inside a nested model, which a rule never
    reaches: the nested model belongs to one block as a whole).

    Args:
        blocks: the rule as given; `None` (the default grouping) is never refused.
        rule: `resolve_rule(blocks, ...)`.
        layers: the weighted top-level layers (objects with `name` and `class_name` or a
            class), in order.
        where: the model or source, as errors name it.
        nested: gives the names of those layers that hold layers of their own (nested
            models); called only for a refusal (a layer's own code may fail on a lookup).

    Raises:
        BlockMismatchError: no layer is claimed.
    """
    from keras_blockreuse.sources.base import PathGrouping  # (made by load_blocks, not given)

    if (blocks is None or isinstance(blocks, PathGrouping) or not layers
            or any(rule.claims(layer) for layer in layers)):
        return
    shown = blocks.pattern if isinstance(blocks, re.Pattern) else blocks
    shown = f"'{shown}'" if isinstance(shown, str) else repr(shown)  # (no doubled backslashes)
    names = [layer.name for layer in layers]
    listed = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    inside = [name for name in names if name in nested()]
    hint = (f" A rule is matched against top-level layers only: {', '.join(inside)} "
            f"{'is a nested model' if len(inside) == 1 else 'are nested models'}, whose layers "
            "it does not reach (a nested model belongs to one block as a whole)."
            if inside else "")
    raise BlockMismatchError(
        f"The block rule {shown} places none of the weighted top-level layers of {where} "
        f"({listed}): each would be a block of its own, as if no rule were given.{hint} "
        "Give a rule that names some of these layers, or none for the default grouping."
    )


def get_blocks(model, blocks: BlockRule = None) -> dict[str, Block]:
    """Groups a model's weighted layers into named blocks.

    Args:
        model: a built `keras.Model`.
        blocks: the block rule (see `resolve_rule`). For a `BlockModel`, `None` means the
            model's own rule.

    Returns:
        An ordered dict `block name -> Block`, blocks in the order the model computes them.

    Example:

    >>> blocks = get_blocks(model)
    >>> {name: b.num_params for name, b in blocks.items()}
    """
    if blocks is None and getattr(model, "_block_rule", None) is not None:
        blocks = model._block_rule
    if blocks is None:
        hub = _hub_blocks(model)
        if hub is not None:
            return hub
    top = _top_level_layers(model)
    layers = [layer for layer in top if layer.weights]  # weighted_layers(model)
    names = [layer.name for layer in top]
    rule = resolve_rule(blocks, names, [layer.name for layer in layers])
    refuse_unclaimed(blocks, rule, layers, f"model {model.name!r}",
                     lambda: [layer.name for layer in layers if hasattr(layer, "layers")])
    grouped: dict[str, list] = {}
    for layer in layers:
        name = rule(layer)
        grouped.setdefault(name, []).append(layer)
    return {name: Block(name, tuple(group)) for name, group in grouped.items()}


def warn_if_compiled(model, names: Sequence[str], what: str) -> None:
    """Warns, once per call, that a model trained since it was compiled must be compiled
    again after a `trainable` change, saying what happens otherwise on this backend.

    A compiled model not trained yet needs nothing: its first `fit()` builds the optimizer and
    the training step for the trainable weights of that moment (measured on TensorFlow and
    JAX, Keras 3.15). Once trained (the optimizer built, or the training step made; under
    JAX `evaluate()` builds the optimizer too), the
    change reaches training only through `model.compile()`: under JAX the next `fit()` fails
    (`ValueError: Argument optimizer_variables must be a list of tensors corresponding 1:1
    ...`: the optimizer was built for the old trainable weights) after Keras's JAX trainer has
    detached every variable's value, so the model's weights are lost; under TensorFlow the training
    step traced with the old trainable weights keeps updating exactly those (a frozen block
    keeps training, an unfrozen one stays unchanged) unless something retraces it.
    """
    if not names or not getattr(model, "compiled", False):
        return
    optimizer = getattr(model, "optimizer", None)
    trained = (getattr(model, "train_function", None) is not None
               or bool(getattr(optimizer, "built", False)))
    if not trained:
        return
    import warnings

    import keras

    backend = keras.backend.backend()
    since = "was trained" if backend != "jax" else (
        "was trained or evaluated (JAX's `evaluate()` builds the optimizer too)")
    if backend == "jax":
        effect = ("under JAX, until you do, the next `fit()` fails (its optimizer was built "
                  "for the weights trainable then) and leaves every variable of the model "
                  "without a value (Keras's JAX trainer detaches them for the step), the loaded "
                  "weights lost with the others")
    else:
        effect = (f"until then `fit()` ({backend}) may keep training the weights that were "
                  "trainable then, with its training step traced for them, "
                  + ("the frozen blocks included" if what == "frozen"
                     else "leaving the unfrozen blocks unchanged"))
    warnings.warn(
        f"Blocks {list(names)} of model {model.name!r} were {what} after the model {since}. "
        "Call `model.compile()` again for the change to take effect in training; "
        f"{effect}.",
        stacklevel=3,
    )


def select(
    names: Sequence[str], patterns: Sequence[str] | str | None, what: str, context: str = ""
) -> list[str]:
    """The names matching any of `patterns` (exact names or globs), in the order of `names`.

    Raises:
        BlockMismatchError: a pattern matches nothing; the message lists what exists.
    """
    if patterns is None:
        return list(names)
    if isinstance(patterns, str):
        patterns = [patterns]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unknown:
        raise BlockMismatchError(
            f"Unknown block name(s) {unknown} in {what}. "
            + (context or f"Available: {list(names)}")
        )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def serializable_rule(blocks: BlockRule, model) -> Any:
    """A JSON-serialisable form of a rule: the rule itself, or the grouping it produces."""
    if blocks is None or isinstance(blocks, str):
        return blocks
    if isinstance(blocks, re.Pattern):
        return blocks.pattern
    if isinstance(blocks, Mapping):
        return {str(k): [str(p) for p in v] for k, v in blocks.items()}
    return {
        name: [layer.name for layer in block.layers]
        for name, block in get_blocks(model, blocks).items()
    }


def iter_units(
    layer, prefix: str = "", name: Callable[[Any], str] | None = None
) -> Iterator[tuple[str, Any]]:
    """Yields `(path, layer)` for a layer and every sub-layer, depth first, without repeats.

    Paths are relative to the top-level layer and start with its name: `"block_1_0"`, or
    `"features"`, `"features/conv"` for a nested model named `features`. `name(layer)`
    replaces `layer.name` in paths when given.
    """
    seen: set[int] = set()
    name_of = name or (lambda obj: obj.name)

    def walk(obj, path):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        yield path, obj
        for child in obj._flatten_layers(include_self=False, recursive=False):
            yield from walk(child, f"{path}/{name_of(child)}")

    yield from walk(layer, prefix + name_of(layer))


# --- rule forms -------------------------------------------------------------------------


def _compile_pattern(text: str) -> re.Pattern:
    try:
        pattern = re.compile(text)
    except re.error as e:
        known = sorted(_presets())
        raise ValueError(
            f"`blocks={text!r}` is neither a preset name ({known}) nor a valid regular "
            f"expression: {e}"
        ) from None
    if not pattern.groups and re.fullmatch(r"[\w-]+", text):  # a word: meant as a preset
        raise ValueError(
            f"`blocks={text!r}` is not a preset name: the presets are {sorted(_presets())} "
            "(keras-hub models are grouped by their own presets without a rule); as a "
            "regular expression it needs a group that captures the block name, such as "
            "r'^(block\\d+)_'.")
    return _check_groups(pattern)


def _check_groups(pattern: re.Pattern) -> re.Pattern:
    if "block" not in pattern.groupindex and pattern.groups != 1:
        raise ValueError(
            "A block regular expression needs exactly one group, or a group named `block`, "
            f"that captures the block name. Received: {pattern.pattern!r} with "
            f"{pattern.groups} groups. Example: r'^(block\\d+)_'"
        )
    return pattern


def _pattern_rule(pattern: re.Pattern) -> Callable[[Any], str]:
    group = "block" if "block" in pattern.groupindex else 1

    def rule(layer):
        match = pattern.search(layer.name)
        if match and match.group(group):
            return match.group(group)
        return None

    return rule


def _mapping_rule(mapping: Mapping[str, Sequence[str]]) -> Callable[[Any], str]:
    for block, patterns in mapping.items():
        if isinstance(patterns, str):
            raise TypeError(
                f"`blocks[{block!r}]` must be a list of layer names or globs. "
                f"Received the string {patterns!r}; did you mean [{patterns!r}]?"
            )

    def rule(layer):
        owners = [
            block
            for block, patterns in mapping.items()
            if any(layer.name == p or fnmatch.fnmatchcase(layer.name, p) for p in patterns)
        ]
        if len(owners) > 1:
            raise BlockMismatchError(
                f"Layer {layer.name!r} is claimed by more than one block: {owners}. "
                "Each layer must belong to exactly one block."
            )
        return owners[0] if owners else None

    return rule


def _callable_rule(fn: Callable[[Any], str | None]) -> Callable[[Any], str]:
    def rule(layer):
        name = fn(layer)
        if name is None:
            return None
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"A block rule must return a non-empty block name or None. Received {name!r} "
                f"for layer {layer.name!r}."
            )
        return name

    return rule


def _presets() -> dict:
    try:
        from keras_blockreuse.presets import PRESETS
    except ImportError:
        return {}
    return PRESETS


def _detect_preset(layer_names: Sequence[str]) -> str | None:
    if not layer_names:
        return None
    try:
        from keras_blockreuse.presets import detect_preset
    except ImportError:
        return None
    return detect_preset(list(layer_names))


def _hub_blocks(model) -> dict[str, Block] | None:
    """The keras-hub preset's blocks of a keras-hub backbone or task (see `keras_blockreuse.hub`)."""
    if not any(cls.__module__.startswith("keras_hub.") for cls in type(model).__mro__):
        return None
    from keras_blockreuse.hub import hub_blocks

    return hub_blocks(model)


def _preset_rule(name: str, layer_names: Sequence[str]) -> Callable[[Any], str]:
    from keras_blockreuse.presets import assign_blocks

    assigned = assign_blocks(name, list(layer_names))

    def rule(layer):
        return assigned.get(layer.name) or _presets()[name](layer.name)

    return rule


def _refuse_automatic_names(layer_names: Sequence[str], weighted_names) -> None:
    try:
        from keras_blockreuse.presets import explain_unnamed
    except ImportError:
        return
    message = explain_unnamed(list(layer_names), weighted=weighted_names)
    if message is not None:
        raise ValueError(message)
