"""The user's own target data for a sweep: arrays, a `tf.data.Dataset`, an `.npz` file or an
image folder, as train / validation / test arrays.

The data is used as given: no shift, no rescaling, no resizing unless asked (`image_size`).
Missing parts are split from the training set, seeded (`seed`) and stratified when the labels
are integer classes: validation (a fifth of train) where none is given, test (a fifth of what
is left) where none is given. A folder without `train/`, `val/`, `test/` sub-folders is split
60 / 20 / 20. Such a split keeps an input and its exact copies (duplicate files, repeated
arrays) in one part, and the description says how many copies there were.

Parts that share samples are refused: an input found, byte for byte (in the parts' common
dtype), in train and in validation or test, or in validation and in test, under the same label
or another, would have the verdict measured partly on training samples or chosen and reported
on the same ones. The parts are compared as given, before any is split off, and the error
says which share how many samples, with their indices (an image's file). Copies within one
part are fine; those under different labels are said in the description (how many, one
example), since no model is right on every such copy. Hashing costs about 0.1 s per 60,000 28x28 images. Inputs or labels of dtype
object (Python objects) are refused: their bytes are references. Inputs or labels that hold NaN or
infinity are refused, naming the part (and, for labels, the samples as given).

An image folder is read with the channels its images have (from their headers): 1 channel
where every image is greyscale, else 3 (RGB; greyscale images among colour ones repeated to 3
channels). An alpha channel is dropped (pretrained image models take 1 or 3 channels). The
description says what was read. PNGs of 16 bits per channel are refused (Keras's reader
would scale them to 8 bits). A damaged image (a PNG or a JPEG cut short, a file that is no
image) is refused by its file name. A folder with `train/` holds no other part than `val/` and
`test/` (a `validation/` beside them is refused, not ignored); `val/` and `test/` may lack
some of train's classes. For a keras.applications family (`--model resnet50`), which
takes RGB, the sweep repeats greyscale images to 3 channels (`TargetData.as_rgb`).

Example:

```python
from keras_blockreuse.sweep.user_data import from_arrays, load_data

data = from_arrays((x_train, y_train), (x_val, y_val), test=None, seed=0)
data = load_data("folder:photos", seed=0, image_size=(96, 96))
print(data.summary())
```
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

from keras_blockreuse.sweep.data import DataError

HELD_OUT_FRACTION = 0.2
"""The share of the training set split off as validation (or test) where none is given."""
SHARE_TOLERANCE = 0.05
"""How far (a fraction of the samples) a part split off may be from its stated share before the
description says its actual size: keeping copies together can move it far (12 copies of one
input in 72 samples made a 20% part 37%)."""
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
"""What `keras.utils.image_dataset_from_directory` reads."""
__all__ = ["HELD_OUT_FRACTION", "TargetData", "from_arrays", "load_data", "read_image_folder"]


@dataclasses.dataclass(frozen=True, eq=False)
class TargetData:
    """The arrays of the user's target task, with the attributes a sweep trial reads.

    Attributes:
        x_train, y_train, x_val, y_val, x_test, y_test: the three splits.
        description: where the data came from and how it was split (one line per fact).
        class_names: for an image folder, the class of each label index; else None.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    description: str
    class_names: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, without the batch dimension."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def target_classes(self) -> int | None:
        """`max label + 1` for integer class labels (one per sample); None otherwise."""
        if not _is_classes(self.y_train):
            return None
        top = max(int(y.max()) for y in (self.y_train, self.y_val, self.y_test) if len(y))
        return top + 1

    @property
    def label_width(self) -> int:
        """Values per label: 1 for a class index or a scalar, else the label's size."""
        return int(np.prod(self.y_train.shape[1:], dtype=int)) if self.y_train.ndim > 1 else 1

    def digest(self) -> str:
        """A checksum of every split's inputs and labels (shapes, dtypes and bytes): a resumed
        sweep compares it with the one it was started with."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
        return h.hexdigest()

    def summary(self) -> str:
        return (f"{self.description}\n  target: {len(self.x_train)} train / {len(self.x_val)} "
                f"val / {len(self.x_test)} test, inputs {self.input_shape}, {self.label_kind()}")

    def label_kind(self) -> str:
        """What the labels are, in words: `"3 classes"` for integer class labels; else how
        many values each sample's target holds and what they are: `"targets: one value per
        sample, 0.0125 to 9.98"` (a regression), `"targets: 3 values per sample, each 0 or
        1"` (multi-label)."""
        classes = self.target_classes
        if classes is not None:
            return f"{classes} classes"
        ys = [y for y in (self.y_train, self.y_val, self.y_test) if y.size]
        width = self.label_width
        count = "one value" if width == 1 else f"{width} values"
        if not ys or any(y.dtype.kind not in "biuf" for y in ys):
            return f"targets: {count} per sample"
        values = np.concatenate([np.ravel(y) for y in ys]).astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and np.all((finite == 0) | (finite == 1)):
            what = "0 or 1" if width == 1 else "each 0 or 1"
        elif finite.size:
            what = f"{finite.min():.4g} to {finite.max():.4g}"
        else:
            what = "none finite"
        if finite.size < values.size and finite.size:
            what += f" ({values.size - finite.size} not finite)"
        return f"targets: {count} per sample, {what}"

    def as_classes(self) -> TargetData:
        """The same data with its labels as class indices, for a sparse categorical loss:
        integer labels, or float labels that are whole numbers (cast, as Keras accepts them).

        Raises:
            DataError: labels that are not one class index per sample; negative labels;
                labels that skip a class train has no sample of (1..3); or validation or test
                labels train does not hold (a mistyped 4 among 0..2). The model gets
                `max label + 1` outputs, so these would add classes no sample trains.
        """
        ys = (self.y_train, self.y_val, self.y_test)
        if all(y.dtype.kind == "f" and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1))
               and np.all(np.isfinite(y)) and np.all(y == np.round(y)) for y in ys):
            ys = tuple(y.astype(np.int64) for y in ys)
        if not all(_is_classes(y) for y in ys):
            return self  # the loss says what it needs (api: "needs integer class labels")
        _check_classes(*ys)
        return dataclasses.replace(self, y_train=ys[0], y_val=ys[1], y_test=ys[2])

    def not_classes(self) -> str:
        """Why the labels are not class indices, in words, with what to do, for a sparse
        categorical loss's refusal: `"the labels have shape () and dtype <U5: class names
        ('cat', 'dog', ...); number the classes 0..k-1"`."""
        y = self.y_train
        text = f"the labels have shape {y.shape[1:]} and dtype {y.dtype}"
        if y.dtype.kind in "USO":
            names = sorted({str(v) for v in np.ravel(y)[:1000]})
            shown = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
            return (f"{text}: class names ({shown}); number the classes 0..k-1 (for example "
                    "np.unique(y, return_inverse=True)[1], with the same numbering for every "
                    "part)")
        if y.dtype.kind == "b":
            return f"{text}: booleans; pass them as integers (y.astype(int))"
        if y.ndim == 2 and y.shape[1] > 1 and np.all((y == 0) | (y == 1)) and np.all(
                y.sum(axis=1) == 1):
            return (f"{text}: one-hot rows; use the categorical_crossentropy loss, or pass "
                    "their class indices (y.argmax(axis=1))")
        return text

    def as_rgb(self, why: str) -> TargetData:
        """Greyscale images `(height, width, 1)` repeated to 3 channels, and `why` in the
        description; other inputs as they are."""
        if len(self.input_shape) != 3 or self.input_shape[-1] != 1:
            return self
        data = self.preprocessed(lambda x: np.repeat(x, 3, axis=-1))
        return dataclasses.replace(data, description=f"{self.description}\n  greyscale "
                                   f"repeated to 3 channels: {why}")

    def preprocessed(self, function) -> TargetData:
        """The same data with `function` applied to every split's inputs."""
        return dataclasses.replace(
            self, x_train=function(self.x_train), x_val=function(self.x_val),
            x_test=function(self.x_test))


