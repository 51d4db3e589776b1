"""A stored (uncompressed) zip member read in place, as a seekable file of its own.

`zipfile.ZipFile.open` returns a stream that updates a CRC-32 over every byte it reads and,
to seek backwards, rewinds to the member's start and reads forward again. HDF5 reads a file
by jumping back and forth, so h5py on that stream reads the same bytes many times over:
opening ResNet50's `model.weights.h5` inside a `.keras` archive cost about 15 times Keras's
whole `load_model` (benchmarks/RESULTS.md). A stored member's bytes are contiguous in the
archive, so they can be read directly at their offset instead, each byte once.

Example:

```python
with zipfile.ZipFile("model.keras") as archive:
    member = archive.getinfo("model.weights.h5")
    with h5py.File(StoredMember("model.keras", member), "r") as f:
        ...
```
"""

from __future__ import annotations

import io
import os
import struct
import zipfile

from keras_blockreuse.errors import BlockFileError

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader
_LOCAL_SIGNATURE = b"PK\x03\x04"


class StoredMember(io.RawIOBase):
    """A read-only, seekable view of one stored member of a zip archive on disk.

    Args:
        path: the archive's path; it is opened again, read-only, by this object.
        member: the member's `zipfile.ZipInfo`; it must be stored (`ZIP_STORED`).

    Raises:
        BlockFileError: the member is compressed or encrypted, or its local header or its
            extent does not agree with the archive's directory.
    """

    def __init__(self, path: str | os.PathLike, member: zipfile.ZipInfo):
        super().__init__()
        self.name = f"{os.fspath(path)}:{member.filename}"
        if member.compress_type != zipfile.ZIP_STORED or member.flag_bits & 0x1:
            raise BlockFileError(f"{self.name} is compressed or encrypted; it cannot be read "
                                 "in place.")
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            header = os.pread(self._fd, _LOCAL_HEADER.size, member.header_offset)
            if len(header) != _LOCAL_HEADER.size:
                raise BlockFileError(f"{self.name}: the archive is truncated.")
            fields = _LOCAL_HEADER.unpack(header)
            if fields[0] != _LOCAL_SIGNATURE:
                raise BlockFileError(f"{self.name}: no local file header where the archive's "
                                     "directory says the member starts; the archive is damaged.")
            name_length, extra_length = fields[-2], fields[-1]
            self._start = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            self._size = member.file_size
            if self._start + self._size > os.fstat(self._fd).st_size:
                raise BlockFileError(f"{self.name}: the member runs past the end of the "
                                     "archive; it is truncated.")
        except BaseException:
            os.close(self._fd)
            raise
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"{self.name}: seek to a negative position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = max(0, min(len(view), self._size - self._position))
        done = 0
        while done < wanted:
            n = os.preadv(self._fd, [view[done:wanted]], self._start + self._position + done)
            if n == 0:
                break
            done += n
        self._position += done
        return done

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
