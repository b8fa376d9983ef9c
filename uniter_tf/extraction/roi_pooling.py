"""RoI pooling: one feature vector per box from a detector's feature maps."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class RoiPooler:
    """Bilinear ``crop_and_resize`` of each box to ``crop_size x crop_size`` on every feature map, mean
    over the crop, maps concatenated: ``[n, sum(channels)]``.

    Averaging a bilinear crop (rather than max pooling) gives features that vary smoothly with the box,
    and small boxes on coarse maps still get an interpolated value instead of one cell.

    Args:
        crop_size: side of the bilinear crop on each map.
    """

    def __init__(self, crop_size: int = 7):
        import tensorflow as tf

        if crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        self.crop_size = int(crop_size)

        @tf.function(reduce_retracing=True)
        def pool_one_map(feature_map, normalized_boxes):
            crops = tf.image.crop_and_resize(
                    feature_map[None], normalized_boxes, tf.zeros(tf.shape(normalized_boxes)[:1], tf.int32),
                    [self.crop_size, self.crop_size], method="bilinear")
            return tf.reduce_mean(crops, axis=[1, 2])

        self._pool_one_map = pool_one_map

    def __call__(self, feature_maps: Sequence[np.ndarray], normalized_boxes: np.ndarray) -> np.ndarray:
        """Pools ``[n, 4]`` normalised ``y1, x1, y2, x2`` boxes; returns ``[n, sum(c)]`` float32."""
        import tensorflow as tf

        boxes = tf.constant(np.asarray(normalized_boxes, np.float32).reshape(-1, 4))
        pooled = [self._pool_one_map(tf.constant(feature_map, tf.float32), boxes).numpy()
                  for feature_map in feature_maps]
        return np.concatenate(pooled, axis=1).astype(np.float32)
