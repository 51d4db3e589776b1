"""keras-blockreuse: save and load Keras 3 weights block by block, by name, all or nothing.

Example:

```python
from keras_blockreuse import BlockModel, load_blocks, save_blocks

save_blocks(classifier, "classifier.blocks.h5")
report = load_blocks(detector, "classifier.blocks.h5", only=["block_1", "block_2"])
print(report)
```
"""

__version__ = "0.1.0"

from keras_blockreuse.blocks import Block, get_blocks
from keras_blockreuse.callbacks import BlockCheckpoint, latest_checkpoint
from keras_blockreuse.errors import BlockFileError, BlockMismatchError
from keras_blockreuse.model import BlockModel, block_summary, freeze_blocks, unfreeze_blocks
from keras_blockreuse.report import LoadReport, Mismatch
from keras_blockreuse.store import BlockFileInfo, read_blocks, save_blocks
from keras_blockreuse.transfer import load_blocks

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
