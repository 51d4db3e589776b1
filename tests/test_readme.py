"""Every fenced ```python block of README.md runs, in order, so the README cannot drift.

How the blocks run (the harness; nothing else about them is changed):

- In the order they appear, in one namespace, as a reader pasting them into one Python session
  would: a block sees the names earlier blocks defined (`cnn`, `resnet`, `model`, ...). One
  test per block; a test first runs any earlier block not yet run, so `-k` on one block works.
- Each `## ` section of the README runs in its own empty folder under pytest's temporary folder,
  as separate projects would: files one section writes (`ckpt/`, `resnet50.blocks.h5`) are seen
  by its later blocks only.
- Sizes are the README's own: epochs, scenes and models run as written. What is small is the
  stand-in data. One exception, for time: in the sections named in `MAX_EPOCHS`, each
  `fit(..., epochs=N)` runs at most that many epochs (`epochs=min(N, initial_epoch + cap)`,
  passed by keyword, through a patch of `keras.Model.fit` that lasts only while the block runs).
- Stand-ins: the names a block uses but no block of its section defines are the reader's own
  data and models. Before a block runs, each such name that has a stand-in is bound to a fresh
  one from `STAND_INS` below, once per section (so one section's `build_model` or `x` never
  stands in for another section's reader-provided one); a name with neither a stand-in nor an
  earlier definition fails the test with the list of names to add. Files the README loads but never writes are made from `STAND_IN_FILES` when a
  block names them and they do not exist.

  | name | stand-in |
  |---|---|
  | `x`, `y` | 32 random 32x32x3 images, labels 0-9 (the seed workflow's CIFAR-10 data) |
  | `x_train`, `y_train`, `x_val`, `y_val` | 32 / 8 random 16x16x3 images, labels 0-9 |
  | `build_model` | `tests.helpers.seed_cnn` (16x16x3 input, 10 classes) |
  | `inputs`, `outputs` | the input and output of a small functional seed CNN |
  | `any_keras_model`, `keras_model` | `tests.helpers.seed_cnn()`, a plain `keras.Sequential` |
  | `path`, `source` | `"stand_in.blocks.h5"` |
  | `classifier` | `keras_blockreuse.sweep.zoo.seed_cnn()` trained 1 epoch on the bundled digits |
  | `grey_model` | `ResNet50(weights=None, include_top=False, input_shape=(32, 32, 1))` |
  | `keras2_weights.h5` | `tf_keras.applications.ResNet50(weights=None, include_top=False)`'s weights, a real Keras 2 file (skipped without tf-keras) |
  | `old.weights.h5` | `ResNet50(weights=None)`'s weights with every `name` attribute removed, as Keras < 3.6 wrote them |

- A block that needs what no test can have (a download, ImageNet weights, a cluster) is
  skipped when the last non-blank line before its fence is an HTML comment, invisible on
  GitHub:

  ```
  <!-- readme-test: skip (needs ImageNet weights) -->
  ```

  The reason in parentheses is the test's skip reason. Use it only for such resources; a block
  that is merely slow runs (the block tests are marked slow).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import functools
import os
import re
from unittest import mock

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")


@dataclasses.dataclass(frozen=True)
class Block:
    index: int
    line: int  # of the opening fence, 1-based
    section: str
    code: str
    skip: str | None  # the reason, when marked


def readme_blocks(text: str) -> list[Block]:
    """The fenced ```python blocks of a markdown text, with their section and skip marker."""
    blocks, section, previous = [], "top", ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = re.match(r"^(\s*)(`{3,})(.*)$", line)
        if fence:
            indent, ticks, info = fence.groups()
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(ticks):
                end += 1
            if info.strip().split()[:1] == ["python"]:
                code = "\n".join(body[len(indent):] for body in lines[i + 1:end])
                marker = SKIP.search(previous)
                blocks.append(Block(len(blocks), i + 1, section, code,
                                    marker.group("reason") if marker else None))
            i, previous = end + 1, ""
            continue
        if line.strip():
            previous = line
        i += 1
    return blocks


def test_the_block_reader_finds_fences_sections_and_markers():
    text = ("## A\n\n```python\na = 1\n```\n\n<!-- readme-test: skip (needs a GPU) -->\n"
            "```python\nb = 2\n```\n## B\n```bash\nls\n```\n- item:\n\n  ```python\n  c = 3\n"
            "  ```\n")
    blocks = readme_blocks(text)
    assert [(b.section, b.code, b.skip) for b in blocks] == [
        ("A", "a = 1", None), ("A", "b = 2", "needs a GPU"), ("B", "c = 3", None)]
    assert [b.line for b in blocks] == [3, 8, 17]


# --- stand-ins ---------------------------------------------------------------------------


def _images(n, size, seed):
    rng = np.random.default_rng(seed)
    return (rng.random((n, size, size, 3), dtype=np.float32),
            rng.integers(0, 10, size=n).astype("int64"))


@functools.cache
def _functional():
    """One small functional seed CNN's (input, output)."""
    import keras

    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="block_1_0")(inputs)
    h = keras.layers.Conv2D(4, 3, activation="relu", name="block_1_1")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, name="dense_1")(h)
    return inputs, outputs


def _seed_cnn(name):
    from tests.helpers import seed_cnn

    return seed_cnn(name=name)


def _classifier():
    from keras_blockreuse.detection.data import digit_split
    from keras_blockreuse.sweep.zoo import seed_cnn

    images, labels = digit_split("train")
    model = seed_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images[..., None], labels, epochs=1, verbose=0)
    return model


