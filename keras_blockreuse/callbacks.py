"""`BlockCheckpoint`: save a model's blocks during training, and find the newest one to resume.

`BlockCheckpoint` is a Keras callback in the style of `keras.callbacks.ModelCheckpoint` that
writes `.blocks.h5` files: every write is atomic, each file records the epoch, the training
step and the monitored value in its metadata, and `keep_last` prunes the older files this
callback wrote. `latest_checkpoint` returns the newest checkpoint that verifies.

Example:

```python
checkpoint = BlockCheckpoint("ckpt/blocks_{epoch:03d}.blocks.h5", keep_last=3)
model.fit(x, y, validation_data=(x_val, y_val), epochs=10, callbacks=[checkpoint])

path = latest_checkpoint("ckpt")                 # newest checkpoint that verifies, or None
load_blocks(model, path)
model.fit(x, y, epochs=20, initial_epoch=read_blocks(path).metadata["epoch"])
```
"""

from __future__ import annotations

import glob
import math
import os
import string
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_blockreuse.blocks import BlockRule, get_blocks, select
from keras_blockreuse.errors import BlockFileError
from keras_blockreuse.store import SUFFIX, BlockFile, is_temporary, save_blocks

# Metadata keys written by `BlockCheckpoint` into every file; user metadata cannot use them.
RESERVED_METADATA = ("checkpoint", "epoch", "batch", "step", "monitor", "monitor_value", "logs")


