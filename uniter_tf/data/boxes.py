"""Region boxes: the UNITER 7-d position feature, the box-selection rule and filler boxes.

All boxes here are pixel ``[x1, y1, x2, y2]`` (x to the right, y down) unless a name says otherwise.
The functions are pure numpy so that Beam workers, importers and tests can use them without
TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Width of the region position feature ``[x1, y1, x2, y2, w, h, w*h]`` (UNITER spec §4.3).
POSITION_DIM = 7


@dataclasses.dataclass(frozen=True)
class BoxSelection:
    """How many detected boxes an image keeps (UNITER spec §4.4).

    ``num_boxes = min(max_boxes, max(min_boxes, #{score > conf_threshold}))``. The official defaults
    are ``conf_threshold=0.2``, ``min_boxes=10``, ``max_boxes=100``; ``conf_threshold=-1`` with
    ``min_boxes == max_boxes`` gives a fixed number of boxes per image.

    Attributes:
        conf_threshold: detection scores strictly above this count towards ``num_boxes``.
        min_boxes: every image keeps at least this many boxes.
        max_boxes: no image keeps more than this many boxes.
    """

    conf_threshold: float = 0.2
    min_boxes: int = 10
    max_boxes: int = 100

    def __post_init__(self):
        if self.min_boxes < 1:
            raise ValueError(f"BoxSelection.min_boxes must be >= 1, got {self.min_boxes}")
        if self.max_boxes < self.min_boxes:
            raise ValueError(
                    f"BoxSelection.max_boxes ({self.max_boxes}) must be >= min_boxes ({self.min_boxes})")

    def num_boxes(self, scores) -> int:
        """Returns how many boxes to keep for an image whose detections have ``scores``."""
        return compute_num_boxes(scores, self.conf_threshold, self.min_boxes, self.max_boxes)


def compute_num_boxes(scores, conf_threshold: float = 0.2, min_boxes: int = 10, max_boxes: int = 100) -> int:
    """The official ``compute_num_bb``: ``min(max_boxes, max(min_boxes, #{score > conf_threshold}))``.

    Args:
        scores: 1-D detection confidences of one image (any order).
        conf_threshold: scores strictly above it are counted.
        min_boxes: lower bound of the result.
        max_boxes: upper bound of the result.

    Returns:
        The number of boxes to keep. It can exceed ``len(scores)``; the caller fills the gap
        (see :func:`filler_boxes`).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    num_confident = int(np.count_nonzero(scores > conf_threshold))
    return int(min(max_boxes, max(min_boxes, num_confident)))


def _check_image_size(image_height, image_width):
    if not (image_height > 0 and image_width > 0):
        raise ValueError(f"image size must be positive, got height={image_height}, width={image_width}")


def _as_box_array(boxes, name: str = "boxes") -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float32)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape [n, 4], got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def position_features(boxes, image_height, image_width) -> np.ndarray:
    """The UNITER 7-d region position feature from pixel boxes.

    ``[x1/W, y1/H, x2/W, y2/H, w/W, h/H, (w/W)*(h/H)]`` with ``w = x2 - x1``, ``h = y2 - y1``; boxes
    are first clipped to the image, so every value lies in ``[0, 1]``.

    Args:
        boxes: ``[n, 4]`` pixel ``x1, y1, x2, y2``.
        image_height: image height in pixels.
        image_width: image width in pixels.

    Returns:
        ``[n, 7]`` float32.
    """
    _check_image_size(image_height, image_width)
    boxes = clip_boxes(_as_box_array(boxes), image_height, image_width)
    scale = np.array([image_width, image_height, image_width, image_height], dtype=np.float32)
    normalized = boxes / scale
    width = normalized[:, 2] - normalized[:, 0]
    height = normalized[:, 3] - normalized[:, 1]
    return np.concatenate(
            [normalized, width[:, None], height[:, None], (width * height)[:, None]], axis=1).astype(np.float32)


def clip_boxes(boxes, image_height, image_width) -> np.ndarray:
    """Clips pixel ``[n, 4]`` boxes to the image and orders each box's corners."""
    boxes = _as_box_array(boxes)
    x_low = np.clip(np.minimum(boxes[:, 0], boxes[:, 2]), 0, image_width)
    x_high = np.clip(np.maximum(boxes[:, 0], boxes[:, 2]), 0, image_width)
    y_low = np.clip(np.minimum(boxes[:, 1], boxes[:, 3]), 0, image_height)
    y_high = np.clip(np.maximum(boxes[:, 1], boxes[:, 3]), 0, image_height)
    return np.stack([x_low, y_low, x_high, y_high], axis=1).astype(np.float32)


def normalized_yxyx_to_pixel_xyxy(boxes, image_height, image_width) -> np.ndarray:
    """Converts TF Object Detection API boxes (normalised ``y1, x1, y2, x2``) to pixel ``x1, y1, x2, y2``."""
    _check_image_size(image_height, image_width)
    boxes = _as_box_array(boxes)
    pixel = np.stack([
            boxes[:, 1] * image_width, boxes[:, 0] * image_height,
            boxes[:, 3] * image_width, boxes[:, 2] * image_height], axis=1)
    return clip_boxes(pixel, image_height, image_width)


def pixel_xyxy_to_normalized_yxyx(boxes, image_height, image_width) -> np.ndarray:
    """Converts pixel ``x1, y1, x2, y2`` boxes to normalised ``y1, x1, y2, x2`` (as ``crop_and_resize`` wants)."""
    _check_image_size(image_height, image_width)
    boxes = clip_boxes(boxes, image_height, image_width)
    return np.stack([
            boxes[:, 1] / image_height, boxes[:, 0] / image_width,
            boxes[:, 3] / image_height, boxes[:, 2] / image_width], axis=1).astype(np.float32)


def xywh_to_xyxy(boxes) -> np.ndarray:
    """Converts COCO-style ``[x, y, w, h]`` boxes to ``[x1, y1, x2, y2]``."""
    boxes = _as_box_array(boxes)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]],
                    axis=1).astype(np.float32)


