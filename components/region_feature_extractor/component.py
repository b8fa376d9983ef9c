"""RegionFeatureExtractor: region-feature extraction as a TFX component (Spec / Executor / Component)."""

from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec

from components.artifacts import RegionFeatures
from components.region_feature_extractor import executor
from components.region_feature_extractor import spec as spec_lib


class RegionFeatureExtractor(base_beam_component.BaseBeamComponent):
    """Detects regions in images, pools one feature per box and writes canonical per-image records.

    The Beam work is :mod:`uniter_tf.extraction.beam_pipeline` (the same as ``uniter extract``), so the
    component runs on whatever Beam runner the pipeline's ``beam_pipeline_args`` name.

    Args:
        images: an ``Images`` channel (a directory of images, e.g. from ``tfx.dsl.Importer``); when
            omitted, ``image_pattern`` must be an absolute glob.
        image_pattern: glob of the image files inside ``images`` (default ``*``), or absolute without it.
        detector_path: frozen graph (.pb) or SavedModel directory; default SSD-MobileNet-v2 COCO.
        num_classes: classes incl. background of a SavedModel detector (soft-label width).
        conf_threshold: UNITER box rule score threshold.
        min_boxes: UNITER box rule minimum boxes per image.
        max_boxes: UNITER box rule maximum boxes per image.
        fill: top up images with too few detections with the whole image and grid cells.
        boxes_json: ground-truth boxes file; features are then pooled over those boxes.
        crop_size: RoI pooling crop side.
        num_shards: TFRecord shards (0: the runner decides).
    """

    SPEC_CLASS = spec_lib.RegionFeatureExtractorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, images: Optional[types.BaseChannel] = None, image_pattern: str = "*",
                 detector_path: Optional[str] = None, num_classes: int = 91, conf_threshold: float = 0.2,
                 min_boxes: int = 10, max_boxes: int = 100, fill: bool = True, boxes_json: Optional[str] = None,
                 crop_size: int = 7, num_shards: int = 0):
        if images is None and not image_pattern.startswith("/") and "://" not in image_pattern:
            raise ValueError("RegionFeatureExtractor needs an `images` channel or an absolute `image_pattern`")
        if not 1 <= min_boxes <= max_boxes:
            raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {min_boxes}, {max_boxes}")
        spec = spec_lib.RegionFeatureExtractorSpec(
                images=images,
                image_pattern=image_pattern,
                detector_path=detector_path,
                num_classes=num_classes,
                conf_threshold=float(conf_threshold),
                min_boxes=min_boxes,
                max_boxes=max_boxes,
                fill=int(bool(fill)),
                boxes_json=boxes_json,
                crop_size=crop_size,
                num_shards=num_shards,
                region_features=types.Channel(type=RegionFeatures),
        )
        super().__init__(spec=spec)
