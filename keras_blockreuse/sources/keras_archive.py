"""Source kind: a `.keras` archive (a zip of `config.json`, `metadata.json`, `model.weights.h5`).

The weights are read inside the zip, never extracted. Layers are known by the names and
structural paths the weights file records. The source's structure is rebuilt from
`config.json` with `safe_mode=True` only when needed — the weights carry no names, or a load
cannot pair a block by name or path (`KerasWeightsSource.rebuild_structure`), or `inspect`
shows the variables — and then layers also carry their computation order and variable names.
An archive of a keras-hub backbone or task, read without a block rule, is grouped by the blocks
of the model its config rebuilds (stages, transformer layers), as its preset directory is.
"""

from __future__ import annotations

import copy
import json
import os
import zipfile

import numpy as np

from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.hdf5_check import HDF5_SIGNATURE
from keras_blockreuse.safety import check_member_crc, check_zip, inflate_member
from keras_blockreuse.sources.hdf5 import open_h5
from keras_blockreuse.sources.keras_weights import KerasWeightsSource
from keras_blockreuse.zip_member import StoredMember


def open_archive(path: str, rule=None, source_model=None) -> KerasWeightsSource:
    """Opens a `.keras` archive as a source of layers (see `KerasWeightsSource`).

    The one place the archive is opened; its weights member is read in place when stored,
    or inflated once, to a temporary file on disk, within a bound computed from its config
    when compressed (`_config_bound`: the variables' shapes, not their values).
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        with open(path, "rb") as f:
            start = f.read(16)
        if start.startswith(HDF5_SIGNATURE):
            raise BlockFileError(
                f"{path!r} is not a .keras archive but an HDF5 file ({os.path.getsize(path)} "
                f"bytes, starting {start!r}), as a Keras .weights.h5, a Keras 2 .h5 and a "
                ".blocks.h5 file are; a .keras archive is a zip file, starting "
                "b'PK\\x03\\x04'. Give it its name: rename it to end in .weights.h5, .h5 or "
                ".blocks.h5, as it was saved."
            ) from e
        raise BlockFileError(
            f"{path!r} is not a valid .keras archive: {e} ({os.path.getsize(path)} bytes, "
            f"starting {start!r}; a .keras archive is a zip file, starting b'PK\\x03\\x04', "
            "with its directory at the end). A download that saved an error page, or a copy "
            "cut short, looks like this: fetch or save it again."
        ) from e
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
            near = [m for m in members if len(m) == len("model.weights.h5") and sum(
                a != b for a, b in zip(m, "model.weights.h5", strict=True)) == 1]
            damaged = (f": its member {near[0]!r} differs from that name by one character, as "
                       "a damaged archive directory's does; fetch or save it again") if near else ""
            raise BlockFileError(
                f"{path!r} holds no model.weights.h5{sharded}; members: {sorted(members)}"
                f"{damaged}"
            )
        metadata = json_member(archive, "metadata.json", path) if "metadata.json" in members else {}
        info = {
            "format": "Keras archive (.keras)",
            "keras_version": str(metadata.get("keras_version", "")),
            "saved": str(metadata.get("date_saved", "")),
        }
        member = archive.getinfo("model.weights.h5")
        config = json_member(archive, "config.json", path) if "config.json" in members else {}
        rebuilt: list = []

        def structure():  # the source model from config.json, built at most once, lazily
            if not rebuilt:
                rebuilt.append(model_from_config(config, path))
            return rebuilt[0]

        if member.compress_type == zipfile.ZIP_STORED and not member.flag_bits & 0x1:
            stream = StoredMember(path, member)  # read in place at its offset, never extracted
        else:  # inflated to a temporary file, stopping at what the config's model needs
            if source_model is None and not config:
                raise BlockFileError(
                    f"{path!r}: its weights are compressed and it has no config.json to bound "
                    "their inflated size."
                )
            bound = (_weights_bound(source_model) if source_model is not None
                     else _config_bound(config, path, structure))
            stream = inflate_member(archive, member, bound, path)
        closers.append(stream.close)
        if isinstance(stream, StoredMember):  # the archive's one checksum of the values
            check_member_crc(archive, member, path)
        file = open_h5(stream, repr(path))
        if rule is None and source_model is None and _is_hub(config):
            rule = _hub_grouping(structure, info)
        return KerasWeightsSource(
            [file], path, [member.file_size], rule, source_model, info, on_close=close,
            structure=structure if config and source_model is None else None,
            # (a keras-hub model's layers come from its code and version, not its config)
            configs=None if _is_hub(config) else layer_configs(config),
        )
    except BaseException:
        close()
        raise


def recorded_rule(path):
    """The block rule a `BlockModel`'s `.keras` archive records in its config.json (its
    `blocks`, as `keras.saving.load_model` restores it), or None: another source, another
    model, or a file that cannot be read (opening it as a source says why). Never opens
    anything but a regular file."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            check_zip(archive, str(path))
            config = json_member(archive, "config.json", str(path))
    except (zipfile.BadZipFile, KeyError, OSError, BlockFileError):
        return None
    if not isinstance(config, dict) or config.get("registered_name") != (
            "keras_blockreuse>BlockModel"):
        return None
    inner = config.get("config")
    return inner.get("blocks") if isinstance(inner, dict) else None


