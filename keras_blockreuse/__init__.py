"""keras-blockreuse: save and load Keras 3 weights block by block, by name, all or nothing.

Example:

```python
from keras_blockreuse import BlockModel, load_blocks, save_blocks

save_blocks(classifier, "classifier.blocks.h5")
report = load_blocks(detector, "classifier.blocks.h5", only=["block_1", "block_2"])
print(report)
```

Importing the package is cheap: each public name is imported from its module on first use
(PEP 562), so Keras and TensorFlow load only when a name that needs them is used, and the
`keras-blockreuse` command line reads block files without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it.
_MODULES = {
    "Block": "keras_blockreuse.blocks",
    "get_blocks": "keras_blockreuse.blocks",
    "BlockCheckpoint": "keras_blockreuse.callbacks",
    "latest_checkpoint": "keras_blockreuse.callbacks",
    "BlockFileError": "keras_blockreuse.errors",
    "BlockMismatchError": "keras_blockreuse.errors",
    "BlockModel": "keras_blockreuse.model",
    "block_summary": "keras_blockreuse.model",
    "freeze_blocks": "keras_blockreuse.model",
    "unfreeze_blocks": "keras_blockreuse.model",
    "LoadReport": "keras_blockreuse.report",
    "Mismatch": "keras_blockreuse.report",
    "BlockFileInfo": "keras_blockreuse.store",
    "read_blocks": "keras_blockreuse.store",
    "save_blocks": "keras_blockreuse.store",
    "load_blocks": "keras_blockreuse.transfer",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports
    from keras_blockreuse.blocks import Block, get_blocks
    from keras_blockreuse.callbacks import BlockCheckpoint, latest_checkpoint
    from keras_blockreuse.errors import BlockFileError, BlockMismatchError
    from keras_blockreuse.model import BlockModel, block_summary, freeze_blocks, unfreeze_blocks
    from keras_blockreuse.report import LoadReport, Mismatch
    from keras_blockreuse.store import BlockFileInfo, read_blocks, save_blocks
    from keras_blockreuse.transfer import load_blocks


def __getattr__(name: str):
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_blockreuse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Block",
    "BlockCheckpoint",
    "BlockFileError",
    "BlockFileInfo",
    "BlockMismatchError",
    "BlockModel",
    "LoadReport",
    "Mismatch",
    "__version__",
    "block_summary",
    "freeze_blocks",
    "get_blocks",
    "latest_checkpoint",
    "load_blocks",
    "read_blocks",
    "save_blocks",
    "unfreeze_blocks",
]