def from_arrays(train, validation, test=None, seed: int = 0,
                description: str = "data: arrays") -> TargetData:
    """Target data from `(x, y)` pairs of arrays or finite `tf.data.Dataset`s of `(x, y)`.

    A dataset is read once, here, into arrays (batched or not; it must fit in memory), so
    that the trials receive it through Ray's object store once. Its own batching and
    shuffling are not kept: the sweep batches with its `batch_size`.

    Args:
        train: the training set.
        validation: the validation set, which chooses the winner; required.
        test: the test set, reported only; None splits `HELD_OUT_FRACTION` of train off.
        seed: fixes that split.

    Raises:
        DataError: a part that is not an `(x, y)` pair or dataset, x and y of different
            lengths, an infinite dataset, inputs of different shapes across the parts, or
            samples two parts share (see the module docstring).
    """
    if validation is None:
        raise DataError("validation is required: it chooses the winning policy (the test set "
                        "is only reported).")
    x_train, y_train = _pair(train, "train")
    x_val, y_val = _pair(validation, "validation")
    given = [("train", x_train, y_train), ("validation", x_val, y_val)]
    if test is not None:
        given.append(("test", *_pair(test, "test")))
    _refuse_unfinite_labels([(name, y) for name, _, y in given])
    _check_overlap(given)
    facts = [description, *_relabelled_copies(given)]
    if test is None:
        facts.append(f"  test: {HELD_OUT_FRACTION:.0%} of train, split with seed {seed}")
        (x_train, y_train), (x_test, y_test) = _split(x_train, y_train, seed, "train",
                                                      facts=facts, part="test")
    else:
        x_test, y_test = given[2][1:]
    return _checked(x_train, y_train, x_val, y_val, x_test, y_test, "\n".join(facts))


def load_data(spec: str, seed: int = 0, image_size: Sequence[int] | None = None) -> TargetData:
    """Target data from `npz:PATH` or `folder:PATH` (see the module docstring).

    Args:
        spec: `npz:PATH` (arrays `x_train, y_train, x_test, y_test`, optionally `x_val,
            y_val`) or `folder:PATH` (class sub-folders of images, or `train/`, `val/`,
            `test/` folders of class sub-folders).
        seed: fixes the splits of the parts not given.
        image_size: `(height, width)` to resize images to; None keeps them as they are (the
            images of a folder must then share one size).

    Raises:
        DataError: a missing or malformed file or folder, images of several sizes without
            `image_size`, classes too small to split, or samples two parts share.
    """
    kind, _, path = str(spec).partition(":")
    if kind == "npz":
        return _load_npz(path, seed, image_size)
    if kind == "folder":
        return _load_folder(path, seed, image_size)
    raise DataError(f"Expected npz:PATH or folder:PATH, received {spec!r}.")


