"""The sweep's settings and command line, importable without TensorFlow, Ray or NumPy.

This module uses the standard library only and imports nothing from the package, so that
`sweeps/which_blocks.py` can load it from its file, answer `--help` and reject bad values in a
fraction of a second, and import TensorFlow and Ray only for a sweep that will run. The names
of datasets, tasks, shifts and models repeat those of `keras_blockreuse.sweep.data` and
`keras_blockreuse.sweep.zoo` (a test keeps them equal).

Example:

```python
from keras_blockreuse.sweep.options import build_parser, settings_from_args

settings = settings_from_args(build_parser().parse_args(["--strategy", "prefix"]))
settings.seeds   # 3
```
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

DATASETS = ("digits", "cifar10", "mnist", "fashion_mnist")
TASKS = ("shift", "split")
"""The classification tasks (`keras_blockreuse.sweep.data.TASKS`)."""
DETECTION = "detection"
ALL_TASKS = (*TASKS, DETECTION)
"""What --task accepts: the classification tasks, and detection (a digits classifier as the
source, a detector on scenes of digits as the target; `keras_blockreuse.detection.sweep`)."""
DETECTION_TRAIN_IMAGES = 400
"""--train-images' default: training scenes per detection trial."""
SHIFTS = ("noise", "blur", "invert", "rotate", "labels")
MODELS = ("seed_cnn", "small_resnet")
"""The built-in models (`keras_blockreuse.sweep.zoo.MODELS`)."""
APPLICATIONS = (
    "vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2",
    "resnet152_v2", "densenet121", "densenet169", "densenet201", "mobilenet", "mobilenet_v2",
    "mobilenet_v3_small", "mobilenet_v3_large", *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")), "xception",
    *(f"convnext_{v}" for v in ("tiny", "small", "base", "large", "xlarge")),
)
"""The keras.applications families --model accepts by name (`sweep.models.APPLICATIONS`)."""
DATA_KINDS = ("npz", "folder")
"""What --data accepts: `npz:PATH` or `folder:PATH` (`sweep.user_data`)."""
MAXIMIZE = ("accuracy", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
            "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "auc", "precision",
            "recall", "f1_score", "fbeta_score", "r2_score", "iou", "mean_iou",
            "cosine_similarity")
MINIMIZE = ("loss", "mae", "mse", "rmse", "mape", "msle", "mean_absolute_error",
            "mean_squared_error", "root_mean_squared_error", "mean_absolute_percentage_error",
            "mean_squared_logarithmic_error", "log_cosh_error", "logcosh", "huber",
            "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
            "hinge", "squared_hinge", "kl_divergence", "poisson")
"""Metric names whose direction is known, as Keras reports them: a metric named
`cosine_similarity` is `keras.metrics.CosineSimilarity` (1 for predictions in the labels'
direction, higher is better), whatever the loss (a cosine similarity loss is logged as
`loss`, lower is better; a cosine similarity loss passed as a metric, logged under this name,
ranks lower as better: `which_blocks` tells them apart); another metric needs its direction:
`NAME:max` or `NAME:min`."""
STRATEGIES = ("prefix", "surgical", "exhaustive", "greedy")
PREDICTED = "predicted"
"""--strategy predicted: rank the surgical and prefix configurations by LogME and relative
gradient norms (`keras_blockreuse.sweep.predict`) and run the top --top-k, scratch, all tuned."""
SCHEDULERS = ("fifo", "asha", "halving")
TRAINING_POLICIES = ("constant", "lp-ft", "gradual")
"""How the trainable blocks train over the epochs (`keras_blockreuse.sweep.policies`)."""
PROG = "which_blocks.py"
SMOKE = {"epochs": 8, "source_epochs": 5, "seeds": 2, "strategy": "prefix"}
"""What --smoke changes, unless given explicitly: a tiny run for tests and CI."""
SMOKE_DETECTION = {"train_images": 64, "val_images": 50, "test_images": 100}
"""What --smoke also changes with --task detection: training scenes per trial (unless
--train-images is given), and fewer validation and test scenes."""


class SweepError(ValueError):
    """A sweep setting is invalid; the message names the value received and what is expected."""


