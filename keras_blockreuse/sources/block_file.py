"""Source kind: a `.blocks.h5` file — grouped, checksummed, read block by block.

Its layers are stored in the source model's computation order, so they pair by order as well
as by name; files converted from a Keras file whose order was unknown say so per layer.
"""

from __future__ import annotations

import os

import numpy as np

from keras_blockreuse.sources.base import LayerInfo, Source
from keras_blockreuse.store import SUFFIX, BlockFile


def is_block_file(path: str) -> bool:
    """True for a path named like a block file (`*.blocks.h5`)."""
    return path.endswith(SUFFIX)


class BlockFileSource(Source):
    """A `.blocks.h5` file as a source.

    Example:

    ```python
    with BlockFileSource("run/blocks_010.blocks.h5") as source:
        source.block_names()              # ["block_1", "block_2", "dense_1"]
        values = source.read_block("block_1")
    ```
    """

    def __init__(self, path: str | os.PathLike):
        self._file = BlockFile(path)
        self.description = self._file.path
        self.info = {"format": "keras-blockreuse block file"}
        # `save_blocks` records each variable's Keras name; a converted file, its source's
        self.variable_names_pair = "converted_from" not in self._file.metadata
        self.variable_names_checked = self.variable_names_pair
        self.own_blocks = True

    @property
    def bytes_read(self) -> int:
        return self._file.bytes_read

    def block_names(self) -> list[str]:
        return self._file.block_names

    def block_layers(self, name: str) -> tuple[LayerInfo, ...]:
        return self._file.block(name).layers

    def read_block(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        return self._file.read_block(name)

    def verify(self, names: list[str], check=None) -> None:
        """Checks the named blocks against their checksums, keeping no value; with `check`,
        also calls `check(block, layer path, key, array)` on each value as read (one at a
        time, in new memory), before its block's checksum is checked."""
        if check is None:
            self._file.verify(names)  # into one reusable buffer
            return
        counted = self._file.bytes_read  # bytes of values delivered: counted in pass 2
        try:
            for name in names:
                for path, key, array in self._file.iter_values(name):
                    check(name, path, key, array)
        finally:
            self._file.bytes_read = counted

    def iter_values(self, name: str):
        """One block's values as read, `(layer path, key, array)`; checked after the last."""
        return self._file.iter_values(name)

    def close(self) -> None:
        self._file.close()
