"""`load_blocks`: load any subset of a source's blocks into a model, by name, all or nothing.

A load runs one pass for every source: **select** the source blocks (`only`, `exclude`),
**map** them onto the model's blocks (`rename`) and **pair** each block's layers, **validate**
every selected variable (class, presence, shape, dtype) and read and verify the values
(checksums; casts that would overflow), then **assign** all of them — or, if anything failed,
none — **freeze** if asked, and **report**.

Reading: wherever the source allows it (block files, Keras `.weights.h5` / `.weights.json`,
`.keras` archives, legacy `.h5`), values are read in two passes, so a full load needs memory
for one variable, not the model. Pass 1 reads every selected value once and verifies it — a
block file against its checksums; a Keras file, which carries none, against its layout (shape,
dtype), keeping a 128-bit hash (xxh3_128) per value — and checks its cast to the model's
dtype, keeping no value: a failure there changes no weight. Pass 2 reads each value again,
checks it is the same (a block's checksum after its last value; a Keras file's value against
its hash, before it is used) and assigns it at once. The bytes assigned are the bytes
verified unless the file is rewritten in place during the load; that is raised, naming what
was already loaded. Loads that adapt values (`on_mismatch="adapt"`) and sources without the
two passes (a live model, a keras-hub preset) read and hold every selected value first.

Pairing: a model layer takes a source layer's values only when the pairing is justified —

1. `name`: the same name path (`block_1_0`, `features/conv`), or, where every source layer of
   the block sits at one prefix, the same path below it, one to one;
2. `path`: the same structural path in Keras's own saving walk (`layers/conv2d_1`), known for
   Keras weights files and `.keras` archives (`sources.structure`);
3. `order`: the same position in computation order, where the source knows its order (block
   files, live models, rebuilt `.keras` structures, legacy files) — never a file's storage
   order.

Each block takes the first of these that pairs all of its model layers. Automatic names
(`dense_1`) and a list's keys in a Keras path (`items/dense_1`) follow creation order and
position, so they are weak: where they disagree the layers are refused, and where the model
and the source hold another number of blocks of one class with automatic names, those blocks
are refused until the user names them (`only=` without a glob, `rename=`). A top-level name
that one side also holds inside a nested model, at more places than the other side, is refused
where the nested model's layers match the other side's top level as well as the two top levels
match (a backbone's file into its task, its layer named like the task's head). What no source can
check (same-class sub-layers of a custom layer paired by automatic names or order alone) is
said in `report.caveats` and a warning. Pairs not by name are
checked for class (the source's class, or a subclass of it) and for every variable's shape
before anything is assigned. Layers left unpaired are a mismatch: `BlockMismatchError` lists
them side by side, or `on_mismatch="skip"` leaves them and reports them.

Example:

```python
report = load_blocks(detector, "classifier.blocks.h5", only=["block_1", "block_2"])
print(report)
```
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_blockreuse.blocks import (
    Block,
    BlockRule,
    get_blocks,
    iter_units,
    model_own_variables,
    select,
    warn_if_compiled,
    weighted_layers,
)
from keras_blockreuse.errors import BlockFileError, BlockMismatchError
from keras_blockreuse.hub import hub_file_grouping, is_hub_model, is_hub_object
from keras_blockreuse.presets import numbered_from_zero
from keras_blockreuse.report import LoadReport, Mismatch
from keras_blockreuse.sources import (
    LayerInfo,
    Source,
    VariableInfo,
    numpy_dtype,
    open_source,
)
from keras_blockreuse.sources.live_model import to_numpy, unit_values_of
from keras_blockreuse.sources.structure import (
    automatic_name,
    counted_from_zero,
    snake_case,
    split_counter,
    strip_counter,
)

ON_MISMATCH = ("error", "skip", "adapt")
AUTOMATIC_VARIABLE = re.compile(r"variable(_[0-9]+)?")
"""Keras's name for a variable made without `name=` (`add_weight(shape=...)`): `variable`,
then `variable_1`, ... counted per session, in creation order, so it names no variable."""

ROLE_NAMES = frozenset({"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"})
"""Variable names that mean the same in Keras 2 and 3: a variable paired by position with one
of another of these names (a `BatchNormalization(center=False)`'s `gamma` for a
`scale=False` one's `beta`) is a mismatch, from any source that records names (legacy `.h5`
too, whose other names Keras 2 may spell otherwise: `depthwise_kernel` for `kernel`)."""
HOLD_BYTES = 4 << 20
"""Selected blocks of at most this many bytes are read once, verified and held until they
are assigned; larger selections from a source with two passes (block files, Keras files) are
verified in a first pass and assigned as a second pass reads them (memory for one variable).
A second pass costs a one-block load a third of its time (benchmarks/RESULTS.md); holding
4 MiB costs less memory than Keras's own loading."""
BLOCK_FILE = "keras-blockreuse block file"
"""`src.info["format"]` of a `.blocks.h5` source, which keeps its own blocks."""


@dataclasses.dataclass
class _LayerPlan:
    """One target layer and the source layer it takes its values from."""

    target_path: str
    unit: Any
    current: dict  # key -> the target's current value (a variable or tensor)
    source: LayerInfo
    load: dict = dataclasses.field(default_factory=dict)  # target key -> transform (None: as is)
    keys: dict = dataclasses.field(default_factory=dict)  # target key -> source key


@dataclasses.dataclass
class _BlockPlan:
    target: str
    source: str
    layers: list[_LayerPlan]
    pairing: str  # "name", "path" or "order"
    unpaired_source: list[str] = dataclasses.field(default_factory=list)
    unpaired_target: list[str] = dataclasses.field(default_factory=list)
    # model layer -> (source layer, where each side places it, whether the names at odds are
    # top-level ones): automatic names that pair them, contradicted by their places in
    # Keras's saving walk or in computation order. rename= pairs blocks, so it can mend top-
    # level names only: inside a block (a nested model's `dense_1`) it cannot.
    contradicted: dict[str, tuple[str, str, bool]] = dataclasses.field(default_factory=dict)
    # model layer -> why its name cannot tell which source layer it is (`_ambiguous_names`)
    ambiguous: dict[str, str] = dataclasses.field(default_factory=dict)
    caveat: str = ""  # same-class layers paired by automatic names alone (see LoadReport)
    block: Block | None = None  # the model's block


def load_blocks(
    model,
    source,
    only: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    rename: Mapping[str, str] | None = None,
    on_mismatch: str = "error",
    freeze: bool = False,
    blocks: BlockRule = None,
    source_blocks: BlockRule = None,
    **source_options,
) -> LoadReport:
    """Loads blocks from a source into a model, all or nothing, and reports what it did.

    Args:
        model: a built `keras.Model` (a `BlockModel` uses its own block rule).
        source: a `.blocks.h5` path, a live `keras.Model`, or a Keras weights file
            (`.weights.h5`, `.weights.json`, `.keras`, legacy `.h5`).
        only: source block names or globs to load; default every source block the model has.
            `only=[]` loads nothing, deliberately.
        exclude: source block names or globs not to load.
        rename: `{source block: model block}` for blocks whose names differ.
        on_mismatch: `"error"` (raise, listing every problem, before changing anything),
            `"skip"` (leave the variables and layers that do not fit or pair as they are, and
            report them) or `"adapt"` (adapt known cases, such as a first convolution's input
            channels).
        freeze: set `trainable=False` on the loaded blocks' layers; a block loaded only partly
            (`on_mismatch="skip"`) stays trainable (a warning says so). A compiled model must
            be compiled again for this to take effect in training (a warning says so).
        blocks: the model's block rule (for models that are not a `BlockModel`).
        source_blocks: the block rule for a source without blocks of its own; default the
            source's own rule, else the model's. A block file keeps its own blocks, so
            passing it with one raises `TypeError`.
        **source_options: options for the source's reader (such as `source_model=`).

    Returns:
        A `LoadReport`; `report.ok` is False when any selected layer or variable was left,
        or when no block was named (`only=`, `rename=`) and both the model and the source hold
        blocks the other lacks (`report.unpaired`: a renamed or damaged name looks like this).

    Raises:
        BlockMismatchError: unknown block names, layers that cannot be paired, variables that
            do not fit or would overflow the model's dtype (with `on_mismatch="error"`), or a
            load that would assign nothing. No weight of the model has changed.
        BlockFileError: the source file is unreadable or corrupt. No weight has changed.
        TypeError: `source_blocks=` with a block file, or a reader option that does not apply
            to the source. No weight has changed.

    Example:

    >>> report = load_blocks(new_model, "blocks_010.blocks.h5", only=["block_1", "block_2"])
    >>> report.ok
    True
    """
    start = time.perf_counter()
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"`on_mismatch` must be one of {ON_MISMATCH}. Received: {on_mismatch!r}")
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built, so it has no weights to load into. "
            "Build it (call it on data or construct it from a keras.Input) first."
        )
    target_rule = blocks if blocks is not None else getattr(model, "_block_rule", None)
    target_blocks = get_blocks(model, target_rule)
    structure = _target_structure(model)
    regrouped = source_blocks
    if source_blocks is None and not hasattr(source, "_block_rule"):
        source_blocks = target_rule if target_rule is not None else _top_level_grouping(
            model, target_blocks, source, structure)
    nothing_asked = only is not None and not isinstance(only, str) and len(only) == 0
    target_paths = _target_paths(structure)
    places = _TargetPlaces(model)
    with open_source(source, source_blocks, **source_options) as src:
        if regrouped is not None and src.own_blocks:
            raise TypeError(
                f"source_blocks= groups the layers of a source without blocks of its own; "
                f"{src.description} keeps the blocks it was saved with, {src.block_names()}, "
                f"so it would be ignored. Received: source_blocks={regrouped!r}. Select "
                "source blocks with only= / exclude=, and pair them with rename=.")
        plans, report = _plan(src, target_blocks, only, exclude, rename, target_paths, places)
        reconfigured = _reconfigured(plans, src)
        unrecorded = _unrecorded(plans, src)  # (before a rebuild names them from today's code)
        if (any(p.unpaired_source or p.unpaired_target for p in plans) or reconfigured
                or _miscounted(plans)) and _rebuilt(src):
            plans, report = _plan(src, target_blocks, only, exclude, rename, target_paths,
                                  places)
        elif reconfigured:
            _say_positional(reconfigured, report)
        _validate(plans, report, on_mismatch, src)
        _say_unrecorded(unrecorded, plans, report, src)
        _say_custom_ordered(plans, report, unrecorded)
        if not nothing_asked:
            _refuse_empty(plans, report, src, model, target_blocks, target_paths)
        _say_adapted_inside(report, target_blocks)
        overflows: list = []
        rounded: list = []
        check = _cast_check(plans, overflows, rounded)
        selected = [plan.source for plan in plans if any(layer.load for layer in plan.layers)]
        own = {(plan.source, layer.source.path) for plan in plans for layer in plan.layers
               if layer.load and not _loads_directly(layer.unit, layer.current)}
        # A layer with its own `load_own_variables` (custom, LoRA, quantized) may fail on its
        # values, which no check before it can know: its selection is held, not streamed, so
        # that what was assigned before the failure can be put back.
        streaming = not own and _streams(src, plans) and _nbytes(src, plans) > HOLD_BYTES
        if streaming:
            # Pass 1 verifies every selected value (checksums, or hashes kept for pass 2) and
            # checks its cast, keeping no value; pass 2 reads them again and assigns each one
            # as it arrives: memory for one variable, not the blocks.
            src.verify(selected, check=check if _casts(plans) else None)
        else:  # adaptation, a source without two passes, a few MiB, or own loading: held
            values = {name: src.read_block(name) for name in selected}
            for name, layers in values.items():
                for path, arrays in layers.items():
                    for key, array in arrays.items():
                        check(name, path, key, array)
        _refuse_overflows(overflows, plans, report, on_mismatch)
        _say_rounded(rounded, report)
        if not nothing_asked:
            _refuse_empty(plans, report, src, model, target_blocks, target_paths)
        if streaming:
            with _interrupts_held():
                report.variables_loaded = _assign_streaming(plans, src)
        report.bytes_read = src.bytes_read
    if not streaming:
        with _interrupts_held():
            report.variables_loaded = _assign(plans, values, own)
    loading = {p.target: p.source for p in plans if any(layer.load for layer in p.layers)}
    report.loaded = {name: loading[name] for name in target_blocks if name in loading}
    report.not_loaded = [p.target for p in plans if p.target not in loading]
    report.untouched = [name for name in target_blocks if name not in report.loaded]
    if freeze and report.loaded:
        partly = [name for name in report.loaded if any(m.block == name for m in report.skipped)]
        for name in report.loaded:
            if name not in partly:
                for layer in target_blocks[name].layers:
                    layer.trainable = False
                report.frozen.append(name)
        if partly:  # their skipped layers keep the model's values, which must still train
            warnings.warn(
                f"freeze=True left blocks {partly} trainable: they were loaded only partly "
                "(on_mismatch='skip'), and their skipped layers still need training. Freeze "
                "them with freeze_blocks() if that is what you want.", stacklevel=2)
        warn_if_compiled(model, report.frozen, "frozen")
    if only is None and not exclude:  # (a subset asked for leaves them by design)
        _say_own_variables(model, report)
    report.seconds = time.perf_counter() - start
    return report


def _say_own_variables(model, report: LoadReport) -> None:
    """The caveat for a model's own variables (`model_own_variables`): no block holds them,
    so a load of every block that loaded something did not load them."""
    own = [v.path for v in model_own_variables(model)]
    if own and report.loaded:
        _say(report, (
            f"the model's own variables {own} (created by model {model.name!r} itself, not "
            "by one of its layers) belong to no block: they were not loaded and keep their "
            "values (save_blocks does not save them either; Keras's load_weights loads them "
            "from a .weights.h5 or .keras file)."))


