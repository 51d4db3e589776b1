"""HDF5 helpers shared by the Keras file readers: opening, reading values, dtypes, text."""

from __future__ import annotations

import dataclasses
import functools
import os

import h5py
import numpy as np

from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.safety import check_dataset_size, check_storage, open_hdf5, text_attribute


def open_h5(path, where: str | None = None, defer=None) -> h5py.File:
    """Opens an HDF5 file (a path or a seekable file object) read-only, checked.

    The one place the Keras file readers open an HDF5 file: non-regular files and damaged
    global heaps are refused (`safety.open_hdf5`, which `defer` is passed to).
    """
    return open_hdf5(path, where or repr(path), defer)


def read_dataset(ds: h5py.Dataset | h5py.h5d.DatasetID, file_size: int, where: str,
                 scratch: list | None = None, marked: bool = True) -> np.ndarray:
    """A dataset's values, after checking that they are stored in its file (`check_storage`)
    and that it declares no more bytes than its file holds (`check_dataset`)."""
    return read_checked(ds, check_dataset(ds, file_size, where, marked), scratch)


@dataclasses.dataclass(frozen=True)
class Checked:
    """A dataset that `check_dataset` passed: its shape, stored dtype, whether it holds
    bfloat16 values (stored as 16-bit integers with a `dtype` attribute), and the file offset
    of its bytes where they are exactly what HDF5's read would copy (else None)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    bfloat16: bool
    offset: int | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def check_dataset(ds: h5py.Dataset | h5py.h5d.DatasetID, file_size: int, where: str,
                  marked: bool = True) -> Checked:
    """Checks that a dataset's values are stored in its file and fit in it; what a reader of
    the same open dataset needs to read it again (`read_checked`) without checking again.
    `marked=False`: the dataset is known to have no `dtype` attribute (a bfloat16 mark),
    which is then not read.

    HDF5 gives a dataset an offset only for contiguous data in its own file (not chunked,
    compact, virtual, in external raw files, or never written), so such a dataset needs no
    creation property list; it is then read directly (`read_checked`) where its storage is
    exactly its values' bytes, stored as exactly the NumPy type they are read as."""
    dataset_id = ds.id if isinstance(ds, h5py.Dataset) else ds
    bfloat16 = marked and text_attribute(h5py.Dataset(dataset_id), "dtype") in ("bfloat16",
                                                                                 b"bfloat16")
    offset = dataset_id.get_offset()
    if offset is None:  # anything but contiguous data in this file: checked in full
        plist = dataset_id.get_create_plist()
        check_storage(dataset_id, where, plist)
        check_dataset_size(dataset_id, file_size, where, plist)
        return Checked(dataset_id.shape, dataset_id.dtype, bfloat16)
    dtype, exact = stored_dtype(dataset_id)
    shape = dataset_id.shape
    nbytes = check_dataset_size(dataset_id, file_size, where, dtype=dtype)
    direct = exact and not bfloat16 and dataset_id.get_storage_size() == nbytes
    return Checked(shape, dtype, bfloat16, offset if direct else None)


def read_checked(ds: h5py.Dataset | h5py.h5d.DatasetID, checked: Checked,
                 scratch: list | None = None, descriptor: int | None = None) -> np.ndarray:
    """The values of a dataset `check_dataset` passed, into new memory.

    `scratch`: a list holding one reusable byte buffer (empty at first): the values are read
    into it instead, grown as needed and overwritten by the next read — for a pass that only
    checks values, without the cost of new memory for each.
    `descriptor`: the dataset's file's `direct_descriptor`: values `check_dataset` found
    stored as exactly their bytes are read with `preadv` at the offset HDF5 gave the open
    dataset (a third of the time of HDF5's read for a small dataset), never one recorded
    earlier; the same bytes HDF5 would copy.
    """
    dataset_id = ds.id if isinstance(ds, h5py.Dataset) else ds
    if checked.bfloat16:
        import ml_dtypes

        return np.array(h5py.Dataset(dataset_id), dtype=ml_dtypes.bfloat16)
    if scratch is None:
        array = np.empty(checked.shape, dtype=checked.dtype)
    else:
        if not scratch or scratch[0].size < checked.nbytes:
            scratch[:] = [np.empty(checked.nbytes, dtype=np.uint8)]
        array = scratch[0][:checked.nbytes].view(checked.dtype).reshape(checked.shape)
    if not array.size:
        pass
    elif descriptor is not None and checked.offset is not None:
        read_at(descriptor, checked.offset, array.reshape(-1).view(np.uint8),
                lambda: f"{h5py.h5f.get_name(dataset_id).decode('utf-8', 'replace')}: "
                        f"dataset {_name_of(dataset_id)!r}")
    else:  # the whole dataset into memory of its own shape: `read_direct`, in one call
        dataset_id.read(h5py.h5s.ALL, h5py.h5s.ALL, array)
    return array