def filler_boxes(count: int, image_height, image_width) -> np.ndarray:
    """Deterministic boxes that top up an image with too few detections.

    The order is fixed: the whole image first, then the cells of a 2x2 grid, then 3x3, 4x4, ...
    (row-major within each grid), so the first ``count`` boxes are always the same for an image size.
    Coarse cells come first because they cover the most content per extra region.

    Args:
        count: number of boxes to return (>= 0).
        image_height: image height in pixels.
        image_width: image width in pixels.

    Returns:
        ``[count, 4]`` float32 pixel ``x1, y1, x2, y2``.
    """
    if count < 0:
        raise ValueError(f"filler box count must be >= 0, got {count}")
    _check_image_size(image_height, image_width)
    boxes = []
    grid = 1
    while len(boxes) < count:
        cell_width = image_width / grid
        cell_height = image_height / grid
        for row in range(grid):
            for column in range(grid):
                boxes.append([column * cell_width, row * cell_height,
                              (column + 1) * cell_width, (row + 1) * cell_height])
        grid += 1
    return np.asarray(boxes[:count], dtype=np.float32).reshape(count, 4)


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise IoU of pixel ``[n, 4]`` and ``[m, 4]`` boxes, ``[n, m]``."""
    boxes_a = _as_box_array(boxes_a, "boxes_a")
    boxes_b = _as_box_array(boxes_b, "boxes_b")
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(boxes_a[:, 2:] - boxes_a[:, :2], axis=1)
    area_b = np.prod(boxes_b[:, 2:] - boxes_b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0).astype(np.float32)


__all__ = [
        "POSITION_DIM", "BoxSelection", "compute_num_boxes", "position_features", "clip_boxes",
        "normalized_yxyx_to_pixel_xyxy", "pixel_xyxy_to_normalized_yxyx", "xywh_to_xyxy", "filler_boxes",
        "box_iou",
]