def _top_level_grouping(model, target_blocks: dict[str, Block], source,
                        structure: Callable[[], list]) -> dict | None:
    """The grouping of a Keras file saved from a keras-hub model, its task or its backbone:
    by the model's own blocks (`embeddings`: the token, position and segment embeddings; a
    task's stages inside its backbone), so that such a file pairs block by block
    (`hub.hub_file_grouping`); None for another model (the source's own rule).

    A keras-hub model or preset directory as the source is grouped by its own keras-hub
    preset, which reaches inside a task's backbone: a classifier's stages pair by name with
    a bare backbone's, where top-level names would see one layer, the backbone.

    `structure`: the model's `keras_structure`, walked only where needed."""
    if not is_hub_object(model):
        return None
    # (a folder is a keras-hub preset directory among the built-in sources; its reader is
    # not imported here, so readers registered by users keep their precedence)
    if is_hub_model(source) or (isinstance(source, (str, os.PathLike))
                                and os.path.isdir(source)):
        return None
    return hub_file_grouping(model, target_blocks, structure)


def _source_paths(src: Source) -> Callable[[], set[str]]:
    """A function giving every Keras path of the source and every prefix of one, computed
    once (it describes every block: only a name pair that paths may contradict asks)."""
    cache: list[set[str]] = []

    def paths() -> set[str]:
        if not cache:
            found = set()
            for name in src.block_names():
                for layer in src.block_layers(name):
                    steps = (layer.keras_path or "").split("/")
                    found.update("/".join(steps[:i]) for i in range(1, len(steps) + 1))
            found.discard("")
            cache.append(found)
        return cache[0]

    return paths


def _rebuilt(src: Source) -> bool:
    """Lets a source that can rebuild its structure (a Keras weights file with `source_model=`
    or a `.keras` config) do so, once: its layers then carry their computation order. True
    when that changed them; False when there is none (a config that cannot be rebuilt: the
    unpaired layers are reported as such). A `source_model=` that does not fit the file
    raises `BlockFileError`."""
    rebuild = getattr(src, "rebuild_structure", None)
    return bool(rebuild()) if rebuild is not None else False


def _reconfigured(plans: list[_BlockPlan], src: Source) -> dict[str, list[str]]:
    """`{model layer path: config keys}` for paired layers whose variables the source knows
    by position only and positions may swap (`_may_swap`), whose config the source records (a
    `.keras` archive, or the `source_model=` of a `.weights.h5`) and differs from the model's
    in those keys. A config decides which variables a layer holds
    (`BatchNormalization(center=False)` holds `gamma`, one with `scale=False` holds `beta`,
    of the same shape), so such positions may hold other variables: the source's structure is
    then rebuilt, which names them."""
    out: dict[str, list[str]] = {}
    for plan in plans:
        for layer in plan.layers:
            if not _may_swap(layer):  # first: a `source_model=` may be built for a config
                continue
            stored = src.layer_config(layer.source.path)
            if not stored or stored.get("class_name") != type(layer.unit).__name__:
                continue
            try:
                mine = layer.unit.get_config()
            except Exception:  # noqa: BLE001 - a layer without a config: not comparable
                continue
            theirs, ours = _comparable(stored.get("config", {})), _comparable(mine)
            keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            if keys:
                out[layer.target_path] = keys
    return out


def _by_position(layer: _LayerPlan) -> bool:
    """Whether the source knows a paired layer's variables by position only (`vars/0`) and
    positions alone can give one variable's values to another: the layer holds two or more
    of one shape and dtype, or takes `center=` / `scale=` options, which decide which of its
    variables of one shape it holds (a `LayerNormalization(center=False)` holds `gamma`
    alone, one with `scale=False` `beta` alone). Keras's automatic names (`variable_1`,
    `AUTOMATIC_VARIABLE`) follow creation order as positions do, so they count as none."""
    if not all(_unnamed(v) for v in layer.source.variables):
        return False
    kinds = [(tuple(v.shape), str(getattr(v, "dtype", ""))) for v in layer.current.values()]
    return len(set(kinds)) < len(kinds) or (
        hasattr(layer.unit, "center") and hasattr(layer.unit, "scale"))


def _unnamed(var: VariableInfo) -> bool:
    """Whether a source variable's name says nothing of which variable it is: none, its key,
    or Keras's automatic name (`variable_1`: an `add_weight` without `name=`)."""
    return var.name in ("", var.key) or AUTOMATIC_VARIABLE.fullmatch(var.name) is not None


def _miscounted(plans: list[_BlockPlan]) -> bool:
    """Whether a paired layer the source knows by position only holds another number of
    variables than the model's: which one it lacks (or has more) only names can say, so the
    source's structure is rebuilt where it can be, for the refusal to name them."""
    return any(_by_position(layer) and len(layer.source.variables) != len(layer.current)
               for plan in plans for layer in plan.layers)


def _may_swap(layer: _LayerPlan) -> bool:
    """Whether positions alone may give one of a paired layer's variables the values of
    another: `_by_position`; for a layer taking `center=` / `scale=`, only where the model's
    holds one of `gamma` and `beta`. Holding both (or neither), it pairs only with a source
    layer holding as many variables, so the same ones in Keras's order (`gamma`, `beta`,
    then the moving statistics)."""
    if not _by_position(layer):
        return False
    if not (hasattr(layer.unit, "center") and hasattr(layer.unit, "scale")):
        return True
    held = {str(getattr(v, "name", "")).rsplit("/", 1)[-1] for v in layer.current.values()}
    return len(held & {"gamma", "beta"}) == 1


def _unrecorded(plans: list[_BlockPlan], src: Source) -> list[str]:
    """Model layer paths of paired layers `_by_position` whose config a source that records
    configs (a `.keras` archive, a `source_model=`) does not record: layers that a custom
    layer or a subclassed model creates in its own code. Nothing in the file tells which
    variables they held when it was saved, and a rebuild names them from the code as it is
    now. From a source that records no config at all (`configs_hint`), every such layer that
    takes `center=` / `scale=` (others pair by position as Keras pairs them, unsaid)."""
    if src.records_configs:
        return [layer.target_path for plan in plans for layer in plan.layers
                if _may_swap(layer) and src.layer_config(layer.source.path) is None]
    if src.configs_hint:
        return [layer.target_path for plan in plans for layer in plan.layers
                if _may_swap(layer) and hasattr(layer.unit, "center")]
    return []


def _say_unrecorded(unrecorded: list[str], plans: list[_BlockPlan], report: LoadReport,
                    src: Source) -> None:
    """The caveat for the `_unrecorded` layers that the validated plans load."""
    loading = {layer.target_path for plan in plans for layer in plan.layers if layer.load}
    paths = [path for path in unrecorded if path in loading]
    if not paths:
        return
    shown = f"{paths}" if len(paths) <= 8 else f"{paths[:8]} and {len(paths) - 8} more"
    if src.records_configs:
        caveat = (
            f"layers {shown} hold variables of one shape that the source records by position "
            "only, and it records no config of theirs (a custom layer's or subclassed model's "
            "code creates them): they are paired by position, as Keras's load_weights pairs "
            "them. If that code built them with other options when the file was saved "
            "(BatchNormalization center= / scale=), values go to variables of another "
            "meaning.")
    else:
        caveat = (
            f"layers {shown} hold variables of one shape that the source records by position "
            "only, and it records no layer config, so they are paired by position, as Keras's "
            "load_weights pairs them: if the model that wrote the file built them with other "
            "options (BatchNormalization center= / scale=), values go to variables of another "
            f"meaning. To check them, {src.configs_hint}.")
    _say(report, caveat)


LIBRARIES = ("keras", "keras_hub", "keras_nlp", "keras_cv", "tf_keras", "keras_blockreuse")
"""Top-level packages whose layers create their variables in an order fixed by the library's
own code (a custom layer's order is its author's `build()` or `__init__`, which can change)."""


def _custom_class(unit) -> str | None:
    """The name of the class outside `LIBRARIES` whose code creates a layer's variables
    (the first in its MRO to define `build` or `__init__`), or None for a library's layer."""
    for cls in type(unit).__mro__:
        if cls.__module__.split(".", 1)[0] in LIBRARIES:
            return None
        if "build" in vars(cls) or "__init__" in vars(cls):
            return cls.__name__
    return None


def _say_custom_ordered(plans: list[_BlockPlan], report: LoadReport,
                        unrecorded: list[str]) -> None:
    """The caveat for loaded layers of a custom class whose variables of one shape the source
    records by position only (`vars/0`: a `.keras`, `.weights.h5`): the order their own code
    creates them in pairs them, and a `build()` edited since the save would swap them unseen,
    as in Keras's load_weights. (Layers `_say_unrecorded` names are said there.)"""
    found = {layer.target_path: _custom_class(layer.unit)
             for plan in plans for layer in plan.layers
             if layer.load and layer.target_path not in unrecorded and _may_swap(layer)}
    found = {path: name for path, name in found.items() if name is not None}
    if not found:
        return
    paths = list(found)
    shown = f"{paths}" if len(paths) <= 8 else f"{paths[:8]} and {len(paths) - 8} more"
    classes = ", ".join(dict.fromkeys(found.values()))
    _say(report, (
        f"layers {shown} ({classes}) hold variables of one shape that the source records by "
        "position only (or by Keras's automatic names, `variable_1`, which follow the same "
        "order), in the order their own code creates them, not Keras's: they are paired by "
        "position, as Keras's load_weights pairs them. If that code created them in another "
        "order when the file was saved, values went to other variables; add_weight(name=...) "
        "names them, and a block file written by save_blocks records those names, which pair "
        "them."))


def _say(report: LoadReport, caveat: str, stacklevel: int = 4) -> None:
    """A caveat in the report and, for who does not print it, a UserWarning (at the caller
    of `load_blocks` when called from a `_say_*` function of `load_blocks`)."""
    report.caveats.append(caveat)
    warnings.warn(f"load_blocks: {caveat}", stacklevel=stacklevel)


def _comparable(config) -> dict:
    """A layer config's options, lists as lists, without those that do not decide which
    variables it holds: its name, `trainable`, the dtype policy; a nested object's config
    (an initializer, a regularizer) is reduced to its class, so a `quantization_config`
    given on one side only still differs."""
    def plain(value):
        if isinstance(value, dict):
            return ("object", value.get("class_name"))
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in config.items() if k not in ("name", "trainable", "dtype")}


def _say_positional(reconfigured: dict[str, list[str]], report: LoadReport) -> None:
    shown = "; ".join(f"{path!r} ({', '.join(keys)})" for path, keys in reconfigured.items())
    caveat = (
        f"layers {shown} are configured otherwise than the source's, and the source records "
        "their variables by position only (its structure could not be rebuilt to name them), "
        "so they are paired by position, as Keras's load_weights pairs them; where that "
        "config changes which variables the layer holds (BatchNormalization center= / "
        "scale=), values go to variables of another meaning.")
    _say(report, caveat)


def _target_structure(model) -> Callable[[], list]:
    """A function giving the model's `keras_structure` units, walked once per load."""
    cache: list[list] = []

    def units() -> list:
        if not cache:
            from keras_blockreuse.sources.structure import keras_structure

            cache.append(list(keras_structure(model)))
        return cache[0]

    return units


class _TargetPlaces:
    """The model's layers by name, at any depth (`predictions`, `backbone/predictions`): a
    count of each name and of each automatic name's family (`dense` for `dense_3`; one fast
    walk), and their name paths, walked only when asked."""

    def __init__(self, model):
        self.model = model
        self._counts: dict[str, int] | None = None
        self._families: dict[str, int] | None = None
        self._places: dict[str, list[tuple[str, Any]]] | None = None

    def count(self, name: str, family: bool = False) -> int:
        """How many layers of the model, at any depth, have this name (with `family`: a name
        of this name's family, `dense`, `dense_1`, ...)."""
        if self._counts is None:
            self._counts, self._families = {}, {}
            for layer in self.model._flatten_layers(include_self=False):
                stem = strip_counter(layer.name)
                self._counts[layer.name] = self._counts.get(layer.name, 0) + 1
                self._families[stem] = self._families.get(stem, 0) + 1
        counts = self._families if family else self._counts
        return counts.get(strip_counter(name) if family else name, 0)

    def layers(self) -> dict[str, Any]:
        """`{name path: layer}` for every layer of the model."""
        return {p: unit for entries in self.places().values() for p, unit in entries}

    def places(self) -> dict[str, list[tuple[str, Any]]]:
        """`{layer name: [(its name path in the model, the layer)]}`."""
        if self._places is None:
            self._places = {}
            for path, unit in iter_units(self.model):
                if unit is not self.model:
                    within = path.split("/", 1)[1]
                    self._places.setdefault(within.rsplit("/", 1)[-1], []).append(
                        (within, unit))
        return self._places


def _source_places(src: Source) -> Callable[[], dict[str, list[str]]]:
    """`_TargetPlaces.places` for the source: `{layer name: [its name paths]}`, every block."""
    cache: list[dict[str, list[str]]] = []

    def places() -> dict[str, list[str]]:
        if not cache:
            found: dict[str, list[str]] = {}
            for path in src.layer_paths():
                found.setdefault(path.rsplit("/", 1)[-1], []).append(path)
            cache.append(found)
        return cache[0]

    return places


