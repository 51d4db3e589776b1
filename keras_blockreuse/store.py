"""The `.blocks.h5` file: writing it atomically, reading it lazily and verifying it.

The format is documented in `docs/FORMAT.md`. In short: root attributes describe the file and
list the blocks in order; one group per block holds one group per layer and one dataset per
variable; each block carries a checksum of its layout (names, shapes, dtypes) and one of its
bytes, both verified before any value is used.

Example:

```python
path = save_blocks(model, "run/blocks_010.blocks.h5", only=["block_1"], metadata={"epoch": 10})
info = read_blocks(path)
info.blocks["block_1"].num_params
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import functools
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata as importlib_metadata
from typing import Any

import h5py
import numpy as np

from keras_blockreuse.blocks import BlockRule, select
from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.safety import check_regular_file, not_hdf5, open_for_reading
from keras_blockreuse.sources.base import LayerInfo, VariableInfo, numpy_dtype
from keras_blockreuse.sources.hdf5 import direct_descriptor, read_at

FORMAT_NAME = "keras-blockreuse"
FORMAT_VERSION = 1
SUFFIX = ".blocks.h5"
TEMP_MARKER = ".kbr-tmp-"
LAYOUT = ".layout"  # the dataset, in each block's group, that describes the block
HASH = "sha256"  # header and layout checksums (small): always sha256
# The checksum of each block's values. Its algorithm is recorded in the file as the prefix of
# `data_checksum` ("xxh3_128:..." or "sha256:..."), so files written with either verify.
# xxh3_128 hashes at about 25 GB/s against sha256's 0.85 GB/s (benchmarks/RESULTS.md): with
# sha256, checksums alone would cost most of Keras's whole load time for large models.
DATA_HASHES = ("xxh3_128", "sha256")

# Keras dtypes that HDF5 cannot hold natively are stored widened, losslessly, as float32.
_WIDENED = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}


@dataclasses.dataclass(frozen=True)
class BlockInfo:
    """One stored block: its layers in order, and its checksums."""

    name: str
    layers: tuple[LayerInfo, ...]
    layout_checksum: str
    data_checksum: str

    @property
    def num_params(self) -> int:
        return sum(v.size for layer in self.layers for v in layer.variables)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for layer in self.layers for v in layer.variables)


@dataclasses.dataclass(frozen=True)
class BlockFileInfo:
    """What a `.blocks.h5` file holds, read without reading any weight values."""

    path: str
    format_version: int
    keras_version: str
    backend: str
    created: str
    model_name: str
    metadata: dict
    blocks: dict[str, BlockInfo]

    @property
    def num_params(self) -> int:
        return sum(b.num_params for b in self.blocks.values())

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks.values())


# --- writing ------------------------------------------------------------------------------


def save_blocks(
    model,
    path: str | os.PathLike,
    only: Sequence[str] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    blocks: BlockRule = None,
) -> str:
    """Saves a model's weights block by block to a `.blocks.h5` file, atomically.

    The file is written to a temporary file in the same folder, flushed, synced and then moved
    over `path` with `os.replace`: a crash or an exception at any moment leaves either the old
    file or the new one, never a torn one.

    Args:
        model: a built `keras.Model`.
        path: where to write; must end in `.blocks.h5`.
        only: block names or globs to save; default every block.
        metadata: a JSON-serialisable dict stored in the file.
        blocks: the block rule (ignored for a `BlockModel`, which has its own).

    Returns:
        The path written, as a string.

    Warns:
        UserWarning: a layer name or glob of a dict block rule matches no weighted layer of
            the model (a typo: its layer is saved as a block of its own, or the file holds no
            block of that entry's name); the model holds variables of its own, which no block
            holds, so the file does not (`model_own_variables`; said where `only` is None).

    Example:

    >>> save_blocks(model, "ckpt/blocks_001.blocks.h5", metadata={"epoch": 1})
    'ckpt/blocks_001.blocks.h5'
    """
    from keras_blockreuse.sources.live_model import ModelSource  # imports Keras

    source = ModelSource(model, blocks, keras_paths=True)
    _warn_unmatched_patterns(blocks if blocks is not None else getattr(model, "_block_rule", None),
                           source.block_names(), model)
    names = select(source.block_names(), only, "`only`")
    if only is None:  # (a subset asked for leaves them by design)
        _warn_own_variables(model)
    return write_blocks(source, path, names, model_name=str(model.name), metadata=metadata)


def _warn_own_variables(model) -> None:
    """Warns that the variables a model creates itself (`model_own_variables`) are not saved."""
    from keras_blockreuse.blocks import model_own_variables

    own = [v.path for v in model_own_variables(model)]
    if own:
        import warnings

        warnings.warn(
            f"save_blocks: the model's own variables {own} (created by model {model.name!r} "
            "itself, not by one of its layers) belong to no block, so the block file does "
            "not hold them, and load_blocks leaves them as they are. Keras's "
            "model.save_weights saves them.", stacklevel=3)  # (no path: said once per caller)


def _warn_unmatched_patterns(rule: BlockRule, names: Sequence[str], model) -> None:
    """Warns about the layer names and globs of a dict block rule that match no top-level
    layer of `model` (a typo, most often: that layer is then saved as a block of its own), and
    about its entries that place no weighted layer (the file then holds no such block)."""
    if not isinstance(rule, Mapping):
        return
    import fnmatch
    import warnings

    layers = [layer.name for layer in model.layers]
    unmatched = {block: [p for p in patterns
                         if not any(name == p or fnmatch.fnmatchcase(name, p) for name in layers)]
                 for block, patterns in rule.items() if not isinstance(patterns, str)}
    unmatched = {block: found for block, found in unmatched.items() if found}
    empty = [block for block in rule if block not in names]
    if not unmatched and not empty:
        return
    own = [name for name in names if name not in rule]
    said = []
    if unmatched:
        said.append(f"the block rule's layer names or globs {unmatched} match no layer of "
                    f"model {model.name!r}")
    if empty:
        said.append(f"its entries {empty} place no weighted layer, so the file holds no such "
                    "block")
    warnings.warn(
        "save_blocks: " + "; ".join(said)
        + (f"; the layers no entry places are saved as blocks of their own: {own}" if own
           else "") + ". Check them against the model's layer names (case counts; "
        "get_blocks(model) lists its layers by block).", stacklevel=3)


def write_blocks(
    source,
    path: str | os.PathLike,
    names: Sequence[str],
    model_name: str,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Writes the named blocks of a source to a `.blocks.h5` file, atomically.

    This is the one writer of the format: `save_blocks` passes a live model's blocks,
    `convert` the blocks of a Keras file. Blocks are read from the source one at a time.

    Args:
        source: an object with `block_layers(name)` (layer paths, classes, variables' keys,
            names, Keras paths and dtypes) and `read_block(name)` (`{layer path: {key:
            array}}`), such as a `keras_blockreuse.sources.Source`.
        path: where to write; must end in `.blocks.h5`.
        names: the blocks to write, in order.
        model_name: recorded in the file.
        metadata: a JSON-serialisable dict stored in the file.

    Returns:
        The path written, as a string.

    Raises:
        OSError: the disk is full (or a quota reached): naming the file, its size and the free
            space on its disk; the old file is unchanged and no temporary file is left.
    """
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ValueError(f"A block file name must end in {SUFFIX!r}. Received: path={path!r}")
    for name in names:
        if "/" in name or name in (".", ".."):
            raise ValueError(
                f"Block names cannot contain '/' or be '.' or '..'. Received block {name!r}."
            )
    metadata_json = _metadata_json(metadata)
    destination = os.path.realpath(path) if os.path.islink(path) else path
    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    tmp = os.path.join(folder, _temporary_name(os.path.basename(destination)))
    # HDF5 writes into memory and Python writes the image to disk: HDF5 1.14 crashes the
    # process (SIGSEGV, "Can't decrement id ref count") when its own writes hit a full disk,
    # while a failed `write` here is a plain OSError. Costs one buffer of the file's size.
    existed = os.path.exists(destination)
    image = io.BytesIO()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            with h5py.File(image, "w") as f:
                _write(f, source, list(names), model_name, metadata_json)
            _write_all(fd, image.getbuffer())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, destination)  # a symlink's target is replaced; the link stays
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            raise _no_space(error, destination, folder, image.seek(0, io.SEEK_END),
                            existed) from error
        raise
    _fsync_dir(folder)
    return path


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(error: OSError, destination: str, folder: str, size: int,
              existed: bool) -> OSError:
    """The OSError of a full disk (or quota), naming the file, its size and the free space
    left once the temporary file is removed."""
    from keras_blockreuse.report import format_bytes

    try:
        free = format_bytes(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    kept = (f"{destination!r} is unchanged" if existed else "nothing was written")
    needs = f" ({format_bytes(size)})" if size else ""
    return OSError(error.errno, f"{error.strerror}: cannot write {destination!r}{needs}: "
                   f"{free} free on its disk ({folder}); {kept}. Free some space there or "
                   "write the file to another disk.")


def _temporary_name(basename: str) -> str:
    """`.<name>.kbr-tmp-<pid>-<random>-<host>`, the name cut so the whole fits in 255 bytes."""
    tail = f"{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}-{_HOST}"
    room = _NAME_MAX - 1 - len(os.fsencode(tail))
    head = os.fsencode(basename)[: max(room, 1)].decode("utf-8", "ignore").replace(TEMP_MARKER, "")
    return f".{head}{tail}"


_NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows filesystems


def _write_all(fd: int, image: memoryview) -> None:
    """Writes every byte (a full disk raises OSError), in pieces of at most 64 MiB."""
    written = 0
    with image:
        while written < len(image):
            written += os.write(fd, image[written : written + (64 << 20)])


def _metadata_json(metadata) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"`metadata` must be a dict. Received: {metadata!r} of type {type(metadata).__name__}"
        )
    try:
        return json.dumps(dict(metadata), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`metadata` must be JSON-serialisable. Received: {metadata!r} ({e})") from None


def _write(f: h5py.File, source, names: list[str], model_name: str, metadata_json: str) -> None:
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **_writer_keras(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_name": model_name,
        "blocks": json.dumps(names),
        "metadata": metadata_json,
        "save_id": secrets.token_hex(16),
    }
    for key, value in header.items():
        f.attrs[key] = value if isinstance(value, int) else _fixed(value)
    f.attrs["header_checksum"] = _fixed(_header_checksum(header))
    for name in names:
        group = f.create_group(name)
        group.attrs["save_id"] = _fixed(header["save_id"])
        values = source.read_block(name)
        layers = []
        data_hash = _new_hash(DATA_HASH)
        for layer in source.block_layers(name):
            unit_group = group.require_group(layer.path)
            variables = []
            taken = set(unit_group.keys())
            for var in layer.variables:
                array = np.asarray(values[layer.path][var.key])
                dataset = _dataset_name(var.name, var.key, taken)
                stored = np.asarray(  # C order; keeps a scalar's shape () (ascontiguousarray: (1,))
                    array.astype(np.float32) if var.dtype in _WIDENED else array, order="C"
                )
                ds = _write_dataset(unit_group, dataset, stored)
                try:
                    _write_text_attribute(ds, "path", var.path)
                    _write_text_attribute(ds, "dtype", var.dtype)
                finally:
                    ds.close()  # low-level ids are released here, never by the GC later
                data_hash.update(stored)
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
            unit_group.attrs["class_name"] = _fixed(layer.class_name)
            layers.append(
                {"path": layer.path, "class_name": layer.class_name, "variables": variables,
                 "keras_path": layer.keras_path, "order": layer.order}
            )
            if layer.top_order is not None:  # a converted legacy file: see LayerInfo
                layers[-1]["top_order"] = layer.top_order
        layout = json.dumps(layers)
        group.create_dataset(LAYOUT, data=_fixed(layout))
        group.attrs["layout_checksum"] = _fixed(_checksum(layout.encode()))
        group.attrs["data_checksum"] = _fixed(f"{DATA_HASH}:{data_hash.hexdigest()}")


def _dataset_name(name: str, key: str, taken: set) -> str:
    name = name or f"var_{key}"
    name = re.sub(r"[^\w.\-]", "_", str(name)).lstrip(".") or f"var_{key}"
    if name in taken:
        name = f"{name}_{key}"
    taken.add(name)
    return name


def _write_dataset(group: h5py.Group, name: str, array: np.ndarray) -> h5py.h5d.DatasetID:
    """Writes a contiguous, uncompressed dataset through h5py's low-level API.

    The same file objects as `group.create_dataset(name, data=array)`, without the high-level
    argument handling that costs about as much as the write for small variables.
    """
    if array.ndim:
        space = h5py.h5s.create_simple(array.shape)
    else:
        space = h5py.h5s.create(h5py.h5s.SCALAR)
    dataset = h5py.h5d.create(
        group.id, name.encode(), h5py.h5t.py_create(array.dtype, logical=True), space
    )
    try:
        if array.size:
            dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, array)
    except BaseException:
        dataset.close()
        raise
    return dataset