def metric_direction(metric: str) -> tuple[str, str]:
    """`"mae"` -> `("mae", "min")`, `"auc:max"` -> `("auc", "max")`.

    Raises:
        SweepError: an empty name, a direction other than max / min, or a metric whose
            direction is not known and not given.
    """
    name, _, mode = str(metric).partition(":")
    name = name.strip()
    if not name:
        raise SweepError(f"Expected a metric name (such as accuracy, mae, auc:max), received "
                         f"{metric!r}.")
    if mode:
        if mode not in ("max", "min"):
            raise SweepError(f"Metric {metric!r}: the direction after ':' must be max or min, "
                             f"received {mode!r}.")
        return name, mode
    if name in MAXIMIZE:
        return name, "max"
    if name in MINIMIZE:
        return name, "min"
    raise SweepError(f"Metric {name!r}: its direction is not known; write {name}:max (higher is "
                     f"better) or {name}:min (lower is better).")


def model_kind(model: str) -> str:
    """`"zoo"`, `"application"` or `"builder"` (`module.path:function`, `file.py:function`).

    Raises:
        SweepError: none of these, or a `file.py:function` whose file does not exist.
    """
    if model in MODELS:
        return "zoo"
    if model in APPLICATIONS:
        return "application"
    where, sep, function = str(model).rpartition(":")
    if sep and where and function.isidentifier():
        if where.endswith(".py") and not os.path.isfile(where):
            raise SweepError(f"--model {model}: no such file {where!r}.")
        return "builder"
    raise SweepError(f"Unknown model {model!r}. Expected one of: {', '.join(MODELS)}; a "
                     f"keras.applications family ({', '.join(APPLICATIONS[:6])}, ...); or a "
                     "builder function as module.path:function or path/to/file.py:function.")


def parse_model_args(text: str | None) -> dict:
    """`"alpha=0.35,include_preprocessing=false"` -> `{"alpha": 0.35, ...}` (JSON values;
    other text stays a string)."""
    out: dict = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise SweepError(f"--model-args expects KEY=VALUE pairs joined by commas, received "
                             f"{part!r}.")
        try:
            out[key.strip()] = json.loads(value.strip())
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def strategy_names(strategies: str | Sequence[str]) -> list[str]:
    """Validate strategy names; `"prefix,surgical"` -> `["prefix", "surgical"]`.

    Raises:
        SweepError: an unknown strategy, or none.
    """
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    names = list(strategies)
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise SweepError(
            f"Unknown strategy {', '.join(map(repr, unknown)) or repr('')}. Expected one or more "
            f"of: {', '.join(STRATEGIES)} (comma-separated)."
        )
    return list(dict.fromkeys(names))