def _target_paths(structure: Callable[[], list]) -> Callable[[], dict[int, str]]:
    """A function giving `id(layer) -> Keras structural path` for the model (`structure`:
    its `_target_structure`), computed once."""
    cache: list[dict[int, str]] = []

    def paths() -> dict[int, str]:
        if not cache:
            cache.append({id(u.obj): u.keras_path for u in structure()})
        return cache[0]

    return paths


# --- select, map and pair -----------------------------------------------------------------


def _plan(
    src: Source,
    target_blocks: dict[str, Block],
    only,
    exclude,
    rename,
    target_paths: Callable[[], dict[int, str]],
    target_places: _TargetPlaces,
) -> tuple[list[_BlockPlan], LoadReport]:
    source_names = src.block_names()
    target_names = list(target_blocks)
    rename = dict(rename or {})
    where = (
        f"The source {src.description} has blocks {source_names}; "
        f"the model has blocks {target_names}."
    )
    globs = [key for key in rename if any(c in key for c in "*?[")]
    if globs:
        raise BlockMismatchError(
            f"rename= keys are exact source block names, not patterns: received {globs}. "
            f"{where} Map each source block by its name, {{'block_1': 'enc_1'}}.")
    select(source_names, list(rename), "`rename` keys", where)
    selected = select(source_names, only, "`only`", where)
    if exclude is not None:
        dropped = set(select(source_names, exclude, "`exclude`", where))
        selected = [name for name in selected if name not in dropped]
    inert = [name for name in rename if name not in selected]
    if inert:
        raise BlockMismatchError(
            f"rename= maps source block(s) {inert}, which only=/exclude= leave out, so the "
            "mapping would do nothing. only= and exclude= name source blocks, before rename= "
            f"maps them: only={inert} loads source {inert} into model "
            f"{[rename[name] for name in inert]}; or drop them from rename=."
        )
    mapped = {name: rename.get(name, name) for name in selected}
    explicit = [s for s in selected if (only is not None or s in rename)]
    absent = [s for s in explicit if mapped[s] not in target_blocks]
    if absent:
        raise BlockMismatchError(
            f"Block(s) {[f'{s} -> {mapped[s]}' if s != mapped[s] else s for s in absent]} "
            f"are not in model {target_names}. Source blocks: {source_names}."
        )
    targets: dict[str, str] = {}
    for s, t in mapped.items():
        if t not in target_blocks:
            continue
        if t in targets:
            raise BlockMismatchError(
                f"Source blocks {targets[t]!r} and {s!r} both map to model block {t!r}."
            )
        targets[t] = s
    _refuse_shifted_names(targets, target_blocks, source_names, only, rename,
                          lambda name, block: _same_shapes(src, name, block), target_places,
                          lambda: _nesting_hint(src, source_names, target_places.model,
                                                target_blocks),
                          lambda: _rename_by_places(src, source_names, target_blocks,
                                                    target_paths))
    in_source = {rename.get(s, s) for s in source_names}
    report = LoadReport(source=src.description, target_blocks=target_names,
                        source_blocks=source_names)
    report.missing = [t for t in target_names if t not in in_source]
    report.unexpected = [s for s in source_names if s not in targets.values()]
    if only is None and not rename:  # the user named no block: both sides must pair up
        report.unpaired = (list(report.missing),
                           [s for s in selected if mapped[s] not in target_blocks])
        if report.unpaired[0] and report.unpaired[1]:
            unpaired = {t: target_blocks[t] for t in report.unpaired[0]}
            if str(src.info.get("format", "")).startswith("Keras legacy"):
                rename = _rename_by_computation_order(src, report.unpaired[1], unpaired)[0]
            else:
                rename = _rename_by_place(src, report.unpaired[1], unpaired, target_paths)[0]
            if rename and all(_same_shapes(src, s, target_blocks[t]) for s, t in rename.items()):
                report.suggested_rename = rename
    source_paths = _source_paths(src)
    source_places = _source_places(src)
    plans = [_pair_block(targets[t], src.block_layers(targets[t]), t, target_blocks[t],
                         target_paths, source_paths)
             for t in target_names if t in targets]
    source_only_blocks = not set(source_names) <= set(target_names)
    for plan in plans:
        _unpair_ambiguous(plan, target_places, source_places, source_only_blocks)
    _contradicted_by_order(plans)
    held = _held_in_a_models_dict(plans, target_places.model)
    if held:
        report.caveats.append(held)
    for plan in plans:
        t = plan.target
        report.pairing[t] = plan.pairing
        if plan.pairing != "name":
            report.layer_pairs[t] = [(layer.source.path, layer.target_path)
                                     for layer in plan.layers]
        if plan.pairing == "order":
            report.matched_by_order.append(t)
        if plan.caveat:
            report.caveats.append(plan.caveat)
        for path in plan.unpaired_target:
            if path in plan.ambiguous:
                report.mismatched.append(Mismatch(t, path, "*", plan.ambiguous[path],
                                                  "present", "present"))
                continue
            if path in plan.contradicted:
                name, places, top_level = plan.contradicted[path]
                report.mismatched.append(Mismatch(
                    t, path, "*", f"its automatic name pairs it with source layer {name!r}, "
                    f"but {places}. Name the layers"
                    + (", or pair the blocks with rename=" if top_level else " when building "
                       "the model (rename= pairs whole blocks, not the layers inside one)"),
                    "present", "present"))
                continue
            report.mismatched.append(
                Mismatch(t, path, "*", "no source layer pairs with it", "-", "present"))
        for path in plan.unpaired_source:
            if path in plan.ambiguous:  # the same name on both sides: said above
                continue
            report.mismatched.append(
                Mismatch(t, path, "*", "no model layer pairs with it", "present", "-"))
    if report.caveats:
        warnings.warn(" ".join(f"load_blocks: {c}" for c in report.caveats), stacklevel=3)
    return plans, report


def _refuse_shifted_names(targets: dict[str, str], target_blocks: dict[str, Block],
                          source_names: list[str], only, rename: dict[str, str],
                          fits: Callable[[str, Block], bool],
                          target_places: _TargetPlaces, nesting: Callable[[], str],
                          renaming: Callable[[], tuple[str, dict[str, str] | None]]) -> None:
    """Refuses blocks paired only by automatic names when the two sides hold another number
    of blocks of that class (`dense`, `dense_1` against `dense`, `dense_1`, `dense_2`).

    Keras numbers automatic names in creation order, so a layer added before the others of
    its class shifts every later name, and a layer added after them shifts none: the names
    cannot tell which happened. Blocks the user named (`only=` without a glob, `rename=`) are
    the user's answer and pass.
    """
    named = set(rename) | {p for p in ([only] if isinstance(only, str) else only or [])
                           if not any(c in p for c in "*?[")}
    families: dict[str, list[str]] = {}
    classes: dict[str, str] = {}
    for name, block in target_blocks.items():
        layer = block.layers[0]
        if len(block.layers) == 1 and layer.name == name and automatic_name(name, layer):
            families.setdefault(strip_counter(name), []).append(name)
            classes[strip_counter(name)] = type(layer).__name__
    problems, listed, nested, doubtful = [], [], [], set()
    for stem, model_names in families.items():
        theirs = [s for s in source_names if strip_counter(s) == stem
                  and not counted_from_zero(s)]  # (`dense_0`: named)
        as_named = [t for t in model_names if targets.get(t) == t]
        if (as_named and sorted(model_names) != sorted(theirs)
                and not all(t in named for t in as_named)):
            problems.append(
                f"{classes[stem]} blocks: the model has {model_names}, the source "
                f"{theirs}; only their names pair {as_named}"
            )
            doubtful.update(as_named)
            # Layers appended after the others leave the first names as they were: one side's
            # names are then the other's first ones, and only those that fit are offered.
            mine = sorted(model_names, key=lambda n: split_counter(n)[1])
            yours = sorted(theirs, key=lambda n: split_counter(n)[1])
            shorter, longer = sorted((mine, yours), key=len)
            inside = sorted({place.rsplit("/", 1)[0] for leaf, entries
                             in target_places.places().items() if strip_counter(leaf) == stem
                             for place, _ in entries if "/" in place})
            if inside:  # more of them inside nested models: the names pair the wrong level
                nested += inside
            elif longer[:len(shorter)] == shorter:
                listed += [t for t in as_named if fits(t, target_blocks[t])]
    if problems:
        # (the blocks that pair as they are, with the family's first names: the load a new
        # head after the others asks for)
        listed = [targets[t] for t in target_blocks if t in targets
                  and (t in listed or t not in doubtful and fits(targets[t], target_blocks[t]))
                  ] if listed else []
        hint, offered = "", None
        if not nested:
            hint = nesting()
            if not hint:
                hint, offered = renaming()
        raise BlockMismatchError(
            "Blocks named by automatic names cannot be paired by those names here: "
            + "; ".join(problems) + ". Keras numbers automatic names in creation order, so a "
            "layer added before the others of its class shifts every later name, and one "
            "added after them shifts none; the names cannot tell which happened. "
            + (f"The model holds more of them inside {nested}: if the source is a file of "
               f"that nested model, load into it: `load_blocks("
               f"{_reach(nested[0], target_places.layers())}, source)`. " if nested else "")
            + (f"If the extra layers came after the others (a new head), load with "
               f"only={listed}; if " if listed else "If ")
            + "a layer was added or removed before them (or created and not used), pair the "
            "blocks with rename= {source block: model block}. Naming the layers when building "
            "the model avoids this." + hint, rename=offered
        )


def _same_shapes(src: Source, source_name: str, block: Block) -> bool:
    """True when the source block and the model block hold variables of the same shapes."""
    mine = _shapes(value for _, _, values in unit_values_of(block) for value in values.values())
    return mine == _shapes(v for layer in src.block_layers(source_name) for v in layer.variables)


def _shapes(values) -> list[tuple[int, ...]]:
    """The sorted shapes of variables, arrays or `VariableInfo`s."""
    return sorted(tuple(int(d) for d in value.shape) for value in values)


def _pair_block(
    source_name: str,
    source_layers: Sequence[LayerInfo],
    target_name: str,
    block: Block,
    target_paths: Callable[[], dict[int, str]],
    source_paths: Callable[[], set[str]],
) -> _BlockPlan:
    """Pairs a block's model layers with source layers: by name, else Keras path, else order."""
    units = list(unit_values_of(block))
    by_name = {layer.path: layer for layer in source_layers}
    if not all(path in by_name for path, _, _ in units):
        by_name = _below_one_prefix(units, source_layers, source_name, target_name) or by_name
    pairs = None
    pairing = "name"
    contradicted: dict[str, tuple[str, str, bool]] = {}
    caveat = ""
    if all(path in by_name for path, _, _ in units):
        pairs = [(unit, by_name[unit[0]]) for unit in units]
        # Automatic names (`dense`, `dense_1`) follow creation order, which a refactor can
        # change; where both sides' Keras paths pair every layer and disagree, they win.
        # Keras keys a list's items by class and position (`dense_1`), as weak as an
        # automatic name: where such a path disagrees, neither is believed.
        if any(automatic_name(path, obj) or _automatic_steps(path, block)
               for path, obj, _ in units):
            by_path = _pairs_by_path(units, source_layers, target_paths)
            differ = [] if by_path is None else [
                (a, b) for a, b in zip(pairs, by_path, strict=True) if a[1] is not b[1]]
            paths = target_paths() if differ else {}
            if differ and not any(automatic_name(b[1].keras_path, b[0][1])
                                  or automatic_name(paths[id(b[0][1])], b[0][1])
                                  for _, b in differ):
                pairs, pairing = by_path, "path"
            elif differ or by_path is None:
                contradicted, unconfirmed = _contradicted(pairs, block, target_paths,
                                                          source_paths)
                pairs = [pair for pair in pairs if pair[0][0] not in contradicted]
                caveat = _unchecked_names(target_name, unconfirmed)
    else:
        pairs = _pairs_by_path(units, source_layers, target_paths)
        if pairs is not None:
            pairing = "path"
        # One layer on each side is in the same order whatever the source knows.
        if (pairs is None and len(units) == len(source_layers)
                and (len(units) == 1 or all(layer.order is not None for layer in source_layers))):
            pairs = list(zip(units, sorted(source_layers, key=lambda layer: layer.order),
                             strict=True))
            pairing = "order"
            caveat = _unchecked_order(target_name, block, pairs)
        # Blocks paired by their own automatic names (a nested model `sequential` on both
        # sides, its layers' names shifted): those names are checked at that model's step
        # as a layer's are (the user's rename= is the user's word, and is not).
        if (pairs is not None and source_name == target_name
                and any(_automatic_steps(path, block) for path, _, _ in units)):
            contradicted, _ = _contradicted(pairs, block, target_paths, source_paths)
            pairs = [pair for pair in pairs if pair[0][0] not in contradicted] or None
    if pairs is None:  # by name where names agree; the rest is unpaired
        pairs = [(unit, by_name[unit[0]]) for unit in units if unit[0] in by_name]
    if pairing != "order":
        caveat = caveat or _held_by_position(target_name, block, pairs, pairing, target_paths)
    if pairing == "name":
        shifted = _shifted_families(pairs, units, source_layers, block)
        contradicted.update(shifted)
        pairs = [pair for pair in pairs if pair[0][0] not in shifted]
    paired = {id(layer) for _, layer in pairs}
    return _BlockPlan(
        block=block,
        contradicted=contradicted,
        caveat=caveat,
        target=target_name,
        source=source_name,
        layers=[_LayerPlan(path, obj, current, layer) for (path, obj, current), layer in pairs],
        pairing=pairing,
        unpaired_source=[layer.path for layer in source_layers if id(layer) not in paired],
        unpaired_target=[path for path, _, _ in units
                         if path not in {p for (p, _, _), _ in pairs}],
    )


