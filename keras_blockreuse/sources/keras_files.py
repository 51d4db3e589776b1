"""Which Keras file a path is, and the reader that opens it."""

from __future__ import annotations

import os
import zipfile

import h5py

from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.safety import text_attribute
from keras_blockreuse.sources.base import LayerSource
from keras_blockreuse.sources.hdf5 import attr_text, open_h5

BLOCK_SUFFIX = ".blocks.h5"


def open_keras_file(path: str | os.PathLike, rule=None, source_model=None) -> LayerSource:
    """Opens a Keras weights file of any supported kind as a source of layers.

    Args:
        path: a `.weights.h5`, a sharded `.weights.json`, a `.keras` archive, or a legacy
            `.h5` / `.hdf5` file.
        rule: the block rule grouping the file's layers (see `get_blocks`).
        source_model: for `.weights.h5` files, a model (or a function building one) with the
            source's architecture: required without layer names, and it gives the layers'
            computation order and variable names.

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
        from keras_blockreuse.sources.keras_archive import open_archive

        return open_archive(path, rule, source_model)
    if kind in ("sharded", "weights"):
        from keras_blockreuse.sources.keras_weights import open_sharded, open_weights

        return (open_sharded if kind == "sharded" else open_weights)(path, rule, source_model)
    if kind == "legacy":
        if source_model is not None:
            raise TypeError(
                f"`source_model` does not apply to {path!r}: a legacy .h5 file holds its "
                "layer names."
            )
        from keras_blockreuse.sources.legacy_h5 import LegacyH5Source

        return LegacyH5Source(path, rule)
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
    with open_h5(path) as f:
        if attr_text(text_attribute(f, "format", "")) == "keras-blockreuse":
            return None
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            return "legacy"
        if "layers" in f or "vars" in f:
            return "weights"
    return "weights" if path.endswith(".weights.h5") else None


def _has_member(path: str, name: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return name in archive.namelist()
    except zipfile.BadZipFile:
        return False