class BlockCheckpoint(keras.callbacks.Callback):
    """Saves a model's blocks to a `.blocks.h5` file every epoch or every `save_freq` batches.

    Like `keras.callbacks.ModelCheckpoint`, `filepath` is formatted with `epoch` (1-based),
    `batch` (1-based, when `save_freq` is an integer) and the values in the logs, such as
    `"ckpt/blocks_{epoch:03d}-{val_loss:.3f}.blocks.h5"`; its folder is created. Each write is
    atomic (see `save_blocks`): a crash never leaves a torn checkpoint.

    Every file's metadata records `epoch`, `batch` (or `None`), `step` (the optimizer's
    iteration count), `monitor`, `monitor_value`, the scalar `logs` and `checkpoint` (this
    `filepath` template), besides the user's `metadata`. `latest_checkpoint` uses them to find
    the newest file, and `keep_last` to recognise the files this callback wrote.

    The files hold the model's weights only: optimizer state is not saved.

    Args:
        filepath: the path template; must end in `.blocks.h5`.
        only: block names or globs to save; default every block.
        monitor: the log key compared by `save_best_only`.
        mode: `"auto"`, `"min"` or `"max"`: whether a lower or higher `monitor` is better.
            `"auto"` picks `"min"` for losses and errors, `"max"` for accuracies and scores.
        save_best_only: save only when `monitor` improves on `best`, the best value saved so
            far. `best` starts from `initial_value_threshold` or, when this `filepath` already
            has files (an earlier run being resumed, recognised as for `keep_last`), from the
            best `monitor_value` they record for the same `monitor`, compared in this `mode`,
            whichever is better (`verbose=1` says so): a resumed run saves only epochs that beat
            the earlier run's best file, and `keep_last` never prunes it for a worse one.
            `best` changes only once a file is written: a save that fails leaves it as it was,
            so a later epoch that beats the best file on disk is saved.
        save_freq: `"epoch"`, or an integer number of training batches between saves.
        keep_last: keep only the newest `keep_last` files written with this `filepath`
            (by this callback, or by an earlier run with the same template, recognised by the
            metadata of each file, however the template was spelled: `run/b_{epoch}.blocks.h5`,
            `./run/...` and the absolute path are one template, and with this `monitor`:
            files of a run that monitored another value are never counted or deleted); older
            ones are deleted. Never deletes other files. Default: keep every file.
        metadata: a JSON-serialisable dict stored in every file.
        verbose: 0 (silent) or 1 (one line per save, and with `save_best_only` one line per
            epoch that is not saved, as Keras's `ModelCheckpoint` prints them).
        blocks: the block rule for a model that is not a `BlockModel`.
        initial_value_threshold: the initial `best` with `save_best_only` (as in Keras's
            `ModelCheckpoint`): a file is saved only when `monitor` is better than it.
            Ignored without `save_best_only`. Default: `None` (the first epoch is saved unless
            earlier files have a better value).

    Raises:
        ValueError: an argument out of its range (named with the value received), or with
            `mode="auto"` a `monitor` whose direction is unknown (pass `mode`).
        KeyError: from `fit`, when `filepath` names a key that the logs lack.
        OSError: from `fit`, when a file cannot be written (a full disk): the files on disk
            and `best` are as before the save.

    Example:

    >>> checkpoint = BlockCheckpoint(
    ...     "ckpt/blocks_{epoch:03d}-{val_loss:.3f}.blocks.h5",
    ...     monitor="val_loss", save_best_only=True, keep_last=2)
    >>> model.fit(x, y, validation_split=0.1, epochs=5, callbacks=[checkpoint])
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        only: Sequence[str] | str | None = None,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best_only: bool = False,
        save_freq: str | int = "epoch",
        keep_last: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        verbose: int = 0,
        blocks: BlockRule = None,
        initial_value_threshold: float | None = None,
    ):
        super().__init__()
        self.filepath = os.fspath(filepath)
        if not self.filepath.endswith(SUFFIX):
            raise ValueError(
                f"BlockCheckpoint's `filepath` must end in {SUFFIX!r}. "
                f"Received: filepath={self.filepath!r}"
            )
        self._fields = _template_fields(self.filepath)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"`mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
        if save_freq != "epoch" and not (
            isinstance(save_freq, int) and not isinstance(save_freq, bool) and save_freq > 0
        ):
            raise ValueError(
                f"`save_freq` must be 'epoch' or a positive integer number of batches. "
                f"Received: save_freq={save_freq!r}"
            )
        if keep_last is not None and not (
            isinstance(keep_last, int) and not isinstance(keep_last, bool) and keep_last > 0
        ):
            raise ValueError(
                f"`keep_last` must be None or a positive integer. Received: keep_last={keep_last!r}"
            )
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(
                f"`metadata` must be a dict. Received: {metadata!r} of type "
                f"{type(metadata).__name__}"
            )
        reserved = sorted(set(metadata or {}) & set(RESERVED_METADATA))
        if reserved:
            raise ValueError(
                f"`metadata` keys {reserved} are written by BlockCheckpoint itself; "
                f"choose other names. Reserved: {list(RESERVED_METADATA)}"
            )
        if initial_value_threshold is not None and (
            isinstance(initial_value_threshold, bool)
            or not isinstance(initial_value_threshold, (int, float, np.integer, np.floating))
            or math.isnan(initial_value_threshold)
        ):
            raise ValueError(
                "`initial_value_threshold` must be None or a number. "
                f"Received: initial_value_threshold={initial_value_threshold!r}"
            )
        self.only = only
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = bool(save_best_only)
        self.save_freq = save_freq
        self.keep_last = keep_last
        self.metadata = dict(metadata or {})
        self.verbose = verbose
        self.blocks = blocks
        self.initial_value_threshold = (
            None if initial_value_threshold is None else float(initial_value_threshold)
        )
        self.best: float | None = self.initial_value_threshold
        self.saved: list[str] = []  # files this callback keeps track of, oldest first
        self._adopted = False
        # (monitor value, path) of the earlier run's files, until the first best-only decision
        # (the direction of `auto` needs the compiled metrics, which are built by then).
        self._earlier_values: list[tuple[float, str]] = []
        self._current_epoch = 0
        self._batches_since_save = 0
        self._last_batch: int | None = None

    # --- Keras hooks -------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        select(list(get_blocks(self.model, self.blocks)), self.only, "BlockCheckpoint `only`")
        if self._adopted or (self.keep_last is None and not self.save_best_only):
            return
        self._adopted = True
        # (files of this template that record another monitor are another run's: never
        # counted, never pruned)
        earlier = [(p, m) for p, m in _own_checkpoints(self.filepath)
                   if p not in self.saved and m.get("monitor") == self.monitor]
        if self.keep_last is not None:
            self.saved = [p for p, _ in earlier] + self.saved
        if self.save_best_only:
            for path, metadata in earlier:
                value = metadata.get("monitor_value")
                if (
                    metadata.get("monitor") == self.monitor
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and not math.isnan(value)
                ):
                    self._earlier_values.append((float(value), path))

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        if self._last_batch is None or batch <= self._last_batch:
            self._batches_since_save += batch + 1  # a new epoch: batches are 0-based
        else:
            self._batches_since_save += batch - self._last_batch
        self._last_batch = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    # --- saving ------------------------------------------------------------------------

    def _save(self, epoch: int, batch: int | None, logs) -> str | None:
        logs = dict(logs or {})
        path = self._format_path(epoch, batch, logs)
        current = _scalar(logs.get(self.monitor))
        if self.save_best_only:
            self._start_from_earlier_best(epoch)
            if not self._improved(epoch, current, path, logs):
                return None
        metadata = dict(self.metadata)
        metadata.update(
            checkpoint=self.filepath,
            epoch=epoch + 1,
            batch=None if batch is None else batch + 1,
            step=self._step(),
            monitor=self.monitor,
            monitor_value=current,
            logs={k: v for k, v in ((k, _scalar(v)) for k, v in logs.items()) if v is not None},
        )
        if self.verbose > 0 and not self.save_best_only:  # best-only: _improved said it
            print(f"\nEpoch {epoch + 1}: saving blocks to {path}")
        save_blocks(self.model, path, only=self.only, metadata=metadata, blocks=self.blocks)
        if self.save_best_only and current is not None:
            self.best = current  # only once the file is written: a failed save changes nothing
        if path in self.saved:
            self.saved.remove(path)
        self.saved.append(path)
        self._prune(keep=path)
        return path

    def _format_path(self, epoch: int, batch: int | None, logs: dict) -> str:
        values = dict(logs)
        values["epoch"] = epoch + 1
        if batch is not None:
            values.setdefault("batch", batch + 1)
        try:
            return self.filepath.format(**values)
        except KeyError as e:
            raise KeyError(
                f"BlockCheckpoint cannot format filepath {self.filepath!r}: the key "
                f"{e.args[0]!r} is not among this epoch's values. Available keys: "
                f"{sorted(values)}. Metric keys come from `compile(metrics=...)`; `val_` keys "
                "need validation data; `batch` needs an integer `save_freq`."
            ) from None
        except (ValueError, TypeError, IndexError) as e:
            raise ValueError(
                f"BlockCheckpoint cannot format filepath {self.filepath!r} with the values "
                f"{values}: {e}. Use named fields such as {{epoch:03d}} or {{val_loss:.3f}}."
            ) from None

    def _start_from_earlier_best(self, epoch: int) -> None:
        """`best` becomes the best monitored value among the earlier run's files, if better."""
        if not self._earlier_values:
            return
        values, self._earlier_values = self._earlier_values, []
        lower_is_better = self._lower_is_better()
        value, path = (min if lower_is_better else max)(values, key=lambda vp: vp[0])
        best = self.best
        if best is None or (value < best if lower_is_better else value > best):
            self.best = value
            if self.verbose > 0:
                print(
                    f"\nEpoch {epoch + 1}: {self.monitor} starts from {value:.5f}, the best "
                    f"of {len(values)} earlier file(s) of this template: {path}"
                )

    def _improved(self, epoch: int, current: float | None, path: str, logs: dict) -> bool:
        if current is None:
            warnings.warn(
                f"BlockCheckpoint can save the best blocks only when {self.monitor!r} is in "
                f"the logs; it is not (available: {sorted(logs)}). Saving anyway.",
                stacklevel=3,
            )
            return True
        if math.isnan(current):
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} is NaN, not saving")
            return False
        lower_is_better = self._lower_is_better()
        best = self.best
        if best is None or (current < best if lower_is_better else current > best):
            if self.verbose > 0:
                print(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from "
                    f"{('inf' if lower_is_better else '-inf') if best is None else f'{best:.5f}'}"
                    f" to {current:.5f}, "
                    f"saving blocks to {path}"
                )
            return True
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best:.5f}")
        return False

    def _lower_is_better(self) -> bool:
        if self.mode != "auto":
            return self.mode == "min"
        name = self.monitor.removeprefix("val_")
        for metric in _compiled_metrics(self.model):
            if metric.name == name and getattr(metric, "_direction", None) in ("up", "down"):
                return metric._direction == "down"
        lowered = name.lower()
        if "loss" in lowered or "error" in lowered:
            return True
        if any(word in lowered for word in ("acc", "auc", "precision", "recall", "f1", "iou")):
            return False
        raise ValueError(
            f"BlockCheckpoint cannot tell whether {self.monitor!r} should go up or down. "
            "Pass mode='min' or mode='max'."
        )

    def _step(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        if iterations is None:
            return None
        try:
            return int(keras.ops.convert_to_numpy(iterations))
        except Exception:  # an optimizer that is not built yet
            return None

    def _prune(self, keep: str) -> None:
        if self.keep_last is None:
            return
        while len(self.saved) > self.keep_last:
            old = self.saved.pop(0)
            if old == keep:
                continue
            try:
                os.remove(old)
            except FileNotFoundError:
                pass
            except OSError as e:
                warnings.warn(f"BlockCheckpoint could not delete {old!r}: {e}", stacklevel=3)


def latest_checkpoint(
    folder_or_pattern: str | os.PathLike, model=None, blocks: BlockRule = None
) -> str | None:
    """The newest complete block checkpoint in a folder or matching a pattern, or `None`.

    Candidates are the `.blocks.h5` files in the folder (or those matching a glob pattern, or a
    `BlockCheckpoint` filepath template such as `"ckpt/blocks_{epoch:03d}.blocks.h5"`),
    never temporary files. They are ordered by the epoch and step recorded in their metadata
    (files without them count as older, by modification time); the newest one that verifies
    completely (header, layouts and every value against its checksums) is returned. Files that
    fail verification are skipped with a warning.

    A folder may hold checkpoints of other models: pass `model` (and `blocks`, its block rule,
    for a model that is not a `BlockModel`) to consider only files whose every block is one of
    the model's, with the same layer paths, shapes and dtypes; the others are skipped with a
    warning. Without `model`, prefer the `BlockCheckpoint` template form, which matches only
    that callback's file names.

    Non-regular files (named pipes, devices) are skipped without being opened.

    Example:

    >>> path = latest_checkpoint("ckpt")
    >>> if path is not None:
    ...     load_blocks(model, path)
    ...     initial_epoch = read_blocks(path).metadata["epoch"]
    """
    target = os.fspath(folder_or_pattern)
    if os.path.isdir(target):
        candidates = [os.path.join(target, name) for name in os.listdir(target)]
    else:
        pattern = _template_glob(target) if "{" in target else target
        candidates = glob.glob(pattern)
    candidates = [
        p for p in candidates if p.endswith(SUFFIX) and not is_temporary(p) and os.path.isfile(p)
    ]
    expected = None if model is None else _layouts_of(model, blocks)
    ranked = []
    for path in candidates:
        try:
            with BlockFile(path) as f:
                metadata = f.metadata
                if expected is not None:
                    _check_fits(f, expected, model.name)
            mtime = os.path.getmtime(path)
        except (BlockFileError, OSError) as e:
            warnings.warn(f"latest_checkpoint skips {path!r}: {e}", stacklevel=2)
            continue
        ranked.append((_order_key(metadata, mtime), path))
    for _, path in sorted(ranked, reverse=True):
        try:
            with BlockFile(path) as f:
                f.verify()
        except (BlockFileError, OSError) as e:
            warnings.warn(f"latest_checkpoint skips {path!r}: {e}", stacklevel=2)
            continue
        return path
    return None


# --- helpers ---------------------------------------------------------------------------


def _layouts_of(model, rule: BlockRule) -> dict[str, tuple]:
    """`block -> ((layer path, ((shape, dtype), ...)), ...)` of a model, as a file stores it."""
    from keras_blockreuse.sources.live_model import ModelSource  # imports Keras

    rule = rule if rule is not None else getattr(model, "_block_rule", None)
    source = ModelSource(model, rule)
    return {name: _layout(source.block_layers(name)) for name in source.block_names()}


def _layout(layers) -> tuple:
    return tuple(
        (layer.path, tuple((tuple(v.shape), v.dtype) for v in layer.variables)) for layer in layers
    )


def _check_fits(file: BlockFile, expected: dict[str, tuple], model_name: str) -> None:
    for name in file.block_names:
        if name not in expected:
            raise BlockFileError(
                f"it holds block {name!r}, which model {model_name!r} does not have "
                f"(its blocks: {list(expected)}): a checkpoint of another model"
            )
        if _layout(file.block(name).layers) != expected[name]:
            raise BlockFileError(
                f"its block {name!r} has other layers, shapes or dtypes than model "
                f"{model_name!r}'s: a checkpoint of another model"
            )


def _template_fields(template: str) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError as e:
        raise ValueError(
            f"BlockCheckpoint's `filepath` is not a valid format string: {e}. "
            f"Received: filepath={template!r}"
        ) from None


def _template_glob(template: str) -> str:
    """`"ckpt/b_{epoch:03d}-{val_loss:.2f}.blocks.h5"` -> `"ckpt/b_*-*.blocks.h5"`."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(glob.escape(literal))
        if field is not None:
            parts.append("*")
    return "".join(parts)


def _own_checkpoints(template: str) -> list[tuple[str, dict]]:
    """`(path, metadata)` of the files written by a `BlockCheckpoint` with this template, oldest
    first."""
    found = []
    for path in glob.glob(_template_glob(template)):
        if is_temporary(path) or not path.endswith(SUFFIX) or not os.path.isfile(path):
            continue  # a named pipe would block the open forever: never opened
        try:
            with BlockFile(path) as f:
                metadata = f.metadata
            mtime = os.path.getmtime(path)
        except (BlockFileError, OSError):
            continue  # not verifiably ours: never deleted
        if isinstance(metadata, dict) and _same_template(metadata.get("checkpoint"), template):
            found.append((_order_key(metadata, mtime), path, metadata))
    return [(path, metadata) for _, path, metadata in sorted(found, key=lambda f: f[:2])]


def _same_template(recorded, template: str) -> bool:
    """Whether a file's recorded template is `template`, however each is spelled.

    Both are compared as normalised absolute paths (`run/b_{epoch}`, `./run/b_{epoch}` and
    `/abs/run/b_{epoch}` are one template). A relative recorded template was relative to the
    earlier run's working folder, which is not recorded: it also matches when it names the
    end of `template`'s absolute path (`run/b_{epoch}` in `/abs/run/b_{epoch}`), as the file,
    found by `template`'s pattern, lies where that run wrote it.
    """
    if not isinstance(recorded, str):
        return False
    ours = os.path.abspath(template)
    if os.path.abspath(recorded) == ours:
        return True
    relative = os.path.normpath(recorded)
    return not os.path.isabs(relative) and ours.endswith(os.sep + relative)


def _order_key(metadata, mtime: float) -> tuple:
    metadata = metadata if isinstance(metadata, dict) else {}
    epoch = metadata.get("epoch")
    step = metadata.get("step")
    batch = metadata.get("batch")
    has_epoch = isinstance(epoch, int) and not isinstance(epoch, bool)
    return (
        1 if has_epoch else 0,
        epoch if has_epoch else -1,
        step if isinstance(step, int) else -1,
        batch if isinstance(batch, int) else math.inf,  # an epoch-end save follows its batches
        mtime,
    )


def _scalar(value) -> float | None:
    """A log value as a Python float, or `None` when it is missing or not a scalar."""
    if value is None:
        return None
    try:
        array = np.asarray(keras.ops.convert_to_numpy(value))
    except Exception:
        return None
    if array.size != 1 or not np.issubdtype(array.dtype, np.number):
        return None
    return float(array.reshape(()))


def _compiled_metrics(model) -> list:
    metrics = []
    for metric in getattr(model, "metrics", []) or []:
        metrics.extend(getattr(metric, "metrics", None) or [metric])
    return metrics