def _unpair_ambiguous(plan: _BlockPlan,
                      target_places: _TargetPlaces,
                      source_places: Callable[[], dict[str, list[str]]],
                      source_only_blocks: bool) -> None:
    """Unpairs top-level layers that their name pairs where one side holds that name at more
    places than the other, inside a nested model whose layers match the other side's top
    level at least as well as the two top levels match: the name cannot tell which level the
    other side's layer is from. A file saved from a task's backbone into the task (its head
    and a backbone layer both `predictions`) and the task's file into its bare backbone look
    so; a task's file into a task whose backbone lacks that layer does not (the top levels,
    both holding a `backbone` and `predictions`, match better).

    `source_only_blocks`: the source has blocks the model lacks. Where it has none, the
    block's source layers all pair and the model holds the name once, the source's top level
    is read as the model's, and the source's layout (every block's, for a block file) is not
    read for this.
    """
    for layer in plan.layers:
        path = layer.target_path
        if "/" in path or layer.source.path != path:
            continue
        # An automatic name (`dense_2`) shifts with what was built before it: its family
        # (`dense`, `dense_1`, ...) is counted, as the layer may be another of the family.
        family = automatic_name(path, layer.unit)
        count = target_places.count(path, family)
        if count == 1 and not source_only_blocks and not plan.unpaired_source:
            continue
        named = functools.partial(_of_name, path, family)
        theirs = sorted(p for leaf, entries in source_places().items() if named(leaf)
                        for p in entries)
        if count == len(theirs) == 1:  # the pair itself
            continue
        mine = sorted(place for leaf, entries in target_places.places().items() if named(leaf)
                      for place, unit in entries if _has_variables(unit))
        if len(mine) == len(theirs):
            continue
        places = target_places.layers()
        model_paths = list(places)
        source_paths = [p for entries in source_places().values() for p in entries]
        what = (f"layers of {path!r}'s family of automatic names ({strip_counter(path)!r}, "
                "which shift with what was built before them)" if family
                else f"layers named {path!r}")
        if len(mine) > len(theirs):
            nested = _nested_at_its_level(named, model_paths, source_paths)
            if nested is None:
                continue
            why = (f"the model holds {what} at {len(mine)} places {mine} and the source at "
                   f"{len(theirs)} {theirs}, so the name cannot tell which of the model's the "
                   f"source's is: the source may be a file of the nested model {nested!r}. If "
                   f"it is, load into that model: `load_blocks({_reach(nested, places)}, "
                   "source)`")
        else:
            nested = _nested_at_its_level(named, source_paths, model_paths)
            if nested is None:
                continue
            why = (f"the source holds {what} at {len(theirs)} places {theirs} and the model "
                   f"at {len(mine)} {mine}, so the name cannot tell which of the source's the "
                   "model's is: the source may be a file of a model that nests this one as "
                   f"{nested!r}. If it is, build a model like the source's, load the source "
                   "into it and load from its nested model: `load_blocks(model, "
                   f"{_reach(nested, None, 'built')})` (of a keras-hub task: `built.backbone`)")
        plan.ambiguous[path] = f"its name pairs it with source layer {path!r}, but {why}"
    if plan.ambiguous:
        gone = [layer for layer in plan.layers if layer.target_path in plan.ambiguous]
        plan.layers = [layer for layer in plan.layers if layer.target_path not in plan.ambiguous]
        plan.unpaired_target += [layer.target_path for layer in gone]
        plan.unpaired_source += [layer.source.path for layer in gone]


def _nested_at_its_level(named: Callable[[str], bool], more: list[str], fewer: list[str]
                         ) -> str | None:
    """The nested model (a path, at any depth) of the side holding the name at more places,
    `more` (`named(last step)` tells the name's layers), whose layers' names match the other
    side's top-level names at least as well as the two sides' top-level names match (up to
    Keras's automatic counter); None if none."""
    def tops(paths) -> set[str]:
        return {strip_counter(p.split("/", 1)[0]) for p in paths}

    theirs = tops(fewer)
    level = len(tops(more) & theirs)
    nests = set()
    for p in more:
        steps = p.split("/")
        if len(steps) > 1 and named(steps[-1]):
            nests.update("/".join(steps[:i]) for i in range(1, len(steps)))
    for nested in sorted(nests, key=lambda n: (n.count("/"), n)):
        inside = tops(p[len(nested) + 1:] for p in more if p.startswith(nested + "/"))
        if len(inside & theirs) >= level:
            return nested
    return None


def _of_name(name: str, family: bool, leaf: str) -> bool:
    """True when a layer named `leaf` has the name `name` (with `family`: is of its family of
    automatic names)."""
    return strip_counter(leaf) == strip_counter(name) if family else leaf == name


def _reach(path: str, layers: dict[str, Any] | None, root: str = "model") -> str:
    """How to reach the nested layer at `path` from `root`: `model.get_layer('features')
    .get_layer('base')` where every layer above it is a model (known from `layers`, `{name
    path: layer}`; without them, only one step deep), else `<the layer at 'holder/bb'>`."""
    steps = path.split("/")
    above = ["/".join(steps[:i]) for i in range(1, len(steps))]
    if (layers is None and len(steps) == 1) or (
            layers is not None and all(isinstance(layers.get(p), keras.Model) for p in above)):
        return root + "".join(f".get_layer({step!r})" for step in steps)
    return f"<the layer at {path!r} in {root}>"


def _has_variables(layer) -> bool:
    """True when the layer has variables of its own (not only its sub-layers'), as a Keras
    file holds a layer."""
    values: dict = {}
    layer.save_own_variables(values)
    return bool(values)


def _below_one_prefix(units, source_layers: Sequence[LayerInfo], source_block: str,
                      target_block: str) -> dict[str, LayerInfo]:
    """`{model layer path: source layer}` for a block whose layers sit at other name paths
    on the two sides, by their names below them; `{}` where there is none:

    - every source layer is inside one nested model (or composite layer), every model layer
      inside one too, and the two are named as the two blocks paired (`rename=`, as a Keras 2
      file's `model/conv` for `functional/conv`) or differ only by Keras's automatic counter
      (`backbone/a` for `backbone_1/a`: a model nested in a task built second in a session);
    - every source layer's path is one prefix followed by a model layer's path, one to one
      (`vit_encoder/transformer_block_1/ln_1` for `transformer_block_1/ln_1`: a keras-hub
      task's block from its backbone's own file, where it sits inside the encoder).
    """
    if not units or not source_layers:
        return {}
    theirs = {layer.path.split("/", 1)[0] for layer in source_layers}
    mine = {path.split("/", 1)[0] for path, _, _ in units}
    if (len(theirs) == len(mine) == 1 and theirs != mine
            and all("/" in layer.path for layer in source_layers)
            and all("/" in path for path, _, _ in units)):
        (source_top,), (model_top,) = theirs, mine
        if (strip_counter(source_top) == strip_counter(model_top)
                or (source_top, model_top) == (source_block, target_block)):
            return {model_top + layer.path[len(source_top):]: layer for layer in source_layers}
    if len(units) != len(source_layers):
        return {}
    by_path = {layer.path: layer for layer in source_layers}
    first = source_layers[0].path
    fits = [prefix for prefix in {first[:len(first) - len(path)] for path, _, _ in units
                                  if first.endswith("/" + path)}
            if set(by_path) == {prefix + path for path, _, _ in units}]
    if len(fits) != 1:
        return {}
    return {path: by_path[fits[0] + path] for path, _, _ in units}


def _contradicted(pairs, block: Block, target_paths: Callable[[], dict[int, str]],
                  source_paths: Callable[[], set[str]]
                  ) -> tuple[dict[str, tuple[str, str, bool]], list]:
    """Checks name pairs of automatic names against both sides' places in Keras's saving walk.

    Steps of each path are compared: the last (`dense_1`: the second Dense of its container;
    `up`: the attribute holding it) and, below each layer holding it that has an automatic
    name (a top-level `pair_1`, a nested model `functional_1` at any depth), that layer's own
    step (`layers/pair_1`). A step that differs contradicts the names
    only when the model's step is also one of the source's (`layers/dense` in both: a layer
    created in another order than its place); one the source lacks (an attribute renamed, a
    block nested in another model) neither confirms nor contradicts them.

    Returns:
        `{model layer: (source layer, how they differ, whether the step that differs is a
        top-level layer's)}` for contradicted pairs, and the pairs that no path or order
        confirms.
    """
    paths = target_paths() if any(layer.keras_path for _, layer in pairs) else {}
    out, unconfirmed = {}, []
    model_paths: set[str] | None = None
    for pair in pairs:
        (path, obj, _), layer = pair
        mine, theirs = paths.get(id(obj)), layer.keras_path
        steps_held = _automatic_steps(path, block)
        containers = [layer for _, layer in steps_held]
        if not automatic_name(path, obj) and not containers:
            continue
        if not (mine and theirs):
            # else `_contradicted_by_order` checks it: by its order, or (a top-level model
            # holding an explicitly named layer) by that model's place at the top level
            if layer.order is None and (automatic_name(path, obj) or layer.top_order is None
                                        or any(i > 0 for i, _ in steps_held)):
                unconfirmed.append(pair)
            continue
        # (an explicitly named layer's own step is its place in a list, which another order
        # of computing moves: only the automatically named layers' steps are compared)
        steps = [(mine, theirs, "/" not in path)] if automatic_name(path, obj) else []
        for i, container in steps_held:
            container_path = paths.get(id(container))
            if container_path and mine.startswith(container_path + "/"):
                depth = mine[len(container_path):].count("/")
                steps.append((container_path, theirs.rsplit("/", depth)[0], i == 0))
        confirmed = True
        for m, t, top_level in steps:
            if m.rsplit("/", 1)[-1] == t.rsplit("/", 1)[-1]:
                continue
            confirmed = False
            parent, leaf = t.rpartition("/")[0], m.rpartition("/")[2]
            placed = (f"{parent}/{leaf}" if parent else leaf) in source_paths()
            if not placed and (m, t) == (mine, theirs):  # the layer's own place: held by
                # another layer on either side (`head` against `layers/dense_1`, where the
                # walk visits attributes and the layer list of a subclassed model)
                if model_paths is None:
                    model_paths = set(paths.values())
                placed = mine in source_paths() or theirs in model_paths
            if placed:
                out[path] = (layer.path, "Keras's saving walk places them differently "
                                         f"(source {theirs}, model {mine}): created in another "
                                         "order, or moved in a list?",
                             top_level or path in out and out[path][2])
        if not confirmed and path not in out:
            unconfirmed.append(pair)
    return out, unconfirmed


def _automatic_steps(path: str, block: Block) -> list[tuple[int, Any]]:
    """`(step index, layer)` for each layer holding the model layer at `path` whose name (that
    step of the path) is automatic."""
    if "/" not in path:  # a block's own layer: nothing holds it inside the block
        return []
    steps = path.split("/")
    found, layer = [], next((b for b in block.layers if b.name == steps[0]), None)
    for i in range(1, len(steps)):
        if layer is None:
            break
        if automatic_name(steps[i - 1], layer):
            found.append((i - 1, layer))
        layer = next((child for child in layer._flatten_layers(include_self=False,
                                                               recursive=False)
                      if child.name == steps[i]), None)
    return found


def _shifted_families(pairs, units, source_layers: Sequence[LayerInfo], block: Block
                      ) -> dict[str, tuple[str, str, bool]]:
    """Name pairs of automatic names beside unpaired layers of their class and container
    (`{model layer: (source layer, why, whether the family is of top-level layers)}`).

    A layer added before others of its class (or removed) shifts their automatic names, so
    `dense_1` of the model may be `dense` of the source; where either side holds a layer of
    that class and container that did not pair, names of that family justify no pair.
    """
    paired_t = {id(unit[1]) for unit, _ in pairs}
    paired_s = {id(layer) for _, layer in pairs}

    def family(path: str) -> tuple[str, str]:
        parent, _, last = path.rpartition("/")
        return parent, strip_counter(last)

    def containers(path: str) -> list[tuple[str, str]]:
        """The families of the automatically named layers holding it (`encoder`,
        `functional` for `encoder/functional_1/conv`): another of them created before it
        shifts its name too."""
        steps = path.split("/")
        return [("/".join(steps[:i]), strip_counter(steps[i]))
                for i, _ in _automatic_steps(path, block)]

    loose: dict[tuple[str, str], list[str]] = {}
    for path, obj, _ in units:
        if id(obj) not in paired_t and automatic_name(path, obj):
            loose.setdefault(family(path), []).append(f"model {path}")
        if id(obj) not in paired_t:
            for key in containers(path):
                loose.setdefault(key, []).append(f"model {path}")
    for layer in source_layers:
        if (id(layer) not in paired_s
                and family(layer.path)[1] == snake_case(layer.class_name or "?")):
            loose.setdefault(family(layer.path), []).append(f"source {layer.path}")
    out = {}
    for (path, obj, _), layer in pairs:
        keys = ([family(path)] if automatic_name(path, obj) else []) + containers(path)
        key = next((k for k in keys if k in loose), None)
        if key is not None:
            out[path] = (layer.path, f"layers of its class beside it did not pair "
                                     f"({', '.join(loose[key])}), as when a layer is "
                                     "added or removed before others of its class and their "
                                     "automatic names shift", key[0] == "")
    return out


