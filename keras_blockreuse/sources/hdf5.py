"""HDF5 helpers shared by the Keras file readers: opening, reading values, dtypes, text."""

from __future__ import annotations

import dataclasses
import functools

import h5py
import numpy as np

from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.safety import check_dataset_size, check_storage, open_hdf5, text_attribute


def open_h5(path, where: str | None = None) -> h5py.File:
    """Opens an HDF5 file (a path or a seekable file object) read-only, checked.

    The one place the Keras file readers open an HDF5 file: non-regular files and damaged
    global heaps are refused (`safety.open_hdf5`).
    """
    return open_hdf5(path, where or repr(path))


def read_dataset(ds: h5py.Dataset | h5py.h5d.DatasetID, file_size: int, where: str,
                 scratch: list | None = None, marked: bool = True) -> np.ndarray:
    """A dataset's values, after checking that they are stored in its file (`check_storage`)
    and that it declares no more bytes than its file holds (`check_dataset`)."""
    return read_checked(ds, check_dataset(ds, file_size, where, marked), scratch)


@dataclasses.dataclass(frozen=True)
class Checked:
    """A dataset that `check_dataset` passed: its shape, stored dtype, and whether it holds
    bfloat16 values (stored as 16-bit integers with a `dtype` attribute)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    bfloat16: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def check_dataset(ds: h5py.Dataset | h5py.h5d.DatasetID, file_size: int, where: str,
                  marked: bool = True) -> Checked:
    """Checks that a dataset's values are stored in its file and fit in it; what a reader of
    the same open dataset needs to read it again (`read_checked`) without checking again.
    `marked=False`: the dataset is known to have no `dtype` attribute (a bfloat16 mark),
    which is then not read. One creation property list serves both storage checks."""
    dataset_id = ds.id if isinstance(ds, h5py.Dataset) else ds
    plist = dataset_id.get_create_plist()
    check_storage(dataset_id, where, plist)
    check_dataset_size(dataset_id, file_size, where, plist)
    bfloat16 = marked and text_attribute(h5py.Dataset(dataset_id), "dtype") in ("bfloat16",
                                                                                 b"bfloat16")
    return Checked(dataset_id.shape, dataset_id.dtype, bfloat16)


def read_checked(ds: h5py.Dataset | h5py.h5d.DatasetID, checked: Checked,
                 scratch: list | None = None) -> np.ndarray:
    """The values of a dataset `check_dataset` passed, into new memory.

    `scratch`: a list holding one reusable byte buffer (empty at first): the values are read
    into it instead, grown as needed and overwritten by the next read — for a pass that only
    checks values, without the cost of new memory for each.
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
    if array.size:  # the whole dataset into memory of its own shape: `read_direct`, in one call
        dataset_id.read(h5py.h5s.ALL, h5py.h5s.ALL, array)
    return array


def dtype_of(ds: h5py.Dataset | h5py.h5d.DatasetID, where: str, marked: bool = True) -> str:
    """A dataset's Keras dtype string; non-numeric datasets are refused. `marked=False`: as
    for `read_dataset`."""
    dataset_id = ds.id if isinstance(ds, h5py.Dataset) else ds
    if marked and text_attribute(h5py.Dataset(dataset_id), "dtype") in ("bfloat16",
                                                                         b"bfloat16"):
        return "bfloat16"
    dtype = dataset_id.dtype
    if dtype.kind not in "fiub":
        name = (h5py.h5i.get_name(dataset_id) or b"?").decode("utf-8", "replace")
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
