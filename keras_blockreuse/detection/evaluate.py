"""Mean average precision with pycocotools, the reference implementation of COCO's metric.

Example:

```python
metrics = coco_map(test, detect(detector, test.images))
metrics["map_50"], metrics["map"]        # mAP at IoU 0.5, and averaged over IoU .50:.05:.95
```
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from keras_blockreuse.detection.data import DetectionData

# COCOeval.stats, in order (maxDets 100 unless named).
STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "recall_1", "recall_10", "recall_100", "recall_small", "recall_medium", "recall_large",
)  # fmt: skip


def to_coco(data: DetectionData) -> dict:
    """The ground truth of `data` as a COCO detection dictionary (category id = label + 1).

    Example:

    ```python
    json.dump(to_coco(scenes), open("instances_scenes.json", "w"))
    ```
    """
    height, width = data.image_size
    images = [
        {"id": int(i), "width": int(width), "height": int(height), "file_name": f or f"{i}.png"}
        for i, f in zip(data.image_ids, data.file_names, strict=True)
    ]
    annotations = []
    for image_id, boxes, labels in zip(data.image_ids, data.boxes, data.labels, strict=True):
        for box, label in zip(boxes, labels, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(image_id),
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(data.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_map(ground_truth: DetectionData, detections: Sequence) -> dict[str, float]:
    """COCO metrics of detections against ground truth, computed by `pycocotools.COCOeval`.

    Example:

    ```python
    metrics = coco_map(test, detect(detector, test.images))
    print(f"mAP@0.5 {metrics['map_50']:.3f}  mAP@[.5:.95] {metrics['map']:.3f}")
    ```

    Args:
        ground_truth: the images' true boxes and labels.
        detections: one entry per image, in the same order: an object with `boxes (n, 4)`,
            `scores (n,)` and `labels (n,)` (such as `Detections`).

    Returns:
        A dict with every name of `STAT_NAMES` (`map` is mAP@[.5:.95], `map_50` mAP@0.5).
        With no detections at all every value is 0.0; pycocotools' -1 (nothing to evaluate,
        e.g. no ground-truth box of any class) is returned as NaN.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(detections) != len(ground_truth):
        raise ValueError(
            f"Expected one detections entry per image ({len(ground_truth)} images); received "
            f"{len(detections)}."
        )
    results = []
    for image_id, det in zip(ground_truth.image_ids, detections, strict=True):
        for box, score, label in zip(
            np.asarray(det.boxes).reshape(-1, 4),
            np.ravel(det.scores),
            np.ravel(det.labels),
            strict=True,
        ):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    if not results:  # COCO.loadRes cannot take an empty list.
        return dict.fromkeys(STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = to_coco(ground_truth)
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        name: (float("nan") if value < 0 else float(value))
        for name, value in zip(STAT_NAMES, evaluator.stats, strict=True)
    }
