"""`convert`: write the blocks of any source — a Keras file, a model — to a `.blocks.h5` file.

The Keras formats carry no block grouping and no checksums; converting one groups its layers
with a block rule and writes the same `.blocks.h5` file `save_blocks` writes (atomically,
with a checksum per block), reading one block at a time. Where the source came from is kept
in the file's metadata.

Example:

```python
convert("vgg16.weights.h5", "vgg16.blocks.h5", blocks="vgg")
read_blocks("vgg16.blocks.h5").metadata["converted_from"]     # "vgg16.weights.h5"
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from keras_blockreuse.blocks import BlockRule, select
from keras_blockreuse.sources import open_source
from keras_blockreuse.store import write_blocks

__all__ = ["convert"]


def convert(
    source,
    path: str | os.PathLike,
    blocks: BlockRule = None,
    only: Sequence[str] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    **source_options,
) -> str:
    """Writes a source's blocks to a `.blocks.h5` file and returns its path.

    Args:
        source: anything `load_blocks` reads: a Keras `.weights.h5` / `.weights.json` /
            `.keras` / legacy `.h5` file, a `.blocks.h5` file, or a `keras.Model`.
        path: the block file to write; must end in `.blocks.h5`.
        blocks: the block rule grouping a source without blocks of its own (default: the
            rule a `BlockModel`'s `.keras` archive records, as `load_model` restores it; else a
            detected `keras.applications` preset, else the `block_1_0` naming convention).
        only: block names or globs to write; default every block.
        metadata: a JSON-serialisable dict stored with the source's description.
        **source_options: options for the source's reader, such as `source_model=`.

    Example:

    ```python
    convert("classifier.keras", "classifier.blocks.h5", only=["block_1", "block_2"])
    ```
    """
    if blocks is None and source_options.get("source_model") is None:
        from keras_blockreuse.sources.keras_archive import recorded_rule

        blocks = recorded_rule(source)
    with open_source(source, blocks, **source_options) as src:
        if source_options.get("source_model") is not None and hasattr(src, "rebuild_structure"):
            src.rebuild_structure()  # the file then records the layers' computation order
        names = select(src.block_names(), only, f"`only`; source {src.description}")
        facts = {"converted_from": src.description}
        facts.update({f"source_{k}".replace(" ", "_"): str(v)
                      for k, v in getattr(src, "info", {}).items()})
        facts.update(dict(metadata or {}))
        model_name = os.path.basename(str(src.description)).split(".", 1)[0]
        return write_blocks(src, path, names, model_name=model_name, metadata=facts)
