"""A tiny deterministic SavedModel detector that follows the extraction signature contract.

It stands in for a real detector where the 70 MB SSD graph is too slow (unit tests, CI smoke runs) and
shows the contract of :mod:`uniter_tf.extraction.saved_model_detector` in code. It "detects" the cells
of a 4x4 grid, scored by colour saturation (max - min channel), so colourful objects score high; the class
is the dominant channel (1 = red, 2 = green, 3 = blue; 0 = background). Feature maps: the image and its
saturation average-pooled to 16x16 and 8x8 (4 channels each, region feature dim 8).
"""

from __future__ import annotations

GRID = 4
NUM_CLASSES = 4
FEATURE_DIM = 8


def build_toy_detector_module():
    """Returns the ``tf.Module`` whose ``serving_default`` is the toy detector."""
    import tensorflow as tf

    class ToyDetector(tf.Module):

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="images")])
        def detect(self, images):
            pixels = tf.image.resize(tf.cast(images, tf.float32) / 255.0, [64, 64], method="area")
            saturation = tf.reduce_max(pixels, axis=-1, keepdims=True) - tf.reduce_min(pixels, axis=-1, keepdims=True)
            maps = tf.concat([pixels, saturation], axis=-1)
            fine = tf.nn.avg_pool2d(maps, 4, 4, "VALID")
            coarse = tf.nn.avg_pool2d(maps, 8, 8, "VALID")
            cells = tf.nn.avg_pool2d(maps, 64 // GRID, 64 // GRID, "VALID")
            scores = tf.reshape(cells[..., 3], [1, GRID * GRID])
            classes = tf.reshape(tf.cast(tf.argmax(cells[..., :3], axis=-1), tf.float32) + 1.0, [1, GRID * GRID])
            index = tf.range(GRID * GRID)
            row = tf.cast(index // GRID, tf.float32) / GRID
            column = tf.cast(index % GRID, tf.float32) / GRID
            boxes = tf.stack([row, column, row + 1.0 / GRID, column + 1.0 / GRID], axis=1)[None]
            order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
            return {
                    "detection_boxes": tf.gather(boxes, order, batch_dims=1),
                    "detection_scores": tf.gather(scores, order, batch_dims=1),
                    "detection_classes": tf.gather(classes, order, batch_dims=1),
                    "num_detections": tf.constant([float(GRID * GRID)]),
                    "feature_map_0": fine,
                    "feature_map_1": coarse,
            }

    return ToyDetector()


def write_toy_detector(path: str) -> str:
    """Saves the toy detector as a SavedModel at ``path``; returns ``path``."""
    import tensorflow as tf

    module = build_toy_detector_module()
    tf.saved_model.save(module, path, signatures={"serving_default": module.detect})
    return path
