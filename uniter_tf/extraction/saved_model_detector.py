"""A detector from any SavedModel that follows the extraction signature contract.

Signature (default key ``serving_default``):

* one input: uint8 ``[1, H, W, 3]`` RGB image (any input name; H and W may be dynamic);
* outputs ``detection_boxes`` ``[1, K, 4]`` float (normalised ``y1, x1, y2, x2``),
  ``detection_scores`` ``[1, K]``, ``detection_classes`` ``[1, K]`` (class ids, 0 = background),
  optionally ``num_detections`` ``[1]`` (rows past it are padding), and the feature maps
  ``feature_map_0``, ``feature_map_1``, ... each ``[1, h, w, c]`` with a static ``c``, covering the image.

This is the TF Object Detection API export signature plus the feature maps, so an OD-API export only
needs its maps added as outputs.
"""

from __future__ import annotations

import re
from typing import List

import numpy as np

from uniter_tf.extraction.detector import Detections, Detector

_FEATURE_MAP_KEY = re.compile(r"^feature_map_(\d+)$")
REQUIRED_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes")


class SavedModelDetector(Detector):
    """Runs a SavedModel detector (see the module docstring for the signature).

    Args:
        path: the SavedModel directory.
        num_classes: number of class ids including background (the soft-label width).
        signature: the signature key.

    Raises:
        ValueError: the signature does not follow the contract (the message says what is missing).
    """

    def __init__(self, path: str, num_classes: int = 91, signature: str = "serving_default"):
        import tensorflow as tf

        self.path = path
        self._num_classes = int(num_classes)
        self._model = tf.saved_model.load(path)
        if signature not in self._model.signatures:
            raise ValueError(f"{path} has no signature {signature!r} (has {sorted(self._model.signatures)})")
        self._function = self._model.signatures[signature]
        _, input_specs = self._function.structured_input_signature
        if len(input_specs) != 1:
            raise ValueError(f"{path}: the detector signature must take one image input, has {sorted(input_specs)}")
        self._input_name, input_spec = next(iter(input_specs.items()))
        if input_spec.dtype != tf.uint8 or input_spec.shape.rank != 4:
            raise ValueError(f"{path}: the image input must be uint8 [1, H, W, 3], got {input_spec}")
        outputs = self._function.structured_outputs
        missing = [key for key in REQUIRED_OUTPUTS if key not in outputs]
        if missing:
            raise ValueError(f"{path}: the detector signature lacks the outputs {missing}")
        feature_keys = sorted((key for key in outputs if _FEATURE_MAP_KEY.match(key)),
                              key=lambda key: int(_FEATURE_MAP_KEY.match(key).group(1)))
        if not feature_keys:
            raise ValueError(f"{path}: the detector signature has no feature_map_<i> outputs for RoI pooling")
        self._feature_keys = feature_keys
        self._channels = []
        for key in feature_keys:
            channels = outputs[key].shape[-1]
            if channels is None:
                raise ValueError(f"{path}: output {key} needs a static channel dimension")
            self._channels.append(int(channels))

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def feature_map_channels(self) -> List[int]:
        return list(self._channels)

    def detect(self, image: np.ndarray) -> Detections:
        import tensorflow as tf

        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"the detector wants a [H, W, 3] uint8 image, got {image.dtype} {image.shape}")
        outputs = self._function(**{self._input_name: tf.constant(image[None])})
        boxes = outputs["detection_boxes"].numpy()[0]
        count = int(outputs["num_detections"].numpy().reshape(-1)[0]) if "num_detections" in outputs else len(boxes)
        scores = outputs["detection_scores"].numpy()[0, :count].astype(np.float32)
        # Sorting keeps the UNITER rule's "first num_bb rows" equal to "the most confident num_bb".
        order = np.argsort(-scores, kind="stable")
        return Detections(
                boxes=np.clip(boxes[:count][order], 0.0, 1.0).astype(np.float32),
                scores=scores[order],
                classes=outputs["detection_classes"].numpy()[0, :count][order].astype(np.int32),
                feature_maps=[outputs[key].numpy()[0].astype(np.float32) for key in self._feature_keys])
