"""Source and target tasks for transfer sweeps, as numpy arrays.

A transfer task pairs a *source* task (what the blocks are first trained on) with a *target* task
(where they are reused), both drawn from one dataset:

- `task="split"`: disjoint classes, Yosinski et al.'s A/B halves. The source gets the first half
  of the classes, the target the second half (each relabelled from 0).
- `task="shift"`: the same classes, disjoint images; the target's inputs are changed (`noise`,
  `blur`, `invert`, `rotate`) or its labels permuted (`labels`): the shift types of Lee et al.'s
  surgical fine-tuning.

`shots=N` keeps N training labels per target class (few-shot). The target also gets held-out
validation and test sets. Everything (splits, noise, permutations) is fixed by `seed`.

Datasets: `digits` (scikit-learn's bundled 8x8 handwritten digits: real data, no download),
`cifar10`, `mnist`, `fashion_mnist` (through `keras.datasets`, which downloads them),
`npz:PATH` (a file with `x_train, y_train, x_test, y_test`) and `folder:PATH` (one sub-folder of
images per class, read as `--data folder:PATH` reads one: 1 channel where every image is
greyscale, else RGB; images of several sizes refused unless `image_size` resizes them; the
summary says how they were read). Images come back as float32 NHWC arrays scaled to [0, 1],
labels as int64.

Example:

```python
from keras_blockreuse.sweep.data import make_task

data = make_task("digits", task="shift", shift="noise", shots=10, seed=0)
print(data.summary())
data.x_train.shape   # (100, 8, 8, 1): 10 noisy digits per class
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

DATASETS = ("digits", "cifar10", "mnist", "fashion_mnist")
"""Named datasets; `npz:PATH` and `folder:PATH` are accepted as well."""

TASKS = ("shift", "split")
SHIFTS = ("noise", "blur", "invert", "rotate", "labels")

NOISE_STDDEV = 0.25
"""Standard deviation of the Gaussian input noise of the `noise` shift (images are in [0, 1])."""
BLUR_SIGMA = 1.0
"""Gaussian blur radius, in pixels, of the `blur` shift."""
ROTATE_DEGREES = 90.0
"""Rotation of the `rotate` shift."""
SOURCE_VALIDATION_FRACTION = 0.1


class DataError(ValueError):
    """A dataset cannot be loaded or a task cannot be built from it; the message says why."""


@dataclasses.dataclass(frozen=True, eq=False)
class TransferData:
    """The arrays of one transfer task: a source task and a target task.

    Images are float32 NHWC arrays in [0, 1]; labels are int64 class indices starting at 0.

    Attributes:
        x_source, y_source: the source task's training set.
        x_source_val, y_source_val: the source task's validation set.
        x_train, y_train: the target task's training set (`shots` per class when given).
        x_val, y_val: the target task's validation set.
        x_test, y_test: the target task's test set.
        source_classes: number of source classes.
        target_classes: number of target classes.
        settings: the arguments that built it (dataset, task, shift, shots, seed).
        notes: how the dataset was read, where that is not plain (an image folder's channels,
            a resize), one line each.
    """

    x_source: np.ndarray
    y_source: np.ndarray
    x_source_val: np.ndarray
    y_source_val: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source_classes: int
    target_classes: int
    settings: dict
    notes: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one image, `(height, width, channels)`."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def source_fingerprint(self) -> str:
        """A SHA-256 hex digest of the source arrays: equal digests mean equal source tasks."""
        digest = hashlib.sha256()
        for array in (self.x_source, self.y_source, self.x_source_val, self.y_source_val):
            digest.update(str((array.shape, array.dtype.str)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def summary(self) -> str:
        """One line per task (its size, classes and image shape), and one per note."""
        s = self.settings
        shift = f", shift={s['shift']}" if s["task"] == "shift" else ""
        shots = f", shots={s['shots']}" if s["shots"] else ""
        return (
            f"dataset={s['dataset']}, task={s['task']}{shift}{shots}, seed={s['seed']}, "
            f"images {self.input_shape}\n"
            + "".join(f"{note}\n" for note in self.notes)
            + f"  source: {len(self.x_source)} train / {len(self.x_source_val)} val images, "
            f"{self.source_classes} classes\n"
            f"  target: {len(self.x_train)} train / {len(self.x_val)} val / "
            f"{len(self.x_test)} test images, {self.target_classes} classes"
        )


def load_dataset(name: str, image_size=None) -> tuple[np.ndarray, np.ndarray]:
    """Load every image and label of a dataset as one pool.

    Given train and test splits are concatenated: `make_task` draws its own disjoint splits.
    A `folder:PATH` is read as `--data folder:PATH` reads one (`user_data.read_image_folder`):
    1 channel where every image is greyscale, else RGB; images of several sizes are refused
    unless `image_size` resizes them.

    Args:
        name: `"digits"`, `"cifar10"`, `"mnist"`, `"fashion_mnist"`, `"npz:PATH"` or
            `"folder:PATH"`.
        image_size: `(height, width)` to resize a `folder:PATH`'s images to; None keeps them
            as they are (they must then share one size).

    Returns:
        `(x, y)`: float32 images `(n, height, width, channels)` in [0, 1] and int64 labels
        `0 .. classes - 1`.

    Raises:
        DataError: the name is unknown, a download failed, or a file is missing or malformed.

    Example:

    >>> x, y = load_dataset("digits")
    >>> x.shape, int(y.max())
    ((1797, 8, 8, 1), 9)
    """
    x, y, _ = _load_pool(name, image_size)
    return x, y


def _load_pool(name: str, image_size=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`load_dataset`'s pool and the facts of how it was read (a folder's channels, resize)."""
    if not isinstance(name, str) or not name:
        raise DataError(f"Expected a dataset name, received {name!r}.")
    if image_size is not None and not name.startswith("folder:"):
        raise DataError(f"image_size resizes the images of a folder:PATH dataset; dataset "
                        f"{name!r} is used at its own size.")
    facts: list[str] = []
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.images, bunch.target
    elif name in ("cifar10", "mnist", "fashion_mnist"):
        x, y = _load_keras_dataset(name)
    elif name.startswith("npz:"):
        x, y = _load_npz(name[len("npz:") :])
    elif name.startswith("folder:"):
        x, y, facts = _load_folder(name[len("folder:") :], image_size)
    else:
        raise DataError(
            f"Unknown dataset {name!r}. Expected one of {', '.join(DATASETS)}, "
            "npz:PATH (a .npz file with x_train, y_train, x_test, y_test) or "
            "folder:PATH (one sub-folder of images per class)."
        )
    return (*_normalize(x, y, name), facts)


