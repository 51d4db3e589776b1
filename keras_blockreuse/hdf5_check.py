"""A bounded check of the HDF5 global heap, run before HDF5 reads a variable-length string.

Keras stores layer names (`name`, `layer_names`, `weight_names`, `keras_version`, ...) as
variable-length strings, whose bytes live in HDF5's global heap. HDF5 1.14 loops forever
decoding a heap collection whose sizes were damaged (a changed byte in the collection size or
in an object's size: measured, 45 of 1,440 single-byte changes of a collection hang). This
module parses, with its own bounded reader, every variable-length attribute the file holds
and every global heap collection those attributes point into, and refuses the file unless
each collection is exactly well formed:

- the superblock (versions 0-3) gives the sizes of addresses and lengths;
- each object header (versions 1 and 2, continuation chunks included) is read from the address
  HDF5 reports for it, and each attribute message of a variable-length type (class 9) is
  decoded: its dataspace gives the number of elements, each element a length and a heap ID
  (collection address, object index);
- each collection those IDs name must start with `GCOL`, version 1, lie inside the file, and
  its objects must tile it exactly: every object header and object inside the collection,
  indices unique, the free-space object (index 0) last;
- the object an ID names must exist and hold exactly the bytes its length says.

Every step reads a bounded number of bytes and loops a bounded number of times, so the check
itself ends quickly on any input. Variable-length data it cannot follow — attributes kept in
dense storage (a fractal heap; HDF5 uses it above 8 attributes per object, Keras never
does), shared messages, or variable-length members nested in compound or array types — is
refused the same way, as a file Keras does not write.

Measured alternative: reading names in a child process with a deadline also bounds the time,
but costs a process start with h5py on every load (0.3 s of CPU, 5 s of wall time on the shared
test machine) and cannot hand h5py objects back; this parser checked a 3-layer `.weights.h5`
(11 objects) in 16 ms on the same machine, under the same load.

Example:

```python
with h5py.File(path, "r") as f:
    check_global_heap(f, path)   # raises BlockFileError before any vlen string is read
    f.attrs["keras_version"]     # now safe to read
```
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable
from typing import BinaryIO

import h5py

from keras_blockreuse.errors import BlockFileError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
"""The 8 bytes that open an HDF5 superblock."""
_ATTRIBUTE = 0x000C
_ATTRIBUTE_INFO = 0x0015
_CONTINUATION = 0x0010
# The messages by which HDF5 tells an object's type (`H5O__obj_class_real`, groups first):
_GROUP = {0x0011, 0x0002}  # a symbol table, or link info
_DATASET = {0x0003, 0x0001}  # a datatype and a dataspace
_DATATYPE = 0x0003
_WINDOW = 1024  # bytes read at once from an object header's start
_READ = {_ATTRIBUTE, _ATTRIBUTE_INFO, _CONTINUATION}  # the messages whose bodies are parsed
_V1_MESSAGE = struct.Struct("<HHB").unpack_from  # type, size, flags (version 1 headers)
_V2_MESSAGE = struct.Struct("<BHB").unpack_from  # type, size, flags (version 2 headers)
_VLEN = 9
_NESTING = (6, 10)  # compound, array: may hold variable-length members
_MAX_MESSAGES = 100_000  # per object header: far above anything HDF5 writes for Keras files
_MAX_CHUNKS = 1_000


class _Damaged(Exception):
    """Raised inside the parser; turned into `BlockFileError` naming the file."""


def check_global_heap(file: h5py.File, where: str, stream: BinaryIO | None = None,
                      objects: Iterable[tuple[int, bytes]] | None = None,
                      ) -> dict[int, tuple[int, dict[bytes, bytes | None]]]:
    """Refuses an HDF5 file whose variable-length attributes point into a damaged global heap.

    Args:
        file: the open file (only its object addresses are used; no attribute is read).
        where: the file's name, for the error.
        stream: the file's bytes, for a file opened from a file object (inside an archive);
            by default the file is read from its path.
        objects: `(address, name)` of every object below the root, as `list_links` gives
            them (repeats allowed); by default HDF5 walks the file for them (`H5Ovisit`).

    Returns:
        `{address: (object type, attributes)}` for each object header parsed (the root's
        included). The type is decided from its messages as HDF5 decides it:
        `h5py.h5o.TYPE_GROUP` (a symbol table or link info message), `TYPE_DATASET` (a
        datatype and a dataspace), `TYPE_NAMED_DATATYPE` (a datatype alone), else -1. The
        attributes are `{name: value}`, the value being the bytes of a single
        variable-length string (up to its first NUL, as h5py reads it), read from the heap
        object just checked, or `None` for any other kind of attribute.

    Raises:
        BlockFileError: a global heap collection, an object header holding a
            variable-length attribute, or the superblock is damaged, or the file keeps
            variable-length attributes where this check cannot follow them.
    """
    if objects is None:
        listed: list[tuple[int, bytes]] = []
        h5py.h5o.visit(file.id, lambda name, info: listed.append((int(info.addr), name)),
                       info=True)
        objects = listed
    check = GlobalHeapCheck(file, where, stream)
    try:
        return check.check(objects, root=True)
    finally:
        check.close()


class GlobalHeapCheck:
    """`check_global_heap`, kept open so that a reader can check some objects when it opens
    the file and the others when it first needs them (`CheckedFile.header`).

    The file's bytes are read through the descriptor HDF5 itself reads them through (HDF5's
    default `sec2` driver), so the check sees the very file HDF5 has open even if its path
    was replaced since; with another driver, from the file's path, opened once; for a file
    opened from a file object, from `stream` (its position is restored after each check).

    Example:

    ```python
    check = GlobalHeapCheck(f, "model.weights.h5")
    check.check([(address, b"layers/dense/vars")], root=True)  # {address: (type, attrs)}
    check.close()
    ```

    Raises:
        BlockFileError: as `check_global_heap`, from the constructor (the superblock) or
            from `check`.
    """

    def __init__(self, file: h5py.File, where: str, stream: BinaryIO | None = None):
        self.where = where
        self._root = int(h5py.h5o.get_info(file.id).addr)
        self._stream = stream
        self._own: BinaryIO | None = None
        with self._errors():
            if stream is not None:
                position = stream.tell()
                try:
                    self._checker = _Checker(stream, stream.seek(0, os.SEEK_END))
                finally:
                    stream.seek(position)
            elif file.driver == "sec2" and os.name == "posix":
                fd = file.id.get_vfd_handle()
                self._checker = _Checker(None, os.fstat(fd).st_size, fd)
            else:
                self._own = open(file.filename, "rb", buffering=0)  # noqa: SIM115 - kept open
                try:
                    self._checker = _Checker(self._own, os.fstat(self._own.fileno()).st_size,
                                             self._own.fileno())
                except BaseException:
                    self.close()
                    raise

    def check(self, objects: Iterable[tuple[int, bytes]], root: bool = False,
              ) -> dict[int, tuple[int, dict[bytes, bytes | None]]]:
        """Checks the headers of `objects` (`(address, name)`, repeats dropped) and the
        global heap collections their variable-length attributes point into, each
        collection once per file; `root=True` checks the root group first. Returns
        `{address: (object type, attributes)}` as `check_global_heap`."""
        seen: set[int] = set()
        listed = []
        for address, name in [(self._root, b""), *objects] if root else objects:
            address = int(address)
            if address not in seen:  # the root, if a link leads back to it
                seen.add(address)
                listed.append((address, "/" + name.decode("utf-8", "replace")))
        with self._errors():
            if self._stream is None:
                return self._checker.run(listed)
            position = self._stream.tell()
            try:
                return self._checker.run(listed)
            finally:
                self._stream.seek(position)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except _Damaged as e:
            raise BlockFileError(
                f"{self.where}: {e}. The file is damaged; its text attributes were not read."
            ) from None
        except OSError as e:
            raise BlockFileError(
                f"{self.where}: cannot read it to check its global heap: {e}") from e


class _Checker:
    def __init__(self, fh, size: int, fd: int | None = None):
        self.fh = fh
        self.fd = fd
        self.size = size
        self.collections: dict[int, dict[int, int]] = {}  # address -> {index: size}
        self.positions: dict[tuple[int, int], int] = {}  # (address, index) -> its bytes' start
        self.base, self.offsets, self.lengths = self._superblock()

    def read(self, address: int, count: int, what: str) -> bytes:
        if address < 0 or count < 0 or address + count > self.size:
            raise _Damaged(f"{what} at byte {address} ({count} bytes) lies outside the file "
                           f"of {self.size} bytes")
        if self.fd is not None:  # one system call, not a seek and a buffered read
            data = os.pread(self.fd, count, address)
        else:
            self.fh.seek(address)
            data = self.fh.read(count)
        if len(data) != count:
            raise _Damaged(f"{what} at byte {address} is cut short")
        return data

    def _superblock(self) -> tuple[int, int, int]:
        location = 0
        while location + 8 <= self.size:
            if self.read(location, 8, "the superblock") == HDF5_SIGNATURE:
                break
            location = 512 if location == 0 else location * 2
        else:
            raise _Damaged("no HDF5 superblock signature")
        version = self.read(location + 8, 1, "the superblock")[0]
        if version in (0, 1):
            offsets, lengths = self.read(location + 13, 2, "the superblock")
            base_at = location + (24 if version == 0 else 28)
        elif version in (2, 3):
            offsets, lengths = self.read(location + 9, 2, "the superblock")
            base_at = location + 12
        else:
            raise _Damaged(f"superblock version {version} is unknown")
        if offsets not in (2, 4, 8) or lengths not in (2, 4, 8):
            raise _Damaged(f"superblock declares address/length sizes {offsets}/{lengths}")
        base = self.unsigned(self.read(base_at, offsets, "the superblock"))
        if base != location:
            raise _Damaged(f"superblock at byte {location} declares base address {base}")
        return base, offsets, lengths

    @staticmethod
    def unsigned(data: bytes) -> int:
        return int.from_bytes(data, "little")

    # --- objects -----------------------------------------------------------------------

    def run(self, objects) -> dict[int, tuple[int, dict[bytes, bytes | None]]]:
        found = {}
        for address, obj in objects:
            messages, kind = self._attribute_messages(self.base + address)
            found[address] = (kind, dict(self._check_attribute(message, obj)
                                         for message in messages) if messages else {})
        return found

    def _attribute_messages(self, address: int) -> tuple[list[bytes], int]:
        """The attribute messages of the object header at `address` (absolute), and the
        object's type."""
        # One read for the header's prefix and, usually, its first chunk of messages.
        head = self.read(address, max(4, min(_WINDOW, self.size - address)), "an object header")
        if head[:4] == b"OHDR":
            chunks, present = self._v2_messages(address)
        elif head[0] == 1:
            chunks, present = self._v1_messages(address, head)
        else:
            raise _Damaged(f"object header at byte {address} has unknown version {head[0]}")
        attributes = []
        if present & _GROUP:
            obj_type = h5py.h5o.TYPE_GROUP
        elif _DATASET <= present:
            obj_type = h5py.h5o.TYPE_DATASET
        elif _DATATYPE in present:
            obj_type = h5py.h5o.TYPE_NAMED_DATATYPE
        else:
            obj_type = -1
        for kind, flags, data in chunks:
            if kind == _ATTRIBUTE:
                if flags & 0x02:
                    raise _Damaged(f"object header at byte {address} holds a shared attribute "
                                   "message, which Keras never writes")
                attributes.append(data)
            elif kind == _ATTRIBUTE_INFO:
                self._refuse_dense(data, address)
        return attributes, obj_type

    def _v1_messages(self, address: int, head: bytes):
        prefix = head[:12] if len(head) >= 12 else self.read(address, 12, "an object header")
        _, _, count, _, size = struct.unpack("<BBHII", prefix)
        chunks = [(address + 16, size)]
        messages, seen, kinds, total = [], set(), set(), 0
        add, most = kinds.add, max(count, 1) + _MAX_MESSAGES
        while chunks:
            start, size = chunks.pop(0)
            if start in seen or len(seen) > _MAX_CHUNKS:
                raise _Damaged(f"object header at byte {address} has looping continuations")
            seen.add(start)
            if start == address + 16 and 16 + size <= len(head):  # read with the prefix
                data = head[16 : 16 + size]
            else:
                data = self.read(start, size, "an object header chunk")
            last = len(data) - 8  # the last position a message's prefix fits at
            position = 0
            while position <= last:  # the loop of every object header: kept lean
                kind, length, flags = _V1_MESSAGE(data, position)
                start = position + 8
                position = start + length
                if position > last + 8:
                    raise _Damaged(f"object header at byte {address} has a message past its end")
                total += 1
                add(kind)
                if kind in _READ:  # only these messages' bodies are looked at
                    body = data[start:position]
                    messages.append((kind, flags, body))
                    if kind == _CONTINUATION:
                        chunks.append(self._continuation(body, address))
                if total > most:
                    raise _Damaged(f"object header at byte {address} has too many messages")
        return messages, kinds

    def _v2_messages(self, address: int):
        version, flags = self.read(address + 4, 2, "an object header")
        if version != 2:
            raise _Damaged(f"object header at byte {address} has unknown version {version}")
        position = address + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 0x03)
        size = self.unsigned(self.read(position, width, "an object header"))
        chunks = [(position + width, size)]
        header = 6 if flags & 0x04 else 4
        messages, seen, kinds, total = [], set(), set(), 0
        first = True
        while chunks:
            start, size = chunks.pop(0)
            if start in seen or len(seen) > _MAX_CHUNKS:
                raise _Damaged(f"object header at byte {address} has looping continuations")
            seen.add(start)
            if not first:  # a continuation chunk: "OCHK", messages, checksum
                if self.read(start, 4, "an object header chunk") != b"OCHK" or size < 8:
                    raise _Damaged(f"object header at byte {address} has a damaged chunk")
                start, size = start + 4, size - 8
            first = False
            data = self.read(start, size, "an object header chunk")
            last = len(data) - header  # the last position a message's prefix fits at
            position = 0
            while position <= last:
                kind, length, message_flags = _V2_MESSAGE(data, position)
                start = position + header
                position = start + length
                if position > last + header:
                    raise _Damaged(f"object header at byte {address} has a message past its end")
                total += 1
                kinds.add(kind)
                if kind in _READ:  # only these messages' bodies are looked at
                    body = data[start:position]
                    messages.append((kind, message_flags, body))
                    if kind == _CONTINUATION:
                        chunks.append(self._continuation(body, address))
                if total > _MAX_MESSAGES:
                    raise _Damaged(f"object header at byte {address} has too many messages")
        return messages, kinds

    def _continuation(self, body: bytes, address: int) -> tuple[int, int]:
        if len(body) < self.offsets + self.lengths:
            raise _Damaged(f"object header at byte {address} has a short continuation message")
        offset = self.unsigned(body[: self.offsets])
        length = self.unsigned(body[self.offsets : self.offsets + self.lengths])
        return self.base + offset, length

    def _refuse_dense(self, body: bytes, address: int) -> None:
        """Attribute Info: dense storage (a fractal heap) is not followed; refused if used."""
        if len(body) < 2:
            raise _Damaged(f"object header at byte {address} has a short attribute info message")
        position = 2 + (2 if body[1] & 0x01 else 0)
        heap = body[position : position + self.offsets]
        if len(heap) != self.offsets:
            raise _Damaged(f"object header at byte {address} has a short attribute info message")
        if heap != b"\xff" * self.offsets:
            raise _Damaged(f"object at byte {address} keeps attributes in dense storage (over 8 "
                           "attributes), which Keras never writes and this check does not follow")

    # --- attributes ------------------------------------------------------------------------

    def _check_attribute(self, body: bytes, obj: str) -> tuple[bytes, bytes | None]:
        """Checks one attribute message; returns its name and, for a single variable-length
        string, its value."""
        if len(body) < 8:
            raise _Damaged(f"an attribute message of {obj!r} is cut short")
        version, flags = body[0], body[1]
        name_size, type_size, space_size = struct.unpack_from("<HHH", body, 2)
        if version == 1:
            pad = _pad8
            position = 8
        elif version in (2, 3):
            pad = int  # no padding
            position = 8 if version == 2 else 9
        else:
            raise _Damaged(f"an attribute message of {obj!r} has unknown version {version}")
        name = body[position : position + name_size].split(b"\x00", 1)[0]
        label = f"attribute {name.decode('utf-8', 'replace')!r} of {obj!r}"
        position += pad(name_size)
        datatype = body[position : position + type_size]
        position += pad(type_size)
        dataspace = body[position : position + space_size]
        position += pad(space_size)
        if len(datatype) != type_size or len(dataspace) != space_size or type_size < 8:
            raise _Damaged(f"{label} is cut short")
        if flags & 0x03:
            raise _Damaged(f"{label} uses a shared datatype or dataspace, which Keras never "
                           "writes")
        kind = datatype[0] & 0x0F
        if kind in _NESTING and _holds_vlen(datatype):
            raise _Damaged(f"{label} nests variable-length data in a compound or array type, "
                           "which Keras never writes")
        if kind != _VLEN:
            return name, None
        if len(datatype) < 16:
            raise _Damaged(f"{label} has a cut-short variable-length type")
        base_size = struct.unpack_from("<I", datatype, 12)[0]  # the base type's size
        if base_size == 0 or (datatype[8] & 0x0F) in (_VLEN, *_NESTING):
            raise _Damaged(f"{label} has a nested or empty variable-length base type")
        count = self._elements(dataspace, label)
        element = 4 + self.offsets + 4
        data = body[position : position + count * element]
        if len(data) != count * element:
            raise _Damaged(f"{label} declares {count} values but holds {len(body) - position} "
                           "bytes")
        value = None
        for i in range(count):
            start = i * element
            length = struct.unpack_from("<I", data, start)[0]
            collection = self.unsigned(data[start + 4 : start + 4 + self.offsets])
            index = struct.unpack_from("<I", data, start + 4 + self.offsets)[0]
            if collection == 0 and length == 0:
                value = b""
                continue  # a null value: HDF5 reads nothing
            objects = self._collection(collection, label)
            if index not in objects or index == 0:
                raise _Damaged(f"{label} points to object {index} of the global heap collection "
                               f"at byte {self.base + collection}, which has no such object")
            if objects[index] != length * base_size:
                raise _Damaged(f"{label} declares {length * base_size} bytes but its global heap "
                               f"object holds {objects[index]}")
            if count == 1:
                value = self.read(self.positions[collection, index], objects[index],
                                  "a global heap object")
        text = datatype[1] & 0x0F == 1 and base_size == 1  # a string, not a sequence
        if count == 1 and text and value is not None and _scalar(dataspace):
            return name, value.split(b"\x00", 1)[0]
        return name, None

    def _elements(self, dataspace: bytes, label: str) -> int:
        if len(dataspace) < 4:
            raise _Damaged(f"{label} has a cut-short dataspace")
        version, rank, flags = dataspace[0], dataspace[1], dataspace[2]
        if version == 1:
            position, kind = 8, 1 if rank else 0
        elif version == 2:
            position, kind = 4, dataspace[3]
        else:
            raise _Damaged(f"{label} has a dataspace of unknown version {version}")
        if kind == 2:
            return 0  # a null dataspace
        if rank > 32:
            raise _Damaged(f"{label} has a dataspace of rank {rank}")
        count = 1
        for i in range(rank):
            dim = dataspace[position + i * self.lengths : position + (i + 1) * self.lengths]
            if len(dim) != self.lengths:
                raise _Damaged(f"{label} has a cut-short dataspace")
            count *= self.unsigned(dim)
            if count > self.size:
                raise _Damaged(f"{label} declares {count} values, more than the file could hold")
        del flags
        return count

    def _collection(self, address: int, label: str) -> dict[int, int]:
        """The objects of the global heap collection at `address`: `{index: size}`, checked."""
        if address in self.collections:
            return self.collections[address]
        start = self.base + address
        head = self.read(start, 8 + self.lengths, f"the global heap collection for {label}")
        if head[:4] != b"GCOL" or head[4] != 1:
            raise _Damaged(f"{label} points to byte {start}, which is not a global heap "
                           "collection (signature GCOL, version 1)")
        size = self.unsigned(head[8:])
        header = 8 + self.lengths
        if size < header or start + size > self.size:
            raise _Damaged(f"the global heap collection at byte {start} declares {size} bytes, "
                           f"beyond the file's {self.size}")
        data = self.read(start, size, "a global heap collection")
        objects: dict[int, int] = {}
        position = header
        object_header = 8 + self.lengths
        while position < size:
            if size - position < object_header:
                break  # too small for an object: unused space at the end, as HDF5 writes it
            index, _, _ = struct.unpack_from("<HHI", data, position)
            length = self.unsigned(data[position + 8 : position + object_header])
            if index == 0:  # free space: the rest of the collection, header included
                if length != size - position:
                    raise _Damaged(f"the global heap collection at byte {start} has free space "
                                   f"of {length} bytes where {size - position} remain")
                break
            span = object_header + _pad8(length)
            if index in objects or length > size - position or span > size - position:
                raise _Damaged(f"the global heap collection at byte {start} has a damaged "
                               f"object {index} ({length} bytes at byte {start + position})")
            objects[index] = length
            self.positions[address, index] = start + position + object_header
            position += span
        self.collections[address] = objects
        return objects


def _scalar(dataspace: bytes) -> bool:
    """Whether an encoded dataspace (already checked by `_elements`) is a scalar one."""
    return dataspace[1] == 0 if dataspace[0] == 1 else dataspace[3] == 0


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _holds_vlen(datatype: bytes) -> bool:
    """Whether an encoded compound or array type mentions a variable-length class anywhere.

    A conservative scan (any byte of the encoding that could be a class-9 header counts): it
    may refuse an unusual compound type, never lets a variable-length member through.
    """
    return any((b & 0x0F) == _VLEN and (b >> 4) in (1, 2, 3, 4, 5) for b in datatype[8:])