def _grey_model():
    import keras

    return keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 1))


STAND_INS = {
    "x": lambda: _images(32, 32, 0)[0],
    "y": lambda: _images(32, 32, 0)[1],
    "x_train": lambda: _images(32, 16, 1)[0],
    "y_train": lambda: _images(32, 16, 1)[1],
    "x_val": lambda: _images(8, 16, 2)[0],
    "y_val": lambda: _images(8, 16, 2)[1],
    "build_model": lambda: (lambda: _seed_cnn("model")),
    "inputs": lambda: _functional()[0],
    "outputs": lambda: _functional()[1],
    "any_keras_model": lambda: _seed_cnn("any_keras_model"),
    "keras_model": lambda: _seed_cnn("keras_model"),
    "path": lambda: "stand_in.blocks.h5",
    "source": lambda: "stand_in.blocks.h5",
    "classifier": _classifier,
    "grey_model": _grey_model,
}


def _keras2_file(path):
    tf_keras = pytest.importorskip("tf_keras", reason="tf-keras makes the real Keras 2 file")
    tf_keras.applications.ResNet50(weights=None, include_top=False).save_weights(path)
    assert path.endswith(".h5") and not path.endswith(".weights.h5")


def _old_weights_file(path):
    import h5py
    import keras

    keras.applications.ResNet50(weights=None).save_weights(path)
    with h5py.File(path, "a") as f:
        groups = []
        f.visititems(lambda _, obj: groups.append(obj) if isinstance(obj, h5py.Group) else None)
        for group in groups:
            if "name" in group.attrs:
                del group.attrs["name"]


STAND_IN_FILES = {
    "keras2_weights.h5": _keras2_file,
    "old.weights.h5": _old_weights_file,
}


# Section title -> the most epochs one `fit` call of its blocks runs (see the docstring).
MAX_EPOCHS = {"From classification to detection": 1}


@contextlib.contextmanager
def _max_epochs(cap: int | None):
    if cap is None:
        yield
        return
    import keras

    fit = keras.Model.fit

    def capped_fit(self, *args, **kwargs):
        if "epochs" in kwargs:
            kwargs["epochs"] = min(kwargs["epochs"], kwargs.get("initial_epoch", 0) + cap)
        return fit(self, *args, **kwargs)

    with mock.patch.object(keras.Model, "fit", capped_fit):
        yield


def _free_names(code: str) -> set[str]:
    """Names a block reads but never binds (assignments, imports, defs, parameters)."""
    tree = ast.parse(code)
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound - set(dir(builtins))


def _bound_names(code: str) -> set[str]:
    """The names a block binds (assignments, imports, functions, classes)."""
    bound = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
    return bound


# --- running -----------------------------------------------------------------------------

BLOCKS = readme_blocks(open(README, encoding="utf-8").read())


class ReadmeSession:
    """The namespace the README's blocks share, and which of them have run."""

    def __init__(self, folder):
        self.folder = folder
        self.namespace: dict = {"__name__": "__readme__"}
        self.attempted: set[int] = set()
        self.section_names: dict[str, set[str]] = {}  # names each section bound so far

    def run(self, block: Block) -> None:
        self.attempted.add(block.index)
        slug = re.sub(r"[^a-z0-9]+", "-", block.section.lower()).strip("-") or "top"
        folder = os.path.join(self.folder, slug)
        os.makedirs(folder, exist_ok=True)
        previous = os.getcwd()
        os.chdir(folder)
        try:
            missing = sorted(n for n in _free_names(block.code)
                             if n not in self.namespace and n not in STAND_INS)
            if missing:
                pytest.fail(
                    f"README.md line {block.line} uses {missing}, which no earlier block defines "
                    "and tests/test_readme.py has no stand-in for: define them in the README or "
                    "add stand-ins to STAND_INS.")
            own = self.section_names.setdefault(block.section, set())
            for name in sorted(_free_names(block.code) - own):
                if name in STAND_INS:  # the reader's own, in this section: a fresh stand-in
                    self.namespace[name] = STAND_INS[name]()
                    own.add(name)
            own |= _bound_names(block.code)
            for name, make in STAND_IN_FILES.items():
                if re.search(rf"[\"']{re.escape(name)}[\"']", block.code) and \
                        not os.path.exists(name):
                    make(name)
            code = compile(block.code, f"README.md:{block.line}", "exec")
            with _max_epochs(MAX_EPOCHS.get(block.section)):
                exec(code, self.namespace)
        finally:
            os.chdir(previous)


@pytest.fixture(scope="module")
def readme_session(tmp_path_factory):
    return ReadmeSession(str(tmp_path_factory.mktemp("readme")))


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5, [b.line for b in BLOCKS]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{b.index:02d}-line{b.line}" for b in BLOCKS])
def test_readme_block_runs(readme_session, block):
    for earlier in BLOCKS[:block.index]:
        if earlier.index not in readme_session.attempted and earlier.skip is None:
            try:
                readme_session.run(earlier)
            except Exception as e:  # noqa: BLE001 - named in the failure
                pytest.fail(f"an earlier README block (line {earlier.line}) failed: "
                            f"{type(e).__name__}: {e}")
    if block.skip is not None:
        readme_session.attempted.add(block.index)
        pytest.skip(f"README.md line {block.line}: {block.skip}")
    readme_session.run(block)
