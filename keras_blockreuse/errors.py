"""Errors raised by keras-blockreuse."""


class BlockFileError(ValueError):
    """A block file is unreadable, corrupt, truncated, of another format or too new.

    The message names the file and, where known, the block.
    """


class BlockMismatchError(ValueError):
    """The blocks of a source do not fit the blocks of a model.

    Raised before any weight is assigned; the message lists every problem at once.
    """
