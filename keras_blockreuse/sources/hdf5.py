"""HDF5 helpers shared by the Keras file readers: opening, reading values, dtypes, text."""

from __future__ import annotations

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


def read_dataset(ds: h5py.Dataset, file_size: int, where: str,
                 marked: bool = True) -> np.ndarray:
    """A dataset's values, after checking that they are stored in its file (`check_storage`)
    and that it declares no more bytes than its file holds. `marked=False`: the dataset is
    known to have no `dtype` attribute (a bfloat16 mark), which is then not read."""
    check_storage(ds, where)
    check_dataset_size(ds, file_size, where)
    if marked and text_attribute(ds, "dtype") in ("bfloat16", b"bfloat16"):
        import ml_dtypes

        return np.array(ds, dtype=ml_dtypes.bfloat16)
    array = np.empty(ds.shape, dtype=ds.dtype)
    if array.size:  # the whole dataset into memory of its own shape: `read_direct`, in one call
        ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, array)
    return array


def dtype_of(ds: h5py.Dataset, where: str, marked: bool = True) -> str:
    """A dataset's Keras dtype string; non-numeric datasets are refused. `marked=False`: as
    for `read_dataset`."""
    if marked and text_attribute(ds, "dtype") in ("bfloat16", b"bfloat16"):
        return "bfloat16"
    if ds.dtype.kind not in "fiub":
        raise BlockFileError(
            f"{where}: dataset {ds.name!r} has dtype {ds.dtype}, which is not a numeric "
            "variable type."
        )
    return "bool" if ds.dtype.kind == "b" else str(ds.dtype)


def attr_text(value) -> str:
    """An attribute value as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)
