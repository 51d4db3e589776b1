"""Shape adaptation for `on_mismatch="adapt"`: a first convolution's input channels.

A classifier trained on RGB images has a first convolution with 3 input channels; a target
model for greyscale or 4-channel (RGB + depth, RGB + infrared) inputs needs 1 or 4. As timm's
`adapt_input_conv` does, the kernel is adapted instead of re-initialised:

- to 1 channel: the kernel is summed over its input channels (for a source with `3k`
  channels, each group of 3 consecutive channels is summed, giving `k`);
- to `C` channels from 3: the 3 channels are repeated `ceil(C / 3)` times, cut to `C`, and
  multiplied by `3 / C`, so the expected activation stays that of the source.

Only the kernel of a convolution (`Conv1D`, `Conv2D`, `Conv3D`, not transposed, depthwise or
separable), differing only in its input-channel axis, is adapted; every other mismatch falls
back to the `"error"` behaviour.

Example:

```python
report = load_blocks(grey_model, "rgb.blocks.h5", only=["block_1"], on_mismatch="adapt")
report.adapted      # [Mismatch(block="block_1", layer="block_1_0", variable="kernel", ...)]
```
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np

__all__ = ["adapt_input_channels", "adapter_for"]

SUPPORTED = "3 -> 1 (sum), 3k -> k (sum of each group of 3) and 3 -> C (repeat, times 3 / C)"
"""The input-channel adaptations there are, as messages name them."""


def adapt_input_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Adapts a convolution kernel `(..., in, out)` to `channels` input channels.

    Computed in float32 (or wider if the kernel is wider) and returned in the kernel's dtype.

    Raises:
        ValueError: the adaptation is not one of the two cases above.

    Example:

    ```python
    kernel = np.ones((3, 3, 3, 8), "float32")
    adapt_input_channels(kernel, 1)[..., 0, 0]     # all 3.0: summed over R, G, B
    adapt_input_channels(kernel, 4)[..., :, 0]     # all 0.75: repeated, times 3 / 4
    ```
    """
    source = kernel.shape[-2]
    work = kernel.astype(np.promote_types(kernel.dtype, np.float32))
    if channels == source:
        return kernel.copy()
    if channels == 1 and source == 3:
        out = work.sum(axis=-2, keepdims=True)
    elif source > 3 and source % 3 == 0 and channels == source // 3:
        grouped = work.reshape(*work.shape[:-2], source // 3, 3, work.shape[-1])
        out = grouped.sum(axis=-2)
    elif source == 3 and channels > 1:
        repeats = math.ceil(channels / 3)
        out = np.concatenate([work] * repeats, axis=-2)[..., :channels, :]
        out = out * (3.0 / channels)
    else:
        raise ValueError(
            f"Cannot adapt a kernel with {source} input channels to {channels}: supported are "
            f"{SUPPORTED}."
        )
    return out.astype(kernel.dtype)


def adapter_for(var, shape: tuple, unit) -> Callable[[np.ndarray], np.ndarray] | None:
    """The transform that adapts a source variable to a target shape, or `None`.

    Called by `load_blocks` for each variable whose shape differs under
    `on_mismatch="adapt"`.

    Args:
        var: the source variable's description (`VariableInfo`: key, name, shape, dtype).
        shape: the target variable's shape.
        unit: the target layer holding the variable.
    """
    channels_of = input_channels(var, shape, unit)
    if channels_of is None:
        return None
    have, channels = channels_of
    supported = (
        (channels == 1 and have == 3)
        or (have > 3 and have % 3 == 0 and channels == have // 3)
        or (have == 3 and channels > 1)
    )
    if not supported:
        return None

    def transform(kernel: np.ndarray) -> np.ndarray:
        return adapt_input_channels(kernel, channels)

    return transform


def input_channels(var, shape: tuple, unit) -> tuple[int, int] | None:
    """`(source channels, target channels)` where a plain convolution's kernel differs only in
    its input-channel axis (the one case `"adapt"` knows, supported or not), else `None`."""
    if not _is_plain_conv(unit) or str(var.key) != "0":
        return None
    source = tuple(var.shape)
    target = tuple(shape)
    if len(source) != len(target) or len(source) < 3:
        return None
    if source[:-2] != target[:-2] or source[-1] != target[-1]:
        return None  # only the input-channel axis may differ
    return source[-2], target[-2]


def _is_plain_conv(unit) -> bool:
    convs = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    excluded = (
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
        keras.layers.DepthwiseConv1D,
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv1D,
        keras.layers.SeparableConv2D,
    )
    return isinstance(unit, convs) and not isinstance(unit, excluded)