def _held_by_position(block_name: str, block: Block, pairs, pairing: str,
                      target_paths: Callable[[], dict[int, str]]) -> str:
    """The caveat for same-class layers that a custom layer holds in a list or dict, where
    only their position there pairs them: Keras saves such items by class and position, not
    by key, so a dict's keys inserted in another order (names and paths alike), or list items
    reordered where the automatic names no longer pair, swap them unseen."""
    parents = _custom_parents(block)
    # keras-hub's own layers numbered from zero (RetinaNet's heads' `conv2d_0`, ...) were named
    # by its code, which pairs them by name; a user's `dense_0` may sit among Keras's own
    # `dense_1`, `dense_2`, which the names cannot tell from the code's
    explicit = {path for path in numbered_from_zero(path for (path, _, _), _ in pairs)
                if is_hub_object(parents.get(path.rpartition("/")[0]))}
    if len(pairs) < 2 or (pairing == "name" and not any(
            automatic_name(path, obj) and path not in explicit
            for (path, obj, _), _layer in pairs)):
        return ""
    held = []
    for (path, obj, _), _layer in pairs:
        parent = parents.get(path.rpartition("/")[0])
        if parent is None or (pairing == "name" and path in explicit):
            continue
        if pairing == "path":
            by_position = automatic_name(target_paths().get(id(obj), ""), obj)  # `items/dense_1`
        else:  # a list or dict of the user's (not TF's tracking): automatic names and
            # positions there both follow creation order, so neither confirms the other
            by_position = automatic_name(path, obj) and any(
                not key.startswith("_self_") and (
                    isinstance(value, dict) and any(item is obj for item in value.values())
                    or isinstance(value, list) and not key.startswith("_")  # not Keras's own
                    and any(item is obj for item in value))
                for key, value in vars(parent).items())
        if by_position:
            held.append((path, obj))
    same = _same_class_siblings(held)
    if not same:
        return ""
    return (f"block {block_name!r}: layers {same} are held in a list or dict of a "
            "custom layer, which Keras saves by position (not by key), and only that position "
            "(or automatic names, which follow the same creation order) pairs them; if their "
            "order there changed since the source was saved (dict keys inserted in another "
            "order, list items created or moved in another order), their values are swapped. "
            "Name these layers in new code.")


def _held_in_a_models_dict(plans: list[_BlockPlan], model) -> str:
    """The caveat of `_held_by_position` for blocks of a subclassed model held in one of its
    own dict attributes (`self.heads = {"p": Dense(4), "q": Dense(4)}`), paired by their
    automatic names: Keras saves a dict's items by position, and the names follow creation
    order, so keys inserted in another order swap them with nothing to show it."""
    from keras.src.models.functional import Functional

    if isinstance(model, (Functional, keras.Sequential)):
        return ""
    paired = {id(layer.unit): layer.target_path for plan in plans if plan.pairing == "name"
              for layer in plan.layers if automatic_name(layer.target_path, layer.unit)}
    held = []
    for key, value in vars(model).items():
        if isinstance(value, dict) and not key.startswith("_self_"):
            held += [(paired[id(item)], item) for item in value.values() if id(item) in paired]
    same = _same_class_siblings(held)
    if not same:
        return ""
    return (f"layers {same} are held in a dict of the model, which Keras saves by position "
            "(not by key), and are paired by their automatic names, which follow creation "
            "order; if the dict's keys were inserted or the layers created in another order "
            "since the source was saved, their values are swapped. Name these layers in new "
            "code.")


def _unchecked_order(block_name: str, block: Block, pairs) -> str:
    """The caveat for same-class sibling layers inside a custom layer paired by order: there
    the order is the one the layer assigns them in (its tracking order), not the one it calls
    them in, so a refactor that assigns them in another order swaps them unseen."""
    parents = _custom_parents(block)
    same = _same_class_siblings([(path, obj) for (path, obj, _), _layer in pairs
                                 if path.rpartition("/")[0] in parents])
    if not same:
        return ""
    return (f"block {block_name!r}: layers {same} are paired by their order alone, "
            "which inside a custom layer is the order it assigns them in, not the order it "
            "calls them in; if that changed since the source was saved, their values are "
            "swapped. Name these layers in new code.")


def _unchecked_names(block: str, pairs) -> str:
    """The caveat for same-class sibling layers paired by automatic names that nothing
    confirms: the source records neither their Keras paths nor their order, or its paths do
    not correspond to the model's (attributes renamed)."""
    same = _same_class_siblings([(path, obj) for (path, obj, _), _layer in pairs
                                 if "/" in path])
    if not same:
        return ""
    return (f"block {block!r}: layers {same} are paired by their automatic names "
            "alone; the source's Keras paths and order do not confirm them (none recorded, "
            "or attributes renamed), so if their creation order changed since it was saved, "
            "their values are swapped. Name these layers in new code; save_blocks records "
            "what checks them.")


def _custom_parents(block: Block) -> dict[str, Any]:
    """`name path -> layer` for the block's layers that are neither Functional nor Sequential
    models: those whose sub-layers' order is the order they were assigned in."""
    from keras.src.models.functional import Functional

    return {path: obj for layer in block.layers for path, obj in iter_units(layer)
            if not isinstance(obj, (Functional, keras.Sequential))}


def _same_class_siblings(members: list[tuple[str, Any]]) -> str:
    """`"['a/dense', 'a/dense_1'] (Dense); ..."` for the layers among `(name path, layer)`
    that share a class and a container with another, or `""`."""
    families: dict[tuple[str, str], list[str]] = {}
    for path, obj in members:
        families.setdefault((path.rpartition("/")[0], type(obj).__name__), []).append(path)
    return "; ".join(f"{paths} ({kind})" for (_, kind), paths in families.items()
                     if len(paths) > 1)


def _contradicted_by_order(plans: list[_BlockPlan]) -> None:
    """Unpairs layers paired by automatic names whose places in computation order, among the
    layers of their class and container, differ between the model and the source.

    Where the source knows its computation order (legacy `.h5` from its layer list, block
    files, live models), same-class layers that automatic names pair must come in the same
    order on both sides; top-level layers created in another order than they compute swap
    their names, and a legacy `.h5` records no Keras path to show it.
    """
    families: dict[tuple[str, str], list[tuple[_LayerPlan, _BlockPlan]]] = {}
    for plan in plans:
        if plan.pairing != "name":
            # a block paired by its own automatic name (a nested model `sequential` on both
            # sides) whose layers' names did not pair: each of its layers, by its place in
            # the block, against the same layer of the family's other models
            top = plan.block.layers[0] if plan.block and len(plan.block.layers) == 1 else None
            if plan.source == plan.target and top is not None and automatic_name(plan.target,
                                                                                  top):
                for index, layer in enumerate(plan.layers):
                    if layer.source.order is not None:
                        families.setdefault(("", strip_counter(plan.target), f"#{index}"),
                                            []).append((layer, plan))
            continue
        for layer in plan.layers:
            if layer.source.order is None and layer.source.top_order is None:
                continue
            if layer.source.order is not None and automatic_name(layer.target_path, layer.unit):
                parent, _, last = layer.target_path.rpartition("/")
                families.setdefault((parent, strip_counter(last)), []).append((layer, plan))
            # the same layer of automatically named models of one family (`functional/a`,
            # `functional_1/a`), as a Keras 2 file or a block file knows them by order only;
            # top-level models by their place at the top level where that alone is known
            steps = layer.target_path.split("/")
            for i, _ in _automatic_steps(layer.target_path, plan.block):
                if layer.source.order is None and i > 0:
                    continue
                # the path below by its families (`dense` for `dense_3`): the towers' own
                # automatic names differ from tower to tower
                below = "/".join(strip_counter(step) for step in steps[i + 1:])
                key = ("/".join(steps[:i]), strip_counter(steps[i]), below)
                families.setdefault(key, []).append((layer, plan))
    for key, members in families.items():  # in the model's computation order
        if all(layer.source.order is not None for layer, _ in members):
            by_source = sorted(members, key=lambda m: m[0].source.order)
        elif all(layer.source.top_order is not None for layer, _ in members):
            # only the top-level models' order is known: layers of one model tie, and keep
            # the model's order among themselves
            by_source = sorted(members, key=lambda m: m[0].source.top_order)
        else:
            continue
        for rank, (layer, plan) in enumerate(members):
            if by_source[rank][0] is layer:
                continue
            source_rank = next(i for i, m in enumerate(by_source) if m[0] is layer)
            kind = (f"{key[1]!r} models" if len(key) == 3 and key[2].startswith("#")
                    else f"{key[2]!r} layers of the {key[1]!r} models" if len(key) == 3
                    else f"{type(layer.unit).__name__} layers")
            plan.contradicted[layer.target_path] = (
                layer.source.path, f"they compute at different places among the {kind} "
                f"(source: number {source_rank + 1}, model: number {rank + 1}): created "
                "in another order?", key[0] == "")
    for plan in plans:
        if any(layer.target_path in plan.contradicted for layer in plan.layers):
            gone = [layer for layer in plan.layers if layer.target_path in plan.contradicted]
            plan.layers = [layer for layer in plan.layers
                           if layer.target_path not in plan.contradicted]
            plan.unpaired_target += [layer.target_path for layer in gone]
            plan.unpaired_source += [layer.source.path for layer in gone]


def _pairs_by_path(units, source_layers: Sequence[LayerInfo],
                   target_paths: Callable[[], dict[int, str]]):
    """`[(unit, source layer)]` by Keras structural path, or None unless every unit pairs."""
    if not source_layers or not all(layer.keras_path for layer in source_layers):
        return None
    paths = target_paths()
    by_path = {layer.keras_path: layer for layer in source_layers}
    if not all(paths.get(id(obj)) in by_path for _, obj, _ in units):
        return None
    return [(unit, by_path[paths[id(unit[1])]]) for unit in units]


def _same_class(class_name: str, unit, known_only: bool = False) -> bool:
    """True when the model layer is of the source's class, a subclass of it, or (for a Keras
    layer class) a base class of it. With `known_only` (layers paired by name, which the
    user chose), only two unrelated Keras layer classes fail: a Conv2DTranspose named like
    the Conv2D it replaced (same shapes, other meaning); a custom class may stand for any."""
    if not class_name or any(cls.__name__ == class_name for cls in type(unit).__mro__):
        return True  # no class recorded: the shapes are still checked
    known = getattr(keras.layers, class_name, None)
    if not (isinstance(known, type) and issubclass(known, keras.layers.Layer)):
        return known_only
    if issubclass(known, type(unit)):
        return True
    return known_only and not type(unit).__module__.startswith("keras.")


def _held_by_class(class_name: str, path: str, block: Block | None) -> bool:
    """True when the model layer at `path` sits inside a layer of the source's class in
    `block`: a Keras 2 whole-model `.h5` records the class of the top-level layer that holds
    the weights (`TimeDistributed` for the `Dense` it wraps, a custom layer for its own
    sub-layers), while the model's layer is the one that owns them. The shapes are still
    checked."""
    if not class_name or block is None or "/" not in path:
        return False
    steps = path.split("/")
    for top in block.layers:
        if top.name != steps[0]:
            continue
        objects = dict(iter_units(top))
        return any(cls.__name__ == class_name
                   for i in range(1, len(steps))
                   for cls in type(objects.get("/".join(steps[:i]))).__mro__)
    return False


# --- validate --------------------------------------------------------------------------


def _say_adapted_inside(report: LoadReport, target_blocks: dict[str, Block]) -> None:
    """A caveat (and a warning) for input channels adapted in a convolution that is not the
    model's first weighted layer: its inputs are features of the layers before it, not image
    channels, so summed or repeated kernels there carry nothing of what was learned."""
    first = next((path for block in target_blocks.values()
                  for path, _, _ in unit_values_of(block)), None)
    inside = list(dict.fromkeys(m.layer for m in report.adapted if m.layer != first))
    if not inside:
        return
    caveat = (f"on_mismatch='adapt' adapted the input channels of {inside}, not the model's "
              f"first weighted layer ({first}): "
              f"{'its inputs are' if len(inside) == 1 else 'their inputs are'} likely features "
              "of the layers before, not image channels, and summed or repeated kernels there "
              "carry nothing of what was learned. Adapt a first convolution only: leave these "
              "out (exclude= their blocks, or on_mismatch='skip').")
    _say(report, caveat, stacklevel=5)