# --- arrays ---------------------------------------------------------------------------------


def _pair(part, name: str) -> tuple[np.ndarray, np.ndarray]:
    if _is_dataset(part):
        return _read_dataset(part, name)
    if isinstance(part, (tuple, list)) and len(part) == 2:
        _one_array(part[0], name)
        x, y = np.asarray(part[0]), np.asarray(part[1])
        if x.ndim == 0 or y.ndim == 0:
            raise DataError(f"{name}: expected x and y with one entry per sample, received "
                            f"x of shape {x.shape} and y of shape {y.shape}.")
        if len(x) != len(y):
            raise DataError(f"{name}: x has {len(x)} samples but y has {len(y)}.")
        return x, y
    raise DataError(f"{name}: expected (x, y) arrays or a tf.data.Dataset of (x, y), received "
                    f"{type(part).__name__}.")


def _one_array(x, name: str) -> None:
    """Refuses inputs that are not one array (a dict or list of inputs, for a model with
    several inputs): the sweep feeds one array of inputs."""
    if isinstance(x, Mapping) or (isinstance(x, (tuple, list)) and x
                                  and not np.isscalar(x[0]) and np.ndim(x[0]) > 0
                                  and len({np.shape(a) for a in x}) > 1):
        what = (f"a dict of inputs {sorted(map(str, x))}" if isinstance(x, Mapping)
                else f"a {type(x).__name__} of {len(x)} inputs")
        raise DataError(f"{name}: x is {what}; the sweep feeds one array of inputs to a model "
                        "with one input. Pass x as one array (or a dataset of (x, y) with x "
                        "one tensor).")


def _is_dataset(part) -> bool:
    return type(part).__module__.startswith("tensorflow") and hasattr(part, "element_spec")


def _read_dataset(dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise DataError(f"{name}: expected a tf.data.Dataset of (x, y) elements, received "
                        f"elements {spec}.")
    if not isinstance(spec[0], tf.TensorSpec):
        _one_array(spec[0], name)
        raise DataError(f"{name}: the dataset's x is {type(spec[0]).__name__} {spec[0]}; the "
                        "sweep feeds one dense array of inputs.")
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise DataError(f"{name}: the tf.data.Dataset is infinite (repeat()); pass a finite "
                        "one, it is read once into memory.")
    batched = spec[0].shape.rank is not None and spec[0].shape.rank >= 1 and \
        spec[0].shape[0] is None
    xs, ys = [], []
    for x, y in dataset.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError(f"{name}: the tf.data.Dataset is empty.")
    join = np.concatenate if batched else np.stack
    return join(xs), join(ys)


def _checked(x_train, y_train, x_val, y_val, x_test, y_test, description,
             class_names=None) -> TargetData:
    shapes = {n: x.shape[1:] for n, x in (("train", x_train), ("validation", x_val),
                                          ("test", x_test))}
    if len(set(shapes.values())) != 1:
        raise DataError(f"Inputs of different shapes across the parts: {shapes}.")
    for name, x in (("train", x_train), ("validation", x_val), ("test", x_test)):
        if len(x) == 0:
            raise DataError(f"The {name} part is empty.")
        if x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
            raise DataError(f"The {name} inputs hold {int(np.size(x) - np.isfinite(x).sum())} "
                            "NaN or infinite values; every trial would train or score on them.")
    labels = {n: y.shape[1:] for n, y in (("train", y_train), ("validation", y_val),
                                          ("test", y_test))}
    if len(set(labels.values())) != 1:
        raise DataError(f"Labels of different shapes across the parts: {labels} (one sample's "
                        "label each; reshape them alike).")
    # Shared samples were refused in the parts as given (`_check_overlap`, before any split),
    # and `_split` keeps an input's copies on one side: none can be shared here.
    if x_train.dtype.kind in "iub":
        x_train, x_val, x_test = (x.astype(np.float32) for x in (x_train, x_val, x_test))
    return TargetData(x_train, y_train, x_val, y_val, x_test, y_test, description, class_names)


def _check_classes(y_train: np.ndarray, y_val: np.ndarray, y_test: np.ndarray) -> None:
    """Refuses integer class labels that are negative, that skip a class train has no sample
    of (labels 1..3), or that validation or test hold and train does not: the model's class
    count is `max label + 1`, so one mistyped label (a 4 among 0..2) would add classes no
    sample trains, silently."""
    if not all(_is_classes(y) for y in (y_train, y_val, y_test)):
        return
    for name, y in (("train", y_train), ("validation", y_val), ("test", y_test)):
        if len(y) and int(y.min()) < 0:
            raise DataError(f"{name}: class labels must be 0 or more; received "
                            f"{sorted(set(y[y < 0].reshape(-1).tolist()))}.")
    known = set(np.unique(y_train).tolist())
    missing = sorted(set(range(max(known) + 1)) - known)
    if missing:
        raise DataError(
            f"train: class labels run to {max(known)}, so the model would get "
            f"{max(known) + 1} outputs, but train holds no sample of classes "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}: they could never be "
            f"trained. Number the {len(known)} classes 0..{len(known) - 1} (labels "
            "starting at 1, or a subset of a larger label set, shifted down).")
    for name, y in (("validation", y_val), ("test", y_test)):
        extra = sorted(set(np.unique(y).tolist()) - known)
        if extra:
            raise DataError(
                f"{name}: holds class labels {extra[:10]} that train does not (train has "
                f"{len(known)} classes, {min(known)}..{max(known)}): a mistyped label, or a "
                "class with no training sample. The model would get "
                f"{max(max(known), *extra) + 1} outputs, some never trained. Fix the labels, "
                "or give train samples of every class.")


