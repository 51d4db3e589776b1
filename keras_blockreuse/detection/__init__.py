"""Reusing classification blocks in an object detector.

Detection data (digit scenes, COCO and Pascal VOC readers, padded batches), a small
CenterNet-style `BlockModel` detector whose backbone blocks are a digits classifier's, mAP with
pycocotools, and the trial the which-blocks sweep runs for `--task detection`.

Example:

```python
from keras_blockreuse import detection

train = detection.digit_scenes(400, split="train", seed=0)
test = detection.digit_scenes(300, split="test", seed=0)
detector = detection.build_detector(num_classes=10)
detector.load_blocks("classifier.blocks.h5", only=["block_1", "block_2"])
detector.compile(optimizer="adam", loss=detection.CenterNetLoss(num_classes=10))
detector.fit(detection.DetectionBatches(train, batch_size=32, shuffle=True), epochs=10)
print(detection.coco_map(test, detection.detect(detector, test.images)))
```
"""

from keras_blockreuse.detection.data import (
    DIGIT_CLASS_NAMES,
    VOC_CLASS_NAMES,
    DetectionBatches,
    DetectionData,
    box_iou,
    digit_scenes,
    digit_split,
    pack_targets,
    pad_boxes,
    read_coco,
    read_voc,
    unpack_targets,
)
from keras_blockreuse.detection.evaluate import coco_map, to_coco
from keras_blockreuse.detection.model import (
    BACKBONE_BLOCKS,
    CenterNetLoss,
    Detections,
    batched_nms,
    build_detector,
    decode,
    decode_heatmaps,
    detect,
    encode_targets,
    nms,
)
from keras_blockreuse.detection.trial import (
    POLICIES,
    check_policy,
    policy_name,
    run_detection_trial,
)

__all__ = [
    "BACKBONE_BLOCKS",
    "DIGIT_CLASS_NAMES",
    "POLICIES",
    "VOC_CLASS_NAMES",
    "CenterNetLoss",
    "DetectionBatches",
    "DetectionData",
    "Detections",
    "batched_nms",
    "box_iou",
    "build_detector",
    "check_policy",
    "coco_map",
    "decode",
    "decode_heatmaps",
    "detect",
    "digit_scenes",
    "digit_split",
    "encode_targets",
    "nms",
    "pack_targets",
    "pad_boxes",
    "policy_name",
    "read_coco",
    "read_voc",
    "run_detection_trial",
    "to_coco",
    "unpack_targets",
]
