"""Readers for the files Keras users already have: `.weights.h5`, `.keras`, legacy `.h5`.

Each reader lists a file's layers by name, with their variables' shapes and dtypes, without
reading values, and reads one layer's values when asked; `load_blocks` groups the layers
into blocks with a block rule (by default the target model's) and loads them by name.

- Keras 3 `.weights.h5` (and sharded `.weights.json`): groups are keyed by structure
  (`layers/conv2d_1/vars/0`); since Keras 3.6 each `vars` group carries the layer's name in a
  `name` attribute. Files without it need `source_model=`: a model (or a function building
  one) with the source's architecture, walked the way Keras's saver walks it. Optimizer
  state is ignored.
- `.keras` archives: `model.weights.h5` is read inside the zip, never extracted; without
  name attributes the structure is rebuilt from `config.json` with `safe_mode=True`.
- Keras 2 / legacy `.h5`: `model_weights/<layer>/...` with `layer_names` and `weight_names`
  attributes, or a weights-only file with `layer_names` at the root.

Every file is checked with `keras_blockreuse.safety` before use.

Example:

```python
model.save_weights("classifier.weights.h5")
report = load_blocks(detector, "classifier.weights.h5", only=["block1", "block2"])
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import h5py
import numpy as np

from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.safety import (
    check_dataset_size,
    check_hdf5,
    check_member_crc,
    check_zip,
    inflate_member,
    layer_name,
    open_hdf5,
    safe_member_name,
    text_attribute,
)
from keras_blockreuse.sources import LayerSource, register_file_reader
from keras_blockreuse.store import SUFFIX as BLOCK_SUFFIX
from keras_blockreuse.store import LayerInfo, VariableInfo

if TYPE_CHECKING:
    import keras

# Top-level groups of a Keras weights file that hold no layer state.
_NOT_LAYERS = {"optimizer", "compile_metrics", "metrics", "loss", "_compile_metrics"}


@dataclasses.dataclass
class _Unit:
    """One `vars` group of a Keras weights file: an object with its own variables."""

    inner: str  # structural path: "layers/sequential/layers/dense"
    name: str | None  # the layer's name, from the `name` attribute or the source model
    class_name: str
    datasets: dict[str, tuple[int, str]]  # key -> (file index, dataset path)
    order: tuple = ()


class KerasWeightsSource(LayerSource):
    """The layers of a Keras 3 weights file (`.weights.h5`, a shard set, or inside `.keras`).

    Args:
        files: the open HDF5 files (several for a sharded file), in write order.
        description: the file's name for reports and errors.
        sizes: each file's size in bytes, to refuse datasets larger than their file.
        rule: the block rule grouping the layers.
        source_model: for files without `name` attributes, a model or a zero-argument
            function building one with the source's architecture.
        info: facts about the file shown by `inspect` (format, Keras version, ...).
        on_close: called when the source closes (to close the archive holding the files).

    Example:

    ```python
    with open_keras_file("classifier.weights.h5") as source:
        source.block_names()
    ```
    """

    def __init__(
        self,
        files: list[h5py.File],
        description: str,
        sizes: list[int],
        rule=None,
        source_model=None,
        info: dict | None = None,
        on_close: Callable[[], None] | None = None,
        weight_map_order: list[str] | None = None,
        layer_order: list[str] | None = None,
    ):
        super().__init__(rule)
        self.description = description
        self.bytes_read = 0
        self.info = dict(info or {})
        self._files = files
        self._sizes = sizes
        self._on_close = on_close
        try:
            for file in files:
                check_hdf5(file, description)
            self._units = _index_units(files, description)
            self._structure_order: list[str] | None = None
            self._name_units(source_model)
            self._units = _ordered(
                self._units, self._structure_order or weight_map_order, layer_order
            )
            self._layer_infos, self._locators = self._describe()
        except BaseException:
            self.close()
            raise

    def _name_units(self, source_model) -> None:
        unnamed = [u.inner for u in self._units.values() if u.name is None]
        if not unnamed:
            self.info.setdefault("layer names", "from the file's `name` attributes")
            return
        if source_model is None:
            raise BlockFileError(
                f"{self.description} holds no layer names: its groups (such as "
                f"{unnamed[0] + '/vars'!r}) lack the `name` attribute that Keras >= 3.6 "
                "writes, so blocks cannot be found by name. Pass source_model= (the source "
                "model, or a function that builds it) to map the groups through its structure."
            )
        import keras  # Keras loads only for the Keras formats

        model = source_model() if not isinstance(source_model, keras.Model) else source_model
        if not isinstance(model, keras.Model):
            raise TypeError(
                "`source_model` must be a keras.Model or a function returning one. "
                f"Received: {source_model!r}, which gave {type(model).__name__}"
            )
        structure = structural_names(model)
        missing = [inner for inner in self._units if inner not in structure]
        if missing:
            raise BlockFileError(
                f"{self.description} does not have the structure of source_model "
                f"{model.name!r}: the file holds {missing[:5]} which the model does not. "
                "Pass the model that wrote the file."
            )
        for inner, unit in self._units.items():
            unit.name, unit.class_name = structure[inner]
        self._structure_order = list(structure)
        self.info["layer names"] = f"from source_model {model.name!r}"

    def _describe(self):
        paths = _layer_paths(self._units)
        infos, locators = [], {}
        for inner, unit in self._units.items():
            if not unit.datasets:
                continue
            variables = []
            for key, (index, dataset_path) in unit.datasets.items():
                ds = self._files[index][dataset_path]
                variables.append(
                    VariableInfo(
                        key=key,
                        name=key,
                        path=f"{inner}/vars/{key}",
                        shape=tuple(int(d) for d in ds.shape),
                        dtype=_dtype_of(ds, self.description),
                        dataset=dataset_path,
                    )
                )
            info = LayerInfo(paths[inner], unit.class_name, tuple(variables))
            infos.append(info)
            locators[info.path] = unit.datasets
        return infos, locators

    def layers(self) -> list[LayerInfo]:
        return list(self._layer_infos)

    def read_layer(self, layer: LayerInfo) -> dict[str, np.ndarray]:
        out = {}
        for key, (index, dataset_path) in self._locators[layer.path].items():
            out[key] = _read(self._files[index][dataset_path], self._sizes[index],
                             self.description)
        return out

    def close(self) -> None:
        for file in getattr(self, "_files", []):
            try:
                file.close()
            except Exception:  # noqa: BLE001 - closing must not hide the original error
                pass
        self._files = []
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


class LegacyH5Source(LayerSource):
    """The layers of a Keras 2 / legacy `.h5` file, which groups weights by layer name.

    Both layouts are read: a whole-model file (`model_weights/<layer>/...`) and a
    weights-only file (`layer_names` at the root). The weights of a nested model are split
    into its sub-layers by their weight names (`outer/inner/kernel:0`).
    """

    def __init__(self, path: str, rule=None):
        super().__init__(rule)
        self.description = path
        self.bytes_read = 0
        self._size = os.path.getsize(path)
        self._file = _open_h5(path)
        try:
            check_hdf5(self._file, path)
            self.info = {
                "format": "Keras legacy HDF5 (.h5)",
                "keras_version": _attr_text(text_attribute(self._file, "keras_version", "")),
                "backend": _attr_text(text_attribute(self._file, "backend", "")),
            }
            self._layer_infos, self._locators = self._describe()
        except BaseException:
            self.close()
            raise

    def _describe(self):
        root = self._file["model_weights"] if "model_weights" in self._file else self._file
        if "layer_names" not in root.attrs:
            raise BlockFileError(
                f"{self.description} is an HDF5 file but not a Keras weights file: it has no "
                "`layer_names` attribute (legacy .h5) and no `layers` group (.weights.h5)."
            )
        classes = _legacy_classes(self._file)
        infos, locators = [], {}
        for top in [layer_name(n, self.description) for n in text_attribute(root, "layer_names")]:
            group = root[top]
            names = [layer_name(n, self.description, "weight name", slash=True)
                     for n in text_attribute(group, "weight_names", [])]
            units: dict[str, list[tuple[str, str]]] = {}
            for weight_name in names:
                unit, variable = _split_weight_name(top, weight_name)
                units.setdefault(unit, []).append((variable, weight_name))
            for unit, weights in units.items():
                variables, locator = [], {}
                for i, (variable, weight_name) in enumerate(weights):
                    ds = group[weight_name]
                    if not isinstance(ds, h5py.Dataset):
                        raise BlockFileError(
                            f"{self.description}: {ds.name!r} should be a dataset, it is a group."
                        )
                    key = str(i)
                    variables.append(
                        VariableInfo(
                            key=key,
                            name=variable,
                            path=weight_name,
                            shape=tuple(int(d) for d in ds.shape),
                            dtype=_dtype_of(ds, self.description),
                            dataset=ds.name,
                        )
                    )
                    locator[key] = ds.name
                class_name = classes.get(top, "") if unit == top else ""
                infos.append(LayerInfo(unit, class_name, tuple(variables)))
                locators[unit] = locator
        return infos, locators

    def layers(self) -> list[LayerInfo]:
        return list(self._layer_infos)

    def read_layer(self, layer: LayerInfo) -> dict[str, np.ndarray]:
        return {
            key: _read(self._file[name], self._size, self.description)
            for key, name in self._locators[layer.path].items()
        }

    def close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            try:
                file.close()
            except Exception:  # noqa: BLE001
                pass
            self._file = None


# --- opening files ----------------------------------------------------------------------


def open_keras_file(path: str | os.PathLike, rule=None, source_model=None) -> LayerSource:
    """Opens a Keras weights file of any supported kind as a source of named layers.

    Args:
        path: a `.weights.h5`, a sharded `.weights.json`, a `.keras` archive, or a legacy
            `.h5` / `.hdf5` file.
        rule: the block rule grouping the file's layers (see `get_blocks`).
        source_model: for Keras weights files without layer names, a model (or a function
            building one) with the source's architecture.

    Raises:
        BlockFileError: the file is missing, unreadable, unsafe, or of no supported kind.

    Example:

    ```python
    with open_keras_file("vgg16.keras", rule="vgg") as source:
        source.block_names()      # ["block1", ..., "predictions"]
    ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BlockFileError(f"No such file: {path!r}")
    kind = keras_file_kind(path)
    if kind == "keras":
        return _open_archive(path, rule, source_model)
    if kind == "sharded":
        return _open_sharded(path, rule, source_model)
    if kind == "legacy":
        if source_model is not None:
            raise TypeError(
                f"`source_model` does not apply to {path!r}: a legacy .h5 file holds its "
                "layer names."
            )
        return LegacyH5Source(path, rule)
    if kind == "weights":
        file = _open_h5(path)
        info = {"format": "Keras weights (.weights.h5)"}
        return KerasWeightsSource(
            [file], path, [os.path.getsize(path)], rule, source_model, info
        )
    raise BlockFileError(
        f"{path!r} is not a supported weights file: expected a .blocks.h5, .weights.h5, "
        ".weights.json, .keras or legacy Keras .h5 file."
    )


def keras_file_kind(path: str) -> str | None:
    """`"keras"`, `"sharded"`, `"weights"`, `"legacy"`, or `None` (a block file, or other).

    Recognised by content where the name is ambiguous: an `.h5` file is a Keras 3 weights
    file if it has a `layers` or `vars` group, legacy if it has `layer_names`.
    """
    if path.endswith(BLOCK_SUFFIX):
        return None
    if path.endswith(".keras"):
        return "keras"
    if path.endswith(".json"):
        return "sharded"
    if not os.path.isfile(path):
        if path.endswith(".weights.h5"):
            return "weights"
        return "legacy" if path.endswith((".h5", ".hdf5")) else None
    if zipfile.is_zipfile(path):
        return "keras" if _has_member(path, "config.json") else None
    if not h5py.is_hdf5(path):
        return None
    with _open_h5(path) as f:
        if _attr_text(text_attribute(f, "format", "")) == "keras-blockreuse":
            return None
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            return "legacy"
        if "layers" in f or "vars" in f:
            return "weights"
    return "weights" if path.endswith(".weights.h5") else None


def _open_archive(path: str, rule, source_model) -> KerasWeightsSource:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise BlockFileError(f"{path!r} is not a valid .keras archive: {e}") from e
    closers = [archive.close]

    def close():
        while closers:
            closers.pop()()

    try:
        check_zip(archive, path)
        members = set(archive.namelist())
        if "model.weights.h5" not in members:
            sharded = " (its weights are sharded, which this reader does not support)" if (
                "model.weights.json" in members) else ""
            raise BlockFileError(
                f"{path!r} holds no model.weights.h5{sharded}; members: {sorted(members)}"
            )
        metadata = _json_member(archive, "metadata.json", path) if "metadata.json" in members else {}
        info = {
            "format": "Keras archive (.keras)",
            "keras_version": str(metadata.get("keras_version", "")),
            "saved": str(metadata.get("date_saved", "")),
        }
        member = archive.getinfo("model.weights.h5")
        config = _json_member(archive, "config.json", path) if "config.json" in members else {}
        if source_model is None:  # used only if the weights carry no layer names

            def source_model():
                return _model_from_config(config, path)

        if member.compress_type == zipfile.ZIP_STORED:
            check_member_crc(archive, member, path)  # the archive's one checksum of values
            stream = archive.open(member)  # seekable: read in place, never extracted
        else:  # inflated to a temporary file, stopping at what the config's model needs
            stream = inflate_member(archive, member, _weights_bound(config, path), path)
        closers.append(stream.close)
        file = open_hdf5(stream, repr(path))
        return KerasWeightsSource(
            [file], path, [member.file_size], rule, source_model, info, on_close=close,
            layer_order=_config_layer_names(config),
        )
    except BaseException:
        close()
        raise


def _open_sharded(path: str, rule, source_model) -> KerasWeightsSource:
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
        weight_map = config["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not a dict")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BlockFileError(
            f"{path!r} is not a Keras sharded weights index (a JSON file with a weight_map): "
            f"{type(e).__name__}: {e}"
        ) from None
    folder = os.path.dirname(os.path.abspath(path))
    shards: list[str] = []
    for names in weight_map.values():
        for name in names if isinstance(names, list) else [names]:
            if safe_member_name(str(name), path) not in shards:
                shards.append(name)
    files, sizes = [], []
    try:
        for name in shards:
            shard = os.path.join(folder, name)
            if not os.path.isfile(shard):
                raise BlockFileError(f"{path!r} refers to shard {name!r}, which does not exist.")
            files.append(_open_h5(shard))
            sizes.append(os.path.getsize(shard))
    except BaseException:
        for file in files:
            file.close()
        raise
    order = [key.strip("/").removesuffix("/vars").removesuffix("vars") for key in weight_map]
    info = {"format": "Keras sharded weights (.weights.json)", "shards": len(files)}
    return KerasWeightsSource(files, path, sizes, rule, source_model, info,
                              weight_map_order=order)


def _open_h5(path: str) -> h5py.File:
    return open_hdf5(path, repr(path))  # non-regular files and damaged global heaps refused


def _has_member(path: str, name: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return name in archive.namelist()
    except zipfile.BadZipFile:
        return False


def _json_member(archive: zipfile.ZipFile, name: str, where: str) -> dict:
    try:
        return json.loads(archive.read(name).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BlockFileError(f"{where}: {name} is not valid JSON: {e}") from None


def _weights_bound(config: dict, where: str) -> int:
    """The most bytes a `.keras` archive's weights file can need: its config's model's
    variables, three optimizer slots for each (Adam's two, plus AMSGrad's), and a margin of
    1 MiB plus 4 KiB per variable for HDF5's own structures."""
    model = _model_from_config(config, where, "its weights are compressed, so the bound on "
                                              "their inflated size comes from the config")
    variables = list(model.weights)
    values = sum(int(np.prod(v.shape, dtype=np.int64)) * _itemsize(v.dtype) for v in variables)
    return 4 * values + (1 << 20) + 4096 * len(variables)


def _itemsize(dtype) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 8  # a type NumPy does not know (bfloat16, float8): at most 8 bytes


def _config_layer_names(config) -> list[str] | None:
    """The top-level layer names of a model config, in the model's order."""
    try:
        layers = config["config"]["layers"]
        return [str(layer["config"]["name"]) for layer in layers]
    except (KeyError, TypeError):
        return None


def _model_from_config(
    config: dict, where: str, why: str = "its weights carry no layer names"
) -> keras.Model:
    import keras

    try:
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as e:
        raise BlockFileError(
            f"{where}: {why}, and its config.json cannot rebuild the model with "
            f"safe_mode=True ({type(e).__name__}: {e}). Pass source_model=."
        ) from e


# --- the structure of a Keras weights file ------------------------------------------------


def _index_units(files: list[h5py.File], where: str) -> dict[str, _Unit]:
    """Every `vars` group of the files (shards merged), keyed by structural path."""
    units: dict[str, _Unit] = {}
    classes = _class_names()

    def visit(index: int, group: h5py.Group, inner: str) -> None:
        for key in group:
            child = group[key]
            if not isinstance(child, h5py.Group):
                continue
            path = f"{inner}/{key}" if inner else key
            if key == "vars":
                unit = units.get(inner)
                if unit is None:
                    base = inner.rsplit("/", 1)[-1]
                    unit = units[inner] = _Unit(
                        inner, None, classes.get(_strip_counter(base), base), {},
                        (index, _address(group)),
                    )
                if "name" in child.attrs and unit.name is None:
                    unit.name = layer_name(text_attribute(child, "name"), where)
                for var in child:
                    if isinstance(child[var], h5py.Dataset):
                        unit.datasets[var] = (index, child[var].name)
                continue
            if inner == "" and key in _NOT_LAYERS:
                continue
            visit(index, child, path)

    for index, file in enumerate(files):
        visit(index, file, "")
    units.pop("", None)  # the model's own `vars` group: the model is not a layer of itself
    for unit in units.values():
        unit.datasets = dict(sorted(unit.datasets.items(), key=lambda kv: _key_order(kv[0])))
    return units


def _ordered(
    units: dict[str, _Unit], write_order: list[str] | None, layer_order: list[str] | None
) -> dict[str, _Unit]:
    """The units in the order Keras wrote them, which is the model's layer order.

    Exact when the write order is known (a source model's walk, a shard index) or the
    layer order is (a `.keras` config). Otherwise it is rebuilt: Keras numbers the groups of
    each class in layer order (`conv2d`, `conv2d_1`, ...), and these per-class chains are
    merged by where each group sits in the file.
    """
    if write_order:
        rank = {inner: i for i, inner in enumerate(write_order)}
        return {u.inner: u for u in sorted(units.values(),
                                           key=lambda u: (rank.get(u.inner, len(rank)), u.order))}
    tops = [inner for inner in units if _enclosing(inner, units) is None]
    if layer_order and all(units[t].name in layer_order for t in tops):
        rank = {name: i for i, name in enumerate(layer_order)}
        tops.sort(key=lambda t: rank[units[t].name])
    else:
        tops = _merge_class_chains(tops, {t: units[t].order for t in tops})
    top_rank = {t: i for i, t in enumerate(tops)}

    def key(unit: _Unit):
        top = unit.inner
        while _enclosing(top, units) is not None:
            top = _enclosing(top, units)
        return (top_rank[top], unit.inner != top, unit.order)

    return {u.inner: u for u in sorted(units.values(), key=key)}


def _merge_class_chains(inners: list[str], where: dict[str, tuple]) -> list[str]:
    chains: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for inner in inners:
        parent, _, key = inner.rpartition("/")
        base = _strip_counter(key)
        counter = int(key[len(base) + 1 :]) if base != key else 0
        chains.setdefault((parent, base), []).append((counter, inner))
    heads = [sorted(chain) for chain in chains.values()]
    out = []
    while any(heads):
        chain = min((c for c in heads if c), key=lambda c: where[c[0][1]])
        out.append(chain.pop(0)[1])
    return out


def _layer_paths(units: dict[str, _Unit]) -> dict[str, str]:
    """`inner path -> layer path`: names of the enclosing layers joined by `/`."""
    paths: dict[str, str] = {}
    for inner in sorted(units, key=lambda p: p.count("/")):
        parent = _enclosing(inner, units)
        name = units[inner].name
        paths[inner] = f"{paths[parent]}/{name}" if parent else name
    return paths


def _enclosing(inner: str, units: dict[str, _Unit]) -> str | None:
    parts = inner.split("/")
    for cut in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:cut])
        if candidate in units:
            return candidate
    return None


def structural_names(model: keras.Model) -> dict[str, tuple[str, str]]:
    """`inner path -> (layer name, class name)` for each object Keras saves state for.

    Walks the model with Keras's own saver, writing nowhere, so the paths are exactly the
    group paths of a `.weights.h5` file written from this architecture.

    Example:

    ```python
    structural_names(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")]))
    # {"layers/dense": ("d", "Dense")}
    ```
    """
    from keras.src.saving import saving_lib

    classes = _class_names()

    class _Recorder(saving_lib.H5IOStore):
        """Records where Keras would write each object, and under which name."""

        def __init__(self):  # no file
            self.found: dict[str, tuple[str, str]] = {}

        def __bool__(self):
            return True

        def make(self, path, metadata=None):
            base = _strip_counter(path.rsplit("/", 1)[-1])
            name = (metadata or {}).get("name") or path.rsplit("/", 1)[-1]
            self.found[path] = (name, classes.get(base, base))
            return self

        def __setitem__(self, key, value):
            pass

    recorder = _Recorder()
    try:
        saving_lib._save_state(model, recorder, None, "", set())
    except Exception as e:
        raise BlockFileError(
            f"Cannot walk source_model {model.name!r} the way Keras saves it: "
            f"{type(e).__name__}: {e}"
        ) from None
    recorder.found.pop("", None)
    return recorder.found


# --- legacy files -------------------------------------------------------------------------


def _split_weight_name(top: str, weight_name: str) -> tuple[str, str]:
    """`(layer path, variable name)` of a legacy weight name.

    Keras 2 writes `conv1/kernel:0` (nested: `inner/kernel:0`); Keras 3's legacy writer
    writes variable paths, `model/conv1/kernel` (nested: `model/outer/inner/kernel`).
    """
    parts = weight_name.split("/")
    variable = parts[-1].split(":", 1)[0]
    scope = parts[:-1]
    if top in scope:
        inner = scope[scope.index(top) + 1 :]
    else:
        inner = scope
    return "/".join([top, *inner]), variable


def _legacy_classes(file: h5py.File) -> dict[str, str]:
    """Layer name -> class name from a whole-model file's `model_config` (JSON, never eval)."""
    raw = text_attribute(file, "model_config")
    if raw is None:
        return {}
    try:
        config = json.loads(_attr_text(raw))
        layers = config.get("config", {}).get("layers", [])
        return {
            layer["config"]["name"]: layer["class_name"]
            for layer in layers
            if isinstance(layer, dict) and "config" in layer and "name" in layer["config"]
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


# --- values -------------------------------------------------------------------------------


def _read(ds: h5py.Dataset, file_size: int, where: str) -> np.ndarray:
    check_dataset_size(ds, file_size, where)
    if text_attribute(ds, "dtype") in ("bfloat16", b"bfloat16"):
        import ml_dtypes

        return np.array(ds, dtype=ml_dtypes.bfloat16)
    array = np.empty(ds.shape, dtype=ds.dtype)
    if array.size:
        ds.read_direct(array)
    return array


def _dtype_of(ds: h5py.Dataset, where: str) -> str:
    if text_attribute(ds, "dtype") in ("bfloat16", b"bfloat16"):
        return "bfloat16"
    if ds.dtype.kind not in "fiub":
        raise BlockFileError(
            f"{where}: dataset {ds.name!r} has dtype {ds.dtype}, which is not a numeric "
            "variable type."
        )
    import keras

    return keras.backend.standardize_dtype(ds.dtype)


def _attr_text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _strip_counter(key: str) -> str:
    head, _, tail = key.rpartition("_")
    return head if head and tail.isdigit() else key


def _key_order(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _address(obj) -> int:
    try:
        return int(h5py.h5o.get_info(obj.id).addr)
    except Exception:  # noqa: BLE001 - an order hint only
        return 0


_CLASSES: dict[str, str] | None = None


def _class_names() -> dict[str, str]:
    """Keras's snake-case group keys (`batch_normalization`) -> class names."""
    global _CLASSES
    if _CLASSES is None:
        import keras
        from keras.src.utils.naming import to_snake_case

        _CLASSES = {
            to_snake_case(value.__name__): value.__name__
            for value in vars(keras.layers).values()
            if isinstance(value, type) and issubclass(value, keras.layers.Layer)
        }
        _CLASSES.update({"functional": "Functional", "sequential": "Sequential"})
    return _CLASSES


register_file_reader(lambda path: keras_file_kind(path) is not None, open_keras_file)