@dataclasses.dataclass
class SweepSettings:
    """Everything that defines a sweep. See `build_parser` for what each field means."""

    dataset: str = "digits"
    data: str | None = None
    """The user's data, `npz:PATH` or `folder:PATH`, instead of a built-in task (needs
    `source`)."""
    source: str | None = None
    """The pretrained weights: any file `load_blocks` reads (None: train the source on the
    dataset's source task, cached)."""
    image_size: list[int] | None = None
    """`[height, width]` to resize --data images to (None: used as given)."""
    loss: str | None = None
    """A Keras loss name (None: sparse categorical cross-entropy, the built-in tasks')."""
    metric: str | None = None
    """The metric that ranks policies, `NAME` or `NAME:max|min` (None: accuracy)."""
    model_args: dict | None = None
    """Keyword arguments for a keras.applications constructor (such as `{"alpha": 0.35}`)."""
    task: str = "shift"
    shift: str | None = None
    shots: int | None = 10
    model: str = "seed_cnn"
    strategy: str = "surgical,prefix"
    blocks: list[str] | None = None
    seeds: int = 3
    epochs: int = 40
    source_epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    data_seed: int = 0
    train_images: int | None = None
    """With task "detection": training scenes per trial (None: DETECTION_TRAIN_IMAGES)."""
    cpus_per_trial: float = 1
    gpus_per_trial: float | None = None
    scheduler: str = "fifo"
    eta: int = 3
    """With scheduler "halving": keep the best 1/eta configurations at each rung."""
    top_k: int = 3
    """With strategy "predicted": how many predicted configurations run."""
    training_policy: str = "constant"
    policy_epochs: int = 1
    """lp-ft: epochs of linear probing; gradual: epochs between two unfreezings."""
    ft_factor: float = 0.1
    """lp-ft: the fine-tuning rate is ft_factor x the learning rate."""
    block_lr: str | None = None
    """Per-block learning-rate multipliers, "block_1=0.1,block_2=0.5"."""
    lrs: list[float] | None = None
    """Target learning rates swept; the best per configuration is chosen on validation."""
    reuse_actors: bool = True
    address: str | None = None
    storage: str | None = None
    out: str | None = None
    cache: str | None = None
    resume: bool = False
    smoke: bool = False
    # ---- run control and statistics (issue 13) ----
    data_seeds: bool = False
    """Re-draw the target's train/val/test split for every seed, so that the intervals also
    cover the split's variance (default: the split is fixed by --data-seed)."""
    verbose: bool = False
    """Ray Tune's own progress output and the workers' logs on the console."""
    # ---- end of run control ----
    api: bool = False
    """Set by `which_blocks`: the model, data and source are Python objects, and `model`,
    `data` and `source` only name them in the report."""
    explicit: list[str] | None = None
    data_digest: str | None = None  # the user's data, checked again by a resume
    """Which of --smoke's fields (`SMOKE`) were given on the command line: --smoke keeps them.
    None (the Python API): --smoke changes those still at their defaults."""
    trained_as: dict | None = None  # the user's model and training, checked again by a resume

    def option_name(self, name: str) -> str:
        """How the user gave a setting: `seeds=` (the Python API) or `--seeds`."""
        if self.api:
            return f"{ {'lr': 'learning_rate'}.get(name, name)}="
        flag = {"training_policy": "policy", "reuse_actors": "fresh-process-per-trial"}
        return f"--{flag.get(name, name).replace('_', '-')}"

    def validate(self) -> SweepSettings:
        """Check every value; raise SweepError naming the bad one. Returns self."""
        for name in ("seeds", "epochs", "source_epochs", "batch_size", "train_images"):
            value = getattr(self, name)
            if name == "train_images" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SweepError(f"{self.option_name(name)} must be a positive integer, "
                                 f"received {value!r}.")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 10):
            raise SweepError(f"{self.option_name('lr')} must be a positive number below 10, "
                             f"received {self.lr!r}.")
        if not (self.cpus_per_trial and self.cpus_per_trial > 0):
            raise SweepError(f"{self.option_name('cpus_per_trial')} must be positive, received "
                             f"{self.cpus_per_trial!r}.")
        if self.gpus_per_trial is not None and not 0 <= self.gpus_per_trial <= 8:
            raise SweepError(f"{self.option_name('gpus_per_trial')} must be between 0 and 8 "
                             "(fractions allowed), "
                             f"received {self.gpus_per_trial!r}.")
        if self.scheduler not in SCHEDULERS:
            raise SweepError(f"Unknown scheduler {self.scheduler!r}. Expected one of: "
                             f"{', '.join(SCHEDULERS)}.")
        if self.metric is not None:
            metric_direction(self.metric)
        if self.strategy == PREDICTED:
            if self.task == DETECTION:
                raise SweepError("--strategy predicted needs a classification task (LogME scores "
                                 "class labels); received --task detection.")
        else:
            strategy_names(self.strategy)
        for name in ("eta", "top_k", "policy_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SweepError(f"{self.option_name(name)} must be a positive integer, "
                                 f"received {value!r}.")
        if self.eta < 2:
            raise SweepError(f"--eta must be at least 2, received {self.eta}.")
        if self.scheduler == "halving" and "greedy" in self.strategy.split(","):
            raise SweepError("--scheduler halving needs a fixed set of configurations; greedy "
                             "chooses them as it goes. Use another strategy or scheduler.")
        if self.training_policy not in TRAINING_POLICIES:
            raise SweepError(f"Unknown --policy {self.training_policy!r}. Expected one of: "
                             f"{', '.join(TRAINING_POLICIES)}.")
        if not (isinstance(self.ft_factor, (int, float)) and 0 < self.ft_factor <= 1):
            raise SweepError(f"--ft-factor must be in (0, 1], received {self.ft_factor!r}.")
        parse_block_lr(self.block_lr)
        for lr in self.lrs or []:
            if not (isinstance(lr, (int, float)) and 0 < lr < 10):
                raise SweepError(f"--lrs must be positive numbers below 10, received {lr!r}.")
        if self.lrs is not None and len(set(self.lrs)) != len(self.lrs):
            raise SweepError(f"--lrs must not repeat a rate, received {self.lrs}.")
        if self.lrs and len(self.lrs) > 1 and (self.scheduler == "halving"
                                               or "greedy" in self.strategy.split(",")):
            raise SweepError("--lrs with several rates cannot be combined with --scheduler "
                             "halving or --strategy greedy, which rank configurations as they "
                             "go; run one rate per sweep there.")
        if self.api:  # which_blocks: the model, data and source are Python objects
            return self
        kind = model_kind(self.model)
        if self.model_args and kind != "application":
            raise SweepError(f"--model-args applies to keras.applications models; received "
                             f"--model {self.model}.")
        self._validate_user_inputs(kind)
        if self.data_seeds and self.source is not None:
            raise SweepError("--data-seeds re-draws the split of a built-in dataset for each "
                             "seed; with your own --source and --data the split is yours "
                             "(run the sweep once per split, or drop --data-seeds).")
        if self.task not in ALL_TASKS:
            raise SweepError(f"Unknown task {self.task!r}. Expected one of: "
                             f"{', '.join(ALL_TASKS)}.")
        if self.task == DETECTION:
            if self.model != "seed_cnn":
                raise SweepError(f"--task detection transfers seed_cnn's blocks into the "
                                 f"detector's backbone; received --model {self.model} (use "
                                 "--model seed_cnn).")
            if self.dataset != "digits":
                raise SweepError(f"--task detection uses the digits (classifier and scenes); "
                                 f"received --dataset {self.dataset}.")
            if self.shift is not None:
                raise SweepError(f"--shift applies to --task shift only; received --shift "
                                 f"{self.shift} with --task detection.")
            if self.data_seeds:
                raise SweepError("--data-seeds applies to the classification tasks: with --task "
                                 "detection every seed already draws its own training scenes "
                                 "(validation and test scenes stay fixed).")
        elif self.train_images is not None:
            raise SweepError(f"--train-images applies to --task detection only; received "
                             f"--train-images {self.train_images} with --task {self.task}.")
        if self.shift is not None and self.shift not in SHIFTS:
            raise SweepError(f"Unknown shift {self.shift!r}. Expected one of: {', '.join(SHIFTS)}.")
        if self.task == "split" and self.shift is not None:
            raise SweepError(f"--shift applies to --task shift only; received --shift "
                             f"{self.shift} with --task split.")
        if not (self.dataset in DATASETS or str(self.dataset).startswith(("npz:", "folder:"))):
            raise SweepError(f"Unknown dataset {self.dataset!r}. Expected one of: "
                             f"{', '.join(DATASETS)}, npz:PATH or folder:PATH.")
        return self

    def _validate_user_inputs(self, kind: str) -> None:
        """--data, --source, --image-size, --loss and the model: what goes with what."""
        if self.task == DETECTION and (self.data or self.source or kind != "zoo"):
            raise SweepError("--task detection uses its own source, data and detector; "
                             "--data, --source and other models do not apply.")
        if kind != "zoo" and not self.source:
            raise SweepError(f"--model {self.model} needs --source (its pretrained weights): "
                             "without it the sweep trains a source model itself, which it "
                             "does for the built-in models (seed_cnn, small_resnet) only.")
        if self.data is not None:
            prefix, sep, path = str(self.data).partition(":")
            if prefix not in DATA_KINDS or not sep or not path:
                raise SweepError(f"--data must be npz:PATH or folder:PATH, received "
                                 f"{self.data!r}.")
            what = "file" if prefix == "npz" else "folder"
            if not (os.path.isfile(path) if prefix == "npz" else os.path.isdir(path)):
                raise SweepError(f"--data {self.data}: no such {what} {path!r}.")
            if not self.source:
                raise SweepError("--data needs --source (the pretrained weights to transfer): "
                                 "the user's data has no source task to train one on.")
        if (self.loss or self.metric) and not self.source:
            raise SweepError("--loss and --metric apply to the user's own target (--source, "
                             "with --data or a built-in task); the built-in sweep trains and "
                             "scores classifiers by accuracy.")
        if self.source is not None and not os.path.exists(self.source):
            raise SweepError(f"--source: no such file {self.source!r}.")
        if self.image_size is not None:
            if self.data is None and not str(self.dataset).startswith("folder:"):
                raise SweepError(f"--image-size resizes the images of --data or --dataset "
                                 f"folder:PATH; --dataset {self.dataset} is used at its own "
                                 "size.")
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise SweepError(f"--image-size must be HEIGHTxWIDTH (such as 96x96), received "
                                 f"{self.image_size!r}.")

    def resolved_shift(self) -> str | None:
        return (self.shift or "noise") if self.task == "shift" else None

    def resolved_train_images(self) -> int | None:
        """Training scenes per detection trial; None for the classification tasks."""
        if self.task != DETECTION:
            return None
        return DETECTION_TRAIN_IMAGES if self.train_images is None else self.train_images


