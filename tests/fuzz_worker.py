"""A worker process for tests/test_fuzz_keras.py: loads many damaged files, one at a time.

Run as `python tests/fuzz_worker.py <clean file> <format>`; reads one JSON case per line on
stdin (`{"id": ..., "path": ...}`, the damaged file already written), loads it into a model
built for the format, and prints one JSON line per case: the outcome and whether the model
ended as it should. A watchdog (faulthandler) ends the process if one load passes its
deadline, so a hang shows as a dead worker, never as a stuck test run; a crash too.
"""

import faulthandler
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_blockreuse import BlockFileError, BlockMismatchError, load_blocks  # noqa: E402

L = keras.layers
DEADLINE_S = float(os.environ.get("KBR_FUZZ_DEADLINE", "20"))


def cnn(name: str) -> keras.Model:
    """The seed CNN's naming, small; the same architecture tests/test_fuzz_keras.py saves."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, padding="same", activation="relu", name="block_1_0"),
            L.Conv2D(4, 3, activation="relu", name="block_1_1"),
            L.AveragePooling2D(2, name="block_1_2"),
            L.Flatten(name="flatten"),
            L.Dense(16, activation="relu", name="dense_1"),
            L.Dense(3, name="dense_2"),
        ],
        name=name,
    )


def values(model) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def main() -> None:
    clean = sys.argv[1]
    model = cnn("target")
    rng = np.random.default_rng(7)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    before = values(model)
    load_blocks(model, clean)
    saved = values(model)
    if any(np.array_equal(a, b) for a, b in zip(before, saved, strict=True)):
        raise SystemExit("the clean load did not change every variable")

    def reset():
        for v, value in zip(model.weights, before, strict=True):
            v.assign(value)

    reset()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        faulthandler.dump_traceback_later(DEADLINE_S, exit=True)
        outcome: dict = {"id": case["id"]}
        try:
            report = load_blocks(model, case["path"])
            outcome["outcome"] = "loaded"
            outcome["ok"] = bool(report.ok)
        except BlockFileError as e:
            outcome["outcome"] = "BlockFileError"
            outcome["message"] = str(e)[:300]
            outcome["names_path"] = case["path"] in str(e)
            outcome["chained"] = e.__cause__ is not None or e.__context__ is None
        except BlockMismatchError as e:
            outcome["outcome"] = "BlockMismatchError"
            outcome["message"] = str(e)[:300]
        except Exception as e:  # noqa: BLE001 - exactly what the test counts
            outcome["outcome"] = "raw"
            outcome["message"] = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            faulthandler.cancel_dump_traceback_later()
        now = values(model)
        each = []
        for a, b, c in zip(now, saved, before, strict=True):
            each.append("saved" if np.array_equal(a, b) else "before" if np.array_equal(a, c)
                        else "other")
        outcome["variables"] = each
        reset()
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