def direct_descriptor(file: h5py.File) -> int | None:
    """The file descriptor HDF5 reads `file` through, for values read directly (`read_at`).

    None where there is none to use: another HDF5 driver (`HDF5_DRIVER=core` hands back a
    memory address, `stdio` a `FILE *`), a file opened from a Python file object, or a
    system without `os.preadv` (Windows); values are then read through HDF5."""
    return file.id.get_vfd_handle() if _PREADV and file.driver == "sec2" else None


def read_at(descriptor: int, offset: int, out: np.ndarray, what) -> None:
    """Fills `out` (a writable uint8 array) from the file at `offset`.

    One `preadv` reads at most 2 GiB on Linux, so larger values take several calls.
    `what`: a function naming the file and the dataset, for the error (called only then).

    Raises:
        BlockFileError: the file ends before `out` is filled (truncated).
    """
    done = 0
    while done < out.size:
        got = os.preadv(descriptor, [out[done:]], offset + done)
        if got == 0:
            raise BlockFileError(
                f"{what()} ends after the end of the file ({offset + out.size} bytes "
                "needed): the file is truncated.")
        done += got


def stored_dtype(dataset_id: h5py.h5d.DatasetID) -> tuple[np.dtype, bool]:
    """A dataset's NumPy dtype, and whether its stored HDF5 type is exactly the one h5py
    writes for that dtype (so its bytes are the array's bytes)."""
    stored = dataset_id.get_type()
    for hdf5_type, dtype in _STANDARD:  # compared as HDF5 types first: converting a type to
        if stored == hdf5_type:         # NumPy costs more than opening the dataset
            return dtype, True
    dtype = dataset_id.dtype
    return dtype, dtype.kind in "fiu" and stored == h5py.h5t.py_create(dtype)


_PREADV = hasattr(os, "preadv")
_STANDARD = [(h5py.h5t.py_create(np.dtype(name)), np.dtype(name)) for name in ("<f4", "<f2", "<f8")]
_IEEE = [h5py.h5t.py_create(np.dtype(f"{order}f{size}")) for order in "<>" for size in (2, 4, 8)]


def _name_of(dataset_id) -> str:
    return (h5py.h5i.get_name(dataset_id) or b"?").decode("utf-8", "replace")


def dtype_of(ds: h5py.Dataset | h5py.h5d.DatasetID, where: str, marked: bool = True) -> str:
    """A dataset's Keras dtype string; non-numeric datasets are refused. `marked=False`: as
    for `read_dataset`."""
    dataset_id = ds.id if isinstance(ds, h5py.Dataset) else ds
    if marked and text_attribute(h5py.Dataset(dataset_id), "dtype") in ("bfloat16",
                                                                         b"bfloat16"):
        return "bfloat16"
    dtype, exact = stored_dtype(dataset_id)
    if (not exact and dataset_id.get_type().get_class() == h5py.h5t.FLOAT
            and not any(dataset_id.get_type() == t for t in _IEEE)):
        raise BlockFileError(
            f"{where}: dataset {_name_of(dataset_id)!r} has a floating-point type whose HDF5 "
            "header describes no IEEE half, single or double layout (its exponent bias, "
            "sizes or bit positions differ), which Keras never writes: the file is damaged. "
            "Fetch or save it again.")
    if dtype.kind not in "fiub":
        name = _name_of(dataset_id)
        raise BlockFileError(
            f"{where}: dataset {name!r} has dtype {dtype}, which is not a numeric "
            "variable type."
        )
    return "bool" if dtype.kind == "b" else _dtype_name(dtype)


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)


def attr_text(value) -> str:
    """An attribute value as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)
