"""A model's structure as Keras's own saver sees it: structural paths, names, classes, order.

Keras 3 writes each object's variables under a structural path (`layers/conv2d_1/vars/0`)
computed by `saving_lib._save_state`: the layers of a Functional or Sequential model first,
then every attribute in sorted order; the items of a list attribute are named after their
class with a counter (`conv2d`, `conv2d_1`). `keras_structure` follows that walk with Keras's
own `_walk_saveable`, and checks its paths against a dry run of `_save_state` itself, so a
path computed here is exactly the path Keras writes and reads.

Example:

```python
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
[(u.keras_path, u.path, u.class_name) for u in keras_structure(model)]
# [("layers/dense", "d", "Dense")]
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator, Mapping

import keras

from keras_blockreuse.blocks import iter_units, weighted_layers
from keras_blockreuse.errors import BlockFileError, BlockMismatchError
from keras_blockreuse.safety import error_text


@dataclasses.dataclass(frozen=True)
class Unit:
    """One object with its own variables, as Keras saves it.

    Attributes:
        keras_path: its structural path (`layers/sequential/layers/dense`).
        path: its name path (`block_2_0/inner`), as `iter_units` names it.
        class_name: its class name.
        order: its position in computation order (`iter_units` over the model's layers), or
            `None` for objects that are not among the model's layers.
        obj: the object itself.
    """

    keras_path: str
    path: str | None
    class_name: str
    order: int | None
    obj: object


def keras_structure(model, names: Mapping[str, str] | None = None) -> list[Unit]:
    """Every object Keras saves state for, in computation order where known, then by path.

    Args:
        model: a built model.
        names: `structural path -> name` used in name paths instead of the objects' own
            names (a file's recorded names, for a model rebuilt with fresh automatic names).

    Raises:
        BlockMismatchError: the model's own code fails when walked the way Keras saves it
            (a custom object whose `__dir__`, `_obj_type` or `__getattr__` raises): Keras's
            `save_weights` fails on it too. The message names the object; the error is
            chained to the original one.
        BlockFileError: the walk cannot be reproduced (its paths differ from Keras's).
    """
    with _skip_sets_kept():
        at: list[tuple[str, object]] = []  # the objects being walked, innermost last
        try:
            found = _walk(model, at)
        except (BlockFileError, BlockMismatchError):
            raise
        except Exception as e:
            raise walk_failed(model, _place(at[-1]) if at else "", e) from e
        expected = _dry_run(model)
    if set(found) != expected:
        raise BlockFileError(
            f"Cannot reproduce Keras {keras.__version__}'s saving walk for model "
            f"{model.name!r}: paths {sorted(set(found) ^ expected)[:5]} differ."
        )
    renamed = {id(found[p]): n for p, n in (names or {}).items() if p in found and n}

    def name_of(obj) -> str:
        return renamed.get(id(obj), obj.name)

    positions: dict[int, tuple[int, str]] = {}
    for layer in weighted_layers(model) or list(model.layers):
        for path, unit in iter_units(layer, name=name_of):
            positions.setdefault(id(unit), (len(positions), path))
    units = []
    for keras_path, obj in found.items():
        order, path = positions.get(id(obj), (None, None))
        units.append(Unit(keras_path, path, type(obj).__name__, order, obj))
    big = len(positions)
    return sorted(units, key=lambda u: (u.order if u.order is not None else big, u.keras_path))


def structural_names(model) -> dict[str, tuple[str, str]]:
    """`structural path -> (object name, class name)` for each object Keras saves state for.

    Example:

    ```python
    structural_names(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")]))
    # {"layers/dense": ("d", "Dense")}
    ```
    """
    return {
        u.keras_path: (str(getattr(u.obj, "name", u.keras_path)), u.class_name)
        for u in keras_structure(model)
    }


def class_for_key(key: str) -> str:
    """The Keras layer class whose snake-case name a structural key carries (`conv2d_1` ->
    `Conv2D`), or `""` when the key names no Keras layer class."""
    return _class_names().get(strip_counter(key), "")


@functools.lru_cache(maxsize=1024)
def snake_case(name: str) -> str:
    """Keras's snake-case form of a class name (`Conv2DTranspose` -> `conv2d_transpose`);
    cached per name (a load asks once per paired layer, and Keras's regexes cost 10 us)."""
    from keras.src.utils.naming import to_snake_case

    return to_snake_case(name)


def automatic_name(name: str, obj) -> bool:
    """True when `name` (or a path ending in it) is one Keras makes up from the object's class
    in creation order (`dense`, `dense_3`; never `dense_0` or `dense_01`: Keras counts from
    the bare name, then 1). A `dense_0`'s siblings `dense_1`, ... may still be Keras's own
    (`presets.numbered_from_zero`)."""
    last = name.rsplit("/", 1)[-1]
    return not counted_from_zero(last) and strip_counter(last) == snake_case(type(obj).__name__)


def counted_from_zero(name: str) -> bool:
    """True for a name whose counter Keras never writes (`dense_0`, `dense_01`): code named
    it."""
    head, _, tail = name.rsplit("/", 1)[-1].rpartition("_")
    return bool(head) and tail.isdigit() and tail.startswith("0")


def strip_counter(key: str) -> str:
    """`conv2d_3` -> `conv2d`; `dense` -> `dense`."""
    return split_counter(key)[0]


def split_counter(key: str) -> tuple[str, int]:
    """`conv2d_3` -> `("conv2d", 3)`; `dense` -> `("dense", 0)` (Keras's first automatic name
    of a class has no counter)."""
    head, _, tail = key.rpartition("_")
    return (head, int(tail)) if head and tail.isdigit() else (key, 0)


# --- the walk ---------------------------------------------------------------------------------


def walk_failed(model, where: str, error: Exception) -> BlockMismatchError:
    """The error for a model whose saving walk raised `error` (`where`: `at 'layers/x'
    (MyLayer)`, or `""`): one message for both walks of `keras_structure`; the caller
    chains it (`raise ... from error`)."""
    return BlockMismatchError(
        f"Cannot walk model {model.name!r} the way Keras saves it: "
        f"{where + ', ' if where else ''}{type(error).__name__}: {error_text(error)}. The model's "
        "own code raised this in Keras's saving walk, which model.save_weights also runs, and "
        "fails the same way; its layers cannot be paired with Keras's structural paths "
        "without it."
    )


def _walk(model, at: list[tuple[str, object]] | None = None) -> dict[str, object]:
    """`structural path -> object` for every object `_save_state` would save variables for.

    `at`: a list that holds, while the walk runs, `(path, object)` for each object and
    container being walked, innermost last: after a failure, where it failed."""
    from keras.src.saving import saving_lib
    from keras.src.saving.keras_saveable import KerasSaveable

    out: dict[str, object] = {}
    visited: set[int] = set()
    at = [] if at is None else at

    def join(path: str, key: str) -> str:
        return f"{path}/{key}" if path else key

    def visit(saveable, path: str) -> None:
        if id(saveable) in visited:
            return
        at.append((path, saveable))
        if hasattr(saveable, "save_own_variables"):
            out[path] = saveable
        visited.add(id(saveable))
        for attr, child in saving_lib._walk_saveable(saveable):
            if isinstance(child, KerasSaveable):
                visit(child, join(path, attr))
            elif isinstance(child, (list, dict, tuple)):
                container(child, join(path, attr), set())
        at.pop()

    def container(items, path: str, seen: set[int]) -> None:
        if id(items) in seen:
            return
        seen.add(id(items))
        at.append((path, items))
        used: dict[str, int] = {}
        for item in list(items.values()) if isinstance(items, dict) else items:
            if isinstance(item, KerasSaveable):
                visit(item, join(path, _unique(snake_case(item.__class__.__name__), used)))
            elif isinstance(item, (list, dict, tuple)):
                container(item, join(path, _unique("container", used)), seen)
        at.pop()

    visit(model, "")
    out.pop("", None)  # the model itself
    return out


_SKIP_SETS = threading.RLock()
_KERAS_SKIPSET: list = []  # Keras's own `get_attr_skipset`, once a walk has replaced it


def _after_fork_in_child() -> None:
    """A child forked while another thread walked: Keras's function back, a free lock."""
    global _SKIP_SETS
    _SKIP_SETS = threading.RLock()
    if _KERAS_SKIPSET:
        from keras.src.saving import saving_lib

        saving_lib.get_attr_skipset = _KERAS_SKIPSET[0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _skip_sets_kept() -> Iterator[None]:
    """Within a walk, Keras's `get_attr_skipset` computed once per object type.

    For each object it walks, Keras's saver asks `saving_lib.get_attr_skipset(type)` which
    attributes a reference object of that type has (`dir(Layer())`), to skip them. Keras
    3.15 means to cache that set but stores it under `saving_attr_skipset_<type>` and looks
    it up under `saving_attr_skiplist_<type>`, so it builds a new reference `Layer()` for
    every object walked: about 0.6 ms each, 20 ms of a one-block load into the seed CNN
    (whose automatic layer names are checked against the Keras paths this walk gives), and
    40% of Keras's own `load_weights` of ResNet50. The set depends on the type alone, so
    the two walks of `keras_structure` ask Keras once per type and keep its answer; Keras's
    function is put back after the walk. A re-entrant lock serialises walks in different
    threads (so that none leaves the kept function in place) and lets a walk that runs user
    code which saves or loads blocks walk again; a process forked during a walk starts
    with Keras's function and a free lock.
    """
    from keras.src.saving import saving_lib

    with _SKIP_SETS:
        compute = saving_lib.get_attr_skipset
        if not _KERAS_SKIPSET:
            _KERAS_SKIPSET.append(compute)
        kept: dict[str, set[str]] = {}

        def get_attr_skipset(obj_type):
            if obj_type not in kept:
                kept[obj_type] = compute(obj_type)
            return kept[obj_type]

        saving_lib.get_attr_skipset = get_attr_skipset
        try:
            yield
        finally:
            saving_lib.get_attr_skipset = compute


def _place(walked: tuple[str, object]) -> str:
    """`at 'layers/x' (MyLayer)`, `at the model itself (Sequential)`."""
    path, obj = walked
    return f"at {repr(path) if path else 'the model itself'} ({type(obj).__name__})"


def _unique(name: str, used: dict[str, int]) -> str:
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _dry_run(model) -> set[str]:
    """The paths Keras's `_save_state` itself visits, writing nowhere."""
    from keras.src.saving import saving_lib

    class Recorder(saving_lib.H5IOStore):
        def __init__(self):  # no file
            self.paths: set[str] = set()

        def __bool__(self):
            return True

        def make(self, path, metadata=None):
            self.paths.add(path)
            self.last = path
            return {}

    recorder = Recorder()
    recorder.last = None
    try:
        saving_lib._save_state(model, recorder, None, "", set())
    except (BlockFileError, BlockMismatchError):
        raise  # user code that saves or loads blocks, raising this library's own error
    except Exception as e:
        where = "" if recorder.last is None else (
            f"at or after {repr(recorder.last) if recorder.last else 'the model itself'}")
        raise walk_failed(model, where, e) from e
    recorder.paths.discard("")
    return recorder.paths


_CLASSES: dict[str, str] | None = None


def _class_names() -> dict[str, str]:
    """Keras's snake-case keys (`batch_normalization`) -> layer class names."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = {
            snake_case(value.__name__): value.__name__
            for value in vars(keras.layers).values()
            if isinstance(value, type) and issubclass(value, keras.layers.Layer)
        }
        _CLASSES.update({"functional": "Functional", "sequential": "Sequential"})
    return _CLASSES
