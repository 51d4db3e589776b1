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

import contextlib
import inspect
import math
import os
import posixpath
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import h5py
import numpy as np

from keras_blockreuse.errors import BlockFileError, BlockMismatchError
from keras_blockreuse.hdf5_check import HDF5_SIGNATURE

# A deflated stream expands at most about 1032 times; more than this is crafted.
MAX_COMPRESSION_RATIO = 1100


def check_hdf5(file: h5py.File | h5py.Group, where: str) -> None:
    """Refuses an HDF5 file whose objects lead outside it.

    External links and soft links (Keras never writes either), datasets stored in external
    raw files and virtual datasets (whose values come from other files) are all refused:
    `check_links` on the whole file, then `check_storage` on every dataset. The whole file is
    walked by HDF5 itself (`H5Lvisit`, `H5Ovisit`): one call each, not one Python call per
    object.
    """
    check_links(file, where)
    datasets: list[bytes] = []

    def visit(name: bytes, info) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            datasets.append(name)

    h5py.h5o.visit(file.id, visit, info=True)
    prefix = file.name.rstrip("/")
    for name in datasets:
        _check_storage(h5py.h5d.open(file.id, name),
                       f"{prefix}/{name.decode('utf-8', 'replace')}", where)


def list_links(file: h5py.File | h5py.Group) -> list[tuple[bytes, int, int]]:
    """`(name, link type, target address)` of every link below `file`, from one HDF5 walk
    (`H5Lvisit`, in name order; a group reached twice is entered once). The address is the
    target object's for hard links, meaningless for others."""
    links: list[tuple[bytes, int, int]] = []
    file.id.links.visit(lambda name, info: links.append((name, info.type, info.u)), info=True)
    return links


def check_links(file: h5py.File | h5py.Group, where: str,
                links: list[tuple[bytes, int, int]] | None = None) -> None:
    """Refuses external, soft and user-defined links and hard-link cycles anywhere in a file.

    A reader that calls this when it opens a file, and `check_storage` on each dataset before
    it reads its values, never reads data from outside the file: `check_hdf5` without the
    per-dataset pass over datasets that are never read (a one-block load of a large file).
    `links`: the file's `list_links`, when already listed.
    """
    if links is None:
        links = list_links(file)
    prefix = file.name.rstrip("/")
    addresses = {b"": h5py.h5o.get_info(file.id).addr}
    known = set(addresses.values())
    for name, kind, target in links:
        if kind == h5py.h5l.TYPE_HARD:
            _refuse_cycle(file, name, target, addresses, where, known)
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


def check_storage(dataset: h5py.Dataset | h5py.h5d.DatasetID, where: str,
                  plist: h5py.h5p.PropDCID | None = None) -> None:
    """Refuses a dataset whose values are stored in external raw files or mapped from other
    files (a virtual dataset). `plist`: its creation property list, when already fetched."""
    if isinstance(dataset, h5py.Dataset):
        _check_storage(dataset.id, dataset.name, where, plist)
    else:
        _check_storage(dataset, None, where, plist)


def _name_of(dataset_id) -> str:
    return (h5py.h5i.get_name(dataset_id) or b"?").decode("utf-8", "replace")


def _check_storage(dataset_id, path: str | None, where: str, plist=None) -> None:
    """`path`: the dataset's, for messages (None: looked up if needed)."""
    plist = plist or dataset_id.get_create_plist()
    if plist.get_external_count():
        files = [plist.get_external(i)[0].decode("utf-8", "replace")
                 for i in range(plist.get_external_count())]
        raise BlockFileError(
            f"{where}: dataset {path or _name_of(dataset_id)!r} stores its values in external "
            f"files {files}. A weights file must hold its own data; refusing to read it."
        )
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise BlockFileError(
            f"{where}: dataset {path or _name_of(dataset_id)!r} is a virtual dataset mapped "
            "from other files. A weights file must hold its own data; refusing to read it."
        )