def make_task(
    dataset: str = "digits",
    task: str = "shift",
    shift: str | None = "noise",
    shots: int | None = 10,
    seed: int = 0,
    source_classes: list[int] | None = None,
    image_size=None,
) -> TransferData:
    """Build a source task and a target task from one dataset.

    Args:
        dataset: a dataset name for `load_dataset`.
        task: `"shift"` (same classes, disjoint images, the target shifted) or `"split"`
            (disjoint classes).
        shift: for `task="shift"`: `"noise"`, `"blur"`, `"invert"`, `"rotate"` or `"labels"`.
            Must be None for `task="split"`.
        shots: training labels per target class, or None for half of each target class.
        seed: fixes every split, the noise and the label permutation.
        source_classes: for `task="split"`, the source's classes (default: the first half);
            the target gets the others.
        image_size: `(height, width)` to resize a `folder:PATH` dataset's images to.

    Returns:
        A `TransferData`.

    Raises:
        DataError: an unknown task or shift, impossible shots, or a dataset error.

    Example:

    >>> data = make_task("digits", task="split", shots=5)
    >>> data.source_classes, data.target_classes, len(data.x_train)
    (5, 5, 25)
    """
    if task not in TASKS:
        raise DataError(f"Unknown task {task!r}. Expected one of: {', '.join(TASKS)}.")
    if task == "shift":
        shift = "noise" if shift is None else shift
        if shift not in SHIFTS:
            raise DataError(f"Unknown shift {shift!r}. Expected one of: {', '.join(SHIFTS)}.")
    elif shift is not None:
        raise DataError(f"A shift applies to task 'shift' only; received shift={shift!r} with "
                        f"task={task!r}.")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise DataError(f"Expected shots to be a positive integer or None, received {shots!r}.")

    x, y, notes = _load_pool(dataset, image_size)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)

    if task == "split":
        if source_classes is None:
            source_set = classes[: len(classes) // 2]
        else:
            unknown = sorted(set(source_classes) - set(classes.tolist()))
            if unknown or not source_classes:
                raise DataError(
                    f"Expected source_classes to be a non-empty subset of {classes.tolist()}, "
                    f"received {source_classes!r}."
                )
            source_set = np.array(sorted(set(source_classes)))
        target_set = np.setdiff1d(classes, source_set)
        if len(source_set) < 2 or len(target_set) < 2:
            raise DataError(
                f"A split needs at least 2 source and 2 target classes; dataset {dataset!r} has "
                f"{len(classes)} classes and the source takes {len(source_set)}."
            )
        source_index = np.flatnonzero(np.isin(y, source_set))
        target_index = np.flatnonzero(np.isin(y, target_set))
        y_source_all = np.searchsorted(source_set, y[source_index])
        y_target_all = np.searchsorted(target_set, y[target_index])
    else:
        source_index, target_index = _stratified_halves(y, rng)
        y_source_all = y[source_index]
        y_target_all = y[target_index]

    x_source_all = x[source_index]
    x_target_all = x[target_index]
    src_train, src_val = _stratified_fraction(y_source_all, SOURCE_VALIDATION_FRACTION, rng)
    train, val, test = _target_splits(y_target_all, shots, rng, dataset)

    x_target_all = x_target_all.copy()
    y_target_all = y_target_all.copy()
    if task == "shift":
        x_target_all, y_target_all = apply_shift(x_target_all, y_target_all, shift, rng)

    settings = {"dataset": dataset, "task": task, "shift": shift if task == "shift" else None,
                "shots": shots, "seed": int(seed)}
    return TransferData(
        x_source=x_source_all[src_train],
        y_source=y_source_all[src_train],
        x_source_val=x_source_all[src_val],
        y_source_val=y_source_all[src_val],
        x_train=x_target_all[train],
        y_train=y_target_all[train],
        x_val=x_target_all[val],
        y_val=y_target_all[val],
        x_test=x_target_all[test],
        y_test=y_target_all[test],
        source_classes=int(len(np.unique(y_source_all))),
        target_classes=int(len(np.unique(y_target_all))),
        settings=settings,
        notes=tuple(notes),
    )


def apply_shift(
    x: np.ndarray, y: np.ndarray, shift: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a distribution shift to images `x` (NHWC, in [0, 1]) or labels `y`.

    `noise` adds Gaussian noise (`NOISE_STDDEV`) and clips to [0, 1]; `blur` blurs each image
    (`BLUR_SIGMA` pixels); `invert` maps v to 1 - v; `rotate` turns every image by
    `ROTATE_DEGREES`; `labels` permutes the classes so that no class keeps its label.

    Example:

    >>> x2, y2 = apply_shift(x, y, "invert", np.random.default_rng(0))
    """
    if shift == "noise":
        noisy = x + rng.normal(0.0, NOISE_STDDEV, size=x.shape).astype(np.float32)
        return np.clip(noisy, 0.0, 1.0).astype(np.float32), y
    if shift == "blur":
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(x, sigma=(0, BLUR_SIGMA, BLUR_SIGMA, 0)).astype(np.float32), y
    if shift == "invert":
        return (1.0 - x).astype(np.float32), y
    if shift == "rotate":
        from scipy.ndimage import rotate

        turned = rotate(x, ROTATE_DEGREES, axes=(2, 1), reshape=False, order=1, mode="constant")
        return np.clip(turned, 0.0, 1.0).astype(np.float32), y
    if shift == "labels":
        # Each class takes the label of the next one along a random cycle: every class moves.
        classes = int(y.max()) + 1
        order = rng.permutation(classes)
        derangement = np.empty(classes, dtype=np.int64)
        derangement[order] = np.roll(order, 1)
        return x, derangement[y]
    raise DataError(f"Unknown shift {shift!r}. Expected one of: {', '.join(SHIFTS)}.")


def _stratified_halves(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first, second = [], []
    for c in np.unique(y):
        index = rng.permutation(np.flatnonzero(y == c))
        half = len(index) // 2
        first.append(index[:half])
        second.append(index[half:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def _stratified_fraction(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    keep, held = [], []
    for c in np.unique(y):
        index = rng.permutation(np.flatnonzero(y == c))
        n_held = max(1, int(round(fraction * len(index))))
        held.append(index[:n_held])
        keep.append(index[n_held:])
    return rng.permutation(np.concatenate(keep)), np.sort(np.concatenate(held))


def _target_splits(
    y: np.ndarray, shots: int | None, rng: np.random.Generator, dataset: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes, counts = np.unique(y, return_counts=True)
    smallest = int(counts.min())
    if shots is not None and shots > smallest - 2:
        raise DataError(
            f"Impossible shots={shots} on dataset {dataset!r}: the smallest target class has "
            f"{smallest} images and each class also needs at least one validation and one test "
            f"image, so shots must be at most {max(smallest - 2, 0)}."
        )
    if smallest < 3:
        raise DataError(
            f"Target class {classes[counts.argmin()]} of dataset {dataset!r} has {smallest} "
            "images; each class needs at least 3 (train, validation, test)."
        )
    train, val, test = [], [], []
    for c in classes:
        index = rng.permutation(np.flatnonzero(y == c))
        n_train = shots if shots is not None else max(1, len(index) // 2)
        rest = index[n_train:]
        n_val = min(max(1, int(round(len(rest) / 3))), len(rest) - 1)
        train.append(index[:n_train])
        val.append(rest[:n_val])
        test.append(rest[n_val:])
    return (rng.permutation(np.concatenate(train)), np.sort(np.concatenate(val)),
            np.sort(np.concatenate(test)))


def _normalize(x, y, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise DataError(
            f"Dataset {name!r}: expected images of shape (n, height, width[, channels]) and n "
            f"labels, received images {x.shape} and labels {y.shape}."
        )
    x = x.astype(np.float32)
    top = float(x.max())
    if top > 1.0:
        x /= top
    _, y = np.unique(y, return_inverse=True)
    return x, y.astype(np.int64)


def _load_keras_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    import keras

    module = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as error:  # keras.utils.get_file raises a bare Exception when offline.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"Could not load dataset {name!r} through keras.datasets, which downloads it "
            f"({reason}). Without a network use --dataset digits (bundled, no download) or a "
            "local copy: --dataset npz:PATH (x_train, y_train, x_test, y_test) or "
            "--dataset folder:PATH."
        ) from error
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise DataError(f"npz dataset: no such file {path!r}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive]
            if missing:
                raise DataError(
                    f"npz dataset {path!r} lacks {', '.join(missing)}; expected arrays x_train, "
                    f"y_train, x_test, y_test, found {', '.join(sorted(archive.files))}."
                )
            x = np.concatenate([archive["x_train"], archive["x_test"]])
            y = np.concatenate([np.reshape(archive["y_train"], -1),
                                np.reshape(archive["y_test"], -1)])
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"npz dataset {path!r} could not be read: {error}") from error
    return x, y


def _load_folder(path: str, image_size=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The pool of a folder of class sub-folders, read as `--data folder:PATH` reads one
    (`user_data.read_image_folder`): the channels the images have, one size (or
    `image_size`), 16-bit PNGs refused; and the facts of how it was read."""
    from keras_blockreuse.sweep.user_data import read_image_folder

    if not os.path.isdir(path):
        raise DataError(f"folder dataset: no such directory {path!r}.")
    parts = [p for p in ("train", "val", "test") if os.path.isdir(os.path.join(path, p))]
    if "train" in parts and len(parts) > 1:
        raise DataError(
            f"folder dataset {path!r} holds {', '.join(p + '/' for p in parts)}: the layout of "
            "--data (your own target's parts), which --dataset would read as classes named "
            f"{', '.join(parts)}. --dataset folder:PATH takes one sub-folder of images per "
            "class and draws its own source and target splits; for your own parts use --data "
            "with --source.")
    x, y, _, facts = read_image_folder(path, image_size)
    return x * (1.0 / 255.0), y, facts
