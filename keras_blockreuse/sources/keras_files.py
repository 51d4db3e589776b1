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
    kind, file = sniff(path)
    return open_sniffed(path, kind, file, rule, source_model)


def open_sniffed(path: str, kind: str | None, file: h5py.File | None, rule=None,
                 source_model=None) -> LayerSource:
    """`open_keras_file` for a file `sniff` has recognised: `file` (the file `sniff` opened
    and checked, or None) is read, not opened again, and closed with the source or on any
    failure."""
    try:
        if not os.path.isfile(path):
            raise BlockFileError(f"No such file: {path!r}")
        if kind == "keras":
            from keras_blockreuse.sources.keras_archive import open_archive

            return open_archive(path, rule, source_model)
        if kind in ("sharded", "weights"):
            from keras_blockreuse.sources.keras_weights import open_sharded, open_weights

            if kind == "sharded":
                return open_sharded(path, rule, source_model)
            return open_weights(path, rule, source_model, file)
        if kind == "legacy":
            if source_model is not None:
                raise TypeError(
                    f"`source_model` does not apply to {path!r}: a legacy .h5 file holds its "
                    "layer names."
                )
            from keras_blockreuse.sources.legacy_h5 import LegacyH5Source

            return LegacyH5Source(path, rule, file)
        raise BlockFileError(
            f"{path!r} is not a supported weights file: expected a .blocks.h5, .weights.h5, "
            ".weights.json, .keras or legacy Keras .h5 file."
        )
    except BaseException:
        if file is not None:
            file.close()
        raise


def keras_file_kind(path: str) -> str | None:
    """`"keras"`, `"sharded"`, `"weights"`, `"legacy"`, or `None` (a block file, or other).

    Recognised by content where the name is ambiguous: an `.h5` file is a Keras 3 weights
    file if it has a `layers` or `vars` group, legacy if it has `layer_names`.
    """
    kind, file = sniff(path)
    if file is not None:
        file.close()
    return kind


def sniff(path: str) -> tuple[str | None, h5py.File | None]:
    """`(keras_file_kind(path), file)`: for an HDF5 weights or legacy file, `file` is the file
    opened and checked (`open_h5`) for its reader to read, so that one load opens and checks
    it once; the caller closes it. `file` is None for every other kind."""
    if path.endswith(BLOCK_SUFFIX):
        return None, None
    if path.endswith(".keras"):
        return "keras", None
    if path.endswith(".json"):
        return "sharded", None
    if not os.path.isfile(path):
        if path.endswith(".weights.h5"):
            return "weights", None
        return ("legacy" if path.endswith((".h5", ".hdf5")) else None), None
    if zipfile.is_zipfile(path):
        return ("keras" if _has_member(path, "config.json") else None), None
    if not h5py.is_hdf5(path):
        return None, None
    from keras_blockreuse.sources.keras_weights import in_vars_group

    f = open_h5(path, defer=in_vars_group)  # each variable checked when read: a Keras 3 file
    try:
        if attr_text(text_attribute(f, "format", "")) == "keras-blockreuse":
            kind = None
        else:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in root.attrs:
                kind = "legacy"
            elif "layers" in f or "vars" in f or path.endswith(".weights.h5"):
                kind = "weights"
            else:
                kind = None
    except BaseException:
        f.close()
        raise
    if kind is None:
        f.close()
        return None, None
    if kind != "weights":
        try:  # its reader reads attributes anywhere through h5py
            f.check_all()
        except BaseException:
            f.close()
            raise
    return kind, f


def _has_member(path: str, name: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return name in archive.namelist()
    except zipfile.BadZipFile:
        return False