def _refuse_cycle(file, name: bytes, address: int, addresses: dict, where: str,
                  known: set | None = None) -> None:
    """Refuses a hard link to one of its own enclosing groups (a cycle; Keras never writes
    one, and a walk that follows it never ends). `address` is the link's target; `addresses`
    maps each path seen so far (the visit reaches a group before what is inside it) to its
    object's address; `known`, when given, holds every address in `addresses`."""
    if known is not None and address not in known:  # no enclosing group is at a new address
        addresses[name] = address
        known.add(address)
        return
    parts = name.split(b"/")
    for cut in range(len(parts)):
        if addresses.get(b"/".join(parts[:cut])) == address:
            raise BlockFileError(
                f"{where}: {file.name.rstrip('/')}/{name.decode('utf-8', 'replace')!s} is a hard "
                "link to one of its own enclosing groups (a cycle); a weights file is a tree. "
                "The file is damaged or crafted."
            )
    addresses[name] = address


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def text_attribute(owner: h5py.File | h5py.Group | h5py.Dataset, name: str, default=None,
                   at: str | None = None):
    """An attribute that should hold text (a string or an array of strings), type-checked first.

    h5py crashes the process (SIGSEGV) reading an attribute whose string type was damaged into
    a variable-length sequence; checking the stored type before reading turns that into a
    `BlockFileError`. Returns `default` when the attribute is absent. `at`: the attribute is
    that of the object at this path below `owner`.
    """
    # h5py's low-level API, by name from `owner` (`at`: an object below it, not opened):
    # a third of the cost of `owner[at].attrs[name]`.
    key, where = name.encode(), (at or ".").encode()
    if not h5py.h5a.exists(owner.id, key, obj_name=where):
        return default
    attribute = h5py.h5a.open(owner.id, key, obj_name=where)
    stored = attribute.get_type()
    empty = attribute.shape != () and 0 in attribute.shape
    if empty and not isinstance(stored, h5py.h5t.TypeVlenID):
        # an empty array (Keras writes `weight_names=[]` as floats)
        return (owner[at] if at else owner).attrs[name]
    if not isinstance(stored, h5py.h5t.TypeStringID):
        path = f"{owner.name.rstrip('/')}/{at}" if at else owner.name
        raise BlockFileError(
            f"{owner.file.filename}: attribute {name!r} of {path!r} should be text, but "
            f"is stored as {type(stored).__name__}; the file is damaged."
        )
    if attribute.shape == () and stored.is_variable_str():  # a Keras name: read in place
        value = np.zeros((), dtype=attribute.dtype)  # as h5py's `attrs[name]` reads it
        attribute.read(value, mtype=h5py.h5t.py_create(attribute.dtype))
        return value[()].decode("utf-8", "surrogateescape")
    return (owner[at] if at else owner).attrs[name]


_COMPRESSIONS = (h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_LZF, h5py.h5z.FILTER_SZIP)