def build_parser() -> argparse.ArgumentParser:
    """The command line of `sweeps/which_blocks.py`."""
    d = SweepSettings()
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Measure which blocks of a source model to transfer - re-initialised (reinit), "
            "transferred and frozen, or transferred and fine-tuned (tuned) - for the best "
            "target test accuracy.\nTrains the source model once (cached), runs every block "
            "policy for several seeds on Ray Tune, and writes results.csv, summary.csv, "
            "results.json, report.md and plot.png to --out.\nWith --task detection the source "
            "is a digits classifier and the target a small detector on scenes of digits; the "
            "metric is test mAP@0.5 instead of accuracy."),
        epilog=(
            "examples:\n"
            "  python sweeps/which_blocks.py                      # default: noisy 10-shot "
            "digits, surgical + prefix\n"
            "  python sweeps/which_blocks.py --task split --shots 5 --strategy prefix\n"
            "  python sweeps/which_blocks.py --shift labels --strategy surgical\n"
            "  python sweeps/which_blocks.py --task detection --train-images 100 --epochs 5\n"
            "  python sweeps/which_blocks.py --model mobilenet_v2 --source mobilenet_v2.h5 "
            "--data folder:photos --image-size 224x224\n"
            "  python sweeps/which_blocks.py --model my_models.py:build --source my.blocks.h5 "
            "--data npz:target.npz --loss mse --metric mae\n"
            "  python sweeps/which_blocks.py --resume --out runs/which_blocks/20250101-120000\n"
            "  python sweeps/which_blocks.py --address auto --storage /shared/sweeps  # a Ray "
            "cluster"),
    )
    add = parser.add_argument
    add("--dataset", default=None, metavar="NAME",
        help="digits (scikit-learn's bundled 8x8 digits, no download; default), cifar10, mnist, "
             "fashion_mnist (keras.datasets, downloaded), npz:PATH (x_train, y_train, x_test, "
             "y_test) or folder:PATH (one sub-folder of images per class, read as --data "
             "reads one: 1 channel where every image is greyscale, else RGB; one size, or "
             "--image-size)")
    add("--task", default=None, choices=ALL_TASKS,
        help="shift: same classes, the target's images shifted (default); split: the source "
             "gets the first half of the classes, the target the rest (Yosinski's A/B); "
             "detection: the source is seed_cnn trained on the digits, the target a detector "
             "whose backbone blocks (block_1, block_2) are swept, on 64x64 scenes of 1-4 "
             "digits; the metric is test mAP@0.5 (val mAP@0.5 for Tune and greedy). Needs "
             "--model seed_cnn and --dataset digits; --shots and --shift do not apply")
    add("--train-images", type=int, default=None, metavar="N",
        help=f"with --task detection: training scenes per trial (default "
             f"{DETECTION_TRAIN_IMAGES}), for the data-size question; --epochs sets the "
             "schedule")
    add("--shift", default=None, metavar="KIND",
        help=f"with --task shift: {', '.join(SHIFTS)} (default noise): input noise, blur, "
             "inversion, 90-degree rotation, or permuted labels")
    add("--shots", default=None, metavar="N",
        help="training labels per target class (default 10); 'all' for half of each class")
    add("--model", default=d.model, metavar="NAME",
        help=f"the target architecture: {', '.join(MODELS)} (default seed_cnn; also the "
             "source's when --source is not given); a keras.applications family "
             f"({', '.join(APPLICATIONS[:8])}, ...; built with weights=None, the data's input "
             "shape and class count, and grouped into blocks by the family's preset); or a "
             "builder function module.path:function or path/to/file.py:function returning a "
             "keras.Model (called with input_shape= and num_classes= where it takes them)")
    add("--model-args", default=None, metavar="K=V[,K=V]",
        help="keyword arguments for a keras.applications constructor, such as alpha=0.35 "
             "(must match the --source weights)")
    add("--source", default=None, metavar="PATH",
        help="the pretrained weights to transfer: any file load_blocks reads (.blocks.h5, "
             ".weights.h5, .keras, legacy Keras 2 .h5 such as the ImageNet files of "
             "keras.applications). Snapshotted once to OUT/source.blocks.h5. Blocks whose "
             "shapes differ from the model's (a head with another class count) are reinit. "
             "Default: train the source model on the dataset's source task (cached)")
    add("--data", default=None, metavar="KIND:PATH",
        help="the user's target data instead of a built-in task (needs --source): "
             "npz:PATH with x_train, y_train, x_test, y_test and optionally x_val, y_val "
             "(else a seeded stratified fifth of train), or folder:PATH of class sub-folders "
             "of images (train/, val/, test/ sub-folders when present, else a seeded "
             "60/20/20 stratified split). Used as given (pixels 0-255 for images; "
             "keras.applications models apply their family's preprocess_input)")
    add("--image-size", default=None, metavar="HxW",
        help="resize --data or --dataset folder:PATH images to HEIGHTxWIDTH (default: as "
             "given; folder images must then share one size)")
    add("--loss", default=None, metavar="NAME",
        help="a Keras loss for the target (default sparse_categorical_crossentropy): "
             "binary_crossentropy (binary or multi-label), mse / mae / huber (regression), ...")
    add("--metric", default=None, metavar="NAME[:max|min]",
        help="the metric that ranks the policies (default accuracy); the direction is known "
             "for common names (accuracy, auc: max; mae, mse: min), else give it, e.g. "
             "f1:max")
    add("--strategy", default=None, metavar="S[,S]",
        help="which policies to run, comma-separated: prefix (first n blocks frozen or tuned), "
             "surgical (all frozen but one tuned, plus all tuned), exhaustive (all 3^k), "
             "greedy (forward selection by validation accuracy); or predicted alone (the "
             "--top-k surgical/prefix configurations ranked by LogME and gradient norms, plus "
             f"all tuned); scratch always runs (default {d.strategy})")
    add("--blocks", default=None, metavar="B[,B]",
        help="the blocks whose policy is swept (default: all that can be transferred: the head "
             "is left out when source and target class counts differ, and with --task split, "
             "whose source head knows other classes, unless named here; with --source, blocks "
             "the source lacks or whose shapes differ); the others are reinit, and the report "
             "says why")
    add("--seeds", type=int, default=None, metavar="N",
        help=f"seeds per configuration, for means and confidence intervals (default {d.seeds}); "
             "the verdict compares policies over 2 or more finished seeds each, so --seeds 1 "
             "runs (a first look) but says before training that it gives no verdict")
    add("--epochs", type=int, default=None, metavar="N",
        help=f"target training epochs per trial (default {d.epochs})")
    add("--source-epochs", type=int, default=None, metavar="N",
        help=f"source model training epochs (default {d.source_epochs})")
    add("--batch-size", type=int, default=d.batch_size, metavar="N",
        help=f"batch size of source and target training (default {d.batch_size}; with --task "
             "detection, detector trials use 16 unless another value is set)")
    add("--lr", type=float, default=d.lr, metavar="LR",
        help=f"Adam learning rate of source and target training (default {d.lr:g}; with --task "
             "detection, detector trials use 0.002 unless another value is set)")
    add("--data-seed", type=int, default=d.data_seed, metavar="N",
        help="fixes the splits, the shift and the source model's initialisation (default 0)")
    add("--cpus-per-trial", type=float, default=d.cpus_per_trial, metavar="N",
        help="CPUs Ray reserves per trial; TensorFlow uses as many threads (default 1)")
    add("--gpus-per-trial", type=float, default=None, metavar="F",
        help="GPUs per trial, fractions allowed (0.25 packs 4 trials per GPU; memory growth is "
             "on). Default: 0.25 when the Ray cluster has GPUs, else 0")
    add("--scheduler", default=d.scheduler, choices=SCHEDULERS,
        help="fifo runs every trial to the end (default; fair to slow starters); asha stops "
             "poor trials early (for large spaces), never the baselines (scratch, all tuned); "
             "stopped trials are reported as stopped and left out of the statistics, and each "
             "trial gets a new worker process; halving: successive halving over whole "
             "configurations (all seeds together, scratch and all tuned always at the full "
             "budget, the verdict from full-budget trials only)")
    add("--eta", type=int, default=d.eta, metavar="N",
        help="with --scheduler halving: each rung keeps the best 1/N configurations and "
             f"multiplies the epochs by N (default {d.eta})")
    add("--top-k", type=int, default=d.top_k, metavar="K",
        help=f"with --strategy predicted: predicted configurations to run (default {d.top_k})")
    add("--policy", dest="training_policy", default=d.training_policy,
        choices=TRAINING_POLICIES,
        help="how the trainable blocks train: constant (all from the start; default), lp-ft "
             "(fresh blocks or the head first for --policy-epochs, then all at --ft-factor x "
             "the rate; Kumar et al. 2022), gradual (one more tuned block every --policy-epochs "
             "epochs, from the top; Howard & Ruder 2018)")
    add("--policy-epochs", type=int, default=d.policy_epochs, metavar="K",
        help=f"lp-ft: probing epochs; gradual: epochs per unfrozen block (default "
             f"{d.policy_epochs})")
    add("--ft-factor", type=float, default=d.ft_factor, metavar="F",
        help=f"lp-ft: the fine-tuning learning rate factor (default {d.ft_factor:g})")
    add("--block-lr", default=None, metavar="B=F[,B=F]",
        help="per-block learning-rate multipliers, e.g. block_1=0.1,block_2=0.3 (the others 1)")
    add("--lrs", default=None, metavar="LR[,LR]",
        help="target learning rates to sweep, e.g. 1e-4,1e-3; each configuration is reported "
             "at its best rate on validation (replaces --lr for the target trials)")
    add("--fresh-process-per-trial", dest="reuse_actors", action="store_false",
        help="start a new Ray worker process (and TensorFlow) for every trial instead of "
             "reusing one per concurrent trial, with its compiled models and traced steps; each "
             "trial starts from a cleared Keras session, its own seeds and freshly drawn "
             "values either way, so results are the same, only slower")
    add("--address", default=None, metavar="ADDR",
        help="join a running Ray cluster: 'auto' or HOST:PORT (default: start a local Ray)")
    add("--storage", default=None, metavar="PATH",
        help="where Ray Tune keeps trial results (made absolute; shared storage on a cluster). "
             "Default: OUT/tune")
    add("--out", default=None, metavar="FOLDER",
        help="output folder (default runs/which_blocks/<timestamp>); Ray's temporary files go "
             "to OUT/ray")
    add("--cache", default=None, metavar="FOLDER",
        help="source model cache, keyed by its inputs (default ~/.cache/keras-blockreuse/"
             "sources)")
    add("--resume", action="store_true",
        help="continue the interrupted sweep in --out (default: the latest under "
             "runs/which_blocks) with its saved settings; finished trials are not rerun")
    add("--smoke", action="store_true",
        help="a tiny run for tests and CI (under a minute on 2 CPU cores): 8 epochs, 5 source "
             "epochs, 2 seeds, "
             "prefix strategy on the first block, unless set explicitly; with --task detection "
             f"also {SMOKE_DETECTION['train_images']} training scenes per trial unless "
             f"--train-images is given, and {SMOKE_DETECTION['val_images']} validation and "
             f"{SMOKE_DETECTION['test_images']} test scenes (default 100 and 300)")
    add_run_control_options(parser)
    return parser