def _is_classes(y: np.ndarray) -> bool:
    return y.dtype.kind in "iu" and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1))


def _split(x, y, seed: int, name: str, fraction: float = HELD_OUT_FRACTION, facts=None,
           part: str = "", of: str = "", whole: int | None = None,
           stated: float | None = None):
    """`((x_kept, y_kept), (x_held, y_held))`, stratified for class labels. Samples whose
    inputs are equal byte for byte stay on one side: a held-out copy of a kept sample would be
    scored as unseen. Without such copies the split is sklearn's `train_test_split` of the
    samples; with them, of the distinct inputs (each copy follows its first), and a line of
    `facts` says so; another says the held-out `part`'s actual size where it is more than
    `SHARE_TOLERANCE` from its `stated` share (default `fraction`) of `whole` samples (default
    `len(x)`) of `of` (default `name`)."""
    from sklearn.model_selection import train_test_split

    keys = _sample_keys(x)
    members: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    firsts = np.array([group[0] for group in members.values()], dtype=np.int64)
    stratify = y.reshape(-1)[firsts] if _is_classes(y) else None
    try:
        kept, held = train_test_split(firsts, test_size=fraction, random_state=seed,
                                      stratify=stratify)
    except ValueError as error:
        distinct = (f"; {len(firsts)} distinct inputs, each with its copies"
                    if len(firsts) < len(x) else "")
        raise DataError(f"Cannot split {fraction:.0%} of {name} ({len(y)} samples{distinct}) "
                        f"off, stratified by class (scikit-learn: {error}). Give that part "
                        "yourself: a val/ or test/ folder, x_val in the npz file, or "
                        "test= in the Python API.") from None
    if len(firsts) < len(x):
        group = {g[0]: g for g in members.values()}
        kept, held = (np.array([i for f in side for i in group[int(f)]], dtype=np.int64)
                      for side in (kept, held))
        fact = f"  {name}: "
        if facts is not None and not any(f.startswith(fact) for f in facts):
            facts.append(f"{fact}{len(x) - len(firsts)} samples are exact copies of others; "
                         "each input's copies were kept in one part")
        whole = len(x) if whole is None else whole
        meant, got = fraction if stated is None else stated, len(held) / whole
        if facts is not None and part and abs(got - meant) > SHARE_TOLERANCE:
            largest = max(len(g) for g in members.values())
            facts.append(f"  {part}: {len(held)} of the {whole} samples of {of or name} "
                         f"({got:.0%}), not {meant:.0%}: each input's copies were kept in one "
                         f"part (one input alone has {largest} samples)")
    return (x[kept], y[kept]), (x[held], y[held])


def _sample_keys(x: np.ndarray) -> list[bytes]:
    """One digest per sample of its input's bytes (blake2b, 16 bytes); the shape and dtype
    are the array's, shared by every sample (never of dtype object: `_refuse_objects`)."""
    import hashlib

    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


def _refuse_unfinite_labels(labels: Sequence[tuple[str, np.ndarray]]) -> None:
    """Refuses labels that hold NaN or infinity, naming the part and its samples as given:
    every trial would train or score on them, and read the NaN loss as a diverged training."""
    for name, y in labels:
        y = np.asarray(y)
        if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
            bad = np.flatnonzero(~np.isfinite(y).reshape(len(y), -1).all(axis=1))
            raise DataError(
                f"The {name} labels hold {int(np.size(y) - np.isfinite(y).sum())} NaN or "
                f"infinite values (samples {bad[:10].tolist()}"
                f"{' ...' if len(bad) > 10 else ''}): every trial would train or score on "
                "them, and its loss and metrics would be NaN, read as a diverged training. "
                "Drop those samples, or fill in their labels.")