def check_dataset_size(dataset: h5py.Dataset | h5py.h5d.DatasetID, file_size: int,
                       where: str, plist: h5py.h5p.PropDCID | None = None,
                       dtype: np.dtype | None = None) -> int:
    """Refuses a dataset that declares more bytes than its file could hold; returns its bytes.

    An uncompressed dataset cannot hold more than the file's size; a compressed one (gzip,
    lzf or szip, as h5py's `Dataset.compression` tells) more than `MAX_COMPRESSION_RATIO`
    times it. `plist`, `dtype`: its creation property list and NumPy dtype, when already
    known.
    """
    dataset_id = dataset.id if isinstance(dataset, h5py.Dataset) else dataset
    shape = dataset_id.shape
    nbytes = math.prod(shape) * (dtype or dataset_id.dtype).itemsize
    if nbytes > max(file_size, 1024):  # only then does compression matter
        plist = plist or dataset_id.get_create_plist()
        compressed = any(plist.get_filter(i)[0] in _COMPRESSIONS
                         for i in range(plist.get_nfilters()))
        limit = file_size * (MAX_COMPRESSION_RATIO if compressed else 1)
        if nbytes > max(limit, 1024):
            raise BlockFileError(
                f"{where}: dataset {_name_of(dataset_id)!r} declares shape {tuple(shape)} "
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


# --- files that are not regular, and failures of any kind --------------------------------


def check_regular_file(path: str | os.PathLike) -> None:
    """Refuses, without opening it, a path that is a named pipe, a socket or a device.

    Opening a named pipe (FIFO) blocks until something writes to it, and a device may never
    end; each is refused with `BlockFileError`. A symbolic link is followed (its target is
    checked). A missing path and a folder (a keras-hub preset is one) are left to the caller.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise BlockFileError(f"Cannot read {os.fspath(path)!r}: {e}") from e
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = (
        "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise BlockFileError(
        f"{os.fspath(path)!r} is {kind}, not a regular file; refusing to open it "
        "(reading it could block forever)."
    )


@contextlib.contextmanager
def reading(where: str):
    """Turns any failure while reading a third-party file into `BlockFileError` naming it.

    `BlockFileError`, `BlockMismatchError` and `TypeError` (a wrong argument, unless h5py raised
    it for a damaged datatype) pass through; every
    other exception — `OSError`, `KeyError`, `ValueError`, `RuntimeError`, `UnicodeDecodeError`,
    `zipfile.BadZipFile`, `RecursionError`, `MemoryError` — is raised as `BlockFileError`
    chained to it (`raise ... from e`).

    Example:

    ```python
    with reading("m.weights.h5"):
        h5py.File("m.weights.h5", "r")["layers"]
    ```
    """
    try:
        yield
    except (BlockFileError, BlockMismatchError):
        raise
    except Exception as e:
        if isinstance(e, TypeError) and not _raised_by_h5py(e):
            raise
        raise BlockFileError(
            f"Cannot read {where}: it is damaged or not a weights file "
            f"({type(e).__name__}: {error_text(e)})"
        ) from e


def _raised_by_h5py(error: BaseException) -> bool:
    """True when the error comes from inside h5py, which raises `TypeError` for a damaged
    datatype ("Unknown string encoding"), not from a wrong argument in our code."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "h5py" in tb.tb_frame.f_code.co_filename


def error_text(error: BaseException) -> str:
    """`str(error)`, cut to 500 characters for a message that quotes it."""
    text = str(error)
    return text if len(text) <= 500 else text[:500] + "..."


class GuardedSource:
    """A file source whose every method raises `BlockFileError` (naming the file) on failure.

    Wraps a source opened from a third-party file; attribute access is forwarded, and each
    method call runs inside `reading(description)`.

    Example:

    ```python
    source = GuardedSource(lambda: open_keras_file(path), path)
    source.read_block("block_1")   # BlockFileError naming `path`, never a raw h5py error
    ```
    """

    def __init__(self, open_source: Callable[[], Any], where: str):
        self._where = where
        with reading(where):
            self._source = open_source()

    def __getattr__(self, name: str):
        value = getattr(self._source, name)
        if not callable(value):
            return value
        where = self._where

        def guarded(*args, **kwargs):
            with reading(where):
                result = value(*args, **kwargs)
            return _guarded_items(result, where) if inspect.isgenerator(result) else result

        return guarded

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _guarded_items(items: Iterator, where: str) -> Iterator:
    """Yields from a generator (a source's `iter_values`), each step inside `reading`."""
    while True:
        with reading(where):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


class CheckedFile(h5py.File):
    """An HDF5 file opened by `open_hdf5`, with the object listing its checks made.

    Attributes:
        objects: `(name, object type, address)` for every link to an object below the root
            (hard links only: the file has no other kind), in HDF5's name order; the type is
            one of `h5py.h5o.TYPE_GROUP`, `TYPE_DATASET`, `TYPE_NAMED_DATATYPE`, or -1, and
            None for an object whose check `open_hdf5` deferred (see `header`).
    """

    objects: list[tuple[bytes, int | None, int]]
    _found: dict[int, tuple[int, dict[bytes, bytes | None]]]
    _deferred: dict[int, bytes]
    _heap = None

    def header(self, address: int) -> tuple[int, dict[bytes, bytes | None]]:
        """`(object type, attributes)` of the object at `address`, as `check_global_heap`
        returns them: each attribute it has, with the value of a single variable-length
        string (the bytes HDF5 would read, checked), `None` for any other kind. An object
        whose check was deferred is checked now, before anything of it is read.

        Raises:
            BlockFileError: its header, or the global heap its attributes point into, is
                damaged.
            KeyError: no listed object is at `address`.
        """
        found = self._found.get(address)
        if found is None:
            name = self._deferred[address]
            found = self._heap.check([(address, name)])[address]
            self._found[address] = found
            del self._deferred[address]
        return found

    def check_all(self) -> None:
        """Checks every object whose check was deferred (for a reader that reads any
        object's attributes through h5py)."""
        for address in list(self._deferred):
            self.header(address)

    def text(self, address: int, name: str, path: str):
        """`text_attribute(self, name, at=path)` for the object at `address` (and `path`),
        from the listing where it holds the value: no HDF5 call."""
        attributes = self.header(address)[1]
        if name.encode() not in attributes:
            return None
        value = attributes[name.encode()]
        if value is not None:
            return value.decode("utf-8", "surrogateescape")
        return text_attribute(self, name, at=path)

    def close(self) -> None:
        if self._heap is not None:
            self._heap.close()
            self._heap = None
        super().close()


# HDF5 keeps one open file per inode in a process and refuses a second open whose locking
# flags differ ("file locking flag values don't match"). h5py's and Keras's default comes
# first, so that a file a user holds open with h5py, or Keras reads in another thread, can be
# read; then the other two settings, for a file this process opened with one of them.
_LOCKING = (None, False, True)


def open_for_reading(file: str | os.PathLike | BinaryIO, where: str,
                     cls: type[h5py.File] = h5py.File, checksummed: bool = False) -> h5py.File:
    """Opens an HDF5 file read-only with whichever file locking this process can open it with.

    HDF5's default (h5py's and Keras's) takes a shared lock, ignored on file systems without
    locks, and fails where another process holds the file open for writing (an exclusive
    lock: Keras's `save_weights` writes a file in place). Such a file is refused, unless its
    values are `checksummed` (a block file, which is also never written in place): a torn
    read is then found by its checksums, and it is read without the lock. HDF5 also refuses a
    second open of a file in one process with other locking flags; each setting is tried.
    Within one process no lock applies: a file this process holds open for writing is
    refused too, unless `checksummed`.

    The protection rests on the writer taking HDF5's lock, as Keras and h5py do by default: a
    writer with `locking=False`, or `HDF5_USE_FILE_LOCKING=FALSE` in either process, takes
    none, and a file it is writing can be read half written, as by Keras itself.

    Raises:
        BlockFileError: the file cannot be opened as HDF5; a process holds it open for
            writing (not `checksummed`); or every locking setting was refused (each named).
    """
    if not isinstance(file, (str, os.PathLike)):
        try:
            return cls(file, "r")
        except OSError as e:
            raise BlockFileError(f"Cannot read {where} as HDF5: {e}") from e
    refused = []
    for locking in _LOCKING:
        try:
            opened = cls(file, "r", locking=locking)
        except OSError as e:
            if "file lock" not in str(e) and "lock file" not in str(e):  # not "superblock"
                raise not_hdf5(file, where, e) from e
            if "unable to lock file" in str(e) and not checksummed:
                raise BlockFileError(
                    f"Cannot read {where} now: another process holds it open for writing "
                    f"(HDF5: {e}). Keras writes .weights.h5 and .h5 files in place, and they "
                    "carry no checksums, so values read now could be half written. Load it "
                    "once that process has closed it."
                ) from e
            refused.append(f"{'default' if locking is None else f'locking={locking}'}: {e}")
            continue
        # HDF5 shares one open file per process: an open for writing elsewhere in this
        # process (Keras's save_weights in another thread, an h5py.File(path, "a")) makes
        # this one see the file as it is being written. No lock applies within a process.
        if not checksummed and opened.id.get_intent() != h5py.h5f.ACC_RDONLY:
            opened.close()
            raise BlockFileError(
                f"Cannot read {where} now: this process holds it open for writing (an "
                "h5py.File opened with 'a', 'r+' or 'w', or Keras's save_weights in another "
                "thread). Keras's .weights.h5 and .h5 files carry no checksums, so values read "
                "now could be half written. Close it, then load it.")
        return opened
    raise BlockFileError(
        f"Cannot open {where}: HDF5 refused each file-locking setting ({'; '.join(refused)}). "
        "The file is readable but locked: HDF5_USE_FILE_LOCKING=TRUE or BEST_EFFORT in the "
        "environment makes HDF5 lock every open, and another process holds the file's lock; "
        "or this process holds it open in a way no read-only open can share."
    )


_EXPECTED = (".blocks.h5 files, and Keras .weights.h5 and .h5 files, are complete HDF5 files, "
             f"starting with the HDF5 signature {HDF5_SIGNATURE!r}")


def not_hdf5(path: str | os.PathLike, where: str, error: OSError | None = None
             ) -> BlockFileError:
    """The error for a file that cannot be read as HDF5, saying what it holds: its size and
    first bytes, and what is expected. `error`: HDF5's, when it refused to open the file;
    None when the file is empty or `h5py.is_hdf5` found no signature. One wording for every
    reader (`BlockFile`, `open_for_reading`, `open_source`).

    Example:

    ```python
    raise not_hdf5("m.blocks.h5", "block file m.blocks.h5")  # an empty file, or an HTML page
    ```
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = f.read(16)
    except OSError as e:
        error = error or e
        size, start = None, None
    if start is None or (error is not None and "errno" in str(error)):
        # the file itself cannot be read (permissions, I/O): the system's words say why
        return BlockFileError(f"Cannot read {where} as HDF5: {error}")
    if size == 0:
        return BlockFileError(
            f"{path!r} is empty (0 bytes), so it holds no weights; expected a .blocks.h5 "
            "file or a Keras .weights.h5, .keras or .h5 file. An interrupted download or "
            "copy leaves an empty file: fetch or save it again."
        )
    if error is None and start.startswith(b"PK\x03\x04"):
        return BlockFileError(
            f"{path!r} is not an HDF5 file but a zip archive ({size} bytes, starting "
            f"{start!r}), as a Keras .keras archive is: .blocks.h5 files, and Keras .weights.h5 "
            f"and .h5 files, start with the HDF5 signature {HDF5_SIGNATURE!r}. If it is a "
            ".keras archive, give it its name: rename it to end in .keras."
        )
    if error is None:
        return BlockFileError(
            f"{path!r} is not an HDF5 file ({size} bytes, starting {start!r}): .blocks.h5 "
            "files, and Keras .weights.h5 and .h5 files, start with the HDF5 signature "
            f"{HDF5_SIGNATURE!r}. A download that saved an error page instead of the file "
            "looks like this."
        )
    cut = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(error))
    if cut and int(cut[1]) != size:  # it grew (or shrank) since HDF5 opened it
        return BlockFileError(
            f"{path!r} changed while it was read: {cut[1]} bytes when HDF5 opened it (its "
            f"header records {cut[2]}), {size} now. Another process is probably writing it; "
            "load it once that process has finished.")
    if cut or (start.startswith(HDF5_SIGNATURE) and size < _SUPERBLOCK):
        records = f", where its HDF5 header records {cut[2]} bytes" if cut else (
            f", fewer than the {_SUPERBLOCK} bytes of the smallest HDF5 header")
        return BlockFileError(
            f"{path!r} is truncated ({size} bytes, starting {start!r}{records}): {_EXPECTED}. "
            "A download or copy cut short looks like this: fetch or save it again."
        )
    return BlockFileError(
        f"{path!r} is a damaged HDF5 file ({size} bytes, starting {start!r}; HDF5: "
        f"{error_text(error)}): {_EXPECTED}. A download or copy cut short, or damaged on disk, "
        "looks like this: fetch or save it again."
    )


_SUPERBLOCK = 48  # bytes in HDF5's smallest superblock (versions 2 and 3)


def open_hdf5(file: str | os.PathLike | BinaryIO, where: str,
              defer: Callable[[bytes], bool] | None = None) -> CheckedFile:
    """Opens a third-party HDF5 file for reading, checked so that reading it cannot hang and
    that nothing in it leads outside it.

    Refuses non-regular files before opening them; walks the file's links once
    (`list_links`), refusing external, soft and user-defined links and cycles
    (`check_links`); then runs the bounded global heap check (`keras_blockreuse.hdf5_check`)
    on every object those links reach, before any variable-length string can be read. The
    listing is kept on the file (`CheckedFile.objects`) for its reader.

    `defer`: given an object's name (`b"layers/dense/vars/0"`), True where its check may
    wait until its reader asks for it (`CheckedFile.header`): a one-block load of a large
    file then checks the objects it reads, not every object of the file. A reader that
    reads a deferred object's attributes through h5py first calls `header` for it, or
    `check_all`.

    Raises:
        BlockFileError: the path is not a regular file, not HDF5, holds links out of
            itself, or its global heap is damaged.
    """
    from keras_blockreuse.hdf5_check import GlobalHeapCheck

    if isinstance(file, (str, os.PathLike)):
        check_regular_file(file)
    opened = open_for_reading(file, where, CheckedFile)
    try:
        links = list_links(opened)
        check_links(opened, where, links)
        heap = GlobalHeapCheck(
            opened, where, None if isinstance(file, (str, os.PathLike)) else file)
        opened._heap = heap
        opened._found = heap.check(
            [(address, name) for name, _, address in links if defer is None or not defer(name)],
            root=True)
        found = opened._found
        opened._deferred = {address: name for name, _, address in links if address not in found}
        opened.objects = [(name, found[address][0] if address in found else None, address)
                          for name, _, address in links]
        if not opened._deferred:
            heap.close()
            opened._heap = None
    except BaseException:
        opened.close()
        raise
    return opened


# --- names -------------------------------------------------------------------------------


def layer_name(value, where: str, what: str = "layer name", slash: bool = False) -> str:
    """A name read from a file, checked: UTF-8 text, not empty, printable, no `/`.

    Keras refuses `/` in layer names and never writes control characters; a name that breaks
    these rules was damaged after it was written, and is reported rather than used (a damaged
    name would otherwise leave its layer silently unloaded). `slash=True` allows `/` (legacy
    weight names are paths such as `dense/kernel:0`).

    Raises:
        BlockFileError: naming the file and the bad name.
    """
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BlockFileError(
                f"{where}: a {what} is not valid UTF-8 text ({value[:80]!r}); the file is "
                "damaged."
            ) from None
    elif isinstance(value, str):
        text = value
    else:
        raise BlockFileError(
            f"{where}: a {what} should be text, found {type(value).__name__}; the file is "
            "damaged."
        )
    if not text or (not slash and "/" in text) or not text.isprintable():
        raise BlockFileError(
            f"{where}: {text[:80]!r} is not a valid Keras {what} (empty, non-printable "
            "characters or '/'); the file is damaged."
        )
    return text


# --- zip members, inflated within a bound ---------------------------------------------------


def inflate_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int, where: str
) -> BinaryIO:
    """A compressed archive member, inflated into an anonymous temporary file, at most `limit`
    bytes.

    Memory stays at one 1 MiB buffer whatever the member declares; inflation stops as soon as
    it passes `limit` (or the member's declared size), so a zip bomb costs `limit` bytes of
    disk and time, not its inflated size. The file is deleted when closed.

    Raises:
        BlockFileError: the member inflates beyond `limit`, or is damaged (a CRC error).
    """
    bound = min(limit, member.file_size)
    out = tempfile.TemporaryFile()
    try:
        written = 0
        with archive.open(member) as stream:
            while True:
                chunk = stream.read(min(_CHUNK, bound + 1 - written))
                if not chunk:
                    break
                written += len(chunk)
                if written > bound:
                    reason = "its declared size" if bound < limit else (
                        "its model's weights need (from its config, with optimizer state "
                        "and a margin)")
                    raise BlockFileError(
                        f"{where}: archive member {member.filename!r} inflates beyond "
                        f"{bound} bytes, more than {reason}; a zip bomb or a damaged "
                        "archive. Stopped inflating it."
                    )
                out.write(chunk)
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


_CHUNK = 1 << 20


def check_member_crc(archive: zipfile.ZipFile, member: zipfile.ZipInfo, where: str) -> None:
    """Reads a stored archive member once, in 1 MiB pieces, and checks its CRC-32.

    The CRC is the one checksum a `.keras` archive carries over its weights; checking it
    ourselves makes it hold whatever Python's `zipfile` does when seeking a member.

    Raises:
        BlockFileError: the member's bytes do not match the CRC-32 its archive records.
    """
    crc = 0
    try:
        with archive.open(member) as stream:
            while chunk := stream.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
    except zipfile.BadZipFile as e:  # zipfile's own CRC check, where it makes one
        raise BlockFileError(f"{where}: archive member {member.filename!r}: {e}") from e
    if crc != member.CRC:
        raise BlockFileError(
            f"{where}: archive member {member.filename!r} does not match its CRC-32 "
            f"({crc:08x}, recorded {member.CRC:08x}); the archive is damaged."
        )
