"""`load_blocks`: load any subset of a source's blocks into a model, by name, all or nothing.

A load runs one pass for every source: **select** the source blocks (`only`, `exclude`),
**map** them onto the model's blocks (`rename`; inside a block, layers by name, or by
computation order when the names differ), **validate** every selected variable (presence,
shape, dtype) and read and verify the values (checksums), then **assign** all of them — or,
if anything failed, none — **freeze** if asked, and **report**.

Example:

```python
report = load_blocks(detector, "classifier.blocks.h5", only=["block_1", "block_2"])
print(report)
```
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_blockreuse.blocks import Block, BlockRule, get_blocks, select
from keras_blockreuse.errors import BlockFileError, BlockMismatchError
from keras_blockreuse.report import LoadReport, Mismatch
from keras_blockreuse.sources import Source, open_source
from keras_blockreuse.store import LayerInfo, VariableInfo, _block_values, _to_numpy

ON_MISMATCH = ("error", "skip", "adapt")


@dataclasses.dataclass
class _LayerPlan:
    """One target layer and the source layer it takes its values from."""

    target_path: str
    unit: Any
    current: dict  # key -> the target's current value (a variable or tensor)
    source: LayerInfo
    load: dict = dataclasses.field(default_factory=dict)  # key -> transform (None = as is)


@dataclasses.dataclass
class _BlockPlan:
    target: str
    source: str
    layers: list[_LayerPlan]
    by_order: bool


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
        source: a `.blocks.h5` path, a live `keras.Model`, or a Keras weights file where its
            reader is installed.
        only: source block names or globs to load; default every source block the model has.
        exclude: source block names or globs not to load.
        rename: `{source block: model block}` for blocks whose names differ.
        on_mismatch: `"error"` (raise, listing every problem, before changing anything),
            `"skip"` (leave the variables that do not fit as they are, and report them) or
            `"adapt"` (adapt known cases, such as a first convolution's input channels).
        freeze: set `trainable=False` on the loaded blocks' layers. Compile the model again
            for this to take effect in training.
        blocks: the model's block rule (for models that are not a `BlockModel`).
        source_blocks: the block rule for a source without blocks of its own; default the
            source's own rule, else the model's.
        **source_options: options for the source's reader (such as `source_model=`).

    Returns:
        A `LoadReport`.

    Raises:
        BlockMismatchError: unknown block names, or variables that do not fit (with
            `on_mismatch="error"`). No weight of the model has changed.
        BlockFileError: the source file is unreadable or corrupt. No weight has changed.

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
    if source_blocks is None and not hasattr(source, "_block_rule"):
        source_blocks = target_rule
    values = None
    with open_source(source, source_blocks, **source_options) as src:
        plans, report = _plan(src, target_blocks, only, exclude, rename)
        _validate(plans, report, on_mismatch)
        if _streams(src, plans):
            # Pass 1 verifies every selected block and keeps no value; pass 2 reads them again
            # and assigns each value as it arrives: memory for one variable, not the blocks.
            src.verify([plan.source for plan in plans])
            report.variables_loaded = _assign_streaming(plans, src)
        else:
            values = {plan.source: src.read_block(plan.source) for plan in plans}
        report.bytes_read = src.bytes_read
    if values is not None:
        report.variables_loaded = _assign(plans, values)
    report.loaded = {p.target: p.source for p in plans if any(layer.load for layer in p.layers)}
    report.untouched = [name for name in target_blocks if name not in report.loaded]
    if freeze:
        for name in report.loaded:
            for layer in target_blocks[name].layers:
                layer.trainable = False
            report.frozen.append(name)
    report.seconds = time.perf_counter() - start
    return report


# --- select and map -------------------------------------------------------------------


def _plan(
    src: Source,
    target_blocks: dict[str, Block],
    only,
    exclude,
    rename,
) -> tuple[list[_BlockPlan], LoadReport]:
    source_names = src.block_names()
    target_names = list(target_blocks)
    rename = dict(rename or {})
    where = (
        f"The source {src.description} has blocks {source_names}; "
        f"the model has blocks {target_names}."
    )
    select(source_names, list(rename), "`rename` keys", where)
    selected = select(source_names, only, "`only`", where)
    if exclude is not None:
        dropped = set(select(source_names, exclude, "`exclude`", where))
        selected = [name for name in selected if name not in dropped]
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
    in_source = {rename.get(s, s) for s in source_names}
    report = LoadReport(source=src.description, target_blocks=target_names)
    report.missing = [t for t in target_names if t not in in_source]
    report.unexpected = [s for s in source_names if s not in targets.values()]
    plans = []
    for t, s in targets.items():
        plans.append(_map_block(s, src.block_layers(s), t, target_blocks[t], report))
    return plans, report


def _map_block(
    source_name: str, source_layers: Sequence[LayerInfo], target_name: str, block: Block, report
) -> _BlockPlan:
    units = [(path, unit, values) for path, unit, values in _block_values(block)]
    by_name = {layer.path: layer for layer in source_layers}
    names_match = all(path in by_name for path, _, _ in units)
    by_order = not names_match and len(units) == len(source_layers)
    layers = []
    matched_sources = set()
    for index, (path, unit, current) in enumerate(units):
        source = source_layers[index] if by_order else by_name.get(path)
        if source is None:
            report.mismatched.append(
                Mismatch(target_name, path, "*", "layer missing in source", "-", "present")
            )
            continue
        matched_sources.add(source.path)
        layers.append(_LayerPlan(path, unit, current, source))
    for layer in source_layers:
        if layer.path not in matched_sources:
            report.mismatched.append(
                Mismatch(target_name, layer.path, "*", "layer not in model", "present", "-")
            )
    if by_order:
        report.matched_by_order.append(target_name)
    return _BlockPlan(target_name, source_name, layers, by_order)


# --- validate --------------------------------------------------------------------------


def _validate(plans: list[_BlockPlan], report: LoadReport, on_mismatch: str) -> None:
    for plan in plans:
        for layer in plan.layers:
            source_vars = {v.key: v for v in layer.source.variables}
            for key, value in layer.current.items():
                var = source_vars.pop(key, None)
                name = str(getattr(value, "name", key))
                target_shape = tuple(int(d) for d in value.shape)
                target_dtype = keras.backend.standardize_dtype(value.dtype)
                if var is None:
                    report.mismatched.append(
                        Mismatch(plan.target, layer.target_path, name, "missing in source",
                                 "-", f"{target_shape} {target_dtype}")
                    )
                    continue
                problem = _incompatibility(var, target_shape, target_dtype)
                if problem is None:
                    layer.load[key] = None
                    continue
                mismatch = Mismatch(plan.target, layer.target_path, name, problem,
                                    f"{var.shape} {var.dtype}", f"{target_shape} {target_dtype}")
                transform = (
                    _adapter(var, target_shape, layer.unit) if on_mismatch == "adapt" else None
                )
                if transform is not None:
                    layer.load[key] = transform
                    report.adapted.append(mismatch)
                else:
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
        return
    lines = "\n".join(f"  - {m}" for m in report.mismatched)
    raise BlockMismatchError(
        f"{len(report.mismatched)} variable(s) of the selected blocks do not fit the model; "
        f"nothing was loaded:\n{lines}\n"
        "Pass on_mismatch='skip' to load the rest, or select fewer blocks with only=/exclude=."
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


def _adapter(var: VariableInfo, shape: tuple, unit):
    try:
        from keras_blockreuse.adapt import adapter_for
    except ImportError:
        return None
    return adapter_for(var, shape, unit)


# --- assign ----------------------------------------------------------------------------


def _assign(plans: list[_BlockPlan], values: dict) -> int:
    """Assigns every validated variable, once every value is read, verified and transformed.

    A layer whose loading is known to be "stored value i goes to variable i" (Keras's base
    `Layer`, and the convolutions, Dense, EinsumDense and Embedding without LoRA or
    quantization) has its variables assigned directly, one call each; every other layer goes
    through its own `load_own_variables`, which keeps custom, LoRA and quantized layers right.
    """
    direct = []  # (variable, array)
    stores = []  # (layer, {key: array}) for load_own_variables
    count = 0
    for plan in plans:
        block_values = values[plan.source]
        for layer in plan.layers:
            if not layer.load:
                continue
            arrays = block_values[layer.source.path]
            loaded = {
                key: arrays[key] if transform is None else transform(arrays[key])
                for key, transform in layer.load.items()
            }
            count += len(loaded)
            if _loads_directly(layer.unit, layer.current):
                direct.extend((layer.current[key], array) for key, array in loaded.items())
                continue
            store = {
                key: loaded[key] if key in loaded else _to_numpy(current)
                for key, current in layer.current.items()
            }
            stores.append((layer.unit, store))
    for variable, array in direct:
        _assign_variable(variable, array)
    for unit, store in stores:
        unit.load_own_variables(store)
    return count


def _streams(src: Source, plans: list[_BlockPlan]) -> bool:
    """True when the source can verify blocks without keeping their values (a block file:
    checksums) and every value is assigned as stored (no adaptation)."""
    return callable(getattr(src, "verify", None)) and callable(
        getattr(src, "iter_values", None)
    ) and all(t is None for p in plans for layer in p.layers for t in layer.load.values())


def _assign_streaming(plans: list[_BlockPlan], src: Source) -> int:
    """Assigns every validated variable as its value is read, after `src.verify` passed.

    The source was verified in full before this runs, and a reader holds its file open, so
    the bytes read here are those verified — unless the file is rewritten in place during
    the load (writers of block files replace them atomically, which an open file does not
    see). The block's checksum is checked again after its last value; a difference is
    raised naming what was already assigned.
    """
    count = 0
    done: list[str] = []
    for plan in plans:
        layers = {layer.source.path: layer for layer in plan.layers if layer.load}
        if not layers:
            continue
        pending: dict[str, dict] = {}  # layers that load through load_own_variables
        try:
            for path, key, array in src.iter_values(plan.source):
                layer = layers.get(path)
                if layer is None or key not in layer.load:
                    continue
                count += 1
                if _loads_directly(layer.unit, layer.current):
                    _assign_variable(layer.current[key], array)
                    continue
                loaded = pending.setdefault(path, {})
                loaded[key] = array
                if len(loaded) == len(layer.load):
                    layer.unit.load_own_variables({
                        k: loaded[k] if k in loaded else _to_numpy(current)
                        for k, current in layer.current.items()
                    })
                    del pending[path]
        except BlockFileError as error:
            raise BlockFileError(
                f"{src.description} changed while it was being loaded: it was verified in "
                f"full before the first assignment, then read again differently ({error}). "
                f"Blocks {done} and part of {plan.target!r} were loaded; the rest were not. "
                "Something rewrote the file in place during the load; load it again."
            ) from None
        done.append(plan.target)
    return count


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
        and array.shape == tuple(variable.shape)
    ):
        _ASSIGN_OP(resource=inner.handle, value=array)
    else:
        variable.assign(array)