def _check_overlap(parts, labels: Mapping | None = None) -> None:
    """Refuses inputs that two parts share, byte for byte: a validation or test sample that is
    also a training sample scores memory, and one shared by validation and test is chosen on
    and reported on. Copies within one part are fine. A copy under another label is a copy
    too (counted in the message): the same input is still the same input.

    `parts`: `(name, x, y)` as the user gave them (before this module splits any off), so
    that the message's indices are the user's. `labels`: `{name: one label per sample}`
    (an image's file), shown instead of indices."""
    _refuse_objects(parts)
    for i, (a, xa, ya) in enumerate(parts):
        for b, xb, yb in parts[i + 1:]:
            if xa.shape == xb.shape and np.array_equal(xa, xb) and np.array_equal(ya, yb):
                raise DataError(
                    f"The {a} and {b} parts are the same samples: "
                    + ("scores on them would measure memory, not transfer. "
                       if a in ("train", "x_train", "train/") else
                       "the verdict would be chosen and reported on the same data. ")
                    + "Pass distinct parts (or test=None to hold a fifth of train out).")
    if len(parts) < 2:
        return
    dtype = np.result_type(*(x.dtype for _, x, _ in parts))
    xs = {name: x.astype(dtype, copy=False) for name, x, _ in parts}
    keys = {name: _sample_keys(xs[name]) for name in xs}
    found = []
    for i, (a, _, ya) in enumerate(parts):
        first: dict[bytes, int] = {}
        for j, key in enumerate(keys[a]):
            first.setdefault(key, j)
        for b, _, yb in parts[i + 1:]:
            pairs = np.array([(first[k], j) for j, k in enumerate(keys[b]) if k in first],
                             dtype=np.int64).reshape(-1, 2)
            if not len(pairs):
                continue
            ia, ib = pairs[:, 0], pairs[:, 1]
            same = (xs[a][ia].reshape(len(ia), -1) == xs[b][ib].reshape(len(ib), -1)).all(1)
            ia, ib = ia[same], ib[same]
            if len(ia):
                relabelled = int((ya[ia].reshape(len(ia), -1)
                                  != yb[ib].reshape(len(ib), -1)).any(1).sum())
                found.append((a, b, ia, ib, relabelled))
    if not found:
        return
    def shown(name, index):
        named = (labels or {}).get(name)
        items = [repr(named[i]) if named is not None else str(i) for i in index[:3].tolist()]
        return f"{name} [" + ", ".join(items) + (", ...]" if len(index) > 3 else "]")

    said = []
    for a, b, ia, ib, relabelled in found:
        said.append(f"{len(ib)} of the {len(xs[b])} {b} samples "
                    + (f"is a copy of a {a} sample" if len(ib) == 1 else
                       f"are copies of {a} samples") + f" ({shown(b, ib)} = {shown(a, ia)})"
                    + (f", {relabelled} of them under another label" if relabelled else ""))
    why = []
    if any(a in ("train", "x_train", "train/") for a, *_ in found):
        why.append("scores on copies of training samples measure memory, not transfer")
    if any(a in ("validation", "x_val", "val/") for a, *_ in found):
        why.append("the verdict would be chosen and reported partly on the same samples")
    if any(r for *_, r in found):
        why.append("an input under another label is still the same input")
    raise DataError(
        "Samples appear in more than one part (inputs equal byte for byte): "
        + "; ".join(said) + ". " + "; ".join(why).capitalize() + ". Remove the copies from "
        "all parts but one (copies within one part are fine); where this library splits a "
        "part off (test=None, no x_val, no val/ folder), it keeps each input's copies in one "
        "part.")


def _relabelled_copies(parts, labels: Mapping | None = None) -> list[str]:
    """The description's lines on inputs found more than once within one part (byte for
    byte) under different labels: one line per part that has any, with their count and one
    example. No model is right on every such copy, so they cap what any policy can score
    there. `parts` and `labels` as `_check_overlap` takes them (the parts as given)."""
    facts = []
    for name, x, y in parts:
        groups: dict[bytes, list[int]] = {}
        for i, key in enumerate(_sample_keys(x)):
            groups.setdefault(key, []).append(i)
        ys = np.ascontiguousarray(y).reshape(len(y), -1)
        found = []  # (first copy, a copy under another label, copies)
        for members in groups.values():
            other = next((j for j in members[1:] if ys[j].tobytes() != ys[members[0]].tobytes()),
                         None)
            if other is not None:
                found.append((members[0], other, len(members)))
        if not found:
            continue
        named = (labels or {}).get(name)
        shown = [repr(named[i]) if named is not None else str(i) for i in found[0][:2]]
        said = [ys[i][0].item() if ys.shape[1] == 1 else ys[i].tolist() for i in found[0][:2]]
        inputs = "1 input appears" if len(found) == 1 else f"{len(found)} inputs appear"
        facts.append(
            f"  {name}: {inputs} more than once under different labels "
            f"({sum(n for *_, n in found)} samples; such as {name} [{shown[0]}] labelled "
            f"{said[0]!r} and [{shown[1]}] labelled {said[1]!r}): no model is right on every "
            "copy, which caps the score any policy can reach")
    return facts


def _refuse_objects(parts) -> None:
    """Refuses inputs or labels of dtype object (Python objects): their bytes are references,
    so copies across parts cannot be found, nor the data checksummed for a resumed sweep."""
    for name, x, y in parts:
        for what, a in (("inputs", x), ("labels", y)):
            if a.dtype.kind == "O":
                raise DataError(
                    f"{name}: {what} of dtype object (Python objects, such as "
                    f"{type(a.reshape(-1)[0]).__name__ if a.size else 'none'}); expected a "
                    "numeric or string array. For text pass np.array(texts, dtype=str); for "
                    "numbers, an array of their numeric dtype.")


