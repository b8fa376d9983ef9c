"""One image in, one canonical per-image record out: detect, keep boxes by the UNITER rule, pool, label."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter
from uniter_tf.data import schema
from uniter_tf.extraction.detector import Detections, Detector
from uniter_tf.extraction.roi_pooling import RoiPooler

#: Where each kept region came from (``ExtractedRegions.region_sources``).
SOURCE_DETECTED = "detected"
SOURCE_FILLER = "filler"
SOURCE_GROUND_TRUTH = "ground_truth"


class RegionExtractionError(ValueError):
    """An image that yields no usable record; ``reason`` is a :mod:`uniter_tf.data.dead_letter` reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class ExtractedRegions:
    """The regions of one image.

    Attributes:
        image_id: the image id.
        image_height: pixels.
        image_width: pixels.
        region_features: ``[n, D]`` float32 pooled features.
        region_boxes: ``[n, 4]`` pixel ``x1, y1, x2, y2``.
        soft_labels: ``[n, C]`` float32 class distributions (rows sum to 1).
        region_sources: ``[n]`` :data:`SOURCE_DETECTED`, :data:`SOURCE_FILLER` or :data:`SOURCE_GROUND_TRUTH`.
        detected_classes: ``[n]`` int32 class id behind each row (0 for filler / unmatched boxes).
        detected_scores: ``[n]`` float32 detector score behind each row (0 for filler / unmatched boxes).
    """

    image_id: str
    image_height: int
    image_width: int
    region_features: np.ndarray
    region_boxes: np.ndarray
    soft_labels: np.ndarray
    region_sources: list
    detected_classes: np.ndarray
    detected_scores: np.ndarray

    def to_example(self):
        """The canonical per-image ``tf.train.Example`` (positions computed from the boxes)."""
        return schema.make_example(
                image_id=self.image_id, region_features=self.region_features, region_boxes=self.region_boxes,
                image_height=self.image_height, image_width=self.image_width, soft_labels=self.soft_labels)


