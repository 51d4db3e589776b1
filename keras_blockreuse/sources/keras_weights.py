"""Source kind: a Keras 3 weights file — `.weights.h5`, a sharded `.weights.json`, or the
`model.weights.h5` inside a `.keras` archive.

Groups are keyed by Keras's structural paths (`layers/conv2d_1/vars/0`); since Keras 3.6
each `vars` group carries its layer's name in a `name` attribute. With the source's structure
(`source_model=`, or a `.keras` config) each group is matched to its layer by the very walk
Keras saves with (`structure.keras_structure`), which also gives the layers' computation
order, classes and variable names (`kernel`, `bias`). Without it, layers are known by their
recorded names and structural paths only: their order is unknown and is never guessed from
the file's storage. Optimizer and metric state is ignored.

The walk costs about as much as the whole load of a small block (ResNet50: two walks of 356
objects), so a file whose groups all carry names is read by those names, and the structure
is walked only when a load cannot pair a block by name or Keras path
(`KerasWeightsSource.rebuild_structure`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping

import h5py
import numpy as np

from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.safety import (
    CheckedFile,
    check_links,
    layer_name,
    safe_member_name,
    text_attribute,
)
from keras_blockreuse.sources.base import LayerInfo, LayerSource, VariableInfo
from keras_blockreuse.sources.hdf5 import (
    Checked,
    check_dataset,
    direct_descriptor,
    dtype_of,
    open_h5,
    read_checked,
)

# Top-level groups of a Keras weights file that hold no layer state.
NOT_LAYERS = {"optimizer", "compile_metrics", "metrics", "loss", "_compile_metrics"}


@dataclasses.dataclass
class _Group:
    """One `vars` group of a Keras weights file: an object with its own variables."""

    keras_path: str  # "layers/sequential/layers/dense"
    name: str | None  # the `name` attribute (Keras >= 3.6)
    datasets: dict[str, tuple[int, str]]  # key -> (file index, dataset path)


class KerasWeightsSource(LayerSource):
    """The layers of a Keras 3 weights file (one file, a shard set, or inside `.keras`).

    Args:
        files: the open HDF5 files (several for a sharded file).
        description: the file's name for reports and errors.
        sizes: each file's size in bytes, to refuse datasets larger than their file.
        rule: the block rule grouping the layers.
        source_model: a model (or a zero-argument function building one) with the source's
            architecture; required when the file holds no layer names.
        info: facts about the file shown by `inspect` (format, Keras version, ...).
        on_close: called when the source closes (to close the archive holding the files).
        structure: a zero-argument function building the source model from the file's own
            config (a `.keras` archive), used like `source_model` but only when needed; a
            failure to build it leaves the layers as the names give them.
        configs: `{name path: layer config}` from a `.keras` archive's `config.json`, for the
            layers its Functional and Sequential models list (`layer_config`); None where the
            file records no config (a `.weights.h5`; a keras-hub archive, whose layers its
            code creates). Without them, a `source_model` gives its own layers' configs.

    A file whose groups all carry their layer's name (Keras >= 3.6) is read by those names,
    and `source_model` (or `structure`) is built and walked only by `rebuild_structure`,
    which `load_blocks` calls when a block cannot be paired by name or Keras path. So a
    `source_model` of another architecture is refused only when it is used: a load whose
    blocks all pair by the file's own names is justified by those names alone, exactly as
    without `source_model`, and never reads the model. When it is used (a file without
    names, a block that does not pair by name, `inspect`, `convert`), a model whose saving
    walk does not reach every group of the file is refused with `BlockFileError`.

    Raises:
        TypeError: `source_model` is neither a `keras.Model` nor callable (a callable that
            returns no model is refused when it is called).
        BlockFileError: the file is unsafe or damaged; it holds no names and no
            `source_model`; or a `source_model` that had to be walked does not fit it.

    Example:

    ```python
    with open_keras_file("classifier.weights.h5", source_model=build_classifier) as source:
        source.block_layers("block_1")[0].path    # "block_1_0": by the file's names
        source.rebuild_structure()                # builds and walks the source model
        source.block_layers("block_1")[0].variables[0].name    # "kernel"
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
        structure: Callable[[], object] | None = None,
        configs: Mapping[str, dict] | None = None,
    ):
        super().__init__(rule)
        self._configs = configs  # None: the file records no config (see `records_configs`)
        self.description = description
        self.bytes_read = 0
        self.info = dict(info or {})
        self._files = files
        self._sizes = sizes
        self._on_close = on_close
        self._datasets: dict[tuple[int, str], h5py.h5d.DatasetID] = {}
        self._checked: dict[tuple[int, str], Checked] = {}
        self._addresses: list[dict[bytes, int]] | None = None
        # Each file's descriptor for values read directly (`read_checked`): a dataset is only
        # ever opened in its own file, since links out of a file are refused when it opens.
        self._descriptors = [direct_descriptor(file) for file in files]
        try:
            _check_model_argument(source_model)
            for file in files:  # each dataset's storage is checked when it is read
                if not isinstance(file, CheckedFile):  # `open_h5` checked its links
                    check_links(file, description)
            self._index, own = _index(files, description)
            if own:  # the model's own `vars` (a subclassed model's `self.add_weight`)
                self.info[OWN_VARIABLES] = (
                    f"{own} variable(s) of the model itself (its own `vars` group), held by no "
                    "layer: load_blocks and convert leave them")
            # The source model, built and walked at most once, lazily: `(builder, given)`,
            # `given` when the user passed it (a failure is then raised, not left).
            self._structure: tuple[Callable[[], object], bool] | None = None
            self._model: list = []  # the source model, once built (`_source_model`)
            self._model_configs: dict[str, dict | None] = {}  # its layers' (`layer_config`)
            self._named: dict[int, dict] = {}  # id(container) -> {name: layer}
            if source_model is not None:
                self._structure = (functools.partial(self._source_model, source_model), True)
            elif structure is not None:
                self._structure = (structure, False)
            elif configs is None:
                self.configs_hint = (
                    "pass source_model= (the model that wrote the file, or a function "
                    "building it), whose layers' options are then compared with the model's")
            named = all(g.name for g in self._index.values() if g.datasets)
            if named or self._structure is None:
                self._set(*self._from_names(self._index))
            else:
                builder, given = self._structure
                self._structure = None
                self._set(*self._from_structure(self._index, _built(builder())))
        except BaseException:
            self.close()
            raise

    def _set(self, infos: list[LayerInfo], var_names: dict[str, dict[str, str]]) -> None:
        """Keeps the layers without their variables (`variables=()`): a layer's datasets are
        described (shape, dtype) when its block is asked for, so a one-block load reads the
        layout of that block only. Two layers of one name path are refused: pairing by name
        would give both model layers of that name the same values."""
        paths: dict[str, str] = {}
        for info in infos:
            other = paths.setdefault(info.path, info.keras_path)
            if other != info.keras_path:
                raise BlockFileError(
                    f"{self.description}: two layers are named {info.path!r} (groups "
                    f"{other + '/vars'!r} and {info.keras_path + '/vars'!r}); Keras names each "
                    "layer of a model once, so a name was damaged. Refusing to choose.")
        self._layer_infos = infos
        self._var_names = var_names  # keras path -> {key: variable name}
        self._described: dict[str, LayerInfo] = {}
        self._groups = None

    def layer_config(self, path: str) -> dict | None:
        """The layer's config from a `.keras` archive's `config.json`, else from the
        `source_model=` passed (built once, not walked): the config of its layer at name path
        `path`, through its Functional and Sequential models (see `Source`)."""
        if self._configs is not None:
            return self._configs.get(path)
        if not self._model and (self._structure is None or not self._structure[1]):
            return None  # no source model given
        if path not in self._model_configs:
            self._model_configs[path] = self._model_config(path)
        return self._model_configs[path]

    def _model_config(self, path: str) -> dict | None:
        layer = self._model[0] if self._model else self._structure[0]()
        for name in path.split("/"):
            named = self._named.get(id(layer))
            if named is None:
                layers = getattr(layer, "layers", None)  # (a Functional or Sequential model's)
                layers = layers if isinstance(layers, list) else []
                twice = {n for n, k in collections.Counter(s.name for s in layers).items() if k > 1}
                named = self._named[id(layer)] = {  # (a name given twice: none)
                    sub.name: sub for sub in layers if sub.name not in twice}
            layer = named.get(name)
            if layer is None:
                return None  # (inside a custom layer: its code creates it)
        try:
            return {"class_name": type(layer).__name__, "config": layer.get_config()}
        except Exception:  # noqa: BLE001 - a layer without a config: nothing to compare
            return None

    @property
    def records_configs(self) -> bool:
        return self._configs is not None or bool(self._model) or (
            self._structure is not None and self._structure[1])

    def _source_model(self, source_model):
        """The `source_model` passed, built once (a function is called once)."""
        if not self._model:
            self._model.append(_built(source_model))
        return self._model[0]

    def rebuild_structure(self) -> bool:
        """Builds and walks the source model, if not done yet, so that layers carry their
        computation order and variable names; returns True when that changed them.

        `load_blocks` calls it only when a block cannot be paired by name or Keras path: a
        rebuild costs about as much as building the model and walking it as Keras saves it
        (for a `.keras` archive, `keras.saving.load_model` without the weights).

        Raises:
            BlockFileError: the `source_model` passed does not have the file's structure
                (a `.keras` config that cannot be rebuilt or does not fit returns False).
        """
        if self._structure is None:
            return False
        (builder, given), self._structure = self._structure, None
        try:
            infos = self._from_structure(self._index, _built(builder()))
        except BlockFileError:
            if given:
                raise
            return False  # the config cannot be rebuilt: layers stay as their names give them
        self._set(*infos)
        return True

    def _from_structure(self, groups: dict[str, _Group], model):
        from keras_blockreuse.sources.structure import keras_structure

        names = {path: g.name for path, g in groups.items() if g.name}
        units = {u.keras_path: u for u in keras_structure(model, names)}
        foreign = [p for p, g in groups.items() if g.datasets and p not in units]
        if foreign:
            raise BlockFileError(
                f"{self.description} does not have the structure of source_model "
                f"{model.name!r}: the file holds {foreign[:5]} which the model does not. "
                "Pass the model that wrote the file."
            )
        self.info["layer names"] = (
            "from the file's `name` attributes" if names else f"from source model {model.name!r}")
        self.info["structure"] = f"source model {model.name!r}, walked as Keras saves it"
        self.info["layer order"] = "computation order, from the structure"
        infos, var_names = [], {}
        for unit in units.values():  # computation order
            group = groups.get(unit.keras_path)
            if group is None or not group.datasets:
                continue
            stored: dict = {}
            unit.obj.save_own_variables(stored)
            names_of_keys = {k: str(getattr(v, "name", k)) for k, v in stored.items()}
            path = unit.path or names.get(unit.keras_path) or unit.keras_path
            infos.append(LayerInfo(path, unit.class_name, (), keras_path=unit.keras_path,
                                   order=unit.order))
            var_names[unit.keras_path] = names_of_keys
        return infos, var_names

    def _from_names(self, groups: dict[str, _Group]):
        from keras_blockreuse.sources.structure import class_for_key

        unnamed = [g.keras_path for g in groups.values() if g.name is None and g.datasets]
        if unnamed:
            raise BlockFileError(
                f"{self.description} holds no layer names: its groups (such as "
                f"{unnamed[0] + '/vars'!r}) lack the `name` attribute that Keras >= 3.6 "
                "writes, so blocks cannot be found by name. Pass source_model= (the source "
                "model, or a function that builds it) to map the groups through its structure."
            )
        self.info["layer names"] = "from the file's `name` attributes"
        self.info["layer order"] = (
            "unknown (pass source_model= to know it)" if self._structure is None else
            "from the source's structure, built when a block does not pair by name or path")
        paths = _name_paths(groups)
        infos = []
        for keras_path in sorted(groups, key=_natural):
            group = groups[keras_path]
            if not group.datasets:
                continue
            parent, _, key = keras_path.rpartition("/")
            # A child of a list attribute is keyed by its class (`conv2d_1`); a child held in an
            # attribute is keyed by the attribute's name, which says nothing of its class.
            class_name = "" if parent in groups else class_for_key(key)
            infos.append(LayerInfo(paths[keras_path], class_name, (), keras_path=keras_path))
        return infos, {}

    def _variables(self, group: _Group, names: dict[str, str]) -> tuple[VariableInfo, ...]:
        out = []
        for key, (index, dataset_path) in group.datasets.items():
            ds = self._dataset(index, dataset_path)
            out.append(VariableInfo(
                key=key,
                name=names.get(key, key),
                path=f"{group.keras_path}/vars/{key}",
                shape=ds.shape,
                dtype=dtype_of(ds, self.description, self._marked(index, dataset_path)),
                dataset=dataset_path,
            ))
        return tuple(out)

    def _describe(self, layer: LayerInfo) -> LayerInfo:
        """The layer with its variables, read from the file's layout once."""
        described = self._described.get(layer.keras_path)
        if described is None:
            group = self._index[layer.keras_path]
            variables = self._variables(group, self._var_names.get(layer.keras_path, {}))
            described = dataclasses.replace(layer, variables=variables)
            self._described[layer.keras_path] = described
        return described

    def layers(self) -> list[LayerInfo]:
        return [self._describe(layer) for layer in self._layer_infos]

    def _grouped(self) -> dict[str, tuple[LayerInfo, ...]]:
        if self._groups is None:  # grouped by name and class: no variable needed
            self._groups = self._group(self._layer_infos)
        return self._groups

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        return tuple(self._describe(layer) for layer in self._grouped()[name])

    def layer_paths(self) -> list[str]:
        return [layer.path for layer in self._layer_infos]  # no variable described

    def read_layer(self, layer: LayerInfo) -> dict[str, np.ndarray]:
        return dict(self.iter_layer(layer))

    def iter_layer(self, layer: LayerInfo,
                   scratch: list | None = None) -> Iterator[tuple[str, np.ndarray]]:
        for key, (index, dataset_path) in self._index[layer.keras_path].datasets.items():
            ds = self._dataset(index, dataset_path)
            checked = self._checked.get((index, dataset_path))
            if checked is None:  # once per open dataset: a streaming load reads it twice
                checked = check_dataset(ds, self._sizes[index], self.description,
                                        self._marked(index, dataset_path))
                self._checked[index, dataset_path] = checked
            yield key, read_checked(ds, checked, scratch, self._descriptors[index])

    def _marked(self, index: int, path: str) -> bool:
        """False when the file's listing shows the dataset has no `dtype` attribute."""
        return not _no_dtype_attribute(self._files[index], self._address(index, path))

    def _address(self, index: int, path: str) -> int | None:
        """The address of the object at `path` in a checked file, from its listing."""
        if self._addresses is None:
            self._addresses = [_addresses(file) for file in self._files]
        return self._addresses[index].get(path.lstrip("/").encode("utf-8"))

    def _dataset(self, index: int, path: str) -> h5py.h5d.DatasetID:
        """A dataset, opened once: its layer is described, then read. In a checked file its
        object header is checked first, if its check was deferred (`in_vars_group`)."""
        ds = self._datasets.get((index, path))
        if ds is None:
            file = self._files[index]
            kind = (file.header(self._address(index, path))[0]
                    if isinstance(file, CheckedFile) else h5py.h5o.get_info(file.id, path.encode(
                        "utf-8")).type)
            if kind != h5py.h5o.TYPE_DATASET:
                raise BlockFileError(
                    f"{self.description}: {path!r} should be a dataset (a layer's variable) but "
                    "is not; the file is damaged, or was not written by Keras.")
            # `_index` found a dataset there: open it directly, through h5py's low-level API
            # (`file[path]` also looks up what kind of object it is, three times the cost)
            ds = h5py.h5d.open(self._files[index].id, path.encode("utf-8"))
            self._datasets[index, path] = ds
        return ds

    def close(self) -> None:
        self._datasets = {}
        self._checked = {}
        self._descriptors = []
        for file in getattr(self, "_files", []):
            try:
                file.close()
            except Exception:  # noqa: BLE001 - closing must not hide the original error
                pass
        self._files = []
        if getattr(self, "_on_close", None) is not None:
            self._on_close()
            self._on_close = None


def open_weights(path: str, rule=None, source_model=None,
                 file: h5py.File | None = None) -> KerasWeightsSource:
    """Opens a `.weights.h5` file (see `KerasWeightsSource`); `file`: the file already opened
    with `open_h5` (checked), which the source then owns."""
    file = file if file is not None else open_h5(path, defer=in_vars_group)
    info = {"format": "Keras weights (.weights.h5)"}
    return KerasWeightsSource([file], path, [os.path.getsize(path)], rule, source_model, info)


def open_sharded(path: str, rule=None, source_model=None) -> KerasWeightsSource:
    """Opens a sharded `.weights.json` index and its shard files."""
    with open(path, "rb") as fh:
        start = fh.read(8)
    for signature, what, name in ((b"PK\x03\x04", "a zip archive, as a .keras archive is",
                                   ".keras"),
                                  (b"\x89HDF\r\n\x1a\n", "an HDF5 file, as a .weights.h5 is",
                                   ".weights.h5, .h5 or .blocks.h5")):
        if start.startswith(signature):
            raise BlockFileError(
                f"{path!r} is not a Keras sharded weights index (a JSON file with a weight_map) "
                f"but {what} (starting {start!r}): give it its name, ending in {name}.")
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
            files.append(open_h5(shard, defer=in_vars_group))
            sizes.append(os.path.getsize(shard))
    except BaseException:
        for file in files:
            file.close()
        raise
    info = {"format": "Keras sharded weights (.weights.json)", "shards": len(files)}
    return KerasWeightsSource(files, path, sizes, rule, source_model, info)


def _check_model_argument(source_model) -> None:
    import keras

    if source_model is not None and not (
            isinstance(source_model, keras.Model) or callable(source_model)):
        raise TypeError(
            "`source_model` must be a keras.Model or a function returning one. "
            f"Received: {source_model!r} of type {type(source_model).__name__}"
        )


def _built(source_model):
    import keras

    model = source_model if isinstance(source_model, keras.Model) else source_model()
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`source_model` must be a keras.Model or a function returning one. "
            f"Received: {source_model!r}, which gave {type(model).__name__}"
        )
    return model


OWN_VARIABLES = "not in any block"
"""The `info` key saying how many variables the file holds for the model itself (its own
`vars` group: a subclassed model's `self.add_weight`), which no block holds."""


def _index(files: list[h5py.File], where: str) -> tuple[dict[str, _Group], int]:
    """Every `vars` group of the files (shards merged), keyed by structural path, and the
    number of variables of the model's own `vars` group (not a layer's: left out).

    The layout comes from one HDF5 walk per file (`H5Ovisit`: each object once, in name
    order); the `name` attribute is read only where a path needs it: groups holding
    variables and the groups enclosing them.
    """
    groups: dict[str, _Group] = {}
    vars_groups: list[tuple[int, str]] = []  # (file index, structural path)
    for index, file in enumerate(files):
        for raw, kind, address in _objects(file):
            if raw.split(b"/", 1)[0].decode("utf-8", "replace") in NOT_LAYERS:
                continue  # optimizer and metric state
            parts = _decoded(raw, where).split("/")
            if "vars" in parts[:-2]:
                continue  # inside a `vars` group's children
            if kind == -1:
                raise BlockFileError(
                    f"{where}: the object {'/'.join(parts)!r} is neither a group nor a dataset "
                    "(its header holds no message that tells its type): the file is damaged.")
            if kind is None and parts[-1] == "vars":  # deferred (a group inside `vars`)
                kind = file.header(address)[0]
            if parts[-1] == "vars" and kind == h5py.h5o.TYPE_GROUP and "vars" not in parts[:-1]:
                inner = "/".join(parts[:-1])
                if inner not in groups:
                    groups[inner] = _Group(inner, None, {})
                vars_groups.append((index, inner))
            elif len(parts) > 1 and parts[-2] == "vars":
                # every entry of a `vars` group is a variable: one that is not a dataset (or a
                # deferred one, not yet known) is refused when its layer is read (`_dataset`)
                inner = "/".join(parts[:-2])
                if inner in groups:  # its `vars` group came first (name order)
                    held = groups[inner].datasets.get(parts[-1])
                    if held is not None and held[0] != index:
                        raise BlockFileError(
                            f"{where}: variable {'/'.join(parts)!r} is in two shards, "
                            f"{files[held[0]].filename!r} and {files[index].filename!r}; Keras "
                            "writes each variable to one shard. Refusing to choose.")
                    groups[inner].datasets[parts[-1]] = (index, "/" + "/".join(parts))
    holding = [path for path, g in groups.items() if g.datasets]
    needed = {"/".join(path.split("/")[:cut]) for path in holding
              for cut in range(1, path.count("/") + 2)}
    addresses = [_addresses(file) for file in files]
    for index, inner in vars_groups:
        entry = groups[inner]
        if inner in needed and entry.name is None:
            at = f"{inner}/vars" if inner else "vars"
            file = files[index]
            if isinstance(file, CheckedFile):  # read while checking the file: no HDF5 call
                name = file.text(addresses[index][at.encode("utf-8")], "name", at)
            else:
                name = text_attribute(file, "name", at=at)
            if name is not None:
                entry.name = layer_name(name, where)
    own = groups.pop("", None)  # the model's own `vars`: the model is not a layer of itself
    for group in groups.values():
        group.datasets = dict(sorted(group.datasets.items(), key=lambda kv: _key_order(kv[0])))
    return groups, len(own.datasets) if own is not None else 0


def in_vars_group(name: bytes) -> bool:
    """Whether an object (`b"layers/dense/vars/0"`) is an entry of a `vars` group: a
    variable of a Keras 3 weights file, whose check `open_h5` defers (`defer=`) until a load
    reads it, so that a one-block load checks its own variables' headers, not every one."""
    parent = name.rsplit(b"/", 2)
    return len(parent) > 1 and parent[-2] == b"vars"


def _objects(file: h5py.File) -> list[tuple[bytes, int | None, int]]:
    """`(name, object type, address)` of every object below the root, in name order: the
    listing `open_h5` made while checking the file (type None where its check was
    deferred), else each object once from one HDF5 walk."""
    if isinstance(file, CheckedFile):
        return file.objects
    objects: list[tuple[bytes, int, int]] = []
    h5py.h5o.visit(file.id, lambda name, info: objects.append((name, info.type, info.addr)),
                   info=True)
    return objects


def _addresses(file: h5py.File) -> dict[bytes, int]:
    """`name -> address` of a checked file's objects (none for another file)."""
    if not isinstance(file, CheckedFile):
        return {}
    return {name: address for name, _, address in file.objects}


def _no_dtype_attribute(file: h5py.File, address: int | None) -> bool:
    """True when a checked file's listing shows that the dataset at `address` has no `dtype`
    attribute (Keras marks bfloat16 values with one), so that it need not be read."""
    if not isinstance(file, CheckedFile) or address is None:
        return False
    return b"dtype" not in file.header(address)[1]


def _decoded(name: bytes, where: str) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise BlockFileError(
            f"{where}: the object name {name[:80]!r} is not UTF-8 text; the file is damaged."
        ) from None


def _name_paths(groups: dict[str, _Group]) -> dict[str, str]:
    """`structural path -> name path`: the recorded names of the enclosing objects."""
    paths: dict[str, str] = {}
    for inner in sorted(groups, key=lambda p: p.count("/")):
        parent = _enclosing(inner, groups)
        name = groups[inner].name or inner.rsplit("/", 1)[-1]
        paths[inner] = f"{paths[parent]}/{name}" if parent else name
    return paths


def _enclosing(inner: str, groups: dict[str, _Group]) -> str | None:
    parts = inner.split("/")
    for cut in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:cut])
        if candidate in groups:
            return candidate
    return None


def _natural(path: str) -> list:
    """`layers/conv2d_10` after `layers/conv2d_2`: a listing order, never a pairing order."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path)]


def _key_order(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)