def _resize(x: np.ndarray, image_size, name: str) -> np.ndarray:
    if image_size is None:
        return x
    if x.ndim != 4:
        raise DataError(f"image_size resizes images (n, height, width, channels); {name} has "
                        f"shape {x.shape}.")
    import tensorflow as tf

    return tf.image.resize(x.astype(np.float32), tuple(image_size)).numpy()


def _load_npz(path: str, seed: int, image_size) -> TargetData:
    if not os.path.isfile(path):
        raise DataError(f"npz data: no such file {path!r}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in names]
            unknown = names - {"x_train", "y_train", "x_val", "y_val", "x_test", "y_test"}
            if missing or unknown or (("x_val" in names) != ("y_val" in names)):
                raise DataError(
                    f"npz data {path!r}: expected arrays x_train, y_train, x_test, y_test and "
                    f"optionally x_val with y_val; found {', '.join(sorted(names))}.")
            arrays = {k: archive[k] for k in names}
    except DataError:
        raise
    except Exception as error:  # a damaged or non-npz file: say which
        raise DataError(f"npz data {path!r} could not be read: {error}") from error
    facts = [f"data: npz:{path}"]
    for x, y, name in (("x_train", "y_train", "train"), ("x_val", "y_val", "validation"),
                       ("x_test", "y_test", "test")):
        if x in arrays and len(arrays[x]) != len(arrays[y]):
            raise DataError(f"npz data {path!r}: {name} has {len(arrays[x])} inputs but "
                            f"{len(arrays[y])} labels.")
    given = [(x, arrays[x], arrays["y" + x[1:]]) for x in ("x_train", "x_val", "x_test")
             if x in arrays]
    _refuse_unfinite_labels([("y" + name[1:], y) for name, _, y in given])
    _check_overlap(given)
    facts += _relabelled_copies(given)
    train = (arrays["x_train"], arrays["y_train"])
    if "x_val" in arrays:
        val = (arrays["x_val"], arrays["y_val"])
    else:
        facts.append(f"  validation: {HELD_OUT_FRACTION:.0%} of train, split with seed {seed}")
        train, val = _split(*train, seed, "x_train", facts=facts, part="validation")
    test = (arrays["x_test"], arrays["y_test"])
    for (x, y), name in ((train, "train"), (val, "validation"), (test, "test")):
        if len(x) != len(y):
            raise DataError(f"npz data {path!r}: {name} has {len(x)} inputs but {len(y)} labels.")
    if image_size is not None:
        facts.append(f"  resized to {image_size[0]}x{image_size[1]}")
    parts = [(_resize(x, image_size, n), y) for (x, y), n in
             ((train, "x_train"), (val, "x_val"), (test, "x_test"))]
    return _checked(*parts[0], *parts[1], *parts[2], "\n".join(facts))


def _load_folder(path: str, seed: int, image_size) -> TargetData:
    if not os.path.isdir(path):
        raise DataError(f"folder data: no such folder {path!r}.")
    parts = {p: os.path.join(path, p) for p in ("train", "val", "test")
             if os.path.isdir(os.path.join(path, p))}
    facts = [f"data: folder:{path}"]
    if "train" not in parts and parts:
        raise DataError(f"folder data {path!r} has {', '.join(sorted(parts))}/ but no train/.")
    others = sorted(d for d in os.listdir(path) if d not in parts and not d.startswith(".")
                    and os.path.isdir(os.path.join(path, d)))
    if parts and others:
        raise DataError(
            f"folder data {path!r} has train/ and also {', '.join(o + '/' for o in others)}, "
            "which would not be read: the parts are named train/, val/ and test/. Rename "
            "it (validation/ -> val/), or move it out of the folder.")
    roots = parts or {"all": path}
    files = {name: _image_files(root, 2 if name in ("train", "all") else 1)
             for name, root in roots.items()}
    classes = sorted(files["train" if parts else "all"])
    for name, found in files.items():
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"folder data {path!r}: {name}/ has classes {unknown} that "
                            "train/ lacks.")
    loaded = _read_images(path, roots, files, classes, image_size, facts)
    # The user's parts, before any is split off: their files name the copies.
    called = {name: "the folder" if name == "all" else name + "/" for name in loaded}
    named = {}
    for name in loaded:
        found = [os.path.relpath(p, path) for c in classes for p in files[name].get(c, [])]
        if len(found) == len(loaded[name][0]):  # the reader's order: class, then file
            named[called[name]] = found
    given = [(called[name], *loaded[name]) for name in loaded]
    _check_overlap(given, named)
    facts += _relabelled_copies(given, named)
    if not parts:
        facts.append(f"  no train/, val/, test/ folders: 60/20/20 stratified split with seed "
                     f"{seed}")
        (x, y), (x_test, y_test) = _split(*loaded["all"], seed, "the folder", facts=facts,
                                          part="test")
        (x, y), (x_val, y_val) = _split(x, y, seed, "the folder", fraction=0.25, facts=facts,
                                        part="validation", whole=len(loaded["all"][0]),
                                        stated=0.2)
        return _checked(x, y, x_val, y_val, x_test, y_test, "\n".join(facts), tuple(classes))
    x, y = loaded["train"]
    if "val" in loaded:
        x_val, y_val = loaded["val"]
    else:
        facts.append(f"  validation: {HELD_OUT_FRACTION:.0%} of train/, split with seed {seed}")
        (x, y), (x_val, y_val) = _split(x, y, seed, "train/", facts=facts, part="validation")
    if "test" in loaded:
        x_test, y_test = loaded["test"]
    else:
        of = "train/" if "val" in loaded else "what train/ kept after validation"
        facts.append(f"  test: {HELD_OUT_FRACTION:.0%} of {of}, split with seed {seed}")
        (x, y), (x_test, y_test) = _split(x, y, seed, "train/", facts=facts, part="test", of=of)
    return _checked(x, y, x_val, y_val, x_test, y_test, "\n".join(facts), tuple(classes))