def add_run_control_options(parser: argparse.ArgumentParser) -> None:
    """The options of the verdict's statistics and of the console (issue 13)."""
    parser.add_argument(
        "--data-seeds", action="store_true",
        help="re-draw the target's train/validation/test split for every seed (same number of "
             "images per class in each), so that intervals and tests cover the split's variance "
             "too; default: the split is fixed by --data-seed and they cover training seeds "
             "only")
    parser.add_argument(
        "--verbose", action="store_true",
        help="show Ray Tune's own progress tables and the workers' logs (default: one compact "
             "live view)")


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    """Turn parsed arguments into validated `SweepSettings`."""
    shots: int | None
    if args.shots is None:
        shots = SweepSettings.shots
    elif args.shots in ("all", "none", "None"):
        shots = None
    else:
        try:
            shots = int(args.shots)
        except ValueError:
            raise SweepError(f"--shots must be a positive integer or 'all', received "
                             f"{args.shots!r}.") from None
        if shots < 1:
            raise SweepError(f"--shots must be a positive integer or 'all', received {shots}.")
    if args.data is not None:
        given = [f"--{n}" for n in ("dataset", "task", "shift", "shots")
                 if getattr(args, n) is not None]
        if given:
            raise SweepError(f"{', '.join(given)} apply to the built-in tasks, not to --data "
                             f"{args.data} (used as given).")
    image_size = None
    if args.image_size is not None:
        try:
            image_size = [int(v) for v in args.image_size.lower().split("x")]
        except ValueError:
            raise SweepError(f"--image-size must be HEIGHTxWIDTH (such as 96x96), received "
                             f"{args.image_size!r}.") from None
    blocks = None
    if args.blocks:
        blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    # The options --smoke changes default to None here, so that a value given explicitly (even
    # the default one) is kept under --smoke.
    d = SweepSettings()
    given = {name: getattr(args, name) for name in SMOKE if getattr(args, name) is not None}
    resolved = {name: given.get(name, getattr(d, name)) for name in SMOKE}
    settings = SweepSettings(
        dataset=args.dataset or d.dataset, task=args.task or d.task, shift=args.shift,
        shots=shots, model=args.model, data=args.data, source=args.source,
        image_size=image_size, loss=args.loss, metric=args.metric,
        model_args=parse_model_args(args.model_args) or None,
        strategy=resolved["strategy"], blocks=blocks, seeds=resolved["seeds"],
        epochs=resolved["epochs"], source_epochs=resolved["source_epochs"],
        batch_size=args.batch_size, lr=args.lr,
        data_seed=args.data_seed, train_images=args.train_images, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, scheduler=args.scheduler, eta=args.eta,
        top_k=args.top_k, training_policy=args.training_policy,
        policy_epochs=args.policy_epochs, ft_factor=args.ft_factor, block_lr=args.block_lr,
        lrs=_rates(args.lrs), reuse_actors=args.reuse_actors, address=args.address,
        storage=args.storage, out=args.out, cache=args.cache, resume=args.resume,
        smoke=args.smoke, explicit=sorted(given),
        data_seeds=getattr(args, "data_seeds", False), verbose=getattr(args, "verbose", False),
    )
    if not settings.resume:
        settings.validate()
    return settings


