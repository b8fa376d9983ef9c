"""The Beam pipeline of region-feature extraction (behind ``uniter extract`` and the TFX component).

Layout of an output directory::

    region_features-00000-of-0000N.tfrecord.gz   canonical per-image records (GZIP TFRecords)
    dead_letters-00000-of-00001.jsonl            one JSON object per rejected image, with the reason
    extraction_summary.json                      counters and the configuration of the run

Every matched file ends up in exactly one of the first two: ``images_ok + dead letters == images_in``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional

import apache_beam as beam

from uniter_tf.data import dead_letter

#: Beam metrics namespace of the extraction counters.
METRICS_NAMESPACE = "uniter_extract"
IMAGES_IN = "images_in"
IMAGES_OK = "images_ok"
REGIONS_DETECTED = "regions_detected"
REGIONS_FILLER = "regions_filler"
REGIONS_GROUND_TRUTH = "regions_ground_truth"

EXAMPLES_PREFIX = "region_features"
DEAD_LETTERS_PREFIX = "dead_letters"
SUMMARY_FILE = "extraction_summary.json"
DEAD_LETTER_TAG = "dead_letters"


@dataclasses.dataclass(frozen=True)
class ExtractionConfig:
    """What the extraction DoFn needs (picklable; the detector itself is loaded on the workers).

    Attributes:
        detector_path: None (default SSD-MobileNet-v2), a frozen-graph ``.pb`` or a SavedModel directory.
        num_classes: classes incl. background of a SavedModel detector (soft-label width).
        conf_threshold: UNITER box rule threshold.
        min_boxes: UNITER box rule minimum.
        max_boxes: UNITER box rule maximum.
        fill: top up images with too few detections (whole image, then grid cells).
        boxes_json: ground-truth boxes file; when set, features are pooled over those boxes instead.
        crop_size: RoI pooling crop side.
    """

    detector_path: Optional[str] = None
    num_classes: int = 91
    conf_threshold: float = 0.2
    min_boxes: int = 10
    max_boxes: int = 100
    fill: bool = True
    boxes_json: Optional[str] = None
    crop_size: int = 7

    def build_extractor(self):
        """Loads the detector and returns a :class:`RegionFeatureExtractor` (run on workers)."""
        from uniter_tf.data.boxes import BoxSelection
        from uniter_tf.extraction.detector import load_detector
        from uniter_tf.extraction.region_extractor import RegionFeatureExtractor
        from uniter_tf.extraction.roi_pooling import RoiPooler

        return RegionFeatureExtractor(
                load_detector(self.detector_path, self.num_classes),
                BoxSelection(self.conf_threshold, self.min_boxes, self.max_boxes),
                RoiPooler(self.crop_size), fill=self.fill)


def load_ground_truth_boxes(path: str) -> Dict[str, List[List[float]]]:
    """Reads a boxes JSON: ``{image file name: {"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}}``.

    Pixel ``x1, y1, x2, y2`` boxes; ``labels`` is optional and not used for features. Keys are file base
    names (``img_001.png``); the value may also be the bare box list.

    Raises:
        ValueError: the file is not such a mapping (the message names the bad entry).
    """
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        content = json.loads(handle.read().decode("utf-8"))
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image file names to boxes")
    boxes = {}
    for name, entry in content.items():
        entry_boxes = entry.get("boxes") if isinstance(entry, dict) else entry
        if not isinstance(entry_boxes, list):
            raise ValueError(f"{path}: entry {name!r} has no 'boxes' list")
        boxes[os.path.basename(name)] = entry_boxes
    return boxes


def image_id_for(path: str) -> str:
    """The image id of an image file: its base name without extension (``a/b/img_7.jpg`` -> ``img_7``)."""
    return os.path.splitext(os.path.basename(path))[0]


class _ExtractRegionsFn(beam.DoFn):
    """Path -> serialized per-image record, or a dead letter on the ``dead_letters`` output."""

    def __init__(self, config: ExtractionConfig, shared_handle):
        self._config = config
        self._shared_handle = shared_handle
        self._extractor = None
        self._gt_boxes = None
        self._counters = {}

    def setup(self):
        # One detector per worker process, shared by every DoFn instance there (Beam's Shared).
        self._extractor = self._shared_handle.acquire(self._config.build_extractor)
        if self._config.boxes_json:
            self._gt_boxes = load_ground_truth_boxes(self._config.boxes_json)

    def _count(self, name: str, amount: int = 1):
        if name not in self._counters:
            self._counters[name] = beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)
        self._counters[name].inc(amount)

    def _reject(self, path: str, image_id: str, reason: str, detail: str, kind: str = "image"):
        self._count(reason)
        letter = dead_letter.DeadLetter(record_id=image_id, reason=reason, detail=dead_letter.safe_text(detail, 500),
                                        source=path, kind=kind)
        return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter.to_json())

    def process(self, path: str):
        from apache_beam.io.filesystems import FileSystems

        from uniter_tf.extraction.images import ImageDecodeError, decode_image
        from uniter_tf.extraction.region_extractor import (RegionExtractionError, SOURCE_DETECTED, SOURCE_FILLER,
                                                           SOURCE_GROUND_TRUTH)

        self._count(IMAGES_IN)
        image_id = image_id_for(path)
        try:
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                data = handle.read()
            image = decode_image(data, path)
        except (OSError, ImageDecodeError) as error:
            yield self._reject(path, image_id, dead_letter.UNREADABLE_INPUT, str(error), kind="input")
            return
        gt_boxes = None
        if self._gt_boxes is not None:
            name = os.path.basename(path)
            if name not in self._gt_boxes:
                yield self._reject(path, image_id, dead_letter.MISSING_FIELD,
                                   f"{name} has no entry in the ground-truth boxes file {self._config.boxes_json}")
                return
            gt_boxes = self._gt_boxes[name]
        try:
            regions = self._extractor.extract(image, image_id, gt_boxes)
        except RegionExtractionError as error:
            yield self._reject(path, image_id, error.reason, error.detail)
            return
        self._count(IMAGES_OK)
        for source, counter in ((SOURCE_DETECTED, REGIONS_DETECTED), (SOURCE_FILLER, REGIONS_FILLER),
                                (SOURCE_GROUND_TRUTH, REGIONS_GROUND_TRUTH)):
            self._count(counter, regions.region_sources.count(source))
        yield regions.to_example().SerializeToString()


@beam.ptransform_fn
def MatchImageFiles(pipeline, file_pattern: str):  # pylint: disable=invalid-name
    """Matches ``file_pattern`` (any Beam filesystem) and yields the file paths, spread over workers."""
    from apache_beam.io import fileio

    return (pipeline
            | "MatchImages" >> fileio.MatchFiles(file_pattern)
            | "ImagePath" >> beam.Map(lambda metadata: metadata.path)
            | "SpreadImages" >> beam.Reshuffle())


@beam.ptransform_fn
def ExtractRegionFeatures(image_paths, config: ExtractionConfig):  # pylint: disable=invalid-name
    """Image paths -> ``DoOutputsTuple`` with ``examples`` (serialized records) and ``dead_letters`` (JSON lines)."""
    from apache_beam.utils import shared

    return image_paths | "Extract" >> beam.ParDo(_ExtractRegionsFn(config, shared.Shared())).with_outputs(
            DEAD_LETTER_TAG, main="examples")


@beam.ptransform_fn
def WriteExtractionOutputs(outputs, output_dir: str, num_shards: int = 0):  # pylint: disable=invalid-name
    """Writes ``{"examples", "dead_letters"}`` PCollections: GZIP TFRecords and one JSONL file under ``output_dir``."""
    from apache_beam.io.filesystem import CompressionTypes

    examples = outputs["examples"]
    written = examples | "WriteRecords" >> beam.io.WriteToTFRecord(
            os.path.join(output_dir, EXAMPLES_PREFIX), file_name_suffix=".tfrecord.gz", num_shards=num_shards,
            compression_type=CompressionTypes.GZIP)
    outputs[DEAD_LETTER_TAG] | "WriteDeadLetters" >> beam.io.WriteToText(
            os.path.join(output_dir, DEAD_LETTERS_PREFIX), file_name_suffix=".jsonl", num_shards=1,
            shard_name_template="-SSSSS-of-NNNNN")
    return written


def build_extraction(pipeline, image_pattern: str, output_dir: str, config: ExtractionConfig, num_shards: int = 0):
    """Adds match -> extract -> write to ``pipeline``; returns ``{"examples": ..., "dead_letters": ...}``."""
    outputs = (pipeline
               | "MatchImageFiles" >> MatchImageFiles(image_pattern)
               | "ExtractRegionFeatures" >> ExtractRegionFeatures(config))
    outputs = {"examples": outputs["examples"], DEAD_LETTER_TAG: outputs[DEAD_LETTER_TAG]}
    outputs | "WriteExtractionOutputs" >> WriteExtractionOutputs(output_dir, num_shards)
    return outputs


def query_counters(pipeline_result) -> Dict[str, int]:
    """The extraction counters of a finished run (committed values where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter

    counters = pipeline_result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    values = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value or 0)
    for name in (IMAGES_IN, IMAGES_OK):
        values.setdefault(name, 0)
    return values


def num_dead_letters(counters: Dict[str, int]) -> int:
    """Sum of the dead-letter reason counters."""
    return sum(value for name, value in counters.items() if name in dead_letter.ALL_REASONS)


def write_summary(output_dir: str, counters: Dict[str, int], config: ExtractionConfig, image_pattern: str) -> str:
    """Writes ``extraction_summary.json`` (counters + configuration) through ``tf.io.gfile``; returns its path."""
    import tensorflow as tf

    path = os.path.join(output_dir, SUMMARY_FILE)
    summary = {"image_pattern": image_pattern, "counters": counters, "dead_letters": num_dead_letters(counters),
               "config": dataclasses.asdict(config)}
    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(summary, indent=2, sort_keys=True))
    return path


def run_extraction(image_pattern: str, output_dir: str, config: ExtractionConfig,
                   beam_args: Optional[List[str]] = None, num_shards: int = 0) -> Dict[str, int]:
    """Runs the extraction pipeline to completion and returns its counters.

    Args:
        image_pattern: glob of the images (local or any Beam filesystem).
        output_dir: where records, dead letters and the summary go.
        config: the extraction configuration.
        beam_args: Beam pipeline options (``--runner``, ``--direct_num_workers``, Dataflow/Flink/Spark flags).
        num_shards: TFRecord shards (0: the runner decides).

    Raises:
        FileNotFoundError: nothing matches ``image_pattern``.
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    matched = FileSystems.match([image_pattern])[0].metadata_list
    if not matched:
        raise FileNotFoundError(f"no images match {image_pattern}")
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)  # the records and dead letters go through Beam's sinks
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args or []))
    build_extraction(pipeline, image_pattern, output_dir, config, num_shards)
    result = pipeline.run()
    result.wait_until_finish()
    counters = query_counters(result)
    write_summary(output_dir, counters, config, image_pattern)
    return counters


def format_counters(counters: Dict[str, int]) -> str:
    """A printable summary of the run's counters."""
    return dead_letter.format_summary(counters, title="extraction summary")
