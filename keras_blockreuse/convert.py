"""`convert`: write the blocks of any source — a Keras file, a model — to a `.blocks.h5` file.

The Keras formats carry no block grouping and no checksums; converting one groups its layers
with a block rule and writes the same `.blocks.h5` file `save_blocks` writes (atomically,
with a checksum per block), reading one block at a time. Where the source came from is kept
in the file's metadata.

Example:

```python
convert("vgg16.weights.h5", "vgg16.blocks.h5", blocks="vgg")
read_blocks("vgg16.blocks.h5").metadata["converted_from"]     # "vgg16.weights.h5"
```
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import secrets
import types
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import keras
import numpy as np

from keras_blockreuse.blocks import BlockRule, select
from keras_blockreuse.sources import Source, open_source
from keras_blockreuse.store import (
    _WIDENED,
    FORMAT_NAME,
    FORMAT_VERSION,
    HASH,
    SUFFIX,
    TEMP_MARKER,
    _checksum,
    _dataset_name,
    _fsync_dir,
    _header_checksum,
    _metadata_json,
    remove_stale_temporaries,
)

__all__ = ["convert", "write_source"]


def convert(
    source,
    path: str | os.PathLike,
    blocks: BlockRule = None,
    only: Sequence[str] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    **source_options,
) -> str:
    """Writes a source's blocks to a `.blocks.h5` file and returns its path.

    Args:
        source: anything `load_blocks` reads: a Keras `.weights.h5` / `.weights.json` /
            `.keras` / legacy `.h5` file, a `.blocks.h5` file, or a `keras.Model`.
        path: the block file to write; must end in `.blocks.h5`.
        blocks: the block rule grouping a source without blocks of its own (default: a
            detected `keras.applications` preset, else the `block_1_0` naming convention).
        only: block names or globs to write; default every block.
        metadata: a JSON-serialisable dict stored with the source's description.
        **source_options: options for the source's reader, such as `source_model=`.

    Example:

    ```python
    convert("classifier.keras", "classifier.blocks.h5", only=["block_1", "block_2"])
    ```
    """
    with open_source(source, blocks, **source_options) as src:
        names = select(src.block_names(), only, f"`only`; source {src.description}")
        facts = {"converted_from": src.description}
        facts.update({f"source_{k}".replace(" ", "_"): str(v)
                      for k, v in getattr(src, "info", {}).items()})
        facts.update(dict(metadata or {}))
        model_name = os.path.basename(str(src.description)).split(".", 1)[0]
        return write_source(src, path, names, model_name=model_name, metadata=facts)


def write_source(
    src: Source,
    path: str | os.PathLike,
    names: Sequence[str],
    model_name: str,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Writes the named blocks of an open source to a `.blocks.h5` file, atomically."""
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ValueError(f"A block file name must end in {SUFFIX!r}. Received: path={path!r}")
    for name in names:
        if "/" in name or name in (".", ".."):
            raise ValueError(
                f"Block names cannot contain '/' or be '.' or '..'. Received block {name!r}."
            )
    metadata_json = _metadata_json(metadata)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    tmp = os.path.join(
        folder, f".{os.path.basename(path)}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    )
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            _write(f, src, list(names), model_name, metadata_json)
            f.flush()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    return path


def _write(f: h5py.File, src: Source, names: list[str], model_name: str, metadata_json: str):
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_name": model_name,
        "blocks": json.dumps(names),
        "metadata": metadata_json,
    }
    for key, value in header.items():
        f.attrs[key] = value
    f.attrs["header_checksum"] = _header_checksum(header)
    for name in names:
        group = f.create_group(name)
        values = src.read_block(name)
        layers = []
        data_hash = hashlib.new(HASH)
        for layer in src.block_layers(name):
            unit_group = group.require_group(layer.path)
            taken = set(unit_group.keys())
            variables = []
            for var in layer.variables:
                array = np.asarray(values[layer.path][var.key])
                dataset = _dataset_name(types.SimpleNamespace(name=var.name), var.key, taken)
                stored = array.astype(np.float32) if var.dtype in _WIDENED else array
                stored = np.ascontiguousarray(stored)
                ds = unit_group.create_dataset(dataset, data=stored)
                ds.attrs["path"] = var.path
                ds.attrs["dtype"] = var.dtype
                data_hash.update(stored.data)
                variables.append(
                    {
                        "key": var.key,
                        "name": var.name,
                        "path": var.path,
                        "shape": list(array.shape),
                        "dtype": var.dtype,
                        "dataset": dataset,
                    }
                )
            unit_group.attrs["class_name"] = layer.class_name
            layers.append(
                {"path": layer.path, "class_name": layer.class_name, "variables": variables}
            )
        layout = json.dumps(layers)
        group.attrs["layout"] = layout
        group.attrs["layout_checksum"] = _checksum(layout.encode())
        group.attrs["data_checksum"] = f"{HASH}:{data_hash.hexdigest()}"
