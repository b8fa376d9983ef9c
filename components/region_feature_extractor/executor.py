"""Executor of RegionFeatureExtractor: runs the extraction Beam transforms on the component's pipeline."""

from __future__ import annotations

import os
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.region_feature_extractor import spec as spec_lib


def image_pattern(input_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> str:
    """The images glob: ``image_pattern`` inside the Images artifact, or ``image_pattern`` itself without one.

    Raises:
        ValueError: no Images artifact and a relative ``image_pattern``.
    """
    pattern = exec_properties[spec_lib.IMAGE_PATTERN_KEY]
    images = input_dict.get(spec_lib.IMAGES_KEY) or []
    if images:
        return os.path.join(artifact_utils.get_single_uri(images), pattern)
    if not os.path.isabs(pattern) and "://" not in pattern:
        raise ValueError(f"without an `images` input, image_pattern must be an absolute glob, got {pattern!r}")
    return pattern


def extraction_config(exec_properties: Dict[str, Any]):
    """The :class:`ExtractionConfig` from the execution properties."""
    from uniter_tf.extraction import beam_pipeline

    return beam_pipeline.ExtractionConfig(
            detector_path=exec_properties.get(spec_lib.DETECTOR_PATH_KEY) or None,
            num_classes=int(exec_properties[spec_lib.NUM_CLASSES_KEY]),
            conf_threshold=float(exec_properties[spec_lib.CONF_THRESHOLD_KEY]),
            min_boxes=int(exec_properties[spec_lib.MIN_BOXES_KEY]),
            max_boxes=int(exec_properties[spec_lib.MAX_BOXES_KEY]),
            fill=bool(int(exec_properties[spec_lib.FILL_KEY])),
            boxes_json=exec_properties.get(spec_lib.BOXES_JSON_KEY) or None,
            crop_size=int(exec_properties[spec_lib.CROP_SIZE_KEY]))


def first_record_dims(uri: str):
    """``(feature_dim, num_soft_labels)`` of the first record under ``uri``, or ``(0, 0)`` without records."""
    import tensorflow as tf

    from uniter_tf.data import schema, tfrecord_io

    files = tf.io.gfile.glob(os.path.join(uri, "region_features-*"))
    for serialized in (tfrecord_io.read_examples(files).take(1) if files else []):
        decoded = schema.decode_example(serialized.numpy())
        return decoded[schema.FEATURE_DIM], decoded[schema.NUM_SOFT_LABELS]
    return 0, 0


class Executor(base_beam_executor.BaseBeamExecutor):
    """Writes canonical per-image records and dead letters into the ``RegionFeatures`` artifact.

    The artifact gets the integer custom properties ``feature_dim``, ``num_soft_labels`` and one per
    extraction counter (``images_in``, ``images_ok``, each dead-letter reason), plus ``dead_letters``
    (their total), so downstream components and people can see losses without reading files.
    """

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from apache_beam.io.filesystems import FileSystems

        from uniter_tf.extraction import beam_pipeline

        self._log_startup(input_dict, output_dict, exec_properties)
        pattern = image_pattern(input_dict, exec_properties)
        config = extraction_config(exec_properties)
        region_features = artifact_utils.get_single_instance(output_dict[spec_lib.REGION_FEATURES_KEY])
        if not FileSystems.match([pattern])[0].metadata_list:
            raise FileNotFoundError(f"RegionFeatureExtractor: no images match {pattern}")

        pipeline = self._make_beam_pipeline()
        beam_pipeline.build_extraction(pipeline, pattern, region_features.uri, config,
                                       int(exec_properties[spec_lib.NUM_SHARDS_KEY]))
        result = pipeline.run()
        result.wait_until_finish()
        counters = beam_pipeline.query_counters(result)
        beam_pipeline.write_summary(region_features.uri, counters, config, pattern)

        feature_dim, num_soft_labels = first_record_dims(region_features.uri)
        region_features.set_int_custom_property("feature_dim", int(feature_dim))
        region_features.set_int_custom_property("num_soft_labels", int(num_soft_labels))
        for name, value in counters.items():
            region_features.set_int_custom_property(name, int(value))
        region_features.set_int_custom_property("dead_letters", beam_pipeline.num_dead_letters(counters))
        logging.info("%s", beam_pipeline.format_counters(counters))