def _is_hub(config: dict) -> bool:
    """Whether a `.keras` config describes a keras-hub backbone or task."""
    return isinstance(config, dict) and (
        str(config.get("module", "")).startswith("keras_hub")
        or str(config.get("registered_name", "")).startswith("keras_hub>"))


def _hub_grouping(structure, info: dict):
    """The archive's grouping by its keras-hub model's own blocks (stages, transformer
    layers), as its preset directory and `save_blocks` group it, from the model its config
    rebuilds; None (top-level names) where the config cannot be rebuilt, which `info` says."""
    from keras_blockreuse.hub import hub_file_grouping

    try:
        model = structure()
    except BlockFileError as error:
        info["block rule"] = ("default: its keras-hub model could not be rebuilt from "
                              f"config.json ({str(error).split(': ', 1)[-1][:200]})")
        return None
    grouping = hub_file_grouping(model)
    if grouping is not None:
        info["block rule"] = (f"the keras-hub {type(model).__name__}'s blocks, rebuilt from "
                              "config.json")
    return grouping


# The most copies of a model's variables that the optimizer state Keras 3 (3.15) saves can
# hold, over every optimizer it ships (keras/src/optimizers/): 3 slots per variable at most
# (Adam or AdamW with amsgrad=True: m, v, v_hat; RMSprop with momentum and centered=True;
# the others 1 or 2; Adafactor's factored slots are smaller than its variable), plus 1 for
# use_ema=True (the moving averages) and 1 for gradient_accumulation_steps (the accumulated
# gradients): 5. A wrapper saves its inner optimizers' variables twice, as its own `vars` and
# again under the inner optimizer (`optimizer/vars/*` and `optimizer/inner_optimizer/vars/*`),
# and a LossScaleOptimizer (which compile() puts around any optimizer of a mixed_float16
# model) may wrap a MultiOptimizer, which saves its sub-optimizers' twice too: 3 x 5.
OPTIMIZER_COPIES = 15


def _weights_bound(model, objects: int = 0) -> int:
    """The most bytes a `.keras` archive's weights file can need: its config's model's
    variables, `OPTIMIZER_COPIES` copies of them for the optimizer state (any optimizer Keras
    ships, with amsgrad, use_ema, gradient accumulation and loss scaling), and a margin of
    1 MiB plus 4 KiB per variable and per object for HDF5's own structures (Keras writes a
    group for every layer, weightless ones too: about 2 KB each). `objects`: the objects its
    config describes (else its layers, nested ones counted, are)."""
    import keras

    if not isinstance(model, keras.Model):
        model = model()
    variables = list(model.weights)
    values = sum(int(np.prod(v.shape, dtype=np.int64)) * _itemsize(v.dtype) for v in variables)
    objects = max(objects, _count_layers(model))
    return (1 + OPTIMIZER_COPIES) * values + (1 << 20) + 4096 * (len(variables) + objects)