def detection_soft_labels(classes: np.ndarray, scores: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-box class distributions from a detector that reports one (class, score) per box.

    The detector's class gets its score and background (id 0) the rest, ``1 - score``; every other class
    gets 0. This is the only distribution the detector's outputs support honestly (it exposes no
    per-class scores per box); rows with class 0 (filler, unmatched) are pure background.
    """
    classes = np.asarray(classes, np.int64).reshape(-1)
    scores = np.clip(np.asarray(scores, np.float32).reshape(-1), 0.0, 1.0)
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"detected class ids must lie in [0, {num_classes}), got {classes.min()}..{classes.max()}")
    soft = np.zeros((classes.size, num_classes), np.float32)
    rows = np.arange(classes.size)
    soft[rows, 0] = 1.0 - scores
    soft[rows, classes] += scores
    return soft


class RegionFeatureExtractor:
    """Detector + UNITER box rule + RoI pooling + soft labels.

    Detected mode keeps the ``num_bb = min(max, max(min, #{score > th}))`` most confident detections.
    When fewer are detected than ``num_bb`` and ``fill`` is on, filler boxes top the image up: the whole
    image first, then 2x2, 3x3, ... grid cells (:func:`uniter_tf.data.boxes.filler_boxes`). Ground-truth
    mode pools over the given boxes, all of them, in the given order (as the official VCR / RefCOCO
    features); each gt box takes the class and score of the detection it overlaps most if their IoU is at
    least ``gt_match_iou``, else background.

    Args:
        detector: the :class:`Detector`.
        selection: the box rule.
        pooler: the RoI pooler.
        fill: top up images with too few detections (else they keep fewer; with none they are rejected).
        gt_match_iou: IoU a detection needs to lend its class to a ground-truth box.
    """

    def __init__(self, detector: Detector, selection: Optional[boxes_lib.BoxSelection] = None,
                 pooler: Optional[RoiPooler] = None, fill: bool = True, gt_match_iou: float = 0.5):
        self.detector = detector
        self.selection = selection or boxes_lib.BoxSelection()
        self.pooler = pooler or RoiPooler()
        self.fill = fill
        self.gt_match_iou = gt_match_iou

    @property
    def feature_dim(self) -> int:
        return self.detector.feature_dim

    @property
    def num_soft_labels(self) -> int:
        return self.detector.num_classes

    def extract(self, image: np.ndarray, image_id: str, gt_boxes: Optional[np.ndarray] = None) -> ExtractedRegions:
        """Extracts the regions of one ``[H, W, 3]`` uint8 image.

        Args:
            image: the decoded image.
            image_id: its id (goes into the record and error messages).
            gt_boxes: ``[m, 4]`` pixel ``x1, y1, x2, y2`` ground-truth boxes, or None for detected boxes.

        Raises:
            RegionExtractionError: no regions, bad ground-truth boxes or non-finite features.
        """
        image_height, image_width = int(image.shape[0]), int(image.shape[1])
        detections = self.detector.detect(image)
        detected_pixel = boxes_lib.normalized_yxyx_to_pixel_xyxy(detections.boxes, image_height, image_width)
        if gt_boxes is None:
            region_boxes, classes, scores, sources = self._select_detected(
                    detections, detected_pixel, image_height, image_width, image_id)
        else:
            region_boxes, classes, scores, sources = self._match_ground_truth(
                    np.asarray(gt_boxes, np.float32), detections, detected_pixel, image_height, image_width, image_id)
        normalized = boxes_lib.pixel_xyxy_to_normalized_yxyx(region_boxes, image_height, image_width)
        region_features = self.pooler(detections.feature_maps, normalized)
        if not np.all(np.isfinite(region_features)):
            raise RegionExtractionError(dead_letter.NON_FINITE_FEATURES,
                                        f"image {image_id!r}: pooled region features contain NaN or inf")
        if float(np.max(np.abs(region_features), initial=0.0)) > schema.FLOAT16_MAX:
            raise RegionExtractionError(dead_letter.NON_FINITE_FEATURES,
                                        f"image {image_id!r}: region features overflow float16")
        return ExtractedRegions(
                image_id=image_id, image_height=image_height, image_width=image_width,
                region_features=region_features, region_boxes=region_boxes,
                soft_labels=detection_soft_labels(classes, scores, self.detector.num_classes),
                region_sources=sources, detected_classes=classes.astype(np.int32),
                detected_scores=scores.astype(np.float32))

    def _select_detected(self, detections: Detections, detected_pixel, image_height, image_width, image_id):
        num_boxes = self.selection.num_boxes(detections.scores)
        num_detected = min(num_boxes, len(detections.scores))
        num_filler = num_boxes - num_detected if self.fill else 0
        if num_detected + num_filler == 0:
            raise RegionExtractionError(dead_letter.NO_REGIONS,
                                        f"image {image_id!r}: the detector found nothing and filling is off")
        region_boxes = np.concatenate(
                [detected_pixel[:num_detected], boxes_lib.filler_boxes(num_filler, image_height, image_width)])
        classes = np.concatenate([detections.classes[:num_detected], np.zeros(num_filler, np.int32)])
        scores = np.concatenate([detections.scores[:num_detected], np.zeros(num_filler, np.float32)])
        sources = [SOURCE_DETECTED] * num_detected + [SOURCE_FILLER] * num_filler
        return region_boxes.astype(np.float32), classes, scores, sources

    def _match_ground_truth(self, gt_boxes, detections: Detections, detected_pixel, image_height, image_width,
                            image_id):
        if gt_boxes.size == 0:
            raise RegionExtractionError(dead_letter.NO_REGIONS, f"image {image_id!r}: no ground-truth boxes")
        if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4 or not np.all(np.isfinite(gt_boxes)):
            raise RegionExtractionError(dead_letter.NO_REGIONS,
                                        f"image {image_id!r}: ground-truth boxes must be finite [m, 4] x1,y1,x2,y2")
        clipped = boxes_lib.clip_boxes(gt_boxes, image_height, image_width)
        empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
        if np.any(empty):
            raise RegionExtractionError(
                    dead_letter.NO_REGIONS,
                    f"image {image_id!r}: ground-truth boxes {np.flatnonzero(empty).tolist()} have no area inside "
                    f"the {image_width}x{image_height} image")
        classes = np.zeros(len(clipped), np.int32)
        scores = np.zeros(len(clipped), np.float32)
        if len(detections.scores):
            iou = boxes_lib.box_iou(clipped, detected_pixel)
            best = np.argmax(iou, axis=1)
            matched = iou[np.arange(len(clipped)), best] >= self.gt_match_iou
            classes[matched] = detections.classes[best[matched]]
            scores[matched] = detections.scores[best[matched]]
        return clipped, classes, scores, [SOURCE_GROUND_TRUTH] * len(clipped)