def _validate(plans: list[_BlockPlan], report: LoadReport, on_mismatch: str, src: Source) -> None:
    adaptable = False
    unadapted: list[tuple[int, int]] = []  # (source, model) input channels "adapt" cannot
    names_checked = src.variable_names_checked
    for plan in plans:
        for layer in plan.layers:
            if not (_same_class(layer.source.class_name, layer.unit,
                                known_only=plan.pairing == "name")
                    or _held_by_class(layer.source.class_name, layer.target_path, plan.block)):
                report.mismatched.append(
                    Mismatch(plan.target, layer.target_path, "*",
                             f"class differs (paired by {plan.pairing} with "
                             f"{layer.source.path!r})",
                             layer.source.class_name, type(layer.unit).__name__))
                continue
            source_vars = _variables_by_target_key(layer, src.variable_names_pair)
            for key, value in layer.current.items():
                var = source_vars.pop(key, None)
                name = str(getattr(value, "name", key))
                target_shape = tuple(int(d) for d in value.shape)
                target_dtype = keras.backend.standardize_dtype(value.dtype)
                if var is None:
                    reason = "missing in source"
                    if _by_position(layer):
                        reason += (
                            f" (the source records this layer's variables by position only "
                            f"and holds {len(layer.source.variables)} of the model's "
                            f"{len(layer.current)}, so which one it lacks is not known"
                            + (f"; {src.configs_hint}" if src.configs_hint else "") + ")")
                    report.mismatched.append(
                        Mismatch(plan.target, layer.target_path, name, reason,
                                 "-", f"{target_shape} {target_dtype}")
                    )
                    continue
                layer.keys[key] = var.key
                problem = _incompatibility(var, target_shape, target_dtype)
                if (problem is None and not _unnamed(var) and name != key
                        and var.name != name
                        and (names_checked or {var.name, name} <= ROLE_NAMES)):
                    problem = f"name differs (source {var.name!r})"
                if problem is None:
                    layer.load[key] = None
                    continue
                mismatch = Mismatch(plan.target, layer.target_path, name, problem,
                                    f"{var.shape} {var.dtype}", f"{target_shape} {target_dtype}")
                transform = _adapter(var, target_shape, layer.unit)
                if transform is not None and on_mismatch == "adapt":
                    layer.load[key] = transform
                    report.adapted.append(mismatch)
                    continue
                adaptable = adaptable or transform is not None
                channels = _input_channels(var, target_shape, layer.unit)
                if on_mismatch == "adapt" and channels is not None:  # not a supported case
                    unadapted.append(channels)
                    mismatch = dataclasses.replace(mismatch, reason=(
                        f"{problem}: {channels[0]} -> {channels[1]} input channels, which "
                        "on_mismatch='adapt' does not adapt"))
                report.mismatched.append(mismatch)
            for var in source_vars.values():
                report.mismatched.append(
                    Mismatch(plan.target, layer.target_path, var.name, "not in model",
                             f"{var.shape} {var.dtype}", "-")
                )
    if not report.mismatched:
        return
    if on_mismatch == "skip":
        report.skipped = list(report.mismatched)
        _skip_whole_layers(plans, report)
        return
    lines = "\n".join(f"  - {m}" for m in report.mismatched)
    unfit = {(m.block, m.layer) for m in report.mismatched}
    rest = any((plan.target, layer.target_path) not in unfit
               for plan in plans for layer in plan.layers)
    hints = (["on_mismatch='skip' to load the rest"] if rest else []) + [
        "only=/exclude= to select fewer blocks"]
    if adaptable:
        hints.insert(0, "on_mismatch='adapt' to adapt the first convolution's input channels "
                        "(as timm's adapt_input_conv does)")
    adapt = _quantization_hint(plans, report)
    if on_mismatch == "adapt":
        from keras_blockreuse.adapt import SUPPORTED

        asked = ", ".join(dict.fromkeys(f"{a} -> {b}" for a, b in unadapted))
        adapt += (f"on_mismatch='adapt' adapts a convolution kernel's input channels only, and "
                 f"only {SUPPORTED}; "
                 + (f"{asked} is not one of these.\n" if unadapted
                    else "the mismatches above are not of that kind.\n"))
    raise BlockMismatchError(
        f"{len(report.mismatched)} variable(s) or layer(s) of the selected blocks do not fit "
        f"the model; nothing was loaded:\n{lines}\n"
        + "".join(_unpaired_table(plan, src) for plan in plans)
        + adapt + "Pass " + ", or ".join(hints) + "."
    )


QUANTIZATION_VARIABLES = frozenset({
    "kernel_scale", "kernel_zero", "g_idx", "embeddings_scale", "embeddings_zero",
    "inputs_scale", "inputs_amax_history", "kernel_amax_history", "outputs_grad_scale",
    "outputs_grad_amax_history"})
"""Variables Keras's `model.quantize(...)` adds to a layer (int8, int4, float8, GPTQ)."""


def _quantization_hint(plans: list[_BlockPlan], report: LoadReport) -> str:
    """For layers that do not fit because one side was quantized (`model.quantize("int8")`:
    an integer kernel and its scale; "int4": a packed one, its scale and zero point;
    "float8": scales and amax histories) or both in modes holding other variables, the
    order of steps that
    loads them; "" otherwise. A source layer is known quantized by its variables' names
    (`QUANTIZATION_VARIABLES`) or, recorded by position, by an integer variable."""
    layers = {(plan.target, layer.target_path): layer for plan in plans
              for layer in plan.layers}
    model_side, source_side, both = set(), set(), set()
    for m in report.mismatched:
        layer = layers.get((m.block, m.layer))
        if layer is None:
            continue
        mode = getattr(layer.unit, "quantization_mode", None)
        source = any(v.name in QUANTIZATION_VARIABLES or "int" in str(v.dtype)
                     for v in layer.source.variables)
        if mode and source:
            if len(layer.source.variables) != len(layer.current):  # (else the same mode)
                both.add(m.layer)
        elif mode and len(layer.source.variables) < len(layer.current):
            model_side.add(m.layer)
        elif not mode and source:
            source_side.add(m.layer)
    hint = ""
    if model_side:
        hint += (f"The model's layers {sorted(model_side)} are quantized and the source's are "
                 "not: load the source into the model before model.quantize(...), then "
                 "quantize it.\n")
    if source_side:
        hint += (f"The source's layers paired with the model's {sorted(source_side)} hold "
                 "quantized values (integer kernels and their scales), the model's float "
                 "ones: quantize the model the same way (model.quantize(...)) before loading, "
                 "or load from the model's file saved before it was quantized.\n")
    if both:
        hint += (f"The model's layers {sorted(both)} and the source's paired with them are "
                 "quantized, the variables above say in other modes: quantize the model the "
                 "way the source's was, or load the float weights before model.quantize(...)."
                 "\n")
    return hint


def _skip_whole_layers(plans: list[_BlockPlan], report: LoadReport) -> None:
    """With `on_mismatch="skip"`, leaves every variable of a layer one of whose variables was
    skipped, as Keras's `load_weights(skip_mismatch=True)` skips whole layers: a bias loaded
    without its kernel would make a layer that no model trained."""
    skipped = {(m.block, m.layer) for m in report.skipped}
    for plan in plans:
        for layer in plan.layers:
            if layer.load and (plan.target, layer.target_path) in skipped:
                for key in layer.load:
                    value = layer.current[key]
                    report.skipped.append(Mismatch(
                        plan.target, layer.target_path, str(getattr(value, "name", key)),
                        "left with its layer (another of its variables does not fit)",
                        "-", f"{tuple(int(d) for d in value.shape)} "
                             f"{keras.backend.standardize_dtype(value.dtype)}"))
                layer.load.clear()


def _variables_by_target_key(layer: _LayerPlan, by_name: bool) -> dict[str, VariableInfo]:
    """The source layer's variables keyed by the model layer's keys.

    By key (`save_own_variables` order) — or, for sources that store variables in another
    order but name them reliably (legacy `.h5`: trainable first), by variable name when the
    names on both sides are unique and the same. Where the two layers hold another number of
    variables (a `BatchNormalization(center=False)` against a full one) and the source names
    each of its own (`source_model=`, a rebuilt structure), the names pair where one side's
    are all among the other's, so that the one missing is named rather than each later one
    paired with its neighbour's values; a source variable the model lacks is then left
    under its own key, `<source>/KEY`, to be reported. Keras's automatic names (`variable_1`)
    are counted per session, so they pair nothing: such variables pair by key.
    """
    source = {v.key: v for v in layer.source.variables}
    if not by_name and len(source) == len(layer.current):
        return source
    names = {str(getattr(value, "name", key)): key for key, value in layer.current.items()}
    stored = {v.name: v for v in layer.source.variables}
    unique = len(names) == len(layer.current) and len(stored) == len(source)
    if any(_unnamed(v) for v in layer.source.variables) or any(
            AUTOMATIC_VARIABLE.fullmatch(name) for name in names):
        return source
    if by_name and unique and set(names) == set(stored):
        return {key: stored[name] for name, key in names.items()}
    named = all(not _unnamed(v) for v in layer.source.variables)
    if (named and unique and len(stored) != len(names)
            and (set(stored) <= set(names) or set(names) <= set(stored))):
        return {names.get(name, f"<source>/{var.key}"): var for name, var in stored.items()}
    return source


def _unpaired_table(plan: _BlockPlan, src: Source) -> str:
    if not plan.unpaired_source and not plan.unpaired_target:
        return ""
    width = max(len(p) for p in [*plan.unpaired_source, "source layers (unpaired)"]) + 2
    rows = [f"{'source layers (unpaired)':<{width}}model layers (unpaired)"]
    for i in range(max(len(plan.unpaired_source), len(plan.unpaired_target))):
        left = plan.unpaired_source[i] if i < len(plan.unpaired_source) else "-"
        right = plan.unpaired_target[i] if i < len(plan.unpaired_target) else "-"
        rows.append(f"{left:<{width}}{right}")
    if plan.ambiguous and set(plan.ambiguous) >= set(plan.unpaired_target):
        return (f"Block {plan.target!r}: its layers' names pair them, but one side holds "
                "those names at more places (above): nothing is loaded into it.\n")
    if plan.contradicted and set(plan.contradicted) >= set(plan.unpaired_target):
        # The names pair them; their places say otherwise (see the reasons above).
        return (f"Block {plan.target!r}: its layers' automatic names pair them, but their "
                "places in the two models differ (above). If the blocks correspond under other "
                "names, pair them with rename={source block: model block}; otherwise name the "
                "layers (Dense(8, name='up')) and save again.\n")
    fixes = ["give the layers the same names"]
    if any(layer.order is None for layer in src.block_layers(plan.source)):
        fixes.append("load from a source whose layer order is known (a .blocks.h5 file, a "
                     "live model, a .keras archive)")
    else:  # the order is known on both sides, so the layer counts differ
        fixes.append("select blocks whose layers correspond one to one (blocks=, "
                     "source_blocks=, only=)")
    if (str(src.info.get("format", "")).startswith("Keras legacy")
            and "no model_config" in str(src.info.get("layer order", ""))):
        fixes.append("use a whole-model file (Keras 2 `model.save('model.h5')`), whose "
                     "model_config records the order of a nested model's layers")
    if str(src.info.get("format", "")).startswith(("Keras weights", "Keras sharded")):
        fixes.append("pass source_model= (the model that wrote the file, or a function "
                     "building it) so its structure is walked as Keras saves it")
    table = "\n".join(f"    {row}" for row in rows)
    return (
        f"Block {plan.target!r} (from source block {plan.source!r}): these layers could not be "
        f"paired by name, Keras path or computation order:\n{table}\n"
        f"  To pair them: {'; or '.join(fixes)}.\n"
    )


def _incompatibility(var: VariableInfo, shape: tuple, dtype: str) -> str | None:
    if var.shape != shape:
        return "shape differs"
    if _kind(var.dtype) != _kind(dtype):
        return "dtype kind differs"
    return None


def _kind(dtype: str) -> str:
    if "float" in dtype:
        return "float"
    if "int" in dtype:
        return "int"
    return dtype


def _input_channels(var: VariableInfo, shape: tuple, unit):
    """(source, model) input channels where only those of a convolution kernel differ."""
    from keras_blockreuse.adapt import input_channels

    return input_channels(var, shape, unit)


def _adapter(var: VariableInfo, shape: tuple, unit):
    if var.shape == shape:
        return None
    from keras_blockreuse.adapt import adapter_for

    return adapter_for(var, shape, unit)


def _cast_check(plans: list[_BlockPlan], found: list, rounded: list | None = None):
    """A `check(source block, layer path, key, array)` that appends `(layer, key, Mismatch)`
    to `found` for each value to be assigned as it is whose cast to the model's dtype would
    make it infinite, NaN or wrapped; run on every value before anything is assigned. Where
    the cast rounds floating-point values, `(layer, key, _Rounding)` goes to `rounded`."""
    targets = {}
    for plan in plans:
        for layer in plan.layers:
            for key, transform in layer.load.items():
                if transform is None:
                    dtype = keras.backend.standardize_dtype(layer.current[key].dtype)
                    targets[plan.source, layer.source.path, layer.keys[key]] = (
                        plan, layer, key, dtype, _numpy_dtype_or_none(dtype))

    def check(block: str, path: str, source_key: str, array) -> None:
        entry = targets.get((block, path, source_key))
        if entry is None:
            return
        plan, layer, key, dtype, same = entry
        array = np.asarray(array)
        if array.dtype == same:
            return  # no cast: nothing to overflow
        target = layer.current[key]
        magnitude = _overflow(array, dtype)
        if magnitude is not None:
            found.append((layer, key, Mismatch(
                plan.target, layer.target_path, str(getattr(target, "name", key)),
                f"value {magnitude:.6g} does not fit {dtype} (it would become "
                f"{'inf or NaN' if 'float' in dtype else 'another number'})",
                f"{tuple(array.shape)} {array.dtype}", f"{tuple(target.shape)} {dtype}")))
        elif rounded is not None:
            rounding = _rounding(array, same)
            if rounding is not None:
                rounded.append((layer, key, rounding))

    return check


@dataclasses.dataclass
class _Rounding:
    """What a cast to a narrower floating-point dtype did to one variable's values."""

    source: str  # the values' dtype ("float32")
    target: str  # the model's ("bfloat16")
    changed: int  # values the cast changed
    zeroed: int  # nonzero values it made 0 (underflow)
    size: int
    relative: float  # the largest relative change of a value it did not make 0


