"""Source kind: a Keras 2 / legacy `.h5` file, which groups weights by layer name.

Both layouts are read: a whole-model file (`model_weights/<layer>/...`, with `model_config`)
and a weights-only file (`layer_names` at the root). `layer_names` lists the model's layers in
computation order. A nested model's weights are listed trainable-first (Keras 2 and Keras 3's
legacy writer both do), so they are split into its sub-layers by weight name
(`outer/inner/kernel:0`) and put in computation order only where the file's `model_config`
says it; otherwise their order is unknown, but the nested model's own place among the top-level
layers is known (`LayerInfo.top_order`). Within a layer, variables pair by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import h5py
import numpy as np

from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.safety import check_hdf5, layer_name, text_attribute
from keras_blockreuse.sources.base import LayerInfo, LayerSource, VariableInfo
from keras_blockreuse.sources.hdf5 import attr_text, dtype_of, open_h5, read_dataset


class LegacyH5Source(LayerSource):
    """The layers of a Keras 2 / legacy `.h5` file.

    Example:

    ```python
    with LegacyH5Source("vgg16_weights_tf_dim_ordering_tf_kernels.h5", rule="vgg") as source:
        source.block_names()     # ["block1", ..., "predictions"]
    ```
    """

    variable_names_pair = True

    def __init__(self, path: str, rule=None, file: h5py.File | None = None):
        """`file`: the file already opened with `open_h5` (checked), which the source then
        owns; by default `path` is opened."""
        super().__init__(rule)
        self.description = path
        self.bytes_read = 0
        self._file = file if file is not None else open_h5(path)
        self._size = os.path.getsize(path)
        try:
            check_hdf5(self._file, path)
            self.info = {
                "format": "Keras legacy HDF5 (.h5)",
                "keras_version": attr_text(text_attribute(self._file, "keras_version", "")),
                "backend": attr_text(text_attribute(self._file, "backend", "")),
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
        config = _config_layers(self._file)
        infos, locators = [], {}
        for top_order, top in enumerate([layer_name(n, self.description)
                                         for n in text_attribute(root, "layer_names")]):
            group = root[top]
            if "weight_names" not in group.attrs and _holds_datasets(group):
                raise BlockFileError(
                    f"{self.description}: layer {top!r} holds weight datasets but no "
                    "`weight_names` attribute to say which they are: the file is damaged "
                    "(Keras's own load_weights refuses it too). Fetch or save it again.")
            names = [layer_name(n, self.description, "weight name", slash=True)
                     for n in text_attribute(group, "weight_names", [])]
            units: dict[str, list[tuple[str, str]]] = {}
            for weight_name in names:
                unit, variable = split_weight_name(top, weight_name)
                units.setdefault(unit, []).append((variable, weight_name))
            nested = [u for u in units if u != top]
            ranks = _nested_ranks(config.get(top), top)
            # (a nested model of one layer with variables: its place follows from the top
            # level's order, whatever the model_config says)
            rank = {u: _rank_of(ranks, u) for u in nested}
            known = not nested or len(units) == 1 or (
                None not in rank.values() and len(set(rank.values())) == len(rank))
            for unit in sorted(units, key=lambda u: rank.get(u, -1)) if known else units:
                variables, locator = [], {}
                for i, (variable, weight_name) in enumerate(units[unit]):
                    ds = group[weight_name]
                    if not isinstance(ds, h5py.Dataset):
                        raise BlockFileError(
                            f"{self.description}: {ds.name!r} should be a dataset, it is a group."
                        )
                    key = str(i)
                    variables.append(VariableInfo(
                        key=key,
                        name=variable,
                        path=weight_name,
                        shape=tuple(int(d) for d in ds.shape),
                        dtype=dtype_of(ds, self.description),
                        dataset=ds.name,
                    ))
                    locator[key] = ds.name
                entry = config.get(top) if unit == top else _find(config.get(top), unit)
                class_name = entry.get("class_name", "") if isinstance(entry, dict) else ""
                order = len(infos) if known else None
                infos.append(LayerInfo(unit, str(class_name), tuple(variables), order=order,
                                       top_order=top_order if order is None else None))
                locators[unit] = locator
        if any(info.order is None for info in infos):
            self.info["layer order"] = (
                "unknown inside custom layers (model_config does not list their sub-layers)"
                if config else "unknown inside nested models (no model_config)")
        return infos, locators

    def layers(self) -> list[LayerInfo]:
        return list(self._layer_infos)

    def read_layer(self, layer: LayerInfo) -> dict[str, np.ndarray]:
        return dict(self.iter_layer(layer))

    def iter_layer(self, layer: LayerInfo,
                   scratch: list | None = None) -> Iterator[tuple[str, np.ndarray]]:
        for key, name in self._locators[layer.path].items():
            yield key, read_dataset(self._file[name], self._size, self.description, scratch)

    def close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            try:
                file.close()
            except Exception:  # noqa: BLE001
                pass
            self._file = None


def split_weight_name(top: str, weight_name: str) -> tuple[str, str]:
    """`(layer path, variable name)` of a legacy weight name.

    Keras 2 writes `conv1/kernel:0` (nested: `inner/kernel:0`); Keras 3's legacy writer
    writes variable paths, `model/conv1/kernel` (nested: `model/outer/inner/kernel`).
    """
    parts = weight_name.split("/")
    variable = parts[-1].split(":", 1)[0]
    scope = parts[:-1]
    inner = scope[scope.index(top) + 1:] if top in scope else scope
    return "/".join([top, *inner]), variable


def _config_layers(file: h5py.File) -> dict[str, dict]:
    """Top-level layer name -> its config entry, from `model_config` (JSON, never eval)."""
    raw = text_attribute(file, "model_config")
    if raw is None:
        return {}
    try:
        config = json.loads(attr_text(raw))
        return {
            str(layer["config"]["name"]): layer
            for layer in config.get("config", {}).get("layers", [])
            if isinstance(layer, dict) and isinstance(layer.get("config"), dict)
            and "name" in layer["config"]
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def _children(entry) -> list[dict]:
    try:
        layers = entry["config"]["layers"]
    except (KeyError, TypeError):
        return []
    return [c for c in layers if isinstance(c, dict) and isinstance(c.get("config"), dict)
            and "name" in c["config"]]


def _nested_ranks(entry, top: str) -> dict[str, int]:
    """`layer path -> position` of a nested model's layers, depth first, from its config;
    of a Bidirectional's forward and backward layers (at the top or inside a nested model)."""
    ranks: dict[str, int] = {}

    def wrapped(item, path):
        for inner in _bidirectional_layers(item, path):
            ranks[inner] = len(ranks)

    def walk(item, path):
        for child in _children(item):
            child_path = f"{path}/{child['config']['name']}"
            ranks[child_path] = len(ranks)
            wrapped(child, child_path)
            walk(child, child_path)

    wrapped(entry, top)
    walk(entry, top)
    return ranks


