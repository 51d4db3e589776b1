"""HDF5 helpers shared by the Keras file readers: opening, reading values, dtypes, text."""

from __future__ import annotations

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
                 marked: bool = True) -> np.ndarray:
    """A dataset's values, after checking that they are stored in its file (`check_storage`)
    and that it declares no more bytes than its file holds. `marked=False`: the dataset is
    known to have no `dtype` attribute (a bfloat16 mark), which is then not read."""
    dataset_id = ds.id if isinstance(ds, h5py.Dataset) else ds
    plist = dataset_id.get_create_plist()
    check_storage(dataset_id, where, plist)
    check_dataset_size(dataset_id, file_size, where, plist)
    if marked and text_attribute(h5py.Dataset(dataset_id), "dtype") in ("bfloat16",
                                                                         b"bfloat16"):
        import ml_dtypes

        return np.array(h5py.Dataset(dataset_id), dtype=ml_dtypes.bfloat16)
    array = np.empty(dataset_id.shape, dtype=dataset_id.dtype)
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