def _rates(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise SweepError(f"--lrs must be numbers joined by commas, received {text!r}.") from None


def parse_block_lr(text) -> dict[str, float]:
    """Block learning-rate multipliers from `"block_1=0.1,block_2=0.5"` (or a dict, or None).

    Raises:
        SweepError: a part that is not `block=number`, a repeated block, or a negative or
            non-finite number.

    Example:

    >>> parse_block_lr("block_1=0.1, dense_1=2")
    {'block_1': 0.1, 'dense_1': 2.0}
    """
    import math

    if text is None or text == "":
        return {}
    pairs = (list(text.items()) if isinstance(text, dict)
             else [part.partition("=")[::2] for part in str(text).split(",")])
    out: dict[str, float] = {}
    for block, value in pairs:
        block = str(block).strip()
        try:
            factor = float(value)
        except (TypeError, ValueError):
            factor = math.nan
        if not block or block in out or not math.isfinite(factor) or factor < 0:
            raise SweepError(f"Invalid block learning rates {text!r}: expected 'block=factor' "
                             "pairs joined by commas, each block once, factors finite and >= 0 "
                             f"(at {block!r}={value!r}).")
        out[block] = factor
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a parsing error exits with status 2 and one line, no usage."""
    parser = build_parser()

    def fail(message: str) -> None:
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    parser.error = fail  # one line, no usage dump
    return parser.parse_args(argv)


def precheck(argv: Sequence[str] | None = None) -> int | None:
    """What the script does before importing TensorFlow and Ray: `--help` (exits 0), parsing
    errors and values that need no data (one line, returns 2). None: go on with the sweep
    (`run.main` checks again, and then what needs the data: blocks, shots)."""
    args = parse_args(argv)
    try:
        settings_from_args(args)
    except SweepError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return None


def apply_smoke(settings: SweepSettings) -> None:
    """--smoke: fewer epochs, seeds and configurations (`SMOKE`), except where given."""
    default = SweepSettings()
    for name, value in SMOKE.items():
        if settings.explicit is not None:
            keep = name in settings.explicit
        else:
            keep = getattr(settings, name) != getattr(default, name)
        if not keep:
            setattr(settings, name, value)
    if settings.task == DETECTION and settings.train_images is None:
        settings.train_images = SMOKE_DETECTION["train_images"]
