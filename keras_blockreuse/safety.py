"""Checks that make a third-party weights file safe to read, before any value is allocated.

A weights file from elsewhere can point outside itself (HDF5 external links, external or
virtual datasets), smuggle paths out of a zip archive (`/etc/...`, `../..`), or declare far
more data than it holds (a zip bomb, a dataset whose shape is enormous but never written).
Each check raises `BlockFileError` naming the file and what was found. (A declared shape that
differs from the target variable's is refused by `load_blocks`'s validation, which runs on
shapes alone before any value is read.)

Example:

```python
with h5py.File(path, "r") as f:
    check_hdf5(f, path)                    # refuses links and datasets that leave the file
with zipfile.ZipFile(path) as archive:
    check_zip(archive, path)               # refuses unsafe member names and zip bombs
```
"""

from __future__ import annotations

import os
import posixpath
import zipfile

import h5py
import numpy as np

from keras_blockreuse.errors import BlockFileError

# A deflated stream expands at most about 1032 times; more than this is crafted.
MAX_COMPRESSION_RATIO = 1100


def check_hdf5(file: h5py.File | h5py.Group, where: str) -> None:
    """Refuses an HDF5 file whose objects lead outside it.

    External links and soft links (Keras never writes either), datasets stored in external
    raw files and virtual datasets (whose values come from other files) are all refused.
    The whole file is walked by HDF5 itself (`H5Lvisit`, `H5Ovisit`): one call each, not
    one Python call per object.
    """
    links: list[tuple[bytes, int]] = []
    file.id.links.visit(lambda name, info: links.append((name, info.type)), info=True)
    prefix = file.name.rstrip("/")
    for name, kind in links:
        if kind == h5py.h5l.TYPE_HARD:
            continue
        path = f"{prefix}/{name.decode('utf-8', 'replace')}"
        if kind == h5py.h5l.TYPE_EXTERNAL:
            filename, target = file.id.links.get_val(name)
            raise BlockFileError(
                f"{where}: {path!r} is an HDF5 external link to {_text(filename)!r}:"
                f"{_text(target)!r}. A weights file must hold its own data; refusing to "
                "follow it."
            )
        if kind == h5py.h5l.TYPE_SOFT:
            raise BlockFileError(
                f"{where}: {path!r} is an HDF5 soft link to {_text(file.id.links.get_val(name))!r}"
                ". Keras weights files hold no links; refusing to follow it."
            )
        raise BlockFileError(
            f"{where}: {path!r} is an HDF5 user-defined link (type {kind}). Keras weights "
            "files hold no links; refusing to follow it."
        )
    datasets: list[bytes] = []

    def visit(name: bytes, info) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            datasets.append(name)

    h5py.h5o.visit(file.id, visit, info=True)
    for name in datasets:
        path = f"{prefix}/{name.decode('utf-8', 'replace')}"
        plist = h5py.h5d.open(file.id, name).get_create_plist()
        if plist.get_external_count():
            files = [plist.get_external(i)[0].decode("utf-8", "replace")
                     for i in range(plist.get_external_count())]
            raise BlockFileError(
                f"{where}: dataset {path!r} stores its values in external files {files}. "
                "A weights file must hold its own data; refusing to read it."
            )
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            raise BlockFileError(
                f"{where}: dataset {path!r} is a virtual dataset mapped from other files. "
                "A weights file must hold its own data; refusing to read it."
            )


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def text_attribute(owner: h5py.File | h5py.Group | h5py.Dataset, name: str, default=None):
    """An attribute that should hold text (a string or an array of strings), type-checked first.

    h5py crashes the process (SIGSEGV) reading an attribute whose string type was damaged into
    a variable-length sequence; checking the stored type before reading turns that into a
    `BlockFileError`. Returns `default` when the attribute is absent.
    """
    if name not in owner.attrs:
        return default
    attribute = owner.attrs.get_id(name)
    stored = attribute.get_type()
    empty = attribute.shape != () and 0 in attribute.shape
    if empty and not isinstance(stored, h5py.h5t.TypeVlenID):
        return owner.attrs[name]  # an empty array (Keras writes `weight_names=[]` as floats)
    if not isinstance(stored, h5py.h5t.TypeStringID):
        raise BlockFileError(
            f"{owner.file.filename}: attribute {name!r} of {owner.name!r} should be text, but "
            f"is stored as {type(stored).__name__}; the file is damaged."
        )
    return owner.attrs[name]


def check_dataset_size(dataset: h5py.Dataset, file_size: int, where: str) -> int:
    """Refuses a dataset that declares more bytes than its file could hold; returns its bytes.

    An uncompressed dataset cannot hold more than the file's size; a compressed one more
    than `MAX_COMPRESSION_RATIO` times it.
    """
    nbytes = int(np.prod(dataset.shape, dtype=np.int64)) * dataset.dtype.itemsize
    limit = file_size * (MAX_COMPRESSION_RATIO if dataset.compression else 1)
    if nbytes > max(limit, 1024):
        raise BlockFileError(
            f"{where}: dataset {dataset.name!r} declares shape {tuple(dataset.shape)} "
            f"({nbytes} bytes) but the file holds {file_size} bytes; it is truncated or "
            "crafted. Nothing was read."
        )
    return nbytes


def check_zip(archive: zipfile.ZipFile, where: str) -> None:
    """Refuses a zip archive with unsafe member names or members larger than it could hold.

    Member names must be relative and stay inside the archive (no `/x`, `C:\\x`, `..`).
    A stored member cannot be larger than the archive; a compressed one cannot expand more
    than `MAX_COMPRESSION_RATIO` times.
    """
    archive_size = _size_of(archive)
    for info in archive.infolist():
        name = info.filename
        normalized = posixpath.normpath(name.replace("\\", "/"))
        if (
            name.startswith(("/", "\\"))
            or (len(name) > 1 and name[1] == ":")
            or normalized == ".."
            or normalized.startswith("../")
            or "/../" in f"/{name.replace(chr(92), '/')}/"
        ):
            raise BlockFileError(
                f"{where}: archive member {name!r} has an absolute path or '..'; refusing "
                "to read an archive that points outside itself."
            )
        if info.compress_type == zipfile.ZIP_STORED:
            too_big = info.file_size > archive_size
        else:
            too_big = info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
        if too_big or info.file_size > MAX_COMPRESSION_RATIO * max(archive_size, 1):
            raise BlockFileError(
                f"{where}: archive member {name!r} declares {info.file_size} bytes, more than "
                f"an archive of {archive_size} bytes can hold (a zip bomb?). Refusing to read it."
            )


def _size_of(archive: zipfile.ZipFile) -> int:
    fp = archive.fp
    if archive.filename and os.path.exists(archive.filename):
        return os.path.getsize(archive.filename)
    position = fp.tell()
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(position)
    return size


def safe_member_name(name: str, where: str) -> str:
    """Checks that a file name read from a file (a shard) stays in the file's folder."""
    if not name or os.path.basename(name) != name or "\\" in name or name in (".", ".."):
        raise BlockFileError(
            f"{where}: refers to {name!r}, which is not a plain file name in the same folder. "
            "Refusing to open it."
        )
    return name