def read_image_folder(path: str, image_size: Sequence[int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], list[str]]:
    """Every image of a folder of class sub-folders, read as `folder:PATH` reads them (the
    channels the images have, one size or `image_size`, 16-bit PNGs, hidden or empty folders
    and stray images as the module docstring says), without splitting it.

    Returns:
        `(x, y, class_names, facts)`: float32 images (pixels 0-255), int64 labels (indices
        into `class_names`), and the description's lines on how they were read.

    Raises:
        DataError: no such folder, fewer than 2 classes, images of several sizes without
            `image_size`, 16-bit PNGs, or images outside any class folder.
    """
    if not os.path.isdir(path):
        raise DataError(f"folder data: no such folder {path!r}.")
    files = {"all": _image_files(path, 2)}
    classes = sorted(files["all"])
    facts: list[str] = []
    x, y = _read_images(path, {"all": path}, files, classes, image_size, facts)["all"]
    return x, y.astype(np.int64), tuple(classes), facts


def _read_images(path: str, roots: dict, files: dict, classes: list[str], image_size,
                 facts: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{part: (x, y)}` for each folder of `roots` (`files`: its classes' images), all of one
    size (`image_size`, or the one every image has) and one channel count; appends the facts
    of how they were read (resized, channels) to `facts`."""
    sizes, colours = _headers(files)
    size = tuple(image_size) if image_size is not None else _common_size(sizes, path)
    if image_size is not None:
        facts.append(f"  resized to {size[0]}x{size[1]}")
    color_mode, fact = _color_mode(colours, path)
    facts.append(fact)
    # TensorFlow decodes GIF and BMP to 3 channels only; a grey image's three are equal.
    via_rgb = color_mode == "grayscale" and any(
        not p.lower().endswith((".png", ".jpg", ".jpeg"))
        for found in colours.values() for p in found)
    _refuse_16_bit(files, path)
    return {name: _read_folder(root, classes, sorted(files[name]), size,
                               "rgb" if via_rgb else color_mode, via_rgb)
            for name, root in roots.items()}


def _image_files(root: str, classes: int = 2) -> dict[str, list[str]]:
    """`class -> its image files`, for every sub-folder holding images (hidden ones, such as
    `.ipynb_checkpoints`, and empty ones are no class: counted as one, they would shift every
    label). `classes`: how many classes `root` must hold (train's two; val/ and test/ one).

    Raises:
        DataError: too few classes, or images outside any class folder (never read)."""
    out, stray = {}, []
    for c in sorted(os.listdir(root)):
        folder = os.path.join(root, c)
        if c.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(folder):
            stray.append(c)
        elif os.path.isdir(folder) and not c.startswith("."):
            found = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if found:
                out[c] = found
    if stray:
        raise DataError(f"folder data {root!r} holds {len(stray)} images outside any class "
                        f"folder (such as {stray[0]}), which would not be read: move each into "
                        "the sub-folder of its class.")
    if len(out) < classes:
        raise DataError(f"folder data {root!r}: expected one sub-folder of images per class "
                        f"(at least {classes} with images), found {len(out)}.")
    return out


def _headers(files: dict) -> tuple[dict, dict]:
    """`(sizes, colours)` of every image (read from the headers): each `(height, width)` with
    the first image of that size, and each colour kind (`_colour`) with its images. Each
    file is checked as Pillow can without decoding it (`Image.verify`: a PNG's chunks and
    their CRCs), so that a damaged image is named here. What only decoding finds (a JPEG cut
    short: its header whole, `verify` checks nothing more) is named where TensorFlow decodes
    it (`_read_folder`), which costs nothing more: decoding every image here with Pillow
    took 0.35-0.5 s more per 2,000 32x32 JPEGs, 20-25% of reading them.

    Raises:
        DataError: naming an image that cannot be read."""
    from PIL import Image

    sizes: dict[tuple[int, int], str] = {}
    colours: dict[tuple[str, bool], list[str]] = {}
    for found in files.values():
        for paths in found.values():
            for p in paths:
                try:
                    with Image.open(p) as image:
                        size, colour = (image.height, image.width), _colour(image)
                        image.verify()
                except (OSError, SyntaxError, ValueError, EOFError) as e:
                    raise DataError(_damaged(p, f"{type(e).__name__}: {e}")) from None
                sizes.setdefault(size, p)
                colours.setdefault(colour, []).append(p)
    return sizes, colours


def _damaged(path: str, why: str) -> str:
    """The refusal of an image that cannot be read, naming its file."""
    return (f"folder data: cannot read the image {path!r} ({why}): it is damaged or not an "
            "image. Replace or remove it.")


def _decoder_error(error: Exception) -> str:
    """TensorFlow's decoding error in one line, without tf.data's node and iterator names:
    `InvalidArgumentError: jpeg::Uncompress failed. Invalid JPEG data or crop window`."""
    import re

    text = (getattr(error, "message", None) or str(error)).strip()
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", text.splitlines()[0] if text else "")
    if "transformation with iterator: " in text:  # "...: Iterator::Root::...: the error"
        text = text.split("transformation with iterator: ", 1)[1].split(": ", 1)[-1]
    return f"{type(error).__name__}: {text.rstrip('.')}"


def _colour(image) -> tuple[str, bool]:
    """`("grey" or "colour", has alpha)`: greyscale modes (1, L, LA, I, F) and palettes of
    greys are grey; the rest (RGB, RGBA, CMYK, coloured palettes, ...) are colour."""
    bands = image.getbands()
    alpha = "A" in bands or (bands[0] == "P" and "transparency" in image.info)
    kind = "grey" if bands[0] in ("1", "L", "I", "F") else "colour"
    if bands[0] == "P":
        palette = np.array(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
        kind = "grey" if np.all(palette == palette[:, :1]) else "colour"
    return kind, alpha


def _color_mode(colours: dict, path: str) -> tuple[str, str]:
    """`(color_mode, fact)`: "grayscale" (1 channel) where every image is greyscale, else
    "rgb" (3 channels: greyscale images repeated to 3). An alpha channel is dropped (pretrained
    image models take 1 or 3 channels); the fact says what was read and why."""
    count = {kind: sum(len(p) for (k, _), p in colours.items() if k == kind)
             for kind in ("grey", "colour")}
    alpha = sum(len(p) for (_, a), p in colours.items() if a)
    total = count["grey"] + count["colour"]
    dropped = (f"; {alpha} of the {total} images carry an alpha channel, dropped" if alpha
               else "")
    if not count["colour"]:
        return "grayscale", ("  images read as greyscale (1 channel): every image in the folder "
                             f"is greyscale{dropped}")
    if not count["grey"]:
        return "rgb", ("  images read as RGB (3 channels): every image in the folder is in "
                       f"colour{dropped}")
    example = os.path.relpath(next(p for (k, _), ps in colours.items() if k == "grey"
                                   for p in ps), path)
    return "rgb", (f"  images read as RGB (3 channels): the folder mixes {count['grey']} "
                   f"greyscale images (such as {example}) with {count['colour']} in colour; "
                   f"the greyscale ones are repeated to 3 channels{dropped}")


def _common_size(sizes: dict, path: str) -> tuple[int, int]:
    """The one (height, width) of every image."""
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w} ({os.path.relpath(p, path)})"
                          for (h, w), p in list(sizes.items())[:3])
        raise DataError(f"folder data {path!r} holds images of {len(sizes)} sizes: {shown}. "
                        "Pass --image-size HxW (image_size=) to resize them to one.")
    return next(iter(sizes))


def _read_folder(root: str, classes: list[str], present: list[str], size,
                 color_mode: str = "rgb", first_channel: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The images of `root` and their labels, indices into `classes` (train's); `present`:
    the classes `root` holds images of (a val/ or test/ may lack some). An image TensorFlow
    cannot decode is named: the dataset yields the images in the order of its `file_paths`
    (unshuffled, in order), so the one that failed is the next one."""
    import keras

    pairs: list = []
    paths: list[str] = []
    try:
        dataset = keras.utils.image_dataset_from_directory(
            root, labels="inferred", label_mode="int", class_names=present,
            color_mode=color_mode, image_size=tuple(size), batch_size=None, shuffle=False,
            verbose=False)
        paths = list(getattr(dataset, "file_paths", ()))
        for pair in dataset.as_numpy_iterator():
            pairs.append(pair)
    except Exception as error:
        if len(pairs) < len(paths):  # decoding the next image failed: name it
            raise DataError(_damaged(paths[len(pairs)], _decoder_error(error))) from None
        raise DataError(f"folder data {root!r} could not be read: {error}") from error
    x = np.stack([p[0] for p in pairs]).astype(np.float32)
    index = np.array([classes.index(c) for c in present])
    return (x[..., :1] if first_channel else x), index[np.array([p[1] for p in pairs])]


def _refuse_16_bit(files: dict, path: str) -> None:
    """Refuses PNG images of 16 bits per channel: Keras's image reader scales them to 8 bits
    (a value v becomes about v / 257), which would change the data silently."""
    deep = []
    for found in files.values():
        for paths in found.values():
            for p in paths:
                if p.lower().endswith(".png"):
                    with open(p, "rb") as f:
                        head = f.read(26)
                    if head[12:16] == b"IHDR" and head[24] == 16:
                        deep.append(os.path.relpath(p, path))
    if deep:
        raise DataError(
            f"folder data {path!r}: {len(deep)} PNG images hold 16 bits per channel (such as "
            f"{deep[0]}). Keras's image reader (image_dataset_from_directory) scales them to "
            "8 bits, dividing each value by about 257 (12-bit values 0..4095 would become "
            "0..15), which would change the data silently. Convert them to 8 bits yourself "
            "if that is what you want, or pass the values as arrays (npz:PATH).")
