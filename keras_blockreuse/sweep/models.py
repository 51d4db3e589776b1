"""The target model of a sweep and how it is trained: a `Recipe`.

A recipe holds a zero-argument builder of the target model (the user's function, a
keras.applications family built with `weights=None`, or a built-in model), its block rule,
and the loss, metrics and optimizer of every trial. It travels to the trials by value
(cloudpickle), so a builder defined in a script or a notebook works on every Ray worker.

Example:

```python
from keras_blockreuse.sweep.models import Recipe, resolve_builder

build = resolve_builder("mobilenet_v2", input_shape=(96, 96, 3), outputs=5,
                        activation="softmax", alpha=0.35)
recipe = Recipe(build, loss="sparse_categorical_crossentropy", metrics=("accuracy",))
model = recipe.target_model()          # a BlockModel, grouped by the MobileNetV2 preset
```
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from keras_blockreuse.sweep.options import APPLICATIONS as APPLICATION_NAMES
from keras_blockreuse.sweep.options import MODELS, SweepError

APPLICATIONS: dict[str, tuple[str, str]] = {}
"""Family name -> (keras.applications constructor, module holding its `preprocess_input`)."""
for _name in APPLICATION_NAMES:
    if _name.startswith("vgg"):
        APPLICATIONS[_name] = (_name.upper(), _name)
    elif _name.startswith("resnet"):
        depth, _, v2 = _name[len("resnet"):].partition("_")
        APPLICATIONS[_name] = (f"ResNet{depth}{'V2' if v2 else ''}",
                               "resnet_v2" if v2 else "resnet")
    elif _name.startswith("densenet"):
        APPLICATIONS[_name] = (f"DenseNet{_name[len('densenet'):]}", "densenet")
    elif _name.startswith("mobilenet_v3"):
        APPLICATIONS[_name] = (f"MobileNetV3{_name.rsplit('_', 1)[1].title()}", "mobilenet_v3")
    elif _name == "mobilenet_v2":
        APPLICATIONS[_name] = ("MobileNetV2", "mobilenet_v2")
    elif _name == "mobilenet":
        APPLICATIONS[_name] = ("MobileNet", "mobilenet")
    elif _name.startswith("efficientnet_v2"):
        APPLICATIONS[_name] = (f"EfficientNetV2{_name.rsplit('_', 1)[1].upper()}",
                               "efficientnet_v2")
    elif _name.startswith("efficientnet"):
        APPLICATIONS[_name] = (f"EfficientNet{_name.rsplit('_', 1)[1].upper()}", "efficientnet")
    elif _name == "xception":
        APPLICATIONS[_name] = ("Xception", "xception")
    elif _name.startswith("convnext"):
        APPLICATIONS[_name] = (f"ConvNeXt{_name.split('_', 1)[1].title()}", "convnext")
__all__ = ["APPLICATIONS", "Recipe", "application", "call_builder", "load_builder",
           "output_activation", "preprocess_function", "resolve_builder"]


@dataclasses.dataclass
class Recipe:
    """The target model and its training, as every trial needs them.

    Attributes:
        build: a zero-argument function returning the target `keras.Model` (called after
            the trial's seed is set, so its initialisation is the trial's).
        blocks: the model's block rule (None: a `BlockModel`'s own, else the naming
            convention or a detected keras.applications preset).
        loss, metrics: for `model.compile`; the first metric ranks the policies.
        optimizer: an optimizer name (built with the sweep's learning rate) or a
            `keras.optimizers.Optimizer` (a fresh copy per trial, with its own rate).
    """

    build: Callable[[], Any]
    blocks: Any = None
    loss: Any = "sparse_categorical_crossentropy"
    metrics: Sequence[Any] = ("accuracy",)
    optimizer: Any = "adam"

    def target_model(self):
        """A fresh target model as a `BlockModel` (the same one when it already is one)."""
        import keras

        from keras_blockreuse.model import BlockModel

        model = self.build()
        if not isinstance(model, keras.Model):
            raise SweepError(f"The model builder returned {type(model).__name__}, expected a "
                             "keras.Model.")
        if isinstance(model, BlockModel) and self.blocks is None:
            return model
        return BlockModel.from_model(model, blocks=self.blocks)

    def make_optimizer(self, learning_rate: float):
        import keras

        if isinstance(self.optimizer, str):
            return keras.optimizers.get({"class_name": self.optimizer,
                                         "config": {"learning_rate": float(learning_rate)}})
        return self.optimizer.__class__.from_config(self.optimizer.get_config())

    def compile(self, model, learning_rate: float) -> None:
        # Names stay names: compile resolves "accuracy" by the loss and the output's shape.
        metrics = [m if isinstance(m, str) else _copy(m) for m in self.metrics]
        loss = self.loss if isinstance(self.loss, str) else _copy(self.loss)
        model.compile(optimizer=self.make_optimizer(learning_rate), loss=loss,
                      metrics=metrics)


def _copy(obj):
    """A fresh copy of a Keras loss or metric object (one per compiled model)."""
    if hasattr(obj, "get_config") and hasattr(obj.__class__, "from_config"):
        return obj.__class__.from_config(obj.get_config())
    return obj


def output_activation(loss) -> str | None:
    """The head's activation for a loss given by name: softmax for the categorical
    cross-entropies, sigmoid for binary cross-entropy, none (linear) otherwise."""
    name = loss if isinstance(loss, str) else type(loss).__name__
    name = name.lower().replace("_", "")
    if "categoricalcrossentropy" in name:
        return "softmax"
    if "binarycrossentropy" in name or "binaryfocal" in name:
        return "sigmoid"
    return None


def application(name: str, input_shape, outputs: int, activation: str | None = "softmax",
                **kwargs):
    """A keras.applications model by family name, with `weights=None`, the given input shape,
    `outputs` units in its head and `activation` on them.

    Raises:
        SweepError: an unknown family, or arguments the constructor refuses.
    """
    import keras

    if name not in APPLICATIONS:
        raise SweepError(f"Unknown keras.applications family {name!r}. Expected one of: "
                         f"{', '.join(APPLICATIONS)}.")
    constructor = getattr(keras.applications, APPLICATIONS[name][0])
    try:
        return constructor(input_shape=tuple(input_shape), weights=None, classes=int(outputs),
                           classifier_activation=activation, **kwargs)
    except (TypeError, ValueError) as error:
        raise SweepError(f"keras.applications.{APPLICATIONS[name][0]}(input_shape="
                         f"{tuple(input_shape)}, classes={outputs}, {kwargs}) failed: "
                         f"{error}") from None


def preprocess_function(name: str):
    """The family's `preprocess_input` (pixels 0-255 in, what its ImageNet weights expect)."""
    import keras

    return getattr(keras.applications, APPLICATIONS[name][1]).preprocess_input


def load_builder(spec: str) -> Callable:
    """The function of `module.path:function` or `path/to/file.py:function`.

    A file is loaded as a module of its own (its name derived from the path); either way the
    function travels to the trials by value.

    Raises:
        SweepError: the module or file cannot be imported, or has no such function.
    """
    where, _, name = str(spec).rpartition(":")
    try:
        if where.endswith(".py"):
            path = os.path.abspath(where)
            module_name = "_which_blocks_" + "".join(
                c if c.isalnum() else "_" for c in os.path.splitext(path)[0])
            loader = importlib.util.spec_from_file_location(module_name, path)
            if loader is None or not os.path.isfile(path):
                raise SweepError(f"--model {spec}: no such file {where!r}.")
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except SweepError:
        raise
    except Exception as error:  # the user's module failed to import: say so
        raise SweepError(f"--model {spec}: could not import {where!r}: "
                         f"{type(error).__name__}: {error}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise SweepError(f"--model {spec}: {where!r} has no function {name!r}.")
    return function


def call_builder(function: Callable, input_shape=None, num_classes: int | None = None):
    """Call a model builder with those of `input_shape=` and `num_classes=` it accepts."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {}
    if input_shape is not None and ("input_shape" in parameters or takes_any):
        kwargs["input_shape"] = tuple(input_shape)
    if num_classes is not None and ("num_classes" in parameters or takes_any):
        kwargs["num_classes"] = int(num_classes)
    return function(**kwargs)


def resolve_builder(model: str | Callable, input_shape, outputs: int,
                    activation: str | None = "softmax", **kwargs) -> Callable[[], Any]:
    """A zero-argument builder of the target model: a built-in model's name, a
    keras.applications family name (`kwargs` go to its constructor), `module:function`,
    `file.py:function`, or a function (called with `input_shape=` and `num_classes=` where it
    takes them)."""
    if callable(model):
        return functools.partial(call_builder, model, input_shape, outputs)
    if model in MODELS:
        from keras_blockreuse.sweep.zoo import build_model

        return functools.partial(build_model, model, tuple(input_shape), int(outputs),
                                 name="target")
    if model in APPLICATIONS:
        return functools.partial(application, model, tuple(input_shape), int(outputs),
                                 activation, **kwargs)
    return functools.partial(call_builder, load_builder(model), input_shape, outputs)


def pack(recipe: Recipe) -> bytes:
    """The recipe as bytes for Ray's object store, its builder's own module pickled by value
    (so that a function of a script, a test file or a notebook needs no import on workers)."""
    from ray import cloudpickle

    modules = [m for m in _user_modules(recipe.build) if m in sys.modules]
    for name in modules:
        cloudpickle.register_pickle_by_value(sys.modules[name])
    try:
        return cloudpickle.dumps(recipe)
    finally:
        for name in modules:
            cloudpickle.unregister_pickle_by_value(sys.modules[name])


def unpack(blob: bytes | Recipe) -> Recipe:
    """The recipe of `pack` (a `Recipe` passes through)."""
    if isinstance(blob, Recipe):
        return blob
    from ray import cloudpickle

    return cloudpickle.loads(blob)


def _user_modules(build) -> list[str]:
    """The modules of the user's functions inside a builder (partials unwrapped), except the
    installed packages' and `__main__` (pickled by value anyway)."""
    found, todo = [], [build]
    while todo:
        item = todo.pop()
        if isinstance(item, functools.partial):
            todo.extend([item.func, *item.args, *item.keywords.values()])
            continue
        module = getattr(item, "__module__", None) if callable(item) else None
        if not module or module == "__main__" or module.split(".")[0] in (
                "keras_blockreuse", "keras", "tensorflow", "builtins", "functools"):
            continue
        file = getattr(sys.modules.get(module), "__file__", "") or ""
        if "site-packages" in file or "dist-packages" in file:
            continue
        found.append(module)
    return found
