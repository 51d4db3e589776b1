"""Which blocks of a pretrained MobileNetV2 to transfer, frozen or tuned, for your photos?

The sweep on a keras.applications model, a weights file given by path, and a local image
folder (one sub-folder per class), through `keras_blockreuse.sweep.which_blocks`:

1. the target model is `keras.applications.MobileNetV2(weights=None, ...)` with a head for
   your classes; its blocks are the MobileNetV2 preset's (`stem`, `block_1 ... block_16`,
   `head`, `predictions`);
2. the pretrained weights come from a file (`--weights`); the 1000-class ImageNet head does
   not fit your head, so the sweep fixes `predictions` to reinit and says so;
3. the images are read with `keras.utils.image_dataset_from_directory` and scaled with
   MobileNetV2's own `preprocess_input` (pixels 0-255 to [-1, 1], what the ImageNet weights
   expect); a fifth is held out for validation, and a fifth of the rest for the test;
4. every block policy of the chosen strategy runs for several seeds on Ray Tune; the report
   (table, plot) goes to `--out`.

Run here (offline): without `--weights` and `--images`, it saves a randomly initialised
MobileNetV2 as the stand-in weights file and generates a small folder of PNGs, so that the
whole path runs in a minute or two on 2 CPU cores:

```
python examples/sweep_keras_application.py
```

On your own photos with ImageNet weights (a GPU helps: `--gpus-per-trial 0.25`):

```
# the ImageNet weights Keras downloads for MobileNetV2 (alpha 1.0, 224 x 224):
python -c "import keras; print(keras.utils.get_file(
    'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5',
    'https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/'
    'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5'))"
python examples/sweep_keras_application.py --weights ~/.keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5 \\
    --images ~/photos --size 224 --alpha 1.0 --blocks stem,block_1,block_2,block_3 \\
    --strategy surgical,prefix --seeds 3 --epochs 10
```

The `_no_top` file works as well (it has no `predictions` block: that one is reinit as
"not in the source"). The same sweep from the command line:
`python sweeps/which_blocks.py --model mobilenet_v2 --source FILE --data folder:PHOTOS`.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def make_images(folder: str, classes: int, per_class: int, size: int, seed: int = 0) -> str:
    """A small folder of PNGs, one sub-folder per class: each class brightens its own band of
    columns over noise (stands in for your photos)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(folder, f"class_{c}"), exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            image[:, c * size // classes:(c + 1) * size // classes] += 140
            keras.utils.save_img(os.path.join(folder, f"class_{c}", f"{i:03d}.png"), image)
    return folder


def stand_in_weights(path: str, size: int, alpha: float) -> str:
    """A randomly initialised MobileNetV2 with a 1000-class head, saved as `.weights.h5`
    (stands in for the ImageNet weights file, which cannot be downloaded here)."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                           weights=None, classes=1000)
    model.save_weights(path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="pretrained weights: any file load_blocks reads "
                        "(default: a random stand-in, saved to OUT)")
    parser.add_argument("--images", help="a folder with one sub-folder of images per class "
                        "(default: generated PNGs in OUT)")
    parser.add_argument("--size", type=int, default=32, help="image height and width (32)")
    parser.add_argument("--alpha", type=float, default=0.35,
                        help="MobileNetV2 width multiplier; must match --weights (0.35)")
    parser.add_argument("--classes", type=int, default=3, help="generated classes (3)")
    parser.add_argument("--per-class", type=int, default=15, help="generated images per class")
    parser.add_argument("--blocks", default="stem,block_1",
                        help="the blocks to sweep, comma-separated (stem,block_1)")
    parser.add_argument("--strategy", default="prefix")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gpus-per-trial", type=float, default=None)
    parser.add_argument("--out", default=os.path.join("runs", "sweep_keras_application",
                                                      time.strftime("%Y%m%d-%H%M%S")))
    args = parser.parse_args(argv)

    from keras_blockreuse.sweep import which_blocks

    os.makedirs(args.out, exist_ok=True)
    images = args.images or make_images(os.path.join(args.out, "images"), args.classes,
                                        args.per_class, args.size)
    weights = args.weights or stand_in_weights(
        os.path.join(args.out, "stand_in_mobilenet_v2.weights.h5"), args.size, args.alpha)

    # Your photos, as Keras users read them; MobileNetV2's own preprocessing.
    train, validation = keras.utils.image_dataset_from_directory(
        images, image_size=(args.size, args.size), batch_size=64, validation_split=0.2,
        subset="both", seed=0, verbose=False)
    classes = len(train.class_names)
    preprocess = keras.applications.mobilenet_v2.preprocess_input
    train = train.map(lambda x, y: (preprocess(x), y))
    validation = validation.map(lambda x, y: (preprocess(x), y))

    def build_model():
        return keras.applications.MobileNetV2(input_shape=(args.size, args.size, 3),
                                              alpha=args.alpha, weights=None, classes=classes)

    result = which_blocks(
        build_model, source=weights, train=train, validation=validation, test=None,
        only=[b.strip() for b in args.blocks.split(",") if b.strip()],
        strategy=args.strategy, seeds=args.seeds, epochs=args.epochs,
        batch_size=args.batch_size, gpus_per_trial=args.gpus_per_trial,
        out=os.path.join(args.out, "sweep"))
    print(result.summary[["rank", "label", "code", "n", "mean", "ci_low", "ci_high", "diff"]]
          .to_string(index=False))
    print("Fixed to reinit:", "; ".join(f"{b} ({why})" for b, why in result.fixed.items()
                                        if not why.startswith("not among")))
    return result


if __name__ == "__main__":
    main()