def _count_layers(layer) -> int:
    """The layers below `layer`, through the `layers` of its nested models."""
    inner = getattr(layer, "layers", None)
    return sum(1 + _count_layers(sub) for sub in inner) if isinstance(inner, list) else 0


def _count_objects(config) -> int:
    """The objects a Keras config describes (each `class_name` in it)."""
    if isinstance(config, dict):
        return ("class_name" in config) + sum(_count_objects(v) for v in config.values())
    if isinstance(config, list):
        return sum(_count_objects(v) for v in config)
    return 0


def _config_bound(config: dict, where: str, structure) -> int:
    """`_weights_bound` of the model a config describes, without the memory of its values.

    The model is built with its variables left uninitialized (`keras.StatelessScope(
    initialize_variables=False)`: shapes and dtypes, no values), measured, and dropped, so a
    load of a compressed archive does not hold a second copy of the model (ResNet50: 145.6 MB
    against 25 MB for the stored archive, benchmarks/RESULTS.md). A config whose layers cannot
    be built that way is built fully, by `structure()`.
    """
    import keras
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute("uninitialized_variables")
    objects = _count_objects(config)
    try:
        with keras.StatelessScope(initialize_variables=False):
            model = model_from_config(copy.deepcopy(config), where)  # it consumes the config
        return _weights_bound(model, objects)
    except BlockFileError:
        return _weights_bound(structure(), objects)
    finally:  # nothing initializes the variables of the measured model later
        global_state.set_global_attribute("uninitialized_variables", pending)


def _itemsize(dtype) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 8  # a type NumPy does not know (bfloat16, float8): at most 8 bytes


# The most bytes a `.keras` archive's JSON member (config.json, metadata.json) may inflate to:
# Keras writes a few KB to a few MB (a keras-hub model's config); more is a zip bomb.
JSON_LIMIT = 64 << 20


def json_member(archive: zipfile.ZipFile, name: str, where: str) -> dict:
    """A JSON member of an archive, parsed; one that inflates beyond `JSON_LIMIT` bytes is
    refused (`BlockFileError`) when it gets there, before it fills memory."""
    with archive.open(name) as member:
        data = member.read(JSON_LIMIT + 1)
    if len(data) > JSON_LIMIT:
        raise BlockFileError(
            f"{where}: archive member {name!r} inflates beyond {JSON_LIMIT} bytes, more than "
            "any Keras config holds; a zip bomb or a damaged archive. Stopped inflating it.")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BlockFileError(f"{where}: {name} is not valid JSON: {e}") from None


def layer_configs(config: dict) -> dict[str, dict]:
    """`{name path: layer config}` for every layer a `.keras` config's Functional and
    Sequential models list, nested ones under their names (`features/conv`). Layers that a
    custom layer or a keras-hub model creates from its own arguments are not listed there."""
    out: dict[str, dict] = {}

    def walk(model_config: dict, prefix: str) -> None:
        inner = model_config.get("config") if isinstance(model_config, dict) else None
        layers = inner.get("layers") if isinstance(inner, dict) else None
        if not isinstance(layers, list):
            return
        for item in layers:
            cfg = item.get("config") if isinstance(item, dict) else None
            name = cfg.get("name") if isinstance(cfg, dict) else None
            if isinstance(name, str):
                out[prefix + name] = item
                walk(item, prefix + name + "/")

    walk(config, "")
    return out


def model_from_config(config: dict, where: str):
    """The model a `.keras` config describes, rebuilt with `safe_mode=True` (no weights)."""
    import keras

    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as e:
        raise BlockFileError(
            f"{where}: its config.json cannot rebuild the model with safe_mode=True "
            f"({type(e).__name__}: {e}), which is needed here (its weights carry no layer "
            "names, are compressed, or do not pair by name). Pass source_model= (the model, "
            "or a function that builds it)."
        ) from e
    if not isinstance(model, keras.Model):
        raise BlockFileError(f"{where}: its config.json describes a {type(model).__name__}, "
                             "not a model. Pass source_model=.")
    return model