_OWN_LAYOUTS = (h5py.h5d.CONTIGUOUS, h5py.h5d.COMPACT)


def _fixed(text: str) -> np.bytes_:
    """Text as a fixed-length HDF5 string (UTF-8 bytes).

    Block files hold no variable-length strings: those live in HDF5's global heap, which a
    single damaged byte can send into an endless loop when read.
    """
    return np.bytes_(text.encode("utf-8"))


def _write_text_attribute(dataset: h5py.h5d.DatasetID, name: str, text: str) -> None:
    """`dataset.attrs[name] = _fixed(text)`, through the low-level API."""
    value = np.array(_fixed(text) or b" ")
    attribute = h5py.h5a.create(
        dataset, name.encode(), h5py.h5t.py_create(value.dtype), h5py.h5s.create(h5py.h5s.SCALAR)
    )
    try:
        attribute.write(value)
    finally:
        attribute.close()


def _writer_keras() -> dict[str, str]:
    """The header's `keras_version` and `backend`: the writer's Keras, without importing it.

    A writer that holds a live model has Keras loaded and records its version and backend. One
    that copies another block file (`convert`) never imports Keras (the command line stays
    fast): it records the installed Keras's version and the backend `"none"`.
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        return {"keras_version": keras.__version__, "backend": keras.backend.backend()}
    try:
        version = importlib_metadata.version("keras")
    except importlib_metadata.PackageNotFoundError:
        version = "none"
    return {"keras_version": version, "backend": "none"}


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_HOST = re.sub(r"[^\w.]", "_", socket.gethostname()) or "localhost"


def is_temporary(filename: str) -> bool:
    """True for the temporary files a save writes before moving them into place."""
    return os.path.basename(filename).startswith(".") and TEMP_MARKER in filename


def remove_stale_temporaries(folder: str) -> list[str]:
    """Deletes temporary files left in `folder` by writers that no longer run.

    Returns:
        The paths deleted.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not is_temporary(name):
            continue
        pid, _, rest = name.rsplit(TEMP_MARKER, 1)[1].partition("-")
        host = rest.partition("-")[2]
        if host and host != _HOST:
            continue  # another machine's writer, on a shared folder: not ours to judge
        if pid.isdigit() and (int(pid) == os.getpid() or _alive(int(pid))):
            continue  # a save in progress, here or in another process
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- reading ------------------------------------------------------------------------------