def _rounding(array: np.ndarray, target: np.dtype | None) -> _Rounding | None:
    """How casting floating-point `array` to `target` changes its values; None where it
    changes none (or either side is not floating point)."""
    if target is None or array.dtype.kind != "f" or array.size == 0 or not (
            target.kind == "f" or target.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")):
        return None
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        back = array.astype(target).astype(array.dtype)
        differ = (back != array) & ~np.isnan(array)
        changed = int(np.count_nonzero(differ))
        if not changed:
            return None
        zeroed = differ & (back == 0)
        kept = differ & ~zeroed
        relative = float(np.max(np.abs((back[kept] - array[kept]) / array[kept]))) if \
            kept.any() else 0.0
    return _Rounding(str(array.dtype), target.name, changed, int(np.count_nonzero(zeroed)),
                     int(array.size), relative)


def _say_rounded(rounded: list, report: LoadReport) -> None:
    """The caveat for values a cast to the model's dtype rounded (`_cast_check`), among those
    the load assigns; and a warning where nonzero values became 0."""
    rounded = [(layer, key, r) for layer, key, r in rounded if key in layer.load]
    if not rounded:
        return
    casts = sorted({f"{r.source} -> {r.target}" for _, _, r in rounded})
    changed = sum(r.changed for _, _, r in rounded)
    size = sum(r.size for _, _, r in rounded)
    caveat = (f"{changed:,} of {size:,} values in {len(rounded)} variable(s) were rounded to the "
              f"model's dtype ({', '.join(casts)}; the largest relative change "
              f"{max(r.relative for _, _, r in rounded):.3g}), as Keras's load_weights casts "
              "them.")
    zeroed = [(layer, key, r) for layer, key, r in rounded if r.zeroed]
    if not zeroed:
        report.caveats.append(caveat)
        return
    where = ", ".join(f"{layer.target_path}/{str(getattr(layer.current[key], 'name', key))} "
                      f"({r.zeroed:,})" for layer, key, r in zeroed[:8])
    more = f" and {len(zeroed) - 8} more" if len(zeroed) > 8 else ""
    _say(report, f"{caveat} {sum(r.zeroed for _, _, r in zeroed):,} nonzero values became 0, "
                 f"too small for the model's dtype: {where}{more}.")


def _refuse_overflows(found: list, plans: list[_BlockPlan], report: LoadReport,
                      on_mismatch: str) -> None:
    """Refuses the values `_cast_check` found, before anything is assigned; with
    `on_mismatch="skip"`, leaves their layers whole instead."""
    if not found:
        return
    mismatches = []
    for layer, key, mismatch in found:
        layer.load.pop(key, None)
        mismatches.append(mismatch)
    report.mismatched.extend(mismatches)
    if on_mismatch == "skip":
        report.skipped.extend(mismatches)
        _skip_whole_layers(plans, report)
        return
    lines = "\n".join(f"  - {m}" for m in mismatches)
    raise BlockMismatchError(
        f"{len(mismatches)} variable(s) hold values that the model's dtype cannot represent; "
        f"nothing was loaded:\n{lines}\n"
        "Pass on_mismatch='skip' to load the rest, or use a wider dtype for these layers."
    )


def _numpy_dtype_or_none(dtype: str) -> np.dtype | None:
    try:
        return numpy_dtype(dtype)
    except TypeError:
        return None


def _overflow(array: np.ndarray, dtype: str) -> float | None:
    """The finite value of largest magnitude (with its sign) that the cast to `dtype` turns
    infinite, NaN or wrapped; `None` when every value survives the cast."""
    target = _numpy_dtype_or_none(dtype)
    if target is None or array.dtype == target or array.size == 0:
        return None
    if array.dtype.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        bad = (array < info.min) | (array > info.max)
    elif target.kind == "f" or dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        source = array.astype(np.float64) if array.dtype.kind in "iu" else array
        with np.errstate(over="ignore", invalid="ignore"):
            cast = source.astype(target).astype(np.float64)
        bad = np.isfinite(source) & ~np.isfinite(cast)
    else:
        return None
    if not bad.any():
        return None
    offending = array[bad].astype(np.float64)
    return float(offending[np.argmax(np.abs(offending))])  # the value itself, sign kept


def _nesting_hint(src: Source, source_blocks: list[str], model,
                  target_blocks: dict[str, Block]) -> str:
    """Explains a classifier-into-backbone load (or the reverse), where one side's layers sit
    inside a nested model of the other."""
    source_paths = [layer.path for name in source_blocks for layer in src.block_layers(name)]
    model_tops = {layer.name for block in target_blocks.values() for layer in block.layers}
    inside_source = sorted({p.split("/")[0] for p in source_paths
                            if "/" in p and p.split("/")[1] in model_tops})
    if not inside_source and any(p.startswith(f"{model.name}/") for p in source_paths):
        # the source's nested model of the model's name, its layers' automatic names shifted
        # (built in another session): the model is likely that backbone
        inside_source = [model.name]
    if inside_source:
        return _nested_source_hint(src, inside_source, source_blocks, model, model_tops)
    source_tops = {p.split("/")[0] for p in source_paths}
    inside_model = sorted(
        block_layer.name for block in target_blocks.values() for block_layer in block.layers
        if isinstance(block_layer, keras.Model)
        and source_tops & {inner.name for inner in block_layer.layers})
    if not inside_model and source_paths and all("/" not in p for p in source_paths):
        # a bare backbone's file whose names share none of the nested model's (built in
        # another session): a nested model holding as many layers, of the same classes
        # (classes counted, not in order: a Keras file lists its blocks by name, not by
        # computation order; a class the source does not record may be any)
        classes = [layer.class_name for name in source_blocks for layer in src.block_layers(name)]
        known = collections.Counter(c for c in classes if c)
        inside_model = [
            block_layer.name for block in target_blocks.values() for block_layer in block.layers
            if isinstance(block_layer, keras.Model)
            and len(inner := weighted_layers(block_layer)) == len(classes)
            and not known - collections.Counter(type(u).__name__ for u in inner)]
        inside_model = inside_model if len(inside_model) == 1 else []
    if inside_model:
        return (f" The model holds these layers inside {inside_model} (a nested backbone): "
                f"load into it, `load_blocks(model.get_layer({inside_model[0]!r}), source)`, "
                "or map blocks with rename= and blocks=.")
    return ""


def _nested_source_hint(src: Source, nested: list[str], source_blocks: list[str], model,
                        model_tops: set[str]) -> str:
    """The remedies for a source whose layers sit inside a nested model (a classifier's
    backbone) that the model holds at its top level (a bare backbone), each as it is typed
    and each tested to load (tests/test_pairing.py, tests/test_hub.py)."""
    name = nested[0]
    # `blocks={name: ["*"]}` groups the model's top-level layers: are they its blocks' layers?
    top_level = model_tops == {layer.name for layer in weighted_layers(model)}
    kind = str(src.info.get("format", ""))
    remedies = []
    if kind == "live keras.Model":
        remedies.append(f"load from that sub-model: `load_blocks(model, "
                        f"classifier.get_layer({name!r}))`")
    inside = {layer.path.split("/")[1] for block in source_blocks
              for layer in src.block_layers(block) if layer.path.startswith(name + "/")}
    own_blocks = kind == BLOCK_FILE  # a block file keeps its blocks, whatever source_blocks=
    whole = name in source_blocks and all(
        layer.path.startswith(name + "/") for layer in src.block_layers(name))
    nested_layers = [layer for block in source_blocks for layer in src.block_layers(block)
                     if layer.path.startswith(name + "/")]
    in_order = kind.startswith("Keras archive") or all(  # a .keras rebuilds its order
        layer.order is not None for layer in nested_layers)
    pairable = model_tops <= inside or (len(model_tops) == len(inside) and in_order)
    if len(nested) == 1 and top_level and pairable and (whole or not own_blocks):
        # One block on each side: the nested model's layers pair by their names inside it
        # (`_below_one_prefix`), else by their computation order, which the source knows.
        options = [f"blocks={{{name!r}: ['*']}}"]
        if not own_blocks:
            options.append(f"source_blocks={{{name!r}: [{name!r}]}}")
        remedies.append(f"load it as one block, its layers paired by their names (or order) "
                        f"inside {name!r}: `load_blocks(model, source, {', '.join(options)})`")
    if kind == "keras-hub preset directory" and is_hub_model(model):
        remedies.append("pass neither blocks= nor source_blocks=: a keras-hub preset directory "
                        "is then grouped by its keras-hub preset, inside its backbone, and its "
                        "stages pair by name")
    if not remedies:
        remedies.append("load from that sub-model, or group the model with blocks= (and the "
                        "source with source_blocks=) so that its layers correspond one to one")
    return (f" The source holds these layers inside {nested} (a nested model, as a classifier "
            f"built around a backbone does): {'; or '.join(remedies)}.")


def _refuse_empty(plans: list[_BlockPlan], report: LoadReport, src: Source, model,
                  target_blocks: dict[str, Block],
                  target_paths: Callable[[], dict[int, str]]) -> None:
    """Raises when the load would assign no variable at all (unless `only=[]`)."""
    if any(layer.load for plan in plans for layer in plan.layers):
        return
    if report.skipped and any(plan.layers for plan in plans):
        raise BlockMismatchError(
            f"Nothing would be loaded from {src.description}: its layers pair with the "
            f"model's, but on_mismatch='skip' left every variable ({len(report.skipped)} "
            f"mismatched; first: {report.skipped[0]}). Build the model to the source's shapes "
            "and dtypes, use on_mismatch='adapt' where an adapter exists, or pass only=[] to "
            "load nothing deliberately."
        )
    renaming, offered = _rename_by_places(src, report.source_blocks, target_blocks, target_paths)
    hint = _nesting_hint(src, report.source_blocks, model, target_blocks) + renaming
    raise BlockMismatchError(
        f"Nothing would be loaded from {src.description}: no block of the model pairs with a "
        f"block of the source, or every variable was left.\n"
        f"  source blocks: {report.source_blocks}\n"
        f"  model blocks:  {list(target_blocks)}\n"
        "Map blocks whose names differ with rename={source block: model block}, group layers "
        "with blocks= / source_blocks=, or pass only=[] to load nothing deliberately." + hint,
        rename=offered,
    )


def _rename_by_places(src: Source, source_blocks: list[str], target_blocks: dict[str, Block],
                      target_paths: Callable[[], dict[int, str]]
                      ) -> tuple[str, dict[str, str] | None]:
    """`(hint, rename)`: the `rename=` that pairs every source block with the model block at
    its place (in Keras's saving walk, or a legacy `.h5`'s computation order), as a line for
    an error message and as a dict; `(why none is offered, None)`, or `("", None)`."""
    by_path = _rename_by_path(src, source_blocks, target_blocks, target_paths)
    return by_path if by_path[0] else _rename_by_order(src, source_blocks, target_blocks)


def _rename_by_path(src: Source, source_blocks: list[str], target_blocks: dict[str, Block],
                    target_paths: Callable[[], dict[int, str]]
                    ) -> tuple[str, dict[str, str] | None]:
    """A `rename=` that pairs every source block with the model block at its place in Keras's
    saving walk (`layers/dense` on both sides: the same model rebuilt, its automatic names
    shifted), offered as `(hint, rename)` where every block pairs one to one; else why none
    is, or `""`, and None."""
    rename, why = _rename_by_place(src, source_blocks, target_blocks, target_paths)
    if why:
        return ("\nNo rename= is offered: the blocks pair one to one by their places in Keras's "
                f"saving walk, but {why}.", None)
    if rename is None:
        return "", None
    return ("\nThe blocks pair one to one by their places in Keras's saving walk (the same model "
            f"with its automatic names shifted?), as Keras's load_weights pairs them: "
            f"rename={rename}", rename)


def _rename_by_place(src: Source, source_blocks: list[str], target_blocks: dict[str, Block],
                     target_paths: Callable[[], dict[int, str]]
                     ) -> tuple[dict[str, str] | None, str]:
    """`({source block: model block}, "")` for blocks whose names differ, where every source
    block sits at the place in Keras's saving walk of exactly one model block and each block
    sits at one place; `(None, why)` where the places pair them against the order in which
    their automatic names were given; `(None, "")` where the places do not pair them."""
    def top(path: str | None) -> str | None:  # `layers/dense`; a subclassed model's `head`
        steps = (path or "").split("/")
        if steps[0] == "layers":
            return "/".join(steps[:2]) if len(steps) > 1 else None
        return steps[0] or None

    try:
        theirs = {}
        for name in source_blocks:
            tops = {top(layer.keras_path) for layer in src.block_layers(name)}
            if len(tops) != 1 or None in tops:
                return None, ""
            theirs[tops.pop()] = name
        paths = target_paths()
    except Exception:  # noqa: BLE001 - a hint only: a model Keras cannot walk gets none
        return None, ""
    mine = {}
    for name, block in target_blocks.items():
        tops = {top(paths.get(id(layer))) for layer in block.layers}
        if len(tops) != 1 or None in tops:
            return None, ""
        mine[tops.pop()] = name
    if set(theirs) != set(mine):
        return None, ""
    why = _against_creation_order({theirs[p]: mine[p] for p in theirs})
    if why:
        return None, why
    return {theirs[p]: mine[p] for p in theirs if theirs[p] != mine[p]}, ""


def _against_creation_order(pairs: dict[str, str]) -> str:
    """Why pairing source blocks with model blocks by place (`pairs`) is not the same model
    with its automatic names shifted: a shift keeps the order of a class's counters
    (`dense, dense_1` -> `dense_3, dense_4`), so places that reverse it (`dense` -> `dense_4`,
    `dense_1` -> `dense_3`) say the layers were created in another order than they compute,
    on one side only: another model, whose values would go to other layers. `""` when every
    family keeps its order."""
    families: dict[str, list[tuple[int, int, str, str]]] = {}
    for a, b in pairs.items():
        (stem, mine), (theirs, yours) = split_counter(a), split_counter(b)
        if stem == theirs:
            families.setdefault(stem, []).append((mine, yours, a, b))
    for items in families.values():
        items.sort()
        if [b for _, b, _, _ in items] != sorted(b for _, b, _, _ in items):
            shown = [f"{a} -> {b}" for _, _, a, b in items]
            return (f"those places pair {shown}, against the order in which the automatic "
                    "names were given (a shift keeps it): the layers were created in another "
                    "order than they compute on one side, so this may be another model. Pair "
                    "them with rename= only if you know which layer is which")
    return ""


def _rename_by_order(src: Source, source_blocks: list[str],
                     target_blocks: dict[str, Block]) -> tuple[str, dict[str, str] | None]:
    """For a legacy `.h5`, which records its layers in computation order but no Keras paths:
    the `rename=` that pairs every source block with the model block at its place in
    computation order, offered only where nothing else tells them apart: at every place both
    sides hold a layer with an automatic name of the same class (`dense_1`, `dense_4`; the
    class checked where the file records it) and variables of the same shapes (the same
    model rebuilt, its automatic names shifted), as `(hint, rename)`. Else `""` or why no
    rename is offered, and None."""
    if not str(src.info.get("format", "")).startswith("Keras legacy"):
        return "", None
    rename, unmatched, why = _rename_by_computation_order(src, source_blocks, target_blocks)
    if unmatched:
        return ("\nNo rename= is offered: a legacy .h5 records its layers in computation order, "
                "not Keras paths, so blocks are paired by their places only where both sides "
                "hold layers with automatic names of the same classes and variable shapes in "
                f"the same order; {unmatched}.", None)
    if why:
        return ("\nNo rename= is offered: the blocks pair one to one by their places in "
                f"computation order, with the same classes and variable shapes, but {why}.",
                None)
    return ("\nThe blocks pair one to one by their places in computation order, with the same "
            "classes and variable shapes (the same model with its automatic names shifted?), "
            f"as Keras's legacy load_weights pairs them: rename={rename}", rename)


def _rename_by_computation_order(src: Source, source_blocks: list[str],
                                 target_blocks: dict[str, Block]
                                 ) -> tuple[dict[str, str] | None, str, str]:
    """`(rename, "", "")` pairing source blocks with model blocks place by place in
    computation order (see `_rename_by_order`); `(None, unmatched, "")` where the places do
    not correspond; `(None, "", why)` where they pair against the automatic names' order."""
    theirs = {name: sorted(src.block_layers(name), key=lambda layer: layer.order or 0)
              for name in source_blocks}
    unmatched = _unmatched_by_order(src, theirs, target_blocks)
    if unmatched:
        return None, unmatched, ""
    places = sorted(theirs, key=lambda name: theirs[name][0].order)
    why = _against_creation_order(dict(zip(places, target_blocks, strict=True)))
    if why:
        return None, "", why
    return {a: b for a, b in zip(places, target_blocks, strict=True) if a != b}, "", ""


def _unmatched_by_order(src: Source, theirs: dict[str, list[LayerInfo]],
                        target_blocks: dict[str, Block]) -> str:
    """Why the source's blocks, at their places in computation order, do not correspond one to
    one with the model's (see `_rename_by_order`); `""` when they do."""
    if any(layer.order is None for layers in theirs.values() for layer in layers):
        return ("the file does not record the order of every layer "
                f"({src.info.get('layer order', 'unknown')})")
    if not theirs or not all(theirs.values()):
        return "the file holds no layer with weights"
    places = sorted(theirs, key=lambda name: theirs[name][0].order)
    if len(places) != len(target_blocks):
        return (f"the model has {len(target_blocks)} blocks and the file {len(places)} "
                "(a layer added or removed shifts the names and places of the others)")
    for source_name, (target_name, block) in zip(places, target_blocks.items(), strict=True):
        units = list(unit_values_of(block))
        if len(units) != len(theirs[source_name]):
            return (f"the model's block {target_name!r} holds {len(units)} layers and the "
                    f"file's {source_name!r}, at its place, {len(theirs[source_name])}")
        for layer, (path, unit, current) in zip(theirs[source_name], units, strict=True):
            cls = type(unit).__name__
            if layer.class_name and layer.class_name != cls:
                return (f"the model's {path!r} is of class {cls} and the file's "
                        f"{layer.path!r}, at its place, of class {layer.class_name}")
            if not (automatic_name(path, unit) and automatic_name(layer.path, unit)):
                return (f"the model's {path!r} and the file's {layer.path!r}, at its place, "
                        f"are not both automatic names of class {cls}, which only a shifted "
                        "counter would explain")
            mine, stored = _shapes(current.values()), _shapes(layer.variables)
            if mine != stored:
                return (f"the model's {path!r} holds variables of shapes {mine} and the "
                        f"file's {layer.path!r}, at its place, {stored}")
    return ""


# --- assign ----------------------------------------------------------------------------


def _assign(plans: list[_BlockPlan], values: dict, own: set) -> int:
    """Assigns every validated variable, once every value is read, verified and transformed,
    layer by layer in the model's order (as Keras loads them).

    A layer whose loading is known to be "stored value i goes to variable i" (Keras's base
    `Layer`, and the convolutions, Dense, EinsumDense and Embedding without LoRA or
    quantization) has its variables assigned directly, one call each; every other layer goes
    through its own `load_own_variables`, once, which keeps custom, LoRA and quantized layers
    right (`own`: those layers, by source block and layer path). Such a layer may raise on
    its values: then every variable assigned before is given back its value, and the load is
    refused.

    Raises:
        BlockMismatchError: a layer's own `load_own_variables` raised; no weight has changed.
    """
    kept = [] if not own else [  # the values to put back if a layer fails on its own
        (variable, np.array(to_numpy(variable), copy=True))
        for plan in plans for layer in plan.layers if layer.load
        for variable in layer.current.values() if isinstance(variable, keras.Variable)]
    count = 0
    for plan in plans:
        for layer in plan.layers:
            if not layer.load:
                continue
            loaded = _loaded(layer, values[plan.source][layer.source.path])
            count += len(loaded)
            if (plan.source, layer.source.path) not in own:
                for key, array in loaded.items():
                    _assign_variable(layer.current[key], array)
                continue
            try:
                layer.unit.load_own_variables(_own_store(layer, loaded))
            except BaseException as error:
                for variable, value in kept:
                    variable.assign(value)
                if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: as is
                    raise
                raise BlockMismatchError(
                    f"Layer {layer.target_path!r} ({type(layer.unit).__name__}) of block "
                    f"{plan.target!r} refused its values in its own load_own_variables "
                    f"({type(error).__name__}: {error}); every variable assigned before it was "
                    "given back its value: nothing was loaded. Load without this block "
                    "(only=/exclude=), or give the layer values it accepts."
                ) from error
    return count


@contextlib.contextmanager
def _interrupts_held():
    """Holds SIGINT (Ctrl-C) while a load assigns its values and delivers it once they are all
    assigned (or the load failed), so that an interrupt never leaves a model half loaded.

    Python runs signal handlers in the main thread only, which is where this applies; in
    another thread, or where SIGINT's handler was not set from Python, nothing changes. The
    held signal goes to the handler that was in place (`KeyboardInterrupt` by default).
    """
    import signal
    import threading

    held: list = []
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            if callable(previous):
                previous(signal.SIGINT, held[0])
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


def _loaded(layer: _LayerPlan, arrays: dict) -> dict:
    """The layer's values to assign, by its own keys: the source's arrays, transformed where
    a transform adapts them."""
    return {key: (arrays[layer.keys[key]] if transform is None
                  else transform(arrays[layer.keys[key]]))
            for key, transform in layer.load.items()}


def _own_store(layer: _LayerPlan, loaded: dict) -> dict:
    """The store a layer with its own loading gets in `load_own_variables`: the loaded values
    by key, and the model's current values for the keys not loaded."""
    return {key: loaded[key] if key in loaded else to_numpy(current)
            for key, current in layer.current.items()}


def _streams(src: Source, plans: list[_BlockPlan]) -> bool:
    """True when the source can be loaded in two passes (`verify`, then `iter_values`: block
    files and every `LayerSource`) and every value is assigned as read, not adapted."""
    if not (callable(getattr(src, "verify", None)) and callable(getattr(src, "iter_values", None))):
        return False
    return all(transform is None for plan in plans for layer in plan.layers
               for transform in layer.load.values())


def _casts(plans: list[_BlockPlan]) -> bool:
    """True when some value is stored in another dtype than its model variable's."""
    for plan in plans:
        for layer in plan.layers:
            stored = {v.key: v.dtype for v in layer.source.variables}
            for key in layer.load:
                dtype = keras.backend.standardize_dtype(layer.current[key].dtype)
                if stored.get(layer.keys[key]) != dtype:
                    return True
    return False


def _nbytes(src: Source, plans: list[_BlockPlan]) -> int:
    """The bytes of the selected blocks that would be read, counted up to `HOLD_BYTES` + 1."""
    total = 0
    for plan in plans:
        if any(layer.load for layer in plan.layers):
            for layer in src.block_layers(plan.source):
                total += sum(var.nbytes for var in layer.variables)
                if total > HOLD_BYTES:
                    return total
    return total


def _assign_streaming(plans: list[_BlockPlan], src: Source) -> int:
    """Assigns every validated variable as its value is read, after `src.verify` passed (only
    for layers assigned directly: a selection with a layer of its own loading is held).

    `src.verify` read every selected value before the first assignment (checking block
    checksums, shapes, dtypes and casts), and the source holds its file open, so the bytes
    assigned here are the bytes verified — unless the file is rewritten in place during the
    load (writers of block files replace them atomically, which an open file does not see).
    That is detected: a block file's checksum is checked again after the block's last value;
    a Keras file's values (no checksums of their own) are each compared with the hash pass 1
    kept, before the value is used. A difference is raised, naming what was already assigned.
    """
    count = 0
    done: list[str] = []
    for plan in plans:
        layers = {layer.source.path: layer for layer in plan.layers if layer.load}
        if not layers:
            continue
        target_keys = {path: {layer.keys[k]: k for k in layer.load}
                       for path, layer in layers.items()}
        assigned: list[str] = []  # layers of this block with a value assigned
        try:
            for path, source_key, array in src.iter_values(plan.source):
                layer = layers.get(path)
                key = target_keys[path].get(source_key) if layer is not None else None
                if key is None:
                    continue
                count += 1
                _assign_variable(layer.current[key], array)
                if layer.target_path not in assigned:
                    assigned.append(layer.target_path)
        except BlockFileError as error:
            raise BlockFileError(
                f"{src.description} could not be read again as it was verified: every value "
                "was verified before the first assignment, then reading it again failed or "
                f"differed ({error}). " + _loaded_so_far(done, plan, assigned)
                + " Either the file was rewritten in place during the load, or reading it "
                "failed (an I/O error); load it again."
            ) from None
        done.append(plan.target)
    return count


def _loaded_so_far(done: list[str], plan: _BlockPlan, assigned: list[str]) -> str:
    """What a load that failed while assigning had assigned: whole blocks, then the layers of
    the block it was in."""
    layers = [layer.target_path for layer in plan.layers if layer.load]
    of_it = ("all of its layers" if assigned and set(assigned) == set(layers)
             else f"its layers {assigned} of {layers}" if assigned else "none of its layers")
    return (f"Loaded before the error: blocks {done}, and of block {plan.target!r} {of_it}; "
            "the model's other blocks were not changed.")


def _direct_loaders() -> set:
    layers = keras.layers
    classes = (layers.Layer, layers.Conv2D, layers.Dense, layers.EinsumDense, layers.Embedding)
    return {(cls.save_own_variables, cls.load_own_variables) for cls in classes}


_DIRECT_LOADERS = _direct_loaders()


def _loads_directly(unit, current: dict) -> bool:
    """True when `unit.load_own_variables(store)` would just assign `store[k]` to `current[k]`."""
    cls = type(unit)
    return (
        (cls.save_own_variables, cls.load_own_variables) in _DIRECT_LOADERS
        and not getattr(unit, "lora_enabled", False)
        and getattr(unit, "quantization_mode", None) is None
        and all(isinstance(v, keras.Variable) for v in current.values())
    )


def _tensorflow_assign():
    if keras.backend.backend() != "tensorflow":
        return None, None
    try:
        import tensorflow as tf
        from tensorflow.python.ops.resource_variable_ops import ResourceVariable
    except ImportError:
        return None, None
    return tf.raw_ops.AssignVariableOp, ResourceVariable


_ASSIGN_OP, _RESOURCE_VARIABLE = _tensorflow_assign()

try:  # inside a StatelessScope, `assign` records the value instead of writing it
    from keras.src.backend.common.stateless_scope import in_stateless_scope as _in_stateless_scope
except ImportError:  # pragma: no cover - a Keras without it

    def _in_stateless_scope() -> bool:
        return True


def _assign_variable(variable, array: np.ndarray) -> None:
    """`variable.assign(array)`; one raw `AssignVariableOp` for a plain TensorFlow variable.

    Keras's `Variable.assign` converts, checks and casts in Python, five times the cost of the
    assignment itself (benchmarks/RESULTS.md). Here the shape and dtype are checked first, so
    the raw op is used only where it does exactly what `assign` would; anything else (another
    backend, a distributed or autocast variable, a cast) takes `variable.assign`.
    """
    inner = getattr(variable, "value", None)
    if (
        _ASSIGN_OP is not None
        and not _in_stateless_scope()
        and type(inner) is _RESOURCE_VARIABLE
        and isinstance(array, np.ndarray)
        and array.dtype == inner.dtype.as_numpy_dtype
        and array.shape == tuple(inner.shape)
    ):
        _ASSIGN_OP(resource=inner.handle, value=array)
    else:
        variable.assign(array)
