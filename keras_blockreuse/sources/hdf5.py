"""HDF5 helpers shared by the Keras file readers: opening, reading values, dtypes, text."""

from __future__ import annotations

import dataclasses

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
                 scratch: list | None = None) -> np.ndarray:
    """A dataset's values, after checking that they are stored in its file (`check_storage`)
    and that it declares no more bytes than its file holds (`check_dataset`)."""
    return read_checked(ds, check_dataset(ds, file_size, where), scratch)


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


def check_dataset(ds: h5py.Dataset, file_size: int, where: str) -> Checked:
    """Checks that a dataset's values are stored in its file and fit in it; what a reader of
    the same open dataset needs to read it again (`read_checked`) without checking again."""
    check_storage(ds, where)
    check_dataset_size(ds, file_size, where)
    return Checked(tuple(ds.shape), ds.dtype,
                   text_attribute(ds, "dtype") in ("bfloat16", b"bfloat16"))


def read_checked(ds: h5py.Dataset, checked: Checked, scratch: list | None = None) -> np.ndarray:
    """The values of a dataset `check_dataset` passed, into new memory.

    `scratch`: a list holding one reusable byte buffer (empty at first): the values are read
    into it instead, grown as needed and overwritten by the next read — for a pass that only
    checks values, without the cost of new memory for each.
    """
    if checked.bfloat16:
        import ml_dtypes

        return np.array(ds, dtype=ml_dtypes.bfloat16)
    if scratch is None:
        array = np.empty(checked.shape, dtype=checked.dtype)
    else:
        if not scratch or scratch[0].size < checked.nbytes:
            scratch[:] = [np.empty(checked.nbytes, dtype=np.uint8)]
        array = scratch[0][:checked.nbytes].view(checked.dtype).reshape(checked.shape)
    if array.size:  # the whole dataset into memory of its own shape: `read_direct`, in one call
        ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, array)
    return array


def dtype_of(ds: h5py.Dataset, where: str) -> str:
    """A dataset's Keras dtype string; non-numeric datasets are refused."""
    if text_attribute(ds, "dtype") in ("bfloat16", b"bfloat16"):
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