_KERAS_FILES_ELSEWHERE = (
    "read_blocks and BlockFile read .blocks.h5 files only; load a Keras file with "
    "load_blocks, describe it with `keras-blockreuse inspect`, or convert it with "
    "`keras-blockreuse convert`.")


def read_blocks(path: str | os.PathLike) -> BlockFileInfo:
    """Describes a `.blocks.h5` file without a model and without reading weight values.

    Raises:
        BlockFileError: the file is unreadable, not a block file, too new or corrupt.

    Example:

    >>> info = read_blocks("run/blocks_010.blocks.h5")
    >>> [(b.name, b.num_params) for b in info.blocks.values()]
    """
    with BlockFile(path) as f:
        return f.info()


class BlockFile:
    """An open `.blocks.h5` file, read lazily: a block's bytes are read only when asked for.

    Every failure to read, parse or verify is raised as `BlockFileError` naming the file and,
    where known, the block.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.bytes_read = 0
        self._layouts: dict[str, BlockInfo] = {}
        self._opened: dict[str, list] = {}
        with self._reading():
            if not os.path.exists(self.path):
                raise BlockFileError(f"No such block file: {self.path!r}")
            check_regular_file(self.path)  # a FIFO would block the open forever
            self._size = os.path.getsize(self.path)
            if self._size and not self.path.endswith(SUFFIX) and zipfile.is_zipfile(self.path):
                with zipfile.ZipFile(self.path) as archive:
                    members = archive.namelist()
                if "config.json" in members:
                    raise BlockFileError(
                        f"{self.path} is a zip archive (a Keras .keras file?), not a block "
                        "file. " + _KERAS_FILES_ELSEWHERE)
                raise BlockFileError(
                    f"{self.path} is a zip archive without the config.json of a Keras .keras "
                    f"archive (it holds {sorted(members)[:5]}), and not a block file: expected "
                    "a .blocks.h5 file, or a Keras .keras, .weights.h5 or .h5 file.")
            if self._size == 0 or not h5py.is_hdf5(self.path):
                raise not_hdf5(self.path, f"block file {self.path}")
            self._file = open_for_reading(self.path, f"block file {self.path}", checksummed=True)
            self._fileno = self._file.id.fileno
            # The descriptor HDF5 reads through, for values read directly (`_stored`); another
            # driver (HDF5_DRIVER=core, ...) has none, and its values are read through HDF5.
            self._fd = direct_descriptor(self._file)
        try:
            with self._reading():
                self._header = self._read_header()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BlockFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._opened = {}
        file = getattr(self, "_file", None)
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()
            self._file = None

    @property
    def block_names(self) -> list[str]:
        return list(self._header["blocks"])

    @property
    def metadata(self) -> dict:
        return self._header["metadata"]

    def info(self) -> BlockFileInfo:
        h = self._header
        return BlockFileInfo(
            path=self.path,
            format_version=h["format_version"],
            keras_version=h["keras_version"],
            backend=h["backend"],
            created=h["created"],
            model_name=h["model_name"],
            metadata=h["metadata"],
            blocks={name: self.block(name) for name in self.block_names},
        )

    def block(self, name: str) -> BlockInfo:
        """The layout of one block (names, shapes, dtypes), verified against its checksum."""
        if name not in self._layouts:
            if name not in self._header["blocks"]:
                raise KeyError(f"No block {name!r} in {self.path}. It has: {self.block_names}")
            with self._reading(name):
                self._layouts[name] = self._read_layout(name)
        return self._layouts[name]

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        """Reads and verifies one block's values: `{layer path: {key: array}}`."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for path, key, array in self.iter_values(name):
            out.setdefault(path, {})[key] = array
        return out

    def iter_values(self, name: str) -> Iterator[tuple[str, str, np.ndarray]]:
        """Yields one block's values as they are read, `(layer path, key, array)`, each in
        new memory; after the last one, verifies the block's checksum.

        The check comes after the values: a caller that uses values before the generator is
        exhausted must have verified the block before (`verify`), and treats a
        `BlockFileError` raised here as the file changing while it was read.
        """
        info = self.block(name)
        with self._reading(name):
            digest = _new_hash(self._data_hash(name, info))
            for path, var, stored in self._stored(name, info, None):
                digest.update(stored)
                yield path, var.key, (
                    stored.astype(numpy_dtype(var.dtype)) if var.dtype in _WIDENED else stored
                )
            self._check_digest(name, info, digest)

    def verify(self, names: Sequence[str] | None = None) -> None:
        """Reads every selected block and checks its checksums, keeping no value.

        Values are read into one reusable buffer the size of the largest variable, so this
        costs time for every byte but memory for one variable only.

        Raises:
            BlockFileError: a block is damaged, truncated or does not match its checksum.
        """
        names = self.block_names if names is None else list(names)
        infos = [self.block(name) for name in names]
        largest = max((v.nbytes if v.dtype not in _WIDENED else 4 * v.size
                       for info in infos for layer in info.layers for v in layer.variables),
                      default=0)
        buffer = np.empty(min(largest, self._size), dtype=np.uint8)
        for name, info in zip(names, infos, strict=True):
            with self._reading(name):
                digest = _new_hash(self._data_hash(name, info))
                for _, _, stored in self._stored(name, info, buffer):
                    digest.update(stored)
                self._check_digest(name, info, digest)

        # --- internals --------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, block: str | None = None):
        where = f" (block {block!r})" if block else ""
        try:
            yield
        except BlockFileError:
            raise
        except KeyError as e:
            if block is None and "No block" in str(e):
                raise
            text = str(e.args[0]) if e.args else str(e)
            if _unreadable(text):
                raise BlockFileError(
                    f"Block file {self.path}{where} is damaged: HDF5 cannot read an object of "
                    f"it ({text})."
                ) from e
            raise BlockFileError(
                f"Block file {self.path}{where} is damaged or incomplete: missing {e}."
            ) from e
        except MemoryError as e:
            raise BlockFileError(
                f"Block file {self.path}{where} declares more data than can be read."
            ) from e
        except Exception as e:
            raise BlockFileError(
                f"Cannot read block file {self.path}{where}: {type(e).__name__}: {e}"
            ) from e

    def _stored(self, name: str, info: BlockInfo, buffer: np.ndarray | None):
        """Yields `(layer path, variable, stored array)` for each variable of a block, read
        into new memory, or into `buffer` (overwritten by the next one) when given."""
        for path, var, ds, dtype, nbytes, offset in self._datasets(name, info):
            if buffer is None:
                array = np.empty(var.shape, dtype=dtype)
                self.bytes_read += nbytes
            else:
                array = buffer[:nbytes].view(dtype).reshape(var.shape)
            if not array.size:
                pass
            elif offset is not None and self._fd is not None:  # the bytes HDF5 would copy
                read_at(self._fd, offset, array.reshape(-1).view(np.uint8),
                        lambda: f"{self.path}: dataset {_name(ds)!r}")  # noqa: B023 - at once
            else:
                ds.read(h5py.h5s.ALL, h5py.h5s.ALL, array)
            yield path, var, array

    def _datasets(self, name: str, info: BlockInfo) -> list:
        """A block's datasets, opened and checked once: `(layer path, variable, dataset,
        stored dtype, bytes, file offset or None)` each. A load that verifies, then reads,
        opens them once."""
        if name not in self._opened:
            group = self._group(self._file.id, name)
            opened = []
            children: dict[str, set[str]] = {layer.path: set() for layer in info.layers}
            for layer in info.layers:  # a nested layer's group is an entry of its parent's
                steps = layer.path.split("/")
                for i in range(1, len(steps)):
                    children.get("/".join(steps[:i]), set()).add(steps[i])
            for layer in info.layers:
                unit = self._group(group, layer.path)
                self._check_members(unit, layer, children[layer.path])
                opened.extend((layer.path, var, *self._open_dataset(unit, var))
                              for var in layer.variables)
            self._opened[name] = opened
        return self._opened[name]

    @staticmethod
    def _group(parent: h5py.h5g.GroupID, path: str):
        """A group's low-level id (a third of the cost of `group[path]`); anything else, or
        nothing there, takes the high-level path, whose errors name what is missing."""
        try:
            return h5py.h5g.open(parent, path.encode())
        except Exception:
            return h5py.Group(parent)[path].id

    def _check_digest(self, name: str, info: BlockInfo, digest) -> None:
        algorithm = info.data_checksum.split(":", 1)[0]
        if f"{algorithm}:{digest.hexdigest()}" != info.data_checksum:
            raise BlockFileError(
                f"Block {name!r} in {self.path} is corrupt: its values do not match their "
                "checksum: the file was damaged, or changed, after it was written."
            )

    def _read_header(self) -> dict:
        root = self._file
        kind = None
        if h5py.h5a.exists(root.id, b"format"):
            stored = h5py.h5a.open(root.id, b"format").get_type()
            if isinstance(stored, h5py.h5t.TypeStringID) and stored.is_variable_str():
                kind = "a variable-length string"  # not ours, and not read: see _fixed
            else:
                kind = self._attribute(root, "format")
        if kind != FORMAT_NAME:
            raise BlockFileError(
                f"{self.path} is an HDF5 file but not a block file: expected a root attribute "
                f"format={FORMAT_NAME!r}, received {kind!r}. " + (
                    "A Keras weights file is read as one by any name but *.blocks.h5 (which "
                    "is always read as a block file): name it .weights.h5 or .h5."
                    if self.path.endswith(SUFFIX) else _KERAS_FILES_ELSEWHERE)
            )
        version = self._attribute(root, "format_version", int)
        if version > FORMAT_VERSION:
            raise BlockFileError(
                f"{self.path} uses block file format version {version}, newer than this "
                f"reader's version {FORMAT_VERSION}. Upgrade keras-blockreuse to read it."
            )
        header = {
            key: self._attribute(root, key)
            for key in ("keras_version", "backend", "created", "model_name", "blocks", "metadata")
        }
        header["format"] = FORMAT_NAME
        header["format_version"] = version
        if h5py.h5a.exists(root.id, b"save_id"):  # files written before it have none
            header["save_id"] = self._attribute(root, "save_id")
        if _header_checksum(header) != self._attribute(root, "header_checksum"):
            raise BlockFileError(
                f"{self.path} is corrupt: its header (block list, metadata) does not match its "
                "checksum."
            )
        header["blocks"] = json.loads(header["blocks"])
        header["metadata"] = json.loads(header["metadata"])
        return header

    def _read_layout(self, name: str) -> BlockInfo:
        group = h5py.Group(self._group(self._file.id, name))
        layout = self._text_dataset(group, LAYOUT)
        expected = self._attribute(group, "layout_checksum")
        if _checksum(layout.encode()) != expected:
            raise BlockFileError(
                f"Block {name!r} in {self.path} is corrupt: its layout (layer names, shapes, "
                "dtypes) does not match its checksum."
            )
        save_id = self._header.get("save_id")
        if save_id is not None:
            mine = (self._attribute(group, "save_id")
                    if h5py.h5a.exists(group.id, b"save_id") else None)
            if mine != save_id:
                raise BlockFileError(
                    f"Block {name!r} in {self.path} is not from the save its header is from "
                    f"(save id {mine!r}, header {save_id!r}): the file was rewritten in place "
                    "while it was read (write a new file and os.replace it, as save_blocks "
                    "does), or it is damaged. No value of it was used."
                )
        # Files written before layouts recorded `order` hold their layers in the source
        # model's computation order, unless they were converted from a Keras file.
        order_known = "converted_from" not in self._header["metadata"]
        layers = tuple(
            LayerInfo(
                path=layer["path"],
                class_name=layer["class_name"],
                keras_path=layer.get("keras_path"),
                order=layer["order"] if "order" in layer else (i if order_known else None),
                top_order=layer.get("top_order"),
                variables=tuple(
                    VariableInfo(
                        key=v["key"],
                        name=v["name"],
                        path=v["path"],
                        shape=tuple(int(d) for d in v["shape"]),
                        dtype=v["dtype"],
                        dataset=v["dataset"],
                    )
                    for v in layer["variables"]
                ),
            )
            for i, layer in enumerate(json.loads(layout))
        )
        return BlockInfo(name, layers, expected, self._attribute(group, "data_checksum"))

    def _attribute(self, owner, name: str, kind: type = str):
        """A scalar string (or integer) attribute, read only after its stored type is checked.

        HDF5 decodes a damaged datatype without complaint, and h5py crashes the process
        (SIGSEGV) reading a string attribute whose type was damaged into a variable-length
        sequence (one flipped bit does it); checking the type first turns that into a
        `BlockFileError`.
        """
        try:  # h5py's low-level API: `owner.attrs[name]` costs five times as much
            attribute = h5py.h5a.open(owner.id, name.encode())
        except KeyError:
            raise KeyError(f"attribute {name!r} of {owner.name!r}") from None
        stored = attribute.get_type()
        expected = h5py.h5t.TypeStringID if kind is str else h5py.h5t.TypeIntegerID
        variable = kind is str and isinstance(stored, expected) and stored.is_variable_str()
        if not isinstance(stored, expected) or attribute.shape != () or variable:
            raise BlockFileError(
                f"{self.path} is damaged: attribute {name!r} of {owner.name!r} should be a "
                f"single {'string' if kind is str else 'integer'}, but is stored as "
                f"{type(stored).__name__} of shape {attribute.shape}."
            )
        # as `owner.attrs[name]` reads it (a fixed-length string's dtype without converting
        # its HDF5 type, which costs more than the read)
        value = np.empty((), dtype=f"S{stored.get_size()}" if kind is str else attribute.dtype)
        attribute.read(value)
        return _text(value[()]) if kind is str else int(value)

    def _text_dataset(self, group, name: str) -> str:
        """A scalar fixed-length string dataset, read only after its type and size are checked."""
        ds = h5py.h5d.open(group.id, name.encode())
        stored = ds.get_type()
        if (not isinstance(stored, h5py.h5t.TypeStringID) or stored.is_variable_str()
                or ds.shape != () or stored.get_size() > self._size):
            raise BlockFileError(
                f"{self.path} is damaged: {group.name}/{name} should be a text of at most the "
                f"file's size, but is stored as {type(stored).__name__} of shape {ds.shape}."
            )
        self._check_storage(ds, f"{group.name}/{name}")
        value = np.empty((), dtype=f"S{stored.get_size()}")
        ds.read(h5py.h5s.ALL, h5py.h5s.ALL, value)
        try:
            return bytes(value[()]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BlockFileError(
                f"{self.path} is corrupt: {group.name}/{name} should be UTF-8 text (JSON), but "
                f"byte {e.object[e.start]:#04x} at position {e.start} is not ({e.reason}). "
                "Its bytes changed after it was written; save it again or use another copy."
            ) from None

    def _data_hash(self, name: str, info: BlockInfo) -> str:
        algorithm = info.data_checksum.split(":", 1)[0]
        if algorithm not in DATA_HASHES:
            raise BlockFileError(
                f"Block {name!r} in {self.path} has a checksum of unknown kind {algorithm!r}; "
                f"this reader knows {list(DATA_HASHES)}. Upgrade keras-blockreuse to read it."
            )
        return algorithm

    def _check_members(self, unit, layer: LayerInfo, children: set[str]) -> None:
        """Refuses entries of a layer's group other than its datasets and the groups of the
        block's layers nested in it (`children`, their first path steps)."""
        expected = {v.dataset for v in layer.variables}
        if not isinstance(unit, h5py.h5g.GroupID):
            raise BlockFileError(
                f"Block file {self.path}: layer {layer.path!r} should be a group, it is not."
            )
        if unit.get_num_objs() == len(expected) + len(children):
            return  # each expected entry is opened later, so a count match leaves no extra
        extra = set(h5py.Group(unit).keys()) - expected - children
        if extra:
            raise BlockFileError(
                f"Block file {self.path}: layer {layer.path!r} holds unexpected entries "
                f"{sorted(extra)}; expected only {sorted(expected)}."
            )

    def _check_storage(self, ds: h5py.h5d.DatasetID, where: str | None = None) -> None:
        """Refuses a dataset whose values are not stored in this file, contiguously.

        Block files are written with contiguous (or compact) datasets only; an external link,
        external raw storage, a virtual dataset or a chunked one is a file from elsewhere.
        """
        if ds.fileno != self._fileno:
            raise BlockFileError(
                f"{self.path}: {where or _name(ds)!r} leads to another file (an HDF5 external "
                "link); a block file holds its own data. Refusing to read it."
            )
        if ds.get_offset() is not None:
            return  # HDF5 gives an address for contiguous data in this file only (not
            # chunked, compact, virtual, external, or never written): the common case, checked
            # without the creation property list (a fifth of a small dataset's open)
        plist = ds.get_create_plist()
        if plist.get_layout() not in _OWN_LAYOUTS or plist.get_external_count():
            raise BlockFileError(
                f"{self.path}: dataset {where or _name(ds)!r} is chunked, virtual or stored in "
                "external files; block files hold contiguous data only. Refusing to read it."
            )

    def _open_dataset(self, unit: h5py.h5g.GroupID,
                      var: VariableInfo) -> tuple[h5py.h5d.DatasetID, np.dtype, int, int | None]:
        # h5py's low-level API: a third of the time of `unit[name]` plus `read_direct` for
        # small variables (benchmarks/RESULTS.md). Anything unusual takes the high-level path,
        # whose errors name what is wrong.
        try:
            ds = h5py.h5d.open(unit, var.dataset.encode())
        except Exception:
            group = h5py.Group(unit)
            try:
                ds = group[var.dataset]
            except KeyError as e:
                text = str(e.args[0]) if e.args else str(e)
                if not _unreadable(text):
                    raise
                raise BlockFileError(
                    f"{self.path}: dataset {group.name}/{var.dataset} is damaged: HDF5 cannot "
                    f"open it ({text})."
                ) from None
            if not isinstance(ds, h5py.Dataset):
                raise BlockFileError(
                    f"{self.path}: {ds.name!r} should be a dataset, it is a group."
                ) from None
            ds = ds.id
        stored_dtype = np.dtype(np.float32) if var.dtype in _WIDENED else numpy_dtype(var.dtype)
        nbytes = math.prod(var.shape) * stored_dtype.itemsize
        # The stored type compared as HDF5 types first (converting it to a NumPy dtype costs
        # more than opening the dataset); only a difference is converted, and judged by it.
        exact = ds.get_type() == _hdf5_type(stored_dtype)
        offset = ds.get_offset() if exact and ds.fileno == self._fileno else None
        dims = ds.shape  # None for a null dataspace (h5py.Empty)
        shape = tuple(dims) if dims is not None else None
        if (offset is not None and shape == var.shape
                and ds.get_storage_size() == nbytes <= self._size):
            # The layout's shape and bytes, stored contiguously in this file as exactly the
            # type they are read as: the bytes HDF5 would copy. They are read from the offset
            # HDF5 gives this open dataset (never one recorded earlier), and checksummed like
            # any other read.
            return ds, stored_dtype, nbytes, offset
        if shape != var.shape or (not exact and ds.dtype != stored_dtype):
            raise BlockFileError(
                f"{self.path}: dataset {_name(ds)!r} has shape "
                f"{shape if shape is not None else 'none (an empty dataspace)'} and dtype "
                f"{ds.dtype}, but the block's layout records {var.shape} and {stored_dtype}."
            )
        if nbytes > self._size:
            raise BlockFileError(
                f"{self.path}: dataset {_name(ds)!r} declares {nbytes} bytes but the whole file "
                f"holds {self._size}; the file is truncated or crafted."
            )
        self._check_storage(ds)
        return ds, stored_dtype, nbytes, None


def _unreadable(hdf5_error: str) -> bool:
    """True for HDF5's "Unable to ..." about an entry that is there (a damaged header), not
    one that is missing ("... doesn't exist")."""
    return hdf5_error.startswith("Unable to") and "doesn't exist" not in hdf5_error


def _name(obj) -> str:
    """An open object's path in its file (for messages)."""
    return (h5py.h5i.get_name(obj) or b"?").decode("utf-8", "replace")


@functools.cache
def _hdf5_type(dtype: np.dtype) -> h5py.h5t.TypeID:
    """The HDF5 type h5py writes for a NumPy dtype."""
    return h5py.h5t.py_create(dtype, logical=True)


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        raise TypeError(f"expected a string attribute, found an array of {value.dtype}")
    return str(value)


def _new_hash(algorithm: str):
    """A hash object with `update(buffer)` and `hexdigest()` for a data checksum algorithm."""
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    return hashlib.new(algorithm)


# New files checksum their values with xxh3_128 (about 25 GB/s against sha256's 0.85 GB/s on
# the benchmark machine, benchmarks/RESULTS.md); each block records its algorithm, so files
# checksummed with sha256 still verify.
DATA_HASH = "xxh3_128"


def _checksum(data: bytes) -> str:
    return f"{HASH}:{hashlib.new(HASH, data).hexdigest()}"


def _header_checksum(header: Mapping[str, Any]) -> str:
    keys = ("format", "format_version", "keras_version", "backend", "created", "model_name")
    fields = [str(header[k]) for k in keys] + [header["blocks"], header["metadata"]]
    if header.get("save_id") is not None:  # files written before it have none
        fields.append(header["save_id"])
    return _checksum("\x00".join(fields).encode())