def _bidirectional_layers(entry, path: str) -> list[str]:
    """The paths of a Bidirectional's forward and backward layers, in computation order, from
    its config; [] for another layer. Keras names them `forward_<layer>` and
    `backward_<layer>` (a backward layer given by the user: `backward_<its name>`)."""
    if not (isinstance(entry, dict) and entry.get("class_name") == "Bidirectional"):
        return []
    config = entry.get("config")
    config = config if isinstance(config, dict) else {}  # (a damaged config: no ranks)
    out = []
    for prefix, inner in (("forward_", config.get("layer")),
                          ("backward_", config.get("backward_layer") or config.get("layer"))):
        inner_config = inner.get("config") if isinstance(inner, dict) else None
        name = inner_config.get("name") if isinstance(inner_config, dict) else None
        if isinstance(name, str) and name:
            out.append(f"{path}/{prefix}{name}")
    return out


def _rank_of(ranks: dict[str, int], path: str) -> int | None:
    """The rank of `path`, or of the nearest layer above it that has one (a recurrent
    layer's cell below it, `forward_lstm/lstm_cell`); None where none has."""
    steps = path.split("/")
    for end in range(len(steps), 1, -1):
        found = ranks.get("/".join(steps[:end]))
        if found is not None:
            return found
    return None


def _find(entry, path: str) -> dict | None:
    for name in path.split("/")[1:]:
        entry = next((c for c in _children(entry) if c["config"]["name"] == name), None)
        if entry is None:
            return None
    return entry


def _holds_datasets(group: h5py.Group) -> bool:
    """Whether a layer's group holds any dataset, at any depth."""
    found = []
    group.visititems(lambda _, obj: found.append(1) or True
                     if isinstance(obj, h5py.Dataset) else None)
    return bool(found)
