"""Errors raised by keras-blockreuse."""


class BlockFileError(ValueError):
    """A block file is unreadable, corrupt, truncated, of another format or too new.

    The message names the file and, where known, the block.
    """


class BlockMismatchError(ValueError):
    """The blocks of a source do not fit the blocks of a model.

    Raised before any weight is assigned; the message lists every problem at once.

    Attributes:
        rename: where the message offers a `rename=` ({source block: model block}: the
            blocks pair one to one by their places, the same model with its automatic names
            shifted), that dict; else None.
    """

    def __init__(self, *args, rename: dict[str, str] | None = None):
        super().__init__(*args)
        self.rename = rename
